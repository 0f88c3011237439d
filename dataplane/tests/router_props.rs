//! Property tests: the router never panics on arbitrary bytes, every input ends in exactly one
//! accounted outcome (the counters add up), and encap → decap is the identity.

mod common;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use vxnet_dataplane::router::{EGRESS_HEADROOM, EgressAction, IngressAction, IngressMemo};

/// Frames that look enough like real traffic to reach deep paths, then mutated.
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let seeds = prop_oneof![
        Just(udp_frame(
            LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1, 2, &[0u8; 64]
        )),
        Just(udp_frame(
            LOCAL_MAC,
            REMOTE_MAC,
            LOCAL_IP,
            REMOTE_IP,
            1,
            2,
            &[0u8; 1500]
        )),
        Just(arp_frame(1, LOCAL_MAC, LOCAL_IP, [0; 6], REMOTE_IP)),
        Just(neighbor_solicitation(LOCAL_MAC, LOCAL_IP6, REMOTE_IP6)),
        Just(udp_frame(
            REMOTE_MAC, LOCAL_MAC, REMOTE_IP, LOCAL_IP, 1, 2, b""
        )),
        Just(Vec::new()),
    ];
    (
        seeds,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        0usize..1600,
    )
        .prop_map(|(mut frame, flips, cut)| {
            for (at, byte) in flips {
                if !frame.is_empty() {
                    let i = at.index(frame.len());
                    frame[i] = byte;
                }
            }
            if cut < frame.len() && cut % 3 == 0 {
                frame.truncate(cut);
            }
            frame
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn egress_accounts_for_every_frame(frames in proptest::collection::vec(frame_strategy(), 1..20)) {
        let mut host = Host::new();
        let (mut sent, mut replies, mut drops) = (0u64, 0u64, 0u64);
        for frame in &frames {
            let mut buf = with_headroom(frame);
            match host.router.egress(&host.fib.load(), VNI, &mut buf, frame.len(), Duration::ZERO) {
                EgressAction::Unicast { packet, .. } | EgressAction::Flood { packet, .. } => {
                    prop_assert_eq!(&packet[EGRESS_HEADROOM..], &frame[..]);
                    sent += 1;
                }
                EgressAction::Reply { frame: reply } => {
                    prop_assert!(reply.len() >= 14);
                    replies += 1;
                }
                EgressAction::Local => {}
                EgressAction::Drop(_) => drops += 1,
            }
        }
        let snap = host.fib.load();
        let counters = snap.network(VNI).unwrap().counters().read();
        prop_assert_eq!(counters.tx_packets, sent);
        // A reply is either an ARP/ND answer (counted as suppressed) or an ICMP error that
        // replaces a dropped, counted frame.
        let suppressed = snap.network(VNI).unwrap().counters().suppressed.load(Ordering::Relaxed);
        prop_assert_eq!(host.stats.total_drops() + suppressed, drops + replies);
    }

    #[test]
    fn ingress_accounts_for_every_datagram(
        datagrams in proptest::collection::vec(
            (frame_strategy(), any::<u8>(), 0u32..3, 0usize..4),
            1..20,
        )
    ) {
        let mut host = Host::peer_of(&Host::new());
        let sources: [IpAddr; 4] = [VTEP_A, VTEP_B, VTEP_C, "10.9.9.9".parse().unwrap()];
        let (mut delivered, mut drops) = (0u64, 0u64);
        for (inner, flags, vni_delta, src) in &datagrams {
            let mut datagram = vec![*flags, 0, 0, 0];
            datagram.extend_from_slice(&((VNI + vni_delta) << 8).to_be_bytes());
            datagram.extend_from_slice(inner);
            match host.router.ingress(&host.fib.load(), sources[*src], &datagram) {
                IngressAction::Deliver { frame, .. } => {
                    prop_assert_eq!(frame, &inner[..]);
                    delivered += 1;
                }
                IngressAction::Drop(_) => drops += 1,
            }
        }
        let counters = host.fib.load().network(VNI).unwrap().counters().read();
        prop_assert_eq!(counters.rx_packets, delivered);
        prop_assert_eq!(host.stats.total_drops(), drops);
    }

    #[test]
    fn ingress_with_a_memo_decides_like_ingress_alone(
        pool in proptest::collection::vec((frame_strategy(), any::<u8>(), 0u32..2), 1..6),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..40),
        src in 0usize..4,
    ) {
        // One batch from one sender: datagrams drawn from a small pool, so headers repeat and
        // the memo is hit, including by datagrams whose inner IP header differs.
        let sources: [IpAddr; 4] = [VTEP_A, VTEP_B, VTEP_C, "10.9.9.9".parse().unwrap()];
        let datagrams: Vec<Vec<u8>> = pool
            .iter()
            .map(|(inner, flags, vni_delta)| {
                let mut d = vec![*flags | 0x08, 0, 0, 0];
                d.extend_from_slice(&((VNI + vni_delta) << 8).to_be_bytes());
                d.extend_from_slice(inner);
                d
            })
            .collect();
        let mut plain = Host::peer_of(&Host::new());
        let mut memoized = Host::peer_of(&Host::new());
        let (plain_fib, memo_fib) = (plain.fib.load(), memoized.fib.load());
        let mut memo = IngressMemo::default();
        for pick in &picks {
            let datagram = &datagrams[pick.index(datagrams.len())];
            let want = plain.router.ingress(&plain_fib, sources[src], datagram);
            let got = memoized.router.ingress_with(&memo_fib, sources[src], datagram, &mut memo);
            match (want, got) {
                (
                    IngressAction::Deliver { vni: a, frame: fa },
                    IngressAction::Deliver { vni: b, frame: fb },
                ) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(fa, fb);
                }
                (IngressAction::Drop(a), IngressAction::Drop(b)) => prop_assert_eq!(a, b),
                (want, got) => {
                    return Err(TestCaseError::fail(format!("{want:?} vs {got:?}")));
                }
            }
        }
        prop_assert_eq!(plain.stats.total_drops(), memoized.stats.total_drops());
        // The memo adds up what it delivered and counts it when its batch ends (it is dropped).
        drop(memo);
        for vni in [VNI, VNI + 1] {
            if let (Some(a), Some(b)) = (plain_fib.network(vni), memo_fib.network(vni)) {
                prop_assert_eq!(a.counters().read(), b.counters().read());
            }
        }
    }

    #[test]
    fn ingress_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut host = Host::peer_of(&Host::new());
        let _ = host.router.ingress(&host.fib.load(), VTEP_A, &bytes);
        let mut buf = with_headroom(&bytes);
        let _ = host.router.egress(&host.fib.load(), VNI, &mut buf, bytes.len(), Duration::ZERO);
    }

    #[test]
    fn encap_then_decap_is_identity(
        sport in any::<u16>(),
        dport in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1400),
    ) {
        let mut sender = Host::new();
        let mut receiver = Host::peer_of(&sender);
        let frame = udp_frame(LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, sport, dport, &payload);
        let mut buf = with_headroom(&frame);
        let Action::Unicast { packet, vtep, .. } = sender.egress(&mut buf, frame.len()) else {
            return Err(TestCaseError::fail("not unicast"));
        };
        prop_assert_eq!(vtep, VTEP_B);
        match receiver.router.ingress(&receiver.fib.load(), VTEP_A, &packet) {
            IngressAction::Deliver { vni, frame: inner } => {
                prop_assert_eq!(vni, VNI);
                prop_assert_eq!(inner, &frame[..]);
            }
            IngressAction::Drop(reason) => return Err(TestCaseError::fail(format!("{reason:?}"))),
        }
    }
}
