//! Ways out of a network, on this host: what the anycast gateway forwards, filters and NATs.
//!
//! Every host that serves a network puts the network's gateway address on the network's bridge,
//! with the same MAC everywhere (`fdb::gateway_mac`; see `links.rs`). This module adds the rest,
//! recomputed from the replicated state on every reconcile round ([`plan`], pure) and installed
//! only when it changed ([`Gateway::apply`]):
//!
//! - the agent's own nftables table, `inet vxnet`, replaced whole in one `nft -j -f -`
//!   transaction (a restart neither duplicates nor loses a rule; no other table is touched):
//!   - forward: within a network, anything; into another vxnet network (on any host), nothing;
//!     out of a non-internal network, anything (replies come back by conntrack); into it, only
//!     replies and the cluster's hosts; an `--internal` network forwards nothing either way;
//!   - input: a container reaches its host only with replies to the host's own connections,
//!     with pings to its gateway and with DNS (port 53, UDP and TCP) to its gateway, where the
//!     embedded resolver listens (`dns/`); nobody else reaches that port of a gateway address;
//!   - postrouting: what leaves a non-internal network for an address outside every vxnet
//!     network is masqueraded to this host's address;
//!   - neither the VXLAN datagrams nor traffic inside a network (bridged, but seen here when
//!     br_netfilter is on, as Docker leaves it) are connection-tracked (`notrack_in`,
//!     `notrack_out`): NAT turns tracking on for the namespace, and they would pay a lookup
//!     per packet (measured: 5% of the overlay's TCP throughput);
//! - a /32 route to every endpoint of a non-internal network on another host, via that host
//!   (`proto 86`): so a host reaches every endpoint (kubelet's node-to-pod rule) and the reply
//!   comes back the same way, through the owner's gateway;
//! - `net.ipv4.ip_forward = 1`.
//!
//! `nft delete table inet vxnet; ip route flush proto 86` removes everything this module made.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use vxnet_controlplane::state::State;
use vxnet_dataplane::io::{Netlink, ROUTE_PROTOCOL, Route4};

use super::links::bridge_name;

/// The agent's nftables table (family `inet`).
pub const TABLE: &str = "vxnet";

/// One network this host serves, as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayNetwork {
    /// Its bridge on this host.
    pub bridge: String,
    /// Its subnet.
    pub subnet: (Ipv4Addr, u8),
    /// Its gateway address.
    pub gateway: Ipv4Addr,
    /// No way in or out.
    pub internal: bool,
}

/// What this host must install.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayPlan {
    /// Networks with an endpoint on this host.
    pub local: Vec<GatewayNetwork>,
    /// Every vxnet network's subnet (isolation, and what is never masqueraded).
    pub subnets: BTreeSet<(Ipv4Addr, u8)>,
    /// Every host's underlay address (they may reach endpoints).
    pub hosts: BTreeSet<Ipv4Addr>,
    /// Routes to other hosts' endpoints.
    pub routes: BTreeSet<Route4>,
    /// The VXLAN UDP port: the underlay's own datagrams are never connection-tracked.
    pub vxlan_port: u16,
    /// Ports published on this host.
    pub ports: BTreeSet<PublishedPort>,
}

/// A port published on this host: DNAT to a local endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The host address it is published on; `None`: every local address.
    pub host_ip: Option<Ipv4Addr>,
    /// The host's port.
    pub host_port: u16,
    /// The endpoint's address.
    pub container: Ipv4Addr,
    /// The endpoint's port.
    pub container_port: u16,
}

