//! overlay_bench: no overlay vs kernel VXLAN vs vxnet, side by side, on this machine.
//!
//! One command (as root, from the repository root):
//!
//! ```sh
//! cargo build --release --workspace && sudo target/release/overlay_bench [--quick] [--out bench/results]
//! ```
//!
//! It builds three topologies at once, each two "hosts" (network namespaces) on a switch
//! namespace's bridge (veth underlay, MTU 1500, 192.168.200.0/24) with one "container" namespace
//! per host:
//!
//! 1. `no-overlay`: the container's veth ends in its host, which routes the other container's
//!    subnet via the underlay peer (ip_forward on inside the host namespaces only);
//! 2. `kernel-vxlan`: a kernel `vxlan` device (VNI 42, port 4789, nolearning, static FDB) on a
//!    Linux bridge with the container's veth; container MTU 1450;
//! 3. `vxnet`: real `vxnetd` agents (h1 bootstraps, h2 joins), one network, `vxnet network
//!    connect` for each container.
//!
//! Then, interleaved (metric by metric, topology by topology, so that drift on a shared machine
//! hits all three alike), it measures from container 1 to container 2: iperf3 TCP 1 and 4 streams,
//! the delivered rate of 64-byte UDP frames (a sendmmsg blaster and a recvmmsg sink built into
//! this binary, hidden subcommands `__udp-blast` / `__udp-sink` run in the containers), ping RTT
//! p50/p99, and CPU seconds per GB during the 1-stream TCP run (vxnetd utime+stime of both agents,
//! and machine-wide softirq time from /proc/stat). It prints a table, writes
//! `<out>/results.json` and draws `<out>/throughput.png`. Every namespace and process it made is
//! removed on exit, on panic and on SIGINT/SIGTERM/SIGHUP. Nothing is asserted: it reports.
//! Only addresses inside the namespaces it creates are ever used.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

const USAGE: &str = "\
overlay_bench: no overlay vs kernel VXLAN vs vxnet, side by side (needs root)

usage: overlay_bench [--quick] [--out DIR] [--runs N] [--only LIST] [--steps LIST] [--vxnetd PATH] [--vxnet PATH]

  --quick         2 s iperf3 runs and a 1 s UDP window (default: 5 s and 3 s)
  --out DIR       where results.json and throughput.png go (default: bench/results)
  --runs N        repeat the interleaved measurements N times, report medians (default: 1)
  --only LIST     comma-separated subset of no-overlay,kernel-vxlan,vxnet
  --steps LIST    comma-separated subset of ping,rr,tcp1,tcp4,udp (default: all)
  --blast-threads N  UDP generator threads (default: 2)
  --vxnetd PATH   agent binary (default: next to this binary)
  --vxnet PATH    CLI binary (default: next to this binary)
  --agent-arg ARG extra vxnetd argument, repeatable (e.g. --agent-arg=--offload --agent-arg=off)
";

/// 64-byte Ethernet frame = 14 Ethernet + 20 IPv4 + 8 UDP + 18 payload + 4 FCS.
const UDP_PAYLOAD: usize = 18;
const UDP_PORT: u16 = 9000;
const BATCH: usize = 64;

// ---------------------------------------------------------------------------------------------
// Cleanup: a global registry of what we made, emptied by Drop, panic unwinding, or a signal.
// ---------------------------------------------------------------------------------------------

struct Cleanup {
    namespaces: Vec<String>,
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
    done: bool,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    namespaces: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
    done: false,
});

fn registry() -> std::sync::MutexGuard<'static, Cleanup> {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner())
}

fn register_ns(name: &str) {
    let mut r = registry();
    r.namespaces.push(name.to_string());
    if r.done {
        drop(r);
        cleanup();
    }
}

fn register_pid(pid: u32) {
    registry().pids.push(pid);
}

