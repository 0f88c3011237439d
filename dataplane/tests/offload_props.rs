//! The offload fuzz targets' bodies (`dataplane/fuzz/src/lib.rs`: `offload_segment`,
//! `offload_coalesce`) run under proptest on stable, with nearly-valid inputs: real TCP
//! super-frames (IPv4 or IPv6, with or without a VLAN tag) and their segments, then mutated,
//! dropped, duplicated and reordered, so the checks reach the success paths that noise never does.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::prelude::*;
use vxnet_dataplane::offload::{MAX_SEGMENTS, SegmentBatch, segment_tcp};
use vxnet_dataplane::wire::virtio_net_hdr::{flags as vnet_flags, gso_type};
use vxnet_dataplane::wire::{VirtioNetHdr, VirtioNetHdrRepr, checksum, ip_protocol};

#[allow(dead_code)] // the wire bodies are wire_props.rs's
#[path = "../fuzz/src/lib.rs"]
mod touch;

/// What a super-frame looks like.
#[derive(Debug, Clone)]
struct Shape {
    v6: bool,
    vlan: bool,
    payload: usize,
    mss: u16,
    flags: u8,
    seq: u32,
    fill: u8,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        any::<bool>(),
        any::<bool>(),
        0usize..9000,
        1u16..3000,
        prop_oneof![
            Just(0x10u8),
            Just(0x18),
            Just(0x19),
            Just(0x90),
            any::<u8>()
        ],
        any::<u32>(),
        any::<u8>(),
    )
        .prop_map(|(v6, vlan, payload, mss, flags, seq, fill)| Shape {
            v6,
            vlan,
            payload,
            mss,
            flags,
            seq,
            fill,
        })
}

