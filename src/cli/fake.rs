//! A scripted agent for the command tests.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;

use anyhow::Result;
use vxnet_proto::{ApplyFailure, api_request::Kind as Req, api_response::Kind as Resp};

use super::client::{Api, Console};

/// Answers requests with scripted responses, in order, and keeps the requests.
#[derive(Debug, Default)]
pub struct FakeApi {
    answers: RefCell<VecDeque<Resp>>,
    stream: Vec<u8>,
    /// The requests received, in order.
    pub requests: RefCell<Vec<Req>>,
}

impl FakeApi {
    /// An agent that answers with `answers`, one per request.
    pub fn new(answers: impl IntoIterator<Item = Resp>) -> FakeApi {
        FakeApi {
            answers: RefCell::new(answers.into_iter().collect()),
            ..FakeApi::default()
        }
    }

    /// Also sends `stream` after the answer to a streaming request.
    pub fn with_stream(mut self, stream: Vec<u8>) -> FakeApi {
        self.stream = stream;
        self
    }
}

impl Api for FakeApi {
    fn send(&self, request: Req) -> Result<Option<Resp>> {
        self.requests.borrow_mut().push(request);
        let answer = self.answers.borrow_mut().pop_front();
        Ok(Some(answer.expect("a request the test did not script")))
    }

    fn send_streaming(&self, request: Req) -> Result<(Option<Resp>, Box<dyn Read>)> {
        let answer = self.send(request)?;
        Ok((answer, Box::new(std::io::Cursor::new(self.stream.clone()))))
    }
}

/// The agent's answer to a refused request.
pub fn error(message: &str) -> Resp {
    Resp::Error(ApplyFailure {
        kind: 0,
        message: message.into(),
    })
}

/// What a command printed and returned.
#[derive(Debug)]
pub struct Run {
    /// The command's result (the exit code, or the error `vxnet` prints and fails with).
    pub result: Result<std::process::ExitCode>,
    /// Standard output.
    pub out: String,
    /// Standard error.
    pub err: String,
}

/// Runs `command` with empty standard input, capturing what it prints.
pub fn run(command: impl FnOnce(&mut Console) -> Result<std::process::ExitCode>) -> Run {
    let (mut out, mut err, mut input) = (Vec::new(), Vec::new(), &b""[..]);
    let result = command(&mut Console {
        out: &mut out,
        err: &mut err,
        input: &mut input,
    });
    Run {
        result,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}
