//! The API's read-only answers: network lists and inspection, cluster members, this host's
//! forwarding table, and counters. All come from this host's applied state and live tables,
//! so they keep working in a minority partition; only `members` asks the leader (for who is
//! reachable), bounded and optional.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use vxnet_controlplane::node::MemberRole;
use vxnet_dataplane::fdb::MacLocation;
use vxnet_proto::{
    ApiResponse, ErrorKind, FdbList, Member, MemberList, NetworkList, StaticVtep, Stats,
    api_response::Kind as Resp,
};

use super::Agent;
use super::server::error;

pub(super) fn networks(agent: &Agent, names: &[String]) -> ApiResponse {
    let state = Arc::clone(&agent.driver.view().state);
    let mut list = NetworkList::default();
    if names.is_empty() {
        list.networks = state.networks().cloned().collect();
    } else {
        for name in names {
            match state.resolve_network(name) {
                Ok(network) => list.networks.push(network.clone()),
                Err(_) => return error(ErrorKind::NotFound, format!("network {name} not found")),
            }
        }
    }
    list.endpoints = state
        .endpoints()
        .filter(|e| list.networks.iter().any(|n| n.id == e.network_id))
        .cloned()
        .collect();
    list.reservations = state
        .reservations()
        .filter(|r| list.networks.iter().any(|n| n.id == r.network_id))
        .cloned()
        .collect();
    ApiResponse {
        kind: Some(Resp::Networks(list)),
    }
}

/// How long `cluster members` waits for the leader's view of who is reachable.
const REACH_WAIT: Duration = Duration::from_secs(1);

pub(super) async fn members(agent: &Agent) -> ApiResponse {
    let view = agent.driver.view();
    let roles: BTreeMap<u64, _> = view.members.iter().map(|m| (m.node_id, *m)).collect();
    // A host connects only to the hosts it talks to (the leader; voters during elections),
    // while the leader reaches every member: its view completes ours. Without an answer
    // (no leader, an older leader, a partition) this host's own view stands.
    let leader_addr = view
        .leader_id
        .filter(|&l| l != view.node_id)
        .and_then(|l| view.state.hosts().find(|h| h.node_id == l))
        .map(|h| h.peer_addr.clone());
    let via_leader: BTreeSet<u64> = match leader_addr {
        Some(addr) => agent
            .transport
            .reachable_via(&addr, REACH_WAIT)
            .await
            .map(|ids| ids.into_iter().collect())
            .unwrap_or_default(),
        None => BTreeSet::new(),
    };
    let members = view
        .state
        .hosts()
        .map(|host| {
            let status = roles.get(&host.node_id);
            let role = match status.map(|s| s.role) {
                Some(MemberRole::Voter) => "voter",
                Some(MemberRole::Learner) => "learner",
                None => "joining",
            };
            let reachable = host.node_id == view.node_id
                || agent.transport.is_reachable(host.node_id)
                || via_leader.contains(&host.node_id);
            Member {
                host: Some(host.clone()),
                role: role.into(),
                matched: status.and_then(|s| s.matched).unwrap_or(0),
                reachable,
            }
        })
        .collect();
    ApiResponse {
        kind: Some(Resp::Members(MemberList {
            members,
            leader_id: view.leader_id.unwrap_or(0),
            term: view.term,
            commit_index: view.commit_index,
            applied_index: view.applied_index,
            self_name: agent.config.name.clone(),
        })),
    }
}

/// This host's forwarding table as the data plane holds it, like `bridge fdb show`.
pub(super) fn fdb_show(agent: &Agent, network: Option<&str>) -> ApiResponse {
    let view = agent.driver.view();
    let state = &view.state;
    let only_vni = match network.map(|n| state.resolve_network(n)) {
        Some(Ok(net)) => Some(net.vni),
        Some(Err(_)) => {
            return error(
                ErrorKind::NotFound,
                format!("network {} not found", network.unwrap_or("")),
            );
        }
        None => None,
    };
    let fib = agent.fib.load();
    let mut entries = Vec::new();
    let mut tables: Vec<_> = fib
        .networks()
        .filter(|t| only_vni.is_none_or(|v| v == t.vni()))
        .collect();
    tables.sort_by_key(|t| t.vni());
    for table in tables {
        let network_id = state
            .networks()
            .find(|n| n.vni == table.vni())
            .map(|n| n.id.clone())
            .unwrap_or_default();
        let ip_of: BTreeMap<_, _> = table.neighbors().map(|(ip, mac)| (mac, ip)).collect();
        let mut macs: Vec<_> = table.macs().collect();
        macs.sort_by_key(|(mac, _)| *mac);
        for (mac, location) in macs {
            let (vtep, origin) = match location {
                MacLocation::Local => (String::new(), "local".to_string()),
                MacLocation::Remote(vtep) => {
                    let mac_text = mac.to_string();
                    let origin = state
                        .endpoints()
                        .find(|e| e.vni == table.vni() && e.mac == mac_text)
                        .map(|e| format!("endpoint:{}", e.host))
                        .unwrap_or_else(|| "static".into());
                    (vtep.to_string(), origin)
                }
            };
            entries.push(StaticVtep {
                network_id: network_id.clone(),
                vtep,
                mac: mac.to_string(),
                ipv4: ip_of.get(&mac).map(|ip| ip.to_string()).unwrap_or_default(),
                vni: table.vni(),
                origin,
            });
        }
        for vtep in table.flood_list() {
            entries.push(StaticVtep {
                network_id: network_id.clone(),
                vtep: vtep.to_string(),
                vni: table.vni(),
                origin: "flood".into(),
                ..StaticVtep::default()
            });
        }
    }
    ApiResponse {
        kind: Some(Resp::Fdb(FdbList { entries })),
    }
}

