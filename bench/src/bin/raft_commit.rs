//! raft_commit: commit latency and write throughput of vxnet's Raft control plane, on three real
//! agents in network namespaces (the topology of the netns tests: a switch namespace, three host
//! namespaces on it with underlay 192.168.200.N/24; h1 bootstraps, h2 and h3 join).
//!
//! ```sh
//! cargo build --release --workspace && sudo target/release/raft_commit
//! sudo target/release/raft_commit --writes 500 --threads 8 --out bench/results
//! ```
//!
//! Root is needed (namespaces). `vxnetd` is taken from `--vxnetd PATH`, else `$VXNETD`, else next
//! to this binary. Every write is one API call on the agent's Unix socket (4-byte length +
//! prost, as the CLI does, without the process spawn): `network create` / `network rm` pairs,
//! each call answered once the entry is committed and applied on the answering agent.
//!
//! Phases: N sequential writes through the leader, N through a follower (forwarded to the
//! leader, then read-your-writes on the follower), then T client threads spread over the three
//! agents for writes/s. Prints a table (p50, p99, max, writes/s) and writes the same as JSON to
//! `<out>/raft_commit.json` (or `--json PATH`). Everything it made (agents, namespaces, files)
//! is removed on exit, on Ctrl-C/SIGTERM and on panic; the agents also die with it if it is
//! killed (PR_SET_PDEATHSIG).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use vxnet::api;
use vxnet_proto::{
    ApiRequest, CreateNetwork, Empty, MemberList, NamesRequest, api_request::Kind as Req,
    api_response::Kind as Resp,
};
use vxnet_testkit::agent::{AgentCmd, agent_args};
use vxnet_testkit::cleanup::{CleanupGuard, install_signal_handlers, register_dir};
use vxnet_testkit::netns::{Proc, build_underlay, log_tail, prefix, wait_for};
use vxnet_testkit::stats::nearest_rank;

const HOSTS: usize = 3;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// raft_commit: Raft commit latency and write throughput on three vxnet agents (needs root)
#[derive(Parser, Debug)]
#[command(name = "raft_commit", args_override_self = true)]
struct Cli {
    /// Sequential writes per phase (at least 2)
    #[arg(long, value_name = "N", default_value_t = 500)]
    writes: usize,
    /// Client threads of the concurrent phase
    #[arg(long, value_name = "T", default_value_t = 8)]
    threads: usize,
    /// Writes of the concurrent phase [default: 2 × --writes]
    #[arg(long, value_name = "M")]
    concurrent_writes: Option<usize>,
    /// Where raft_commit.json goes
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
    /// Write the JSON to this file instead of <DIR>/raft_commit.json
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Agent binary [default: next to this binary]
    #[arg(long, value_name = "PATH", env = "VXNETD")]
    vxnetd: Option<PathBuf>,
}

struct Opts {
    writes: usize,
    threads: usize,
    concurrent_writes: usize,
    json: PathBuf,
    vxnetd: PathBuf,
}

fn parse_opts() -> Result<Opts> {
    let cli = Cli::parse();
    let vxnetd = match cli.vxnetd {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no directory around this binary")?
            .join("vxnetd"),
    };
    if !vxnetd.is_file() {
        bail!(
            "no vxnetd at {} (build it: cargo build --release --workspace; or pass --vxnetd)",
            vxnetd.display()
        );
    }
    Ok(Opts {
        writes: cli.writes.max(2),
        threads: cli.threads.max(1),
        concurrent_writes: cli.concurrent_writes.unwrap_or(2 * cli.writes),
        json: cli.json.unwrap_or_else(|| cli.out.join("raft_commit.json")),
        vxnetd,
    })
}

struct Host {
    name: String,
    api: PathBuf,
    /// The agent, killed when the host is dropped.
    _agent: Proc,
}

/// Where the agents keep their data, sockets and logs.
fn work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("vxnet-raft-commit-{}", std::process::id()))
}

