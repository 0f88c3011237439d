//! The data plane does not depend on Raft: killing the leader (kill -9) in the middle of a ping
//! between containers on the two other hosts loses no packet, and the leader rejoins on restart.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Three hosts, h1 leads; containers on h2 and h3 ping each other every 50 ms (200 pings) while
/// the leader is killed with SIGKILL after ~3 s: no echo is lost. Then h1 restarts and rejoins.
#[test]
fn data_plane_survives_leader_kill() {
    let started = Instant::now();
    let Some(mut cluster) = cluster_for("data_plane_survives_leader_kill", "rd", 3) else {
        return;
    };
    wait_for("h1 to lead", Duration::from_secs(20), || {
        (cluster.agents[1].leader_name().as_deref() == Some("h1")).then_some(())
    });
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.34.0.0/24", "blue"]);
    let c2 = cluster.container();
    let c3 = cluster.container();
    cluster.agents[1].vxnet(&["network", "connect", "blue", &c2]);
    cluster.agents[2].vxnet(&["network", "connect", "blue", &c3]);
    let ip3 = cluster.ipv4_of(&c3, "eth0");
    let ip2 = cluster.ipv4_of(&c2, "eth0");
    cluster.wait_ping("ping c2 → c3", &c2, &ip3);
    // Warm both ARP caches so the measured ping starts on a settled path.
    assert!(cluster.ping(&c3, &ip2, 2, "").status.success());

    let ping = Command::new("ip")
        .args([
            "netns", "exec", &c2, "ping", "-n", "-q", "-i", "0.05", "-c", "200",
        ])
        .args(["-W", "2", &ip3])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping");
    std::thread::sleep(Duration::from_secs(3));
    let leader_pid = cluster.agents[0].pid();
    cluster.agents[0].kill();
    let killed_at = Instant::now();
    assert!(
        !cluster.agents[0].is_running(),
        "h1 (pid {leader_pid:?}) is dead"
    );

    // Meanwhile the survivors elect a new leader among themselves.
    let new_leader = wait_for("a new leader", Duration::from_secs(15), || {
        cluster.agents[1].leader_name().filter(|l| l != "h1")
    });
    let election = killed_at.elapsed();

    let out = ping.wait_with_output().expect("ping finished");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (sent, received) = ping_counts(&text);
    eprintln!(
        "ping across the leader kill: {sent} sent, {received} received; new leader {new_leader} \
         after {election:?}"
    );
    assert_eq!(sent, 200, "{text}");
    assert_eq!(
        received, 200,
        "no packet lost while Raft had no leader: {text}"
    );
    assert!(out.status.success(), "{text}");

    // Writes work again with two of three, and the old leader rejoins from its data dir.
    let c4 = cluster.container();
    cluster.agents[2].vxnet(&["network", "connect", "blue", &c4]);
    cluster.agents[0].restart();
    cluster.wait_api(0);
    wait_for(
        "h1 to see 3 reachable members",
        Duration::from_secs(30),
        || {
            let rows = cluster.agents[0].members().expect("members JSON");
            (rows.len() == 3 && rows.iter().all(|m| m["reachable"] == true)).then_some(())
        },
    );
    // h1 caught up with the write made while it was down.
    wait_for("h1 to learn c4's endpoint", Duration::from_secs(15), || {
        cluster.agents[0]
            .vxnet(&["network", "inspect", "blue"])
            .contains(&c4)
            .then_some(())
    });
    assert!(cluster.ping(&c2, &ip3, 3, "").status.success());
    eprintln!("total {:?}", started.elapsed());
}