/// The name of the network with VNI `vni`, or the VNI itself while the state has none (a network
/// being removed): how `stats` and the metrics label per-network counters.
pub(crate) fn network_name(state: &vxnet_controlplane::State, vni: u32) -> String {
    state
        .networks()
        .find(|n| n.vni == vni)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| vni.to_string())
}

pub(super) fn stats(agent: &Agent) -> ApiResponse {
    let mut counters = BTreeMap::new();
    for (reason, count) in agent.stats.snapshot() {
        counters.insert(format!("drop.{reason}"), count);
    }
    for (call, count) in agent.stats.io_errors() {
        counters.insert(format!("io_error.{call}"), count);
    }
    for (index, worker) in agent.stats.per_worker().into_iter().enumerate() {
        for (name, count) in worker {
            counters.insert(format!("worker.{index}.{name}"), count);
        }
    }
    let dataplane = &agent.reconciler.dataplane;
    let steering = dataplane.steering();
    for (name, value) in [
        ("workers", dataplane.workers() as u64),
        ("reuseport_program", u64::from(steering.reuseport_program)),
        ("taps_steered", steering.taps_steered as u64),
        ("taps_automatic", steering.taps_automatic as u64),
    ] {
        counters.insert(format!("steering.{name}"), value);
    }
    let view = agent.driver.view();
    let fib = agent.fib.load();
    for table in fib.networks() {
        let name = network_name(&view.state, table.vni());
        let c = table.counters().read();
        counters.insert(format!("net.{name}.rx_packets"), c.rx_packets);
        counters.insert(format!("net.{name}.rx_bytes"), c.rx_bytes);
        counters.insert(format!("net.{name}.tx_packets"), c.tx_packets);
        counters.insert(format!("net.{name}.tx_bytes"), c.tx_bytes);
        counters.insert(format!("net.{name}.arp_nd_suppressed"), c.suppressed);
        counters.insert(
            format!("net.{name}.tap_queue_drops"),
            super::links::tap_queue_drops(table.vni()),
        );
    }
    for (name, count) in agent.dns.counters() {
        counters.insert(format!("dns.{name}"), count);
    }
    let t = agent.transport.stats();
    for (name, count) in [
        ("raft_sent", t.raft_sent),
        ("raft_send_dropped", t.raft_send_dropped),
        ("raft_delivered", t.raft_delivered),
        ("bad_raft_payloads", t.bad_raft_payloads),
        ("misaddressed", t.misaddressed),
        ("inbound_dropped", t.inbound_dropped),
        ("handshakes_refused", t.handshakes_refused),
        (
            "connections_closed_bad_input",
            t.connections_closed_bad_input,
        ),
        ("unreachable_reported", t.unreachable_reported),
        ("tls_accepted", t.tls_accepted),
        ("legacy_accepted", t.legacy_accepted),
        ("joins_refused", t.joins_refused),
        ("connections_closed_revoked", t.connections_closed_revoked),
        ("connections_rate_limited", t.connections_rate_limited),
    ] {
        counters.insert(format!("transport.{name}"), count);
    }
    counters.insert("fib.mac_entries".into(), fib.mac_count() as u64);
    counters.insert("raft.term".into(), view.term);
    counters.insert("raft.commit_index".into(), view.commit_index);
    counters.insert("raft.applied_index".into(), view.applied_index);
    counters.insert("raft.leader_id".into(), view.leader_id.unwrap_or(0));
    // This server runs only once the agent is ready; while starting, `starting` answers 0.
    counters.insert("agent.ready".into(), 1);
    let health = agent.driver.health();
    counters.insert(
        "storage.writable".into(),
        u64::from(!health.storage_failed()),
    );
    counters.insert("storage.failures".into(), health.storage_failures());
    counters.insert("storage.recoveries".into(), health.storage_recoveries());
    ApiResponse {
        kind: Some(Resp::Stats(Stats { counters })),
    }
}
