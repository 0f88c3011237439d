//! raft_commit: commit latency and write throughput of vxnet's Raft control plane, on three real
//! agents in network namespaces (the topology of the netns tests: a switch namespace, three host
//! namespaces on it with underlay 192.168.200.N/24; h1 bootstraps, h2 and h3 join).
//!
//! ```sh
//! cargo build --release --workspace && sudo target/release/raft_commit
//! sudo target/release/raft_commit --writes 500 --threads 8 --json raft_commit.json
//! ```
//!
//! Root is needed (namespaces). `vxnetd` is taken from `--vxnetd PATH`, else `$VXNETD`, else next
//! to this binary. Every write is one API call on the agent's Unix socket (4-byte length +
//! prost, as the CLI does, without the process spawn): `network create` / `network rm` pairs,
//! each call answered once the entry is committed and applied on the answering agent.
//!
//! Phases: N sequential writes through the leader, N through a follower (forwarded to the
//! leader, then read-your-writes on the follower), then T client threads spread over the three
//! agents for writes/s. Prints a table (p50, p99, max, writes/s) and writes the same as JSON.
//! Everything it made (agents, namespaces, files) is removed on exit, on Ctrl-C/SIGTERM and on
//! panic; the agents also die with it if it is killed (PR_SET_PDEATHSIG).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vxnet::api;
use vxnet_proto::{
    ApiRequest, CreateNetwork, Empty, MemberList, NamesRequest, api_request::Kind as Req,
    api_response::Kind as Resp,
};

const HOSTS: usize = 3;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What must go away whatever happens.
struct Resources {
    pids: Vec<i32>,
    netns: Vec<String>,
    dir: Option<PathBuf>,
}

static RESOURCES: Mutex<Resources> = Mutex::new(Resources {
    pids: Vec::new(),
    netns: Vec::new(),
    dir: None,
});

fn resources() -> std::sync::MutexGuard<'static, Resources> {
    RESOURCES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills the agents, deletes the namespaces and the files. Idempotent.
fn cleanup() {
    let mut r = resources();
    for pid in r.pids.drain(..) {
        // SAFETY: plain syscalls on a pid this process spawned (and has not reaped yet).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    for ns in r.netns.drain(..).rev() {
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
    }
    if let Some(dir) = r.dir.take() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs cleanup when main returns or unwinds.
struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread (call before any is spawned) and handles them
/// on a dedicated thread: clean up, then exit 128+signal.
fn handle_signals() {
    let set = signal_set();
    // SAFETY: set is initialised; blocking signals in the calling (main) thread only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: set is initialised and blocked in every thread (they inherit the mask).
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            eprintln!("raft_commit: signal {sig}: cleaning up");
            cleanup();
            std::process::exit(128 + sig);
        }
    });
}

fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(())
}

fn add_netns(name: &str) -> Result<()> {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
    sh(&format!("ip netns add {name}"))?;
    resources().netns.push(name.to_string());
    Ok(())
}

struct Opts {
    writes: usize,
    threads: usize,
    concurrent_writes: usize,
    json: PathBuf,
    vxnetd: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: raft_commit [--writes N (500)] [--threads T (8)] [--concurrent-writes M (2N)] \
         [--json PATH (raft_commit.json)] [--vxnetd PATH]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Result<Opts> {
    let mut writes = 500;
    let mut threads = 8;
    let mut concurrent_writes = None;
    let mut json = PathBuf::from("raft_commit.json");
    let mut vxnetd = std::env::var_os("VXNETD").map(PathBuf::from);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--writes" => writes = value().parse().context("--writes")?,
            "--threads" => threads = value().parse().context("--threads")?,
            "--concurrent-writes" => {
                concurrent_writes = Some(value().parse().context("--concurrent-writes")?)
            }
            "--json" => json = value().into(),
            "--vxnetd" => vxnetd = Some(value().into()),
            _ => usage(),
        }
    }
    let vxnetd = match vxnetd {
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
        writes: writes.max(2),
        threads: threads.max(1),
        concurrent_writes: concurrent_writes.unwrap_or(2 * writes),
        json,
        vxnetd,
    })
}

