//! The peer channel (TCP 7946) as a stranger on the underlay sees it. A capture on the switch
//! while a follower creates a network (forwarded to the leader), a host restarts (new
//! handshakes, Raft catch-up) and a container is connected with a name and an alias: no network
//! name, endpoint name, alias, subnet, address, MAC or id appears anywhere in the pcap's bytes,
//! every connection opened during the capture starts with a TLS handshake record, and tshark
//! reads TLS 1.3 (ServerHello `supported_versions` = 0x0304), no SNI, and application data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::support::capture::Capture;
use crate::support::*;
use serde_json::Value;
use vxnet_dataplane::wire::{EtherType, EthernetFrame, Ipv4Packet, TcpPacket, ip_protocol};

/// Distinctive names: any of them in the capture would be a leak, not a coincidence.
const NETWORK: &str = "zebracorn-net";
const ENDPOINT: &str = "quokkafrost-ep";
const ALIAS: &str = "marmalynx-alias";
const SUBNET: &str = "10.77.42.0/24";
const SUBNET_TEXT: &str = "10.77.42";
const PEER_PORT: u16 = 7946;

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A MAC address from its text form.
fn mac_bytes(mac: &str) -> [u8; 6] {
    let parts: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("MAC {mac:?}")))
        .collect();
    parts
        .try_into()
        .unwrap_or_else(|_| panic!("MAC {mac:?} has six parts"))
}

/// Bytes from hex text (an id), if it is hex of even length.
fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Runs tshark on `pcap` with the peer port decoded as TLS; its output lines.
fn tshark_lines(pcap: &Path, args: &str) -> Vec<String> {
    sh(&format!(
        "tshark -r {} -d tcp.port=={PEER_PORT},tls {args}",
        pcap.display()
    ))
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(str::to_string)
    .collect()
}

/// What the connections of the capture looked like on the wire.
#[derive(Debug, Default)]
struct Flows {
    /// TCP packets to or from the peer port, and those with payload.
    packets: usize,
    payload_packets: usize,
    payload_bytes: usize,
    /// Connections whose SYN is in the capture, and those of them the server accepted (SYN-ACK).
    opened: usize,
    established: usize,
    /// First payload byte of each direction of those connections → count.
    first_bytes: BTreeMap<u8, usize>,
    /// (client, server) of the connections opened during the capture.
    pairs: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
}

/// Walks the frames with the wire views: per connection opened during the capture, the first
/// byte each side sent.
fn flows(frames: &[Vec<u8>]) -> Flows {
    type Key = (Ipv4Addr, u16, Ipv4Addr, u16);
    let mut out = Flows::default();
    // Directions whose connection began in the capture, and whether their first byte was seen.
    let mut started: BTreeMap<Key, bool> = BTreeMap::new();
    let (mut syns, mut syn_acks) = (BTreeSet::<Key>::new(), BTreeSet::<Key>::new());
    for frame in frames {
        let Ok(eth) = EthernetFrame::new_checked(frame.as_slice()) else {
            continue;
        };
        if eth.ethertype() != EtherType::IPV4 {
            continue;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        if ip.next_header() != ip_protocol::TCP {
            continue;
        }
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            continue;
        };
        if tcp.src_port() != PEER_PORT && tcp.dst_port() != PEER_PORT {
            continue;
        }
        out.packets += 1;
        let key = (ip.src_addr(), tcp.src_port(), ip.dst_addr(), tcp.dst_port());
        let reverse = (key.2, key.3, key.0, key.1);
        if tcp.syn() {
            if tcp.ack() {
                syn_acks.insert(reverse);
            } else {
                syns.insert(key);
                out.pairs.insert((key.0, key.2));
            }
            started.entry(key).or_insert(false);
            started.entry(reverse).or_insert(false);
        }
        let payload = tcp.payload();
        if payload.is_empty() {
            continue;
        }
        out.payload_packets += 1;
        out.payload_bytes += payload.len();
        if let Some(seen) = started.get_mut(&key)
            && !*seen
        {
            *seen = true;
            *out.first_bytes.entry(payload[0]).or_default() += 1;
        }
    }
    out.opened = syns.len();
    out.established = syns.intersection(&syn_acks).count();
    out
}

