//! Outbound side: one writer task per known peer that connects when there is something to
//! send, pumps queued Raft messages in batches, closes the connection once it has been idle for
//! [`IDLE_CLOSE`], and backs off with jitter on failure.
//!
//! Connecting on demand is what lets a cluster grow: the leader's heartbeats keep one
//! connection open to every member, a member's answers keep one open to the leader, and voters
//! talk to each other only during elections. A host thus holds about `voters + 1` connections
//! (the leader: one per member), not one to every other host.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft::eraftpb::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::connection::{PeerConnection, connect_inner};
use super::shared::{Core, Reach, bump};
use super::{
    BACKOFF_MAX, BACKOFF_MIN, BATCH_BYTES, BATCH_MSGS, Inbound, TransportError, WRITE_TIMEOUT,
};

/// An outbound connection with nothing to send for this long is closed. Longer than an
/// election (1-2 s of vote traffic), far shorter than a leader's silence: the leader sends a
/// heartbeat to every member each tick.
pub(super) const IDLE_CLOSE: Duration = Duration::from_secs(5);

/// A known peer: where it is and the queue of its writer task.
pub(super) struct PeerEntry {
    /// Its address, "host:port".
    pub(super) addr: String,
    /// The writer's queue.
    pub(super) tx: mpsc::Sender<Message>,
    // Dropping the entry drops this sender, which stops the writer task.
    pub(super) _stop: oneshot::Sender<()>,
}

/// Cheap jitter source for backoff (xorshift64*, seeded from the OS).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let mut seed = [0u8; 8];
        // Without OS randomness the jitter merely gets less random: the time will do.
        let seed = match getrandom::getrandom(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| u64::from(d.subsec_nanos())),
        };
        Jitter(seed | 1)
    }

    /// A delay uniformly in [d/2, d).
    fn spread(&mut self, d: Duration) -> Duration {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(r % nanos)
    }
}

enum PumpEnd {
    Stopped,
    Idle,
    Failed(TransportError),
}

/// The writer task of peer `id`: connects when a message is queued, pumps `rx` until idle or
/// stopped, reconnects with backoff after a failure.
pub(super) async fn run_peer_writer(
    core: Arc<Core>,
    id: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    mut stop: oneshot::Receiver<()>,
    reach: Arc<Reach>,
) {
    let mut shutdown = core.shutdown.clone();
    let mut jitter = Jitter::new();
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = &mut stop => return,
            _ = shutdown.changed() => return,
        };
        let route = core.route(Some(id));
        let attempt = connect_inner(&addr, core.identity(), Some(id), &route);
        let result = tokio::select! {
            r = attempt => r,
            _ = &mut stop => return,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(conn) => {
                if failures > 0 {
                    info!(peer = id, %addr, "connected to peer");
                }
                failures = 0;
                backoff = BACKOFF_MIN;
                reach.write_ok.store(true, Ordering::Relaxed);
                let end = pump(
                    &core,
                    conn,
                    first,
                    &mut rx,
                    &mut stop,
                    &mut shutdown,
                    &reach,
                )
                .await;
                reach.write_ok.store(false, Ordering::Relaxed);
                match end {
                    PumpEnd::Stopped => return,
                    PumpEnd::Idle => {
                        debug!(peer = id, %addr, "closing idle peer connection");
                        continue;
                    }
                    PumpEnd::Failed(e) => {
                        warn!(peer = id, %addr, "peer connection lost: {e}");
                        core.report_unreachable(id);
                    }
                }
            }
            Err(e) => {
                if matches!(e, TransportError::Revoked) {
                    // Final for this host: the agent decides (it stops).
                    let _ = core.inbound.try_send(Inbound::Revoked(id));
                }
                failures = failures.saturating_add(1);
                if failures == 1 {
                    warn!(peer = id, %addr, "cannot reach peer (retrying with backoff): {e}");
                } else {
                    debug!(peer = id, %addr, failures, "cannot reach peer: {e}");
                }
                // Whatever waited for this connection is stale by the next attempt: drop it
                // now and let Raft know, rather than deliver it late.
                drop(first);
                let mut dropped = 1u64;
                while rx.try_recv().is_ok() {
                    dropped += 1;
                }
                bump(&core.counters.raft_send_dropped, dropped);
                core.report_unreachable(id);
            }
        }
        let delay = jitter.spread(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return,
            _ = shutdown.changed() => return,
        }
    }
}

/// Writes `first`, then queued messages, to an established connection until it fails, stays
/// idle for [`IDLE_CLOSE`], or we are stopped.
async fn pump(
    core: &Core,
    conn: PeerConnection,
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
    stop: &mut oneshot::Receiver<()>,
    shutdown: &mut watch::Receiver<()>,
    reach: &Reach,
) -> PumpEnd {
    let PeerConnection {
        mut reader,
        mut writer,
        legacy,
        ..
    } = conn;
    // A shared-secret connection ends when the cluster stops allowing it: the next one is TLS.
    let mut security = core.security.changed.subscribe();
    // The server never writes after the handshake; reading only detects its close early.
    let mut probe = [0u8; 64];
    let mut buf = Vec::new();
    let mut next = Some(first);
    loop {
        let first = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                _ = &mut *stop => return PumpEnd::Stopped,
                _ = shutdown.changed() => return PumpEnd::Stopped,
                _ = security.changed(), if legacy => {
                    if !core.security.view().legacy_open {
                        return PumpEnd::Idle;
                    }
                    continue;
                }
                _ = tokio::time::sleep(IDLE_CLOSE) => return PumpEnd::Idle,
                r = reader.read(&mut probe) => {
                    return PumpEnd::Failed(match r {
                        Ok(0) => TransportError::Closed,
                        Ok(_) => TransportError::Protocol("unexpected data from the server".into()),
                        Err(e) => TransportError::Io(e),
                    });
                }
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return PumpEnd::Stopped,
                },
            },
        };
        buf.clear();
        let mut n = u64::from(core.encode_raft_frame(&first, &mut buf));
        // Batch whatever is already queued into the same write.
        let mut taken = 1;
        while buf.len() < BATCH_BYTES && taken < BATCH_MSGS {
            let Ok(m) = rx.try_recv() else { break };
            taken += 1;
            n += u64::from(core.encode_raft_frame(&m, &mut buf));
        }
        if buf.is_empty() {
            continue;
        }
        let write = tokio::time::timeout(WRITE_TIMEOUT, async {
            writer.write_all(&buf).await?;
            writer.flush().await
        });
        let result = tokio::select! {
            r = write => r,
            _ = &mut *stop => return PumpEnd::Stopped,
            _ = shutdown.changed() => return PumpEnd::Stopped,
        };
        match result {
            Ok(Ok(())) => {
                reach.write_ok.store(true, Ordering::Relaxed);
                bump(&core.counters.raft_sent, n);
            }
            Ok(Err(e)) => {
                bump(&core.counters.raft_send_dropped, n);
                return PumpEnd::Failed(TransportError::Io(e));
            }
            Err(_) => {
                bump(&core.counters.raft_send_dropped, n);
                return PumpEnd::Failed(TransportError::Timeout);
            }
        }
    }
}
