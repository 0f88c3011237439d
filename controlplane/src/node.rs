//! One job in one file (past 800 lines): driving one `RawNode` — its Ready loop, the membership
//! policy the leader runs from it, and the accessors the driver reads; an eighth of it is tests.
//!
//! The Raft node: one `RawNode<DiskStorage>`, the [`State`] it drives, and ONE Ready loop.
//!
//! The node is sans-IO apart from its data directory. The caller:
//! - calls [`Node::tick`] every [`NodeConfig::tick_interval`] (100 ms);
//! - feeds received Raft messages to [`Node::step`];
//! - proposes with [`Node::propose`] (only on the leader: elsewhere it gets [`NotLeader`] and
//!   forwards the proposal to the leader itself);
//! - calls [`Node::on_ready`] after any of the above and sends the returned messages (encoded
//!   with [`encode_raft_message`] into a `PeerEnvelope`), answers waiting clients from
//!   [`ReadyOutcome::applied`] (matched by request id), and turns [`ReadyOutcome::updates`] into
//!   forwarding-table writes.
//!
//! Read-your-writes: a result is only returned once the command is committed and applied on
//! this node. A forwarding agent answers its client once its own [`Node::applied_index`]
//! reaches the index the leader reported.
//!
//! Membership is reconciled by the leader on every tick from the replicated host list (see
//! [`plan_membership`]): a registered host that is not in the Raft configuration is added as a
//! learner, caught-up learners are promoted while keeping an odd voter count of at most 5, and
//! nodes whose host was removed leave the configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, MessageType, Snapshot,
};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole, Storage};
use vxnet_proto::{Proposal, RegisterHost, command};

use crate::state::{ApplyResult, SnapshotError, State, Update};
use crate::storage::{DiskStorage, StorageError, StorageMeta, StorageOptions};

/// Node settings.
#[derive(Clone)]
pub struct NodeConfig {
    /// Data directory (WAL, snapshot, meta).
    pub data_dir: PathBuf,
    /// How often the caller calls [`Node::tick`] (informative; the node counts ticks).
    pub tick_interval: Duration,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Ticks before a follower starts an election (randomised in `[e, 2e)`).
    pub election_tick: usize,
    /// Snapshot the state machine and compact the log every this many applied entries.
    pub compact_every: u64,
    /// Most voters the membership policy promotes to (odd).
    pub max_voters: usize,
    /// Give up on a snapshot transfer that got no answer after this many ticks.
    pub snapshot_timeout_ticks: u64,
    /// A member the leader has not heard from for this many ticks is down: a down voter is
    /// replaced by a live, caught-up learner, and a down learner is not promoted.
    pub member_down_ticks: u64,
    /// Storage tuning.
    pub storage: StorageOptions,
    /// Seed for election timeout randomisation (a fixed seed makes simulations replayable).
    pub rng_seed: u64,
    /// Logger handed to raft.
    pub logger: slog::Logger,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("data_dir", &self.data_dir)
            .field("tick_interval", &self.tick_interval)
            .field("heartbeat_tick", &self.heartbeat_tick)
            .field("election_tick", &self.election_tick)
            .field("compact_every", &self.compact_every)
            .field("max_voters", &self.max_voters)
            .field("snapshot_timeout_ticks", &self.snapshot_timeout_ticks)
            .field("member_down_ticks", &self.member_down_ticks)
            .field("storage", &self.storage)
            .field("rng_seed", &self.rng_seed)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Defaults: 100 ms ticks, heartbeat every tick, election after ~1 s, compaction every 1000
    /// entries, up to 5 voters, a voter silent for 10 s replaced, fsync on, raft logs forwarded
    /// to `tracing`.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            tick_interval: Duration::from_millis(100),
            heartbeat_tick: 1,
            election_tick: 10,
            compact_every: 1000,
            max_voters: 5,
            snapshot_timeout_ticks: 100,
            member_down_ticks: 100,
            storage: StorageOptions::default(),
            rng_seed: 0x5eed_1234_abcd_ef01,
            logger: tracing_logger(),
        }
    }
}

/// Fatal node errors (storage failures, undecodable snapshots); the agent should stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Raft refused something.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A snapshot's state machine data is unusable.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// A proposal was made on a node that is not the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader (leader: {leader_id:?})")]
pub struct NotLeader {
    /// The leader this node knows of, if any.
    pub leader_id: Option<u64>,
}

