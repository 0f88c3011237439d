//! Shared bodies of the peer-TLS fuzz targets (`join_token`, `cert_identity`, `csr`, `ca_der`,
//! `peer_join_request`): each feeds untrusted bytes to a parser of
//! `vxnet_controlplane::transport::{token, pki}` and checks what the design
//! (`docs/design/peer-tls.md` §6, §8) says of the outcome. Any panic is a bug.
//!
//! `controlplane/tests/tls_props.rs` includes this file as a module
//! (`#[path = "../fuzz/src/lib.rs"]`) and drives the same functions with proptest, so the fuzz
//! bodies are compiled and run on stable too.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vxnet_controlplane::transport::pki::{self, Ca, CertIdentity, NodeKey, NodePublicKey};
use vxnet_controlplane::transport::token::{
    self, DIGEST_LEN, EXPORTER_LEN, JoinKey, JoinToken, TOKEN_LEN, TOKEN_PREFIX, TokenError,
};
use vxnet_proto::{JoinRequest, Message};
use x509_parser::prelude::FromDer;

/// The cluster id of the fixture CA.
pub const CLUSTER: u64 = 0x5eed_f022_0000_0001;
/// The node id the fixture CA gives the keys of accepted CSRs.
pub const SIGNED_NODE: u64 = 7;
/// The join key `peer_join_request` checks proofs with.
pub const KEY: [u8; JoinKey::LEN] = *b"vxnet-fuzz-key16";
/// The exporter value `peer_join_request` checks proofs with.
pub const EKM: [u8; EXPORTER_LEN] = [0x5a; EXPORTER_LEN];
/// One day.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// The fixed "now" of the fixtures (2027-01-15).
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A CA, its PKCS#8 key and a node key, made once per process (key generation is slow).
#[derive(Debug)]
pub struct Fixture {
    /// The cluster CA (`CLUSTER`, generation 1).
    pub ca: Ca,
    /// Its key, PKCS#8 DER.
    pub ca_key: Vec<u8>,
    /// A node key.
    pub node: NodeKey,
    /// Its public half.
    pub node_public: NodePublicKey,
}

