//! Past 800 lines and more than one job (checksums, vnet helpers, GSO segmentation, the GRO
//! coalescer): kept in one file until it is split into one file per job.
//!
//! TCP segmentation and coalescing for the offload path. Sans-IO: bytes in, bytes
//! out, no system call, no clock, no allocation per packet.
//!
//! With `IFF_VNET_HDR` + `TUNSETOFFLOAD(CSUM|TSO4|TSO6)` the kernel hands a TAP reader TCP
//! *super-frames* of up to ~64 KiB (one Ethernet/IP/TCP header, many MSS of payload) described by
//! a `virtio_net_hdr`, and accepts the same from a writer. The wire between VTEPs must carry
//! ordinary MTU-sized frames, so:
//!
//! - **egress** ([`segment_tcp`]): a super-frame read from the TAP is cut into MSS-sized inner
//!   frames described by a [`SegmentBatch`]: each segment's headers behind [`EGRESS_HEADROOM`]
//!   bytes for the VXLAN header, and its payload as a slice of the super-frame, so that the whole
//!   batch leaves in one gathered UDP GSO send (`UDP_SEGMENT` = stride) without copying the
//!   payload. Every segment gets its own IPv4 total length, ident and header checksum (or IPv6
//!   payload length), TCP sequence number, flags and full TCP checksum.
//!   Frames without GSO but with a partial checksum get it completed by [`complete_checksum`].
//! - **ingress** ([`Coalescer`]): inner frames decapsulated from one receive batch are merged per
//!   TCP flow back into super-frames (the reverse of the above, like the kernel's GRO) and
//!   written to the TAP with `gso_type` TCPV4/TCPV6 and `NEEDS_CSUM`. A segment is only merged
//!   after vxnet verified its TCP checksum itself: the outer UDP checksum of VXLAN is often zero
//!   and proves nothing (flannel #1279), and once merged the kernel no longer checks the
//!   segments. UDP datagrams of one flow are merged likewise into `UDP_L4` super-frames. Merged
//!   payloads stay where they were received (the frame handed back lists
//!   them as [`Span`]s). Everything else is passed through unchanged, one frame per write.
//!
//! The `hdr_len` the kernel reports is not trusted (on a TAP it is the skb's linear length, which
//! may include payload): header lengths are always parsed from the frame itself.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::fdb::Vni;
use crate::router::{EGRESS_HEADROOM, EGRESS_TAILROOM};
use crate::wire::virtio_net_hdr::{flags as vnet_flags, gso_type};
use crate::wire::{
    EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, VirtioNetHdr,
    VirtioNetHdrRepr, checksum, ip_protocol, tcp_flags,
};

/// Offset of the checksum field in a TCP header (`virtio_net_hdr.csum_offset` for TCP).
pub const TCP_CSUM_OFFSET: u16 = 16;

/// Largest IP packet (IPv4 total length, or IPv6 header + payload length) the [`Coalescer`]
/// builds: the 16-bit length fields' limit, and the kernel's default GRO limit.
pub const MAX_COALESCED_IP_LEN: usize = 65_535;

/// Bytes of one [`Coalescer`] slot: the largest super-frame with a VLAN tag.
const SLOT_BYTES: usize = 18 + MAX_COALESCED_IP_LEN;

const IPV6_HEADER_LEN: usize = 40;
const UDP_HEADER_LEN: usize = 8;
/// Offset of the checksum field in a UDP header (`csum_offset` for UDP).
const UDP_CSUM_OFFSET: u16 = 6;

/// Why a frame from the TAP could not be segmented or checksummed. The data plane drops such a
/// frame and counts it (`drop.bad_gso`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OffloadError {
    /// A `gso_type` vxnet does not segment (UDP/UFO/USO, unknown values), or one that does not
    /// match the frame's IP version.
    #[error("unsupported gso_type {0:#04x}")]
    UnsupportedGso(u8),
    /// `gso_size` is 0.
    #[error("gso_size is 0")]
    ZeroGsoSize,
    /// The frame is not Ethernet + IPv4/IPv6 (no extension headers, not a fragment) + TCP.
    #[error("malformed or unsupported headers")]
    Malformed,
    /// `csum_start`/`csum_offset` point outside the frame, or not at the TCP checksum.
    #[error("checksum offsets outside the frame or not at the TCP checksum")]
    BadChecksumOffsets,
    /// More than [`MAX_SEGMENTS`] segments (a `gso_size` below the kernel's smallest MSS).
    #[error("too many segments")]
    NoRoom,
}

/// Where the headers of an Ethernet + IP + TCP (or UDP) frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct L4Layout {
    /// Offset of the IP header (14, or 18 with an 802.1Q tag).
    l3: usize,
    /// Offset of the TCP/UDP header.
    l4: usize,
    /// Offset of the TCP/UDP payload (= all headers' length).
    payload: usize,
    /// End of the IP packet (Ethernet padding after it is ignored).
    end: usize,
    /// IPv6 (else IPv4).
    v6: bool,
    /// UDP (else TCP).
    udp: bool,
}

impl L4Layout {
    fn protocol(&self) -> u8 {
        if self.udp {
            ip_protocol::UDP
        } else {
            ip_protocol::TCP
        }
    }
}

/// Parses Ethernet (optionally 802.1Q) + IPv4 (unfragmented) or IPv6 (TCP as next header) + TCP.
fn parse_tcp(frame: &[u8]) -> Option<L4Layout> {
    parse_l4(frame).filter(|l| !l.udp)
}

/// [`parse_tcp`], or the same with UDP (whose length field must match the IP packet's).
fn parse_l4(frame: &[u8]) -> Option<L4Layout> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let l3 = eth.header_len();
    let ip = frame.get(l3..)?;
    let (l4, end, v6, protocol) = match eth.ethertype() {
        EtherType::IPV4 => {
            let ip = Ipv4Packet::new_checked(ip).ok()?;
            if ip.is_fragment() {
                return None;
            }
            (
                l3 + ip.header_len(),
                l3 + usize::from(ip.total_len()),
                false,
                ip.next_header(),
            )
        }
        EtherType::IPV6 => {
            let ip = Ipv6Packet::new_checked(ip).ok()?;
            let l4 = l3 + IPV6_HEADER_LEN;
            (
                l4,
                l4 + usize::from(ip.payload_len()),
                true,
                ip.next_header(),
            )
        }
        _ => return None,
    };
    let udp = match protocol {
        ip_protocol::UDP => true,
        ip_protocol::TCP => false,
        _ => return None,
    };
    let segment = frame.get(l4..end)?;
    let header_len = if udp {
        let datagram = UdpPacket::new_checked(segment).ok()?;
        if usize::from(datagram.len()) != segment.len() {
            return None;
        }
        UDP_HEADER_LEN
    } else {
        TcpPacket::new_checked(segment).ok()?.header_len()
    };
    Some(L4Layout {
        l3,
        l4,
        payload: l4 + header_len,
        end,
        v6,
        udp,
    })
}

fn ipv4_addrs(frame: &[u8], layout: &L4Layout) -> (Ipv4Addr, Ipv4Addr) {
    let ip = Ipv4Packet::new_unchecked(&frame[layout.l3..]);
    (ip.src_addr(), ip.dst_addr())
}

fn ipv6_addrs(frame: &[u8], layout: &L4Layout) -> (Ipv6Addr, Ipv6Addr) {
    let ip = Ipv6Packet::new_unchecked(&frame[layout.l3..]);
    (ip.src_addr(), ip.dst_addr())
}

