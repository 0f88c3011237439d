//! Opening the node at start: resuming from the data dir (re-signing a certificate that lapsed
//! meanwhile), bootstrapping a new cluster with its CA, or joining one over TLS (or with the
//! shared secret, when the member runs the previous release). Refusals are final (exit 78); an
//! unreachable member is retried.

use std::collections::BTreeMap;
use std::time::Duration;

use vxnet_controlplane::node::{Node, NodeConfig, NodeError};
use vxnet_controlplane::storage::DiskStorage;
use vxnet_controlplane::transport::token::JoinToken;
use vxnet_controlplane::transport::{self, JoinError, TransportError};
use vxnet_proto::{JoinRequest, RegisterHost, command, join_response};

use super::{AgentConfig, AgentError, random_bytes, tls};

/// A data dir that cannot be opened: damage gets the recovery path spelled out.
fn open_error(config: &AgentConfig, e: NodeError) -> AgentError {
    match e {
        NodeError::Storage(e @ vxnet_controlplane::storage::StorageError::Corrupt { .. }) => {
            AgentError::DataDirDamaged(format!(
                "{e}\nThe data dir is damaged and vxnetd will not guess which acknowledged \
                 entries it lost, so it changes nothing and stops. Recovery: on another host, \
                 `vxnet cluster rm {name}` (this frees the host's endpoints: reconnect its \
                 containers afterwards); here, move the data dir away (keep it for inspection) \
                 and start vxnetd again with --join MEMBER:7946, so it re-joins and receives \
                 the state from the cluster.",
                name = config.name
            ))
        }
        e => AgentError::Node(e),
    }
}

/// What [`open_node`] gives the agent.
pub(super) struct Opened {
    pub(super) node: Node,
    /// The members a join answer named, so the transport can reach the leader before the first
    /// snapshot arrives.
    pub(super) seed_peers: BTreeMap<u64, String>,
    /// Who may connect until the first snapshot (a TLS join's answer).
    pub(super) seed_security: Option<transport::SecurityView>,
    /// This host's key and certificate chain, if it has them.
    pub(super) own: Option<(
        transport::pki::NodeKey,
        Vec<transport::CertificateDer<'static>>,
    )>,
}

/// The `--token` value, parsed; a malformed join token is refused (exit 78) before any I/O.
fn parse_token(config: &AgentConfig) -> Result<Option<JoinToken>, AgentError> {
    config
        .token
        .as_deref()
        .map(JoinToken::parse)
        .transpose()
        .map_err(|e| AgentError::Refused(format!("--token: {e}")))
}

/// Resumes from the data dir, or bootstraps, or joins. On-disk state always wins: bootstrapping
/// a second time would split the brain.
pub(super) async fn open_node(
    config: &AgentConfig,
    phase: &tokio::sync::watch::Sender<String>,
) -> Result<Opened, AgentError> {
    let node_config = NodeConfig::new(&config.data_dir);
    let token = parse_token(config)?;
    if DiskStorage::exists(&config.data_dir) {
        if config.bootstrap || config.join.is_some() {
            tracing::info!(
                "the data dir holds cluster state: resuming, --bootstrap/--join ignored"
            );
        }
        phase.send_replace("replaying the local Raft log".into());
        // Blocking file reads and fsyncs: off the runtime that answers "starting".
        let opened = tokio::task::spawn_blocking(move || Node::open(node_config))
            .await
            .map_err(|e| AgentError::Config(format!("opening the data dir: {e}")))?;
        let node = opened.map_err(|e| open_error(config, e))?;
        let own = match tls::load_chain(&config.data_dir)? {
            Some(chain) => {
                let key = tls::load_or_create_key(&config.data_dir)?;
                let chain = tls::renew_at_start(
                    &config.data_dir,
                    node.state(),
                    &config.name,
                    &key,
                    chain,
                    config.cert_lifetime,
                )?;
                Some((key, chain))
            }
            None => None,
        };
        return Ok(Opened {
            node,
            seed_peers: BTreeMap::new(),
            seed_security: None,
            own,
        });
    }
    if config.bootstrap {
        let cluster_id = u64::from_le_bytes(random_bytes::<8>()) | 1;
        tracing::info!("bootstrapping a new cluster");
        let key = tls::load_or_create_key(&config.data_dir)?;
        let material = tls::bootstrap(
            cluster_id,
            &config.name,
            token.as_ref(),
            &key,
            config.cert_lifetime,
        )?;
        if material.generated_secret {
            tracing::info!(
                "no --token given: a join secret was generated; print the join token with \
                 `vxnet cluster join-token` (root, on this host)"
            );
        }
        // The files before the state: a state never exists without its key and certificate.
        tls::write_chain(&config.data_dir, &material.chain)?;
        let host = RegisterHost {
            name: config.name.clone(),
            underlay: config.underlay.to_string(),
            peer_addr: config.peer_listen.to_string(),
            key_sha256: key.spki_sha256().to_vec(),
            level: vxnet_controlplane::state::APPLY_LEVEL,
        };
        let node = Node::bootstrap_with(
            node_config,
            cluster_id,
            host,
            vec![command::Kind::InitTls(material.init)],
        )?;
        return Ok(Opened {
            node,
            seed_peers: BTreeMap::new(),
            seed_security: None,
            own: Some((key, material.chain)),
        });
    }
    let Some(target) = config.join.clone() else {
        return Err(AgentError::Config(
            "the data dir holds no cluster state: pass --bootstrap (first host) or --join HOST:PORT".into(),
        ));
    };
    let Some(token) = token else {
        return Err(AgentError::Refused(
            "--join needs --token: print the join token on a member with `vxnet cluster \
             join-token`"
                .into(),
        ));
    };
    join_cluster(config, node_config, target, token, phase).await
}