/// `a.b.c.d/len` as address and prefix length.
pub fn parse_subnet(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = cidr.split_once('/')?;
    Some((addr.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
}

/// What host `host` (VXLAN on UDP `vxlan_port`) must install for `state`.
pub fn plan(state: &State, host: &str, vxlan_port: u16) -> GatewayPlan {
    let mut plan = GatewayPlan {
        vxlan_port,
        ..GatewayPlan::default()
    };
    let local_networks: BTreeSet<&str> = state
        .endpoints()
        .filter(|e| e.host == host)
        .map(|e| e.network_id.as_str())
        .collect();
    for network in state.networks() {
        let Some(subnet) = parse_subnet(&network.subnet) else {
            continue;
        };
        plan.subnets.insert(subnet);
        if local_networks.contains(network.id.as_str())
            && let Ok(gateway) = network.gateway.parse()
        {
            plan.local.push(GatewayNetwork {
                bridge: bridge_name(network.vni),
                subnet,
                gateway,
                internal: network.internal,
            });
        }
    }
    plan.local.sort();
    plan.hosts = state
        .hosts()
        .filter_map(|h| h.underlay.parse().ok())
        .collect();
    let internal: BTreeSet<&str> = state
        .networks()
        .filter(|n| n.internal)
        .map(|n| n.id.as_str())
        .collect();
    for endpoint in state.endpoints() {
        if endpoint.host == host && !internal.contains(endpoint.network_id.as_str()) {
            plan.ports.extend(published(endpoint));
        }
        if endpoint.host == host || internal.contains(endpoint.network_id.as_str()) {
            continue;
        }
        let (Ok(dst), Ok(via)) = (endpoint.ipv4.parse(), endpoint.vtep.parse()) else {
            continue;
        };
        plan.routes.insert(Route4 {
            dst,
            prefix_len: 32,
            gateway: Some(via),
        });
    }
    plan
}

/// An endpoint's mappings as the gateway installs them (malformed ones, which the state machine
/// never accepts, are skipped).
fn published(endpoint: &vxnet_proto::Endpoint) -> Vec<PublishedPort> {
    let Ok(container) = endpoint.ipv4.parse() else {
        return Vec::new();
    };
    endpoint
        .ports
        .iter()
        .filter_map(|p| {
            Some(PublishedPort {
                protocol: match p.protocol.as_str() {
                    "tcp" => "tcp",
                    "udp" => "udp",
                    _ => return None,
                },
                host_ip: match p.host_ip.parse::<Ipv4Addr>() {
                    _ if p.host_ip.is_empty() => None,
                    Ok(ip) if ip.is_unspecified() => None,
                    Ok(ip) => Some(ip),
                    Err(_) => return None,
                },
                host_port: u16::try_from(p.host_port).ok()?,
                container,
                container_port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect()
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn ct_key(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(nftables::expr::CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn ct_state() -> Expression<'static> {
    ct_key("state")
}

/// `ct status dnat`: the connection's destination was translated (a published port).
fn is_dnat() -> Statement<'static> {
    Statement::Match(Match {
        left: ct_key("status"),
        right: text("dnat"),
        op: Operator::IN,
    })
}

/// `fib daddr type`: whether the destination is one of this host's addresses.
fn local_daddr() -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(nftables::expr::Fib {
        result: nftables::expr::FibResult::Type,
        flags: std::collections::HashSet::from([nftables::expr::FibFlag::Daddr]),
    }))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn is_not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(s.to_string().into())
}

fn prefix((addr, len): (Ipv4Addr, u8)) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(text(&addr.to_string())),
        len: u32::from(len),
    }))
}

fn set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

fn replies() -> Expression<'static> {
    set(vec![text("established"), text("related")])
}

const ACCEPT: Statement<'static> = Statement::Accept(None);
const DROP: Statement<'static> = Statement::Drop(None);

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

/// Deletes the table: created first, so that the delete cannot fail when it is missing.
fn delete_table() -> Vec<NfObject<'static>> {
    vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
    ]
}

