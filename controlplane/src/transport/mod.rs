//! Peer transport: agents talk over TCP with length-prefixed [`PeerEnvelope`] frames.
//!
//! This module holds the public types and the [`Transport`] handle; the work is split by job:
//! `wire` (framing), `handshake` (the previous release's HMAC handshake), `tls_stream` (TLS
//! member connections and telling the two protocols apart), `join` (joining over TLS, both
//! ends), `security` (the view of the state that decides who may connect, and our own
//! certificate), `connection` (dialing a peer), `peer` (one writer task per peer), `server`
//! (accepting and reading inbound connections), `forward` (the shared-secret join and the
//! forward request RPCs and their replies) and `shared` (the state all tasks share); `pki`,
//! `tls` and `token` are the certificate, rustls and join-token building blocks.
//!
//! Security: once the cluster has a CA (see `docs/design/peer-tls.md`), members talk TLS 1.3
//! with mutual authentication: a certificate of the cluster CA naming the node id, the node a
//! current member whose key pin matches, then one `Hello` each way inside TLS whose node id must
//! be the certificate's; every Raft message's `from` must be it too. A client without a
//! certificate may only join, proving the join secret bound to the TLS session. A server that
//! has a certificate looks at the first byte: TLS, or silence for 300 ms (a client of the
//! previous release, greeted with the handshake below while the state still allows it).
//!
//! Wire format: vxnet's one framing ([`vxnet_proto::frame`]) of prost-encoded
//! [`PeerEnvelope`]s. Frames above [`MAX_FRAME_LEN`] are refused before anything is allocated
//! for them; before the handshake the limit is [`MAX_HANDSHAKE_FRAME_LEN`], so a stranger
//! cannot make us allocate.
//!
//! The previous release's handshake (a cluster being upgraded; both directions of trust):
//! 1. the server sends `Hello { nonce: 16 random bytes }`;
//! 2. the client answers `Hello { host_name, node_id, nonce: its own 16 bytes, auth }` in an
//!    envelope carrying its cluster id, with
//!    `auth = HMAC-SHA256(token, "vxnet1" || server_nonce || cluster_id BE || node_id BE)`;
//! 3. the server checks the MAC (constant time) and the cluster id (equal to its own; 0 makes
//!    the connection join-only), then proves the token too:
//!    `Hello { host_name, node_id, auth = HMAC-SHA256(token, "vxnet1-server" || client_nonce ||
//!    cluster_id BE || node_id BE) }` with its own ids. A refused client sees the connection
//!    close ([`TransportError::Refused`]).
//!
//! Raft messages travel as raft's own protobuf bytes ([`encode_raft_message`]) inside the
//! envelope. Each known peer has one writer task with a bounded queue; [`Transport::send`]
//! never blocks: when a queue is full the message is dropped and [`Inbound::Unreachable`] is
//! emitted, and Raft retransmits.
//!
//! [`PeerEnvelope`]: vxnet_proto::PeerEnvelope
//! [`encode_raft_message`]: crate::node::encode_raft_message

mod connection;
mod forward;
mod handshake;
mod join;
mod peer;
pub mod pki;
mod security;
mod server;
mod shared;
pub mod tls;
mod tls_stream;
pub mod token;
mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use vxnet_proto::frame;
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{ForwardRequest, ForwardResponse, JoinRequest, JoinResponse, ReachRequest};

pub use connection::PeerConnection;
pub use forward::{forward, join};
pub use join::{JoinError, join_tls};
pub use rustls::pki_types::CertificateDer;
pub use security::SecurityView;

use handshake::random_nonce;
use peer::{PeerEntry, run_peer_writer};
use security::Security;
use server::accept_loop;
use shared::{Core, Counters, bump, lock};

