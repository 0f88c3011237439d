//! vxnet benchmark support: what the side-by-side harnesses (`overlay_bench`, `raft_commit`)
//! share. Both build network namespaces, run processes in them and must leave nothing behind,
//! whatever happens; both report latency percentiles.

pub mod cleanup;
pub mod netns;
pub mod stats;