/// A TSO super-frame as a TAP hands it over (TCP checksum field = pseudo-header sum, 12 bytes
/// of options), with its `virtio_net_hdr` (NEEDS_CSUM, TCPV4/TCPV6).
fn super_frame(s: &Shape) -> (VirtioNetHdrRepr, Vec<u8>) {
    let l3 = if s.vlan { 18 } else { 14 };
    let ip_hdr = if s.v6 { 40 } else { 20 };
    let l4 = l3 + ip_hdr;
    let mut f = vec![0u8; l4 + 32 + s.payload];
    f[0..6].copy_from_slice(&[2, 0x42, 10, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0x42, 10, 0, 0, 1]);
    if s.vlan {
        f[12..16].copy_from_slice(&[0x81, 0, 0, 7]);
    }
    let ethertype: [u8; 2] = if s.v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    f[l3 - 2..l3].copy_from_slice(&ethertype);
    let (frame_len, tcp_len) = (f.len(), (f.len() - l4) as u32);
    let pseudo = if s.v6 {
        let (src, dst) = (Ipv6Addr::from(1u128), Ipv6Addr::from(2u128));
        f[l3] = 0x60;
        f[l3 + 4..l3 + 6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        f[l3 + 6] = ip_protocol::TCP;
        f[l3 + 7] = 64;
        f[l3 + 8..l3 + 24].copy_from_slice(&src.octets());
        f[l3 + 24..l3 + 40].copy_from_slice(&dst.octets());
        checksum::pseudo_header_v6(&src, &dst, ip_protocol::TCP, tcp_len)
    } else {
        let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        f[l3] = 0x45;
        f[l3 + 2..l3 + 4].copy_from_slice(&((frame_len - l3) as u16).to_be_bytes());
        f[l3 + 6] = 0x40;
        f[l3 + 8] = 64;
        f[l3 + 9] = ip_protocol::TCP;
        f[l3 + 12..l3 + 16].copy_from_slice(&src.octets());
        f[l3 + 16..l3 + 20].copy_from_slice(&dst.octets());
        let sum = checksum::fold(checksum::sum(&f[l3..l4]));
        f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
        checksum::pseudo_header_v4(src, dst, ip_protocol::TCP, tcp_len)
    };
    f[l4..l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
    f[l4 + 4..l4 + 8].copy_from_slice(&s.seq.to_be_bytes());
    f[l4 + 12] = 8 << 4;
    f[l4 + 13] = s.flags;
    f[l4 + 14..l4 + 16].copy_from_slice(&512u16.to_be_bytes());
    f[l4 + 16..l4 + 18].copy_from_slice(&checksum::combine(&[pseudo]).to_be_bytes());
    f[l4 + 20..l4 + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, b) in f[l4 + 32..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(29) ^ s.fill;
    }
    let tso = [gso_type::TCPV4, gso_type::TCPV6][usize::from(s.v6)];
    let vnet = VirtioNetHdrRepr {
        flags: vnet_flags::NEEDS_CSUM,
        gso_type: tso,
        hdr_len: (l4 + 32) as u16,
        gso_size: s.mss,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    (vnet, f)
}

fn with_vnet(vnet: &VirtioNetHdrRepr, frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; VirtioNetHdrRepr::LEN];
    vnet.emit(&mut VirtioNetHdr::new_unchecked(&mut out[..]));
    out.extend_from_slice(frame);
    out
}

fn length_prefixed(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// A change to a list of received segments.
#[derive(Debug, Clone)]
enum Edit {
    Flip { frame: usize, at: usize, value: u8 },
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..120, any::<u8>()).prop_map(|(frame, at, value)| Edit::Flip {
            frame,
            at,
            value
        }),
        any::<usize>().prop_map(Edit::Drop),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
    ]
}

fn apply(frames: &mut Vec<Vec<u8>>, e: &Edit) {
    if frames.is_empty() {
        return;
    }
    let n = frames.len();
    match *e {
        Edit::Flip { frame, at, value } => {
            let f = &mut frames[frame % n];
            if let Some(b) = f.get_mut(at) {
                *b = value;
            }
        }
        Edit::Drop(i) => {
            frames.remove(i % n);
        }
        Edit::Duplicate(i) => {
            let copy = frames[i % n].clone();
            frames.insert(i % n, copy);
        }
        Edit::Swap(a, b) => frames.swap(a % n, b % n),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn segment_valid_super_frames(s in shape()) {
        let (vnet, f) = super_frame(&s);
        touch::offload_segment(&with_vnet(&vnet, &f));
        // The success path is reached: a valid super-frame always segments, unless its MSS is
        // below anything the kernel sends.
        let fits = s.payload.div_ceil(usize::from(s.mss)) <= MAX_SEGMENTS;
        prop_assert_eq!(segment_tcp(&vnet, &f, &mut SegmentBatch::default()).is_ok(), fits);
    }

    #[test]
    fn segment_mutated_super_frames(
        s in shape(),
        flips in vec((0usize..140, any::<u8>()), 1..6),
    ) {
        let (vnet, f) = super_frame(&s);
        let mut input = with_vnet(&vnet, &f);
        for (at, value) in flips {
            if let Some(b) = input.get_mut(at) {
                *b = value;
            }
        }
        touch::offload_segment(&input);
    }

    #[test]
    fn coalesce_segments_of_two_flows_edited(
        a in shape(),
        b in shape(),
        edits in vec(edit(), 0..6),
    ) {
        let mut frames = Vec::new();
        let mut batch = SegmentBatch::default();
        for s in [a, b] {
            let (vnet, f) = super_frame(&s);
            if segment_tcp(&vnet, &f, &mut batch).is_ok() {
                frames.extend((0..batch.len()).map(|i| batch.frame_parts(&f, i).concat()));
            }
        }
        for e in &edits {
            apply(&mut frames, e);
        }
        touch::offload_coalesce(&length_prefixed(&frames));
    }

    #[test]
    fn coalesce_noise(data in vec(any::<u8>(), 0..600)) {
        touch::offload_coalesce(&data);
    }
}
