//! Real Docker daemons on harness hosts, for the tests of vxnet's Docker network and IPAM driver.
//!
//! One [`DockerHost`] per host namespace:
//!
//! - a *holder* process owns a private mount namespace inside the host's network namespace:
//!   `unshare -m --propagation private nsenter --net=/run/netns/HOST sh holder.sh DIR`, which
//!   mounts a sysfs of that network namespace on `/sys` (the agent reads its links there),
//!   re-binds the cgroup hierarchies under it (runc needs them; this is why the holder does not
//!   use `ip netns exec`, whose fresh `/sys` has no cgroups), binds private directories over
//!   `/run/docker/plugins` (so a plugin socket made there is seen by this host's dockerd only),
//!   `/run/containerd` (the shims' sockets) and `/etc/docker` (dockerd's key.json), then sleeps;
//! - `dockerd` runs in the holder's mount and network namespaces (`nsenter -t HOLDER -m -n`),
//!   everything of it under the host's directory (`--data-root`, `--exec-root`, its socket,
//!   vfs storage, no iptables, no bridge) and its containers under cgroup parent
//!   `/vxnet-<id>`;
//! - an offline image `local/busybox` ([`IMAGE`]): the static busybox with its applet links and
//!   `/www/index.html` saying [`PAGE`] (so `httpd -f -p 80 -h /www` serves it), built once per
//!   process ([`crate::busybox_image::busybox_image`]) and imported into each daemon.
//!
//! The agent of the host runs in the same namespaces ([`crate::agent::AgentCmd::spawn_entering`]
//! with [`DockerHost::holder_pid`]), so its plugin socket `/run/docker/plugins/vxnet.sock` is
//! this dockerd's and the `SandboxKey` paths dockerd hands it (bind mounts in that mount
//! namespace) resolve.
//!
//! Dropping a host removes its containers (while the plugin still answers: drop it before the
//! agents), stops dockerd (SIGTERM, then SIGKILL after [`STOP_GRACE`]), kills the holder, then
//! kills whatever is left that belongs to it (containerd, shims: their command lines or working
//! directories are under the host's directory; containers: by their cgroup parent), removes the
//! cgroups and the directory. The mounts live only in the holder's namespace and die with its
//! last process. This runs on normal exit and while a panic unwinds; the holder and dockerd also
//! get `PR_SET_PDEATHSIG`, so a test process killed outright takes them with it (its
//! containers, then, are left running). The process-wide [`crate::cleanup`] (signals) knows
//! the holder, dockerd and the directory, not the containers.
//!
//! On the real host this leaves at most the empty directories `/run/docker/plugins`,
//! `/run/containerd` and `/etc/docker` (mount points need to exist).
//!
//! A host that cannot run dockerd (not installed, or no answer within [`READY_TIMEOUT`]) gives
//! an [`Unavailable`] error, which tests report as a skip; with `VXNET_REQUIRE_DOCKER=1` in the
//! environment it is an ordinary error instead.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use crate::busybox_image::busybox_image;
use crate::cleanup::register_dir;
use crate::netns::{Proc, log_tail, wait_for};

/// The daemon (Debian's `docker.io`; in /usr/sbin, which only root's PATH has).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The client to call: another `docker` (e.g. in /usr/local/bin) may come first on PATH.
pub const DOCKER: &str = "/usr/bin/docker";
/// The offline image every daemon gets.
pub const IMAGE: &str = "local/busybox";
/// What `/www/index.html` of [`IMAGE`] says.
pub const PAGE: &str = "hello from vxnet";
/// Where dockerd looks for plugin sockets (`NAME.sock` is driver `NAME`), inside the holder.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
/// How long dockerd may take to answer `docker info` before the host counts as unable to run it.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd dockerd may take to stop before it gets SIGKILL (it gives running
/// containers their stop timeout first, 10 s by default).
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// Set (to anything but `0`) to make an unavailable dockerd an error rather than a skip.
pub const REQUIRE_ENV: &str = "VXNET_REQUIRE_DOCKER";

