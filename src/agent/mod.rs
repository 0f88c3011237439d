//! The host agent: runs the Raft node, serves the CLI and the peers, and keeps this host's links
//! and forwarding table in step with the replicated state.

mod admission;
pub mod dns;
pub mod driver;
pub mod fibsync;
pub mod gateway;
pub mod links;
pub mod metrics;
mod opening;
mod queries;
pub mod runtimes;
pub mod server;
pub mod starting;
mod tls;
mod tls_api;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;
use vxnet_controlplane::node::NodeError;
use vxnet_controlplane::state::{ApplyError, ApplyResult};
use vxnet_controlplane::transport::{self, Inbound, Transport, TransportConfig, TransportError};
use vxnet_dataplane::fdb::Fib;
use vxnet_dataplane::io::{DataPlane, DataPlaneConfig, IoError, Netlink};
use vxnet_dataplane::stats::StatsRegistry;
use vxnet_proto::{
    Command, ErrorKind, ForwardRequest, ForwardResponse, JoinRequest, JoinResponse, NotLeader,
    Proposal, Response, command, forward_response, join_response, response,
};

use driver::{DriverHandle, ProposeOutcome};
use links::Reconciler;
use opening::{Opened, open_node};

/// Raft tick: election after ~1 s (10 ticks), heartbeat every tick.
const TICK: Duration = Duration::from_millis(100);
/// How long a write may take before the client is told the cluster has no quorum here.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long one attempt waits before retrying with the same request id.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// A reconcile round checks every local link at least this often (see [`Agent::reconcile_once`]).
const FULL_RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// VXLAN overhead on an IPv4 underlay: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Everything `vxnetd` is told on its command line.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This host's unique name in the cluster.
    pub name: String,
    /// Durable state (Raft log, snapshots).
    pub data_dir: PathBuf,
    /// This host's VTEP address.
    pub underlay: Ipv4Addr,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
    /// Where peers reach this agent.
    pub peer_listen: SocketAddr,
    /// The CLI socket.
    pub api: PathBuf,
    /// Start a new cluster (ignored when the data dir has state).
    pub bootstrap: bool,
    /// Join the cluster through this member (ignored when the data dir has state).
    pub join: Option<String>,
    /// Shared join secret.
    pub token: Option<String>,
    /// Overlay MTU (default: the underlay interface's MTU − 50).
    pub mtu: Option<u32>,
    /// Data plane worker threads.
    pub workers: usize,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Use TAP and UDP offloads (TSO/GSO/GRO); off: one frame per syscall.
    pub offload: bool,
    /// How long a data plane worker keeps polling after its last packet before it sleeps.
    pub busy_poll: std::time::Duration,
    /// Where to serve Docker's remote driver protocol, if anywhere.
    pub docker_plugin: Option<PathBuf>,
    /// Upstream resolvers for names outside vxnet (empty: the host's /etc/resolv.conf).
    pub dns_upstream: Vec<SocketAddr>,
    /// Lifetime of the node certificates this host signs (its own, and joiners').
    pub cert_lifetime: Duration,
}

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A bad combination of flags or an unusable data dir.
    #[error("{0}")]
    Config(String),
    /// The data dir is damaged: starting again cannot help (see [`AgentError::exit_code`]).
    #[error("{0}")]
    DataDirDamaged(String),
    /// The Raft node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The peer transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The kernel refused something.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The API socket could not be served.
    #[error("API socket: {0}")]
    Api(#[from] std::io::Error),
    /// The cluster refused this host (wrong join token, another cluster, removed): final.
    #[error("{0}")]
    Refused(String),
}

impl AgentError {
    /// The process exit status for this error: 78 (EX_CONFIG) for a damaged data dir or a
    /// refusal by the cluster, which the systemd unit lists in `RestartPreventExitStatus`
    /// (restarting cannot repair them and would only repeat the message), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::DataDirDamaged(_) | AgentError::Refused(_) => 78,
            _ => 1,
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The state machine refused it (identically on every replica).
    #[error("{}", .0.message)]
    Refused(ApplyError),
    /// No leader could commit it in time: this host may be in a minority partition.
    #[error(
        "the cluster did not commit the request within {0:?}: no quorum reachable from this host \
         (if a quorum comes back, the request may still take effect)"
    )]
    NoQuorum(Duration),
    /// This host's data dir cannot be written: it takes no writes until it can.
    #[error(
        "this host cannot write its data dir ({0}): it accepts no writes until that is fixed \
         (reads and forwarding go on; run the command on another host meanwhile)"
    )]
    StorageUnavailable(String),
    /// The Raft driver thread is gone (never expected: a panic ends the process).
    #[error("the Raft driver on this host has stopped: restart vxnetd")]
    DriverGone,
}

