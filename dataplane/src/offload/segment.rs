//! TSO on egress: cutting a TCP super-frame read from a TAP into MSS-sized inner frames,
//! described by a [`SegmentBatch`] for one gathered UDP GSO send.

use super::csum::{checksum_copy, checksum_sum, tcp_sum_with_payload};
use super::layout::{ipv4_addrs, ipv6_addrs, parse_tcp};
use super::{OffloadError, TCP_CSUM_OFFSET};
use crate::router::{EGRESS_HEADROOM, EGRESS_TAILROOM};
use crate::wire::virtio_net_hdr::{flags as vnet_flags, gso_type};
use crate::wire::{
    Ipv4Packet, Ipv6Packet, TcpPacket, VirtioNetHdrRepr, checksum, ip_protocol, ipv6, tcp_flags,
};

/// The MSS-sized inner frames of one super-frame, described for one UDP GSO send: the first
/// segment's payload is copied, every later segment's payload is referenced in the super-frame.
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
                .set_payload_len((ip_len - ipv6::HEADER_LEN) as u16);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::tests::{super_v4, vnet_v4};

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
}
