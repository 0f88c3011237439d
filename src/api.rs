//! The agent's local API: length-prefixed `prost` messages over a Unix socket.
//!
//! A frame is a 4-byte big-endian length and that many bytes of one message. One request, one
//! response per connection; frames above [`MAX_FRAME`] are refused before anything is allocated,
//! and a frame's buffer grows with the bytes that arrive, not with the length its sender claims.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use thiserror::Error;
use vxnet_proto::{ApiRequest, ApiResponse};

/// Largest API frame (a `network inspect` of a large cluster fits easily).
pub const MAX_FRAME: usize = 16 << 20;

/// The default socket path (`-H`, `VXNET_HOST`).
pub const DEFAULT_SOCKET: &str = "/run/vxnet/vxnet.sock";

/// Why an API call failed before the agent could answer it.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The socket could not be reached.
    #[error("Cannot connect to the vxnet daemon at unix://{path}. Is vxnetd running? ({source})")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("API socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a frame larger than [`MAX_FRAME`].
    #[error("API frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    /// The peer sent bytes that are not a valid message.
    #[error("malformed API message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, msg: &impl Message) -> Result<(), ApiError> {
    let body = msg.encode_to_vec();
    let len = u32::try_from(body.len()).map_err(|_| ApiError::FrameTooLarge(body.len()))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame's bytes; the buffer grows as they arrive, up to [`MAX_FRAME`].
pub fn read_frame_bytes(r: &mut impl Read) -> Result<Vec<u8>, ApiError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ApiError::FrameTooLarge(len));
    }
    // Grow with the bytes that arrive rather than trusting the claimed length up front.
    let mut body = Vec::with_capacity(len.min(4 << 10));
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(ApiError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame ended after {} of {len} bytes", body.len()),
        )));
    }
    Ok(body)
}

/// Sends `request` to the agent at `socket` and waits for its answer.
pub fn call(
    socket: &Path,
    request: &ApiRequest,
    timeout: Duration,
) -> Result<ApiResponse, ApiError> {
    call_streaming(socket, request, timeout).map(|(response, _)| response)
}

/// Like [`call`], and also returns the connection, for requests whose answer is followed by a
/// stream (`capture`). The returned stream has no read timeout.
pub fn call_streaming(
    socket: &Path,
    request: &ApiRequest,
    timeout: Duration,
) -> Result<(ApiResponse, UnixStream), ApiError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ApiError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write_frame(&mut stream, request)?;
    let body = read_frame_bytes(&mut stream)?;
    let response = ApiResponse::decode(body.as_slice())?;
    stream.set_read_timeout(None)?;
    Ok((response, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let req = ApiRequest {
            kind: Some(vxnet_proto::api_request::Kind::Stats(vxnet_proto::Empty {})),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let body = read_frame_bytes(&mut buf.as_slice()).unwrap();
        assert_eq!(ApiRequest::decode(body.as_slice()).unwrap(), req);

        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            read_frame_bytes(&mut &huge[..]),
            Err(ApiError::FrameTooLarge(_))
        ));
        assert!(matches!(
            read_frame_bytes(&mut &[0u8, 0][..]),
            Err(ApiError::Io(_))
        ));
    }
}
