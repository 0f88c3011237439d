//! The Raft control plane end to end: three real agents in network namespaces —
//! bootstrap and two joins, promotion to three voters, replication and read-your-writes, leader
//! failover and catch-up after a restart, 300 concurrent endpoint creations, and a minority that
//! refuses writes but keeps serving reads.
//!
//! The tests of this file run one at a time (a lock): they measure failover and commit times,
//! which several 3-agent clusters sharing two cores would distort.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn three_hosts() -> ClusterOptions {
    ClusterOptions {
        hosts: 3,
        ..ClusterOptions::default()
    }
}

/// Index (0-based, `hN` → N−1) of the leader `agent` knows of.
fn leader_seen_by(agent: &Agent) -> Option<usize> {
    agent
        .members()?
        .iter()
        .find(|m| m["leader"] == Value::Bool(true))
        .and_then(|m| m["name"].as_str()?.strip_prefix('h')?.parse::<usize>().ok())
        .map(|n| n - 1)
}

/// Roles by host name as `agent` reports them.
fn roles(agent: &Agent) -> Option<BTreeMap<String, String>> {
    Some(
        agent
            .members()?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("?").to_string(),
                    m["role"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect(),
    )
}

/// Network names `agent` lists (`network ls --format json`, one object per line).
fn network_names(agent: &Agent) -> BTreeSet<String> {
    agent
        .vxnet(&["network", "ls", "--format", "json"])
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("network ls json line");
            v["Name"].as_str().expect("Name").to_string()
        })
        .collect()
}

/// Waits until all `agents` see the network `name`, with the same id and subnet.
fn wait_network_everywhere(agents: &[&Agent], name: &str, timeout: Duration) -> Value {
    let first = wait_for(
        &format!("{} to see {name}", agents[0].name),
        timeout,
        || agents[0].inspect(name),
    );
    for agent in &agents[1..] {
        let seen = wait_for(&format!("{} to see {name}", agent.name), timeout, || {
            agent.inspect(name)
        });
        assert_eq!(seen["Id"], first["Id"], "{name}: same id on every host");
        assert_eq!(
            seen["IPAM"], first["IPAM"],
            "{name}: same IPAM on every host"
        );
    }
    first
}