/// One applied proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Raft index it was applied at.
    pub index: u64,
    /// The proposal's request id.
    pub request_id: Vec<u8>,
    /// Outcome (identical on every replica, and for retries of the same request id).
    pub result: ApplyResult,
}

/// Leadership as seen by this node after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// Current leader, if known.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Whether this node is the leader.
    pub is_self: bool,
}

/// Everything one [`Node::on_ready`] call produced.
#[derive(Debug, Default)]
pub struct ReadyOutcome {
    /// Raft messages to send; `msg.to` is the destination node id.
    pub messages: Vec<Message>,
    /// Applied proposals, in apply order.
    pub applied: Vec<Applied>,
    /// State changes, in apply order (a received snapshot shows up as the diff it caused).
    pub updates: Vec<Update>,
    /// Set when leadership changed.
    pub leadership: Option<Leadership>,
    /// Set when the Raft configuration changed.
    pub conf_state: Option<ConfState>,
    /// A snapshot from the leader replaced the state.
    pub snapshot_installed: bool,
    /// Applied index after this call.
    pub applied_index: u64,
}

/// Role of a member in the Raft configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    /// Votes.
    Voter,
    /// Replicates without voting.
    Learner,
}

/// A member of the Raft configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    /// Raft node id.
    pub node_id: u64,
    /// Role.
    pub role: MemberRole,
    /// Replicated index as seen by the leader (`None` off the leader).
    pub matched: Option<u64>,
}

/// The node.
pub struct Node {
    raw: RawNode<DiskStorage>,
    state: State,
    cfg: NodeConfig,
    id: u64,
    cluster_id: u64,
    rng: u64,
    timeout_key: (u64, StateRole, u64, usize),
    last_leadership: (u64, StateRole, u64),
    applied_since_snapshot: u64,
    ticks: u64,
    snapshot_since: BTreeMap<u64, u64>,
    conf_proposed_at: Option<u64>,
    /// Tick at which a message from each peer last arrived.
    last_heard: BTreeMap<u64, u64>,
    /// Tick at which this node last became leader: a member never heard from since counts as
    /// heard then, so a new leader gives everyone a full `member_down_ticks`.
    leader_since: Option<u64>,
    /// Messages produced while replaying in [`Node::open`], sent with the next Ready.
    pending_messages: Vec<Message>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("cluster_id", &self.cluster_id)
            .field("role", &self.raw.raft.state)
            .field("term", &self.raw.raft.term)
            .field("leader", &self.raw.raft.leader_id)
            .field("applied", &self.state.applied_index())
            .field("storage", self.raw.store())
            .finish()
    }
}

/// A `slog::Logger` that drops everything (tests).
pub fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// A `slog::Logger` that forwards raft's logs to `tracing` (target `raft`).
pub fn tracing_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct TracingDrain;

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        use slog::KV;
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{msg}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

/// Encodes a Raft message with raft's own protobuf codec (for `PeerEnvelope.raft_message`).
pub fn encode_raft_message(m: &Message) -> Result<Vec<u8>, raft::Error> {
    Ok(m.write_to_bytes()?)
}

/// Decodes [`encode_raft_message`]'s output; garbage is an error, never a panic.
pub fn decode_raft_message(b: &[u8]) -> Result<Message, raft::Error> {
    Ok(Message::parse_from_bytes(b)?)
}

