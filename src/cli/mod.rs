//! The `vxnet` CLI's commands, one module per family, and how they print: docker-shaped JSON,
//! tables and templates. `src/bin/vxnet.rs` only parses the command line and dispatches here.

pub mod capture;
pub mod client;
pub mod cluster;
pub mod fdb;
pub mod format;
pub mod network;
pub mod ports;
pub mod stats;
pub mod template;

#[cfg(test)]
pub(crate) mod fake;
