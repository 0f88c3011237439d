//! One job in one file (past 800 lines): the apply of every command and the snapshot encoding of
//! the same records must change together for replicas to stay identical. The commands of
//! runtimes (Docker networks, reservations, levels, published ports) are in `state/runtimes.rs`,
//! those of peer TLS (cluster CA, join key, key pins) in `state/tls.rs`, the tests in
//! `state/tests.rs`.
//!
//! The replicated state machine: networks, endpoints, hosts and static VTEPs.
//!
//! [`State::apply`] is pure and deterministic (no I/O, clock or randomness): every replica
//! applies the same committed log and must end in the same state, so every allocation (VNI,
//! subnet, IPv4, MAC, Raft node id) happens here and nowhere else. Containers are `BTreeMap`s
//! so that iteration order, and hence allocation and snapshot bytes, never depend on hashing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use prost::Message as _;
use vxnet_proto::{
    AddStaticVtep, ApplyFailure, AttachDockerNetwork, CaCert, ClusterTls, CreateNetwork,
    DedupEntry, DetachDockerNetwork, DisconnectEndpoint, DockerNetwork, Empty, Endpoint, ErrorKind,
    FinishCaRotation, Host, InitTls, Network, PortMapping, Proposal, RegisterHost, ReleaseAddress,
    RemoveStaticVtep, ReportLevel, ReportTls, Reservation, ReserveAddress, Response, RotateCa,
    SetEndpointPorts, SetHostKey, SetJoinKey, StateSnapshot, StaticVtep, command, dedup_entry,
    response,
};

mod runtimes;
mod tls;

pub use tls::{JOIN_KEY_LEN, MAX_CA_CERT_LEN, MAX_KEY_LEN, PIN_LEN};

/// How many (request id → outcome) pairs are remembered for retries.
pub const DEDUP_WINDOW: usize = 4096;
/// Lowest VNI handed out automatically (below are left for explicit requests).
pub const FIRST_AUTO_VNI: u32 = 4096;
/// Highest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00FF_FFFF;
/// Default address pool, carved into /24 subnets.
pub const DEFAULT_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 20, 0, 0), 16);
/// Prefix length of subnets carved from the default pool.
pub const DEFAULT_SUBNET_PREFIX: u8 = 24;
const SNAPSHOT_VERSION: u32 = 1;
/// The command level this build applies (see `Host.level`): 1 added Docker networks, address
/// reservations, runtime-attached endpoints and level reports; 2 added peer TLS (the cluster CA
/// and join key, key pins, CA rotation, certificate reports: [`command_level`]).
pub const APPLY_LEVEL: u32 = 2;
/// The command level a replica needs to apply `kind` (see `Host.level`), by kind and, for
/// `RegisterHost`, by its level-2 fields. The agent proposes a
/// command only when [`State::cluster_level`] is at least this, so that a replica of an older
/// release never meets a command (or a field) it would drop and diverge on.
pub fn command_level(kind: &command::Kind) -> u32 {
    use command::Kind as K;
    match kind {
        K::InitTls(_)
        | K::SetHostKey(_)
        | K::SetJoinKey(_)
        | K::RotateCa(_)
        | K::FinishCaRotation(_)
        | K::ReportTls(_) => 2,
        K::RegisterHost(c) if !c.key_sha256.is_empty() || c.level != 0 => 2,
        K::AttachDockerNetwork(_)
        | K::DetachDockerNetwork(_)
        | K::ReserveAddress(_)
        | K::ReleaseAddress(_)
        | K::ReportLevel(_)
        | K::SetEndpointPorts(_) => 1,
        // Level-1 fields of older commands (an endpoint's `runtime`, ...) are gated where
        // they are proposed.
        _ => 0,
    }
}

/// The endpoint runtime whose interface dockerd moves into the sandbox.
pub const RUNTIME_DOCKER: &str = "docker";
/// The endpoint runtime of the CNI plugin (the agent makes the interface, as for the CLI).
pub const RUNTIME_CNI: &str = "cni";

/// A command refused by the state machine. Deterministic: every replica refuses alike, and the
/// refusal is remembered for retries like a success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApplyError {
    /// Error class.
    pub kind: ErrorKind,
    /// Docker-style message.
    pub message: String,
}

impl ApplyError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, m)
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, m)
    }
    fn exhausted(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Exhausted, m)
    }

    /// Wire form.
    pub fn to_proto(&self) -> ApplyFailure {
        ApplyFailure {
            kind: self.kind as i32,
            message: self.message.clone(),
        }
    }

    /// From the wire form (unknown kinds map to `Unspecified`).
    pub fn from_proto(f: &ApplyFailure) -> Self {
        Self {
            kind: ErrorKind::try_from(f.kind).unwrap_or(ErrorKind::Unspecified),
            message: f.message.clone(),
        }
    }
}

/// Outcome of applying one proposal.
pub type ApplyResult = Result<Response, ApplyError>;

/// A change to the state, in apply order; the agent turns these into forwarding-table writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A host joined.
    HostAdded(Host),
    /// A host left (its endpoints were removed first, each with its own update).
    HostRemoved(Host),
    /// A network was created.
    NetworkAdded(Network),
    /// A network was removed.
    NetworkRemoved(Network),
    /// An endpoint appeared (carries host, VTEP, MAC, IPv4 and VNI).
    EndpointAdded(Endpoint),
    /// An endpoint went away.
    EndpointRemoved(Endpoint),
    /// A static VTEP entry was added.
    StaticVtepAdded(StaticVtep),
    /// A static VTEP entry was removed.
    StaticVtepRemoved(StaticVtep),
    /// A network's record changed in place (its Docker networks).
    NetworkChanged(Network),
    /// An endpoint's record changed in place (its published ports).
    EndpointChanged(Endpoint),
    /// A host's record changed in place (its level, key pin or certificate report).
    HostChanged(Host),
    /// The cluster's TLS record changed (CA created or rotated, join key replaced): the agent
    /// refreshes the transport's security view and re-signs its certificate if the signer
    /// changed. Read the record with [`State::tls`].
    TlsChanged,
    /// An address was reserved.
    ReservationAdded(Reservation),
    /// A reservation was released.
    ReservationRemoved(Reservation),
}

