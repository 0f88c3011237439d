//! Deterministic in-memory cluster simulation: N real `Node`s (each with its own data dir), a
//! seeded RNG, a virtual clock and a lossy, reordering message queue. No sockets, no sleeps.
//!
//! Each seed runs: bootstrap + joins (learner → voter promotion), a random workload with drops
//! and reorders, a partition of the leader (the majority elects a new leader and serves
//! writes; the minority's proposals time out and are retried with the same request id), heal,
//! a crash + restart of the leader from its data dir, a failing data dir on one node (ENOSPC
//! mid-write or at fsync, sometimes with the cut-back failing too: the node drops out as the
//! agent's driver drops it, and is reopened from disk once writes work), then quiescence and
//! checks (right after the joins it also runs the peer TLS commands: `InitTls`, every host's
//! `SetHostKey`, `RotateCa`, `ReportTls`, `SetJoinKey`, `FinishCaRotation`): identical
//! replicas, every acknowledged write present, no IPv4 twice per network, no VNI twice, at most
//! one leader per term, every retried request applied once. A second scenario kills two of five
//! voters for good and checks that the leader swaps them for live learners.
//!
//! Past 800 lines, one job: the simulator and the scenarios it runs share every helper.
//!
//! `VXNET_SIM_SEEDS=n` sets the number of seeds per test (default 200);
//! `VXNET_SIM_SEED=s` replays one seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU64, Ordering};

use raft::StateRole;
use raft::eraftpb::Message;
use vxnet_controlplane::node::{Node, NodeConfig, discard_logger};
use vxnet_controlplane::storage::{FaultPoint, StorageOptions, WriteFault};
use vxnet_proto::{
    CaCert, Command, ConnectEndpoint, CreateNetwork, DisconnectEndpoint, Empty, ErrorKind,
    FinishCaRotation, InitTls, Proposal, RegisterHost, RemoveHost, ReportTls, ReserveAddress,
    RotateCa, SetHostKey, SetJoinKey, command, response,
};

/// Simulation steps per Raft tick (message latency is counted in steps).
const STEPS_PER_TICK: u64 = 4;
const CLUSTER_ID: u64 = 0xC1;

/// Evidence that the interesting paths ran (printed per test).
static SNAPSHOTS_INSTALLED: AtomicU64 = AtomicU64::new(0);
static RETRIED_REQUESTS: AtomicU64 = AtomicU64::new(0);
static STORAGE_FAILURES: AtomicU64 = AtomicU64::new(0);

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Register {
        host: String,
    },
    Remove {
        host: String,
    },
    Create {
        name: String,
    },
    Connect {
        net: String,
        sandbox: String,
    },
    Disconnect {
        net: String,
        sandbox: String,
    },
    /// A runtime's IPAM reserving an address on a host.
    Reserve {
        net: String,
        host: String,
    },
    /// A peer TLS command (level 2), proposed as it is.
    Tls {
        cmd: Box<command::Kind>,
    },
}

