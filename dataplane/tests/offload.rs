//! The offload engine (`vxnet_dataplane::offload`) against frames built and checked by
//! etherparse 0.21: golden segmentation of TCPv4/TCPv6 super-frames (exact bytes and
//! checksums), and the coalescer's merge rules (what it merges and what it refuses).

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options, NetSlice, PacketBuilder,
    SlicedPacket, TcpOptionElement, TransportSlice,
};
use vxnet_dataplane::offload::{
    CoalescedFrame, Coalescer, OffloadError, Origin, SegmentBatch, complete_checksum, segment_tcp,
};
use vxnet_dataplane::router::EGRESS_HEADROOM;
use vxnet_dataplane::wire::virtio_net_hdr::{flags as vnet_flags, gso_type};
use vxnet_dataplane::wire::{Ipv4Packet, Ipv6Packet, TcpPacket, VirtioNetHdrRepr, tcp_flags};

const MAC_A: [u8; 6] = [2, 0x42, 10, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0x42, 10, 0, 0, 2];
const IP_A: [u8; 4] = [10, 30, 0, 1];
const IP_B: [u8; 4] = [10, 30, 0, 2];
const IP6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const IP6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const ACK: u32 = 0x1111_2222;
const VNI: u32 = 4096;

/// One TCP segment's variable parts.
#[derive(Clone, Copy, Debug)]
struct Seg {
    v6: bool,
    src_port: u16,
    seq: u32,
    ack: u32,
    ident: u16,
    psh: bool,
    fin: bool,
    cwr: bool,
    syn: bool,
    ece: bool,
    ip_options: bool,
    tos_ecn: u8,
}

impl Default for Seg {
    fn default() -> Self {
        Seg {
            v6: false,
            src_port: 40000,
            seq: 0xffff_f000, // wraps within a few segments
            ack: ACK,
            ident: 0xfffe, // wraps too
            psh: false,
            fin: false,
            cwr: false,
            syn: false,
            ece: false,
            ip_options: false,
            tos_ecn: 0,
        }
    }
}

/// An Ethernet/IP/TCP frame (ACK, timestamps option, window 502, DF) built by etherparse, with
/// valid checksums.
fn build(s: Seg, payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let ip = if s.v6 {
        eth.ipv6(IP6_A, IP6_B, 64)
    } else {
        let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, IP_A, IP_B).unwrap();
        h.identification = s.ident;
        h.dont_fragment = true;
        h.ecn = etherparse::IpEcn::try_new(s.tos_ecn).unwrap();
        if s.ip_options {
            h.options = Ipv4Options::try_from(&[1, 1, 1, 0][..]).unwrap();
        }
        eth.ip(IpHeaders::Ipv4(h, Ipv4Extensions::default()))
    };
    let mut tcp = ip.tcp(s.src_port, 5001, s.seq, 502).ack(s.ack);
    if s.psh {
        tcp = tcp.psh();
    }
    if s.fin {
        tcp = tcp.fin();
    }
    if s.cwr {
        tcp = tcp.cwr();
    }
    if s.syn {
        tcp = tcp.syn();
    }
    if s.ece {
        tcp = tcp.ece();
    }
    let tcp = tcp
        .options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(0x0a0b_0c0d, 0x01020304),
        ])
        .unwrap();
    let mut frame = Vec::new();
    tcp.write(&mut frame, payload).unwrap();
    frame
}

/// Offsets of the TCP header and of its payload in frames built by [`build`].
fn l4(s: Seg) -> usize {
    14 + if s.v6 {
        40
    } else if s.ip_options {
        24
    } else {
        20
    }
}

/// The pseudo-header sum, folded but not inverted, computed here word by word (independently of
/// the crate's checksum module).
fn pseudo(s: Seg, tcp_len: usize) -> u16 {
    let mut acc: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for w in bytes.chunks(2) {
            acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
    };
    if s.v6 {
        add(&IP6_A);
        add(&IP6_B);
        add(&(tcp_len as u32).to_be_bytes());
        add(&[0, 0, 0, 6]);
    } else {
        add(&IP_A);
        add(&IP_B);
        add(&[0, 6]);
        add(&(tcp_len as u16).to_be_bytes());
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A super-frame as a TSO TAP hands it over: the TCP checksum field holds the pseudo-header sum.
fn super_frame(s: Seg, payload: &[u8], mss: u16) -> (VirtioNetHdrRepr, Vec<u8>) {
    let mut f = build(s, payload);
    let at = l4(s);
    let sum = pseudo(s, f.len() - at);
    f[at + 16..at + 18].copy_from_slice(&sum.to_be_bytes());
    let vnet = VirtioNetHdrRepr {
        flags: vnet_flags::NEEDS_CSUM,
        gso_type: if s.v6 {
            gso_type::TCPV6
        } else {
            gso_type::TCPV4
        },
        // What a TAP reports: the linear length, not the headers' (never trusted).
        hdr_len: 128,
        gso_size: mss,
        csum_start: at as u16,
        csum_offset: 16,
    };
    (vnet, f)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + 7) as u8).collect()
}

