//! The embedded resolver: names of the containers of each network, answered on every host at
//! the network's gateway address, port 53 (UDP and TCP).
//!
//! Why the gateway address, not Docker's 127.0.0.11 in each sandbox: the anycast gateway is
//! already on every host serving the network and already each container's next hop, so one
//! listener per network serves every runtime (the CLI's namespaces, CNI pods, and Docker's own
//! resolver as its upstream) without entering each sandbox or changing its loopback. Answers
//! come from this host's applied state ([`server::Resolver`]), so they need no quorum.
//!
//! - `names.rs`: the index and the answer to one question (pure);
//! - `server.rs`: hickory-server's handler (the wire format is hickory's), counters;
//! - `upstream.rs`: the host's resolvers and forwarding;
//! - `resolvconf.rs`: `/etc/netns/<name>/resolv.conf` of named sandboxes.
//!
//! [`Dns::sync`] keeps one listener per gateway address of the networks this host serves, as
//! `gateway.rs` keeps the rules that open port 53 of those addresses to their containers.

pub mod names;
pub mod resolvconf;
pub mod server;
mod udp;
pub mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use vxnet_controlplane::state::State;

pub use names::is_dns_name;
pub use server::{DnsCounters, Resolver};
pub use upstream::{Upstreams, parse_upstream};

use server::Handler;

/// The DNS port.
pub const PORT: u16 = 53;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Receive buffer of each UDP listener: a burst of queries waits instead of being dropped.
const UDP_RECEIVE_BUFFER: usize = 1 << 20;

/// The gateway addresses this host answers on: those of the networks it has an endpoint of
/// (where `links.rs` puts the gateway on the bridge).
pub fn listen_addresses(state: &State, host: &str) -> BTreeSet<Ipv4Addr> {
    let local: BTreeSet<&str> = state
        .endpoints()
        .filter(|e| e.host == host)
        .map(|e| e.network_id.as_str())
        .collect();
    state
        .networks()
        .filter(|n| local.contains(n.id.as_str()))
        .filter_map(|n| n.gateway.parse().ok())
        .collect()
}

/// The resolver, its listeners and the sandboxes' resolv.conf files.
#[derive(Debug)]
pub struct Dns {
    /// Shared by every listener.
    pub resolver: Arc<Resolver>,
    host: String,
    listeners: tokio::sync::Mutex<BTreeMap<Ipv4Addr, Listener>>,
    /// The addresses listened on (for the counters, read without the async lock).
    addresses: std::sync::Mutex<BTreeSet<Ipv4Addr>>,
    files: resolvconf::ResolvConfs,
}

/// One gateway address's UDP loop and TCP server; dropping it stops both (hickory's server
/// owns its tasks in a `JoinSet`).
struct Listener {
    _tcp: Server<Handler>,
    udp: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.udp.abort();
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

impl Dns {
    /// The resolver of host `host` of cluster `cluster_id`; `current` returns the applied
    /// state.
    pub fn new(
        host: &str,
        cluster_id: u64,
        current: Box<dyn Fn() -> Arc<State> + Send + Sync>,
        upstreams: Upstreams,
    ) -> Dns {
        let writer = format!("host {host} of cluster {cluster_id:016x}");
        Dns {
            resolver: Arc::new(Resolver::new(host.to_string(), current, upstreams)),
            host: host.to_string(),
            listeners: tokio::sync::Mutex::new(BTreeMap::new()),
            addresses: std::sync::Mutex::default(),
            files: resolvconf::ResolvConfs::new(resolvconf::NETNS_ETC, host, &writer),
        }
    }

    /// Listens on the gateway addresses of the networks served here (and only those) and
    /// writes the sandboxes' resolv.conf (`full`: check the files on disk too). Returns what
    /// failed; the next round tries again.
    pub async fn sync(&self, state: &State, full: bool) -> Vec<String> {
        let want = listen_addresses(state, &self.host);
        let mut errors = Vec::new();
        {
            let mut listeners = self.listeners.lock().await;
            listeners.retain(|addr, _| want.contains(addr));
            for addr in want {
                if listeners.contains_key(&addr) {
                    continue;
                }
                match self.listen(addr) {
                    Ok(listener) => {
                        tracing::info!(%addr, "dns: listening on port {PORT}");
                        listeners.insert(addr, listener);
                    }
                    Err(e) => errors.push(format!("dns: listening on {addr}:{PORT}: {e}")),
                }
            }
            *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) =
                listeners.keys().copied().collect();
        }
        let plan = self.files.plan(state);
        errors.extend(
            self.files
                .apply(&plan, full)
                .into_iter()
                .map(|e| format!("dns: {e}")),
        );
        errors
    }

    /// The resolver's counters by name, with the queries the kernel dropped because a UDP
    /// listener's receive buffer was full (`receive_drops`, from `/proc/net/udp`: a flood
    /// the resolver never saw).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters = self.resolver.counters.snapshot().to_vec();
        let addresses = self
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
        counters.push(("receive_drops", udp_drops(&table, &addresses)));
        counters
    }

    /// Stops every listener and removes this host's resolv.conf files (the host left).
    pub async fn remove_all(&self) -> Vec<String> {
        self.listeners.lock().await.clear();
        self.files.remove_all()
    }

    fn listen(&self, addr: Ipv4Addr) -> std::io::Result<Listener> {
        let at = SocketAddr::from((addr, PORT));
        let udp = tokio::net::UdpSocket::from_std(bind_udp(at)?)?;
        let tcp = tokio::net::TcpListener::from_std(bind_tcp(at)?)?;
        let mut server = Server::new(Handler(Arc::clone(&self.resolver)));
        server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
        let udp = tokio::spawn(udp::serve(udp, Arc::clone(&self.resolver)));
        Ok(Listener { _tcp: server, udp })
    }
}

/// A UDP socket on `at`, which may not be on an interface yet (`IP_FREEBIND`: the bridge and
/// its gateway address are made by the link reconciler, possibly after this).
fn bind_udp(at: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_freebind_v4(true)?;
    socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER)?;
    socket.set_nonblocking(true)?;
    socket.bind(&at.into())?;
    Ok(socket.into())
}

/// A TCP listener on `at` (freebind, and reusable at once after a restart).
fn bind_tcp(at: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_freebind_v4(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&at.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The `drops` of the UDP sockets bound to `addresses`, port 53, in a `/proc/net/udp` table
/// (addresses are printed as the native-endian number of their bytes).
fn udp_drops(table: &str, addresses: &BTreeSet<Ipv4Addr>) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = fields.get(1)?.split_once(':')?;
            let addr = Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_ne_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            (port == PORT && addresses.contains(&addr))
                .then(|| fields.last()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_drops_of_our_sockets_only() {
        let ours = u32::from_ne_bytes([10, 20, 1, 1]);
        let other = u32::from_ne_bytes([10, 20, 2, 1]);
        let table = format!(
            "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
             \x20 1: {ours:08X}:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 100 2 0000000000000000 17\n\
             \x20 2: {other:08X}:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 101 2 0000000000000000 5\n\
             \x20 3: {ours:08X}:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 102 2 0000000000000000 9\n"
        );
        let addresses = BTreeSet::from([Ipv4Addr::new(10, 20, 1, 1)]);
        assert_eq!(udp_drops(&table, &addresses), 17);
        assert_eq!(udp_drops("garbage\nmore garbage", &addresses), 0);
    }
}
