//! Tests of `pki.rs`.
use super::*;

const CLUSTER: u64 = 0x5eed_0000_0000_0001;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[test]
fn ca_generates_and_reloads_from_der_and_pem() {
    let ca = Ca::generate(CLUSTER, 3, t0()).expect("generate");
    assert_eq!((ca.cluster_id(), ca.generation()), (CLUSTER, 3));
    let parsed = parse_cert(ca.cert()).expect("parse");
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok());
    assert_eq!(cn, Some("vxnet cluster CA 5eed000000000001 gen 3"));
    let bc = parsed
        .basic_constraints()
        .expect("bc")
        .expect("present")
        .value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let v = parsed.validity();
    assert_eq!(v.not_before.timestamp(), unix(t0()) - 3600);
    assert_eq!(v.not_after.timestamp(), unix(t0() + CA_LIFETIME));

    let der = Ca::from_der(ca.cert(), &ca.key_pkcs8_der()).expect("from_der");
    assert_eq!(der.digest(), ca.digest());
    assert_eq!(ca.digest(), sha256(ca.cert()));
    let key_pem = ca.key.serialize_pem();
    let pem = Ca::from_pem(&ca.cert_pem(), &key_pem).expect("from_pem");
    assert_eq!(pem.cert(), ca.cert());
    assert_eq!(
        certs_from_pem(&ca.cert_pem()).expect("pem"),
        vec![ca.cert().clone()]
    );
}

#[test]
fn ca_load_refuses_foreign_key_and_non_vxnet_certs() {
    let ca = Ca::generate(CLUSTER, 1, t0()).expect("ca");
    let other = Ca::generate(CLUSTER, 1, t0()).expect("ca");
    assert!(matches!(
        Ca::from_der(ca.cert(), &other.key_pkcs8_der()),
        Err(PkiError::KeyMismatch)
    ));
    let key = NodeKey::generate().expect("key");
    let node = ca
        .sign_node(&key.public_key().expect("pk"), 2, "h2", t0(), DAY)
        .expect("sign");
    assert!(matches!(
        Ca::from_der(&node, &key.pkcs8_der()),
        Err(PkiError::NotVxnetCa(_))
    ));
    assert!(matches!(
        Ca::from_der(b"junk", &ca.key_pkcs8_der()),
        Err(PkiError::BadCertificate(_))
    ));
    assert!(matches!(
        Ca::from_pem("no pem here", "x"),
        Err(PkiError::NoPem(_))
    ));
}

#[test]
fn node_cert_has_the_identity_and_fields_of_the_design() {
    let ca = Ca::generate(CLUSTER, 1, t0()).expect("ca");
    let key = NodeKey::generate().expect("key");
    let cert = ca
        .sign_node(
            &key.public_key().expect("pk"),
            42,
            "host-a",
            t0(),
            NODE_CERT_LIFETIME,
        )
        .expect("sign");
    let id = cert_identity(&cert).expect("identity");
    assert_eq!(
        id,
        CertIdentity {
            cluster_id: CLUSTER,
            node_id: 42,
            host_name: "host-a".into(),
            spki_sha256: key.spki_sha256(),
            not_before_unix: unix(t0()) - 3600,
            not_after_unix: unix(t0() + NODE_CERT_LIFETIME),
        }
    );
    let parsed = parse_cert(&cert).expect("parse");
    let san = parsed
        .subject_alternative_name()
        .expect("san")
        .expect("present");
    let uris: Vec<_> = san.value.general_names.iter().collect();
    assert_eq!(uris.len(), 1);
    assert!(matches!(
        uris[0],
        GeneralName::URI("vxnet://5eed000000000001/node/42")
    ));
    let eku = parsed
        .extended_key_usage()
        .expect("eku")
        .expect("present")
        .value;
    assert!(eku.server_auth && eku.client_auth);
    let bc = parsed
        .basic_constraints()
        .expect("bc")
        .expect("present")
        .value;
    assert!(!bc.ca);
    assert!(
        parsed
            .key_usage()
            .expect("ku")
            .expect("present")
            .value
            .digital_signature()
    );
    assert_eq!(parsed.raw_serial().len(), 16);
    assert_eq!(
        certs_from_pem(&certs_to_pem(&[cert.clone(), ca.cert().clone()])).expect("pem"),
        vec![cert, ca.cert().clone()]
    );
}

#[test]
fn csr_gives_the_same_key_and_pin() {
    let key = NodeKey::generate().expect("key");
    let csr = key.csr_der("joiner").expect("csr");
    let from_csr = NodePublicKey::from_csr_der(&csr).expect("csr parse");
    assert_eq!(from_csr.spki_sha256(), key.spki_sha256());
    // A CSR whose signature does not verify is refused (no proof of possession).
    let mut bad = csr.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(NodePublicKey::from_csr_der(&bad).is_err());
    assert!(NodePublicKey::from_csr_der(b"garbage").is_err());
    // Reloading the key keeps the pin.
    let again = NodeKey::from_pem(&key.to_pem()).expect("pem");
    assert_eq!(again.spki_sha256(), key.spki_sha256());
    let again = NodeKey::from_pkcs8_der(&key.pkcs8_der()).expect("der");
    assert_eq!(again.spki_sha256(), key.spki_sha256());
}

