//! The offload engine's per-super-frame costs: TSO segmentation of a 64 KiB TCP super-frame
//! (45 × 1398-byte segments, the MSS of a 1450-byte overlay with timestamps), coalescing the 45
//! segments back, and the Internet checksum over 64 KiB (the wire module's and the offload
//! engine's lane-parallel one). Throughput is in payload bytes, so
//! criterion reports GiB/s next to the time per 64 KiB.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vxnet_dataplane::offload::{
    CoalescedFrame, Coalescer, Origin, SegmentBatch, checksum_sum, segment_tcp,
};
use vxnet_dataplane::wire::checksum;
use vxnet_dataplane::wire::virtio_net_hdr::{flags, gso_type};
use vxnet_dataplane::wire::{Ipv4Packet, VirtioNetHdrRepr};

const MSS: usize = 1398;
const SEGMENTS: usize = 45;
const HDR: usize = 14 + 20 + 32;

/// An Ethernet/IPv4/TCP (timestamps) super-frame of `SEGMENTS * MSS` payload bytes, as a TSO
/// TAP hands it over (TCP checksum field = pseudo-header sum).
fn super_frame() -> (VirtioNetHdrRepr, Vec<u8>) {
    let payload = SEGMENTS * MSS;
    let mut f = vec![0u8; HDR + payload];
    f[0..6].copy_from_slice(&[2, 0x42, 10, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0x42, 10, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    let ip_len = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[20] = 0x40;
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[38..42].copy_from_slice(&1u32.to_be_bytes());
    f[42..46].copy_from_slice(&1u32.to_be_bytes());
    f[46] = 8 << 4;
    f[47] = 0x10; // ACK
    f[48..50].copy_from_slice(&502u16.to_be_bytes());
    f[54..66].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, b) in f[HDR..].iter_mut().enumerate() {
        *b = (i * 31 + 7) as u8;
    }
    let tcp_len = (f.len() - 34) as u32;
    let pseudo = checksum::pseudo_header_v4(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        6,
        tcp_len,
    );
    f[50..52].copy_from_slice(&checksum::combine(&[pseudo]).to_be_bytes());
    let vnet = VirtioNetHdrRepr {
        flags: flags::NEEDS_CSUM,
        gso_type: gso_type::TCPV4,
        hdr_len: HDR as u16,
        gso_size: MSS as u16,
        csum_start: 34,
        csum_offset: 16,
    };
    (vnet, f)
}

fn offload(c: &mut Criterion) {
    let (vnet, sf) = super_frame();
    let mut batch = SegmentBatch::default();
    let mut group = c.benchmark_group("offload");
    group.throughput(Throughput::Bytes((SEGMENTS * MSS) as u64));

    group.bench_function("segment_64KiB_45x1398", |b| {
        b.iter(|| {
            segment_tcp(&vnet, black_box(&sf), &mut batch).unwrap();
            batch.len()
        })
    });

    segment_tcp(&vnet, &sf, &mut batch).unwrap();
    let segments: Vec<Vec<u8>> = (0..batch.len())
        .map(|i| batch.frame_parts(&sf, i).concat())
        .collect();
    let mut coalescer = Coalescer::default();
    group.bench_function("coalesce_45_segments", |b| {
        b.iter(|| {
            let mut out = 0usize;
            let mut emit = |f: CoalescedFrame<'_>| out += f.len();
            for (i, s) in segments.iter().enumerate() {
                let at = Origin {
                    buf: i as u32,
                    offset: 0,
                };
                coalescer.push(4096, black_box(s), at, &mut emit);
            }
            coalescer.flush(&mut emit);
            assert_eq!(out, sf.len());
            out
        })
    });

    let data = &sf[HDR..];
    group.bench_function("checksum_64KiB", |b| {
        b.iter(|| checksum::sum(black_box(data)))
    });
    group.bench_function("checksum_64KiB_lanes", |b| {
        b.iter(|| checksum_sum(black_box(data)))
    });
    group.finish();
}

criterion_group!(benches, offload);
criterion_main!(benches);
