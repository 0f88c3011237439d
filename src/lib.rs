//! vxnet: the agent (`vxnetd`) and CLI (`vxnet`) glue around the data plane and control plane.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod fault;
pub mod plugins;
