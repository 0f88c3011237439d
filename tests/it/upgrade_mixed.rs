//! Rolling upgrade: a cluster of the previous release (`VXNET_PREV_VXNETD`, a path to its
//! `vxnetd`) with one host on this build keeps working, then each old host is restarted on this
//! build from its own data dir: state, links and connectivity survive, and writes go through
//! old and new hosts alike. Once every host runs this build, the cluster gets its CA and every
//! host its certificate: peers then speak mutual TLS only, and an agent of the previous release
//! is refused and changes nothing. `.ci/run` builds the previous release from git history and
//! sets the variable; without it the test says so and passes.

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
            hosts: 4,
            start_agents: false,
            ..ClusterOptions::default()
        },
    );
    // h1 and h2 run the previous release, h3 this build; h4 comes last, on the previous release.
    cluster.agents[0].binary = Some(prev.clone());
    cluster.agents[1].binary = Some(prev.clone());
    cluster.agents[3].binary = Some(prev.clone());
    for i in 0..3 {
        cluster.agents[i].start();
        cluster.wait_api(i);
    }
    wait_for("3 members everywhere", Duration::from_secs(30), || {
        (0..3)
            .all(|i| {
                cluster.agents[i]
                    .vxnet(&["cluster", "members"])
                    .lines()
                    .count()
                    == 4
            })
            .then_some(())
    });

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
        wait_for("3 members everywhere", Duration::from_secs(30), || {
            (0..3)
                .all(|i| cluster.agents[i].members().is_some_and(|m| m.len() == 3))
                .then_some(())
        });
        check_all_pings(&cluster, &format!("after upgrading h{}", host + 1));
        let after: Vec<String> = containers.iter().map(|c| ifindex(c)).collect();
        assert_eq!(before, after, "container interfaces survive the upgrade");
        let name = format!("after-upgrade-{step}");
        cluster.agents[host].vxnet(&["network", "create", &name]);
        wait_for("the write everywhere", Duration::from_secs(20), || {
            cluster.agents[..3]
                .iter()
                .all(|a| a.vxnet(&["network", "ls"]).contains(&name))
                .then_some(())
        });
    }
    // Every host runs this build: the leader creates the CA, every host signs its certificate
    // and records its key pin, and the shared-secret protocol is no longer accepted.
    let t = std::time::Instant::now();
    wait_for("TLS on every member", Duration::from_secs(30), || {
        cluster.agents[0]
            .members()
            .filter(|m| m.len() == 3 && m.iter().all(|m| m["tls"] == true))
            .map(|_| ())
    });
    let switched = t.elapsed();
    for (i, name) in [(1usize, "after-tls-1"), (2, "after-tls-2")] {
        cluster.agents[i].vxnet(&["network", "create", name]);
    }
    wait_for(
        "writes everywhere over TLS",
        Duration::from_secs(20),
        || {
            cluster.agents[..3]
                .iter()
                .all(|a| a.vxnet(&["network", "ls"]).contains("after-tls-2"))
                .then_some(())
        },
    );
    check_all_pings(&cluster, "over TLS");
    let members = cluster.agents[0].vxnet(&["cluster", "members", "--format", "json"]);
    let legacy_before: u64 = (0..3)
        .map(|i| {
            cluster.agents[i]
                .counter("transport.legacy_accepted")
                .unwrap_or(0)
        })
        .sum();
    // The previous release, started as a 4th host, is refused and changes nothing.
    cluster.agents[3].start();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        cluster.agents[0].vxnet(&["cluster", "members", "--format", "json"]),
        members,
        "a previous-release agent changed the membership"
    );
    let legacy_after: u64 = (0..3)
        .map(|i| {
            cluster.agents[i]
                .counter("transport.legacy_accepted")
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        legacy_after, legacy_before,
        "a shared-secret connection was accepted"
    );
    let refused = (0..3).any(|i| {
        cluster.agents[i]
            .log_tail(200)
            .contains("previous vxnet release")
    });
    assert!(refused, "a member logs why it refuses the previous release");
    cluster.agents[3].kill();
    eprintln!(
        "upgrade: previous release → this build, host by host: state, links, pings kept; \
         TLS everywhere {switched:?} after the last upgrade; the previous release refused"
    );
}
