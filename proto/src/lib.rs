//! vxnet wire messages (prost, derived by hand: no build script, no `protoc`).
//!
//! Three families of messages live here:
//! - the replicated state machine: [`Proposal`] / [`Command`] (what goes through Raft),
//!   [`Response`] / [`ApplyFailure`] (what applying returns), and [`StateSnapshot`] with its
//!   records [`Network`], [`Endpoint`], [`Host`], [`StaticVtep`];
//! - the peer protocol between agents: [`PeerEnvelope`] (Raft messages travel inside it as
//!   opaque bytes encoded with raft's own protobuf codec);
//! - the local API socket used by the CLI: [`ApiRequest`] / [`ApiResponse`].
//!
//! Addresses are carried as text (`"10.20.0.5"`, `"10.20.0.0/24"`, `"02:42:0a:14:00:05"`) so
//! that the CLI can print them and old records stay readable when fields are added.

// Oneofs hold whole records by value, as prost-build would generate them; boxing would only
// make construction noisier for messages that are small and short-lived.
#![allow(clippy::large_enum_variant)]

use std::collections::BTreeMap;

pub use prost::Message;

pub mod frame;

// ---------------------------------------------------------------------------------------------
// Replicated records
// ---------------------------------------------------------------------------------------------

/// An overlay network (one VXLAN segment).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Network {
    /// 64 lowercase hex characters, chosen by the proposer.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Unique name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Driver name (`"overlay"`).
    #[prost(string, tag = "3")]
    pub driver: String,
    /// IPv4 subnet in canonical CIDR form.
    #[prost(string, tag = "4")]
    pub subnet: String,
    /// Gateway address (inside `subnet`).
    #[prost(string, tag = "5")]
    pub gateway: String,
    /// Allocation range in CIDR form; empty means the whole subnet.
    #[prost(string, tag = "6")]
    pub ip_range: String,
    /// Reserved addresses by name (never handed to endpoints).
    #[prost(btree_map = "string, string", tag = "7")]
    pub aux_addresses: BTreeMap<String, String>,
    /// VXLAN network identifier (24 bits).
    #[prost(uint32, tag = "8")]
    pub vni: u32,
    /// No external connectivity.
    #[prost(bool, tag = "9")]
    pub internal: bool,
    /// User labels.
    #[prost(btree_map = "string, string", tag = "10")]
    pub labels: BTreeMap<String, String>,
    /// Driver options.
    #[prost(btree_map = "string, string", tag = "11")]
    pub options: BTreeMap<String, String>,
    /// Creation time as chosen by the proposer (the state machine has no clock).
    #[prost(uint64, tag = "12")]
    pub created_unix_ms: u64,
    /// Raft index at which the network was created.
    #[prost(uint64, tag = "13")]
    pub created_index: u64,
    /// Next-fit allocator cursor: the last address handed out (as a big-endian `u32`), 0 if none.
    #[prost(uint32, tag = "14")]
    pub ipam_cursor: u32,
}

/// A container's attachment to a network on one host.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Endpoint {
    /// 64 lowercase hex characters, chosen by the proposer.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Id of the network.
    #[prost(string, tag = "2")]
    pub network_id: String,
    /// Endpoint name (unique per network), usually the container name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Name of the host the sandbox lives on.
    #[prost(string, tag = "4")]
    pub host: String,
    /// Underlay address of that host's VTEP.
    #[prost(string, tag = "5")]
    pub vtep: String,
    /// Sandbox (container) id; connected to a network at most once.
    #[prost(string, tag = "6")]
    pub sandbox: String,
    /// DNS aliases.
    #[prost(string, repeated, tag = "7")]
    pub aliases: Vec<String>,
    /// Assigned IPv4 address.
    #[prost(string, tag = "8")]
    pub ipv4: String,
    /// Prefix length of the network's subnet.
    #[prost(uint32, tag = "9")]
    pub prefix_len: u32,
    /// MAC derived from the address (`02:42:a:b:c:d`).
    #[prost(string, tag = "10")]
    pub mac: String,
    /// VNI of the network.
    #[prost(uint32, tag = "11")]
    pub vni: u32,
    /// Raft index at which the endpoint was created.
    #[prost(uint64, tag = "12")]
    pub created_index: u64,
}

