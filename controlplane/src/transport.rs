//! Past 800 lines and more than one job (server, per-peer writers, forwarding, handshake, in the
//! banner sections below): kept in one file until it is split into one file per job.
//!
//! Peer transport: agents talk over TCP with length-prefixed [`PeerEnvelope`] frames.
//!
//! Wire format: vxnet's one framing ([`vxnet_proto::frame`]) of prost-encoded
//! [`PeerEnvelope`]s. Frames above [`MAX_FRAME_LEN`] are refused before anything is allocated
//! for them; before the handshake the limit is [`MAX_HANDSHAKE_FRAME_LEN`], so a stranger
//! cannot make us allocate.
//!
//! Handshake (every connection, both directions of trust):
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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use prost::Message as _;
use raft::eraftpb::Message;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use vxnet_proto::frame::{self, FrameError};
use vxnet_proto::peer_envelope::Body;
use vxnet_proto::{
    ForwardRequest, ForwardResponse, Hello, JoinRequest, JoinResponse, PeerEnvelope,
};

use crate::node::{decode_raft_message, encode_raft_message};

/// Largest frame accepted after the handshake: the one limit of vxnet's framing (snapshots can
/// be a few MB).
pub const MAX_FRAME_LEN: usize = frame::MAX_FRAME;
/// Largest frame accepted during the handshake (a `Hello` is well under 1 KiB).
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 4096;
/// Default per-peer outbound queue length.
pub const DEFAULT_QUEUE_LEN: usize = 1024;
/// Capacity of the channel from the transport to the agent.
pub const INBOUND_QUEUE_LEN: usize = 4096;

const NONCE_LEN: usize = 16;
const CLIENT_LABEL: &[u8] = b"vxnet1";
// A different label for the server's proof, so that a client's MAC can never be replayed as a
// server's (or the reverse).
const SERVER_LABEL: &[u8] = b"vxnet1-server";

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

type HmacSha256 = Hmac<Sha256>;

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
}

#[derive(Default)]
struct Counters {
    raft_sent: AtomicU64,
    raft_send_dropped: AtomicU64,
    raft_delivered: AtomicU64,
    bad_raft_payloads: AtomicU64,
    misaddressed: AtomicU64,
    inbound_dropped: AtomicU64,
    handshakes_refused: AtomicU64,
    connections_closed_bad_input: AtomicU64,
    unreachable_reported: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Reachability bookkeeping of one peer node.
#[derive(Default)]
struct Reach {
    /// Our writer holds a connection whose last write succeeded.
    write_ok: AtomicBool,
    /// Authenticated inbound connections from that node currently open.
    inbound_conns: AtomicUsize,
    /// Time (`Core::now_ms`) a frame last arrived from it; 0 = never.
    last_recv_ms: AtomicU64,
    /// Time the last `Unreachable` for it was emitted; 0 = never.
    last_unreachable_ms: AtomicU64,
}

/// Counts an open inbound connection for [`Transport::is_reachable`] while it lives.
struct InboundConnGuard(Arc<Reach>);

impl InboundConnGuard {
    fn new(reach: Arc<Reach>) -> InboundConnGuard {
        reach.inbound_conns.fetch_add(1, Ordering::Relaxed);
        InboundConnGuard(reach)
    }
}

impl Drop for InboundConnGuard {
    fn drop(&mut self) {
        self.0.inbound_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

struct PeerEntry {
    addr: String,
    tx: mpsc::Sender<Message>,
    // Dropping the entry drops this sender, which stops the writer task.
    _stop: oneshot::Sender<()>,
}

/// State shared by the handle and all tasks.
struct Core {
    local_addr: SocketAddr,
    host_name: String,
    token: Vec<u8>,
    queue_len: usize,
    node_id: AtomicU64,
    cluster_id: AtomicU64,
    peers: Mutex<HashMap<u64, PeerEntry>>,
    reach: Mutex<HashMap<u64, Arc<Reach>>>,
    inbound: mpsc::Sender<Inbound>,
    /// Never written; closes (changed() errors) when the last `Transport` handle is dropped.
    shutdown: watch::Receiver<()>,
    runtime: tokio::runtime::Handle,
    epoch: Instant,
    counters: Counters,
    /// Per remote IP: when we last logged a refusal or garbage from it.
    log_times: Mutex<HashMap<IpAddr, u64>>,
    inbound_full_logged_ms: AtomicU64,
    conn_slots: Arc<Semaphore>,
    /// Inbound connections still in their handshake, oldest first; dropping a sender tells that
    /// connection to go. Silent strangers can thus not hold every slot and lock peers out for
    /// the length of a handshake timeout, again and again: a newcomer takes the oldest's slot.
    handshaking: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-updated under these locks, so a poisoned one is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    fn node_id(&self) -> u64 {
        self.node_id.load(Ordering::Acquire)
    }

    fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Acquire)
    }

