//! Fuzz a join-only connection's `JoinRequest`: decode, proof check with a fixed key, CSR.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vxnet_controlplane_fuzz::peer_join_request(data);
});