/// A cluster member (one agent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Host {
    /// Unique host name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Raft node id, allocated when the registration is applied; never reused.
    #[prost(uint64, tag = "2")]
    pub node_id: u64,
    /// Underlay IPv4 address used as the VTEP.
    #[prost(string, tag = "3")]
    pub underlay: String,
    /// Address (`host:port`) of the agent's peer (Raft) listener.
    #[prost(string, tag = "4")]
    pub peer_addr: String,
    /// Raft index at which the host registered.
    #[prost(uint64, tag = "5")]
    pub registered_index: u64,
}

/// A VTEP outside the cluster (e.g. a kernel VXLAN device) attached to a network.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StaticVtep {
    /// Id of the network.
    #[prost(string, tag = "1")]
    pub network_id: String,
    /// Underlay IPv4 address of the VTEP.
    #[prost(string, tag = "2")]
    pub vtep: String,
    /// Inner MAC reachable behind it; empty = flood (BUM) entry only.
    #[prost(string, tag = "3")]
    pub mac: String,
    /// Inner IPv4 bound to `mac` (for ARP answers); empty if none.
    #[prost(string, tag = "4")]
    pub ipv4: String,
    /// VNI of the network.
    #[prost(uint32, tag = "5")]
    pub vni: u32,
    /// Where the entry comes from when shown by `vxnet fdb show` (`static`, `endpoint:<host>`,
    /// `local`); empty in the replicated state.
    #[prost(string, tag = "6")]
    pub origin: String,
}

/// Class of an apply error, for API status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorKind {
    /// Unknown / unspecified.
    Unspecified = 0,
    /// Malformed or inconsistent request.
    Invalid = 1,
    /// Named object does not exist.
    NotFound = 2,
    /// Conflicts with an existing object.
    Conflict = 3,
    /// A pool (addresses, VNIs, subnets) is exhausted.
    Exhausted = 4,
    /// Object is still in use.
    InUse = 5,
}

/// A failed command, as stored for deduplication and returned to clients.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyFailure {
    /// Error class.
    #[prost(enumeration = "ErrorKind", tag = "1")]
    pub kind: i32,
    /// Human readable message (Docker-style wording).
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Empty message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// Successful result of applying a command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// What happened.
    #[prost(oneof = "response::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub kind: Option<response::Kind>,
}

/// Nested types of [`Response`].
pub mod response {
    /// What happened.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A network was created.
        #[prost(message, tag = "1")]
        NetworkCreated(super::Network),
        /// A network was removed.
        #[prost(message, tag = "2")]
        NetworkRemoved(super::Network),
        /// An endpoint was connected.
        #[prost(message, tag = "3")]
        EndpointConnected(super::Endpoint),
        /// An endpoint was disconnected.
        #[prost(message, tag = "4")]
        EndpointDisconnected(super::Endpoint),
        /// A host joined.
        #[prost(message, tag = "5")]
        HostRegistered(super::Host),
        /// A host was removed.
        #[prost(message, tag = "6")]
        HostRemoved(super::Host),
        /// A static VTEP entry was added.
        #[prost(message, tag = "7")]
        StaticVtepAdded(super::StaticVtep),
        /// A static VTEP entry was removed.
        #[prost(message, tag = "8")]
        StaticVtepRemoved(super::StaticVtep),
        /// Nothing to do.
        #[prost(message, tag = "9")]
        Noop(super::Empty),
    }
}

/// One remembered (request id → outcome) pair of the deduplication window.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DedupEntry {
    /// Client-chosen request id.
    #[prost(bytes = "vec", tag = "1")]
    pub request_id: Vec<u8>,
    /// Stored outcome.
    #[prost(oneof = "dedup_entry::Outcome", tags = "2, 3")]
    pub outcome: Option<dedup_entry::Outcome>,
}

/// Nested types of [`DedupEntry`].
pub mod dedup_entry {
    /// Stored outcome.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Outcome {
        /// The command succeeded.
        #[prost(message, tag = "2")]
        Ok(super::Response),
        /// The command failed.
        #[prost(message, tag = "3")]
        Err(super::ApplyFailure),
    }
}

/// The whole replicated state machine (the data of a Raft snapshot).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StateSnapshot {
    /// Format version (currently 1).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Last Raft index applied to this state.
    #[prost(uint64, tag = "2")]
    pub applied_index: u64,
    /// Next Raft node id to hand out.
    #[prost(uint64, tag = "3")]
    pub next_node_id: u64,
    /// Networks, sorted by id.
    #[prost(message, repeated, tag = "4")]
    pub networks: Vec<Network>,
    /// Endpoints, sorted by (network id, endpoint id).
    #[prost(message, repeated, tag = "5")]
    pub endpoints: Vec<Endpoint>,
    /// Hosts, sorted by name.
    #[prost(message, repeated, tag = "6")]
    pub hosts: Vec<Host>,
    /// Static VTEP entries, sorted.
    #[prost(message, repeated, tag = "7")]
    pub static_vteps: Vec<StaticVtep>,
    /// Deduplication window, oldest first.
    #[prost(message, repeated, tag = "8")]
    pub dedup: Vec<DedupEntry>,
}