/// An IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub addr: u32,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len`, clearing host bits.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.trim().split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        Some(Cidr::new(u32::from(addr), prefix))
    }
    /// The block of `prefix` bits containing `addr`.
    pub fn new(addr: u32, prefix: u8) -> Cidr {
        let c = Cidr { addr: 0, prefix };
        Cidr {
            addr: addr & c.mask(),
            prefix,
        }
    }
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    /// Last address of the block.
    pub fn last(&self) -> u32 {
        self.addr | !self.mask()
    }
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: u32) -> bool {
        ip & self.mask() == self.addr
    }
    /// Whether the two blocks share an address.
    pub fn overlaps(&self, o: &Cidr) -> bool {
        self.addr <= o.last() && o.addr <= self.last()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.prefix)
    }
}

/// Docker's MAC scheme: `02:42` followed by the IPv4 address, so an address keeps its MAC when
/// the container moves to another host.
pub fn mac_from_ipv4(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn parse_ipv4(s: &str, what: &str) -> Result<u32, ApplyError> {
    s.trim()
        .parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| ApplyError::invalid(format!("invalid {what} address {s:?}")))
}

fn ip_str(ip: u32) -> String {
    Ipv4Addr::from(ip).to_string()
}

/// A Linux interface name (IFNAMSIZ − 1 bytes, none of what the kernel refuses).
fn is_interface_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && !s
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn normalize_mac(s: &str) -> Result<String, ApplyError> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| (1..=2).contains(&p.len()) && u8::from_str_radix(p, 16).is_ok());
    if !ok {
        return Err(ApplyError::invalid(format!("invalid MAC address {s:?}")));
    }
    let bytes: Vec<String> = parts
        .iter()
        .map(|p| format!("{:02x}", u8::from_str_radix(p, 16).unwrap_or(0)))
        .collect();
    Ok(bytes.join(":"))
}

/// Who holds an address of a network's subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    Endpoint(String),
    Static,
}

/// A network plus its parsed, derived allocator state.
#[derive(Debug, Clone, PartialEq)]
struct NetState {
    info: Network,
    subnet: Cidr,
    /// Allocation range (inclusive), already clipped to the subnet's host addresses.
    pool: (u32, u32),
    /// Gateway and aux addresses.
    reserved: BTreeSet<u32>,
    used: BTreeMap<u32, Holder>,
    endpoints: BTreeMap<String, Endpoint>,
    /// Runtime reservations by address (an endpoint of the same host may use its own).
    reservations: BTreeMap<u32, Reservation>,
}

impl NetState {
    /// Builds the derived fields from a record (used by create and snapshot restore).
    fn from_record(info: Network) -> Result<NetState, ApplyError> {
        let subnet = Cidr::parse(&info.subnet)
            .ok_or_else(|| ApplyError::invalid(format!("invalid subnet {:?}", info.subnet)))?;
        if subnet.prefix > 30 {
            return Err(ApplyError::invalid(format!(
                "subnet {subnet} is too small (at most /30)"
            )));
        }
        let (net_addr, bcast) = (subnet.addr, subnet.last());
        let gateway = parse_ipv4(&info.gateway, "gateway")?;
        if !subnet.contains(gateway) || gateway == net_addr || gateway == bcast {
            return Err(ApplyError::invalid(format!(
                "gateway {} is not a host address of subnet {subnet}",
                ip_str(gateway)
            )));
        }
        let mut pool = (net_addr + 1, bcast - 1);
        if !info.ip_range.is_empty() {
            let r = Cidr::parse(&info.ip_range).ok_or_else(|| {
                ApplyError::invalid(format!("invalid ip-range {:?}", info.ip_range))
            })?;
            if r.prefix < subnet.prefix || !subnet.contains(r.addr) {
                return Err(ApplyError::invalid(format!(
                    "ip-range {r} is not inside subnet {subnet}"
                )));
            }
            pool = (r.addr.max(net_addr + 1), r.last().min(bcast - 1));
            if pool.0 > pool.1 {
                return Err(ApplyError::invalid(format!(
                    "ip-range {r} has no usable host address"
                )));
            }
        }
        let mut reserved = BTreeSet::from([gateway]);
        for (name, a) in &info.aux_addresses {
            let ip = parse_ipv4(a, "auxiliary")?;
            if !subnet.contains(ip) || ip == net_addr || ip == bcast {
                return Err(ApplyError::invalid(format!(
                    "auxiliary address {name}={a} is not a host address of subnet {subnet}"
                )));
            }
            if !reserved.insert(ip) {
                return Err(ApplyError::invalid(format!(
                    "auxiliary address {name}={a} is already reserved (gateway or another auxiliary address)"
                )));
            }
        }
        Ok(NetState {
            info,
            subnet,
            pool,
            reserved,
            used: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            reservations: BTreeMap::new(),
        })
    }

    fn label(&self) -> String {
        format!("{} (id {})", self.info.name, short_id(&self.info.id))
    }

    /// Next-fit: start after the last handed-out address and wrap once, so a freed address is
    /// reused last (stale ARP caches elsewhere keep pointing at a departed container for a
    /// while; reusing its address at once would send traffic to the wrong place).
    fn next_free(&self) -> Option<u32> {
        let (lo, hi) = self.pool;
        let cur = self.info.ipam_cursor;
        let start = if (lo..hi).contains(&cur) { cur + 1 } else { lo };
        let free = |ip: &u32| {
            !self.reserved.contains(ip)
                && !self.used.contains_key(ip)
                && !self.reservations.contains_key(ip)
        };
        (start..=hi).chain(lo..start).find(free)
    }

