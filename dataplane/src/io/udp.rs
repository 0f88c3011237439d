//! The VXLAN underlay: UDP sockets with batched system calls and optional UDP GSO/GRO.
//!
//! - [`bind_vxlan_rx`] binds the receive socket (port 4789 by default) with a large receive
//!   buffer and `UDP_GRO` when the kernel has it.
//! - [`SendPool`] holds `count` sockets on distinct kernel-chosen source ports: RFC 7348 §5 wants
//!   the outer source port to carry the inner flow's entropy (for ECMP/RSS on the underlay), and
//!   a fixed socket per flow hash keeps each flow on one port, hence in order.
//! - [`VxlanSocket::recv_batch`] / [`VxlanSocket::send_batch`] use `recvmmsg`/`sendmmsg` with
//!   arrays preallocated in a reusable [`MsgBatch`], so the hot path does not allocate.
//! - [`VxlanSocket::send_gso_parts`] sends many equal-sized datagrams in one call with
//!   `UDP_SEGMENT`, each gathered from two pieces (headers, payload where it was read), falling
//!   back to one datagram per call where the kernel or the route cannot.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

use super::{IoError, Result, retry_eintr};

/// Most segments one `UDP_SEGMENT` send may carry (the kernel's `UDP_MAX_SEGMENTS` on older
/// kernels; newer ones allow more, this stays safe everywhere).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Largest UDP payload of one IPv4 datagram, hence of one GSO send.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// Default send buffer of each [`SendPool`] socket.
pub const DEFAULT_SNDBUF_BYTES: usize = 4 << 20;

/// Control buffer per message: room for a `UDP_GRO` cmsg (an int) and a little more.
const CTRL_WORDS: usize = 8;

/// What [`VxlanSocket::recv_batch`] learnt about one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written to the buffer (with GRO: several datagrams back to back).
    pub len: usize,
    /// The sender (IPv4-mapped IPv6 sources are reported as IPv4).
    pub src: SocketAddr,
    /// Size of each coalesced datagram (`UDP_GRO` segment size); the last one may be shorter.
    /// Equals `len` when nothing was coalesced.
    pub stride: usize,
    /// The datagram did not fit in the buffer and was cut (`MSG_TRUNC`).
    pub truncated: bool,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            src: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            stride: 0,
            truncated: false,
        }
    }
}

/// Reusable `mmsghdr`/`iovec`/address/control arrays for batched calls, one per thread.
///
/// The arrays only hold pointers into the caller's buffers during a call; between calls the
/// pointers are stale and never read.
pub struct MsgBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<SockAddrStorage>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
}

// SAFETY: the raw pointers inside are written and read only within one call that holds
// `&mut MsgBatch`; they never outlive it, so moving the struct to another thread is sound.
unsafe impl Send for MsgBatch {}

impl std::fmt::Debug for MsgBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgBatch")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

impl MsgBatch {
    /// Arrays for up to `capacity` datagrams per call (at least 1; 64 is a good start).
    pub fn new(capacity: usize) -> MsgBatch {
        let capacity = capacity.clamp(1, 1024);
        // SAFETY: mmsghdr and iovec are plain old data; all-zero is valid.
        let (hdr, iov) = unsafe {
            (
                std::mem::zeroed::<libc::mmsghdr>(),
                std::mem::zeroed::<libc::iovec>(),
            )
        };
        MsgBatch {
            hdrs: vec![hdr; capacity],
            iovs: vec![iov; capacity],
            addrs: (0..capacity).map(|_| SockAddrStorage::zeroed()).collect(),
            ctrl: vec![[0; CTRL_WORDS]; capacity],
        }
    }

    /// Most datagrams one call moves.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }
}

/// A UDP socket of the VXLAN underlay (the receive socket or one of a [`SendPool`]'s).
/// All methods take `&self`; batch scratch space comes from the caller's [`MsgBatch`].
#[derive(Debug)]
pub struct VxlanSocket {
    sock: Socket,
    local: SocketAddr,
    v6: bool,
    gro: bool,
    gso: AtomicBool,
    rcvbuf: usize,
    sndbuf: usize,
}