/// Largest frame accepted after the handshake: the one limit of vxnet's framing (snapshots can
/// be a few MB).
pub const MAX_FRAME_LEN: usize = frame::MAX_FRAME;
/// Largest frame accepted during the handshake (a `Hello` is well under 1 KiB).
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 4096;
/// Default per-peer outbound queue length.
pub const DEFAULT_QUEUE_LEN: usize = 1024;
/// Capacity of the channel from the transport to the agent.
pub const INBOUND_QUEUE_LEN: usize = 4096;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a reader waits for room in the agent's channel before dropping a Raft message:
/// short stalls turn into TCP back-pressure, a stuck agent never blocks a reader for long.
const INBOUND_WAIT: Duration = Duration::from_millis(250);
/// Same for join/forward requests, which are rare and whose clients wait anyway.
const REQUEST_WAIT: Duration = Duration::from_secs(2);
const REACHABLE_WINDOW_MS: u64 = 3000;
/// At most one `Unreachable` per peer per interval: a burst of drops is one event for Raft.
const UNREACHABLE_INTERVAL_MS: u64 = 100;
const LOG_INTERVAL_MS: u64 = 60_000;
const BATCH_BYTES: usize = 256 * 1024;
const BATCH_MSGS: usize = 256;
const READ_BUF: usize = 64 * 1024;
// Each connection holds a 64 KiB read buffer: 256 of them bound what strangers can pin.
const MAX_INBOUND_CONNS: usize = 256;
/// When every slot is taken, the oldest connection still in its handshake is dropped to admit a
/// newcomer; this is how long the accept loop waits for its slot to come free.
const EVICT_WAIT: Duration = Duration::from_millis(200);

/// Errors of the peer transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listen address could not be bound (e.g. already in use).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A TCP connection could not be established.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address we tried.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing a connection failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A frame's length prefix exceeds the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Announced (or encoded) length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// A frame is not a valid `PeerEnvelope`.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An envelope could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] prost::EncodeError),
    /// The peer closed the connection before the expected frame.
    #[error("connection closed by the peer")]
    Closed,
    /// The server closed the connection after our `Hello`: wrong token or cluster id.
    #[error("the peer refused the handshake (wrong token or cluster id?)")]
    Refused,
    /// The peer's MAC did not verify: it does not know the cluster token.
    #[error("authentication failed: the peer does not know the cluster token")]
    AuthFailed,
    /// The peer belongs to another cluster.
    #[error("cluster id mismatch: ours {ours}, theirs {theirs}")]
    ClusterMismatch {
        /// Our cluster id.
        ours: u64,
        /// Theirs.
        theirs: u64,
    },
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The OS random source failed (nonces cannot be drawn).
    #[error("no randomness available: {0}")]
    Random(String),
    /// The peer speaks only the previous release's shared-secret protocol.
    #[error("the peer runs a previous vxnet release (shared-secret handshake)")]
    LegacyPeer,
    /// The peer speaks only the previous release's protocol, which this cluster no longer
    /// accepts.
    #[error(
        "the peer runs a previous vxnet release (shared-secret handshake); this cluster requires \
         mutual TLS since every host was upgraded: upgrade vxnet on that host"
    )]
    LegacyRefused,
    /// A member refused our certificate as revoked: this host was removed from the cluster.
    #[error(
        "this host was removed from the cluster: members refuse its certificate (certificate \
         revoked)"
    )]
    Revoked,
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Our certificate or key cannot be used.
    #[error(transparent)]
    Credentials(#[from] tls::TlsError),
}

/// Configuration of [`Transport::start`].
#[derive(Clone)]
pub struct TransportConfig {
    /// Address of the peer listener (port 0 picks one; see [`Transport::local_addr`]).
    pub listen: SocketAddr,
    /// Our host name (sent in `Hello`).
    pub host_name: String,
    /// Our Raft node id (0 until joined).
    pub node_id: u64,
    /// Our cluster id (0 until joined).
    pub cluster_id: u64,
    /// Shared join secret; `None` = empty key.
    pub token: Option<String>,
    /// Per-peer outbound queue length (messages); 0 is treated as 1.
    pub queue_len: usize,
    /// Who may connect, until [`Transport::set_security`] says otherwise.
    pub security: SecurityView,
}

