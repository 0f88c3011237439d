//! Agent restarts (kill -9, then the same command line, as systemd would) are invisible: a
//! restarted agent never answers a read with older state than it had before (no "network red not
//! found" while it replays its log), and its link reconciler leaves every bridge, host veth end
//! and container `eth0` in place (same ifindex), so containers keep their interfaces and
//! cross-host traffic works afterwards.
//!
//! Raft compacts only every 1000 entries, so the state after a restart comes from the last
//! snapshot plus a replay of the log; the networks changed between restarts put entries after
//! the snapshot.
//!
//! The tests of this file run one at a time (a lock): they measure the time to the first correct
//! answer, which two 3-agent clusters sharing the cores would distort.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The networks every test creates on h1: name and subnet.
const NETWORKS: [(&str, &str); 2] = [("red", "10.41.0.0/24"), ("blue", "10.42.0.0/24")];

/// How long a restarted agent is watched after its first correct answer (its reconciler's
/// chance to misbehave).
const GRACE: Duration = Duration::from_secs(3);

/// How often the restarted agents are polled.
const POLL: Duration = Duration::from_millis(20);

/// A container attached to one network.
#[derive(Debug, Clone)]
struct Container {
    ns: String,
    /// Index of its host's agent (0-based).
    host: usize,
    network: &'static str,
    ip: String,
}

impl Container {
    /// `cN`: the name without the test's prefix.
    fn short(&self) -> &str {
        self.ns.rsplit('-').next().unwrap_or(&self.ns)
    }
}

/// What every agent must answer: network name → (sandbox → endpoint id).
type Expected = BTreeMap<String, BTreeMap<String, String>>;

/// Link ifindexes: key (`h2/vxb-4096`, `h2/vxv0123456789ab`, `c3/eth0`) → (host index, ifindex).
type Links = BTreeMap<String, (usize, u32)>;

/// A cluster of three hosts with the two networks and their containers.
struct Fixture {
    cluster: Cluster,
    containers: Vec<Container>,
}

/// Totals over the restarts of one test.
#[derive(Debug, Default)]
struct Stats {
    restarts: usize,
    back_in_time: usize,
    not_ready: usize,
    churn: usize,
    ping_failures: usize,
    first_correct: Vec<Duration>,
}

impl Stats {
    /// `p50/max` of the times to the first correct answer, in ms.
    fn first_correct_ms(&self) -> String {
        let mut ms: Vec<u128> = self.first_correct.iter().map(Duration::as_millis).collect();
        ms.sort_unstable();
        match (ms.get(ms.len() / 2), ms.last()) {
            (Some(p50), Some(max)) => format!("{p50}/{max}"),
            _ => "-/-".into(),
        }
    }

    /// Prints the summary line, then asserts nothing went back in time, churned or failed.
    fn report(&self, what: &str, took: Duration) {
        eprintln!(
            "{what}, back-in-time reads {}, link churn {}, first correct answer p50/max {} ms \
             (not-ready answers {}, ping failures {}; total {took:?})",
            self.back_in_time,
            self.churn,
            self.first_correct_ms(),
            self.not_ready,
            self.ping_failures,
        );
        assert_eq!(self.back_in_time, 0, "reads went back in time: {self:?}");
        assert_eq!(self.churn, 0, "links changed across restarts: {self:?}");
        assert_eq!(
            self.ping_failures, 0,
            "pings failed after restarts: {self:?}"
        );
    }
}

/// One answer of a restarted agent.
enum Read {
    /// Both networks with every endpoint known before the restart.
    Correct,
    /// An answer older than the state before the restart (something missing, or "not found").
    BackInTime(String),
    /// No answer yet (connection refused, "starting", ...).
    NotReady(String),
}

/// A failed CLI call: "not found" denies what existed before the restart; anything else is an
/// agent not ready yet.
fn failed_read(what: &str, out: &Output) -> Read {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = if stderr.trim().is_empty() {
        output_text(out).trim().to_string()
    } else {
        stderr.trim().to_string()
    };
    let text: String = text.replace('\n', " | ").chars().take(200).collect();
    if text.contains("not found") {
        Read::BackInTime(format!("{what}: {text}"))
    } else {
        Read::NotReady(format!("{what}: {text}"))
    }
}

