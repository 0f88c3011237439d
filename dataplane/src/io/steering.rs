//! Loading and attaching the flow-steering programs of [`crate::steer`].
//!
//! The TAP's program is eBPF and goes through `bpf(2)` (`BPF_PROG_LOAD`, which needs
//! `CAP_BPF` or `CAP_SYS_ADMIN`); the reuseport group's is classic BPF, attached with a plain
//! `setsockopt`. Raw system calls: the two programs are 61 and 74 fixed instructions, and a BPF
//! loader crate would bring an object-file loader and a toolchain for what is one `bpf(2)` call.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::steer::{BpfInsn, SockFilter};

/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_int = 5;
/// `BPF_PROG_TEST_RUN`.
const BPF_PROG_TEST_RUN: libc::c_int = 10;
/// `BPF_PROG_TYPE_SOCKET_FILTER`: what `TUNSETSTEERINGEBPF` takes.
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// Room for `union bpf_attr` as far as the commands used here reach; the rest stays zero,
/// which every kernel accepts.
const ATTR_LEN: usize = 128;

/// A loaded eBPF program; the kernel frees it when the last holder (this fd, or a TAP it is
/// attached to) lets go.
#[derive(Debug)]
pub struct BpfProgram {
    fd: OwnedFd,
}

impl BpfProgram {
    /// Loads `insns` as a socket-filter program. The verifier's complaint, if any, is in the
    /// error.
    pub fn load_socket_filter(insns: &[BpfInsn]) -> std::io::Result<BpfProgram> {
        let license = c"Apache-2.0";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_SOCKET_FILTER);
        put_u32(&mut attr, 4, insns.len() as u32);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        put_u32(&mut attr, 24, 1); // log_level: explain a refusal
        put_u32(&mut attr, 28, log.len() as u32);
        put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
        match sys_bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => {
                // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                Ok(BpfProgram { fd })
            }
            Err(err) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(0);
                let verifier = String::from_utf8_lossy(&log[..end]);
                let last = verifier.lines().rev().find(|l| !l.trim().is_empty());
                match last {
                    Some(line) => Err(std::io::Error::new(
                        err.kind(),
                        format!("{err} (verifier: {line})"),
                    )),
                    None => Err(err),
                }
            }
        }
    }

    /// Runs the program once on `packet` (`BPF_PROG_TEST_RUN`) and returns what it returned.
    /// The kernel hands a socket filter the packet after its Ethernet header, so the first 14
    /// bytes of `packet` are not seen by the program: put a dummy header there.
    pub fn test_run(&self, packet: &[u8]) -> std::io::Result<u32> {
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, self.fd.as_raw_fd() as u32);
        put_u32(&mut attr, 8, packet.len() as u32);
        put_u64(&mut attr, 16, packet.as_ptr() as u64);
        put_u32(&mut attr, 32, 1); // repeat
        sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]))
    }

    /// Makes this program pick the queue of every frame the kernel sends into the TAP that
    /// `queue_fd` is a queue of (any queue: the program is per device). Turns the TAP's
    /// automatic flow learning off.
    pub fn attach_to_tap(&self, queue_fd: &impl AsRawFd) -> std::io::Result<()> {
        let prog: libc::c_int = self.fd.as_raw_fd();
        // SAFETY: TUNSETSTEERINGEBPF reads one c_int (the program's fd) through the pointer,
        // which lives on our stack for the call.
        let r = unsafe { libc::ioctl(queue_fd.as_raw_fd(), libc::TUNSETSTEERINGEBPF, &prog) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Makes `program` pick the socket of every datagram reaching the `SO_REUSEPORT` group that
/// `socket` belongs to (socket `i` is the `i`-th to have bound).
pub fn attach_reuseport_program(
    socket: &impl AsRawFd,
    program: &[SockFilter],
) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: SockFilter is repr(C) with sock_filter's layout (u16, u8, u8, u32); the kernel
    // copies `len` of them during the call, while `program` is borrowed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn sys_bpf(cmd: libc::c_int, attr: &mut [u8; ATTR_LEN]) -> std::io::Result<libc::c_int> {
    // SAFETY: `attr` is a zero-initialised bpf_attr of ATTR_LEN bytes that outlives the call;
    // every pointer stored in it points at memory the caller keeps alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            ATTR_LEN as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as libc::c_int)
}

fn put_u32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}
