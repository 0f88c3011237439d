//! The agent's local API: length-prefixed `prost` messages over a Unix socket.
//!
//! One request, one response per connection, each one frame of vxnet's one framing
//! ([`vxnet_proto::frame`]: a 4-byte big-endian length and that many bytes of one message).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use thiserror::Error;
use vxnet_proto::frame::FrameError;
use vxnet_proto::{ApiRequest, ApiResponse};

/// Largest API frame: the one limit of vxnet's framing (a `network inspect` of a large cluster
/// fits easily).
pub const MAX_FRAME: usize = vxnet_proto::frame::MAX_FRAME;

/// The default socket path (`-H`, `VXNET_HOST`).
pub const DEFAULT_SOCKET: &str = "/run/vxnet/vxnet.sock";

/// Why an API call failed before the agent could answer it.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The socket could not be reached.
    #[error("Cannot connect to the vxnet daemon at unix://{path}. Is vxnetd running? ({cause})")]
    Connect {
        /// The socket path.
        path: String,
        /// Why (in the message, not as a source: error chains would print it twice).
        cause: std::io::Error,
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
    w.write_all(&vxnet_proto::frame::to_vec(msg).map_err(frame_error)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame's bytes (growing with what arrives, never with what the length claims).
pub fn read_frame_bytes(r: &mut impl Read) -> Result<Vec<u8>, ApiError> {
    match vxnet_proto::frame::read_blocking(r, MAX_FRAME).map_err(frame_error)? {
        Some(body) => Ok(body),
        None => Err(ApiError::Io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

fn frame_error(e: FrameError) -> ApiError {
    match e {
        FrameError::TooLarge { len, .. } => ApiError::FrameTooLarge(len),
        FrameError::Io(e) => ApiError::Io(e),
        e => ApiError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            e.to_string(),
        )),
    }
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
    let mut stream = UnixStream::connect(socket).map_err(|cause| ApiError::Connect {
        path: socket.display().to_string(),
        cause,
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