/// The same value as [`checksum::sum`] (folded to 16 bits, not inverted), computed faster for
/// the bulk of a TCP segment: 32-bit little-endian words are added into eight independent 64-bit
/// lanes (no carry chain, so the compiler vectorises the loop), and the folded result is
/// byte-swapped at the end (RFC 1071 §2(B): the sum is byte-order independent up to a swap).
///
/// On x86-64 CPUs with AVX2 (checked once per call, a cached flag) the same loop is compiled
/// for 256-bit registers, which halves its cost on a 64 KiB super-frame.
pub fn checksum_sum(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (detected just above), the only feature the function enables.
        return unsafe { checksum_sum_avx2(data) };
    }
    checksum_sum_lanes(data)
}

/// [`checksum_sum_lanes`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn checksum_sum_avx2(data: &[u8]) -> u32 {
    checksum_sum_lanes(data)
}

#[inline(always)]
fn checksum_sum_lanes(data: &[u8]) -> u32 {
    let mut lanes = [0u64; 8];
    let mut chunks = data.chunks_exact(32);
    for chunk in &mut chunks {
        add_lanes(&mut lanes, chunk);
    }
    finish_lanes(&lanes, chunks.remainder())
}

/// Copies `src` into `dst` (same length) and returns [`checksum_sum`]`(src)`, in one pass over
/// the bytes: segmenting reads each payload byte once instead of twice.
pub fn checksum_copy(src: &[u8], dst: &mut [u8]) -> u32 {
    assert_eq!(src.len(), dst.len(), "checksum_copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (detected just above), the only feature the function enables.
        return unsafe { checksum_copy_avx2(src, dst) };
    }
    checksum_copy_lanes(src, dst)
}

/// [`checksum_copy_lanes`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn checksum_copy_avx2(src: &[u8], dst: &mut [u8]) -> u32 {
    checksum_copy_lanes(src, dst)
}

#[inline(always)]
fn checksum_copy_lanes(src: &[u8], dst: &mut [u8]) -> u32 {
    let mut lanes = [0u64; 8];
    let mut chunks = src.chunks_exact(32);
    let mut out = dst.chunks_exact_mut(32);
    for (chunk, to) in (&mut chunks).zip(&mut out) {
        to.copy_from_slice(chunk);
        add_lanes(&mut lanes, chunk);
    }
    out.into_remainder().copy_from_slice(chunks.remainder());
    finish_lanes(&lanes, chunks.remainder())
}

/// Adds the eight little-endian 32-bit words of a 32-byte chunk to the lanes.
#[inline(always)]
fn add_lanes(lanes: &mut [u64; 8], chunk: &[u8]) {
    for (lane, word) in lanes.iter_mut().zip(chunk.chunks_exact(4)) {
        *lane += u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
    }
}

/// Adds the lanes and the tail (< 32 bytes), folds, and swaps back to network order.
#[inline(always)]
fn finish_lanes(lanes: &[u64; 8], tail: &[u8]) -> u32 {
    // Each lane took at most len/32 words < 2^32: no lane, nor their sum, can overflow.
    let mut acc: u64 = lanes.iter().sum();
    let mut words = tail.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_le_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        // Big-endian: the odd byte is the high byte of a zero-padded word; swapped, the low.
        acc += u64::from(*last);
    }
    acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    u32::from((acc as u16).swap_bytes())
}

/// The folded (not inverted) sum of a TCP segment from its pseudo-header sum, its header bytes
/// and the sum of its payload (from [`checksum_copy`]). The TCP header is a whole number of
/// 16-bit words, so the payload's sum simply adds on.
fn tcp_sum_with_payload(pseudo: u32, tcp_header: &[u8], payload_sum: u32) -> u16 {
    checksum::combine(&[pseudo, checksum_sum(tcp_header), payload_sum])
}

/// Whether the TCP checksum of `segment` (TCP header + payload) verifies.
fn tcp_checksum_ok(segment: &[u8], pseudo: u32) -> bool {
    checksum::fold(u32::from(checksum::combine(&[
        pseudo,
        checksum_sum(segment),
    ]))) == 0
}

/// The 10 bytes of a `virtio_net_hdr`, ready to write in front of a frame.
pub fn encode_vnet(repr: &VirtioNetHdrRepr) -> [u8; VirtioNetHdrRepr::LEN] {
    let mut bytes = [0u8; VirtioNetHdrRepr::LEN];
    repr.emit(&mut VirtioNetHdr::new_unchecked(&mut bytes[..]));
    bytes
}

/// The `gso_max_size` to give a container's interface on an overlay of MTU `mtu`, so that each
/// TCP super-frame the container sends becomes exactly one UDP GSO send on the underlay.
///
/// Every inner segment becomes one datagram of `mtu + 22` bytes (VXLAN 8 + Ethernet 14), and one
/// GSO send carries at most 65,507 bytes and 64 segments: `n = min(64, 65_507 / (mtu + 22))`.
/// TCP sizes a super-frame as `gso_max_size − MAX_TCP_HEADER − 1` (the kernel's slack, 320 bytes
/// or less) rounded down to whole MSS. So `n × (mtu − 72) + 320`, with `mtu − 72` the smallest
/// full-sized MSS (IPv6 with timestamps), never yields more than `n` segments. Without the cap a
/// 64 KiB super-frame at MTU 1450 is 45 segments, and the 45th costs a second send (and a second
/// trip through both hosts' stacks) for 1.4 KB.
pub fn container_gso_max_size(mtu: u32) -> u32 {
    let datagram = mtu.saturating_add(22).max(1);
    let segments = (65_507 / datagram).clamp(1, 64);
    let size = segments * mtu.saturating_sub(72) + 320;
    size.clamp(mtu.min(65_536), 65_536)
}

