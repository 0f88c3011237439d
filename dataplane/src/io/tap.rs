//! L2 TAP devices opened directly with `/dev/net/tun` ioctls.
//!
//! The TAP is not persistent (no `TUNSETPERSIST`): the kernel removes it when the last queue's fd
//! closes, i.e. when the agent exits or crashes. That is deliberate: the agent owns the device's
//! whole life and rebuilds its links on restart (reconciliation), so a stale TAP left behind by a
//! dead agent could only black-hole traffic on the bridge.
//!
//! With [`TapOptions::vnet_hdr`] every frame read or written is preceded by a 10-byte
//! `virtio_net_hdr` (little endian): `flags`, `gso_type`, `hdr_len`, `gso_size`, `csum_start`,
//! `csum_offset`. With [`TapOptions::offload`] the kernel may hand us GSO super-frames up to
//! ~64 KiB and frames whose checksum is still to be completed (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).

use std::ffi::CStr;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{IoError, Result, check_ifname, retry_eintr};

/// Size of the `virtio_net_hdr` that precedes each frame when [`TapOptions::vnet_hdr`] is set
/// (without the `num_buffers` field of the mergeable-buffers variant).
pub const VNET_HDR_LEN: usize = crate::wire::virtio_net_hdr::LEN;

const TUN_PATH: &CStr = c"/dev/net/tun";

/// How to open a TAP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapOptions {
    /// Prefix each frame with a 10-byte `virtio_net_hdr` (`IFF_VNET_HDR`).
    pub vnet_hdr: bool,
    /// Create a multiqueue device (`IFF_MULTI_QUEUE`); more queues come from [`Tap::open_queue`].
    pub multi_queue: bool,
    /// Accept checksum and TCP segmentation offloads (`TUNSETOFFLOAD` with CSUM, TSO4 and TSO6;
    /// never USO, see [`TapOffloads::uso4`]); needs `vnet_hdr`.
    pub offload: bool,
}

/// The offloads the kernel accepted with `TUNSETOFFLOAD` (all false without
/// [`TapOptions::offload`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapOffloads {
    /// `TUN_F_CSUM`: frames may carry partial checksums.
    pub csum: bool,
    /// `TUN_F_TSO4`: TCP/IPv4 super-frames.
    pub tso4: bool,
    /// `TUN_F_TSO6`: TCP/IPv6 super-frames.
    pub tso6: bool,
    /// `TUN_F_USO4`: UDP/IPv4 super-frames (kernel ≥ 6.2). Never requested by [`Tap::open`]:
    /// vxnet segments TCP only, so the kernel must segment UDP before the TAP.
    pub uso4: bool,
    /// `TUN_F_USO6`: UDP/IPv6 super-frames (kernel ≥ 6.2).
    pub uso6: bool,
}

impl TapOffloads {
    fn from_bits(bits: libc::c_uint) -> Self {
        TapOffloads {
            csum: bits & libc::TUN_F_CSUM != 0,
            tso4: bits & libc::TUN_F_TSO4 != 0,
            tso6: bits & libc::TUN_F_TSO6 != 0,
            uso4: bits & libc::TUN_F_USO4 != 0,
            uso6: bits & libc::TUN_F_USO6 != 0,
        }
    }
}

/// One queue of an L2 TAP device (the first one, from [`Tap::open`], or an extra one from
/// [`Tap::open_queue`]). Reads and writes take `&self`: one queue may be read by one thread and
/// written by another.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    ifindex: u32,
    options: TapOptions,
    offloads: TapOffloads,
}

impl Tap {
    /// Creates (or attaches to) the TAP `name` in the calling thread's network namespace.
    ///
    /// `name` may contain `%d` to let the kernel pick a number; [`Tap::name`] tells the result.
    /// The device is left down and unattached: use [`crate::io::Netlink::attach`].
    pub fn open(name: &str, options: TapOptions) -> Result<Tap> {
        Self::open_with(name, options, false)
    }