    /// Checks a requested address; `host`'s own reservation of it does not count as a conflict.
    fn check_requested(&self, ip: u32, host: &str) -> Result<(), ApplyError> {
        let (lo, hi) = self.pool;
        if !(lo..=hi).contains(&ip) {
            return Err(ApplyError::invalid(format!(
                "requested address {} is outside the address pool {}..{} of network {}",
                ip_str(ip),
                ip_str(lo),
                ip_str(hi),
                self.label()
            )));
        }
        if self.reserved.contains(&ip) {
            return Err(ApplyError::conflict(format!(
                "requested address {} is reserved (gateway or auxiliary address) in network {}",
                ip_str(ip),
                self.label()
            )));
        }
        if self.used.contains_key(&ip) {
            return Err(ApplyError::conflict(format!(
                "address {} already in use in network {}",
                ip_str(ip),
                self.label()
            )));
        }
        if let Some(r) = self.reservations.get(&ip)
            && r.host != host
        {
            return Err(ApplyError::conflict(format!(
                "address {} already in use in network {} (reserved by host {})",
                ip_str(ip),
                self.label(),
                r.host
            )));
        }
        Ok(())
    }

    /// The requested address (checked; `claimant`'s own reservation of it is no conflict), or
    /// the next free one, moving the cursor.
    fn allocate(&mut self, requested: Option<&str>, claimant: &str) -> Result<u32, ApplyError> {
        if let Some(r) = requested {
            let ip = parse_ipv4(r, "requested")?;
            self.check_requested(ip, claimant)?;
            return Ok(ip);
        }
        let ip = self.next_free().ok_or_else(|| {
            ApplyError::exhausted(format!(
                "no available IPv4 addresses on this network's address pools: {}",
                self.label()
            ))
        })?;
        self.info.ipam_cursor = ip;
        Ok(ip)
    }

    /// The Docker network of `host` with id `docker_id`, if attached here.
    fn docker_position(&self, host: &str, docker_id: &str) -> Option<usize> {
        self.info
            .docker_networks
            .iter()
            .position(|d| d.host == host && d.network_id == docker_id)
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The replicated state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    applied_index: u64,
    next_node_id: u64,
    /// By network id.
    networks: BTreeMap<String, NetState>,
    /// Name → id.
    names: BTreeMap<String, String>,
    /// By host name.
    hosts: BTreeMap<String, Host>,
    /// By (network id, vtep, mac, ipv4).
    static_vteps: BTreeMap<(String, String, String, String), StaticVtep>,
    dedup: BTreeMap<Vec<u8>, ApplyResult>,
    dedup_order: VecDeque<Vec<u8>>,
    /// The cluster CA and join key (level 2); none before `InitTls`.
    tls: Option<ClusterTls>,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// Errors restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a valid protobuf message.
    #[error("state snapshot does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Decodes but is inconsistent.
    #[error("state snapshot is inconsistent: {0}")]
    Invalid(String),
}

impl State {
    /// An empty state: no hosts, node ids start at 1.
    pub fn new() -> State {
        State {
            applied_index: 0,
            next_node_id: 1,
            networks: BTreeMap::new(),
            names: BTreeMap::new(),
            hosts: BTreeMap::new(),
            static_vteps: BTreeMap::new(),
            dedup: BTreeMap::new(),
            dedup_order: VecDeque::new(),
            tls: None,
        }
    }

