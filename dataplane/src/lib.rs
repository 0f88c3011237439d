//! vxnet data plane.
//!
//! The packet core ([`wire`], [`fdb`], [`router`], [`offload`], [`txbatch`], [`stats`], [`steer`]) does no I/O and reads
//! no clock: bytes and `now` go in, actions come out. Only [`io`] touches sockets, TAP devices
//! and netlink.

pub mod capture;
pub mod fdb;
pub mod io;
pub mod offload;
pub mod router;
pub mod stats;
pub mod steer;
pub mod txbatch;
pub mod wire;
