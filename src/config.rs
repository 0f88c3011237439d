//! `vxnetd`'s configuration: command-line flags over an optional TOML file.
//!
//! Every flag has a key of the same name in the file (`data-dir = "/var/lib/vxnet"`); a flag
//! given on the command line wins over the file, the file over the defaults. Unknown keys are an
//! error, so a typo never silently falls back to a default.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::agent::AgentConfig;

/// The settings, each optional: as read from flags or from the file.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// `--name`.
    pub name: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--underlay`.
    pub underlay: Option<Ipv4Addr>,
    /// `--vxlan-port`.
    pub vxlan_port: Option<u16>,
    /// `--peer-listen`.
    pub peer_listen: Option<SocketAddr>,
    /// `--api`.
    pub api: Option<PathBuf>,
    /// `--bootstrap`.
    pub bootstrap: Option<bool>,
    /// `--join`.
    pub join: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--mtu`.
    pub mtu: Option<u32>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// `--offload` (`on` or `off`).
    pub offload: Option<Offload>,
    /// `--busy-poll` (microseconds).
    pub busy_poll: Option<u64>,
    /// `--docker-plugin` (socket path).
    pub docker_plugin: Option<PathBuf>,
    /// `--dns-upstream` (repeatable: `IP` or `IP:PORT`).
    pub dns_upstream: Option<Vec<String>>,
}

/// `--offload on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    /// TAP vnet header with TSO, UDP GSO/GRO, segment and coalesce in userspace.
    On,
    /// One frame per syscall.
    Off,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or bad values.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A required setting is missing everywhere.
    #[error("missing --{0} (or `{0} = ...` in the config file)")]
    Missing(&'static str),
    /// Settings that contradict each other.
    #[error("{0}")]
    Conflict(String),
}

impl Settings {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Settings::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    /// `self` (the flags) over `file`.
    pub fn over(self, file: Settings) -> Settings {
        Settings {
            name: self.name.or(file.name),
            data_dir: self.data_dir.or(file.data_dir),
            underlay: self.underlay.or(file.underlay),
            vxlan_port: self.vxlan_port.or(file.vxlan_port),
            peer_listen: self.peer_listen.or(file.peer_listen),
            api: self.api.or(file.api),
            bootstrap: self.bootstrap.or(file.bootstrap),
            join: self.join.or(file.join),
            token: self.token.or(file.token),
            mtu: self.mtu.or(file.mtu),
            workers: self.workers.or(file.workers),
            metrics: self.metrics.or(file.metrics),
            offload: self.offload.or(file.offload),
            busy_poll: self.busy_poll.or(file.busy_poll),
            docker_plugin: self.docker_plugin.or(file.docker_plugin),
            dns_upstream: self.dns_upstream.or(file.dns_upstream),
        }
    }

    /// The agent's configuration, with defaults for what is still unset.
    pub fn into_agent_config(self) -> Result<AgentConfig, ConfigError> {
        let name = self.name.ok_or(ConfigError::Missing("name"))?;
        let underlay = self.underlay.ok_or(ConfigError::Missing("underlay"))?;
        let bootstrap = self.bootstrap.unwrap_or(false);
        if bootstrap && self.join.is_some() {
            return Err(ConfigError::Conflict(
                "--bootstrap and --join exclude each other".into(),
            ));
        }
        let dns_upstream = self
            .dns_upstream
            .unwrap_or_default()
            .iter()
            .map(|text| crate::agent::dns::parse_upstream(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Conflict)?;
        Ok(AgentConfig {
            name,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/vxnet")),
            underlay,
            vxlan_port: self.vxlan_port.unwrap_or(4789),
            peer_listen: self
                .peer_listen
                .unwrap_or(SocketAddr::new(underlay.into(), 7946)),
            api: self
                .api
                .unwrap_or_else(|| PathBuf::from(crate::api::DEFAULT_SOCKET)),
            bootstrap,
            join: self.join,
            token: self.token,
            mtu: self.mtu,
            workers: self
                .workers
                .unwrap_or_else(vxnet_dataplane::io::default_workers)
                .max(1),
            metrics: self.metrics,
            offload: self.offload != Some(Offload::Off),
            busy_poll: self.busy_poll.map_or(
                vxnet_dataplane::io::DEFAULT_BUSY_POLL,
                std::time::Duration::from_micros,
            ),
            docker_plugin: self.docker_plugin,
            dns_upstream,
            cert_lifetime: vxnet_controlplane::transport::pki::NODE_CERT_LIFETIME,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file = Settings::from_toml(
            "name = \"h1\"\nunderlay = \"192.168.200.1\"\ndata-dir = \"/srv/vx\"\nworkers = 4\njoin = \"192.168.200.2:7946\"\ndocker-plugin = \"/run/docker/plugins/vxnet.sock\"\ndns-upstream = [\"10.0.0.2\", \"10.0.0.3:5353\"]\n",
        )
        .unwrap();
        let flags = Settings {
            workers: Some(1),
            ..Settings::default()
        };
        let config = flags.over(file).into_agent_config().unwrap();
        assert_eq!(config.name, "h1");
        let upstreams: Vec<String> = config.dns_upstream.iter().map(|a| a.to_string()).collect();
        assert_eq!(upstreams, ["10.0.0.2:53", "10.0.0.3:5353"]);
        assert_eq!(config.data_dir, PathBuf::from("/srv/vx"));
        assert_eq!(config.workers, 1);
        assert_eq!(config.vxlan_port, 4789);
        assert_eq!(config.peer_listen.to_string(), "192.168.200.1:7946");
        assert_eq!(config.join.as_deref(), Some("192.168.200.2:7946"));
        assert_eq!(
            config.docker_plugin,
            Some(PathBuf::from("/run/docker/plugins/vxnet.sock"))
        );
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(
            Settings::from_toml("nmae = \"typo\"")
                .unwrap_err()
                .contains("nmae")
        );
        assert!(Settings::from_toml("underlay = \"not an ip\"").is_err());
        let missing = Settings::default().into_agent_config().unwrap_err();
        assert_eq!(
            missing.to_string(),
            "missing --name (or `name = ...` in the config file)"
        );
        let both = Settings {
            name: Some("h".into()),
            underlay: Some(Ipv4Addr::LOCALHOST),
            bootstrap: Some(true),
            join: Some("x:1".into()),
            ..Settings::default()
        };
        assert!(both.into_agent_config().is_err());
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../deploy/vxnetd.toml");
        let settings = Settings::from_toml(text).expect("deploy/vxnetd.toml is valid");
        assert!(settings.into_agent_config().is_ok());
    }
}