    /// Last Raft index applied.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Records that `index` was applied without a proposal (empty or conf-change entries).
    pub fn advance_to(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Applies one committed proposal at `index`. A request id seen in the dedup window returns
    /// the stored outcome and changes nothing.
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> (ApplyResult, Vec<Update>) {
        self.advance_to(index);
        let rid = &proposal.request_id;
        if !rid.is_empty()
            && let Some(prev) = self.dedup.get(rid)
        {
            return (prev.clone(), Vec::new());
        }
        let mut updates = Vec::new();
        let result = self.dispatch(index, proposal, &mut updates);
        if result.is_err() {
            debug_assert!(updates.is_empty(), "a failed command must not change state");
        }
        if !rid.is_empty() {
            self.remember(rid.clone(), result.clone());
        }
        (result, updates)
    }

    fn remember(&mut self, rid: Vec<u8>, result: ApplyResult) {
        if self.dedup.insert(rid.clone(), result).is_none() {
            self.dedup_order.push_back(rid);
        }
        while self.dedup_order.len() > DEDUP_WINDOW {
            if let Some(old) = self.dedup_order.pop_front() {
                self.dedup.remove(&old);
            }
        }
    }

    fn dispatch(&mut self, index: u64, p: &Proposal, up: &mut Vec<Update>) -> ApplyResult {
        let Some(kind) = p.command.as_ref().and_then(|c| c.kind.as_ref()) else {
            return Err(ApplyError::invalid("empty command"));
        };
        let kind = match kind {
            command::Kind::CreateNetwork(c) => {
                response::Kind::NetworkCreated(self.create_network(index, c, up)?)
            }
            command::Kind::RemoveNetwork(c) => {
                response::Kind::NetworkRemoved(self.remove_network(&c.name_or_id, up)?)
            }
            command::Kind::ConnectEndpoint(c) => {
                response::Kind::EndpointConnected(self.connect(index, c, up)?)
            }
            command::Kind::DisconnectEndpoint(c) => {
                response::Kind::EndpointDisconnected(self.disconnect(c, up)?)
            }
            command::Kind::RegisterHost(c) => {
                response::Kind::HostRegistered(self.register_host(index, c, up)?)
            }
            command::Kind::RemoveHost(c) => {
                response::Kind::HostRemoved(self.remove_host(&c.name, up)?)
            }
            command::Kind::AddStaticVtep(c) => {
                response::Kind::StaticVtepAdded(self.add_static(c, up)?)
            }
            command::Kind::RemoveStaticVtep(c) => {
                response::Kind::StaticVtepRemoved(self.remove_static(c, up)?)
            }
            command::Kind::Noop(_) => response::Kind::Noop(Empty {}),
            command::Kind::AttachDockerNetwork(c) => {
                response::Kind::DockerNetworkAttached(self.attach_docker(index, c, up)?)
            }
            command::Kind::DetachDockerNetwork(c) => self.detach_docker(c, up)?,
            command::Kind::ReserveAddress(c) => {
                response::Kind::AddressReserved(self.reserve(index, c, up)?)
            }
            command::Kind::ReleaseAddress(c) => self.release(c, up)?,
            command::Kind::ReportLevel(c) => {
                self.report_level(c, up)?;
                response::Kind::Noop(Empty {})
            }
            command::Kind::SetEndpointPorts(c) => {
                response::Kind::EndpointPortsSet(self.set_ports(c, up)?)
            }
            command::Kind::InitTls(c) => self.init_tls(c, up)?,
            command::Kind::SetHostKey(c) => self.set_host_key(c, up)?,
            command::Kind::SetJoinKey(c) => self.set_join_key(c, up)?,
            command::Kind::RotateCa(c) => self.rotate_ca(c, up)?,
            command::Kind::FinishCaRotation(c) => self.finish_ca_rotation(c, up)?,
            command::Kind::ReportTls(c) => self.report_tls(c, up)?,
        };
        Ok(Response { kind: Some(kind) })
    }

    // ----- networks ---------------------------------------------------------------------------

    fn create_network(
        &mut self,
        index: u64,
        c: &CreateNetwork,
        up: &mut Vec<Update>,
    ) -> Result<Network, ApplyError> {
        if c.name.is_empty() {
            return Err(ApplyError::invalid("network name must not be empty"));
        }
        if self.names.contains_key(&c.name) {
            return Err(ApplyError::conflict(format!(
                "network with name {} already exists",
                c.name
            )));
        }
        if !is_hex_id(&c.id) {
            return Err(ApplyError::invalid(format!(
                "invalid network id {:?}: want 64 lowercase hex characters",
                c.id
            )));
        }
        if self.networks.contains_key(&c.id) {
            return Err(ApplyError::conflict(format!(
                "network with id {} already exists",
                c.id
            )));
        }
        let vni = self.pick_vni(c.vni)?;
        let subnet = match &c.subnet {
            Some(s) => {
                let cidr = Cidr::parse(s)
                    .ok_or_else(|| ApplyError::invalid(format!("invalid subnet {s:?}")))?;
                if let Some(other) = self.networks.values().find(|n| n.subnet.overlaps(&cidr)) {
                    return Err(ApplyError::conflict(format!(
                        "Pool overlaps with other one on this address space: {cidr} overlaps {} of network {}",
                        other.subnet, other.info.name
                    )));
                }
                cidr
            }
            None => self.pick_subnet()?,
        };
        if subnet.prefix > 30 {
            return Err(ApplyError::invalid(format!(
                "subnet {subnet} is too small (at most /30)"
            )));
        }
        let gateway = match &c.gateway {
            Some(g) => ip_str(parse_ipv4(g, "gateway")?),
            None => ip_str(subnet.addr + 1),
        };
        let info = Network {
            id: c.id.clone(),
            name: c.name.clone(),
            driver: if c.driver.is_empty() {
                "overlay".to_string()
            } else {
                c.driver.clone()
            },
            subnet: subnet.to_string(),
            gateway,
            ip_range: match &c.ip_range {
                Some(r) => Cidr::parse(r)
                    .ok_or_else(|| ApplyError::invalid(format!("invalid ip-range {r:?}")))?
                    .to_string(),
                None => String::new(),
            },
            aux_addresses: c.aux_addresses.clone(),
            vni,
            internal: c.internal,
            labels: c.labels.clone(),
            options: c.options.clone(),
            created_unix_ms: c.created_unix_ms,
            created_index: index,
            ipam_cursor: 0,
            docker_networks: Vec::new(),
            created_by_docker: false,
        };
        let st = NetState::from_record(info.clone())?;
        self.names.insert(info.name.clone(), info.id.clone());
        self.networks.insert(info.id.clone(), st);
        up.push(Update::NetworkAdded(info.clone()));
        Ok(info)
    }

    fn pick_vni(&self, requested: Option<u32>) -> Result<u32, ApplyError> {
        let used: BTreeSet<u32> = self.networks.values().map(|n| n.info.vni).collect();
        match requested {
            Some(v) => {
                if !(1..=MAX_VNI).contains(&v) {
                    return Err(ApplyError::invalid(format!(
                        "VNI {v} out of range 1..={MAX_VNI}"
                    )));
                }
                if let Some(n) = self.networks.values().find(|n| n.info.vni == v) {
                    return Err(ApplyError::conflict(format!(
                        "VNI {v} is already used by network {}",
                        n.info.name
                    )));
                }
                Ok(v)
            }
            None => (FIRST_AUTO_VNI..=MAX_VNI)
                .find(|v| !used.contains(v))
                .ok_or_else(|| ApplyError::exhausted("no free VNI left")),
        }
    }

    fn pick_subnet(&self) -> Result<Cidr, ApplyError> {
        let pool = Cidr::new(u32::from(DEFAULT_POOL.0), DEFAULT_POOL.1);
        let step = 1u32 << (32 - DEFAULT_SUBNET_PREFIX);
        let count = 1u32 << (DEFAULT_SUBNET_PREFIX - DEFAULT_POOL.1);
        (0..count)
            .map(|i| Cidr::new(pool.addr + i * step, DEFAULT_SUBNET_PREFIX))
            .find(|c| !self.networks.values().any(|n| n.subnet.overlaps(c)))
            .ok_or_else(|| {
                ApplyError::exhausted(
                    "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network",
                )
            })
    }

    fn remove_network(
        &mut self,
        name_or_id: &str,
        up: &mut Vec<Update>,
    ) -> Result<Network, ApplyError> {
        let id = self.resolve_network(name_or_id)?.id.clone();
        let Some(st) = self.networks.get(&id) else {
            return Err(ApplyError::not_found(format!(
                "network {name_or_id} not found"
            )));
        };
        if !st.endpoints.is_empty() {
            return Err(ApplyError::new(
                ErrorKind::InUse,
                format!(
                    "error while removing network: network {} has active endpoints",
                    st.label()
                ),
            ));
        }
        if !st.info.docker_networks.is_empty() {
            let hosts: BTreeSet<&str> = st
                .info
                .docker_networks
                .iter()
                .map(|d| d.host.as_str())
                .collect();
            return Err(ApplyError::new(
                ErrorKind::InUse,
                format!(
                    "error while removing network: network {} is used by Docker on {} (remove it there with docker network rm)",
                    st.label(),
                    hosts.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let keys: Vec<_> = self
            .static_vteps
            .keys()
            .filter(|k| k.0 == id)
            .cloned()
            .collect();
        for k in keys {
            if let Some(sv) = self.static_vteps.remove(&k) {
                up.push(Update::StaticVtepRemoved(sv));
            }
        }
        let Some(st) = self.networks.remove(&id) else {
            return Err(ApplyError::not_found(format!(
                "network {name_or_id} not found"
            )));
        };
        self.names.remove(&st.info.name);
        up.extend(
            st.reservations
                .values()
                .cloned()
                .map(Update::ReservationRemoved),
        );
        up.push(Update::NetworkRemoved(st.info.clone()));
        Ok(st.info)
    }

    /// Docker semantics: exact name, then exact id, then unique id prefix.
    pub fn resolve_network(&self, name_or_id: &str) -> Result<&Network, ApplyError> {
        let st = self.resolve_net_state(name_or_id)?;
        Ok(&st.info)
    }

    fn resolve_net_state(&self, key: &str) -> Result<&NetState, ApplyError> {
        if key.is_empty() {
            return Err(ApplyError::invalid("network name or id must not be empty"));
        }
        if let Some(st) = self.names.get(key).and_then(|id| self.networks.get(id)) {
            return Ok(st);
        }
        if let Some(st) = self.networks.get(key) {
            return Ok(st);
        }
        let mut matches = self
            .networks
            .range(key.to_string()..)
            .take_while(|(id, _)| id.starts_with(key));
        match (matches.next(), matches.next()) {
            (Some((_, st)), None) => Ok(st),
            (None, _) => Err(ApplyError::not_found(format!("network {key} not found"))),
            (Some(_), Some(_)) => {
                let n = 2 + matches.count();
                Err(ApplyError::invalid(format!(
                    "network {key} is ambiguous ({n} matches found based on ID prefix)"
                )))
            }
        }
    }

    // ----- endpoints --------------------------------------------------------------------------

    fn connect(
        &mut self,
        index: u64,
        c: &vxnet_proto::ConnectEndpoint,
        up: &mut Vec<Update>,
    ) -> Result<Endpoint, ApplyError> {
        let net_id = self.resolve_net_state(&c.network)?.info.id.clone();
        let host = self
            .hosts
            .get(&c.host)
            .ok_or_else(|| {
                ApplyError::not_found(format!("host {} is not a member of the cluster", c.host))
            })?
            .clone();
        if c.name.is_empty() || c.sandbox.is_empty() {
            return Err(ApplyError::invalid(
                "endpoint name and sandbox must not be empty",
            ));
        }
        if !is_hex_id(&c.endpoint_id) {
            return Err(ApplyError::invalid(format!(
                "invalid endpoint id {:?}: want 64 lowercase hex characters",
                c.endpoint_id
            )));
        }
        if !c.interface.is_empty() && !is_interface_name(&c.interface) {
            return Err(ApplyError::invalid(format!(
                "invalid interface name {:?}: 1 to 15 bytes, no '/', ':' or whitespace",
                c.interface
            )));
        }
        self.check_ports(&c.publish, &host.name, None)?;
        let Some(st) = self.networks.get_mut(&net_id) else {
            return Err(ApplyError::not_found(format!(
                "network {} not found",
                c.network
            )));
        };
        if let Some(e) = st
            .endpoints
            .values()
            .find(|e| e.name == c.name || e.sandbox == c.sandbox)
        {
            return Err(ApplyError::conflict(format!(
                "endpoint with name {} already exists in network {}",
                e.name, st.info.name
            )));
        }
        if st.endpoints.contains_key(&c.endpoint_id) {
            return Err(ApplyError::conflict(format!(
                "endpoint with id {} already exists in network {}",
                c.endpoint_id, st.info.name
            )));
        }
        let claimant = if c.runtime.is_empty() {
            ""
        } else {
            host.name.as_str()
        };
        if !c.publish.is_empty() && st.info.internal {
            return Err(ApplyError::invalid(format!(
                "network {} is internal: it has no way in, so no port can be published",
                st.info.name
            )));
        }
        let ip = st.allocate(c.requested_ipv4.as_deref(), claimant)?;
        let ep = Endpoint {
            id: c.endpoint_id.clone(),
            network_id: net_id,
            name: c.name.clone(),
            host: host.name.clone(),
            vtep: host.underlay.clone(),
            sandbox: c.sandbox.clone(),
            aliases: c.aliases.clone(),
            ipv4: ip_str(ip),
            prefix_len: u32::from(st.subnet.prefix),
            mac: mac_from_ipv4(Ipv4Addr::from(ip)),
            vni: st.info.vni,
            created_index: index,
            runtime: c.runtime.clone(),
            interface: c.interface.clone(),
            ports: c.publish.clone(),
        };
        st.used.insert(ip, Holder::Endpoint(ep.id.clone()));
        st.endpoints.insert(ep.id.clone(), ep.clone());
        up.push(Update::EndpointAdded(ep.clone()));
        Ok(ep)
    }

    fn disconnect(
        &mut self,
        c: &DisconnectEndpoint,
        up: &mut Vec<Update>,
    ) -> Result<Endpoint, ApplyError> {
        let net_id = self.resolve_net_state(&c.network)?.info.id.clone();
        let Some(st) = self.networks.get_mut(&net_id) else {
            return Err(ApplyError::not_found(format!(
                "network {} not found",
                c.network
            )));
        };
        let found = if c.endpoint_id.is_empty() {
            st.endpoints.values().find(|e| e.sandbox == c.sandbox)
        } else {
            st.endpoints.get(&c.endpoint_id)
        };
        let Some(ep) = found.cloned() else {
            let what = if c.endpoint_id.is_empty() {
                format!("container {}", c.sandbox)
            } else {
                format!("endpoint {}", short_id(&c.endpoint_id))
            };
            return Err(ApplyError::not_found(format!(
                "{what} is not connected to network {}",
                st.info.name
            )));
        };
        if !c.force && !c.host.is_empty() && ep.host != c.host {
            return Err(ApplyError::conflict(format!(
                "endpoint {} of network {} belongs to host {}, not {} (use force)",
                ep.name, st.info.name, ep.host, c.host
            )));
        }
        Self::drop_endpoint(st, &ep);
        up.push(Update::EndpointRemoved(ep.clone()));
        if c.release_address
            && let Ok(ip) = ep.ipv4.parse::<Ipv4Addr>()
            && st
                .reservations
                .get(&u32::from(ip))
                .is_some_and(|r| r.host == ep.host)
            && let Some(r) = st.reservations.remove(&u32::from(ip))
        {
            up.push(Update::ReservationRemoved(r));
        }
        Ok(ep)
    }

    fn drop_endpoint(st: &mut NetState, ep: &Endpoint) {
        st.endpoints.remove(&ep.id);
        if let Ok(ip) = ep.ipv4.parse::<Ipv4Addr>() {
            st.used.remove(&u32::from(ip));
        }
    }

    // ----- hosts ------------------------------------------------------------------------------

    fn register_host(
        &mut self,
        index: u64,
        c: &RegisterHost,
        up: &mut Vec<Update>,
    ) -> Result<Host, ApplyError> {
        if c.name.is_empty() {
            return Err(ApplyError::invalid("host name must not be empty"));
        }
        let underlay = ip_str(parse_ipv4(&c.underlay, "underlay")?);
        if !c.key_sha256.is_empty() {
            self.check_pin(&c.key_sha256, &c.name)?;
        }
        if let Some(h) = self.hosts.get(&c.name) {
            // A re-registration gets no second id: reusing a Raft id with an empty log could
            // break Raft's safety, so the old registration must be removed first.
            return Err(ApplyError::conflict(format!(
                "host {} is already a member (node id {}); remove it first",
                h.name, h.node_id
            )));
        }
        if let Some(h) = self.hosts.values().find(|h| h.underlay == underlay) {
            return Err(ApplyError::conflict(format!(
                "underlay address {underlay} is already used by host {}",
                h.name
            )));
        }
        let host = Host {
            name: c.name.clone(),
            node_id: self.next_node_id,
            underlay,
            peer_addr: c.peer_addr.clone(),
            registered_index: index,
            level: c.level,
            key_sha256: c.key_sha256.clone(),
            cert_ca_generation: 0,
            cert_not_after_unix_ms: 0,
        };
        self.next_node_id += 1;
        self.hosts.insert(host.name.clone(), host.clone());
        up.push(Update::HostAdded(host.clone()));
        Ok(host)
    }

    fn remove_host(&mut self, name: &str, up: &mut Vec<Update>) -> Result<Host, ApplyError> {
        let Some(host) = self.hosts.remove(name) else {
            return Err(ApplyError::not_found(format!(
                "host {name} is not a member of the cluster"
            )));
        };
        for st in self.networks.values_mut() {
            let gone: Vec<Endpoint> = st
                .endpoints
                .values()
                .filter(|e| e.host == host.name)
                .cloned()
                .collect();
            for ep in gone {
                Self::drop_endpoint(st, &ep);
                up.push(Update::EndpointRemoved(ep));
            }
            let held: Vec<u32> = st
                .reservations
                .iter()
                .filter(|(_, r)| r.host == host.name)
                .map(|(ip, _)| *ip)
                .collect();
            for ip in held {
                if let Some(r) = st.reservations.remove(&ip) {
                    up.push(Update::ReservationRemoved(r));
                }
            }
            let before = st.info.docker_networks.len();
            st.info.docker_networks.retain(|d| d.host != host.name);
            if st.info.docker_networks.len() != before {
                up.push(Update::NetworkChanged(st.info.clone()));
            }
        }
        up.push(Update::HostRemoved(host.clone()));
        Ok(host)
    }

    // ----- static VTEPs -----------------------------------------------------------------------

    fn static_key(
        &self,
        network: &str,
        vtep: &str,
        mac: &Option<String>,
        ipv4: &Option<String>,
    ) -> Result<StaticVtep, ApplyError> {
        let st = self.resolve_net_state(network)?;
        let vtep = ip_str(parse_ipv4(vtep, "VTEP")?);
        let mac = match mac {
            Some(m) => normalize_mac(m)?,
            None => String::new(),
        };
        let ipv4 = match ipv4 {
            Some(a) => {
                if mac.is_empty() {
                    return Err(ApplyError::invalid(
                        "a static IPv4 entry needs the MAC it belongs to",
                    ));
                }
                let ip = parse_ipv4(a, "static")?;
                if !st.subnet.contains(ip) {
                    return Err(ApplyError::invalid(format!(
                        "address {a} is outside subnet {} of network {}",
                        st.subnet, st.info.name
                    )));
                }
                ip_str(ip)
            }
            None => String::new(),
        };
        Ok(StaticVtep {
            network_id: st.info.id.clone(),
            vtep,
            mac,
            ipv4,
            vni: st.info.vni,
            ..Default::default()
        })
    }

    fn add_static(
        &mut self,
        c: &AddStaticVtep,
        up: &mut Vec<Update>,
    ) -> Result<StaticVtep, ApplyError> {
        let sv = self.static_key(&c.network, &c.vtep, &c.mac, &c.ipv4)?;
        let key = (
            sv.network_id.clone(),
            sv.vtep.clone(),
            sv.mac.clone(),
            sv.ipv4.clone(),
        );
        if self.static_vteps.contains_key(&key) {
            return Err(ApplyError::conflict("static VTEP entry already exists"));
        }
        let Some(st) = self.networks.get_mut(&sv.network_id) else {
            return Err(ApplyError::not_found(format!(
                "network {} not found",
                c.network
            )));
        };
        if !sv.ipv4.is_empty() {
            // The address is taken out of the allocator so no endpoint can ever share it.
            let ip = parse_ipv4(&sv.ipv4, "static")?;
            if st.reserved.contains(&ip) || st.used.contains_key(&ip) {
                return Err(ApplyError::conflict(format!(
                    "address {} already in use in network {}",
                    sv.ipv4,
                    st.label()
                )));
            }
            st.used.insert(ip, Holder::Static);
        }
        self.static_vteps.insert(key, sv.clone());
        up.push(Update::StaticVtepAdded(sv.clone()));
        Ok(sv)
    }

    fn remove_static(
        &mut self,
        c: &RemoveStaticVtep,
        up: &mut Vec<Update>,
    ) -> Result<StaticVtep, ApplyError> {
        let sv = self.static_key(&c.network, &c.vtep, &c.mac, &c.ipv4)?;
        let key = (
            sv.network_id.clone(),
            sv.vtep.clone(),
            sv.mac.clone(),
            sv.ipv4.clone(),
        );
        let Some(sv) = self.static_vteps.remove(&key) else {
            return Err(ApplyError::not_found("no such static VTEP entry"));
        };
        if let (Ok(ip), Some(st)) = (
            sv.ipv4.parse::<Ipv4Addr>(),
            self.networks.get_mut(&sv.network_id),
        ) && st.used.get(&u32::from(ip)) == Some(&Holder::Static)
        {
            st.used.remove(&u32::from(ip));
        }
        up.push(Update::StaticVtepRemoved(sv.clone()));
        Ok(sv)
    }

    // ----- queries ----------------------------------------------------------------------------

    /// All networks, by id.
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values().map(|n| &n.info)
    }

    /// Endpoints of a network (by name, id or unique id prefix).
    pub fn endpoints_of(&self, network: &str) -> Result<Vec<&Endpoint>, ApplyError> {
        Ok(self
            .resolve_net_state(network)?
            .endpoints
            .values()
            .collect())
    }

    /// All endpoints of all networks.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.networks.values().flat_map(|n| n.endpoints.values())
    }

    /// All hosts, by name.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    /// A host by Raft node id.
    pub fn host_by_node_id(&self, node_id: u64) -> Option<&Host> {
        self.hosts.values().find(|h| h.node_id == node_id)
    }

    /// All static VTEP entries.
    pub fn static_vteps(&self) -> impl Iterator<Item = &StaticVtep> {
        self.static_vteps.values()
    }

    /// All address reservations, by (network id, address).
    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.networks.values().flat_map(|n| n.reservations.values())
    }

    /// The lowest level any host applies (`APPLY_LEVEL` for an empty cluster).
    pub fn cluster_level(&self) -> u32 {
        self.hosts
            .values()
            .map(|h| h.level)
            .min()
            .unwrap_or(APPLY_LEVEL)
    }

    /// A copy for readers (the agent's view, replaced after every applied batch): everything but
    /// the dedup window, which only the applying node consults. The window holds up to
    /// [`DEDUP_WINDOW`] outcomes; copying it after every batch made each write cost more the
    /// longer a cluster ran.
    pub fn reader_copy(&self) -> State {
        State {
            applied_index: self.applied_index,
            next_node_id: self.next_node_id,
            networks: self.networks.clone(),
            names: self.names.clone(),
            hosts: self.hosts.clone(),
            static_vteps: self.static_vteps.clone(),
            dedup: BTreeMap::new(),
            dedup_order: VecDeque::new(),
            tls: self.tls.clone(),
        }
    }

    /// The stored outcome of a request id, if still in the dedup window.
    pub fn dedup_lookup(&self, request_id: &[u8]) -> Option<&ApplyResult> {
        self.dedup.get(request_id)
    }

    /// Next Raft node id that a registration would get.
    pub fn next_node_id(&self) -> u64 {
        self.next_node_id
    }

    /// The updates that turn `old` into `new` (used when a snapshot from the leader replaces
    /// the state): removals first (endpoints, static VTEPs, networks, hosts), then additions in
    /// the reverse order. A changed record shows up as a removal plus an addition.
    pub fn diff(old: &State, new: &State) -> Vec<Update> {
        fn changed<'a, K: Ord, V: PartialEq>(
            a: &'a BTreeMap<K, V>,
            b: &BTreeMap<K, V>,
        ) -> impl Iterator<Item = &'a V> {
            a.iter()
                .filter(move |(k, v)| b.get(*k) != Some(*v))
                .map(|(_, v)| v)
        }
        let eps = |s: &State| -> BTreeMap<(String, String), Endpoint> {
            s.endpoints()
                .map(|e| ((e.network_id.clone(), e.id.clone()), e.clone()))
                .collect()
        };
        let nets = |s: &State| -> BTreeMap<String, Network> {
            s.networks
                .iter()
                .map(|(k, n)| (k.clone(), n.info.clone()))
                .collect()
        };
        let res = |s: &State| -> BTreeMap<(String, String), Reservation> {
            s.reservations()
                .map(|r| ((r.network_id.clone(), r.ipv4.clone()), r.clone()))
                .collect()
        };
        let (or, nr) = (res(old), res(new));
        let (oe, ne) = (eps(old), eps(new));
        let (on, nn) = (nets(old), nets(new));
        let mut up = Vec::new();
        up.extend(changed(&or, &nr).cloned().map(Update::ReservationRemoved));
        up.extend(changed(&oe, &ne).cloned().map(Update::EndpointRemoved));
        up.extend(
            changed(&old.static_vteps, &new.static_vteps)
                .cloned()
                .map(Update::StaticVtepRemoved),
        );
        up.extend(changed(&on, &nn).cloned().map(Update::NetworkRemoved));
        up.extend(
            changed(&old.hosts, &new.hosts)
                .cloned()
                .map(Update::HostRemoved),
        );
        up.extend(
            changed(&new.hosts, &old.hosts)
                .cloned()
                .map(Update::HostAdded),
        );
        up.extend(changed(&nn, &on).cloned().map(Update::NetworkAdded));
        up.extend(
            changed(&new.static_vteps, &old.static_vteps)
                .cloned()
                .map(Update::StaticVtepAdded),
        );
        up.extend(changed(&ne, &oe).cloned().map(Update::EndpointAdded));
        up.extend(changed(&nr, &or).cloned().map(Update::ReservationAdded));
        if old.tls != new.tls {
            up.push(Update::TlsChanged);
        }
        up
    }