    /// Milliseconds since start, plus one so that 0 can mean "never".
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn reach(&self, id: u64) -> Arc<Reach> {
        lock(&self.reach).entry(id).or_default().clone()
    }

    /// Whether something about `ip` may be logged now (once per [`LOG_INTERVAL_MS`]).
    fn may_log(&self, ip: IpAddr) -> bool {
        let now = self.now_ms();
        let mut times = lock(&self.log_times);
        if times.len() > 4096 {
            // A scan from many addresses must not grow this map without bound.
            times.retain(|_, t| now.saturating_sub(*t) < LOG_INTERVAL_MS);
            if times.len() > 4096 {
                times.clear();
            }
        }
        match times.get(&ip) {
            Some(t) if now.saturating_sub(*t) < LOG_INTERVAL_MS => false,
            _ => {
                times.insert(ip, now);
                true
            }
        }
    }

    /// Emits `Inbound::Unreachable(id)`, at most once per [`UNREACHABLE_INTERVAL_MS`]; never blocks.
    fn report_unreachable(&self, id: u64) {
        let reach = self.reach(id);
        let now = self.now_ms();
        let last = reach.last_unreachable_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < UNREACHABLE_INTERVAL_MS {
            return;
        }
        // If the agent's channel is full the event is lost; the next drop reports again.
        if self.inbound.try_send(Inbound::Unreachable(id)).is_ok() {
            reach.last_unreachable_ms.store(now, Ordering::Relaxed);
            bump(&self.counters.unreachable_reported, 1);
        }
    }

    /// Appends one Raft message as a frame to `out`; false (and counted) if it cannot be encoded.
    fn encode_raft_frame(&self, msg: &Message, out: &mut Vec<u8>) -> bool {
        let result = encode_raft_message(msg)
            .map_err(|e| TransportError::Protocol(e.to_string()))
            .and_then(|bytes| {
                let env = PeerEnvelope {
                    cluster_id: self.cluster_id(),
                    from: self.node_id(),
                    to: msg.to,
                    body: Some(Body::RaftMessage(bytes)),
                };
                encode_frame(&env, out)
            });
        match result {
            Ok(()) => true,
            Err(e) => {
                bump(&self.counters.raft_send_dropped, 1);
                warn!(to = msg.to, msg_type = ?msg.msg_type, "dropping raft message: {e}");
                false
            }
        }
    }

    /// Hands a received Raft payload to the agent (see [`INBOUND_WAIT`]).
    async fn deliver_raft(&self, bytes: &[u8], remote: SocketAddr) {
        let msg = match decode_raft_message(bytes) {
            Ok(m) => m,
            Err(e) => {
                bump(&self.counters.bad_raft_payloads, 1);
                if self.may_log(remote.ip()) {
                    warn!(%remote, "dropping undecodable raft message: {e}");
                }
                return;
            }
        };
        if msg.to != self.node_id() {
            bump(&self.counters.misaddressed, 1);
            return;
        }
        let item = match self.inbound.try_send(Inbound::Raft(msg)) {
            Ok(()) => {
                bump(&self.counters.raft_delivered, 1);
                return;
            }
            Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(item)) => item,
        };
        match tokio::time::timeout(INBOUND_WAIT, self.inbound.send(item)).await {
            Ok(Ok(())) => bump(&self.counters.raft_delivered, 1),
            Ok(Err(_)) => {}
            Err(_) => {
                bump(&self.counters.inbound_dropped, 1);
                let now = self.now_ms();
                let last = self.inbound_full_logged_ms.load(Ordering::Relaxed);
                if last == 0 || now.saturating_sub(last) >= 10_000 {
                    self.inbound_full_logged_ms.store(now, Ordering::Relaxed);
                    warn!("agent is not draining the transport channel: dropping raft messages");
                }
            }
        }
    }