/// Checks one frame with etherparse: IPv4 header checksum and TCP checksum valid; returns
/// (seq, flags byte, payload).
fn etherparse_check(frame: &[u8]) -> (u32, u8, Vec<u8>) {
    let ep = SlicedPacket::from_ethernet(frame).expect("etherparse accepts the segment");
    let (src4, dst4, src6, dst6) = match &ep.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.calc_header_checksum(), h.header_checksum, "IPv4 checksum");
            (h.source, h.destination, [0; 16], [0; 16])
        }
        Some(NetSlice::Ipv6(ip)) => (
            [0; 4],
            [0; 4],
            ip.header().source(),
            ip.header().destination(),
        ),
        other => panic!("not IP: {other:?}"),
    };
    let Some(TransportSlice::Tcp(tcp)) = &ep.transport else {
        panic!("not TCP")
    };
    let want = if matches!(ep.net, Some(NetSlice::Ipv4(_))) {
        tcp.calc_checksum_ipv4(src4, dst4).unwrap()
    } else {
        tcp.calc_checksum_ipv6(src6, dst6).unwrap()
    };
    assert_eq!(tcp.checksum(), want, "TCP checksum");
    let flags = tcp.slice()[13];
    (tcp.sequence_number(), flags, tcp.payload().to_vec())
}

/// Segment `i` of super-frame `sf`, whole (without headroom).
fn seg(batch: &SegmentBatch, sf: &[u8], i: usize) -> Vec<u8> {
    batch.frame_parts(sf, i).concat()
}

#[test]
fn golden_tcpv4_three_segments() {
    let base = Seg {
        psh: true,
        fin: true,
        cwr: true,
        ..Seg::default()
    };
    let data = payload(2500);
    let (vnet, sf) = super_frame(base, &data, 1000);
    let mut batch = SegmentBatch::default();
    segment_tcp(&vnet, &sf, &mut batch).unwrap();
    assert_eq!(batch.len(), 3);
    // Ethernet 14 + IPv4 20 + TCP 32 + MSS 1000, behind the VXLAN headroom.
    assert_eq!(batch.stride(), EGRESS_HEADROOM + 66 + 1000);
    let sent: usize = (0..batch.len())
        .flat_map(|i| batch.segment(&sf, i))
        .map(<[u8]>::len)
        .sum();
    assert_eq!(sent, 2 * batch.stride() + EGRESS_HEADROOM + 66 + 500);
    assert_eq!(batch.frames_len(), 3 * 66 + 2500);

    // The exact expected bytes, built independently by etherparse: ident + i, seq + offset,
    // CWR only on the first segment, PSH and FIN only on the last.
    let want: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let s = Seg {
                seq: base.seq.wrapping_add(1000 * i as u32),
                ident: base.ident.wrapping_add(i as u16),
                cwr: i == 0,
                psh: i == 2,
                fin: i == 2,
                ..base
            };
            build(s, &data[1000 * i..(1000 * (i + 1)).min(2500)])
        })
        .collect();
    for (i, w) in want.iter().enumerate() {
        let frame = seg(&batch, &sf, i);
        assert_eq!(&frame, w, "segment {i}");
        let (seq, flags, p) = etherparse_check(&frame);
        assert_eq!(seq, base.seq.wrapping_add(1000 * i as u32));
        assert_eq!(p, &data[1000 * i..(1000 * (i + 1)).min(2500)]);
        let expect_flags = match i {
            0 => tcp_flags::ACK | tcp_flags::CWR,
            1 => tcp_flags::ACK,
            _ => tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN,
        };
        assert_eq!(flags, expect_flags, "flags of segment {i}");
        // And by our own views.
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
    }
    // Golden values, pinned: IPv4 ident, total length, header checksum and TCP checksum.
    let fields: Vec<(u16, u16, u16, u16)> = (0..3)
        .map(|i| {
            let frame = seg(&batch, &sf, i);
            let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            (ip.ident(), ip.total_len(), ip.checksum(), tcp.checksum())
        })
        .collect();
    assert_eq!(fields, GOLDEN_V4);
    // The headroom is left for the VXLAN header (the router fills the first, then it is copied).
    let mut batch2 = batch.clone();
    batch2.first_mut()[..EGRESS_HEADROOM].copy_from_slice(&[8, 0, 0, 0, 0, 0x10, 0, 0]);
    batch2.replicate_headroom();
    for i in 0..3 {
        assert_eq!(
            &batch2.segment(&sf, i)[0][..EGRESS_HEADROOM],
            &[8, 0, 0, 0, 0, 0x10, 0, 0]
        );
    }
}