/// Bootstrap + two joins → three voters; networks replicate; a write on a follower is readable
/// there at once; kill -9 of the leader → a new leader serves writes within seconds; the old
/// leader restarts with the same command line (--bootstrap ignored: its data dir wins) and
/// catches up.
#[test]
fn three_agents_elect_replicate_and_fail_over() {
    if !require_root("three_agents_elect_replicate_and_fail_over") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = Cluster::new("cc", three_hosts());
    let formed = started.elapsed();

    // Roles converge to voter×3, seen alike from every host, with one leader they agree on.
    let want: BTreeMap<String, String> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| (h.to_string(), "voter".to_string()))
        .collect();
    let promote = Instant::now();
    for agent in &cluster.agents {
        wait_for(
            &format!("{} to report voter×3", agent.name),
            Duration::from_secs(10),
            || (roles(agent)? == want).then_some(()),
        );
    }
    let promoted = promote.elapsed();
    let leader = wait_for("one agreed leader", Duration::from_secs(5), || {
        let seen: BTreeSet<Option<usize>> = cluster.agents.iter().map(leader_seen_by).collect();
        match seen.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(l)] => Some(*l),
            _ => None,
        }
    });
    let members_h2 = cluster.agents[1].members().expect("members");
    assert_eq!(members_h2.len(), 3, "{members_h2:?}");
    assert!(
        members_h2
            .iter()
            .all(|m| m["reachable"] == Value::Bool(true)),
        "{members_h2:?}"
    );

    // Networks created on h1 show up on h2 and h3 with the same id and IPAM.
    let (h1, h2, h3) = (&cluster.agents[0], &cluster.agents[1], &cluster.agents[2]);
    h1.vxnet(&["network", "create", "--subnet", "10.41.0.0/24", "red"]);
    h1.vxnet(&["network", "create", "green"]);
    let red = wait_network_everywhere(&[h1, h2, h3], "red", Duration::from_secs(5));
    assert_eq!(red["IPAM"]["Config"][0]["Subnet"], "10.41.0.0/24");
    wait_network_everywhere(&[h1, h2, h3], "green", Duration::from_secs(5));

    // Read-your-writes: a write answered by h3 is visible on h3 as soon as the command returns,
    // and on the leader too (it applied the entry before answering the forward).
    let t = Instant::now();
    let id = h3.vxnet(&["network", "create", "blue"]);
    let write_via_h3 = t.elapsed();
    let on_h3 = h3.inspect("blue").expect("h3 sees its own write at once");
    assert_eq!(on_h3["Id"].as_str(), Some(id.trim()));
    let on_leader = cluster.agents[leader]
        .inspect("blue")
        .expect("the leader has applied it");
    assert_eq!(on_leader["Id"], on_h3["Id"]);
    wait_network_everywhere(&[h1, h2, h3], "blue", Duration::from_secs(5));
    for agent in &cluster.agents {
        assert_eq!(
            network_names(agent),
            ["blue", "green", "red"].map(String::from).into(),
            "{}",
            agent.name
        );
    }

    // kill -9 the leader; a survivor must commit a write within 10 s of the kill.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.agents[leader].kill();
    let killed = Instant::now();
    let writer = &cluster.agents[survivors[0]];
    let mut attempts = 0;
    loop {
        attempts += 1;
        let out = writer.cli(&["network", "create", "yellow"]);
        // A retry after a timeout may find its first attempt committed after all.
        if out.status.success() || stderr(&out).contains("already exists") {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no write accepted within 10 s of killing the leader: {}\n{}",
            stderr(&out),
            writer.log_tail(30)
        );
    }
    let failover = killed.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let new_leader = leader_seen_by(writer).expect("a new leader");
    assert!(
        survivors.contains(&new_leader),
        "new leader h{}",
        new_leader + 1
    );
    writer
        .inspect("yellow")
        .expect("the writer reads its write");
    let other = &cluster.agents[survivors[1]];
    wait_for(
        "the other survivor to see yellow",
        Duration::from_secs(5),
        || other.inspect("yellow"),
    );

    // The old leader comes back with the very same command line (it has --bootstrap if it was
    // h1): its data dir wins, it rejoins as a follower and catches up.
    let restart = Instant::now();
    cluster.agents[leader].restart();
    cluster.wait_api(leader);
    let old = &cluster.agents[leader];
    wait_for(
        &format!("{} to catch up (yellow)", old.name),
        Duration::from_secs(15),
        || old.inspect("yellow"),
    );
    let caught_up = restart.elapsed();
    assert_eq!(
        network_names(old),
        ["blue", "green", "red", "yellow"].map(String::from).into()
    );
    assert_eq!(
        leader_seen_by(old),
        Some(new_leader),
        "the restarted agent follows the new leader"
    );
    let log = std::fs::read_to_string(&old.log).unwrap_or_default();
    assert!(
        !log.contains("bootstrapping a new cluster"),
        "a restart must never bootstrap again:\n{log}"
    );
    // It serves writes again (forwarded to the new leader) and everybody converges.
    old.vxnet(&["network", "create", "purple"]);
    old.inspect("purple")
        .expect("read-your-writes on the restarted agent");
    for agent in &cluster.agents {
        wait_for(
            &format!("{} to report voter×3 after the restart", agent.name),
            Duration::from_secs(10),
            || (roles(agent)? == want).then_some(()),
        );
        wait_for(
            &format!("{} to see purple", agent.name),
            Duration::from_secs(5),
            || agent.inspect("purple"),
        );
    }
    let ls: Vec<String> = cluster
        .agents
        .iter()
        .map(|a| a.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]))
        .collect();
    assert!(ls.iter().all(|l| *l == ls[0]), "identical lists: {ls:#?}");

    eprintln!(
        "cp_cluster: formed in {formed:?}, voter×3 after {promoted:?} more; write via h3 {write_via_h3:?}; \
         leader h{} killed → write accepted on h{} after {failover:?} ({attempts} attempt(s)), new leader h{}; \
         restarted agent caught up in {caught_up:?}; total {:?}",
        leader + 1,
        survivors[0] + 1,
        new_leader + 1,
        started.elapsed()
    );
}