    // ----- snapshots --------------------------------------------------------------------------

    /// The full state, deterministically ordered.
    pub fn to_snapshot(&self) -> StateSnapshot {
        StateSnapshot {
            version: SNAPSHOT_VERSION,
            applied_index: self.applied_index,
            next_node_id: self.next_node_id,
            networks: self.networks.values().map(|n| n.info.clone()).collect(),
            endpoints: self
                .networks
                .values()
                .flat_map(|n| n.endpoints.values().cloned())
                .collect(),
            hosts: self.hosts.values().cloned().collect(),
            static_vteps: self.static_vteps.values().cloned().collect(),
            dedup: self
                .dedup_order
                .iter()
                .filter_map(|rid| {
                    let outcome = match self.dedup.get(rid)? {
                        Ok(r) => dedup_entry::Outcome::Ok(r.clone()),
                        Err(e) => dedup_entry::Outcome::Err(e.to_proto()),
                    };
                    Some(DedupEntry {
                        request_id: rid.clone(),
                        outcome: Some(outcome),
                    })
                })
                .collect(),
            reservations: self.reservations().cloned().collect(),
            tls: self.tls.clone(),
        }
    }

    /// Encoded [`Self::to_snapshot`].
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        self.to_snapshot().encode_to_vec()
    }