/// Completes the partial checksum of a frame read with `NEEDS_CSUM` and no GSO, as the kernel's
/// `skb_checksum_help` would: the one's-complement sum from `csum_start` to the end of the frame
/// (the checksum field holds the pseudo-header sum meanwhile) is stored at
/// `csum_start + csum_offset`; a result of 0 is stored as 0xFFFF (the same value in one's
/// complement, and the only valid one for UDP). Without `NEEDS_CSUM` the frame is left alone.
pub fn complete_checksum(vnet: &VirtioNetHdrRepr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if vnet.flags & vnet_flags::NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(vnet.csum_start);
    let at = start + usize::from(vnet.csum_offset);
    if at + 2 > frame.len() {
        return Err(OffloadError::BadChecksumOffsets);
    }
    let sum = checksum::fold(checksum::sum(&frame[start..]));
    let sum = if sum == 0 { 0xFFFF } else { sum };
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// The MSS-sized inner frames of one super-frame, described for one UDP GSO send without
/// copying the payload.
///
/// Segment `i` is two pieces, [`SegmentBatch::segment`]: `EGRESS_HEADROOM` bytes for the VXLAN
/// header plus its own Ethernet/IP/TCP headers (held here), then its payload, a slice of the
/// super-frame itself. Every segment has the same length ([`SegmentBatch::stride`]) except the
/// last, which may be shorter, so the pieces in order are exactly the bytes of one send with
/// `UDP_SEGMENT = stride()`: the kernel copies the payload straight from the TAP read buffer.
///
/// The first segment is the exception: it is whole and contiguous here (its payload copied,
/// one MSS per super-frame), because the router decides for it in place, writing the VXLAN header
/// in front of it or an ICMP answer after it. Buffers grow to the largest super-frame seen and
/// are then reused; [`segment_tcp`] refills them.
#[derive(Debug, Clone, Default)]
pub struct SegmentBatch {
    /// Segment 0: headroom, frame, then [`EGRESS_TAILROOM`].
    first: Vec<u8>,
    /// Segments 1..: headroom + headers each, `head_len` bytes apart.
    heads: Vec<u8>,
    head_len: usize,
    /// Offset of the payload in the super-frame (= its headers' length).
    hdr_len: usize,
    mss: usize,
    /// End of the super-frame's IP packet (its payload's end).
    payload_end: usize,
    first_len: usize,
    stride: usize,
    count: usize,
    frames_len: usize,
}

impl SegmentBatch {
    /// Forgets the segments (keeps the buffers).
    pub fn clear(&mut self) {
        self.stride = 0;
        self.count = 0;
        self.first_len = 0;
        self.frames_len = 0;
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No segment.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Length of every segment but the last: headroom + headers + MSS (the GSO segment size).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Segment `i` with its headroom, in two pieces (the second may be empty): together, one
    /// datagram of the GSO send. `frame` must be the super-frame given to [`segment_tcp`], unchanged;
    /// out of range (or another frame) gives empty pieces, never a panic.
    pub fn segment<'a>(&'a self, frame: &'a [u8], i: usize) -> [&'a [u8]; 2] {
        if i >= self.count {
            return [&[], &[]];
        }
        if i == 0 {
            return [&self.first[..EGRESS_HEADROOM + self.first_len], &[]];
        }
        let head = self
            .heads
            .get((i - 1) * self.head_len..i * self.head_len)
            .unwrap_or_default();
        let from = self.hdr_len + i * self.mss;
        let to = (from + self.mss).min(self.payload_end);
        [head, frame.get(from..to).unwrap_or_default()]
    }

    /// The inner frame of segment `i` (without headroom), in two pieces; see
    /// [`SegmentBatch::segment`].
    pub fn frame_parts<'a>(&'a self, frame: &'a [u8], i: usize) -> [&'a [u8]; 2] {
        let [head, payload] = self.segment(frame, i);
        [head.get(EGRESS_HEADROOM..).unwrap_or_default(), payload]
    }

    /// Length of the first segment's inner frame.
    pub fn first_len(&self) -> usize {
        self.first_len
    }

    /// Sum of the inner frames' lengths (for byte counters).
    pub fn frames_len(&self) -> usize {
        self.frames_len
    }

    /// The first segment's buffer, to route it in place: its frame is at
    /// `[EGRESS_HEADROOM..EGRESS_HEADROOM + first_len()]`, followed by at least
    /// [`EGRESS_TAILROOM`] bytes.
    pub fn first_mut(&mut self) -> &mut [u8] {
        &mut self.first
    }

    /// Copies the first segment's headroom (the VXLAN header the router wrote) in front of every
    /// other segment.
    pub fn replicate_headroom(&mut self) {
        let mut head = [0u8; EGRESS_HEADROOM];
        head.copy_from_slice(&self.first[..EGRESS_HEADROOM]);
        let used = (self.count.saturating_sub(1) * self.head_len).min(self.heads.len());
        for chunk in self.heads[..used].chunks_exact_mut(self.head_len.max(1)) {
            chunk[..EGRESS_HEADROOM].copy_from_slice(&head);
        }
    }
}

/// Splits a TCP super-frame (`gso_type` TCPV4 or TCPV6, with or without the ECN bit) read from a
/// TAP into `gso_size`-payload inner frames described by `out` (see [`SegmentBatch`]).
///
/// Per segment: IPv4 total length, ident (first + i) and header checksum, or IPv6 payload
/// length; TCP sequence number (first + offset); FIN and PSH only on the last segment, CWR only
/// on the first (as the kernel's `tcp_gso_segment`); and the full TCP checksum, computed from
/// scratch (with `NEEDS_CSUM` the super-frame's field holds only a pseudo-header sum). Header
/// lengths come from the frame, never from `hdr_len`. With `NEEDS_CSUM`, `csum_start` must point
/// at the TCP header and `csum_offset` be 16. A frame whose payload fits one segment gives one.
/// The payload is read once (to sum it), and copied only for the first segment.
pub fn segment_tcp(
    vnet: &VirtioNetHdrRepr,
    frame: &[u8],
    out: &mut SegmentBatch,
) -> Result<(), OffloadError> {
    out.clear();
    let want_v6 = match vnet.gso_type & !gso_type::ECN {
        gso_type::TCPV4 => false,
        gso_type::TCPV6 => true,
        _ => return Err(OffloadError::UnsupportedGso(vnet.gso_type)),
    };
    let mss = usize::from(vnet.gso_size);
    if mss == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let layout = parse_tcp(frame).ok_or(OffloadError::Malformed)?;
    if layout.v6 != want_v6 {
        return Err(OffloadError::UnsupportedGso(vnet.gso_type));
    }
    if vnet.flags & vnet_flags::NEEDS_CSUM != 0
        && (usize::from(vnet.csum_start) != layout.l4 || vnet.csum_offset != TCP_CSUM_OFFSET)
    {
        return Err(OffloadError::BadChecksumOffsets);
    }
    let hdr_len = layout.payload;
    let payload = &frame[hdr_len..layout.end];
    let count = payload.len().div_ceil(mss).max(1);
    if count > MAX_SEGMENTS {
        return Err(OffloadError::NoRoom);
    }
    let head_len = EGRESS_HEADROOM + hdr_len;
    let first_len = hdr_len + payload.len().min(mss);
    grow(
        &mut out.first,
        EGRESS_HEADROOM + first_len + EGRESS_TAILROOM,
    );
    grow(&mut out.heads, (count - 1) * head_len);

    let tcp = TcpPacket::new_unchecked(&frame[layout.l4..layout.end]);
    let (seq0, flags0) = (tcp.seq_number(), tcp.flags());
    let ident0 = if layout.v6 {
        0
    } else {
        Ipv4Packet::new_unchecked(&frame[layout.l3..]).ident()
    };
    let addrs4 = (!layout.v6).then(|| ipv4_addrs(frame, &layout));
    let addrs6 = layout.v6.then(|| ipv6_addrs(frame, &layout));

    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        // The headers go to `first` (with the payload copied after them) or to their own slot.
        let (headers, payload_sum) = if i == 0 {
            let seg = &mut out.first[EGRESS_HEADROOM..EGRESS_HEADROOM + first_len];
            let sum = checksum_copy(chunk, &mut seg[hdr_len..]);
            (&mut seg[..hdr_len], sum)
        } else {
            let at = (i - 1) * head_len + EGRESS_HEADROOM;
            (&mut out.heads[at..at + hdr_len], checksum_sum(chunk))
        };
        headers.copy_from_slice(&frame[..hdr_len]);
        let ip_len = hdr_len + chunk.len() - layout.l3;
        // The lengths fit 16 bits: they are at most the super-frame's own.
        if layout.v6 {
            Ipv6Packet::new_unchecked(&mut headers[layout.l3..])
                .set_payload_len((ip_len - IPV6_HEADER_LEN) as u16);
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut headers[layout.l3..]);
            ip.set_total_len(ip_len as u16);
            ip.set_ident(ident0.wrapping_add(i as u16));
            ip.fill_checksum();
        }
        let mut flags = flags0;
        if i + 1 != count {
            flags &= !(tcp_flags::FIN | tcp_flags::PSH);
        }
        if i != 0 {
            flags &= !tcp_flags::CWR;
        }
        let mut tcp = TcpPacket::new_unchecked(&mut headers[layout.l4..]);
        tcp.set_seq_number(seq0.wrapping_add((i * mss) as u32));
        tcp.set_flags(flags);
        tcp.set_checksum(0);
        let tcp_len = (hdr_len + chunk.len() - layout.l4) as u32;
        let pseudo = match (addrs4, addrs6) {
            (Some((src, dst)), _) => {
                checksum::pseudo_header_v4(src, dst, ip_protocol::TCP, tcp_len)
            }
            (_, Some((src, dst))) => {
                checksum::pseudo_header_v6(&src, &dst, ip_protocol::TCP, tcp_len)
            }
            (None, None) => 0,
        };
        let sum = tcp_sum_with_payload(pseudo, &headers[layout.l4..], payload_sum);
        TcpPacket::new_unchecked(&mut headers[layout.l4..])
            .set_checksum(checksum::fold(u32::from(sum)));
    }
    out.head_len = head_len;
    out.hdr_len = hdr_len;
    out.mss = mss;
    out.payload_end = layout.end;
    out.first_len = first_len;
    out.stride = head_len + mss;
    out.count = count;
    out.frames_len = count * hdr_len + payload.len();
    Ok(())
}

