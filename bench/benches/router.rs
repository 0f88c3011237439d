//! Encapsulation and decapsulation cost per packet through the sans-IO router.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vxnet_dataplane::fdb::{Fib, FibUpdate, MacLocation};
use vxnet_dataplane::router::{EGRESS_HEADROOM, EgressAction, IngressAction, Router, RouterConfig};
use vxnet_dataplane::stats::WorkerStats;
use vxnet_dataplane::wire::MacAddr;

const VNI: u32 = 4096;
const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 200, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 200, 2));
const MAC_A: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 1]);
const MAC_B: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 2]);

/// A 1450-byte Ethernet/IPv4/UDP frame from MAC_A (10.0.0.1) to MAC_B (10.0.0.2).
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&MAC_B.0);
    f[6..12].copy_from_slice(&MAC_A.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[20] = 0x40;
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

fn fib(local: MacAddr, remote: MacAddr, peer: IpAddr) -> Fib {
    let fib = Fib::new();
    fib.apply(&[
        FibUpdate::AddNetwork {
            vni: VNI,
            mtu: 1450,
        },
        FibUpdate::SetMac {
            vni: VNI,
            mac: local,
            location: MacLocation::Local,
        },
        FibUpdate::SetMac {
            vni: VNI,
            mac: remote,
            location: MacLocation::Remote(peer),
        },
        FibUpdate::AddMember {
            vni: VNI,
            vtep: peer,
        },
    ]);
    fib
}

fn encap_decap(c: &mut Criterion) {
    let frame = frame(1450 + 14);
    let sender = fib(MAC_A, MAC_B, B);
    let receiver = fib(MAC_B, MAC_A, A);
    let mut router = Router::new(RouterConfig::default(), Arc::new(WorkerStats::default()));
    let mut buf = vec![0u8; EGRESS_HEADROOM + frame.len() + 64];

    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encap_1464B", |b| {
        let snap = sender.load();
        b.iter(|| {
            buf[EGRESS_HEADROOM..EGRESS_HEADROOM + frame.len()].copy_from_slice(&frame);
            match router.egress(&snap, VNI, black_box(&mut buf), frame.len(), Duration::ZERO) {
                EgressAction::Unicast { packet, .. } => packet.len(),
                other => panic!("{other:?}"),
            }
        })
    });
    let mut packet = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0x00];
    packet.extend_from_slice(&frame);
    packet[8..14].copy_from_slice(&MAC_B.0);
    packet[14..20].copy_from_slice(&MAC_A.0);
    group.bench_function("decap_1464B", |b| {
        let snap = receiver.load();
        b.iter(|| match router.ingress(&snap, A, black_box(&packet)) {
            IngressAction::Deliver { frame, .. } => frame.len(),
            other => panic!("{other:?}"),
        })
    });
    group.finish();
}

criterion_group!(benches, encap_decap);
criterion_main!(benches);