    /// Like [`Tap::open`], but refuses (`EBUSY`) to attach to a device that already exists:
    /// the queues opened next are then the device's queues 0, 1, … in order, which is what a
    /// steering program's result indexes.
    pub fn create(name: &str, options: TapOptions) -> Result<Tap> {
        Self::open_with(name, options, true)
    }

    fn open_with(name: &str, options: TapOptions, exclusive: bool) -> Result<Tap> {
        check_ifname(name)?;
        if options.offload && !options.vnet_hdr {
            return Err(IoError::Invalid(
                "TAP offloads need vnet_hdr: without it the kernel cannot describe GSO frames"
                    .into(),
            ));
        }
        let (file, name) = tunsetiff(name, options, exclusive)?;
        let fd = file.as_raw_fd();
        if options.vnet_hdr {
            let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which lives on our stack.
            if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } < 0 {
                return Err(IoError::last_os(format!("TUNSETVNETHDRSZ on {name}")));
            }
            // virtio 1.0 headers are little endian; on a little-endian host that is already the
            // native order, so a kernel without the ioctl (ENOTTY/EINVAL) is fine there.
            let le: libc::c_int = 1;
            // SAFETY: TUNSETVNETLE reads one c_int through the pointer, which lives on our stack.
            if unsafe { libc::ioctl(fd, libc::TUNSETVNETLE, &le) } < 0 {
                let err = std::io::Error::last_os_error();
                let benign = matches!(err.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL))
                    && cfg!(target_endian = "little");
                if !benign {
                    return Err(IoError::os(format!("TUNSETVNETLE on {name}"), err));
                }
            }
        }
        let offloads = if options.offload {
            set_offloads(fd, &name)?
        } else {
            TapOffloads::default()
        };
        let ifindex = ifindex_of(&name)?;
        Ok(Tap {
            file,
            name,
            ifindex,
            options,
            offloads,
        })
    }

    /// Opens one more queue of a multiqueue TAP (same name, `IFF_MULTI_QUEUE`).
    ///
    /// The vnet header size, its byte order and the offloads are per device, so the new queue
    /// shares them. Must be called in the namespace the TAP lives in.
    pub fn open_queue(&self) -> Result<Tap> {
        if !self.options.multi_queue {
            return Err(IoError::Invalid(format!(
                "{} was not opened with multi_queue",
                self.name
            )));
        }
        let (file, name) = tunsetiff(&self.name, self.options, false)?;
        Ok(Tap {
            file,
            name,
            ifindex: self.ifindex,
            options: self.options,
            offloads: self.offloads,
        })
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index (in the namespace the TAP was opened in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The options the TAP was opened with.
    pub fn options(&self) -> TapOptions {
        self.options
    }

    /// The offloads the kernel accepted.
    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// Switches this queue's fd between blocking and non-blocking (`O_NONBLOCK`).
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        set_nonblocking(self.file.as_raw_fd(), nonblocking)
            .map_err(|e| IoError::os(format!("O_NONBLOCK on {}", self.name), e))
    }

    /// Reads one frame (with its vnet header first when `vnet_hdr` is set). Retries on `EINTR`.
    /// A buffer shorter than the frame gets the frame truncated, so size it for the MTU plus
    /// headers, or 64 KiB + header with offloads.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let fd = self.file.as_raw_fd();
        // SAFETY: buf is a valid writable region of buf.len() bytes for the duration of the call.
        retry_eintr(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
            .map(|n| n as usize)
    }

    /// Writes one frame (with its vnet header first when `vnet_hdr` is set). Retries on `EINTR`.
    pub fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        let fd = self.file.as_raw_fd();
        // SAFETY: buf is a valid readable region of buf.len() bytes for the duration of the call.
        retry_eintr(|| unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
            .map(|n| n as usize)
    }

    /// Scatter read of one frame, e.g. `[vnet header, frame]`. Returns the total byte count.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> std::io::Result<usize> {
        let fd = self.file.as_raw_fd();
        let cnt = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: IoSliceMut is ABI-compatible with struct iovec and each one borrows a valid
        // writable buffer for the duration of the call.
        retry_eintr(|| unsafe { libc::readv(fd, bufs.as_mut_ptr().cast(), cnt) })
            .map(|n| n as usize)
    }

    /// Gather write of one frame, e.g. `[vnet header, frame]`. Returns the total byte count.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let fd = self.file.as_raw_fd();
        let cnt = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: IoSlice is ABI-compatible with struct iovec and each one borrows a valid
        // readable buffer for the duration of the call.
        retry_eintr(|| unsafe { libc::writev(fd, bufs.as_ptr().cast(), cnt) }).map(|n| n as usize)
    }

    /// Reads one frame into `frame`, its vnet header into `hdr`; returns the frame's length.
    pub fn read_vnet(
        &self,
        hdr: &mut [u8; VNET_HDR_LEN],
        frame: &mut [u8],
    ) -> std::io::Result<usize> {
        let n = self.readv(&mut [IoSliceMut::new(hdr), IoSliceMut::new(frame)])?;
        n.checked_sub(VNET_HDR_LEN).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "TAP read shorter than vnet header",
            )
        })
    }

    /// Writes `hdr` + `frame` as one frame; returns the frame's length.
    pub fn write_vnet(&self, hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) -> std::io::Result<usize> {
        let n = self.writev(&[IoSlice::new(hdr), IoSlice::new(frame)])?;
        Ok(n.saturating_sub(VNET_HDR_LEN))
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Opens /dev/net/tun and binds it to `name` with TUNSETIFF; returns the file and the real name.
fn tunsetiff(name: &str, options: TapOptions, exclusive: bool) -> Result<(File, String)> {
    // SAFETY: TUN_PATH is a NUL-terminated C string; open has no other preconditions.
    let fd = unsafe { libc::open(TUN_PATH.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(IoError::last_os("open /dev/net/tun"));
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });

    // SAFETY: ifreq is plain old data (arrays and a union of integers/pointers); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if options.vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    if options.multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    if exclusive {
        flags |= libc::IFF_TUN_EXCL;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which lives on our stack.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(IoError::last_os(format!("TUNSETIFF {name}")));
    }
    // The kernel writes back the name it chose (relevant for patterns like "vxtap%d").
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let real = String::from_utf8(bytes)
        .map_err(|_| IoError::Invalid(format!("kernel returned a non-UTF-8 name for {name}")))?;
    Ok((file, real))
}

