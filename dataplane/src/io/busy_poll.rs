//! When a data-plane worker keeps polling instead of sleeping: a pure policy, fed the time since
//! the worker started (no clock inside), so it is tested without threads or sleeps.

use std::time::Duration;

/// Default [`DataPlaneConfig::busy_poll`](super::DataPlaneConfig::busy_poll): longer than one overlay round trip on one machine
/// (~60-100 µs), so a request's reply finds the worker awake.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(100);

/// Whether a worker keeps polling instead of sleeping (no clock inside: `now` is the time since
/// the worker started).
///
/// A sleeping worker costs a wakeup per packet: an IPI, a context switch and, on a VM, waking an
/// idle vCPU, tens of µs each, four times per overlay round trip. After handling events the worker
/// keeps polling for `window` (non-blocking `epoll_wait`, `sched_yield` between polls so any
/// runnable thread goes first), so a reply arriving within the window finds it awake. Polling is
/// capped at [`BUSY_POLL_BUDGET`] of each [`BUSY_POLL_PERIOD`] (80%): steady traffic at a few
/// thousand packets per second cannot make a worker spin a whole core, and the yield means any
/// other runnable thread (the containers' own) runs before the next poll.
///
/// Polling pays for sparse, latency-bound traffic only. A bulk stream's wakes carry whole batches
/// (a 64 KiB super-frame is ~45 packets), so the wake's cost is spread over them, and the next
/// batch wakes the worker soon anyway; polling then only turns idle time into busy time. So the
/// worker polls only while its recent wakes averaged fewer than [`BUSY_POLL_BULK_PACKETS`]
/// packets (an exponential average over about 8 wakes).
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    last_work: Option<Duration>,
    period_start: Duration,
    spent: Duration,
    /// When the poll before this one happened, while spinning.
    last_poll: Option<Duration>,
    /// Average packets per wake, in 1/16ths (fixed point: no float on the hot path).
    packets_per_wake_x16: u32,
}

/// Wakes that average this many packets or more are bulk traffic: no polling after them.
pub const BUSY_POLL_BULK_PACKETS: u32 = 8;

/// Length of one busy-poll accounting period.
pub const BUSY_POLL_PERIOD: Duration = Duration::from_millis(10);
/// Most polling time per [`BUSY_POLL_PERIOD`].
pub const BUSY_POLL_BUDGET: Duration = Duration::from_millis(8);

impl BusyPoll {
    /// Polls for up to `window` after each piece of work; zero never polls.
    pub fn new(window: Duration) -> Self {
        BusyPoll {
            window,
            last_work: None,
            period_start: Duration::ZERO,
            spent: Duration::ZERO,
            last_poll: None,
            packets_per_wake_x16: 0,
        }
    }

    /// The worker handled events at `now`, moving `packets` packets (frames read, datagrams
    /// received).
    pub fn worked(&mut self, now: Duration, packets: u32) {
        self.account(now);
        self.last_poll = None;
        self.last_work = Some(now);
        // avg += (sample - avg) / 8, in 1/16ths; a sample is capped so one burst cannot pin it.
        let sample = packets.min(4 * BUSY_POLL_BULK_PACKETS) * 16;
        let avg = self.packets_per_wake_x16;
        self.packets_per_wake_x16 = avg - avg / 8 + sample / 8;
    }

    /// Whether to poll once more (true) or sleep (false) at `now`.
    pub fn keep_polling(&mut self, now: Duration) -> bool {
        self.account(now);
        let Some(last_work) = self.last_work else {
            return false;
        };
        let poll = now.saturating_sub(last_work) < self.window
            && self.spent < BUSY_POLL_BUDGET
            && self.packets_per_wake_x16 < BUSY_POLL_BULK_PACKETS * 16;
        self.last_poll = poll.then_some(now);
        poll
    }

    /// Time spent polling so far in the current period.
    pub fn spent(&self) -> Duration {
        self.spent
    }

    fn account(&mut self, now: Duration) {
        if now.saturating_sub(self.period_start) >= BUSY_POLL_PERIOD {
            self.period_start = now;
            self.spent = Duration::ZERO;
        } else if let Some(last) = self.last_poll {
            self.spent += now.saturating_sub(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn busy_poll_polls_within_the_window_after_work_only() {
        let mut b = BusyPoll::new(100 * US);
        assert!(!b.keep_polling(Duration::ZERO), "no work yet: sleep");
        b.worked(1000 * US, 1);
        assert!(b.keep_polling(1010 * US));
        assert!(b.keep_polling(1099 * US));
        assert!(!b.keep_polling(1100 * US), "window over");
        b.worked(1200 * US, 1);
        assert!(b.keep_polling(1250 * US));
    }

    #[test]
    fn zero_window_never_polls() {
        let mut b = BusyPoll::new(Duration::ZERO);
        b.worked(5 * US, 1);
        assert!(!b.keep_polling(5 * US));
    }

    #[test]
    fn polling_is_capped_per_period_and_the_budget_comes_back() {
        let mut b = BusyPoll::new(Duration::from_secs(1));
        b.worked(Duration::ZERO, 1);
        let mut now = Duration::ZERO;
        let mut polled = Duration::ZERO;
        // Poll every µs until refused: the cap stops it within the first period.
        while b.keep_polling(now) {
            now += US;
            polled += US;
            assert!(polled <= BUSY_POLL_PERIOD, "never refused");
        }
        assert!(
            polled >= BUSY_POLL_BUDGET && polled <= BUSY_POLL_BUDGET + 2 * US,
            "{polled:?}"
        );
        // Work in the next period: polling is allowed again.
        b.worked(BUSY_POLL_PERIOD + US, 1);
        assert!(b.keep_polling(BUSY_POLL_PERIOD + 2 * US));
    }

    #[test]
    fn time_between_work_and_polls_is_not_charged() {
        let mut b = BusyPoll::new(100 * US);
        b.worked(Duration::ZERO, 1);
        assert!(b.keep_polling(10 * US));
        b.worked(50 * US, 1); // 40 µs of polling
        assert!(b.keep_polling(60 * US)); // handling work (50..60) is not polling
        assert_eq!(b.spent(), 40 * US);
    }

    #[test]
    fn bulk_wakes_stop_polling_and_sparse_ones_bring_it_back() {
        let mut b = BusyPoll::new(100 * US);
        let mut now = Duration::ZERO;
        // A stream: every wake moves a super-frame's worth of packets.
        for _ in 0..8 {
            now += 200 * US;
            b.worked(now, 45);
        }
        assert!(
            !b.keep_polling(now + US),
            "bulk traffic: sleep between batches"
        );
        // One sparse wake does not flip it at once...
        now += 200 * US;
        b.worked(now, 1);
        assert!(!b.keep_polling(now + US));
        // ...request/response traffic does, within a few dozen wakes.
        let mut wakes = 1;
        while !b.keep_polling(now + US) {
            now += 200 * US;
            b.worked(now, 1);
            wakes += 1;
            assert!(wakes < 40, "never polls again");
        }
    }
}
