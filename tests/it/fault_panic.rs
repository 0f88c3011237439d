//! No zombie agent: a panic on any thread (the Raft driver thread, a tokio task) ends the whole
//! process with status 70 and a clear log line, instead of leaving an agent that serves stale
//! reads. Needs the `fault-injection` feature (deploy/test.sh turns it on).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::support::*;

fn panic_ends_the_process(tag: &str, site: &str, thread: &str) {
    let mut cluster = Cluster::new(
        tag,
        ClusterOptions {
            hosts: 1,
            start_agents: false,
            ..ClusterOptions::default()
        },
    );
    let agent = &mut cluster.agents[0];
    agent.args.extend([
        "--fault-panic".to_string(),
        site.to_string(),
        "--fault-after-ms".to_string(),
        "2500".to_string(),
    ]);
    agent.start();
    cluster.wait_api(0);
    cluster.agents[0].vxnet(&["network", "create", "--subnet", "10.44.0.0/24", "p"]);
    let started = Instant::now();
    let status = wait_for("the agent to exit", Duration::from_secs(15), || {
        cluster.agents[0].exit_status()
    });
    let log = std::fs::read_to_string(&cluster.agents[0].log).unwrap_or_default();
    eprintln!(
        "panic at {site}: exit status {:?} (signal {:?}) {:?} after the check started",
        status.code(),
        status.signal(),
        started.elapsed()
    );
    assert_eq!(status.code(), Some(70), "log: {log}");
    assert!(
        log.contains("fatal: thread panicked") && log.contains(thread),
        "clear message naming the thread: {log}"
    );
    // Nothing answers on the API any more: no half-alive agent.
    assert!(!cluster.agents[0].cli(&["network", "ls"]).status.success());
}

#[test]
fn panic_on_the_raft_thread_ends_the_process() {
    if !require_root("panic_on_the_raft_thread_ends_the_process") {
        return;
    }
    panic_ends_the_process("fpr", "raft", "thread=\"vxnet-raft\"");
}

#[test]
fn panic_in_a_runtime_task_ends_the_process() {
    if !require_root("panic_in_a_runtime_task_ends_the_process") {
        return;
    }
    panic_ends_the_process("fpt", "reconcile", "thread=\"tokio-rt-worker\"");
}
