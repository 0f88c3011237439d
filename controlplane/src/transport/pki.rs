//! The cluster CA, node keys and node certificates, and reading a peer's identity out of its
//! certificate.
//!
//! Pure: no I/O and no clock. Every function that needs the time takes `now`; the only outside
//! input is the OS randomness behind key generation (ring) and certificate serials (getrandom).
//! Keys are ECDSA P-256, certificates are made by rcgen and read back with x509-parser.
//!
//! A node certificate names its holder with exactly one URI SAN
//! `vxnet://<cluster id, 16 hex>/node/<node id, decimal>`; its CN is the host name (for humans:
//! nothing is decided on it). What a verifier trusts is the chain, that URI and the key's
//! SHA-256 pin (see `tls.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Default lifetime of a node certificate (renewed at 2/3 of it).
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a CA certificate: long enough never to be the reason a cluster stops.
pub const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How far `notBefore` is set before `now`, so peers whose clocks lag a little accept a fresh
/// certificate.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Scheme of the URI SAN that names a node.
pub const NODE_URI_SCHEME: &str = "vxnet://";

/// Errors of the PKI functions. Messages name what was wrong with the input.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not generate, parse or sign.
    #[error("certificate or key error: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The OS random source failed (serial numbers).
    #[error("no randomness from the OS: {0}")]
    Random(String),
    /// A time (now ± lifetime) falls outside what a certificate can encode.
    #[error("time out of range for a certificate")]
    TimeOutOfRange,
    /// A PEM text held no block of the expected kind.
    #[error("no PEM {0} block found")]
    NoPem(&'static str),
    /// The bytes are not an X.509 certificate.
    #[error("malformed certificate: {0}")]
    BadCertificate(String),
    /// The certificate is not a vxnet cluster CA (its CN is not `vxnet cluster CA <id> gen <N>`).
    #[error("not a vxnet cluster CA certificate: {0}")]
    NotVxnetCa(String),
    /// The certificate has no usable node identity.
    #[error("certificate carries no valid vxnet node identity: {0}")]
    BadIdentity(&'static str),
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The CA digest carried in join tokens: SHA-256 of the CA certificate's DER.
pub fn cert_digest(cert: &[u8]) -> [u8; 32] {
    sha256(cert)
}

/// The URI SAN naming `node_id` of `cluster_id`: `vxnet://<cluster_id:016x>/node/<node_id>`.
pub fn node_uri(cluster_id: u64, node_id: u64) -> String {
    format!("{NODE_URI_SCHEME}{cluster_id:016x}/node/{node_id}")
}

fn ca_common_name(cluster_id: u64, generation: u32) -> String {
    format!("vxnet cluster CA {cluster_id:016x} gen {generation}")
}

/// A 16-byte serial (126 random bits): positive as DER INTEGER requires (top bit clear) and
/// with a non-zero first byte so its encoded length never varies.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| PkiError::Random(e.to_string()))?;
    b[0] &= 0x7f;
    // A leading zero byte would be stripped by DER and leave 15 bytes; keep the length fixed.
    b[0] |= 0x01;
    Ok(SerialNumber::from_slice(&b))
}

fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::TimeOutOfRange)?
        .as_secs();
    let secs = i64::try_from(secs).map_err(|_| PkiError::TimeOutOfRange)?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| PkiError::TimeOutOfRange)
}

/// `(now - BACKDATE, now + lifetime)` as certificate times.
fn validity(
    now: SystemTime,
    lifetime: Duration,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), PkiError> {
    let from = now.checked_sub(BACKDATE).ok_or(PkiError::TimeOutOfRange)?;
    let to = now.checked_add(lifetime).ok_or(PkiError::TimeOutOfRange)?;
    Ok((to_offset(from)?, to_offset(to)?))
}

/// The CA certificate's fields. Deterministic in (cluster id, generation) except serial and
/// validity, so a cross-signed copy gets byte-identical subject names.
fn ca_params(
    cluster_id: u64,
    generation: u32,
    now: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "vxnet");
    dn.push(DnType::CommonName, ca_common_name(cluster_id, generation));
    p.distinguished_name = dn;
    // pathlen 0: the CA signs node certificates only, never another CA (the cross-signed copy
    // is signed *by* the old CA, it is not an extra level below it).
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (p.not_before, p.not_after) = validity(now, CA_LIFETIME)?;
    p.serial_number = Some(random_serial()?);
    Ok(p)
}