/// The process-wide fixture.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ca = Ca::generate(CLUSTER, 1, now()).expect("fixture CA");
        let node = NodeKey::generate().expect("fixture node key");
        Fixture {
            ca_key: ca.key_pkcs8_der(),
            node_public: node.public_key().expect("fixture public key"),
            ca,
            node,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Join tokens (§6)

/// Whether a trimmed `--token` value has a join token's prefix: `VXN` and an ASCII digit.
pub fn token_prefixed(s: &str) -> bool {
    s.strip_prefix("VXN")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// What §6 says a `--token` value is, coarsely (the three "malformed" errors are one kind: which
/// one a shape gets is the parser's choice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// Nothing but whitespace.
    Empty,
    /// A bare secret.
    Bare,
    /// `VXN<digits>` with digits other than `1`.
    Version(String),
    /// A `VXN1` token of the wrong shape, bad base32 or non-zero trailing bits.
    Malformed,
    /// A valid token.
    Full([u8; DIGEST_LEN], [u8; JoinKey::LEN]),
}

/// Canonical base32 (RFC 4648 alphabet, either case, no padding) of exactly `N` bytes: the
/// unused low bits of the last character must be zero. Written independently of the parser's
/// `data-encoding` so the two can be compared.
fn base32_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != (N * 8).div_ceil(5) {
        return None;
    }
    let mut out = [0u8; N];
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for b in text.bytes() {
        let v = match b.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (n == N && acc == 0).then_some(out)
}

/// §6's rules, written from the design text rather than from `token.rs`.
pub fn token_kind_by_the_spec(raw: &str) -> TokenKind {
    let s = raw.trim_ascii();
    if s.is_empty() {
        return TokenKind::Empty;
    }
    if !token_prefixed(s) {
        return TokenKind::Bare;
    }
    let version: String = s[3..].chars().take_while(char::is_ascii_digit).collect();
    if version != "1" {
        return TokenKind::Version(version);
    }
    // Exactly `VXN1-<52>-<26>` (byte positions; base32 is ASCII).
    let bytes = s.as_bytes();
    if s.len() != TOKEN_LEN || !s.starts_with(TOKEN_PREFIX) || bytes[57] != b'-' {
        return TokenKind::Malformed;
    }
    let (Some(digest), Some(key)) = (s.get(5..57), s.get(58..)) else {
        return TokenKind::Malformed;
    };
    match (base32_exact(digest), base32_exact(key)) {
        (Some(d), Some(k)) => TokenKind::Full(d, k),
        _ => TokenKind::Malformed,
    }
}

/// The `join_token` target: the bytes as (lossily decoded) UTF-8.
pub fn join_token(data: &[u8]) {
    let _ = check_token(&String::from_utf8_lossy(data));
}

/// Parses `raw` and checks the outcome against §6 ([`token_kind_by_the_spec`]) and the
/// accessors' contracts: a full token re-encodes to the trimmed text (up to case) and parses back
/// to itself; a bare secret's key is derived from the trimmed text and its legacy key is the
/// untrimmed bytes; every error reads as the operator message §6 gives.
pub fn check_token(raw: &str) -> Result<JoinToken, TokenError> {
    let parsed = JoinToken::parse(raw);
    let s = raw.trim_ascii();
    let kind = match &parsed {
        Ok(JoinToken::Bare { key, legacy }) => {
            assert_eq!(*key, JoinKey::from_bare_secret(s), "{raw:?}");
            assert_eq!(legacy.as_slice(), raw.as_bytes());
            let t = parsed.as_ref().expect("ok");
            assert_eq!(t.legacy_key(), Some(raw.as_bytes()));
            assert_eq!((t.encode(), t.ca_digest()), (None, None));
            TokenKind::Bare
        }
        Ok(t @ JoinToken::Full { ca_digest, key }) => {
            let text = t.encode().expect("a full token encodes");
            assert_eq!(text, token::format_token(ca_digest, key));
            assert_eq!(text.len(), TOKEN_LEN);
            assert!(text.eq_ignore_ascii_case(s), "{raw:?} encodes as {text}");
            assert_eq!(JoinToken::parse(&text).as_ref(), Ok(t));
            assert_eq!(t.legacy_key(), None);
            assert_eq!(t.ca_digest(), Some(ca_digest));
            TokenKind::Full(*ca_digest, *key.as_bytes())
        }
        Err(TokenError::Empty) => TokenKind::Empty,
        Err(e @ TokenError::UnknownVersion(v)) => {
            assert!(e.to_string().contains("is not known to this vxnetd"), "{e}");
            TokenKind::Version(v.clone())
        }
        Err(e @ (TokenError::Malformed(_) | TokenError::BadDigest | TokenError::BadSecret)) => {
            assert!(e.to_string().starts_with("malformed join token"), "{e}");
            TokenKind::Malformed
        }
        Err(e @ TokenError::Random(_)) => panic!("parse drew randomness: {e}"),
    };
    assert_eq!(kind, token_kind_by_the_spec(raw), "{raw:?}");
    // `FromStr` is the same parser.
    assert_eq!(raw.parse::<JoinToken>(), parsed);
    parsed
}

// ---------------------------------------------------------------------------------------------
// Join proofs over decoded peer messages (§7.2, §8 step 5)

/// The `peer_join_request` target: a `JoinRequest` as a join-only connection receives it. The
/// proof must verify exactly when it is the right HMAC (never for a wrong-length exporter); the
/// message re-encodes to an equal one; its CSR goes through [`csr`].
pub fn peer_join_request(data: &[u8]) {
    let Ok(req) = JoinRequest::decode(data) else {
        return;
    };
    let again = JoinRequest::decode(req.encode_to_vec().as_slice()).expect("re-encoded message");
    assert_eq!(again, req);
    let key = JoinKey::from_bytes(&KEY).expect("16 bytes");
    let expected = token::client_proof(&key, &EKM, &req.csr);
    let verdict = token::verify_client_proof(&key, &EKM, &req.csr, &req.proof);
    assert_eq!(verdict.is_ok(), req.proof == expected);
    assert!(
        token::verify_client_proof(&key, &EKM[..EXPORTER_LEN - 1], &req.csr, &req.proof).is_err()
    );
    // Neither may a proof of the other direction, nor one keyed with the request's own bytes.
    let host_key = req
        .host
        .as_ref()
        .and_then(|h| h.key_sha256.get(..JoinKey::LEN));
    if let Some(other) = host_key.and_then(JoinKey::from_bytes) {
        let forged = token::client_proof(&other, &EKM, &req.csr);
        let verdict = token::verify_client_proof(&key, &EKM, &req.csr, &forged);
        assert_eq!(verdict.is_ok(), other == key);
        let as_server = token::server_proof(&key, &EKM, &req.csr, 0, &req.csr);
        assert!(token::verify_client_proof(&key, &EKM, &req.csr, &as_server).is_err());
    }
    // What the server does next with a verified proof (here: always).
    csr(&req.csr);
}

// ---------------------------------------------------------------------------------------------
// Certificates and CSRs (§4, §8)

/// The `cert_identity` target: reads a node identity out of arbitrary DER. On success the node
/// id is canonical (never 0), the renewal time lies inside the validity, and `needs_renewal`
/// agrees with the identity it reads.
pub fn cert_identity(data: &[u8]) -> Option<CertIdentity> {
    let id = pki::cert_identity(data);
    let due = pki::needs_renewal(data, now());
    assert_eq!(
        id.is_ok(),
        due.is_ok(),
        "needs_renewal reads the same identity"
    );
    let id = id.ok()?;
    assert_ne!(id.node_id, 0, "node ids are canonical decimal, never 0");
    let renew = id.renew_at_unix();
    if id.not_before_unix <= id.not_after_unix {
        assert!(
            (id.not_before_unix..=id.not_after_unix).contains(&renew),
            "{id:?}"
        );
    }
    let now = now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    assert_eq!(due.ok(), Some(now >= renew));
    Some(id)
}

/// The `csr` target: a joiner's CSR as a member reads it. When its self-signature verifies, the
/// key it yields is the CSR's own (its pin is SHA-256 of the CSR's SubjectPublicKeyInfo, what
/// the joiner sends as `key_sha256`), and the certificate the CA signs for it carries that pin
/// and the node id given.
pub fn csr(data: &[u8]) -> Option<[u8; 32]> {
    let key = NodePublicKey::from_csr_der(data).ok()?;
    let pin = key.spki_sha256();
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(data)
        .expect("a CSR rcgen accepted parses");
    assert_eq!(
        pin,
        pki::sha256(parsed.certification_request_info.subject_pki.raw),
        "the key signed is the one the CSR holds"
    );
    let ca = &fixture().ca;
    let cert = ca
        .sign_node(&key, SIGNED_NODE, "fuzz", now(), DAY)
        .expect("the CA signs any key a CSR proved");
    let id = pki::cert_identity(&cert).expect("a signed certificate has an identity");
    assert_eq!((id.cluster_id, id.node_id), (CLUSTER, SIGNED_NODE));
    assert_eq!(id.spki_sha256, pin);
    Some(pin)
}

/// The `ca_der` target: the first byte picks the key, the fixture CA's (even) or bytes of the
/// input (odd: the next two bytes give the key's length, the rest is certificate then key).
pub fn ca_der(data: &[u8]) {
    match data.split_first() {
        Some((b, rest)) if b & 1 == 1 && rest.len() >= 2 => {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let rest = &rest[2..];
            let (cert, key) = rest.split_at(rest.len().saturating_sub(len));
            check_ca(cert, key);
        }
        Some((_, rest)) => {
            check_ca(rest, &fixture().ca_key);
        }
        None => {}
    }
}

/// Loads a CA from its DER and PKCS#8 DER. When that succeeds the CA holds exactly those
/// certificate bytes, and whatever it signs verifies under that certificate's key and names its
/// cluster (a CA whose key is not its certificate's must be refused at load).
pub fn check_ca(cert: &[u8], key: &[u8]) -> Option<Ca> {
    let ca = Ca::from_der(cert, key).ok()?;
    assert_eq!(ca.cert().as_ref(), cert);
    assert_eq!(ca.digest(), pki::sha256(cert));
    let f = fixture();
    // rcgen re-reads the CA certificate to sign; a certificate only x509-parser's leniency let
    // through may be refused there, but not with a panic.
    if let Ok(node) = ca.sign_node(&f.node_public, SIGNED_NODE, "fuzz", now(), DAY) {
        let id = pki::cert_identity(&node).expect("identity of a signed certificate");
        assert_eq!((id.cluster_id, id.node_id), (ca.cluster_id(), SIGNED_NODE));
        assert_eq!(id.spki_sha256, f.node.spki_sha256());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(cert).expect("loaded CA parses");
        let (_, node) = x509_parser::parse_x509_certificate(&node).expect("signed cert parses");
        node.verify_signature(Some(ca_cert.public_key()))
            .expect("a loaded CA signs with its certificate's key");
    }
    Some(ca)
}
