//! Generates the message types from `proto/vxnet/v1/*.proto` with `protox` (a protobuf compiler
//! in Rust, so no `protoc` is needed) and `prost-build`.

use std::error::Error;

/// The `.proto` files, relative to the include root `proto/`.
const FILES: [&str; 3] = [
    "vxnet/v1/state.proto",
    "vxnet/v1/peer.proto",
    "vxnet/v1/api.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // Rerun only when a .proto file changes (a directory is watched recursively, so new files
    // count too); a change to this script reruns it anyway.
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(FILES, ["proto"])?;
    prost_build::Config::new()
        // Every map is a BTreeMap, as in the hand-written structs this replaced: sorted, so the
        // same value always encodes to the same bytes.
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
