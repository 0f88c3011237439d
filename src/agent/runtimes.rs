//! The API requests runtimes (Docker's remote driver) make, beyond the CLI's: attaching their
//! networks, reserving addresses before an endpoint exists, connecting endpoints whose interface
//! the runtime moves, and making or deleting that interface. Also the clean-up of what a runtime
//! left behind when it died: endpoints that lost their pair and reservations no endpoint uses.
//!
//! Commands of a newer level are proposed only when every host applies that level, so a cluster
//! in the middle of a rolling upgrade never has replicas that disagree about them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vxnet_controlplane::state::{APPLY_LEVEL, RUNTIME_CNI, RUNTIME_DOCKER, State};
use vxnet_proto::{
    ApiResponse, AttachDockerNetwork, ConnectEndpoint, DetachDockerNetwork, DisconnectEndpoint,
    Empty, EndpointLink, ErrorKind, ReleaseAddress, ReportLevel, ReserveAddress, Response,
    SetEndpointPorts, api_response::Kind as Resp, command, response,
};

use super::server::{error, from_submit};
use super::{Agent, unix_ms};

/// How long a runtime-attached endpoint may stay without its pair before it is removed: Join
/// follows CreateEndpoint within milliseconds, so only a dead runtime or sandbox waits longer.
pub const UNLINKED_GRACE: Duration = Duration::from_secs(30);
/// How long a reservation may stay without an endpoint before it is released: a runtime asks
/// for the address right before it creates the endpoint and releases it right after deleting it.
pub const UNUSED_RESERVATION_GRACE: Duration = Duration::from_secs(60);

/// The command level of runtime networks, address reservations and runtime endpoints (see
/// [`vxnet_controlplane::state::command_level`]).
const RUNTIME_LEVEL: u32 = 1;

/// Refuses a runtime command while some host runs a release that would not apply it.
fn level_gate(agent: &Agent) -> Option<ApiResponse> {
    let state = Arc::clone(&agent.driver.view().state);
    let old: Vec<String> = state
        .hosts()
        .filter(|h| h.level < RUNTIME_LEVEL)
        .map(|h| h.name.clone())
        .collect();
    if old.is_empty() {
        return None;
    }
    Some(error(
        ErrorKind::Invalid,
        format!(
            "host(s) {} run an older vxnet release that does not know runtime networks and \
             address reservations: upgrade every host first (a host reports its release when its \
             agent starts)",
            old.join(", ")
        ),
    ))
}

/// `docker_network_attach`: this host's runtime network joins (or creates) a vxnet network.
pub async fn attach(agent: &Agent, mut attach: AttachDockerNetwork) -> ApiResponse {
    if let Some(refused) = level_gate(agent) {
        return refused;
    }
    attach.host = agent.config.name.clone();
    if let Some(network) = attach.network.as_mut() {
        if network.driver.is_empty() {
            network.driver = "overlay".into();
        }
        if network.id.is_empty() {
            network.id = super::random_id();
        }
        network.created_unix_ms = unix_ms();
    }
    from_submit(
        agent
            .submit(command::Kind::AttachDockerNetwork(attach))
            .await,
    )
}

/// `docker_network_detach`.
pub async fn detach(agent: &Agent, mut detach: DetachDockerNetwork) -> ApiResponse {
    detach.host = agent.config.name.clone();
    let result = agent
        .submit(command::Kind::DetachDockerNetwork(detach))
        .await;
    agent.reconcile_once().await;
    from_submit(result)
}

/// `address_reserve`.
pub async fn reserve(agent: &Agent, mut reserve: ReserveAddress) -> ApiResponse {
    if let Some(refused) = level_gate(agent) {
        return refused;
    }
    reserve.host = agent.config.name.clone();
    from_submit(agent.submit(command::Kind::ReserveAddress(reserve)).await)
}

/// `address_release`.
pub async fn release(agent: &Agent, mut release: ReleaseAddress) -> ApiResponse {
    release.host = agent.config.name.clone();
    from_submit(agent.submit(command::Kind::ReleaseAddress(release)).await)
}

/// Refuses a connect the agent makes itself (CLI, CNI) whose runtime is unknown, or that uses
/// fields older releases would ignore while one still runs.
pub fn check_plain_connect(agent: &Agent, connect: &ConnectEndpoint) -> Option<ApiResponse> {
    if !connect.runtime.is_empty() && connect.runtime != RUNTIME_CNI {
        return Some(error(
            ErrorKind::Invalid,
            format!("unknown runtime {:?}", connect.runtime),
        ));
    }
    if connect.runtime.is_empty() && connect.interface.is_empty() && connect.publish.is_empty() {
        return None;
    }
    level_gate(agent)
}