fn xorshift(s: &mut u64) -> u64 {
    // xorshift64*: plenty for spreading election timeouts.
    let mut x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl Node {
    /// Creates a new one-voter cluster in an empty data dir: this host is registered with Raft
    /// node id 1 in the bootstrap snapshot (index 1), and the node campaigns at once. Joining
    /// nodes catch up from that snapshot, which also carries the initial `ConfState`.
    pub fn bootstrap(
        cfg: NodeConfig,
        cluster_id: u64,
        host: RegisterHost,
    ) -> Result<Node, NodeError> {
        Node::bootstrap_with(cfg, cluster_id, host, Vec::new())
    }

    /// [`Node::bootstrap`], with more commands applied into the bootstrap snapshot after the
    /// host's registration (the cluster CA and join key).
    pub fn bootstrap_with(
        cfg: NodeConfig,
        cluster_id: u64,
        host: RegisterHost,
        more: Vec<command::Kind>,
    ) -> Result<Node, NodeError> {
        let mut state = State::new();
        for kind in std::iter::once(command::Kind::RegisterHost(host)).chain(more) {
            let (res, _) = state.apply(
                1,
                &Proposal {
                    request_id: Vec::new(),
                    command: Some(vxnet_proto::Command { kind: Some(kind) }),
                },
            );
            if let Err(e) = res {
                return Err(NodeError::Storage(StorageError::Invalid(format!(
                    "bootstrap state: {e}"
                ))));
            }
        }
        let mut snap = Snapshot {
            data: state.to_snapshot_bytes().into(),
            ..Default::default()
        };
        snap.mut_metadata().index = 1;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1];
        let meta = StorageMeta {
            node_id: 1,
            cluster_id,
        };
        DiskStorage::create(&cfg.data_dir, meta, Some(snap), cfg.storage.clone())?;
        let mut node = Node::open(cfg)?;
        node.raw.campaign()?;
        node.fix_election_timeout();
        Ok(node)
    }

    /// Creates storage for a host that was registered (node id allocated by the cluster) and
    /// starts it empty: the leader adds it as a learner and sends it a snapshot.
    pub fn join(cfg: NodeConfig, cluster_id: u64, node_id: u64) -> Result<Node, NodeError> {
        let meta = StorageMeta {
            node_id,
            cluster_id,
        };
        DiskStorage::create(&cfg.data_dir, meta, None, cfg.storage.clone())?;
        Node::open(cfg)
    }

    /// Restarts from an existing data dir: the state is the snapshot plus every entry up to the
    /// durable commit index, replayed here before the node is returned. So whoever reads the
    /// state after `open` (the API, the link reconciler) sees at least what this host had
    /// applied before it stopped, without waiting for a tick or a quorum.
    pub fn open(cfg: NodeConfig) -> Result<Node, NodeError> {
        let store = DiskStorage::open(&cfg.data_dir, cfg.storage.clone())?;
        let meta = store.meta();
        let snap = store.latest_snapshot();
        let state = if snap.data.is_empty() {
            State::new()
        } else {
            State::from_snapshot_bytes(&snap.data)?
        };
        let applied = store.snapshot_index();
        let rcfg = raft::Config {
            id: meta.node_id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let raw = RawNode::new(&rcfg, store, &cfg.logger)?;
        let rng = cfg.rng_seed ^ meta.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut node = Node {
            last_leadership: (0, StateRole::Follower, 0),
            raw,
            state,
            id: meta.node_id,
            cluster_id: meta.cluster_id,
            rng,
            timeout_key: (u64::MAX, StateRole::Follower, 0, 0),
            applied_since_snapshot: 0,
            ticks: 0,
            snapshot_since: BTreeMap::new(),
            conf_proposed_at: None,
            last_heard: BTreeMap::new(),
            leader_since: None,
            pending_messages: Vec::new(),
            cfg,
        };
        node.fix_election_timeout();
        node.replay_committed()?;
        Ok(node)
    }

    /// Applies the committed entries that follow the snapshot. The first Ready after a restart
    /// holds exactly them (nothing has ticked or stepped yet); the loop covers raft handing
    /// them out in several Readies. Messages (none are expected) wait for the next Ready.
    fn replay_committed(&mut self) -> Result<(), NodeError> {
        let durable_commit = self.raw.store().hard_state().commit;
        while self.state.applied_index() < durable_commit && self.raw.has_ready() {
            let before = self.state.applied_index();
            let out = self.on_ready()?;
            self.pending_messages.extend(out.messages);
            if self.state.applied_index() == before {
                break;
            }
        }
        if self.state.applied_index() < durable_commit {
            tracing::warn!(
                applied = self.state.applied_index(),
                durable_commit,
                "replay stopped short of the durable commit index"
            );
        }
        Ok(())
    }

    /// The settings this node was opened with (to reopen it from its data dir).
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The replicated state as applied on this node.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Last applied Raft index.
    pub fn applied_index(&self) -> u64 {
        self.state.applied_index()
    }

    /// Commit index known to this node.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Known leader.
    pub fn leader_id(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Raft role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Current Raft configuration.
    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Members of the configuration with (on the leader) their replication progress.
    pub fn members(&self) -> Vec<MemberStatus> {
        let cs = self.conf_state();
        let leader = self.is_leader();
        let matched = |id: u64| {
            leader
                .then(|| self.raw.raft.prs().get(id).map(|p| p.matched))
                .flatten()
        };
        let voters: BTreeSet<u64> = cs
            .voters
            .iter()
            .chain(cs.voters_outgoing.iter())
            .copied()
            .collect();
        let mut out: Vec<MemberStatus> = voters
            .into_iter()
            .map(|id| MemberStatus {
                node_id: id,
                role: MemberRole::Voter,
                matched: matched(id),
            })
            .collect();
        let learners: BTreeSet<u64> = cs.learners.iter().copied().collect();
        out.extend(learners.into_iter().map(|id| MemberStatus {
            node_id: id,
            role: MemberRole::Learner,
            matched: matched(id),
        }));
        out
    }

    /// Advances the logical clock one tick; on the leader also reconciles membership.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
        self.fix_election_timeout();
        if self.is_leader() {
            self.leader_since.get_or_insert(self.ticks);
            self.watch_snapshots();
            self.reconcile_membership();
        } else {
            self.leader_since = None;
            self.snapshot_since.clear();
        }
    }

    /// Feeds a Raft message received from a peer.
    pub fn step(&mut self, mut msg: Message) -> Result<(), NodeError> {
        if msg.get_msg_type() == MessageType::MsgHeartbeat {
            // The leader names as committed only what this node acknowledged. A commit beyond
            // our log means this node lost acknowledged entries (its WAL's final record was
            // damaged after it was acknowledged, and recovery cut it as a torn write): raft-rs
            // would panic ("to_commit is out of range") on every heartbeat. Commit what we have;
            // the leader resends the rest with its next append.
            let last = self.raw.raft.raft_log.last_index();
            if msg.commit > last {
                tracing::error!(
                    leader_commit = msg.commit,
                    last_index = last,
                    "this node lost log entries it had acknowledged (a damaged final WAL \
                     record?); catching up from the leader"
                );
                msg.commit = last;
            }
        }
        if msg.from != 0 {
            self.last_heard.insert(msg.from, self.ticks);
        }
        let r = self.raw.step(msg);
        self.fix_election_timeout();
        Ok(r?)
    }

    /// Proposes a command. Only the leader accepts; the returned index is where the entry was
    /// appended (it can still be lost if leadership changes before it commits: match results by
    /// request id and retry with the same id after a timeout).
    pub fn propose(&mut self, proposal: &Proposal) -> Result<u64, NotLeader> {
        self.ensure_leader()?;
        self.raw
            .propose(Vec::new(), proposal.encode_to_vec())
            .map_err(|_| NotLeader {
                leader_id: self.leader_id(),
            })?;
        Ok(self.raw.raft.raft_log.last_index())
    }

    /// Proposes a configuration change (the membership policy does this by itself; exposed for
    /// operator tools).
    pub fn propose_conf_change(&mut self, cc: ConfChangeV2) -> Result<(), NotLeader> {
        self.ensure_leader()?;
        self.raw
            .propose_conf_change(Vec::new(), cc)
            .map_err(|_| NotLeader {
                leader_id: self.leader_id(),
            })?;
        self.conf_proposed_at = Some(self.ticks);
        Ok(())
    }

    /// Hands leadership to `to` (used before this host leaves).
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// The transport could not reach `id`.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// The transport finished (or failed) sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
        self.snapshot_since.remove(&id);
    }

    /// Whether [`Node::on_ready`] has work.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    fn ensure_leader(&self) -> Result<(), NotLeader> {
        if self.is_leader() && self.raw.raft.lead_transferee.is_none() {
            Ok(())
        } else {
            Err(NotLeader {
                leader_id: self.leader_id().filter(|&l| l != self.id),
            })
        }
    }

    /// The one Ready loop, in raft-rs's documented order except that committed entries are
    /// applied right after (not before) persisting: take messages; apply the snapshot; persist
    /// entries + HardState (one WAL record, one fsync); apply committed entries; take persisted
    /// messages; advance; then from the LightReady: persist the commit index, take its
    /// messages, apply its committed entries; advance_apply. Finally compact if due. raft-rs
    /// lets applying run in any order with persisting; ours keeps applied ≤ durable commit.
    ///
    /// Nothing is sent from here: every message is returned in [`ReadyOutcome::messages`], and
    /// the caller sends them after this returns, so after the fsync.
    pub fn on_ready(&mut self) -> Result<ReadyOutcome, NodeError> {
        let mut out = ReadyOutcome {
            messages: std::mem::take(&mut self.pending_messages),
            ..ReadyOutcome::default()
        };
        if self.raw.has_ready() {
            let mut rd = self.raw.ready();
            // Raft lets a leader send these before persisting (thesis 10.2.1); here they leave
            // only after on_ready returns, once everything below is durable: one fsync of
            // latency on the leader, and no message ever gets ahead of this host's disk.
            // Followers' messages that depend on persisted state come in persisted_messages.
            out.messages.extend(rd.take_messages());
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                self.install_snapshot(snap, &mut out)?;
            }
            let committed = rd.take_committed_entries();
            // Persist before applying: the HardState of this Ready carries the commit index of
            // the entries applied below, and the applied index must never pass the durable
            // commit, or a restart would replay less than this host had already acted on (its
            // links would be torn down and made again). raft allows applying after persisting.
            self.raw.mut_store().persist(rd.entries(), rd.hs())?;
            self.apply_entries(committed, &mut out)?;
            out.messages.extend(rd.take_persisted_messages());
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit)?;
            }
            out.messages.extend(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply_entries(committed, &mut out)?;
            self.raw.advance_apply();
        }
        if self.raw.store().take_snapshot_request() {
            self.compact_now()?;
        } else {
            self.maybe_compact()?;
        }
        self.fix_election_timeout();
        let now = (
            self.raw.raft.term,
            self.raw.raft.state,
            self.raw.raft.leader_id,
        );
        if now != self.last_leadership {
            self.last_leadership = now;
            out.leadership = Some(Leadership {
                leader_id: self.leader_id(),
                term: now.0,
                is_self: now.1 == StateRole::Leader,
            });
        }
        out.applied_index = self.state.applied_index();
        Ok(out)
    }

    fn install_snapshot(
        &mut self,
        snap: Snapshot,
        out: &mut ReadyOutcome,
    ) -> Result<(), NodeError> {
        let new_state = State::from_snapshot_bytes(&snap.data)?;
        let index = snap.get_metadata().index;
        out.conf_state = Some(snap.get_metadata().get_conf_state().clone());
        self.raw.mut_store().apply_snapshot(snap)?;
        out.updates.extend(State::diff(&self.state, &new_state));
        self.state = new_state;
        self.state.advance_to(index);
        self.applied_since_snapshot = 0;
        out.snapshot_installed = true;
        Ok(())
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        out: &mut ReadyOutcome,
    ) -> Result<(), NodeError> {
        for e in entries {
            if e.index <= self.state.applied_index() {
                // Already covered by a snapshot installed in this Ready.
                continue;
            }
            self.applied_since_snapshot += 1;
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        // A new leader's empty entry.
                        self.state.advance_to(e.index);
                        continue;
                    }
                    match Proposal::decode(&e.data[..]) {
                        Ok(p) => {
                            let (result, updates) = self.state.apply(e.index, &p);
                            out.updates.extend(updates);
                            out.applied.push(Applied {
                                index: e.index,
                                request_id: p.request_id,
                                result,
                            });
                        }
                        Err(err) => {
                            // Every replica skips it alike, so they stay identical.
                            tracing::error!(index = e.index, %err, "undecodable proposal skipped");
                            self.state.advance_to(e.index);
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cs = if e.get_entry_type() == EntryType::EntryConfChange {
                        ConfChange::parse_from_bytes(&e.data)
                            .map_err(raft::Error::from)
                            .and_then(|cc| self.raw.apply_conf_change(&cc))
                    } else {
                        ConfChangeV2::parse_from_bytes(&e.data)
                            .map_err(raft::Error::from)
                            .and_then(|cc| self.raw.apply_conf_change(&cc))
                    };
                    match cs {
                        Ok(cs) => {
                            tracing::info!(index = e.index, ?cs, "configuration changed");
                            out.conf_state = Some(cs);
                        }
                        // Deterministic on every replica; the policy will try again.
                        Err(err) => tracing::warn!(index = e.index, %err, "conf change refused"),
                    }
                    self.conf_proposed_at = None;
                    self.state.advance_to(e.index);
                }
            }
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), NodeError> {
        if self.applied_since_snapshot < self.cfg.compact_every {
            return Ok(());
        }
        self.compact_now()
    }

    /// Snapshots the state machine at the applied index and compacts the log now.
    pub fn compact_now(&mut self) -> Result<(), NodeError> {
        let index = self.state.applied_index();
        let store = self.raw.store();
        // The durable applied index (the snapshot's) must never pass the durable commit.
        if index <= store.snapshot_index() || index > store.hard_state().commit {
            return Ok(());
        }
        let term = store.term(index)?;
        let mut snap = Snapshot {
            data: self.state.to_snapshot_bytes().into(),
            ..Default::default()
        };
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(self.conf_state());
        self.raw.mut_store().compact(snap)?;
        self.applied_since_snapshot = 0;
        Ok(())
    }

    /// raft-rs draws election timeouts from `thread_rng`; redraw them from our seeded generator
    /// whenever raft reset them, so a simulation seed replays exactly.
    fn fix_election_timeout(&mut self) {
        let r = &self.raw.raft;
        let key = (
            r.term,
            r.state,
            r.leader_id,
            r.randomized_election_timeout(),
        );
        if key == self.timeout_key {
            return;
        }
        let min = self.cfg.election_tick;
        let t = min + (xorshift(&mut self.rng) % min as u64) as usize;
        self.raw.raft.set_randomized_election_timeout(t);
        self.timeout_key = (key.0, key.1, key.2, t);
    }

    fn watch_snapshots(&mut self) {
        let now = self.ticks;
        let mut stuck = Vec::new();
        let in_snapshot: BTreeSet<u64> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(_, p)| p.state == ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_since.retain(|id, _| in_snapshot.contains(id));
        for id in in_snapshot {
            let since = *self.snapshot_since.entry(id).or_insert(now);
            if now - since >= self.cfg.snapshot_timeout_ticks {
                stuck.push(id);
            }
        }
        for id in stuck {
            // A lost snapshot message would otherwise pause the follower forever.
            self.report_snapshot(id, false);
        }
    }

    fn reconcile_membership(&mut self) {
        let raft = &self.raw.raft;
        if raft.pending_conf_index > raft.raft_log.applied || raft.lead_transferee.is_some() {
            return;
        }
        if let Some(at) = self.conf_proposed_at
            && self.ticks < at + 2 * self.cfg.election_tick as u64
        {
            return;
        }
        let cs = self.conf_state();
        let progress: BTreeMap<u64, u64> =
            raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect();
        let down = self.down_members(&cs);
        let view = MembershipView {
            self_id: self.id,
            voters: cs.voters.iter().copied().collect(),
            voters_outgoing: cs.voters_outgoing.iter().copied().collect(),
            learners: cs.learners.iter().copied().collect(),
            registered: self.state.hosts().map(|h| h.node_id).collect(),
            matched: progress,
            commit: raft.raft_log.committed,
            max_voters: self.cfg.max_voters,
            down,
        };
        match plan_membership(&view) {
            None => {}
            Some(MembershipPlan::TransferLeader(to)) => {
                tracing::info!(
                    to,
                    "handing leadership over before leaving the configuration"
                );
                self.raw.transfer_leader(to);
                self.conf_proposed_at = Some(self.ticks);
            }
            Some(plan) => {
                let cc = plan.to_conf_change();
                tracing::info!(?plan, "proposing membership change");
                if self.propose_conf_change(cc).is_err() {
                    self.conf_proposed_at = Some(self.ticks);
                }
            }
        }
    }
}

