//! `vxnet network ...`: create, ls, inspect, rm, prune, connect, disconnect.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use vxnet_proto::{
    ConnectEndpoint, CreateNetwork, DisconnectEndpoint, Empty, Host, NamesRequest, NetworkList,
    NetworkListRequest, api_request::Kind as Req, api_response::Kind as Resp,
    response::Kind as Applied,
};

use super::client::{Api, Console, apply, unexpected};
use super::format::{matches_filters, network_json, network_ls_json, short_id, table};
use super::template::Template;

/// `key=value` flags (`--opt`, `--aux-address`, `--label`) as a map; `what` names the flag in
/// the error. A label may be a bare key (empty value), as docker allows.
pub fn key_values(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ if what == "label" && !kv.is_empty() && !kv.contains('=') => {
                Ok((kv.clone(), String::new()))
            }
            _ => Err(anyhow!("invalid {what} {kv:?}: expected key=value")),
        })
        .collect()
}

/// The driver options of `network create`: `--opt` pairs, plus docker's IPv6 option for
/// `--ipv6`.
pub fn create_options(opts: &[String], ipv6: bool) -> Result<BTreeMap<String, String>> {
    let mut options = key_values(opts, "option")?;
    if ipv6 {
        options.insert("com.docker.network.enable_ipv6".into(), "true".into());
    }
    Ok(options)
}

