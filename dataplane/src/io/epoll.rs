//! A worker's epoll instance: which of its fds (its receive socket, its TAP queues) are ready.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{IoError, Result};

/// An epoll instance. Tokens are the caller's: epoll hands back the `u64` given to [`Epoll::add`].
#[derive(Debug)]
pub(crate) struct Epoll(OwnedFd);

impl Epoll {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: epoll_create1 takes a flag and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(IoError::last_os("epoll_create1"));
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input; its events carry `token`.
    pub(crate) fn add(&self, fd: RawFd, token: u64) -> Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both fds are open; `event` lives on our stack for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(IoError::last_os(format!("epoll_ctl add fd {fd}")));
        }
        Ok(())
    }

    /// Stops watching `fd`.
    pub(crate) fn delete(&self, fd: RawFd) {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer; a stale fd only yields an error,
        // which is fine: closing an fd removes it from the interest list anyway.
        unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Waits up to `timeout` for events; returns how many were written to `events`. A signal
    /// (`EINTR`) returns `Ok(0)`, like a timeout; any other failure is returned.
    pub(crate) fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout: Duration,
    ) -> std::io::Result<usize> {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a valid, writable array of `max` entries.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        match usize::try_from(n) {
            Ok(n) => Ok(n),
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    Ok(0)
                } else {
                    Err(err)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_ready_fds_with_their_tokens_and_times_out_otherwise() {
        let epoll = Epoll::new().expect("epoll");
        let (a, b) = std::os::unix::net::UnixDatagram::pair().expect("socketpair");
        epoll.add(b.as_raw_fd(), 7).expect("add");
        // SAFETY: epoll_event is plain old data; all-zero is a valid value.
        let mut events = [unsafe { std::mem::zeroed::<libc::epoll_event>() }; 4];
        assert_eq!(epoll.wait(&mut events, Duration::ZERO).expect("wait"), 0);
        a.send(b"x").expect("send");
        assert_eq!(
            epoll
                .wait(&mut events, Duration::from_secs(5))
                .expect("wait"),
            1
        );
        let token = events[0].u64;
        assert_eq!(token, 7);
        epoll.delete(b.as_raw_fd());
        assert_eq!(epoll.wait(&mut events, Duration::ZERO).expect("wait"), 0);
    }

    #[test]
    fn a_failed_wait_is_an_error_not_a_timeout() {
        let epoll = Epoll::new().expect("epoll");
        // An empty event array is EINVAL: a real error, told apart from "nothing ready".
        let err = epoll.wait(&mut [], Duration::ZERO).expect_err("EINVAL");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
