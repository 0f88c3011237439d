//! Framing: length-prefixed prost [`PeerEnvelope`]s on a byte stream.

use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use vxnet_proto::PeerEnvelope;
use vxnet_proto::frame::{self, FrameError};

use super::TransportError;

/// Appends `len BE || envelope` to `out`; nothing is appended on error.
pub(super) fn encode_frame(env: &PeerEnvelope, out: &mut Vec<u8>) -> Result<(), TransportError> {
    frame::encode(env, out).map_err(TransportError::from)
}

impl From<FrameError> for TransportError {
    fn from(e: FrameError) -> TransportError {
        match e {
            FrameError::TooLarge { len, max } => TransportError::FrameTooLarge { len, max },
            FrameError::Io(e) => TransportError::Io(e),
            FrameError::Truncated { .. } | FrameError::OverBudget { .. } => TransportError::Closed,
        }
    }
}

/// Writes one envelope as a frame, and flushes it (a TLS stream holds records until then).
pub(super) async fn write_envelope<W: AsyncWrite + Unpin>(
    w: &mut W,
    env: &PeerEnvelope,
) -> Result<(), TransportError> {
    let mut buf = Vec::new();
    encode_frame(env, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean close between frames.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<PeerEnvelope>, TransportError> {
    match frame::read(r, max, |_| true).await? {
        Some(body) => Ok(Some(PeerEnvelope::decode(body.as_slice())?)),
        None => Ok(None),
    }
}