/// Most segments [`segment_tcp`] makes of one super-frame: 64 KiB at the smallest MSS the kernel
/// sends (`net.ipv4.tcp_min_snd_mss`, 48 bytes).
pub const MAX_SEGMENTS: usize = (64 << 10) / 48 + 1;

/// Makes `buf` at least `len` bytes long (it only ever grows: no allocation once warmed up).
fn grow(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Where a frame given to [`Coalescer::push`] lies in the caller's receive buffers: buffer
/// `buf`, from byte `offset`. The coalescer keeps merged payloads as [`Span`]s into those buffers
/// instead of copying them, so the caller must keep the buffers unchanged until it has called
/// [`Coalescer::flush`] (the end of each receive batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// Index of the receive buffer.
    pub buf: u32,
    /// Offset of the frame's first byte in it.
    pub offset: u32,
}

/// A run of payload bytes in the caller's receive buffers (see [`Origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Index of the receive buffer.
    pub buf: u32,
    /// First byte.
    pub start: u32,
    /// Length.
    pub len: u32,
}

impl Span {
    /// The bytes of this span in `bufs` (empty if it does not fit, which a caller that kept its
    /// buffers as [`Origin`] asks never sees).
    pub fn resolve<'b, B: AsRef<[u8]>>(&self, bufs: &'b [B]) -> &'b [u8] {
        let (start, len) = (self.start as usize, self.len as usize);
        bufs.get(self.buf as usize)
            .and_then(|b| b.as_ref().get(start..start + len))
            .unwrap_or_default()
    }
}

/// One frame the [`Coalescer`] hands back for writing to a TAP: `vnet`, then `head`, then the
/// bytes of each span of `tail` in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalescedFrame<'a> {
    /// The tag given to [`Coalescer::push`] (the network's VNI).
    pub tag: Vni,
    /// The `virtio_net_hdr` to write with the frame.
    pub vnet: VirtioNetHdrRepr,
    /// The headers and the first segment's payload (the whole frame when `tail` is empty).
    pub head: &'a [u8],
    /// The payloads of the segments merged after the first, in the caller's receive buffers.
    pub tail: &'a [Span],
    /// How many received frames it stands for.
    pub segments: usize,
}

impl CoalescedFrame<'_> {
    /// The frame's length.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.iter().map(|s| s.len as usize).sum::<usize>()
    }

    /// Never empty in practice; for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame, copied (tests and captures; the data path writes the pieces).
    pub fn to_vec<B: AsRef<[u8]>>(&self, bufs: &[B]) -> Vec<u8> {
        let mut v = self.head.to_vec();
        for span in self.tail {
            v.extend_from_slice(span.resolve(bufs));
        }
        v
    }
}

/// What the [`Coalescer`] did so far (for tests, benchmarks and statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalescerStats {
    /// Frames pushed.
    pub frames_in: u64,
    /// Frames handed back (super-frames count once).
    pub frames_out: u64,
    /// Super-frames built from two or more segments.
    pub super_frames: u64,
    /// TCP segments and UDP datagrams whose checksum vxnet found wrong (passed on alone,
    /// unmerged, for the kernel to drop).
    pub bad_checksum: u64,
}

/// The identity of a TCP or UDP flow: addresses and ports (the rest is compared byte by byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    tag: Vni,
    v6: bool,
    udp: bool,
    addrs: [u8; 32],
    ports: [u8; 4],
}

impl FlowKey {
    fn of(tag: Vni, frame: &[u8], layout: &L4Layout) -> FlowKey {
        let mut addrs = [0u8; 32];
        if layout.v6 {
            addrs.copy_from_slice(&frame[layout.l3 + 8..layout.l3 + 40]);
        } else {
            addrs[..8].copy_from_slice(&frame[layout.l3 + 12..layout.l3 + 20]);
        }
        let mut ports = [0u8; 4];
        ports.copy_from_slice(&frame[layout.l4..layout.l4 + 4]);
        FlowKey {
            tag,
            v6: layout.v6,
            udp: layout.udp,
            addrs,
            ports,
        }
    }
}

/// Most segments merged into one super-frame after its first (a slot's [`Span`]s).
pub const MAX_TAIL_SEGMENTS: usize = 63;

/// Header bytes a slot can compare: Ethernet with one 802.1Q tag, IPv6 and the longest TCP
/// header (18 + 40 + 60) fit; a frame with longer headers is never merged.
const HEADER_MASK_LEN: usize = 128;

/// Which header bytes must be equal for a segment to join a super-frame (0xFF) and which may
/// differ (0): IP lengths, IPv4 ident and checksum; TCP sequence number, flags, window and
/// checksum; UDP length and checksum. Comparing under one mask costs a few word operations per
/// segment where field-by-field comparisons cost a `memcmp` call each.
fn header_mask(l: &L4Layout) -> [u8; HEADER_MASK_LEN] {
    let mut mask = [0u8; HEADER_MASK_LEN];
    mask[..l.payload.min(HEADER_MASK_LEN)].fill(0xFF);
    let mut vary = |from: usize, to: usize| {
        if let Some(bytes) = mask.get_mut(from..to) {
            bytes.fill(0);
        }
    };
    if l.v6 {
        vary(l.l3 + 4, l.l3 + 6); // payload length
    } else {
        vary(l.l3 + 2, l.l3 + 6); // total length, ident
        vary(l.l3 + 10, l.l3 + 12); // header checksum
    }
    if l.udp {
        vary(l.l4 + 4, l.l4 + 8); // length, checksum
    } else {
        vary(l.l4 + 4, l.l4 + 8); // sequence number
        vary(l.l4 + 13, l.l4 + 18); // flags, window, checksum
    }
    mask
}

/// `a` and `b` agree on every byte `mask` selects (all three of one length).
fn equal_under_mask(a: &[u8], b: &[u8], mask: &[u8]) -> bool {
    let (a_words, a_rest) = a.as_chunks::<8>();
    let (b_words, b_rest) = b.as_chunks::<8>();
    let (m_words, m_rest) = mask.as_chunks::<8>();
    let mut diff = 0u64;
    for ((x, y), m) in a_words.iter().zip(b_words).zip(m_words) {
        diff |= (u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y)) & u64::from_ne_bytes(*m);
    }
    for ((x, y), m) in a_rest.iter().zip(b_rest).zip(m_rest) {
        diff |= u64::from((x ^ y) & m);
    }
    diff == 0
}

