//! The host data plane end to end: real agents in network namespaces, containers pinging and
//! streaming across the userspace VXLAN overlay.

use std::time::Duration;

use crate::support::*;

/// Two hosts, one network, one container each: ping both ways, a 64 MiB TCP transfer whose
/// sha256 matches on both ends, and a full-MTU ping with DF set.
#[test]
fn two_hosts_ping_and_stream() {
    if !require_root("two_hosts_ping_and_stream") {
        return;
    }
    let mut cluster = Cluster::new("ps", ClusterOptions::default());
    let h1 = &cluster.agents[0];
    let id = h1.vxnet(&["network", "create", "--subnet", "10.30.0.0/24", "blue"]);
    assert_eq!(id.trim().len(), 64, "network create prints the id: {id}");
    let c1 = cluster.container();
    let c2 = cluster.container();
    cluster.agents[0].vxnet(&["network", "connect", "blue", &c1]);
    cluster.agents[1].vxnet(&["network", "connect", "blue", &c2]);
    let ip1 = cluster.ipv4_of(&c1, "eth0");
    let ip2 = cluster.ipv4_of(&c2, "eth0");
    assert_ne!(ip1, ip2);
    let link = sh(&format!("ip -n {c1} -o link show eth0"));
    assert!(
        link.contains("mtu 1450"),
        "overlay MTU is underlay − 50: {link}"
    );

    // Wait until the other host has applied the endpoint, then ping both ways.
    cluster.wait_ping("ping c1 → c2", &c1, &ip2);
    let out = cluster.ping(&c1, &ip2, 5, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cluster.ping(&c2, &ip1, 5, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A full-MTU packet with DF set: 1450 − 20 (IP) − 8 (ICMP) = 1422 bytes of payload.
    let out = cluster.ping(&c1, &ip2, 3, "-M do -s 1422");
    assert!(
        out.status.success(),
        "full-MTU DF ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let (sent, received) = cluster.tcp_transfer(&c1, &c2, &ip2, 64 << 20);
    assert!(
        sent.starts_with(&(64usize << 20).to_string()),
        "sender: {sent}"
    );
    assert_eq!(
        sent, received,
        "the bytes and their sha256 match on both ends"
    );
}

/// kill -9 of an agent with local containers, then a restart with the same command line: its
/// TAP (which dies with the process) is recreated and re-attached, bridges and veths are reused,
/// nothing is duplicated, and traffic resumes.
#[test]
fn agent_restart_reconciles_links_and_traffic_resumes() {
    if !require_root("agent_restart_reconciles_links_and_traffic_resumes") {
        return;
    }
    let mut cluster = Cluster::new("ov", ClusterOptions::default());
    let Pair { c1, ip2, .. } = cluster.pair_on_network("r", "10.34.0.0/24");
    let h1 = cluster.host_ns(0).to_string();
    let vx_links = |cluster: &Cluster| -> Vec<String> {
        let mut links: Vec<String> = cluster
            .links(&h1)
            .into_iter()
            .filter(|l| l.starts_with("vx"))
            .collect();
        links.sort();
        links
    };
    let before = vx_links(&cluster);
    assert_eq!(before.len(), 3, "bridge, TAP and one host veth: {before:?}");

    cluster.agents[0].kill();
    // The TAP belongs to the process: it is gone; the bridge and the veth stay.
    wait_for("TAP to vanish", Duration::from_secs(5), || {
        (vx_links(&cluster).len() == 2).then_some(())
    });
    cluster.agents[0].restart();
    cluster.wait_api(0);
    wait_for("traffic to resume", Duration::from_secs(30), || {
        cluster
            .ping(&c1, &ip2, 1, "")
            .status
            .success()
            .then_some(())
    });
    assert_eq!(
        vx_links(&cluster),
        before,
        "same links, none duplicated or lost"
    );
    let c1_links: Vec<String> = cluster
        .links(&c1)
        .into_iter()
        .filter(|l| l != "lo")
        .collect();
    assert_eq!(
        c1_links,
        ["eth0"],
        "the container still has exactly one interface"
    );
    let out = cluster.ping(&c1, &ip2, 5, "-i 0.05");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