#[derive(Debug)]
struct Req {
    id: Vec<u8>,
    kind: Kind,
    cmd: command::Kind,
    /// Node whose own apply answers the client (read-your-writes).
    contacted: Option<u64>,
    deadline: u64,
    attempts: u32,
    result: Option<response::Kind>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    root: tempfile::TempDir,
    nodes: BTreeMap<u64, Option<Node>>,
    host_of: BTreeMap<u64, String>,
    /// (deliver at step, message)
    queue: Vec<(u64, Message)>,
    step: u64,
    drop_p: f64,
    max_delay: u64,
    /// Nodes cut off from everyone outside the set.
    minority: BTreeSet<u64>,
    reqs: Vec<Req>,
    by_id: BTreeMap<Vec<u8>, usize>,
    next_req: u64,
    leaders: BTreeMap<u64, u64>,
    compact_every: u64,
    counter: u64,
    acked_during_partition: usize,
    /// Each node's write-fault switch (kept across restarts of the node).
    faults: RefCell<BTreeMap<u64, WriteFault>>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let drop_p = [0.0, 0.02, 0.05, 0.1][rng.below(4) as usize];
        let max_delay = 1 + rng.below(6);
        let compact_every = 20 + rng.below(60);
        Sim {
            seed,
            rng,
            root: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
            host_of: BTreeMap::new(),
            queue: Vec::new(),
            step: 0,
            drop_p,
            max_delay,
            minority: BTreeSet::new(),
            reqs: Vec::new(),
            by_id: BTreeMap::new(),
            next_req: 0,
            leaders: BTreeMap::new(),
            compact_every,
            counter: 0,
            acked_during_partition: 0,
            faults: RefCell::new(BTreeMap::new()),
        }
    }

    fn cfg(&self, id: u64) -> NodeConfig {
        let mut c = NodeConfig::new(self.root.path().join(format!("n{id}")));
        c.storage = StorageOptions {
            fsync: false,
            fault: Some(self.fault(id)),
        };
        c.compact_every = self.compact_every;
        c.snapshot_timeout_ticks = 20;
        c.rng_seed = self.seed ^ (id << 32);
        c.logger = discard_logger();
        c
    }

    fn fault(&self, id: u64) -> WriteFault {
        self.faults.borrow_mut().entry(id).or_default().clone()
    }

    fn tick_now(&self) -> u64 {
        self.step / STEPS_PER_TICK
    }

    fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn node(&mut self, id: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&id).and_then(|n| n.as_mut())
    }

    fn linked(&self, a: u64, b: u64) -> bool {
        self.minority.contains(&a) == self.minority.contains(&b)
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.as_ref().map(|n| (*id, n)))
            .filter(|(_, n)| n.role() == StateRole::Leader)
            .max_by_key(|(_, n)| n.term())
            .map(|(id, _)| id)
    }

    fn bootstrap(&mut self) {
        let host = RegisterHost {
            name: "h1".into(),
            underlay: "192.168.0.1".into(),
            peer_addr: "192.168.0.1:7946".into(),
            ..Default::default()
        };
        let n = Node::bootstrap(self.cfg(1), CLUSTER_ID, host).unwrap();
        self.nodes.insert(1, Some(n));
        self.host_of.insert(1, "h1".into());
    }

    fn submit(&mut self, kind: Kind) {
        self.next_req += 1;
        let id = format!("req-{}-{}", self.seed, self.next_req).into_bytes();
        self.counter += 1;
        let hex = |n: u64| format!("{:064x}", n);
        let cmd = match &kind {
            Kind::Register { host } => {
                let i: u64 = host[1..].parse().unwrap();
                command::Kind::RegisterHost(RegisterHost {
                    name: host.clone(),
                    underlay: format!("192.168.0.{i}"),
                    peer_addr: format!("192.168.0.{i}:7946"),
                    ..Default::default()
                })
            }
            Kind::Remove { host } => command::Kind::RemoveHost(RemoveHost { name: host.clone() }),
            Kind::Create { name } => command::Kind::CreateNetwork(CreateNetwork {
                name: name.clone(),
                id: hex(self.seed << 20 | self.counter),
                created_unix_ms: self.step,
                ..Default::default()
            }),
            Kind::Connect { net, sandbox } => {
                let host_ids: Vec<u64> = self.host_of.keys().copied().collect();
                let h = host_ids[self.rng.below(host_ids.len() as u64) as usize];
                command::Kind::ConnectEndpoint(ConnectEndpoint {
                    network: net.clone(),
                    host: self.host_of[&h].clone(),
                    sandbox: sandbox.clone(),
                    name: sandbox.clone(),
                    endpoint_id: hex(self.seed << 20 | self.counter),
                    ..Default::default()
                })
            }
            Kind::Disconnect { net, sandbox } => {
                command::Kind::DisconnectEndpoint(DisconnectEndpoint {
                    network: net.clone(),
                    sandbox: sandbox.clone(),
                    host: String::new(),
                    force: true,
                    ..Default::default()
                })
            }
            Kind::Reserve { net, host } => command::Kind::ReserveAddress(ReserveAddress {
                network: net.clone(),
                host: host.clone(),
                ipv4: None,
            }),
            Kind::Tls { cmd } => (**cmd).clone(),
        };
        self.by_id.insert(id.clone(), self.reqs.len());
        self.reqs.push(Req {
            id,
            kind,
            cmd,
            contacted: None,
            deadline: 0,
            attempts: 0,
            result: None,
        });
        let i = self.reqs.len() - 1;
        self.attempt(i);
    }

    /// A client asks a random live member; a non-leader forwards to the leader it knows (if
    /// the link works). The client is answered when the contacted node has applied the request.
    fn attempt(&mut self, i: usize) {
        let members: Vec<u64> = self
            .live()
            .into_iter()
            .filter(|id| self.host_of.contains_key(id))
            .collect();
        let x = members[self.rng.below(members.len() as u64) as usize];
        let p = Proposal {
            request_id: self.reqs[i].id.clone(),
            command: Some(Command {
                kind: Some(self.reqs[i].cmd.clone()),
            }),
        };
        self.reqs[i].contacted = Some(x);
        self.reqs[i].attempts += 1;
        self.reqs[i].deadline = self.tick_now() + 25;
        let drop = self.rng.chance(self.drop_p);
        let Some(node) = self.node(x) else { return };
        match node.propose(&p) {
            Ok(_) => {}
            Err(nl) => {
                if let Some(l) = nl.leader_id
                    && self.linked(x, l)
                    && !drop
                    && let Some(ln) = self.node(l)
                {
                    let _ = ln.propose(&p);
                }
            }
        }
    }

    fn run_step(&mut self) {
        self.step += 1;
        if self.step.is_multiple_of(STEPS_PER_TICK) {
            for id in self.live() {
                self.node(id).unwrap().tick();
            }
            let now = self.tick_now();
            for i in 0..self.reqs.len() {
                if self.reqs[i].result.is_none() && self.reqs[i].deadline <= now {
                    self.attempt(i);
                }
            }
        }
        // Deliver due messages in random order (reordering within and across steps).
        let now = self.step;
        let mut due = Vec::new();
        let mut rest = Vec::new();
        for (at, m) in self.queue.drain(..) {
            if at <= now {
                due.push(m);
            } else {
                rest.push((at, m));
            }
        }
        self.queue = rest;
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        let trace = std::env::var_os("VXNET_SIM_TRACE").is_some();
        for m in due {
            if !self.linked(m.from, m.to) || self.rng.chance(self.drop_p) {
                continue;
            }
            if trace && !self.minority.is_empty() {
                use raft::eraftpb::MessageType::*;
                if matches!(
                    m.get_msg_type(),
                    MsgRequestVote
                        | MsgRequestVoteResponse
                        | MsgRequestPreVote
                        | MsgRequestPreVoteResponse
                ) {
                    eprintln!(
                        "step {} {:?} {}->{} term {} reject {} logterm {} index {}",
                        self.step,
                        m.get_msg_type(),
                        m.from,
                        m.to,
                        m.term,
                        m.reject,
                        m.log_term,
                        m.index
                    );
                }
            }
            if let Some(n) = self.node(m.to) {
                let _ = n.step(m);
            }
        }
        for id in self.live() {
            self.drain_ready(id);
        }
        self.check_leaders();
    }

    fn drain_ready(&mut self, id: u64) {
        for _ in 0..16 {
            let tick = self.step / STEPS_PER_TICK;
            let injected = self.fault(id).get().is_some();
            let n = self.node(id).unwrap();
            let out = match n.on_ready() {
                Ok(out) => out,
                Err(e) if injected => {
                    // What the agent's driver does: drop the node, acknowledge nothing more.
                    let _ = e;
                    STORAGE_FAILURES.fetch_add(1, Ordering::Relaxed);
                    self.nodes.insert(id, None);
                    return;
                }
                Err(e) => panic!("node {id}: {e}"),
            };
            let has_more = n.has_ready();
            if out.snapshot_installed {
                SNAPSHOTS_INSTALLED.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(l) = &out.leadership
                && std::env::var_os("VXNET_SIM_TRACE").is_some()
            {
                eprintln!(
                    "tick {} n{id}: {:?} term {} leader {:?} minority {:?}",
                    tick,
                    n.role(),
                    l.term,
                    l.leader_id,
                    self.minority
                );
            }
            for m in out.messages {
                let delay = if self.rng.chance(0.05) {
                    self.rng.below(3 * STEPS_PER_TICK)
                } else {
                    self.rng.below(self.max_delay)
                };
                // A snapshot may also be lost: the node's watchdog must recover from that.
                self.queue.push((self.step + 1 + delay, m));
            }
            for a in out.applied {
                let Some(&i) = self.by_id.get(&a.request_id) else {
                    continue;
                };
                if self.reqs[i].contacted != Some(id) || self.reqs[i].result.is_some() {
                    continue;
                }
                let kind = self.reqs[i].kind.clone();
                // Removing a host removes its endpoints: a connect or disconnect racing with
                // that is refused, rightly. Anything else must succeed (names are unique, so a
                // retried request applied twice would fail here).
                let on_removed_host = self.on_removed_host(&kind);
                let r = match a.result {
                    Ok(r) => r.kind.unwrap(),
                    Err(e) if on_removed_host && e.kind == ErrorKind::NotFound => {
                        response::Kind::Noop(Empty {})
                    }
                    Err(e) => panic!(
                        "request {:?} ({kind:?}) failed after {} attempts: {e}",
                        String::from_utf8_lossy(&a.request_id),
                        self.reqs[i].attempts
                    ),
                };
                if let (Kind::Register { .. }, response::Kind::HostRegistered(h)) = (&kind, &r) {
                    let n = Node::join(self.cfg(h.node_id), CLUSTER_ID, h.node_id).unwrap();
                    self.nodes.insert(h.node_id, Some(n));
                    self.host_of.insert(h.node_id, h.name.clone());
                }
                if let Kind::Remove { host } = &kind {
                    self.host_of.retain(|_, h| h != host);
                }
                if !self.minority.is_empty() {
                    self.acked_during_partition += 1;
                }
                if self.reqs[i].attempts > 1 {
                    RETRIED_REQUESTS.fetch_add(1, Ordering::Relaxed);
                }
                self.reqs[i].result = Some(r);
            }
            if !has_more {
                break;
            }
        }
    }

    fn on_removed_host(&self, kind: &Kind) -> bool {
        let removed: BTreeSet<&str> = self
            .reqs
            .iter()
            .filter_map(|r| match &r.kind {
                Kind::Remove { host } => Some(host.as_str()),
                _ => None,
            })
            .collect();
        let sb = match kind {
            Kind::Connect { sandbox, .. } | Kind::Disconnect { sandbox, .. } => sandbox,
            Kind::Reserve { host, .. } => return removed.contains(host.as_str()),
            _ => return false,
        };
        self.reqs
            .iter()
            .any(|r| match (&r.kind, &r.cmd, &r.result) {
                (Kind::Connect { sandbox, .. }, command::Kind::ConnectEndpoint(c), _)
                    if sandbox == sb =>
                {
                    removed.contains(c.host.as_str())
                }
                _ => false,
            })
    }

    fn check_leaders(&mut self) {
        for (id, n) in &self.nodes {
            if let Some(n) = n
                && n.role() == StateRole::Leader
            {
                let prev = *self.leaders.entry(n.term()).or_insert(*id);
                assert_eq!(prev, *id, "two leaders in term {}", n.term());
            }
        }
    }

    fn run_ticks(&mut self, ticks: u64, workload: bool) {
        for _ in 0..ticks * STEPS_PER_TICK {
            self.run_step();
            if workload && self.step.is_multiple_of(STEPS_PER_TICK) {
                self.workload();
            }
        }
    }

    fn run_until(&mut self, max_ticks: u64, what: &str, mut cond: impl FnMut(&Sim) -> bool) {
        for _ in 0..max_ticks * STEPS_PER_TICK {
            if cond(self) {
                return;
            }
            self.run_step();
        }
        panic!("timed out waiting for {what}: {}", self.describe());
    }

    fn pending(&self) -> usize {
        self.reqs.iter().filter(|r| r.result.is_none()).count()
    }

    fn workload(&mut self) {
        if self.pending() >= 6 || !self.rng.chance(0.3) {
            return;
        }
        let nets: Vec<String> = self
            .reqs
            .iter()
            .filter_map(|r| match (&r.kind, &r.result) {
                (Kind::Create { name }, Some(_)) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let roll = self.rng.below(10);
        if nets.is_empty() || (roll == 0 && nets.len() < 8) {
            let name = format!("net{}", self.next_req);
            self.submit(Kind::Create { name });
        } else if roll < 7 {
            let net = nets[self.rng.below(nets.len() as u64) as usize].clone();
            let sandbox = format!("c{}", self.next_req);
            self.submit(Kind::Connect { net, sandbox });
        } else if roll == 7 {
            let net = nets[self.rng.below(nets.len() as u64) as usize].clone();
            let hosts: Vec<String> = self.host_of.values().cloned().collect();
            let host = hosts[self.rng.below(hosts.len() as u64) as usize].clone();
            self.submit(Kind::Reserve { net, host });
        } else {
            // Disconnect an acknowledged endpoint nobody is disconnecting yet.
            let gone: BTreeSet<String> = self
                .reqs
                .iter()
                .filter_map(|r| match &r.kind {
                    Kind::Disconnect { sandbox, .. } => Some(sandbox.clone()),
                    _ => None,
                })
                .collect();
            let cands: Vec<(String, String)> = self
                .reqs
                .iter()
                .filter_map(|r| match (&r.kind, &r.result) {
                    (Kind::Connect { net, sandbox }, Some(_)) if !gone.contains(sandbox) => {
                        Some((net.clone(), sandbox.clone()))
                    }
                    _ => None,
                })
                .collect();
            if !cands.is_empty() {
                let (net, sandbox) = cands[self.rng.below(cands.len() as u64) as usize].clone();
                self.submit(Kind::Disconnect { net, sandbox });
            }
        }
    }

    fn voters_of_leader(&self) -> Option<(usize, usize)> {
        let l = self.leader()?;
        let cs = self.nodes[&l].as_ref()?.conf_state();
        Some((cs.voters.len(), cs.learners.len()))
    }

    fn crash(&mut self, id: u64) {
        self.nodes.insert(id, None);
    }

    fn restart(&mut self, id: u64) {
        let n = Node::open(self.cfg(id)).unwrap_or_else(|e| panic!("restart {id}: {e}"));
        self.nodes.insert(id, Some(n));
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "seed {} step {} drop {} delay {} minority {:?} pending {}\n",
            self.seed,
            self.step,
            self.drop_p,
            self.max_delay,
            self.minority,
            self.pending()
        );
        for (id, n) in &self.nodes {
            match n {
                Some(n) => s.push_str(&format!(
                    "  n{id}: {:?} term {} leader {:?} commit {} applied {} conf {:?}/{:?}\n",
                    n.role(),
                    n.term(),
                    n.leader_id(),
                    n.commit_index(),
                    n.applied_index(),
                    n.conf_state().voters,
                    n.conf_state().learners
                )),
                None => s.push_str(&format!("  n{id}: down\n")),
            }
        }
        s
    }

    fn converged(&self) -> bool {
        let live: Vec<&Node> = self.nodes.values().filter_map(|n| n.as_ref()).collect();
        let Some(l) = self.leader() else { return false };
        let lc = self.nodes[&l].as_ref().unwrap().commit_index();
        // The same configuration, whatever the order its lists were built in (a node that
        // applied a snapshot lists learners in another order than one that applied the changes).
        let conf = |n: &Node| {
            let cs = n.conf_state();
            let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
            (
                set(&cs.voters),
                set(&cs.learners),
                set(&cs.voters_outgoing),
                set(&cs.learners_next),
                cs.auto_leave,
            )
        };
        self.pending() == 0
            && live
                .iter()
                .all(|n| n.applied_index() == lc && conf(n) == conf(live[0]))
    }

    /// Final checks.
    fn check(&self) {
        let live: Vec<(u64, &Node)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| n.as_ref().map(|n| (*id, n)))
            .collect();
        let reference = live[0].1.state().to_snapshot_bytes();
        for (id, n) in &live {
            assert!(
                n.state().to_snapshot_bytes() == reference,
                "replica n{id} differs from n{}",
                live[0].0
            );
        }
        let st = live[0].1.state();
        // No VNI twice; no address twice per network.
        let mut vnis = BTreeSet::new();
        for net in st.networks() {
            assert!(vnis.insert(net.vni), "VNI {} twice", net.vni);
            let eps = st.endpoints_of(&net.id).unwrap();
            let ips: BTreeSet<&str> = eps.iter().map(|e| e.ipv4.as_str()).collect();
            assert_eq!(ips.len(), eps.len(), "duplicate address in {}", net.name);
            // Reservations hold addresses no (CLI) endpoint has.
            for r in st.reservations().filter(|r| r.network_id == net.id) {
                assert!(
                    !ips.contains(r.ipv4.as_str()),
                    "reserved address {} given to an endpoint",
                    r.ipv4
                );
            }
        }
        // Every acknowledged write is present (unless acknowledged-removed later).
        let disconnected: BTreeSet<&str> = self
            .reqs
            .iter()
            .filter_map(|r| match (&r.kind, &r.result) {
                (Kind::Disconnect { sandbox, .. }, Some(_)) => Some(sandbox.as_str()),
                _ => None,
            })
            .collect();
        let removed: BTreeSet<&str> = self
            .reqs
            .iter()
            .filter_map(|r| match &r.kind {
                Kind::Remove { host } => Some(host.as_str()),
                _ => None,
            })
            .collect();
        for r in &self.reqs {
            match r.result.as_ref().expect("all requests acknowledged") {
                response::Kind::NetworkCreated(n) => {
                    // The allocator cursor moves on as endpoints connect.
                    let mut now = st.resolve_network(&n.id).unwrap().clone();
                    now.ipam_cursor = n.ipam_cursor;
                    assert_eq!(&now, n);
                }
                response::Kind::EndpointConnected(e) => {
                    let found = st.endpoints().find(|x| x.id == e.id);
                    if disconnected.contains(e.sandbox.as_str()) {
                        assert!(
                            found.is_none(),
                            "disconnected endpoint {} still there",
                            e.name
                        );
                    } else if st.host(&e.host).is_some() {
                        assert_eq!(found, Some(e), "acknowledged endpoint lost");
                    }
                }
                response::Kind::HostRegistered(h) if !removed.contains(h.name.as_str()) => {
                    // Its pin and certificate report were set after the registration.
                    let now = st.host(&h.name).map(|x| vxnet_proto::Host {
                        key_sha256: h.key_sha256.clone(),
                        cert_ca_generation: h.cert_ca_generation,
                        cert_not_after_unix_ms: h.cert_not_after_unix_ms,
                        ..x.clone()
                    });
                    assert_eq!(now.as_ref(), Some(h));
                }
                response::Kind::HostRemoved(h) => assert!(st.host(&h.name).is_none()),
                response::Kind::AddressReserved(r) if !removed.contains(r.host.as_str()) => {
                    assert!(
                        st.reservations().any(|x| x == r),
                        "acknowledged reservation {} lost",
                        r.ipv4
                    );
                }
                _ => {}
            }
        }
        // The Raft configuration follows the host list.
        let cs = live[0].1.conf_state();
        let members: BTreeSet<u64> = cs.voters.iter().chain(&cs.learners).copied().collect();
        let registered: BTreeSet<u64> = st.hosts().map(|h| h.node_id).collect();
        assert_eq!(members, registered);
        assert!(cs.voters.len() % 2 == 1, "even voter count {:?}", cs.voters);
    }
}