fn kill_pid(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid we spawned ourselves; it has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Kills what we started, deletes our namespaces (and any process still in them: all ours) and
/// our temporary directory. Holds the lock throughout so concurrent callers wait for it.
fn cleanup() {
    let mut r = registry();
    r.done = true;
    for pid in r.pids.drain(..) {
        kill_pid(pid);
    }
    let namespaces: Vec<String> = r.namespaces.drain(..).collect();
    for ns in namespaces.iter().rev() {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    kill_pid(pid);
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    for dir in r.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_signal: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local byte.
        unsafe {
            libc::write(fd, (&raw const byte).cast(), 1);
        }
    }
}

/// SIGINT/SIGTERM/SIGHUP → a byte on a pipe → a thread cleans up and exits 130.
fn install_signal_handlers() -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two fds into a live two-element array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    SIGNAL_FD.store(fds[1], Ordering::Relaxed);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only calls write(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        }
    }
    // SAFETY: fds[0] is the read end we just created and nothing else owns it.
    let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        if reader.read_exact(&mut byte).is_ok() {
            eprintln!("\noverlay_bench: interrupted, cleaning up namespaces and agents");
            cleanup();
            std::process::exit(130);
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Small process helpers.
// ---------------------------------------------------------------------------------------------

fn sh_output(cmd: &str) -> Result<Output> {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn sh -c {cmd}"))
}

fn sh(cmd: &str) -> Result<String> {
    let out = sh_output(cmd)?;
    if !out.status.success() {
        bail!(
            "command failed: {cmd}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn add_netns(name: &str) -> Result<()> {
    register_ns(name);
    let _ = sh_output(&format!("ip netns del {name} 2>/dev/null"));
    sh(&format!(
        "ip netns add {name} && ip -n {name} link set lo up"
    ))?;
    Ok(())
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ipv4_of(ns: &str, ifname: &str) -> Result<String> {
    let out = sh(&format!("ip -n {ns} -4 -o addr show dev {ifname}"))?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no IPv4 on {ifname} in {ns}: {out}"))
}

/// A child process that is killed (and reaped) when dropped.
struct Proc(Option<Child>);

impl Proc {
    fn spawn(cmd: &mut Command) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        register_pid(child.id());
        Ok(Proc(Some(child)))
    }
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("live child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting.
// ---------------------------------------------------------------------------------------------

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (softirq, busy) jiffies summed over all CPUs, from /proc/stat's first line.
fn proc_stat_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (get(6), busy)
}

/// utime + stime (all threads) of a process, in jiffies.
fn proc_cpu_jiffies(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = text.rsplit_once(") ").map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

#[derive(Clone, Copy, Debug, Default)]
struct CpuSnap {
    softirq: u64,
    busy: u64,
    agents: u64,
}

fn cpu_snap(agent_pids: &[u32]) -> CpuSnap {
    let (softirq, busy) = proc_stat_jiffies();
    CpuSnap {
        softirq,
        busy,
        agents: agent_pids.iter().map(|&p| proc_cpu_jiffies(p)).sum(),
    }
}

// ---------------------------------------------------------------------------------------------
// Topologies.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NoOverlay,
    KernelVxlan,
    Vxnet,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::NoOverlay, Kind::KernelVxlan, Kind::Vxnet];
    fn name(self) -> &'static str {
        match self {
            Kind::NoOverlay => "no-overlay",
            Kind::KernelVxlan => "kernel-vxlan",
            Kind::Vxnet => "vxnet",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Kind::NoOverlay => "n",
            Kind::KernelVxlan => "k",
            Kind::Vxnet => "v",
        }
    }
}

struct Agent {
    name: String,
    api: PathBuf,
    log: PathBuf,
    proc: Proc,
}

struct Topo {
    kind: Kind,
    hosts: [String; 2],
    containers: [String; 2],
    /// Container 2's address (the target of every measurement).
    dst: String,
    agents: Vec<Agent>,
    vxnet_cli: PathBuf,
}

impl Topo {
    fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().map(|a| a.proc.pid()).collect()
    }
}

struct Paths {
    vxnetd: PathBuf,
    vxnet: PathBuf,
    agent_args: Vec<String>,
    me: PathBuf,
    tmp: PathBuf,
}

/// Switch namespace with a bridge and two host namespaces with `ul0` = 192.168.200.{1,2}/24.
fn build_underlay(prefix: &str) -> Result<[String; 2]> {
    let sw = format!("{prefix}-sw");
    add_netns(&sw)?;
    sh(&format!(
        "ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up"
    ))?;
    let mut hosts = [String::new(), String::new()];
    for i in 1..=2 {
        let host = format!("{prefix}-h{i}");
        add_netns(&host)?;
        sh(&format!(
            "ip -n {host} link add ul0 mtu 1500 type veth peer name p{i} netns {sw} \
             && ip -n {sw} link set p{i} mtu 1500 master br0 up \
             && ip -n {host} addr add 192.168.200.{i}/24 dev ul0 \
             && ip -n {host} link set ul0 up"
        ))?;
        hosts[i - 1] = host;
    }
    Ok(hosts)
}

fn build(kind: Kind, paths: &Paths) -> Result<Topo> {
    let prefix = format!("vxb{}-{}", std::process::id(), kind.tag());
    let hosts = build_underlay(&prefix)?;
    let containers = [format!("{prefix}-c1"), format!("{prefix}-c2")];
    for c in &containers {
        add_netns(c)?;
    }
    let mut topo = Topo {
        kind,
        hosts: hosts.clone(),
        containers: containers.clone(),
        dst: String::new(),
        agents: Vec::new(),
        vxnet_cli: paths.vxnet.clone(),
    };
    match kind {
        Kind::NoOverlay => {
            for i in 1..=2 {
                let (h, c) = (&hosts[i - 1], &containers[i - 1]);
                let peer = 3 - i;
                sh(&format!(
                    "ip -n {c} link add eth0 type veth peer name vc0 netns {h} \
                     && ip -n {c} addr add 10.99.{i}.2/24 dev eth0 && ip -n {c} link set eth0 up \
                     && ip -n {h} addr add 10.99.{i}.1/24 dev vc0 && ip -n {h} link set vc0 up \
                     && ip -n {c} route add 10.99.0.0/16 via 10.99.{i}.1 \
                     && ip -n {h} route add 10.99.{peer}.0/24 via 192.168.200.{peer} \
                     && ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1"
                ))?;
            }
            topo.dst = "10.99.2.2".into();
        }
        Kind::KernelVxlan => {
            let mac = |i: usize| format!("02:00:0a:63:00:{i:02x}");
            for i in 1..=2 {
                let (h, c) = (&hosts[i - 1], &containers[i - 1]);
                let peer = 3 - i;
                sh(&format!(
                    "ip -n {h} link add vx0 type vxlan id 42 dstport 4789 local 192.168.200.{i} \
                       dev ul0 nolearning \
                     && ip -n {h} link add br0 type bridge \
                     && ip -n {h} link set vx0 master br0 \
                     && ip -n {c} link add eth0 type veth peer name vc0 netns {h} \
                     && ip -n {h} link set vc0 mtu 1450 master br0 \
                     && ip -n {h} link set vx0 up && ip -n {h} link set vc0 up \
                     && ip -n {h} link set br0 up \
                     && ip -n {c} link set eth0 address {m} mtu 1450 \
                     && ip -n {c} addr add 10.99.0.{a}/24 dev eth0 && ip -n {c} link set eth0 up \
                     && bridge -n {h} fdb append 00:00:00:00:00:00 dev vx0 dst 192.168.200.{peer} \
                     && bridge -n {h} fdb append {pm} dev vx0 dst 192.168.200.{peer}",
                    m = mac(i),
                    a = i + 1,
                    pm = mac(peer),
                ))?;
            }
            topo.dst = "10.99.0.3".into();
        }
        Kind::Vxnet => {
            for i in 1..=2 {
                let name = format!("h{i}");
                let data_dir = paths.tmp.join(format!("vxnet-{name}"));
                let api = paths.tmp.join(format!("{name}.sock"));
                let log = paths.tmp.join(format!("{name}.log"));
                let logf = std::fs::File::create(&log)?;
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &hosts[i - 1]])
                    .arg(&paths.vxnetd)
                    .args(["--name", &name, "--data-dir"])
                    .arg(&data_dir)
                    .args(["--underlay", &format!("192.168.200.{i}"), "--api"])
                    .arg(&api);
                if i == 1 {
                    cmd.arg("--bootstrap");
                } else {
                    cmd.args(["--join", "192.168.200.1:7946"]);
                }
                cmd.args(&paths.agent_args);
                cmd.env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(logf.try_clone()?)
                .stderr(logf);
                let proc = Proc::spawn(&mut cmd)?;
                topo.agents.push(Agent {
                    name,
                    api,
                    log,
                    proc,
                });
                let agent = topo.agents.last().expect("just pushed");
                wait_for(
                    &format!("{} API", agent.name),
                    Duration::from_secs(30),
                    || {
                        vxnet_cli(&paths.vxnet, &agent.api, &["cluster", "members"])
                            .ok()
                            .filter(|o| o.status.success())
                    },
                )
                .map_err(|e| anyhow!("{e}\n--- log ---\n{}", log_tail(&agent.log, 30)))?;
            }
            for agent in &topo.agents {
                wait_for(
                    &format!("{} to see 2 members", agent.name),
                    Duration::from_secs(60),
                    || {
                        let out = vxnet_cli(
                            &paths.vxnet,
                            &agent.api,
                            &["cluster", "members", "--format", "json"],
                        )
                        .ok()?;
                        let text = String::from_utf8_lossy(&out.stdout);
                        (out.status.success() && text.matches("\"name\"").count() == 2)
                            .then_some(())
                    },
                )?;
            }
            topo.vxnet(
                0,
                &["network", "create", "--subnet", "10.99.0.0/24", "vxbench"],
            )?;
            for (i, c) in containers.iter().enumerate() {
                // The network is created through h1; h2 may need a moment to apply it.
                wait_for(
                    &format!("network connect on h{}", i + 1),
                    Duration::from_secs(20),
                    || topo.vxnet(i, &["network", "connect", "vxbench", c]).ok(),
                )?;
            }
            topo.dst = ipv4_of(&containers[1], "eth0")?;
        }
    }
    // Reachability (the first vxnet packet may wait for the remote host's apply).
    let c1 = &containers[0];
    let dst = topo.dst.clone();
    wait_for(
        &format!("{} reachability", kind.name()),
        Duration::from_secs(30),
        || {
            sh_output(&format!("ip netns exec {c1} ping -n -q -c 1 -W 1 {dst}"))
                .ok()
                .filter(|o| o.status.success())
        },
    )?;
    Ok(topo)
}

