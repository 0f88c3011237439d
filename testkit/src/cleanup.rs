//! A process-wide registry of what a harness made (namespaces, processes, directories), emptied
//! on normal exit ([`CleanupGuard`]), on error (call [`cleanup`]), on panic (the guard unwinds)
//! and on SIGINT/SIGTERM/SIGHUP ([`install_signal_handlers`]). An owner that removes its own
//! namespaces earlier (a test's cluster, on drop) does so with [`crate::netns::del_netns`],
//! which also takes them off the registry: tests in one process never clean up each other's.

use std::io::Read as _;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Result, bail};

struct Registry {
    namespaces: Vec<String>,
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
    done: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
    done: false,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic elsewhere must not stop the cleanup.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a namespace to delete. Registered before it is created, so a half-made one goes too;
/// one registered after cleanup has run (a race with a signal) is deleted at once.
pub fn register_netns(name: &str) {
    let mut r = registry();
    r.namespaces.push(name.to_string());
    if r.done {
        drop(r);
        cleanup();
    }
}

/// Forgets a namespace that its owner deleted.
pub fn unregister_netns(name: &str) {
    registry().namespaces.retain(|n| n != name);
}

/// Records a child process to kill (and reap) on cleanup.
pub fn register_pid(pid: u32) {
    registry().pids.push(pid);
}

/// Forgets a child that its owner killed and reaped, so that cleanup cannot hit a process that
/// later got the same pid.
pub fn unregister_pid(pid: u32) {
    registry().pids.retain(|&p| p != pid);
}

/// Records a directory to remove on cleanup.
pub fn register_dir(dir: PathBuf) {
    registry().dirs.push(dir);
}

fn kill_pid(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a pid we spawned ourselves; it has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Kills what we started (and reaps it, for children whose handle was dropped), deletes our
/// namespaces (and any process still in them: all ours) and our directories. Idempotent; holds
/// the lock throughout so that concurrent callers (a signal during an error exit) wait for it.
pub fn cleanup() {
    let mut r = registry();
    r.done = true;
    for pid in r.pids.drain(..) {
        kill_pid(pid);
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: waitpid on a pid we spawned and just killed; a null status is allowed.
            // Not our child (any more): it fails at once with ECHILD.
            unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    let namespaces: Vec<String> = r.namespaces.drain(..).collect();
    for ns in namespaces.iter().rev() {
        remove_netns(ns);
    }
    for dir in r.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Kills the processes left in namespace `ns` (all ours) and deletes it; quiet if it is gone.
pub(crate) fn remove_netns(ns: &str) {
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
    // `ip netns exec NS` bind-mounts files of /etc/netns/NS (the agents write a sandbox's
    // resolv.conf there; tests may give a host one): they go with the namespace.
    if !ns.is_empty() && !ns.contains('/') {
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(ns));
    }
}

/// Runs [`cleanup`] when dropped: at the end of `main`'s scope or while a panic unwinds.
#[derive(Debug)]
pub struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // Signal numbers fit a byte (SIGHUP, SIGINT, SIGTERM are 1, 2, 15).
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local byte.
        unsafe {
            libc::write(fd, (&raw const byte).cast(), 1);
        }
    }
}

/// SIGINT/SIGTERM/SIGHUP → a byte on a pipe → a thread calls `announce(signal)` (which says
/// what happens and returns the exit code), runs [`cleanup`] and exits. A handler rather than
/// blocked signals, so that the processes we spawn get default dispositions back at exec.
pub fn install_signal_handlers(
    announce: impl FnOnce(libc::c_int) -> i32 + Send + 'static,
) -> Result<()> {
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
            let code = announce(libc::c_int::from(byte[0]));
            cleanup();
            std::process::exit(code);
        }
    });
    Ok(())
}
