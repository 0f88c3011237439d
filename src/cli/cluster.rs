//! `vxnet cluster ...`: members, leave, rm, join-token, ca rotate.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Result, bail};
use vxnet_proto::{
    CaRotateRequest, Empty, JoinTokenRequest, RemoveHost, api_request::Kind as Req,
    api_response::Kind as Resp,
};

use super::client::{Api, Console, apply, unexpected};
use super::format::{rfc3339_seconds, table};

/// `cluster members`: the agents, as a table or (`format` `json`) a JSON array. Besides
/// membership, each host's peer certificate: whether it has one (`TLS`: the state keeps its key's
/// pin), the CA generation that signed it and its expiry, as the host last reported them.
pub fn members(api: &dyn Api, format: &str, console: &mut Console) -> Result<ExitCode> {
    let Resp::Members(list) = api.call(Req::ClusterMembers(Empty {}))? else {
        bail!("unexpected response from daemon");
    };
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for member in &list.members {
        let Some(host) = &member.host else { continue };
        let leader = host.node_id == list.leader_id;
        let tls = !host.key_sha256.is_empty();
        let not_after = (host.cert_not_after_unix_ms != 0)
            .then(|| rfc3339_seconds(host.cert_not_after_unix_ms));
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        rows.push(vec![
            host.name.clone(),
            host.underlay.clone(),
            host.peer_addr.clone(),
            member.role.clone(),
            if leader { "*".into() } else { String::new() },
            member.reachable.to_string(),
            or_dash((host.cert_ca_generation != 0).then(|| host.cert_ca_generation.to_string())),
            or_dash(not_after.clone()),
            if tls { "yes" } else { "no" }.into(),
        ]);
        json_rows.push(serde_json::json!({
            "name": host.name,
            "node_id": host.node_id,
            "underlay": host.underlay,
            "peer": host.peer_addr,
            "role": member.role,
            "leader": leader,
            "reachable": member.reachable,
            "ca_generation": host.cert_ca_generation,
            "cert_not_after": not_after,
            "tls": tls,
        }));
    }
    if format == "json" {
        writeln!(console.out, "{}", serde_json::to_string_pretty(&json_rows)?)?;
    } else {
        write!(
            console.out,
            "{}",
            table(
                &[
                    "NAME",
                    "UNDERLAY",
                    "PEER",
                    "ROLE",
                    "LEADER",
                    "REACHABLE",
                    "CA",
                    "CERT EXPIRES",
                    "TLS"
                ],
                &rows
            )
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `cluster leave`: removes this host from the cluster; prints nothing.
pub fn leave(api: &dyn Api) -> Result<ExitCode> {
    apply(api, Req::ClusterLeave(Empty {}))
}

/// `cluster rm`: removes a (dead) host and frees its endpoints; prints nothing.
pub fn rm(api: &dyn Api, name: String) -> Result<ExitCode> {
    apply(api, Req::ClusterRemove(RemoveHost { name }))
}

/// `cluster join-token`: how to add a host, with the join token alone on the last line (like
/// `docker swarm join-token`); `quiet` prints only the token. `rotate` first replaces the join
/// secret, so that the tokens printed before no longer let a host join.
pub fn join_token(
    api: &dyn Api,
    quiet: bool,
    rotate: bool,
    console: &mut Console,
) -> Result<ExitCode> {
    let answer = match api.call(Req::ClusterJoinToken(JoinTokenRequest { rotate }))? {
        Resp::JoinToken(answer) => answer,
        other => return Err(unexpected(&other)),
    };
    if answer.token.is_empty() {
        bail!("the daemon sent an empty join token");
    }
    let out = &mut console.out;
    if quiet {
        writeln!(out, "{}", answer.token)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rotate {
        writeln!(
            out,
            "The join secret was replaced: tokens printed before no longer let new hosts join \
             (the members are unaffected)."
        )?;
        writeln!(out)?;
    }
    writeln!(out, "To add a host to this cluster, run on it:")?;
    writeln!(out)?;
    writeln!(
        out,
        "    vxnetd --name NAME --underlay ADDR --join {} --token {}",
        join_address(&answer.peer_addr),
        answer.token
    )?;
    writeln!(out)?;
    writeln!(out, "The token (keep it secret: it lets a host join):")?;
    writeln!(out, "{}", answer.token)?;
    Ok(ExitCode::SUCCESS)
}

/// What `--join` takes to reach the answering agent: its peer address, unless it listens on
/// every address (`0.0.0.0:7946`), which names no host: then a placeholder with its port.
fn join_address(peer_addr: &str) -> String {
    match peer_addr.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => format!("THIS_HOST:{}", addr.port()),
        _ => peer_addr.to_string(),
    }
}

/// `cluster ca rotate`: starts a CA rotation (a new CA; every host re-signs its certificate
/// with it) or, with `finish`, ends it (the previous CA is no longer trusted). `force`, only with
/// `finish`, ends it even while some hosts still present a certificate of the previous CA.
pub fn ca_rotate(
    api: &dyn Api,
    finish: bool,
    force: bool,
    console: &mut Console,
) -> Result<ExitCode> {
    if force && !finish {
        bail!(
            "--force goes with --finish: `vxnet cluster ca rotate --finish --force` finishes a \
             rotation even while some hosts still present a certificate of the previous CA"
        );
    }
    match api.call(Req::ClusterCaRotate(CaRotateRequest { finish, force }))? {
        Resp::Applied(_) | Resp::Ok(_) => {}
        other => return Err(unexpected(&other)),
    }
    let out = &mut console.out;
    if finish {
        writeln!(
            out,
            "The CA rotation is finished: the previous CA is no longer trusted."
        )?;
        if force {
            writeln!(
                out,
                "Hosts that still presented a certificate of the previous CA must join the \
                 cluster again."
            )?;
        }
    } else {
        writeln!(
            out,
            "A new CA was created: every host re-signs its certificate with it now (the \
             previous CA stays trusted until the rotation is finished)."
        )?;
        writeln!(
            out,
            "Join tokens changed with the CA: print the new one with `vxnet cluster join-token`."
        )?;
        writeln!(
            out,
            "Once `vxnet cluster members` shows the new CA generation on every host, run:"
        )?;
        writeln!(out)?;
        writeln!(out, "    vxnet cluster ca rotate --finish")?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use vxnet_proto::{Host, JoinToken, Member, MemberList, Response};

    use super::*;
    use crate::cli::fake::{FakeApi, error, run};

    fn member(name: &str, node_id: u64, role: &str, reachable: bool) -> Member {
        Member {
            host: Some(Host {
                name: name.into(),
                node_id,
                underlay: format!("192.168.200.{node_id}"),
                peer_addr: format!("192.168.200.{node_id}:7946"),
                ..Host::default()
            }),
            role: role.into(),
            reachable,
            ..Member::default()
        }
    }

    /// h1 has a certificate of CA generation 2 (expiring 2026-11-23T14:41:48.999Z); h2 none
    /// (a host of the previous release).
    fn two_members() -> Resp {
        let mut h1 = member("h1", 1, "leader", true);
        let host = h1.host.as_mut().unwrap();
        host.key_sha256 = vec![7; 32];
        host.cert_ca_generation = 2;
        host.cert_not_after_unix_ms = 1_795_444_908_999;
        Resp::Members(MemberList {
            members: vec![h1, member("h2", 2, "voter", false)],
            leader_id: 1,
            ..MemberList::default()
        })
    }

    #[test]
    fn members_table_marks_the_leader() {
        let done = run(|c| members(&FakeApi::new([two_members()]), "table", c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert_eq!(
            done.out,
            "NAME   UNDERLAY        PEER                 ROLE     LEADER   REACHABLE   CA   \
             CERT EXPIRES           TLS\n\
             h1     192.168.200.1   192.168.200.1:7946   leader   *        true        2    \
             2026-11-23T14:41:48Z   yes\n\
             h2     192.168.200.2   192.168.200.2:7946   voter             false       -    \
             -                      no\n"
        );
    }

    #[test]
    fn members_json_has_stable_field_names() {
        let done = run(|c| members(&FakeApi::new([two_members()]), "json", c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        let row = |name: &str, id: u64, role: &str, leader: bool, reachable: bool, cert: &str| {
            format!(
                "  {{\n{cert}    \"leader\": {leader},\n    \"name\": \"{name}\",\n    \
                 \"node_id\": {id},\n    \"peer\": \"192.168.200.{id}:7946\",\n    \
                 \"reachable\": {reachable},\n    \"role\": \"{role}\",\n{tls}    \
                 \"underlay\": \"192.168.200.{id}\"\n  }}",
                tls = if cert.contains("null") {
                    "    \"tls\": false,\n"
                } else {
                    "    \"tls\": true,\n"
                },
            )
        };
        let h1_cert =
            "    \"ca_generation\": 2,\n    \"cert_not_after\": \"2026-11-23T14:41:48Z\",\n";
        let h2_cert = "    \"ca_generation\": 0,\n    \"cert_not_after\": null,\n";
        assert_eq!(
            done.out,
            format!(
                "[\n{},\n{}\n]\n",
                row("h1", 1, "leader", true, true, h1_cert),
                row("h2", 2, "voter", false, false, h2_cert)
            )
        );
    }

    #[test]
    fn an_error_response_is_worded_as_docker_s() {
        let api = FakeApi::new([error("this host is not in the cluster")]);
        let done = run(|c| members(&api, "table", c));
        assert_eq!(
            format!("{:#}", done.result.unwrap_err()),
            "Error response from daemon: this host is not in the cluster"
        );
        assert_eq!(done.out, "");
    }

    fn token() -> String {
        format!("VXN1-{}-{}", "a".repeat(52), "b".repeat(26))
    }

    fn join_token_answer(peer_addr: &str) -> Resp {
        Resp::JoinToken(JoinToken {
            token: token(),
            peer_addr: peer_addr.into(),
        })
    }

    #[test]
    fn join_token_prints_how_to_join_and_the_token_alone_on_its_last_line() {
        let api = FakeApi::new([join_token_answer("192.168.200.1:7946")]);
        let done = run(|c| join_token(&api, false, false, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        let token = token();
        assert_eq!(
            done.out,
            format!(
                "To add a host to this cluster, run on it:\n\n    vxnetd --name NAME \
                 --underlay ADDR --join 192.168.200.1:7946 --token {token}\n\nThe token (keep \
                 it secret: it lets a host join):\n{token}\n"
            )
        );
        assert_eq!(done.out.lines().last(), Some(token.as_str()));
        assert_eq!(
            *api.requests.borrow(),
            [Req::ClusterJoinToken(JoinTokenRequest { rotate: false })]
        );
    }

    #[test]
    fn join_token_quiet_prints_only_the_token() {
        let api = FakeApi::new([join_token_answer("192.168.200.1:7946")]);
        let done = run(|c| join_token(&api, true, false, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert_eq!(done.out, token() + "\n");
        assert_eq!(done.err, "");
    }

    #[test]
    fn join_token_rotate_asks_the_agent_to_rotate_and_says_old_tokens_stop_working() {
        let api = FakeApi::new([join_token_answer("192.168.200.1:7946")]);
        let done = run(|c| join_token(&api, false, true, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert_eq!(
            *api.requests.borrow(),
            [Req::ClusterJoinToken(JoinTokenRequest { rotate: true })]
        );
        assert!(done.out.starts_with(
            "The join secret was replaced: tokens printed before no longer let new hosts join \
             (the members are unaffected).\n\nTo add a host"
        ));
        assert_eq!(done.out.lines().last(), Some(token().as_str()));

        let api = FakeApi::new([join_token_answer("192.168.200.1:7946")]);
        let done = run(|c| join_token(&api, true, true, c));
        assert_eq!(done.out, token() + "\n");
        assert_eq!(
            *api.requests.borrow(),
            [Req::ClusterJoinToken(JoinTokenRequest { rotate: true })]
        );
    }

    #[test]
    fn join_token_of_an_agent_listening_on_every_address_names_no_address() {
        let api = FakeApi::new([join_token_answer("0.0.0.0:7946")]);
        let done = run(|c| join_token(&api, false, false, c));
        assert!(done.out.contains(" --join THIS_HOST:7946 --token "));
        assert_eq!(join_address("[::]:7000"), "THIS_HOST:7000");
        assert_eq!(join_address("[fd00::1]:7946"), "[fd00::1]:7946");
    }

    #[test]
    fn join_token_refused_by_the_agent_prints_nothing_and_fails() {
        let api = FakeApi::new([error("this cluster has no CA yet")]);
        let done = run(|c| join_token(&api, true, false, c));
        assert_eq!(
            format!("{:#}", done.result.unwrap_err()),
            "Error response from daemon: this cluster has no CA yet"
        );
        assert_eq!(done.out, "");
    }

    fn applied() -> Resp {
        Resp::Applied(Response::default())
    }

    #[test]
    fn ca_rotate_starts_a_rotation_and_says_how_to_finish_it() {
        let api = FakeApi::new([applied()]);
        let done = run(|c| ca_rotate(&api, false, false, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert_eq!(
            *api.requests.borrow(),
            [Req::ClusterCaRotate(CaRotateRequest {
                finish: false,
                force: false
            })]
        );
        assert_eq!(
            done.out,
            "A new CA was created: every host re-signs its certificate with it now (the previous \
             CA stays trusted until the rotation is finished).\n\
             Join tokens changed with the CA: print the new one with `vxnet cluster join-token`.\n\
             Once `vxnet cluster members` shows the new CA generation on every host, run:\n\n    \
             vxnet cluster ca rotate --finish\n"
        );
    }

    #[test]
    fn ca_rotate_finish_says_the_previous_ca_is_no_longer_trusted() {
        let api = FakeApi::new([applied(), applied()]);
        let done = run(|c| ca_rotate(&api, true, false, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert_eq!(
            done.out,
            "The CA rotation is finished: the previous CA is no longer trusted.\n"
        );
        let done = run(|c| ca_rotate(&api, true, true, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert!(done.out.ends_with("must join the cluster again.\n"));
        assert_eq!(
            api.requests.borrow()[1],
            Req::ClusterCaRotate(CaRotateRequest {
                finish: true,
                force: true
            })
        );
    }

    #[test]
    fn ca_rotate_force_without_finish_is_refused_before_asking_the_agent() {
        let api = FakeApi::new([]);
        let done = run(|c| ca_rotate(&api, false, true, c));
        let err = format!("{:#}", done.result.unwrap_err());
        assert!(err.starts_with("--force goes with --finish"), "{err}");
        assert_eq!(done.out, "");
        assert!(api.requests.borrow().is_empty());
    }

    #[test]
    fn ca_rotate_refused_by_the_agent_prints_nothing_and_fails() {
        let api = FakeApi::new([error(
            "hosts still present a certificate of an older CA: h2 (generation 1)",
        )]);
        let done = run(|c| ca_rotate(&api, true, false, c));
        assert_eq!(
            format!("{:#}", done.result.unwrap_err()),
            "Error response from daemon: hosts still present a certificate of an older CA: h2 \
             (generation 1)"
        );
        assert_eq!(done.out, "");
    }
}