/// A simulation of `hosts` hosts: h1 bootstraps and leads, the others' joins are submitted
/// (retried like any request).
fn bootstrapped(seed: u64, hosts: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.bootstrap();
    sim.run_until(50, "bootstrap leader", |s| s.leader() == Some(1));
    for i in 2..=hosts {
        sim.submit(Kind::Register {
            host: format!("h{i}"),
        });
    }
    sim
}

fn scenario(seed: u64, hosts: u64) {
    let mut sim = bootstrapped(seed, hosts);
    let m = hosts.min(5) as usize;
    let want_voters = if m.is_multiple_of(2) { m - 1 } else { m };
    sim.run_until(600, "joins and promotion", |s| {
        s.pending() == 0
            && s.voters_of_leader() == Some((want_voters, hosts as usize - want_voters))
    });

    // Peer TLS: the CA, every host's pin, a CA rotation finished once every host reports the
    // new generation, a new join key; through the same lossy, retrying clients.
    tls_setup(&mut sim);

    // Random workload with drops and reorders.
    sim.run_ticks(60, true);

    // Partition the leader (plus one more node out of five) away from the majority.
    let old = sim.leader().expect("a leader before the partition");
    let old_term = sim.nodes[&old].as_ref().unwrap().term();
    sim.minority.insert(old);
    if hosts >= 5 {
        let other = sim.live().into_iter().find(|&id| id != old).unwrap();
        sim.minority.insert(other);
    }
    sim.acked_during_partition = 0;
    sim.run_ticks(30, true);
    sim.run_until(600, "a new leader in the majority", |s| {
        s.leader().is_some_and(|l| {
            !s.minority.contains(&l) && s.nodes[&l].as_ref().unwrap().term() > old_term
        })
    });
    sim.run_ticks(30, true);
    // The majority served writes while the old leader's proposals stayed uncommitted.
    sim.run_until(200, "a write during the partition", |s| {
        s.acked_during_partition > 0 || s.pending() == 0
    });
    sim.minority.clear();
    sim.run_ticks(40, true);

    // Crash and restart the leader from its data dir.
    let l = sim.leader().expect("a leader after healing");
    sim.crash(l);
    sim.run_ticks(40, true);
    sim.restart(l);
    sim.run_ticks(40, true);

    // One node's data dir fails while the workload runs; it comes back once writes work.
    let live = sim.live();
    let victim = match sim.leader() {
        Some(l) if sim.rng.chance(0.5) => l,
        _ => live[sim.rng.below(live.len() as u64) as usize],
    };
    let fault = sim.fault(victim);
    let point = [FaultPoint::Write, FaultPoint::Sync][sim.rng.below(2) as usize];
    fault.set_at(Some(std::io::ErrorKind::StorageFull), point);
    fault.fail_repairs(sim.rng.chance(0.3));
    sim.run_ticks(40, true);
    fault.set(None);
    fault.fail_repairs(false);
    if sim.nodes[&victim].is_none() {
        sim.restart(victim);
    }
    sim.run_ticks(40, true);

    // With six hosts: remove a non-leader voter; a learner replaces it.
    if hosts == 6 {
        let leader = sim.leader().unwrap_or(1);
        let cs = sim.nodes[&leader].as_ref().unwrap().conf_state();
        let victim = *cs.voters.iter().find(|&&v| v != leader).unwrap();
        let host = sim.host_of[&victim].clone();
        sim.submit(Kind::Remove { host });
        sim.run_until(600, "removal", |s| {
            s.pending() == 0
                && s.leader()
                    .and_then(|l| s.nodes[&l].as_ref())
                    .is_some_and(|n| {
                        let cs = n.conf_state();
                        cs.voters.len() == 5
                            && !cs.voters.contains(&victim)
                            && !cs.learners.contains(&victim)
                    })
        });
        sim.crash(victim);
        sim.nodes.remove(&victim);
    }

    // Quiesce without drops and check.
    sim.drop_p = 0.0;
    sim.run_until(2000, "convergence", |s| s.converged());
    sim.run_ticks(5, false);
    sim.check();
    tls_check(&sim);
}

