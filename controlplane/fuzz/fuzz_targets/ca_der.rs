//! Fuzz `Ca::from_der` (certificate and key): never panics; a loaded CA signs with its own key.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vxnet_controlplane_fuzz::ca_der(data);
});
