//! Joining a cluster that speaks mutual TLS: what `--bootstrap` writes (the CA, this host's key
//! and certificate, owner-only modes), the join token, and every way a 4th agent is refused
//! (no token, a wrong secret, a token of another cluster, a rotated-out token, the data dir of a
//! removed host): each within 5 s, with a clear message and exit 78, while the cluster keeps
//! committing writes; then the current token joins.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::writer::{Writer, assert_writes_ok};
use crate::support::*;
use vxnet_controlplane::transport::pki::{cert_digest, certs_from_pem};
use vxnet_controlplane::transport::token::JoinToken;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Starts agent `i` and waits for it to end: its exit code, how long it ran, its log.
pub(crate) fn run_until_exit(
    cluster: &mut Cluster,
    i: usize,
    limit: Duration,
) -> (Option<i32>, Duration, String) {
    let t = Instant::now();
    cluster.agents[i].start();
    let status = wait_for(
        &format!("{} to give up", cluster.agents[i].name),
        limit,
        || cluster.agents[i].exit_status(),
    );
    let log = std::fs::read_to_string(&cluster.agents[i].log).unwrap_or_default();
    (status.code(), t.elapsed(), log)
}

/// Points an agent at another data dir.
fn set_data_dir(agent: &mut Agent, dir: std::path::PathBuf) {
    if let Some(at) = agent.args.iter().position(|a| a == "--data-dir") {
        agent.args[at + 1] = dir.display().to_string();
    }
    agent.data_dir = dir;
}

/// Sets `--token VALUE` (or removes it) in an agent's command line.
pub(crate) fn set_token(args: &mut Vec<String>, token: Option<&str>) {
    if let Some(at) = args.iter().position(|a| a == "--token") {
        args.drain(at..at + 2);
    }
    if let Some(token) = token {
        args.extend(["--token".to_string(), token.to_string()]);
    }
}

