//! Certificate renewal on a live cluster (`docs/design/peer-tls.md` §10): three agents started
//! with `--cert-lifetime 30` (renewal due at 2/3 of the lifetime, ±5%: about every 20 s) keep
//! committing the writes of a follower for 75 s, not one failed, while every host replaces its
//! certificate at least twice with the same key (the pin does not change, nothing re-joins), the
//! expiry the members list reports moves forward, and no connection is re-established (renewal
//! swaps the certificate presented to new connections; open ones stay). Then a host is stopped
//! past its certificate's expiry and started again: it re-signs from the replicated CA key and
//! serves at once, no re-join.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::writer::{Writer, assert_writes_ok};
use crate::support::*;
use serde_json::Value;
use vxnet_controlplane::transport::pki::{CertIdentity, cert_identity, certs_from_pem};

/// `--cert-lifetime`, seconds.
const LIFETIME_SECS: u64 = 30;
/// How long the writer runs while certificates renew: more than three renewal periods.
const WRITE_PHASE: Duration = Duration::from_secs(75);
/// How long the stopped host stays down: more than a lifetime, so its certificate expires.
const DOWN: Duration = Duration::from_secs(40);

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `DATA/tls/node.crt` as written (PEM) and its first certificate's identity, if readable.
fn node_cert(data_dir: &Path) -> Option<(String, CertIdentity)> {
    let pem = std::fs::read_to_string(data_dir.join("tls/node.crt")).ok()?;
    let chain = certs_from_pem(&pem).ok()?;
    let id = cert_identity(chain.first()?).ok()?;
    Some((pem, id))
}

fn node_key(data_dir: &Path) -> Vec<u8> {
    std::fs::read(data_dir.join("tls/node.key"))
        .unwrap_or_else(|e| panic!("{}/tls/node.key: {e}", data_dir.display()))
}

fn have_openssl() -> bool {
    sh_output("command -v openssl").status.success()
}

/// The public key (PEM) of a certificate file or, `key`, of a private key file, by openssl.
fn openssl_public_key(path: &Path, key: bool) -> String {
    let cmd = if key {
        format!("openssl pkey -pubout -in {}", path.display())
    } else {
        format!("openssl x509 -pubkey -noout -in {}", path.display())
    };
    sh(&cmd)
}

/// `cluster members --format json` of `agent` by host name.
fn members_by_name(agent: &Agent) -> Option<BTreeMap<String, Value>> {
    Some(
        agent
            .members()?
            .into_iter()
            .map(|m| (m["name"].as_str().unwrap_or("?").to_string(), m))
            .collect(),
    )
}

