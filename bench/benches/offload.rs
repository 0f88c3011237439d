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
use vxnet_dataplane::wire::VirtioNetHdrRepr;
use vxnet_dataplane::wire::checksum;
use vxnet_dataplane::wire::virtio_net_hdr::{flags, gso_type};

const MSS: usize = 1398;
const SEGMENTS: usize = 45;
const HDR: usize = 14 + 20 + 32;

/// An Ethernet/IPv4/TCP (timestamps) super-frame of `SEGMENTS * MSS` payload bytes, as a TSO
/// TAP hands it over (TCP checksum field = pseudo-header sum). Built with etherparse, an
/// implementation independent of the code under measurement.
fn super_frame() -> (VirtioNetHdrRepr, Vec<u8>) {
    let payload: Vec<u8> = (0..SEGMENTS * MSS).map(|i| (i * 31 + 7) as u8).collect();
    let builder =
        etherparse::PacketBuilder::ethernet2([2, 0x42, 10, 0, 0, 1], [2, 0x42, 10, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 5201, 1, 502)
            .ack(1)
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(1, 2),
            ])
            .expect("TCP options fit");
    let mut f = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut f, &payload).expect("frame");
    assert_eq!(f.len(), HDR + payload.len());
    // A TSO TAP leaves the TCP checksum to be finished: only the pseudo-header sum is there.
    let pseudo = checksum::pseudo_header_v4(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        6,
        (f.len() - 34) as u32,
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
