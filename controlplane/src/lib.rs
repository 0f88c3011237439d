//! vxnet control plane: the replicated network model ([`state`]), its durable Raft log
//! ([`storage`]) and the Raft node that drives both ([`node`]).
//!
//! Everything here is sans-IO apart from the data directory: the caller owns the clock (calls
//! [`node::Node::tick`]), the network (sends the messages [`node::Node::on_ready`] returns and
//! feeds received ones to [`node::Node::step`]) and the clients (matches applied results to
//! waiting requests by request id).

pub mod node;
pub mod state;
pub mod storage;
pub mod transport;

pub use node::{Node, NodeConfig, NodeError, NotLeader, ReadyOutcome};
pub use state::{ApplyError, ApplyResult, State, Update};
pub use storage::{DiskStorage, StorageError, StorageOptions};
