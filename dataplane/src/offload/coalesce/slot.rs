//! One super-frame being built by the [`Coalescer`](super::Coalescer): the segment parsed as a
//! candidate, the flow it belongs to, whether it may join, and the merged headers at the end.

use super::{MAX_COALESCED_IP_LEN, MAX_TAIL_SEGMENTS, Origin, Span};
use crate::fdb::Vni;
use crate::offload::TCP_CSUM_OFFSET;
use crate::offload::csum::{checksum_sum, tcp_checksum_ok, tcp_sum_with_payload};
use crate::offload::layout::{L4Layout, ipv4_addrs, ipv6_addrs, parse_l4};
use crate::wire::virtio_net_hdr::{flags as vnet_flags, gso_type};
use crate::wire::{self, Ipv4Packet, Ipv6Packet, TcpPacket, VirtioNetHdrRepr, checksum, tcp_flags};

/// Bytes of one slot: the largest super-frame with a VLAN tag.
const SLOT_BYTES: usize = wire::ethernet::VLAN_HEADER_LEN + MAX_COALESCED_IP_LEN;

/// Offset of the checksum field in a UDP header (`csum_offset` for UDP).
const UDP_CSUM_OFFSET: u16 = 6;

/// The identity of a TCP or UDP flow: addresses and ports (the rest is compared byte by byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct FlowKey {
    pub(super) tag: Vni,
    v6: bool,
    udp: bool,
    addrs: [u8; 32],
    ports: [u8; 4],
}

impl FlowKey {
    pub(super) fn of(tag: Vni, frame: &[u8], layout: &L4Layout) -> FlowKey {
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
pub(super) struct Slot {
    pub(super) active: bool,
    pub(super) key: FlowKey,
    layout: L4Layout,
    /// The first segment, copied: headers (fixed up by `finish`) and its payload.
    pub(super) buf: Box<[u8]>,
    /// Bytes of `buf` in use.
    pub(super) head_len: usize,
    /// The payloads merged after the first segment, where they were received.
    pub(super) tail: [Span; MAX_TAIL_SEGMENTS],
    pub(super) tail_count: usize,
    /// Length of the whole super-frame (head + tail).
    len: usize,
    gso_size: usize,
    pub(super) segments: usize,
    next_seq: u32,
    /// Nothing may be appended (the last segment was short or had PSH).
    pub(super) closed: bool,
    /// [`header_mask`] of `layout`.
    mask: [u8; HEADER_MASK_LEN],
}

impl Slot {
    pub(super) fn new() -> Slot {
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

    pub(super) fn start(&mut self, key: FlowKey, frame: &[u8], seg: &Candidate) {
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
    pub(super) fn can_append(&self, frame: &[u8], seg: &Candidate) -> bool {
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
    pub(super) fn append_verified(&mut self, frame: &[u8], at: Origin, seg: &Candidate) -> bool {
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
    pub(super) fn finish(&mut self) -> VirtioNetHdrRepr {
        let l = self.layout;
        let ip_len = self.len - l.l3;
        let l4_len = self.len - l.l4;
        let frame = &mut self.buf[..self.head_len];
        // Lengths fit 16 bits: `can_append` kept the IP packet within MAX_COALESCED_IP_LEN.
        let pseudo = if l.v6 {
            let mut ip = Ipv6Packet::new_unchecked(&mut frame[l.l3..]);
            ip.set_payload_len((ip_len - wire::ipv6::HEADER_LEN) as u16);
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
pub(super) struct Candidate {
    pub(super) layout: L4Layout,
    /// TCP sequence number (0 for UDP).
    seq: u32,
    payload_len: usize,
    pub(super) psh: bool,
    /// IPv4 without options (or IPv6), with payload; for TCP, data with plain ACK (PSH allowed)
    /// flags: may be merged.
    pub(super) mergeable: bool,
}

impl Candidate {
    pub(super) fn parse(frame: &[u8]) -> Option<Candidate> {
        let layout = parse_l4(frame)?;
        let payload_len = layout.end - layout.payload;
        let ipv4_plain = layout.v6 || layout.l4 - layout.l3 == wire::ipv4::HEADER_LEN;
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

    pub(super) fn checksum_ok(&self, frame: &[u8]) -> bool {
        let l = &self.layout;
        self.unchecked_udp(frame) || tcp_checksum_ok(&frame[l.l4..l.end], self.pseudo_header(frame))
    }
}