fn vxnet_cli(cli: &Path, api: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(cli)
        .arg("-H")
        .arg(api)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Topo {
    fn vxnet(&self, agent: usize, args: &[&str]) -> Result<String> {
        let a = &self.agents[agent];
        let out = vxnet_cli(&self.vxnet_cli, &a.api, args)?;
        if !out.status.success() {
            bail!(
                "vxnet {} on {}: {}{}",
                args.join(" "),
                a.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.
// ---------------------------------------------------------------------------------------------

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ping(topo: &Topo, count: u32) -> Result<BTreeMap<&'static str, f64>> {
    let out = sh_output(&format!(
        "ip netns exec {} ping -n -c {count} -i 0.005 -W 1 {}",
        topo.containers[0], topo.dst
    ))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut us: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if us.is_empty() {
        bail!("ping {}: no replies\n{text}", topo.kind.name());
    }
    us.sort_by(f64::total_cmp);
    let n = us.len() as f64;
    Ok(BTreeMap::from([
        ("ping_p50_us", percentile(&us, 50.0)),
        ("ping_p99_us", percentile(&us, 99.0)),
        ("ping_avg_us", us.iter().sum::<f64>() / n),
        ("ping_min_us", us[0]),
        ("ping_max_us", us[us.len() - 1]),
        ("ping_loss_pct", 100.0 * (1.0 - n / f64::from(count))),
    ]))
}

static NEXT_PORT: AtomicU64 = AtomicU64::new(5201);

fn iperf(topo: &Topo, streams: u32, secs: u32) -> Result<BTreeMap<&'static str, f64>> {
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed).to_string();
    let _server = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &topo.containers[1]])
            .args(["iperf3", "-s", "-1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let pids = topo.agent_pids();
    let mut last_err = String::new();
    for _attempt in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let before = cpu_snap(&pids);
        let t0 = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &topo.containers[0]])
            .args(["iperf3", "-J", "-c", &topo.dst, "-p", &port])
            .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
            .stdin(Stdio::null())
            .output()?;
        let wall = t0.elapsed().as_secs_f64();
        let after = cpu_snap(&pids);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            last_err = err.to_string();
            continue; // typically: the server is not listening yet
        }
        let recv = &v["end"]["sum_received"];
        let (Some(bps), Some(bytes)) = (recv["bits_per_second"].as_f64(), recv["bytes"].as_f64())
        else {
            last_err = format!(
                "unparsable iperf3 output: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        };
        let tck = clk_tck();
        let gb = bytes / 1e9;
        let agent_s = (after.agents - before.agents) as f64 / tck;
        let softirq_s = (after.softirq - before.softirq) as f64 / tck;
        let busy_s = (after.busy - before.busy) as f64 / tck;
        let retr = v["end"]["sum_sent"]["retransmits"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let mut m = BTreeMap::from([
            ("gbps", bps / 1e9),
            ("bytes", bytes),
            ("retransmits", retr),
            ("wall_s", wall),
            ("cpu_agent_s", agent_s),
            ("cpu_softirq_s", softirq_s),
            ("cpu_machine_busy_s", busy_s),
            ("cpu_agent_s_per_gb", agent_s / gb),
            ("cpu_softirq_s_per_gb", softirq_s / gb),
            ("cpu_machine_busy_s_per_gb", busy_s / gb),
        ]);
        if let Some(c) = v["end"]["cpu_utilization_percent"].as_object() {
            for (k, name) in [
                ("host_total", "iperf3_sender_cpu_pct"),
                ("remote_total", "iperf3_receiver_cpu_pct"),
            ] {
                if let Some(x) = c.get(k).and_then(Value::as_f64) {
                    m.insert(name, x);
                }
            }
        }
        return Ok(m);
    }
    bail!("iperf3 {} -P {streams}: {last_err}", topo.kind.name())
}

/// A hidden subcommand of this binary (`me`) serving in namespace `ns`, started once it printed
/// `ready`; its later stdout lines come from the returned reader.
fn spawn_ready(
    ns: &str,
    me: &Path,
    args: &[&str],
) -> Result<(Proc, std::io::Lines<BufReader<std::process::ChildStdout>>)> {
    let mut server = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(me)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let mut lines = BufReader::new(server.child().stdout.take().context("stdout")?).lines();
    let ready = lines.next().transpose()?.unwrap_or_default();
    if ready.trim() != "ready" {
        bail!(
            "{} did not start: {ready}",
            args.first().unwrap_or(&"server")
        );
    }
    Ok((server, lines))
}

/// Runs a hidden subcommand of this binary (`me`) in namespace `ns` to completion.
fn run_in(ns: &str, me: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(me)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// The first `N` whitespace-separated numbers of a subcommand's output line (NaN where missing).
fn numbers<const N: usize>(text: &str) -> [f64; N] {
    let mut v = text
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN));
    std::array::from_fn(|_| v.next().unwrap_or(f64::NAN))
}

