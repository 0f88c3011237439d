//! Fuzz the router's egress entry point (frames read from a TAP): never panics, and every frame
//! ends in exactly one accounted outcome.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vxnet_dataplane::fdb::{Fib, FibUpdate, MacLocation};
use vxnet_dataplane::router::{EGRESS_HEADROOM, EGRESS_TAILROOM, EgressAction, Router, RouterConfig};
use vxnet_dataplane::stats::WorkerStats;
use vxnet_dataplane::wire::MacAddr;

const VNI: u32 = 4096;

fn fib() -> Fib {
    let remote = IpAddr::V4(Ipv4Addr::new(192, 168, 200, 2));
    let fib = Fib::new();
    fib.apply(&[
        FibUpdate::AddNetwork { vni: VNI, mtu: 1450 },
        FibUpdate::SetMac { vni: VNI, mac: MacAddr([2, 0x42, 10, 0, 0, 1]), location: MacLocation::Local },
        FibUpdate::SetMac { vni: VNI, mac: MacAddr([2, 0x42, 10, 0, 0, 2]), location: MacLocation::Remote(remote) },
        FibUpdate::SetNeighbor { vni: VNI, ip: "10.0.0.2".parse().unwrap(), mac: MacAddr([2, 0x42, 10, 0, 0, 2]) },
        FibUpdate::SetNeighbor { vni: VNI, ip: "fd00::2".parse().unwrap(), mac: MacAddr([2, 0x42, 10, 0, 0, 2]) },
        FibUpdate::AddMember { vni: VNI, vtep: remote },
    ]);
    fib
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let fib = fib();
    let stats = Arc::new(WorkerStats::default());
    let mut router = Router::new(RouterConfig::default(), Arc::clone(&stats));
    let mut buf = vec![0u8; EGRESS_HEADROOM + data.len() + EGRESS_TAILROOM];
    buf[EGRESS_HEADROOM..EGRESS_HEADROOM + data.len()].copy_from_slice(data);
    let snap = fib.load();
    let outcome = router.egress(&snap, VNI, &mut buf, data.len(), Duration::ZERO);
    let table = snap.network(VNI).unwrap();
    let (tx, suppressed) = (table.counters().read().tx_packets, table.counters().suppressed.load(Ordering::Relaxed));
    match outcome {
        EgressAction::Unicast { packet, .. } | EgressAction::Flood { packet, .. } => {
            assert_eq!(&packet[EGRESS_HEADROOM..], data);
            assert_eq!((tx, stats.total_drops()), (1, 0));
        }
        EgressAction::Reply { .. } => assert_eq!(stats.total_drops() + suppressed, 1),
        EgressAction::Local => assert_eq!((tx, stats.total_drops()), (0, 0)),
        EgressAction::Drop(_) => assert_eq!(stats.total_drops(), 1),
    }
});
