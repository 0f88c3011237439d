//! The offload engine: TCP segmentation and coalescing for the TAP's offload path. Sans-IO:
//! bytes in, bytes out, no system call, no clock; no allocation per packet once the buffers have
//! grown to the largest super-frame seen.
//!
//! With `IFF_VNET_HDR` + `TUNSETOFFLOAD(CSUM|TSO4|TSO6)` the kernel hands a TAP reader TCP
//! *super-frames* of up to ~64 KiB (one Ethernet/IP/TCP header, many MSS of payload) described by
//! a `virtio_net_hdr`, and accepts the same from a writer. The wire between VTEPs must carry
//! ordinary MTU-sized frames, so:
//!
//! - **egress** ([`segment_tcp`]): a super-frame read from the TAP is cut into MSS-sized inner
//!   frames described by a [`SegmentBatch`]: each segment's headers behind
//!   [`EGRESS_HEADROOM`](crate::router::EGRESS_HEADROOM) bytes for the VXLAN header, and its
//!   payload as a slice of the super-frame, so that the whole batch leaves in one gathered UDP
//!   GSO send (`UDP_SEGMENT` = stride). The first segment is the exception: it is copied whole
//!   (one MSS of payload per super-frame) so that the router can work on it in place. Every
//!   segment gets its own IPv4 total length, ident and header checksum (or IPv6 payload
//!   length), TCP sequence number, flags and full TCP checksum.
//!   Frames without GSO but with a partial checksum get it completed by [`complete_checksum`].
//! - **ingress** ([`Coalescer`]): inner frames decapsulated from one receive batch are merged per
//!   TCP flow back into super-frames (the reverse of the above, like the kernel's GRO) and
//!   written to the TAP with `gso_type` TCPV4/TCPV6 and `NEEDS_CSUM`. A segment is only merged
//!   after vxnet verified its TCP checksum itself: the outer UDP checksum of VXLAN is often zero
//!   and proves nothing (flannel's bad-checksum bug, flannel-io/flannel#1279), and once merged
//!   the kernel no longer checks the segments. UDP datagrams of one flow are merged likewise into `UDP_L4` super-frames. A super-frame's first
//!   segment is copied into the coalescer; the payloads merged after it stay where they were
//!   received (the frame handed back lists them as [`Span`]s). Everything else is passed
//!   through unchanged, one frame per write.
//!
//! The `hdr_len` the kernel reports is not trusted (on a TAP it is the skb's linear length, which
//! may include payload): header lengths are always parsed from the frame itself.
//!
//! One file per job: `csum` (checksum sums), `vnet` (`virtio_net_hdr` helpers), `segment`
//! (egress TSO), `coalesce` (ingress GRO), and `layout` (the header parser both engines share).

mod coalesce;
mod csum;
mod layout;
mod segment;
mod vnet;

pub use self::coalesce::{
    CoalescedFrame, Coalescer, CoalescerStats, MAX_COALESCED_IP_LEN, MAX_TAIL_SEGMENTS, Origin,
    Span,
};
pub use self::csum::{checksum_copy, checksum_sum};
pub use self::segment::{MAX_SEGMENTS, SegmentBatch, segment_tcp};
pub use self::vnet::{complete_checksum, container_gso_max_size, encode_vnet};

/// Offset of the checksum field in a TCP header (`virtio_net_hdr.csum_offset` for TCP).
pub const TCP_CSUM_OFFSET: u16 = 16;

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

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;
    use crate::router::EGRESS_HEADROOM;
    use crate::wire::virtio_net_hdr::{flags as vnet_flags, gso_type};
    use crate::wire::{Ipv4Packet, TcpPacket, VirtioNetHdrRepr, checksum, tcp_flags};
    use proptest::prelude::*;

    const MAC_A: [u8; 6] = [2, 0x42, 10, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0x42, 10, 0, 0, 2];

    /// An Ethernet/IPv4/TCP super-frame with `payload`, flags, 12 bytes of options, DF, ident 7,
    /// and the TCP checksum field holding the pseudo-header sum (NEEDS_CSUM).
    pub(super) fn super_v4(payload: &[u8], flags: u8, seq: u32) -> Vec<u8> {
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

    pub(super) fn vnet_v4(mss: u16) -> VirtioNetHdrRepr {
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
    pub(super) fn coalesce_all<F: AsRef<[u8]>>(
        frames: &[F],
    ) -> Vec<(VirtioNetHdrRepr, Vec<u8>, usize)> {
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
    pub(super) fn frames_of(batch: &SegmentBatch, sf: &[u8]) -> Vec<Vec<u8>> {
        (0..batch.len())
            .map(|i| batch.frame_parts(sf, i).concat())
            .collect()
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
}
