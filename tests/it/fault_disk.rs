//! A full disk degrades a host's control plane, never its data plane: h2's data dir lives on a
//! small tmpfs that is filled while containers ping through h2. The ping loses nothing, writes
//! go on through the majority (h1, h3), h2 refuses writes with a clear error and keeps serving
//! reads, and once space is freed h2 catches up without a restart.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Unmounts the tmpfs on drop (lazily: an agent may still hold files open on it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).expect("create mount point");
        sh(&format!(
            "mount -t tmpfs -o size={size} tmpfs {}",
            path.display()
        ));
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = sh_output(&format!("umount -l {}", self.0.display()));
    }
}

#[test]
fn full_disk_degrades_the_control_plane_not_the_data_plane() {
    let Some(mut cluster) = cluster_with(
        "full_disk_degrades_the_control_plane_not_the_data_plane",
        "fd",
        ClusterOptions {
            hosts: 3,
            start_agents: false,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let tmpfs = Tmpfs::mount(cluster.agents[1].data_dir.clone(), "4m");
    cluster.start_agents();
    wait_for("h1 to lead", Duration::from_secs(20), || {
        (cluster.agents[1].leader_name().as_deref() == Some("h1")).then_some(())
    });

    let pair = cluster.pair_on_network("disk", "10.43.0.0/24");
    assert!(cluster.ping(&pair.c2, &pair.ip1, 2, "").status.success());
    let h2_pid = cluster.agents[1].pid();

    // 400 pings, 50 ms apart (20 s), through h2 while its disk fills and frees.
    let ping = Command::new("ip")
        .args(["netns", "exec", &pair.c1, "ping", "-n", "-q", "-i", "0.05"])
        .args(["-c", "400", "-W", "2", &pair.ip2])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping");

    let fill = tmpfs.0.join("fill");
    let _ = sh_output(&format!(
        "dd if=/dev/zero of={} bs=64k 2>/dev/null",
        fill.display()
    ));
    let filled_at = Instant::now();
    // Writes through h1 go on with h1 and h3; h2 fails to persist them and degrades (a write
    // may still fit in the WAL's last page, so keep writing until it does).
    let mut created = Vec::new();
    let mut degraded_after = None;
    for i in 0..60 {
        let name = format!("full{i}");
        cluster.agents[0].vxnet(&["network", "create", &name]);
        created.push(name);
        if cluster.agents[1].counter("storage.writable") == Some(0) {
            degraded_after = Some(filled_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let degraded_after = degraded_after.expect("h2 noticed its full disk");
    // More writes while h2 is down: the majority carries on.
    for i in 0..3 {
        let name = format!("more{i}");
        cluster.agents[0].vxnet(&["network", "create", &name]);
        created.push(name);
    }
    // h2 refuses writes with a clear error and keeps serving reads.
    let out = cluster.agents[1].cli(&["network", "create", "refused"]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a write on a full host fails: {text}"
    );
    assert!(
        text.contains("cannot write its data dir") && text.contains("No space left"),
        "clear error: {text}"
    );
    assert!(
        cluster.agents[1]
            .vxnet(&["network", "inspect", "disk"])
            .contains(&pair.c2)
    );
    assert!(cluster.agents[1].counter("storage.failures").unwrap_or(0) >= 1);
    let log = std::fs::read_to_string(&cluster.agents[1].log).unwrap_or_default();
    assert!(
        log.contains("raft storage failed"),
        "logged: {}",
        cluster.agents[1].log_tail(20)
    );

    // Space comes back: h2 catches up by itself, same process.
    std::fs::remove_file(&fill).expect("free space");
    let freed_at = Instant::now();
    wait_for("h2 to catch up", Duration::from_secs(30), || {
        let ls = cluster.agents[1].cli(&["network", "ls", "--format", "{{.Name}}"]);
        let names = String::from_utf8_lossy(&ls.stdout).to_string();
        let all = created.iter().all(|n| names.lines().any(|l| l.trim() == n));
        (all && cluster.agents[1].counter("storage.writable") == Some(1)).then_some(())
    });
    let caught_up = freed_at.elapsed();
    assert_eq!(cluster.agents[1].pid(), h2_pid, "no restart");
    assert!(cluster.agents[1].is_running());
    assert!(cluster.agents[1].counter("storage.recoveries").unwrap_or(0) >= 1);
    // And it takes writes again.
    wait_for("a write through h2", Duration::from_secs(20), || {
        cluster.agents[1]
            .cli(&["network", "create", "afterwards"])
            .status
            .success()
            .then_some(())
    });

    let out = ping.wait_with_output().expect("ping finished");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (sent, received) = ping_counts(&text);
    eprintln!(
        "full disk: degraded {degraded_after:?} after the fill ({} writes made meanwhile), \
         caught up {caught_up:?} after space was freed; ping through h2: {sent} sent, \
         {received} received",
        created.len()
    );
    assert_eq!((sent, received), (400, 400), "no packet lost: {text}");
    drop(tmpfs);
}
