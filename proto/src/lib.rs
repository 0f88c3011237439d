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
}
