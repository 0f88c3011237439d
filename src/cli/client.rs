//! How the CLI talks to the agent, behind a trait so that command tests can fake the agent.

use std::fmt;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use vxnet_proto::{ApiRequest, api_request::Kind as Req, api_response::Kind as Resp};

use crate::api;

/// How long the CLI waits for the agent (a write needs a Raft commit; a minority side refuses
/// after its own timeout, which is shorter).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent's API as the commands use it: one request, one answer.
pub trait Api {
    /// Sends `request` and returns the answer as the agent sent it (an `Error` answer
    /// included); `Err` only when no answer came.
    fn send(&self, request: Req) -> Result<Option<Resp>>;

    /// Like [`Api::send`], and also returns what follows the answer (`capture`'s pcap stream).
    fn send_streaming(&self, request: Req) -> Result<(Option<Resp>, Box<dyn Read>)>;

    /// Sends `request` and turns an `Error` or empty answer into an error, worded as docker's.
    fn call(&self, request: Req) -> Result<Resp> {
        match self.send(request)? {
            Some(Resp::Error(failure)) => bail!("Error response from daemon: {}", failure.message),
            Some(kind) => Ok(kind),
            None => bail!("the daemon sent an empty response"),
        }
    }
}

/// The real agent, reached over its Unix socket.
#[derive(Debug, Clone)]
pub struct SocketClient {
    socket: PathBuf,
}

impl SocketClient {
    /// A client of the agent listening on `socket`.
    pub fn new(socket: PathBuf) -> SocketClient {
        SocketClient { socket }
    }
}

impl Api for SocketClient {
    fn send(&self, request: Req) -> Result<Option<Resp>> {
        let request = ApiRequest {
            kind: Some(request),
        };
        Ok(api::call(&self.socket, &request, CALL_TIMEOUT)?.kind)
    }

    fn send_streaming(&self, request: Req) -> Result<(Option<Resp>, Box<dyn Read>)> {
        let request = ApiRequest {
            kind: Some(request),
        };
        let (response, stream) = api::call_streaming(&self.socket, &request, CALL_TIMEOUT)?;
        Ok((response.kind, Box::new(stream)))
    }
}

/// Where a command prints and reads: the terminal in `vxnet`, buffers in tests.
pub struct Console<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error: per-name errors of commands that go on after one, and prompts.
    pub err: &'a mut dyn Write,
    /// Standard input: answers to prompts.
    pub input: &'a mut dyn BufRead,
}

impl fmt::Debug for Console<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// Sends a request whose success prints nothing (connect, fdb add, cluster leave, ...).
pub fn apply(api: &dyn Api, request: Req) -> Result<ExitCode> {
    api.call(request)?;
    Ok(ExitCode::SUCCESS)
}

/// The error for an answer of the wrong kind (a daemon of another version).
pub fn unexpected(response: &Resp) -> anyhow::Error {
    anyhow::anyhow!("unexpected response from daemon: {response:?}")
}
