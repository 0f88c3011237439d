//! Fifty hosts on one switch. Agents join one after another and each becomes a member; a host
//! holds connections to the hosts it talks to (the leader, and voters during elections), not to
//! every other host; `cluster members` on any host shows every host and which are reachable; a
//! container connected on any host is pingable from another host; and the cluster survives
//! losing its leader, one more voter and two other agents at once: no committed write is lost,
//! the next write succeeds, and the leader swaps the dead voters for live learners.
//!
//! Figures are printed, not asserted (noisy machines): join times, connections per host, ping
//! delays after a connect, agents' total RSS. `VXNET_SCALE_VXNETD=PATH` runs another `vxnetd`
//! (an earlier release) through the same steps, to compare.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use vxnet_testkit::stats::nearest_rank;

use crate::support::{ClusterOptions, cluster_with, rss_kib, sh_output, wait_for};

#[test]
fn scale_50_hosts() {
    scale("scale_50_hosts", "sf", 50);
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// `(p50, p99, max)` of `v`, in ms.
fn summary(v: &[Duration]) -> (u128, u128, u128) {
    let mut sorted = v.to_vec();
    sorted.sort_unstable();
    let at = |p| nearest_rank(&sorted, p).map_or(0, ms);
    (at(50.0), at(99.0), at(100.0))
}

/// Established TCP connections on the peer port in namespace `ns`.
fn peer_connections(ns: &str) -> usize {
    let out = sh_output(&format!(
        "ip netns exec {ns} ss -Htn state established '( sport = :7946 or dport = :7946 )'"
    ));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn role_of(members: &[Value], name: &str) -> Option<String> {
    members
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["role"].as_str().map(str::to_string))
}

fn scale(test: &str, tag: &str, hosts: usize) {
    let options = ClusterOptions {
        hosts,
        start_agents: false,
        ..ClusterOptions::default()
    };
    let Some(mut cluster) = cluster_with(test, tag, options) else {
        return;
    };

    if let Ok(bin) = std::env::var("VXNET_SCALE_VXNETD") {
        for a in &mut cluster.agents {
            a.binary = Some(bin.clone().into());
        }
    }
    // Joins, one after another: from the agent's start until it is a Raft member.
    cluster.agents[0].start();
    cluster.wait_api(0);
    let mut joins = Vec::new();
    for i in 1..hosts {
        let started = Instant::now();
        cluster.agents[i].start();
        let name = cluster.agents[i].name.clone();
        wait_for(&format!("{name} to join"), Duration::from_secs(30), || {
            let role = role_of(&cluster.agents[i].members()?, &name)?;
            (role == "voter" || role == "learner").then_some(())
        });
        joins.push(started.elapsed());
    }
    let (p50, p99, max) = summary(&joins);
    eprintln!(
        "{test}: {} joins: p50 {p50} ms, p99 {p99} ms, max {max} ms",
        joins.len()
    );

    // Every host sees every host, five voters, one leader, all reachable: a host other than
    // the leader completes its own view with the leader's.
    let voters = 5.min(if hosts.is_multiple_of(2) {
        hosts - 1
    } else {
        hosts
    });
    let last = hosts - 1;
    wait_for(
        "a full view on the last host",
        Duration::from_secs(30),
        || {
            let members = cluster.agents[last].members()?;
            let ok = members.len() == hosts
                && members.iter().filter(|m| m["role"] == "voter").count() == voters
                && members.iter().filter(|m| m["leader"] == true).count() == 1
                && members.iter().all(|m| m["reachable"] == true);
            ok.then_some(())
        },
    );

    // Connections: a host talks to the leader (and voters during elections), so once idle
    // connections are closed a follower holds a handful, whatever the cluster's size.
    let leader = cluster.agents[last].leader_name().expect("a leader");
    let leader_i = cluster
        .agents
        .iter()
        .position(|a| a.name == leader)
        .expect("leader");
    let bound = 2 * (voters + 1);
    let counts = wait_for(
        "idle peer connections to close",
        Duration::from_secs(30),
        || {
            let counts: Vec<usize> = (0..hosts)
                .map(|i| peer_connections(cluster.host_ns(i)))
                .collect();
            let ok = counts
                .iter()
                .enumerate()
                .all(|(i, &c)| i == leader_i || c <= bound);
            ok.then_some(counts)
        },
    );
    let mut followers: Vec<usize> = counts
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != leader_i)
        .map(|(_, &c)| c)
        .collect();
    followers.sort_unstable();
    eprintln!(
        "{test}: peer connections: leader {leader} {}, followers median {} max {} (full mesh \
         would be {})",
        counts[leader_i],
        followers[followers.len() / 2],
        followers.last().copied().unwrap_or(0),
        2 * (hosts - 1)
    );

    // A connect on any host is pingable from another host: from the connect's answer to the
    // first ping answered. The probe lives on the last host, which survives the kills below.
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.77.0.0/24", "scale"]);
    let probe = cluster.container();
    cluster.agents[last].vxnet(&["network", "connect", "scale", &probe]);
    let spread: Vec<usize> = (0..last).step_by((hosts / 10).max(1)).collect();
    let mut delays = Vec::new();
    let mut endpoints = Vec::new();
    for &i in &spread {
        let c = cluster.container();
        cluster.agents[i].vxnet(&["network", "connect", "scale", &c]);
        let connected = Instant::now();
        let ip = cluster.ipv4_of(&c, "eth0");
        wait_for(
            &format!("ping from h1 to a container on h{}", i + 1),
            Duration::from_secs(20),
            || {
                let out = sh_output(&format!("ip netns exec {probe} ping -c 1 -W 0.2 -q {ip}"));
                out.status.success().then_some(())
            },
        );
        delays.push(connected.elapsed());
        endpoints.push((cluster.agents[i].name.clone(), ip));
    }
    let (p50, p99, max) = summary(&delays);
    eprintln!(
        "{test}: connect → first ping answered, {} hosts: p50 {p50} ms, p99 {p99} ms, max {max} ms",
        delays.len()
    );

    let rss: u64 = cluster
        .agents
        .iter()
        .filter_map(|a| a.pid().and_then(rss_kib))
        .sum();
    eprintln!(
        "{test}: agents' RSS: {} MiB in all, {} MiB per agent",
        rss / 1024,
        rss / 1024 / hosts as u64
    );

    // Kill the leader, one more voter and two other agents at once.
    let members = cluster.agents[last].members().expect("members");
    let voter_names: Vec<String> = members
        .iter()
        .filter(|m| m["role"] == "voter" && m["name"] != leader.as_str())
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    let others: Vec<String> = members
        .iter()
        .filter(|m| m["role"] == "learner")
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .filter(|n| n != &cluster.agents[last].name && n != "h1")
        .take(2)
        .collect();
    let mut dead: BTreeSet<String> = [leader.clone(), voter_names[0].clone()].into();
    dead.extend(others);
    dead.remove(&cluster.agents[last].name);
    let before = cluster.agents[last]
        .inspect("scale")
        .expect("inspect before");
    for agent in &mut cluster.agents {
        if dead.contains(&agent.name) {
            agent.kill();
        }
    }
    let killed_at = Instant::now();
    let survivor = &cluster.agents[last];
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || {
        survivor.leader_name().filter(|l| !dead.contains(l))
    });
    // Every committed write is still there: the network and all its endpoints.
    let after = survivor.inspect("scale").expect("inspect after");
    assert_eq!(after["Containers"], before["Containers"], "endpoints lost");
    // The next write succeeds.
    survivor.vxnet(&["network", "create", "--subnet", "10.78.0.0/24", "after"]);
    eprintln!(
        "{test}: killed {dead:?}; new leader {new_leader} and the next write committed after {} ms",
        ms(killed_at.elapsed())
    );

    // The leader swaps the dead voters for live learners: five live voters again.
    let replaced = wait_for("dead voters replaced", Duration::from_secs(60), || {
        let members = survivor.members()?;
        let live_voters = members
            .iter()
            .filter(|m| m["role"] == "voter" && m["reachable"] == true)
            .filter(|m| !dead.contains(m["name"].as_str().unwrap_or("")))
            .count();
        let dead_are_learners = members
            .iter()
            .filter(|m| dead.contains(m["name"].as_str().unwrap_or("")))
            .all(|m| m["role"] == "learner" && m["reachable"] == false);
        (live_voters == voters && dead_are_learners).then(|| killed_at.elapsed())
    });
    eprintln!(
        "{test}: {voters} live voters again {} ms after the kill",
        ms(replaced)
    );
    // Containers on surviving hosts still answer across hosts.
    let (host, ip) = endpoints
        .iter()
        .find(|(host, _)| !dead.contains(host))
        .expect("an endpoint on a surviving host");
    cluster.wait_ping(
        &format!("ping {host}'s container after the kills"),
        &probe,
        ip,
    );
}
