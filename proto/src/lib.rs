//! vxnet wire messages (prost), generated at build time from `proto/vxnet/v1/*.proto`
//! (package `vxnet.v1`) by `prost-build`, with `protox` as the protobuf compiler (no `protoc`).
//!
//! Three families of messages live here:
//! - the replicated state machine: [`Proposal`] / [`Command`] (what goes through Raft),
//!   [`Response`] / [`ApplyFailure`] (what applying returns), and [`StateSnapshot`] with its
//!   records [`Network`], [`Endpoint`], [`Host`], [`StaticVtep`];
//! - the peer protocol between agents: [`PeerEnvelope`] (Raft messages travel inside it as
//!   opaque bytes encoded with raft's own protobuf codec);
//! - the local API socket used by the CLI: [`ApiRequest`] / [`ApiResponse`].
//!
//! Addresses are carried as text (`"10.20.0.5"`, `"10.20.0.0/24"`, `"02:42:0a:14:00:05"`) so
//! that the CLI can print them and old records stay readable when fields are added.

// Oneofs hold whole records by value, as prost-build generates them; boxing would only make
// construction noisier for messages that are small and short-lived.
#![allow(clippy::large_enum_variant)]

pub use prost::Message;

pub mod frame;

// The generated messages, at the crate root (`vxnet_proto::Network`,
// `vxnet_proto::api_request::Kind`, ...). The wire format is pinned by `tests/compat.rs`.
include!(concat!(env!("OUT_DIR"), "/vxnet.v1.rs"));

/// How a secret shows in `Debug` output: its length only.
struct Redacted(usize);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("trusted", &self.trusted)
            .field("signer_generation", &self.signer_generation)
            .field("signer_key", &Redacted(self.signer_key.len()))
            .field("join_key", &Redacted(self.join_key.len()))
            .field("join_key_unix_ms", &self.join_key_unix_ms)
            .field("cross_cert", &self.cross_cert)
            .finish()
    }
}

impl std::fmt::Debug for InitTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitTls")
            .field("ca", &self.ca)
            .field("ca_key", &Redacted(self.ca_key.len()))
            .field("join_key", &Redacted(self.join_key.len()))
            .field("unix_ms", &self.unix_ms)
            .finish()
    }
}

impl std::fmt::Debug for SetJoinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetJoinKey")
            .field("join_key", &Redacted(self.join_key.len()))
            .field("unix_ms", &self.unix_ms)
            .finish()
    }
}

impl std::fmt::Debug for RotateCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateCa")
            .field("ca", &self.ca)
            .field("ca_key", &Redacted(self.ca_key.len()))
            .field("cross_cert", &self.cross_cert)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_round_trips() {
        let p = Proposal {
            request_id: vec![1, 2, 3],
            command: Some(Command {
                kind: Some(command::Kind::CreateNetwork(CreateNetwork {
                    name: "n".into(),
                    subnet: Some("10.1.0.0/24".into()),
                    vni: Some(7),
                    ..Default::default()
                })),
            }),
        };
        let bytes = p.encode_to_vec();
        assert_eq!(Proposal::decode(bytes.as_slice()).unwrap(), p);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(PeerEnvelope::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }

    #[test]
    fn debug_of_key_carrying_messages_hides_the_keys() {
        let key = vec![0xAB; 48];
        let k = vec![0xCD; 16];
        let ca = Some(CaCert {
            generation: 1,
            cert: vec![1, 2, 3],
        });
        let shown = [
            format!(
                "{:?}",
                ClusterTls {
                    trusted: vec![ca.clone().unwrap_or_default()],
                    signer_generation: 1,
                    signer_key: key.clone(),
                    join_key: k.clone(),
                    join_key_unix_ms: 5,
                    cross_cert: vec![],
                }
            ),
            format!(
                "{:?}",
                InitTls {
                    ca: ca.clone(),
                    ca_key: key.clone(),
                    join_key: k.clone(),
                    unix_ms: 5,
                }
            ),
            format!(
                "{:?}",
                SetJoinKey {
                    join_key: k.clone(),
                    unix_ms: 5,
                }
            ),
            format!(
                "{:?}",
                Command {
                    kind: Some(command::Kind::RotateCa(RotateCa {
                        ca,
                        ca_key: key.clone(),
                        cross_cert: vec![4],
                    })),
                }
            ),
        ];
        for s in shown {
            // 0xAB = 171, 0xCD = 205: prost prints bytes as decimal lists.
            assert!(!s.contains("171") && !s.contains("205"), "{s}");
            assert!(s.contains("<redacted"), "{s}");
        }
    }
}
