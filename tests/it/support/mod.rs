//! Test support for the netns integration tests: the `vxnet-testkit` harness (namespaces on an
//! underlay switch, agent processes, cleanup) with test manners (a failure panics, with the
//! agents' log tails), clusters of real `vxnetd` agents, the `vxnet` CLI, TCP transfers.
//!
//! Names carry a per-test prefix (`vx<pid%10000><tag>`, see [`testkit::prefix`]); all tests
//! run in one process, so [`Cluster::new`] refuses a tag used twice.

pub mod capture;
pub mod cni;
pub mod docker;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use vxnet_testkit::agent::{AgentCmd, agent_args, vxnet_cli};
use vxnet_testkit::netns::{self as testkit, Proc};

pub use vxnet_testkit::procfs::rss_kib;

/// True when running as root; otherwise prints why the test is skipped.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: {test} needs root (network namespaces)");
    }
    root
}

/// The usual start of a netns test: `None` (the test is skipped, saying why) without root,
/// else [`Cluster::new`] with `hosts` hosts and default options.
pub fn cluster_for(test: &str, tag: &str, hosts: usize) -> Option<Cluster> {
    cluster_with(
        test,
        tag,
        ClusterOptions {
            hosts,
            ..ClusterOptions::default()
        },
    )
}

/// [`cluster_for`] with options.
pub fn cluster_with(test: &str, tag: &str, options: ClusterOptions) -> Option<Cluster> {
    require_root(test).then(|| Cluster::new(tag, options))
}

/// Panics with the error and its causes.
pub fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    must(testkit::sh(cmd))
}

/// Runs a command and returns its output whatever the exit status.
pub fn sh_output(cmd: &str) -> Output {
    must(testkit::sh_output(cmd))
}

/// Polls `f` every 100 ms until it returns `Some`; panics once `timeout` has passed.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    must(testkit::wait_for(what, timeout, f))
}

/// `(transmitted, received)` from ping's summary line.
pub fn ping_counts(output: &str) -> (u32, u32) {
    testkit::ping_counts(output).unwrap_or_else(|| panic!("no ping summary in: {output}"))
}

/// A command's stdout and stderr, one after the other.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A command's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `stats64` of link `dev` in namespace `ns` (`ip -s -j link`): `["rx"|"tx"]["bytes"|"packets"]`.
pub fn link_stats64(ns: &str, dev: &str) -> Value {
    let out = sh(&format!("ip -n {ns} -s -j link show dev {dev}"));
    let v: Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["stats64"].clone()
}

/// One agent process.
pub struct Agent {
    pub name: String,
    pub netns: String,
    pub api: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    /// Another `vxnetd` to run (an earlier release, for upgrade tests); `None`: this build's.
    pub binary: Option<PathBuf>,
    /// Run in the mount and network namespaces of this process (a dockerd host's holder, see
    /// `support::docker`) rather than `ip netns exec netns`.
    pub enter_pid: Option<u32>,
    proc: Option<Proc>,
}

impl Agent {
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// `kill -9`: the agent gets no chance to clean up.
    pub fn kill(&mut self) {
        // Dropping the process kills and reaps it.
        self.proc = None;
    }

    pub fn is_running(&mut self) -> bool {
        matches!(
            self.proc.as_mut().map(|p| p.child().try_wait()),
            Some(Ok(None))
        )
    }