/// Capture of 7946 on the switch during `network create` (on a follower) and `connect` (on a
/// restarted host): nothing of the network leaks, and the traffic is TLS 1.3 without SNI.
#[test]
fn peer_traffic_is_tls13_and_names_nothing() {
    let Some(mut cluster) = cluster_for("peer_traffic_is_tls13_and_names_nothing", "scp", 3) else {
        return;
    };
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        cluster.agents[0].leader_name()
    });
    let leader = cluster
        .agents
        .iter()
        .position(|a| a.name == leader)
        .unwrap_or_else(|| panic!("leader {leader} is one of the hosts"));
    // A follower writes (its write is forwarded to the leader); the other follower restarts
    // and gets the container.
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (writer, restarted) = (followers[0], followers[1]);

    let pcap = cluster.dir().join("peer-7946.pcap");
    // Returns once tcpdump reports it is listening; promiscuous on the bridge, so it sees the
    // frames the bridge forwards between the hosts' ports.
    let capture = Capture::start(
        &cluster.switch_ns(),
        "br0",
        &format!("tcp port {PEER_PORT}"),
        &pcap,
    );

    // The restarted host misses the create and catches up over new connections.
    cluster.agents[restarted].kill();
    cluster.agents[writer].vxnet(&["network", "create", "--subnet", SUBNET, NETWORK]);
    cluster.agents[restarted].start();
    cluster.wait_api(restarted);
    wait_for(
        "the restarted host to apply the network",
        Duration::from_secs(30),
        || cluster.agents[restarted].inspect(NETWORK),
    );
    let container = cluster.container();
    cluster.agents[restarted].vxnet(&[
        "network", "connect", "--name", ENDPOINT, "--alias", ALIAS, NETWORK, &container,
    ]);
    // Every host has applied the endpoint: it travelled to and from the leader.
    let inspected: Vec<Value> = (0..3)
        .map(|i| {
            wait_for(
                &format!("{} to see the endpoint", cluster.agents[i].name),
                Duration::from_secs(20),
                || {
                    cluster.agents[i].inspect(NETWORK).filter(|n| {
                        n["Containers"]
                            .as_object()
                            .is_some_and(|c| c.values().any(|e| e["Name"] == ENDPOINT))
                    })
                },
            )
        })
        .collect();
    // A read that asks the leader (reachability), over the peer channel too.
    cluster.agents[writer].vxnet(&["cluster", "members"]);
    let (frames, dropped) = capture.stop();

    let ip = cluster.ipv4_of(&container, "eth0");
    let link: Value =
        serde_json::from_str(&sh(&format!("ip -n {container} -j link show dev eth0")))
            .expect("ip -j link");
    let mac = link[0]["address"]
        .as_str()
        .expect("eth0 has a MAC")
        .to_ascii_lowercase();
    let network = &inspected[leader];
    let network_id = network["Id"].as_str().expect("network Id").to_string();
    let endpoint = network["Containers"]
        .as_object()
        .and_then(|c| c.values().find(|e| e["Name"] == ENDPOINT))
        .expect("the endpoint in inspect")
        .clone();
    assert!(
        endpoint["IPv4Address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{ip}/"))),
        "inspect and the container agree on the address: {endpoint} vs {ip}"
    );
    let endpoint_id = endpoint["EndpointID"].as_str().unwrap_or("").to_string();
    assert!(ip.starts_with(SUBNET_TEXT), "{ip} is in {SUBNET}");

    // The pcap's raw bytes: headers, payloads, everything.
    let bytes = std::fs::read(&pcap).expect("read the pcap");
    let ip_raw = ip.parse::<Ipv4Addr>().expect("IPv4").octets();
    let mac_raw = mac_bytes(&mac);
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        (format!("network name {NETWORK:?}"), NETWORK.into()),
        (format!("endpoint name {ENDPOINT:?}"), ENDPOINT.into()),
        (format!("alias {ALIAS:?}"), ALIAS.into()),
        (format!("subnet text {SUBNET_TEXT:?}"), SUBNET_TEXT.into()),
        (format!("endpoint IP text {ip:?}"), ip.clone().into()),
        (format!("endpoint IP bytes {ip_raw:02x?}"), ip_raw.to_vec()),
        (format!("MAC text {mac:?}"), mac.clone().into()),
        (
            format!("MAC text {:?}", mac.to_ascii_uppercase()),
            mac.to_ascii_uppercase().into(),
        ),
        (format!("MAC text {:?}", mac.replace(':', "-")), {
            mac.replace(':', "-").into()
        }),
        (format!("MAC bytes {mac_raw:02x?}"), mac_raw.to_vec()),
        (
            format!("network id {network_id:?}"),
            network_id.clone().into(),
        ),
        (
            format!("container namespace {container:?}"),
            container.clone().into(),
        ),
    ];
    if network_id.len() > 12 {
        needles.push((
            format!("short network id {:?}", &network_id[..12]),
            network_id[..12].into(),
        ));
    }
    if let Some(raw) = hex_bytes(&network_id).filter(|r| r.len() >= 8) {
        needles.push(("network id bytes".into(), raw));
    }
    if endpoint_id.len() >= 12 {
        needles.push((
            format!("endpoint id {endpoint_id:?}"),
            endpoint_id.clone().into(),
        ));
        if let Some(raw) = hex_bytes(&endpoint_id).filter(|r| r.len() >= 8) {
            needles.push(("endpoint id bytes".into(), raw));
        }
    }
    let leaks: Vec<String> = needles
        .iter()
        .filter_map(|(what, needle)| {
            find(&bytes, needle).map(|at| format!("{what} at byte {at} of the pcap"))
        })
        .collect();

    let seen = flows(&frames);
    let payload_lines = tshark_lines(&pcap, "-Y 'tcp.len>0' -T fields -e frame.number");
    let server_hellos = tshark_lines(
        &pcap,
        "-Y 'tls.handshake.type==2' -T fields -e tls.handshake.extensions.supported_version",
    );
    let client_hellos = tshark_lines(
        &pcap,
        "-Y 'tls.handshake.type==1' -T fields -e frame.number",
    );
    let sni = tshark_lines(
        &pcap,
        "-Y 'tls.handshake.extensions_server_name' -T fields -e frame.number",
    );
    // Application data: Wireshark calls the outer type of a TLS 1.3 record `opaque_type` on
    // connections whose handshake it saw, `content_type` on those opened before the capture.
    let app_data = tshark_lines(
        &pcap,
        "-Y 'tls.record.content_type==23 || tls.record.opaque_type==23' -T fields -e frame.number",
    );
    let not_tls = tshark_lines(&pcap, "-Y 'tcp.len>0 && !tls' -T fields -e frame.number");
    let first_bytes: Vec<String> = seen
        .first_bytes
        .iter()
        .map(|(b, n)| format!("{b:#04x}×{n}"))
        .collect();
    let versions: BTreeSet<&str> = server_hellos.iter().map(|l| l.trim()).collect();
    eprintln!(
        "sec_capture: {} frames ({} bytes of pcap, {dropped} dropped by the kernel); {} on {PEER_PORT}, \
         {} with payload ({} payload bytes, tshark: {}); {} connections opened during the capture \
         ({} accepted) between {:?}; first bytes per direction {first_bytes:?}; ClientHellos {}, \
         ServerHellos {} (versions {versions:?}), SNI {}, application-data frames {}, payload \
         frames tshark does not read as TLS {}; {} needles searched: {}",
        frames.len(),
        bytes.len(),
        seen.packets,
        seen.payload_packets,
        seen.payload_bytes,
        payload_lines.len(),
        seen.opened,
        seen.established,
        seen.pairs,
        client_hellos.len(),
        server_hellos.len(),
        sni.len(),
        app_data.len(),
        not_tls.len(),
        needles.len(),
        if leaks.is_empty() {
            "none found".to_string()
        } else {
            leaks.join("; ")
        },
    );

    assert_eq!(dropped, 0, "tcpdump dropped packets");
    assert!(
        payload_lines.len() > 20 && seen.payload_packets > 20,
        "the capture is trivial: {} packets with payload (tshark {})",
        seen.payload_packets,
        payload_lines.len()
    );
    assert!(
        leaks.is_empty(),
        "found in the capture: {}",
        leaks.join("; ")
    );
    // Connections opened during the capture (the restart's, the forwarded write's) start with
    // a TLS handshake record both ways: no plaintext greeting, no previous-release protocol.
    assert!(
        seen.established >= 2,
        "the restart opened new connections: {seen:?}"
    );
    assert!(
        seen.first_bytes.keys().all(|b| *b == 0x16),
        "every connection opened during the capture begins with a TLS handshake record (0x16) \
         both ways: {first_bytes:?}"
    );
    assert!(
        !server_hellos.is_empty(),
        "tshark found no ServerHello in the capture"
    );
    assert!(
        server_hellos.iter().all(|v| v.trim() == "0x0304"),
        "every ServerHello selects TLS 1.3 (0x0304): {server_hellos:?}"
    );
    assert!(sni.is_empty(), "ClientHellos with SNI in frames {sni:?}");
    assert!(!app_data.is_empty(), "tshark found no TLS application data");
}