/// Joins through `target`: over TLS, or with the shared secret if the member runs the previous
/// release. Refusals are final; an unreachable member is retried.
async fn join_cluster(
    config: &AgentConfig,
    node_config: NodeConfig,
    mut target: String,
    token: JoinToken,
    phase: &tokio::sync::watch::Sender<String>,
) -> Result<Opened, AgentError> {
    let key = tls::load_or_create_key(&config.data_dir)?;
    let csr = key
        .csr_der(&config.name)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let tls_request = JoinRequest {
        request_id: random_bytes::<16>().to_vec(),
        host: Some(RegisterHost {
            name: config.name.clone(),
            underlay: config.underlay.to_string(),
            peer_addr: config.peer_listen.to_string(),
            key_sha256: key.spki_sha256().to_vec(),
            level: vxnet_controlplane::state::APPLY_LEVEL,
        }),
        csr,
        proof: Vec::new(),
    };
    // The previous release's request: no level-2 fields, which its replicas would drop.
    let legacy_request = JoinRequest {
        request_id: random_bytes::<16>().to_vec(),
        host: Some(RegisterHost {
            name: config.name.clone(),
            underlay: config.underlay.to_string(),
            peer_addr: config.peer_listen.to_string(),
            ..RegisterHost::default()
        }),
        ..JoinRequest::default()
    };
    let mut backoff = Duration::from_millis(200);
    let mut legacy_refusals = 0u32;
    loop {
        phase.send_replace(format!("joining the cluster through {target}"));
        let answer = match transport::join_tls(
            &target,
            &token,
            tls_request.clone(),
            Duration::from_secs(15),
        )
        .await
        {
            Ok(answer) => Ok((answer, true)),
            Err(JoinError::Final(why)) => {
                return Err(AgentError::Refused(format!(
                    "join refused by {target}: {why}"
                )));
            }
            Err(JoinError::Legacy) => match token.legacy_key() {
                None => {
                    return Err(AgentError::Refused(format!(
                        "{target} runs a previous vxnet release (shared-secret protocol only): \
                         join through an upgraded member, or pass the bare secret while the \
                         cluster is being upgraded"
                    )));
                }
                Some(_) => transport::join(
                    &target,
                    config.token.as_deref(),
                    &config.name,
                    legacy_request.clone(),
                    Duration::from_secs(15),
                )
                .await
                .map(|answer| (answer, false))
                .map_err(JoinError::Retry),
            },
            Err(e) => Err(e),
        };
        match answer.map(|(r, tls)| (r.result, tls)) {
            Ok((Some(join_response::Result::Accepted(accepted)), over_tls)) => {
                tracing::info!(
                    node_id = accepted.node_id,
                    via = target,
                    tls = over_tls,
                    "joined the cluster"
                );
                let seed_peers = accepted
                    .members
                    .iter()
                    .map(|h| (h.node_id, h.peer_addr.clone()))
                    .collect();
                let (own, seed_security) = if over_tls {
                    let chain = tls::accepted_chain(&accepted, &key)?;
                    tls::write_chain(&config.data_dir, &chain)?;
                    // The members the answer named, with their pins, until the first snapshot.
                    let view = transport::SecurityView {
                        trusted_cas: vec![chain[1].clone()],
                        members: accepted
                            .members
                            .iter()
                            .map(|h| {
                                (
                                    h.node_id,
                                    <[u8; 32]>::try_from(h.key_sha256.as_slice()).ok(),
                                )
                            })
                            .collect(),
                        next_node_id: accepted.node_id + 1,
                        join_key: None,
                        legacy_open: false,
                    };
                    (Some((key, chain)), Some(view))
                } else {
                    (None, Some(transport::SecurityView::legacy()))
                };
                return Ok(Opened {
                    node: Node::join(node_config, accepted.cluster_id, accepted.node_id)?,
                    seed_peers,
                    seed_security,
                    own,
                });
            }
            Ok((Some(join_response::Result::Error(failure)), _)) => {
                return Err(AgentError::Refused(format!(
                    "join refused by {target}: {}",
                    failure.message
                )));
            }
            Ok((Some(join_response::Result::NotLeader(hint)), _))
                if !hint.leader_addr.is_empty() =>
            {
                target = hint.leader_addr;
                continue;
            }
            Ok(_) => tracing::warn!(via = target, "join: no answer yet, retrying"),
            Err(JoinError::Retry(TransportError::Refused | TransportError::AuthFailed)) => {
                // A previous-release member closes without a word on a wrong secret (or when
                // all its slots are busy): a few tries, then final.
                legacy_refusals += 1;
                if legacy_refusals >= 3 {
                    return Err(AgentError::Refused(format!(
                        "{target} closed the connection after our proof three times: wrong \
                         --token?"
                    )));
                }
                tracing::warn!(
                    via = target,
                    "join: the member closed the connection; retrying"
                );
            }
            Err(e) => tracing::warn!(via = target, "join: {e}; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