/// What the last full reconcile round covered; kept under [`Agent::links_lock`].
#[derive(Debug, Default)]
pub struct LinksMemo {
    /// Ids of this host's endpoints whose links that round found or made.
    pub local_endpoints: BTreeSet<String>,
    /// When it ended cleanly (no error, no vanished sandbox); `None` forces a full round.
    pub full_round_at: Option<Instant>,
}

/// The running agent's shared parts.
#[derive(Debug)]
pub struct Agent {
    /// The agent's configuration.
    pub config: AgentConfig,
    /// The Raft driver.
    pub driver: DriverHandle,
    /// The peer transport.
    pub transport: Transport,
    /// Links, TAPs and FIB.
    pub reconciler: Reconciler,
    /// Serialises link changes (reconcile rounds, connect, disconnect).
    /// It guards what the last full reconcile round covered ([`LinksMemo`]).
    pub links_lock: Mutex<LinksMemo>,
    /// Drop counters of the data plane.
    pub stats: Arc<StatsRegistry>,
    /// The forwarding table.
    pub fib: Arc<Fib>,
    /// When the agent started.
    pub started: Instant,
    /// Latency of writes accepted on this host, until applied here.
    pub commit_latency: prometheus_client::metrics::histogram::Histogram,
    /// What runtimes left behind, waiting out its grace period.
    pub leftovers: std::sync::Mutex<runtimes::Leftovers>,
    /// The embedded resolver and the sandboxes' resolv.conf.
    pub dns: dns::Dns,
    /// This host's key and certificate chain.
    pub own_tls: tls::OwnTls,
    /// Set when the agent must stop for good (the cluster refused it): `run` returns it.
    pub fatal: tokio::sync::watch::Sender<Option<String>>,
}

/// Random bytes for request ids, network and endpoint ids (the `getrandom` crate, as the peer
/// transport's nonces: one source of randomness).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if getrandom::getrandom(&mut buf).is_err() {
        // Never expected (getrandom(2) blocks only until the kernel's pool is initialised at
        // boot); fall back to the clock so ids stay distinct, if not secret.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
    buf
}

