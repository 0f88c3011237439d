//! Interop with the Linux kernel's VXLAN: host h1 runs vxnetd, host h2 runs no agent but a
//! kernel `vxlan` device on a bridge with a container behind it. The two containers ping and
//! stream TCP both ways over one VXLAN segment (VNI 4343, UDP 4789).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::*;

const VNI: u32 = 4343;
/// The kernel side's container: an address outside what vxnet allocates first, its own MAC.
const KERNEL_IP: &str = "10.36.0.200";
const KERNEL_MAC: &str = "02:42:0a:24:00:c8";

/// RX and TX byte counts of `dev` in namespace `ns` (packet counts would count GSO batches).
fn link_bytes(ns: &str, dev: &str) -> (u64, u64) {
    let s = link_stats64(ns, dev);
    (
        s["rx"]["bytes"].as_u64().unwrap_or(0),
        s["tx"]["bytes"].as_u64().unwrap_or(0),
    )
}

/// vxnet on h1 and a kernel VXLAN on h2 in one segment: ping, full-MTU DF ping and a 32 MiB TCP
/// stream each way, sha256 equal on both ends.
#[test]
fn kernel_vxlan_interop() {
    let started = Instant::now();
    let Some(mut cluster) = cluster_with(
        "kernel_vxlan_interop",
        "io",
        ClusterOptions {
            hosts: 2,
            start_agents: false,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    // Only h1 runs an agent (it bootstraps a one-host cluster).
    cluster.agents[0].restart();
    cluster.wait_api(0);
    let h1 = &cluster.agents[0];
    h1.vxnet(&[
        "network",
        "create",
        "--subnet",
        "10.36.0.0/24",
        "--vni",
        &VNI.to_string(),
        "blue",
    ]);
    let c1 = cluster.container();
    cluster.agents[0].vxnet(&["network", "connect", "blue", &c1]);
    let ip1 = cluster.ipv4_of(&c1, "eth0");
    let inspect: serde_json::Value =
        serde_json::from_str(&cluster.agents[0].vxnet(&["network", "inspect", "blue"]))
            .expect("inspect JSON");
    let mac1 = inspect[0]["Containers"][&c1]["MacAddress"]
        .as_str()
        .expect("c1's MAC")
        .to_string();

    // h2: the kernel's VXLAN device on a bridge, a container behind a veth; static FDB only.
    //
    // The underlay is a veth, not a wire: the kernel side's TCP segments leave with
    // CHECKSUM_PARTIAL (only the pseudo-header sum in the checksum field) and would cross into
    // h1 that way, where vxnet reads them from a UDP socket as plain bytes and c1 drops them
    // ("cksum incorrect"). A real NIC completes the checksum on transmit; `tx off` on h2's
    // underlay port makes the kernel do it in software at the same place, as on a wire.
    let h2 = cluster.host_ns(1).to_string();
    let c2 = cluster.container();
    sh(&format!("ip netns exec {h2} ethtool -K ul0 tx off"));
    sh(&format!(
        "ip -n {h2} link add vx0 type vxlan id {VNI} dstport 4789 local 192.168.200.2 nolearning \
         && ip -n {h2} link set vx0 mtu 1450 \
         && ip -n {h2} link add br0 type bridge \
         && ip -n {h2} link set vx0 master br0 \
         && ip -n {h2} link add kv0 mtu 1450 type veth peer name eth0 netns {c2} \
         && ip -n {h2} link set kv0 master br0 \
         && ip -n {h2} link set br0 up && ip -n {h2} link set vx0 up && ip -n {h2} link set kv0 up \
         && ip -n {c2} link set eth0 address {KERNEL_MAC} mtu 1450 \
         && ip -n {c2} addr add {KERNEL_IP}/24 dev eth0 && ip -n {c2} link set eth0 up \
         && bridge -n {h2} fdb append 00:00:00:00:00:00 dev vx0 dst 192.168.200.1 \
         && bridge -n {h2} fdb append {mac1} dev vx0 dst 192.168.200.1"
    ));
    // vxnet learns the kernel VTEP, its container's MAC and IP (answered by ARP suppression).
    cluster.agents[0].vxnet(&[
        "fdb",
        "add",
        "blue",
        "--vtep",
        "192.168.200.2",
        "--mac",
        KERNEL_MAC,
        "--ip",
        KERNEL_IP,
    ]);
    let fdb = cluster.agents[0].vxnet(&["fdb", "show", "blue"]);
    assert!(
        fdb.contains(&format!(
            "{KERNEL_MAC} dst 192.168.200.2 vni {VNI} ip {KERNEL_IP}"
        )),
        "{fdb}"
    );
    assert!(
        sh(&format!("ip -n {c1} -o link show eth0")).contains("mtu 1450"),
        "vxnet's side has the same MTU"
    );

    let before = cluster.agents[0].stats();
    let vx_before = link_bytes(&h2, "vx0");
    wait_for("ping vxnet → kernel", Duration::from_secs(15), || {
        cluster
            .ping(&c1, KERNEL_IP, 1, "")
            .status
            .success()
            .then_some(())
    });
    cluster.assert_ping(&c1, KERNEL_IP, 5, "");
    // The kernel side resolves c1 with a real ARP broadcast, flooded by vx0 to h1.
    sh(&format!("ip -n {c2} neigh flush all"));
    cluster.assert_ping(&c2, &ip1, 5, "");
    let neigh = sh(&format!("ip -n {c2} neigh show {ip1}"));
    assert!(neigh.contains(&mac1), "c2 learned c1's MAC by ARP: {neigh}");
    // Full-size packets with DF set fit both ways: 1450 − 28 = 1422 bytes of ICMP payload.
    cluster.assert_ping(&c1, KERNEL_IP, 3, "-M do -s 1422");
    cluster.assert_ping(&c2, &ip1, 3, "-M do -s 1422");

    let bytes = 32usize << 20;
    let t = Instant::now();
    let (sent, received) = cluster.tcp_transfer(&c1, &c2, KERNEL_IP, bytes);
    let to_kernel = t.elapsed();
    assert!(sent.starts_with(&bytes.to_string()), "sender: {sent}");
    assert_eq!(sent, received, "vxnet → kernel: bytes and sha256 match");
    let t = Instant::now();
    let (sent, received) = cluster.tcp_transfer(&c2, &c1, &ip1, bytes);
    let to_vxnet = t.elapsed();
    assert!(sent.starts_with(&bytes.to_string()), "sender: {sent}");
    assert_eq!(sent, received, "kernel → vxnet: bytes and sha256 match");

    let after = cluster.agents[0].stats();
    let vx_after = link_bytes(&h2, "vx0");
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let drops: BTreeMap<&String, u64> = after
        .keys()
        .filter(|k| k.starts_with("drop."))
        .map(|k| (k, delta(k)))
        .filter(|(_, d)| *d > 0)
        .collect();
    let (vx_rx, vx_tx) = (vx_after.0 - vx_before.0, vx_after.1 - vx_before.1);
    let (rx, tx) = (delta("net.blue.rx_bytes"), delta("net.blue.tx_bytes"));
    eprintln!(
        "vxnet rx {rx} B ({} frames) tx {tx} B ({} frames); kernel vx0 rx {vx_rx} B tx {vx_tx} B; \
         32 MiB vxnet→kernel in {to_kernel:?}, kernel→vxnet in {to_vxnet:?}; drops {drops:?}",
        delta("net.blue.rx_packets"),
        delta("net.blue.tx_packets"),
    );
    // Both streams crossed the kernel's VXLAN device and vxnet's router.
    let stream = bytes as u64;
    assert!(
        vx_rx > stream,
        "kernel VXLAN decapsulated the vxnet→kernel stream"
    );
    assert!(
        vx_tx > stream,
        "kernel VXLAN encapsulated the kernel→vxnet stream"
    );
    assert!(tx > stream, "vxnet encapsulated the vxnet→kernel stream");
    assert!(rx > stream, "vxnet decapsulated the kernel→vxnet stream");
    // Nothing the kernel sent was refused as malformed or spoofed.
    for reason in [
        "short_datagram",
        "bad_vxlan_flags",
        "unknown_vni",
        "non_member_vtep",
        "malformed_inner",
        "source_mismatch",
    ] {
        assert_eq!(
            delta(&format!("drop.{reason}")),
            0,
            "drop.{reason}: {drops:?}"
        );
    }
    eprintln!("total {:?}", started.elapsed());
}
