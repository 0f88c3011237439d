//! Runtime integrations: adapters that turn a container runtime's calls into vxnet API requests
//! (Docker's remote driver in `vxnetd`; the CNI plugin, its own binary).

pub mod cni;
pub mod docker;
