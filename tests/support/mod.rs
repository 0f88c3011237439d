//! Test support for the netns integration tests: hosts and containers as network namespaces,
//! real `vxnetd` agents, the `vxnet` CLI, and cleanup on exit and on panic.
//!
//! Topology: one "switch" namespace holding a bridge; every host namespace is joined to it by a
//! veth pair (`ul0` on the host side) with an underlay address 192.168.200.N/24. Addresses exist
//! only inside namespaces the test created, and no route leads out of them. Names carry a
//! per-test prefix (`vx<pid%10000><tag>`) so tests run in parallel.
#![allow(dead_code)]

pub mod capture;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// True when running as root; otherwise prints why the test is skipped.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: {test} needs root (network namespaces)");
    }
    root
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output whatever the exit status.
pub fn sh_output(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh")
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(transmitted, received)` from ping's summary line.
pub fn ping_counts(output: &str) -> (u32, u32) {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in: {output}"));
    let mut numbers = line
        .split(',')
        .map(|part| part.split_whitespace().next().unwrap_or(""))
        .map(|n| n.parse::<u32>().unwrap_or(u32::MAX));
    (
        numbers.next().unwrap_or(u32::MAX),
        numbers.next().unwrap_or(u32::MAX),
    )
}

/// One agent process.
pub struct Agent {
    pub name: String,
    pub netns: String,
    pub underlay: String,
    pub api: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    /// Another `vxnetd` to run (an earlier release, for upgrade tests); `None`: this build's.
    pub binary: Option<PathBuf>,
    child: Option<Child>,
}

impl Agent {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: the agent gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The exit status once the agent has ended (`None` while it runs or was never started).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Starts the agent (its command line may have been changed meanwhile).
    pub fn start(&mut self) {
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("create agent log");
        let binary = self
            .binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vxnetd")));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&binary)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn vxnetd");
        self.child = Some(child);
    }

    /// Starts the agent again with the same command line (as systemd would).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs the `vxnet` CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vxnet"))
            .arg("-H")
            .arg(&self.api)
            .args(args)
            .output()
            .expect("spawn vxnet")
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

    /// The leader this agent knows of, by name (`None` if none or the API does not answer).
    pub fn leader_name(&self) -> Option<String> {
        let out = self.cli(&["cluster", "members", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        rows.iter()
            .find(|m| m["leader"] == true)
            .and_then(|m| m["name"].as_str().map(str::to_string))
    }

    /// One value of `vxnet stats` (`None` if absent or the API does not answer).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let out = self.cli(&["stats", "--format", "json"]);
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        stats.get(name)?.as_u64()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A test's namespaces, agents and files; everything is removed on drop (also on panic).
pub struct Cluster {
    pub prefix: String,
    pub dir: PathBuf,
    pub agents: Vec<Agent>,
    namespaces: Vec<String>,
    switch: String,
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

impl Cluster {
    /// Builds `hosts` host namespaces on a switch and starts one agent per host: the first
    /// bootstraps, the others join it. `tag` names the test (2–3 lowercase letters).
    pub fn new(tag: &str, options: ClusterOptions) -> Cluster {
        let prefix = format!("vx{}{tag}", std::process::id() % 10_000);
        let dir = std::env::temp_dir().join(format!("vxnet-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let switch = format!("{prefix}-sw");
        let mut cluster = Cluster {
            prefix: prefix.clone(),
            dir,
            agents: Vec::new(),
            namespaces: Vec::new(),
            switch: switch.clone(),
            next_container: 0,
        };
        cluster.add_netns(&switch);
        sh(&format!(
            "ip -n {switch} link add br0 type bridge && ip -n {switch} link set br0 up"
        ));
        for i in 1..=options.hosts {
            let host = format!("{prefix}-h{i}");
            cluster.add_netns(&host);
            let mtu = options.underlay_mtu;
            sh(&format!(
                "ip link add {prefix}u{i} netns {host} mtu {mtu} type veth peer name {prefix}s{i} netns {switch} mtu {mtu} \
                 && ip -n {host} link set {prefix}u{i} name ul0 \
                 && ip -n {host} addr add 192.168.200.{i}/24 dev ul0 \
                 && ip -n {host} link set ul0 up && ip -n {host} link set lo up \
                 && ip -n {switch} link set {prefix}s{i} master br0 up"
            ));
            let name = format!("h{i}");
            let underlay = format!("192.168.200.{i}");
            let data_dir = cluster.dir.join(&name);
            let api = cluster.dir.join(format!("{name}.sock"));
            let mut args = vec![
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--underlay".into(),
                underlay.clone(),
                "--peer-listen".into(),
                format!("{underlay}:7946"),
                "--api".into(),
                api.display().to_string(),
            ];
            if i == 1 {
                args.push("--bootstrap".into());
            } else {
                args.extend(["--join".into(), "192.168.200.1:7946".into()]);
            }
            args.extend(options.agent_args.iter().cloned());
            cluster.agents.push(Agent {
                log: cluster.dir.join(format!("{name}.log")),
                name,
                netns: host,
                underlay,
                api,
                data_dir,
                args,
                binary: None,
                child: None,
            });
        }
        if options.start_agents {
            for i in 0..cluster.agents.len() {
                cluster.agents[i].spawn();
                if i == 0 {
                    cluster.wait_api(0);
                }
            }
            for i in 1..cluster.agents.len() {
                cluster.wait_api(i);
            }
            cluster.wait_members(options.hosts);
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

    fn add_netns(&mut self, name: &str) {
        let _ = sh_output(&format!("ip netns del {name} 2>/dev/null"));
        sh(&format!("ip netns add {name}"));
        self.namespaces.push(name.to_string());
    }

    /// Host namespace name of agent `i` (0-based).
    pub fn host_ns(&self, i: usize) -> &str {
        &self.agents[i].netns
    }

    /// Waits until agent `i` answers on its API socket.
    pub fn wait_api(&self, i: usize) {
        let agent = &self.agents[i];
        wait_for(
            &format!("{} API", agent.name),
            Duration::from_secs(30),
            || {
                agent
                    .cli(&["cluster", "members"])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }

    /// Waits until every agent lists `n` members.
    pub fn wait_members(&self, n: usize) {
        for agent in &self.agents {
            wait_for(
                &format!("{} to see {n} members", agent.name),
                Duration::from_secs(60),
                || {
                    let out = agent.cli(&["cluster", "members", "--format", "json"]);
                    let text = String::from_utf8_lossy(&out.stdout);
                    (out.status.success() && text.matches("\"name\"").count() == n).then_some(())
                },
            );
        }
    }

    /// Creates a container namespace (not attached to anything yet).
    pub fn container(&mut self) -> String {
        self.next_container += 1;
        let name = format!("{}-c{}", self.prefix, self.next_container);
        self.add_netns(&name);
        sh(&format!("ip -n {name} link set lo up"));
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
        let out = sh(&format!("ip -n {ns} -4 -o addr show dev {ifname}"));
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 on {ifname} in {ns}: {out}"))
            .to_string()
    }

    /// `ping -c count` from `ns` to `ip`; returns the output whatever the result.
    pub fn ping(&self, ns: &str, ip: &str, count: u32, extra: &str) -> Output {
        sh_output(&format!(
            "ip netns exec {ns} ping -n -q -c {count} -i 0.2 -W 2 {extra} {ip}"
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
            let _ = sh_output(&format!("ip netns del {ns} 2>/dev/null"));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A receiver that counts and hashes what one TCP connection brings, printing "<bytes> <sha256>".
const TCP_SINK: &str = r#"
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(60)
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
    /// Creates network `name` (`subnet`) on h1, attaches a container on h1 and one on h2, and
    /// waits until the first ping from c1 to c2 passes (both hosts have applied both endpoints).
    pub fn pair_on_network(&mut self, name: &str, subnet: &str) -> Pair {
        self.agents[0].vxnet(&["network", "create", "--subnet", subnet, name]);
        let c1 = self.container();
        let c2 = self.container();
        self.agents[0].vxnet(&["network", "connect", name, &c1]);
        self.agents[1].vxnet(&["network", "connect", name, &c2]);
        let ip1 = self.ipv4_of(&c1, "eth0");
        let ip2 = self.ipv4_of(&c2, "eth0");
        wait_for("first ping", Duration::from_secs(20), || {
            self.ping(&c1, &ip2, 1, "").status.success().then_some(())
        });
        Pair { c1, c2, ip1, ip2 }
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
        let mut receiver = Command::new("ip")
            .args(["netns", "exec", to_ns, "python3"])
            .arg(&sink)
            .arg("5001")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sink");
        // Kill the receiver on every path, so a failed transfer leaves no process behind.
        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let stdout = receiver.stdout.take().expect("sink stdout");
        let _receiver = KillOnDrop(receiver);
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
