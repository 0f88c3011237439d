//! Process-level failure policy and, in builds with the `fault-injection` feature, the hooks
//! tests use to provoke failures.
//!
//! Policy: a panic on any thread ends the whole process (exit status [`PANIC_EXIT`]) after
//! logging which thread panicked and where. vxnetd's threads share state (the Raft driver
//! publishes the view the API reads; the data plane reads the forwarding table the reconciler
//! writes), so a process that lost one of them would be half-alive: serving stale reads or
//! answering writes with misleading errors. Dying loudly lets the supervisor (systemd's
//! `Restart=on-failure`) start it again from the durable state, which a restart fully replays.

/// Exit status after a panic (EX_SOFTWARE).
pub const PANIC_EXIT: i32 = 70;

/// Installs the panic policy: log, then end the process. Call once, early in `main`.
pub fn exit_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(
            thread = name,
            location,
            "fatal: thread panicked: {message}; vxnetd exits (status {PANIC_EXIT}) rather than \
             run half-alive"
        );
        default_hook(info);
        std::process::exit(PANIC_EXIT);
    }));
}

#[cfg(feature = "fault-injection")]
mod inject {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    static PANIC_PLAN: OnceLock<(String, Instant)> = OnceLock::new();

    /// Arms a panic on the named site (`raft`, `reconcile`) once `after` has passed.
    pub fn arm_panic(site: &str, after: Duration) {
        let _ = PANIC_PLAN.set((site.to_string(), Instant::now() + after));
    }

    /// Panics if a panic is armed for `site` and due.
    pub fn check(site: &str) {
        if let Some((armed, at)) = PANIC_PLAN.get()
            && armed == site
            && Instant::now() >= *at
        {
            panic!("injected fault: panic at site {site}");
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use inject::{arm_panic, check};

/// Without the `fault-injection` feature nothing is ever injected.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn check(_site: &str) {}