#[test]
fn identity_errors_are_clear() {
    let ca = Ca::generate(CLUSTER, 1, t0()).expect("ca");
    assert!(matches!(
        cert_identity(b"junk"),
        Err(PkiError::BadCertificate(_))
    ));
    // The CA certificate has no SAN at all.
    let e = cert_identity(ca.cert()).expect_err("no san");
    assert_eq!(
        e.to_string(),
        "certificate carries no valid vxnet node identity: no subjectAltName"
    );
    let mut trailing = ca.cert().to_vec();
    trailing.push(0);
    assert!(matches!(
        cert_identity(&trailing),
        Err(PkiError::BadCertificate(_))
    ));
}

#[test]
fn non_canonical_uris_are_refused() {
    // Certificates with hand-made SANs, signed by rcgen directly.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let with_sans = |sans: &[&str]| {
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI((*s).try_into().expect("ia5")))
            .collect();
        p.self_signed(&key).expect("sign").der().to_vec()
    };
    for (sans, want) in [
        (
            &["https://example.com"][..],
            "no vxnet:// URI in subjectAltName",
        ),
        (
            &[
                "vxnet://5eed000000000001/node/1",
                "vxnet://5eed000000000001/node/2",
            ],
            "more than one vxnet URI",
        ),
        (&["vxnet://5eed000000000001/host/1"], "malformed vxnet URI"),
        (
            &["vxnet://5EED000000000001/node/1"],
            "malformed cluster id in the vxnet URI",
        ),
        (
            &["vxnet://5eed00000000001/node/1"],
            "malformed cluster id in the vxnet URI",
        ),
        (
            &["vxnet://5eed000000000001/node/01"],
            "malformed node id in the vxnet URI",
        ),
        (
            &["vxnet://5eed000000000001/node/+1"],
            "malformed node id in the vxnet URI",
        ),
        (
            &["vxnet://5eed000000000001/node/"],
            "malformed node id in the vxnet URI",
        ),
        (
            &["vxnet://5eed000000000001/node/99999999999999999999"],
            "node id out of range",
        ),
    ] {
        match cert_identity(&with_sans(sans)) {
            Err(PkiError::BadIdentity(got)) => assert_eq!(got, want, "{sans:?}"),
            other => panic!("{sans:?}: {other:?}"),
        }
    }
    let ok = cert_identity(&with_sans(&[
        "https://x",
        "vxnet://5eed000000000001/node/7",
    ]));
    assert_eq!(ok.expect("ok").node_id, 7);
}

#[test]
fn renewal_is_due_at_two_thirds_of_life() {
    let ca = Ca::generate(CLUSTER, 1, t0()).expect("ca");
    let key = NodeKey::generate().expect("key");
    // 90 days of life from issue (notBefore is backdated, which is no life): renew 60 days after.
    let cert = ca
        .sign_node(&key.public_key().expect("pk"), 2, "h", t0(), 90 * DAY)
        .expect("sign");
    let id = cert_identity(&cert).expect("id");
    assert_eq!(id.not_before_unix, unix(t0() - BACKDATE));
    assert_eq!(
        (id.issued_unix(), id.life_secs()),
        (unix(t0()), 90 * 86_400)
    );
    assert_eq!(id.renew_at_unix(), unix(t0() + 60 * DAY));
    assert!(!needs_renewal(&cert, t0()).expect("check"));
    assert!(!needs_renewal(&cert, t0() + 60 * DAY - Duration::from_secs(1)).expect("c"));
    assert!(needs_renewal(&cert, t0() + 60 * DAY).expect("check"));
    assert!(needs_renewal(&cert, t0() + 365 * DAY).expect("expired"));
    assert!(needs_renewal(b"junk", t0()).is_err());
    // A lifetime far below the backdating (tests renew every ~20 s): 2/3 of it, not due at once.
    let short = ca
        .sign_node(
            &key.public_key().expect("pk"),
            2,
            "h",
            t0(),
            Duration::from_secs(30),
        )
        .expect("sign");
    let id = cert_identity(&short).expect("id");
    assert_eq!(id.renew_at_unix(), unix(t0() + Duration::from_secs(20)));
    assert!(!needs_renewal(&short, t0() + Duration::from_secs(19)).expect("check"));
    assert!(needs_renewal(&short, t0() + Duration::from_secs(20)).expect("check"));
}

#[test]
fn times_out_of_range_are_errors_not_panics() {
    let ca = Ca::generate(CLUSTER, 1, t0()).expect("ca");
    let pk = NodeKey::generate().expect("key").public_key().expect("pk");
    assert!(matches!(
        ca.sign_node(&pk, 2, "h", UNIX_EPOCH, DAY),
        Err(PkiError::TimeOutOfRange)
    ));
    assert!(ca.sign_node(&pk, 2, "h", t0(), Duration::MAX).is_err());
    assert!(matches!(
        Ca::generate(CLUSTER, 1, UNIX_EPOCH),
        Err(PkiError::TimeOutOfRange)
    ));
}

#[test]
fn debug_never_shows_keys() {
    let ca = Ca::generate(CLUSTER, 1, t0()).expect("ca");
    let key = NodeKey::generate().expect("key");
    let s = format!("{ca:?} {key:?}");
    assert!(!s.contains("PRIVATE"), "{s}");
    assert!(s.contains("5eed000000000001"), "{s}");
}