/// `network inspect red blue` and `network ls` on `agent`, judged against `expected`.
fn read_once(agent: &Agent, expected: &Expected) -> Read {
    let mut args = vec!["network", "inspect"];
    args.extend(expected.keys().map(String::as_str));
    let out = agent.cli(&args);
    if !out.status.success() {
        return failed_read("inspect", &out);
    }
    let list: Vec<Value> = match serde_json::from_slice(&out.stdout) {
        Ok(list) => list,
        Err(e) => return Read::BackInTime(format!("inspect: unparsable answer ({e})")),
    };
    for (network, endpoints) in expected {
        let Some(found) = list.iter().find(|n| n["Name"] == network.as_str()) else {
            return Read::BackInTime(format!("inspect: network {network} missing"));
        };
        for (sandbox, id) in endpoints {
            if found["Containers"][sandbox]["EndpointID"] != id.as_str() {
                return Read::BackInTime(format!("inspect: {network} lacks {sandbox}'s endpoint"));
            }
        }
    }
    let out = agent.cli(&["network", "ls", "--format", "json"]);
    if !out.status.success() {
        return failed_read("ls", &out);
    }
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["Name"].as_str().map(str::to_string))
        .collect();
    for network in expected.keys() {
        if !names.contains(network) {
            return Read::BackInTime(format!("ls: network {network} missing"));
        }
    }
    Read::Correct
}