    /// Hands a join/forward request to the agent; false if it could not be queued in time.
    async fn push_request(&self, item: Inbound) -> bool {
        matches!(
            tokio::time::timeout(REQUEST_WAIT, self.inbound.send(item)).await,
            Ok(Ok(()))
        )
    }
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

    /// Whether we currently hold a working connection to that peer (last write succeeded, or a frame was received from it within ~3 s).
    pub fn is_reachable(&self, node_id: u64) -> bool {
        let core = &self.inner.core;
        let Some(reach) = lock(&core.reach).get(&node_id).cloned() else {
            return false;
        };
        if reach.write_ok.load(Ordering::Relaxed) {
            return true;
        }
        let last = reach.last_recv_ms.load(Ordering::Relaxed);
        reach.inbound_conns.load(Ordering::Relaxed) > 0
            && last != 0
            && core.now_ms().saturating_sub(last) <= REACHABLE_WINDOW_MS
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
        }
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

/// An authenticated client connection: the building block of [`join`], [`forward`] and the
/// per-peer writers, public for tools and tests that speak the protocol frame by frame.
pub struct PeerConnection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    remote: RemotePeer,
}

impl fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConnection")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl PeerConnection {
    /// Connects to `addr` and performs the handshake with our identity (`cluster_id` 0 = not
    /// joined: the server then only accepts join requests), all within `timeout`.
    pub async fn connect(
        addr: &str,
        token: Option<&str>,
        host_name: &str,
        node_id: u64,
        cluster_id: u64,
        timeout: Duration,
    ) -> Result<PeerConnection, TransportError> {
        let token = token.unwrap_or("").as_bytes();
        tokio::time::timeout(
            timeout,
            connect_inner(addr, token, host_name, node_id, cluster_id, None),
        )
        .await
        .map_err(|_| TransportError::Timeout)?
    }

    /// The server's identity as proven in the handshake.
    pub fn remote(&self) -> &RemotePeer {
        &self.remote
    }

    /// Writes one envelope as a frame.
    pub async fn send(&mut self, env: &PeerEnvelope) -> Result<(), TransportError> {
        write_envelope(&mut self.writer, env).await
    }

    /// Writes raw bytes (no framing), e.g. to test how a server copes with garbage.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next frame; `None` when the server closed the connection cleanly.
    pub async fn recv(&mut self) -> Result<Option<PeerEnvelope>, TransportError> {
        read_frame(&mut self.reader, MAX_FRAME_LEN).await
    }
}

/// One-shot join RPC on a fresh connection (auth handshake with cluster id 0, one request, one response, close), with a timeout.
pub async fn join(
    addr: &str,
    token: Option<&str>,
    host_name: &str,
    request: JoinRequest,
    timeout: Duration,
) -> Result<JoinResponse, TransportError> {
    rpc(
        addr,
        token,
        host_name,
        0,
        0,
        Body::JoinRequest(request),
        timeout,
        |b| match b {
            Body::JoinResponse(r) => Some(r),
            _ => None,
        },
    )
    .await
}