    /// The exit status once the agent has ended (`None` while it runs or was never started).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.proc
            .as_mut()
            .and_then(|p| p.child().try_wait().ok().flatten())
    }

    /// Starts the agent (its command line may have been changed meanwhile).
    pub fn start(&mut self) {
        let binary = self
            .binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vxnetd")));
        let cmd = AgentCmd {
            vxnetd: &binary,
            netns: &self.netns,
            args: &self.args,
            log: &self.log,
            default_log_level: "info,hickory_server=error,hickory_proto=error,hickory_net=error",
            die_with_parent: false,
        };
        self.proc = Some(must(match self.enter_pid {
            Some(pid) => cmd.spawn_entering(pid),
            None => cmd.spawn(),
        }));
    }

    /// Starts the agent again with the same command line (as systemd would).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// Runs the `vxnet` CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        must(vxnet_cli(
            Path::new(env!("CARGO_BIN_EXE_vxnet")),
            &self.api,
            args,
        ))
    }

    /// Runs the CLI and returns stdout, panicking (with the agent's log tail) on failure.
    pub fn vxnet(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        if !out.status.success() {
            panic!(
                "vxnet {} failed on {}: {}{}\n--- agent log tail ---\n{}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The VNI of network `network`, as `vxnet network inspect` reports it.
    pub fn vni_of(&self, network: &str) -> u32 {
        let out = self.vxnet(&[
            "network",
            "inspect",
            "-f",
            r#"{{index .Options "com.docker.network.driver.overlay.vxlanid_list"}}"#,
            network,
        ]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("VNI of {network}: {out:?}"))
    }

    /// `cluster members --format json`, as JSON rows (`None` if the call failed).
    pub fn members(&self) -> Option<Vec<Value>> {
        let out = self.cli(&["cluster", "members", "--format", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The leader this agent knows of, by name (`None` if none or the API does not answer).
    pub fn leader_name(&self) -> Option<String> {
        self.members()?
            .iter()
            .find(|m| m["leader"] == true)
            .and_then(|m| m["name"].as_str().map(str::to_string))
    }

    /// `network inspect NAME`: the one network's JSON object, or `None` if not found.
    pub fn inspect(&self, network: &str) -> Option<Value> {
        let out = self.cli(&["network", "inspect", network]);
        if !out.status.success() {
            return None;
        }
        let mut list: Vec<Value> = serde_json::from_slice(&out.stdout).expect("inspect json");
        (list.len() == 1).then(|| list.remove(0))
    }

    /// `vxnet stats --format json`: counter → value.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let out = self.vxnet(&["stats", "--format", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stats JSON: {e}: {out}"))
    }

    /// One value of `vxnet stats` (`None` if absent or the API does not answer).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let out = self.cli(&["stats", "--format", "json"]);
        let stats: Value = serde_json::from_slice(&out.stdout).ok()?;
        stats.get(name)?.as_u64()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        testkit::log_tail(&self.log, lines)
    }
}

/// A test's namespaces, agents and files; everything is removed on drop (also on panic).
pub struct Cluster {
    pub prefix: String,
    pub dir: PathBuf,
    pub agents: Vec<Agent>,
    namespaces: Vec<String>,
    next_container: usize,
}

/// Options for building a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub hosts: usize,
    pub underlay_mtu: u32,
    /// Extra flags for every agent.
    pub agent_args: Vec<String>,
    /// Start agents (false: only build the hosts, e.g. to run a kernel VXLAN on one).
    pub start_agents: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            hosts: 2,
            underlay_mtu: 1500,
            agent_args: Vec::new(),
            start_agents: true,
        }
    }
}

/// The tags of this process's clusters: all tests run in one process, so a tag used twice would
/// make two tests share (and tear down) each other's namespaces.
static TAGS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

impl Cluster {
    /// Four hosts, three of them started and serving their API: h4 is a joiner the test
    /// starts itself.
    pub fn with_joiner(tag: &str) -> Cluster {
        let mut cluster = Cluster::new(
            tag,
            ClusterOptions {
                hosts: 4,
                start_agents: false,
                ..ClusterOptions::default()
            },
        );
        for i in 0..3 {
            cluster.agents[i].start();
            cluster.wait_api(i);
        }
        cluster
    }

    /// Builds `hosts` host namespaces on a switch and starts one agent per host: the first
    /// bootstraps, the others join it. `tag` names the test (2–3 characters, unique across the
    /// test binary).
    pub fn new(tag: &str, options: ClusterOptions) -> Cluster {
        let fresh = TAGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag.to_string());
        assert!(fresh, "cluster tag {tag:?} is used by another test");
        let prefix = testkit::prefix(tag);
        let dir = std::env::temp_dir().join(format!("vxnet-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let mut cluster = Cluster {
            prefix: prefix.clone(),
            dir,
            agents: Vec::new(),
            namespaces: vec![testkit::switch_ns(&prefix)],
            next_container: 0,
        };
        let hosts = testkit::build_underlay(&prefix, options.hosts, options.underlay_mtu);
        // On failure too: what was made is deleted on drop.
        cluster
            .namespaces
            .extend((1..=options.hosts).map(|i| format!("{prefix}-h{i}")));
        for (i, host) in must(hosts).into_iter().enumerate() {
            let name = format!("h{}", i + 1);
            let data_dir = cluster.dir.join(&name);
            let api = cluster.dir.join(format!("{name}.sock"));
            let mut args = agent_args(i + 1, &name, &data_dir, &api);
            args.extend(options.agent_args.iter().cloned());
            cluster.agents.push(Agent {
                log: cluster.dir.join(format!("{name}.log")),
                name,
                netns: host,
                api,
                data_dir,
                args,
                binary: None,
                enter_pid: None,
                proc: None,
            });
        }
        if options.start_agents {
            cluster.start_agents();
        }
        cluster
    }