/// `network_connect` with a runtime: the endpoint is committed (its address from the caller's
/// reservation) and the network's links made; the interface waits for [`link`].
pub async fn connect(agent: &Agent, mut connect: ConnectEndpoint) -> ApiResponse {
    if let Some(refused) = level_gate(agent) {
        return refused;
    }
    if connect.runtime != RUNTIME_DOCKER {
        return error(
            ErrorKind::Invalid,
            format!("unknown runtime {:?}", connect.runtime),
        );
    }
    connect.host = agent.config.name.clone();
    let result = agent.submit(command::Kind::ConnectEndpoint(connect)).await;
    // The bridge and TAP for the network, so that Join finds them.
    agent.reconcile_once().await;
    from_submit(result)
}

/// `endpoint_ports`: replaces the published ports of one of this host's endpoints.
pub async fn set_ports(agent: &Agent, mut ports: SetEndpointPorts) -> ApiResponse {
    if let Some(refused) = level_gate(agent) {
        return refused;
    }
    ports.host = agent.config.name.clone();
    let result = agent.submit(command::Kind::SetEndpointPorts(ports)).await;
    agent.reconcile_once().await;
    from_submit(result)
}

/// `endpoint_link`: makes the pair of one of this host's runtime-attached endpoints.
pub async fn link(agent: &Agent, request: EndpointLink) -> ApiResponse {
    let state = Arc::clone(&agent.driver.view().state);
    let Some(endpoint) = state
        .endpoints()
        .find(|e| e.id == request.endpoint_id)
        .cloned()
    else {
        return error(
            ErrorKind::NotFound,
            format!("endpoint {} not found", request.endpoint_id),
        );
    };
    if endpoint.host != agent.config.name || endpoint.runtime != RUNTIME_DOCKER {
        return error(
            ErrorKind::Invalid,
            format!(
                "endpoint {} is not a runtime endpoint of host {}",
                endpoint.name, agent.config.name
            ),
        );
    }
    let Some(network) = state
        .networks()
        .find(|n| n.id == endpoint.network_id)
        .cloned()
    else {
        return error(
            ErrorKind::NotFound,
            format!("network {} not found", endpoint.network_id),
        );
    };
    let made = {
        let _guard = agent.links_lock.lock().await;
        agent
            .reconciler
            .link_runtime_endpoint(&endpoint, &network, &request.interface_name)
            .await
    };
    match made {
        Ok(()) => ok(),
        Err(e) => error(
            ErrorKind::Unspecified,
            format!("making the interface of endpoint {}: {e}", endpoint.name),
        ),
    }
}

/// `endpoint_unlink`: deletes the pair if it is still there; unknown endpoints are fine.
pub async fn unlink(agent: &Agent, request: EndpointLink) -> ApiResponse {
    let result = {
        let _guard = agent.links_lock.lock().await;
        agent
            .reconciler
            .unlink_runtime_endpoint(&request.endpoint_id)
            .await
    };
    match result {
        Ok(()) => ok(),
        Err(e) => error(
            ErrorKind::Unspecified,
            format!("deleting the interface: {e}"),
        ),
    }
}

fn ok() -> ApiResponse {
    ApiResponse {
        kind: Some(Resp::Ok(Empty {})),
    }
}

/// The applied response of a successful write, if it was one.
pub fn applied(response: &ApiResponse) -> Option<&response::Kind> {
    match &response.kind {
        Some(Resp::Applied(Response { kind })) => kind.as_ref(),
        _ => None,
    }
}

/// Things first seen at some moment, for grace periods. Pure: the caller passes `now`.
#[derive(Debug, Default)]
pub struct Since<K: Ord> {
    first_seen: BTreeMap<K, Instant>,
}

impl<K: Ord + Clone> Since<K> {
    /// Records the current set (forgetting what left it) and returns the keys present for at
    /// least `grace`.
    pub fn due(&mut self, current: BTreeSet<K>, now: Instant, grace: Duration) -> Vec<K> {
        self.first_seen.retain(|k, _| current.contains(k));
        for k in current {
            self.first_seen.entry(k).or_insert(now);
        }
        self.first_seen
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= grace)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// What a runtime left behind, tracked between reconcile rounds.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Runtime-attached endpoints of this host without their pair, by id.
    pub unlinked: Since<String>,
    /// This host's reservations no endpoint uses, by (network id, address).
    pub unused: Since<(String, String)>,
}