/// The longest socket path dockerd makes under its directory (unix socket paths: 107 bytes).
const LONGEST_SOCKET: &str = "exec/containerd/containerd-debug.sock";
/// What dockerd (and its containerd, runc, shims) may run: not /usr/local, where other builds
/// of the same tools may sit.
const DAEMON_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The holder's script; `$1` is the host's directory. Writes `holder.ready` when its mounts are
/// in place.
const HOLDER_SCRIPT: &str = r#"set -e
d="$1"
mount --rbind /sys/fs/cgroup "$d/cg"
mount -t sysfs sysfs /sys
mount --rbind "$d/cg" /sys/fs/cgroup
umount -l "$d/cg"
mount --bind "$d/plugins" /run/docker/plugins
mount --bind "$d/run-containerd" /run/containerd
mount --bind "$d/etc-docker" /etc/docker
touch "$d/holder.ready"
exec sleep infinity
"#;

/// This host cannot run dockerd (the tests that need it skip, saying why).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dockerd unavailable: {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Whether [`REQUIRE_ENV`] turns "unavailable" into a failure.
fn docker_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// An [`Unavailable`] error, or a plain one when [`REQUIRE_ENV`] is set.
fn unavailable(reason: String) -> anyhow::Error {
    if docker_required() {
        anyhow!("dockerd unavailable ({REQUIRE_ENV} is set): {reason}")
    } else {
        Unavailable(reason).into()
    }
}

pub(crate) fn is_executable(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `Ok` if this machine has the binaries a [`DockerHost`] needs, else why not (an
/// [`Unavailable`] unless [`REQUIRE_ENV`] is set). [`DockerHost::start`] checks this too; call it
/// first to skip before building anything.
pub fn available() -> Result<()> {
    for (bin, package) in [(DOCKERD, "docker.io"), (DOCKER, "docker.io")] {
        if !is_executable(bin) {
            return Err(unavailable(format!(
                "{bin} is not installed (apt-get install {package})"
            )));
        }
    }
    Ok(())
}

/// `kill(pid, signal)`, ignoring failures (the process may be gone).
fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a process of ours.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// `cmd` gets SIGKILL when the thread that spawns it ends (the owner's thread: a test's).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe, the only call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Processes (other than this one) whose command line mentions a path under `dir`, or whose
/// working directory is under it: dockerd's containerd and shims.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let needle = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            cmdline.contains(&needle) || cwd.starts_with(dir)
        })
        .collect()
}