impl TransportConfig {
    /// A config for a host that has not joined yet: ids 0, no token, default queue length.
    pub fn new(listen: SocketAddr, host_name: impl Into<String>) -> TransportConfig {
        TransportConfig {
            listen,
            host_name: host_name.into(),
            node_id: 0,
            cluster_id: 0,
            token: None,
            queue_len: DEFAULT_QUEUE_LEN,
            security: SecurityView::legacy(),
        }
    }
}

impl fmt::Debug for TransportConfig {
    // By hand so that the token never ends up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("listen", &self.listen)
            .field("host_name", &self.host_name)
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("queue_len", &self.queue_len)
            .finish()
    }
}

/// What the transport hands to the agent.
#[derive(Debug)]
// The Raft variant dominates and is the common case; boxing it would only add an allocation
// per message and change the agent-facing API.
#[allow(clippy::large_enum_variant)]
pub enum Inbound {
    /// A Raft message addressed to us: feed it to `Node::step`.
    Raft(Message),
    /// A host asks to join; answer through `reply` (dropping it closes the request silently).
    Join {
        /// The request.
        request: JoinRequest,
        /// Where the answer goes (written back on the requester's connection).
        reply: oneshot::Sender<JoinResponse>,
    },
    /// A follower forwards a proposal; answer through `reply`.
    Forward {
        /// The request.
        request: ForwardRequest,
        /// Where the answer goes (written back on the requester's connection).
        reply: oneshot::Sender<ForwardResponse>,
    },
    /// A peer's outbound queue overflowed or its connection failed: call Node::report_unreachable.
    Unreachable(u64),
    /// A member refused our certificate as revoked (it names the node id of that member): this
    /// host was removed from the cluster.
    Revoked(u64),
}

/// Counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Raft messages written to peers.
    pub raft_sent: u64,
    /// Raft messages dropped on the sending side (queue full, unknown peer, connect failure,
    /// encoding error).
    pub raft_send_dropped: u64,
    /// Raft messages handed to the agent.
    pub raft_delivered: u64,
    /// Frames whose Raft payload did not decode (dropped, connection kept).
    pub bad_raft_payloads: u64,
    /// Frames dropped because they were for another node or cluster id.
    pub misaddressed: u64,
    /// Raft messages dropped because the agent's channel stayed full.
    pub inbound_dropped: u64,
    /// Inbound connections refused during the handshake.
    pub handshakes_refused: u64,
    /// Authenticated connections closed for garbage or protocol violations.
    pub connections_closed_bad_input: u64,
    /// `Inbound::Unreachable` events emitted.
    pub unreachable_reported: u64,
    /// Inbound member connections authenticated with TLS.
    pub tls_accepted: u64,
    /// Inbound connections authenticated with the previous release's shared-secret handshake.
    pub legacy_accepted: u64,
    /// Join requests refused for a wrong proof of the join secret.
    pub joins_refused: u64,
    /// Connections closed because the peer was removed or its protocol is no longer allowed.
    pub connections_closed_revoked: u64,
    /// Connections closed at accept because their source keeps failing handshakes.
    pub connections_rate_limited: u64,
}

/// Owner of the shutdown signal; dropped with the last [`Transport`] clone.
struct Inner {
    core: Arc<Core>,
    _shutdown: watch::Sender<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the writers now; the accept loop and connections see the watch close.
        lock(&self.core.peers).clear();
    }
}