/// 300 endpoints created concurrently from three hosts (100 containers each, one CLI thread
/// per host) get 300 distinct addresses, and every host ends up with the same endpoint table.
#[test]
fn three_hundred_concurrent_endpoints_agree_everywhere() {
    if !require_root("three_hundred_concurrent_endpoints_agree_everywhere") {
        return;
    }
    const PER_HOST: usize = 100;
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = Cluster::new("ce", three_hosts());
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.42.0.0/22", "big"]);
    {
        let agents: Vec<&Agent> = cluster.agents.iter().collect();
        wait_network_everywhere(&agents, "big", Duration::from_secs(5));
    }
    let t = Instant::now();
    let containers: Vec<Vec<String>> = (0..3)
        .map(|_| (0..PER_HOST).map(|_| cluster.container()).collect())
        .collect();
    let made_netns = t.elapsed();

    let t = Instant::now();
    let latencies: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = cluster
            .agents
            .iter()
            .zip(&containers)
            .map(|(agent, mine)| {
                s.spawn(move || {
                    mine.iter()
                        .map(|c| {
                            let t = Instant::now();
                            agent.vxnet(&["network", "connect", "big", c]);
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connect thread"))
            .collect()
    });
    let connect_all = t.elapsed();
    let mut all: Vec<Duration> = latencies.into_iter().flatten().collect();
    all.sort();
    let pct = |p: usize| all[(all.len() * p / 100).min(all.len() - 1)];

    // Every host converges to the same 300 endpoints.
    let t = Instant::now();
    let tables: Vec<Value> = cluster
        .agents
        .iter()
        .map(|agent| {
            wait_for(
                &format!("{} to list 300 endpoints", agent.name),
                Duration::from_secs(20),
                || {
                    let net = agent.inspect("big")?;
                    let eps = net["Containers"].as_object()?.len();
                    (eps == 3 * PER_HOST).then(|| net["Containers"].clone())
                },
            )
        })
        .collect();
    let converged = t.elapsed();
    assert_eq!(tables[0], tables[1], "h1 and h2 agree");
    assert_eq!(tables[0], tables[2], "h1 and h3 agree");
    let eps = tables[0].as_object().expect("Containers object");
    let ips: BTreeSet<&str> = eps
        .values()
        .map(|e| e["IPv4Address"].as_str().expect("IPv4Address"))
        .collect();
    assert_eq!(ips.len(), 3 * PER_HOST, "300 distinct addresses");
    assert!(
        ips.iter()
            .all(|ip| ip.starts_with("10.42.") && ip.ends_with("/22"))
    );
    let macs: BTreeSet<&str> = eps
        .values()
        .map(|e| e["MacAddress"].as_str().expect("MacAddress"))
        .collect();
    assert_eq!(macs.len(), 3 * PER_HOST, "300 distinct MACs");
    for (i, mine) in containers.iter().enumerate() {
        let host = format!("h{}", i + 1);
        for c in mine {
            assert_eq!(
                eps[c]["Host"],
                Value::String(host.clone()),
                "{c} is on {host}"
            );
        }
    }
    // The interfaces were made with the allocated addresses (a sample per host).
    for mine in &containers {
        for c in mine.iter().step_by(25) {
            let want = eps[c]["IPv4Address"].as_str().expect("ip");
            let want = want.split('/').next().expect("addr");
            assert_eq!(cluster.ipv4_of(c, "eth0"), want, "{c}");
        }
    }
    eprintln!(
        "cp_cluster: {} containers in {made_netns:?}; 300 connects from 3 threads in {connect_all:?} \
         ({:.0}/s): p50 {:?}, p99 {:?}, max {:?}; all hosts identical after {converged:?} more; total {:?}",
        3 * PER_HOST,
        300.0 / connect_all.as_secs_f64(),
        pct(50),
        pct(99),
        all[all.len() - 1],
        started.elapsed()
    );
}

/// Two of three agents die: the survivor refuses writes with an error naming the quorum (after
/// its timeout), keeps answering reads, and the cluster heals when the two come back.
#[test]
fn minority_refuses_writes_but_serves_reads() {
    if !require_root("minority_refuses_writes_but_serves_reads") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = Cluster::new("cm", three_hosts());
    // Three voters first: with one voter and two learners the bootstrap host alone is a quorum.
    for agent in &cluster.agents {
        wait_for(
            &format!("{} to report voter×3", agent.name),
            Duration::from_secs(10),
            || roles(agent)?.values().all(|r| r == "voter").then_some(()),
        );
    }
    cluster.agents[1].vxnet(&["network", "create", "--subnet", "10.43.0.0/24", "before"]);
    {
        let agents: Vec<&Agent> = cluster.agents.iter().collect();
        wait_network_everywhere(&agents, "before", Duration::from_secs(5));
    }
    let before_ls = cluster.agents[0].vxnet(&["network", "ls", "--format", "json", "--no-trunc"]);

    // Keep the leader alive and kill both followers: the survivor is a leader without quorum
    // (check_quorum makes it step down); the harder case for refusing writes.
    let leader = leader_seen_by(&cluster.agents[0]).expect("leader");
    let dead: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &dead {
        cluster.agents[i].kill();
    }
    let survivor = &cluster.agents[leader];
    let t = Instant::now();
    let out = survivor.cli(&["network", "create", "during"]);
    let refused_after = t.elapsed();
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a write without quorum must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("quorum"), "the error names the quorum: {err}");
    assert!(
        refused_after < Duration::from_secs(30),
        "refused after {refused_after:?}"
    );
    // Reads keep working from the local state.
    let t = Instant::now();
    let during_ls = survivor.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]);
    let read_latency = t.elapsed();
    assert_eq!(during_ls, before_ls, "reads serve the last applied state");
    assert!(
        read_latency < Duration::from_secs(2),
        "read took {read_latency:?}"
    );
    survivor
        .inspect("before")
        .expect("inspect works in a minority");
    let m = survivor.members().expect("members works in a minority");
    assert_eq!(m.len(), 3);
    for &i in &dead {
        let name = format!("h{}", i + 1);
        let entry = m.iter().find(|e| e["name"] == Value::String(name.clone()));
        assert_eq!(
            entry.map(|e| &e["reachable"]),
            Some(&Value::Bool(false)),
            "{name} is shown unreachable: {m:?}"
        );
    }

    // The two come back: writes work again, on every host.
    for &i in &dead {
        cluster.agents[i].restart();
    }
    for &i in &dead {
        cluster.wait_api(i);
    }
    let survivor = &cluster.agents[leader];
    let t = Instant::now();
    wait_for("a write after healing", Duration::from_secs(20), || {
        let out = survivor.cli(&["network", "create", "after"]);
        (out.status.success() || stderr(&out).contains("already exists")).then_some(())
    });
    let healed = t.elapsed();
    let agents: Vec<&Agent> = cluster.agents.iter().collect();
    wait_network_everywhere(&agents, "after", Duration::from_secs(10));
    // The refused write may still commit later (its entry reached the old leader's log): if it
    // did, every host shows it alike. Either way the lists agree.
    std::thread::sleep(Duration::from_millis(500));
    let lists: Vec<BTreeSet<String>> = agents.iter().map(|a| network_names(a)).collect();
    assert!(lists.iter().all(|l| *l == lists[0]), "{lists:?}");
    let committed_later = lists[0].contains("during");

    // The other minority: kill the leader and one follower; the survivor is a follower whose
    // forwards go nowhere. Same answer: a quorum error after the timeout, reads still served.
    for agent in &cluster.agents {
        wait_for(
            &format!("{} to report voter×3 again", agent.name),
            Duration::from_secs(10),
            || roles(agent)?.values().all(|r| r == "voter").then_some(()),
        );
    }
    let leader = leader_seen_by(&cluster.agents[0]).expect("leader");
    let survivor = (leader + 1) % 3;
    let before_ls =
        cluster.agents[survivor].vxnet(&["network", "ls", "--format", "json", "--no-trunc"]);
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.agents[i].kill();
    }
    let survivor = &cluster.agents[survivor];
    let t = Instant::now();
    let out = survivor.cli(&["network", "create", "during2"]);
    let refused2_after = t.elapsed();
    let err2 = stderr(&out);
    assert!(!out.status.success(), "a write without quorum must fail");
    assert!(
        err2.contains("quorum"),
        "the error names the quorum: {err2}"
    );
    assert!(
        refused2_after < Duration::from_secs(30),
        "refused after {refused2_after:?}"
    );
    assert_eq!(
        survivor.vxnet(&["network", "ls", "--format", "json", "--no-trunc"]),
        before_ls,
        "a follower in a minority serves reads"
    );
    eprintln!(
        "cp_cluster: minority (leader alone) write refused after {refused_after:?} ({}), read in {read_latency:?}; \
         healed (write ok) {healed:?} after the restarts; refused write later committed: {committed_later}; \
         minority (follower alone) write refused after {refused2_after:?}; total {:?}",
        err.trim(),
        started.elapsed()
    );
}
