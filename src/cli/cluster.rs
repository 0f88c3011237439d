//! `vxnet cluster ...`: members, leave, rm.

use std::process::ExitCode;

use anyhow::{Result, bail};
use vxnet_proto::{Empty, RemoveHost, api_request::Kind as Req, api_response::Kind as Resp};

use super::client::{Api, Console, apply};
use super::format::table;

/// `cluster members`: the agents, as a table or (`format` `json`) a JSON array.
pub fn members(api: &dyn Api, format: &str, console: &mut Console) -> Result<ExitCode> {
    let Resp::Members(list) = api.call(Req::ClusterMembers(Empty {}))? else {
        bail!("unexpected response from daemon");
    };
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for member in &list.members {
        let Some(host) = &member.host else { continue };
        let leader = host.node_id == list.leader_id;
        rows.push(vec![
            host.name.clone(),
            host.underlay.clone(),
            host.peer_addr.clone(),
            member.role.clone(),
            if leader { "*".into() } else { String::new() },
            member.reachable.to_string(),
        ]);
        json_rows.push(serde_json::json!({
            "name": host.name,
            "node_id": host.node_id,
            "underlay": host.underlay,
            "peer": host.peer_addr,
            "role": member.role,
            "leader": leader,
            "reachable": member.reachable,
        }));
    }
    if format == "json" {
        writeln!(console.out, "{}", serde_json::to_string_pretty(&json_rows)?)?;
    } else {
        write!(
            console.out,
            "{}",
            table(
                &["NAME", "UNDERLAY", "PEER", "ROLE", "LEADER", "REACHABLE"],
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

#[cfg(test)]
mod tests {
    use vxnet_proto::{Host, Member, MemberList};

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

    fn two_members() -> Resp {
        Resp::Members(MemberList {
            members: vec![
                member("h1", 1, "leader", true),
                member("h2", 2, "voter", false),
            ],
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
            "NAME   UNDERLAY        PEER                 ROLE     LEADER   REACHABLE\n\
             h1     192.168.200.1   192.168.200.1:7946   leader   *        true\n\
             h2     192.168.200.2   192.168.200.2:7946   voter             false\n"
        );
    }

    #[test]
    fn members_json_has_stable_field_names() {
        let done = run(|c| members(&FakeApi::new([two_members()]), "json", c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        let row = |name: &str, id: u64, role: &str, leader: bool, reachable: bool| {
            format!(
                "  {{\n    \"leader\": {leader},\n    \"name\": \"{name}\",\n    \"node_id\": {id},\n    \
                 \"peer\": \"192.168.200.{id}:7946\",\n    \"reachable\": {reachable},\n    \
                 \"role\": \"{role}\",\n    \"underlay\": \"192.168.200.{id}\"\n  }}"
            )
        };
        assert_eq!(
            done.out,
            format!(
                "[\n{},\n{}\n]\n",
                row("h1", 1, "leader", true, true),
                row("h2", 2, "voter", false, false)
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
}
