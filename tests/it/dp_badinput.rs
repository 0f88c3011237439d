//! Bad input on the underlay: 10,000 malformed or hostile VXLAN datagrams sent to h1's port 4789
//! while two containers ping each other across h1 and h2. The ping loses nothing, every datagram
//! is counted under the reason the router gives it, and the agent stays up.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The blaster: builds 10 classes × 1,000 datagrams, shuffles them, sends them paced (bursts of
/// 100 every 20 ms, ~2.5 s in all) and prints the count it expects under each drop reason as
/// JSON. Two sources: `member` (a static VTEP of the network, so its datagrams get past the
/// membership check) and `stranger` (no member of anything).
///
/// Each class maps to exactly one reason because the router checks in a fixed order (length,
/// I flag, VNI, member source, inner frame, inner source MAC, inner destination). The "random"
/// class is random bytes of random length; the blaster classifies each one by that same order
/// (short / no I flag / unknown VNI; one whose random VNI happens to be the network's is drawn
/// again), so its share adds to those three reasons and every expected count is exact.
const BLASTER: &str = r#"
import json, random, socket, sys, time
target, vni, c1, c2, member, stranger = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
per_class = int(sys.argv[7])
rng = random.Random(5)
mac = lambda s: bytes(int(x, 16) for x in s.split(":"))
C1, C2 = mac(c1), mac(c2)
OTHER = bytes([0x02, 0x00, 0x5e, 0x10, 0x20, 0x30])  # unicast, in no table
def hdr(v, flags=0x08): return bytes([flags, 0, 0, 0]) + v.to_bytes(3, "big") + b"\0"
def ipv4_icmp():
    ip = bytes([0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 35, 0, 99, 10, 35, 0, 2])
    return ip + bytes([8, 0, 0xf7, 0xfe, 0, 1, 0, 1])
def frame(dst=C1, src=OTHER): return dst + src + b"\x08\x00" + ipv4_icmp()
def other_vni():
    while True:
        v = rng.randrange(1, 1 << 24)
        if v != vni: return v
def truncated_inner():
    kind = rng.randrange(4)
    if kind == 0:  # shorter than an Ethernet header
        return C1 + OTHER[: rng.randrange(0, 2)]
    if kind == 1:  # IPv4 header cut short
        return C1 + OTHER + b"\x08\x00" + ipv4_icmp()[: rng.randrange(0, 20)]
    if kind == 2:  # IPv4 total length beyond the frame
        ip = bytearray(ipv4_icmp()); ip[2:4] = (1400).to_bytes(2, "big")
        return C1 + OTHER + b"\x08\x00" + bytes(ip)
    return C1 + OTHER + b"\x08\x06" + bytes(rng.randrange(0, 28))  # ARP cut short
def random_bytes():
    while True:
        d = rng.randbytes(rng.randrange(1, 120))
        if len(d) < 8: return d, "short_datagram"
        if d[0] & 0x08 == 0: return d, "bad_vxlan_flags"
        if int.from_bytes(d[4:7], "big") != vni: return d, "unknown_vni"
expected, queue = {}, []
def add(src, data, reason):
    queue.append((src, data)); expected[reason] = expected.get(reason, 0) + 1
for _ in range(per_class):
    add(member, rng.randbytes(rng.randrange(1, 8)), "short_datagram")
    add(member, hdr(vni, rng.randrange(256) & ~0x08) + frame(), "bad_vxlan_flags")
    add(member, hdr(other_vni()) + frame(), "unknown_vni")
    add(stranger, hdr(vni) + frame(), "non_member_vtep")
    add(member, hdr(vni) + truncated_inner(), "malformed_inner")
    add(member, hdr(vni) + frame(src=C2), "source_mismatch")
    add(member, hdr(vni) + frame(src=C1, dst=OTHER), "loop_guard")
    add(member, hdr(vni) + frame(dst=bytes([0x02]) + rng.randbytes(5)), "not_local")
    d, reason = random_bytes(); add(member, d, reason)
    d, reason = random_bytes(); add(stranger, d, reason)