impl Node {
    /// Members (other than this node) the leader has not heard from for
    /// [`NodeConfig::member_down_ticks`]; empty on a follower.
    pub fn down_members(&self, cs: &ConfState) -> BTreeSet<u64> {
        let Some(since) = self.leader_since else {
            return BTreeSet::new();
        };
        cs.voters
            .iter()
            .chain(&cs.learners)
            .copied()
            .filter(|&id| id != self.id)
            .filter(|id| {
                let heard = self.last_heard.get(id).copied().unwrap_or(0).max(since);
                self.ticks.saturating_sub(heard) >= self.cfg.member_down_ticks
            })
            .collect()
    }
}

/// What the membership policy looks at.
#[derive(Debug, Clone, Default)]
pub struct MembershipView {
    /// The leader (caller).
    pub self_id: u64,
    /// Voters (incoming configuration).
    pub voters: BTreeSet<u64>,
    /// Outgoing voters (non-empty while in a joint configuration).
    pub voters_outgoing: BTreeSet<u64>,
    /// Learners.
    pub learners: BTreeSet<u64>,
    /// Node ids of registered hosts (the replicated host list).
    pub registered: BTreeSet<u64>,
    /// Matched index per member.
    pub matched: BTreeMap<u64, u64>,
    /// Leader's commit index.
    pub commit: u64,
    /// Most voters to promote to.
    pub max_voters: usize,
    /// Members the leader has not heard from for a while (see [`NodeConfig::member_down_ticks`]).
    pub down: BTreeSet<u64>,
}

