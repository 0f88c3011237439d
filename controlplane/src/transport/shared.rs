//! State shared by the [`Transport`](super::Transport) handle and all its tasks: identity,
//! counters, per-peer reachability, and the hand-off of received messages to the agent.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use raft::eraftpb::Message;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::warn;
use vxnet_proto::PeerEnvelope;
use vxnet_proto::peer_envelope::Body;

use super::connection::Route;
use super::handshake::Identity;
use super::peer::PeerEntry;
use super::security::Security;
use super::wire::encode_frame;
use super::{
    INBOUND_WAIT, Inbound, LOG_INTERVAL_MS, REACHABLE_WINDOW_MS, REQUEST_WAIT, TransportError,
    UNREACHABLE_INTERVAL_MS,
};
use crate::node::{decode_raft_message, encode_raft_message};

/// The live counters behind [`TransportStats`](super::TransportStats).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) raft_sent: AtomicU64,
    pub(super) raft_send_dropped: AtomicU64,
    pub(super) raft_delivered: AtomicU64,
    pub(super) bad_raft_payloads: AtomicU64,
    pub(super) misaddressed: AtomicU64,
    pub(super) inbound_dropped: AtomicU64,
    pub(super) handshakes_refused: AtomicU64,
    pub(super) connections_closed_bad_input: AtomicU64,
    pub(super) unreachable_reported: AtomicU64,
    pub(super) tls_accepted: AtomicU64,
    pub(super) legacy_accepted: AtomicU64,
    pub(super) joins_refused: AtomicU64,
    pub(super) connections_closed_revoked: AtomicU64,
    pub(super) connections_rate_limited: AtomicU64,
}

/// Refused handshakes per source address and second, so that a source that keeps failing is
/// turned away at accept, before any task, buffer or TLS state is spent on it. Members never
/// fail handshakes in numbers; a stranger opening hundreds of connections a second does.
#[derive(Default)]
pub(super) struct Refusals {
    /// Source → (second, refusals in that second, refusals in the second before).
    by_source: Mutex<HashMap<IpAddr, (u64, u32, u32)>>,
}

impl Refusals {
    /// Refused handshakes a source may cause per second before its connections are closed at
    /// accept (for the rest of that second and the next).
    pub(super) const PER_SECOND: u32 = 20;
    /// Sources remembered at most (a stranger with many addresses cannot grow the map further).
    const MAX_SOURCES: usize = 4096;