fn udp_rate(
    topo: &Topo,
    me: &Path,
    warmup: f64,
    window: f64,
    threads: usize,
) -> Result<BTreeMap<&'static str, f64>> {
    let (mut sink, mut lines) = spawn_ready(
        &topo.containers[1],
        me,
        &[
            "__udp-sink",
            &UDP_PORT.to_string(),
            &warmup.to_string(),
            &window.to_string(),
            "1",
        ],
    )?;
    // The blaster starts a little after the sink's clock (first packet): count its sends over
    // the same offsets, which lines the two windows up to within a few milliseconds.
    let blast_secs = warmup + window + 0.5;
    let out = run_in(
        &topo.containers[0],
        me,
        &[
            "__udp-blast",
            &format!("{}:{UDP_PORT}", topo.dst),
            &blast_secs.to_string(),
            &threads.to_string(),
            &UDP_PAYLOAD.to_string(),
            &warmup.to_string(),
            &window.to_string(),
        ],
    )?;
    let [sent, sent_secs, sent_in_window, sent_window] =
        numbers(&String::from_utf8_lossy(&out.stdout));
    let got = lines.next().transpose()?.unwrap_or_default();
    let _ = sink.child().wait();
    let [received, secs] = numbers(&got);
    Ok(BTreeMap::from([
        ("udp64_delivered_kpps", received / secs / 1e3),
        ("udp64_offered_kpps", sent_in_window / sent_window / 1e3),
        ("udp64_offered_avg_kpps", sent / sent_secs / 1e3),
        ("udp64_sent_pkts", sent),
        ("udp64_received_pkts", received),
        ("udp64_window_s", secs),
    ]))
}

/// Request/response latency (netperf's TCP_RR): one TCP connection, a 1-byte request answered by
/// a 1-byte response, back to back for `secs`; every round trip is timed. Unlike ping with a
/// pause between probes, this keeps the path busy, so it measures the path rather than how fast
/// idle CPUs wake up.
fn tcp_rr(topo: &Topo, me: &Path, secs: f64) -> Result<BTreeMap<&'static str, f64>> {
    let (mut server, _lines) = spawn_ready(
        &topo.containers[1],
        me,
        &["__rr-server", &RR_PORT.to_string()],
    )?;
    let out = run_in(
        &topo.containers[0],
        me,
        &[
            "__rr-client",
            &format!("{}:{RR_PORT}", topo.dst),
            &secs.to_string(),
        ],
    )?;
    let _ = server.child().wait();
    if !out.status.success() {
        bail!(
            "rr client {}: {}",
            topo.kind.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let [count, elapsed, p50, p99, min] = numbers(&String::from_utf8_lossy(&out.stdout));
    Ok(BTreeMap::from([
        ("rr_p50_us", p50),
        ("rr_p99_us", p99),
        ("rr_min_us", min),
        ("rr_tps", count / elapsed),
    ]))
}

// ---------------------------------------------------------------------------------------------
// Hidden subcommands: the UDP blaster and sink, run inside the container namespaces.
// ---------------------------------------------------------------------------------------------

fn udp_blast(args: &[String]) -> Result<()> {
    let dst: SocketAddrV4 = args.first().context("dst")?.parse()?;
    let secs: f64 = args.get(1).context("secs")?.parse()?;
    let threads: usize = args.get(2).context("threads")?.parse()?;
    let payload: usize = args.get(3).context("payload")?.parse()?;
    // Sends are also counted over [from, from + len) s, to line up with the sink's window.
    let from: f64 = args.get(4).map_or(Ok(0.0), |x| x.parse())?;
    let len: f64 = args.get(5).map_or(Ok(secs), |x| x.parse())?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let (w0, w1) = (
        start + Duration::from_secs_f64(from),
        start + Duration::from_secs_f64(from + len),
    );
    let total = Arc::new(AtomicU64::new(0));
    let in_window = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (total, in_window) = (total.clone(), in_window.clone());
            std::thread::spawn(move || -> Result<()> {
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                sock.connect(dst)?;
                let fd = sock.as_raw_fd();
                set_buf(fd, libc::SO_SNDBUF, 4 << 20);
                let buf = vec![0x5au8; payload];
                let mut iov = libc::iovec {
                    iov_base: buf.as_ptr().cast_mut().cast(),
                    iov_len: buf.len(),
                };
                // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
                let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
                    .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
                    .collect();
                for m in &mut msgs {
                    m.msg_hdr.msg_iov = &raw mut iov;
                    m.msg_hdr.msg_iovlen = 1;
                }
                let (mut sent, mut windowed) = (0u64, 0u64);
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    let counting = now >= w0 && now < w1;
                    for _ in 0..16 {
                        // SAFETY: msgs holds BATCH initialised headers whose iovec points at
                        // `buf`, all alive for the call; the socket is connected.
                        let n = unsafe {
                            libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0)
                        };
                        if n > 0 {
                            sent += n as u64;
                            if counting {
                                windowed += n as u64;
                            }
                        }
                    }
                }
                total.fetch_add(sent, Ordering::Relaxed);
                in_window.fetch_add(windowed, Ordering::Relaxed);
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow!("blaster thread panicked"))??;
    }
    println!(
        "{} {} {} {len}",
        total.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        in_window.load(Ordering::Relaxed),
    );
    Ok(())
}