/// The directories of cgroup `name` (at the top of the hierarchy), in every mounted hierarchy:
/// `/sys/fs/cgroup/NAME` (v2) and `/sys/fs/cgroup/*/NAME` (v1, and the hybrid `unified`).
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(name)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.filter_map(|e| Some(e.ok()?.path().join(name))));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// `dir` and every cgroup below it, deepest first.
fn cgroup_tree(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_tree(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// The processes in cgroup `name` and below, in any hierarchy.
fn cgroup_pids(name: &str) -> Vec<u32> {
    let mut tree = Vec::new();
    for dir in cgroup_dirs(name) {
        cgroup_tree(&dir, &mut tree);
    }
    let mut pids: Vec<u32> = tree
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Removes cgroup `name` and its children (empty ones: call after killing their processes).
fn remove_cgroups(name: &str) {
    for dir in cgroup_dirs(name) {
        let mut tree = Vec::new();
        cgroup_tree(&dir, &mut tree);
        for d in tree {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A dockerd in a host namespace, with its holder; see the module documentation.
#[derive(Debug)]
pub struct DockerHost {
    id: String,
    netns: String,
    dir: PathBuf,
    holder: Option<Proc>,
    dockerd: Option<Proc>,
}

impl DockerHost {
    /// Starts a holder and a dockerd in host namespace `netns`, using directory `dir` (created;
    /// keep it short: dockerd makes unix sockets under it) and the cgroup parent `/vxnet-<id>`
    /// (`id` unique on the machine, e.g. the harness prefix and the host's name), and imports
    /// [`IMAGE`]. Spawn from the thread that owns the host until it is dropped (see the module
    /// documentation on PDEATHSIG).
    ///
    /// An [`Unavailable`] error if dockerd is not installed or does not answer within
    /// [`READY_TIMEOUT`]; other errors for everything else.
    pub fn start(id: &str, netns: &str, dir: &Path) -> Result<DockerHost> {
        available()?;
        let longest = dir.join(LONGEST_SOCKET);
        if longest.as_os_str().len() > 107 {
            bail!(
                "docker host directory {} is too long for dockerd's unix sockets ({} > 107 \
                 bytes): use a shorter one",
                dir.display(),
                longest.as_os_str().len()
            );
        }
        if dir.display().to_string().contains(char::is_whitespace) {
            bail!("docker host directory {} has white space", dir.display());
        }
        let image = busybox_image()?;
        let _ = std::fs::remove_dir_all(dir);
        register_dir(dir.to_path_buf());
        for sub in ["cg", "plugins", "run-containerd", "etc-docker", "cli"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        }
        // Mount points of the holder, on the real host (empty; left in place).
        for point in [PLUGIN_DIR, "/run/containerd", "/etc/docker"] {
            std::fs::create_dir_all(point).with_context(|| format!("create {point}"))?;
        }
        // From here on, dropping `host` undoes what was made.
        let mut host = DockerHost {
            id: id.to_string(),
            netns: netns.to_string(),
            dir: dir.to_path_buf(),
            holder: None,
            dockerd: None,
        };
        host.start_holder()?;
        host.start_daemon(true)?;
        host.import(image)?;
        Ok(host)
    }

    fn start_holder(&mut self) -> Result<()> {
        let script = self.dir.join("holder.sh");
        std::fs::write(&script, HOLDER_SCRIPT)
            .with_context(|| format!("write {}", script.display()))?;
        let log_path = self.dir.join("holder.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("sh")
            .arg(&script)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup holder log")?)
            .stderr(log);
        die_with_parent(&mut cmd);
        let holder = self.holder.insert(Proc::spawn(&mut cmd)?);
        let ready = self.dir.join("holder.ready");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if let Ok(Some(status)) = holder.child().try_wait() {
                bail!(
                    "the holder of {} exited ({status}): {}",
                    self.netns,
                    log_tail(&log_path, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the holder of {} did not make its mounts within 10 s: {}",
                    self.netns,
                    log_tail(&log_path, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts dockerd and waits until it answers; `first`: its failure means "unavailable".
    fn start_daemon(&mut self, first: bool) -> Result<()> {
        let holder = self.holder_pid();
        let d = &self.dir;
        let log_path = self.log_path();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        writeln!(
            log,
            "--- vxnet-testkit: dockerd starting at {started:.3} ---"
        )
        .with_context(|| format!("write {}", log_path.display()))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(holder.to_string())
            .args(["-m", "-n", DOCKERD])
            .args([
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--exec-opt=native.cgroupdriver=cgroupfs",
            ])
            .arg(format!("--cgroup-parent=/{}", self.cgroup()))
            .arg(format!("--data-root={}", d.join("data").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--host=unix://{}", self.socket().display()))
            .arg(format!("--pidfile={}", d.join("docker.pid").display()))
            .env("PATH", DAEMON_PATH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup dockerd log")?)
            .stderr(log);
        die_with_parent(&mut cmd);
        self.dockerd = Some(Proc::spawn(&mut cmd)?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = match self.dockerd.as_mut() {
                Some(dockerd) => dockerd.child().try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                let why = format!(
                    "dockerd in {} exited ({status}); its log ends:\n{}",
                    self.netns,
                    log_tail(&log_path, 15)
                );
                self.dockerd = None;
                return Err(if first {
                    unavailable(why)
                } else {
                    anyhow!(why)
                });
            }
            let info = self.docker(&["info", "--format", "{{.ServerVersion}}"]);
            if info.is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let why = format!(
                    "dockerd in {} did not answer within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.netns,
                    log_tail(&log_path, 15)
                );
                return Err(if first {
                    unavailable(why)
                } else {
                    anyhow!(why)
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn import(&self, image: &[u8]) -> Result<()> {
        let mut child = self
            .docker_command(&["import", "-", IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {DOCKER} import"))?;
        let mut stdin = child.stdin.take().context("docker import stdin")?;
        let written = stdin.write_all(image);
        drop(stdin);
        let out = child
            .wait_with_output()
            .with_context(|| format!("wait for {DOCKER} import"))?;
        if !out.status.success() || written.is_err() {
            bail!(
                "docker import of {IMAGE} into {} failed ({:?}): {}",
                self.netns,
                written.err(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The cgroup parent of this daemon's containers (without the leading `/`).
    fn cgroup(&self) -> String {
        format!("vxnet-{}", self.id)
    }

    /// The host namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// dockerd's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// dockerd's log (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The last `lines` lines of dockerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// The pid of the holder, whose mount and network namespaces dockerd (and the agent) use.
    pub fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map_or(0, Proc::pid)
    }

    /// The pid of dockerd, if it runs.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(Proc::pid)
    }

    /// Where the socket of plugin `driver` is, seen from the real host
    /// (`/run/docker/plugins/DRIVER.sock` in the holder).
    pub fn plugin_socket(&self, driver: &str) -> PathBuf {
        self.dir.join("plugins").join(format!("{driver}.sock"))
    }

    /// Waits until plugin `driver` accepts connections on its socket (dockerd retries a missing
    /// one for about 15 s before it fails a command: wait before the first one).
    pub fn wait_plugin(&self, driver: &str, timeout: Duration) -> Result<()> {
        let socket = self.plugin_socket(driver);
        wait_for(
            &format!("plugin socket {} in {}", socket.display(), self.netns),
            timeout,
            || UnixStream::connect(&socket).ok().map(drop),
        )
    }

    fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the docker client against this daemon; its output whatever the exit status.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        self.docker_command(args)
            .output()
            .with_context(|| format!("spawn {DOCKER} {}", args.join(" ")))
    }

    /// [`DockerHost::docker`], the client killed after `timeout` (exit status 124 or 137; a
    /// container it started keeps running until it ends or the host is dropped).
    pub fn docker_timeout(&self, timeout: Duration, args: &[&str]) -> Result<Output> {
        Command::new("timeout")
            .args(["-k", "2"])
            .arg(format!("{:.3}", timeout.as_secs_f64()))
            .arg(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("spawn timeout {DOCKER} {}", args.join(" ")))
    }

    /// Whether dockerd runs.
    pub fn is_running(&mut self) -> bool {
        matches!(
            self.dockerd.as_mut().map(|p| p.child().try_wait()),
            Some(Ok(None))
        )
    }

    /// Stops dockerd: SIGTERM (it stops its running containers, giving each its stop timeout,
    /// 10 s unless `docker run --stop-timeout` said otherwise: a shell or `sleep` as PID 1
    /// ignores SIGTERM), SIGKILL after [`STOP_GRACE`]; then waits (5 s) for its containerd to
    /// end, killing it if it does not.
    /// Returns how long dockerd took to exit. A no-op if dockerd does not run.
    pub fn stop(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let Some(mut dockerd) = self.dockerd.take() else {
            return Ok(Duration::ZERO);
        };
        signal(dockerd.pid(), libc::SIGTERM);
        let deadline = started + STOP_GRACE;
        let mut graceful = false;
        while Instant::now() < deadline {
            match dockerd.child().try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Ok(Some(_)) => {
                    graceful = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // Kills it if it still runs, and reaps it.
        drop(dockerd);
        let took = started.elapsed();
        let containerd = self.dir.join("exec/containerd/containerd.toml");
        let containerd_left = || {
            let needle = containerd.display().to_string();
            processes_under(&self.dir)
                .into_iter()
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                })
                .collect::<Vec<u32>>()
        };
        let gone = wait_for("containerd to exit", Duration::from_secs(5), || {
            containerd_left().is_empty().then_some(())
        });
        if gone.is_err() {
            for pid in containerd_left() {
                signal(pid, libc::SIGKILL);
            }
        }
        if !graceful {
            bail!(
                "dockerd in {} did not stop within {STOP_GRACE:?} of SIGTERM (killed)",
                self.netns
            );
        }
        Ok(took)
    }

    /// Stops dockerd ([`DockerHost::stop`]) and starts it again with the same directories and
    /// flags (containers stay stopped, as after a reboot without restart policies); waits
    /// until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_daemon(false)
    }

    /// `kill -9` of dockerd, as a crash: it cleans nothing up (its containers keep running, its
    /// containerd and shims are left to fend for themselves, its sandboxes' bind mounts stay).
    /// Returns whether it was running. Start it again with [`DockerHost::start_again`].
    pub fn kill(&mut self) -> bool {
        let Some(mut dockerd) = self.dockerd.take() else {
            return false;
        };
        let running = matches!(dockerd.child().try_wait(), Ok(None));
        signal(dockerd.pid(), libc::SIGKILL);
        // Reaps it.
        drop(dockerd);
        running
    }

    /// Starts dockerd again, with the same directories and flags, after [`DockerHost::kill`]
    /// or [`DockerHost::stop`]; waits until it answers. An error if it runs already.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("dockerd in {} runs already", self.netns);
        }
        self.start_daemon(false)
    }

    /// The processes of container `id` (its full id), found by its cgroup (the cgroupfs
    /// driver's `/vxnet-<id>/<container id>`), whether dockerd runs or not.
    pub fn container_pids(&self, id: &str) -> Vec<u32> {
        if id.is_empty() || id.contains('/') {
            return Vec::new();
        }
        cgroup_pids(&format!("{}/{id}", self.cgroup()))
    }

    /// The files under dockerd's exec-root where it bind-mounts its sandboxes' network
    /// namespaces (`EXEC/netns/*`), as paths in the holder's mount namespace.
    pub fn netns_mounts(&self) -> Vec<PathBuf> {
        let dir = self.dir.join("exec/netns");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Kills what is left: processes that use the host's directory (containerd, shims) and the
    /// processes of its containers' cgroups; then removes those cgroups.
    fn sweep(&self) {
        let cgroup = self.cgroup();
        for _ in 0..50 {
            let mut pids = processes_under(&self.dir);
            pids.extend(cgroup_pids(&cgroup));
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        remove_cgroups(&cgroup);
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        if self.is_running() {
            // Containers first, while their network plugin still answers; bounded, as a dead
            // plugin makes dockerd retry.
            let ids = self
                .docker(&["ps", "-aq"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker_timeout(Duration::from_secs(30), &args);
            }
        }
        if let Err(e) = self.stop() {
            eprintln!("docker host {}: {e:#}", self.netns);
        }
        // Kills and reaps the holder.
        self.holder = None;
        self.sweep();
        let keep_log = std::thread::panicking();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if keep_log && path == self.log_path() {
                    continue;
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(&path);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if !keep_log {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Whether the network namespace of process `pid` is namespace `netns` (`/run/netns/NETNS`).
pub fn pid_in_netns(pid: u32, netns: &str) -> Result<bool> {
    let of_pid = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("network namespace of pid {pid}"))?;
    let named = std::fs::metadata(format!("/run/netns/{netns}"))
        .with_context(|| format!("network namespace {netns}"))?;
    Ok(of_pid.dev() == named.dev() && of_pid.ino() == named.ino())
}