/// Builds the switch and host namespaces and starts one agent per host.
fn build_cluster(vxnetd: &Path) -> Result<Vec<Host>> {
    let dir = work_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    register_dir(dir.clone());
    let netns = build_underlay(&prefix("brc"), HOSTS, 1500)?;
    let mut hosts: Vec<Host> = Vec::new();
    for (i, ns) in netns.iter().enumerate() {
        let name = format!("h{}", i + 1);
        let api = dir.join(format!("{name}.sock"));
        // Agents are spawned from the main thread, which lives until exit: they die with us.
        let agent = AgentCmd {
            vxnetd,
            netns: ns,
            args: &agent_args(i + 1, &name, &dir.join(&name), &api),
            log: &dir.join(format!("{name}.log")),
            default_log_level: "warn",
            die_with_parent: true,
        }
        .spawn()
        .context("spawning vxnetd")?;
        hosts.push(Host {
            name,
            api,
            _agent: agent,
        });
        if i == 0 {
            wait_for("h1's API", Duration::from_secs(30), || {
                members(&hosts[0].api).ok()
            })?;
        }
    }
    Ok(hosts)
}

fn call(socket: &Path, kind: Req) -> Result<Resp> {
    let response = api::call(socket, &ApiRequest { kind: Some(kind) }, CALL_TIMEOUT)?;
    match response.kind {
        Some(Resp::Error(e)) => bail!("{}", e.message),
        Some(kind) => Ok(kind),
        None => bail!("empty response"),
    }
}

fn members(socket: &Path) -> Result<MemberList> {
    match call(socket, Req::ClusterMembers(Empty {}))? {
        Resp::Members(list) => Ok(list),
        other => bail!("unexpected response {other:?}"),
    }
}

/// Index of the leader, once every agent reports three voters and the same leader.
fn wait_for_voters(hosts: &[Host]) -> Result<usize> {
    wait_for(
        "three voters and one leader",
        Duration::from_secs(60),
        || {
            let mut seen = Vec::new();
            for host in hosts {
                let list = members(&host.api).ok()?;
                if list.members.len() != HOSTS || list.members.iter().any(|m| m.role != "voter") {
                    return None;
                }
                let name = list
                    .members
                    .iter()
                    .filter_map(|m| m.host.as_ref())
                    .find(|h| h.node_id == list.leader_id)
                    .map(|h| h.name.clone());
                seen.push(name);
            }
            match seen.first() {
                Some(Some(name)) if seen.iter().all(|s| s.as_ref() == Some(name)) => {
                    Some(hosts.iter().position(|h| &h.name == name).unwrap_or(0))
                }
                _ => None,
            }
        },
    )
}

/// One write: `network create NAME` or `network rm NAME`.
fn write(socket: &Path, name: &str, create: bool) -> Result<Duration> {
    let kind = if create {
        Req::NetworkCreate(CreateNetwork {
            name: name.to_string(),
            ..CreateNetwork::default()
        })
    } else {
        Req::NetworkRemove(NamesRequest {
            names: vec![name.to_string()],
        })
    };
    let t = Instant::now();
    match call(socket, kind)? {
        Resp::Applied(_) => Ok(t.elapsed()),
        other => bail!("unexpected response {other:?}"),
    }
}

/// `count` writes (create/rm pairs of one network name) through `socket`, one at a time.
fn sequential(socket: &Path, tag: &str, count: usize) -> Result<Vec<Duration>> {
    let name = format!("bench-{tag}");
    (0..count)
        .map(|i| write(socket, &name, i % 2 == 0))
        .collect()
}

struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Phase {
    /// The `p`-th percentile (0..=100) of the latencies.
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        nearest_rank(&sorted, p).unwrap_or_default()
    }

    fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }

    fn writes_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn json(&self) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let mean = self.latencies.iter().sum::<Duration>() / self.latencies.len().max(1) as u32;
        json!({
            "writes": self.latencies.len(),
            "p50_ms": ms(self.percentile(50.0)),
            "p99_ms": ms(self.percentile(99.0)),
            "max_ms": ms(self.max()),
            "mean_ms": ms(mean),
            "wall_s": self.wall.as_secs_f64(),
            "writes_per_s": (self.writes_per_s() * 10.0).round() / 10.0,
        })
    }
}

