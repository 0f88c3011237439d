//! This host's certificate and the cluster CA's life cycle, seen from one agent: the files in
//! `DATA/tls`, the material a bootstrap starts with, checking a join's answer, and the loop that
//! keeps the certificate current (the leader creating the CA once a cluster upgraded from a
//! release without TLS is ready, self-signing with the replicated CA key, renewal at 2/3 of the
//! lifetime, re-signing after a CA rotation, the key pin and the certificate report).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vxnet_controlplane::state::State;
use vxnet_controlplane::transport::CertificateDer;
use vxnet_controlplane::transport::pki::{
    Ca, CertIdentity, NodeKey, NodePublicKey, cert_identity, certs_from_pem, certs_to_pem,
};
use vxnet_controlplane::transport::token::{JoinKey, JoinToken};
use vxnet_proto::{CaCert, InitTls, JoinAccepted, ReportTls, SetHostKey, command};

use super::{Agent, AgentError, random_bytes, unix_ms};

/// The level of the TLS commands (`state::command_level`).
const TLS_LEVEL: u32 = 2;

/// `DATA/tls`.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::Config(format!("{what} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename) with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error("cannot create", dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_error("cannot write", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("cannot write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_error("cannot write", path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        // The rename is durable once the directory is: a crash keeps the old or the new file.
        let _ = d.sync_all();
    }
    Ok(())
}

