//! Router behaviour on hand-built and etherparse-built frames: every egress and ingress path.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::*;
use etherparse::{Icmpv4Type, NetSlice, SlicedPacket, TransportSlice};
use vxnet_dataplane::router::{EGRESS_HEADROOM, EgressAction, IngressAction, flow_hash};
use vxnet_dataplane::stats::DropReason;

const T0: Duration = Duration::from_secs(1);

#[test]
fn unicast_to_remote_endpoint_is_encapsulated_for_its_vtep() {
    let mut host = Host::new();
    let frame = udp_frame(
        LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1000, 2000, b"hello",
    );
    let mut buf = with_headroom(&frame);
    match host.egress(&mut buf, frame.len()) {
        Action::Unicast {
            vtep,
            packet,
            flow_hash: hash,
        } => {
            assert_eq!(vtep, VTEP_B);
            assert_eq!(&packet[..8], &[0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0x00]);
            assert_eq!(&packet[8..], &frame[..]);
            assert_eq!(hash, flow_hash(&frame));
        }
        other => panic!("expected unicast, got {other:?}"),
    }
    let counters = host.fib.load().network(VNI).unwrap().counters().read();
    assert_eq!(
        (counters.tx_packets, counters.tx_bytes),
        (1, frame.len() as u64)
    );
}

#[test]
fn unicast_to_local_endpoint_stays_on_the_bridge() {
    let mut host = Host::new();
    let frame = udp_frame(LOCAL_MAC2, LOCAL_MAC, LOCAL_IP2, LOCAL_IP, 1, 2, b"x");
    let mut buf = with_headroom(&frame);
    assert_eq!(host.egress(&mut buf, frame.len()), Action::Local);
}

#[test]
fn the_hosts_own_frames_from_its_anycast_gateway_never_leave_it() {
    let mut host = Host::new();
    let gateway = vxnet_dataplane::fdb::gateway_mac(VNI).0;
    assert_eq!(
        gateway[..3],
        [0x02, 0x56, 0x58],
        "locally administered, not an endpoint's"
    );
    // A broadcast (the host's own ARP request) and a unicast to a remote endpoint.
    let request = arp_frame(1, gateway, LOCAL_IP, [0; 6], REMOTE_IP);
    let mut buf = with_headroom(&request);
    assert_eq!(host.egress(&mut buf, request.len()), Action::Local);
    let frame = udp_frame(gateway, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1, 2, b"x");
    let mut buf = with_headroom(&frame);
    assert_eq!(host.egress(&mut buf, frame.len()), Action::Local);
    assert_eq!(host.stats.total_drops(), 0, "not a drop: it is the host's");
}

#[test]
fn broadcast_is_replicated_to_every_member_vtep() {
    let mut host = Host::new();
    let frame = udp_frame(
        LOCAL_MAC,
        BROADCAST,
        LOCAL_IP,
        Ipv4Addr::BROADCAST,
        68,
        67,
        b"dhcp",
    );
    let mut buf = with_headroom(&frame);
    match host.egress(&mut buf, frame.len()) {
        Action::Flood { vteps, packet, .. } => {
            assert_eq!(vteps, &[VTEP_B, VTEP_C]);
            assert_eq!(&packet[8..], &frame[..]);
        }
        other => panic!("expected flood, got {other:?}"),
    }
}

#[test]
fn unknown_unicast_floods_or_drops_without_members() {
    let mut host = Host::new();
    let unknown = [0x02, 0x42, 9, 9, 9, 9];
    let frame = udp_frame(LOCAL_MAC, unknown, LOCAL_IP, REMOTE_IP, 1, 2, b"?");
    let mut buf = with_headroom(&frame);
    assert!(matches!(
        host.egress(&mut buf, frame.len()),
        Action::Flood { .. }
    ));

    let mut lonely = Host::with_members(&[]);
    let mut buf = with_headroom(&frame);
    assert_eq!(
        lonely.egress(&mut buf, frame.len()),
        Action::Drop(DropReason::NoRoute)
    );
    assert_eq!(lonely.stats.drops(DropReason::NoRoute), 1);
}