/// A super-frame being built.
#[derive(Debug)]
struct Slot {
    active: bool,
    key: FlowKey,
    layout: L4Layout,
    /// The first segment, copied: headers (fixed up by `finish`) and its payload.
    buf: Box<[u8]>,
    /// Bytes of `buf` in use.
    head_len: usize,
    /// The payloads merged after the first segment, where they were received.
    tail: [Span; MAX_TAIL_SEGMENTS],
    tail_count: usize,
    /// Length of the whole super-frame (head + tail).
    len: usize,
    gso_size: usize,
    segments: usize,
    next_seq: u32,
    /// Nothing may be appended (the last segment was short or had PSH).
    closed: bool,
    /// [`header_mask`] of `layout`.
    mask: [u8; HEADER_MASK_LEN],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            active: false,
            key: FlowKey::default(),
            layout: L4Layout {
                l3: 0,
                l4: 0,
                payload: 0,
                end: 0,
                v6: false,
                udp: false,
            },
            buf: vec![0u8; SLOT_BYTES].into_boxed_slice(),
            head_len: 0,
            tail: [Span::default(); MAX_TAIL_SEGMENTS],
            tail_count: 0,
            len: 0,
            gso_size: 0,
            segments: 0,
            next_seq: 0,
            closed: false,
            mask: [0; HEADER_MASK_LEN],
        }
    }

    fn start(&mut self, key: FlowKey, frame: &[u8], seg: &Candidate) {
        let layout = seg.layout;
        self.buf[..layout.end].copy_from_slice(&frame[..layout.end]);
        self.active = true;
        self.key = key;
        self.layout = layout;
        self.head_len = layout.end;
        self.tail_count = 0;
        self.len = layout.end;
        self.gso_size = seg.payload_len;
        self.segments = 1;
        self.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        self.closed = false;
        self.mask = header_mask(&layout);
    }

    /// Everything but lengths, IPv4 ident and checksums, sequence number, window and PSH equal;
    /// in sequence (TCP); not after a short segment; within 64 KiB and [`MAX_TAIL_SEGMENTS`].
    fn can_append(&self, frame: &[u8], seg: &Candidate) -> bool {
        let l = &self.layout;
        if self.closed
            || self.tail_count == MAX_TAIL_SEGMENTS
            || seg.layout.l3 != l.l3
            || seg.layout.l4 != l.l4
            || seg.layout.payload != l.payload
            || l.payload > HEADER_MASK_LEN
            || (!l.udp && seg.seq != self.next_seq)
            || seg.payload_len > self.gso_size
            || self.len - l.l3 + seg.payload_len > MAX_COALESCED_IP_LEN
        {
            return false;
        }
        // Both frames hold at least `payload` bytes: their layouts say so.
        let headers = ..l.payload;
        equal_under_mask(&self.buf[headers], &frame[headers], &self.mask[headers])
    }

    /// Appends `seg` (which [`Slot::can_append`] accepted, received at `at`) if its checksum
    /// verifies (a UDP/IPv4 datagram without checksum has none to verify); otherwise leaves the
    /// slot as it was. Only the payload's place is kept.
    fn append_verified(&mut self, frame: &[u8], at: Origin, seg: &Candidate) -> bool {
        let l = self.layout;
        let payload = &frame[l.payload..seg.layout.end];
        if !seg.unchecked_udp(frame) {
            let sum = tcp_sum_with_payload(
                seg.pseudo_header(frame),
                &frame[l.l4..l.payload],
                checksum_sum(payload),
            );
            if checksum::fold(u32::from(sum)) != 0 {
                return false;
            }
        }
        // Frames are at most 64 KiB and their offsets within a receive buffer: these fit u32.
        self.tail[self.tail_count] = Span {
            buf: at.buf,
            start: at.offset + l.payload as u32,
            len: payload.len() as u32,
        };
        self.tail_count += 1;
        self.len += payload.len();
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(payload.len() as u32);
        if !l.udp {
            // The latest window advertisement wins.
            self.buf[l.l4 + 14..l.l4 + 16].copy_from_slice(&frame[l.l4 + 14..l.l4 + 16]);
        }
        if seg.psh {
            self.buf[l.l4 + 13] |= tcp_flags::PSH;
            self.closed = true;
        }
        if payload.len() < self.gso_size || self.tail_count == MAX_TAIL_SEGMENTS {
            self.closed = true;
        }
        true
    }

    /// Fixes the headers of a merged super-frame and describes it.
    fn finish(&mut self) -> VirtioNetHdrRepr {
        let l = self.layout;
        let ip_len = self.len - l.l3;
        let l4_len = self.len - l.l4;
        let frame = &mut self.buf[..self.head_len];
        // Lengths fit 16 bits: `can_append` kept the IP packet within MAX_COALESCED_IP_LEN.
        let pseudo = if l.v6 {
            let mut ip = Ipv6Packet::new_unchecked(&mut frame[l.l3..]);
            ip.set_payload_len((ip_len - IPV6_HEADER_LEN) as u16);
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            checksum::pseudo_header_v6(&src, &dst, l.protocol(), l4_len as u32)
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[l.l3..]);
            ip.set_total_len(ip_len as u16);
            ip.fill_checksum();
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            checksum::pseudo_header_v4(src, dst, l.protocol(), l4_len as u32)
        };
        // NEEDS_CSUM: the field holds the pseudo-header sum, folded and not inverted.
        let partial = checksum::combine(&[pseudo]).to_be_bytes();
        let (gso, csum_offset) = if l.udp {
            // The UDP length covers the whole super-frame; the kernel splits it per datagram.
            frame[l.l4 + 4..l.l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            (gso_type::UDP_L4, UDP_CSUM_OFFSET)
        } else if l.v6 {
            (gso_type::TCPV6, TCP_CSUM_OFFSET)
        } else {
            (gso_type::TCPV4, TCP_CSUM_OFFSET)
        };
        let at = l.l4 + usize::from(csum_offset);
        frame[at..at + 2].copy_from_slice(&partial);
        VirtioNetHdrRepr {
            flags: vnet_flags::NEEDS_CSUM,
            gso_type: gso,
            hdr_len: l.payload as u16,
            gso_size: self.gso_size as u16,
            csum_start: l.l4 as u16,
            csum_offset,
        }
    }
}

/// A parsed TCP segment or UDP datagram.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    layout: L4Layout,
    /// TCP sequence number (0 for UDP).
    seq: u32,
    payload_len: usize,
    psh: bool,
    /// IPv4 without options (or IPv6), with payload; for TCP, data with plain ACK (PSH allowed)
    /// flags: may be merged.
    mergeable: bool,
}

impl Candidate {
    fn parse(frame: &[u8]) -> Option<Candidate> {
        let layout = parse_l4(frame)?;
        let payload_len = layout.end - layout.payload;
        let ipv4_plain = layout.v6 || layout.l4 - layout.l3 == Ipv4Packet::<&[u8]>::HEADER_LEN;
        if layout.udp {
            return Some(Candidate {
                layout,
                seq: 0,
                payload_len,
                psh: false,
                mergeable: ipv4_plain && payload_len > 0,
            });
        }
        let tcp = TcpPacket::new_unchecked(&frame[layout.l4..layout.end]);
        let flags = tcp.flags();
        Some(Candidate {
            layout,
            seq: tcp.seq_number(),
            payload_len,
            psh: flags & tcp_flags::PSH != 0,
            mergeable: ipv4_plain && payload_len > 0 && flags & !tcp_flags::PSH == tcp_flags::ACK,
        })
    }

    /// The TCP/UDP pseudo-header sum of this segment.
    fn pseudo_header(&self, frame: &[u8]) -> u32 {
        let l = &self.layout;
        let l4_len = (l.end - l.l4) as u32;
        if l.v6 {
            let (src, dst) = ipv6_addrs(frame, l);
            checksum::pseudo_header_v6(&src, &dst, l.protocol(), l4_len)
        } else {
            let (src, dst) = ipv4_addrs(frame, l);
            checksum::pseudo_header_v4(src, dst, l.protocol(), l4_len)
        }
    }