/// (ident, total length, IPv4 checksum, TCP checksum) of the three segments above.
const GOLDEN_V4: [(u16, u16, u16, u16); 3] = [
    (0xfffe, 1052, 0x229f, 0xdf0e),
    (0xffff, 1052, 0x229e, 0x3b07),
    (0x0000, 552, 0x2492, 0x53d8),
];

#[test]
fn golden_tcpv6_segments() {
    let base = Seg {
        v6: true,
        psh: true,
        ..Seg::default()
    };
    let data = payload(3000);
    let (vnet, sf) = super_frame(base, &data, 1220);
    let mut batch = SegmentBatch::default();
    segment_tcp(&vnet, &sf, &mut batch).unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch.stride(), EGRESS_HEADROOM + 86 + 1220);
    for i in 0..3 {
        let chunk = &data[1220 * i..(1220 * (i + 1)).min(3000)];
        let s = Seg {
            seq: base.seq.wrapping_add(1220 * i as u32),
            psh: i == 2,
            ..base
        };
        let frame = seg(&batch, &sf, i);
        assert_eq!(frame, build(s, chunk), "segment {i}");
        let (_, _, p) = etherparse_check(&frame);
        assert_eq!(p, chunk);
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        assert_eq!(usize::from(ip.payload_len()), 32 + chunk.len());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum_v6(&ip.src_addr(), &ip.dst_addr()));
    }
    let sums: Vec<u16> = (0..3)
        .map(|i| {
            TcpPacket::new_checked(&seg(&batch, &sf, i)[54..])
                .unwrap()
                .checksum()
        })
        .collect();
    assert_eq!(sums, GOLDEN_V6_TCP_CSUMS);
}

const GOLDEN_V6_TCP_CSUMS: [u16; 3] = [0xf14f, 0x8423, 0x87b3];

#[test]
fn segment_checks_the_header() {
    let s = Seg::default();
    let (vnet, sf) = super_frame(s, &payload(3000), 1000);
    let mut batch = SegmentBatch::default();
    // gso_type that does not match the frame, UDP_L4 (USO is never requested), csum offsets.
    for (v, err) in [
        (
            VirtioNetHdrRepr {
                gso_type: gso_type::TCPV6,
                ..vnet
            },
            OffloadError::UnsupportedGso(gso_type::TCPV6),
        ),
        (
            VirtioNetHdrRepr {
                gso_type: gso_type::UDP_L4,
                ..vnet
            },
            OffloadError::UnsupportedGso(gso_type::UDP_L4),
        ),
        (
            VirtioNetHdrRepr {
                csum_offset: 6,
                ..vnet
            },
            OffloadError::BadChecksumOffsets,
        ),
        (
            VirtioNetHdrRepr {
                gso_size: 0,
                ..vnet
            },
            OffloadError::ZeroGsoSize,
        ),
    ] {
        assert_eq!(segment_tcp(&v, &sf, &mut batch), Err(err));
    }
    // The ECN bit is carried: CWR semantics kept.
    let ecn = VirtioNetHdrRepr {
        gso_type: gso_type::TCPV4 | gso_type::ECN,
        ..vnet
    };
    segment_tcp(&ecn, &sf, &mut batch).unwrap();
    assert_eq!(batch.len(), 3);
    // Not TCP: a UDP frame marked TCPV4.
    let udp = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(IP_A, IP_B, 64)
            .udp(1, 2)
            .write(&mut f, &[0; 3000])
            .unwrap();
        f
    };
    assert_eq!(
        segment_tcp(&vnet, &udp, &mut batch),
        Err(OffloadError::Malformed)
    );
}

