//! Fuzz `wire` udp parsing: new_checked, every getter, Repr round trip, setters.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vxnet_dataplane_fuzz::udp(data);
});
