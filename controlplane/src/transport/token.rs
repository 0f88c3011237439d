//! The join token (`VXN1-<CA digest>-<secret>`), the key `K` a bare `--token` secret stands for,
//! and the join proofs keyed with `K` over a TLS exporter value.
//!
//! Pure: no I/O but the OS random source in [`JoinKey::generate`], no TLS types (the exporter
//! value arrives as bytes), so the parser can be property-tested and fuzzed on its own.
//!
//! A full token names the cluster's CA (SHA-256 of its certificate DER), which lets a joiner
//! refuse an impostor before it proves anything; a bare secret (any other `--token` value, as in
//! earlier releases) authenticates the CA afterwards, through the server's proof bound to the TLS
//! session.

use std::fmt;
use std::str::FromStr;

pub use super::tls::{EXPORTER_LABEL, EXPORTER_LEN};
use data_encoding::BASE32_NOPAD_NOCASE;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What every join token of this release starts with.
pub const TOKEN_PREFIX: &str = "VXN1-";
/// Length of a join token: prefix, 52 digest characters, `-`, 26 secret characters.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + DIGEST_CHARS + 1 + KEY_CHARS;
/// Length of the CA digest a token carries (SHA-256 of the CA certificate DER).
pub const DIGEST_LEN: usize = 32;
/// Length of a proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;

/// Base32 characters of a 32-byte digest (256 bits / 5, rounded up; 4 trailing zero bits).
const DIGEST_CHARS: usize = 52;
/// Base32 characters of a 16-byte key (128 bits / 5, rounded up; 2 trailing zero bits).
const KEY_CHARS: usize = 26;
/// Domain separation of the bare-secret derivation: the hash of a secret for this purpose can
/// never equal a hash of the same bytes taken for another.
const BARE_KEY_CONTEXT: &[u8] = b"vxnet join secret v1\0";
// Distinct labels, so that a joiner's proof can never be replayed as a server's (or the reverse).
const CLIENT_LABEL: &[u8] = b"vxnet-join-client-v1";
const SERVER_LABEL: &[u8] = b"vxnet-join-server-v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a `--token` value was refused, or a key could not be drawn. The messages are meant for the
/// operator as they are (they end up in the agent's exit message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing but whitespace.
    #[error("the token is empty")]
    Empty,
    /// `VXN<digits>` with a version other than 1: a token of a later release.
    #[error("join token version {0} is not known to this vxnetd (it reads VXN1 tokens)")]
    UnknownVersion(String),
    /// A `VXN1` token of the wrong shape or length: most likely cut short by a copy-paste.
    #[error("malformed join token: {0} (copy the whole token)")]
    Malformed(&'static str),
    /// The CA digest part is not canonical base32 of 32 bytes.
    #[error("malformed join token: bad CA digest")]
    BadDigest,
    /// The secret part is not canonical base32 of 16 bytes.
    #[error("malformed join token: bad secret")]
    BadSecret,
    /// The OS random source failed while generating a key.
    #[error("cannot draw a random join key: {0}")]
    Random(String),
}

/// A join proof that does not verify: wrong secret, another TLS session (a relay), or other
/// bytes than the ones it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the join proof does not verify")]
pub struct ProofMismatch;

/// The 16-byte key `K` that join proofs are keyed with: the secret half of a join token, or
/// derived from a bare secret. Its `Debug` never shows the bytes, and `==` takes the same time
/// wherever the keys differ.
#[derive(Clone)]
pub struct JoinKey([u8; JoinKey::LEN]);

impl JoinKey {
    /// Length of a key in bytes.
    pub const LEN: usize = 16;