/// The whole `inet vxnet` table for `plan`, as one transaction that replaces the table.
pub fn ruleset(plan: &GatewayPlan) -> Nftables<'static> {
    // Delete whatever is there, then build: one atomic replacement.
    let mut objects = delete_table();
    objects.push(NfObject::CmdObject(NfCmd::Add(
        NfListObject::Table(table()),
    )));
    let chain = |name: &'static str, kind: NfChainType, hook: NfHook, prio: i32| {
        NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        })))
    };
    objects.push(chain("forward", NfChainType::Filter, NfHook::Forward, 0));
    objects.push(chain("input", NfChainType::Filter, NfHook::Input, 0));
    // Per-network input rules sit in a regular chain that only packets from a vxnet bridge
    // enter: the underlay's datagrams, the bulk of this host's input, pass with one comparison.
    objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
        Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: "from_networks".into(),
            ..Chain::default()
        },
    ))));
    objects.push(chain(
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    ));
    // Published ports: connections to this host (from elsewhere, and from the host itself).
    objects.push(chain(
        "prerouting",
        NfChainType::NAT,
        NfHook::Prerouting,
        -100,
    ));
    objects.push(chain("output", NfChainType::NAT, NfHook::Output, -100));
    // NAT turns connection tracking on for the whole namespace; the VXLAN datagrams need none
    // (they are never NATed or filtered here) and would pay a lookup each.
    objects.push(chain(
        "notrack_in",
        NfChainType::Filter,
        NfHook::Prerouting,
        -300,
    ));
    objects.push(chain(
        "notrack_out",
        NfChainType::Filter,
        NfHook::Output,
        -300,
    ));
    let mut rules: Vec<(&'static str, Vec<Statement<'static>>)> = Vec::new();
    if !plan.local.is_empty() {
        rules.push((
            "input",
            vec![
                is(meta(MetaKey::Iifname), text("vxb-*")),
                Statement::Jump(nftables::stmt::JumpTarget {
                    target: "from_networks".into(),
                }),
            ],
        ));
        // Only a network's own containers (above) and the host itself ask the resolver on its
        // gateway address: a query from the underlay could carry a container's address.
        // One rule, whose first comparisons fail fast for the VXLAN datagrams.
        let gateways = plan
            .local
            .iter()
            .map(|n| text(&n.gateway.to_string()))
            .collect();
        rules.push((
            "input",
            vec![
                is(meta(MetaKey::L4proto), set(vec![text("udp"), text("tcp")])),
                is(field("th", "dport"), Expression::Number(53)),
                is(field("ip", "daddr"), set(gateways)),
                is_not(meta(MetaKey::Iifname), text("lo")),
                DROP,
            ],
        ));
    }
    for chain in ["notrack_in", "notrack_out"] {
        rules.push((
            chain,
            vec![
                is(
                    field("udp", "dport"),
                    Expression::Number(u32::from(plan.vxlan_port)),
                ),
                Statement::Notrack,
            ],
        ));
    }
    let subnets = || set(plan.subnets.iter().copied().map(prefix).collect());
    // Connections a port mapping sent into a network (published ports, CNI's portmap), both
    // ways, before the isolation rules: a published port is reachable from every network, as
    // in Docker. Internal networks have no way in.
    let open: Vec<Expression<'static>> = plan
        .local
        .iter()
        .filter(|n| !n.internal)
        .map(|n| text(&n.bridge))
        .collect();
    if !open.is_empty() {
        for key in [MetaKey::Oifname, MetaKey::Iifname] {
            rules.push((
                "forward",
                vec![is_dnat(), is(meta(key), set(open.clone())), ACCEPT],
            ));
        }
    }
    for port in &plan.ports {
        let daddr = match port.host_ip {
            Some(ip) => is(field("ip", "daddr"), text(&ip.to_string())),
            None => is(local_daddr(), text("local")),
        };
        let dnat = Statement::DNAT(Some(nftables::stmt::NAT {
            addr: Some(text(&port.container.to_string())),
            family: Some(nftables::stmt::NATFamily::IP),
            port: Some(Expression::Number(u32::from(port.container_port))),
            flags: None,
        }));
        for chain in ["prerouting", "output"] {
            rules.push((
                chain,
                vec![
                    daddr.clone(),
                    is(
                        field(port.protocol, "dport"),
                        Expression::Number(u32::from(port.host_port)),
                    ),
                    dnat.clone(),
                ],
            ));
        }
    }
    for net in &plan.local {
        let iif = || is(meta(MetaKey::Iifname), text(&net.bridge));
        let oif = || is(meta(MetaKey::Oifname), text(&net.bridge));
        // With br_netfilter (Docker loads it) bridged frames pass these hooks too: traffic
        // inside a network, which only the bridge and the overlay carry, needs no tracking.
        rules.push((
            "notrack_in",
            vec![
                iif(),
                is(field("ip", "saddr"), prefix(net.subnet)),
                is(field("ip", "daddr"), prefix(net.subnet)),
                is_not(field("ip", "daddr"), text(&net.gateway.to_string())),
                Statement::Notrack,
            ],
        ));
        rules.push(("forward", vec![iif(), oif(), ACCEPT]));
        rules.push((
            "forward",
            vec![iif(), is(field("ip", "daddr"), subnets()), DROP],
        ));
        rules.push((
            "forward",
            vec![oif(), is(field("ip", "saddr"), subnets()), DROP],
        ));
        if net.internal {
            rules.push(("forward", vec![iif(), DROP]));
            rules.push(("forward", vec![oif(), DROP]));
        } else {
            rules.push(("forward", vec![iif(), ACCEPT]));
            rules.push(("forward", vec![oif(), is(ct_state(), replies()), ACCEPT]));
            if !plan.hosts.is_empty() {
                let hosts = set(plan.hosts.iter().map(|h| text(&h.to_string())).collect());
                rules.push((
                    "forward",
                    vec![oif(), is(field("ip", "saddr"), hosts), ACCEPT],
                ));
            }
            rules.push(("forward", vec![oif(), DROP]));
            // A container reaching a published port of its own network through the host: the
            // answer must come back through the host too.
            rules.push((
                "postrouting",
                vec![
                    is_dnat(),
                    oif(),
                    is(field("ip", "saddr"), prefix(net.subnet)),
                    Statement::Masquerade(None),
                ],
            ));
            rules.push((
                "postrouting",
                vec![
                    is(field("ip", "saddr"), prefix(net.subnet)),
                    is_not(meta(MetaKey::Oifname), text(&net.bridge)),
                    is_not(field("ip", "daddr"), subnets()),
                    Statement::Masquerade(None),
                ],
            ));
        }
        rules.push((
            "from_networks",
            vec![iif(), is(ct_state(), replies()), ACCEPT],
        ));
        rules.push((
            "from_networks",
            vec![
                iif(),
                is(field("ip", "daddr"), text(&net.gateway.to_string())),
                is(field("icmp", "type"), text("echo-request")),
                ACCEPT,
            ],
        ));
        // The embedded resolver listens on the gateway address (`dns/`).
        for protocol in ["udp", "tcp"] {
            rules.push((
                "from_networks",
                vec![
                    iif(),
                    is(field("ip", "daddr"), text(&net.gateway.to_string())),
                    is(field(protocol, "dport"), Expression::Number(53)),
                    ACCEPT,
                ],
            ));
        }
        rules.push(("from_networks", vec![iif(), DROP]));
    }
    for (chain, expr) in rules {
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: chain.into(),
            expr: expr.into(),
            ..Rule::default()
        }))));
    }
    Nftables {
        objects: objects.into(),
    }
}