/// Handle to the peer transport. Cheap to clone; dropping the last clone closes the listener,
/// all connections and all writer tasks.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.inner.core;
        f.debug_struct("Transport")
            .field("local_addr", &core.local_addr)
            .field("node_id", &core.node_id())
            .field("cluster_id", &core.cluster_id())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the listener (fails clearly if the address is taken) and spawns the accept loop on the current tokio runtime.
    pub async fn start(
        cfg: TransportConfig,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        // Fail at start, not at the first handshake, if there is no randomness.
        random_nonce()?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE_LEN);
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let core = Arc::new(Core {
            local_addr,
            host_name: cfg.host_name,
            token: cfg.token.map(String::into_bytes).unwrap_or_default(),
            security: Security::new(cfg.security),
            pool: forward::Pool::default(),
            refusals: shared::Refusals::default(),
            queue_len: cfg.queue_len.max(1),
            node_id: AtomicU64::new(cfg.node_id),
            cluster_id: AtomicU64::new(cfg.cluster_id),
            peers: Mutex::new(HashMap::new()),
            reach: Mutex::new(HashMap::new()),
            inbound: in_tx,
            shutdown: shutdown_rx,
            runtime: tokio::runtime::Handle::current(),
            epoch: Instant::now(),
            counters: Counters::default(),
            log_times: Mutex::new(HashMap::new()),
            inbound_full_logged_ms: AtomicU64::new(0),
            conn_slots: Arc::new(Semaphore::new(MAX_INBOUND_CONNS)),
            handshaking: Mutex::new(VecDeque::new()),
            next_conn: AtomicU64::new(0),
        });
        tokio::spawn(accept_loop(core.clone(), listener));
        tokio::spawn(expire_pool(Arc::downgrade(&core)));
        let inner = Arc::new(Inner {
            core,
            _shutdown: shutdown_tx,
        });
        Ok((Transport { inner }, in_rx))
    }

    /// The bound listen address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.core.local_addr
    }

    /// Our current node id.
    pub fn node_id(&self) -> u64 {
        self.inner.core.node_id()
    }

    /// Our current cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.inner.core.cluster_id()
    }

    /// After a join: our node id and the cluster id become known.
    ///
    /// Writers reconnect so that their handshakes carry the new identity.
    pub fn set_identity(&self, node_id: u64, cluster_id: u64) {
        let core = &self.inner.core;
        let old_node = core.node_id.swap(node_id, Ordering::AcqRel);
        let old_cluster = core.cluster_id.swap(cluster_id, Ordering::AcqRel);
        if old_node == node_id && old_cluster == cluster_id {
            return;
        }
        let book: BTreeMap<u64, String> = {
            let mut peers = lock(&core.peers);
            peers.drain().map(|(id, e)| (id, e.addr)).collect()
        };
        self.set_peers(book);
    }

    /// The address book (node id → "host:port"), replaced whole from the replicated hosts; starts/stops per-peer writer tasks; ignores our own id.
    pub fn set_peers(&self, peers: BTreeMap<u64, String>) {
        let core = &self.inner.core;
        let me = core.node_id();
        let mut map = lock(&core.peers);
        // Removed or moved peers: dropping the entry stops the writer (queued messages are lost).
        map.retain(|id, e| *id != me && peers.get(id) == Some(&e.addr));
        for (id, addr) in peers {
            if id == me || id == 0 || map.contains_key(&id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(core.queue_len);
            let (stop_tx, stop_rx) = oneshot::channel();
            let reach = core.reach(id);
            core.runtime.spawn(run_peer_writer(
                core.clone(),
                id,
                addr.clone(),
                rx,
                stop_rx,
                reach,
            ));
            map.insert(
                id,
                PeerEntry {
                    addr,
                    tx,
                    _stop: stop_tx,
                },
            );
        }
    }

    /// Queues a raft message for msg.to. Never blocks and never awaits (it is called from a plain std thread): a bounded per-peer queue (try_send); when full or the peer is unknown the message is dropped and Inbound::Unreachable(to) is emitted (Raft retransmits).
    pub fn send(&self, msg: Message) {
        let core = &self.inner.core;
        let to = msg.to;
        let queued = match lock(&core.peers).get(&to) {
            Some(entry) => entry.tx.try_send(msg).is_ok(),
            None => false,
        };
        if !queued {
            bump(&core.counters.raft_send_dropped, 1);
            core.report_unreachable(to);
        }
    }

    /// Whether we currently hold a working connection to that peer (last write succeeded, or a
    /// frame was received from it within ~3 s). Connections are made on demand and closed when
    /// idle, so on a host other than the leader this covers the leader (and voters during an
    /// election) only: ask the leader with [`Transport::reachable_via`] for the whole cluster.
    pub fn is_reachable(&self, node_id: u64) -> bool {
        self.inner.core.is_reachable(node_id)
    }

    /// Asks the agent at `addr` (normally the leader, which is connected to every member) which
    /// node ids it reaches, itself included. An agent of an older release does not answer:
    /// [`TransportError::Timeout`] after `timeout`.
    pub async fn reachable_via(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Vec<u64>, TransportError> {
        forward::pooled_rpc(
            &self.inner.core,
            addr,
            Body::ReachRequest(ReachRequest {}),
            timeout,
            |b| match b {
                Body::ReachResponse(r) => Some(r.reachable),
                _ => None,
            },
        )
        .await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.core.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            raft_sent: get(&c.raft_sent),
            raft_send_dropped: get(&c.raft_send_dropped),
            raft_delivered: get(&c.raft_delivered),
            bad_raft_payloads: get(&c.bad_raft_payloads),
            misaddressed: get(&c.misaddressed),
            inbound_dropped: get(&c.inbound_dropped),
            handshakes_refused: get(&c.handshakes_refused),
            connections_closed_bad_input: get(&c.connections_closed_bad_input),
            unreachable_reported: get(&c.unreachable_reported),
            tls_accepted: get(&c.tls_accepted),
            legacy_accepted: get(&c.legacy_accepted),
            joins_refused: get(&c.joins_refused),
            connections_closed_revoked: get(&c.connections_closed_revoked),
            connections_rate_limited: get(&c.connections_rate_limited),
        }
    }

    /// Replaces the security view (after every applied change that touches it): connections of
    /// removed nodes close, and so do shared-secret connections once the state stops allowing
    /// them.
    pub fn set_security(&self, view: SecurityView) {
        let core = &self.inner.core;
        if core.security.set_view(view) {
            core.pool.clear();
        }
    }

    /// Installs or renews this host's certificate chain (node certificate first, then its CA,
    /// then the cross-signed CA during a rotation) and key: new connections present it, open
    /// ones are kept.
    pub fn set_own_cert(
        &self,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: &pki::NodeKey,
    ) -> Result<(), TransportError> {
        let core = &self.inner.core;
        core.security
            .set_own_cert(core.cluster_id(), chain, key)
            .map_err(TransportError::from)?;
        core.pool.clear();
        Ok(())
    }

    /// Whether this host presents a certificate (members then dial it over TLS).
    pub fn has_cert(&self) -> bool {
        self.inner.core.security.tls().is_some()
    }

    /// Forwards a proposal to the member at `addr` (normally the leader) and waits for its
    /// answer, authenticated as this host.
    pub async fn forward(
        &self,
        addr: &str,
        request: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardResponse, TransportError> {
        forward::pooled_rpc(
            &self.inner.core,
            addr,
            Body::ForwardRequest(request),
            timeout,
            |b| match b {
                Body::ForwardResponse(r) => Some(r),
                _ => None,
            },
        )
        .await
    }
}

/// Closes kept client connections once unused for a while, until the transport is dropped.
async fn expire_pool(core: std::sync::Weak<Core>) {
    loop {
        tokio::time::sleep(forward::POOL_IDLE / 5).await;
        let Some(core) = core.upgrade() else { return };
        core.pool.expire();
    }
}

/// What the server told us about itself during the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePeer {
    /// Its host name.
    pub host_name: String,
    /// Its Raft node id (0 if it has not joined).
    pub node_id: u64,
    /// Its cluster id.
    pub cluster_id: u64,
}
