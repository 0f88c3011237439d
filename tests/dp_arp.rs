//! Issue #5, proof 4: ARP suppression. A container's ARP request for a remote peer the control
//! plane knows is answered by its own host's agent; no ARP request for it crosses the underlay.
//! A request for an unknown address is flooded (the control case: the capture would see one).

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use vxnet_dataplane::wire::{
    ArpOperation, ArpPacket, EtherType, EthernetFrame, Ipv4Packet, MacAddr, UdpPacket, VxlanPacket,
    ip_protocol,
};

/// A running `tcpdump -w` inside a namespace; stopped (SIGINT) by [`Capture::stop`] or on drop.
struct Capture {
    child: Option<Child>,
    stderr: Option<BufReader<ChildStderr>>,
    path: PathBuf,
}

impl Capture {
    /// Starts capturing on `iface` in `ns` into `path`; returns once tcpdump is listening.
    fn start(ns: &str, iface: &str, filter: &str, path: &Path) -> Capture {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-Z", "root",
            ])
            // Immediate mode: no packet waits in a ring block that SIGINT would discard;
            // a 32 MiB ring so that bursts are not dropped.
            .args(["--immediate-mode", "-B", "32768", "-s", "0", "-w"])
            .arg(path)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let mut stderr = BufReader::new(child.stderr.take().expect("tcpdump stderr"));
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !line.contains("listening on") {
            line.clear();
            let n = stderr.read_line(&mut line).expect("read tcpdump stderr");
            assert!(
                n > 0 && Instant::now() < deadline,
                "tcpdump did not start: {line}"
            );
        }
        Capture {
            child: Some(child),
            stderr: Some(stderr),
            path: path.to_path_buf(),
        }
    }

    /// Stops tcpdump and returns the captured frames and its "dropped by kernel" count.
    fn stop(mut self) -> (Vec<Vec<u8>>, u64) {
        // Let the last packets reach the capture buffer.
        std::thread::sleep(Duration::from_millis(300));
        let mut child = self.child.take().expect("running capture");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let status = child.wait().expect("wait tcpdump");
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        assert!(
            status.success() || status.code() == Some(130) || status.code().is_none(),
            "tcpdump failed: {status} {text}"
        );
        let dropped = text
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (read_pcap(&self.path), dropped)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads a classic pcap file (either byte order, µs or ns timestamps) of Ethernet frames.
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).expect("read pcap");
    assert!(data.len() >= 24, "pcap too short: {} bytes", data.len());
    let magic = [data[0], data[1], data[2], data[3]];
    let big_endian = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
        other => panic!("not a pcap file: magic {other:02x?}"),
    };
    let u32_at = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "link type must be Ethernet");
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32_at(at + 8) as usize;
        let orig = u32_at(at + 12) as usize;
        let start = at + 16;
        assert!(start + incl <= data.len(), "truncated pcap record");
        assert_eq!(incl, orig, "frame captured in full");
        frames.push(data[start..start + incl].to_vec());
        at = start + incl;
    }
    frames
}

/// `vxnet stats --format json`, as a map of counters.
fn stats(agent: &Agent) -> serde_json::Map<String, serde_json::Value> {
    let out = agent.vxnet(&["stats", "--format", "json"]);
    match serde_json::from_str(&out).expect("stats JSON") {
        serde_json::Value::Object(map) => map,
        other => panic!("stats is not an object: {other}"),
    }
}

fn counter(agent: &Agent, name: &str) -> u64 {
    stats(agent)
        .get(name)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// One VXLAN datagram seen on the underlay, parsed with the wire views.
struct Encap {
    vni: u32,
    inner: EthernetFrame<Vec<u8>>,
}

/// Outer Ethernet/IPv4/UDP to port 4789/VXLAN with the I flag, or `None`.
fn decap(frame: &[u8]) -> Option<Encap> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EtherType::IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != ip_protocol::UDP {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.dst_port() != 4789 {
        return None;
    }
    let vxlan = VxlanPacket::new_checked(udp.payload()).ok()?;
    assert!(vxlan.has_vni_flag(), "VXLAN I flag");
    Some(Encap {
        vni: vxlan.vni(),
        inner: EthernetFrame::new_checked(vxlan.payload().to_vec()).ok()?,
    })
}

fn inspect(agent: &Agent, network: &str) -> serde_json::Value {
    let text = agent.vxnet(&["network", "inspect", network]);
    let value: serde_json::Value = serde_json::from_str(&text).expect("inspect JSON");
    value[0].clone()
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

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
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.52.0.0/24", "arpnet"]);
    let c1 = cluster.container();
    let c2 = cluster.container();
    cluster.agents[0].vxnet(&["network", "connect", "arpnet", &c1]);
    cluster.agents[1].vxnet(&["network", "connect", "arpnet", &c2]);
    let ip1: Ipv4Addr = cluster.ipv4_of(&c1, "eth0").parse().unwrap();
    let ip2: Ipv4Addr = cluster.ipv4_of(&c2, "eth0").parse().unwrap();
    let net = inspect(&cluster.agents[0], "arpnet");
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
    wait_for("ping c1 → c2", Duration::from_secs(20), || {
        cluster
            .ping(&c1, &ip2.to_string(), 1, "")
            .status
            .success()
            .then_some(())
    });
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

/// "0800:12 86dd:3": inner ethertypes (hex) and their counts.
fn ethertypes<N: std::fmt::Display>(map: &std::collections::BTreeMap<u16, N>) -> String {
    map.iter()
        .map(|(t, n)| format!("{t:04x}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
