//! Rolling upgrade: a cluster of the previous release (`VXNET_PREV_VXNETD`, a path to its
//! `vxnetd`) with one host on this build keeps working, then each old host is restarted on this
//! build from its own data dir: state, links and connectivity survive, and writes go through
//! old and new hosts alike. `.ci/run` builds the previous release from git history and sets the
//! variable; without it the test says so and passes.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

fn ifindex(ns: &str) -> String {
    sh(&format!("ip -n {ns} -o link show dev eth0"))
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn previous_release_cluster_upgrades_host_by_host() {
    if !require_root("previous_release_cluster_upgrades_host_by_host") {
        return;
    }
    let Some(prev) = std::env::var_os("VXNET_PREV_VXNETD").map(PathBuf::from) else {
        eprintln!("skipped: set VXNET_PREV_VXNETD to the previous release's vxnetd");
        return;
    };
    assert!(prev.exists(), "{} does not exist", prev.display());
    let mut cluster = Cluster::new(
        "up",
        ClusterOptions {
            hosts: 3,
            start_agents: false,
            ..ClusterOptions::default()
        },
    );
    // h1 and h2 run the previous release, h3 this build.
    cluster.agents[0].binary = Some(prev.clone());
    cluster.agents[1].binary = Some(prev.clone());
    cluster.start_agents();

    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.46.0.0/24", "up"]);
    let mut containers = Vec::new();
    for i in 0..3 {
        let c = cluster.container();
        cluster.agents[i].vxnet(&["network", "connect", "up", &c]);
        containers.push(c);
    }
    let ips: Vec<String> = containers
        .iter()
        .map(|c| cluster.ipv4_of(c, "eth0"))
        .collect();
    let check_all_pings = |cluster: &Cluster, what: &str| {
        for (i, from) in containers.iter().enumerate() {
            let to = &ips[(i + 1) % ips.len()];
            wait_for(
                &format!("{what}: {from} → {to}"),
                Duration::from_secs(20),
                || cluster.ping(from, to, 1, "").status.success().then_some(()),
            );
        }
    };
    check_all_pings(&cluster, "mixed cluster");
    // A write through the new host and one through an old host.
    cluster.agents[2].vxnet(&["network", "create", "from-new"]);
    cluster.agents[1].vxnet(&["network", "create", "from-old"]);

    for (step, host) in [0usize, 1].into_iter().enumerate() {
        let before: Vec<String> = containers.iter().map(|c| ifindex(c)).collect();
        let inspect_before = cluster.agents[host].vxnet(&["network", "inspect", "up"]);
        cluster.agents[host].kill();
        cluster.agents[host].binary = None;
        cluster.agents[host].start();
        cluster.wait_api(host);
        let inspect_after = cluster.agents[host].vxnet(&["network", "inspect", "up"]);
        assert_eq!(
            inspect_after,
            inspect_before,
            "h{} shows the same network after its upgrade",
            host + 1
        );
        cluster.wait_members(3);
        check_all_pings(&cluster, &format!("after upgrading h{}", host + 1));
        let after: Vec<String> = containers.iter().map(|c| ifindex(c)).collect();
        assert_eq!(before, after, "container interfaces survive the upgrade");
        let name = format!("after-upgrade-{step}");
        cluster.agents[host].vxnet(&["network", "create", &name]);
        wait_for("the write everywhere", Duration::from_secs(20), || {
            cluster
                .agents
                .iter()
                .all(|a| a.vxnet(&["network", "ls"]).contains(&name))
                .then_some(())
        });
    }
    eprintln!("upgrade: previous release → this build, host by host: state, links, pings kept");
}