#[test]
fn joins_need_the_current_token_and_refusals_are_final() {
    if !require_root("joins_need_the_current_token_and_refusals_are_final") {
        return;
    }
    let mut cluster = Cluster::with_joiner("sjn");
    wait_for("3 members everywhere", Duration::from_secs(30), || {
        (0..3)
            .all(|i| cluster.agents[i].members().is_some_and(|m| m.len() == 3))
            .then_some(())
    });

    // What --bootstrap wrote: owner-only data dir, key and certificate; a public CA file.
    let data = cluster.agents[0].data_dir.clone();
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("tls")), 0o700, "tls dir");
    assert_eq!(mode(&data.join("tls/node.key")), 0o600, "node key");
    assert_eq!(mode(&data.join("tls/node.crt")), 0o600, "node certificate");
    assert_eq!(mode(&data.join("wal")), 0o600, "the WAL holds the CA key");
    let ca_pem = std::fs::read_to_string(data.join("tls/ca.crt")).expect("ca.crt");
    let ca = certs_from_pem(&ca_pem).expect("ca.crt parses");

    // The join token: alone on the last line, `-q` prints only it, it pins the CA.
    let text = cluster.agents[0].vxnet(&["cluster", "join-token"]);
    let token = cluster.agents[1].vxnet(&["cluster", "join-token", "-q"]);
    let token = token.trim().to_string();
    assert_eq!(text.lines().last(), Some(token.as_str()), "{text}");
    let re_ok = token.len() == 84
        && token.starts_with("VXN1-")
        && token[5..].split('-').map(str::len).eq([52usize, 26])
        && token[5..]
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    assert!(re_ok, "token shape: {token}");
    let parsed = JoinToken::parse(&token).expect("the token parses");
    assert_eq!(
        parsed.ca_digest(),
        Some(&cert_digest(&ca[0])),
        "the token carries the digest of tls/ca.crt"
    );
    // Every member's certificate is pinned: the members list says TLS everywhere.
    for m in cluster.agents[0].members().expect("members") {
        assert_eq!(m["tls"], true, "{m}");
        assert_eq!(m["ca_generation"], 1, "{m}");
    }

    // A writer through a follower for the whole test: the refusals must cost it nothing.
    let writer = Writer::start(&cluster.agents[1].api, "join-w");

    // The 4th host, refused every way, each within 5 s, final (exit 78), with the reason.
    let other_cluster = format!("VXN1-{}-{}", "a".repeat(52), &token[58..]);
    let wrong_secret = format!("{}-{}", &token[..57], "a".repeat(26));
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("no token", None, "--join needs --token"),
        (
            "a wrong bare secret",
            Some("not-the-secret"),
            "wrong join token",
        ),
        (
            "a wrong secret in a token",
            Some(&wrong_secret),
            "wrong join token",
        ),
        (
            "a token of another cluster",
            Some(&other_cluster),
            "does not present this cluster's CA",
        ),
    ];
    for (what, value, want) in cases {
        let _ = std::fs::remove_dir_all(&cluster.agents[3].data_dir);
        set_token(&mut cluster.agents[3].args, value);
        let (code, took, log) = run_until_exit(&mut cluster, 3, Duration::from_secs(10));
        eprintln!("sec_join: {what}: exit {code:?} after {took:?}");
        assert_eq!(code, Some(78), "{what}: exit code; log:\n{log}");
        assert!(
            took < Duration::from_secs(5),
            "{what}: refused after {took:?}"
        );
        assert!(
            log.contains(want),
            "{what}: the log says why ({want:?}):\n{log}"
        );
    }
    assert!(
        cluster.agents[0]
            .counter("transport.joins_refused")
            .unwrap_or(0)
            >= 2,
        "the wrong proofs were counted by the member"
    );

    // Rotating the secret: the old token stops working for joins, members are unaffected.
    let rotated = cluster.agents[0].vxnet(&["cluster", "join-token", "--rotate", "-q"]);
    let rotated = rotated.trim().to_string();
    assert_ne!(rotated, token);
    assert_eq!(rotated[..57], token[..57], "same CA digest");
    let _ = std::fs::remove_dir_all(&cluster.agents[3].data_dir);
    set_token(&mut cluster.agents[3].args, Some(&token));
    let (code, took, log) = run_until_exit(&mut cluster, 3, Duration::from_secs(10));
    eprintln!("sec_join: a rotated-out token: exit {code:?} after {took:?}");
    assert_eq!(code, Some(78), "old token after --rotate; log:\n{log}");
    assert!(log.contains("wrong join token"), "{log}");

    // A removed host: its own agent learns it at once and stops (78); its data dir, copied and
    // started elsewhere, is refused too.
    let h3_copy = cluster.dir().join("h3-copy");
    sh(&format!(
        "cp -a {} {}",
        cluster.agents[2].data_dir.display(),
        h3_copy.display()
    ));
    cluster.agents[0].vxnet(&["cluster", "rm", "h3"]);
    let status = wait_for("h3 to stop", Duration::from_secs(10), || {
        cluster.agents[2].exit_status()
    });
    let log = cluster.agents[2].log_tail(5);
    assert_eq!(
        status.code(),
        Some(78),
        "the removed agent exits 78:\n{log}"
    );
    assert!(log.contains("was removed from the cluster"), "{log}");
    set_data_dir(&mut cluster.agents[3], h3_copy);
    let (code, took, log) = run_until_exit(&mut cluster, 3, Duration::from_secs(10));
    eprintln!("sec_join: a removed host's data dir: exit {code:?} after {took:?}");
    assert_eq!(code, Some(78), "stolen data dir; log:\n{log}");
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    assert!(log.contains("was removed from the cluster"), "{log}");

    // The current token joins.
    let fresh = cluster.dir().join("h4-fresh");
    set_data_dir(&mut cluster.agents[3], fresh);
    set_token(&mut cluster.agents[3].args, Some(&rotated));
    cluster.agents[3].start();
    cluster.wait_api(3);
    wait_for("h4 to be a member", Duration::from_secs(30), || {
        cluster.agents[0]
            .members()
            .filter(|m| m.iter().any(|m| m["name"] == "h4" && m["tls"] == true))
            .map(|_| ())
    });
    cluster.agents[3].vxnet(&["network", "create", "from-h4"]);

    let (ok, errors) = writer.finish();
    eprintln!(
        "sec_join: writer through h2: {ok} writes committed, {} failed",
        errors.len()
    );
    assert_writes_ok(ok, &errors, "h2");
}