    /// A fresh key from the OS random source (a new cluster, `join-token --rotate`).
    pub fn generate() -> Result<Self, TokenError> {
        let mut k = [0u8; Self::LEN];
        getrandom::getrandom(&mut k).map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Self(k))
    }

    /// The key stored in the replicated state; `None` unless `bytes` is exactly 16 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The key a bare secret `S` stands for: `SHA-256("vxnet join secret v1\0" || S)[..16]`.
    /// Hashed rather than used as is so that `K` has a fixed length whatever `S` is, and the
    /// TLS-era proofs never use the same key as the previous release's HMAC handshake.
    pub fn from_bare_secret(secret: &str) -> Self {
        let digest = Sha256::new()
            .chain_update(BARE_KEY_CONTEXT)
            .chain_update(secret.as_bytes())
            .finalize();
        let mut k = [0u8; Self::LEN];
        k.copy_from_slice(&digest[..Self::LEN]);
        Self(k)
    }

    /// The raw key, for the replicated state and the proofs.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl PartialEq for JoinKey {
    // By hand: a derived `==` stops at the first differing byte, which a timing attack can see.
    fn eq(&self, other: &Self) -> bool {
        let diff = self
            .0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl Eq for JoinKey {}

impl fmt::Debug for JoinKey {
    // By hand: the key is the cluster's join secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinKey(<redacted>)")
    }
}

/// What a `--token` value holds, parsed by [`JoinToken::parse`]. Its `Debug` shows the CA digest
/// (public: a certificate's hash) but never a key or a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum JoinToken {
    /// `VXN1-<digest>-<secret>`: the joiner accepts only a server whose chain holds the CA with
    /// this digest, and proves the key only to such a server.
    Full {
        /// SHA-256 of the cluster CA's certificate DER.
        ca_digest: [u8; DIGEST_LEN],
        /// The join key.
        key: JoinKey,
    },
    /// Any other value, the `--token SECRET` of earlier releases.
    Bare {
        /// [`JoinKey::from_bare_secret`] of the trimmed secret.
        key: JoinKey,
        /// The HMAC key of the previous release's handshake: the bytes exactly as given
        /// (untrimmed, as that release uses them), so both releases agree on one config value.
        legacy: Vec<u8>,
    },
}

impl JoinToken {
    /// Parses a `--token` value: surrounding ASCII whitespace is ignored; a value starting with
    /// `VXN` and an ASCII digit is a join token and must parse exactly (a damaged token is an
    /// error, never silently a bare secret); anything else is a bare secret. Base32 is accepted
    /// in either case.
    pub fn parse(raw: &str) -> Result<Self, TokenError> {
        let s = raw.trim_ascii();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let Some(rest) = s
            .strip_prefix("VXN")
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        else {
            // The lower-case `vxn1-` is a bare secret too: tokens are generated with an upper
            // case prefix, and a secret someone chose must not turn into an error.
            return Ok(Self::Bare {
                key: JoinKey::from_bare_secret(s),
                legacy: raw.as_bytes().to_vec(),
            });
        };
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (version, body) = rest.split_at(digits);
        if version != "1" {
            // Whatever follows: a later release may shape its tokens differently.
            return Err(TokenError::UnknownVersion(version.to_owned()));
        }
        let body = body
            .strip_prefix('-')
            .ok_or(TokenError::Malformed("expected VXN1-<CA digest>-<secret>"))?;
        let (digest, key) = body
            .split_once('-')
            .ok_or(TokenError::Malformed("no secret part"))?;
        // Byte lengths: any non-ASCII character makes a part too long or fails base32 below.
        if digest.len() != DIGEST_CHARS || key.len() != KEY_CHARS {
            return Err(TokenError::Malformed("wrong length"));
        }
        // `BASE32_NOPAD_NOCASE` refuses non-zero trailing bits, so each token has one spelling
        // per case and a changed last character cannot decode to the same bytes.
        let ca_digest = decode_exact::<DIGEST_LEN>(digest).ok_or(TokenError::BadDigest)?;
        let key = decode_exact::<{ JoinKey::LEN }>(key).ok_or(TokenError::BadSecret)?;
        Ok(Self::Full {
            ca_digest,
            key: JoinKey(key),
        })
    }

    /// A new full token for the CA with digest `ca_digest`, with a fresh random key.
    pub fn generate(ca_digest: [u8; DIGEST_LEN]) -> Result<Self, TokenError> {
        Ok(Self::Full {
            ca_digest,
            key: JoinKey::generate()?,
        })
    }

    /// The `VXN1-…` text of a full token (what `vxnet cluster join-token` prints); `None` for a
    /// bare secret, which has no token form.
    pub fn encode(&self) -> Option<String> {
        match self {
            Self::Full { ca_digest, key } => Some(format_token(ca_digest, key)),
            Self::Bare { .. } => None,
        }
    }