/// One-shot forward RPC on a fresh connection (auth handshake, one request, one response, close), with a timeout.
pub async fn forward(
    addr: &str,
    token: Option<&str>,
    host_name: &str,
    node_id: u64,
    cluster_id: u64,
    request: ForwardRequest,
    timeout: Duration,
) -> Result<ForwardResponse, TransportError> {
    rpc(
        addr,
        token,
        host_name,
        node_id,
        cluster_id,
        Body::ForwardRequest(request),
        timeout,
        |b| match b {
            Body::ForwardResponse(r) => Some(r),
            _ => None,
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn rpc<T>(
    addr: &str,
    token: Option<&str>,
    host_name: &str,
    node_id: u64,
    cluster_id: u64,
    body: Body,
    timeout: Duration,
    pick: impl Fn(Body) -> Option<T>,
) -> Result<T, TransportError> {
    let token = token.unwrap_or("").as_bytes();
    let call = async {
        let mut conn = connect_inner(addr, token, host_name, node_id, cluster_id, None).await?;
        let env = PeerEnvelope {
            cluster_id,
            from: node_id,
            to: conn.remote.node_id,
            body: Some(body),
        };
        conn.send(&env).await?;
        loop {
            match conn.recv().await? {
                None => return Err(TransportError::Closed),
                // Anything else on the connection is not ours to answer: skip it.
                Some(env) => {
                    if let Some(t) = env.body.and_then(&pick) {
                        return Ok(t);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| TransportError::Timeout)?
}

// ---------------------------------------------------------------------------------------------
// Framing and handshake
// ---------------------------------------------------------------------------------------------

/// Appends `len BE || envelope` to `out`; nothing is appended on error.
fn encode_frame(env: &PeerEnvelope, out: &mut Vec<u8>) -> Result<(), TransportError> {
    frame::encode(env, out).map_err(TransportError::from)
}

impl From<FrameError> for TransportError {
    fn from(e: FrameError) -> TransportError {
        match e {
            FrameError::TooLarge { len, max } => TransportError::FrameTooLarge { len, max },
            FrameError::Io(e) => TransportError::Io(e),
            FrameError::Truncated { .. } | FrameError::OverBudget { .. } => TransportError::Closed,
        }
    }
}

async fn write_envelope<W: AsyncWrite + Unpin>(
    w: &mut W,
    env: &PeerEnvelope,
) -> Result<(), TransportError> {
    let mut buf = Vec::new();
    encode_frame(env, &mut buf)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean close between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<PeerEnvelope>, TransportError> {
    match frame::read(r, max, |_| true).await? {
        Some(body) => Ok(Some(PeerEnvelope::decode(body.as_slice())?)),
        None => Ok(None),
    }
}

fn random_nonce() -> Result<Vec<u8>, TransportError> {
    let mut n = vec![0u8; NONCE_LEN];
    getrandom::getrandom(&mut n).map_err(|e| TransportError::Random(e.to_string()))?;
    Ok(n)
}

fn handshake_mac(
    token: &[u8],
    label: &[u8],
    nonce: &[u8],
    cluster_id: u64,
    node_id: u64,
) -> Result<HmacSha256, TransportError> {
    // HMAC takes keys of any length; the error arm is unreachable in practice.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(token)
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    mac.update(label);
    mac.update(nonce);
    mac.update(&cluster_id.to_be_bytes());
    mac.update(&node_id.to_be_bytes());
    Ok(mac)
}

/// Whether an inbound connection may carry everything or only join requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Member,
    JoinOnly,
}

struct Accepted {
    /// The client as it introduced itself (cluster id = the one its MAC covers).
    peer: RemotePeer,
    access: Access,
}

async fn server_handshake<R, W>(
    core: &Core,
    r: &mut R,
    w: &mut W,
) -> Result<Accepted, TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let nonce = random_nonce()?;
    // The greeting carries nothing but the nonce: strangers learn no ids or names.
    let greet = PeerEnvelope {
        body: Some(Body::Hello(Hello {
            nonce: nonce.clone(),
            ..Hello::default()
        })),
        ..PeerEnvelope::default()
    };
    write_envelope(w, &greet).await?;
    let env = read_frame(r, MAX_HANDSHAKE_FRAME_LEN)
        .await?
        .ok_or(TransportError::Closed)?;
    let Some(Body::Hello(hello)) = env.body else {
        return Err(TransportError::Protocol(
            "first frame is not a Hello".into(),
        ));
    };
    if hello.nonce.len() != NONCE_LEN {
        return Err(TransportError::Protocol("bad nonce length".into()));
    }
    handshake_mac(
        &core.token,
        CLIENT_LABEL,
        &nonce,
        env.cluster_id,
        hello.node_id,
    )?
    .verify_slice(&hello.auth)
    .map_err(|_| TransportError::AuthFailed)?;
    let (my_node, my_cluster) = (core.node_id(), core.cluster_id());
    let access = if env.cluster_id != 0 && env.cluster_id == my_cluster {
        Access::Member
    } else if env.cluster_id == 0 {
        // A host that has not joined cannot know the cluster id yet.
        Access::JoinOnly
    } else {
        return Err(TransportError::ClusterMismatch {
            ours: my_cluster,
            theirs: env.cluster_id,
        });
    };
    let auth = handshake_mac(&core.token, SERVER_LABEL, &hello.nonce, my_cluster, my_node)?
        .finalize()
        .into_bytes()
        .to_vec();
    let confirm = PeerEnvelope {
        cluster_id: my_cluster,
        from: my_node,
        to: hello.node_id,
        body: Some(Body::Hello(Hello {
            host_name: core.host_name.clone(),
            node_id: my_node,
            nonce: Vec::new(),
            auth,
        })),
    };
    write_envelope(w, &confirm).await?;
    Ok(Accepted {
        peer: RemotePeer {
            host_name: hello.host_name,
            node_id: hello.node_id,
            cluster_id: env.cluster_id,
        },
        access,
    })
}

/// Client side; `expect` = the node id a writer dials (then the server's cluster id and node
/// id must match ours / it exactly).
async fn client_handshake<R, W>(
    r: &mut R,
    w: &mut W,
    token: &[u8],
    host_name: &str,
    node_id: u64,
    cluster_id: u64,
    expect: Option<u64>,
) -> Result<RemotePeer, TransportError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let env = read_frame(r, MAX_HANDSHAKE_FRAME_LEN)
        .await?
        .ok_or(TransportError::Closed)?;
    let Some(Body::Hello(greet)) = env.body else {
        return Err(TransportError::Protocol(
            "server did not greet with a Hello".into(),
        ));
    };
    if greet.nonce.len() != NONCE_LEN {
        return Err(TransportError::Protocol("bad server nonce length".into()));
    }
    let nonce = random_nonce()?;
    let auth = handshake_mac(token, CLIENT_LABEL, &greet.nonce, cluster_id, node_id)?
        .finalize()
        .into_bytes()
        .to_vec();
    let hello = PeerEnvelope {
        cluster_id,
        from: node_id,
        to: expect.unwrap_or(0),
        body: Some(Body::Hello(Hello {
            host_name: host_name.to_owned(),
            node_id,
            nonce: nonce.clone(),
            auth,
        })),
    };
    write_envelope(w, &hello).await?;
    let env = match read_frame(r, MAX_HANDSHAKE_FRAME_LEN).await {
        Ok(Some(env)) => env,
        // The server closes without a word when it refuses us.
        Ok(None) | Err(TransportError::Closed) => return Err(TransportError::Refused),
        Err(TransportError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            return Err(TransportError::Refused);
        }
        Err(e) => return Err(e),
    };
    let Some(Body::Hello(confirm)) = env.body else {
        return Err(TransportError::Protocol(
            "server did not confirm with a Hello".into(),
        ));
    };
    handshake_mac(token, SERVER_LABEL, &nonce, env.cluster_id, confirm.node_id)?
        .verify_slice(&confirm.auth)
        .map_err(|_| TransportError::AuthFailed)?;
    if (cluster_id != 0 || expect.is_some()) && env.cluster_id != cluster_id {
        return Err(TransportError::ClusterMismatch {
            ours: cluster_id,
            theirs: env.cluster_id,
        });
    }
    if let Some(id) = expect
        && confirm.node_id != id
    {
        return Err(TransportError::Protocol(format!(
            "expected node {id}, found node {}",
            confirm.node_id
        )));
    }
    Ok(RemotePeer {
        host_name: confirm.host_name,
        node_id: confirm.node_id,
        cluster_id: env.cluster_id,
    })
}

async fn connect_inner(
    addr: &str,
    token: &[u8],
    host_name: &str,
    node_id: u64,
    cluster_id: u64,
    expect: Option<u64>,
) -> Result<PeerConnection, TransportError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout)?
        .map_err(|source| TransportError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // Raft heartbeats are small and latency-sensitive; failure here only costs latency.
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(READ_BUF, r);
    let remote = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        client_handshake(
            &mut r, &mut w, token, host_name, node_id, cluster_id, expect,
        ),
    )
    .await
    .map_err(|_| TransportError::Timeout)??;
    Ok(PeerConnection {
        reader: r,
        writer: w,
        remote,
    })
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

async fn accept_loop(core: Arc<Core>, listener: TcpListener) {
    let mut shutdown = core.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => match admit(&core).await {
                Some(slot) => {
                    tokio::spawn(serve_connection(core.clone(), stream, remote, slot));
                }
                None => {
                    if core.may_log(remote.ip()) {
                        warn!(%remote, "too many inbound peer connections: refusing");
                    }
                }
            },
            Err(e) => {
                // E.g. EMFILE: pause instead of spinning on the error.
                warn!("accepting a peer connection failed: {e}");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(BACKOFF_MIN) => {}
                }
            }
        }
    }
}

/// A slot for a new inbound connection: a free one, or else the one of the oldest connection
/// still in its handshake, which is dropped (only authenticated connections keep theirs).
async fn admit(core: &Core) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = core.conn_slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    let oldest = lock(&core.handshaking).pop_front();
    // Dropping its sender ends that connection's handshake, which frees its slot.
    drop(oldest?);
    bump(&core.counters.handshakes_refused, 1);
    tokio::time::timeout(EVICT_WAIT, core.conn_slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Keeps a connection in [`Core::handshaking`] until its handshake ends, one way or another.
struct Handshaking<'a> {
    core: &'a Core,
    seq: u64,
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        lock(&self.core.handshaking).retain(|(seq, _)| *seq != self.seq);
    }
}