/// The ruleset as `nft -j` reads it. The crate writes the `notrack` statement as a bare
/// string, which nft 1.0 refuses ("expected object"): it is written as `{"notrack": null}`.
pub fn to_json(ruleset: &Nftables<'_>) -> Result<String, String> {
    fn fix(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s == "notrack" => {
                *v = serde_json::json!({ "notrack": null });
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(fix),
            serde_json::Value::Object(m) => m.values_mut().for_each(fix),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(ruleset).map_err(|e| e.to_string())?;
    fix(&mut v);
    Ok(v.to_string())
}

/// Runs `nft -j -f -` with `ruleset` (one transaction), off the async runtime.
async fn nft_apply(ruleset: Nftables<'static>) -> Result<(), String> {
    let payload = to_json(&ruleset)?;
    tokio::task::spawn_blocking(move || {
        nftables::helper::apply_ruleset_raw(
            &payload,
            nftables::helper::DEFAULT_NFT,
            nftables::helper::DEFAULT_ARGS,
        )
        .map(drop)
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Installs plans, remembering the last one so that an unchanged plan costs nothing.
#[derive(Debug, Default)]
pub struct Gateway {
    applied: Mutex<Option<GatewayPlan>>,
    /// The errors of the last round: the same ones again are not reported again (an agent
    /// without `nft` would otherwise log them every round).
    last_errors: Mutex<Vec<String>>,
}

impl Gateway {
    /// Installs `plan` unless it is the one installed last (`full`: install anyway, checking
    /// the kernel's routes, as after a restart or to repair changes made behind our back).
    /// Returns what failed; the next round tries again.
    pub async fn apply(&self, netlink: &Netlink, plan: &GatewayPlan, full: bool) -> Vec<String> {
        let last = {
            let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            if !full && applied.as_ref() == Some(plan) {
                return Vec::new();
            }
            applied.clone()
        };
        let mut errors = Vec::new();
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n") {
            errors.push(format!("net.ipv4.ip_forward=1: {e}"));
        }
        let rules = ruleset(plan);
        if (full || last.is_none_or(|l| ruleset(&l) != rules))
            && let Err(e) = nft_apply(rules).await
        {
            errors.push(format!("nftables table inet {TABLE}: {e}"));
        }
        match netlink.routes_v4(Some(ROUTE_PROTOCOL)).await {
            Ok(have) => {
                let have: BTreeSet<Route4> = have.into_iter().collect();
                for stale in have.difference(&plan.routes) {
                    if let Err(e) = netlink.delete_route_v4(*stale).await {
                        errors.push(e.to_string());
                    }
                }
                for missing in plan.routes.difference(&have) {
                    if let Err(e) = netlink.replace_route_v4(*missing).await {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) =
            errors.is_empty().then(|| plan.clone());
        let mut last = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        if *last == errors {
            return Vec::new();
        }
        last.clone_from(&errors);
        errors
    }

    /// Removes the table and the routes (`cluster leave`).
    pub async fn remove_all(&self, netlink: &Netlink) -> Vec<String> {
        let mut errors = Vec::new();
        let delete = Nftables {
            objects: delete_table().into(),
        };
        if let Err(e) = nft_apply(delete).await {
            errors.push(e);
        }
        if let Ok(routes) = netlink.routes_v4(Some(ROUTE_PROTOCOL)).await {
            for route in routes {
                if let Err(e) = netlink.delete_route_v4(route).await {
                    errors.push(e.to_string());
                }
            }
        }
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = None;
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, third: u8, internal: bool) -> GatewayNetwork {
        GatewayNetwork {
            bridge: bridge.into(),
            subnet: (Ipv4Addr::new(10, 41, third, 0), 24),
            gateway: Ipv4Addr::new(10, 41, third, 1),
            internal,
        }
    }

    fn rules_of(json: &serde_json::Value, chain: &str) -> Vec<String> {
        json["nftables"]
            .as_array()
            .expect("objects")
            .iter()
            .filter_map(|o| o["add"]["rule"].as_object())
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].to_string())
            .collect()
    }

    #[test]
    fn the_table_is_replaced_whole_and_internal_networks_forward_nothing() {
        let plan = GatewayPlan {
            local: vec![net("vxb-4096", 0, false), net("vxb-4097", 1, true)],
            subnets: [
                (Ipv4Addr::new(10, 41, 0, 0), 24),
                (Ipv4Addr::new(10, 41, 1, 0), 24),
            ]
            .into(),
            hosts: [Ipv4Addr::new(192, 168, 200, 1)].into(),
            routes: BTreeSet::new(),
            vxlan_port: 4789,
            ports: [PublishedPort {
                protocol: "udp",
                host_ip: None,
                host_port: 8081,
                container: Ipv4Addr::new(10, 41, 0, 2),
                container_port: 81,
            }]
            .into(),
        };
        let json = serde_json::to_value(ruleset(&plan)).expect("json");
        let objects = json["nftables"].as_array().expect("objects");
        // Create, delete, create: one transaction that replaces whatever was there.
        assert!(objects[0]["add"]["table"]["name"] == TABLE);
        assert!(objects[1]["delete"]["table"]["name"] == TABLE);
        assert!(objects[2]["add"]["table"]["name"] == TABLE);
        let all_nat = rules_of(&json, "postrouting");
        let nat: Vec<&String> = all_nat.iter().filter(|r| !r.contains("dnat")).collect();
        assert_eq!(
            nat.len(),
            1,
            "only the non-internal network is masqueraded: {nat:?}"
        );
        // The published port: DNAT for connections from elsewhere and from the host itself.
        for chain in ["prerouting", "output"] {
            let dnat = rules_of(&json, chain);
            assert_eq!(dnat.len(), 1, "{chain}: {dnat:?}");
            assert!(
                dnat[0].contains("8081")
                    && dnat[0].contains("10.41.0.2")
                    && dnat[0].contains("fib"),
                "{chain}: {dnat:?}"
            );
        }
        assert!(nat[0].contains("masquerade") && nat[0].contains("10.41.0.0"));
        let forward = rules_of(&json, "forward");
        let internal: Vec<&String> = forward.iter().filter(|r| r.contains("vxb-4097")).collect();
        assert!(
            internal
                .iter()
                .all(|r| !r.contains("\"accept\"") || r.contains("oifname")),
            "an internal network accepts only traffic inside itself: {internal:?}"
        );
        let input = rules_of(&json, "input");
        assert_eq!(
            input.len(),
            2,
            "one jump for packets from the bridges, one guard of the resolver: {input:?}"
        );
        assert!(
            input[1].contains("\"th\"") && input[1].contains("10.41.0.1"),
            "{input:?}"
        );
        let from_networks = rules_of(&json, "from_networks");
        assert_eq!(
            from_networks.len(),
            10,
            "five per network: replies, ping, DNS over UDP and TCP, drop"
        );
        assert!(
            from_networks
                .iter()
                .filter(|r| r.contains("\"dport\"") && r.contains("53"))
                .count()
                == 4,
            "port 53 of each gateway: {from_networks:?}"
        );
        // The same plan gives the same bytes (so a restart installs an identical table).
        assert_eq!(serde_json::to_value(ruleset(&plan)).expect("json"), json);
        // The VXLAN datagrams bypass conntrack, written the way nft reads it.
        let text = to_json(&ruleset(&plan)).expect("json");
        assert!(text.contains(r#"{"notrack":null}"#), "{text}");
        assert!(!text.contains(r#""notrack"]"#), "{text}");
    }

    #[test]
    fn subnets_parse_strictly() {
        assert_eq!(
            parse_subnet("10.1.2.0/24"),
            Some((Ipv4Addr::new(10, 1, 2, 0), 24))
        );
        assert_eq!(parse_subnet("10.1.2.0/33"), None);
        assert_eq!(parse_subnet("10.1.2.0"), None);
        assert_eq!(parse_subnet("x/24"), None);
    }
}