socks = {}
for src in (member, stranger):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0)); socks[src] = s
rng.shuffle(queue)
for i, (src, data) in enumerate(queue):
    socks[src].sendto(data, (target, 4789))
    if i % 100 == 99: time.sleep(0.02)
print(json.dumps({"sent": len(queue), "expected": expected}), flush=True)
"#;

/// Sends `argv[3]` zero-length datagrams from `argv[2]` to `argv[1]`:4789.
const EMPTY_SENDER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[2], 0))
for _ in range(int(sys.argv[3])): s.sendto(b"", (sys.argv[1], 4789))
"#;

/// UDP counters of namespace `ns` (`/proc/net/snmp`): name → value.
fn udp_snmp(ns: &str) -> BTreeMap<String, u64> {
    let text = sh(&format!("ip netns exec {ns} cat /proc/net/snmp"));
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let (names, values) = (lines[0], lines[1]);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .map(|(n, v)| (n.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// Two hosts with agents and one "attacker" namespace on the underlay switch with two addresses:
/// 192.168.200.50 (registered as a static VTEP of the network) and .51 (a stranger).
struct Setup {
    cluster: Cluster,
    attacker: String,
    c1: String,
    c2: String,
    ip2: String,
    mac1: String,
    mac2: String,
    vni: u32,
}

fn setup(tag: &str) -> Setup {
    let mut cluster = Cluster::new(tag, ClusterOptions::default());
    let vni = 4242;
    cluster.agents[0].vxnet(&[
        "network",
        "create",
        "--subnet",
        "10.35.0.0/24",
        "--vni",
        &vni.to_string(),
        "blue",
    ]);
    let c1 = cluster.container();
    let c2 = cluster.container();
    cluster.agents[0].vxnet(&["network", "connect", "blue", &c1]);
    cluster.agents[1].vxnet(&["network", "connect", "blue", &c2]);
    let ip2 = cluster.ipv4_of(&c2, "eth0");
    let inspect: serde_json::Value =
        serde_json::from_str(&cluster.agents[0].vxnet(&["network", "inspect", "blue"]))
            .expect("inspect JSON");
    let mac_of = |sandbox: &str| {
        inspect[0]["Containers"][sandbox]["MacAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("no MAC for {sandbox}: {inspect}"))
            .to_string()
    };
    let (mac1, mac2) = (mac_of(&c1), mac_of(&c2));

    // The attacker: a namespace of its own (cleaned up with the cluster) plugged into the switch.
    let attacker = cluster.container();
    cluster.plug(&attacker, "pa");
    sh(&format!(
        "ip -n {attacker} addr add 192.168.200.50/24 dev ul0 \
         && ip -n {attacker} addr add 192.168.200.51/24 dev ul0"
    ));
    cluster.agents[0].vxnet(&["fdb", "add", "blue", "--vtep", "192.168.200.50"]);
    wait_for("h1's FIB to list .50", Duration::from_secs(10), || {
        cluster.agents[0]
            .vxnet(&["fdb", "show"])
            .contains("dst 192.168.200.50 ")
            .then_some(())
    });
    let ip1 = cluster.ipv4_of(&c1, "eth0");
    cluster.wait_ping("ping c1 → c2", &c1, &ip2);
    assert!(cluster.ping(&c2, &ip1, 1, "").status.success());
    Setup {
        cluster,
        attacker,
        c1,
        c2,
        ip2,
        mac1,
        mac2,
        vni,
    }
}

/// The deltas of the `drop.*` counters between two snapshots (zeros left out).
fn drop_deltas(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let reason = k.strip_prefix("drop.")?;
            let delta = v - before.get(k).copied().unwrap_or(0);
            (delta > 0).then(|| (reason.to_string(), delta))
        })
        .collect()
}

#[test]
fn bad_datagrams_are_counted_and_harmless() {
    if !require_root("bad_datagrams_are_counted_and_harmless") {
        return;
    }
    let started = Instant::now();
    let Setup {
        mut cluster,
        attacker,
        c1,
        c2,
        ip2,
        mac1,
        mac2,
        vni,
    } = setup("bi");
    let h1 = cluster.host_ns(0).to_string();
    let blaster = cluster.dir().join("blaster.py");
    std::fs::write(&blaster, BLASTER).expect("write blaster");
    let before = cluster.agents[0].stats();
    let udp_before = udp_snmp(&h1);
    let rx_before = before["net.blue.rx_packets"];

    let ping = Command::new("ip")
        .args([
            "netns", "exec", &c1, "ping", "-n", "-q", "-i", "0.01", "-c", "500",
        ])
        .args(["-W", "1", &ip2])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping");
    std::thread::sleep(Duration::from_millis(800));
    let blast_start = Instant::now();
    let out = sh(&format!(
        "ip netns exec {attacker} python3 {} 192.168.200.1 {vni} {mac1} {mac2} \
         192.168.200.50 192.168.200.51 1000",
        blaster.display()
    ));
    let blast_time = blast_start.elapsed();
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("blaster JSON");
    let sent = report["sent"].as_u64().unwrap_or(0);
    let expected: BTreeMap<String, u64> = report["expected"]
        .as_object()
        .expect("expected counts")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(sent, 10_000);
    assert_eq!(expected.values().sum::<u64>(), sent);

    let ping_out = ping.wait_with_output().expect("ping finished");
    let ping_text = String::from_utf8_lossy(&ping_out.stdout).into_owned();
    let (transmitted, received) = ping_counts(&ping_text);

    // Every datagram is counted (the workers may still be draining: wait for the total).
    wait_for("all bad datagrams counted", Duration::from_secs(10), || {
        let d = drop_deltas(&before, &cluster.agents[0].stats());
        (d.values().sum::<u64>() >= sent).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = cluster.agents[0].stats();
    let deltas = drop_deltas(&before, &after);
    let udp_after = udp_snmp(&h1);
    let udp_delta = |k: &str| udp_after[k] - udp_before[k];
    eprintln!(
        "sent {sent} bad datagrams in {blast_time:?}; expected {expected:?}; counted {deltas:?}; \
         h1 UDP InDatagrams +{} RcvbufErrors +{} InErrors +{}; ping {transmitted}/{received}; \
         blue rx_packets +{}",
        udp_delta("InDatagrams"),
        udp_delta("RcvbufErrors"),
        udp_delta("InErrors"),
        after["net.blue.rx_packets"] - rx_before,
    );
    assert_eq!(udp_delta("RcvbufErrors"), 0, "the kernel dropped none");
    assert_eq!(deltas, expected, "each datagram counted under its reason");

    // The ping lost nothing, and h1 delivered exactly the ping's packets to the network.
    assert_eq!((transmitted, received), (500, 500), "{ping_text}");
    assert!(ping_out.status.success(), "{ping_text}");
    assert!(
        after["net.blue.rx_packets"] - rx_before >= 500,
        "the echo replies came in"
    );

    // The agent is up and answers its API.
    assert!(cluster.agents[0].is_running(), "h1's agent survived");
    cluster.agents[0].vxnet(&["cluster", "members"]);
    assert!(
        cluster
            .ping(&c2, &cluster.ipv4_of(&c1, "eth0"), 2, "")
            .status
            .success()
    );
    eprintln!("total {:?}", started.elapsed());
}

/// A zero-length UDP payload is shorter than a VXLAN header too: it must be counted.
#[test]
fn empty_datagrams_are_counted() {
    if !require_root("empty_datagrams_are_counted") {
        return;
    }
    let Setup {
        cluster, attacker, ..
    } = setup("bie");
    let sender = cluster.dir().join("empty.py");
    std::fs::write(&sender, EMPTY_SENDER).expect("write sender");
    let h1 = cluster.host_ns(0).to_string();
    let before = cluster.agents[0].stats();
    let udp_before = udp_snmp(&h1)["InDatagrams"];
    sh(&format!(
        "ip netns exec {attacker} python3 {} 192.168.200.1 192.168.200.50 100",
        sender.display()
    ));
    wait_for("the kernel to take them", Duration::from_secs(5), || {
        (udp_snmp(&h1)["InDatagrams"] - udp_before >= 100).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let deltas = drop_deltas(&before, &cluster.agents[0].stats());
    assert_eq!(
        deltas.get("short_datagram").copied().unwrap_or(0),
        100,
        "100 empty datagrams: {deltas:?}"
    );
}