    /// Rebuilds a state from a snapshot, re-deriving allocator state and checking consistency.
    pub fn from_snapshot(s: &StateSnapshot) -> Result<State, SnapshotError> {
        let bad = |m: String| SnapshotError::Invalid(m);
        if s.version != SNAPSHOT_VERSION {
            return Err(bad(format!("unknown version {}", s.version)));
        }
        let mut st = State::new();
        st.applied_index = s.applied_index;
        st.next_node_id = s.next_node_id;
        for n in &s.networks {
            let ns = NetState::from_record(n.clone())
                .map_err(|e| bad(format!("network {}: {e}", n.name)))?;
            if st.names.insert(n.name.clone(), n.id.clone()).is_some()
                || st.networks.insert(n.id.clone(), ns).is_some()
            {
                return Err(bad(format!("duplicate network {}", n.name)));
            }
        }
        for e in &s.endpoints {
            let ns = st
                .networks
                .get_mut(&e.network_id)
                .ok_or_else(|| bad(format!("endpoint {} of unknown network", e.id)))?;
            let ip: Ipv4Addr = e
                .ipv4
                .parse()
                .map_err(|_| bad(format!("endpoint {} has a bad address", e.id)))?;
            if ns
                .used
                .insert(u32::from(ip), Holder::Endpoint(e.id.clone()))
                .is_some()
            {
                return Err(bad(format!("address {ip} assigned twice")));
            }
            ns.endpoints.insert(e.id.clone(), e.clone());
        }
        for h in &s.hosts {
            st.hosts.insert(h.name.clone(), h.clone());
        }
        for sv in &s.static_vteps {
            let ns = st
                .networks
                .get_mut(&sv.network_id)
                .ok_or_else(|| bad("static VTEP of unknown network".into()))?;
            if let Ok(ip) = sv.ipv4.parse::<Ipv4Addr>() {
                ns.used.insert(u32::from(ip), Holder::Static);
            }
            let key = (
                sv.network_id.clone(),
                sv.vtep.clone(),
                sv.mac.clone(),
                sv.ipv4.clone(),
            );
            st.static_vteps.insert(key, sv.clone());
        }
        for r in &s.reservations {
            let ns = st
                .networks
                .get_mut(&r.network_id)
                .ok_or_else(|| bad("reservation of unknown network".into()))?;
            let ip: Ipv4Addr = r
                .ipv4
                .parse()
                .map_err(|_| bad(format!("reservation {} is not an address", r.ipv4)))?;
            if ns.reservations.insert(u32::from(ip), r.clone()).is_some() {
                return Err(bad(format!("address {ip} reserved twice")));
            }
        }
        for d in &s.dedup {
            let r = match &d.outcome {
                Some(dedup_entry::Outcome::Ok(r)) => Ok(r.clone()),
                Some(dedup_entry::Outcome::Err(e)) => Err(ApplyError::from_proto(e)),
                None => return Err(bad("dedup entry without outcome".into())),
            };
            st.remember(d.request_id.clone(), r);
        }
        if let Some(t) = &s.tls {
            tls::check_record(t).map_err(|e| bad(format!("TLS record: {e}")))?;
            st.tls = Some(t.clone());
        }
        Ok(st)
    }

    /// Decodes and restores [`Self::to_snapshot_bytes`].
    pub fn from_snapshot_bytes(b: &[u8]) -> Result<State, SnapshotError> {
        State::from_snapshot(&StateSnapshot::decode(b)?)
    }
}

#[cfg(test)]
mod tests;
