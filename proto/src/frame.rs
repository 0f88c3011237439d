//! The one framing of every vxnet stream (the CLI's API socket, the peer protocol): a 4-byte
//! big-endian length, then that many bytes of one prost message.
//!
//! Readers refuse a length above their limit before reading on, and grow their buffer with the
//! bytes that actually arrive, so a length prefix alone commits no memory; a caller that shares
//! a memory budget between connections is asked before each growth. Hand-written rather than
//! tokio-util's `LengthDelimitedCodec`: that codec reserves the announced length up front (the
//! allocation this module exists to avoid), and the CLI's blocking client would not use it.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The largest frame anywhere: a `network inspect` of a big cluster, a Raft snapshot of a few
/// MB, with room to spare.
pub const MAX_FRAME: usize = 64 << 20;

/// First buffer capacity of a frame being read; it doubles as bytes arrive. A budget is not
/// asked about these first bytes, so small frames are never refused while large ones hold it.
pub const INITIAL_BUFFER: usize = 4 << 10;

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length is above the limit (a written message, or a received prefix).
    #[error("frame of {len} bytes is too large (limit {max} bytes)")]
    TooLarge {
        /// The length.
        len: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("the connection closed after {got} of {len} bytes")]
    Truncated {
        /// Bytes of the frame (after the prefix) that arrived.
        got: usize,
        /// The frame's length.
        len: usize,
    },
    /// The caller's memory budget refused to let the buffer grow.
    #[error("no memory budget left for a frame of {len} bytes")]
    OverBudget {
        /// The frame's length.
        len: usize,
    },
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Appends `message` as one frame to `out`; nothing is appended on error.
pub fn encode(message: &impl Message, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = message.encoded_len();
    let too_large = FrameError::TooLarge {
        len,
        max: MAX_FRAME,
    };
    if len > MAX_FRAME {
        return Err(too_large);
    }
    let prefix = u32::try_from(len).map_err(|_| too_large)?;
    out.reserve(4 + len);
    out.extend_from_slice(&prefix.to_be_bytes());
    // Cannot fail: `out` grows as needed.
    message
        .encode(out)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(())
}

/// A message as one frame.
pub fn to_vec(message: &impl Message) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode(message, &mut out)?;
    Ok(out)
}

/// Reads one frame's bytes. `Ok(None)`: the stream ended cleanly before the frame began.
/// `admit(capacity)` is asked before the buffer grows to `capacity` (past the first
/// [`INITIAL_BUFFER`] bytes, which it is not asked about); false refuses the frame.
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    mut admit: impl FnMut(usize) -> bool,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return match got {
                0 => Ok(None),
                _ => Err(FrameError::Truncated { got: 0, len: 0 }),
            };
        }
        got += n;
    }
    let len = checked_len(prefix, max)?;
    let mut body = Vec::new();
    while body.len() < len {
        grow(&mut body, len, &mut admit)?;
        let rest = u64::try_from(len - body.len()).unwrap_or(u64::MAX);
        // Into the spare capacity only: `take` keeps the read within the frame.
        if r.take(rest).read_buf(&mut body).await? == 0 {
            return Err(FrameError::Truncated {
                got: body.len(),
                len,
            });
        }
    }
    Ok(Some(body))
}

/// [`read`] for blocking streams (the CLI), with no budget: the same code, driven by one poll
/// (a blocking reader is never pending).
pub fn read_blocking<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut reader = Blocking(r);
    let mut frame = std::pin::pin!(read(&mut reader, max, |_| true));
    match frame
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => Err(FrameError::Io(std::io::Error::other(
            "a blocking reader returned pending",
        ))),
    }
}

/// A blocking reader as an [`AsyncRead`] whose reads complete at once.
struct Blocking<'a, R>(&'a mut R);

impl<R: Read> AsyncRead for Blocking<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.get_mut().0.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

fn checked_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Makes room for more of a `len`-byte frame: the capacity doubles (from [`INITIAL_BUFFER`])
/// up to `len`, each growth past the first buffer admitted by the caller first.
fn grow(
    body: &mut Vec<u8>,
    len: usize,
    admit: &mut impl FnMut(usize) -> bool,
) -> Result<(), FrameError> {
    if body.len() < body.capacity() {
        return Ok(());
    }
    let want = (body.capacity() * 2).clamp(INITIAL_BUFFER.min(len), len);
    if want > INITIAL_BUFFER && !admit(want) {
        return Err(FrameError::OverBudget { len });
    }
    body.reserve_exact(want - body.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiRequest, Empty, api_request};

    fn stats() -> ApiRequest {
        ApiRequest {
            kind: Some(api_request::Kind::Stats(Empty {})),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn frames_round_trip_blocking_and_async() {
        let bytes = to_vec(&stats()).unwrap();
        let body = read_blocking(&mut bytes.as_slice(), MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(ApiRequest::decode(body.as_slice()).unwrap(), stats());
        let body = block_on(read(&mut bytes.as_slice(), MAX_FRAME, |_| true))
            .unwrap()
            .unwrap();
        assert_eq!(ApiRequest::decode(body.as_slice()).unwrap(), stats());
        // A clean end between frames is no error.
        assert!(read_blocking(&mut &[][..], MAX_FRAME).unwrap().is_none());
        assert!(
            block_on(read(&mut &[][..], MAX_FRAME, |_| true))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn oversize_truncated_and_over_budget_frames_are_errors() {
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(
            read_blocking(&mut &huge[..], MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            block_on(read(&mut &huge[..], MAX_FRAME, |_| true)),
            Err(FrameError::TooLarge { .. })
        ));
        let mut short = 100u32.to_be_bytes().to_vec();
        short.extend_from_slice(&[1; 10]);
        assert!(matches!(
            read_blocking(&mut short.as_slice(), MAX_FRAME),
            Err(FrameError::Truncated { got: 10, len: 100 })
        ));
        assert!(matches!(
            block_on(read(&mut short.as_slice(), MAX_FRAME, |_| true)),
            Err(FrameError::Truncated { got: 10, len: 100 })
        ));
        assert!(matches!(
            read_blocking(&mut &[0u8, 0][..], MAX_FRAME),
            Err(FrameError::Truncated { .. })
        ));
        // A big frame asks the budget before growing past the first buffer; a small one never.
        let big = vec![7u8; 1 << 20];
        let mut framed = (big.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&big);
        let mut asked = Vec::new();
        let got = block_on(read(&mut framed.as_slice(), MAX_FRAME, |c| {
            asked.push(c);
            true
        }))
        .unwrap()
        .unwrap();
        assert_eq!(got, big);
        assert_eq!(asked.last(), Some(&(1 << 20)));
        assert!(asked.windows(2).all(|w| w[1] > w[0]));
        assert!(matches!(
            block_on(read(&mut framed.as_slice(), MAX_FRAME, |_| false)),
            Err(FrameError::OverBudget { .. })
        ));
        let small = to_vec(&stats()).unwrap();
        assert!(
            block_on(read(&mut small.as_slice(), MAX_FRAME, |_| false))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_claimed_length_commits_no_memory() {
        // 16 MiB announced, 3 bytes sent: the buffer never grew past what arrived.
        let mut claim = (16u32 << 20).to_be_bytes().to_vec();
        claim.extend_from_slice(b"abc");
        let mut asked = Vec::new();
        let r = block_on(read(&mut claim.as_slice(), MAX_FRAME, |c| {
            asked.push(c);
            true
        }));
        assert!(matches!(r, Err(FrameError::Truncated { got: 3, .. })));
        assert!(asked.is_empty(), "{asked:?}");
    }
}