/// Every endpoint of the test's networks as `agent` lists them, or `None` if the call failed.
fn endpoints_seen(agent: &Agent) -> Option<Expected> {
    let mut args = vec!["network", "inspect"];
    args.extend(NETWORKS.iter().map(|(name, _)| *name));
    let out = agent.cli(&args);
    if !out.status.success() {
        return None;
    }
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    let mut seen = Expected::new();
    for net in &list {
        let name = net["Name"].as_str()?.to_string();
        let endpoints = net["Containers"]
            .as_object()?
            .iter()
            .map(|(sandbox, e)| {
                (
                    sandbox.clone(),
                    e["EndpointID"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        seen.insert(name, endpoints);
    }
    Some(seen)
}

/// `(ifindex, name)` of each line of `ip -o link show` (`name` without `@peer`).
fn parse_links(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|line| {
            let index = line.split(':').next()?.trim().parse().ok()?;
            let name = line.split(": ").nth(1)?;
            Some((index, name.split('@').next().unwrap_or(name).to_string()))
        })
        .collect()
}

/// Ifindexes of the bridges and host veth ends on `hosts` and of their containers' `eth0`.
fn sample_links(cluster: &Cluster, containers: &[Container], hosts: &[usize]) -> Links {
    let mut links = Links::new();
    for &h in hosts {
        let out = sh_output(&format!("ip -n {} -o link show", cluster.host_ns(h)));
        for (index, name) in parse_links(&String::from_utf8_lossy(&out.stdout)) {
            if name.starts_with("vxb-") || name.starts_with("vxv") {
                links.insert(format!("h{}/{name}", h + 1), (h, index));
            }
        }
    }
    for c in containers.iter().filter(|c| hosts.contains(&c.host)) {
        let out = sh_output(&format!("ip -n {} -o link show dev eth0", c.ns));
        if let Some((index, _)) = parse_links(&String::from_utf8_lossy(&out.stdout)).first() {
            links.insert(format!("{}/eth0", c.short()), (c.host, *index));
        }
    }
    links
}

/// Records in `churn` every link of `baseline` on `hosts` that is missing from `now` or has
/// another ifindex there (the first change seen per link).
fn diff_links(
    baseline: &Links,
    now: &Links,
    hosts: &[usize],
    churn: &mut BTreeMap<String, String>,
) {
    for (key, (host, index)) in baseline {
        if !hosts.contains(host) {
            continue;
        }
        let change = match now.get(key) {
            Some((_, now_index)) if now_index == index => continue,
            Some((_, now_index)) => format!("{index}→{now_index}"),
            None => format!("{index}→missing"),
        };
        churn.entry(key.clone()).or_insert(change);
    }
}

/// Waits until every agent names the same leader.
fn wait_leader(cluster: &Cluster) -> String {
    wait_for(
        "a leader every agent agrees on",
        Duration::from_secs(30),
        || {
            let seen: BTreeSet<Option<String>> =
                cluster.agents.iter().map(Agent::leader_name).collect();
            match seen.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(leader)] => Some(leader.clone()),
                _ => None,
            }
        },
    )
}

/// One ping (2 echoes) from every container to the first container of its network on the next
/// host, all at once; returns the failed ones.
fn ping_all(containers: &[Container], hosts: usize) -> Vec<String> {
    let pings: Vec<_> = containers
        .iter()
        .filter_map(|from| {
            let next = (from.host + 1) % hosts;
            let to = containers
                .iter()
                .find(|c| c.network == from.network && c.host == next)?;
            let child = Command::new("ip")
                .args(["netns", "exec", &from.ns, "ping", "-n", "-q", "-c", "2"])
                .args(["-i", "0.2", "-W", "2", &to.ip])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ping");
            Some((
                format!("{} → {} ({})", from.short(), to.short(), to.ip),
                child,
            ))
        })
        .collect();
    pings
        .into_iter()
        .filter_map(|(what, child)| {
            let out = child.wait_with_output().expect("ping finished");
            let text = String::from_utf8_lossy(&out.stdout);
            (!(out.status.success() && text.contains("2 received"))).then_some(what)
        })
        .collect()
}

/// Waits up to 30 s until [`ping_all`] passes; panics naming the pings that still fail.
fn wait_pings(containers: &[Container], hosts: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = ping_all(containers, hosts);
        if failed.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for {what}; failing: {failed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Fixture {
    /// Three hosts; `red` and `blue` created on h1; on every host one container per network.
    fn new(tag: &str) -> Fixture {
        let cluster = Cluster::new(
            tag,
            ClusterOptions {
                hosts: 3,
                ..ClusterOptions::default()
            },
        );
        wait_leader(&cluster);
        for (name, subnet) in NETWORKS {
            cluster.agents[0].vxnet(&["network", "create", "--subnet", subnet, name]);
        }
        let mut fixture = Fixture {
            cluster,
            containers: Vec::new(),
        };
        for host in 0..3 {
            for (network, _) in NETWORKS {
                fixture.connect(host, network);
            }
        }
        fixture
    }

    /// A new container on `host`, connected to `network` through that host's agent.
    fn connect(&mut self, host: usize, network: &'static str) -> Container {
        wait_leader(&self.cluster);
        let ns = self.cluster.container();
        self.cluster.agents[host].vxnet(&["network", "connect", network, &ns]);
        let ip = self.cluster.ipv4_of(&ns, "eth0");
        let container = Container {
            ns,
            host,
            network,
            ip,
        };
        self.containers.push(container.clone());
        container
    }

    /// Waits until every agent lists every container's endpoint, every host has its bridges and
    /// host veth ends, and every ping passes; returns what the agents list and the links.
    fn settle(&self) -> (Expected, Links) {
        let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for c in &self.containers {
            want.entry(c.network.to_string())
                .or_default()
                .insert(c.ns.clone());
        }
        let mut agreed: Option<Expected> = None;
        for agent in &self.cluster.agents {
            let seen = wait_for(
                &format!("{} to list every endpoint", agent.name),
                Duration::from_secs(30),
                || {
                    let seen = endpoints_seen(agent)?;
                    let keys: BTreeMap<String, BTreeSet<String>> = seen
                        .iter()
                        .map(|(n, e)| (n.clone(), e.keys().cloned().collect()))
                        .collect();
                    (keys == want).then_some(seen)
                },
            );
            if let Some(first) = &agreed {
                assert_eq!(&seen, first, "{} lists the same endpoints", agent.name);
            }
            agreed = Some(seen);
        }
        let all: Vec<usize> = (0..self.cluster.agents.len()).collect();
        let links = wait_for(
            "bridges and host veth ends on every host",
            Duration::from_secs(30),
            || {
                let links = sample_links(&self.cluster, &self.containers, &all);
                let complete = all.iter().all(|&h| {
                    let local: Vec<&Container> =
                        self.containers.iter().filter(|c| c.host == h).collect();
                    let networks: BTreeSet<&str> = local.iter().map(|c| c.network).collect();
                    let prefix = format!("h{}/", h + 1);
                    let count = |kind: &str| {
                        links
                            .keys()
                            .filter(|k| {
                                k.strip_prefix(&prefix)
                                    .is_some_and(|name| name.starts_with(kind))
                            })
                            .count()
                    };
                    count("vxb-") == networks.len()
                        && count("vxv") == local.len()
                        && local
                            .iter()
                            .all(|c| links.contains_key(&format!("{}/eth0", c.short())))
                });
                complete.then_some(links)
            },
        );
        wait_pings(
            &self.containers,
            self.cluster.agents.len(),
            "every ping to pass",
        );
        (agreed.expect("three agents"), links)
    }

    /// Restarts the agents `which` (all killed first, then all started), polls their API every
    /// 20 ms until each has answered correctly and [`GRACE`] has passed, watching their hosts'
    /// links meanwhile; then checks all links and the pings. Adds the figures to `stats`.
    fn restart_and_watch(&mut self, which: &[usize], label: &str, stats: &mut Stats) {
        let (expected, baseline) = self.settle();
        let agents = &mut self.cluster.agents;
        let pids_before: Vec<Option<u32>> = which.iter().map(|&i| agents[i].pid()).collect();
        for &i in which {
            agents[i].kill();
        }
        let mut spawned = Vec::new();
        for &i in which {
            agents[i].restart();
            spawned.push(Instant::now());
        }
        let mut pids = Vec::new();
        for (k, &i) in which.iter().enumerate() {
            let pid = agents[i].pid();
            assert!(
                pid.is_some() && pid != pids_before[k] && agents[i].is_running(),
                "{label}: {} restarted (pid {:?} → {pid:?})",
                agents[i].name,
                pids_before[k]
            );
            pids.push(format!(
                "{} pid {}→{}",
                agents[i].name,
                pids_before[k].unwrap_or(0),
                pid.unwrap_or(0)
            ));
        }

        let mut first: Vec<Option<Duration>> = vec![None; which.len()];
        let mut back_in_time = 0;
        let mut not_ready = 0;
        let mut examples: Vec<String> = Vec::new();
        let mut last_not_ready = vec![String::new(); which.len()];
        let mut churn: BTreeMap<String, String> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tick = Instant::now();
            for (k, &i) in which.iter().enumerate() {
                match read_once(&self.cluster.agents[i], &expected) {
                    Read::Correct => {
                        first[k].get_or_insert_with(|| spawned[k].elapsed());
                    }
                    Read::BackInTime(what) => {
                        back_in_time += 1;
                        let what = format!("{}: {what}", self.cluster.agents[i].name);
                        if examples.len() < 3 && !examples.contains(&what) {
                            examples.push(what);
                        }
                    }
                    Read::NotReady(what) => {
                        not_ready += 1;
                        last_not_ready[k] = what;
                    }
                }
            }
            let now = sample_links(&self.cluster, &self.containers, which);
            diff_links(&baseline, &now, which, &mut churn);
            let answered: Option<Vec<Instant>> = first
                .iter()
                .zip(&spawned)
                .map(|(d, s)| d.map(|d| *s + d))
                .collect();
            if let Some(at) = answered.and_then(|a| a.into_iter().max()) {
                if at.elapsed() >= GRACE {
                    break;
                }
            } else if Instant::now() > deadline {
                let logs: Vec<String> = which
                    .iter()
                    .map(|&i| {
                        let agent = &self.cluster.agents[i];
                        format!("--- {} ---\n{}", agent.name, agent.log_tail(30))
                    })
                    .collect();
                panic!(
                    "{label}: no correct answer within 30 s; last not-ready answers {last_not_ready:?}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(POLL.saturating_sub(tick.elapsed()));
        }

        // The reconcilers had their chance: every link on every host is the one from before.
        let all: Vec<usize> = (0..self.cluster.agents.len()).collect();
        let now = sample_links(&self.cluster, &self.containers, &all);
        diff_links(&baseline, &now, &all, &mut churn);
        for &i in which {
            let agent = &mut self.cluster.agents[i];
            assert!(
                agent.is_running(),
                "{label}: {} still runs\n{}",
                agent.name,
                agent.log_tail(30)
            );
        }
        if which.len() > 1 {
            wait_leader(&self.cluster);
        }
        let failed = ping_all(&self.containers, self.cluster.agents.len());
        if !failed.is_empty() {
            eprintln!("{label}: pings failed: {failed:?}");
            stats.ping_failures += failed.len();
            wait_pings(
                &self.containers,
                self.cluster.agents.len(),
                "pings to recover",
            );
        }

        let first_ms: Vec<String> = first
            .iter()
            .map(|d| d.map_or("-".into(), |d| d.as_millis().to_string()))
            .collect();
        eprintln!(
            "{label}: {}; first correct answer after {} ms; back-in-time reads {back_in_time} {examples:?}; \
             not-ready answers {not_ready}; link churn {} {churn:?}",
            pids.join(", "),
            first_ms.join("/"),
            churn.len(),
        );
        stats.restarts += which.len();
        stats.back_in_time += back_in_time;
        stats.not_ready += not_ready;
        stats.churn += churn.len();
        stats.first_correct.extend(first.into_iter().flatten());
    }
}

/// Ten restarts of one agent at a time (h2, h3 and h1, the bootstrap host, in turn), with
/// endpoints added between restarts (one on h1, one on the restarted h2): no read goes back in
/// time, no link changes, every ping passes afterwards.
#[test]
fn restart_one_agent_ten_times() {
    if !require_root("restart_one_agent_ten_times") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let mut fixture = Fixture::new("ro");
    let mut stats = Stats::default();
    let order = [1, 2, 0, 1, 2, 1, 0, 2, 1, 2];
    for (round, &host) in order.iter().enumerate() {
        match round {
            // A change only the log holds (no snapshot before 1000 entries), on another host...
            5 => {
                fixture.connect(0, "red");
            }
            // ...and one with a local endpoint on the host about to restart.
            8 => {
                fixture.connect(1, "blue");
            }
            _ => {}
        }
        fixture.restart_and_watch(&[host], &format!("restart {}", round + 1), &mut stats);
    }
    stats.report(
        &format!("restart one: {} restarts", stats.restarts),
        started.elapsed(),
    );
}

/// Three times: kill -9 all three agents, then start them all again (a host-wide power cut),
/// with an endpoint added between rounds: no read goes back in time on any agent, no link
/// changes, every ping passes once a leader is elected.
#[test]
fn restart_all_agents_together_three_times() {
    if !require_root("restart_all_agents_together_three_times") {
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let mut fixture = Fixture::new("ra");
    let mut stats = Stats::default();
    for round in 0..3 {
        if round == 1 {
            fixture.connect(2, "red");
        }
        fixture.restart_and_watch(&[0, 1, 2], &format!("round {}", round + 1), &mut stats);
    }
    stats.report(
        &format!("restart all: 3 rounds ({} agent restarts)", stats.restarts),
        started.elapsed(),
    );
}

/// While an agent cannot be ready (here: its join target does not answer), its API says so:
/// "starting", with what it is doing, and `stats` shows `agent.ready 0`; it never answers from
/// state it does not have.
#[test]
fn a_starting_agent_says_so() {
    if !require_root("a_starting_agent_says_so") {
        return;
    }
    let _serial = serial();
    let mut cluster = Cluster::new(
        "rs",
        ClusterOptions {
            hosts: 2,
            start_agents: false,
            ..ClusterOptions::default()
        },
    );
    // h2 joins through h1, which is not running: it stays in its join loop.
    cluster.agents[1].start();
    let answer = wait_for("a starting answer", Duration::from_secs(10), || {
        let out = cluster.agents[1].cli(&["network", "ls"]);
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        text.contains("starting").then_some(text)
    });
    assert!(
        answer.contains("vxnetd is starting (joining the cluster through 192.168.200.1:7946)"),
        "{answer}"
    );
    let stats = cluster.agents[1].vxnet(&["stats", "--format", "json"]);
    let stats: Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(stats["agent.ready"], 0, "{stats}");
    // Once the cluster is there, the same agent becomes ready.
    cluster.agents[0].start();
    cluster.wait_api(0);
    cluster.wait_api(1);
    let stats = cluster.agents[1].vxnet(&["stats", "--format", "json"]);
    let stats: Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(stats["agent.ready"], 1, "{stats}");
}