#[test]
fn completes_partial_checksums() {
    for v6 in [false, true] {
        let s = Seg {
            v6,
            ..Seg::default()
        };
        let good = build(s, &payload(777));
        let (vnet, mut f) = super_frame(s, &payload(777), 0);
        let vnet = VirtioNetHdrRepr {
            gso_type: gso_type::NONE,
            ..vnet
        };
        complete_checksum(&vnet, &mut f).unwrap();
        assert_eq!(f, good);
        etherparse_check(&f);
    }
}

// ---- coalescing ----

fn run(frames: &[Vec<u8>]) -> (Vec<(VirtioNetHdrRepr, Vec<u8>, usize)>, Coalescer) {
    let mut c = Coalescer::new(4);
    let mut out = Vec::new();
    let mut emit = |f: CoalescedFrame<'_>| {
        assert_eq!(f.tag, VNI);
        out.push((f.vnet, f.to_vec(frames), f.segments))
    };
    for (i, f) in frames.iter().enumerate() {
        let at = Origin {
            buf: i as u32,
            offset: 0,
        };
        c.push(VNI, f, at, &mut emit);
    }
    c.flush(&mut emit);
    (out, c)
}

/// Segments of one flow: `sizes` payload bytes each, in sequence, idents in sequence.
fn flow(base: Seg, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut seq = base.seq;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let s = Seg {
                seq,
                ident: base.ident.wrapping_add(i as u16),
                ..base
            };
            seq = seq.wrapping_add(n as u32);
            build(s, &payload(n))
        })
        .collect()
}

fn segments_of(out: &[(VirtioNetHdrRepr, Vec<u8>, usize)]) -> Vec<usize> {
    out.iter().map(|o| o.2).collect()
}

#[test]
fn coalesces_back_to_the_super_frame() {
    for v6 in [false, true] {
        let base = Seg {
            v6,
            psh: true,
            ..Seg::default()
        };
        let data = payload(20_000);
        let (vnet, sf) = super_frame(base, &data, 1400);
        let mut batch = SegmentBatch::default();
        segment_tcp(&vnet, &sf, &mut batch).unwrap();
        let frames: Vec<Vec<u8>> = (0..batch.len()).map(|i| seg(&batch, &sf, i)).collect();
        let (out, c) = run(&frames);
        assert_eq!(out.len(), 1);
        let (got_vnet, got, n) = &out[0];
        assert_eq!(*n, 15);
        assert_eq!(
            *got_vnet,
            VirtioNetHdrRepr {
                hdr_len: l4(base) as u16 + 32,
                ..vnet
            }
        );
        assert_eq!(got, &sf, "headers and payload reproduced (v6: {v6})");
        assert_eq!(c.stats().super_frames, 1);
        assert_eq!(c.stats().frames_in, 15);
    }
}

#[test]
fn refuses_out_of_order() {
    let f = flow(Seg::default(), &[1000, 1000, 1000]);
    let (out, _) = run(&[f[0].clone(), f[2].clone(), f[1].clone()]);
    assert_eq!(segments_of(&out), [1, 1, 1]);
    // Order kept, frames unchanged, checksums verified hence DATA_VALID.
    for (o, want) in out.iter().zip([&f[0], &f[2], &f[1]]) {
        assert_eq!(&o.1, want);
        assert_eq!(o.0.flags, vnet_flags::DATA_VALID);
        assert_eq!(o.0.gso_type, gso_type::NONE);
    }
    // A retransmission (same seq twice) is not merged either.
    let (out, _) = run(&[f[0].clone(), f[0].clone()]);
    assert_eq!(segments_of(&out), [1, 1]);
}

#[test]
fn keeps_flows_apart() {
    let a = flow(Seg::default(), &[1000, 1000]);
    let b = flow(
        Seg {
            src_port: 40001,
            ..Seg::default()
        },
        &[1000, 1000],
    );
    let (out, _) = run(&[a[0].clone(), b[0].clone(), a[1].clone(), b[1].clone()]);
    assert_eq!(segments_of(&out), [2, 2]);
    let ports: Vec<u16> = out
        .iter()
        .map(|o| u16::from_be_bytes([o.1[34], o.1[35]]))
        .collect();
    assert_eq!(ports, [40000, 40001]);
    // A different ack number is a different super-frame.
    let c = flow(
        Seg {
            ack: ACK + 1,
            seq: Seg::default().seq.wrapping_add(2000),
            ..Seg::default()
        },
        &[1000],
    );
    let (out, _) = run(&[a[0].clone(), a[1].clone(), c[0].clone()]);
    assert_eq!(segments_of(&out), [2, 1]);
    // Neither is a different IP ECN field (a CE mark must reach the receiver as is).
    let ce = flow(
        Seg {
            tos_ecn: 3,
            seq: Seg::default().seq.wrapping_add(2000),
            ..Seg::default()
        },
        &[1000],
    );
    let (out, _) = run(&[a[0].clone(), a[1].clone(), ce[0].clone()]);
    assert_eq!(segments_of(&out), [2, 1]);
}

