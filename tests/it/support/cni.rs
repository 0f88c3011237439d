//! The CNI plugin `vxnet-cni` as runtimes use it: installed as `vxnet` in a CNI bin directory,
//! executed in a host's network namespace with the `CNI_*` environment and the network
//! configuration on stdin ([`invoke`]); and podman with its CNI backend on a harness host
//! ([`PodmanHost`]), set up as the shared notes on this machine say (`containers.conf` with
//! `network_backend = "cni"`, vfs storage, run through `nsenter --net=/run/netns/HOST`).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vxnet_testkit::busybox_image::busybox_image;
use vxnet_testkit::cleanup::{register_dir, register_netns, unregister_netns};
use vxnet_testkit::docker::{IMAGE, processes_under};

use super::{must, output_text};

/// The reference plugins (Debian's `containernetworking-plugins`).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The name runtimes find the plugin by: the `type` of its network configuration.
pub const PLUGIN_TYPE: &str = "vxnet";
/// How long one plugin invocation may take before the test fails (and kills it).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// What every plugin gets as `PATH` (the reference portmap needs `iptables`, in /usr/sbin).
const PLUGIN_PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The CNI versions the plugin supports, as VERSION must list them.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// The `vxnet-cni` binary of this build. The path is taken at compile time when the binary
/// exists (`option_env!`, so that this test binary builds before the plugin does); without it
/// the tests that need the plugin fail, saying so.
pub fn plugin_binary() -> PathBuf {
    let Some(path) = option_env!("CARGO_BIN_EXE_vxnet-cni") else {
        panic!(
            "no vxnet-cni binary in this build (CARGO_BIN_EXE_vxnet-cni is not set): the root \
             package has no [[bin]] vxnet-cni"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "vxnet-cni binary {} is missing",
        path.display()
    );
    path
}

/// Installs the plugin as a runtime's administrator would: copied into `dir` (created) under
/// the name [`PLUGIN_TYPE`]. Returns the installed file.
pub fn install_plugin(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let installed = dir.join(PLUGIN_TYPE);
    std::fs::copy(plugin_binary(), &installed)
        .unwrap_or_else(|e| panic!("copy vxnet-cni to {}: {e}", installed.display()));
    installed
}

/// A network configuration for the plugin: network `network` through the agent API `socket`.
pub fn netconf(version: &str, name: &str, network: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": PLUGIN_TYPE,
        "network": network,
        "socket": socket.display().to_string(),
    })
}

/// `conf` with `prevResult` set (CHECK, DEL, and the next plugin of a chain).
pub fn with_prev_result(conf: &Value, prev: &Value) -> Value {
    let mut conf = conf.clone();
    conf["prevResult"] = prev.clone();
    conf
}

/// A random container ID, 64 hex digits (what podman and containerd make).
pub fn container_id() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("getrandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one plugin invocation did.
#[derive(Debug)]
pub struct CniOutput {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

impl CniOutput {
    fn describe(&self) -> String {
        format!(
            "{}: exit {} after {:.1} ms\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            self.elapsed.as_secs_f64() * 1e3,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON document ({e}); {}", self.describe())
        })
    }

    /// Requires success (exit 0) and a JSON result on stdout; returns it.
    pub fn ok_json(&self) -> Value {
        assert!(
            self.status.success(),
            "expected success; {}",
            self.describe()
        );
        self.json()
    }

    /// Requires success (exit 0) with nothing on stdout (DEL, CHECK, GC, STATUS).
    pub fn ok_empty(&self) {
        assert!(
            self.status.success(),
            "expected success; {}",
            self.describe()
        );
        assert!(
            self.stdout.trim().is_empty(),
            "expected an empty stdout; {}",
            self.describe()
        );
    }

    /// Requires a CNI error: a non-zero exit and `{"cniVersion", "code", "msg"[, "details"]}`
    /// on stdout. Returns the error object.
    pub fn error(&self) -> Value {
        assert!(
            !self.status.success(),
            "expected a CNI error (non-zero exit); {}",
            self.describe()
        );
        let err = self.json();
        assert!(
            err["code"].as_u64().is_some_and(|c| c > 0),
            "a CNI error has a positive numeric \"code\"; {}",
            self.describe()
        );
        assert!(
            err["msg"].as_str().is_some_and(|m| !m.trim().is_empty()),
            "a CNI error has a \"msg\"; {}",
            self.describe()
        );
        assert!(
            err["cniVersion"].is_string(),
            "a CNI error has a \"cniVersion\"; {}",
            self.describe()
        );
        if let Some(details) = err.get("details") {
            assert!(
                details.is_string(),
                "\"details\" is a string; {}",
                self.describe()
            );
        }
        err
    }

    /// [`CniOutput::error`], returning its code.
    pub fn error_code(&self) -> u64 {
        self.error()["code"].as_u64().unwrap_or(0)
    }

    /// One line for logs: exit status, code and message of an error.
    pub fn summary(&self) -> String {
        let v: Option<Value> = serde_json::from_str(&self.stdout).ok();
        match v {
            Some(v) if v.get("code").is_some() => format!(
                "exit {}, code {}, msg {:?}, details {:?}",
                self.status.code().unwrap_or(-1),
                v["code"],
                v["msg"].as_str().unwrap_or(""),
                v["details"].as_str().unwrap_or("")
            ),
            _ => format!(
                "exit {}, stdout {:?}, stderr {:?}",
                self.status.code().unwrap_or(-1),
                self.stdout.trim(),
                self.stderr.trim()
            ),
        }
    }
}

