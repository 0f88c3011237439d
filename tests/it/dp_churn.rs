//! Endpoint churn: connecting and disconnecting a container 50 times leaves no link, address or
//! forwarding entry behind, and an IP address that moves to another host is reachable there at
//! once (no stale entry anywhere).

use std::time::{Duration, Instant};

use crate::support::*;

/// Links of namespace `ns` whose names start with `prefix`.
fn links_with_prefix(cluster: &Cluster, ns: &str, prefix: &str) -> Vec<String> {
    cluster
        .links(ns)
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// The `vxnet fdb show` lines of `agent`.
fn fdb_lines(agent: &Agent) -> Vec<String> {
    agent
        .vxnet(&["fdb", "show"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `network inspect`'s endpoint entry of `sandbox` in network `net`, if any.
fn endpoint(agent: &Agent, net: &str, sandbox: &str) -> Option<serde_json::Value> {
    let out = agent.vxnet(&["network", "inspect", net]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    let e = &v[0]["Containers"][sandbox];
    (!e.is_null()).then(|| e.clone())
}

/// 50 × connect/disconnect of one container on h1, with a ping to h2 every 10 rounds; then no
/// leaked link, address or forwarding entry. Then an IP moves from h1 to h2 and h3 reaches it
/// with its first ping.
#[test]
fn churn_leaves_nothing_behind_and_moved_ip_is_reachable() {
    let started = Instant::now();
    let Some(mut cluster) = cluster_for(
        "churn_leaves_nothing_behind_and_moved_ip_is_reachable",
        "ch",
        3,
    ) else {
        return;
    };
    cluster.agents[0].vxnet(&[
        "network",
        "create",
        "--subnet",
        "10.33.0.0/24",
        "--vni",
        "4133",
        "blue",
    ]);
    let peer = cluster.container();
    cluster.agents[1].vxnet(&["network", "connect", "blue", &peer]);
    let peer_ip = cluster.ipv4_of(&peer, "eth0");
    let (h1, h2) = (
        cluster.host_ns(0).to_string(),
        cluster.host_ns(1).to_string(),
    );
    let baseline_h1 = cluster.links(&h1).len();
    assert!(links_with_prefix(&cluster, &h1, "vx").is_empty());

    let c = cluster.container();
    let mut macs = std::collections::BTreeSet::new();
    let mut ips = std::collections::BTreeSet::new();
    let loop_start = Instant::now();
    let rounds = 50;
    for round in 0..rounds {
        cluster.agents[0].vxnet(&["network", "connect", "blue", &c]);
        let ep = endpoint(&cluster.agents[0], "blue", &c).expect("endpoint after connect");
        macs.insert(ep["MacAddress"].as_str().unwrap_or_default().to_string());
        let ip = cluster.ipv4_of(&c, "eth0");
        ips.insert(ip.clone());
        let veths = links_with_prefix(&cluster, &h1, "vxv");
        assert_eq!(veths.len(), 1, "round {round}: one host veth: {veths:?}");
        if round % 10 == 0 {
            wait_for(
                &format!("round {round}: ping h1 → h2"),
                Duration::from_secs(10),
                || {
                    cluster
                        .ping(&c, &peer_ip, 1, "")
                        .status
                        .success()
                        .then_some(())
                },
            );
        }
        cluster.agents[0].vxnet(&["network", "disconnect", "blue", &c]);
        // The disconnect answers after this host reconciled: the veth is already gone.
        let veths = links_with_prefix(&cluster, &h1, "vxv");
        assert!(veths.is_empty(), "round {round}: veth left: {veths:?}");
    }
    let per_round = loop_start.elapsed() / rounds;
    eprintln!(
        "{rounds} connect/disconnect rounds in {:?} ({per_round:?} each); MACs used {macs:?}, IPs {ips:?}",
        loop_start.elapsed()
    );

    // No link left on h1: no veth, and bridge and TAP gone with the last local endpoint.
    let leftovers = links_with_prefix(&cluster, &h1, "vx");
    assert!(leftovers.is_empty(), "links left on h1: {leftovers:?}");
    assert_eq!(
        cluster.links(&h1).len(),
        baseline_h1,
        "{:?}",
        cluster.links(&h1)
    );
    // No interface or address left in the container.
    let inside = cluster.links(&c);
    assert_eq!(
        inside,
        vec!["lo".to_string()],
        "container links: {inside:?}"
    );
    let addrs = sh(&format!("ip -n {c} -4 -o addr show"));
    assert!(
        addrs.lines().all(|l| l.contains(" lo ")),
        "addresses: {addrs}"
    );
    assert!(endpoint(&cluster.agents[0], "blue", &c).is_none());
    // No forwarding entry for it on the other hosts, and h1 no longer in h2's flood list.
    wait_for("h2's FIB to forget h1", Duration::from_secs(5), || {
        let fdb = fdb_lines(&cluster.agents[1]);
        fdb.iter()
            .all(|l| !l.contains("dst 192.168.200.1 "))
            .then_some(())
    });
    let fdb = fdb_lines(&cluster.agents[1]);
    for mac in &macs {
        assert!(
            fdb.iter().all(|l| !l.starts_with(mac.as_str())),
            "stale entry for {mac} on h2: {fdb:?}"
        );
    }
    for ip in &ips {
        assert!(
            fdb.iter().all(|l| !l.contains(&format!(" ip {ip} "))),
            "stale neighbour {ip} on h2: {fdb:?}"
        );
    }
    // h3 never had an endpoint: it never made a link.
    assert!(links_with_prefix(&cluster, cluster.host_ns(2), "vx").is_empty());

    // An address moves: a on h1 with 10.33.0.50, reached from h3 (ARP cache warm), then a leaves
    // and b takes 10.33.0.50 on h2. h3's first ping must reach b (same MAC: derived from the IP).
    let moved = "10.33.0.50";
    let a = cluster.container();
    let b = cluster.container();
    let c3 = cluster.container();
    let keep = cluster.container();
    // h1 keeps serving the network after a leaves (so its own FIB must drop a's MAC too).
    cluster.agents[0].vxnet(&["network", "connect", "blue", &keep]);
    cluster.agents[0].vxnet(&["network", "connect", "--ip", moved, "blue", &a]);
    cluster.agents[2].vxnet(&["network", "connect", "blue", &c3]);
    wait_for("ping h3 → a on h1", Duration::from_secs(10), || {
        cluster
            .ping(&c3, moved, 1, "")
            .status
            .success()
            .then_some(())
    });
    // h2's kernel bridge learns a's MAC behind its TAP (the remote side) from the replies.
    assert!(cluster.ping(&peer, moved, 1, "").status.success());
    let mac_a = endpoint(&cluster.agents[0], "blue", &a).expect("a")["MacAddress"].clone();
    let learned = sh(&format!("bridge -n {h2} fdb show br vxb-4133"));
    let stale = learned
        .lines()
        .find(|l| l.starts_with(mac_a.as_str().unwrap_or("?")))
        .unwrap_or_default();
    assert!(
        stale.contains("dev vxt-4133"),
        "h2's bridge learned a's MAC behind its TAP: {learned}"
    );
    let neigh = sh(&format!("ip -n {c3} neigh show {moved}"));
    assert!(
        neigh.contains(mac_a.as_str().unwrap_or("?")),
        "h3's container has a's MAC cached: {neigh}"
    );

    // b sends nothing by itself (no IPv6 chatter when its eth0 comes up): only the agent can
    // make h2's bridge forget the stale entry.
    sh(&format!(
        "ip netns exec {b} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"
    ));
    cluster.agents[0].vxnet(&["network", "disconnect", "blue", &a]);
    cluster.agents[1].vxnet(&["network", "connect", "--ip", moved, "blue", &b]);
    let moved_at = Instant::now();
    assert_eq!(cluster.ipv4_of(&b, "eth0"), moved);
    let mac_b = endpoint(&cluster.agents[1], "blue", &b).expect("b")["MacAddress"].clone();
    assert_eq!(mac_a, mac_b, "the MAC follows the IP");
    // The very first ping, right after the connect returned: one echo, 2 s to answer.
    let first = cluster.exec(&c3, &format!("ping -n -c 1 -W 2 {moved}"));
    let first_rtt = moved_at.elapsed();
    assert!(
        first.status.success(),
        "first ping to the moved IP failed: {}",
        String::from_utf8_lossy(&first.stdout)
    );
    eprintln!("first ping to the moved IP answered after {first_rtt:?}");
    let fdb3 = fdb_lines(&cluster.agents[2]);
    let mac_b = mac_b.as_str().unwrap_or("?");
    let entry: Vec<&String> = fdb3.iter().filter(|l| l.starts_with(mac_b)).collect();
    assert_eq!(
        entry.len(),
        1,
        "one entry for the moved MAC on h3: {fdb3:?}"
    );
    assert!(
        entry[0].contains("dst 192.168.200.2 "),
        "behind h2 now: {entry:?}"
    );
    let fdb1 = fdb_lines(&cluster.agents[0]);
    let entry: Vec<&String> = fdb1.iter().filter(|l| l.starts_with(mac_b)).collect();
    assert_eq!(entry.len(), 1, "h1's entry for the moved MAC: {fdb1:?}");
    assert!(entry[0].contains("dst 192.168.200.2 "), "{entry:?}");
    assert!(cluster.ping(&c3, moved, 3, "").status.success());
    eprintln!("total {:?}", started.elapsed());
}