fn ca(generation: u32) -> CaCert {
    CaCert {
        generation,
        cert: vec![0x30, generation as u8, 0x01],
    }
}

fn pin_of(node_id: u64) -> Vec<u8> {
    vec![node_id as u8; 32]
}

/// Proposes the peer TLS commands (as the agents would) and waits for them: each step waits
/// for the previous one's acknowledgement, as the agent's would.
fn tls_setup(sim: &mut Sim) {
    let wait = |sim: &mut Sim, what: &str| sim.run_until(600, what, |s| s.pending() == 0);
    sim.submit(Kind::Tls {
        cmd: Box::new(command::Kind::InitTls(InitTls {
            ca: Some(ca(1)),
            ca_key: vec![0xA1; 120],
            join_key: vec![0x11; 16],
            unix_ms: sim.step,
        })),
    });
    wait(sim, "InitTls");
    let hosts: Vec<(u64, String)> = sim.host_of.iter().map(|(i, h)| (*i, h.clone())).collect();
    for (id, host) in &hosts {
        sim.submit(Kind::Tls {
            cmd: Box::new(command::Kind::SetHostKey(SetHostKey {
                host: host.clone(),
                node_id: *id,
                key_sha256: pin_of(*id),
            })),
        });
    }
    sim.submit(Kind::Tls {
        cmd: Box::new(command::Kind::RotateCa(RotateCa {
            ca: Some(ca(2)),
            ca_key: vec![0xA2; 120],
            cross_cert: vec![0x30, 0xCC],
        })),
    });
    wait(sim, "SetHostKey and RotateCa");
    for (_, host) in &hosts {
        sim.submit(Kind::Tls {
            cmd: Box::new(command::Kind::ReportTls(ReportTls {
                host: host.clone(),
                ca_generation: 2,
                not_after_unix_ms: 1_000_000,
            })),
        });
    }
    sim.submit(Kind::Tls {
        cmd: Box::new(command::Kind::SetJoinKey(SetJoinKey {
            join_key: vec![0x22; 16],
            unix_ms: sim.step,
        })),
    });
    wait(sim, "ReportTls and SetJoinKey");
    sim.submit(Kind::Tls {
        cmd: Box::new(command::Kind::FinishCaRotation(FinishCaRotation {
            generation: 2,
            force: false,
        })),
    });
    wait(sim, "FinishCaRotation");
}