    /// The key the join proofs use.
    pub fn key(&self) -> &JoinKey {
        match self {
            Self::Full { key, .. } | Self::Bare { key, .. } => key,
        }
    }

    /// The CA digest a full token pins; `None` for a bare secret.
    pub fn ca_digest(&self) -> Option<&[u8; DIGEST_LEN]> {
        match self {
            Self::Full { ca_digest, .. } => Some(ca_digest),
            Self::Bare { .. } => None,
        }
    }

    /// The previous release's HMAC key; `None` for a full token, which that release cannot
    /// check (a joiner holding one must not fall back to the shared-secret handshake).
    pub fn legacy_key(&self) -> Option<&[u8]> {
        match self {
            Self::Full { .. } => None,
            Self::Bare { legacy, .. } => Some(legacy),
        }
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        Self::parse(s)
    }
}

impl fmt::Debug for JoinToken {
    // By hand so that neither the key nor a bare secret ever ends up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { ca_digest, key } => f
                .debug_struct("Full")
                .field("ca_digest", &hex(ca_digest))
                .field("key", key)
                .finish(),
            Self::Bare { key, .. } => f
                .debug_struct("Bare")
                .field("key", key)
                .field("legacy", &"<redacted>")
                .finish(),
        }
    }
}

/// `VXN1-<base32 of ca_digest>-<base32 of key>`, lower case, no padding: 84 characters. Lower
/// case because it is easier to read and type; the parser takes either.
pub fn format_token(ca_digest: &[u8; DIGEST_LEN], key: &JoinKey) -> String {
    let mut s = String::with_capacity(TOKEN_LEN);
    s.push_str(TOKEN_PREFIX);
    s.push_str(&BASE32_NOPAD_NOCASE.encode(ca_digest).to_ascii_lowercase());
    s.push('-');
    s.push_str(
        &BASE32_NOPAD_NOCASE
            .encode(key.as_bytes())
            .to_ascii_lowercase(),
    );
    s
}

/// The joiner's proof: `HMAC-SHA256(K, "vxnet-join-client-v1" || ekm || SHA-256(csr_der))`.
/// `ekm` is the session's exporter value ([`EXPORTER_LABEL`], [`EXPORTER_LEN`] bytes): a proof
/// made on one TLS session is worthless on another, so a man in the middle cannot relay it.
pub fn client_proof(key: &JoinKey, ekm: &[u8], csr_der: &[u8]) -> [u8; PROOF_LEN] {
    client_mac(key, ekm, csr_der).finalize().into_bytes().into()
}

/// Checks a joiner's proof in constant time (see [`client_proof`]). An exporter value of the
/// wrong length is refused: it would mean a caller bug, and a proof over it binds no session.
pub fn verify_client_proof(
    key: &JoinKey,
    ekm: &[u8],
    csr_der: &[u8],
    proof: &[u8],
) -> Result<(), ProofMismatch> {
    check_ekm(ekm)?;
    client_mac(key, ekm, csr_der)
        .verify_slice(proof)
        .map_err(|_| ProofMismatch)
}

/// The server's proof, answering a join: `HMAC-SHA256(K, "vxnet-join-server-v1" || ekm ||
/// SHA-256(ca_cert_der) || node_id BE || SHA-256(cert_der))`, `cert_der` the issued node
/// certificate. For a bare secret this is what authenticates the CA: only a holder of `K` on
/// this very session (whose exporter covers the server's certificate) can produce it.
pub fn server_proof(
    key: &JoinKey,
    ekm: &[u8],
    ca_cert_der: &[u8],
    node_id: u64,
    cert_der: &[u8],
) -> [u8; PROOF_LEN] {
    server_mac(key, ekm, ca_cert_der, node_id, cert_der)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a server's proof in constant time (see [`server_proof`]); wrong-length exporter values
/// are refused as in [`verify_client_proof`].
pub fn verify_server_proof(
    key: &JoinKey,
    ekm: &[u8],
    ca_cert_der: &[u8],
    node_id: u64,
    cert_der: &[u8],
    proof: &[u8],
) -> Result<(), ProofMismatch> {
    check_ekm(ekm)?;
    server_mac(key, ekm, ca_cert_der, node_id, cert_der)
        .verify_slice(proof)
        .map_err(|_| ProofMismatch)
}

/// Decodes base32 (either case) that must hold exactly `N` bytes with zero trailing bits.
fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    BASE32_NOPAD_NOCASE
        .decode(text.as_bytes())
        .ok()?
        .try_into()
        .ok()
}