#[test]
fn keeps_networks_apart() {
    // Byte-identical flows in two networks (VNIs) are two flows, however they interleave.
    let f = flow(Seg::default(), &[1000, 1000, 1000, 1000]);
    let mut c = Coalescer::new(4);
    let mut out = Vec::new();
    let mut emit = |f: CoalescedFrame<'_>| out.push((f.tag, f.segments));
    for (i, frame) in f.iter().enumerate() {
        let at = Origin {
            buf: i as u32,
            offset: 0,
        };
        c.push(VNI, frame, at, &mut emit);
        c.push(VNI + 1, frame, at, &mut emit);
    }
    c.flush(&mut emit);
    out.sort_unstable();
    assert_eq!(out, [(VNI, 4), (VNI + 1, 4)]);
}

#[test]
fn never_merges_a_bad_checksum() {
    let mut f = flow(Seg::default(), &[1000, 1000, 1000]);
    let last = f[1].len() - 1;
    f[1][last] ^= 0x40; // payload corrupted after the sender computed the checksum
    let (out, c) = run(&f);
    assert_eq!(segments_of(&out), [1, 1, 1]);
    assert_eq!(out[0].0.flags, vnet_flags::DATA_VALID);
    assert_eq!(
        out[1].0,
        VirtioNetHdrRepr::default(),
        "flags 0: the kernel verifies"
    );
    assert_eq!(out[1].1, f[1]);
    assert_eq!(out[2].0.flags, vnet_flags::DATA_VALID);
    assert_eq!(c.stats().bad_checksum, 1);
}

#[test]
fn never_merges_a_segment_whose_header_was_corrupted() {
    // The window is one of the header fields a merge may differ in; a flipped bit there must be
    // caught by the checksum that is verified while the payload is copied in.
    let mut f = flow(Seg::default(), &[1000, 1000, 1000]);
    f[1][14 + 20 + 14] ^= 0x01;
    let (out, c) = run(&f);
    assert_eq!(segments_of(&out), [1, 1, 1]);
    assert_eq!(out[1].0, VirtioNetHdrRepr::default());
    assert_eq!(out[1].1, f[1]);
    assert_eq!(c.stats().bad_checksum, 1);
}

#[test]
fn refuses_other_flags_and_ip_options() {
    let base = Seg::default();
    for odd in [
        Seg { fin: true, ..base },
        Seg { syn: true, ..base },
        Seg { cwr: true, ..base },
        Seg { ece: true, ..base },
    ] {
        let a = flow(base, &[1000]);
        let b = flow(
            Seg {
                seq: base.seq.wrapping_add(1000),
                ..odd
            },
            &[1000],
        );
        let (out, _) = run(&[a[0].clone(), b[0].clone(), b[0].clone()]);
        assert_eq!(segments_of(&out), [1, 1, 1], "{odd:?}");
        assert_eq!(
            out[1].0,
            VirtioNetHdrRepr::default(),
            "passed on unverified"
        );
        assert_eq!(out[1].1, b[0]);
    }
    let opts = flow(
        Seg {
            ip_options: true,
            ..base
        },
        &[1000, 1000],
    );
    let (out, _) = run(&opts);
    assert_eq!(segments_of(&out), [1, 1]);
    // Pure ACKs (no payload) pass through.
    let acks = flow(base, &[0, 0]);
    let (out, _) = run(&acks);
    assert_eq!(segments_of(&out), [1, 1]);
}

