//! Admission control for the CLI's API ([`super::server`]): misbehaving clients cannot exhaust
//! the agent. Connections, request bytes in flight and capture streams are capped; when every
//! connection slot is taken, the connection that has spent longest reading its request is turned
//! away to make room, so clients that connect and stall cannot lock the CLI out. Refusals are
//! logged at most once per [`WARN_INTERVAL`] per limit, with a count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Most API connections served at once. The CLI opens one short connection per command, so even
/// scripts running many commands in parallel stay well below 64, while 64 idle connections cost
/// little (a task and a 4 KiB buffer each). When all are taken, the connection that has spent
/// longest reading its request is turned away to make room, so clients that connect and stall
/// cannot lock the CLI out.
pub(super) const MAX_CONNECTIONS: usize = 64;

/// Most bytes of request buffers held across all connections, past each one's first
/// `server::INITIAL_BUFFER` (which the connection cap bounds). Real requests are a few hundred
/// bytes; without this cap 64 connections could hold 64 × [`MAX_FRAME`] = 1 GiB. 64 MiB still
/// lets four requests of the full [`MAX_FRAME`] be read at once.
///
/// [`MAX_FRAME`]: crate::api::MAX_FRAME
pub(super) const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Most `capture` streams at once. A stream holds a blocking thread for as long as it runs, so
/// streams have a cap of their own and give back their connection slot once their request is
/// read: long captures never take the slots short CLI commands need, nor request-byte budget.
pub(super) const MAX_CAPTURES: usize = 8;

/// Most connections over [`MAX_CONNECTIONS`] waiting for a slot or being told no at once; beyond
/// that, a connection gets its answer in one non-blocking write and is closed at once, so a flood
/// cannot pile up tasks.
const MAX_TURNED_AWAY: usize = 128;

/// Shortest time between two warnings about the same limit.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// The API's resource limits, shared by all connections.
pub(super) struct Limits {
    pub(super) connections: Arc<Semaphore>,
    pub(super) turned_away: Arc<Semaphore>,
    pub(super) captures: Arc<Semaphore>,
    pub(super) budget: Arc<ByteBudget>,
    /// Connections still reading their request, oldest first, each with the means to stop it and
    /// have it hand its slot over.
    readers: Mutex<BTreeMap<u64, oneshot::Sender<Handover>>>,
    next_reader: AtomicU64,
    pub(super) over_connections: Throttled,
    pub(super) over_budget: Throttled,
    pub(super) over_captures: Throttled,
}

impl Limits {
    pub(super) fn new() -> Limits {
        Limits {
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            turned_away: Arc::new(Semaphore::new(MAX_TURNED_AWAY)),
            captures: Arc::new(Semaphore::new(MAX_CAPTURES)),
            budget: Arc::new(ByteBudget {
                used: AtomicUsize::new(0),
                limit: MAX_REQUEST_BYTES,
            }),
            readers: Mutex::new(BTreeMap::new()),
            next_reader: AtomicU64::new(0),
            over_connections: Throttled::new(format!(
                "too many concurrent API connections (limit {MAX_CONNECTIONS})"
            )),
            over_budget: Throttled::new(format!(
                "API requests being read hold too many bytes (limit {} MiB)",
                MAX_REQUEST_BYTES >> 20
            )),
            over_captures: Throttled::new(format!(
                "too many concurrent captures (limit {MAX_CAPTURES})"
            )),
        }
    }

    /// Registers a connection that starts reading its request; the receiver fires if it is
    /// turned away to make room.
    pub(super) fn reader(&self) -> (ReaderGuard<'_>, oneshot::Receiver<Handover>) {
        let id = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.readers).insert(id, tx);
        (ReaderGuard { limits: self, id }, rx)
    }

    /// Stops the connection that has been reading its request the longest, which then hands
    /// its slot to `handover`; when none is reading, `handover` is dropped.
    pub(super) fn evict_oldest_reader(&self, mut handover: Handover) {
        let mut readers = lock(&self.readers);
        while let Some((_, stop)) = readers.pop_first() {
            // A failed send is a reader that finished meanwhile: try the next one.
            match stop.send(handover) {
                Ok(()) => return,
                Err(back) => handover = back,
            }
        }
    }
}

