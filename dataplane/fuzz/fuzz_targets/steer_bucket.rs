//! Fuzz the flow-steering hash: in range, and symmetric between a flow's two directions.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vxnet_dataplane_fuzz::steer_bucket(data);
});
