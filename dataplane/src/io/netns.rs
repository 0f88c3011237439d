//! Network namespaces: handles to existing ones (containers), running code inside one, and
//! named namespaces (`/run/netns/NAME`, compatible with `ip netns`) for tests and tools.
//!
//! Entering a namespace is per thread (`setns(CLONE_NEWNET)` only moves the calling thread), so
//! [`NetnsHandle::run`] does its work on a short-lived dedicated thread and never disturbs the
//! caller's threads or runtime.

use std::ffi::CString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{IoError, Result};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open network namespace (an fd on an nsfs file). Keeps the namespace alive while open.
#[derive(Debug)]
pub struct NetnsHandle {
    fd: OwnedFd,
    desc: String,
}

impl NetnsHandle {
    /// Opens a namespace from `spec`: a PID (`1234` → `/proc/1234/ns/net`), a path (anything with
    /// a `/`), or a name under `/run/netns`. Fails with [`IoError::NotFound`] if it does not exist
    /// and [`IoError::Invalid`] if the file is not a network namespace.
    pub fn open(spec: &str) -> Result<NetnsHandle> {
        if spec.is_empty() {
            return Err(IoError::Invalid("empty network namespace spec".into()));
        }
        let path: PathBuf = if spec.bytes().all(|b| b.is_ascii_digit()) {
            format!("/proc/{spec}/ns/net").into()
        } else if spec.contains('/') {
            spec.into()
        } else if spec == "." || spec == ".." {
            return Err(IoError::Invalid(format!("bad namespace name {spec:?}")));
        } else {
            Path::new(NETNS_RUN_DIR).join(spec)
        };
        Self::open_path(&path, spec)
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<NetnsHandle> {
        Self::open_path(Path::new("/proc/thread-self/ns/net"), "current")
    }

    /// Creates a new, unnamed namespace, alive as long as this handle (or a device or process in
    /// it) is. Nothing is mounted, so nothing is left behind if the process dies.
    pub fn create_anonymous() -> Result<NetnsHandle> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare takes flags only; CLONE_NEWNET moves just this thread, which
                // exits right after.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(IoError::last_os("unshare(CLONE_NEWNET)"));
                }
                Self::open_path(Path::new("/proc/thread-self/ns/net"), "anonymous")
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn open_path(path: &Path, desc: &str) -> Result<NetnsHandle> {
        let fd = match File::open(path) {
            Ok(file) => OwnedFd::from(file),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(IoError::NotFound(format!(
                    "network namespace {desc:?} ({} does not exist)",
                    path.display()
                )));
            }
            Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(IoError::Invalid(format!("namespace path {path:?}: {err}")));
            }
            Err(err) => {
                return Err(IoError::os(
                    format!("open network namespace {}", path.display()),
                    err,
                ));
            }
        };
        // Reject a regular file or another namespace type early, with a clear message, rather
        // than with a confusing EINVAL from setns later.
        // SAFETY: NS_GET_NSTYPE takes no argument and only inspects the fd.
        let ty = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if ty != libc::CLONE_NEWNET {
            return Err(IoError::Invalid(format!(
                "{} is not a network namespace",
                path.display()
            )));
        }
        Ok(NetnsHandle {
            fd,
            desc: format!("{desc} ({})", path.display()),
        })
    }

    /// A human-readable description (spec and path), for logs and errors.
    pub fn description(&self) -> &str {
        &self.desc
    }

    /// Duplicates the handle (a new fd on the same namespace).
    pub fn try_clone(&self) -> Result<NetnsHandle> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| IoError::os(format!("dup namespace fd of {}", self.desc), e))?;
        Ok(NetnsHandle {
            fd,
            desc: self.desc.clone(),
        })
    }

    /// The namespace's inode number: equal for two handles on the same namespace.
    pub fn inode(&self) -> Result<u64> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| IoError::os(format!("dup namespace fd of {}", self.desc), e))?;
        File::from(fd)
            .metadata()
            .map(|m| m.ino())
            .map_err(|e| IoError::os(format!("fstat {}", self.desc), e))
    }

    /// Moves the calling thread into this namespace. Only for threads made for that purpose.
    pub(crate) fn enter_current_thread(&self) -> Result<()> {
        // SAFETY: setns takes an fd and flags; CLONE_NEWNET affects only the calling thread.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(IoError::last_os(format!("setns into {}", self.desc)));
        }
        Ok(())
    }

    /// Runs `f` on a dedicated thread inside this namespace and returns its result. Sockets,
    /// TAPs and netlink connections created by `f` belong to this namespace (and keep working
    /// after the thread ends). A panic in `f` is propagated to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("vxnet-netns".into())
                .spawn_scoped(s, || {
                    self.enter_current_thread()?;
                    Ok(f())
                })
                .map_err(|e| IoError::os("spawn namespace thread", e))?
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl AsFd for NetnsHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NetnsHandle {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A named namespace (`/run/netns/NAME`) that this process created and deletes when dropped
/// (also while unwinding from a panic): the guard tests need.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
    handle: NetnsHandle,
}