    /// Starts the agents of a cluster made with `start_agents: false` (after changing their
    /// command lines, binaries or data dirs): h1 first, then the others; waits for all members.
    pub fn start_agents(&mut self) {
        self.agents[0].start();
        self.wait_api(0);
        for agent in &mut self.agents[1..] {
            agent.start();
        }
        for i in 1..self.agents.len() {
            self.wait_api(i);
        }
        self.wait_members(self.agents.len());
    }

    /// Creates namespace `name` (with `lo` up), deleted with the cluster.
    pub fn add_netns(&mut self, name: &str) {
        self.namespaces.push(name.to_string());
        must(testkit::add_netns(name));
    }

    /// Plugs namespace `ns` into the underlay switch: `ul0` up (no address), switch port `port`.
    pub fn plug(&self, ns: &str, port: &str) {
        must(testkit::plug(&self.prefix, ns, port, 1500));
    }

    /// The switch namespace.
    pub fn switch_ns(&self) -> String {
        testkit::switch_ns(&self.prefix)
    }

    /// Host namespace name of agent `i` (0-based).
    pub fn host_ns(&self, i: usize) -> &str {
        &self.agents[i].netns
    }

    /// Waits until agent `i` answers on its API socket.
    pub fn wait_api(&self, i: usize) {
        let agent = &self.agents[i];
        must(vxnet_testkit::agent::wait_api(
            Path::new(env!("CARGO_BIN_EXE_vxnet")),
            &agent.api,
            &agent.name,
        ));
    }

    /// Waits until every agent lists `n` members.
    pub fn wait_members(&self, n: usize) {
        for agent in &self.agents {
            must(vxnet_testkit::agent::wait_members(
                Path::new(env!("CARGO_BIN_EXE_vxnet")),
                &agent.api,
                &agent.name,
                n,
            ));
        }
    }

    /// Creates a container namespace (not attached to anything yet).
    pub fn container(&mut self) -> String {
        self.next_container += 1;
        let name = format!("{}-c{}", self.prefix, self.next_container);
        self.add_netns(&name);
        name
    }

    /// Runs a shell command inside namespace `ns`.
    pub fn exec(&self, ns: &str, cmd: &str) -> Output {
        sh_output(&format!(
            "ip netns exec {ns} sh -c '{}'",
            cmd.replace('\'', "'\\''")
        ))
    }

    /// The IPv4 address of `ifname` in namespace `ns`.
    pub fn ipv4_of(&self, ns: &str, ifname: &str) -> String {
        must(testkit::ipv4_of(ns, ifname))
    }

    /// `ping -c count` from `ns` to `ip`; returns the output whatever the result.
    pub fn ping(&self, ns: &str, ip: &str, count: u32, extra: &str) -> Output {
        must(testkit::ping(
            ns,
            ip,
            &format!("-q -c {count} -i 0.2 -W 2 {extra}"),
        ))
    }