/// Binds the VXLAN receive socket on `addr` (e.g. `0.0.0.0:4789`).
///
/// `reuse_port` sets `SO_REUSEPORT` so several threads can each bind their own socket and the
/// kernel spreads flows between them. The receive buffer is set with `SO_RCVBUFFORCE` (past
/// `net.core.rmem_max`, needs `CAP_NET_ADMIN`), else `SO_RCVBUF`; [`VxlanSocket::rcvbuf_bytes`]
/// tells what the kernel granted. `UDP_GRO` is turned on when available
/// ([`VxlanSocket::gro_enabled`]): give `recv_batch` buffers of 64 KiB then.
pub fn bind_vxlan_rx(
    addr: SocketAddr,
    reuse_port: bool,
    rcvbuf_bytes: usize,
) -> Result<VxlanSocket> {
    let sock = new_udp(addr)?;
    if reuse_port {
        sock.set_reuse_port(true)
            .map_err(|e| IoError::os(format!("SO_REUSEPORT on {addr}"), e))?;
    }
    if rcvbuf_bytes > 0 {
        set_buf_forced(&sock, libc::SO_RCVBUFFORCE, rcvbuf_bytes)
            .or_else(|_| sock.set_recv_buffer_size(rcvbuf_bytes))
            .map_err(|e| IoError::os(format!("SO_RCVBUF {rcvbuf_bytes} on {addr}"), e))?;
    }
    sock.bind(&SockAddr::from(addr))
        .map_err(|e| IoError::os(format!("bind {addr}"), e))?;
    let gro = setsockopt_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
    VxlanSocket::finish(sock, gro)
}

impl VxlanSocket {
    fn finish(sock: Socket, gro: bool) -> Result<VxlanSocket> {
        let local = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| IoError::Invalid("UDP socket has no local address".into()))?;
        // Setting the default segment size to 0 (off) is harmless and tells whether the kernel
        // knows UDP_SEGMENT at all.
        let gso = setsockopt_int(&sock, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        let rcvbuf = sock
            .recv_buffer_size()
            .map_err(|e| IoError::os("getsockopt SO_RCVBUF", e))?;
        let sndbuf = sock
            .send_buffer_size()
            .map_err(|e| IoError::os("getsockopt SO_SNDBUF", e))?;
        Ok(VxlanSocket {
            v6: local.is_ipv6(),
            sock,
            local,
            gro,
            gso: AtomicBool::new(gso),
            rcvbuf,
            sndbuf,
        })
    }

    /// The bound address (with the kernel-chosen port for pool sockets).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Receive buffer the kernel granted, as `getsockopt(SO_RCVBUF)` reports it (the kernel
    /// doubles the requested value to account for its bookkeeping).
    pub fn rcvbuf_bytes(&self) -> usize {
        self.rcvbuf
    }

    /// Send buffer the kernel granted, as `getsockopt(SO_SNDBUF)` reports it.
    pub fn sndbuf_bytes(&self) -> usize {
        self.sndbuf
    }

