//! The underlay, inspected frame by frame. A capture of h1's underlay during
//! a ping and eight parallel TCP flows is parsed with our `wire` views: every container frame is
//! VXLAN (I flag, the network's VNI) between member VTEPs, carries only the endpoints' MACs and
//! IPs, and nothing of the containers leaks unencapsulated. One inner flow keeps one UDP source
//! port; the flows spread over several. tshark, reading the same file, agrees.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::capture::*;
use crate::support::*;
use vxnet_dataplane::wire::{
    ArpPacket, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, MacAddr, TcpPacket, UdpPacket,
    VxlanPacket, ip_protocol,
};

/// Accepts `n` connections on a port, counts each one's bytes and sends the count back.
const SERVER: &str = r#"
import socket, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port)); s.listen(n)
print("listening", flush=True)
def serve(c):
    total = 0
    while True:
        d = c.recv(1 << 16)
        if not d: break
        total += len(d)
    c.sendall(str(total).encode()); c.close()
threads = []
for _ in range(n):
    c, _ = s.accept()
    t = threading.Thread(target=serve, args=(c,)); t.start(); threads.append(t)
for t in threads: t.join()
"#;

/// Opens `n` connections at once, sends `size` bytes on each; prints "<local port> <echoed count>".
const CLIENT: &str = r#"
import socket, sys, threading
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
results = [None] * n
def run(i):
    c = socket.create_connection((host, port), timeout=20)
    c.sendall(bytes(size)); c.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        d = c.recv(64)
        if not d: break
        got += d
    results[i] = (c.getsockname()[1], int(got))
threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
for sport, got in results: print(sport, got)
"#;

/// An inner flow: IPv4 source, destination, protocol and ports (0 for ICMP).
type Flow = (Ipv4Addr, Ipv4Addr, u8, u16, u16);

/// What the control plane and the hosts say the capture may contain.
#[derive(Debug)]
struct Expected {
    vni: u32,
    /// The endpoints' MACs and IPv4 addresses (`network inspect`).
    endpoint_macs: BTreeSet<MacAddr>,
    endpoint_ips: BTreeSet<Ipv4Addr>,
    /// The member VTEPs (`cluster members`).
    vteps: BTreeSet<Ipv4Addr>,
    /// The underlay's own devices: the hosts' `ul0` and the switch namespace's links.
    infra_macs: BTreeSet<MacAddr>,
    /// false: tolerate (and count) the host bridges' multicast-snooping reports inside VXLAN.
    strict_bridges: bool,
}

/// What every frame of the capture turned out to be.
#[derive(Debug, Default)]
struct Census {
    vxlan: usize,
    raft: usize,
    underlay_arp: usize,
    underlay_mcast: usize,
    /// VXLAN frames carrying a host bridge's IGMP/MLD "all snoopers" report (see
    /// [`is_snooper_report`]): a known agent bug, counted.
    bridge_reports: usize,
    inner_by_type: BTreeMap<u16, usize>,
    /// Per inner flow, the outer UDP source ports it used.
    ports: BTreeMap<Flow, BTreeSet<u16>>,
    /// "number, VNI, outer MAC,inner MAC, outer IP[,inner IP]" of each VXLAN frame, as tshark
    /// prints them.
    rows: Vec<String>,
}

fn link_macs(ns: &str) -> BTreeSet<MacAddr> {
    sh(&format!("ip -n {ns} -o link show"))
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .and_then(|m| m.parse().ok())
        })
        .collect()
}

fn mac_of_link(ns: &str, ifname: &str) -> MacAddr {
    let out = sh(&format!("ip -n {ns} -o link show dev {ifname}"));
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MAC in {out}"))
}

/// Two hosts, network `name` with c1 on h1 and c2 on h2 (not connected yet).
fn build(tag: &str, name: &str, subnet: &str) -> (Cluster, String, String) {
    let mut cluster = Cluster::new(tag, ClusterOptions::default());
    cluster.agents[0].vxnet(&["network", "create", "--subnet", subnet, name]);
    let c1 = cluster.container();
    let c2 = cluster.container();
    (cluster, c1, c2)
}

