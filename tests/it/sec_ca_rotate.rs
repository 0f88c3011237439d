//! CA rotation on a live cluster (`docs/design/peer-tls.md` §11): `vxnet cluster ca rotate`
//! while a follower keeps writing (not one write fails). The running hosts re-sign with the new
//! CA and present it with the cross-signed certificate; a host that was stopped during the
//! rotation makes `--finish` refuse, naming it, until it is back and has re-signed too. The join
//! token changes with the CA: the old one is refused by a joiner (the member does not present
//! the CA it pins), the new one joins a 4th host. After `--finish` every host presents only the
//! new CA, all keep talking and writing, and a host restarted afterwards rejoins its peers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::sec_join::{run_until_exit, set_token};
use crate::support::writer::{Writer, assert_writes_ok};
use crate::support::*;
use serde_json::Value;
use vxnet_controlplane::transport::pki::{cert_digest, certs_from_pem};
use vxnet_controlplane::transport::token::JoinToken;

/// Each host's `ca_generation` in `agent`'s members list, by name.
fn generations(agent: &Agent) -> Option<BTreeMap<String, u64>> {
    Some(
        agent
            .members()?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("?").to_string(),
                    m["ca_generation"].as_u64().unwrap_or(0),
                )
            })
            .collect(),
    )
}

/// Waits until `agent` lists exactly `want` (host → CA generation).
fn wait_generations(agent: &Agent, want: &[(&str, u64)], timeout: Duration) {
    let want: BTreeMap<String, u64> = want.iter().map(|(n, g)| (n.to_string(), *g)).collect();
    wait_for(
        &format!("{} to report the CA generations {want:?}", agent.name),
        timeout,
        || (generations(agent)? == want).then_some(()),
    );
}

/// Waits until `agent` lists `n` members, every one reachable.
fn wait_all_reachable(agent: &Agent, n: usize, timeout: Duration) {
    wait_for(
        &format!("{} to see {n} members, all reachable", agent.name),
        timeout,
        || {
            let m: Vec<Value> = agent.members()?;
            (m.len() == n && m.iter().all(|h| h["reachable"] == true)).then_some(())
        },
    );
}