fn parse_cert(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, PkiError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// Reads `(cluster id, generation)` back from a CA certificate's CN.
fn parse_ca_name(der: &[u8]) -> Result<(u64, u32), PkiError> {
    let cert = parse_cert(der)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::NotVxnetCa("no common name".into()))?;
    let bad = || PkiError::NotVxnetCa(format!("common name {cn:?}"));
    let rest = cn.strip_prefix("vxnet cluster CA ").ok_or_else(bad)?;
    let (id, generation) = rest.split_once(" gen ").ok_or_else(bad)?;
    if id.len() != 16 {
        return Err(bad());
    }
    let id = u64::from_str_radix(id, 16).map_err(|_| bad())?;
    let generation = generation.parse().map_err(|_| bad())?;
    Ok((id, generation))
}

/// PEM with 64-character lines (RFC 7468), written by hand: parsing goes through
/// rustls-pki-types, so no PEM crate is needed for the few bytes we write.
fn pem_encode(tag: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

/// The cluster CA: its certificate and its signing key (which every member holds, in the
/// replicated state).
pub struct Ca {
    cert: CertificateDer<'static>,
    key: KeyPair,
    cluster_id: u64,
    generation: u32,
}

impl std::fmt::Debug for Ca {
    // The key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cluster_id", &format_args!("{:016x}", self.cluster_id))
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA, `vxnet cluster CA <cluster id> gen <generation>`, valid from
    /// `now - BACKDATE` for 20 years. Made by the proposer (apply only stores it).
    pub fn generate(cluster_id: u64, generation: u32, now: SystemTime) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params(cluster_id, generation, now)?.self_signed(&key)?;
        Ok(Ca {
            cert: cert.der().clone(),
            key,
            cluster_id,
            generation,
        })
    }

    /// Loads a CA from its certificate DER and its PKCS#8 key DER (the replicated state's
    /// form). Checks that the certificate is a vxnet CA and that the key is its key.
    pub fn from_der(cert: &[u8], key_pkcs8: &[u8]) -> Result<Ca, PkiError> {
        let key = KeyPair::try_from(key_pkcs8)?;
        Self::assemble(CertificateDer::from(cert.to_vec()), key)
    }

    /// Loads a CA from PEM texts (`CERTIFICATE` and `PRIVATE KEY` blocks).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| PkiError::NoPem("CERTIFICATE"))?;
        let key = KeyPair::from_pem(key_pem)?;
        Self::assemble(cert, key)
    }

    fn assemble(cert: CertificateDer<'static>, key: KeyPair) -> Result<Ca, PkiError> {
        let (cluster_id, generation) = parse_ca_name(&cert)?;
        let parsed = parse_cert(&cert)?;
        // Exactly the name `Ca::generate` writes (O, CN): this name becomes the issuer of every
        // certificate the CA signs, and an attribute the encoder cannot write back (a damaged
        // OID) must be refused here, not met while signing.
        let known = |oid: &x509_parser::der_parser::oid::Oid<'_>| {
            *oid == x509_parser::oid_registry::OID_X509_COMMON_NAME
                || *oid == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME
        };
        let attributes: Vec<_> = parsed.subject().iter_attributes().collect();
        if attributes.len() != 2 || !attributes.iter().all(|a| known(a.attr_type())) {
            return Err(PkiError::NotVxnetCa(
                "its name is not \"O=vxnet, CN=vxnet cluster CA ...\"".into(),
            ));
        }
        // A certificate that is not a CA cannot anchor anything: webpki would refuse every node
        // certificate it signs, so refuse it here with a clear message instead.
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::NotVxnetCa(
                "basicConstraints CA:true missing".into(),
            ));
        }
        // A key that is not the certificate's would sign node certificates nobody can verify:
        // refuse it at load time rather than at the first handshake.
        let spki = parsed.public_key().raw.to_vec();
        if spki != key.subject_public_key_info() {
            return Err(PkiError::KeyMismatch);
        }
        Ok(Ca {
            cert,
            key,
            cluster_id,
            generation,
        })
    }

    /// The CA certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM (for `tls/ca.crt`).
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The CA key as PKCS#8 DER (for the replicated state; handle as a secret).
    pub fn key_pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The cluster id this CA was made for.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The CA generation (1 at bootstrap, +1 per rotation).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// SHA-256 of the CA certificate DER: the digest in join tokens.
    pub fn digest(&self) -> [u8; 32] {
        cert_digest(&self.cert)
    }

    /// Signs a node certificate for `public_key`. Only the key comes from the requester:
    /// names, usages and lifetime are ours. `notBefore = now - BACKDATE`,
    /// `notAfter = now + lifetime`.
    pub fn sign_node(
        &self,
        public_key: &NodePublicKey,
        node_id: u64,
        host_name: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_name);
        p.distinguished_name = dn;
        let uri = node_uri(self.cluster_id, node_id).try_into()?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Both: every member is a server to some peers and a client of others.
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        (p.not_before, p.not_after) = validity(now, lifetime)?;
        p.serial_number = Some(random_serial()?);
        Ok(p.signed_by(&public_key.spki, &issuer)?.der().clone())
    }

    /// The cross-signed copy of `new` for a CA rotation: the new CA's subject and key,
    /// certified by this (old) CA. Hosts present `[node, cross]`, so replicas still trusting
    /// only the old CA can build a path to it.
    pub fn cross_sign(
        &self,
        new: &Ca,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let params = ca_params(new.cluster_id, new.generation, now)?;
        Ok(params.signed_by(&new.key, &issuer)?.der().clone())
    }
}