/// Connects c1 on h1 and c2 on h2 and waits until c1 reaches c2; returns their IPv4s.
fn connect(cluster: &Cluster, name: &str, c1: &str, c2: &str) -> (Ipv4Addr, Ipv4Addr) {
    cluster.agents[0].vxnet(&["network", "connect", name, c1]);
    cluster.agents[1].vxnet(&["network", "connect", name, c2]);
    let ip1 = cluster.ipv4_of(c1, "eth0");
    let ip2 = cluster.ipv4_of(c2, "eth0");
    cluster.wait_ping("ping c1 → c2", c1, &ip2);
    (ip1.parse().unwrap(), ip2.parse().unwrap())
}

/// Reads the VNI, endpoints and member VTEPs from the CLI, and the underlay's MACs.
fn expected(cluster: &Cluster, name: &str, strict_bridges: bool) -> Expected {
    let agent = &cluster.agents[0];
    let vni = agent.vni_of(name);
    let inspect: serde_json::Value =
        serde_json::from_str(&agent.vxnet(&["network", "inspect", name])).expect("inspect JSON");
    let containers = inspect[0]["Containers"].as_object().expect("Containers");
    assert_eq!(containers.len(), 2, "{containers:?}");
    let mut endpoint_macs = BTreeSet::new();
    let mut endpoint_ips = BTreeSet::new();
    for (sandbox, c) in containers {
        let mac: MacAddr = c["MacAddress"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .expect("MacAddress");
        let ip: Ipv4Addr = c["IPv4Address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .expect("IPv4Address");
        assert_eq!(mac_of_link(sandbox, "eth0"), mac, "MAC of {sandbox}");
        endpoint_macs.insert(mac);
        endpoint_ips.insert(ip);
    }
    let members: serde_json::Value =
        serde_json::from_str(&agent.vxnet(&["cluster", "members", "--format", "json"]))
            .expect("members JSON");
    let vteps: BTreeSet<Ipv4Addr> = members
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            m["underlay"]
                .as_str()
                .and_then(|u| u.parse().ok())
                .expect("underlay")
        })
        .collect();
    assert_eq!(vteps.len(), cluster.agents.len(), "{members}");
    let mut infra_macs = link_macs(&cluster.switch_ns());
    for i in 0..cluster.agents.len() {
        infra_macs.insert(mac_of_link(cluster.host_ns(i), "ul0"));
    }
    Expected {
        vni,
        endpoint_macs,
        endpoint_ips,
        vteps,
        infra_macs,
        strict_bridges,
    }
}

/// An IGMPv3 or MLDv2 report from the unspecified address joining the "all snoopers" group
/// (224.0.0.106 / ff02::6a, RFC 4286): what a Linux bridge with multicast snooping on (the
/// kernel default) sends when it comes up, whatever its addresses.
fn is_snooper_report<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> bool {
    match frame.ethertype() {
        EtherType::IPV4 => {
            let Ok(ip) = Ipv4Packet::new_checked(frame.payload()) else {
                return false;
            };
            // IGMPv3 report (0x22): 8-byte header, then a record with the group at 4..8.
            let igmp = ip.payload();
            ip.src_addr().is_unspecified()
                && ip.next_header() == 2
                && igmp.len() >= 16
                && igmp[0] == 0x22
                && igmp[12..16] == [224, 0, 0, 106]
        }
        EtherType::IPV6 => {
            let Ok(ip) = Ipv6Packet::new_checked(frame.payload()) else {
                return false;
            };
            // Hop-by-hop (router alert), then an MLDv2 report (143) with the group at 4..20
            // of its first record.
            let p = ip.payload();
            if !ip.src_addr().is_unspecified() || ip.next_header() != 0 || p.len() < 8 {
                return false;
            }
            let Some(mld) = p.get(8 * (usize::from(p[1]) + 1)..) else {
                return false;
            };
            let all_snoopers = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x6a).octets();
            p[0] == ip_protocol::ICMPV6
                && mld.len() >= 28
                && mld[0] == 143
                && mld[12..28] == all_snoopers
        }
        _ => false,
    }
}

