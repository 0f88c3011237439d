//! One job in one file (past 800 lines): the apply of every command and the snapshot encoding of
//! the same records must change together for replicas to stay identical; a quarter is tests.
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
    AddStaticVtep, ApplyFailure, AttachDockerNetwork, CreateNetwork, DedupEntry,
    DetachDockerNetwork, DisconnectEndpoint, DockerNetwork, Empty, Endpoint, ErrorKind, Host,
    Network, PortMapping, Proposal, RegisterHost, ReleaseAddress, RemoveStaticVtep, ReportLevel,
    Reservation, ReserveAddress, Response, SetEndpointPorts, StateSnapshot, StaticVtep, command,
    dedup_entry, response,
};

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
/// reservations, runtime-attached endpoints and level reports.
pub const APPLY_LEVEL: u32 = 1;
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
    /// A host's record changed in place (its level).
    HostChanged(Host),
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

    // ----- runtimes (Docker networks, address reservations) -----------------------------------

    /// Attaches one daemon's Docker network to the network named `c.network.name`, creating it
    /// when it does not exist. An existing network must match what was asked (subnet, gateway,
    /// VNI, internal), so that every daemon hands out addresses of the same subnet.
    fn attach_docker(
        &mut self,
        index: u64,
        c: &AttachDockerNetwork,
        up: &mut Vec<Update>,
    ) -> Result<Network, ApplyError> {
        let Some(want) = &c.network else {
            return Err(ApplyError::invalid("no network given"));
        };
        if !self.hosts.contains_key(&c.host) {
            return Err(ApplyError::not_found(format!(
                "host {} is not a member of the cluster",
                c.host
            )));
        }
        if !is_hex_id(&c.docker_network_id) {
            return Err(ApplyError::invalid(format!(
                "invalid Docker network id {:?}: want 64 lowercase hex characters",
                c.docker_network_id
            )));
        }
        let attachment = DockerNetwork {
            host: c.host.clone(),
            network_id: c.docker_network_id.clone(),
        };
        if let Some(st) = self
            .networks
            .values()
            .find(|st| st.docker_position(&c.host, &c.docker_network_id).is_some())
        {
            if st.info.name == want.name {
                // A retry: already attached.
                return Ok(st.info.clone());
            }
            return Err(ApplyError::conflict(format!(
                "Docker network {} of host {} is already attached to network {}",
                short_id(&c.docker_network_id),
                c.host,
                st.info.name
            )));
        }
        let Some(id) = self.names.get(&want.name).cloned() else {
            let mut created = self.create_network(index, want, up)?;
            let Some(st) = self.networks.get_mut(&created.id) else {
                return Err(ApplyError::not_found(format!(
                    "network {} not found",
                    want.name
                )));
            };
            st.info.docker_networks.push(attachment);
            st.info.created_by_docker = true;
            created = st.info.clone();
            // The creation's update carries the record as it is now.
            if let Some(Update::NetworkAdded(n)) = up.last_mut() {
                *n = created.clone();
            }
            return Ok(created);
        };
        let Some(st) = self.networks.get_mut(&id) else {
            return Err(ApplyError::not_found(format!(
                "network {} not found",
                want.name
            )));
        };
        let name = &st.info.name;
        if let Some(subnet) = &want.subnet
            && Cidr::parse(subnet) != Some(st.subnet)
        {
            return Err(ApplyError::conflict(format!(
                "network {name} exists with subnet {}, not {subnet}: ask for --subnet {}",
                st.subnet, st.subnet
            )));
        }
        if let Some(gateway) = &want.gateway
            && *gateway != st.info.gateway
        {
            return Err(ApplyError::conflict(format!(
                "network {name} exists with gateway {}, not {gateway}",
                st.info.gateway
            )));
        }
        if let Some(vni) = want.vni
            && vni != st.info.vni
        {
            return Err(ApplyError::conflict(format!(
                "network {name} exists with VNI {}, not {vni}",
                st.info.vni
            )));
        }
        if want.internal != st.info.internal {
            return Err(ApplyError::conflict(format!(
                "network {name} exists and is {}internal: {} --internal",
                if st.info.internal { "" } else { "not " },
                if st.info.internal { "add" } else { "drop" }
            )));
        }
        st.info.docker_networks.push(attachment);
        up.push(Update::NetworkChanged(st.info.clone()));
        Ok(st.info.clone())
    }

    /// Detaches one daemon's Docker network. A network Docker created goes away with its last
    /// Docker network (unless endpoints remain); one made with `vxnet network create` stays.
    /// Detaching an unknown Docker network changes nothing (Docker retries removals).
    fn detach_docker(
        &mut self,
        c: &DetachDockerNetwork,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        let found = self.networks.iter_mut().find_map(|(id, st)| {
            st.docker_position(&c.host, &c.docker_network_id)
                .map(|pos| (id.clone(), st, pos))
        });
        let Some((id, st, pos)) = found else {
            return Ok(response::Kind::Noop(Empty {}));
        };
        st.info.docker_networks.remove(pos);
        let remove = st.info.created_by_docker
            && st.info.docker_networks.is_empty()
            && st.endpoints.is_empty();
        let info = st.info.clone();
        if remove {
            let removed = self.remove_network(&id, up)?;
            return Ok(response::Kind::NetworkRemoved(removed));
        }
        up.push(Update::NetworkChanged(info.clone()));
        Ok(response::Kind::DockerNetworkDetached(info))
    }

    /// Reserves an address for a host's runtime (its IPAM request comes before the endpoint).
    fn reserve(
        &mut self,
        index: u64,
        c: &ReserveAddress,
        up: &mut Vec<Update>,
    ) -> Result<Reservation, ApplyError> {
        let net_id = self.resolve_net_state(&c.network)?.info.id.clone();
        if !self.hosts.contains_key(&c.host) {
            return Err(ApplyError::not_found(format!(
                "host {} is not a member of the cluster",
                c.host
            )));
        }
        let Some(st) = self.networks.get_mut(&net_id) else {
            return Err(ApplyError::not_found(format!(
                "network {} not found",
                c.network
            )));
        };
        let ip = st.allocate(c.ipv4.as_deref(), "")?;
        let r = Reservation {
            network_id: net_id,
            ipv4: ip_str(ip),
            host: c.host.clone(),
            created_index: index,
        };
        st.reservations.insert(ip, r.clone());
        up.push(Update::ReservationAdded(r.clone()));
        Ok(r)
    }

    /// Releases a host's reservation; one that is not there (or is another host's) is left
    /// alone and the release answers `noop`.
    fn release(
        &mut self,
        c: &ReleaseAddress,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        let net_id = self.resolve_net_state(&c.network)?.info.id.clone();
        let ip = parse_ipv4(&c.ipv4, "released")?;
        let Some(st) = self.networks.get_mut(&net_id) else {
            return Ok(response::Kind::Noop(Empty {}));
        };
        // An address an endpoint uses is not released: the runtime deletes the endpoint before
        // it releases the address, so such a release is a late one (a restarted runtime cleaning
        // up) and the reservation now belongs to the endpoint's owner.
        if st.reservations.get(&ip).is_none_or(|r| r.host != c.host) || st.used.contains_key(&ip) {
            return Ok(response::Kind::Noop(Empty {}));
        }
        let Some(r) = st.reservations.remove(&ip) else {
            return Ok(response::Kind::Noop(Empty {}));
        };
        up.push(Update::ReservationRemoved(r.clone()));
        Ok(response::Kind::AddressReleased(r))
    }

    fn report_level(&mut self, c: &ReportLevel, up: &mut Vec<Update>) -> Result<(), ApplyError> {
        let Some(host) = self.hosts.get_mut(&c.host) else {
            return Err(ApplyError::not_found(format!(
                "host {} is not a member of the cluster",
                c.host
            )));
        };
        if host.level != c.level {
            host.level = c.level;
            up.push(Update::HostChanged(host.clone()));
        }
        Ok(())
    }

    // ----- published ports --------------------------------------------------------------------

    /// Checks mappings for `host` (ignoring endpoint `except`'s own): valid values, no two the
    /// same, none taken by another endpoint of the host. Docker's words for a taken port.
    fn check_ports(
        &self,
        ports: &[PortMapping],
        host: &str,
        except: Option<&str>,
    ) -> Result<(), ApplyError> {
        for (i, p) in ports.iter().enumerate() {
            if p.protocol != "tcp" && p.protocol != "udp" {
                return Err(ApplyError::invalid(format!(
                    "invalid protocol {:?} in port mapping: tcp or udp",
                    p.protocol
                )));
            }
            for port in [p.host_port, p.container_port] {
                if !(1..=65535).contains(&port) {
                    return Err(ApplyError::invalid(format!(
                        "invalid port {port} in port mapping: 1 to 65535"
                    )));
                }
            }
            if !p.host_ip.is_empty() {
                parse_ipv4(&p.host_ip, "host")?;
            }
            let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
            let clash = |q: &PortMapping| {
                q.protocol == p.protocol
                    && q.host_port == p.host_port
                    && (q.host_ip == p.host_ip || any(&q.host_ip) || any(&p.host_ip))
            };
            let taken = ports[..i].iter().any(clash)
                || self.endpoints().any(|e| {
                    e.host == host && Some(e.id.as_str()) != except && e.ports.iter().any(clash)
                });
            if taken {
                let ip = if any(&p.host_ip) {
                    "0.0.0.0"
                } else {
                    p.host_ip.as_str()
                };
                return Err(ApplyError::conflict(format!(
                    "Bind for {ip}:{} failed: port is already allocated",
                    p.host_port
                )));
            }
        }
        Ok(())
    }

    /// Replaces the published ports of one of a host's endpoints.
    fn set_ports(
        &mut self,
        c: &SetEndpointPorts,
        up: &mut Vec<Update>,
    ) -> Result<Endpoint, ApplyError> {
        let Some(current) = self.endpoints().find(|e| e.id == c.endpoint_id).cloned() else {
            return Err(ApplyError::not_found(format!(
                "endpoint {} not found",
                short_id(&c.endpoint_id)
            )));
        };
        if current.host != c.host {
            return Err(ApplyError::conflict(format!(
                "endpoint {} belongs to host {}, not {}",
                current.name, current.host, c.host
            )));
        }
        self.check_ports(&c.ports, &c.host, Some(&current.id))?;
        let Some(st) = self.networks.get_mut(&current.network_id) else {
            return Err(ApplyError::not_found("network not found"));
        };
        if !c.ports.is_empty() && st.info.internal {
            return Err(ApplyError::invalid(format!(
                "network {} is internal: it has no way in, so no port can be published",
                st.info.name
            )));
        }
        let Some(ep) = st.endpoints.get_mut(&current.id) else {
            return Err(ApplyError::not_found("endpoint not found"));
        };
        if ep.ports != c.ports {
            ep.ports = c.ports.clone();
            up.push(Update::EndpointChanged(ep.clone()));
        }
        Ok(ep.clone())
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
            level: 0,
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
        Ok(st)
    }

    /// Decodes and restores [`Self::to_snapshot_bytes`].
    pub fn from_snapshot_bytes(b: &[u8]) -> Result<State, SnapshotError> {
        State::from_snapshot(&StateSnapshot::decode(b)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vxnet_proto::{Command, ConnectEndpoint, RemoveHost, RemoveNetwork};

    fn hex(n: u64) -> String {
        format!("{n:064x}")
    }
    fn prop(rid: u8, kind: command::Kind) -> Proposal {
        Proposal {
            request_id: vec![rid],
            command: Some(Command { kind: Some(kind) }),
        }
    }
    fn net(name: &str, id: u64) -> CreateNetwork {
        CreateNetwork {
            name: name.into(),
            id: hex(id),
            ..Default::default()
        }
    }
    fn conn(net: &str, host: &str, sb: &str, id: u64) -> ConnectEndpoint {
        ConnectEndpoint {
            network: net.into(),
            host: host.into(),
            sandbox: sb.into(),
            name: sb.into(),
            endpoint_id: hex(id),
            ..Default::default()
        }
    }
    fn host(name: &str, ip: &str) -> RegisterHost {
        RegisterHost {
            name: name.into(),
            underlay: ip.into(),
            peer_addr: format!("{ip}:7946"),
        }
    }

    struct T {
        s: State,
        i: u64,
        rid: u8,
    }
    impl T {
        fn new() -> T {
            let mut t = T {
                s: State::new(),
                i: 0,
                rid: 0,
            };
            t.ok(command::Kind::RegisterHost(host("h1", "192.168.0.1")));
            t
        }
        fn run(&mut self, k: command::Kind) -> (ApplyResult, Vec<Update>) {
            self.i += 1;
            self.rid = self.rid.wrapping_add(1);
            self.s.apply(self.i, &prop(self.rid, k))
        }
        fn ok(&mut self, k: command::Kind) -> response::Kind {
            let (r, _) = self.run(k);
            r.unwrap().kind.unwrap()
        }
        fn err(&mut self, k: command::Kind) -> ApplyError {
            let before = self.s.clone();
            let (r, up) = self.run(k);
            assert!(up.is_empty());
            // Only the applied index and the dedup window may move on a refusal.
            let mut after = self.s.clone();
            after.applied_index = before.applied_index;
            after.dedup = before.dedup.clone();
            after.dedup_order = before.dedup_order.clone();
            assert_eq!(after, before);
            r.unwrap_err()
        }
        fn connect(&mut self, net: &str, sb: &str, id: u64) -> Endpoint {
            match self.ok(command::Kind::ConnectEndpoint(conn(net, "h1", sb, id))) {
                response::Kind::EndpointConnected(e) => e,
                other => panic!("{other:?}"),
            }
        }
        fn disconnect(&mut self, net: &str, sb: &str) {
            self.ok(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
                network: net.into(),
                sandbox: sb.into(),
                host: "h1".into(),
                force: false,
                ..Default::default()
            }));
        }
    }

    fn attach(host: &str, docker: u64, name: &str, subnet: &str) -> command::Kind {
        command::Kind::AttachDockerNetwork(AttachDockerNetwork {
            host: host.into(),
            docker_network_id: hex(docker),
            network: Some(CreateNetwork {
                name: name.into(),
                subnet: Some(subnet.into()),
                id: hex(docker),
                ..Default::default()
            }),
        })
    }
    fn reserve(host: &str, ip: Option<&str>) -> command::Kind {
        command::Kind::ReserveAddress(ReserveAddress {
            network: "prod".into(),
            host: host.into(),
            ipv4: ip.map(String::from),
        })
    }
    fn reserved(t: &mut T, host: &str, ip: Option<&str>) -> String {
        match t.ok(reserve(host, ip)) {
            response::Kind::AddressReserved(r) => r.ipv4,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn docker_networks_share_one_network_and_go_with_the_last() {
        let mut t = T::new();
        t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
        let first = t.ok(attach("h1", 100, "prod", "10.30.0.0/24"));
        let response::Kind::DockerNetworkAttached(n) = first else {
            panic!("{first:?}")
        };
        assert!(n.created_by_docker);
        assert_eq!(n.id, hex(100));
        // The second daemon asks for the same subnet: same network.
        t.ok(attach("h2", 200, "prod", "10.30.0.0/24"));
        // A retry is harmless; another subnet for the name is a clear error.
        t.ok(attach("h2", 200, "prod", "10.30.0.0/24"));
        let e = t.err(attach("h2", 201, "prod", "10.31.0.0/24"));
        assert!(e.message.contains("10.30.0.0/24"), "{e}");
        let prod = t.s.resolve_network("prod").unwrap().clone();
        assert_eq!(prod.docker_networks.len(), 2);
        // The CLI cannot remove it while Docker uses it.
        let e = t.err(command::Kind::RemoveNetwork(RemoveNetwork {
            name_or_id: "prod".into(),
        }));
        assert!(e.message.contains("docker network rm"), "{e}");
        let detach = |h: &str, d: u64| {
            command::Kind::DetachDockerNetwork(DetachDockerNetwork {
                host: h.into(),
                docker_network_id: hex(d),
            })
        };
        assert!(matches!(
            t.ok(detach("h1", 100)),
            response::Kind::DockerNetworkDetached(_)
        ));
        assert!(matches!(
            t.ok(detach("h2", 200)),
            response::Kind::NetworkRemoved(_)
        ));
        assert!(t.s.resolve_network("prod").is_err());
        // Unknown ones change nothing.
        assert!(matches!(t.ok(detach("h2", 200)), response::Kind::Noop(_)));
    }

    #[test]
    fn a_cli_network_stays_when_docker_stops_using_it() {
        let mut t = T::new();
        let mut create = net("cli1", 1);
        create.subnet = Some("10.32.0.0/24".into());
        t.ok(command::Kind::CreateNetwork(create));
        t.ok(attach("h1", 100, "cli1", "10.32.0.0/24"));
        t.ok(command::Kind::DetachDockerNetwork(DetachDockerNetwork {
            host: "h1".into(),
            docker_network_id: hex(100),
        }));
        let n = t.s.resolve_network("cli1").unwrap();
        assert!(n.docker_networks.is_empty() && !n.created_by_docker);
    }

    #[test]
    fn reservations_keep_addresses_apart_across_hosts() {
        let mut t = T::new();
        t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
        t.ok(attach("h1", 100, "prod", "10.30.0.0/29"));
        let a = reserved(&mut t, "h1", None);
        let b = reserved(&mut t, "h2", None);
        assert_ne!(a, b);
        // Another host cannot take h1's address, by reservation or by endpoint.
        let e = t.err(reserve("h2", Some(&a)));
        assert!(e.message.contains("already in use"), "{e}");
        let mut c = conn("prod", "h2", "x", 7);
        c.requested_ipv4 = Some(a.clone());
        c.runtime = RUNTIME_DOCKER.into();
        t.err(command::Kind::ConnectEndpoint(c));
        // A CLI endpoint of the same host cannot take it either; h1's runtime endpoint can.
        let mut c = conn("prod", "h1", "y", 8);
        c.requested_ipv4 = Some(a.clone());
        t.err(command::Kind::ConnectEndpoint(c.clone()));
        c.runtime = RUNTIME_DOCKER.into();
        let response::Kind::EndpointConnected(ep) = t.ok(command::Kind::ConnectEndpoint(c)) else {
            panic!()
        };
        assert_eq!(ep.ipv4, a);
        // A release while an endpoint uses the address is a late one: nothing happens.
        assert!(matches!(
            t.ok(command::Kind::ReleaseAddress(ReleaseAddress {
                network: "prod".into(),
                host: "h1".into(),
                ipv4: a.clone(),
            })),
            response::Kind::Noop(_)
        ));
        // Removing the endpoint keeps the reservation until it is released.
        t.ok(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
            network: "prod".into(),
            host: "h1".into(),
            endpoint_id: ep.id.clone(),
            ..Default::default()
        }));
        assert_eq!(t.s.reservations().count(), 2);
        let release = |h: &str, ip: &str| {
            command::Kind::ReleaseAddress(ReleaseAddress {
                network: "prod".into(),
                host: h.into(),
                ipv4: ip.into(),
            })
        };
        // Only the holder releases it.
        assert!(matches!(t.ok(release("h2", &a)), response::Kind::Noop(_)));
        assert!(matches!(
            t.ok(release("h1", &a)),
            response::Kind::AddressReleased(_)
        ));
        // The pool is small (/29: 5 usable after the gateway): it runs out with a clear error.
        for _ in 0..4 {
            reserved(&mut t, "h1", None);
        }
        let e = t.err(reserve("h1", None));
        assert_eq!(e.kind, ErrorKind::Exhausted);
        // Removing a host frees its reservations; snapshots carry them.
        let restored = State::from_snapshot_bytes(&t.s.to_snapshot_bytes()).unwrap();
        assert_eq!(restored, t.s);
        t.ok(command::Kind::RemoveHost(RemoveHost { name: "h2".into() }));
        assert!(t.s.reservations().all(|r| r.host == "h1"));
    }

    #[test]
    fn a_vanished_runtime_endpoint_takes_its_reservation_along() {
        let mut t = T::new();
        t.ok(attach("h1", 100, "prod", "10.30.0.0/24"));
        let a = reserved(&mut t, "h1", None);
        let mut c = conn("prod", "h1", "docker:1", 9);
        c.requested_ipv4 = Some(a);
        c.runtime = RUNTIME_DOCKER.into();
        t.ok(command::Kind::ConnectEndpoint(c));
        t.ok(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
            network: "prod".into(),
            host: "h1".into(),
            endpoint_id: hex(9),
            force: true,
            release_address: true,
            ..Default::default()
        }));
        assert_eq!(t.s.reservations().count(), 0);
    }

    #[test]
    fn interface_names_are_checked_and_kept() {
        let mut t = T::new();
        t.ok(command::Kind::CreateNetwork(net("pods", 1)));
        for bad in ["", "a/b", "has space", "sixteen-chars-xx", "x:y"] {
            let mut c = conn("pods", "h1", "s", 2);
            c.interface = bad.into();
            if bad.is_empty() {
                continue;
            }
            t.err(command::Kind::ConnectEndpoint(c));
        }
        let mut c = conn("pods", "h1", "s", 2);
        c.interface = "net1".into();
        c.runtime = RUNTIME_CNI.into();
        let response::Kind::EndpointConnected(e) = t.ok(command::Kind::ConnectEndpoint(c)) else {
            panic!()
        };
        assert_eq!(
            (e.interface.as_str(), e.runtime.as_str()),
            ("net1", RUNTIME_CNI)
        );
    }

    fn mapping(proto: &str, ip: &str, host: u32, container: u32) -> PortMapping {
        PortMapping {
            protocol: proto.into(),
            host_ip: ip.into(),
            host_port: host,
            container_port: container,
        }
    }

    #[test]
    fn a_host_port_is_allocated_once_per_host_and_protocol() {
        let mut t = T::new();
        t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
        t.ok(command::Kind::CreateNetwork(net("web", 1)));
        let mut a = conn("web", "h1", "a", 2);
        a.publish = vec![mapping("tcp", "", 8080, 80)];
        t.ok(command::Kind::ConnectEndpoint(a));
        let mut b = conn("web", "h1", "b", 3);
        b.publish = vec![mapping("tcp", "10.0.0.1", 8080, 80)];
        let e = t.err(command::Kind::ConnectEndpoint(b.clone()));
        assert_eq!(
            e.message,
            "Bind for 10.0.0.1:8080 failed: port is already allocated"
        );
        // The other protocol, and another host, are free.
        b.publish = vec![mapping("udp", "", 8080, 80)];
        t.ok(command::Kind::ConnectEndpoint(b));
        let mut c = conn("web", "h2", "c", 4);
        c.publish = vec![mapping("tcp", "", 8080, 80)];
        t.ok(command::Kind::ConnectEndpoint(c));
        // Twice in one request, or bad values: refused, nothing changes.
        let mut d = conn("web", "h1", "d", 5);
        d.publish = vec![mapping("tcp", "", 9000, 80), mapping("tcp", "", 9000, 81)];
        assert!(
            t.err(command::Kind::ConnectEndpoint(d.clone()))
                .message
                .contains("9000")
        );
        for bad in [
            mapping("sctp", "", 9001, 80),
            mapping("tcp", "", 0, 80),
            mapping("tcp", "", 9001, 70000),
            mapping("tcp", "1.2.3", 9001, 80),
        ] {
            d.publish = vec![bad];
            assert_eq!(
                t.err(command::Kind::ConnectEndpoint(d.clone())).kind,
                ErrorKind::Invalid
            );
        }
        // Docker's ProgramExternalConnectivity: set, then revoke.
        let set = |ports: Vec<PortMapping>| {
            command::Kind::SetEndpointPorts(SetEndpointPorts {
                endpoint_id: hex(2),
                host: "h1".into(),
                ports,
            })
        };
        t.ok(set(vec![
            mapping("tcp", "", 8080, 80),
            mapping("tcp", "", 8443, 443),
        ]));
        let taken = t.err(command::Kind::SetEndpointPorts(SetEndpointPorts {
            endpoint_id: hex(3),
            host: "h1".into(),
            ports: vec![mapping("tcp", "", 8443, 443)],
        }));
        assert!(taken.message.contains("port is already allocated"));
        t.ok(set(Vec::new()));
        assert!(
            t.s.endpoints()
                .all(|e| e.id != hex(2) || e.ports.is_empty())
        );
    }

    #[test]
    fn levels_are_recorded_and_the_lowest_counts() {
        let mut t = T::new();
        t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
        assert_eq!(t.s.cluster_level(), 0);
        for h in ["h1", "h2"] {
            t.ok(command::Kind::ReportLevel(ReportLevel {
                host: h.into(),
                level: APPLY_LEVEL,
            }));
        }
        assert_eq!(t.s.cluster_level(), APPLY_LEVEL);
    }

    #[test]
    fn defaults_allocate_vni_subnet_gateway() {
        let mut t = T::new();
        let response::Kind::NetworkCreated(a) = t.ok(command::Kind::CreateNetwork(net("a", 1)))
        else {
            panic!()
        };
        assert_eq!((a.vni, a.subnet.as_str()), (4096, "10.20.0.0/24"));
        assert_eq!(a.gateway, "10.20.0.1");
        let response::Kind::NetworkCreated(b) = t.ok(command::Kind::CreateNetwork(net("b", 2)))
        else {
            panic!()
        };
        assert_eq!((b.vni, b.subnet.as_str()), (4097, "10.20.1.0/24"));
        // Removing a frees its VNI and /24 for the next one.
        t.ok(command::Kind::RemoveNetwork(RemoveNetwork {
            name_or_id: "a".into(),
        }));
        let response::Kind::NetworkCreated(c) = t.ok(command::Kind::CreateNetwork(net("c", 3)))
        else {
            panic!()
        };
        assert_eq!((c.vni, c.subnet.as_str()), (4096, "10.20.0.0/24"));
    }

    #[test]
    fn overlap_and_bad_requests_are_refused() {
        let mut t = T::new();
        let mut c = net("a", 1);
        c.subnet = Some("10.1.0.0/16".into());
        c.vni = Some(42);
        t.ok(command::Kind::CreateNetwork(c));
        let mut d = net("b", 2);
        d.subnet = Some("10.1.5.0/24".into());
        let e = t.err(command::Kind::CreateNetwork(d.clone()));
        assert!(e.message.contains("Pool overlaps"), "{e}");
        d.subnet = Some("10.2.0.0/24".into());
        d.vni = Some(42);
        assert_eq!(
            t.err(command::Kind::CreateNetwork(d.clone())).kind,
            ErrorKind::Conflict
        );
        d.vni = Some(0x100_0000);
        assert_eq!(
            t.err(command::Kind::CreateNetwork(d.clone())).kind,
            ErrorKind::Invalid
        );
        d.vni = None;
        d.gateway = Some("10.3.0.1".into());
        assert!(
            t.err(command::Kind::CreateNetwork(d.clone()))
                .message
                .contains("gateway")
        );
        d.gateway = None;
        d.ip_range = Some("10.2.1.0/28".into());
        assert!(
            t.err(command::Kind::CreateNetwork(d.clone()))
                .message
                .contains("ip-range")
        );
        d.ip_range = None;
        d.aux_addresses.insert("x".into(), "10.9.9.9".into());
        assert!(
            t.err(command::Kind::CreateNetwork(d.clone()))
                .message
                .contains("auxiliary")
        );
        let e = t.err(command::Kind::CreateNetwork(net("a", 3)));
        assert_eq!(e.message, "network with name a already exists");
    }

    #[test]
    fn next_fit_reuses_freed_addresses_last() {
        let mut t = T::new();
        let mut c = net("n", 1);
        c.subnet = Some("10.5.0.0/29".into()); // hosts .1-.6, gateway .1
        c.aux_addresses.insert("r".into(), "10.5.0.3".into());
        t.ok(command::Kind::CreateNetwork(c));
        let a = t.connect("n", "a", 1);
        let b = t.connect("n", "b", 2);
        assert_eq!((a.ipv4.as_str(), b.ipv4.as_str()), ("10.5.0.2", "10.5.0.4"));
        assert_eq!(a.mac, "02:42:0a:05:00:02");
        t.disconnect("n", "a");
        // .2 is free again but the cursor moves on first.
        assert_eq!(t.connect("n", "c", 3).ipv4, "10.5.0.5");
        assert_eq!(t.connect("n", "d", 4).ipv4, "10.5.0.6");
        assert_eq!(t.connect("n", "e", 5).ipv4, "10.5.0.2");
        let e = t.err(command::Kind::ConnectEndpoint(conn("n", "h1", "f", 6)));
        assert_eq!(e.kind, ErrorKind::Exhausted);
        assert!(e.message.starts_with("no available IPv4 addresses"));
    }

    #[test]
    fn requested_addresses_are_checked() {
        let mut t = T::new();
        let mut c = net("n", 1);
        c.subnet = Some("10.5.0.0/24".into());
        c.ip_range = Some("10.5.0.128/25".into());
        t.ok(command::Kind::CreateNetwork(c));
        let mut r = conn("n", "h1", "a", 1);
        for (ip, frag) in [
            ("10.5.0.7", "outside"),
            ("10.5.0.255", "outside"),
            ("10.6.0.200", "outside"),
            ("bogus", "invalid"),
        ] {
            r.requested_ipv4 = Some(ip.into());
            let e = t.err(command::Kind::ConnectEndpoint(r.clone()));
            assert!(e.message.contains(frag), "{ip}: {e}");
        }
        r.requested_ipv4 = Some("10.5.0.200".into());
        assert_eq!(
            t.ok(command::Kind::ConnectEndpoint(r.clone())),
            response::Kind::EndpointConnected(t.s.endpoints().next().unwrap().clone())
        );
        let mut r2 = conn("n", "h1", "b", 2);
        r2.requested_ipv4 = Some("10.5.0.200".into());
        let e = t.err(command::Kind::ConnectEndpoint(r2));
        assert!(e.message.contains("already in use"), "{e}");
        // Automatic allocation starts at the pool, not the subnet.
        assert_eq!(t.connect("n", "c", 3).ipv4, "10.5.0.128");
    }

    #[test]
    fn docker_style_conflicts() {
        let mut t = T::new();
        t.ok(command::Kind::CreateNetwork(net("n", 1)));
        t.connect("n", "a", 1);
        let e = t.err(command::Kind::ConnectEndpoint(conn("n", "h1", "a", 2)));
        assert_eq!(
            e.message,
            "endpoint with name a already exists in network n"
        );
        let e = t.err(command::Kind::RemoveNetwork(RemoveNetwork {
            name_or_id: "n".into(),
        }));
        assert!(
            e.message
                .starts_with("error while removing network: network n")
        );
        assert!(e.message.ends_with("has active endpoints"));
        let e = t.err(command::Kind::ConnectEndpoint(conn("n", "ghost", "z", 3)));
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e = t.err(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
            network: "n".into(),
            sandbox: "a".into(),
            host: "h2".into(),
            force: false,
            ..Default::default()
        }));
        assert_eq!(e.kind, ErrorKind::Conflict);
    }

    #[test]
    fn lookup_by_name_id_and_prefix() {
        let mut t = T::new();
        t.ok(command::Kind::CreateNetwork(CreateNetwork {
            id: format!("ab{}", "0".repeat(62)),
            ..net("x", 0)
        }));
        t.ok(command::Kind::CreateNetwork(CreateNetwork {
            id: format!("ac{}", "0".repeat(62)),
            ..net("ab", 0)
        }));
        // Exact name wins over an id prefix.
        assert_eq!(t.s.resolve_network("ab").unwrap().name, "ab");
        assert_eq!(t.s.resolve_network("ac").unwrap().name, "ab");
        assert_eq!(t.s.resolve_network("ab0").unwrap().name, "x");
        let e = t.s.resolve_network("a").unwrap_err();
        assert!(e.message.contains("ambiguous (2 matches"), "{e}");
        assert_eq!(
            t.s.resolve_network("zz").unwrap_err().message,
            "network zz not found"
        );
    }

    #[test]
    fn dedup_returns_same_response_without_changes() {
        let mut s = State::new();
        let p = prop(9, command::Kind::RegisterHost(host("h", "10.0.0.1")));
        let (r1, u1) = s.apply(1, &p);
        let (r2, u2) = s.apply(2, &p);
        assert_eq!(r1, r2);
        assert_eq!(u1.len(), 1);
        assert!(u2.is_empty());
        assert_eq!(s.next_node_id(), 2);
        // Failures are remembered too.
        let bad = prop(
            10,
            command::Kind::RemoveHost(RemoveHost { name: "x".into() }),
        );
        let (e1, _) = s.apply(3, &bad);
        let _ = s.apply(
            4,
            &prop(11, command::Kind::RegisterHost(host("x", "10.0.0.2"))),
        );
        let (e2, _) = s.apply(5, &bad);
        assert!(e1.is_err());
        assert_eq!(e1, e2);
    }

    #[test]
    fn dedup_window_is_bounded() {
        let mut s = State::new();
        for i in 0..(DEDUP_WINDOW as u64 + 10) {
            let p = Proposal {
                request_id: i.to_be_bytes().to_vec(),
                command: Some(Command {
                    kind: Some(command::Kind::Noop(Empty {})),
                }),
            };
            let _ = s.apply(i + 1, &p);
        }
        assert_eq!(s.dedup.len(), DEDUP_WINDOW);
        assert!(s.dedup_lookup(&0u64.to_be_bytes()).is_none());
        assert!(s.dedup_lookup(&10u64.to_be_bytes()).is_some());
    }

    #[test]
    fn remove_host_frees_endpoints_and_ids_are_not_reused() {
        let mut t = T::new();
        t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
        t.ok(command::Kind::CreateNetwork(net("n", 1)));
        t.connect("n", "a", 1);
        t.ok(command::Kind::ConnectEndpoint(conn("n", "h2", "b", 2)));
        let (r, up) = t.run(command::Kind::RemoveHost(RemoveHost { name: "h1".into() }));
        r.unwrap();
        assert!(matches!(&up[0], Update::EndpointRemoved(e) if e.sandbox == "a"));
        assert!(matches!(&up[1], Update::HostRemoved(h) if h.node_id == 1));
        let response::Kind::HostRegistered(h) =
            t.ok(command::Kind::RegisterHost(host("h1", "192.168.0.1")))
        else {
            panic!()
        };
        assert_eq!(h.node_id, 3);
        assert_eq!(t.s.endpoints().count(), 1);
    }

    #[test]
    fn static_vteps_reserve_their_address() {
        let mut t = T::new();
        let mut c = net("n", 1);
        c.subnet = Some("10.5.0.0/24".into());
        t.ok(command::Kind::CreateNetwork(c));
        t.ok(command::Kind::AddStaticVtep(AddStaticVtep {
            network: "n".into(),
            vtep: "172.16.0.9".into(),
            mac: Some("2:42:A:5:0:2".into()),
            ipv4: Some("10.5.0.2".into()),
        }));
        assert_eq!(t.connect("n", "a", 1).ipv4, "10.5.0.3");
        let snap = t.s.to_snapshot();
        assert_eq!(snap.static_vteps[0].mac, "02:42:0a:05:00:02");
        t.ok(command::Kind::DisconnectEndpoint(DisconnectEndpoint {
            network: "n".into(),
            sandbox: "a".into(),
            host: String::new(),
            force: false,
            ..Default::default()
        }));
        let (r, up) = t.run(command::Kind::RemoveNetwork(RemoveNetwork {
            name_or_id: "n".into(),
        }));
        r.unwrap();
        assert!(matches!(up[0], Update::StaticVtepRemoved(_)));
        assert!(matches!(up[1], Update::NetworkRemoved(_)));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn arb_cmd() -> impl Strategy<Value = command::Kind> {
            prop_oneof![
                (0u64..6, proptest::option::of(0u8..4)).prop_map(|(i, sub)| {
                    command::Kind::CreateNetwork(CreateNetwork {
                        name: format!("n{i}"),
                        id: hex(i),
                        subnet: sub.map(|s| format!("10.{s}.0.0/28")),
                        ..Default::default()
                    })
                }),
                (0u64..6).prop_map(|i| command::Kind::RemoveNetwork(RemoveNetwork {
                    name_or_id: format!("n{i}")
                })),
                (0u64..6, 0u64..3, 0u64..20).prop_map(|(n, h, s)| {
                    command::Kind::ConnectEndpoint(conn(
                        &format!("n{n}"),
                        &format!("h{h}"),
                        &format!("s{s}"),
                        100 + s,
                    ))
                }),
                (0u64..6, 0u64..20).prop_map(|(n, s)| {
                    command::Kind::DisconnectEndpoint(DisconnectEndpoint {
                        network: format!("n{n}"),
                        sandbox: format!("s{s}"),
                        host: String::new(),
                        force: true,
                        ..Default::default()
                    })
                }),
                (0u64..3).prop_map(|h| command::Kind::RegisterHost(host(
                    &format!("h{h}"),
                    &format!("192.168.1.{h}")
                ))),
                (0u64..3).prop_map(|h| command::Kind::RemoveHost(RemoveHost {
                    name: format!("h{h}")
                })),
                (0u64..6, 0u8..3).prop_map(|(n, v)| command::Kind::AddStaticVtep(AddStaticVtep {
                    network: format!("n{n}"),
                    vtep: format!("172.16.0.{v}"),
                    mac: None,
                    ipv4: None,
                })),
            ]
        }

        proptest! {
            #[test]
            fn snapshot_round_trips(cmds in proptest::collection::vec((arb_cmd(), 0u8..40), 0..80)) {
                let mut s = State::new();
                for (i, (k, rid)) in cmds.into_iter().enumerate() {
                    let _ = s.apply(i as u64 + 1, &prop(rid, k));
                    let snap = s.to_snapshot();
                    let back = State::from_snapshot(&snap).unwrap();
                    prop_assert_eq!(&back, &s);
                    prop_assert_eq!(back.to_snapshot_bytes(), s.to_snapshot_bytes());
                }
                // Invariant: no address twice per network, no VNI twice.
                let mut vnis = BTreeSet::new();
                for n in s.networks() {
                    prop_assert!(vnis.insert(n.vni));
                    let eps = s.endpoints_of(&n.id).unwrap();
                    let ips: BTreeSet<_> = eps.iter().map(|e| e.ipv4.clone()).collect();
                    prop_assert_eq!(ips.len(), eps.len());
                }
            }
        }
    }
}
