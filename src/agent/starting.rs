//! The API while the agent starts: the socket is bound first, so a CLI call during start-up
//! (opening the data dir, joining the cluster) gets a clear "starting" answer instead of a
//! refused connection or, worse, state older than what this host had already shown.
//! `stats` answers with `agent.ready 0`, so scripts can wait for readiness.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use vxnet_proto::frame;
use vxnet_proto::{
    ApiRequest, ApiResponse, ApplyFailure, ErrorKind, Stats, api_request::Kind as Req,
    api_response::Kind as Resp,
};

/// Requests larger than this are not read while starting (the answer is the same anyway).
const MAX_STARTING_REQUEST: usize = 64 << 10;

/// Answers every connection until the caller drops this future (when the agent is ready).
pub async fn answer_while_starting(
    listener: &UnixListener,
    phase: &tokio::sync::watch::Receiver<String>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let phase = phase.borrow().clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), answer(stream, phase)).await;
                });
            }
            Err(e) => {
                tracing::warn!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: UnixStream, phase: String) -> std::io::Result<()> {
    let request = match frame::read(&mut stream, MAX_STARTING_REQUEST, |_| true).await {
        Ok(Some(body)) => ApiRequest::decode(body.as_slice()).ok(),
        _ => None,
    };
    let response = match request.and_then(|r| r.kind) {
        Some(Req::Stats(_)) => ApiResponse {
            kind: Some(Resp::Stats(Stats {
                counters: BTreeMap::from([("agent.ready".to_string(), 0)]),
            })),
        },
        _ => ApiResponse {
            kind: Some(Resp::Error(ApplyFailure {
                kind: ErrorKind::Unspecified as i32,
                message: format!("vxnetd is starting ({phase}); try again in a moment"),
            })),
        },
    };
    super::server::write_response(&mut stream, &response).await?;
    stream.shutdown().await
}
