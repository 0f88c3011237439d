//! The commands of peer TLS (level 2, `docs/design/peer-tls.md` §15): the cluster CA and join
//! key (`InitTls`, `SetJoinKey`), CA rotation (`RotateCa`, `FinishCaRotation`), key pins
//! (`SetHostKey`) and certificate reports (`ReportTls`): part of [`State`]'s apply, plus the
//! read-only views the transport's security view is built from.
//!
//! Apply checks sizes and the order of events only: certificates and keys are opaque bytes here
//! (parsing them belongs to the transport, and a replica must never refuse what another
//! accepted because of a parser difference).

use super::*;

/// Largest CA certificate (DER) the state accepts.
pub const MAX_CA_CERT_LEN: usize = 4096;
/// Largest CA key (PKCS#8 DER) the state accepts.
pub const MAX_KEY_LEN: usize = 512;
/// Length of the join key K.
pub const JOIN_KEY_LEN: usize = 16;
/// Length of a key pin (SHA-256 of a SubjectPublicKeyInfo).
pub const PIN_LEN: usize = 32;

fn check_ca(ca: Option<&CaCert>) -> Result<&CaCert, ApplyError> {
    let Some(ca) = ca else {
        return Err(ApplyError::invalid("no CA certificate given"));
    };
    if ca.generation == 0 {
        return Err(ApplyError::invalid("CA generation must be at least 1"));
    }
    check_der(&ca.cert, "CA certificate")?;
    Ok(ca)
}