fn run(opts: &Opts) -> Result<Value> {
    let started = Instant::now();
    let hosts = build_cluster(&opts.vxnetd)?;
    let leader = wait_for_voters(&hosts)?;
    let follower = (leader + 1) % HOSTS;
    eprintln!(
        "raft_commit: cluster of {HOSTS} up in {:?}; leader {}, measuring through follower {}",
        started.elapsed(),
        hosts[leader].name,
        hosts[follower].name
    );
    sequential(&hosts[leader].api, "warmup-l", 20)?;
    sequential(&hosts[follower].api, "warmup-f", 20)?;

    let mut phases = Vec::new();
    for (name, host, tag) in [
        ("leader, sequential", leader, "l"),
        ("follower, sequential", follower, "f"),
    ] {
        let t = Instant::now();
        let latencies = sequential(&hosts[host].api, tag, opts.writes)?;
        phases.push(Phase {
            name,
            latencies,
            wall: t.elapsed(),
        });
    }

    // T client threads over the three agents, each with its own network name.
    let per_thread = opts.concurrent_writes.div_ceil(opts.threads);
    let t = Instant::now();
    let results: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.threads)
            .map(|k| {
                let api = &hosts[k % HOSTS].api;
                s.spawn(move || sequential(api, &format!("c{k}"), per_thread))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let wall = t.elapsed();
    let mut latencies = Vec::new();
    for r in results {
        latencies.extend(r?);
    }
    phases.push(Phase {
        name: "concurrent, all agents",
        latencies,
        wall,
    });

    let leader_after = wait_for_voters(&hosts)?;
    if leader_after != leader {
        eprintln!(
            "raft_commit: warning: leadership moved during the run ({} → {})",
            hosts[leader].name, hosts[leader_after].name
        );
    }

    println!(
        "{:<24} {:>7} {:>8} {:>8} {:>8} {:>9}",
        "phase", "writes", "p50 ms", "p99 ms", "max ms", "writes/s"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for p in &phases {
        println!(
            "{:<24} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>9.1}",
            p.name,
            p.latencies.len(),
            ms(p.percentile(50.0)),
            ms(p.percentile(99.0)),
            ms(p.max()),
            p.writes_per_s()
        );
    }
    Ok(json!({
        "benchmark": "raft_commit",
        "nodes": HOSTS,
        "write": "API call network create/rm, answered once applied on the answering agent",
        "leader": hosts[leader].name,
        "follower": hosts[follower].name,
        "threads": opts.threads,
        "data_dir": std::env::temp_dir(),
        "phases": {
            "leader_sequential": phases[0].json(),
            "follower_sequential": phases[1].json(),
            "concurrent": phases[2].json(),
        },
        "total_s": started.elapsed().as_secs_f64(),
    }))
}

fn main() {
    if let Err(e) = install_signal_handlers(|sig| {
        eprintln!("raft_commit: signal {sig}: cleaning up");
        128 + sig
    }) {
        eprintln!("raft_commit: {e:#}");
        std::process::exit(2);
    }
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("raft_commit: {e:#}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("raft_commit: needs root (network namespaces)");
        std::process::exit(2);
    }
    let guard = CleanupGuard;
    let result = run(&opts);
    if result.is_err() && work_dir().is_dir() {
        for i in 1..=HOSTS {
            let log = work_dir().join(format!("h{i}.log"));
            eprintln!("--- h{i} log tail ---\n{}", log_tail(&log, 20));
        }
    }
    drop(guard);
    match result.and_then(|report| {
        let text = serde_json::to_string_pretty(&report)?;
        if let Some(dir) = opts.json.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(&opts.json, text + "\n")
            .with_context(|| format!("writing {}", opts.json.display()))?;
        eprintln!("raft_commit: wrote {}", opts.json.display());
        Ok(())
    }) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("raft_commit: {e:#}");
            std::process::exit(1);
        }
    }
}