// ---------------------------------------------------------------------------------------------
// Commands (what is proposed to Raft)
// ---------------------------------------------------------------------------------------------

/// The unit proposed to Raft: a command plus the client's request id (for retries).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Proposal {
    /// Client-chosen id (e.g. 16 random bytes); a retry reuses it. Empty = no deduplication.
    #[prost(bytes = "vec", tag = "1")]
    pub request_id: Vec<u8>,
    /// The command.
    #[prost(message, optional, tag = "2")]
    pub command: Option<Command>,
}

/// A state machine command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// Which command.
    #[prost(oneof = "command::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub kind: Option<command::Kind>,
}

/// Nested types of [`Command`].
pub mod command {
    /// Which command.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Create a network.
        #[prost(message, tag = "1")]
        CreateNetwork(super::CreateNetwork),
        /// Remove a network.
        #[prost(message, tag = "2")]
        RemoveNetwork(super::RemoveNetwork),
        /// Connect a sandbox.
        #[prost(message, tag = "3")]
        ConnectEndpoint(super::ConnectEndpoint),
        /// Disconnect a sandbox.
        #[prost(message, tag = "4")]
        DisconnectEndpoint(super::DisconnectEndpoint),
        /// Register a host (allocates its Raft node id).
        #[prost(message, tag = "5")]
        RegisterHost(super::RegisterHost),
        /// Remove a host and everything attached to it.
        #[prost(message, tag = "6")]
        RemoveHost(super::RemoveHost),
        /// Add a static VTEP entry.
        #[prost(message, tag = "7")]
        AddStaticVtep(super::AddStaticVtep),
        /// Remove a static VTEP entry.
        #[prost(message, tag = "8")]
        RemoveStaticVtep(super::RemoveStaticVtep),
        /// Do nothing (used to probe the log).
        #[prost(message, tag = "9")]
        Noop(super::Empty),
    }
}

/// Create a network.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateNetwork {
    /// Unique name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Driver (empty = `"overlay"`).
    #[prost(string, tag = "2")]
    pub driver: String,
    /// Requested IPv4 subnet (CIDR); none = first free /24 of the default pool.
    #[prost(string, optional, tag = "3")]
    pub subnet: Option<String>,
    /// Requested gateway; none = first host address.
    #[prost(string, optional, tag = "4")]
    pub gateway: Option<String>,
    /// Allocation sub-range (CIDR inside the subnet).
    #[prost(string, optional, tag = "5")]
    pub ip_range: Option<String>,
    /// Reserved addresses.
    #[prost(btree_map = "string, string", tag = "6")]
    pub aux_addresses: BTreeMap<String, String>,
    /// Requested VNI; none = lowest free from 4096.
    #[prost(uint32, optional, tag = "7")]
    pub vni: Option<u32>,
    /// No external connectivity.
    #[prost(bool, tag = "8")]
    pub internal: bool,
    /// User labels.
    #[prost(btree_map = "string, string", tag = "9")]
    pub labels: BTreeMap<String, String>,
    /// Driver options.
    #[prost(btree_map = "string, string", tag = "10")]
    pub options: BTreeMap<String, String>,
    /// Network id chosen by the proposer (64 lowercase hex characters).
    #[prost(string, tag = "11")]
    pub id: String,
    /// Proposer's wall clock.
    #[prost(uint64, tag = "12")]
    pub created_unix_ms: u64,
}

/// Remove a network (refused while endpoints are attached).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveNetwork {
    /// Name, id or unique id prefix.
    #[prost(string, tag = "1")]
    pub name_or_id: String,
}