#[test]
fn certificates_renew_without_an_outage() {
    const TEST: &str = "certificates_renew_without_an_outage";
    let Some(mut cluster) = cluster_with(
        TEST,
        "srn",
        ClusterOptions {
            hosts: 3,
            agent_args: vec!["--cert-lifetime".into(), LIFETIME_SECS.to_string()],
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let names: Vec<String> = cluster.agents.iter().map(|a| a.name.clone()).collect();
    let index = |name: &str| names.iter().position(|n| n == name).expect("a host");

    // Every host has its certificate, pinned and reported (CA generation 1, an expiry).
    let leader = wait_for("a leader", Duration::from_secs(20), || {
        cluster.agents[0].leader_name()
    });
    let leader = index(&leader);
    let first_report = wait_for(
        "every host's certificate reported",
        Duration::from_secs(30),
        || {
            let m = members_by_name(&cluster.agents[leader])?;
            (m.len() == 3
                && m.values().all(|h| {
                    h["tls"] == true && h["ca_generation"] == 1 && h["cert_not_after"].is_string()
                }))
            .then_some(m)
        },
    );
    // The writer goes through one follower; the other one (`quiet`) has no business with the
    // writes, and is the host stopped at the end.
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (writing, quiet) = (followers[0], followers[1]);
    let data_dirs: Vec<PathBuf> = cluster.agents.iter().map(|a| a.data_dir.clone()).collect();
    let keys: Vec<Vec<u8>> = data_dirs.iter().map(|d| node_key(d)).collect();
    let openssl = have_openssl();
    let key_public: Vec<Option<String>> = data_dirs
        .iter()
        .map(|d| openssl.then(|| openssl_public_key(&d.join("tls/node.key"), true)))
        .collect();

    let term_before = cluster.agents[leader].counter("raft.term");
    let accepted = |i: usize| cluster.agents[i].counter("transport.tls_accepted");
    let (leader_accepted_before, quiet_accepted_before) = (accepted(leader), accepted(quiet));
    let writer = Writer::start(&cluster.agents[writing].api, "renew-w");
    let writes_before = writer.attempts();

    // Watch the certificates for the write phase: every version each host writes.
    let mut seen: Vec<Vec<(String, CertIdentity)>> = vec![Vec::new(); 3];
    let phase = Instant::now();
    while phase.elapsed() < WRITE_PHASE {
        for (i, dir) in data_dirs.iter().enumerate() {
            assert_eq!(
                node_key(dir),
                keys[i],
                "{}: tls/node.key must never change",
                names[i]
            );
            if let Some((pem, id)) = node_cert(dir)
                && seen[i].last().is_none_or(|(last, _)| *last != pem)
            {
                seen[i].push((pem, id));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let writes_in_phase = writer.attempts() - writes_before;
    let (leader_accepted_after, quiet_accepted_after) = (accepted(leader), accepted(quiet));
    let term_after = cluster.agents[leader].counter("raft.term");
    let last_report = members_by_name(&cluster.agents[leader]).expect("members of the leader");

    // Each host replaced its certificate at least twice (renewal is due at 2/3 of the lifetime,
    // ±5%: about every 20 s), never within half a lifetime of the previous certificate (the
    // expiries of consecutive certificates are a renewal period apart: only load can make the
    // gap longer), and always for the same key.
    let renewals: Vec<usize> = seen.iter().map(|v| v.len().saturating_sub(1)).collect();
    let gaps: Vec<Vec<i64>> = seen
        .iter()
        .map(|v| {
            v.windows(2)
                .map(|w| w[1].1.not_after_unix - w[0].1.not_after_unix)
                .collect()
        })
        .collect();
    eprintln!(
        "sec_renew: certificates replaced per host in {WRITE_PHASE:?}: {renewals:?}; seconds \
         between consecutive expiries (first 8 per host): {:?}",
        gaps.iter()
            .map(|g| g.iter().take(8).copied().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    for (i, versions) in seen.iter().enumerate() {
        assert!(
            renewals[i] >= 2,
            "{} replaced its certificate {} times in {WRITE_PHASE:?} (lifetime \
             {LIFETIME_SECS} s: renewal due about every 20 s)\n{}",
            names[i],
            renewals[i],
            cluster.agents[i].log_tail(30)
        );
        let shortest = gaps[i].iter().copied().min().unwrap_or(0);
        assert!(
            shortest >= LIFETIME_SECS as i64 / 2,
            "{} replaced its certificate {} times in {WRITE_PHASE:?}, two of them {shortest} s \
             apart: with a {LIFETIME_SECS} s lifetime, renewal is due at 2/3 of it (±5%), about \
             every 20 s\n{}",
            names[i],
            renewals[i],
            cluster.agents[i].log_tail(10)
        );
        let (pin, node_id) = (versions[0].1.spki_sha256, versions[0].1.node_id);
        for (k, (pem, id)) in versions.iter().enumerate() {
            assert_eq!(id.spki_sha256, pin, "{} version {k}: same key", names[i]);
            // Node ids follow the join order, which is not the host order.
            assert_eq!(
                id.node_id, node_id,
                "{} version {k}: same node id",
                names[i]
            );
            if let Some(key_public) = &key_public[i] {
                let file = cluster.dir().join(format!("{}-cert-{k}.pem", names[i]));
                std::fs::write(&file, pem).expect("write a certificate copy");
                assert_eq!(
                    openssl_public_key(&file, false),
                    *key_public,
                    "{} version {k}: the certificate's public key is tls/node.key's (openssl)",
                    names[i]
                );
            }
        }
    }
    // The members list reports the renewals: every host's expiry moved forward.
    for name in &names {
        let (before, after) = (
            first_report[name]["cert_not_after"].as_str().unwrap_or(""),
            last_report[name]["cert_not_after"].as_str().unwrap_or(""),
        );
        // RFC 3339 UTC timestamps of one format: text order is time order.
        assert!(
            after > before,
            "{name}: cert_not_after {before} → {after} in {WRITE_PHASE:?}: {last_report:?}"
        );
        assert_eq!(last_report[name]["tls"], true, "{name}");
        assert_eq!(last_report[name]["ca_generation"], 1, "{name}");
    }

    // No connection churn: renewal swaps the certificate presented to new connections and closes
    // none. The quiet follower accepts only the leader's Raft connection, opened before the
    // phase: bound 2 (a transient redial per peer); re-dialing on renewals would add one per
    // renewal of the leader or of the follower (about 6). The leader accepts its followers'
    // Raft connections and their forwarded requests, which ride pooled connections (§16), a
    // pool a follower empties when its certificate changes (its next connections present the
    // new one): bound 2 per follower renewal (its next write and its report may each open one)
    // + 4 (the writer's first connection, a redial per peer, one spare). Re-dialing on renewals
    // would add about 2 per leader renewal and 1 per follower renewal on top.
    let quiet_new = quiet_accepted_after
        .zip(quiet_accepted_before)
        .map(|(a, b)| a - b);
    let leader_new = leader_accepted_after
        .zip(leader_accepted_before)
        .map(|(a, b)| a - b);
    let follower_renewals = (renewals[writing] + renewals[quiet]) as u64;
    eprintln!(
        "sec_renew: renewals per host {renewals:?} in {WRITE_PHASE:?}; writer: {writes_in_phase} \
         writes; tls_accepted: quiet follower +{quiet_new:?}, leader +{leader_new:?} \
         ({follower_renewals} renewals of the followers); raft term \
         {term_before:?} → {term_after:?}"
    );
    let quiet_new = quiet_new.expect("transport.tls_accepted on the quiet follower");
    assert!(
        quiet_new <= 2,
        "{} accepted {quiet_new} member connections during the renewals",
        names[quiet]
    );
    let leader_new = leader_new.expect("transport.tls_accepted on the leader");
    assert!(
        leader_new <= 2 * follower_renewals + 4,
        "{} accepted {leader_new} member connections during the renewals ({writes_in_phase} \
         forwarded writes, {follower_renewals} renewals of the followers)",
        names[leader]
    );
    assert_eq!(
        term_before, term_after,
        "no election while the certificates renewed"
    );

    // A host stopped longer than a lifetime: its certificate expires meanwhile.
    let down_since = Instant::now();
    cluster.agents[quiet].kill();
    let (_, expired_cert) = node_cert(&data_dirs[quiet]).expect("the stopped host's certificate");
    std::thread::sleep(DOWN);
    wait_for(
        "the stopped host's certificate to expire",
        Duration::from_secs(LIFETIME_SECS),
        || (now_unix() > expired_cert.not_after_unix + 1).then_some(()),
    );
    let down_for = down_since.elapsed();

    // It comes back as a member: the API answers, it re-signed for its key, the members see it
    // reachable, a write through it commits.
    let back = Instant::now();
    cluster.agents[quiet].start();
    cluster.wait_api(quiet);
    let (_, fresh) = wait_for(
        "a fresh certificate on the restarted host",
        Duration::from_secs(20),
        || node_cert(&data_dirs[quiet]).filter(|(_, id)| id.not_after_unix > now_unix()),
    );
    assert_eq!(fresh.spki_sha256, expired_cert.spki_sha256, "same key");
    assert_eq!(node_key(&data_dirs[quiet]), keys[quiet], "same key file");
    for (agent, name) in cluster.agents[..3].iter().zip(&names) {
        wait_for(
            &format!("{name} to see every host reachable"),
            Duration::from_secs(30),
            || {
                let m = agent.members()?;
                (m.len() == 3 && m.iter().all(|h| h["reachable"] == true)).then_some(())
            },
        );
    }
    let agent = &cluster.agents[quiet];
    agent.vxnet(&["network", "create", "renew-back"]);
    wait_for(
        "the leader to see the write of the restarted host",
        Duration::from_secs(10),
        || cluster.agents[leader].inspect("renew-back"),
    );
    let returned = back.elapsed();
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(
        !log.contains("joined the cluster"),
        "a restart resumes from the data dir, it does not join again:\n{log}"
    );
    assert!(
        log.contains("node certificate signed"),
        "the restarted host re-signed its certificate:\n{log}"
    );

    let (ok, errors) = writer.finish();
    eprintln!(
        "sec_renew: {} down {down_for:?}, serving again {returned:?} after its start; writer \
         through {}: {ok} writes, {} failed",
        names[quiet],
        names[writing],
        errors.len()
    );
    assert_writes_ok(ok, &errors, &names[writing]);
}
