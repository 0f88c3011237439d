//! Raw socket calls shared by the programs that `overlay_bench` and `dns_bench` run inside their
//! containers. Each binary includes this file as a module of its own
//! (`#[path = "../common/sock.rs"] mod sock;`), so everything here must be used by both.

/// Sets the `SOL_SOCKET` option `opt` of socket `fd` to the integer `value`; setsockopt's
/// return value (0 on success).
pub fn set_int_opt(fd: libc::c_int, opt: libc::c_int, value: libc::c_int) -> libc::c_int {
    // SAFETY: setsockopt reads one c_int from a live local; a bad fd or option only fails.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    }
}

/// `recvmmsg` on `fd` into the headers `msgs` (up to `msgs.len()` datagrams) with `flags` and no
/// timeout: the number of datagrams received, or -1.
///
/// # Safety
///
/// Every header must point only at memory (iovecs and their buffers, name and control areas)
/// that is live and exclusively ours for the call.
pub unsafe fn recv_batch(
    fd: libc::c_int,
    msgs: &mut [libc::mmsghdr],
    flags: libc::c_int,
) -> libc::c_int {
    // SAFETY: `msgs` is a live slice of headers; what they point at is the caller's promise.
    unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            flags,
            std::ptr::null_mut(),
        )
    }
}
