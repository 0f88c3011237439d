//! The overlay MTU and path MTU discovery through the userspace router.
//!
//! With an underlay MTU of 1400 the agent gives the network's links 1350 (underlay − 50). A
//! container whose MTU is raised by hand past that sends frames the router cannot carry: the
//! router drops them (counted as `drop.too_big`) and answers ICMP "fragmentation needed" with the
//! network MTU, so the sender learns the path MTU and traffic flows again (no black hole).

use std::net::Ipv4Addr;
use std::time::Instant;

use crate::support::capture::*;
use crate::support::*;
use vxnet_dataplane::wire::{
    EtherType, EthernetFrame, Icmpv4Packet, Ipv4Packet, icmpv4, ip_protocol,
};

/// A numeric attribute (`mtu`, `gso_max_size`, ...) of a link, from `ip -d link`.
fn link_attr(ns: &str, ifname: &str, attr: &str) -> u32 {
    let out = sh(&format!("ip -n {ns} -d -o link show dev {ifname}"));
    out.split_whitespace()
        .skip_while(|w| *w != attr)
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no {attr} in {out}"))
}

fn link_mtu(ns: &str, ifname: &str) -> u32 {
    link_attr(ns, ifname, "mtu")
}

/// An ICMP "fragmentation needed" seen in a capture.
#[derive(Debug)]
struct FragNeeded {
    from: Ipv4Addr,
    to: Ipv4Addr,
    mtu: u16,
    quoted_src: Ipv4Addr,
    quoted_dst: Ipv4Addr,
    quoted_len: u16,
    checksums_ok: bool,
}

fn frag_needed_messages(frames: &[Vec<u8>]) -> Vec<FragNeeded> {
    let mut found = Vec::new();
    for frame in frames {
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            continue;
        };
        if eth.ethertype() != EtherType::IPV4 {
            continue;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        if ip.next_header() != ip_protocol::ICMP {
            continue;
        }
        let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
            continue;
        };
        if icmp.msg_type() != icmpv4::DST_UNREACHABLE || icmp.msg_code() != icmpv4::FRAG_NEEDED {
            continue;
        }
        // The quote: the original IP header (its total length is larger than the quote, so
        // only the fixed header is read, after checking it is all there).
        let quote = icmp.payload();
        assert!(quote.len() >= 20, "ICMP error quotes the IP header");
        let quoted = Ipv4Packet::new_unchecked(quote);
        found.push(FragNeeded {
            from: ip.src_addr(),
            to: ip.dst_addr(),
            mtu: icmp.next_hop_mtu(),
            quoted_src: quoted.src_addr(),
            quoted_dst: quoted.dst_addr(),
            quoted_len: quoted.total_len(),
            checksums_ok: ip.verify_checksum() && icmp.verify_checksum(),
        });
    }
    found
}

