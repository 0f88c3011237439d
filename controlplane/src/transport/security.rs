//! What the transport knows of the cluster's security: the [`SecurityView`] taken from the
//! applied state (trusted CAs, members and their key pins, the join key, whether the previous
//! release's shared-secret protocol is still allowed), this host's own certificate, and the
//! rustls configurations built from both.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::ServerConfig;
use tokio::sync::watch;

use super::pki::NodeKey;
use super::tls::{MemberVerifier, OwnCert, TlsError, Trust, client_config, server_config};
use super::token::JoinKey;
use crate::state::State;

/// The part of the replicated state that decides who may talk to us. Rebuilt by the agent after
/// every applied change ([`SecurityView::from_state`]) and handed to
/// [`Transport::set_security`](super::Transport::set_security).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecurityView {
    /// CA certificates (DER) trusted now: one, two during a CA rotation; empty before the
    /// cluster has a CA.
    pub trusted_cas: Vec<CertificateDer<'static>>,
    /// Current members by node id, with their key pin (`None`: no pin yet).
    pub members: BTreeMap<u64, Option<[u8; 32]>>,
    /// Node ids below this and absent from `members` were removed (ids are never reused).
    pub next_node_id: u64,
    /// The join key K, which join proofs are keyed with.
    pub join_key: Option<JoinKey>,
    /// Whether the previous release's shared-secret (HMAC) protocol is still accepted.
    pub legacy_open: bool,
}

impl fmt::Debug for SecurityView {
    // By hand: the join key never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityView")
            .field("trusted_cas", &self.trusted_cas.len())
            .field("members", &self.members.keys().collect::<Vec<_>>())
            .field("next_node_id", &self.next_node_id)
            .field("join_key", &self.join_key.as_ref().map(|_| "<redacted>"))
            .field("legacy_open", &self.legacy_open)
            .finish()
    }
}

impl SecurityView {
    /// The view of an applied state.
    pub fn from_state(state: &State) -> SecurityView {
        SecurityView {
            trusted_cas: state
                .trusted_cas()
                .iter()
                .map(|c| CertificateDer::from(c.cert.clone()))
                .collect(),
            members: state
                .hosts()
                .map(|h| {
                    (
                        h.node_id,
                        <[u8; 32]>::try_from(h.key_sha256.as_slice()).ok(),
                    )
                })
                .collect(),
            next_node_id: state.next_node_id(),
            join_key: state.join_key().and_then(JoinKey::from_bytes),
            legacy_open: state.legacy_window_open(),
        }
    }

    /// The view before any state: the shared secret only (a host that has not joined, or a
    /// cluster of the previous release).
    pub fn legacy() -> SecurityView {
        SecurityView {
            legacy_open: true,
            ..SecurityView::default()
        }
    }

    /// Whether the cluster has a CA (members then speak TLS to each other).
    pub fn has_ca(&self) -> bool {
        !self.trusted_cas.is_empty()
    }

    /// Whether `node_id` may still connect at all: a member, or (not yet known here) an id
    /// this replica has not seen handed out.
    pub fn may_connect(&self, node_id: u64) -> bool {
        self.members.contains_key(&node_id) || node_id >= self.next_node_id
    }
}

/// The [`Trust`] the verifiers consult: the latest [`SecurityView`].
#[derive(Debug, Default)]
pub(super) struct LiveTrust {
    view: RwLock<Arc<SecurityView>>,
}

impl LiveTrust {
    pub(super) fn get(&self) -> Arc<SecurityView> {
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn set(&self, view: Arc<SecurityView>) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = view;
    }
}

impl Trust for LiveTrust {
    fn trusted_cas(&self) -> Vec<CertificateDer<'static>> {
        self.get().trusted_cas.clone()
    }

    fn is_member(&self, node_id: u64) -> bool {
        self.get().members.contains_key(&node_id)
    }

    fn member_pin(&self, node_id: u64) -> Option<[u8; 32]> {
        self.get().members.get(&node_id).copied().flatten()
    }

    fn was_removed(&self, node_id: u64) -> bool {
        let view = self.get();
        node_id >= 1 && node_id < view.next_node_id && !view.members.contains_key(&node_id)
    }
}

/// This host's TLS side once it has a certificate: what it presents and the configurations of
/// both ends of a member connection.
pub(super) struct TlsSide {
    pub(super) own: Arc<OwnCert>,
    pub(super) server: Arc<ServerConfig>,
    pub(super) client: Arc<ClientConfig>,
}

/// Security state shared by all of the transport's tasks.
pub(super) struct Security {
    pub(super) trust: Arc<LiveTrust>,
    tls: RwLock<Option<Arc<TlsSide>>>,
    /// Bumped on every view change: open connections re-check whether they may stay.
    pub(super) changed: watch::Sender<u64>,
}

impl Security {
    pub(super) fn new(view: SecurityView) -> Security {
        let trust = Arc::new(LiveTrust::default());
        trust.set(Arc::new(view));
        Security {
            trust,
            tls: RwLock::new(None),
            changed: watch::channel(0).0,
        }
    }

    pub(super) fn view(&self) -> Arc<SecurityView> {
        self.trust.get()
    }

    pub(super) fn tls(&self) -> Option<Arc<TlsSide>> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the view; returns whether it changed.
    pub(super) fn set_view(&self, view: SecurityView) -> bool {
        if *self.trust.get() == view {
            return false;
        }
        self.trust.set(Arc::new(view));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// Installs or renews this host's certificate chain (node certificate first).
    pub(super) fn set_own_cert(
        &self,
        cluster_id: u64,
        chain: Vec<CertificateDer<'static>>,
        key: &NodeKey,
    ) -> Result<(), TlsError> {
        let mut tls = self.tls.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(side) = tls.as_ref() {
            return side.own.replace(chain, key);
        }
        let own = Arc::new(OwnCert::new(chain, key)?);
        let trust: Arc<dyn Trust> = self.trust.clone();
        let verifier = Arc::new(MemberVerifier::new(cluster_id, trust));
        *tls = Some(Arc::new(TlsSide {
            server: server_config(verifier.clone(), own.clone())?,
            client: client_config(verifier, Some(own.clone()))?,
            own,
        }));
        drop(tls);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}
