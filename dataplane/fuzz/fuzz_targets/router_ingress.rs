//! Fuzz the router's ingress entry point (UDP payloads from the underlay): never panics, every
//! datagram is delivered unchanged or counted as a drop.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use vxnet_dataplane::fdb::{Fib, FibUpdate, MacLocation};
use vxnet_dataplane::router::{IngressAction, Router, RouterConfig};
use vxnet_dataplane::stats::WorkerStats;
use vxnet_dataplane::wire::MacAddr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let member = IpAddr::V4(Ipv4Addr::new(192, 168, 200, 1));
    let fib = Fib::new();
    fib.apply(&[
        FibUpdate::AddNetwork { vni: 4096, mtu: 1450 },
        FibUpdate::SetMac { vni: 4096, mac: MacAddr([2, 0x42, 10, 0, 0, 2]), location: MacLocation::Local },
        FibUpdate::SetMac { vni: 4096, mac: MacAddr([2, 0x42, 10, 0, 0, 1]), location: MacLocation::Remote(member) },
        FibUpdate::AddMember { vni: 4096, vtep: member },
    ]);
    let stats = Arc::new(WorkerStats::default());
    let mut router = Router::new(RouterConfig::default(), Arc::clone(&stats));
    // The first byte picks the outer source: a member, or a stranger.
    let (src, datagram) = match data.split_first() {
        Some((&b, rest)) if b & 1 == 0 => (member, rest),
        Some((_, rest)) => (IpAddr::V4(Ipv4Addr::new(6, 6, 6, 6)), rest),
        None => (member, data),
    };
    let snap = fib.load();
    match router.ingress(&snap, src, datagram) {
        IngressAction::Deliver { frame, .. } => {
            assert_eq!(frame, &datagram[8..]);
            assert_eq!(stats.total_drops(), 0);
        }
        IngressAction::Drop(_) => assert_eq!(stats.total_drops(), 1),
    }
});