async fn serve_connection(
    core: Arc<Core>,
    stream: TcpStream,
    remote: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let mut shutdown = core.shutdown.clone();
    tokio::select! {
        _ = shutdown.changed() => {}
        _ = serve_connection_inner(&core, stream, remote) => {}
    }
}

async fn serve_connection_inner(core: &Arc<Core>, stream: TcpStream, remote: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(READ_BUF, r);
    let (evict_tx, evict_rx) = oneshot::channel::<()>();
    let seq = core.next_conn.fetch_add(1, Ordering::Relaxed);
    lock(&core.handshaking).push_back((seq, evict_tx));
    let handshaking = Handshaking { core, seq };
    let handshake = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, server_handshake(core, &mut r, &mut w)) => r,
        _ = evict_rx => {
            if core.may_log(remote.ip()) {
                warn!(%remote, "dropping a peer connection still in its handshake: all slots taken");
            }
            return;
        }
    };
    drop(handshaking);
    let accepted = match handshake {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            bump(&core.counters.handshakes_refused, 1);
            if core.may_log(remote.ip()) {
                warn!(%remote, "refusing peer connection: {e}");
            }
            return;
        }
        Err(_) => {
            bump(&core.counters.handshakes_refused, 1);
            if core.may_log(remote.ip()) {
                warn!(%remote, "refusing peer connection: handshake timed out");
            }
            return;
        }
    };
    debug!(%remote, peer = ?accepted.peer, access = ?accepted.access, "peer connection accepted");
    let reach = (accepted.peer.node_id != 0).then(|| core.reach(accepted.peer.node_id));
    let _guard = reach.clone().map(InboundConnGuard::new);
    // Replies are produced by the agent at its own pace; a small channel feeds this
    // connection's write half while the reader keeps reading.
    let (reply_tx, mut reply_rx) = mpsc::channel::<PeerEnvelope>(16);
    let writer = async move {
        while let Some(env) = reply_rx.recv().await {
            if write_envelope(&mut w, &env).await.is_err() {
                return;
            }
        }
    };
    let reader = read_loop(core, &mut r, &accepted, reach.as_deref(), reply_tx, remote);
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    core: &Arc<Core>,
    r: &mut R,
    acc: &Accepted,
    reach: Option<&Reach>,
    reply_tx: mpsc::Sender<PeerEnvelope>,
    remote: SocketAddr,
) {
    let bad_input = |why: &dyn fmt::Display| {
        bump(&core.counters.connections_closed_bad_input, 1);
        if core.may_log(remote.ip()) {
            warn!(%remote, node = acc.peer.node_id, "closing peer connection: {why}");
        }
    };
    loop {
        let env = match read_frame(r, MAX_FRAME_LEN).await {
            Ok(Some(env)) => env,
            Ok(None) => return,
            Err(TransportError::Io(e)) => {
                debug!(%remote, "peer connection failed: {e}");
                return;
            }
            Err(e) => return bad_input(&e),
        };
        if let Some(reach) = reach {
            reach.last_recv_ms.store(core.now_ms(), Ordering::Relaxed);
        }
        if env.cluster_id != acc.peer.cluster_id {
            bump(&core.counters.misaddressed, 1);
            continue;
        }
        match env.body {
            Some(Body::RaftMessage(bytes)) => {
                if acc.access == Access::JoinOnly {
                    return bad_input(&"raft message on a join-only connection");
                }
                core.deliver_raft(&bytes, remote).await;
            }
            Some(Body::JoinRequest(request)) => {
                let (tx, rx) = oneshot::channel();
                if core
                    .push_request(Inbound::Join { request, reply: tx })
                    .await
                {
                    spawn_reply(core, rx, Body::JoinResponse, reply_tx.clone(), acc);
                }
            }
            Some(Body::ForwardRequest(request)) => {
                if acc.access == Access::JoinOnly {
                    return bad_input(&"forward request on a join-only connection");
                }
                let (tx, rx) = oneshot::channel();
                if core
                    .push_request(Inbound::Forward { request, reply: tx })
                    .await
                {
                    spawn_reply(core, rx, Body::ForwardResponse, reply_tx.clone(), acc);
                }
            }
            // Hellos and responses have no meaning here; newer peers may send more.
            _ => {}
        }
    }
}

