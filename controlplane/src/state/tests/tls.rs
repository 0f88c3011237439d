//! Peer TLS commands (level 2): every validation of `state/tls.rs`, refusals that change
//! nothing, snapshots with the TLS record, redacted `Debug`.

use super::*;
use vxnet_proto::RemoveHost;

const CA_KEY: u8 = 0xA7;
const JOIN_KEY: u8 = 0xC5;

fn ca(generation: u32) -> CaCert {
    CaCert {
        generation,
        cert: vec![0x30, generation as u8, 0x01],
    }
}
fn init() -> InitTls {
    InitTls {
        ca: Some(ca(1)),
        ca_key: vec![CA_KEY; 138],
        join_key: vec![JOIN_KEY; JOIN_KEY_LEN],
        unix_ms: 1000,
    }
}
fn pin(b: u8) -> Vec<u8> {
    vec![b; PIN_LEN]
}
fn set_key(host: &str, node_id: u64, key: Vec<u8>) -> command::Kind {
    command::Kind::SetHostKey(SetHostKey {
        host: host.into(),
        node_id,
        key_sha256: key,
    })
}
fn rotate(generation: u32) -> command::Kind {
    command::Kind::RotateCa(RotateCa {
        ca: Some(ca(generation)),
        ca_key: vec![CA_KEY + 1; 138],
        cross_cert: vec![0x30, 0xCC],
    })
}
fn finish(generation: u32, force: bool) -> command::Kind {
    command::Kind::FinishCaRotation(FinishCaRotation { generation, force })
}
fn report(host: &str, generation: u32) -> command::Kind {
    command::Kind::ReportTls(ReportTls {
        host: host.into(),
        ca_generation: generation,
        not_after_unix_ms: 5000 + u64::from(generation),
    })
}
fn with_tls() -> T {
    let mut t = T::new();
    let (r, up) = t.run(command::Kind::InitTls(init()));
    assert_eq!(r.unwrap().kind, Some(response::Kind::Noop(Empty {})));
    assert_eq!(up, vec![Update::TlsChanged]);
    t
}

#[test]
fn init_tls_sets_the_record_once() {
    let mut t = T::new();
    assert!(t.s.tls().is_none() && t.s.trusted_cas().is_empty());
    assert!(t.s.signer().is_none() && t.s.join_key().is_none());
    t.ok(command::Kind::InitTls(init()));
    let tls = t.s.tls().unwrap().clone();
    assert_eq!(tls.trusted, vec![ca(1)]);
    assert_eq!(tls.signer_generation, 1);
    assert_eq!(tls.join_key_unix_ms, 1000);
    assert!(tls.cross_cert.is_empty());
    let (signer, key) = t.s.signer().unwrap();
    assert_eq!((signer, key), (&ca(1), &[CA_KEY; 138][..]));
    assert_eq!(t.s.join_key(), Some(&[JOIN_KEY; 16][..]));
    assert_eq!(t.s.cross_cert(), None);
    // A second (racing) InitTls is refused and changes nothing.
    let e = t.err(command::Kind::InitTls(InitTls {
        ca: Some(ca(7)),
        ..init()
    }));
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(t.s.tls(), Some(&tls));
}

#[test]
fn init_tls_checks_sizes() {
    let mut t = T::new();
    let bad = [
        InitTls { ca: None, ..init() },
        InitTls {
            ca: Some(ca(0)),
            ..init()
        },
        InitTls {
            ca: Some(CaCert {
                generation: 1,
                cert: Vec::new(),
            }),
            ..init()
        },
        InitTls {
            ca: Some(CaCert {
                generation: 1,
                cert: vec![0; MAX_CA_CERT_LEN + 1],
            }),
            ..init()
        },
        InitTls {
            ca_key: Vec::new(),
            ..init()
        },
        InitTls {
            ca_key: vec![1; MAX_KEY_LEN + 1],
            ..init()
        },
        InitTls {
            join_key: vec![1; 15],
            ..init()
        },
        InitTls {
            join_key: vec![1; 17],
            ..init()
        },
    ];
    for c in bad {
        assert_eq!(t.err(command::Kind::InitTls(c)).kind, ErrorKind::Invalid);
    }
    assert!(t.s.tls().is_none());
    // The limits themselves are accepted.
    t.ok(command::Kind::InitTls(InitTls {
        ca: Some(CaCert {
            generation: 1,
            cert: vec![0; MAX_CA_CERT_LEN],
        }),
        ca_key: vec![1; MAX_KEY_LEN],
        ..init()
    }));
}

