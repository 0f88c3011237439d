//! Fuzz the offload engine's TSO segmentation of a super-frame read from a TAP (vnet header + frame).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vxnet_dataplane_fuzz::offload_segment(data);
});