#[test]
fn arp_request_for_remote_endpoint_is_answered_locally() {
    let mut host = Host::new();
    let request = arp_frame(1, LOCAL_MAC, LOCAL_IP, [0; 6], REMOTE_IP);
    let mut buf = with_headroom(&request);
    let Action::Reply { frame } = host.egress(&mut buf, request.len()) else {
        panic!("expected a local ARP reply");
    };
    assert_eq!(frame.len(), 42);
    assert_eq!(&frame[0..6], &LOCAL_MAC, "reply goes back to the asker");
    assert_eq!(&frame[6..12], &REMOTE_MAC);
    assert_eq!(&frame[12..14], &[0x08, 0x06]);
    assert_eq!(&frame[20..22], &[0, 2], "operation reply");
    assert_eq!(&frame[22..28], &REMOTE_MAC);
    assert_eq!(&frame[28..32], &REMOTE_IP.octets());
    assert_eq!(&frame[32..38], &LOCAL_MAC);
    assert_eq!(&frame[38..42], &LOCAL_IP.octets());
    let counters = host.fib.load().network(VNI).unwrap().counters().read();
    assert_eq!((counters.suppressed, counters.tx_packets), (1, 0));
}

#[test]
fn arp_for_local_endpoint_probe_gratuitous_and_unknown_are_not_answered() {
    let mut host = Host::new();
    // The local owner answers for itself: nothing leaves the host.
    let for_local = arp_frame(1, LOCAL_MAC2, LOCAL_IP2, [0; 6], LOCAL_IP);
    let mut buf = with_headroom(&for_local);
    assert_eq!(host.egress(&mut buf, for_local.len()), Action::Local);
    // Probe (RFC 5227), gratuitous ARP and an unknown target are flooded to the real owners.
    for frame in [
        arp_frame(1, LOCAL_MAC, Ipv4Addr::UNSPECIFIED, [0; 6], REMOTE_IP),
        arp_frame(1, LOCAL_MAC, LOCAL_IP, [0; 6], LOCAL_IP),
        arp_frame(1, LOCAL_MAC, LOCAL_IP, [0; 6], Ipv4Addr::new(10, 0, 0, 77)),
        arp_frame(2, LOCAL_MAC, LOCAL_IP, [0xff; 6], LOCAL_IP),
    ] {
        let mut buf = with_headroom(&frame);
        assert!(
            matches!(host.egress(&mut buf, frame.len()), Action::Flood { .. }),
            "{frame:02x?}"
        );
    }
}

#[test]
fn neighbor_solicitation_for_remote_endpoint_is_answered_locally() {
    let mut host = Host::new();
    let solicit = neighbor_solicitation(LOCAL_MAC, LOCAL_IP6, REMOTE_IP6);
    let mut buf = with_headroom(&solicit);
    let Action::Reply { frame } = host.egress(&mut buf, solicit.len()) else {
        panic!("expected a neighbour advertisement");
    };
    let parsed = SlicedPacket::from_ethernet(&frame).expect("etherparse parses our NA");
    let Some(NetSlice::Ipv6(ip)) = parsed.net else {
        panic!("not IPv6")
    };
    assert_eq!(ip.header().source_addr(), REMOTE_IP6);
    assert_eq!(ip.header().destination_addr(), LOCAL_IP6);
    assert_eq!(ip.header().hop_limit(), 255);
    let Some(TransportSlice::Icmpv6(icmp)) = parsed.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(icmp.type_u8(), 136);
    let icmp_bytes = icmp.slice();
    assert_eq!(icmp_bytes[4] & 0x60, 0x60, "solicited + override");
    assert_eq!(&icmp_bytes[8..24], &REMOTE_IP6.octets());
    assert_eq!(
        &icmp_bytes[24..26],
        &[2, 1],
        "target link-layer address option"
    );
    assert_eq!(&icmp_bytes[26..32], &REMOTE_MAC);
    let expected = icmp
        .header()
        .icmp_type
        .calc_checksum(REMOTE_IP6.octets(), LOCAL_IP6.octets(), icmp.payload())
        .unwrap();
    assert_eq!(
        icmp.header().checksum,
        expected,
        "checksum as etherparse computes it"
    );
    assert_eq!(&frame[0..6], &LOCAL_MAC);
}

#[test]
fn duplicate_address_detection_is_not_answered() {
    let mut host = Host::new();
    let dad = neighbor_solicitation(LOCAL_MAC, Ipv6Addr::UNSPECIFIED, REMOTE_IP6);
    let mut buf = with_headroom(&dad);
    assert!(matches!(
        host.egress(&mut buf, dad.len()),
        Action::Flood { .. }
    ));
}

#[test]
fn frames_from_a_remote_mac_are_dropped_as_loops() {
    let mut host = Host::new();
    let frame = udp_frame(REMOTE_MAC, LOCAL_MAC, REMOTE_IP, LOCAL_IP, 1, 2, b"loop");
    let mut buf = with_headroom(&frame);
    assert_eq!(
        host.egress(&mut buf, frame.len()),
        Action::Drop(DropReason::LoopGuard)
    );
}