    pub(super) fn record(&self, ip: IpAddr, now_ms: u64) {
        let sec = now_ms / 1000;
        let mut map = lock(&self.by_source);
        if map.len() >= Self::MAX_SOURCES && !map.contains_key(&ip) {
            map.retain(|_, (s, _, _)| *s + 1 >= sec);
            if map.len() >= Self::MAX_SOURCES {
                return;
            }
        }
        let entry = map.entry(ip).or_insert((sec, 0, 0));
        if entry.0 != sec {
            let previous = if entry.0 + 1 == sec { entry.1 } else { 0 };
            *entry = (sec, 0, previous);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    pub(super) fn is_limited(&self, ip: IpAddr, now_ms: u64) -> bool {
        let sec = now_ms / 1000;
        match lock(&self.by_source).get(&ip) {
            Some(&(s, now, before)) if s == sec => {
                now > Self::PER_SECOND || before > Self::PER_SECOND
            }
            Some(&(s, now, _)) if s + 1 == sec => now > Self::PER_SECOND,
            _ => false,
        }
    }
}

pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Reachability bookkeeping of one peer node.
#[derive(Default)]
pub(super) struct Reach {
    /// Our writer holds a connection whose last write succeeded.
    pub(super) write_ok: AtomicBool,
    /// Authenticated inbound connections from that node currently open.
    pub(super) inbound_conns: AtomicUsize,
    /// Time (`Core::now_ms`) a frame last arrived from it; 0 = never.
    pub(super) last_recv_ms: AtomicU64,
    /// Time the last `Unreachable` for it was emitted; 0 = never.
    pub(super) last_unreachable_ms: AtomicU64,
}

impl Reach {
    /// Our last write to the peer succeeded, or an inbound connection from it carried a frame
    /// within [`REACHABLE_WINDOW_MS`] of `now_ms`.
    fn is_live(&self, now_ms: u64) -> bool {
        if self.write_ok.load(Ordering::Relaxed) {
            return true;
        }
        let last = self.last_recv_ms.load(Ordering::Relaxed);
        self.inbound_conns.load(Ordering::Relaxed) > 0
            && last != 0
            && now_ms.saturating_sub(last) <= REACHABLE_WINDOW_MS
    }
}

/// State shared by the handle and all tasks.
pub(super) struct Core {
    pub(super) local_addr: SocketAddr,
    pub(super) host_name: String,
    pub(super) token: Vec<u8>,
    /// Who may connect, and our certificate.
    pub(super) security: Security,
    /// Idle client connections kept for the next forward or reach call.
    pub(super) pool: super::forward::Pool,
    /// Recent refused handshakes by source.
    pub(super) refusals: Refusals,
    pub(super) queue_len: usize,
    pub(super) node_id: AtomicU64,
    pub(super) cluster_id: AtomicU64,
    pub(super) peers: Mutex<HashMap<u64, PeerEntry>>,
    pub(super) reach: Mutex<HashMap<u64, Arc<Reach>>>,
    pub(super) inbound: mpsc::Sender<Inbound>,
    /// Never written; closes (changed() errors) when the last `Transport` handle is dropped.
    pub(super) shutdown: watch::Receiver<()>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) epoch: Instant,
    pub(super) counters: Counters,
    /// Per remote IP: when we last logged a refusal or garbage from it.
    pub(super) log_times: Mutex<HashMap<IpAddr, u64>>,
    pub(super) inbound_full_logged_ms: AtomicU64,
    pub(super) conn_slots: Arc<Semaphore>,
    /// Inbound connections still in their handshake, oldest first; dropping a sender tells that
    /// connection to go. Silent strangers can thus not hold every slot and lock peers out for
    /// the length of a handshake timeout, again and again: a newcomer takes the oldest's slot.
    pub(super) handshaking: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    pub(super) next_conn: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-updated under these locks, so a poisoned one is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    pub(super) fn node_id(&self) -> u64 {
        self.node_id.load(Ordering::Acquire)
    }

    pub(super) fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Acquire)
    }

    /// How to dial `peer` (`None`: whichever member listens at an address).
    pub(super) fn route(&self, peer: Option<u64>) -> Route {
        let view = self.security.view();
        let tls = self.security.tls();
        let peer_unpinned = peer.is_some_and(|id| matches!(view.members.get(&id), Some(None)));
        Route {
            legacy_first: tls.is_none() || (view.legacy_open && peer_unpinned),
            tls,
            legacy_ok: view.legacy_open,
        }
    }

    /// Who we are right now, for a handshake (the ids change once, when we join).
    pub(super) fn identity(&self) -> Identity<'_> {
        Identity {
            token: &self.token,
            host_name: &self.host_name,
            node_id: self.node_id(),
            cluster_id: self.cluster_id(),
        }
    }

    /// Milliseconds since start, plus one so that 0 can mean "never".
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    pub(super) fn reach(&self, id: u64) -> Arc<Reach> {
        lock(&self.reach).entry(id).or_default().clone()
    }

    /// Whether we hold a working connection to node `id`: our last write to it succeeded, or an
    /// inbound connection from it carried a frame within [`REACHABLE_WINDOW_MS`].
    pub(super) fn is_reachable(&self, id: u64) -> bool {
        lock(&self.reach)
            .get(&id)
            .is_some_and(|reach| reach.is_live(self.now_ms()))
    }

    /// Every node id [`Core::is_reachable`] says yes to, and ours, ascending.
    pub(super) fn reachable_ids(&self) -> Vec<u64> {
        let now = self.now_ms();
        let mut out: Vec<u64> = lock(&self.reach)
            .iter()
            .filter(|(_, reach)| reach.is_live(now))
            .map(|(&id, _)| id)
            .chain(Some(self.node_id()).filter(|&me| me != 0))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether something about `ip` may be logged now (once per [`LOG_INTERVAL_MS`]).
    pub(super) fn may_log(&self, ip: IpAddr) -> bool {
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
    pub(super) fn report_unreachable(&self, id: u64) {
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
    pub(super) fn encode_raft_frame(&self, msg: &Message, out: &mut Vec<u8>) -> bool {
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
    /// Hands a Raft message to the agent; `bound` is the node id the connection authenticated
    /// as (TLS), which the message's sender must be.
    pub(super) async fn deliver_raft(&self, bytes: &[u8], remote: SocketAddr, bound: Option<u64>) {
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
        if bound.is_some_and(|id| id != msg.from) {
            bump(&self.counters.misaddressed, 1);
            if self.may_log(remote.ip()) {
                warn!(%remote, from = msg.from, "dropping a raft message whose sender is not the connection's node");
            }
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
    pub(super) async fn push_request(&self, item: Inbound) -> bool {
        matches!(
            tokio::time::timeout(REQUEST_WAIT, self.inbound.send(item)).await,
            Ok(Ok(()))
        )
    }
}
