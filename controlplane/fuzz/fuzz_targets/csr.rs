//! Fuzz `NodePublicKey::from_csr_der`: never panics; an accepted CSR's key is the one signed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vxnet_controlplane_fuzz::csr(data);
});
