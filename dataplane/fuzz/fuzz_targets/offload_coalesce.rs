//! Fuzz the offload engine's coalescing of received TCP segments into super-frames.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vxnet_dataplane_fuzz::offload_coalesce(data);
});
