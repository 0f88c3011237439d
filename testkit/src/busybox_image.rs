//! The offline image [`IMAGE`] for the Docker tests: the machine's static busybox with its applet
//! links and `/www/index.html` saying [`PAGE`], as a tar stream for `docker import -`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};

use crate::docker::{IMAGE, PAGE, is_executable};

/// Where Debian's `busybox-static` puts busybox.
const BUSYBOX: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// The static busybox of this machine.
fn busybox_binary() -> Result<&'static str> {
    BUSYBOX
        .into_iter()
        .find(|p| is_executable(p))
        .with_context(|| format!("no busybox at {BUSYBOX:?}: apt-get install busybox-static"))
}

/// Whether the ELF file `bytes` asks for a program interpreter (a dynamic executable, which
/// would not run in an image that has no libc).
fn elf_is_dynamic(bytes: &[u8]) -> Result<bool> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit little-endian ELF only (what busybox-static is on the machines we run on).
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        bail!("truncated ELF header");
    };
    let phoff = usize::try_from(phoff).context("ELF program header offset")?;
    for i in 0..usize::from(phnum) {
        let p_type = u32_at(phoff + i * usize::from(phentsize)).context("truncated ELF")?;
        // PT_INTERP
        if p_type == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes a directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the image's root filesystem in a scratch directory and returns it as a tar stream.
fn build_image() -> Result<Vec<u8>> {
    let busybox = busybox_binary()?;
    let bytes = std::fs::read(busybox).with_context(|| format!("read {busybox}"))?;
    if elf_is_dynamic(&bytes).with_context(|| format!("inspect {busybox}"))? {
        bail!("{busybox} is dynamically linked: install busybox-static (the image has no libc)");
    }
    let root =
        TempDir(std::env::temp_dir().join(format!("vxnet-busybox-rootfs-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&root.0);
    let bin = root.0.join("bin");
    for dir in [&bin, &root.0.join("www"), &root.0.join("etc")] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = root.0.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    let target = bin.join("busybox");
    std::fs::write(&target, &bytes).with_context(|| format!("write {}", target.display()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", target.display()))?;
    let list = Command::new(busybox)
        .arg("--list")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{busybox} --list"))?;
    if !list.status.success() {
        bail!(
            "{busybox} --list failed: {}",
            String::from_utf8_lossy(&list.stderr)
        );
    }
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    let mut count = 0;
    for applet in applets.split_whitespace() {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = bin.join(applet);
        std::os::unix::fs::symlink("busybox", &link)
            .with_context(|| format!("symlink {}", link.display()))?;
        count += 1;
    }
    for needed in ["sh", "httpd", "wget", "ping", "sleep", "cat", "ip"] {
        if !bin.join(needed).exists() {
            bail!("{busybox} has no {needed} applet ({count} applets)");
        }
    }
    let index = root.0.join("www/index.html");
    std::fs::write(&index, format!("{PAGE}\n"))
        .with_context(|| format!("write {}", index.display()))?;
    let tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root.0)
        .args(["-c", "."])
        .stdin(Stdio::null())
        .output()
        .context("spawn tar")?;
    if !tar.status.success() {
        bail!(
            "tar of the image rootfs failed: {}",
            String::from_utf8_lossy(&tar.stderr)
        );
    }
    Ok(tar.stdout)
}

static IMAGE_TAR: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();

/// The tar stream of [`IMAGE`]'s root filesystem (for `docker import -`), built on first use and
/// kept in memory for the rest of the process (about 2 MB; nothing stays on disk).
pub fn busybox_image() -> Result<&'static [u8]> {
    IMAGE_TAR
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow!("building the {IMAGE} image: {e}"))
}