/// Connect a sandbox to a network.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectEndpoint {
    /// Network name, id or unique id prefix.
    #[prost(string, tag = "1")]
    pub network: String,
    /// Host the sandbox runs on (must be registered).
    #[prost(string, tag = "2")]
    pub host: String,
    /// Sandbox (container) id.
    #[prost(string, tag = "3")]
    pub sandbox: String,
    /// Endpoint name (unique per network).
    #[prost(string, tag = "4")]
    pub name: String,
    /// DNS aliases.
    #[prost(string, repeated, tag = "5")]
    pub aliases: Vec<String>,
    /// Requested address; none = next-fit allocation.
    #[prost(string, optional, tag = "6")]
    pub requested_ipv4: Option<String>,
    /// Endpoint id chosen by the proposer (64 lowercase hex characters).
    #[prost(string, tag = "7")]
    pub endpoint_id: String,
}

/// Disconnect a sandbox from a network.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DisconnectEndpoint {
    /// Network name, id or unique id prefix.
    #[prost(string, tag = "1")]
    pub network: String,
    /// Sandbox (container) id.
    #[prost(string, tag = "2")]
    pub sandbox: String,
    /// Host the request comes from; must own the endpoint unless `force`.
    #[prost(string, tag = "3")]
    pub host: String,
    /// Remove even if another host owns the endpoint.
    #[prost(bool, tag = "4")]
    pub force: bool,
}

/// Register a host; the Raft node id is allocated when this is applied.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterHost {
    /// Unique host name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Underlay IPv4 address (VTEP).
    #[prost(string, tag = "2")]
    pub underlay: String,
    /// Peer listener address (`host:port`).
    #[prost(string, tag = "3")]
    pub peer_addr: String,
}

/// Remove a host, its endpoints and their addresses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveHost {
    /// Host name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// Add a static VTEP entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddStaticVtep {
    /// Network name, id or unique id prefix.
    #[prost(string, tag = "1")]
    pub network: String,
    /// Underlay IPv4 address of the VTEP.
    #[prost(string, tag = "2")]
    pub vtep: String,
    /// Inner MAC behind the VTEP; none = flood entry.
    #[prost(string, optional, tag = "3")]
    pub mac: Option<String>,
    /// Inner IPv4 of that MAC.
    #[prost(string, optional, tag = "4")]
    pub ipv4: Option<String>,
}

/// Remove a static VTEP entry (same key as it was added with).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveStaticVtep {
    /// Network name, id or unique id prefix.
    #[prost(string, tag = "1")]
    pub network: String,
    /// Underlay IPv4 address of the VTEP.
    #[prost(string, tag = "2")]
    pub vtep: String,
    /// Inner MAC.
    #[prost(string, optional, tag = "3")]
    pub mac: Option<String>,
    /// Inner IPv4.
    #[prost(string, optional, tag = "4")]
    pub ipv4: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Peer protocol
// ---------------------------------------------------------------------------------------------

/// Every frame between agents.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerEnvelope {
    /// Cluster id; frames of another cluster are dropped.
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    /// Sender's Raft node id (0 for a host that has not joined yet).
    #[prost(uint64, tag = "2")]
    pub from: u64,
    /// Receiver's Raft node id (0 = whoever listens there).
    #[prost(uint64, tag = "3")]
    pub to: u64,
    /// Payload.
    #[prost(oneof = "peer_envelope::Body", tags = "4, 5, 6, 7, 8, 9")]
    pub body: Option<peer_envelope::Body>,
}

/// Nested types of [`PeerEnvelope`].
pub mod peer_envelope {
    /// Payload.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// A `raft::eraftpb::Message` encoded with raft's protobuf codec.
        #[prost(bytes = "vec", tag = "4")]
        RaftMessage(Vec<u8>),
        /// First frame on a connection.
        #[prost(message, tag = "5")]
        Hello(super::Hello),
        /// A host asks to join.
        #[prost(message, tag = "6")]
        JoinRequest(super::JoinRequest),
        /// Answer to a join.
        #[prost(message, tag = "7")]
        JoinResponse(super::JoinResponse),
        /// A follower forwards a proposal to the leader.
        #[prost(message, tag = "8")]
        ForwardRequest(super::ForwardRequest),
        /// The leader's answer once the proposal is applied.
        #[prost(message, tag = "9")]
        ForwardResponse(super::ForwardResponse),
    }
}

/// Connection greeting with a proof of the shared join secret.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Sender's host name.
    #[prost(string, tag = "1")]
    pub host_name: String,
    /// Sender's node id (0 if not joined).
    #[prost(uint64, tag = "2")]
    pub node_id: u64,
    /// Random nonce chosen by the sender.
    #[prost(bytes = "vec", tag = "3")]
    pub nonce: Vec<u8>,
    /// MAC over (cluster id, node id, nonce) keyed with the cluster secret.
    #[prost(bytes = "vec", tag = "4")]
    pub auth: Vec<u8>,
}