/// `network create`: prints the new network's id.
pub fn create(api: &dyn Api, request: CreateNetwork, console: &mut Console) -> Result<ExitCode> {
    match api.call(Req::NetworkCreate(request))? {
        Resp::Applied(vxnet_proto::Response {
            kind: Some(Applied::NetworkCreated(n)),
        }) => writeln!(console.out, "{}", n.id)?,
        other => return Err(unexpected(&other)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The flags of `network ls`.
#[derive(Debug, Clone, Default)]
pub struct LsOptions {
    /// Only ids.
    pub quiet: bool,
    /// Whole ids.
    pub no_trunc: bool,
    /// `table`, `json` or a template.
    pub format: String,
    /// docker's `-f key=value` filters.
    pub filters: Vec<String>,
}

/// `network ls`: the networks by name, as a table, JSON lines, a template per line or ids.
pub fn ls(api: &dyn Api, options: &LsOptions, console: &mut Console) -> Result<ExitCode> {
    let list = networks(api, Vec::new())?;
    let mut networks = Vec::new();
    for net in &list.networks {
        if matches_filters(net, &options.filters)
            .map_err(|e| anyhow!("Error response from daemon: {e}"))?
        {
            networks.push(net);
        }
    }
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    let no_trunc = options.no_trunc;
    let id = |id: &str| {
        if no_trunc {
            id.to_string()
        } else {
            short_id(id).to_string()
        }
    };
    let out = &mut console.out;
    if options.quiet {
        for net in networks {
            writeln!(out, "{}", id(&net.id))?;
        }
    } else if options.format == "json" {
        for net in networks {
            writeln!(out, "{}", network_ls_json(net, no_trunc))?;
        }
    } else if options.format == "table" {
        let rows: Vec<Vec<String>> = networks
            .iter()
            .map(|n| vec![id(&n.id), n.name.clone(), n.driver.clone(), "global".into()])
            .collect();
        write!(
            out,
            "{}",
            table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
        )?;
    } else {
        let template = Template::parse(&options.format)?;
        for net in networks {
            writeln!(out, "{}", template.render(&network_ls_json(net, no_trunc)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `network inspect`: docker's JSON array of the networks found, or `format` rendered per
/// network. An unknown name is reported and the others still shown; the exit code then fails.
pub fn inspect(
    api: &dyn Api,
    format: Option<&str>,
    names: &[String],
    console: &mut Console,
) -> Result<ExitCode> {
    let template = format.map(Template::parse).transpose()?;
    let mut lists = Vec::new();
    let mut failed = false;
    // Each name separately, so one unknown name does not hide the others (docker).
    for name in names {
        match networks(api, vec![name.clone()]) {
            Ok(list) => lists.push(list),
            Err(err) => {
                writeln!(console.err, "{err:#}")?;
                failed = true;
            }
        }
    }
    // The members only name the peers: asked once for all the networks, and not worth failing
    // the inspect for.
    let hosts = if lists.is_empty() {
        Vec::new()
    } else {
        member_hosts(api).unwrap_or_default()
    };
    let mut found = Vec::new();
    for list in &lists {
        for net in &list.networks {
            let eps: Vec<_> = list
                .endpoints
                .iter()
                .filter(|e| e.network_id == net.id)
                .collect();
            let held: Vec<_> = list
                .reservations
                .iter()
                .filter(|r| r.network_id == net.id)
                .collect();
            found.push(network_json(net, &eps, &held, &hosts));
        }
    }
    match template {
        Some(t) => {
            for net in &found {
                writeln!(console.out, "{}", t.render(net))?;
            }
        }
        None => writeln!(console.out, "{}", serde_json::to_string_pretty(&found)?)?,
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `network rm`: removes each network in turn, printing its name; a failure is reported and
/// the others still removed.
pub fn rm(api: &dyn Api, names: &[String], console: &mut Console) -> Result<ExitCode> {
    let mut failed = false;
    for name in names {
        match api.call(Req::NetworkRemove(NamesRequest {
            names: vec![name.clone()],
        })) {
            Ok(_) => writeln!(console.out, "{name}")?,
            Err(err) => {
                writeln!(console.err, "{err:#}")?;
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `network prune`: after asking unless `force`, removes the networks without endpoints.
pub fn prune(api: &dyn Api, force: bool, console: &mut Console) -> Result<ExitCode> {
    if !force
        && !confirm(
            "WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue? [y/N] ",
            console,
        )?
    {
        return Ok(ExitCode::SUCCESS);
    }
    match api.call(Req::NetworkPrune(Empty {}))? {
        Resp::Pruned(names) if !names.names.is_empty() => {
            writeln!(console.out, "Deleted Networks:")?;
            for name in names.names {
                writeln!(console.out, "{name}")?;
            }
        }
        Resp::Pruned(_) => {}
        other => return Err(unexpected(&other)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `network connect`: attaches a sandbox to a network; prints nothing.
pub fn connect(api: &dyn Api, request: ConnectEndpoint) -> Result<ExitCode> {
    apply(api, Req::NetworkConnect(request))
}

/// `network disconnect`: detaches a sandbox from a network; prints nothing.
pub fn disconnect(api: &dyn Api, request: DisconnectEndpoint) -> Result<ExitCode> {
    apply(api, Req::NetworkDisconnect(request))
}

fn confirm(prompt: &str, console: &mut Console) -> Result<bool> {
    write!(console.err, "{prompt}")?;
    let mut answer = String::new();
    console
        .input
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// All networks (no names) or the named ones, with their endpoints.
fn networks(api: &dyn Api, names: Vec<String>) -> Result<NetworkList> {
    let kind = if names.is_empty() {
        Req::NetworkList(NetworkListRequest {
            filters: Vec::new(),
        })
    } else {
        Req::NetworkInspect(NamesRequest { names })
    };
    match api.call(kind)? {
        Resp::Networks(list) => Ok(list),
        other => Err(unexpected(&other)),
    }
}

fn member_hosts(api: &dyn Api) -> Result<Vec<Host>> {
    match api.call(Req::ClusterMembers(Empty {}))? {
        Resp::Members(list) => Ok(list.members.into_iter().filter_map(|m| m.host).collect()),
        other => Err(unexpected(&other)),
    }
}

#[cfg(test)]
mod tests {
    use vxnet_proto::{Endpoint, Member, MemberList, Network};

    use super::*;
    use crate::cli::fake::{FakeApi, error, run};

    fn net(name: &str, id: char, vni: u32) -> Network {
        Network {
            id: id.to_string().repeat(64),
            name: name.into(),
            driver: "overlay".into(),
            subnet: format!("10.20.{}.0/24", vni - 4096),
            gateway: format!("10.20.{}.1", vni - 4096),
            vni,
            created_unix_ms: 1_795_444_908_123,
            ..Network::default()
        }
    }

    fn listed(networks: Vec<Network>, endpoints: Vec<Endpoint>) -> Resp {
        Resp::Networks(NetworkList {
            networks,
            endpoints,
            reservations: Vec::new(),
        })
    }

    fn two_networks() -> Resp {
        listed(
            vec![net("web", 'b', 4097), net("db", 'a', 4096)],
            Vec::new(),
        )
    }

    fn ls_with(format: &str, api: &FakeApi) -> String {
        let options = LsOptions {
            format: format.into(),
            ..LsOptions::default()
        };
        let done = run(|c| ls(api, &options, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        done.out
    }

    #[test]
    fn ls_prints_a_table_sorted_by_name() {
        let out = ls_with("table", &FakeApi::new([two_networks()]));
        assert_eq!(
            out,
            "NETWORK ID     NAME   DRIVER    SCOPE\n\
             aaaaaaaaaaaa   db     overlay   global\n\
             bbbbbbbbbbbb   web    overlay   global\n"
        );
    }

    #[test]
    fn ls_json_prints_one_object_a_line() {
        let out = ls_with("json", &FakeApi::new([two_networks()]));
        let line = |name: &str, id: &str| {
            format!(
                "{{\"CreatedAt\":\"2026-11-23T14:41:48.123Z\",\"Driver\":\"overlay\",\"ID\":\"{id}\",\
                 \"IPv4\":\"true\",\"IPv6\":\"false\",\"Internal\":\"false\",\"Labels\":\"\",\
                 \"Name\":\"{name}\",\"Scope\":\"global\"}}\n"
            )
        };
        assert_eq!(
            out,
            line("db", "aaaaaaaaaaaa") + &line("web", "bbbbbbbbbbbb")
        );
    }

    #[test]
    fn inspect_renders_the_template_and_asks_for_members_once() {
        let endpoint = Endpoint {
            network_id: "a".repeat(64),
            sandbox: "c1".into(),
            host: "h2".into(),
            ipv4: "10.20.0.2".into(),
            prefix_len: 24,
            ..Endpoint::default()
        };
        let members = Resp::Members(MemberList {
            members: vec![Member {
                host: Some(Host {
                    name: "h2".into(),
                    underlay: "192.168.200.2".into(),
                    ..Host::default()
                }),
                ..Member::default()
            }],
            ..MemberList::default()
        });
        let api = FakeApi::new([
            listed(vec![net("db", 'a', 4096)], vec![endpoint]),
            listed(vec![net("web", 'b', 4097)], Vec::new()),
            members,
        ]);
        let names = ["db".to_string(), "web".to_string()];
        let template = "{{.Name}} {{.Created}} {{range .Peers}}{{.IP}}{{end}}";
        let done = run(|c| inspect(&api, Some(template), &names, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert_eq!(
            done.out,
            "db 2026-11-23T14:41:48.123Z 192.168.200.2\nweb 2026-11-23T14:41:48.123Z \n"
        );
        let members_calls = api
            .requests
            .borrow()
            .iter()
            .filter(|r| matches!(r, Req::ClusterMembers(_)))
            .count();
        assert_eq!(members_calls, 1);
    }

    #[test]
    fn inspect_reports_an_unknown_name_shows_the_others_and_fails() {
        let api = FakeApi::new([
            error("network nope not found"),
            listed(vec![net("db", 'a', 4096)], Vec::new()),
            Resp::Members(MemberList::default()),
        ]);
        let names = ["nope".to_string(), "db".to_string()];
        let done = run(|c| inspect(&api, Some("{{.Name}}"), &names, c));
        assert_eq!(done.result.unwrap(), ExitCode::FAILURE);
        assert_eq!(done.out, "db\n");
        assert_eq!(
            done.err,
            "Error response from daemon: network nope not found\n"
        );
    }

    #[test]
    fn inspect_of_only_unknown_names_prints_an_empty_array() {
        let api = FakeApi::new([error("network nope not found")]);
        let done = run(|c| inspect(&api, None, &["nope".to_string()], c));
        assert_eq!(done.result.unwrap(), ExitCode::FAILURE);
        assert_eq!(done.out, "[]\n");
        assert_eq!(api.requests.borrow().len(), 1);
    }

    #[test]
    fn prune_without_a_yes_removes_nothing() {
        let api = FakeApi::new([]);
        let done = run(|c| prune(&api, false, c));
        assert_eq!(done.result.unwrap(), ExitCode::SUCCESS);
        assert!(
            done.err
                .ends_with("Are you sure you want to continue? [y/N] ")
        );
        assert_eq!(done.out, "");
        assert!(api.requests.borrow().is_empty());
    }

    #[test]
    fn malformed_key_values_are_refused() {
        let kv = |v: &[&str], what| {
            key_values(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), what)
        };
        assert_eq!(kv(&["a=1", "b="], "option").unwrap()["b"], "");
        assert_eq!(kv(&["bare"], "label").unwrap()["bare"], "");
        assert_eq!(
            kv(&["bare"], "option").unwrap_err().to_string(),
            "invalid option \"bare\": expected key=value"
        );
        assert!(kv(&["=1"], "label").is_err());
    }
}
