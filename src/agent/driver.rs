//! The Raft driver: one thread owns the [`Node`], ticks it, feeds it peer messages and proposals,
//! and runs its Ready loop ([`Node::on_ready`]), then hands the results out: messages to the
//! transport, applied results to the waiting callers, and a fresh read-only [`View`] of the state
//! to everybody else (the API, the FIB and link reconcilers), published lock-free.
//!
//! A plain thread, not a tokio task: `on_ready` fsyncs, and a blocking call must never stall the
//! runtime that serves the API and the peers.
//!
//! Storage failures degrade, they do not end the process: when the data dir cannot be written
//! (ENOSPC, EIO) the driver drops the node, stops stepping, ticking and accepting proposals (so
//! it acknowledges nothing it has not made durable), and keeps the last view for reads; the
//! data plane keeps forwarding with what it knows. Every [`PROBE_EVERY`] it tries a small
//! write in the data dir; once that works it reopens the node from what is durable (exactly
//! what a restart would see) and catches up from the leader, without a restart.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{oneshot, watch};
use vxnet_controlplane::node::{MemberStatus, Node};
use vxnet_controlplane::state::{ApplyResult, State};
use vxnet_controlplane::transport::{SecurityView, Transport};
use vxnet_proto::Proposal;

/// A read-only picture of the node, republished after every Ready that changed something.
#[derive(Debug, Clone)]
pub struct View {
    /// The replicated state as applied on this node.
    pub state: Arc<State>,
    /// This node's Raft id.
    pub node_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
    /// The leader this node knows of.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Configuration members (with progress, on the leader).
    pub members: Vec<MemberStatus>,
}

/// How often a host whose data dir failed tries writing again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Bytes the probe writes (and fsyncs) before the node is reopened: room for a few WAL records.
const PROBE_BYTES: usize = 64 << 10;
/// At most one "still failing" log line per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Health of this host's control plane, shared with the API and the metrics.
#[derive(Debug, Default)]
pub struct Health {
    storage_failed: AtomicBool,
    storage_failures: AtomicU64,
    storage_recoveries: AtomicU64,
}

impl Health {
    /// The data dir cannot be written: this host accepts and acknowledges no writes.
    pub fn storage_failed(&self) -> bool {
        self.storage_failed.load(Ordering::Relaxed)
    }

    /// Storage failures seen since start (each one took the node down until a probe worked).
    pub fn storage_failures(&self) -> u64 {
        self.storage_failures.load(Ordering::Relaxed)
    }

    /// Times the node was reopened after the data dir became writable again.
    pub fn storage_recoveries(&self) -> u64 {
        self.storage_recoveries.load(Ordering::Relaxed)
    }