/// Join request, sent to any member (forwarded to the leader).
#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinRequest {
    /// Request id, reused on retries.
    #[prost(bytes = "vec", tag = "1")]
    pub request_id: Vec<u8>,
    /// Registration of the joining host.
    #[prost(message, optional, tag = "2")]
    pub host: Option<RegisterHost>,
}

/// Leadership hint.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotLeader {
    /// Known leader id (0 = unknown).
    #[prost(uint64, tag = "1")]
    pub leader_id: u64,
    /// Its peer address, if known.
    #[prost(string, tag = "2")]
    pub leader_addr: String,
}

/// Answer to a [`JoinRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinResponse {
    /// Outcome.
    #[prost(oneof = "join_response::Result", tags = "1, 2, 3")]
    pub result: Option<join_response::Result>,
}

/// Nested types of [`JoinResponse`].
pub mod join_response {
    /// Outcome.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Result {
        /// Registered.
        #[prost(message, tag = "1")]
        Accepted(super::JoinAccepted),
        /// Refused.
        #[prost(message, tag = "2")]
        Error(super::ApplyFailure),
        /// Ask someone else.
        #[prost(message, tag = "3")]
        NotLeader(super::NotLeader),
    }
}

/// A successful join.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinAccepted {
    /// The joining host's Raft node id.
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    /// Cluster id.
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
    /// Current leader.
    #[prost(uint64, tag = "3")]
    pub leader_id: u64,
    /// All members (for the transport's address book).
    #[prost(message, repeated, tag = "4")]
    pub members: Vec<Host>,
}

/// A proposal forwarded to the leader.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardRequest {
    /// The proposal, request id included.
    #[prost(message, optional, tag = "1")]
    pub proposal: Option<Proposal>,
}

/// The leader's answer to a [`ForwardRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardResponse {
    /// Echo of the request id.
    #[prost(bytes = "vec", tag = "1")]
    pub request_id: Vec<u8>,
    /// Raft index the command was applied at; the forwarder answers its client once its own
    /// applied index reaches it (read-your-writes on the forwarding node).
    #[prost(uint64, tag = "2")]
    pub index: u64,
    /// Outcome.
    #[prost(oneof = "forward_response::Outcome", tags = "3, 4, 5")]
    pub outcome: Option<forward_response::Outcome>,
}

/// Nested types of [`ForwardResponse`].
pub mod forward_response {
    /// Outcome.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Outcome {
        /// Applied successfully.
        #[prost(message, tag = "3")]
        Ok(super::Response),
        /// Applied and refused by the state machine.
        #[prost(message, tag = "4")]
        Err(super::ApplyFailure),
        /// The receiver is not the leader (anymore).
        #[prost(message, tag = "5")]
        NotLeader(super::NotLeader),
    }
}

// ---------------------------------------------------------------------------------------------
// Local API (CLI socket)
// ---------------------------------------------------------------------------------------------

/// A CLI request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiRequest {
    /// Which request.
    #[prost(
        oneof = "api_request::Kind",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15"
    )]
    pub kind: Option<api_request::Kind>,
}

/// Nested types of [`ApiRequest`].
pub mod api_request {
    /// Which request.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// `network create` (the agent fills in id and time).
        #[prost(message, tag = "1")]
        NetworkCreate(super::CreateNetwork),
        /// `network ls`.
        #[prost(message, tag = "2")]
        NetworkList(super::NetworkListRequest),
        /// `network inspect`.
        #[prost(message, tag = "3")]
        NetworkInspect(super::NamesRequest),
        /// `network rm`.
        #[prost(message, tag = "4")]
        NetworkRemove(super::NamesRequest),
        /// `network prune` (remove networks without endpoints).
        #[prost(message, tag = "5")]
        NetworkPrune(super::Empty),
        /// `network connect` (the agent fills in host and endpoint id).
        #[prost(message, tag = "6")]
        NetworkConnect(super::ConnectEndpoint),
        /// `network disconnect`.
        #[prost(message, tag = "7")]
        NetworkDisconnect(super::DisconnectEndpoint),
        /// `cluster members`.
        #[prost(message, tag = "8")]
        ClusterMembers(super::Empty),
        /// `cluster leave` (this host).
        #[prost(message, tag = "9")]
        ClusterLeave(super::Empty),
        /// `cluster rm <host>`.
        #[prost(message, tag = "10")]
        ClusterRemove(super::RemoveHost),
        /// `fdb add`.
        #[prost(message, tag = "11")]
        FdbAdd(super::AddStaticVtep),
        /// `fdb rm`.
        #[prost(message, tag = "12")]
        FdbRemove(super::RemoveStaticVtep),
        /// `fdb show`.
        #[prost(message, tag = "13")]
        FdbShow(super::NamesRequest),
        /// `stats`.
        #[prost(message, tag = "14")]
        Stats(super::Empty),
        /// `capture`: the agent answers `Ok`, then streams a pcap file on the same connection.
        #[prost(message, tag = "15")]
        Capture(super::CaptureRequest),
    }
}