/// Runs CNI plugin `plugin` as a runtime does: in the network namespace `/run/netns/HOST_NS`
/// (entered with setns(2) before exec, as a runtime runs in its host's namespace), with exactly
/// the environment `env` (plus `PATH`) and `stdin` on its standard input. Times it from spawn
/// to exit; kills it (and fails) after [`PLUGIN_TIMEOUT`].
pub fn invoke(
    what: &str,
    host_ns: &str,
    plugin: &Path,
    env: &[(&str, String)],
    stdin: &str,
) -> CniOutput {
    let netns = CString::new(format!("/run/netns/{host_ns}")).expect("netns path");
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", PLUGIN_PATH_ENV)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls (open, setns, close) on a
    // C string allocated before the fork; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn {} in {host_ns}: {e}", plugin.display()));
    let pid = child.id();
    let mut input = child.stdin.take().expect("plugin stdin");
    // A plugin may exit without reading (VERSION): a broken pipe is its business.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send((out, start.elapsed()));
    });
    let (out, elapsed) = match rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok((out, elapsed)) => (out.unwrap_or_else(|e| panic!("{what}: wait: {e}")), elapsed),
        Err(_) => {
            // SAFETY: kill(2) of our own child, which has not been reaped (no answer yet).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!(
                "{what}: {} did not exit within {PLUGIN_TIMEOUT:?}",
                plugin.display()
            );
        }
    };
    CniOutput {
        what: what.to_string(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

/// The `CNI_*` environment of one call about one container.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`: `/run/netns/NAME`.
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` (empty: not set).
    pub args: String,
    /// `CNI_PATH`.
    pub path: String,
}

impl Attachment {
    /// Container namespace `ns` (`/run/netns/NS`) as `eth0`, a fresh container ID, no
    /// `CNI_ARGS`, `CNI_PATH` = `cni_bin` then the reference plugins.
    pub fn new(ns: &str, cni_bin: &Path) -> Attachment {
        Attachment {
            container_id: container_id(),
            netns: format!("/run/netns/{ns}"),
            ifname: "eth0".into(),
            args: String::new(),
            path: format!("{}:{REFERENCE_PLUGINS}", cni_bin.display()),
        }
    }

    /// The environment for `command`.
    pub fn env(&self, command: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_PATH", self.path.clone()),
        ];
        if !self.args.is_empty() {
            env.push(("CNI_ARGS", self.args.clone()));
        }
        env
    }
}

/// podman (CNI backend) on one harness host; see the module documentation. Everything of it
/// lives under its directory. Dropping it removes its containers (while the agents still
/// answer the plugin's DEL: drop it before the cluster), the namespaces podman made for them,
/// whatever of podman still runs or is mounted under the directory, the directory, and the
/// CNI result cache entries of its network.
#[derive(Debug)]
pub struct PodmanHost {
    /// The host namespace.
    pub netns: String,
    pub dir: PathBuf,
    /// The podman (and CNI) network name.
    pub network: String,
    /// Namespaces podman made for containers (`netns-<uuid>`), to delete if they outlive it.
    sandboxes: BTreeSet<String>,
}

/// podman's binary (Debian's package).
pub const PODMAN: &str = "/usr/bin/podman";

/// Why podman cannot run here, if it cannot (the podman tests skip, saying so).
pub fn podman_unavailable() -> Option<String> {
    for (path, package) in [
        (PODMAN, "podman"),
        ("/usr/bin/conmon", "conmon"),
        ("/usr/sbin/runc", "runc"),
    ] {
        if !Path::new(path).exists() {
            return Some(format!(
                "{path} is not installed (apt-get install --no-install-recommends {package})"
            ));
        }
    }
    None
}

/// Mount points (as this process sees them) at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
}

impl PodmanHost {
    /// Sets up podman for host namespace `netns` in `dir` (created; removed on drop and by the
    /// harness's signal cleanup): `containers.conf` (CNI backend with plugin directories
    /// `cni_bin` and the reference plugins, cgroupfs, runc, file events), `storage.conf` (vfs),
    /// a conflist for podman network `network` = the plugin on vxnet network `vxnet_network`
    /// through the agent API `socket`; imports [`IMAGE`].
    pub fn start(
        netns: &str,
        dir: &Path,
        cni_bin: &Path,
        network: &str,
        vxnet_network: &str,
        socket: &Path,
    ) -> PodmanHost {
        let _ = std::fs::remove_dir_all(dir);
        register_dir(dir.to_path_buf());
        for sub in ["podman", "cni-conf"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create podman dirs");
        }
        let d = dir.display();
        let containers_conf = format!(
            r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
netns = "private"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/podman/events.log"
runtime = "runc"
tmp_dir = "{d}/podman/tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{}", "{REFERENCE_PLUGINS}"]
network_config_dir = "{d}/cni-conf"
"#,
            cni_bin.display()
        );
        let storage_conf = format!(
            r#"[storage]
driver = "vfs"
runroot = "{d}/podman/run"
graphroot = "{d}/podman/root"
"#
        );
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{
                "type": PLUGIN_TYPE,
                "network": vxnet_network,
                "socket": socket.display().to_string(),
            }],
        });
        std::fs::write(dir.join("containers.conf"), containers_conf).expect("containers.conf");
        std::fs::write(dir.join("storage.conf"), storage_conf).expect("storage.conf");
        std::fs::write(
            dir.join("cni-conf").join(format!("{network}.conflist")),
            serde_json::to_string_pretty(&conflist).expect("conflist"),
        )
        .expect("write conflist");
        let host = PodmanHost {
            netns: netns.to_string(),
            dir: dir.to_path_buf(),
            network: network.to_string(),
            sandboxes: BTreeSet::new(),
        };
        let image = must(busybox_image());
        let mut child = host
            .command(Duration::from_secs(120), &["import", "-", IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn podman import");
        let mut stdin = child.stdin.take().expect("podman import stdin");
        let written = stdin.write_all(image);
        drop(stdin);
        let out = child.wait_with_output().expect("podman import");
        assert!(
            out.status.success() && written.is_ok(),
            "podman import {IMAGE} in {netns}: {written:?} {}",
            output_text(&out)
        );
        host
    }

    /// `timeout -k 5 T nsenter --net=/run/netns/HOST podman ARGS` with this host's
    /// configuration.
    fn command(&self, timeout: Duration, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5"])
            .arg(format!("{:.0}", timeout.as_secs_f64()))
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(PODMAN)
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("PATH", PLUGIN_PATH_ENV)
            .stdin(Stdio::null());
        cmd
    }

    /// `podman ARGS` (killed after two minutes); its output whatever the status.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.command(Duration::from_secs(120), args)
            .output()
            .unwrap_or_else(|e| panic!("spawn podman {}: {e}", args.join(" ")))
    }

    /// `podman ARGS` that must succeed; its stdout, trimmed.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {} in {} failed ({}): {}",
            args.join(" "),
            self.netns,
            out.status,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The network namespace podman made for container `name` (`/run/netns/netns-…`),
    /// remembered (and registered with the harness's cleanup) so that it is deleted should it
    /// outlive the container.
    pub fn sandbox_of(&mut self, name: &str) -> String {
        let key = self.podman_ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name]);
        self.remember_sandbox(&key);
        key
    }

    /// Remembers sandbox path `key` if it is a namespace podman made (`/run/netns/netns-*`).
    pub fn remember_sandbox(&mut self, key: &str) {
        let name = key
            .strip_prefix("/run/netns/")
            .or_else(|| key.strip_prefix("/var/run/netns/"));
        if let Some(name) = name.filter(|n| n.starts_with("netns-") && !n.contains('/'))
            && self.sandboxes.insert(name.to_string())
        {
            register_netns(name);
        }
    }

    /// Container `name`'s address on this host's network, from `podman inspect`.
    pub fn container_ip(&self, name: &str) -> String {
        self.podman_ok(&[
            "inspect",
            "-f",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.network
            ),
            name,
        ])
    }
}

impl Drop for PodmanHost {
    fn drop(&mut self) {
        // The sandboxes of whatever podman still knows, then its containers (DEL through the
        // plugin: the agents must still run).
        let ids = self.podman(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let out = self.podman(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", id]);
            let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
            self.remember_sandbox(&key);
        }
        let rm = self.podman(&["rm", "-fa", "-t", "0"]);
        if !rm.status.success() {
            eprintln!("podman rm -fa in {}: {}", self.netns, output_text(&rm));
        }
        // What podman left: namespaces (and what runs in them), conmon, mounts.
        for name in std::mem::take(&mut self.sandboxes) {
            if Path::new("/run/netns").join(&name).exists() {
                eprintln!(
                    "podman in {} left namespace {name}: deleting it",
                    self.netns
                );
                vxnet_testkit::netns::del_netns(&name);
            } else {
                unregister_netns(&name);
            }
        }
        for pid in processes_under(&self.dir) {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) of a process running from this host's podman directory.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        for point in mounts_under(&self.dir) {
            let _ = Command::new("umount")
                .args(["-l", &point])
                .stderr(Stdio::null())
                .status();
        }
        // libcni's result cache of this network's attachments (podman's DEL removes them).
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
            let prefix = format!("{}-", self.network);
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    eprintln!(
                        "podman in {} left CNI cache entry {}: removing it",
                        self.netns,
                        entry.path().display()
                    );
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if std::thread::panicking() {
            let events = self.dir.join("podman/events.log");
            eprintln!(
                "--- podman events on {} ---\n{}",
                self.netns,
                vxnet_testkit::netns::log_tail(&events, 20)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