/// Checks one captured underlay frame against what may be there; panics on anything else.
fn classify(number: usize, frame: &[u8], want: &Expected, census: &mut Census) {
    let eth = EthernetFrame::new_checked(frame)
        .unwrap_or_else(|e| panic!("frame {number}: Ethernet: {e}"));
    assert!(
        !want.endpoint_macs.contains(&eth.src_addr())
            && !want.endpoint_macs.contains(&eth.dst_addr()),
        "frame {number}: a container MAC on the underlay, unencapsulated"
    );
    match eth.ethertype() {
        EtherType::IPV4 => {
            let ip = Ipv4Packet::new_checked(eth.payload())
                .unwrap_or_else(|e| panic!("frame {number}: IPv4: {e}"));
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            assert!(
                !want.endpoint_ips.contains(&src) && !want.endpoint_ips.contains(&dst),
                "frame {number}: a container's IP outside VXLAN: {src} → {dst}"
            );
            assert!(ip.verify_checksum(), "frame {number}: outer IPv4 checksum");
            let between_vteps = want.vteps.contains(&src) && want.vteps.contains(&dst);
            match ip.next_header() {
                ip_protocol::UDP if between_vteps && src != dst => {
                    let udp = UdpPacket::new_checked(ip.payload())
                        .unwrap_or_else(|e| panic!("frame {number}: UDP: {e}"));
                    assert_eq!(
                        udp.dst_port(),
                        4789,
                        "frame {number}: UDP to the VXLAN port"
                    );
                    let vxlan = VxlanPacket::new_checked(udp.payload())
                        .unwrap_or_else(|e| panic!("frame {number}: VXLAN: {e}"));
                    assert!(vxlan.has_vni_flag(), "frame {number}: I flag");
                    assert_eq!(vxlan.flags(), 0x08, "frame {number}: only the I flag");
                    assert_eq!(vxlan.vni(), want.vni, "frame {number}: VNI");
                    let inner = EthernetFrame::new_checked(vxlan.payload())
                        .unwrap_or_else(|e| panic!("frame {number}: inner Ethernet: {e}"));
                    census.vxlan += 1;
                    let mut row = format!(
                        "{number}\t{}\t{},{}\t{src}",
                        want.vni,
                        eth.src_addr(),
                        inner.src_addr()
                    );
                    if let (EtherType::IPV4, Ok(inner_ip)) =
                        (inner.ethertype(), Ipv4Packet::new_checked(inner.payload()))
                    {
                        row.push_str(&format!(",{}", inner_ip.src_addr()));
                    }
                    census.rows.push(row);
                    check_inner(number, &inner, want, udp.src_port(), census);
                }
                ip_protocol::TCP if between_vteps => {
                    let tcp = TcpPacket::new_checked(ip.payload())
                        .unwrap_or_else(|e| panic!("frame {number}: TCP: {e}"));
                    assert!(
                        tcp.src_port() == 7946 || tcp.dst_port() == 7946,
                        "frame {number}: TCP other than Raft on the underlay"
                    );
                    census.raft += 1;
                }
                // IGMP of the underlay's own devices (the switch bridge's snooping reports).
                2 if want.infra_macs.contains(&eth.src_addr()) && dst.is_multicast() => {
                    census.underlay_mcast += 1;
                }
                other => panic!("frame {number}: IPv4 protocol {other}, {src} → {dst}"),
            }
        }
        EtherType::ARP => {
            let arp = ArpPacket::new_checked(eth.payload()).expect("ARP");
            assert!(
                want.vteps.contains(&arp.sender_protocol_addr())
                    && want.vteps.contains(&arp.target_protocol_addr()),
                "frame {number}: ARP between non-VTEPs"
            );
            census.underlay_arp += 1;
        }
        EtherType::IPV6 => {
            // The underlay devices' own link-local traffic (MLD, ND).
            assert!(
                want.infra_macs.contains(&eth.src_addr()),
                "frame {number}: IPv6 from {} on the underlay",
                eth.src_addr()
            );
            census.underlay_mcast += 1;
        }
        other => panic!("frame {number}: ethertype {:04x} on the underlay", other.0),
    }
}