/// After [`tls_setup`] and the rest of the scenario (replicas already checked identical).
fn tls_check(sim: &Sim) {
    let (_, n) = sim
        .nodes
        .iter()
        .find_map(|(id, n)| n.as_ref().map(|n| (*id, n)))
        .expect("a live node");
    let st = n.state();
    assert_eq!(st.trusted_cas(), &[ca(2)]);
    assert_eq!(
        st.signer().map(|(c, k)| (c.generation, k.len())),
        Some((2, 120))
    );
    assert_eq!(st.join_key(), Some(&[0x22; 16][..]));
    assert_eq!(st.cross_cert(), None);
    for h in st.hosts() {
        assert_eq!(h.key_sha256, pin_of(h.node_id), "pin of {}", h.name);
        assert_eq!(h.cert_ca_generation, 2, "generation of {}", h.name);
    }
    assert_eq!(st.pins().len(), st.hosts().count());
}

/// Seven hosts (five voters, two learners); the leader and one more voter die for good. The
/// three live voters elect a leader and keep serving writes; after `member_down_ticks` it
/// swaps each dead voter for a live learner, so five live voters again tolerate two more
/// failures. The dead come back as learners and catch up.
fn dead_voters_replaced(seed: u64, hosts: u64) {
    let mut sim = bootstrapped(seed, hosts);
    sim.run_until(600, "joins and promotion", |s| {
        s.pending() == 0 && s.voters_of_leader() == Some((5, hosts as usize - 5))
    });
    sim.run_ticks(30, true);

    let leader = sim.leader().expect("a leader");
    let cs = sim.nodes[&leader].as_ref().unwrap().conf_state();
    let other = *cs.voters.iter().find(|&&v| v != leader).unwrap();
    let dead = [leader, other];
    for id in dead {
        sim.crash(id);
    }
    sim.run_until(1000, "dead voters replaced by live learners", |s| {
        s.leader()
            .and_then(|l| s.nodes[&l].as_ref())
            .is_some_and(|n| {
                let cs = n.conf_state();
                cs.voters_outgoing.is_empty()
                    && cs.voters.len() == 5
                    && dead.iter().all(|d| cs.learners.contains(d))
            })
    });
    // Writes go on with the new voters; nothing acknowledged was lost.
    sim.run_ticks(40, true);
    sim.run_until(600, "requests acknowledged", |s| s.pending() == 0);

    for id in dead {
        sim.restart(id);
    }
    sim.drop_p = 0.0;
    sim.run_until(2000, "convergence", |s| s.converged());
    sim.run_ticks(5, false);
    sim.check();
    let l = sim.leader().expect("a leader");
    let cs = sim.nodes[&l].as_ref().unwrap().conf_state();
    assert_eq!(cs.voters.len(), 5, "{:?}", cs);
}