/// Underlay MTU 1400 → network MTU 1350; a full-size DF ping passes; a container whose MTU was
/// raised to 1500 gets ICMP "fragmentation needed" (MTU 1350) for a too-big DF packet, the drop is
/// counted, the kernel caches the path MTU and traffic flows again.
#[test]
fn mtu_and_path_mtu_discovery() {
    let started = Instant::now();
    let Some(mut cluster) = cluster_with(
        "mtu_and_path_mtu_discovery",
        "mt",
        ClusterOptions {
            underlay_mtu: 1400,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let Pair { c1, c2, ip1, ip2 } = cluster.pair("mtunet", "10.51.0.0/24");
    let (ip1, ip2): (Ipv4Addr, Ipv4Addr) = (ip1.parse().unwrap(), ip2.parse().unwrap());
    let vni = cluster.agents[0].vni_of("mtunet");

    // The MTUs the agent chose, measured on the links.
    let h1 = cluster.host_ns(0).to_string();
    let h2 = cluster.host_ns(1).to_string();
    assert_eq!(link_mtu(&h1, "ul0"), 1400, "underlay");
    for (ns, host) in [(&c1, &h1), (&c2, &h2)] {
        assert_eq!(link_mtu(ns, "eth0"), 1350, "container eth0 in {ns}");
        // Super-frames the container sends fit one UDP GSO send of the agent.
        assert_eq!(
            link_attr(ns, "eth0", "gso_max_size"),
            vxnet_dataplane::offload::container_gso_max_size(1350),
            "container eth0 gso_max_size in {ns}"
        );
        assert_eq!(
            link_mtu(host, &format!("vxb-{vni}")),
            1350,
            "bridge on {host}"
        );
        // The agent-side links stay wide so that too-big frames reach the router.
        assert_eq!(
            link_mtu(host, &format!("vxt-{vni}")),
            65_521,
            "TAP on {host}"
        );
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&cluster.agents[0].vxnet(&["network", "inspect", "mtunet"]))
            .expect("inspect JSON");
    let endpoint_id = inspect[0]["Containers"][&c1]["EndpointID"]
        .as_str()
        .unwrap_or_else(|| panic!("no endpoint of {c1} in {inspect}"))
        .to_string();
    let host_veth = format!("vxv{}", &endpoint_id[..12]);
    assert_eq!(link_mtu(&h1, &host_veth), 65_521, "host veth end");

    cluster.wait_ping("ping c1 → c2", &c1, &ip2.to_string());
    // A full-size packet with DF: 1350 − 20 (IP) − 8 (ICMP) = 1322 bytes of payload.
    let out = cluster.ping(&c1, &ip2.to_string(), 3, "-M do -s 1322");
    assert!(
        out.status.success(),
        "full-MTU DF ping: {}",
        output_text(&out)
    );
    let too_big_before = counter(&cluster.agents[0], "drop.too_big");
    assert_eq!(too_big_before, 0, "nothing was too big yet");

    // Raise c1's MTU by hand past the network's and send 1500-byte DF packets.
    let capture_path = cluster.dir().join("c1-icmp.pcap");
    sh(&format!("ip -n {c1} link set dev eth0 mtu 1500"));
    assert_eq!(link_mtu(&c1, "eth0"), 1500);
    // (After the MTU change: libpcap's ring does not survive one.)
    let capture = Capture::start(&c1, "eth0", "icmp", &capture_path);
    // Without -q: ping prints each "Frag needed" / "message too long" line.
    let big = sh_output(&format!(
        "ip netns exec {c1} ping -n -c 3 -i 0.2 -W 2 -M do -s 1472 {ip2}"
    ));
    let big_text = output_text(&big);
    let (frames, dropped) = capture.stop();
    assert!(
        !big.status.success(),
        "1500-byte DF ping must fail: {big_text}"
    );
    assert!(
        big_text.contains("mtu = 1350") || big_text.contains("mtu=1350"),
        "ping reports the path MTU: {big_text}"
    );
    assert_eq!(dropped, 0, "capture complete");

    // The ICMP error, parsed from the capture in c1.
    let errors = frag_needed_messages(&frames);
    assert!(
        !errors.is_empty(),
        "no ICMP frag-needed in {} frames; ping: {big_text}",
        frames.len()
    );
    for e in &errors {
        assert_eq!(e.mtu, 1350, "next-hop MTU: {e:?}");
        assert_eq!(
            (e.from, e.to),
            (ip2, ip1),
            "appears to come from the destination"
        );
        assert_eq!(
            (e.quoted_src, e.quoted_dst),
            (ip1, ip2),
            "quotes our packet"
        );
        assert_eq!(e.quoted_len, 1500, "quotes the 1500-byte packet");
        assert!(e.checksums_ok, "IPv4 and ICMP checksums: {e:?}");
    }

    // The kernel cached the path MTU; the router counted the drop.
    let route = sh(&format!("ip -n {c1} route get {ip2}"));
    assert!(route.contains("mtu 1350"), "cached PMTU: {route}");
    let too_big = counter(&cluster.agents[0], "drop.too_big");
    assert!(too_big > 0, "drop.too_big counts the drop");

    // No black hole: a full-size DF ping at the learned MTU works, and the same 1500-byte
    // ping without DF is fragmented by the kernel to the path MTU and gets through.
    let out = cluster.ping(&c1, &ip2.to_string(), 3, "-M do -s 1322");
    assert!(
        out.status.success(),
        "DF ping at the PMTU: {}",
        output_text(&out)
    );
    let out = cluster.ping(&c1, &ip2.to_string(), 3, "-M want -s 1472");
    assert!(
        out.status.success(),
        "1500-byte ping, fragmented: {}",
        output_text(&out)
    );
    let too_big_after = counter(&cluster.agents[0], "drop.too_big");
    assert_eq!(
        too_big_after, too_big,
        "nothing too big after the PMTU update"
    );

    eprintln!(
        "dp_mtu: eth0/bridge 1350, TAP/host veth 65521; {} frag-needed (mtu {}) in {} frames; \
         drop.too_big {too_big}; route: {}; {:.1?}",
        errors.len(),
        errors[0].mtu,
        frames.len(),
        route.split_whitespace().collect::<Vec<_>>().join(" "),
        started.elapsed()
    );
}