/// A membership change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipPlan {
    /// Leave the joint configuration (empty ConfChangeV2).
    LeaveJoint,
    /// Apply these changes in one ConfChangeV2 (joint consensus if more than one).
    Change(Vec<(ConfChangeType, u64)>),
    /// The leader itself must leave: hand leadership to this voter first.
    TransferLeader(u64),
}

impl MembershipPlan {
    /// The ConfChangeV2 to propose (`TransferLeader` gives an empty one).
    pub fn to_conf_change(&self) -> ConfChangeV2 {
        let mut cc = ConfChangeV2::default();
        if let MembershipPlan::Change(changes) = self {
            for &(t, id) in changes {
                let mut s = ConfChangeSingle::default();
                s.set_change_type(t);
                s.node_id = id;
                cc.changes.push(s);
            }
        }
        cc
    }
}

/// The membership policy, a pure function (run by the leader when no change is pending):
/// 1. leave a joint configuration first;
/// 2. members whose host was removed leave (a voter is replaced by a caught-up learner in the
///    same joint change so the voter count stays odd; the leader hands over leadership before
///    removing itself);
/// 3. a down voter is demoted to learner and a live, caught-up learner promoted in its place, in
///    one joint change (the voter count stays the same and odd; the demoted host stays a member
///    and catches up as a learner when it comes back);
/// 4. registered hosts outside the configuration join as learners, one at a time;
/// 5. live, caught-up learners (matched ≥ commit) are promoted while voters < `max_voters`: one
///    when the voter count is even, two at once (joint consensus) when it is odd — 1 → 3 → 5.
pub fn plan_membership(v: &MembershipView) -> Option<MembershipPlan> {
    use ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};
    if !v.voters_outgoing.is_empty() {
        return Some(MembershipPlan::LeaveJoint);
    }
    let caught_up: Vec<u64> = v
        .learners
        .iter()
        .copied()
        .filter(|id| v.registered.contains(id) && !v.down.contains(id))
        .filter(|id| v.matched.get(id).is_some_and(|&m| m >= v.commit))
        .collect();
    if let Some(&gone) = v.learners.iter().find(|id| !v.registered.contains(id)) {
        return Some(MembershipPlan::Change(vec![(RemoveNode, gone)]));
    }
    if let Some(&gone) = v.voters.iter().find(|id| !v.registered.contains(id)) {
        if gone == v.self_id {
            let best = v
                .voters
                .iter()
                .copied()
                .filter(|&id| id != gone && v.registered.contains(&id))
                .max_by_key(|id| (v.matched.get(id).copied().unwrap_or(0), u64::MAX - id));
            return best.map(MembershipPlan::TransferLeader);
        }
        let mut changes = vec![(RemoveNode, gone)];
        if let Some(&l) = caught_up.first() {
            changes.push((AddNode, l));
        }
        return Some(MembershipPlan::Change(changes));
    }
    if let (Some(&down), Some(&live)) = (
        v.voters.iter().find(|id| v.down.contains(id)),
        caught_up.first(),
    ) {
        return Some(MembershipPlan::Change(vec![
            (AddLearnerNode, down),
            (AddNode, live),
        ]));
    }
    let members: BTreeSet<u64> = v.voters.union(&v.learners).copied().collect();
    if let Some(&new) = v.registered.iter().find(|id| !members.contains(id)) {
        return Some(MembershipPlan::Change(vec![(AddLearnerNode, new)]));
    }
    let nv = v.voters.len();
    if nv >= v.max_voters {
        return None;
    }
    if nv.is_multiple_of(2) && !caught_up.is_empty() {
        return Some(MembershipPlan::Change(vec![(AddNode, caught_up[0])]));
    }
    if nv % 2 == 1 && caught_up.len() >= 2 && nv + 2 <= v.max_voters {
        return Some(MembershipPlan::Change(vec![
            (AddNode, caught_up[0]),
            (AddNode, caught_up[1]),
        ]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};

    fn view(
        voters: &[u64],
        learners: &[u64],
        registered: &[u64],
        matched: &[(u64, u64)],
    ) -> MembershipView {
        MembershipView {
            self_id: 1,
            voters: voters.iter().copied().collect(),
            voters_outgoing: BTreeSet::new(),
            learners: learners.iter().copied().collect(),
            registered: registered.iter().copied().collect(),
            matched: matched.iter().copied().collect(),
            commit: 10,
            max_voters: 5,
            down: BTreeSet::new(),
        }
    }

    #[test]
    fn new_hosts_become_learners_then_voters_in_pairs() {
        // Registered host 2 not yet in the configuration.
        let v = view(&[1], &[], &[1, 2], &[(1, 10)]);
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![(AddLearnerNode, 2)]))
        );
        // One caught-up learner with one voter: wait for a pair.
        let v = view(&[1], &[2], &[1, 2], &[(1, 10), (2, 10)]);
        assert_eq!(plan_membership(&v), None);
        // Two learners, one lagging: wait.
        let v = view(&[1], &[2, 3], &[1, 2, 3], &[(1, 10), (2, 10), (3, 4)]);
        assert_eq!(plan_membership(&v), None);
        let v = view(&[1], &[2, 3], &[1, 2, 3], &[(1, 10), (2, 10), (3, 10)]);
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![(AddNode, 2), (AddNode, 3)]))
        );
        let v = view(
            &[1, 2, 3],
            &[4, 5, 6],
            &[1, 2, 3, 4, 5, 6],
            &[(4, 10), (5, 10), (6, 10)],
        );
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![(AddNode, 4), (AddNode, 5)]))
        );
        // Five voters: later hosts stay learners.
        let v = view(&[1, 2, 3, 4, 5], &[6], &[1, 2, 3, 4, 5, 6], &[(6, 10)]);
        assert_eq!(plan_membership(&v), None);
    }

    #[test]
    fn joint_configurations_are_left_first() {
        let mut v = view(&[1, 2, 3], &[], &[1, 2, 3], &[]);
        v.voters_outgoing = [1].into();
        assert_eq!(plan_membership(&v), Some(MembershipPlan::LeaveJoint));
        assert!(MembershipPlan::LeaveJoint.to_conf_change().leave_joint());
    }

    #[test]
    fn removed_voters_are_replaced_by_caught_up_learners() {
        let v = view(&[1, 2, 3], &[4, 5], &[1, 2, 4, 5], &[(4, 3), (5, 10)]);
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![(RemoveNode, 3), (AddNode, 5)]))
        );
        // No learner: just remove; then an even count promotes the next caught-up learner.
        let v = view(&[1, 2, 3], &[], &[1, 2], &[]);
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![(RemoveNode, 3)]))
        );
        let v = view(&[1, 2], &[7], &[1, 2, 7], &[(7, 10)]);
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![(AddNode, 7)]))
        );
        // Removed learners just go.
        let v = view(&[1], &[2], &[1], &[]);
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![(RemoveNode, 2)]))
        );
    }

    #[test]
    fn a_leaving_leader_hands_over_first() {
        let v = view(&[1, 2, 3], &[], &[2, 3], &[(2, 9), (3, 10)]);
        assert_eq!(plan_membership(&v), Some(MembershipPlan::TransferLeader(3)));
        // Last voter: nothing to hand over to.
        let v = view(&[1], &[], &[], &[]);
        assert_eq!(plan_membership(&v), None);
    }

    #[test]
    fn a_down_voter_is_swapped_for_a_live_caught_up_learner() {
        let all = [1, 2, 3, 4, 5, 6, 7];
        let caught_up: Vec<(u64, u64)> = all.iter().map(|&id| (id, 10)).collect();
        let mut v = view(&[1, 2, 3, 4, 5], &[6, 7], &all, &caught_up);
        v.down = [3].into();
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![
                (AddLearnerNode, 3),
                (AddNode, 6)
            ]))
        );
        // A down learner is not the replacement.
        v.down = [3, 6].into();
        assert_eq!(
            plan_membership(&v),
            Some(MembershipPlan::Change(vec![
                (AddLearnerNode, 3),
                (AddNode, 7)
            ]))
        );
        // Nobody live to promote: the down voter stays (demoting it alone would leave four
        // voters, which tolerate no more failures than five with one down).
        v.down = [3, 6, 7].into();
        assert_eq!(plan_membership(&v), None);
        // A lagging learner is no replacement either.
        let mut v = view(&[1, 2, 3], &[4], &[1, 2, 3, 4], &[(1, 10), (2, 10), (4, 3)]);
        v.down = [2].into();
        assert_eq!(plan_membership(&v), None);
        // Down learners are not promoted to grow the voter set.
        let mut v = view(&[1], &[2, 3], &[1, 2, 3], &[(1, 10), (2, 10), (3, 10)]);
        v.down = [3].into();
        assert_eq!(plan_membership(&v), None);
    }

    #[test]
    fn raft_messages_round_trip_and_garbage_errors() {
        let m = Message {
            to: 3,
            term: 9,
            ..Default::default()
        };
        let b = encode_raft_message(&m).unwrap();
        assert_eq!(decode_raft_message(&b).unwrap(), m);
        assert!(decode_raft_message(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