/// A node's public key, as a CA signs it (from the node's own key or from a checked CSR).
#[derive(Debug, Clone)]
pub struct NodePublicKey {
    spki: SubjectPublicKeyInfo,
    spki_der: Vec<u8>,
}

impl NodePublicKey {
    /// From a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(spki_der: &[u8]) -> Result<NodePublicKey, PkiError> {
        let spki = SubjectPublicKeyInfo::from_der(spki_der)?;
        Ok(NodePublicKey {
            spki,
            spki_der: spki_der.to_vec(),
        })
    }

    /// From a PKCS#10 CSR (DER). Its self-signature is checked (proof that the requester holds
    /// the key); nothing else in it is used. The key is the CSR's own SubjectPublicKeyInfo, byte
    /// for byte (rcgen's reading derives the curve from the signature's hash, which a P-256 key
    /// signed with SHA-384 would get wrong).
    pub fn from_csr_der(csr: &[u8]) -> Result<NodePublicKey, PkiError> {
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))?;
        let (rest, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr)
                .map_err(|e| PkiError::BadCertificate(format!("certificate request: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::BadCertificate(
                "trailing bytes after the certificate request".into(),
            ));
        }
        Self::from_spki_der(parsed.certification_request_info.subject_pki.raw)
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER: the pin the replicated state keeps per host.
    pub fn spki_sha256(&self) -> [u8; 32] {
        sha256(&self.spki_der)
    }
}

/// A node's own key pair (never leaves the host; `tls/node.key`).
pub struct NodeKey {
    key: KeyPair,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is never printed; the pin identifies it.
        f.debug_struct("NodeKey")
            .field("spki_sha256", &hex(&self.spki_sha256()))
            .finish()
    }
}

impl NodeKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<NodeKey, PkiError> {
        Ok(NodeKey {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// From PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<NodeKey, PkiError> {
        Ok(NodeKey {
            key: KeyPair::try_from(der)?,
        })
    }

    /// From a PEM `PRIVATE KEY` block.
    pub fn from_pem(pem: &str) -> Result<NodeKey, PkiError> {
        Ok(NodeKey {
            key: KeyPair::from_pem(pem)?,
        })
    }

    /// PKCS#8 DER (secret).
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// PKCS#8 PEM (secret; the form of `tls/node.key`).
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The key in the form rustls loads.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The public half.
    pub fn public_key(&self) -> Result<NodePublicKey, PkiError> {
        NodePublicKey::from_spki_der(&self.key.subject_public_key_info())
    }

    /// SHA-256 of the SubjectPublicKeyInfo (the pin).
    pub fn spki_sha256(&self) -> [u8; 32] {
        sha256(&self.key.subject_public_key_info())
    }

    /// A CSR (DER) for this key, CN = `host_name`: what a joiner sends.
    pub fn csr_der(&self, host_name: &str) -> Result<Vec<u8>, PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_name);
        p.distinguished_name = dn;
        Ok(p.serialize_request(&self.key)?.der().to_vec())
    }
}