    /// A UDP/IPv4 datagram sent without checksum (field 0): nothing to verify (RFC 768). Over
    /// IPv6 a zero UDP checksum is invalid, and verification fails as it should.
    fn unchecked_udp(&self, frame: &[u8]) -> bool {
        let l = &self.layout;
        l.udp && !l.v6 && frame[l.l4 + 6..l.l4 + 8] == [0, 0]
    }

    fn checksum_ok(&self, frame: &[u8]) -> bool {
        let l = &self.layout;
        self.unchecked_udp(frame) || tcp_checksum_ok(&frame[l.l4..l.end], self.pseudo_header(frame))
    }
}

/// Merges consecutive in-order TCP segments of a flow into super-frames (software GRO for the
/// TAP), within one receive batch: [`Coalescer::push`] each decapsulated frame, then
/// [`Coalescer::flush`] at the end of the batch, so no frame waits for the next one.
///
/// UDP datagrams of one flow (same headers but for IP length, ident and checksum and UDP length
/// and checksum) are merged the same way while they have the first one's payload size (a
/// shorter one ends the super-frame), into a `gso_type` UDP_L4 super-frame with `NEEDS_CSUM`:
/// the kernel splits it back into the same datagrams (in the receiving socket, or on the way
/// out of a forwarding container), so a stream of small datagrams costs one TAP write per batch
/// instead of one per datagram. Each datagram's checksum is verified first (IPv4 datagrams sent
/// without one have none to verify).
///
/// A segment is merged when its flow (tag, addresses, ports) has a super-frame in progress whose
/// Ethernet, IP and TCP headers equal its own except lengths, IPv4 ident and checksum, sequence
/// number, window and PSH; the IPv4 header has no options and is not a fragment; its sequence
/// number continues the super-frame; its flags are ACK (PSH allowed: it ends the super-frame);
/// every merged payload equals the first one's size (`gso_size`) except the last, which may be
/// shorter and ends the super-frame; the result stays within 64 KiB; and vxnet verified its TCP
/// checksum. A segment that fails verification, and any frame that cannot be merged, is handed
/// back alone with flags 0 (the kernel checks it) — in order: the flow's super-frame in
/// progress goes first. A super-frame of one segment is handed back as that segment, unchanged,
/// with `DATA_VALID` (its checksum was verified).
///
/// Frames are handed to the `emit` callback; slots (one buffer for the first segment each) are
/// allocated once in [`Coalescer::new`]. The payloads merged after a super-frame's first segment
/// are not copied: the frame handed back lists where they are in the caller's receive buffers
/// (see [`Origin`]), and the caller writes them from there (one gathered write).
#[derive(Debug)]
pub struct Coalescer {
    slots: Vec<Slot>,
    /// The slot that took the last segment: where the next one most likely goes.
    last: Option<usize>,
    next_evict: usize,
    stats: CoalescerStats,
    merge_udp: bool,
}

impl Coalescer {
    /// Flows merged at the same time by default.
    pub const DEFAULT_SLOTS: usize = 8;

    /// A coalescer that builds up to `slots` super-frames at once (at least 1; ~64 KiB each).
    pub fn new(slots: usize) -> Coalescer {
        Coalescer {
            slots: (0..slots.max(1)).map(|_| Slot::new()).collect(),
            last: None,
            next_evict: 0,
            stats: CoalescerStats::default(),
            merge_udp: true,
        }
    }

    /// Whether UDP datagrams are merged (into `gso_type` UDP_L4 super-frames); on by default.
    /// Off for a TAP whose kernel refuses UDP_L4 writes: UDP then passes one datagram per frame.
    pub fn set_merge_udp(&mut self, merge: bool) {
        self.merge_udp = merge;
    }

    /// Counters since creation.
    pub fn stats(&self) -> CoalescerStats {
        self.stats
    }

