//! `vxnet stats`: the agent's counters.

use std::process::ExitCode;

use anyhow::{Result, bail};
use vxnet_proto::{Empty, api_request::Kind as Req, api_response::Kind as Resp};

use super::client::{Api, Console};
use super::format::table;

/// `stats`: the counters by name, as a table or (`format` `json`) a JSON object.
pub fn show(api: &dyn Api, format: &str, console: &mut Console) -> Result<ExitCode> {
    let Resp::Stats(stats) = api.call(Req::Stats(Empty {}))? else {
        bail!("unexpected response from daemon");
    };
    if format == "json" {
        writeln!(
            console.out,
            "{}",
            serde_json::to_string_pretty(&stats.counters)?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = stats
        .counters
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    write!(console.out, "{}", table(&["COUNTER", "VALUE"], &rows))?;
    Ok(ExitCode::SUCCESS)
}
