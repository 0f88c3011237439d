//! Fuzz `JoinToken::parse` on any (lossily decoded) text: §6's classification, round trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vxnet_controlplane_fuzz::join_token(data);
});