fn check_der(der: &[u8], what: &str) -> Result<(), ApplyError> {
    if der.is_empty() || der.len() > MAX_CA_CERT_LEN {
        return Err(ApplyError::invalid(format!(
            "{what} must be 1..={MAX_CA_CERT_LEN} bytes, not {}",
            der.len()
        )));
    }
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), ApplyError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApplyError::invalid(format!(
            "CA key must be 1..={MAX_KEY_LEN} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_join_key(k: &[u8]) -> Result<(), ApplyError> {
    if k.len() != JOIN_KEY_LEN {
        return Err(ApplyError::invalid(format!(
            "join key must be {JOIN_KEY_LEN} bytes, not {}",
            k.len()
        )));
    }
    Ok(())
}

/// Consistency of a restored record: the signer CA is trusted, at most two CAs are, sizes.
pub(super) fn check_record(t: &ClusterTls) -> Result<(), ApplyError> {
    if t.trusted.is_empty() || t.trusted.len() > 2 {
        return Err(ApplyError::invalid(format!(
            "{} trusted CAs (want 1, or 2 during a rotation)",
            t.trusted.len()
        )));
    }
    for ca in &t.trusted {
        check_ca(Some(ca))?;
    }
    if !t
        .trusted
        .iter()
        .any(|c| c.generation == t.signer_generation)
    {
        return Err(ApplyError::invalid(format!(
            "signer CA generation {} is not trusted",
            t.signer_generation
        )));
    }
    check_key(&t.signer_key)?;
    check_join_key(&t.join_key)?;
    if t.cross_cert.len() > MAX_CA_CERT_LEN {
        return Err(ApplyError::invalid("cross certificate too large"));
    }
    Ok(())
}

/// Whether a rotation is under way (a previous CA still trusted or a cross certificate kept).
fn rotating(t: &ClusterTls) -> bool {
    t.trusted.len() > 1 || !t.cross_cert.is_empty()
}

impl State {
    fn tls_mut(&mut self) -> Result<&mut ClusterTls, ApplyError> {
        self.tls
            .as_mut()
            .ok_or_else(|| ApplyError::invalid("the cluster has no CA yet (InitTls first)"))
    }

    /// A pin must be 32 bytes and belong to no other host (one key, one member).
    pub(super) fn check_pin(&self, pin: &[u8], host: &str) -> Result<(), ApplyError> {
        if pin.len() != PIN_LEN {
            return Err(ApplyError::invalid(format!(
                "key pin must be {PIN_LEN} bytes, not {}",
                pin.len()
            )));
        }
        if let Some(other) = self
            .hosts
            .values()
            .find(|h| h.name != host && h.key_sha256 == pin)
        {
            return Err(ApplyError::conflict(format!(
                "key pin is already host {}'s (node id {})",
                other.name, other.node_id
            )));
        }
        Ok(())
    }

    pub(super) fn init_tls(
        &mut self,
        c: &InitTls,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        if let Some(t) = &self.tls {
            return Err(ApplyError::conflict(format!(
                "the cluster already has a CA (generation {})",
                t.signer_generation
            )));
        }
        let ca = check_ca(c.ca.as_ref())?;
        check_key(&c.ca_key)?;
        check_join_key(&c.join_key)?;
        self.tls = Some(ClusterTls {
            trusted: vec![ca.clone()],
            signer_generation: ca.generation,
            signer_key: c.ca_key.clone(),
            join_key: c.join_key.clone(),
            join_key_unix_ms: c.unix_ms,
            cross_cert: Vec::new(),
        });
        up.push(Update::TlsChanged);
        Ok(response::Kind::Noop(Empty {}))
    }

    /// Fills a host's empty pin; the same pin again changes nothing, another one is refused
    /// (v1 has no re-keying: a host that lost its key is removed and joins again).
    pub(super) fn set_host_key(
        &mut self,
        c: &SetHostKey,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        let Some(host) = self.hosts.get(&c.host) else {
            return Err(ApplyError::not_found(format!(
                "host {} is not a member of the cluster",
                c.host
            )));
        };
        if host.node_id != c.node_id {
            return Err(ApplyError::invalid(format!(
                "host {} has node id {}, not {}",
                c.host, host.node_id, c.node_id
            )));
        }
        self.check_pin(&c.key_sha256, &c.host)?;
        if host.key_sha256 == c.key_sha256 {
            return Ok(response::Kind::Noop(Empty {}));
        }
        if !host.key_sha256.is_empty() {
            return Err(ApplyError::conflict(format!(
                "host {} already has another key pin: remove the host and join it again",
                c.host
            )));
        }
        let Some(host) = self.hosts.get_mut(&c.host) else {
            return Err(ApplyError::not_found(format!("host {} vanished", c.host)));
        };
        host.key_sha256 = c.key_sha256.clone();
        up.push(Update::HostChanged(host.clone()));
        Ok(response::Kind::Noop(Empty {}))
    }

    pub(super) fn set_join_key(
        &mut self,
        c: &SetJoinKey,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        check_join_key(&c.join_key)?;
        let t = self.tls_mut()?;
        t.join_key = c.join_key.clone();
        t.join_key_unix_ms = c.unix_ms;
        up.push(Update::TlsChanged);
        Ok(response::Kind::Noop(Empty {}))
    }

    /// Trusts {current, new}, signs with the new CA; the current CA's key leaves the state.
    pub(super) fn rotate_ca(
        &mut self,
        c: &RotateCa,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        let ca = check_ca(c.ca.as_ref())?.clone();
        check_key(&c.ca_key)?;
        check_der(&c.cross_cert, "cross certificate")?;
        let t = self.tls_mut()?;
        if rotating(t) {
            return Err(ApplyError::conflict(format!(
                "a CA rotation to generation {} is under way: finish it first",
                t.signer_generation
            )));
        }
        if Some(ca.generation) != t.signer_generation.checked_add(1) {
            return Err(ApplyError::invalid(format!(
                "the new CA must be generation {}, not {}",
                u64::from(t.signer_generation) + 1,
                ca.generation
            )));
        }
        t.signer_generation = ca.generation;
        t.trusted.push(ca);
        t.signer_key = c.ca_key.clone();
        t.cross_cert = c.cross_cert.clone();
        up.push(Update::TlsChanged);
        Ok(response::Kind::Noop(Empty {}))
    }

    /// Trusts only the signer CA. Refused while a host reports a certificate of an older CA
    /// (naming them) unless `force`; finishing a finished rotation changes nothing.
    pub(super) fn finish_ca_rotation(
        &mut self,
        c: &FinishCaRotation,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        let Some(t) = &self.tls else {
            return Err(ApplyError::invalid(
                "the cluster has no CA yet (InitTls first)",
            ));
        };
        if c.generation != t.signer_generation {
            return Err(ApplyError::conflict(format!(
                "the signer CA is generation {}, not {}",
                t.signer_generation, c.generation
            )));
        }
        if !rotating(t) {
            return Ok(response::Kind::Noop(Empty {}));
        }
        let behind: Vec<String> = self
            .hosts
            .values()
            .filter(|h| h.cert_ca_generation < c.generation)
            .map(|h| format!("{} (generation {})", h.name, h.cert_ca_generation))
            .collect();
        if !behind.is_empty() && !c.force {
            return Err(ApplyError::conflict(format!(
                "host(s) {} still use a certificate of an older CA: wait for them, or force \
                 (they must then join again)",
                behind.join(", ")
            )));
        }
        let t = self.tls_mut()?;
        let signer = t.signer_generation;
        t.trusted.retain(|ca| ca.generation == signer);
        t.cross_cert.clear();
        up.push(Update::TlsChanged);
        Ok(response::Kind::Noop(Empty {}))
    }

    pub(super) fn report_tls(
        &mut self,
        c: &ReportTls,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        let Some(host) = self.hosts.get_mut(&c.host) else {
            return Err(ApplyError::not_found(format!(
                "host {} is not a member of the cluster",
                c.host
            )));
        };
        if host.cert_ca_generation != c.ca_generation
            || host.cert_not_after_unix_ms != c.not_after_unix_ms
        {
            host.cert_ca_generation = c.ca_generation;
            host.cert_not_after_unix_ms = c.not_after_unix_ms;
            up.push(Update::HostChanged(host.clone()));
        }
        Ok(response::Kind::Noop(Empty {}))
    }

    // ----- queries ----------------------------------------------------------------------------

    /// The cluster's TLS record (keys included: never log it but through its redacted `Debug`).
    pub fn tls(&self) -> Option<&ClusterTls> {
        self.tls.as_ref()
    }

    /// The CA certificates peers trust (empty before `InitTls`).
    pub fn trusted_cas(&self) -> &[CaCert] {
        self.tls.as_ref().map_or(&[], |t| t.trusted.as_slice())
    }

    /// The signer CA: its certificate and its key (PKCS#8 DER).
    pub fn signer(&self) -> Option<(&CaCert, &[u8])> {
        let t = self.tls.as_ref()?;
        let ca = t
            .trusted
            .iter()
            .find(|c| c.generation == t.signer_generation)?;
        Some((ca, t.signer_key.as_slice()))
    }

    /// During a CA rotation: the new CA certified by the previous one.
    pub fn cross_cert(&self) -> Option<&[u8]> {
        self.tls
            .as_ref()
            .map(|t| t.cross_cert.as_slice())
            .filter(|c| !c.is_empty())
    }

    /// The join key K.
    pub fn join_key(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|t| t.join_key.as_slice())
    }

    /// Key pins by Raft node id (hosts without a pin are left out).
    pub fn pins(&self) -> BTreeMap<u64, &[u8]> {
        self.hosts
            .values()
            .filter(|h| !h.key_sha256.is_empty())
            .map(|h| (h.node_id, h.key_sha256.as_slice()))
            .collect()
    }

    /// Node ids handed out and no longer members: the revocation list (ids are never reused).
    pub fn removed_node_ids(&self) -> BTreeSet<u64> {
        let members: BTreeSet<u64> = self.hosts.values().map(|h| h.node_id).collect();
        (1..self.next_node_id)
            .filter(|id| !members.contains(id))
            .collect()
    }

    /// Whether a node id was handed out and its host removed since.
    pub fn is_removed(&self, node_id: u64) -> bool {
        node_id >= 1 && node_id < self.next_node_id && self.host_by_node_id(node_id).is_none()
    }

    /// Whether the HMAC (pre-TLS) protocol is still allowed: the state has no CA, or some host
    /// runs below level 2, or some host has no pin yet (§13).
    pub fn legacy_window_open(&self) -> bool {
        self.tls.is_none()
            || self
                .hosts
                .values()
                .any(|h| h.level < 2 || h.key_sha256.is_empty())
    }
}