/// Seeds encode the host count in their last three digits, so a printed seed replays alone.
fn run_seeds(name: &str, default: u64, hosts: u64) {
    run_seeds_of(name, default, hosts, scenario);
}

fn run_seeds_of(name: &str, default: u64, hosts: u64, scenario: fn(u64, u64)) {
    let seeds: Vec<u64> = match std::env::var("VXNET_SIM_SEED") {
        Ok(s) => {
            let seed: u64 = s.parse().expect("VXNET_SIM_SEED is a number");
            if seed % 1000 != hosts {
                return;
            }
            vec![seed]
        }
        Err(_) => {
            let n = std::env::var("VXNET_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default);
            (1..=n).map(|s| s * 1000 + hosts).collect()
        }
    };
    let started = std::time::Instant::now();
    for &seed in &seeds {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| scenario(seed, hosts))) {
            eprintln!("{name}: FAILED with seed {seed}; replay with VXNET_SIM_SEED={seed}");
            resume_unwind(e);
        }
    }
    eprintln!(
        "{name}: {} seeds in {:?} (all tests so far: {} snapshots installed, {} retried \
         requests, {} storage failures survived)",
        seeds.len(),
        started.elapsed(),
        SNAPSHOTS_INSTALLED.load(Ordering::Relaxed),
        RETRIED_REQUESTS.load(Ordering::Relaxed),
        STORAGE_FAILURES.load(Ordering::Relaxed)
    );
}

#[test]
fn three_nodes() {
    run_seeds("three_nodes", 200, 3);
}

#[test]
fn five_nodes() {
    run_seeds("five_nodes", 200, 5);
}

#[test]
fn six_hosts_with_removal() {
    run_seeds("six_hosts_with_removal", 200, 6);
}

#[test]
fn seven_hosts_two_voters_die() {
    run_seeds_of("seven_hosts_two_voters_die", 50, 7, dead_voters_replaced);
}
