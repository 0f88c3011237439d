//! What the packet path does with a failed system call: `WouldBlock` means "nothing more now",
//! `Interrupted` is retried where it happens ([`super::retry_eintr`]), and anything else is a
//! fault: counted under an [`IoFault`] and logged, at most once per [`LOG_INTERVAL`] per kind
//! with the number left unlogged in between (quinn-udp's rule: an error that repeats per packet
//! must not flood the log, and must not be lost either).

use std::time::{Duration, Instant};

use crate::stats::{IoFault, WorkerStats};

/// Shortest time between two log lines about the same kind of failed call, per worker.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Whether `err` only says the call had nothing to do now (`WouldBlock`).
pub(crate) fn is_would_block(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::WouldBlock
}

/// Whether a failed send only says the socket had no room now (`WouldBlock`, `ENOBUFS`): the
/// datagram is lost, but nothing is broken.
pub(crate) fn is_send_busy(err: &std::io::Error) -> bool {
    is_would_block(err) || err.raw_os_error() == Some(libc::ENOBUFS)
}

/// One worker's log of faults: when each kind was last logged, and how many went unlogged since.
#[derive(Debug)]
pub(crate) struct FaultLog {
    worker: usize,
    last: [Option<Instant>; IoFault::COUNT],
    unlogged: [u64; IoFault::COUNT],
}

impl FaultLog {
    pub(crate) fn new(worker: usize) -> Self {
        FaultLog {
            worker,
            last: [None; IoFault::COUNT],
            unlogged: [0; IoFault::COUNT],
        }
    }

    /// Counts a fault in `stats` and logs it unless the same kind was logged less than
    /// [`LOG_INTERVAL`] before `now`.
    pub(crate) fn report(
        &mut self,
        stats: &WorkerStats,
        fault: IoFault,
        err: &std::io::Error,
        now: Instant,
    ) {
        stats.count_fault(fault);
        if let Some(unlogged) = self.due(fault, now) {
            tracing::warn!(
                worker = self.worker,
                call = fault.name(),
                unlogged,
                "data plane: {} failed: {err}",
                fault.name()
            );
        }
    }

    /// Whether to log a `fault` at `now`; if so, how many of its kind went unlogged before it.
    fn due(&mut self, fault: IoFault, now: Instant) -> Option<u64> {
        let i = fault as usize;
        let due =
            self.last[i].is_none_or(|last| now.saturating_duration_since(last) >= LOG_INTERVAL);
        if due {
            self.last[i] = Some(now);
            Some(std::mem::take(&mut self.unlogged[i]))
        } else {
            self.unlogged[i] += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_per_kind_and_counts_every_fault() {
        let stats = WorkerStats::default();
        let mut log = FaultLog::new(0);
        let t0 = Instant::now();
        let err = std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(log.due(IoFault::TapRead, t0), Some(0));
        assert_eq!(log.due(IoFault::TapRead, t0 + Duration::from_secs(1)), None);
        assert_eq!(log.due(IoFault::TapRead, t0 + Duration::from_secs(2)), None);
        // Another kind has its own clock.
        assert_eq!(
            log.due(IoFault::UdpRecv, t0 + Duration::from_secs(2)),
            Some(0)
        );
        // After the interval: logged, with the two left out in between.
        assert_eq!(log.due(IoFault::TapRead, t0 + LOG_INTERVAL), Some(2));
        assert_eq!(log.due(IoFault::TapRead, t0 + LOG_INTERVAL), None);

        for _ in 0..5 {
            log.report(&stats, IoFault::EpollWait, &err, t0);
        }
        assert_eq!(stats.faults(IoFault::EpollWait), 5, "every fault counts");
    }

    #[test]
    fn sorts_errors() {
        let would_block = std::io::Error::from(std::io::ErrorKind::WouldBlock);
        let no_buffers = std::io::Error::from_raw_os_error(libc::ENOBUFS);
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(is_would_block(&would_block));
        assert!(!is_would_block(&refused));
        assert!(is_send_busy(&would_block) && is_send_busy(&no_buffers));
        assert!(!is_send_busy(&refused));
    }
}