/// What a certificate says about its holder. Parsing does not verify anything: use it on
/// certificates a verifier accepted, or for one's own certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// Cluster id from the URI SAN.
    pub cluster_id: u64,
    /// Node id from the URI SAN.
    pub node_id: u64,
    /// The subject CN (the host name; informational).
    pub host_name: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo: compared with the member's pin.
    pub spki_sha256: [u8; 32],
    /// `notBefore`, Unix seconds.
    pub not_before_unix: i64,
    /// `notAfter`, Unix seconds.
    pub not_after_unix: i64,
}

impl CertIdentity {
    /// When the certificate was issued (Unix seconds): `notBefore` is set [`BACKDATE`] earlier,
    /// for peers whose clocks lag.
    pub fn issued_unix(&self) -> i64 {
        self.not_before_unix
            .saturating_add(BACKDATE.as_secs() as i64)
            .min(self.not_after_unix)
    }

    /// The lifetime it was issued for, in seconds (from issue to `notAfter`).
    pub fn life_secs(&self) -> i64 {
        self.not_after_unix
            .saturating_sub(self.issued_unix())
            .max(0)
    }

    /// When the certificate should be renewed: 2/3 of its life after it was issued (Unix
    /// seconds; the backdating is not life). The agent adds its ±5% jitter.
    pub fn renew_at_unix(&self) -> i64 {
        let life = self.life_secs();
        self.issued_unix()
            .saturating_add(life / 3 * 2 + (life % 3) * 2 / 3)
    }
}

/// Reads the node identity of a certificate: exactly one `vxnet://` URI SAN, canonical
/// (16 lower-case hex digits for the cluster, decimal without sign or leading zero for the node).
pub fn cert_identity(der: &[u8]) -> Result<CertIdentity, PkiError> {
    let cert = parse_cert(der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| PkiError::BadIdentity("malformed subjectAltName"))?
        .ok_or(PkiError::BadIdentity("no subjectAltName"))?;
    let mut found = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name
            && let Some(rest) = uri.strip_prefix(NODE_URI_SCHEME)
        {
            // Two names would make "which node is this" ambiguous: refuse rather than pick.
            if found.replace(rest).is_some() {
                return Err(PkiError::BadIdentity("more than one vxnet URI"));
            }
        }
    }
    let rest = found.ok_or(PkiError::BadIdentity("no vxnet:// URI in subjectAltName"))?;
    let (cluster, node) = rest
        .split_once("/node/")
        .ok_or(PkiError::BadIdentity("malformed vxnet URI"))?;
    if cluster.len() != 16
        || !cluster
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(PkiError::BadIdentity(
            "malformed cluster id in the vxnet URI",
        ));
    }
    let cluster_id = u64::from_str_radix(cluster, 16)
        .map_err(|_| PkiError::BadIdentity("malformed cluster id in the vxnet URI"))?;
    // Canonical decimal only, so one node id has one spelling.
    if node.is_empty() || node.starts_with('0') || !node.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PkiError::BadIdentity("malformed node id in the vxnet URI"));
    }
    let node_id = node
        .parse()
        .map_err(|_| PkiError::BadIdentity("node id out of range"))?;
    let host_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(CertIdentity {
        cluster_id,
        node_id,
        host_name,
        spki_sha256: sha256(cert.public_key().raw),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// Whether `cert` is due for renewal at `now`: past 2/3 of its life, or expired.
pub fn needs_renewal(cert: &[u8], now: SystemTime) -> Result<bool, PkiError> {
    let id = cert_identity(cert)?;
    let now = to_offset(now)?.unix_timestamp();
    Ok(now >= id.renew_at_unix())
}

/// The certificates of a PEM text (`CERTIFICATE` blocks, in order): reads `tls/node.crt`.
pub fn certs_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PkiError::NoPem("CERTIFICATE"))?;
    if certs.is_empty() {
        return Err(PkiError::NoPem("CERTIFICATE"));
    }
    Ok(certs)
}

/// PEM text of a certificate chain (writes `tls/node.crt`).
pub fn certs_to_pem(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests;
