//! The host's upstream resolvers, and one query forwarded to them.
//!
//! Forwarding runs in the agent's (the host's) namespace, so an upstream on the host's loopback
//! (systemd-resolved's 127.0.0.53, a local dnsmasq) works, which Docker's in-container resolver
//! cannot reach. Each query gets its own socket on a random port, connected to the upstream, and
//! an answer counts only if its id and question match: an off-path spoofer must guess both the
//! port and the id.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream may take to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the resolv.conf is looked at again (only re-read when it changed).
const RECHECK: Duration = Duration::from_secs(1);
/// The largest answer accepted over UDP.
const MAX_UDP_ANSWER: usize = 65_535;

/// Where queries for names vxnet does not know go.
#[derive(Debug)]
pub struct Upstreams {
    /// Given by the operator (`--dns-upstream`): used as they are.
    configured: Arc<[SocketAddr]>,
    /// Otherwise the `nameserver` lines of this file.
    resolv_conf: PathBuf,
    cache: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    checked: Option<Instant>,
    modified: Option<SystemTime>,
    servers: Option<Arc<[SocketAddr]>>,
}

/// Parses `IP` or `IP:PORT` (`[V6]:PORT`), the form of `--dns-upstream`.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("invalid DNS upstream {text:?}: want IP or IP:PORT"))
}

/// The `nameserver` addresses of a resolv.conf (port 53), in order; other lines are ignored.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (`fe80::1%eth0`) is not usable from here: skipped.
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

impl Upstreams {
    /// `configured` when not empty, else the nameservers of `resolv_conf`.
    pub fn new(configured: Vec<SocketAddr>, resolv_conf: PathBuf) -> Upstreams {
        Upstreams {
            configured: configured.into(),
            resolv_conf,
            cache: Mutex::default(),
        }
    }

    /// The servers to ask, in order; the resolv.conf is re-read when it changed (checked at
    /// most once a second).
    pub fn servers(&self) -> Arc<[SocketAddr]> {
        if !self.configured.is_empty() {
            return Arc::clone(&self.configured);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(at), Some(servers)) = (cache.checked, &cache.servers)
            && at.elapsed() < RECHECK
        {
            return Arc::clone(servers);
        }
        cache.checked = Some(Instant::now());
        let modified = std::fs::metadata(&self.resolv_conf)
            .and_then(|m| m.modified())
            .ok();
        if cache.servers.is_none() || modified != cache.modified {
            let text = std::fs::read_to_string(&self.resolv_conf).unwrap_or_default();
            let servers: Arc<[SocketAddr]> = parse_resolv_conf(&text).into();
            if servers.is_empty() {
                tracing::warn!(
                    path = %self.resolv_conf.display(),
                    "no nameserver to forward to: names outside vxnet will fail"
                );
            }
            cache.modified = modified;
            cache.servers = Some(servers);
        }
        cache.servers.clone().unwrap_or_else(|| Arc::from([]))
    }
}

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolver")]
    NoUpstream,
    /// Every upstream failed; the last failure.
    #[error("{server}: {error}")]
    Failed {
        /// The last upstream asked.
        server: SocketAddr,
        /// What went wrong with it.
        error: String,
    },
}

/// Asks each of `servers` in turn (UDP, or TCP when `tcp`) until one answers `query` (the
/// client's bytes, unchanged) with a message of the same id and question.
pub async fn forward(
    servers: &[SocketAddr],
    query: &[u8],
    asked: &Message,
    tcp: bool,
) -> Result<Message, ForwardError> {
    let mut last = ForwardError::NoUpstream;
    for &server in servers {
        let attempt = if tcp {
            tokio::time::timeout(UPSTREAM_TIMEOUT, over_tcp(server, query)).await
        } else {
            tokio::time::timeout(UPSTREAM_TIMEOUT, over_udp(server, query, asked)).await
        };
        let error = match attempt {
            Ok(Ok(bytes)) => match Message::from_vec(&bytes) {
                Ok(answer) if matches(&answer, asked) => return Ok(answer),
                Ok(_) => "an answer to another question".to_string(),
                Err(e) => format!("a malformed answer: {e}"),
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {UPSTREAM_TIMEOUT:?}"),
        };
        last = ForwardError::Failed { server, error };
    }
    Err(last)
}

fn matches(answer: &Message, asked: &Message) -> bool {
    answer.metadata.id == asked.metadata.id && answer.queries == asked.queries
}

async fn over_udp(server: SocketAddr, query: &[u8], asked: &Message) -> std::io::Result<Vec<u8>> {
    let any: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_UDP_ANSWER];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything else on this port (a stray or spoofed datagram) is skipped, not taken.
        if let Ok(answer) = Message::from_vec(&buf[..n])
            && matches(&answer, asked)
        {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn over_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::other("query longer than 65535 bytes"))?;
    let mut stream = TcpStream::connect(server).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver  ::1 \n\
                    nameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\nnameserver 127.0.0.53\n";
        let servers: Vec<String> = parse_resolv_conf(text)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(servers, ["10.0.0.2:53", "[::1]:53", "127.0.0.53:53"]);
    }

    #[test]
    fn upstream_flag_forms() {
        assert_eq!(
            parse_upstream("10.0.0.2").unwrap().to_string(),
            "10.0.0.2:53"
        );
        assert_eq!(
            parse_upstream("10.0.0.2:5353").unwrap().to_string(),
            "10.0.0.2:5353"
        );
        assert_eq!(parse_upstream("[::1]:53").unwrap().to_string(), "[::1]:53");
        assert!(parse_upstream("resolver.example").is_err());
    }

    #[test]
    fn a_changed_resolv_conf_is_read_again() {
        let dir = tempfile_dir();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 10.0.0.2\n").unwrap();
        let upstreams = Upstreams::new(Vec::new(), path.clone());
        assert_eq!(upstreams.servers()[0].to_string(), "10.0.0.2:53");
        std::fs::write(&path, "nameserver 10.0.0.3\n").unwrap();
        // Force a later modification time and an expired check.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        upstreams.cache.lock().unwrap().checked = None;
        assert_eq!(upstreams.servers()[0].to_string(), "10.0.0.3:53");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vxnet-upstream-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
