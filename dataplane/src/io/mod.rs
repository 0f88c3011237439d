//! The I/O layer: the only code in vxnet that talks to the kernel.
//!
//! - [`tap`]: L2 TAP devices opened with `/dev/net/tun` ioctls (vnet header, multiqueue, offloads).
//! - [`netlink`]: bridges, veths and addresses over rtnetlink, and work inside other network
//!   namespaces ([`netlink::in_netns`]).
//! - [`netns`]: network namespace handles, and named namespaces for tests and tools.
//! - [`routes`]: the IPv4 routes vxnet owns, containers' default routes, bridge MACs.
//! - [`udp`]: the VXLAN underlay sockets (batched `recvmmsg`/`sendmmsg`, UDP GSO and GRO).
//! - [`plane`]: the running data plane: setup of the workers, their sockets and the TAPs, in
//!   the order the steering programs ([`steering`]) index them.
//! - `workers`: the data plane's threads, each with its epoll instance (`epoll`), its
//!   busy-poll policy ([`BusyPoll`]) and its log of failed calls (`faults`).
//!
//! Setup calls return [`IoError`]; per-packet calls (`read`, `write`, `recv_batch`, …) return
//! [`std::io::Error`] so that the hot path can test `WouldBlock` without unwrapping a wrapper.

mod busy_poll;
mod epoll;
mod faults;
pub mod netlink;
pub mod netns;
pub mod plane;
pub mod routes;
pub mod steering;
pub mod tap;
pub mod udp;
mod workers;

pub use busy_poll::{
    BUSY_POLL_BUDGET, BUSY_POLL_BULK_PACKETS, BUSY_POLL_PERIOD, BusyPoll, DEFAULT_BUSY_POLL,
};

pub use netlink::{
    LinkInfo, LinkRef, Netlink, RuntimeVethSpec, VethCreated, VethSpec, in_netns, in_netns_blocking,
};
pub use netns::{NamedNetns, NetnsHandle};
pub use plane::{DataPlane, DataPlaneConfig, SteeringStatus, default_workers};
pub use routes::{ROUTE_PROTOCOL, Route4};
pub use tap::{Tap, TapOffloads, TapOptions, VNET_HDR_LEN};
pub use udp::{MsgBatch, RecvMeta, SendPool, VxlanSocket, bind_vxlan_rx};

/// Errors of the I/O layer's setup calls.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A system call failed; `context` says which one and on what.
    #[error("{context}: {source}")]
    Os {
        /// What was being done, e.g. `TUNSETIFF on vx0`.
        context: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {context}: {source}")]
    Netlink {
        /// What was being done, e.g. `create bridge vxbr0`.
        context: String,
        /// rtnetlink's error (carries the kernel's errno when it answered with one).
        #[source]
        source: rtnetlink::Error,
    },
    /// A link, namespace or address that must exist does not.
    #[error("not found: {0}")]
    NotFound(String),
    /// A link that must not exist yet already does.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// An argument the kernel would reject anyway (bad interface name, prefix length, …).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl IoError {
    /// The kernel's errno behind this error, when there is one (netlink NACKs included).
    pub fn errno(&self) -> Option<i32> {
        match self {
            IoError::Os { source, .. } => source.raw_os_error(),
            IoError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| c.get().abs()),
            _ => None,
        }
    }

    pub(crate) fn os(context: impl Into<String>, source: std::io::Error) -> Self {
        IoError::Os {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn last_os(context: impl Into<String>) -> Self {
        IoError::Os {
            context: context.into(),
            source: std::io::Error::last_os_error(),
        }
    }

    pub(crate) fn netlink(context: impl Into<String>, source: rtnetlink::Error) -> Self {
        IoError::Netlink {
            context: context.into(),
            source,
        }
    }
}

/// Result of the I/O layer's setup calls.
pub type Result<T> = std::result::Result<T, IoError>;

/// Checks a Linux interface name: 1..=15 bytes, no `/`, whitespace or NUL.
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':');
    if ok {
        Ok(())
    } else {
        Err(IoError::Invalid(format!("bad interface name {name:?}")))
    }
}

/// Retries a libc call returning -1/errno while it fails with `EINTR`.
pub(crate) fn retry_eintr<T: PartialEq + From<i8> + Copy>(
    mut f: impl FnMut() -> T,
) -> std::io::Result<T> {
    loop {
        let r = f();
        if r != T::from(-1) {
            return Ok(r);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
