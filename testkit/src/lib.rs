//! The one netns harness of vxnet: what the integration tests (`tests/it`) and the side-by-side
//! benchmarks (`overlay_bench`, `raft_commit`) share. Hosts and containers are network
//! namespaces named `vx<pid%10000><tag>-…` ([`netns::prefix`]), hosts sit on a switch
//! namespace's bridge ([`netns::build_underlay`]), agents are real `vxnetd` processes
//! ([`agent`]), hosts can also run a real `dockerd` ([`docker`]), and whatever was made is
//! removed on drop, on exit, on panic and on SIGINT/SIGTERM/SIGHUP ([`cleanup`]).
//!
//! Everything returns `anyhow::Result`: a benchmark reports and cleans up, a test panics.
//! Binaries are passed in (`env!("CARGO_BIN_EXE_vxnetd")` exists only in the root crate's tests).

pub mod agent;
pub mod busybox_image;
pub mod cleanup;
pub mod docker;
pub mod netns;
pub mod procfs;
pub mod stats;