fn set_buf(fd: libc::c_int, opt: libc::c_int, bytes: libc::c_int) {
    for o in [
        opt,
        if opt == libc::SO_SNDBUF {
            libc::SO_SNDBUFFORCE
        } else {
            libc::SO_RCVBUFFORCE
        },
    ] {
        // SAFETY: setsockopt reads one c_int from a live local.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                o,
                (&raw const bytes).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn reuseport_socket(port: u16) -> Result<UdpSocket> {
    // SAFETY: socket(2) has no memory preconditions; the fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // SAFETY: sockaddr_in is plain data; zeroed is valid, then filled in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    // SAFETY: bind reads a live, correctly sized sockaddr_in.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("bind :{port}: {}", std::io::Error::last_os_error());
    }
    set_buf(fd, libc::SO_RCVBUF, 8 << 20);
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(sock)
}

/// Counts packets in a `window` that starts `warmup` seconds after the first packet arrives.
/// Echoes 1-byte requests on one TCP connection until the client closes it.
fn rr_server(args: &[String]) -> Result<()> {
    let port: u16 = args.first().context("port")?.parse()?;
    let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    println!("ready");
    let (mut conn, _) = listener.accept()?;
    conn.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte)? {
            0 => return Ok(()),
            _ => conn.write_all(&byte)?,
        }
    }
}