#[test]
fn set_host_key_fills_an_empty_pin_only() {
    let mut t = with_tls();
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    assert!(t.s.pins().is_empty());
    // Unknown host, wrong node id, wrong length: refused.
    assert_eq!(t.err(set_key("nope", 1, pin(1))).kind, ErrorKind::NotFound);
    assert_eq!(t.err(set_key("h1", 2, pin(1))).kind, ErrorKind::Invalid);
    assert_eq!(
        t.err(set_key("h1", 1, vec![1; 31])).kind,
        ErrorKind::Invalid
    );
    assert_eq!(t.err(set_key("h1", 1, Vec::new())).kind, ErrorKind::Invalid);
    let (r, up) = t.run(set_key("h1", 1, pin(1)));
    r.unwrap();
    let h1 = t.s.host("h1").unwrap().clone();
    assert_eq!(h1.key_sha256, pin(1));
    assert_eq!(up, vec![Update::HostChanged(h1)]);
    // The same pin again changes nothing; another one is refused.
    let (r, up) = t.run(set_key("h1", 1, pin(1)));
    assert!(r.is_ok() && up.is_empty());
    assert_eq!(t.err(set_key("h1", 1, pin(2))).kind, ErrorKind::Conflict);
    // One key, one member.
    assert_eq!(t.err(set_key("h2", 2, pin(1))).kind, ErrorKind::Conflict);
    t.ok(set_key("h2", 2, pin(2)));
    assert_eq!(
        t.s.pins(),
        BTreeMap::from([(1, &pin(1)[..]), (2, &pin(2)[..])])
    );
}

#[test]
fn register_host_carries_pin_and_level() {
    let mut t = T::new();
    let reg = |name: &str, ip: &str, key: Vec<u8>| {
        command::Kind::RegisterHost(RegisterHost {
            key_sha256: key,
            level: 2,
            ..host(name, ip)
        })
    };
    assert_eq!(
        t.err(reg("h2", "192.168.0.2", vec![1; 33])).kind,
        ErrorKind::Invalid
    );
    let response::Kind::HostRegistered(h2) = t.ok(reg("h2", "192.168.0.2", pin(9))) else {
        panic!()
    };
    assert_eq!((h2.level, h2.key_sha256.clone()), (2, pin(9)));
    assert_eq!(t.s.host("h2"), Some(&h2));
    assert_eq!(
        t.err(reg("h3", "192.168.0.3", pin(9))).kind,
        ErrorKind::Conflict
    );
    // Without a pin (level 0 registration, as before).
    t.ok(reg("h3", "192.168.0.3", Vec::new()));
    assert!(t.s.host("h3").unwrap().key_sha256.is_empty());
}

#[test]
fn set_join_key_needs_a_ca_and_16_bytes() {
    let mut t = T::new();
    let k = |key: Vec<u8>| {
        command::Kind::SetJoinKey(SetJoinKey {
            join_key: key,
            unix_ms: 2000,
        })
    };
    assert_eq!(t.err(k(vec![1; 16])).kind, ErrorKind::Invalid);
    t.ok(command::Kind::InitTls(init()));
    assert_eq!(t.err(k(vec![1; 8])).kind, ErrorKind::Invalid);
    let (r, up) = t.run(k(vec![1; 16]));
    r.unwrap();
    assert_eq!(up, vec![Update::TlsChanged]);
    assert_eq!(t.s.join_key(), Some(&[1u8; 16][..]));
    assert_eq!(t.s.tls().unwrap().join_key_unix_ms, 2000);
}