/// Waits for the agent's answer and queues it on the connection; gives up silently when the
/// agent drops the oneshot, the connection ends or the transport shuts down.
fn spawn_reply<T: Send + 'static>(
    core: &Arc<Core>,
    rx: oneshot::Receiver<T>,
    wrap: fn(T) -> Body,
    reply_tx: mpsc::Sender<PeerEnvelope>,
    acc: &Accepted,
) {
    let mut shutdown = core.shutdown.clone();
    let (cluster_id, to) = (acc.peer.cluster_id, acc.peer.node_id);
    let core = core.clone();
    core.runtime.clone().spawn(async move {
        let answer = tokio::select! {
            r = rx => r.ok(),
            _ = reply_tx.closed() => None,
            _ = shutdown.changed() => None,
        };
        if let Some(answer) = answer {
            let env = PeerEnvelope {
                cluster_id,
                from: core.node_id(),
                to,
                body: Some(wrap(answer)),
            };
            let _ = reply_tx.send(env).await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Client side: one writer task per peer
// ---------------------------------------------------------------------------------------------

/// Cheap jitter source for backoff (xorshift64*, seeded from the OS).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let mut seed = [0u8; 8];
        // Without OS randomness the jitter merely gets less random: the time will do.
        let seed = match getrandom::getrandom(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| u64::from(d.subsec_nanos())),
        };
        Jitter(seed | 1)
    }

    /// A delay uniformly in [d/2, d).
    fn spread(&mut self, d: Duration) -> Duration {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(r % nanos)
    }
}

enum PumpEnd {
    Stopped,
    Failed(TransportError),
}

async fn run_peer_writer(
    core: Arc<Core>,
    id: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    mut stop: oneshot::Receiver<()>,
    reach: Arc<Reach>,
) {
    let mut shutdown = core.shutdown.clone();
    let mut jitter = Jitter::new();
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let attempt = connect_inner(
            &addr,
            &core.token,
            &core.host_name,
            core.node_id(),
            core.cluster_id(),
            Some(id),
        );
        let result = tokio::select! {
            r = attempt => r,
            _ = &mut stop => return,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(conn) => {
                if failures > 0 {
                    info!(peer = id, %addr, "connected to peer");
                }
                failures = 0;
                backoff = BACKOFF_MIN;
                reach.write_ok.store(true, Ordering::Relaxed);
                let end = pump(&core, conn, &mut rx, &mut stop, &mut shutdown, &reach).await;
                reach.write_ok.store(false, Ordering::Relaxed);
                match end {
                    PumpEnd::Stopped => return,
                    PumpEnd::Failed(e) => {
                        warn!(peer = id, %addr, "peer connection lost: {e}");
                        core.report_unreachable(id);
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    warn!(peer = id, %addr, "cannot reach peer (retrying with backoff): {e}");
                } else {
                    debug!(peer = id, %addr, failures, "cannot reach peer: {e}");
                }
                // Whatever waited for this connection is stale by the next attempt: drop it
                // now and let Raft know, rather than deliver it late.
                let mut dropped = 0u64;
                while rx.try_recv().is_ok() {
                    dropped += 1;
                }
                if dropped > 0 {
                    bump(&core.counters.raft_send_dropped, dropped);
                    core.report_unreachable(id);
                }
            }
        }
        let delay = jitter.spread(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return,
            _ = shutdown.changed() => return,
        }
    }
}

/// Writes queued messages to an established connection until it fails or we are stopped.
async fn pump(
    core: &Core,
    conn: PeerConnection,
    rx: &mut mpsc::Receiver<Message>,
    stop: &mut oneshot::Receiver<()>,
    shutdown: &mut watch::Receiver<()>,
    reach: &Reach,
) -> PumpEnd {
    let PeerConnection {
        mut reader,
        mut writer,
        ..
    } = conn;
    // The server never writes after the handshake; reading only detects its close early.
    let mut probe = [0u8; 64];
    let mut buf = Vec::new();
    loop {
        let first = tokio::select! {
            _ = &mut *stop => return PumpEnd::Stopped,
            _ = shutdown.changed() => return PumpEnd::Stopped,
            r = reader.read(&mut probe) => {
                return PumpEnd::Failed(match r {
                    Ok(0) => TransportError::Closed,
                    Ok(_) => TransportError::Protocol("unexpected data from the server".into()),
                    Err(e) => TransportError::Io(e),
                });
            }
            m = rx.recv() => match m {
                Some(m) => m,
                None => return PumpEnd::Stopped,
            },
        };
        buf.clear();
        let mut n = u64::from(core.encode_raft_frame(&first, &mut buf));
        // Batch whatever is already queued into the same write.
        let mut taken = 1;
        while buf.len() < BATCH_BYTES && taken < BATCH_MSGS {
            let Ok(m) = rx.try_recv() else { break };
            taken += 1;
            n += u64::from(core.encode_raft_frame(&m, &mut buf));
        }
        if buf.is_empty() {
            continue;
        }
        let write = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&buf));
        let result = tokio::select! {
            r = write => r,
            _ = &mut *stop => return PumpEnd::Stopped,
            _ = shutdown.changed() => return PumpEnd::Stopped,
        };
        match result {
            Ok(Ok(())) => {
                reach.write_ok.store(true, Ordering::Relaxed);
                bump(&core.counters.raft_sent, n);
            }
            Ok(Err(e)) => {
                bump(&core.counters.raft_send_dropped, n);
                return PumpEnd::Failed(TransportError::Io(e));
            }
            Err(_) => {
                bump(&core.counters.raft_send_dropped, n);
                return PumpEnd::Failed(TransportError::Timeout);
            }
        }
    }
}