/// Times 1-byte request/response round trips for `secs` after a short warm-up; prints
/// `count elapsed_s p50_us p99_us min_us`.
fn rr_client(args: &[String]) -> Result<()> {
    let dst: SocketAddrV4 = args.first().context("dst")?.parse()?;
    let secs: f64 = args.get(1).context("secs")?.parse()?;
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        match std::net::TcpStream::connect(dst) {
            Ok(c) => break c,
            Err(e) if Instant::now() > give_up => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut byte = [0u8; 1];
    let mut round_trip = |conn: &mut std::net::TcpStream| -> Result<Duration> {
        let t0 = Instant::now();
        conn.write_all(&byte)?;
        conn.read_exact(&mut byte)?;
        Ok(t0.elapsed())
    };
    let warm_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm_until {
        round_trip(&mut conn)?;
    }
    let mut us: Vec<f64> = Vec::with_capacity(200_000);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        us.push(round_trip(&mut conn)?.as_secs_f64() * 1e6);
    }
    let elapsed = start.elapsed().as_secs_f64();
    us.sort_by(f64::total_cmp);
    println!(
        "{} {elapsed} {} {} {}",
        us.len(),
        percentile(&us, 50.0),
        percentile(&us, 99.0),
        us.first().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn udp_sink(args: &[String]) -> Result<()> {
    let port: u16 = args.first().context("port")?.parse()?;
    let warmup = Duration::from_secs_f64(args.get(1).context("warmup")?.parse()?);
    let window = Duration::from_secs_f64(args.get(2).context("window")?.parse()?);
    let threads: usize = args.get(3).context("threads")?.parse()?;
    let sockets = (0..threads.max(1))
        .map(|_| reuseport_socket(port))
        .collect::<Result<Vec<_>>>()?;
    println!("ready");
    let give_up = Instant::now() + Duration::from_secs(30);
    let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let total = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|sock| {
            let (first, total) = (first.clone(), total.clone());
            std::thread::spawn(move || {
                let fd = sock.as_raw_fd();
                let mut bufs = vec![[0u8; 2048]; BATCH];
                let mut iovs: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    })
                    .collect();
                // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
                let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
                    .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
                    .collect();
                for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                }
                let mut count = 0u64;
                loop {
                    // SAFETY: msgs holds BATCH headers whose iovecs point into `bufs`, all
                    // alive and exclusively ours for the call.
                    let n = unsafe {
                        libc::recvmmsg(
                            fd,
                            msgs.as_mut_ptr(),
                            BATCH as libc::c_uint,
                            libc::MSG_WAITFORONE,
                            std::ptr::null_mut(),
                        )
                    };
                    let now = Instant::now();
                    if n > 0 {
                        let start = *first.get_or_init(|| now) + warmup;
                        if now >= start && now < start + window {
                            count += n as u64;
                        }
                    }
                    match first.get() {
                        Some(&f) if now >= f + warmup + window => break,
                        None if now >= give_up => break,
                        _ => {}
                    }
                }
                total.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    println!("{} {}", total.load(Ordering::Relaxed), window.as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report: table, JSON, chart.
// ---------------------------------------------------------------------------------------------

/// (key, label, precision) of the table's rows.
const ROWS: &[(&str, &str, usize)] = &[
    ("tcp1_gbps", "TCP 1 stream (Gbit/s)", 2),
    ("tcp4_gbps", "TCP 4 streams (Gbit/s)", 2),
    ("tcp1_retransmits", "TCP 1 stream retransmits", 0),
    ("udp64_delivered_kpps", "UDP 64 B delivered (kpps)", 0),
    ("udp64_offered_kpps", "UDP 64 B offered (kpps)", 0),
    ("ping_p50_us", "ping RTT p50 (us)", 0),
    ("ping_p99_us", "ping RTT p99 (us)", 0),
    ("rr_p50_us", "TCP_RR latency p50 (us)", 0),
    ("rr_p99_us", "TCP_RR latency p99 (us)", 0),
    ("rr_tps", "TCP_RR transactions/s", 0),
    ("cpu_agent_s_per_gb", "CPU agent s/GB (TCP 1)", 3),
    ("cpu_softirq_s_per_gb", "CPU softirq s/GB (TCP 1)", 3),
    ("cpu_machine_busy_s_per_gb", "CPU machine busy s/GB", 3),
];

/// vxnet/kernel ratios run by run (runs interleave, so run i of both ran minutes apart at
/// most) for the headline metrics: the spread a median hides on a noisy machine.
fn per_run_ratios(
    raw: &BTreeMap<&'static str, BTreeMap<String, Vec<f64>>>,
) -> Vec<(String, Vec<f64>)> {
    let (Some(kernel), Some(vxnet)) = (
        raw.get(Kind::KernelVxlan.name()),
        raw.get(Kind::Vxnet.name()),
    ) else {
        return Vec::new();
    };
    ["tcp1_cpu_machine_busy_s_per_gb", "tcp1_gbps", "tcp4_gbps"]
        .iter()
        .filter_map(|metric| {
            let (k, v) = (kernel.get(*metric)?, vxnet.get(*metric)?);
            let ratios: Vec<f64> = k
                .iter()
                .zip(v)
                .filter(|(k, _)| **k > 0.0)
                .map(|(k, v)| v / k)
                .collect();
            (!ratios.is_empty()).then(|| (metric.to_string(), ratios))
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn fmt_num(x: Option<f64>, prec: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "n/a".into(),
    }
}

fn table(summary: &BTreeMap<&'static str, BTreeMap<String, f64>>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:>12} {:>13} {:>12} {:>14}",
        "metric", "no-overlay", "kernel-vxlan", "vxnet", "vxnet/kernel"
    );
    let _ = writeln!(s, "{}", "-".repeat(28 + 13 + 14 + 13 + 15));
    for &(key, label, prec) in ROWS {
        let get = |k: Kind| summary.get(k.name()).and_then(|m| m.get(key)).copied();
        let (n, k, v) = (
            get(Kind::NoOverlay),
            get(Kind::KernelVxlan),
            get(Kind::Vxnet),
        );
        let ratio = match (v, k) {
            _ if key.ends_with("retransmits") => "-".into(),
            (Some(v), Some(k)) if k != 0.0 && v.is_finite() && k.is_finite() => {
                format!("{:.2}x", v / k)
            }
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "{label:<28} {:>12} {:>13} {:>12} {ratio:>14}",
            fmt_num(n, prec),
            fmt_num(k, prec),
            fmt_num(v, prec)
        );
    }
    s
}

fn find_font() -> Option<Vec<u8>> {
    if std::env::var_os("OVERLAY_BENCH_NO_FONT").is_some() {
        return None;
    }
    let preferred = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];
    for p in preferred {
        if let Ok(b) = std::fs::read(p) {
            return Some(b);
        }
    }
    fn walk(dir: &Path, depth: usize) -> Option<Vec<u8>> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() && depth < 4 {
                if let Some(b) = walk(&p, depth + 1) {
                    return Some(b);
                }
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf"))
                && let Ok(b) = std::fs::read(&p)
            {
                return Some(b);
            }
        }
        None
    }
    walk(Path::new("/usr/share/fonts"), 0)
}

fn chart(
    path: &Path,
    summary: &BTreeMap<&'static str, BTreeMap<String, f64>>,
    subtitle: &str,
) -> Result<bool> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let font = find_font().and_then(|bytes| {
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).ok()
    });
    let text = font.is_some();
    let colors = [
        RGBColor(140, 140, 140),
        RGBColor(52, 101, 164),
        RGBColor(230, 126, 34),
    ];
    // (title, unit, [(metric key, group label)], scale)
    type Panel<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64);
    let panels: [Panel; 3] = [
        (
            "TCP throughput (iperf3)",
            "Gbit/s",
            &[("tcp1_gbps", "1 stream"), ("tcp4_gbps", "4 streams")],
            1.0,
        ),
        (
            "UDP 64-byte frames",
            "kpps (thousand packets/s)",
            &[
                ("udp64_delivered_kpps", "delivered"),
                ("udp64_offered_kpps", "offered"),
            ],
            1.0,
        ),
        (
            "Ping RTT (lower is better)",
            "microseconds",
            &[("ping_p50_us", "p50"), ("ping_p99_us", "p99")],
            1.0,
        ),
    ];
    let root = BitMapBackend::new(path, (1500, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = if text {
        root.titled(
            &format!("vxnet vs kernel VXLAN vs no overlay  ({subtitle})"),
            ("sans-serif", 24),
        )?
    } else {
        root.margin(30, 0, 0, 0)
    };
    let areas = body.split_evenly((1, 3));
    for (pi, (area, (title, unit, groups, scale))) in areas.iter().zip(panels.iter()).enumerate() {
        let value = |k: Kind, key: &str| {
            summary
                .get(k.name())
                .and_then(|m| m.get(key))
                .copied()
                .filter(|x| x.is_finite())
                .map(|x| x * scale)
        };
        let ymax = groups
            .iter()
            .flat_map(|(key, _)| Kind::ALL.iter().filter_map(move |&k| value(k, key)))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.2;
        let mut builder = ChartBuilder::on(area);
        builder.margin(15);
        if text {
            builder
                .caption(*title, ("sans-serif", 18))
                .x_label_area_size(35)
                .y_label_area_size(60);
        } else {
            builder.x_label_area_size(10).y_label_area_size(10);
        }
        let mut chart = builder.build_cartesian_2d(0.0..groups.len() as f64, 0.0..ymax)?;
        let fmt_y = |v: &f64| {
            if ymax >= 20.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().x_labels(0);
        if text {
            mesh.y_desc(*unit)
                .label_style(("sans-serif", 14))
                .y_label_formatter(&fmt_y);
        } else {
            mesh.y_labels(0);
        }
        mesh.draw()?;
        let width = 0.8 / Kind::ALL.len() as f64;
        for (ti, &kind) in Kind::ALL.iter().enumerate() {
            let color = colors[ti];
            let bars: Vec<_> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, (key, _))| {
                    let v = value(kind, key)?;
                    let x0 = gi as f64 + 0.1 + ti as f64 * width;
                    Some((x0, v))
                })
                .collect();
            let series = chart.draw_series(bars.iter().map(|&(x0, v)| {
                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled())
            }))?;
            if text && pi == 0 {
                series.label(kind.name()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            }
            if text {
                let prec = if *scale < 1.0 || ymax < 20.0 { 2 } else { 0 };
                chart.draw_series(bars.iter().map(|&(x0, v)| {
                    Text::new(
                        format!("{v:.prec$}"),
                        (x0 + width * 0.46, v),
                        ("sans-serif", 13)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                }))?;
            }
        }
        if text {
            for (gi, (_, label)) in groups.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
                root.draw(&Text::new(
                    label.to_string(),
                    (px, py + 8),
                    ("sans-serif", 15)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Top)),
                ))?;
            }
            if pi == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .draw()?;
            }
        }
    }
    root.present()?;
    Ok(text)
}