#[test]
fn too_big_with_df_gets_fragmentation_needed_with_the_network_mtu() {
    let mut host = Host::new();
    let payload = vec![0xab; 1500 - 28];
    let frame = udp_frame(
        LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 4000, 5000, &payload,
    );
    let mut buf = with_headroom(&frame);
    let Action::Reply { frame: reply } = host.egress(&mut buf, frame.len()) else {
        panic!("expected ICMP fragmentation needed");
    };
    let parsed = SlicedPacket::from_ethernet(&reply).expect("etherparse parses our ICMP");
    assert_eq!(&reply[0..6], &LOCAL_MAC, "back to the sender");
    let Some(NetSlice::Ipv4(ip)) = parsed.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().source(), REMOTE_IP.octets());
    assert_eq!(ip.header().destination(), LOCAL_IP.octets());
    assert_eq!(
        ip.header().header_checksum(),
        ip.header().to_header().calc_header_checksum(),
        "valid IPv4 header checksum"
    );
    let Some(TransportSlice::Icmpv4(icmp)) = parsed.transport else {
        panic!("not ICMP")
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1450 }
        )
    );
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    // The quote starts with the original IP header.
    assert_eq!(&icmp.payload()[..20], &frame[14..34]);
    assert_eq!(reply.len(), 14 + 576);
    assert_eq!(host.stats.drops(DropReason::TooBig), 1);
}

#[test]
fn too_big_without_df_is_dropped_and_icmp_is_rate_limited() {
    let mut host = Host::new();
    let payload = vec![0; 1500 - 28];
    let mut frame = udp_frame(LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1, 2, &payload);
    clear_df(&mut frame);
    let mut buf = with_headroom(&frame);
    assert_eq!(
        host.egress(&mut buf, frame.len()),
        Action::Drop(DropReason::TooBig)
    );

    let df_frame = udp_frame(LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1, 2, &payload);
    let mut replies = 0;
    for _ in 0..1000 {
        let mut buf = with_headroom(&df_frame);
        if let EgressAction::Reply { .. } =
            host.router
                .egress(&host.fib.load(), VNI, &mut buf, df_frame.len(), T0)
        {
            replies += 1;
        }
    }
    assert_eq!(replies, 100, "one second's budget, all at the same instant");
    assert_eq!(host.stats.drops(DropReason::TooBig), 1001);
    // A second later the budget is back.
    let mut buf = with_headroom(&df_frame);
    let snap = host.fib.load();
    let later = host
        .router
        .egress(&snap, VNI, &mut buf, df_frame.len(), T0 * 2);
    assert!(matches!(later, EgressAction::Reply { .. }));
}

#[test]
fn full_mtu_frames_pass() {
    let mut host = Host::new();
    let payload = vec![0; 1450 - 28];
    let frame = udp_frame(LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1, 2, &payload);
    let mut buf = with_headroom(&frame);
    assert!(matches!(
        host.egress(&mut buf, frame.len()),
        Action::Unicast { .. }
    ));
}

#[test]
fn egress_on_unknown_network_and_short_frames_are_counted() {
    let mut host = Host::new();
    let frame = udp_frame(LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1, 2, b"");
    let mut buf = with_headroom(&frame);
    let snap = host.fib.load();
    let action = host
        .router
        .egress(&snap, VNI + 1, &mut buf, frame.len(), T0);
    assert_eq!(action, EgressAction::Drop(DropReason::UnknownNetwork));
    let mut buf = [0u8; EGRESS_HEADROOM + 13];
    assert_eq!(
        host.egress(&mut buf, 13),
        Action::Drop(DropReason::ShortFrame)
    );
    // A frame length beyond the buffer is a short frame, not a panic.
    assert_eq!(
        host.egress(&mut buf, 1000),
        Action::Drop(DropReason::ShortFrame)
    );
}

#[test]
fn encap_then_decap_is_identity() {
    let mut sender = Host::new();
    let mut receiver = Host::peer_of(&sender);
    let frame = udp_frame(
        LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1234, 80, b"payload",
    );
    let mut buf = with_headroom(&frame);
    let Action::Unicast { packet, .. } = sender.egress(&mut buf, frame.len()) else {
        panic!("expected unicast");
    };
    let packet = packet.to_vec();
    match receiver
        .router
        .ingress(&receiver.fib.load(), VTEP_A, &packet)
    {
        IngressAction::Deliver { vni, frame: inner } => {
            assert_eq!(vni, VNI);
            assert_eq!(inner, &frame[..]);
        }
        other => panic!("expected delivery, got {other:?}"),
    }
    let counters = receiver.fib.load().network(VNI).unwrap().counters().read();
    assert_eq!(counters.rx_packets, 1);
}

