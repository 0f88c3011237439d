//! Fuzz `cert_identity` (and `needs_renewal`) on arbitrary DER: never panics, canonical ids.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vxnet_controlplane_fuzz::cert_identity(data);
});