/// The chain in `DATA/tls/node.crt` (DER certificates).
fn chain(data_dir: &Path) -> Vec<Vec<u8>> {
    let path = data_dir.join("tls/node.crt");
    let pem = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    certs_from_pem(&pem)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// The SHA-256 of `DATA/tls/ca.crt` (the CA this host's certificate is signed by).
fn ca_digest(data_dir: &Path) -> [u8; 32] {
    let path = data_dir.join("tls/ca.crt");
    let pem = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let certs = certs_from_pem(&pem).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cert_digest(&certs[0])
}

#[test]
fn ca_rotation_without_an_outage() {
    const TEST: &str = "ca_rotation_without_an_outage";
    if !require_root(TEST) {
        return;
    }
    let mut cluster = Cluster::with_joiner("scr");
    let names: Vec<String> = cluster.agents.iter().map(|a| a.name.clone()).collect();
    let (h1, h2, h3) = (names[0].as_str(), names[1].as_str(), names[2].as_str());
    for i in 0..3 {
        wait_generations(
            &cluster.agents[i],
            &[(h1, 1), (h2, 1), (h3, 1)],
            Duration::from_secs(30),
        );
    }
    let leader = wait_for("a leader", Duration::from_secs(10), || {
        cluster.agents[0].leader_name()
    });
    let leader = names.iter().position(|n| *n == leader).expect("a host");
    // The writer goes through a follower; the other follower (never h1, which every joiner
    // dials and where the rotation is started) is stopped during the rotation.
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (writing, stopped) = (followers[0], followers[1]);
    let stopped_name = names[stopped].clone();
    let old_token = cluster.agents[0].vxnet(&["cluster", "join-token", "-q"]);
    let old_token = old_token.trim().to_string();
    let old_ca = ca_digest(&cluster.agents[0].data_dir);
    assert_eq!(
        JoinToken::parse(&old_token)
            .expect("the token parses")
            .ca_digest(),
        Some(&old_ca),
        "the token pins tls/ca.crt"
    );
    let writer = Writer::start(&cluster.agents[writing].api, "rotate-w");

    // The rotation, with one host stopped: the running hosts re-sign with CA generation 2 and
    // present [certificate, new CA, new CA certified by the old one].
    cluster.agents[stopped].kill();
    let rotate = Instant::now();
    let out = cluster.agents[0].vxnet(&["cluster", "ca", "rotate"]);
    assert!(out.contains("vxnet cluster ca rotate --finish"), "{out}");
    let running: Vec<(&str, u64)> = (0..3)
        .map(|i| (names[i].as_str(), if i == stopped { 1 } else { 2 }))
        .collect();
    wait_generations(&cluster.agents[leader], &running, Duration::from_secs(30));
    let running_reported = rotate.elapsed();
    for i in (0..3).filter(|&i| i != stopped) {
        let c = chain(&cluster.agents[i].data_dir);
        assert_eq!(
            c.len(),
            3,
            "{}: certificate, new CA, cross-signed CA",
            names[i]
        );
        assert_ne!(
            ca_digest(&cluster.agents[i].data_dir),
            old_ca,
            "{}: signed by the new CA",
            names[i]
        );
    }

    // Finishing now would strand the stopped host (its certificate is of the old CA): refused,
    // naming it and only it.
    let out = cluster.agents[0].cli(&["cluster", "ca", "rotate", "--finish"]);
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "--finish while {stopped_name} presents an old-CA certificate: {text}"
    );
    assert!(
        text.contains(&format!("{stopped_name} (generation 1)")),
        "the refusal names the host: {text}"
    );
    for i in (0..3).filter(|&i| i != stopped) {
        assert!(
            !text.contains(&format!("{} (generation", names[i])),
            "{text}"
        );
    }

    // One rotation at a time.
    let out = cluster.agents[writing].cli(&["cluster", "ca", "rotate"]);
    let text = output_text(&out);
    assert!(
        !out.status.success() && text.contains("under way"),
        "a second rotation before the first is finished: {text}"
    );

    // The stopped host comes back with its old-CA certificate: the members still trust the old
    // CA, it catches up, applies the rotation, re-signs and reports generation 2.
    let back = Instant::now();
    cluster.agents[stopped].start();
    cluster.wait_api(stopped);
    for i in 0..3 {
        wait_generations(
            &cluster.agents[i],
            &[(h1, 2), (h2, 2), (h3, 2)],
            Duration::from_secs(30),
        );
    }
    let stopped_reported = back.elapsed();
    let new_ca = ca_digest(&cluster.agents[0].data_dir);
    assert_ne!(new_ca, old_ca);
    for (agent, name) in cluster.agents[..3].iter().zip(&names) {
        assert_eq!(chain(&agent.data_dir).len(), 3, "{name}");
        assert_eq!(ca_digest(&agent.data_dir), new_ca, "{name}");
    }

    // The join token changed with the CA (same secret, new digest).
    let new_token = cluster.agents[writing].vxnet(&["cluster", "join-token", "-q"]);
    let new_token = new_token.trim().to_string();
    assert_ne!(new_token, old_token);
    assert_eq!(
        new_token[57..],
        old_token[57..],
        "the join secret did not change"
    );
    assert_eq!(
        JoinToken::parse(&new_token)
            .expect("the new token parses")
            .ca_digest(),
        Some(&new_ca),
        "the new token pins the new CA"
    );

    // The old token is refused by the joiner itself: the member does not present the CA it
    // pins. Final (exit 78), within 10 s.
    set_token(&mut cluster.agents[3].args, Some(&old_token));
    let (code, took, log) = run_until_exit(&mut cluster, 3, Duration::from_secs(10));
    eprintln!("sec_ca_rotate: the old token: exit {code:?} after {took:?}");
    assert_eq!(code, Some(78), "a joiner with the old token; log:\n{log}");
    assert!(
        log.contains("does not present this cluster's CA"),
        "the joiner says why (the CA fingerprint of the token):\n{log}"
    );

    // The new token joins a 4th host, signed by the new CA.
    let _ = std::fs::remove_dir_all(&cluster.agents[3].data_dir);
    set_token(&mut cluster.agents[3].args, Some(&new_token));
    cluster.agents[3].start();
    cluster.wait_api(3);
    let h4 = names[3].as_str();
    wait_generations(
        &cluster.agents[leader],
        &[(h1, 2), (h2, 2), (h3, 2), (h4, 2)],
        Duration::from_secs(30),
    );
    assert_eq!(ca_digest(&cluster.agents[3].data_dir), new_ca, "{h4}");

    // Every host reports the new CA: --finish is accepted. Hosts then present only the new CA.
    let out = cluster.agents[0].vxnet(&["cluster", "ca", "rotate", "--finish"]);
    assert!(out.contains("no longer trusted"), "{out}");
    for agent in &cluster.agents {
        wait_for(
            &format!("{} to present [certificate, new CA] only", agent.name),
            Duration::from_secs(20),
            || (chain(&agent.data_dir).len() == 2).then_some(()),
        );
        assert_eq!(ca_digest(&agent.data_dir), new_ca, "{}", agent.name);
    }
    // A finished rotation: `--finish` again changes nothing.
    cluster.agents[leader].vxnet(&["cluster", "ca", "rotate", "--finish"]);

    // Everybody keeps talking: each host sees every member reachable and commits a write.
    for (i, agent) in cluster.agents.iter().enumerate() {
        wait_all_reachable(agent, 4, Duration::from_secs(30));
        agent.vxnet(&["network", "create", &format!("after-finish-{i}")]);
    }
    for agent in &cluster.agents {
        for i in 0..4 {
            wait_for(
                &format!("{} to see after-finish-{i}", agent.name),
                Duration::from_secs(10),
                || agent.inspect(&format!("after-finish-{i}")),
            );
        }
    }

    // A host restarted after the rotation rejoins its peers with its new-CA certificate.
    cluster.agents[stopped].restart();
    cluster.wait_api(stopped);
    for i in [leader, stopped] {
        wait_all_reachable(&cluster.agents[i], 4, Duration::from_secs(30));
    }
    cluster.agents[stopped].vxnet(&["network", "create", "after-restart"]);
    wait_for(
        "the leader to see the restarted host's write",
        Duration::from_secs(10),
        || cluster.agents[leader].inspect("after-restart"),
    );
    let log = std::fs::read_to_string(&cluster.agents[stopped].log).unwrap_or_default();
    assert!(
        !log.contains("joined the cluster"),
        "a restart resumes, it does not join again:\n{log}"
    );

    let (ok, errors) = writer.finish();
    eprintln!(
        "sec_ca_rotate: running hosts on generation 2 {running_reported:?} after `ca rotate`; \
         {stopped_name} reported it {stopped_reported:?} after its start; writer through {}: \
         {ok} writes, {} failed",
        names[writing],
        errors.len()
    );
    assert_writes_ok(ok, &errors, &names[writing]);
}