impl NamedNetns {
    /// Creates `/run/netns/NAME` (like `ip netns add NAME`); fails with
    /// [`IoError::AlreadyExists`] if it is taken.
    pub fn create(name: &str) -> Result<NamedNetns> {
        add(name)?;
        match NetnsHandle::open(name) {
            Ok(handle) => Ok(NamedNetns {
                name: name.to_owned(),
                handle,
            }),
            Err(e) => {
                let _ = del(name);
                Err(e)
            }
        }
    }

    /// The namespace's name under `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle on the namespace.
    pub fn handle(&self) -> &NetnsHandle {
        &self.handle
    }

    /// Deletes the namespace now, reporting errors that drop would swallow.
    pub fn delete(mut self) -> Result<()> {
        let name = std::mem::take(&mut self.name);
        del(&name)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            // Best effort: a failure here must not turn a test failure into an abort.
            let _ = del(&self.name);
        }
    }
}

/// Serialises the one-time `/run/netns` mount setup between threads of this process.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// Makes `/run/netns` exist and be a shared mount point, as `ip netns add` does, so namespace
/// mounts made here show up in other mount namespaces (e.g. a containerised agent's).
fn prepare_run_dir() -> Result<()> {
    let _guard = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    let dir = c"/run/netns";
    match DirBuilder::new().mode(0o755).create(NETNS_RUN_DIR) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(IoError::os("mkdir /run/netns", err)),
    }
    let mut bound = false;
    loop {
        // SAFETY: all strings are NUL-terminated (or null where the kernel allows it).
        let r = unsafe {
            libc::mount(
                c"".as_ptr(),
                dir.as_ptr(),
                c"none".as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if r == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // EINVAL: not a mount point yet; bind it onto itself once, then retry.
        if err.raw_os_error() != Some(libc::EINVAL) || bound {
            return Err(IoError::os("make /run/netns a shared mount", err));
        }
        // SAFETY: all strings are NUL-terminated (or null where the kernel allows it).
        let r = unsafe {
            libc::mount(
                dir.as_ptr(),
                dir.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(IoError::last_os("bind-mount /run/netns onto itself"));
        }
        bound = true;
    }
}

fn named_path(name: &str) -> Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(IoError::Invalid(format!("bad namespace name {name:?}")));
    }
    CString::new(format!("{NETNS_RUN_DIR}/{name}"))
        .map_err(|_| IoError::Invalid(format!("bad namespace name {name:?}")))
}

/// Creates the named namespace `/run/netns/NAME` (like `ip netns add`), without forking: a
/// short-lived thread unshares its network namespace and bind-mounts it there.
pub fn add(name: &str) -> Result<()> {
    let path = named_path(name)?;
    prepare_run_dir()?;
    // The file only has to exist, as the mount point; mode 0 as `ip netns add` makes it.
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(format!("{NETNS_RUN_DIR}/{name}"));
    match created {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(IoError::AlreadyExists(format!("network namespace {name}")));
        }
        Err(err) => return Err(IoError::os(format!("create {NETNS_RUN_DIR}/{name}"), err)),
    }

    let res = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare takes flags only; CLONE_NEWNET moves just this thread, which exits
            // right after the mount.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(IoError::last_os("unshare(CLONE_NEWNET)"));
            }
            // SAFETY: all strings are NUL-terminated (or null where the kernel allows it).
            let r = unsafe {
                libc::mount(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    path.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if r != 0 {
                return Err(IoError::last_os(format!(
                    "bind-mount namespace onto {NETNS_RUN_DIR}/{name}"
                )));
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if res.is_err() {
        let _ = std::fs::remove_file(format!("{NETNS_RUN_DIR}/{name}"));
    }
    res
}

/// Deletes the named namespace (like `ip netns del`); succeeds if it does not exist. The
/// namespace itself lives on while a process, fd or device still holds it.
pub fn del(name: &str) -> Result<()> {
    let path = named_path(name)?;
    // SAFETY: path is a valid NUL-terminated string.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = std::io::Error::last_os_error();
        // ENOENT: already gone; EINVAL: not a mount point (half-created), still unlink it.
        if !matches!(err.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) {
            return Err(IoError::os(format!("umount {NETNS_RUN_DIR}/{name}"), err));
        }
    }
    match std::fs::remove_file(format!("{NETNS_RUN_DIR}/{name}")) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(IoError::os(format!("unlink {NETNS_RUN_DIR}/{name}"), err))
        }
        _ => Ok(()),
    }
}