    fn set_failed(&self) {
        self.storage_failed.store(true, Ordering::Relaxed);
        self.storage_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn set_recovered(&self) {
        self.storage_failed.store(false, Ordering::Relaxed);
        self.storage_recoveries.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a proposal came to.
#[derive(Debug)]
pub enum ProposeOutcome {
    /// Committed and applied on this node at `index`.
    Applied {
        /// Raft index.
        index: u64,
        /// The state machine's answer (boxed: responses carry whole records).
        result: Box<ApplyResult>,
    },
    /// This node is not the leader; the leader it knows of, if any.
    NotLeader(Option<u64>),
    /// This host cannot write its data dir, so it accepts no writes (the storage error).
    Unavailable(String),
}

enum Input {
    Raft(Box<Message>),
    Unreachable(u64),
    Propose {
        proposal: Box<Proposal>,
        reply: oneshot::Sender<ProposeOutcome>,
    },
}

/// The driver thread is gone (it cannot be while the process lives: a panic on any thread
/// ends the process).
#[derive(Debug, thiserror::Error)]
#[error("the Raft driver thread has stopped")]
pub struct DriverGone;

/// A cheap, cloneable handle to the driver thread.
#[derive(Clone, Debug)]
pub struct DriverHandle {
    tx: Sender<Input>,
    view: Arc<ArcSwap<View>>,
    applied: watch::Receiver<u64>,
    health: Arc<Health>,
}

impl DriverHandle {
    /// Health of the control plane on this host.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The latest published view.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Feeds a Raft message from a peer.
    pub fn step(&self, msg: Message) {
        let _ = self.tx.send(Input::Raft(Box::new(msg)));
    }

    /// Reports a peer the transport cannot reach.
    pub fn unreachable(&self, node_id: u64) {
        let _ = self.tx.send(Input::Unreachable(node_id));
    }

    /// Proposes on this node; resolves when applied here, or at once when not the leader.
    pub async fn propose(&self, proposal: Proposal) -> Result<ProposeOutcome, DriverGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Propose {
                proposal: Box::new(proposal),
                reply,
            })
            .map_err(|_| DriverGone)?;
        rx.await.map_err(|_| DriverGone)
    }

    /// Waits until this node has applied `index` (read-your-writes); false on timeout.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(timeout, rx.wait_for(|&applied| applied >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A receiver that changes whenever the applied index moves (wakes the reconcilers).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

/// Starts the driver thread. `seed_peers` is the address book to use until the replicated state
/// has hosts (a joining node learns the members from the join answer before its first snapshot).
pub fn spawn(
    node: Node,
    transport: Transport,
    tick: Duration,
    seed_peers: BTreeMap<u64, String>,
) -> (DriverHandle, JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let view = Arc::new(ArcSwap::from_pointee(view_of(
        &node,
        Arc::new(node.state().reader_copy()),
    )));
    let (applied_tx, applied_rx) = watch::channel(node.applied_index());
    let health = Arc::new(Health::default());
    let handle = DriverHandle {
        tx,
        view: Arc::clone(&view),
        applied: applied_rx,
        health: Arc::clone(&health),
    };
    let driver = Driver {
        node,
        transport,
        view,
        applied: applied_tx,
        waiters: HashMap::new(),
        peers: BTreeMap::new(),
        seed_peers,
        health,
        degraded: None,
    };
    let thread = std::thread::Builder::new()
        .name("vxnet-raft".into())
        .spawn(move || driver.run(rx, tick))
        .unwrap_or_else(|e| {
            tracing::error!("cannot start the Raft thread: {e}");
            std::process::exit(70)
        });
    (handle, thread)
}

fn view_of(node: &Node, state: Arc<State>) -> View {
    View {
        state,
        node_id: node.id(),
        cluster_id: node.cluster_id(),
        leader_id: node.leader_id(),
        term: node.term(),
        commit_index: node.commit_index(),
        applied_index: node.applied_index(),
        members: node.members(),
    }
}

struct Driver {
    node: Node,
    transport: Transport,
    view: Arc<ArcSwap<View>>,
    applied: watch::Sender<u64>,
    waiters: HashMap<Vec<u8>, Vec<oneshot::Sender<ProposeOutcome>>>,
    peers: BTreeMap<u64, String>,
    seed_peers: BTreeMap<u64, String>,
    health: Arc<Health>,
    /// Set while the data dir cannot be written; `node` is then stale and not driven.
    degraded: Option<Degraded>,
}

/// Why and since when the node is down, and when to try again.
struct Degraded {
    error: String,
    since: Instant,
    next_probe: Instant,
    last_log: Instant,
    failed_probes: u64,
}

impl Driver {
    fn run(mut self, rx: Receiver<Input>, tick: Duration) {
        self.sync_peers();
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(input) => {
                    self.handle(input);
                    // Take what else is queued before running one Ready for all of it.
                    for input in rx.try_iter().take(1024) {
                        self.handle(input);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_tick {
                crate::fault::check("raft");
                if self.degraded.is_some() {
                    self.probe();
                } else {
                    self.node.tick();
                }
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick;
                }
                self.waiters.retain(|_, senders| {
                    senders.retain(|s| !s.is_closed());
                    !senders.is_empty()
                });
            }
            if self.degraded.is_none() && self.node.has_ready() {
                self.ready();
            }
        }
    }

    fn handle(&mut self, input: Input) {
        if let Some(degraded) = &self.degraded {
            // Acknowledge nothing: peers see this host as silent and carry on without it.
            if let Input::Propose { reply, .. } = input {
                let _ = reply.send(ProposeOutcome::Unavailable(degraded.error.clone()));
            }
            return;
        }
        match input {
            Input::Raft(msg) => {
                if let Err(e) = self.node.step(*msg) {
                    tracing::debug!("raft step: {e}");
                }
            }
            Input::Unreachable(id) => {
                self.node.report_unreachable(id);
                // A snapshot in flight to it is lost with the connection: let raft resend it.
                self.node.report_snapshot(id, false);
            }
            Input::Propose { proposal, reply } => {
                // A retry of something already applied gets the stored answer at once.
                if let Some(result) = self.node.state().dedup_lookup(&proposal.request_id) {
                    let index = self.node.applied_index();
                    let _ = reply.send(ProposeOutcome::Applied {
                        index,
                        result: Box::new(result.clone()),
                    });
                    return;
                }
                match self.node.propose(&proposal) {
                    Ok(_) => self
                        .waiters
                        .entry(proposal.request_id)
                        .or_default()
                        .push(reply),
                    Err(not_leader) => {
                        let _ = reply.send(ProposeOutcome::NotLeader(not_leader.leader_id));
                    }
                }
            }
        }
    }

    fn ready(&mut self) {
        let outcome = match self.node.on_ready() {
            Ok(outcome) => outcome,
            Err(e) => {
                self.degrade(e.to_string());
                return;
            }
        };
        for msg in outcome.messages {
            let snapshot_to = (msg.get_msg_type() == MessageType::MsgSnapshot).then_some(msg.to);
            self.transport.send(msg);
            // One TCP stream per peer keeps order: the appends raft sends next arrive after the
            // snapshot. A failed connection is reported through `Unreachable` above.
            if let Some(to) = snapshot_to {
                self.node.report_snapshot(to, true);
            }
        }
        if let Some(leadership) = outcome.leadership {
            tracing::info!(
                leader = ?leadership.leader_id,
                term = leadership.term,
                "leader changed{}",
                if leadership.is_self { " (this host)" } else { "" }
            );
            if !leadership.is_self {
                // Our uncommitted proposals may be lost: tell the callers to retry (same
                // request id, so nothing is applied twice).
                for (_, senders) in self.waiters.drain() {
                    for sender in senders {
                        let _ = sender.send(ProposeOutcome::NotLeader(leadership.leader_id));
                    }
                }
            }
        }
        let state_changed = !outcome.updates.is_empty() || outcome.snapshot_installed;
        let current = self.view.load();
        let state = if state_changed {
            Arc::new(self.node.state().reader_copy())
        } else {
            Arc::clone(&current.state)
        };
        self.view.store(Arc::new(view_of(&self.node, state)));
        if state_changed {
            self.sync_peers();
        }
        // Answer the callers only after the view shows their write (read-your-writes).
        for applied in &outcome.applied {
            if let Some(senders) = self.waiters.remove(&applied.request_id) {
                for sender in senders {
                    let _ = sender.send(ProposeOutcome::Applied {
                        index: applied.index,
                        result: Box::new(applied.result.clone()),
                    });
                }
            }
        }
        self.announce_applied(outcome.applied_index);
    }

    /// Wakes the waiters of the applied index (read-your-writes, the reconcilers) if it moved.
    fn announce_applied(&self, index: u64) {
        self.applied.send_if_modified(|applied| {
            let changed = *applied != index;
            *applied = index;
            changed
        });
    }

    /// The node's memory may now be ahead of its disk: stop driving it until the data dir takes
    /// writes again, then reopen it from what is durable.
    fn degrade(&mut self, error: String) {
        tracing::error!(
            "raft storage failed: {error}; this host stops accepting and acknowledging writes \
             (reads and the data plane go on) and retries every {PROBE_EVERY:?}"
        );
        self.health.set_failed();
        for (_, senders) in self.waiters.drain() {
            for sender in senders {
                let _ = sender.send(ProposeOutcome::Unavailable(error.clone()));
            }
        }
        let now = Instant::now();
        self.degraded = Some(Degraded {
            error,
            since: now,
            next_probe: now + PROBE_EVERY,
            last_log: now,
            failed_probes: 0,
        });
        let current = self.view.load_full();
        let mut view = (*current).clone();
        view.leader_id = None;
        self.view.store(Arc::new(view));
    }

    /// While degraded: tries a small durable write in the data dir; once it works, reopens the
    /// node from disk (what a restart would see: never less than what was applied here).
    fn probe(&mut self) {
        let now = Instant::now();
        let Some(degraded) = self.degraded.as_mut() else {
            return;
        };
        if now < degraded.next_probe {
            return;
        }
        degraded.next_probe = now + PROBE_EVERY;
        let data_dir = self.node.config().data_dir.clone();
        let reopened = probe_write(&data_dir)
            .map_err(|e| format!("probe write in {}: {e}", data_dir.display()))
            .and_then(|()| Node::open(self.node.config().clone()).map_err(|e| e.to_string()));
        match reopened {
            Ok(node) => {
                tracing::info!(
                    down_for = ?degraded.since.elapsed(),
                    applied = node.applied_index(),
                    "raft storage writable again: node reopened from the data dir, catching up"
                );
                self.node = node;
                self.degraded = None;
                self.health.set_recovered();
                let state = Arc::new(self.node.state().reader_copy());
                self.view.store(Arc::new(view_of(&self.node, state)));
                self.sync_peers();
                self.announce_applied(self.node.applied_index());
            }
            Err(e) => {
                degraded.failed_probes += 1;
                if now.duration_since(degraded.last_log) >= LOG_EVERY {
                    degraded.last_log = now;
                    tracing::warn!(
                        down_for = ?degraded.since.elapsed(),
                        probes = degraded.failed_probes,
                        "raft storage still failing: {e}"
                    );
                }
            }
        }
    }

    /// Keeps the transport's address book equal to the registered hosts, and its security view
    /// (who may connect) equal to the state's.
    fn sync_peers(&mut self) {
        let peers: BTreeMap<u64, String> = self
            .node
            .state()
            .hosts()
            .map(|h| (h.node_id, h.peer_addr.clone()))
            .collect();
        let peers = if peers.is_empty() {
            self.seed_peers.clone()
        } else {
            peers
        };
        if peers != self.peers {
            self.transport.set_peers(peers.clone());
            self.peers = peers;
        }
        // Before the first snapshot a joiner keeps the view its join answer gave the transport.
        if self.node.state().hosts().next().is_some() {
            self.transport
                .set_security(SecurityView::from_state(self.node.state()));
        }
    }
}

/// Writes, fsyncs and removes a scratch file of [`PROBE_BYTES`] in `dir`.
fn probe_write(dir: &std::path::Path) -> std::io::Result<()> {
    let path = dir.join(".write-probe");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    result
}
