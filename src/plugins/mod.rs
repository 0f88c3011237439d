//! Runtime integrations: adapters that turn a container runtime's calls into vxnet API requests.

pub mod docker;