#[test]
fn ca_rotation_trusts_both_then_the_new_one() {
    let mut t = T::new();
    assert_eq!(t.err(rotate(2)).kind, ErrorKind::Invalid);
    assert_eq!(t.err(finish(1, false)).kind, ErrorKind::Invalid);
    t.ok(command::Kind::InitTls(init()));
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    // Finishing when no rotation runs changes nothing.
    let (r, up) = t.run(finish(1, false));
    assert!(r.is_ok() && up.is_empty());
    // Wrong generation, missing cross cert, bad key: refused.
    assert_eq!(t.err(rotate(3)).kind, ErrorKind::Invalid);
    assert_eq!(t.err(rotate(1)).kind, ErrorKind::Invalid);
    for bad in [
        RotateCa {
            ca: Some(ca(2)),
            ca_key: vec![1; 10],
            cross_cert: Vec::new(),
        },
        RotateCa {
            ca: Some(ca(2)),
            ca_key: vec![1; MAX_KEY_LEN + 1],
            cross_cert: vec![1],
        },
        RotateCa {
            ca: None,
            ca_key: vec![1; 10],
            cross_cert: vec![1],
        },
    ] {
        assert_eq!(t.err(command::Kind::RotateCa(bad)).kind, ErrorKind::Invalid);
    }
    let (r, up) = t.run(rotate(2));
    r.unwrap();
    assert_eq!(up, vec![Update::TlsChanged]);
    assert_eq!(t.s.trusted_cas(), &[ca(1), ca(2)]);
    let (signer, key) = t.s.signer().unwrap();
    assert_eq!((signer, key), (&ca(2), &[CA_KEY + 1; 138][..]));
    assert_eq!(t.s.cross_cert(), Some(&[0x30, 0xCC][..]));
    // No second rotation while one runs.
    assert_eq!(t.err(rotate(3)).kind, ErrorKind::Conflict);
    // Finishing: wrong generation refused; refused while a host reports an older CA.
    assert_eq!(t.err(finish(1, false)).kind, ErrorKind::Conflict);
    t.ok(report("h1", 2));
    t.ok(report("h2", 1));
    let e = t.err(finish(2, false));
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert!(
        e.message.contains("h2") && !e.message.contains("h1 "),
        "{e}"
    );
    t.ok(report("h2", 2));
    let (r, up) = t.run(finish(2, false));
    r.unwrap();
    assert_eq!(up, vec![Update::TlsChanged]);
    assert_eq!(t.s.trusted_cas(), &[ca(2)]);
    assert_eq!(t.s.cross_cert(), None);
    // And the next rotation may start.
    t.ok(rotate(3));
}

#[test]
fn finish_with_force_leaves_old_hosts_behind() {
    let mut t = with_tls();
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    t.ok(rotate(2));
    t.ok(report("h1", 2));
    // h2 never reported (generation 0) and blocks an unforced finish.
    let e = t.err(finish(2, false));
    assert!(e.message.contains("h2 (generation 0)"), "{e}");
    t.ok(finish(2, true));
    assert_eq!(t.s.trusted_cas(), &[ca(2)]);
}

#[test]
fn report_tls_records_generation_and_expiry() {
    let mut t = T::new();
    assert_eq!(t.err(report("nope", 1)).kind, ErrorKind::NotFound);
    let (r, up) = t.run(report("h1", 1));
    r.unwrap();
    let h1 = t.s.host("h1").unwrap().clone();
    assert_eq!(
        (h1.cert_ca_generation, h1.cert_not_after_unix_ms),
        (1, 5001)
    );
    assert_eq!(up, vec![Update::HostChanged(h1)]);
    let (_, up) = t.run(report("h1", 1));
    assert!(up.is_empty());
}