/// Checks one inner frame: endpoint MACs and IPs only; records its flow's outer source port.
fn check_inner(
    number: usize,
    inner: &EthernetFrame<&[u8]>,
    want: &Expected,
    outer_sport: u16,
    census: &mut Census,
) {
    *census.inner_by_type.entry(inner.ethertype().0).or_default() += 1;
    if !want.endpoint_macs.contains(&inner.src_addr()) {
        if !want.strict_bridges && is_snooper_report(inner) {
            census.bridge_reports += 1;
            return;
        }
        panic!(
            "frame {number}: inner source MAC {} is no endpoint's (snooper report: {})",
            inner.src_addr(),
            is_snooper_report(inner)
        );
    }
    assert!(
        want.endpoint_macs.contains(&inner.dst_addr()) || inner.dst_addr().is_multicast(),
        "frame {number}: inner destination MAC {}",
        inner.dst_addr()
    );
    match inner.ethertype() {
        EtherType::IPV4 => {
            let ip = Ipv4Packet::new_checked(inner.payload())
                .unwrap_or_else(|e| panic!("frame {number}: inner IPv4: {e}"));
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            assert!(
                want.endpoint_ips.contains(&src),
                "frame {number}: inner source {src}"
            );
            assert!(
                want.endpoint_ips.contains(&dst) || dst.is_multicast() || dst.is_broadcast(),
                "frame {number}: inner destination {dst}"
            );
            let ports = match ip.next_header() {
                ip_protocol::TCP => {
                    let tcp = TcpPacket::new_checked(ip.payload())
                        .unwrap_or_else(|e| panic!("frame {number}: inner TCP: {e}"));
                    (tcp.src_port(), tcp.dst_port())
                }
                ip_protocol::UDP => {
                    let udp = UdpPacket::new_checked(ip.payload())
                        .unwrap_or_else(|e| panic!("frame {number}: inner UDP: {e}"));
                    (udp.src_port(), udp.dst_port())
                }
                _ => (0, 0),
            };
            let flow = (src, dst, ip.next_header(), ports.0, ports.1);
            census.ports.entry(flow).or_default().insert(outer_sport);
        }
        EtherType::ARP => {
            let arp = ArpPacket::new_checked(inner.payload())
                .unwrap_or_else(|e| panic!("frame {number}: inner ARP: {e}"));
            assert!(
                want.endpoint_ips.contains(&arp.sender_protocol_addr()),
                "frame {number}: inner ARP from {}",
                arp.sender_protocol_addr()
            );
        }
        // IPv6 link-local (DAD, MLD, RS) from the endpoints' MACs, checked above.
        EtherType::IPV6 => {}
        other => panic!("frame {number}: inner ethertype {:04x}", other.0),
    }
}