#[test]
fn ingress_drops_every_bad_datagram_under_its_reason() {
    let mut receiver = Host::peer_of(&Host::new());
    let good_inner = udp_frame(LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1, 2, b"x");
    let vxlan = |flags: u8, vni: u32, inner: &[u8]| {
        let mut v = vec![flags, 0, 0, 0];
        v.extend_from_slice(&(vni << 8).to_be_bytes());
        v.extend_from_slice(inner);
        v
    };
    let mut truncated_ip = good_inner.clone();
    truncated_ip.truncate(14 + 10);
    let from_local = udp_frame(REMOTE_MAC, LOCAL_MAC, REMOTE_IP, LOCAL_IP, 1, 2, b"");
    let to_elsewhere = udp_frame(
        LOCAL_MAC,
        [2, 0x42, 1, 1, 1, 1],
        LOCAL_IP,
        REMOTE_IP,
        1,
        2,
        b"",
    );
    let cases: Vec<(IpAddr, Vec<u8>, DropReason)> = vec![
        (VTEP_A, vec![0x08, 0, 0], DropReason::ShortDatagram),
        (
            VTEP_A,
            vxlan(0x00, VNI, &good_inner),
            DropReason::BadVxlanFlags,
        ),
        (
            VTEP_A,
            vxlan(0x08, VNI + 1, &good_inner),
            DropReason::UnknownVni,
        ),
        (
            IpAddr::V4(Ipv4Addr::new(6, 6, 6, 6)),
            vxlan(0x08, VNI, &good_inner),
            DropReason::NonMemberVtep,
        ),
        (
            VTEP_A,
            vxlan(0x08, VNI, &good_inner[..10]),
            DropReason::MalformedInner,
        ),
        (
            VTEP_A,
            vxlan(0x08, VNI, &truncated_ip),
            DropReason::MalformedInner,
        ),
        (
            VTEP_C,
            vxlan(0x08, VNI, &good_inner),
            DropReason::SourceMismatch,
        ),
        (VTEP_A, vxlan(0x08, VNI, &from_local), DropReason::LoopGuard),
        (
            VTEP_A,
            vxlan(0x08, VNI, &to_elsewhere),
            DropReason::NotLocal,
        ),
    ];
    for (src, datagram, reason) in &cases {
        let snap = receiver.fib.load();
        let action = receiver.router.ingress(&snap, *src, datagram);
        assert_eq!(action, IngressAction::Drop(*reason), "{reason:?}");
    }
    assert_eq!(receiver.stats.total_drops(), cases.len() as u64);
    // Reserved bits are ignored on receive (RFC 7348).
    let mut reserved = vxlan(0x08 | 0xf7, VNI, &good_inner);
    reserved[1] = 0xff;
    reserved[7] = 0xff;
    assert!(matches!(
        receiver
            .router
            .ingress(&receiver.fib.load(), VTEP_A, &reserved),
        IngressAction::Deliver { .. }
    ));
    // Broadcast from a member is delivered.
    let bcast = udp_frame(
        LOCAL_MAC,
        BROADCAST,
        LOCAL_IP,
        Ipv4Addr::BROADCAST,
        1,
        2,
        b"",
    );
    assert!(matches!(
        receiver
            .router
            .ingress(&receiver.fib.load(), VTEP_A, &vxlan(0x08, VNI, &bcast)),
        IngressAction::Deliver { .. }
    ));
}

#[test]
fn flow_hash_is_stable_per_flow_and_spreads_flows() {
    let a = udp_frame(LOCAL_MAC, REMOTE_MAC, LOCAL_IP, REMOTE_IP, 1000, 80, b"one");
    let b = udp_frame(
        LOCAL_MAC,
        REMOTE_MAC,
        LOCAL_IP,
        REMOTE_IP,
        1000,
        80,
        b"other payload",
    );
    assert_eq!(flow_hash(&a), flow_hash(&b));
    let mut buckets = [0u32; 4];
    for port in 0..256u16 {
        let f = udp_frame(
            LOCAL_MAC,
            REMOTE_MAC,
            LOCAL_IP,
            REMOTE_IP,
            10_000 + port,
            80,
            b"",
        );
        buckets[(flow_hash(&f) % 4) as usize] += 1;
    }
    assert!(
        buckets.iter().all(|&n| n > 32),
        "flows spread over source ports: {buckets:?}"
    );
}