/// 64 lowercase hex characters, like Docker's ids.
pub fn random_id() -> String {
    random_bytes::<32>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn proposal(command: command::Kind) -> Proposal {
    Proposal {
        request_id: random_bytes::<16>().to_vec(),
        command: Some(Command {
            kind: Some(command),
        }),
    }
}

impl Agent {
    /// Starts everything and serves until SIGINT/SIGTERM.
    ///
    /// Order matters for a restart to be invisible to containers: the API socket is bound
    /// first but answers only "starting"; the node opens and replays its whole committed log
    /// ([`Node::open`]); only then do the API, the metrics and the link reconciler start, so
    /// none of them ever acts on state older than what this host had before it stopped (the
    /// reconciler would delete the links of endpoints it does not know yet). Readiness needs
    /// only the local replay, never a quorum.
    pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
        vxnet_controlplane::storage::create_data_dir(&config.data_dir).map_err(|e| {
            AgentError::Config(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let api = server::bind(&config.api)?;
        let (phase_tx, phase) = tokio::sync::watch::channel("opening the data dir".to_string());
        let agent = tokio::select! {
            agent = Agent::start(config, phase_tx) => agent?,
            () = starting::answer_while_starting(&api, &phase) => {
                return Err(AgentError::Config("the API stopped while starting".into()));
            }
        };
        tokio::spawn(Arc::clone(&agent).reconcile_loop());
        tracing::info!(api = %agent.config.api.display(), "ready: serving the API");
        tokio::spawn(server::serve(Arc::clone(&agent), api));
        if let Some(addr) = agent.config.metrics {
            let agent = Arc::clone(&agent);
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(agent, addr).await {
                    tracing::error!(%addr, "metrics: {e}");
                }
            });
        }

        // Before the plugin answers: its calls need every host's level in the state.
        agent.report_level().await;
        if let Some(path) = agent.config.docker_plugin.clone() {
            let listener = crate::plugins::docker::bind(&path).map_err(|e| {
                AgentError::Config(format!("docker plugin socket {}: {e}", path.display()))
            })?;
            let plugin = Arc::new(crate::plugins::docker::Plugin::new(
                Arc::clone(&agent),
                agent.config.name.clone(),
            ));
            tracing::info!(socket = %path.display(), "serving the Docker network and IPAM driver");
            tokio::spawn(async move {
                if let Err(e) = crate::plugins::docker::serve(plugin, listener).await {
                    tracing::error!(socket = %path.display(), "docker plugin: {e}");
                }
            });
        }

        let mut fatal = agent.fatal.subscribe();
        let refused = tokio::select! {
            () = wait_for_signal() => None,
            r = fatal.wait_for(Option::is_some) => r.ok().and_then(|why| why.clone()),
        };
        if let Some(why) = refused {
            let _ = std::fs::remove_file(&agent.config.api);
            return Err(AgentError::Refused(why));
        }
        tracing::info!("shutting down");
        let _ = std::fs::remove_file(&agent.config.api);
        if let Some(path) = &agent.config.docker_plugin {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Opens (or bootstraps, or joins) the node, replaying its log, and starts the transport,
    /// the Raft driver and the data plane.
    async fn start(
        config: AgentConfig,
        phase: tokio::sync::watch::Sender<String>,
    ) -> Result<Arc<Agent>, AgentError> {
        let Opened {
            node,
            seed_peers,
            seed_security,
            own,
        } = open_node(&config, &phase).await?;
        tracing::info!(
            node_id = node.id(),
            cluster_id = format!("{:016x}", node.cluster_id()),
            "raft node ready"
        );
        let security = match seed_security {
            Some(view) if node.state().hosts().next().is_none() => view,
            _ if node.state().hosts().next().is_some() => {
                transport::SecurityView::from_state(node.state())
            }
            _ => transport::SecurityView::legacy(),
        };
        let (transport, inbound) = Transport::start(TransportConfig {
            listen: config.peer_listen,
            host_name: config.name.clone(),
            node_id: node.id(),
            cluster_id: node.cluster_id(),
            token: config.token.clone(),
            queue_len: 1024,
            security,
        })
        .await?;
        if let Some((key, chain)) = &own {
            transport.set_own_cert(chain.clone(), key)?;
        }
        let cluster_id = node.cluster_id();
        let (driver, _raft_thread) = driver::spawn(node, transport.clone(), TICK, seed_peers);

        let netlink = Netlink::new()?;
        let mtu = match config.mtu {
            Some(mtu) => mtu,
            None => match netlink.mtu_of_address(IpAddr::V4(config.underlay)).await? {
                Some(underlay_mtu) => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
                None => {
                    return Err(AgentError::Config(format!(
                        "no interface has the underlay address {}: pass the right --underlay",
                        config.underlay
                    )));
                }
            },
        };
        tracing::info!(mtu, "overlay MTU");
        let fib = Arc::new(Fib::new());
        let stats = Arc::new(StatsRegistry::new());
        let dataplane = Arc::new(DataPlane::start(
            DataPlaneConfig {
                underlay: IpAddr::V4(config.underlay),
                vxlan_port: config.vxlan_port,
                workers: config.workers,
                offload: config.offload,
                busy_poll: config.busy_poll,
                ..DataPlaneConfig::default()
            },
            Arc::clone(&fib),
            Arc::clone(&stats),
        )?);
        let dns = {
            let driver = driver.clone();
            dns::Dns::new(
                &config.name,
                cluster_id,
                Box::new(move || Arc::clone(&driver.view().state)),
                dns::Upstreams::new(config.dns_upstream.clone(), "/etc/resolv.conf".into()),
            )
        };
        let agent = Arc::new(Agent {
            dns,
            reconciler: Reconciler {
                host: config.name.clone(),
                mtu,
                netlink,
                dataplane,
                fib: Arc::clone(&fib),
                gateway: gateway::Gateway::default(),
                vxlan_port: config.vxlan_port,
            },
            config,
            driver,
            transport,
            links_lock: Mutex::new(LinksMemo::default()),
            stats,
            fib,
            started: Instant::now(),
            commit_latency: metrics::commit_latency_histogram(),
            leftovers: Default::default(),
            own_tls: tls::OwnTls::new(own),
            fatal: tokio::sync::watch::channel(None).0,
        });
        tokio::spawn(Arc::clone(&agent).serve_peers(inbound));
        tokio::spawn(Arc::clone(&agent).tls_loop());
        Ok(agent)
    }

    /// Commits `command` through Raft (forwarding to the leader when needed) and returns once it
    /// is applied on this host. Retries reuse the request id, so nothing is applied twice.
    pub async fn submit(&self, command: command::Kind) -> Result<Response, SubmitError> {
        let started = Instant::now();
        let result = self.submit_proposal(proposal(command)).await;
        if result.is_ok() {
            self.commit_latency.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn submit_proposal(&self, proposal: Proposal) -> Result<Response, SubmitError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        while Instant::now() < deadline {
            let attempt =
                tokio::time::timeout(ATTEMPT_TIMEOUT, self.driver.propose(proposal.clone()));
            match attempt.await {
                Ok(Ok(ProposeOutcome::Applied { result, .. })) => return into_submit(*result),
                Ok(Ok(ProposeOutcome::NotLeader(Some(leader)))) => {
                    if let Some(result) = self.forward(&proposal, leader).await {
                        return result;
                    }
                }
                Ok(Ok(ProposeOutcome::NotLeader(None))) => {}
                Ok(Ok(ProposeOutcome::Unavailable(error))) => {
                    return Err(SubmitError::StorageUnavailable(error));
                }
                Ok(Err(_gone)) => return Err(SubmitError::DriverGone),
                Err(_timeout) => {}
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        Err(SubmitError::NoQuorum(WRITE_DEADLINE))
    }

    /// Sends the proposal to the leader; `None` means "try again".
    async fn forward(
        &self,
        proposal: &Proposal,
        leader: u64,
    ) -> Option<Result<Response, SubmitError>> {
        let view = self.driver.view();
        let addr = view.state.host_by_node_id(leader)?.peer_addr.clone();
        let request = ForwardRequest {
            proposal: Some(proposal.clone()),
        };
        let reply = self
            .transport
            .forward(&addr, request, ATTEMPT_TIMEOUT)
            .await
            .ok()?;
        let result = match reply.outcome? {
            forward_response::Outcome::Ok(response) => Ok(response),
            forward_response::Outcome::Err(failure) => Err(ApplyError::from_proto(&failure)),
            forward_response::Outcome::NotLeader(_) => return None,
        };
        // Read-your-writes: answer once this host has applied the write too.
        if !self.driver.wait_applied(reply.index, ATTEMPT_TIMEOUT).await {
            tracing::warn!(
                index = reply.index,
                "write committed by the leader but not yet applied here"
            );
        }
        Some(into_submit(result))
    }

    async fn serve_peers(self: Arc<Self>, mut inbound: tokio::sync::mpsc::Receiver<Inbound>) {
        while let Some(message) = inbound.recv().await {
            match message {
                Inbound::Raft(msg) => self.driver.step(msg),
                Inbound::Unreachable(id) => self.driver.unreachable(id),
                Inbound::Revoked(by) => {
                    let why = format!(
                        "this host ({name}) was removed from the cluster: member node {by} \
                         refuses its certificate as revoked. To come back: stop vxnetd, move the \
                         data dir {dir} away, and start vxnetd with --join MEMBER:7946 --token \
                         TOKEN (`vxnet cluster join-token` on a member prints it)",
                        name = self.config.name,
                        dir = self.config.data_dir.display(),
                    );
                    self.fatal.send_replace(Some(why));
                }
                Inbound::Join { request, reply } => {
                    let agent = Arc::clone(&self);
                    tokio::spawn(async move {
                        let _ = reply.send(agent.answer_join(request).await);
                    });
                }
                Inbound::Forward { request, reply } => {
                    let agent = Arc::clone(&self);
                    tokio::spawn(async move {
                        if let Some(answer) = agent.answer_forward(request).await {
                            let _ = reply.send(answer);
                        }
                    });
                }
            }
        }
    }

    /// A host asks to join: register it through Raft (forwarded to the leader if needed). The
    /// leader's membership policy then adds it as a learner and promotes it when caught up.
    async fn answer_join(&self, request: JoinRequest) -> JoinResponse {
        let Some(mut host) = request.host else {
            return join_error(ErrorKind::Invalid, "join request without host");
        };
        // Over TLS (the transport checked the proof): the joiner's key becomes its pin, and it
        // gets a certificate once registered.
        let csr_key = if request.csr.is_empty() {
            None
        } else {
            let state = Arc::clone(&self.driver.view().state);
            if state.cluster_level() < 2 {
                // A host of an older release could not apply a pinned registration: retry.
                tracing::info!(
                    host = host.name,
                    "join deferred: the cluster is being upgraded"
                );
                return JoinResponse {
                    result: Some(join_response::Result::NotLeader(NotLeader::default())),
                };
            }
            match transport::pki::NodePublicKey::from_csr_der(&request.csr) {
                Ok(key) if key.spki_sha256().as_slice() == host.key_sha256.as_slice() => {
                    host.level = vxnet_controlplane::state::APPLY_LEVEL;
                    Some(key)
                }
                Ok(_) => {
                    return join_error(
                        ErrorKind::Invalid,
                        "the certificate request's key is not the registered key",
                    );
                }
                Err(e) => {
                    return join_error(
                        ErrorKind::Invalid,
                        &format!("bad certificate request: {e}"),
                    );
                }
            }
        };
        let proposal = Proposal {
            request_id: request.request_id,
            command: Some(Command {
                kind: Some(command::Kind::RegisterHost(host)),
            }),
        };
        match self.submit_proposal(proposal).await {
            Ok(Response {
                kind: Some(response::Kind::HostRegistered(host)),
            }) => {
                let view = self.driver.view();
                let (cert_chain, ca_cert) = match &csr_key {
                    None => (Vec::new(), Vec::new()),
                    Some(key) => match tls::sign_joiner(
                        &view.state,
                        key,
                        host.node_id,
                        &host.name,
                        self.config.cert_lifetime,
                    ) {
                        Ok(signed) => signed,
                        Err(e) => {
                            tracing::warn!(
                                host = host.name,
                                "cannot sign a joiner's certificate: {e}"
                            );
                            return join_error(ErrorKind::Unspecified, &e);
                        }
                    },
                };
                tracing::info!(
                    host = host.name,
                    node_id = host.node_id,
                    tls = csr_key.is_some(),
                    "host joined"
                );
                JoinResponse {
                    result: Some(join_response::Result::Accepted(vxnet_proto::JoinAccepted {
                        node_id: host.node_id,
                        cluster_id: view.cluster_id,
                        leader_id: view.leader_id.unwrap_or(0),
                        members: view.state.hosts().cloned().collect(),
                        cert_chain,
                        ca_cert,
                        server_proof: Vec::new(),
                    })),
                }
            }
            Ok(other) => join_error(
                ErrorKind::Unspecified,
                &format!("unexpected result {other:?}"),
            ),
            Err(SubmitError::Refused(e)) => join_error(e.kind, &e.message),
            // Not the joiner's fault (no quorum, or this host cannot write): it retries.
            Err(e) => {
                tracing::warn!("join request not served: {e}");
                JoinResponse {
                    result: Some(join_response::Result::NotLeader(NotLeader {
                        leader_id: 0,
                        leader_addr: String::new(),
                    })),
                }
            }
        }
    }

    /// A follower forwards a proposal: propose it here if we lead, answer once applied.
    async fn answer_forward(&self, request: ForwardRequest) -> Option<ForwardResponse> {
        let proposal = request.proposal?;
        let request_id = proposal.request_id.clone();
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, self.driver.propose(proposal))
            .await
            .ok()?
            .ok()?;
        let leader = match outcome {
            ProposeOutcome::Applied { index, result } => {
                return Some(ForwardResponse {
                    request_id,
                    index,
                    outcome: Some(match *result {
                        Ok(response) => forward_response::Outcome::Ok(response),
                        Err(e) => forward_response::Outcome::Err(e.to_proto()),
                    }),
                });
            }
            ProposeOutcome::NotLeader(leader) => leader,
            // A host that cannot write is no leader: the forwarder retries elsewhere.
            ProposeOutcome::Unavailable(_) => None,
        };
        let leader_id = leader.unwrap_or(0);
        let leader_addr = self
            .driver
            .view()
            .state
            .host_by_node_id(leader_id)
            .map(|h| h.peer_addr.clone())
            .unwrap_or_default();
        Some(ForwardResponse {
            request_id,
            index: 0,
            outcome: Some(forward_response::Outcome::NotLeader(NotLeader {
                leader_id,
                leader_addr,
            })),
        })
    }

    /// Reconciles after every applied change, and every few seconds anyway (to notice vanished
    /// sandboxes and repair links changed behind our back).
    async fn reconcile_loop(self: Arc<Self>) {
        let mut applied = self.driver.subscribe();
        loop {
            crate::fault::check("reconcile");
            self.reconcile_once().await;
            self.report_level().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), applied.changed()).await;
        }
    }

    /// One reconcile round under the links lock; disconnects endpoints whose sandbox vanished.
    ///
    /// A full round checks every local link over netlink, which costs O(local endpoints). Most
    /// applied changes concern other hosts (or were just made by the connect handler), so when
    /// this host's endpoints are those a clean full round covered less than
    /// [`FULL_RECONCILE_EVERY`] ago, only the forwarding table is brought up to date. Without
    /// this, every commit anywhere made every host re-check all its links: 300 endpoints over 3
    /// hosts took ~4x longer to connect.
    pub async fn reconcile_once(&self) {
        let report = {
            let mut memo = self.links_lock.lock().await;
            let state = Arc::clone(&self.driver.view().state);
            let local: BTreeSet<String> = state
                .endpoints()
                .filter(|e| e.host == self.reconciler.host)
                .map(|e| e.id.clone())
                .collect();
            let recent = memo
                .full_round_at
                .is_some_and(|at| at.elapsed() < FULL_RECONCILE_EVERY);
            if recent && memo.local_endpoints == local {
                for error in self.reconciler.refresh(&state).await {
                    tracing::warn!("reconcile: {error}");
                }
                for error in self.dns.sync(&state, false).await {
                    tracing::warn!("reconcile: {error}");
                }
                return;
            }
            let mut report = self.reconciler.reconcile(&state).await;
            report.errors.extend(self.dns.sync(&state, true).await);
            *memo = if report.errors.is_empty()
                && report.vanished.is_empty()
                && report.unlinked.is_empty()
            {
                LinksMemo {
                    local_endpoints: local,
                    full_round_at: Some(Instant::now()),
                }
            } else {
                // Something to repair or disconnect: the next round is a full one again.
                LinksMemo::default()
            };
            report
        };
        for error in &report.errors {
            tracing::warn!("reconcile: {error}");
        }
        self.clean_runtime_leftovers(report.unlinked.iter().map(|e| e.id.clone()).collect())
            .await;
        for endpoint in report.vanished {
            tracing::info!(
                endpoint = endpoint.name,
                sandbox = endpoint.sandbox,
                "sandbox vanished: disconnecting"
            );
            self.remove_gone(&endpoint).await;
        }
    }
}

impl crate::plugins::docker::Api for Arc<Agent> {
    fn call(
        &self,
        request: vxnet_proto::ApiRequest,
    ) -> impl std::future::Future<Output = vxnet_proto::ApiResponse> + Send {
        let agent = Arc::clone(self);
        async move { server::handle(&agent, request).await }
    }
}

fn into_submit(result: ApplyResult) -> Result<Response, SubmitError> {
    result.map_err(SubmitError::Refused)
}

fn join_error(kind: ErrorKind, message: &str) -> JoinResponse {
    JoinResponse {
        result: Some(join_response::Result::Error(vxnet_proto::ApplyFailure {
            kind: kind as i32,
            message: message.to_string(),
        })),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