    /// `UDP_GRO` is on: received buffers may hold several datagrams, see [`RecvMeta::stride`].
    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// [`VxlanSocket::send_gso`] currently uses `UDP_SEGMENT` (it turns itself off after the
    /// kernel refuses a GSO send with `EIO`, i.e. the route's device cannot checksum).
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Switches between blocking and non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        self.sock
            .set_nonblocking(nonblocking)
            .map_err(|e| IoError::os(format!("O_NONBLOCK on {}", self.local), e))
    }

    /// Receives up to `min(bufs.len(), metas.len(), batch.capacity())` datagrams with one
    /// `recvmmsg`; returns how many, with their sizes and senders in `metas[..n]`.
    ///
    /// Waits for the first datagram only if the socket is blocking (`MSG_WAITFORONE`), then
    /// takes what is already queued. Non-blocking with nothing queued: `WouldBlock`.
    /// With GRO on, one buffer may receive up to ~64 KiB of coalesced datagrams: make buffers
    /// 65,536 bytes, or a coalesced batch is cut ([`RecvMeta::truncated`]) and its tail lost.
    pub fn recv_batch<B: AsMut<[u8]>>(
        &self,
        batch: &mut MsgBatch,
        bufs: &mut [B],
        metas: &mut [RecvMeta],
    ) -> std::io::Result<usize> {
        let n = bufs.len().min(metas.len()).min(batch.capacity());
        if n == 0 {
            return Ok(0);
        }
        let MsgBatch {
            hdrs,
            iovs,
            addrs,
            ctrl,
        } = batch;
        for i in 0..n {
            let buf = bufs[i].as_mut();
            iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let hdr = &mut hdrs[i];
            hdr.msg_len = 0;
            hdr.msg_hdr.msg_namelen = addrs[i].size_of();
            hdr.msg_hdr.msg_name = (&mut addrs[i] as *mut SockAddrStorage).cast();
            hdr.msg_hdr.msg_iov = &mut iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ctrl[i].as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = std::mem::size_of::<[u64; CTRL_WORDS]>() as _;
            hdr.msg_hdr.msg_flags = 0;
        }
        let fd = self.sock.as_raw_fd();
        let hdr_ptr = hdrs.as_mut_ptr();
        // SAFETY: hdrs[..n] point at live iovecs, address and control buffers owned by `batch`
        // and at the caller's buffers, all borrowed mutably for the duration of the call.
        let got = retry_eintr(|| unsafe {
            libc::recvmmsg(
                fd,
                hdr_ptr,
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        })? as usize;
        for (hdr, (meta, addr)) in hdrs[..got]
            .iter_mut()
            .zip(metas.iter_mut().zip(addrs.iter_mut()))
        {
            let len = hdr.msg_len as usize;
            let stride = gro_stride(&hdr.msg_hdr).unwrap_or(len);
            *meta = RecvMeta {
                len,
                src: read_sockaddr(addr, hdr.msg_hdr.msg_namelen)
                    .unwrap_or(RecvMeta::default().src),
                stride: if stride == 0 { len } else { stride },
                truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            };
        }
        Ok(got)
    }

    /// Sends each `(destination, payload)` as one datagram, `batch.capacity()` per `sendmmsg`.
    ///
    /// Returns how many leading messages the kernel took. It stops early at the first failure:
    /// then `Ok(k)` with `k < msgs.len()`, or `Err` if the very first message failed (e.g.
    /// `WouldBlock` on a full non-blocking socket, or an unreachable destination), so the caller
    /// can drop or retry `msgs[k]` and go on.
    pub fn send_batch(
        &self,
        batch: &mut MsgBatch,
        msgs: &[(SocketAddr, &[u8])],
    ) -> std::io::Result<usize> {
        let mut sent = 0;
        while sent < msgs.len() {
            let chunk = &msgs[sent..msgs.len().min(sent + batch.capacity())];
            let MsgBatch {
                hdrs, iovs, addrs, ..
            } = &mut *batch;
            for (i, (dst, payload)) in chunk.iter().enumerate() {
                iovs[i] = libc::iovec {
                    iov_base: payload.as_ptr().cast_mut().cast(),
                    iov_len: payload.len(),
                };
                let dst = sock_addr(*dst, self.v6);
                let namelen = dst.len();
                addrs[i] = dst.as_storage();
                let hdr = &mut hdrs[i];
                hdr.msg_len = 0;
                hdr.msg_hdr.msg_name = (&mut addrs[i] as *mut SockAddrStorage).cast();
                hdr.msg_hdr.msg_namelen = namelen;
                hdr.msg_hdr.msg_iov = &mut iovs[i];
                hdr.msg_hdr.msg_iovlen = 1;
                hdr.msg_hdr.msg_control = std::ptr::null_mut();
                hdr.msg_hdr.msg_controllen = 0;
                hdr.msg_hdr.msg_flags = 0;
            }
            let fd = self.sock.as_raw_fd();
            let hdr_ptr = hdrs.as_mut_ptr();
            // SAFETY: hdrs[..chunk.len()] point at live iovecs and addresses owned by `batch` and
            // at the caller's payloads (only read by the kernel), all valid during the call.
            let r = retry_eintr(|| unsafe {
                libc::sendmmsg(fd, hdr_ptr, chunk.len() as libc::c_uint, 0)
            });
            match r {
                Ok(k) => {
                    sent += k as usize;
                    if (k as usize) < chunk.len() {
                        break;
                    }
                }
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Sends one datagram.
    pub fn send_to(&self, buf: &[u8], dst: SocketAddr) -> std::io::Result<usize> {
        let addr = sock_addr(dst, self.v6);
        let fd = self.sock.as_raw_fd();
        // SAFETY: buf and addr are valid for the given lengths for the duration of the call.
        retry_eintr(|| unsafe {
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                0,
                addr.as_ptr().cast(),
                addr.len(),
            )
        })
        .map(|n| n as usize)
    }

    /// Sends `buf` to `dst` as datagrams of `segment_size` bytes (the last may be shorter); see
    /// [`VxlanSocket::send_gso_parts`]. Returns the bytes sent (all of `buf` unless an error
    /// stopped it; an error before anything was sent is returned as `Err`).
    pub fn send_gso(
        &self,
        dst: SocketAddr,
        buf: &[u8],
        segment_size: usize,
    ) -> std::io::Result<usize> {
        let count = buf.len().div_ceil(segment_size.max(1));
        let sent = self.send_gso_parts(dst, count, segment_size, |i| {
            let from = (i * segment_size).min(buf.len());
            [&buf[from..(from + segment_size).min(buf.len())], &[]]
        })?;
        Ok((sent * segment_size).min(buf.len()))
    }

    /// Sends `count` datagrams to `dst`, datagram `i` being the two pieces `part(i)` back to back
    /// (e.g. headers held by the caller, then a payload where it was read: the kernel gathers
    /// them, nothing is copied in userspace). Every datagram but the last must be `segment_size`
    /// bytes long, the last at most that.
    ///
    /// Uses one `UDP_SEGMENT` send per up to [`GSO_MAX_SEGMENTS`] datagrams (and 64 KiB) when the
    /// kernel can, else one send per datagram. Returns how many datagrams were sent (all unless
    /// an error stopped it; an error before any was sent is returned as `Err`). When
    /// `segment_size` plus the outer headers exceeds the route's MTU the kernel refuses the GSO
    /// send (`EMSGSIZE`): those datagrams then go one per send, fragmented by IP like a plain
    /// send.
    pub fn send_gso_parts<'a>(
        &self,
        dst: SocketAddr,
        count: usize,
        segment_size: usize,
        part: impl Fn(usize) -> [&'a [u8]; 2],
    ) -> std::io::Result<usize> {
        if segment_size == 0 || segment_size > MAX_UDP_PAYLOAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "bad GSO segment size",
            ));
        }
        let addr = sock_addr(dst, self.v6);
        let per_send = GSO_MAX_SEGMENTS.min(MAX_UDP_PAYLOAD / segment_size).max(1);
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2 * GSO_MAX_SEGMENTS];
        let mut sent = 0;
        while sent < count {
            let n = per_send.min(count - sent);
            for (k, pair) in iov.chunks_exact_mut(2).take(n).enumerate() {
                for (v, piece) in pair.iter_mut().zip(part(sent + k)) {
                    *v = libc::iovec {
                        iov_base: piece.as_ptr().cast_mut().cast(),
                        iov_len: piece.len(),
                    };
                }
            }
            let iov = &iov[..2 * n];
            let r = if n > 1 && self.gso_enabled() {
                match self.sendmsg_iov(&addr, iov, Some(segment_size as u16)) {
                    Ok(_) => Ok(n),
                    // EIO: the route's device cannot checksum GSO segments; never try again.
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                        self.gso.store(false, Ordering::Relaxed);
                        self.send_one_by_one(&addr, iov)
                    }
                    // EMSGSIZE (EINVAL before Linux 6.x): the segments do not fit the route's
                    // MTU (the kernel never fragments GSO segments). One datagram per segment,
                    // which IP may fragment, as without GSO; GSO stays on for other sizes.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::EINVAL)) => {
                        self.send_one_by_one(&addr, iov)
                    }
                    Err(e) => Err(e),
                }
            } else {
                self.send_one_by_one(&addr, iov)
            };
            match r {
                Ok(k) => {
                    sent += k;
                    if k < n {
                        break;
                    }
                }
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// One `sendmsg` per datagram, each datagram an iovec pair; returns how many were sent.
    fn send_one_by_one(&self, addr: &SockAddr, iov: &[libc::iovec]) -> std::io::Result<usize> {
        let mut sent = 0;
        for pair in iov.chunks(2) {
            match self.sendmsg_iov(addr, pair, None) {
                Ok(_) => sent += 1,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// One `sendmsg` of the gathered `iov`, with a `UDP_SEGMENT` control message if
    /// `segment_size` is given.
    fn sendmsg_iov(
        &self,
        addr: &SockAddr,
        iov: &[libc::iovec],
        segment_size: Option<u16>,
    ) -> std::io::Result<usize> {
        let mut ctrl = [0u64; CTRL_WORDS];
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = addr.as_ptr().cast_mut().cast();
        msg.msg_namelen = addr.len();
        msg.msg_iov = iov.as_ptr().cast_mut();
        msg.msg_iovlen = iov.len() as _;
        if let Some(segment_size) = segment_size {
            msg.msg_control = ctrl.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen =
                unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
            // SAFETY: msg_control points at `ctrl`, which is 8-byte aligned and larger than
            // CMSG_SPACE(2), so the first header and its data lie inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment_size);
            }
        }
        let fd = self.sock.as_raw_fd();
        // SAFETY: msg points at the caller's address and iovecs (each iovec at a live buffer the
        // kernel only reads) and at `ctrl`, all valid for the duration of the call; the kernel
        // does not write through msg_name or msg_iov on send.
        retry_eintr(|| unsafe { libc::sendmsg(fd, &msg, 0) }).map(|n| n as usize)
    }
}

impl AsRawFd for VxlanSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for VxlanSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Send sockets on distinct source ports, one chosen per flow hash.
#[derive(Debug)]
pub struct SendPool {
    sockets: Vec<VxlanSocket>,
}

impl SendPool {
    /// `count` sockets bound to `(local_ip, 0)`, each with a [`DEFAULT_SNDBUF_BYTES`] send
    /// buffer.
    pub fn new(local_ip: IpAddr, count: usize) -> Result<SendPool> {
        Self::with_sndbuf(local_ip, count, DEFAULT_SNDBUF_BYTES)
    }

    /// Like [`SendPool::new`] with an explicit send buffer size (`SO_SNDBUFFORCE`, falling back
    /// to `SO_SNDBUF` without `CAP_NET_ADMIN`).
    pub fn with_sndbuf(local_ip: IpAddr, count: usize, sndbuf_bytes: usize) -> Result<SendPool> {
        if count == 0 {
            return Err(IoError::Invalid(
                "SendPool needs at least one socket".into(),
            ));
        }
        let mut sockets = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = SocketAddr::new(local_ip, 0);
            let sock = new_udp(addr)?;
            if sndbuf_bytes > 0 {
                set_buf_forced(&sock, libc::SO_SNDBUFFORCE, sndbuf_bytes)
                    .or_else(|_| sock.set_send_buffer_size(sndbuf_bytes))
                    .map_err(|e| IoError::os(format!("SO_SNDBUF {sndbuf_bytes}"), e))?;
            }
            sock.bind(&SockAddr::from(addr))
                .map_err(|e| IoError::os(format!("bind {addr}"), e))?;
            sockets.push(VxlanSocket::finish(sock, false)?);
        }
        Ok(SendPool { sockets })
    }

    /// The socket for a flow: `hash % count`, so one flow always leaves from one source port.
    pub fn socket_for(&self, hash: u64) -> &VxlanSocket {
        &self.sockets[self.index_for(hash)]
    }

    /// The index in [`SendPool::sockets`] of [`SendPool::socket_for`]`(hash)`.
    pub fn index_for(&self, hash: u64) -> usize {
        (hash % self.sockets.len() as u64) as usize
    }

    /// All sockets, in `socket_for` order.
    pub fn sockets(&self) -> &[VxlanSocket] {
        &self.sockets
    }

    /// The source port of each socket, in `socket_for` order.
    pub fn src_ports(&self) -> Vec<u16> {
        self.sockets.iter().map(|s| s.local.port()).collect()
    }

    /// Number of sockets.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Always false: a pool has at least one socket.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

fn new_udp(addr: SocketAddr) -> Result<Socket> {
    Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| IoError::os(format!("UDP socket for {addr}"), e))
}

fn setsockopt_int(
    sock: &Socket,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the option value is one c_int on our stack, with its exact length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_buf_forced(sock: &Socket, opt: libc::c_int, bytes: usize) -> std::io::Result<()> {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX / 2);
    setsockopt_int(sock, libc::SOL_SOCKET, opt, val)
}

/// The `UDP_GRO` segment size from a received message's control data, if any.
fn gro_stride(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: msg's control pointer and length were set by us and updated by the kernel; the
    // CMSG_* helpers stay within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).ok();
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// `addr` as the kernel wants it for a socket of the given family (IPv4 becomes v4-mapped on
/// IPv6 sockets).
fn sock_addr(addr: SocketAddr, v6_socket: bool) -> SockAddr {
    match addr {
        SocketAddr::V4(a) if v6_socket => {
            SockAddr::from(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        addr => SockAddr::from(addr),
    }
}

/// The sender the kernel wrote into `storage` (`len` bytes; v4-mapped IPv6 is reported as IPv4).
/// Leaves `storage` zeroed for the next call.
fn read_sockaddr(storage: &mut SockAddrStorage, len: libc::socklen_t) -> Option<SocketAddr> {
    let storage = std::mem::replace(storage, SockAddrStorage::zeroed());
    // SAFETY: the kernel initialised `len` bytes of `storage` (recvmmsg's msg_namelen), never
    // more than its size.
    let addr = unsafe { SockAddr::new(storage, len) }.as_socket()?;
    Some(match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    })
}