/// This host's reservations that no endpoint of the network uses.
pub fn unused_reservations(state: &State, host: &str) -> BTreeSet<(String, String)> {
    let used: BTreeSet<(&str, &str)> = state
        .endpoints()
        .map(|e| (e.network_id.as_str(), e.ipv4.as_str()))
        .collect();
    state
        .reservations()
        .filter(|r| r.host == host && !used.contains(&(r.network_id.as_str(), r.ipv4.as_str())))
        .map(|r| (r.network_id.clone(), r.ipv4.clone()))
        .collect()
}

impl Agent {
    /// Removes runtime-attached endpoints that stayed without their pair, and releases
    /// reservations no endpoint used, past their grace periods. `unlinked` comes from the
    /// reconcile round that just ended.
    pub(super) async fn clean_runtime_leftovers(&self, unlinked: BTreeSet<String>) {
        let state = Arc::clone(&self.driver.view().state);
        let now = Instant::now();
        let unused = unused_reservations(&state, &self.config.name);
        let (stale_endpoints, stale_reservations) = {
            let mut leftovers = self.leftovers.lock().unwrap_or_else(|e| e.into_inner());
            (
                leftovers.unlinked.due(unlinked, now, UNLINKED_GRACE),
                leftovers.unused.due(unused, now, UNUSED_RESERVATION_GRACE),
            )
        };
        for id in stale_endpoints {
            let Some(endpoint) = state.endpoints().find(|e| e.id == id) else {
                continue;
            };
            tracing::info!(
                endpoint = endpoint.name,
                ip = endpoint.ipv4,
                "runtime endpoint has no interface (its sandbox or runtime is gone): removing it"
            );
            self.remove_gone(endpoint).await;
        }
        for (network, ipv4) in stale_reservations {
            tracing::info!(
                network,
                ip = ipv4,
                "address reserved by a runtime but unused: releasing it"
            );
            let command = command::Kind::ReleaseAddress(ReleaseAddress {
                network,
                host: self.config.name.clone(),
                ipv4,
            });
            if let Err(e) = self.submit(command).await {
                tracing::warn!("cannot release a reservation: {e}");
            }
        }
    }

    /// Removes one of this host's endpoints whose sandbox or runtime is gone, with the address
    /// its runtime reserved (nobody is left to release it).
    pub(super) async fn remove_gone(&self, endpoint: &vxnet_proto::Endpoint) {
        let command = command::Kind::DisconnectEndpoint(DisconnectEndpoint {
            network: endpoint.network_id.clone(),
            sandbox: endpoint.sandbox.clone(),
            host: endpoint.host.clone(),
            force: true,
            endpoint_id: endpoint.id.clone(),
            release_address: !endpoint.runtime.is_empty(),
        });
        if let Err(e) = self.submit(command).await {
            tracing::warn!("cannot remove endpoint {}: {e}", endpoint.name);
        }
    }

    /// Records this build's command level in the state (once per level change).
    pub(super) async fn report_level(&self) {
        let state = Arc::clone(&self.driver.view().state);
        let Some(host) = state.host(&self.config.name) else {
            return;
        };
        if host.level == APPLY_LEVEL {
            return;
        }
        let command = command::Kind::ReportLevel(ReportLevel {
            host: self.config.name.clone(),
            level: APPLY_LEVEL,
        });
        match self.submit(command).await {
            Ok(_) => tracing::info!(level = APPLY_LEVEL, "command level reported"),
            Err(e) => tracing::debug!("command level not reported yet: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_counts_from_first_sight_and_forgets_what_left() {
        let mut since = Since::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(since.due(set(&["a"]), t0, grace).is_empty());
        assert!(
            since
                .due(set(&["a", "b"]), t0 + Duration::from_secs(20), grace)
                .is_empty()
        );
        assert_eq!(
            since.due(set(&["a", "b"]), t0 + Duration::from_secs(30), grace),
            vec!["a".to_string()]
        );
        // "a" left (its pair came back): seen again, it starts over.
        assert!(
            since
                .due(set(&["b"]), t0 + Duration::from_secs(40), grace)
                .is_empty()
        );
        assert!(
            since
                .due(set(&["a"]), t0 + Duration::from_secs(60), grace)
                .is_empty()
        );
    }
}