/// Ping and eight TCP flows from c1 (h1) to c2 (h2), captured on h1's underlay; every frame
/// parsed and checked, flows mapped to outer source ports, and tshark's reading compared.
#[test]
fn underlay_capture_is_clean_vxlan() {
    if !require_root("underlay_capture_is_clean_vxlan") {
        return;
    }
    let started = Instant::now();
    let (cluster, c1, c2) = build("pc", "pcapnet", "10.55.0.0/24");
    let (ip1, ip2) = connect(&cluster, "pcapnet", &c1, &c2);
    let want = expected(&cluster, "pcapnet", true);

    // Traffic, captured on h1's underlay (everything, no filter).
    let h1 = cluster.host_ns(0).to_string();
    let pcap = cluster.dir().join("h1-ul0.pcap");
    let capture = Capture::start(&h1, "ul0", "", &pcap);
    let out = cluster.ping(&c1, &ip2.to_string(), 5, "");
    assert!(
        out.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let server_py = cluster.dir().join("server.py");
    let client_py = cluster.dir().join("client.py");
    std::fs::write(&server_py, SERVER).expect("write server");
    std::fs::write(&client_py, CLIENT).expect("write client");
    const FLOWS: usize = 8;
    const BYTES: usize = 256 << 10;
    let mut server = Command::new("ip")
        .args(["netns", "exec", &c2, "python3"])
        .arg(&server_py)
        .args(["5201", &FLOWS.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut ready = String::new();
    BufReader::new(server.stdout.take().expect("server stdout"))
        .read_line(&mut ready)
        .expect("server ready");
    assert_eq!(ready.trim(), "listening");
    let client = sh(&format!(
        "timeout 30 ip netns exec {c1} python3 {} {ip2} 5201 {FLOWS} {BYTES}",
        client_py.display()
    ));
    assert!(server.wait().expect("server").success());
    let (frames, dropped) = capture.stop();
    assert_eq!(dropped, 0, "capture complete");
    let client_ports: BTreeSet<u16> = client
        .lines()
        .map(|l| {
            let (port, got) = l.split_once(' ').expect("client line");
            assert_eq!(
                got.parse::<usize>().ok(),
                Some(BYTES),
                "bytes received: {l}"
            );
            port.parse().expect("port")
        })
        .collect();
    assert_eq!(client_ports.len(), FLOWS, "distinct client ports: {client}");

    // Every frame, parsed.
    let mut census = Census::default();
    for (index, frame) in frames.iter().enumerate() {
        classify(index + 1, frame, &want, &mut census);
    }

    // Flows and source ports.
    for (flow, ports) in &census.ports {
        assert_eq!(
            ports.len(),
            1,
            "flow {flow:?} used several source ports: {ports:?}"
        );
    }
    let tcp_flows: Vec<(&Flow, u16)> = census
        .ports
        .iter()
        .filter(|((src, dst, proto, sport, dport), _)| {
            *proto == ip_protocol::TCP
                && (*src, *dst, *dport) == (ip1, ip2, 5201)
                && client_ports.contains(sport)
        })
        .map(|(flow, ports)| (flow, *ports.first().expect("a port")))
        .collect();
    assert_eq!(tcp_flows.len(), FLOWS, "every TCP flow on the underlay");
    let spread: BTreeSet<u16> = tcp_flows.iter().map(|(_, port)| *port).collect();
    assert!(
        spread.len() >= 2,
        "{FLOWS} flows all on one source port: {tcp_flows:?}"
    );
    let icmp_flow = (ip1, ip2, ip_protocol::ICMP, 0, 0);
    assert!(
        census.ports.contains_key(&icmp_flow),
        "the ping on the underlay"
    );

    // tshark reads the same file the same way.
    let all = sh(&format!(
        "tshark -r {} -T fields -e frame.number 2>/dev/null",
        pcap.display()
    ));
    assert_eq!(
        all.lines().count(),
        frames.len(),
        "tshark counts the same frames"
    );
    let tshark = sh(&format!(
        "tshark -r {} -d udp.port==4789,vxlan -Y vxlan -T fields -e frame.number -e vxlan.vni \
         -e eth.src -e ip.src 2>/dev/null",
        pcap.display()
    ));
    let tshark_rows: Vec<&str> = tshark.lines().collect();
    assert_eq!(
        tshark_rows.len(),
        census.rows.len(),
        "tshark finds the same VXLAN frames"
    );
    for (ours, theirs) in census.rows.iter().zip(&tshark_rows) {
        assert_eq!(
            ours, theirs,
            "our parse and tshark's (number, VNI, eth.src, ip.src)"
        );
    }

    eprintln!(
        "dp_pcap: {} frames = {} VXLAN (VNI {}; inner ethertypes {}; {} host-bridge snooper \
         reports) + {} Raft TCP + {} underlay ARP + {} underlay IGMP/IPv6; {} inner flows each on \
         1 source port; {FLOWS} TCP flows on {} distinct ports {spread:?}; tshark agrees on {} \
         VXLAN rows; {:.1?}",
        frames.len(),
        census.vxlan,
        want.vni,
        ethertypes(&census.inner_by_type),
        census.bridge_reports,
        census.raft,
        census.underlay_arp,
        census.underlay_mcast,
        census.ports.len(),
        spread.len(),
        tshark_rows.len(),
        started.elapsed()
    );
}

/// From before the containers connect: no frame of a host-side device (bridge, TAP, host veth
/// end) enters the overlay. A bridge with multicast snooping on (the kernel default) would send
/// IGMPv3/MLDv2 "all snoopers" reports (224.0.0.106, ff02::6a) from 0.0.0.0/:: when it comes up,
/// through the TAP, and the router would flood them to every member VTEP: the agent creates its
/// bridges with snooping off.
#[test]
fn host_bridges_stay_out_of_the_overlay() {
    if !require_root("host_bridges_stay_out_of_the_overlay") {
        return;
    }
    let (cluster, c1, c2) = build("pcb", "quietnet", "10.56.0.0/24");
    let h1 = cluster.host_ns(0).to_string();
    let pcap = cluster.dir().join("h1-ul0.pcap");
    let capture = Capture::start(&h1, "ul0", "udp port 4789", &pcap);
    connect(&cluster, "quietnet", &c1, &c2);
    // A bridge reports twice within ~1.5 s of coming up.
    std::thread::sleep(Duration::from_secs(2));
    let (frames, dropped) = capture.stop();
    assert_eq!(dropped, 0, "capture complete");
    let want = expected(&cluster, "quietnet", true);
    let mut census = Census::default();
    for (index, frame) in frames.iter().enumerate() {
        classify(index + 1, frame, &want, &mut census);
    }
    eprintln!(
        "dp_pcap (bridges): {} VXLAN frames, all from endpoints",
        census.vxlan
    );
}
