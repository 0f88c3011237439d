//! Links on this host, reconciled with the replicated state.
//!
//! For every network with a local endpoint: a bridge `vxb-<vni>` and the agent's TAP `vxt-<vni>`
//! on it; for every local endpoint: a veth pair, host end `vxv<12 hex of the endpoint id>` on the
//! bridge, container end `ethN` inside the sandbox. Reconciliation is idempotent and runs after
//! every applied change and at start-up, so an agent restart neither duplicates nor loses links,
//! links of departed endpoints and networks are removed, and an endpoint whose sandbox vanished is
//! disconnected through Raft.
//!
//! An endpoint attached through a runtime (Docker) gets its pair at the runtime's Join, with the
//! container's end left in the agent's namespace for the runtime to move; the reconciler keeps
//! its host end on the bridge and reports it when it is missing (never joined, or its sandbox
//! died with the pair), so that the agent can remove it after a grace period.
//!
//! MTUs: the containers' ends and the bridge get the network MTU (underlay − 50). The TAP and
//! the host ends of the veths get 65521 (a TAP's maximum), so that a frame larger than the network allows (a
//! container whose MTU was raised by hand) still reaches the router, which drops it, counts it
//! and answers ICMP "fragmentation needed" — instead of the kernel dropping it silently (no MTU
//! black hole).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use vxnet_controlplane::state::{RUNTIME_DOCKER, State};
use vxnet_dataplane::fdb::{Fib, Vni, gateway_mac};
use vxnet_dataplane::io::netlink::next_free_ifname_in_netns;
use vxnet_dataplane::io::{
    DataPlane, IoError, LinkRef, Netlink, NetnsHandle, RuntimeVethSpec, VethSpec,
};
use vxnet_dataplane::wire::MacAddr;
use vxnet_proto::{Endpoint, Network};

use super::fibsync;
use super::gateway::{self, Gateway};

/// MTU of the agent-side links (TAP, host veth ends): the largest a TAP allows (65535 minus
/// its Ethernet header).
pub const WIDE_MTU: u32 = 65_521;

/// Name of network `vni`'s bridge.
pub fn bridge_name(vni: Vni) -> String {
    format!("vxb-{vni}")
}

/// Name of network `vni`'s TAP.
pub fn tap_name(vni: Vni) -> String {
    format!("vxt-{vni}")
}

/// Name of an endpoint's host-side veth end.
pub fn host_veth_name(endpoint_id: &str) -> String {
    format!("vxv{}", endpoint_id.get(..12).unwrap_or(endpoint_id))
}

/// Name of a runtime-attached endpoint's container end while it waits in the agent's namespace
/// for the runtime to move it.
pub fn runtime_veth_name(endpoint_id: &str) -> String {
    format!("vxc{}", endpoint_id.get(..12).unwrap_or(endpoint_id))
}

/// Frames the kernel dropped at network `vni`'s TAP because the agent did not read them in time
/// (its queue was full): the one drop the data plane cannot count itself.
pub fn tap_queue_drops(vni: Vni) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/class/net/{}/statistics/tx_dropped",
        tap_name(vni)
    ))
    .ok()
    .and_then(|text| text.trim().parse().ok())
    .unwrap_or(0)
}

/// What the reconciler found and did.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// Endpoints whose sandbox no longer exists: the caller disconnects them through Raft.
    pub vanished: Vec<Endpoint>,
    /// Runtime-attached endpoints without their pair (not joined yet, or their sandbox died):
    /// the caller removes those that stay so past a grace period.
    pub unlinked: Vec<Endpoint>,
    /// Errors met on the way (the next round tries again).
    pub errors: Vec<String>,
}

/// Keeps links, TAPs and the FIB of this host in step with the state.
#[derive(Debug)]
pub struct Reconciler {
    /// This host's name in the cluster.
    pub host: String,
    /// The network MTU (underlay − 50, or `--mtu`).
    pub mtu: u32,
    /// Netlink handle in the agent's namespace.
    pub netlink: Netlink,
    /// The data plane (TAP queues).
    pub dataplane: Arc<DataPlane>,
    /// The forwarding table.
    pub fib: Arc<Fib>,
    /// The gateway's rules and routes.
    pub gateway: Gateway,
    /// The VXLAN UDP port (its datagrams bypass connection tracking).
    pub vxlan_port: u16,
}

