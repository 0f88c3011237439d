//! Helpers shared by the `io_*` integration tests (real kernel, root only).
//!
//! Each test works in its own anonymous network namespaces (they vanish with their last fd, so
//! a panic cleans up too) or in uniquely named ones held by a `NamedNetns` guard.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vxnet_dataplane::io::{Netlink, NetnsHandle, Result, in_netns_blocking};

/// True when running as root; otherwise prints the skip notice the CI greps for.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        println!("skipped: needs root (netns)");
        false
    }
}

/// A name unique to this process and call: `vxio-<pid>-<n>`.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vxio-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh anonymous namespace with `lo` up.
pub fn anon_ns() -> NetnsHandle {
    let ns = NetnsHandle::create_anonymous().expect("create anonymous netns");
    nl(&ns, |nl| async move { nl.set_up("lo".into()).await }).expect("lo up");
    ns
}

/// Runs netlink work inside `ns`, blocking.
pub fn nl<T: Send, F, Fut>(ns: &NetnsHandle, f: F) -> Result<T>
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    in_netns_blocking(ns, f)
}

/// Waits until `fd` is readable or `deadline` passes.
pub fn wait_readable(fd: &impl AsRawFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = left.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: pfd is one valid pollfd on our stack.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    r > 0 && pfd.revents & libc::POLLIN != 0
}

/// A deadline `secs` seconds from now.
pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// The Internet checksum (RFC 1071).
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends ICMP echo requests from inside `ns` to `dst` (raw socket) until a reply comes back or
/// `secs` pass: the `ping` binary is not installed everywhere.
pub fn ping(ns: &NetnsHandle, dst: std::net::Ipv4Addr, secs: u64) -> bool {
    ns.run(|| {
        // SAFETY: socket takes plain integer arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        assert!(
            fd >= 0,
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just returned by socket and is owned by nobody else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let id = (std::process::id() & 0xffff) as u16;
        // SAFETY: sockaddr_in is plain old data; all-zero is valid.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let end = deadline(secs);
        let mut seq = 0u16;
        while Instant::now() < end {
            seq += 1;
            let mut req = [0u8; 16];
            req[0] = 8;
            req[4..6].copy_from_slice(&id.to_be_bytes());
            req[6..8].copy_from_slice(&seq.to_be_bytes());
            req[8..].copy_from_slice(b"vxnet-io");
            let c = inet_checksum(&req);
            req[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: req and sin are valid for the given lengths during the call.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            let round = (Instant::now() + Duration::from_millis(300)).min(end);
            while wait_readable(&fd, round) {
                let mut buf = [0u8; 1500];
                // SAFETY: buf is valid and writable for its length during the call.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 20 {
                    continue;
                }
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                let icmp = &buf[ihl..n as usize];
                let from = std::net::Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                if from == dst && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes()
                {
                    return true;
                }
            }
        }
        false
    })
    .expect("enter namespace for ping")
}