/// This host's key, `DATA/tls/node.key`: loaded, or generated and written (0600, fsynced)
/// before anything refers to it.
pub fn load_or_create_key(data_dir: &Path) -> Result<NodeKey, AgentError> {
    let path = tls_dir(data_dir).join("node.key");
    match fs::read_to_string(&path) {
        Ok(pem) => NodeKey::from_pem(&pem).map_err(|e| {
            AgentError::DataDirDamaged(format!(
                "{}: {e}; this host cannot prove who it is without its key: remove it from \
                 the cluster (`vxnet cluster rm NAME` on a member), move the data dir away and \
                 join again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NodeKey::generate().map_err(|e| AgentError::Config(e.to_string()))?;
            write_file(&path, key.to_pem().as_bytes(), 0o600)?;
            Ok(key)
        }
        Err(e) => Err(io_error("cannot read", &path, e)),
    }
}

/// `DATA/tls/node.crt`, if this host has a certificate.
pub fn load_chain(data_dir: &Path) -> Result<Option<Vec<CertificateDer<'static>>>, AgentError> {
    let path = tls_dir(data_dir).join("node.crt");
    match fs::read_to_string(&path) {
        Ok(pem) => certs_from_pem(&pem)
            .map(Some)
            .map_err(|e| io_error("cannot read", &path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("cannot read", &path, e)),
    }
}

/// Writes this host's chain (`node.crt`, 0600) and its CA (`ca.crt`, 0644: public).
pub fn write_chain(data_dir: &Path, chain: &[CertificateDer<'_>]) -> Result<(), AgentError> {
    let dir = tls_dir(data_dir);
    write_file(&dir.join("node.crt"), certs_to_pem(chain).as_bytes(), 0o600)?;
    if let Some(ca) = chain.get(1) {
        write_file(
            &dir.join("ca.crt"),
            certs_to_pem(std::slice::from_ref(ca)).as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

/// The chain a member presents: its certificate, the CA that signed it (so that a joiner can pin
/// it), and during a CA rotation the new CA certified by the previous one.
pub fn chain_of(
    cert: CertificateDer<'static>,
    ca: &[u8],
    cross: Option<&[u8]>,
) -> Vec<CertificateDer<'static>> {
    let mut chain = vec![cert, CertificateDer::from(ca.to_vec())];
    if let Some(cross) = cross {
        chain.push(CertificateDer::from(cross.to_vec()));
    }
    chain
}

/// What a new cluster starts with: its CA and join key (the `InitTls` of the bootstrap
/// snapshot), and this host's certificate as node 1.
pub struct Bootstrap {
    /// Applied into the bootstrap snapshot.
    pub init: InitTls,
    /// This host's chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Whether the join secret was generated (no `--token`).
    pub generated_secret: bool,
}

/// Makes a new cluster's CA, join key and this host's certificate.
pub fn bootstrap(
    cluster_id: u64,
    host_name: &str,
    token: Option<&JoinToken>,
    key: &NodeKey,
    lifetime: Duration,
) -> Result<Bootstrap, AgentError> {
    let (join_key, generated_secret) = match token {
        Some(JoinToken::Full { .. }) => {
            return Err(AgentError::Refused(
                "a join token belongs to an existing cluster: --bootstrap takes a bare secret \
                 (--token SECRET) or none (one is generated)"
                    .into(),
            ));
        }
        Some(t) => (t.key().clone(), false),
        None => (
            JoinKey::generate().map_err(|e| AgentError::Config(e.to_string()))?,
            true,
        ),
    };
    let now = SystemTime::now();
    let pki = |e: vxnet_controlplane::transport::pki::PkiError| AgentError::Config(e.to_string());
    let ca = Ca::generate(cluster_id, 1, now).map_err(pki)?;
    let cert = ca
        .sign_node(&key.public_key().map_err(pki)?, 1, host_name, now, lifetime)
        .map_err(pki)?;
    Ok(Bootstrap {
        init: init_tls(&ca, &join_key),
        chain: chain_of(cert, ca.cert(), None),
        generated_secret,
    })
}

/// A join's answer, checked: the certificate is for this host's key, the node id and cluster
/// the answer names. Returns the chain to present.
pub fn accepted_chain(
    accepted: &JoinAccepted,
    key: &NodeKey,
) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let cert = accepted
        .cert_chain
        .first()
        .ok_or_else(|| AgentError::Refused("the join answer carries no certificate".into()))?;
    let id = cert_identity(cert)
        .map_err(|e| AgentError::Refused(format!("the certificate issued to us: {e}")))?;
    if id.node_id != accepted.node_id
        || id.cluster_id != accepted.cluster_id
        || id.spki_sha256 != key.spki_sha256()
    {
        return Err(AgentError::Refused(
            "the certificate issued to us is not for this host's key and node id".into(),
        ));
    }
    let cross = accepted.cert_chain.get(1).map(Vec::as_slice);
    Ok(chain_of(
        CertificateDer::from(cert.clone()),
        &accepted.ca_cert,
        cross,
    ))
}

/// This host's chain, signed now with the state's signer CA (the same key: the pin is kept).
fn sign_own(
    state: &State,
    node_id: u64,
    host_name: &str,
    key: &NodeKey,
    lifetime: Duration,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let (signer, signer_key) = state.signer().ok_or("no signer CA")?;
    let ca = Ca::from_der(&signer.cert, signer_key).map_err(|e| e.to_string())?;
    let public = key.public_key().map_err(|e| e.to_string())?;
    let cert = ca
        .sign_node(&public, node_id, host_name, SystemTime::now(), lifetime)
        .map_err(|e| e.to_string())?;
    Ok(chain_of(cert, &signer.cert, state.cross_cert()))
}

/// The command that gives a cluster its CA and join key.
fn init_tls(ca: &Ca, join_key: &JoinKey) -> InitTls {
    InitTls {
        ca: Some(CaCert {
            generation: ca.generation(),
            cert: ca.cert().to_vec(),
        }),
        ca_key: ca.key_pkcs8_der(),
        join_key: join_key.as_bytes().to_vec(),
        unix_ms: unix_ms(),
    }
}

/// At start, before the transport presents it: a certificate that expired (or is due) while
/// the agent was down is re-signed with the replicated CA key, so the host needs no new join.
pub fn renew_at_start(
    data_dir: &Path,
    state: &State,
    host_name: &str,
    key: &NodeKey,
    chain: Vec<CertificateDer<'static>>,
    lifetime: Duration,
) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let due = chain
        .first()
        .and_then(|c| cert_identity(c).ok())
        .is_none_or(|id| now_unix() >= id.renew_at_unix());
    let (Some(_), Some(me)) = (state.signer(), state.host(host_name)) else {
        return Ok(chain);
    };
    if !due {
        return Ok(chain);
    }
    let chain =
        sign_own(state, me.node_id, host_name, key, lifetime).map_err(AgentError::Config)?;
    write_chain(data_dir, &chain)?;
    tracing::info!("node certificate signed at start: the one on disk was due or expired");
    Ok(chain)
}

/// Signs a joiner's certificate with the state's signer CA: the chain part of its answer
/// (`cert_chain`, `ca_cert`).
pub fn sign_joiner(
    state: &State,
    csr_key: &NodePublicKey,
    node_id: u64,
    host_name: &str,
    lifetime: Duration,
) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let (signer, signer_key) = state.signer().ok_or("this cluster has no CA")?;
    let ca = Ca::from_der(&signer.cert, signer_key).map_err(|e| e.to_string())?;
    let cert = ca
        .sign_node(csr_key, node_id, host_name, SystemTime::now(), lifetime)
        .map_err(|e| e.to_string())?;
    let mut chain = vec![cert.to_vec()];
    if let Some(cross) = state.cross_cert() {
        chain.push(cross.to_vec());
    }
    Ok((chain, signer.cert.clone()))
}

/// This host's key and current chain, as the agent keeps them.
#[derive(Default)]
pub struct OwnTls {
    inner: Mutex<Option<Own>>,
    /// This agent's renewal jitter, in thousandths of the lifetime (−50..=50).
    jitter_permille: i64,
}

struct Own {
    chain: Vec<CertificateDer<'static>>,
    identity: CertIdentity,
}

impl std::fmt::Debug for OwnTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnTls").finish_non_exhaustive()
    }
}

impl OwnTls {
    /// A holder with this host's key and chain, if it has them.
    pub fn new(own: Option<(NodeKey, Vec<CertificateDer<'static>>)>) -> OwnTls {
        let r = i64::from(u16::from_le_bytes(random_bytes::<2>()) % 101);
        let holder = OwnTls {
            inner: Mutex::new(None),
            jitter_permille: r - 50,
        };
        if let Some((_, chain)) = own {
            let _ = holder.set(chain);
        }
        holder
    }

    fn set(&self, chain: Vec<CertificateDer<'static>>) -> Result<(), String> {
        let first = chain.first().ok_or("empty chain")?;
        let identity = cert_identity(first).map_err(|e| e.to_string())?;
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner) = Some(Own { chain, identity });
        Ok(())
    }

    /// The chain presented now.
    pub fn chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|o| o.chain.clone())
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What this host should do about its certificate now.
enum Needed {
    /// Nothing.
    Nothing,
    /// Sign a new certificate (none yet, renewal due, expired, another CA signs now, another
    /// node id).
    Sign,
    /// Present the same certificate with another chain (a CA rotation started or finished).
    Rechain,
}

fn needed(own: Option<&Own>, state: &State, node_id: u64, jitter_permille: i64) -> Needed {
    let Some(own) = own else {
        return Needed::Sign;
    };
    let Some((signer, _)) = state.signer() else {
        return Needed::Nothing;
    };
    let id = &own.identity;
    let renew_at = id
        .renew_at_unix()
        .saturating_add(id.life_secs() * jitter_permille / 1000);
    if id.node_id != node_id
        || own.chain.get(1).map(|c| c.as_ref()) != Some(signer.cert.as_slice())
        || now_unix() >= renew_at
    {
        return Needed::Sign;
    }
    if own.chain.get(2).map(|c| c.as_ref()) != state.cross_cert() {
        return Needed::Rechain;
    }
    Needed::Nothing
}

impl Agent {
    /// Keeps this host's certificate current, on every applied change and every tick: see the
    /// module docs. Runs for the agent's life.
    pub(super) async fn tls_loop(self: Arc<Self>) {
        let mut applied = self.driver.subscribe();
        loop {
            if let Err(e) = self.tls_step().await {
                tracing::warn!("certificate upkeep: {e}");
            }
            let tick = (self.config.cert_lifetime / 60)
                .clamp(Duration::from_secs(1), Duration::from_secs(600));
            tokio::select! {
                r = applied.changed() => if r.is_err() { return },
                () = tokio::time::sleep(tick) => {}
            }
        }
    }

    async fn tls_step(&self) -> Result<(), String> {
        let view = self.driver.view();
        let state = Arc::clone(&view.state);
        if state.tls().is_none() {
            return self
                .maybe_init_tls(&state, view.leader_id == Some(view.node_id))
                .await;
        }
        let Some(me) = state.host(&self.config.name).cloned() else {
            // Not registered yet (joining) or removed: nothing to sign for.
            return Ok(());
        };
        let action = {
            let own = self
                .own_tls
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            needed(
                own.as_ref(),
                &state,
                me.node_id,
                self.own_tls.jitter_permille,
            )
        };
        match action {
            Needed::Nothing => {}
            Needed::Sign => {
                let key = load_or_create_key(&self.config.data_dir).map_err(|e| e.to_string())?;
                let chain = sign_own(
                    &state,
                    me.node_id,
                    &self.config.name,
                    &key,
                    self.config.cert_lifetime,
                )?;
                self.install(key, chain, "signed")?;
            }
            Needed::Rechain => {
                let key = load_or_create_key(&self.config.data_dir).map_err(|e| e.to_string())?;
                let (signer, _) = state.signer().ok_or("no signer CA")?;
                let cert = {
                    let own = self
                        .own_tls
                        .inner
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    own.as_ref()
                        .map(|o| o.chain[0].clone())
                        .ok_or("no certificate")?
                };
                let chain = chain_of(cert, &signer.cert, state.cross_cert());
                self.install(key, chain, "re-chained")?;
            }
        }
        if state.cluster_level() < TLS_LEVEL {
            return Ok(());
        }
        let pin = {
            let own = self
                .own_tls
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match own.as_ref() {
                Some(o) => o.identity.spki_sha256,
                None => return Ok(()),
            }
        };
        if me.key_sha256.is_empty() {
            let command = command::Kind::SetHostKey(SetHostKey {
                host: me.name.clone(),
                node_id: me.node_id,
                key_sha256: pin.to_vec(),
            });
            self.submit(command).await.map_err(|e| e.to_string())?;
            tracing::info!("key pin recorded: peers now require this host's key");
        } else if me.key_sha256 != pin {
            return Err(format!(
                "the cluster pins another key for this host than {}: this host cannot \
                 authenticate; remove it (`vxnet cluster rm {}`), move the data dir away and \
                 join again",
                tls_dir(&self.config.data_dir).join("node.key").display(),
                me.name
            ));
        }
        let report = {
            let own = self
                .own_tls
                .inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            own.as_ref().and_then(|o| {
                let generation = state
                    .trusted_cas()
                    .iter()
                    .find(|c| o.chain.get(1).map(|x| x.as_ref()) == Some(c.cert.as_slice()))?
                    .generation;
                Some((generation, (o.identity.not_after_unix.max(0) as u64) * 1000))
            })
        };
        if let Some((generation, not_after)) = report
            && (me.cert_ca_generation != generation || me.cert_not_after_unix_ms != not_after)
        {
            let command = command::Kind::ReportTls(ReportTls {
                host: me.name.clone(),
                ca_generation: generation,
                not_after_unix_ms: not_after,
            });
            self.submit(command).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Writes and presents a new chain.
    fn install(
        &self,
        key: NodeKey,
        chain: Vec<CertificateDer<'static>>,
        how: &str,
    ) -> Result<(), String> {
        write_chain(&self.config.data_dir, &chain).map_err(|e| e.to_string())?;
        self.transport
            .set_own_cert(chain.clone(), &key)
            .map_err(|e| e.to_string())?;
        let not_after = cert_identity(&chain[0])
            .map(|i| i.not_after_unix)
            .unwrap_or(0);
        self.own_tls.set(chain)?;
        tracing::info!(not_after_unix = not_after, "node certificate {how}");
        Ok(())
    }

    /// A cluster upgraded from a release without TLS gets its CA from its leader once every
    /// host runs a release that applies it.
    async fn maybe_init_tls(&self, state: &State, leader: bool) -> Result<(), String> {
        if !leader || state.cluster_level() < TLS_LEVEL || state.hosts().next().is_none() {
            return Ok(());
        }
        let join_key = match self.config.token.as_deref().map(JoinToken::parse) {
            Some(Ok(token @ JoinToken::Bare { .. })) => token.key().clone(),
            _ => JoinKey::generate().map_err(|e| e.to_string())?,
        };
        let cluster_id = self.driver.view().cluster_id;
        let ca = Ca::generate(cluster_id, 1, SystemTime::now()).map_err(|e| e.to_string())?;
        let command = command::Kind::InitTls(init_tls(&ca, &join_key));
        match self.submit(command).await {
            Ok(_) => tracing::info!(
                "every host runs a release with mutual TLS: the cluster CA was created; hosts \
                 now sign their certificates"
            ),
            // A racing leader's CA won: nothing to do.
            Err(e) => tracing::debug!("cluster CA not created: {e}"),
        }
        Ok(())
    }
}
