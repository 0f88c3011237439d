//! The CNI specification's JSON (1.1, read back to 0.4.0): the network configuration a runtime
//! passes on stdin, and the result, error and version documents a plugin prints.
//!
//! Our own serde types: the Rust CNI crates found (`cni-plugin` 0.2, last released in 2021)
//! stop at spec 1.0 and lack GC and STATUS.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Well-known error codes (spec "Error"), plus ours from 100.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unknown container (CHECK of something never added).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// The configuration does not decode.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (the agent cannot be reached).
    pub const TRY_AGAIN: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// The vxnet network does not exist.
    pub const UNKNOWN_NETWORK: u32 = 100;
    /// The agent refused the request.
    pub const REFUSED: u32 = 101;
    /// The container's network namespace does not exist.
    pub const NO_NETNS: u32 = 102;
    /// CHECK found the interface or its address missing.
    pub const CHECK_FAILED: u32 = 103;
}

/// A runtime's attachment, as GC lists the valid ones.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    /// CNI_CONTAINERID of the attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// CNI_IFNAME of the attachment.
    pub ifname: String,
}

/// The network configuration on stdin (one plugin's, with `prevResult` when chained).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// The spec version the runtime speaks.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// The runtime's network name.
    #[serde(default)]
    pub name: String,
    /// The plugin type (`vxnet`).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The vxnet network to attach to.
    pub network: Option<String>,
    /// The agent's API socket.
    pub socket: Option<PathBuf>,
    /// The previous plugin's result (CHECK, DEL, chained ADD).
    #[serde(rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still has.
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Capability arguments (`"capabilities": {"aliases": true}` in the network config).
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
}

/// The runtime's capability arguments vxnet uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `aliases`: network name → the container's DNS aliases on it (podman's format).
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
}

/// An interface in a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC.
    #[serde(default)]
    pub mac: String,
    /// The network namespace it is in (absent: the host's).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sandbox: Option<String>,
}

/// An address in a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    /// `"4"` (spec 0.4.0 only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    /// `ip/prefix`.
    pub address: String,
    /// The gateway.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gw: Option<String>,
}

/// DNS settings in a result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dns {
    /// Resolvers.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub search: Vec<String>,
}

/// The result of ADD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniResult {
    /// The spec version of this document.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default)]
    pub dns: Dns,
}

/// An error document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CniError {
    /// The spec version.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// More detail.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// VERSION's answer.
#[derive(Debug, Clone, Serialize)]
pub struct VersionResult {
    /// The spec version of this document.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Versions this plugin speaks.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<&'static str>,
}

/// `CNI_ARGS` (`K1=V1;K2=V2`) as a map; malformed pairs are skipped (the spec lets runtimes
/// pass keys a plugin ignores, with `IgnoreUnknown=1`).
pub fn parse_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_with_prev_result_and_attachments_parses() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","name":"n","type":"vxnet","network":"web","socket":"/s",
            "prevResult":{"cniVersion":"1.1.0","ips":[]},
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
            "capabilities":{"portMappings":true}}"#,
        )
        .unwrap();
        assert_eq!(conf.network.as_deref(), Some("web"));
        assert_eq!(conf.valid_attachments.unwrap()[0].container_id, "c1");
    }

    #[test]
    fn results_print_as_the_spec_shows() {
        let result = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:42:0a:3c:00:02".into(),
                sandbox: Some("/run/netns/c1".into()),
            }],
            ips: vec![IpConfig {
                version: None,
                address: "10.60.0.2/24".into(),
                gateway: Some("10.60.0.1".into()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.60.0.1".into()),
            }],
            dns: Dns::default(),
        };
        assert_eq!(
            serde_json::to_value(&result).unwrap(),
            serde_json::json!({"cniVersion":"1.0.0",
                "interfaces":[{"name":"eth0","mac":"02:42:0a:3c:00:02","sandbox":"/run/netns/c1"}],
                "ips":[{"address":"10.60.0.2/24","gateway":"10.60.0.1","interface":0}],
                "routes":[{"dst":"0.0.0.0/0","gw":"10.60.0.1"}],"dns":{}})
        );
    }

    #[test]
    fn cni_args_parse() {
        let args = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;junk");
        assert_eq!(args.get("K8S_POD_NAME").map(String::as_str), Some("web-0"));
        assert_eq!(args.len(), 3);
    }
}