    /// Super-frames in progress.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.active).count()
    }

    /// Takes one inner frame of network `tag`, received at `at`; hands frames that are complete
    /// to `emit`. The buffer behind `at` must stay unchanged until the next [`Coalescer::flush`].
    pub fn push<F: FnMut(CoalescedFrame<'_>)>(
        &mut self,
        tag: Vni,
        frame: &[u8],
        at: Origin,
        emit: &mut F,
    ) {
        self.stats.frames_in += 1;
        let Some(seg) = Candidate::parse(frame).filter(|c| self.merge_udp || !c.layout.udp) else {
            self.emit_alone(tag, frame, 0, emit);
            return;
        };
        // The common case, a flow's next segment, usually for the slot that took the last one:
        // that slot's header comparison covers addresses and ports, so a match is the flow's.
        if seg.mergeable
            && let Some(i) = self.last
            && self.slots[i].active
            && self.slots[i].key.tag == tag
            && self.slots[i].can_append(frame, &seg)
        {
            self.append(i, tag, frame, at, &seg, emit);
            return;
        }
        let key = FlowKey::of(tag, frame, &seg.layout);
        let slot = self.slots.iter().position(|s| s.active && s.key == key);
        if let Some(i) = slot
            && seg.mergeable
            && self.slots[i].can_append(frame, &seg)
        {
            self.append(i, tag, frame, at, &seg, emit);
            return;
        }
        if !seg.mergeable || !seg.checksum_ok(frame) {
            if seg.mergeable {
                self.stats.bad_checksum += 1;
            }
            if let Some(i) = slot {
                self.flush_slot(i, emit);
            }
            self.emit_alone(tag, frame, 0, emit);
            return;
        }
        if let Some(i) = slot {
            self.flush_slot(i, emit);
        }
        if seg.psh {
            // Nothing may follow a PSH segment: no point in holding it.
            self.emit_alone(tag, frame, vnet_flags::DATA_VALID, emit);
            return;
        }
        let i = match slot.or_else(|| self.slots.iter().position(|s| !s.active)) {
            Some(i) => i,
            None => {
                let i = self.next_evict;
                self.next_evict = (i + 1) % self.slots.len();
                self.flush_slot(i, emit);
                i
            }
        };
        self.slots[i].start(key, frame, &seg);
        self.last = Some(i);
    }

    /// Appends `seg` (accepted by slot `i`'s [`Slot::can_append`]) if its checksum verifies;
    /// otherwise ends the super-frame and hands the segment on alone, unverified.
    fn append<F: FnMut(CoalescedFrame<'_>)>(
        &mut self,
        i: usize,
        tag: Vni,
        frame: &[u8],
        at: Origin,
        seg: &Candidate,
        emit: &mut F,
    ) {
        if self.slots[i].append_verified(frame, at, seg) {
            self.last = Some(i);
            if self.slots[i].closed {
                self.flush_slot(i, emit);
            }
        } else {
            self.stats.bad_checksum += 1;
            self.flush_slot(i, emit);
            self.emit_alone(tag, frame, 0, emit);
        }
    }

    /// Hands every super-frame in progress to `emit`. Call at the end of each receive batch.
    pub fn flush<F: FnMut(CoalescedFrame<'_>)>(&mut self, emit: &mut F) {
        for i in 0..self.slots.len() {
            if self.slots[i].active {
                self.flush_slot(i, emit);
            }
        }
    }

    fn emit_alone<F: FnMut(CoalescedFrame<'_>)>(
        &mut self,
        tag: Vni,
        frame: &[u8],
        flags: u8,
        emit: &mut F,
    ) {
        self.stats.frames_out += 1;
        emit(CoalescedFrame {
            tag,
            vnet: VirtioNetHdrRepr {
                flags,
                ..VirtioNetHdrRepr::default()
            },
            head: frame,
            tail: &[],
            segments: 1,
        });
    }

    fn flush_slot<F: FnMut(CoalescedFrame<'_>)>(&mut self, i: usize, emit: &mut F) {
        let slot = &mut self.slots[i];
        slot.active = false;
        self.stats.frames_out += 1;
        let vnet = if slot.segments == 1 {
            VirtioNetHdrRepr {
                flags: vnet_flags::DATA_VALID,
                ..VirtioNetHdrRepr::default()
            }
        } else {
            self.stats.super_frames += 1;
            slot.finish()
        };
        emit(CoalescedFrame {
            tag: slot.key.tag,
            vnet,
            head: &slot.buf[..slot.head_len],
            tail: &slot.tail[..slot.tail_count],
            segments: slot.segments,
        });
    }
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new(Self::DEFAULT_SLOTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC_A: [u8; 6] = [2, 0x42, 10, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0x42, 10, 0, 0, 2];

    /// An Ethernet/IPv4/TCP super-frame with `payload`, flags, 12 bytes of options, DF, ident 7,
    /// and the TCP checksum field holding the pseudo-header sum (NEEDS_CSUM).
    fn super_v4(payload: &[u8], flags: u8, seq: u32) -> Vec<u8> {
        let hdr = 14 + 20 + 32;
        let mut f = vec![0u8; hdr + payload.len()];
        f[0..6].copy_from_slice(&MAC_B);
        f[6..12].copy_from_slice(&MAC_A);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip_len = (f.len() - 14) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[18..20].copy_from_slice(&7u16.to_be_bytes());
        f[20] = 0x40;
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&5001u16.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[42..46].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        f[46] = 8 << 4;
        f[47] = flags;
        f[48..50].copy_from_slice(&502u16.to_be_bytes());
        // NOP NOP timestamps
        f[54..66].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        f[66..].copy_from_slice(payload);
        let tcp_len = (f.len() - 34) as u32;
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            6,
            tcp_len,
        );
        f[50..52].copy_from_slice(&checksum::combine(&[pseudo]).to_be_bytes());
        f
    }

    fn vnet_v4(mss: u16) -> VirtioNetHdrRepr {
        VirtioNetHdrRepr {
            flags: vnet_flags::NEEDS_CSUM,
            gso_type: gso_type::TCPV4,
            hdr_len: 66,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    /// Each frame is its own receive buffer (`Origin { buf: i, offset: 0 }`).
    fn coalesce_all<F: AsRef<[u8]>>(frames: &[F]) -> Vec<(VirtioNetHdrRepr, Vec<u8>, usize)> {
        let mut c = Coalescer::new(4);
        let mut out = Vec::new();
        let mut emit = |f: CoalescedFrame<'_>| out.push((f.vnet, f.to_vec(frames), f.segments));
        for (i, f) in frames.iter().enumerate() {
            let at = Origin {
                buf: i as u32,
                offset: 0,
            };
            c.push(4096, f.as_ref(), at, &mut emit);
        }
        c.flush(&mut emit);
        assert_eq!(c.pending(), 0);
        out
    }

    /// The inner frames of a segmented super-frame, each copied whole.
    fn frames_of(batch: &SegmentBatch, sf: &[u8]) -> Vec<Vec<u8>> {
        (0..batch.len())
            .map(|i| batch.frame_parts(sf, i).concat())
            .collect()
    }

    #[test]
    fn segments_then_coalesces_back() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 + 3) as u8).collect();
        let sf = super_v4(&payload, tcp_flags::ACK | tcp_flags::PSH, 1000);
        let mut batch = SegmentBatch::default();
        segment_tcp(&vnet_v4(1448), &sf, &mut batch).unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.stride(), 8 + 66 + 1448);
        let out = coalesce_all(&frames_of(&batch, &sf));
        assert_eq!(out.len(), 1, "one super-frame");
        let (vnet, frame, n) = &out[0];
        assert_eq!(*n, 3);
        assert_eq!(*vnet, vnet_v4(1448));
        // Same bytes, except the ident (kept from the first segment) which is the original's.
        assert_eq!(frame, &sf);
    }

    /// As the data plane uses it: segments received back to back in one GRO buffer, each behind
    /// an 8-byte header; merged payloads are read from that buffer at their offsets.
    #[test]
    fn coalesces_from_offsets_in_a_shared_receive_buffer() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 13 + 1) as u8).collect();
        let sf = super_v4(&payload, tcp_flags::ACK, 77);
        let mut batch = SegmentBatch::default();
        segment_tcp(&vnet_v4(1000), &sf, &mut batch).unwrap();
        let mut gro = Vec::new();
        for i in 0..batch.len() {
            let [head, body] = batch.segment(&sf, i);
            gro.extend_from_slice(head);
            gro.extend_from_slice(body);
        }
        let bufs = [vec![0xEE; 100], gro];
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        let mut emit = |f: CoalescedFrame<'_>| {
            assert_eq!(f.len(), f.to_vec(&bufs).len());
            out.push((f.to_vec(&bufs), f.segments, f.tail.len()));
        };
        for (i, datagram) in bufs[1].chunks(batch.stride()).enumerate() {
            let at = Origin {
                buf: 1,
                offset: (i * batch.stride() + EGRESS_HEADROOM) as u32,
            };
            c.push(1, &datagram[EGRESS_HEADROOM..], at, &mut emit);
        }
        c.flush(&mut emit);
        assert_eq!(
            out,
            vec![(sf, 10, 9)],
            "one super-frame, 9 payloads by reference"
        );
    }

    #[test]
    fn complete_checksum_folds_from_csum_start() {
        let sf = super_v4(b"hello, world", tcp_flags::ACK, 1);
        let mut f = sf.clone();
        let vnet = VirtioNetHdrRepr {
            gso_type: gso_type::NONE,
            ..vnet_v4(0)
        };
        complete_checksum(&vnet, &mut f).unwrap();
        let tcp = TcpPacket::new_checked(&f[34..]).unwrap();
        assert!(tcp.verify_checksum_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)));
        let bad = VirtioNetHdrRepr {
            csum_start: f.len() as u16 - 1,
            ..vnet
        };
        assert_eq!(
            complete_checksum(&bad, &mut f),
            Err(OffloadError::BadChecksumOffsets)
        );
        let mut g = sf.clone();
        complete_checksum(&VirtioNetHdrRepr::default(), &mut g).unwrap();
        assert_eq!(g, sf, "no NEEDS_CSUM: untouched");
    }

    #[test]
    fn rejects_what_it_does_not_segment() {
        let sf = super_v4(&[0u8; 3000], tcp_flags::ACK, 1);
        let mut batch = SegmentBatch::default();
        let udp = VirtioNetHdrRepr {
            gso_type: gso_type::UDP_L4,
            ..vnet_v4(1448)
        };
        assert_eq!(
            segment_tcp(&udp, &sf, &mut batch),
            Err(OffloadError::UnsupportedGso(gso_type::UDP_L4))
        );
        let v6 = VirtioNetHdrRepr {
            gso_type: gso_type::TCPV6,
            ..vnet_v4(1448)
        };
        assert_eq!(
            segment_tcp(&v6, &sf, &mut batch),
            Err(OffloadError::UnsupportedGso(gso_type::TCPV6))
        );
        assert_eq!(
            segment_tcp(&vnet_v4(0), &sf, &mut batch),
            Err(OffloadError::ZeroGsoSize)
        );
        let off = VirtioNetHdrRepr {
            csum_start: 30,
            ..vnet_v4(1448)
        };
        assert_eq!(
            segment_tcp(&off, &sf, &mut batch),
            Err(OffloadError::BadChecksumOffsets)
        );
        assert_eq!(
            segment_tcp(&vnet_v4(1448), &sf[..50], &mut batch),
            Err(OffloadError::Malformed)
        );
        let mut small = SegmentBatch::default();
        assert_eq!(
            segment_tcp(&vnet_v4(1), &sf, &mut small),
            Err(OffloadError::NoRoom)
        );
        assert!(small.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// segment → coalesce reproduces the super-frame's headers and payload.
        #[test]
        fn segment_coalesce_roundtrip(
            len in 1usize..20_000,
            mss in 200u16..1500,
            seq in any::<u32>(),
            psh in any::<bool>(),
            seed in any::<u8>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let flags = tcp_flags::ACK | if psh { tcp_flags::PSH } else { 0 };
            let sf = super_v4(&payload, flags, seq);
            let mut batch = SegmentBatch::default();
            segment_tcp(&vnet_v4(mss), &sf, &mut batch).unwrap();
            prop_assert_eq!(batch.len(), len.div_ceil(usize::from(mss)));
            let mut total = 0;
            let frames = frames_of(&batch, &sf);
            for (i, f) in frames.iter().enumerate() {
                // The GSO send's layout: every datagram `stride` long but the last.
                let datagram: usize = batch.segment(&sf, i).iter().map(|p| p.len()).sum();
                if i + 1 < frames.len() {
                    prop_assert_eq!(datagram, batch.stride());
                } else {
                    prop_assert!(datagram <= batch.stride());
                }
                prop_assert_eq!(datagram, EGRESS_HEADROOM + f.len());
                let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
                prop_assert!(ip.verify_checksum());
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                prop_assert!(tcp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
                prop_assert_eq!(tcp.seq_number(), seq.wrapping_add(total as u32));
                total += tcp.payload().len();
            }
            prop_assert_eq!(total, len);
            prop_assert_eq!(batch.frames_len(), frames.iter().map(Vec::len).sum::<usize>());
            let out = coalesce_all(&frames);
            // At most 1 + MAX_TAIL_SEGMENTS segments per super-frame (small MSS: several).
            let per_frame = 1 + MAX_TAIL_SEGMENTS;
            prop_assert_eq!(out.len(), batch.len().div_ceil(per_frame));
            if out.len() > 1 {
                let mut next = 0;
                for (vnet, frame, n) in &out {
                    prop_assert_eq!(*n, per_frame.min(batch.len() - next));
                    let seq0 = TcpPacket::new_checked(&frame[34..]).unwrap().seq_number();
                    prop_assert_eq!(seq0, seq.wrapping_add((next * usize::from(mss)) as u32));
                    if *n > 1 {
                        prop_assert_eq!(vnet.gso_type, gso_type::TCPV4);
                    }
                    next += n;
                }
                return Ok(());
            }
            let (vnet, frame, n) = &out[0];
            prop_assert_eq!(*n, batch.len());
            if *n == 1 {
                // One segment goes back unchanged, checksum complete.
                prop_assert_eq!(vnet.flags, vnet_flags::DATA_VALID);
                prop_assert_eq!(frame, &frames[0]);
            } else {
                prop_assert_eq!(*vnet, vnet_v4(mss));
                prop_assert_eq!(frame, &sf);
            }
        }

        /// The fast sum equals the reference one for every length and content.
        #[test]
        fn fast_checksum_matches_reference(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            start in 0usize..40,
        ) {
            let data = &bytes[start.min(bytes.len())..];
            prop_assert_eq!(checksum_sum(data), checksum::sum(data));
        }

        /// Arbitrary bytes and headers never panic either engine.
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            flags in any::<u8>(),
            gso in any::<u8>(),
            gso_size in any::<u16>(),
            csum_start in any::<u16>(),
            csum_offset in any::<u16>(),
        ) {
            let vnet = VirtioNetHdrRepr { flags, gso_type: gso, hdr_len: 0, gso_size, csum_start, csum_offset };
            let mut batch = SegmentBatch::default();
            let _ = segment_tcp(&vnet, &bytes, &mut batch);
            for i in 0..batch.len() + 1 {
                let _ = batch.segment(&bytes, i);
            }
            let mut copy = bytes.clone();
            let _ = complete_checksum(&vnet, &mut copy);
            let mut c = Coalescer::new(2);
            let mut n = 0;
            let mut emit = |_f: CoalescedFrame<'_>| n += 1;
            c.push(1, &bytes, Origin::default(), &mut emit);
            c.push(1, &bytes, Origin::default(), &mut emit);
            c.flush(&mut emit);
            prop_assert_eq!(n as u64, c.stats().frames_out);
        }

        /// Random bytes behind a valid Ethernet/IPv4/TCP header prefix never panic.
        #[test]
        fn mutated_frames_never_panic(
            len in 1usize..3000,
            mss in 1u16..2000,
            pos in proptest::collection::vec((0usize..80, any::<u8>()), 0..6),
        ) {
            let mut sf = super_v4(&vec![0xab; len], tcp_flags::ACK, 9);
            for (p, v) in pos {
                if p < sf.len() { sf[p] = v; }
            }
            let mut batch = SegmentBatch::default();
            let _ = segment_tcp(&vnet_v4(mss), &sf, &mut batch);
            let mut c = Coalescer::new(1);
            let frames = frames_of(&batch, &sf);
            let mut emit = |f: CoalescedFrame<'_>| {
                let _ = f.to_vec(&frames);
            };
            for (i, f) in frames.iter().enumerate() {
                c.push(1, f, Origin { buf: i as u32, offset: 0 }, &mut emit);
            }
            c.push(1, &sf, Origin::default(), &mut emit);
            c.flush(&mut emit);
        }
    }

    #[test]
    fn container_gso_max_size_keeps_a_super_frame_in_one_gso_send() {
        for mtu in [576u32, 1280, 1400, 1450, 1500, 8950, 9000] {
            let size = container_gso_max_size(mtu);
            // Largest TCP payload per super-frame the kernel would pick (slack 193..=321).
            for slack in [193u32, 321] {
                let goal = size.saturating_sub(slack);
                for (ip_tcp, opts) in [(40u32, 0u32), (40, 12), (60, 0), (60, 12)] {
                    let mss = mtu - ip_tcp - opts;
                    let segments = goal / mss;
                    let bytes = segments * (mtu + 22);
                    assert!(
                        segments <= 64 && bytes <= 65_507,
                        "mtu {mtu}, mss {mss}: {segments} segments, {bytes} bytes"
                    );
                }
            }
            assert!(size >= mtu && size <= 65_536, "mtu {mtu}: {size}");
        }
        // At the usual overlay MTU, still 43-44 segments: the cap costs almost nothing.
        assert!(container_gso_max_size(1450) / 1398 >= 43);
    }

    #[test]
    fn checksum_copy_copies_and_sums_like_checksum_sum() {
        let data: Vec<u8> = (0..3_000u32)
            .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
            .collect();
        for len in [0, 1, 2, 31, 32, 33, 64, 1397, 1398, 3_000] {
            let mut dst = vec![0xAAu8; len];
            let sum = checksum_copy(&data[..len], &mut dst);
            assert_eq!(dst, &data[..len], "len {len}");
            assert_eq!(sum, checksum_sum(&data[..len]), "len {len}");
            let mut dst = vec![0u8; len];
            assert_eq!(
                checksum_copy_lanes(&data[..len], &mut dst),
                sum,
                "portable, len {len}"
            );
        }
    }

    #[test]
    fn checksum_sum_is_the_same_with_and_without_avx2() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 2, 31, 32, 33, 63, 64, 65, 1397, 1398, 65_535, 70_000] {
            let portable = checksum_sum_lanes(&data[..len]);
            assert_eq!(checksum_sum(&data[..len]), portable, "len {len}");
            assert_eq!(checksum::sum(&data[..len]), portable, "len {len}");
        }
    }
}
