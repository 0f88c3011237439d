//! Networks are isolated. A container on network A that is told, by a static
//! route and a permanent neighbour entry, exactly where a container of network B is (its IP and
//! MAC, on-link) still cannot reach it: the router only forwards within a VNI, so nothing from A
//! is ever delivered into B, on the same host or across the underlay.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::support::capture::*;
use crate::support::*;
use vxnet_dataplane::wire::{EtherType, EthernetFrame, Ipv4Packet, MacAddr};

/// The inner IPv4 source and destination of an Ethernet frame, if it carries IPv4.
fn ipv4_addrs<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if frame.ethertype() != EtherType::IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(frame.payload()).ok()?;
    Some((ip.src_addr(), ip.dst_addr()))
}

/// A container: its namespace, host index, IPv4 and MAC.
#[derive(Clone, Debug)]
struct Ct {
    ns: String,
    host: usize,
    ip: Ipv4Addr,
    mac: MacAddr,
}

fn connect(cluster: &mut Cluster, network: &str, host: usize) -> Ct {
    let ns = cluster.container();
    cluster.agents[host].vxnet(&["network", "connect", network, &ns]);
    let ip = cluster.ipv4_of(&ns, "eth0").parse().unwrap();
    let text = cluster.agents[host].vxnet(&["network", "inspect", network]);
    let inspect: serde_json::Value = serde_json::from_str(&text).expect("inspect JSON");
    let mac = inspect[0]["Containers"][&ns]["MacAddress"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MAC of {ns} in {inspect}"));
    Ct { ns, host, ip, mac }
}

/// Three hosts, networks A (h1, h2) and B (h1, h2, h3). Same-network pings work; a container
/// on A with an on-link route and a permanent neighbour entry for each container of B (same
/// host, a host that also serves A, a host that does not) reaches none of them; captures in the
/// B containers see nothing from it and the underlay never carries its frames under B's VNI.
#[test]
fn networks_are_isolated() {
    let started = Instant::now();
    let Some(mut cluster) = cluster_for("networks_are_isolated", "is", 3) else {
        return;
    };
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.53.0.0/24", "neta"]);
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.54.0.0/24", "netb"]);
    let (vni_a, vni_b) = (
        cluster.agents[0].vni_of("neta"),
        cluster.agents[0].vni_of("netb"),
    );
    assert_ne!(vni_a, vni_b);
    let a1 = connect(&mut cluster, "neta", 0);
    let a2 = connect(&mut cluster, "neta", 1);
    let bs = [
        connect(&mut cluster, "netb", 0),
        connect(&mut cluster, "netb", 1),
        connect(&mut cluster, "netb", 2),
    ];

    // Same network: reachable (also waits for every host to apply the endpoints).
    for (from, to) in [
        (&a1, &a2),
        (&bs[0], &bs[1]),
        (&bs[0], &bs[2]),
        (&bs[2], &bs[1]),
    ] {
        wait_for(
            &format!("ping {} → {}", from.ns, to.ns),
            Duration::from_secs(20),
            || {
                cluster
                    .ping(&from.ns, &to.ip.to_string(), 1, "")
                    .status
                    .success()
                    .then_some(())
            },
        );
    }
    let not_local_before: Vec<u64> = (0..3)
        .map(|i| counter(&cluster.agents[i], "drop.not_local"))
        .collect();

    // Capture what B's containers receive and what leaves h1 (a1's host) on the underlay.
    let b_captures: Vec<Capture> = bs
        .iter()
        .map(|b| {
            let path = cluster.dir().join(format!("{}.pcap", b.ns));
            Capture::start(&b.ns, "eth0", "ip or arp", &path)
        })
        .collect();
    let h1 = cluster.host_ns(0).to_string();
    let ul_capture = Capture::start(&h1, "ul0", "udp port 4789", &cluster.dir().join("ul.pcap"));

    let mut attempts = Vec::new();
    for b in &bs {
        sh(&format!(
            "ip -n {ns} route add {ip}/32 dev eth0 && \
             ip -n {ns} neigh replace {ip} lladdr {mac} dev eth0 nud permanent",
            ns = a1.ns,
            ip = b.ip,
            mac = b.mac
        ));
        let route = sh(&format!("ip -n {} route get {}", a1.ns, b.ip));
        assert!(route.contains("dev eth0"), "on-link route: {route}");
        let out = cluster.ping(&a1.ns, &b.ip.to_string(), 3, "-W 1");
        let text = output_text(&out);
        assert!(
            !out.status.success(),
            "a1 must not reach {} (h{}): {text}",
            b.ip,
            b.host + 1
        );
        assert!(text.contains("3 packets transmitted, 0 received"), "{text}");
        attempts.push(b.ip);
    }
    // Control traffic inside B while the captures run.
    for to in [&bs[1], &bs[2]] {
        let out = cluster.ping(&bs[0].ns, &to.ip.to_string(), 2, "");
        assert!(
            out.status.success(),
            "b1 → {}: {}",
            to.ip,
            output_text(&out)
        );
    }
    // And A still works.
    let out = cluster.ping(&a1.ns, &a2.ip.to_string(), 2, "");
    assert!(out.status.success(), "a1 → a2: {}", output_text(&out));

    let (ul_frames, ul_dropped) = ul_capture.stop();
    assert_eq!(ul_dropped, 0, "underlay capture complete");
    let mut seen_in_b = Vec::new();
    for (b, capture) in bs.iter().zip(b_captures) {
        let (frames, dropped) = capture.stop();
        assert_eq!(dropped, 0, "capture in {} complete", b.ns);
        let mut from_a1 = 0;
        let mut from_b = 0;
        for frame in &frames {
            let eth = EthernetFrame::new_checked(&frame[..]).expect("Ethernet");
            let ips = ipv4_addrs(&eth);
            if eth.src_addr() == a1.mac || ips.is_some_and(|(src, _)| src == a1.ip) {
                from_a1 += 1;
            }
            if bs.iter().any(|o| o.mac == eth.src_addr() && o.ns != b.ns) {
                from_b += 1;
            }
        }
        assert_eq!(from_a1, 0, "{} received frames from a1", b.ns);
        assert!(
            from_b > 0,
            "control: {} captured its own network's traffic",
            b.ns
        );
        seen_in_b.push((frames.len(), from_b));
    }

    // The underlay: a1's frames only ever travel under A's VNI.
    let mut by_vni: BTreeMap<u32, u32> = BTreeMap::new();
    let mut a1_under_a = 0;
    let mut a1_to_b_under_a = 0;
    for frame in &ul_frames {
        let Some(encap) = decap(frame) else {
            continue;
        };
        *by_vni.entry(encap.vni).or_default() += 1;
        assert!(
            encap.vni == vni_a || encap.vni == vni_b,
            "unknown VNI {}",
            encap.vni
        );
        let inner_ips = ipv4_addrs(&encap.inner);
        let from_a = [&a1, &a2].iter().any(|a| {
            encap.inner.src_addr() == a.mac || inner_ips.is_some_and(|(src, _)| src == a.ip)
        });
        let from_b = bs.iter().any(|b| {
            encap.inner.src_addr() == b.mac || inner_ips.is_some_and(|(src, _)| src == b.ip)
        });
        if encap.vni == vni_b {
            assert!(!from_a, "a frame from network A under B's VNI {vni_b}");
        } else {
            assert!(!from_b, "a frame from network B under A's VNI {vni_a}");
            if encap.inner.src_addr() == a1.mac {
                a1_under_a += 1;
                if bs.iter().any(|b| b.mac == encap.inner.dst_addr()) {
                    a1_to_b_under_a += 1;
                }
            }
        }
    }
    assert!(
        by_vni.get(&vni_b).copied().unwrap_or(0) > 0,
        "control: B traffic on h1's underlay"
    );
    assert!(a1_under_a > 0, "control: a1's traffic on h1's underlay");
    let not_local: Vec<u64> = (0..3)
        .map(|i| counter(&cluster.agents[i], "drop.not_local"))
        .collect();
    eprintln!(
        "dp_isolation: a1 → {attempts:?}: 0 received each; B captures (frames, from B): \
         {seen_in_b:?}, 0 from a1; h1/ul0 VXLAN by VNI {by_vni:?} (A={vni_a}, B={vni_b}); \
         a1 frames under A {a1_under_a}, of which to B MACs (flooded unknown unicast) \
         {a1_to_b_under_a}; drop.not_local {not_local_before:?} → {not_local:?}; {:.1?}",
        started.elapsed()
    );
}
