//! ARP suppression. A container's ARP request for a remote peer the control
//! plane knows is answered by its own host's agent; no ARP request for it crosses the underlay.
//! A request for an unknown address is flooded (the control case: the capture would see one).

use std::net::Ipv4Addr;
use std::time::Instant;

use crate::support::capture::*;
use crate::support::*;
use vxnet_dataplane::wire::{ArpOperation, ArpPacket, EtherType, Ipv4Packet, MacAddr, ip_protocol};

/// Flush both containers' neighbour caches, ping across once each way: the ARP requests are
/// answered on the senders' hosts (entries REACHABLE with the peers' MACs) and the underlay
/// capture on h1 holds no ARP request for either peer, while a request for an unknown address is
/// flooded inside VXLAN.
#[test]
fn arp_is_answered_locally() {
    if !require_root("arp_is_answered_locally") {
        return;
    }
    let started = Instant::now();
    let mut cluster = Cluster::new("ar", ClusterOptions::default());
    let Pair { c1, c2, ip1, ip2 } = cluster.pair("arpnet", "10.52.0.0/24");
    let (ip1, ip2): (Ipv4Addr, Ipv4Addr) = (ip1.parse().unwrap(), ip2.parse().unwrap());
    let net = cluster.agents[0].inspect("arpnet").expect("inspect arpnet");
    let vni: u32 = net["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("VNI");
    let mac_of = |ns: &str| -> MacAddr {
        net["Containers"][ns]["MacAddress"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no MAC of {ns} in {net}"))
    };
    let (mac1, mac2) = (mac_of(&c1), mac_of(&c2));
    // The MAC the control plane knows is the one on the container's eth0.
    let eth0 = sh(&format!("ip -n {c2} -o link show dev eth0"));
    assert!(eth0.contains(&mac2.to_string()), "{mac2} on {eth0}");

    // Both agents know both endpoints.
    cluster.wait_ping("ping c1 → c2", &c1, &ip2.to_string());
    let suppressed_before =
        [0, 1].map(|i| counter(&cluster.agents[i], "net.arpnet.arp_nd_suppressed"));

    let h1 = cluster.host_ns(0).to_string();
    let capture_path = cluster.dir().join("h1-ul0.pcap");
    let capture = Capture::start(&h1, "ul0", "udp port 4789", &capture_path);
    for ns in [&c1, &c2] {
        sh(&format!("ip -n {ns} neigh flush dev eth0"));
        let left = sh(&format!("ip -n {ns} neigh show dev eth0"));
        assert!(
            !left.contains("REACHABLE") && !left.contains("STALE"),
            "flushed: {left}"
        );
    }
    let out = cluster.ping(&c1, &ip2.to_string(), 1, "");
    assert!(out.status.success(), "c1 → c2: {}", output_text(&out));
    let out = cluster.ping(&c2, &ip1.to_string(), 1, "");
    assert!(out.status.success(), "c2 → c1: {}", output_text(&out));
    let neigh1 = sh(&format!("ip -n {c1} neigh show {ip2} dev eth0"));
    let neigh2 = sh(&format!("ip -n {c2} neigh show {ip1} dev eth0"));
    // Control: an address nobody has is not suppressed; its ARP request is flooded.
    let unknown = Ipv4Addr::new(10, 52, 0, 200);
    let out = cluster.ping(&c1, &unknown.to_string(), 1, "-W 1");
    assert!(!out.status.success(), "nobody has {unknown}");
    let (frames, dropped) = capture.stop();
    assert_eq!(dropped, 0, "capture complete");

    for (neigh, ip, mac) in [(&neigh1, ip2, mac2), (&neigh2, ip1, mac1)] {
        assert!(
            neigh.contains(&format!("{ip} lladdr {mac} REACHABLE")),
            "entry for {ip}: {neigh:?}"
        );
    }

    let mut vxlan_frames = 0;
    let mut inner_types = std::collections::BTreeMap::new();
    let mut echo_frames = 0;
    let mut requests_for_peers = Vec::new();
    let mut requests_for_unknown = 0;
    for frame in &frames {
        let Some(encap) = decap(frame) else {
            continue;
        };
        vxlan_frames += 1;
        *inner_types.entry(encap.inner.ethertype().0).or_insert(0u32) += 1;
        assert_eq!(encap.vni, vni, "the network's VNI");
        match encap.inner.ethertype() {
            EtherType::ARP => {
                let arp = ArpPacket::new_checked(encap.inner.payload()).expect("inner ARP");
                if arp.operation() != ArpOperation::Request {
                    continue;
                }
                let target = arp.target_protocol_addr();
                if target == ip1 || target == ip2 {
                    requests_for_peers.push((arp.sender_protocol_addr(), target));
                } else if target == unknown {
                    assert!(encap.inner.dst_addr().is_broadcast(), "flooded broadcast");
                    requests_for_unknown += 1;
                }
            }
            EtherType::IPV4 => {
                let ip = Ipv4Packet::new_checked(encap.inner.payload()).expect("inner IPv4");
                if ip.next_header() == ip_protocol::ICMP {
                    echo_frames += 1;
                }
            }
            _ => {}
        }
    }
    assert!(
        echo_frames >= 4,
        "the pings crossed the captured underlay ({echo_frames} ICMP frames)"
    );
    assert!(
        requests_for_peers.is_empty(),
        "ARP requests for known peers crossed the underlay: {requests_for_peers:?}"
    );
    assert!(
        requests_for_unknown >= 1,
        "the capture sees flooded ARP requests (control)"
    );
    let suppressed = [0, 1].map(|i| counter(&cluster.agents[i], "net.arpnet.arp_nd_suppressed"));
    for i in 0..2 {
        assert!(
            suppressed[i] > suppressed_before[i],
            "h{} answered ARP locally: {} → {}",
            i + 1,
            suppressed_before[i],
            suppressed[i]
        );
    }
    eprintln!(
        "dp_arp: {vxlan_frames} VXLAN frames on h1/ul0 ({echo_frames} ICMP; inner ethertypes {}), 0 ARP requests for \
         peers, {requests_for_unknown} flooded for {unknown}; arp_nd_suppressed h1 {}→{}, h2 {}→{}; \
         neigh: {} | {}; {:.1?}",
        ethertypes(&inner_types),
        suppressed_before[0],
        suppressed[0],
        suppressed_before[1],
        suppressed[1],
        neigh1.trim(),
        neigh2.trim(),
        started.elapsed()
    );
}
