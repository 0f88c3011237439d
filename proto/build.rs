//! Generates the message types from `proto/vxnet/v1/*.proto` with `protox` (a protobuf compiler
//! in Rust, so no `protoc` is needed) and `prost-build`.

use std::error::Error;

/// The `.proto` files, relative to the include root `proto/`.
const FILES: [&str; 3] = [
    "vxnet/v1/state.proto",
    "vxnet/v1/peer.proto",
    "vxnet/v1/api.proto",
];

/// The messages whose `Debug` is written by hand in `src/lib.rs` (they hold keys).
const REDACTED: [&str; 4] = [
    ".vxnet.v1.ClusterTls",
    ".vxnet.v1.InitTls",
    ".vxnet.v1.SetJoinKey",
    ".vxnet.v1.RotateCa",
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
        // Messages that carry keys get a hand-written, redacting `Debug` (src/lib.rs), so that
        // no log line or panic message ever prints a CA key or a join key.
        .skip_debug(REDACTED)
        .compile_fds(fds)?;
    Ok(())
}