fn utc_rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Main.
// ---------------------------------------------------------------------------------------------

struct Options {
    quick: bool,
    out: PathBuf,
    runs: usize,
    only: Vec<Kind>,
    blast_threads: usize,
    vxnetd: Option<PathBuf>,
    vxnet: Option<PathBuf>,
    agent_args: Vec<String>,
    steps: Vec<&'static str>,
}

/// The measurements, in the order one run takes them.
const STEPS: [&str; 5] = ["ping", "rr", "tcp1", "tcp4", "udp"];
/// TCP port of the request/response latency test.
const RR_PORT: u16 = 9100;

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        quick: false,
        out: PathBuf::from("bench/results"),
        runs: 1,
        only: Kind::ALL.to_vec(),
        blast_threads: 2,
        vxnetd: None,
        vxnet: None,
        agent_args: Vec::new(),
        steps: STEPS.to_vec(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--agent-arg=") {
            o.agent_args.push(v.to_string());
            continue;
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = value()?.into(),
            "--runs" => o.runs = value()?.parse::<usize>()?.max(1),
            "--blast-threads" => o.blast_threads = value()?.parse::<usize>()?.max(1),
            "--vxnetd" => o.vxnetd = Some(value()?.into()),
            "--vxnet" => o.vxnet = Some(value()?.into()),
            "--agent-arg" => o.agent_args.push(value()?),
            "--only" => {
                let list = value()?;
                o.only = Kind::ALL
                    .into_iter()
                    .filter(|k| list.split(',').any(|x| x.trim() == k.name()))
                    .collect();
                if o.only.is_empty() {
                    bail!("--only: none of no-overlay,kernel-vxlan,vxnet in {list:?}");
                }
            }
            "--steps" => {
                let list = value()?;
                o.steps = STEPS
                    .into_iter()
                    .filter(|s| list.split(',').any(|x| x.trim() == *s))
                    .collect();
                if o.steps.is_empty() {
                    bail!("--steps: none of {} in {list:?}", STEPS.join(","));
                }
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("__udp-blast") => udp_blast(&args[1..]),
        Some("__udp-sink") => udp_sink(&args[1..]),
        Some("__rr-server") => rr_server(&args[1..]),
        Some("__rr-client") => rr_client(&args[1..]),
        _ => run(&args),
    };
    if let Err(e) = result {
        eprintln!("overlay_bench: {e:#}");
        cleanup();
        std::process::exit(1);
    }
}