/// `capture NET [-c COUNT]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CaptureRequest {
    /// Network name, id or id prefix.
    #[prost(string, tag = "1")]
    pub network: String,
    /// Stop after this many frames (0: until the client disconnects).
    #[prost(uint64, tag = "2")]
    pub count: u64,
}

/// `network ls` filters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkListRequest {
    /// `key=value` filters (name, id, label, driver).
    #[prost(string, repeated, tag = "1")]
    pub filters: Vec<String>,
}

/// A list of names or ids.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamesRequest {
    /// Names, ids or id prefixes.
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
}

/// A CLI response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiResponse {
    /// Which response.
    #[prost(oneof = "api_response::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub kind: Option<api_response::Kind>,
}

/// Nested types of [`ApiResponse`].
pub mod api_response {
    /// Which response.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// The request failed.
        #[prost(message, tag = "1")]
        Error(super::ApplyFailure),
        /// A state machine result (create, rm, connect, disconnect, fdb add/rm, cluster rm).
        #[prost(message, tag = "2")]
        Applied(super::Response),
        /// Networks (ls, inspect), with their endpoints.
        #[prost(message, tag = "3")]
        Networks(super::NetworkList),
        /// Cluster members.
        #[prost(message, tag = "4")]
        Members(super::MemberList),
        /// Static VTEP entries.
        #[prost(message, tag = "5")]
        Fdb(super::FdbList),
        /// Counters.
        #[prost(message, tag = "6")]
        Stats(super::Stats),
        /// Names removed by prune.
        #[prost(message, tag = "7")]
        Pruned(super::NamesRequest),
        /// Done, nothing to report.
        #[prost(message, tag = "8")]
        Ok(super::Empty),
    }
}

/// Networks and their endpoints.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkList {
    /// Networks.
    #[prost(message, repeated, tag = "1")]
    pub networks: Vec<Network>,
    /// Endpoints of those networks.
    #[prost(message, repeated, tag = "2")]
    pub endpoints: Vec<Endpoint>,
}

/// One member as the CLI shows it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Member {
    /// Registration record.
    #[prost(message, optional, tag = "1")]
    pub host: Option<Host>,
    /// `"leader"`, `"voter"`, `"learner"` or `"removed"`.
    #[prost(string, tag = "2")]
    pub role: String,
    /// Replication progress seen by the leader (matched index), 0 if unknown.
    #[prost(uint64, tag = "3")]
    pub matched: u64,
    /// Whether the answering agent currently has a working connection to this member.
    #[prost(bool, tag = "4")]
    pub reachable: bool,
}

/// Cluster members.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberList {
    /// Members.
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<Member>,
    /// Leader node id (0 = unknown).
    #[prost(uint64, tag = "2")]
    pub leader_id: u64,
    /// Current term.
    #[prost(uint64, tag = "3")]
    pub term: u64,
    /// Commit index.
    #[prost(uint64, tag = "4")]
    pub commit_index: u64,
    /// Applied index on the answering agent.
    #[prost(uint64, tag = "5")]
    pub applied_index: u64,
}

/// Static VTEP entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FdbList {
    /// Entries.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<StaticVtep>,
}

/// Agent counters by name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stats {
    /// Counter values.
    #[prost(btree_map = "string, uint64", tag = "1")]
    pub counters: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_round_trips() {
        let p = Proposal {
            request_id: vec![1, 2, 3],
            command: Some(Command {
                kind: Some(command::Kind::CreateNetwork(CreateNetwork {
                    name: "n".into(),
                    subnet: Some("10.1.0.0/24".into()),
                    vni: Some(7),
                    ..Default::default()
                })),
            }),
        };
        let bytes = p.encode_to_vec();
        assert_eq!(Proposal::decode(bytes.as_slice()).unwrap(), p);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(PeerEnvelope::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