/// Where a connection turned away to make room sends its slot: straight to the newcomer, so
/// that no other connection can take the slot in between.
pub(super) type Handover = oneshot::Sender<OwnedSemaphorePermit>;

/// Unregisters a reading connection when it finishes, however it finishes.
pub(super) struct ReaderGuard<'a> {
    limits: &'a Limits,
    id: u64,
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        lock(&self.limits.readers).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every step, so a panic elsewhere changes nothing.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes of request buffers held by all connections, against [`MAX_REQUEST_BYTES`].
pub(super) struct ByteBudget {
    pub(super) used: AtomicUsize,
    limit: usize,
}

/// Bytes taken from a [`ByteBudget`], given back on drop.
pub(super) struct Reservation {
    budget: Arc<ByteBudget>,
    pub(super) bytes: usize,
}

impl Reservation {
    pub(super) fn new(budget: &Arc<ByteBudget>) -> Reservation {
        Reservation {
            budget: Arc::clone(budget),
            bytes: 0,
        }
    }

    /// Takes `more` bytes from the budget, or nothing and false if that would exceed it.
    pub(super) fn grow(&mut self, more: usize) -> bool {
        let limit = self.budget.limit;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|&total| total <= limit)
            });
        if taken.is_ok() {
            self.bytes += more;
        }
        taken.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A warning logged at most once per [`WARN_INTERVAL`], counting the refusals it stands for.
pub(super) struct Throttled {
    what: String,
    state: Mutex<ThrottleState>,
}

struct ThrottleState {
    last: Option<Instant>,
    unreported: u64,
}

impl Throttled {
    fn new(what: String) -> Throttled {
        Throttled {
            what,
            state: Mutex::new(ThrottleState {
                last: None,
                unreported: 0,
            }),
        }
    }

    /// Counts one refused connection, and logs when the last warning is old enough.
    pub(super) fn refused(&self) {
        let mut state = lock(&self.state);
        state.unreported += 1;
        self.report(state);
    }

    /// Logs refusals held back by the last warning, if it is old enough.
    fn flush(&self) {
        let state = lock(&self.state);
        if state.unreported > 0 {
            self.report(state);
        }
    }

    fn report(&self, mut state: MutexGuard<'_, ThrottleState>) {
        let now = Instant::now();
        if state
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            return;
        }
        let count = std::mem::take(&mut state.unreported);
        let since = state.last.replace(now);
        drop(state);
        match since {
            Some(last) => tracing::warn!(
                "{}: refused {count} connection(s) in the last {}s",
                self.what,
                now.duration_since(last).as_secs()
            ),
            None => tracing::warn!("{}: refused {count} connection(s)", self.what),
        }
    }
}

/// Reports, every [`WARN_INTERVAL`], refusals that no later refusal brought to the log.
pub(super) async fn flush_warnings(limits: Arc<Limits>) {
    let mut tick = tokio::time::interval(WARN_INTERVAL);
    loop {
        tick.tick().await;
        for warning in [
            &limits.over_connections,
            &limits.over_budget,
            &limits.over_captures,
        ] {
            warning.flush();
        }
    }
}

/// A budget of `limit` bytes, none of them used.
#[cfg(test)]
pub(super) fn budget(limit: usize) -> Arc<ByteBudget> {
    Arc::new(ByteBudget {
        used: AtomicUsize::new(0),
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eviction_takes_the_oldest_reader_and_hands_its_slot_over() {
        let limits = Limits::new();
        let (oldest, mut oldest_evicted) = limits.reader();
        let (_newest, mut newest_evicted) = limits.reader();
        let (handover, handed) = oneshot::channel();
        limits.evict_oldest_reader(handover);
        assert!(newest_evicted.try_recv().is_err());
        let handover = oldest_evicted.try_recv().expect("oldest reader evicted");
        let slot = Arc::clone(&limits.connections)
            .try_acquire_owned()
            .expect("a slot");
        assert!(handover.send(slot).is_ok());
        assert!(handed.await.is_ok());
        drop(oldest);
        assert_eq!(lock(&limits.readers).len(), 1);
    }
}
