//! `vxnet fdb ...`: static forwarding entries (external VTEPs).

use std::process::ExitCode;

use anyhow::{Result, bail};
use vxnet_proto::{
    AddStaticVtep, NamesRequest, RemoveStaticVtep, api_request::Kind as Req,
    api_response::Kind as Resp,
};

use super::client::{Api, Console, apply};

/// `fdb add`: replicates an external VTEP entry to every host; prints nothing.
pub fn add(api: &dyn Api, request: AddStaticVtep) -> Result<ExitCode> {
    apply(api, Req::FdbAdd(request))
}

/// `fdb rm`: removes an external VTEP entry; prints nothing.
pub fn rm(api: &dyn Api, request: RemoveStaticVtep) -> Result<ExitCode> {
    apply(api, Req::FdbRemove(request))
}

/// `fdb show`: one line per entry (of `network` only, if given), like `bridge fdb show`.
pub fn show(api: &dyn Api, network: Option<String>, console: &mut Console) -> Result<ExitCode> {
    let names = network.into_iter().collect();
    let Resp::Fdb(list) = api.call(Req::FdbShow(NamesRequest { names }))? else {
        bail!("unexpected response from daemon");
    };
    for e in list.entries {
        let mac = if e.mac.is_empty() {
            "00:00:00:00:00:00"
        } else {
            &e.mac
        };
        let ip = if e.ipv4.is_empty() {
            String::new()
        } else {
            format!(" ip {}", e.ipv4)
        };
        let dst = if e.vtep.is_empty() {
            "self".to_string()
        } else {
            format!("dst {}", e.vtep)
        };
        writeln!(
            console.out,
            "{mac} {dst} vni {}{ip} origin {}",
            e.vni, e.origin
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