struct Host {
    name: String,
    api: PathBuf,
}

/// Builds the switch and host namespaces and starts one agent per host.
fn build_cluster(vxnetd: &Path) -> Result<Vec<Host>> {
    let prefix = format!("vxb{}", std::process::id() % 10_000);
    let dir = std::env::temp_dir().join(format!("vxnet-raft-commit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    resources().dir = Some(dir.clone());
    let switch = format!("{prefix}-sw");
    add_netns(&switch)?;
    sh(&format!(
        "ip -n {switch} link add br0 type bridge && ip -n {switch} link set br0 up"
    ))?;
    let mut hosts = Vec::new();
    for i in 1..=HOSTS {
        let ns = format!("{prefix}-h{i}");
        add_netns(&ns)?;
        sh(&format!(
            "ip link add {prefix}u{i} netns {ns} type veth peer name {prefix}s{i} netns {switch} \
             && ip -n {ns} link set {prefix}u{i} name ul0 \
             && ip -n {ns} addr add 192.168.200.{i}/24 dev ul0 \
             && ip -n {ns} link set ul0 up && ip -n {ns} link set lo up \
             && ip -n {switch} link set {prefix}s{i} master br0 up"
        ))?;
        let name = format!("h{i}");
        let api = dir.join(format!("{name}.sock"));
        let underlay = format!("192.168.200.{i}");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(vxnetd)
            .args(["--name", &name, "--underlay", &underlay])
            .arg("--data-dir")
            .arg(dir.join(&name))
            .arg("--peer-listen")
            .arg(format!("{underlay}:7946"))
            .arg("--api")
            .arg(&api)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        if i == 1 {
            cmd.arg("--bootstrap");
        } else {
            cmd.args(["--join", "192.168.200.1:7946"]);
        }
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        // SAFETY: only async-signal-safe calls between fork and exec: the agent gets the
        // default signal mask back and dies with this process (it is spawned from the main
        // thread, which lives until exit).
        unsafe {
            cmd.pre_exec(|| {
                let set = signal_set();
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning vxnetd")?;
        resources().pids.push(child.id() as i32);
        // The pid is reaped by cleanup(); the handle is not needed.
        std::mem::forget(child);
        hosts.push(Host { name, api });
        if i == 1 {
            wait_until("h1's API", Duration::from_secs(30), || {
                Ok(members(&hosts[0].api).is_ok())
            })?;
        }
    }
    Ok(hosts)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
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
    let mut leader = 0;
    wait_until(
        "three voters and one leader",
        Duration::from_secs(60),
        || {
            let mut seen = Vec::new();
            for host in hosts {
                let Ok(list) = members(&host.api) else {
                    return Ok(false);
                };
                if list.members.len() != HOSTS || list.members.iter().any(|m| m.role != "voter") {
                    return Ok(false);
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
                    leader = hosts.iter().position(|h| &h.name == name).unwrap_or(0);
                    Ok(true)
                }
                _ => Ok(false),
            }
        },
    )?;
    Ok(leader)
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
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
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
            "p50_ms": ms(self.percentile(0.50)),
            "p99_ms": ms(self.percentile(0.99)),
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
            ms(p.percentile(0.50)),
            ms(p.percentile(0.99)),
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
    handle_signals();
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
    if result.is_err() {
        let dir = resources().dir.clone();
        for i in 1..=HOSTS {
            if let Some(log) = dir.as_ref().map(|d| d.join(format!("h{i}.log"))) {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- h{i} log tail ---\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                );
            }
        }
    }
    drop(guard);
    match result.and_then(|report| {
        let text = serde_json::to_string_pretty(&report)?;
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