fn check_ekm(ekm: &[u8]) -> Result<(), ProofMismatch> {
    if ekm.len() == EXPORTER_LEN {
        Ok(())
    } else {
        Err(ProofMismatch)
    }
}

fn new_mac(key: &JoinKey, label: &[u8], ekm: &[u8]) -> HmacSha256 {
    // Both labels are 20 bytes, the exporter 32 (verification refuses any other length) and
    // every later field is a fixed-size hash or integer: the concatenation is unambiguous.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.update(ekm);
    mac
}

fn client_mac(key: &JoinKey, ekm: &[u8], csr_der: &[u8]) -> HmacSha256 {
    let mut mac = new_mac(key, CLIENT_LABEL, ekm);
    mac.update(&Sha256::digest(csr_der));
    mac
}

fn server_mac(
    key: &JoinKey,
    ekm: &[u8],
    ca_cert_der: &[u8],
    node_id: u64,
    cert_der: &[u8],
) -> HmacSha256 {
    let mut mac = new_mac(key, SERVER_LABEL, ekm);
    mac.update(&Sha256::digest(ca_cert_der));
    mac.update(&node_id.to_be_bytes());
    mac.update(&Sha256::digest(cert_der));
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DIGEST: [u8; 32] = [0xa5; 32];
    /// Bytes 0..32: the exporter value of the known-answer vectors (computed with Python's hmac).
    const EKM: [u8; 32] = *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\
        \x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f";

    fn token(ca_digest: [u8; 32], key: [u8; 16]) -> String {
        format_token(&ca_digest, &JoinKey(key))
    }
    fn err(s: &str) -> TokenError {
        JoinToken::parse(s).expect_err(s)
    }
    fn is_bare(s: &str) -> bool {
        matches!(JoinToken::parse(s), Ok(JoinToken::Bare { .. }))
    }

    #[test]
    fn generated_tokens_have_the_documented_shape_and_round_trip() {
        let t = JoinToken::generate(DIGEST).unwrap();
        let text = t.encode().unwrap();
        assert_eq!(text.len(), TOKEN_LEN);
        assert_eq!(TOKEN_LEN, 84);
        let (prefix, rest) = text.split_at(TOKEN_PREFIX.len());
        assert_eq!(prefix, "VXN1-");
        assert!(
            rest.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7' | b'-'))
        );
        assert_eq!(rest.find('-'), Some(52));
        assert_eq!(JoinToken::parse(&text).unwrap(), t);
        assert_eq!(t.ca_digest(), Some(&DIGEST));
        assert_eq!(t.legacy_key(), None);
        assert_ne!(JoinToken::generate(DIGEST).unwrap(), t, "keys are random");
    }

    #[test]
    fn bare_key_matches_the_design_vector() {
        // SHA-256("vxnet join secret v1\0change-me")[..16], as printed by the spike's token.
        let k = JoinKey::from_bare_secret("change-me");
        assert_eq!(hex(k.as_bytes()), "dbd8c047e8d8ac09e8f71899d54827ef");
        assert!(token(DIGEST, k.0).ends_with("-3pmmar7i3cwat2hxdcm5ksbh54"));
    }

    #[test]
    fn bare_secrets_keep_their_raw_bytes_for_the_legacy_handshake() {
        let t = JoinToken::parse("  change-me\n").unwrap();
        assert_eq!(t.key(), &JoinKey::from_bare_secret("change-me"));
        assert_eq!(t.legacy_key(), Some(&b"  change-me\n"[..]));
        assert_eq!(t.ca_digest(), None);
        assert_eq!(t.encode(), None);
        for s in ["VXNET", "VXN", "VXN-1", "vxn1-abc", "xVXN1-", "VXN\u{661}"] {
            assert!(is_bare(s), "{s}");
        }
    }

    #[test]
    fn whitespace_is_trimmed_and_empty_is_refused() {
        let text = token(DIGEST, [7; 16]);
        assert!(JoinToken::parse(&format!(" \t{text}\r\n")).is_ok());
        assert_eq!(err(""), TokenError::Empty);
        assert_eq!(err(" \n\t "), TokenError::Empty);
    }

    #[test]
    fn other_versions_are_refused_by_number() {
        assert_eq!(err("VXN2-abc"), TokenError::UnknownVersion("2".into()));
        assert_eq!(err("VXN12"), TokenError::UnknownVersion("12".into()));
        assert_eq!(err("VXN01-x"), TokenError::UnknownVersion("01".into()));
        assert!(err("VXN0").to_string().contains("version 0 is not known"));
    }

    #[test]
    fn wrong_shapes_and_lengths_are_malformed() {
        let text = token(DIGEST, [7; 16]);
        let (d, k) = (&text[5..57], &text[58..]);
        let cases = [
            "VXN1".to_owned(),
            "VXN1x".to_owned(),
            format!("VXN1-{d}"),
            format!("VXN1-{d}{k}"),
            format!("VXN1-{}-{k}", &d[1..]),
            format!("VXN1-{d}a-{k}"),
            format!("VXN1-{d}-{}", &k[1..]),
            format!("VXN1-{d}-{k}a"),
            format!("VXN1-{d}-{k}-"),
            format!("VXN1-{d}-{}é", &k[2..]),
            format!("VXN1-{d}- {}", &k[1..]),
        ];
        for c in cases {
            let e = err(&c);
            assert!(
                matches!(e, TokenError::Malformed(_) | TokenError::BadSecret),
                "{c}: {e}"
            );
            assert!(e.to_string().starts_with("malformed join token"), "{c}");
        }
    }

    #[test]
    fn bad_base32_and_trailing_bits_are_refused() {
        let text = token(DIGEST, [7; 16]);
        let set = |i: usize, c: &str| format!("{}{c}{}", &text[..i], &text[i + 1..]);
        for c in ["0", "1", "8", "="] {
            assert_eq!(err(&set(5, c)), TokenError::BadDigest);
            assert_eq!(err(&set(60, c)), TokenError::BadSecret);
        }
        // Last digest character: 1 data bit, 4 trailing bits; last key character: 3 + 2.
        assert_eq!(err(&set(56, "b")), TokenError::BadDigest);
        assert_eq!(err(&set(83, "b")), TokenError::BadSecret);
        assert_eq!(
            token([0; 32], [0; 16]),
            format!("VXN1-{}-{}", "a".repeat(52), "a".repeat(26))
        );
    }

    #[test]
    fn upper_and_mixed_case_base32_is_accepted() {
        let text = token(DIGEST, [0x3c; 16]);
        let want = JoinToken::parse(&text).unwrap();
        assert_eq!(JoinToken::parse(&text.to_ascii_uppercase()).unwrap(), want);
        let mixed = format!("{}{}", &text[..40], text[40..].to_ascii_uppercase());
        assert_eq!(mixed.parse::<JoinToken>().unwrap(), want);
    }

    #[test]
    fn debug_never_shows_a_key_or_a_secret() {
        let key = JoinKey([0xab; 16]);
        let full = JoinToken::Full {
            ca_digest: DIGEST,
            key: key.clone(),
        };
        let bare = JoinToken::parse("hunter2-secret").unwrap();
        let text = format!("{key:?} {full:?} {bare:?} {:?}", bare.key());
        let encoded = &format_token(&DIGEST, &key)[58..];
        for secret in ["abab", "hunter2", &hex(bare.key().as_bytes())[..8], encoded] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains(&hex(&DIGEST)), "the digest is public: {text}");
    }

    #[test]
    fn proofs_match_the_design_vectors_and_verify() {
        let k = JoinKey::from_bare_secret("change-me");
        let c = client_proof(&k, &EKM, b"csr");
        assert_eq!(
            hex(&c),
            "2503a9dcd9d1f606fe9c7a906c557f96b72f339b5f74d205f100b7a8e15dd421"
        );
        let s = server_proof(&k, &EKM, b"ca", 4, b"cert");
        assert_eq!(
            hex(&s),
            "be8501e993f93d4d2b354487ede42ba750088983841b2ad62dc131627ea928f7"
        );
        assert_eq!(verify_client_proof(&k, &EKM, b"csr", &c), Ok(()));
        assert_eq!(verify_server_proof(&k, &EKM, b"ca", 4, b"cert", &s), Ok(()));
    }

    #[test]
    fn proofs_fail_on_any_other_input() {
        let k = JoinKey([1; 16]);
        let c = client_proof(&k, &EKM, b"csr");
        let s = server_proof(&k, &EKM, b"ca", 4, b"cert");
        let mut other_ekm = EKM;
        other_ekm[31] ^= 1;
        let other = JoinKey([2; 16]);
        // Distinct labels: a client's proof is never a server's.
        let as_server = client_proof(&k, &EKM, b"ca");
        let short = client_proof(&k, &[], b"csr");
        let outcomes = [
            verify_client_proof(&other, &EKM, b"csr", &c),
            verify_client_proof(&k, &other_ekm, b"csr", &c),
            verify_client_proof(&k, &EKM, b"csq", &c),
            verify_client_proof(&k, &EKM, b"csr", &c[..31]),
            verify_client_proof(&k, &EKM[..31], b"csr", &c),
            verify_client_proof(&k, &[], b"csr", &short), // binds no session
            verify_server_proof(&other, &EKM, b"ca", 4, b"cert", &s),
            verify_server_proof(&k, &other_ekm, b"ca", 4, b"cert", &s),
            verify_server_proof(&k, &EKM, b"cb", 4, b"cert", &s),
            verify_server_proof(&k, &EKM, b"ca", 5, b"cert", &s),
            verify_server_proof(&k, &EKM, b"ca", 4, b"cerr", &s),
            verify_server_proof(&k, &EKM, b"ca", 4, b"cert", &as_server),
        ];
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(*o, Err(ProofMismatch), "case {i}");
        }
    }

    /// The mutations most likely to slip through: another valid base32 character.
    fn base32_char() -> impl Strategy<Value = char> {
        proptest::char::ranges(vec!['a'..='z', '2'..='7'].into())
    }

    fn is_token_prefixed(t: &str) -> bool {
        t.strip_prefix("VXN")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn generate_then_parse_round_trips(d in any::<[u8; 32]>(), k in any::<[u8; 16]>()) {
            let text = token(d, k);
            let want = JoinToken::Full { ca_digest: d, key: JoinKey(k) };
            prop_assert_eq!(JoinToken::parse(&text).unwrap(), want.clone());
            prop_assert_eq!(JoinToken::parse(&text.to_ascii_uppercase()).unwrap(), want);
        }

        #[test]
        fn any_string_parses_or_errors(
            s in "\\PC{0,100}|VXN[0-9]\\PC{0,90}|VXN1-[a-zA-Z2-7=-]{70,90}",
        ) {
            let _ = JoinToken::parse(&s);
        }

        #[test]
        fn anything_not_vxn_digit_is_a_bare_secret(s in "\\PC{1,60}") {
            let t = s.trim_ascii();
            prop_assume!(!t.is_empty() && !is_token_prefixed(t));
            let key = JoinKey::from_bare_secret(t);
            let want = JoinToken::Bare { key, legacy: s.clone().into_bytes() };
            prop_assert_eq!(JoinToken::parse(&s).unwrap(), want);
        }

        #[test]
        fn one_changed_character_is_refused_or_changes_the_token(
            d in any::<[u8; 32]>(),
            k in any::<[u8; 16]>(),
            i in 0usize..TOKEN_LEN,
            c in prop_oneof![any::<char>(), base32_char()],
        ) {
            let text = token(d, k);
            let old = text.as_bytes()[i] as char;
            prop_assume!(!c.eq_ignore_ascii_case(&old));
            let changed: String = text
                .chars()
                .enumerate()
                .map(|(j, o)| if j == i { c } else { o })
                .collect();
            match JoinToken::parse(&changed) {
                Err(_) => {}
                Ok(JoinToken::Full { ca_digest, key }) => {
                    prop_assert!(ca_digest != d || key.0 != k)
                }
                // Only a changed `VXN1` prefix can leave the token namespace.
                Ok(JoinToken::Bare { .. }) => prop_assert!(i < 4, "{} parsed as bare", changed),
            }
        }
    }
}