    /// [`Cluster::ping`] that must get every reply.
    pub fn assert_ping(&self, from: &str, to: &str, count: u32, extra: &str) {
        let out = self.ping(from, to, count, extra);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("{count} received")),
            "ping {from} → {to} {extra}: {text}"
        );
    }

    /// Names of the links in namespace `ns`.
    pub fn links(&self, ns: &str) -> Vec<String> {
        sh(&format!("ip -n {ns} -o link show"))
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for agent in &self.agents {
                eprintln!("--- {} log tail ---\n{}", agent.name, agent.log_tail(60));
            }
        }
        for agent in &mut self.agents {
            agent.kill();
        }
        for ns in self.namespaces.iter().rev() {
            testkit::del_netns(ns);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A receiver that counts and hashes what one TCP connection brings, printing "<bytes> <sha256>".
/// Arguments: port, bind address (`::` for IPv6).
const TCP_SINK: &str = r#"
import hashlib, socket, sys
bind = sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((bind, int(sys.argv[1]))); s.listen(1); s.settimeout(60)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(120); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"#;

/// A sender of `n` pseudo-random bytes (seeded), printing "<bytes> <sha256>".
const TCP_SOURCE: &str = r#"
import hashlib, random, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7); h = hashlib.sha256(); sent = 0
c = socket.create_connection((host, port), timeout=30)
while sent < n:
    d = rng.randbytes(min(1 << 16, n - sent)); c.sendall(d); h.update(d); sent += len(d)
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(sent, h.hexdigest(), flush=True)
"#;

/// Two containers on one network: `c1` on h1 and `c2` on h2.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Container namespace on h1.
    pub c1: String,
    /// Container namespace on h2.
    pub c2: String,
    /// `c1`'s overlay address.
    pub ip1: String,
    /// `c2`'s overlay address.
    pub ip2: String,
}

impl Cluster {
    /// Creates network `name` (`subnet`) on h1 and attaches a container on h1 and one on h2.
    pub fn pair(&mut self, name: &str, subnet: &str) -> Pair {
        self.agents[0].vxnet(&["network", "create", "--subnet", subnet, name]);
        let c1 = self.container();
        let c2 = self.container();
        self.agents[0].vxnet(&["network", "connect", name, &c1]);
        self.agents[1].vxnet(&["network", "connect", name, &c2]);
        let ip1 = self.ipv4_of(&c1, "eth0");
        let ip2 = self.ipv4_of(&c2, "eth0");
        Pair { c1, c2, ip1, ip2 }
    }

    /// [`Cluster::pair`], then waits until the first ping from c1 to c2 passes (both hosts have
    /// applied both endpoints).
    pub fn pair_on_network(&mut self, name: &str, subnet: &str) -> Pair {
        let pair = self.pair(name, subnet);
        self.wait_ping("first ping", &pair.c1, &pair.ip2);
        pair
    }

    /// Waits (20 s) until one ping from `from` to `ip` is answered.
    pub fn wait_ping(&self, what: &str, from: &str, ip: &str) {
        wait_for(what, Duration::from_secs(20), || {
            self.ping(from, ip, 1, "").status.success().then_some(())
        });
    }

    /// Sends `bytes` over TCP from `from_ns` to `to_ip` (in `to_ns`); returns the sender's and
    /// the receiver's "<bytes> <sha256>" lines.
    pub fn tcp_transfer(
        &self,
        from_ns: &str,
        to_ns: &str,
        to_ip: &str,
        bytes: usize,
    ) -> (String, String) {
        use std::io::{BufRead, BufReader};
        let sink = self.dir.join("tcp_sink.py");
        let source = self.dir.join("tcp_source.py");
        std::fs::write(&sink, TCP_SINK).expect("write sink");
        std::fs::write(&source, TCP_SOURCE).expect("write source");
        // Killed on every path (dropped), so a failed transfer leaves no process behind.
        let mut receiver = must(Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", to_ns, "python3"])
                .arg(&sink)
                .arg("5001")
                .arg(if to_ip.contains(':') { "::" } else { "0.0.0.0" })
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        ));
        let stdout = receiver.child().stdout.take().expect("sink stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(ready, "listening");
        let sender = sh_output(&format!(
            "timeout 120 ip netns exec {from_ns} python3 {} {to_ip} 5001 {bytes}",
            source.display()
        ));
        let sent = String::from_utf8_lossy(&sender.stdout).trim().to_string();
        assert!(
            sender.status.success(),
            "sender failed: {sent} {}",
            String::from_utf8_lossy(&sender.stderr)
        );
        let received = lines.next().and_then(Result::ok).unwrap_or_default();
        (sent, received.trim().to_string())
    }
}

/// The `inet vxnet` table without handles (they are the kernel's bookkeeping).
pub fn vxnet_ruleset(ns: &str) -> Value {
    let out = sh(&format!("ip netns exec {ns} nft -j list table inet vxnet"));
    let mut v: Value = serde_json::from_str(&out).expect("nft -j");
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}