#[test]
fn removed_ids_and_the_legacy_window() {
    let mut t = T::new();
    t.ok(command::Kind::RegisterHost(host("h2", "192.168.0.2")));
    t.ok(command::Kind::RegisterHost(host("h3", "192.168.0.3")));
    assert!(t.s.removed_node_ids().is_empty());
    t.ok(command::Kind::RemoveHost(RemoveHost { name: "h2".into() }));
    assert_eq!(t.s.removed_node_ids(), BTreeSet::from([2]));
    assert!(t.s.is_removed(2) && !t.s.is_removed(1) && !t.s.is_removed(4));
    assert!(!t.s.is_removed(0));

    assert!(t.s.legacy_window_open(), "no CA");
    t.ok(command::Kind::InitTls(init()));
    for (h, id, p) in [("h1", 1, 1), ("h3", 3, 3)] {
        t.ok(command::Kind::ReportLevel(ReportLevel {
            host: h.into(),
            level: APPLY_LEVEL,
        }));
        assert!(t.s.legacy_window_open(), "{h} has no pin yet");
        t.ok(set_key(h, id, pin(p)));
    }
    assert!(!t.s.legacy_window_open());
    // A host of the previous release (level 0) opens it again.
    t.ok(command::Kind::RegisterHost(host("h4", "192.168.0.4")));
    assert!(t.s.legacy_window_open());
}

#[test]
fn tls_record_survives_snapshots() {
    let mut t = with_tls();
    t.ok(set_key("h1", 1, pin(1)));
    t.ok(report("h1", 1));
    t.ok(rotate(2));
    let restored = State::from_snapshot_bytes(&t.s.to_snapshot_bytes()).unwrap();
    assert_eq!(restored, t.s);
    assert_eq!(restored.to_snapshot_bytes(), t.s.to_snapshot_bytes());
    // diff reports the TLS change (and the host whose pin changed).
    let up = State::diff(&State::new(), &restored);
    assert!(up.contains(&Update::TlsChanged));
    assert!(State::diff(&restored, &t.s).is_empty());

    // An inconsistent record is refused.
    let mut snap = t.s.to_snapshot();
    if let Some(tls) = snap.tls.as_mut() {
        tls.signer_generation = 9;
    }
    assert!(State::from_snapshot(&snap).is_err());
    let mut snap = t.s.to_snapshot();
    if let Some(tls) = snap.tls.as_mut() {
        tls.join_key.clear();
    }
    assert!(State::from_snapshot(&snap).is_err());
    // A snapshot without one (the previous release's) restores with none.
    let mut snap = t.s.to_snapshot();
    snap.tls = None;
    assert!(State::from_snapshot(&snap).unwrap().tls().is_none());
}

#[test]
fn debug_never_shows_key_bytes() {
    let mut t = with_tls();
    t.ok(command::Kind::SetJoinKey(SetJoinKey {
        join_key: vec![JOIN_KEY; 16],
        unix_ms: 3,
    }));
    t.ok(rotate(2));
    // 0xA7 = 167, 0xA8 = 168, 0xC5 = 197 (prost prints bytes as decimal lists).
    let secrets = ["167, 167", "168, 168", "197, 197"];
    let shown = [
        format!("{:?}", t.s),
        format!("{:?}", t.s.to_snapshot()),
        format!("{:?}", prop(1, command::Kind::InitTls(init()))),
        format!("{:?}", rotate(2)),
        format!(
            "{:?}",
            command::Kind::SetJoinKey(SetJoinKey {
                join_key: vec![JOIN_KEY; 16],
                unix_ms: 3,
            })
        ),
    ];
    for s in &shown {
        for k in secrets {
            assert!(!s.contains(k), "{k} in {s}");
        }
    }
}

#[test]
fn command_levels() {
    assert_eq!(APPLY_LEVEL, 2);
    for k in [
        command::Kind::InitTls(init()),
        set_key("h1", 1, pin(1)),
        command::Kind::SetJoinKey(SetJoinKey::default()),
        rotate(2),
        finish(2, false),
        report("h1", 1),
        command::Kind::RegisterHost(RegisterHost {
            key_sha256: pin(1),
            ..host("h", "192.168.0.9")
        }),
    ] {
        assert_eq!(command_level(&k), 2, "{k:?}");
    }
    assert_eq!(
        command_level(&command::Kind::ReportLevel(ReportLevel::default())),
        1
    );
    assert_eq!(
        command_level(&command::Kind::RegisterHost(host("h", "192.168.0.9"))),
        0
    );
    assert_eq!(command_level(&command::Kind::Noop(Empty {})), 0);
}