#[test]
fn psh_and_short_segments_end_a_super_frame() {
    let base = Seg::default();
    // PSH on the second: [0, 1] then [2].
    let mut f = flow(base, &[1000, 1000, 1000]);
    f[1] = build(
        Seg {
            seq: base.seq.wrapping_add(1000),
            ident: base.ident.wrapping_add(1),
            psh: true,
            ..base
        },
        &payload(1000),
    );
    let (out, _) = run(&f);
    assert_eq!(segments_of(&out), [2, 1]);
    let tcp_flags_of = |frame: &[u8]| frame[14 + 20 + 13];
    assert_eq!(tcp_flags_of(&out[0].1), tcp_flags::ACK | tcp_flags::PSH);
    // A short segment ends it: [1000, 500] then [1000].
    let (out, _) = run(&flow(base, &[1000, 500, 1000]));
    assert_eq!(segments_of(&out), [2, 1]);
    assert_eq!(out[0].0.gso_size, 1000);
    // A larger segment never follows a smaller one: [500] [1000, 1000].
    let (out, _) = run(&flow(base, &[500, 1000, 1000]));
    assert_eq!(segments_of(&out), [1, 2]);
}

#[test]
fn stays_within_64_kib() {
    let f = flow(Seg::default(), &[1448; 100]);
    let (out, _) = run(&f);
    let total: usize = out.iter().map(|o| o.2).sum();
    assert_eq!(total, 100);
    for (vnet, frame, n) in &out {
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(usize::from(ip.total_len()) <= 65_535);
        assert_eq!(usize::from(ip.total_len()), 52 + n * 1448);
        assert!(ip.verify_checksum());
        assert_eq!(vnet.gso_size, 1448);
        assert_eq!(vnet.csum_start, 34);
        // NEEDS_CSUM: the field holds the pseudo-header sum of the super-frame.
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(
            tcp.checksum(),
            pseudo(Seg::default(), frame.len() - 34),
            "pseudo-header sum"
        );
    }
    assert_eq!(segments_of(&out), [45, 45, 10]);
}

/// A UDP/IPv4 datagram of `len` payload bytes (filled with `fill`), checksummed by etherparse.
fn udp4(len: usize, fill: u8) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(IP_A, IP_B, 64)
        .udp(1, 2)
        .write(&mut f, &vec![fill; len])
        .unwrap();
    f
}

#[test]
fn passes_other_frames_through() {
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0; 28]);
        f
    };
    let mut bad_udp = udp4(100, 7);
    bad_udp[40] ^= 0xff; // the UDP checksum
    let (out, c) = run(&[arp.clone(), vec![1, 2, 3], bad_udp.clone()]);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].1, arp);
    assert_eq!(out[1].1, vec![1, 2, 3]);
    assert_eq!(
        out[2].1, bad_udp,
        "unverified: alone, for the kernel to drop"
    );
    assert!(out.iter().all(|o| o.0 == VirtioNetHdrRepr::default()));
    assert_eq!(c.stats().frames_out, 3);
    assert_eq!(c.stats().bad_checksum, 1);
}

/// Equal-sized datagrams of one UDP flow become one UDP_L4 super-frame: one header (lengths
/// covering everything, partial checksum), the payloads back to back; the kernel splits it at
/// `gso_size` into the same datagrams. A shorter datagram ends it.
#[test]
fn coalesces_udp_datagrams_of_one_flow() {
    let sizes = [100, 100, 100, 100, 40];
    let frames: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| udp4(n, i as u8))
        .collect();
    let (out, c) = run(&frames);
    assert_eq!(out.len(), 1, "{out:?}");
    let (vnet, frame, n) = &out[0];
    assert_eq!(*n, 5);
    assert_eq!(
        *vnet,
        VirtioNetHdrRepr {
            flags: vnet_flags::NEEDS_CSUM,
            gso_type: gso_type::UDP_L4,
            hdr_len: 42,
            gso_size: 100,
            csum_start: 34,
            csum_offset: 6,
        }
    );
    let payload: Vec<u8> = frames.iter().flat_map(|f| f[42..].to_vec()).collect();
    assert_eq!(&frame[42..], &payload[..]);
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(usize::from(ip.total_len()), frame.len() - 14);
    assert_eq!(
        usize::from(u16::from_be_bytes([frame[38], frame[39]])),
        frame.len() - 34,
        "UDP length"
    );
    assert_eq!(c.stats().super_frames, 1);

    // Without checksums (IPv4 allows 0) the datagrams merge as well; a larger one does not.
    let mut unchecked: Vec<Vec<u8>> = (0..3).map(|i| udp4(100, i)).collect();
    unchecked.push(udp4(300, 9));
    for f in &mut unchecked {
        f[40..42].copy_from_slice(&[0, 0]);
    }
    let (out, _) = run(&unchecked);
    assert_eq!(segments_of(&out), vec![3, 1]);
    assert_eq!(out[1].1, unchecked[3]);
}