fn require_tools() -> Result<()> {
    let missing: Vec<&str> = ["ip", "bridge", "ping", "iperf3"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (apt-get install -y iproute2 iputils-ping iperf3)",
            missing.join(" ")
        );
    }
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let opts = parse_options(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root (network namespaces): sudo {}",
            std::env::args().next().unwrap_or_default()
        );
    }
    require_tools()?;
    let started = Instant::now();
    let _guard = CleanupGuard;
    install_signal_handlers()?;

    let me = std::env::current_exe()?;
    let bin_dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    let tmp = std::env::temp_dir().join(format!("vxb{}", std::process::id()));
    registry().dirs.push(tmp.clone());
    std::fs::create_dir_all(&tmp)?;
    let paths = Paths {
        vxnetd: opts
            .vxnetd
            .clone()
            .unwrap_or_else(|| bin_dir.join("vxnetd")),
        vxnet: opts.vxnet.clone().unwrap_or_else(|| bin_dir.join("vxnet")),
        agent_args: opts.agent_args.clone(),
        me,
        tmp,
    };
    if opts.only.contains(&Kind::Vxnet) {
        for p in [&paths.vxnetd, &paths.vxnet] {
            if !p.exists() {
                bail!(
                    "{} not found: run `cargo build --release --workspace` first",
                    p.display()
                );
            }
        }
    }
    let (tcp_secs, warmup, window, ping_count, rr_secs) = if opts.quick {
        (2u32, 0.5, 1.0, 200u32, 1.0)
    } else {
        (5u32, 1.0, 3.0, 200u32, 3.0)
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "overlay_bench: kernel {kernel}, {cores} cores, loadavg {}, {} run(s), iperf3 {tcp_secs} s",
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        opts.runs
    );

    let mut topos: Vec<Topo> = Vec::new();
    let mut errors: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let build_t0 = Instant::now();
    for &kind in &opts.only {
        eprintln!("overlay_bench: building {}", kind.name());
        match build(kind, &paths) {
            Ok(t) => topos.push(t),
            Err(e) => {
                eprintln!("overlay_bench: {} unavailable: {e:#}", kind.name());
                errors
                    .entry(kind.name())
                    .or_default()
                    .push(format!("build: {e:#}"));
            }
        }
    }
    let build_secs = build_t0.elapsed().as_secs_f64();

    // raw[topology][metric] = one value per run
    let mut raw: BTreeMap<&'static str, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut record = |kind: Kind, m: Result<BTreeMap<&'static str, f64>>, prefix: &str| match m {
        Ok(m) => {
            let entry = raw.entry(kind.name()).or_default();
            for (k, v) in m {
                entry.entry(format!("{prefix}{k}")).or_default().push(v);
            }
        }
        Err(e) => {
            eprintln!("overlay_bench: {}: {e:#}", kind.name());
            errors
                .entry(kind.name())
                .or_default()
                .push(format!("{e:#}"));
        }
    };
    let measure_t0 = Instant::now();
    for run in 1..=opts.runs {
        for &step in &opts.steps {
            for topo in &topos {
                eprintln!(
                    "overlay_bench: run {run}/{}: {step} on {}",
                    opts.runs,
                    topo.kind.name()
                );
                match step {
                    "ping" => record(topo.kind, ping(topo, ping_count), ""),
                    "rr" => record(topo.kind, tcp_rr(topo, &paths.me, rr_secs), ""),
                    "tcp1" => record(topo.kind, iperf(topo, 1, tcp_secs), "tcp1_"),
                    "tcp4" => record(topo.kind, iperf(topo, 4, tcp_secs), "tcp4_"),
                    _ => record(
                        topo.kind,
                        udp_rate(topo, &paths.me, warmup, window, opts.blast_threads),
                        "",
                    ),
                }
            }
        }
    }
    let measure_secs = measure_t0.elapsed().as_secs_f64();

    // Summary: medians; the 1-stream CPU figures are the headline CPU rows.
    let mut summary: BTreeMap<&'static str, BTreeMap<String, f64>> = BTreeMap::new();
    for (kind, metrics) in &raw {
        let s = summary.entry(kind).or_default();
        for (k, v) in metrics {
            s.insert(k.clone(), median(v));
        }
        for cpu in [
            "cpu_agent_s_per_gb",
            "cpu_softirq_s_per_gb",
            "cpu_machine_busy_s_per_gb",
            "retransmits",
        ] {
            if let Some(&x) = s.get(&format!("tcp1_{cpu}")) {
                s.insert(cpu.into(), x);
            }
        }
    }

    // Per-interface counters (drops!) of every host and container, for the record.
    let mut link_stats = serde_json::Map::new();
    for t in &topos {
        let mut per_ns = serde_json::Map::new();
        for ns in t.hosts.iter().chain(&t.containers) {
            let text = sh(&format!("ip -n {ns} -s -j link show")).unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let brief: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    json!({
                        "ifname": l["ifname"], "mtu": l["mtu"],
                        "rx": l["stats64"]["rx"], "tx": l["stats64"]["tx"],
                    })
                })
                .collect();
            per_ns.insert(ns.clone(), Value::Array(brief));
        }
        link_stats.insert(t.kind.name().into(), Value::Object(per_ns));
    }
    let bridge_nf = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .map_or_else(|_| "absent".to_string(), |x| x.trim().to_string());

    // vxnet's own counters, for the record.
    let mut vxnet_stats = serde_json::Map::new();
    if let Some(t) = topos.iter().find(|t| t.kind == Kind::Vxnet) {
        for (i, a) in t.agents.iter().enumerate() {
            let s = t.vxnet(i, &["stats"]).unwrap_or_else(|e| format!("{e:#}"));
            vxnet_stats.insert(a.name.clone(), Value::String(s));
        }
    }

    let tbl = table(&summary);
    println!("\n{tbl}");
    let spread = per_run_ratios(&raw);
    for (metric, ratios) in &spread {
        let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!("per run, vxnet/kernel, {metric}: {}", list.join(" "));
    }
    if !errors.is_empty() {
        println!("errors: {}", serde_json::to_string_pretty(&errors)?);
    }

    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let now = SystemTime::now();
    let timestamp = utc_rfc3339(now);
    let png = opts.out.join("throughput.png");
    let labels = match chart(
        &png,
        &summary,
        &format!("kernel {kernel}, {cores} cores, {timestamp}"),
    ) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("overlay_bench: chart: {e:#}");
            None
        }
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let doc = json!({
        "timestamp": timestamp,
        "unix_time": now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "kernel": kernel,
        "cores": cores,
        "cpu_model": cpu_model,
        "loadavg_before": load_before.trim(),
        "loadavg_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "options": {
            "quick": opts.quick,
            "runs": opts.runs,
            "tcp_secs": tcp_secs,
            "udp_warmup_s": warmup,
            "udp_window_s": window,
            "udp_payload_bytes": UDP_PAYLOAD,
            "udp_frame_bytes_with_fcs": UDP_PAYLOAD + 46,
            "udp_blast_threads": opts.blast_threads,
            "ping_count": ping_count,
            "ping_interval_s": 0.005,
            "rr_secs": rr_secs,
            "rr_request_bytes": 1,
            "agent_args": opts.agent_args,
        },
        "topology": {
            "underlay": "2 host netns on a switch-netns bridge, veth MTU 1500, 192.168.200.0/24",
            "no-overlay": "container veth routed by its host via the underlay peer (ip_forward)",
            "kernel-vxlan": "vxlan id 42 dstport 4789 nolearning + static FDB on a bridge; MTU 1450",
            "vxnet": "vxnetd agents (h1 --bootstrap, h2 --join), vxnet network connect; MTU 1450",
        },
        "notes": "medians over runs; cpu_* from the 1-stream TCP run: agent = utime+stime of both \
                  vxnetd processes, softirq and machine_busy = /proc/stat deltas over all CPUs \
                  (machine-wide, so other load on the machine is included). Agent and softirq overlap: \
                  with tick-based CPU accounting (no CONFIG_IRQ_TIME_ACCOUNTING) softirq work run \
                  inside the agent's syscalls (its sends ripple through veth/bridge/TCP inline) \
                  is charged to both, so do not add them; machine_busy is the non-overlapping total",
        "summary": summary,
        "per_run_vxnet_over_kernel": spread.iter().cloned().collect::<BTreeMap<_, _>>(),
        "raw": raw,
        "errors": errors,
        "vxnet_stats": vxnet_stats,
        "link_stats": link_stats,
        "bridge_nf_call_iptables": bridge_nf,
        "chart": { "path": png.display().to_string(), "ok": labels.is_some(), "labels": labels },
        "table": tbl,
        "durations_s": {
            "build": build_secs,
            "measure": measure_secs,
            "total": started.elapsed().as_secs_f64(),
        },
    });
    let json_path = opts.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!(
        "wrote {} and {} ({:.0} s: build {build_secs:.0} s, measure {measure_secs:.0} s)",
        json_path.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
    drop(topos);
    Ok(())
}