impl Reconciler {
    /// One full round. Serialise calls (the agent holds a lock around it).
    pub async fn reconcile(&self, state: &State) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let local: Vec<&Endpoint> = state.endpoints().filter(|e| e.host == self.host).collect();
        let wanted_vnis: BTreeSet<Vni> = local.iter().map(|e| e.vni).collect();

        for network in state.networks().filter(|n| wanted_vnis.contains(&n.vni)) {
            if let Err(e) = self.ensure_network(network).await {
                report.errors.push(format!("network {}: {e}", network.name));
            }
        }
        // The FIB right after the links: traffic can flow as soon as both exist.
        self.sync_fib(state);

        let mut wanted_veths = BTreeSet::new();
        for endpoint in &local {
            wanted_veths.insert(host_veth_name(&endpoint.id));
            if endpoint.runtime == RUNTIME_DOCKER {
                match self.check_runtime_endpoint(endpoint).await {
                    Ok(true) => {}
                    Ok(false) => report.unlinked.push((*endpoint).clone()),
                    Err(e) => report
                        .errors
                        .push(format!("endpoint {}: {e}", endpoint.name)),
                }
                continue;
            }
            let network = state.networks().find(|n| n.id == endpoint.network_id);
            match self.ensure_endpoint(endpoint, network).await {
                Ok(()) => {}
                Err(EndpointError::SandboxGone) => report.vanished.push((*endpoint).clone()),
                Err(EndpointError::Io(e)) => report.errors.push(format!(
                    "endpoint {} ({}): {e}",
                    endpoint.name, endpoint.sandbox
                )),
            }
        }
        if let Err(e) = self.remove_stale(&wanted_vnis, &wanted_veths).await {
            report.errors.push(format!("cleanup: {e}"));
        }
        report
            .errors
            .extend(self.reconcile_gateway(state, true).await);
        report
    }

    /// Brings the forwarding table up to date with `state`, in one batch.
    pub fn sync_fib(&self, state: &State) {
        let desired = fibsync::desired(
            state,
            &self.host,
            u16::try_from(self.mtu).unwrap_or(u16::MAX),
        );
        let updates = fibsync::diff(&self.fib.load(), &desired);
        if !updates.is_empty() {
            tracing::debug!(count = updates.len(), "forwarding table updated");
            self.fib.apply(&updates);
        }
    }

    /// The light round, when this host's links are known to be in place: the forwarding table,
    /// and the gateway's rules and routes (other hosts' endpoints change the routes to them).
    /// Returns what failed.
    pub async fn refresh(&self, state: &State) -> Vec<String> {
        self.sync_fib(state);
        self.reconcile_gateway(state, false).await
    }

    /// Brings the gateway's filtering, NAT and routes up to date (`full`: even if the plan did
    /// not change since the last round). Returns what failed.
    pub async fn reconcile_gateway(&self, state: &State, full: bool) -> Vec<String> {
        let plan = gateway::plan(state, &self.host, self.vxlan_port);
        self.gateway
            .apply(&self.netlink, &plan, full)
            .await
            .into_iter()
            .map(|e| format!("gateway: {e}"))
            .collect()
    }

    /// Creates the network's bridge (with the anycast gateway's MAC and address) and TAP if
    /// missing. Idempotent.
    pub async fn ensure_network(&self, network: &Network) -> Result<(), IoError> {
        let vni = network.vni;
        let bridge = bridge_name(vni);
        let existed = self.netlink.link_by_name(&bridge).await?;
        let bridge_index = self.netlink.ensure_bridge(&bridge, self.mtu).await?;
        if existed.is_none() {
            self.netlink.disable_ipv6_autoconf(bridge_index).await?;
            tracing::info!(bridge, "link created");
        }
        let gateway_mac = gateway_mac(vni).0;
        if existed.and_then(|l| l.mac) != Some(gateway_mac) {
            self.netlink
                .set_mac(LinkRef::Index(bridge_index), gateway_mac)
                .await?;
        }
        if let (Ok(gateway), Some((_, prefix_len))) = (
            network.gateway.parse::<Ipv4Addr>(),
            gateway::parse_subnet(&network.subnet),
        ) {
            self.netlink
                .add_address(
                    LinkRef::Index(bridge_index),
                    IpAddr::V4(gateway),
                    prefix_len,
                )
                .await?;
        }
        let tap = tap_name(vni);
        if !self.dataplane.networks().contains(&vni) {
            self.dataplane.add_network(vni, &tap)?;
            tracing::info!(tap, "link created");
        }
        let info = self
            .netlink
            .link_by_name(&tap)
            .await?
            .ok_or_else(|| IoError::NotFound(format!("TAP {tap}")))?;
        if info.controller != Some(bridge_index) || info.mtu != WIDE_MTU || !info.up {
            self.netlink.disable_ipv6_autoconf(info.index).await?;
            self.netlink
                .attach(LinkRef::Index(info.index), bridge_index, WIDE_MTU)
                .await?;
            // Ports with a wider MTU would raise the bridge's: pin it to the network MTU.
            self.netlink
                .set_mtu(LinkRef::Index(bridge_index), self.mtu)
                .await?;
            // Frames sent before the port forwards are lost: wait for it (a second at most).
            let _ = self
                .netlink
                .wait_port_forwarding(info.index, Duration::from_secs(2))
                .await;
        }
        Ok(())
    }

    /// Creates the endpoint's veth pair if it is missing (with a default route via the gateway
    /// when the network has a way out and the sandbox no default route yet). Idempotent.
    pub async fn ensure_endpoint(
        &self,
        endpoint: &Endpoint,
        network: Option<&Network>,
    ) -> Result<(), EndpointError> {
        let host_name = host_veth_name(&endpoint.id);
        let bridge_index = match self
            .netlink
            .link_by_name(&bridge_name(endpoint.vni))
            .await?
        {
            Some(info) => info.index,
            None => return Err(IoError::NotFound(bridge_name(endpoint.vni)).into()),
        };
        if let Some(existing) = self.netlink.link_by_name(&host_name).await? {
            if existing.controller != Some(bridge_index) {
                self.netlink
                    .attach(LinkRef::Index(existing.index), bridge_index, WIDE_MTU)
                    .await?;
            }
            return Ok(());
        }
        let netns = match NetnsHandle::open(&endpoint.sandbox) {
            Ok(ns) => ns,
            Err(IoError::NotFound(_)) => return Err(EndpointError::SandboxGone),
            Err(e) => return Err(e.into()),
        };
        let mac: MacAddr = endpoint
            .mac
            .parse()
            .map_err(|_| IoError::Invalid(format!("endpoint MAC {:?}", endpoint.mac)))?;
        let ipv4: Ipv4Addr = endpoint
            .ipv4
            .parse()
            .map_err(|_| IoError::Invalid(format!("endpoint IPv4 {:?}", endpoint.ipv4)))?;
        let peer_name = if endpoint.interface.is_empty() {
            next_free_ifname_in_netns(&netns, "eth").await?
        } else {
            endpoint.interface.clone()
        };
        let spec = VethSpec {
            host_name: &host_name,
            bridge_index,
            netns: &netns,
            peer_name: &peer_name,
            mac: mac.0,
            ipv4,
            prefix_len: u8::try_from(endpoint.prefix_len).unwrap_or(32),
            mtu: self.mtu,
            gso_max_size: Some(vxnet_dataplane::offload::container_gso_max_size(self.mtu)),
            gateway: network
                .filter(|n| !n.internal)
                .and_then(|n| n.gateway.parse().ok()),
        };
        let created = self.netlink.create_veth_into_netns(&spec).await?;
        self.netlink
            .disable_ipv6_autoconf(created.host_index)
            .await?;
        self.netlink
            .set_mtu(LinkRef::Index(created.host_index), WIDE_MTU)
            .await?;
        self.netlink
            .set_mtu(LinkRef::Index(bridge_index), self.mtu)
            .await?;
        tracing::info!(
            endpoint = endpoint.name,
            sandbox = endpoint.sandbox,
            ip = endpoint.ipv4,
            interface = peer_name,
            "link created"
        );
        Ok(())
    }

    /// Keeps a runtime-attached endpoint's host end on its bridge; `false` when the pair is
    /// missing, or its container end was never moved into a sandbox (the runtime died between
    /// Join and moving it).
    async fn check_runtime_endpoint(&self, endpoint: &Endpoint) -> Result<bool, IoError> {
        let Some(link) = self
            .netlink
            .link_by_name(&host_veth_name(&endpoint.id))
            .await?
        else {
            return Ok(false);
        };
        if self
            .netlink
            .link_by_name(&runtime_veth_name(&endpoint.id))
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let bridge = self
            .netlink
            .link_by_name(&bridge_name(endpoint.vni))
            .await?
            .ok_or_else(|| IoError::NotFound(bridge_name(endpoint.vni)))?;
        if link.controller != Some(bridge.index) {
            self.netlink
                .attach(LinkRef::Index(link.index), bridge.index, WIDE_MTU)
                .await?;
        }
        Ok(true)
    }

    /// Makes a runtime-attached endpoint's veth pair (its network's bridge and TAP first): the
    /// host end on the bridge, the container end named `interface` with the endpoint's MAC and
    /// the network MTU, left here for the runtime to move into the sandbox.
    pub async fn link_runtime_endpoint(
        &self,
        endpoint: &Endpoint,
        network: &Network,
        interface: &str,
    ) -> Result<(), IoError> {
        self.ensure_network(network).await?;
        let bridge = self
            .netlink
            .link_by_name(&bridge_name(endpoint.vni))
            .await?
            .ok_or_else(|| IoError::NotFound(bridge_name(endpoint.vni)))?;
        let mac: MacAddr = endpoint
            .mac
            .parse()
            .map_err(|_| IoError::Invalid(format!("endpoint MAC {:?}", endpoint.mac)))?;
        let host_name = host_veth_name(&endpoint.id);
        let spec = RuntimeVethSpec {
            host_name: &host_name,
            bridge_index: bridge.index,
            host_mtu: WIDE_MTU,
            peer_name: interface,
            mac: mac.0,
            mtu: self.mtu,
            gso_max_size: Some(vxnet_dataplane::offload::container_gso_max_size(self.mtu)),
        };
        self.netlink.create_veth_for_runtime(&spec).await?;
        // Ports with a wider MTU would raise the bridge's: pin it to the network MTU.
        self.netlink
            .set_mtu(LinkRef::Index(bridge.index), self.mtu)
            .await?;
        tracing::info!(
            endpoint = endpoint.name,
            ip = endpoint.ipv4,
            interface,
            "link created for the runtime"
        );
        Ok(())
    }

    /// Deletes a runtime-attached endpoint's pair if it is still there (at Leave the runtime
    /// has usually deleted the container's end, and the host end with it).
    pub async fn unlink_runtime_endpoint(&self, endpoint_id: &str) -> Result<(), IoError> {
        let host_name = host_veth_name(endpoint_id);
        if self.netlink.link_by_name(&host_name).await?.is_some() {
            self.netlink.delete_link(&host_name).await?;
            tracing::info!(link = host_name, "link removed");
        }
        Ok(())
    }

    /// Deletes bridges, TAPs and veths that no endpoint of this host needs any more.
    async fn remove_stale(
        &self,
        wanted_vnis: &BTreeSet<Vni>,
        wanted_veths: &BTreeSet<String>,
    ) -> Result<(), IoError> {
        for link in self.netlink.list_links_with_prefix("vxv").await? {
            if !wanted_veths.contains(&link.name) {
                // Deleting the host end deletes the container's end with it.
                self.netlink.delete_link(&link.name).await?;
                tracing::info!(link = link.name, "link removed");
            }
        }
        for vni in self.dataplane.networks() {
            if !wanted_vnis.contains(&vni) {
                self.dataplane.remove_network(vni);
                tracing::info!(tap = tap_name(vni), "link removed");
            }
        }
        let bridges: BTreeMap<String, Vni> =
            wanted_vnis.iter().map(|&v| (bridge_name(v), v)).collect();
        for link in self.netlink.list_links_with_prefix("vxb-").await? {
            if !bridges.contains_key(&link.name) && link.kind.as_deref() == Some("bridge") {
                self.netlink.delete_link(&link.name).await?;
                tracing::info!(link = link.name, "link removed");
            }
        }
        Ok(())
    }

    /// Removes every link, rule and route this agent made (used by `cluster leave`).
    pub async fn remove_all(&self) -> Result<(), IoError> {
        for error in self.gateway.remove_all(&self.netlink).await {
            tracing::warn!("gateway cleanup: {error}");
        }
        self.remove_stale(&BTreeSet::new(), &BTreeSet::new()).await
    }
}

/// Why an endpoint's links could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The sandbox (network namespace) no longer exists.
    #[error("sandbox not found")]
    SandboxGone,
    /// Netlink or the kernel refused.
    #[error(transparent)]
    Io(#[from] IoError),
}
