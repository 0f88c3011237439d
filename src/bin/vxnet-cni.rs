//! vxnet-cni: the CNI plugin (copy it into the CNI bin dir as `vxnet`). Reads the `CNI_*`
//! environment and the network configuration on stdin, prints the result (or a CNI error) on
//! stdout; see [`vxnet::plugins::cni`].

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use vxnet::cli::client::{Api, SocketClient};
use vxnet::plugins::cni::{self, Env};

fn main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    // VERSION may come without a configuration: never wait for one on a terminal.
    let interactive = std::io::stdin().is_terminal();
    if !(env.command == "VERSION" && interactive)
        && let Err(e) = std::io::stdin().read_to_end(&mut stdin)
    {
        return answer(Err(cni::spec::CniError {
            cni_version: "1.1.0".into(),
            code: cni::spec::code::IO_FAILURE,
            msg: "cannot read the network configuration from stdin".into(),
            details: e.to_string(),
        }));
    }
    let connect = |socket: &Path| -> Box<dyn Api> { Box::new(SocketClient::new(socket.into())) };
    answer(cni::run(&env, &stdin, &connect))
}

fn answer(outcome: cni::Outcome) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(text)) => {
            let _ = writeln!(out, "{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let text = serde_json::to_string(&e)
                .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", e.code));
            let _ = writeln!(out, "{text}");
            ExitCode::FAILURE
        }
    }
}