/// TUNSETOFFLOAD with CSUM+TSO4+TSO6.
///
/// USO (`TUN_F_USO4/6`, kernel ≥ 6.2) is deliberately not requested: with it the kernel would
/// hand us UDP super-frames (`gso_type` UDP_L4), and vxnet's segmenter
/// ([`crate::offload::segment_tcp`]) splits TCP only. Without it the kernel segments UDP in
/// software before the TAP, so UDP frames arrive MTU-sized (with a partial checksum at most).
/// The other direction needs no flag: the kernel takes UDP_L4 super-frames from a TAP writer
/// (the [`crate::offload::Coalescer`] merges UDP datagrams into them).
fn set_offloads(fd: RawFd, name: &str) -> Result<TapOffloads> {
    let bits = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int), no pointer.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, bits as libc::c_ulong) } < 0 {
        return Err(IoError::last_os(format!("TUNSETOFFLOAD on {name}")));
    }
    Ok(TapOffloads::from_bits(bits))
}

pub(crate) fn set_nonblocking(fd: RawFd, nonblocking: bool) -> std::io::Result<()> {
    // SAFETY: F_GETFL on a valid fd takes no pointer argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let new = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL on a valid fd takes an int argument, no pointer.
    if new != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The index of interface `name` in the calling thread's namespace.
pub(crate) fn ifindex_of(name: &str) -> Result<u32> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| IoError::Invalid(format!("interface name {name:?} contains NUL")))?;
    // SAFETY: cname is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(IoError::NotFound(format!("interface {name}")));
    }
    Ok(index)
}
