//! Clusters whose hosts also run a real `dockerd` (`vxnet_testkit::docker`), each agent inside
//! its dockerd's mount namespace serving Docker's plugin socket
//! `/run/docker/plugins/vxnet.sock` (driver and IPAM driver `vxnet`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use vxnet_testkit::docker::{self, DockerHost, Unavailable};

use super::{Agent, Cluster, ClusterOptions, must, output_text, require_root};

/// The agents' plugin socket, inside their holders' mount namespaces.
pub const PLUGIN_SOCKET: &str = "/run/docker/plugins/vxnet.sock";
/// The driver name dockerd derives from the socket's file name.
pub const DRIVER: &str = "vxnet";
pub use vxnet_testkit::docker::{IMAGE, PAGE};

/// A [`Cluster`] plus one dockerd per host. Dropped in field order: the daemons first (their
/// containers are removed while the agents still answer), then the cluster.
pub struct DockerCluster {
    pub daemons: Vec<DockerHost>,
    pub cluster: Cluster,
}

/// A directory for host `name`'s dockerd, short enough for its unix sockets: in the cluster's
/// directory when that is short (the usual /tmp), else directly in /tmp.
fn docker_dir(cluster: &Cluster, name: &str) -> PathBuf {
    let inside = cluster.dir.join(format!("{name}-docker"));
    if inside.as_os_str().len() <= 48 {
        inside
    } else {
        PathBuf::from("/tmp").join(format!("vxd-{}-{name}", cluster.prefix))
    }
}

impl DockerCluster {
    /// `hosts` hosts, each with a dockerd and an agent started with `--docker-plugin
    /// PLUGIN_SOCKET` in the dockerd's namespaces; waits until every plugin socket accepts
    /// connections. `None` (the test is skipped, saying why) without root or when dockerd
    /// cannot run here.
    pub fn new(test: &str, tag: &str, hosts: usize) -> Option<DockerCluster> {
        if !require_root(test) {
            return None;
        }
        if let Err(e) = docker::available() {
            if e.downcast_ref::<Unavailable>().is_some() {
                eprintln!("skipped: {test}: {e}");
                return None;
            }
            panic!("{e:#}");
        }
        let mut cluster = Cluster::new(
            tag,
            ClusterOptions {
                hosts,
                start_agents: false,
                ..ClusterOptions::default()
            },
        );
        // Declared after `cluster`: dropped before it if anything below panics.
        let mut daemons = Vec::new();
        for i in 0..hosts {
            let name = cluster.agents[i].name.clone();
            let dir = docker_dir(&cluster, &name);
            let id = format!("{}-{name}", cluster.prefix);
            match DockerHost::start(&id, cluster.host_ns(i), &dir) {
                Ok(daemon) => daemons.push(daemon),
                Err(e) if e.downcast_ref::<Unavailable>().is_some() => {
                    eprintln!("skipped: {test}: {e}");
                    return None;
                }
                Err(e) => panic!("dockerd on {name}: {e:#}"),
            }
        }
        for (agent, daemon) in cluster.agents.iter_mut().zip(&daemons) {
            agent.enter_pid = Some(daemon.holder_pid());
            agent
                .args
                .extend(["--docker-plugin".to_string(), PLUGIN_SOCKET.to_string()]);
        }
        cluster.start_agents();
        for (agent, daemon) in cluster.agents.iter().zip(&daemons) {
            if let Err(e) = daemon.wait_plugin(DRIVER, Duration::from_secs(20)) {
                panic!(
                    "{e:#}\n--- {} log tail ---\n{}",
                    agent.name,
                    agent.log_tail(30)
                );
            }
        }
        Some(DockerCluster { daemons, cluster })
    }

    /// The agent of host `i` (0-based).
    pub fn agent(&self, i: usize) -> &Agent {
        &self.cluster.agents[i]
    }

    /// `docker ARGS` against host `i`'s dockerd; the output whatever the status.
    pub fn docker(&self, i: usize, args: &[&str]) -> Output {
        must(self.daemons[i].docker(args))
    }

    /// `docker ARGS` against host `i`'s dockerd, killed after `timeout` (then a failure).
    pub fn docker_timeout(&self, i: usize, timeout: Duration, args: &[&str]) -> Output {
        must(self.daemons[i].docker_timeout(timeout, args))
    }

    /// `docker ARGS` on host `i` that must succeed; its stdout, trimmed. Panics with its output
    /// and the tails of dockerd's and the agent's logs otherwise.
    pub fn docker_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.docker(i, args);
        if !out.status.success() {
            panic!(
                "docker {} on h{} failed ({}): {}\n--- dockerd log tail ---\n{}\n--- agent log \
                 tail ---\n{}",
                args.join(" "),
                i + 1,
                out.status,
                output_text(&out),
                self.daemons[i].log_tail(25),
                self.agent(i).log_tail(25)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Container `name`'s address on its (one) network, from `docker inspect`.
    pub fn container_ip(&self, i: usize, name: &str) -> Ipv4Addr {
        let ip = self.docker_ok(
            i,
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                name,
            ],
        );
        ip.parse()
            .unwrap_or_else(|_| panic!("address of {name} on h{}: {ip:?}", i + 1))
    }

    /// Container `name`'s EndpointID on its (one) network, from `docker inspect`.
    pub fn endpoint_id(&self, i: usize, name: &str) -> String {
        self.docker_ok(
            i,
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.EndpointID}}{{end}}",
                name,
            ],
        )
    }

    /// Host `i`'s namespace.
    pub fn host_ns(&self, i: usize) -> &str {
        self.cluster.host_ns(i)
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, daemon) in self.daemons.iter().enumerate() {
                eprintln!(
                    "--- h{} dockerd log tail ({}) ---\n{}",
                    i + 1,
                    daemon.log_path().display(),
                    daemon.log_tail(40)
                );
            }
        }
    }
}

/// The plugin test client (`plugin_client.py`): HTTP requests straight to a plugin socket.
const PLUGIN_CLIENT: &str = include_str!("plugin_client.py");

/// Runs the plugin test client from `dir` with `args`, `stdin` on its standard input; its JSON
/// output (the client must succeed).
pub fn plugin_client_in(dir: &std::path::Path, args: &[&str], stdin: &str) -> serde_json::Value {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let script = dir.join("plugin_client.py");
    std::fs::write(&script, PLUGIN_CLIENT).expect("write plugin_client.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3");
    assert!(out.status.success(), "plugin client: {}", output_text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("plugin client output: {e}: {}", output_text(&out)))
}
