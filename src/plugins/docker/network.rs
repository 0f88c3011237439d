//! The network driver's calls: networks attach to vxnet networks, endpoints become vxnet
//! endpoints with Docker's ids, Join makes the interface dockerd moves into the sandbox.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use vxnet_controlplane::state::RUNTIME_DOCKER;
use vxnet_proto::{
    AttachDockerNetwork, ConnectEndpoint, CreateNetwork, DetachDockerNetwork, DisconnectEndpoint,
    EndpointLink, Network, NetworkList, SetEndpointPorts, api_request::Kind as Req,
};

use super::protocol::{self, CreatedInterface, InterfaceName, JoinResponse};
use super::{Answer, Api, Plugin, PluginError, empty, ipam, json};

/// `-o vxnet.network=NAME`: the cluster-wide network this Docker network attaches to.
pub const OPT_NETWORK: &str = "vxnet.network";
/// `-o vxnet.vni=N`: the VNI of a network created here.
pub const OPT_VNI: &str = "vxnet.vni";
/// `docker network connect --driver-opt vxnet.name=NAME`: the endpoint's DNS name.
pub const OPT_NAME: &str = "vxnet.name";
/// `docker network connect --driver-opt vxnet.alias='A;B'`: its DNS aliases.
pub const OPT_ALIAS: &str = "vxnet.alias";

/// The DNS name and aliases a user gave an endpoint with `--driver-opt` (Docker passes drivers
/// neither the container's name nor its `--alias`); every one must be a DNS name.
pub fn endpoint_names(
    options: &serde_json::Map<String, serde_json::Value>,
) -> Result<(Option<String>, Vec<String>), String> {
    let text = |key: &str| options.get(key).and_then(|v| v.as_str()).map(str::trim);
    let name = text(OPT_NAME).filter(|n| !n.is_empty()).map(str::to_string);
    let aliases: Vec<String> = text(OPT_ALIAS)
        .unwrap_or_default()
        // Docker's CLI splits `--driver-opt` at commas unless quoted: `;` and spaces work too.
        .split([',', ';', ' '])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    for (key, value) in name
        .iter()
        .map(|n| (OPT_NAME, n))
        .chain(aliases.iter().map(|a| (OPT_ALIAS, a)))
    {
        if !crate::agent::dns::is_dns_name(value) {
            return Err(format!(
                "--driver-opt {key}={value}: not a DNS name (labels of letters, digits, '-' or '_')"
            ));
        }
    }
    Ok((name, aliases))
}
const GENERIC: &str = "com.docker.network.generic";
const INTERNAL: &str = "com.docker.network.internal";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";

/// What a `CreateNetwork`'s options ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetworkOptions {
    /// `vxnet.network`.
    pub name: Option<String>,
    /// `vxnet.vni`.
    pub vni: Option<u32>,
    /// `--internal`.
    pub internal: bool,
    /// `--ipv6`.
    pub ipv6: bool,
    /// Other `-o` options, kept with the network.
    pub other: BTreeMap<String, String>,
}

/// Reads Docker's network options; unknown `vxnet.*` options and bad values are errors.
pub fn network_options(options: Option<&Map<String, Value>>) -> Result<NetworkOptions, String> {
    let mut out = NetworkOptions::default();
    let Some(options) = options else {
        return Ok(out);
    };
    out.internal = options.get(INTERNAL).and_then(Value::as_bool) == Some(true);
    out.ipv6 = options.get(ENABLE_IPV6).and_then(Value::as_bool) == Some(true);
    let Some(generic) = options.get(GENERIC) else {
        return Ok(out);
    };
    let Some(generic) = generic.as_object() else {
        return Err(format!("{GENERIC} is not an object"));
    };
    for (key, value) in generic {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match key.as_str() {
            OPT_NETWORK => {
                if text.is_empty() || text.len() > 128 {
                    return Err(format!(
                        "-o {OPT_NETWORK} wants a network name, got {text:?}"
                    ));
                }
                out.name = Some(text);
            }
            OPT_VNI => {
                let vni = text
                    .parse::<u32>()
                    .map_err(|_| format!("-o {OPT_VNI}={text}: not a number"))?;
                out.vni = Some(vni);
            }
            key if key.starts_with("vxnet.") => {
                return Err(format!(
                    "unknown option -o {key} (vxnet knows -o {OPT_NETWORK}=NAME and -o {OPT_VNI}=N)"
                ));
            }
            _ => {
                out.other.insert(key.to_string(), text);
            }
        }
    }
    Ok(out)
}

/// The address of an `ip/prefix` (or a bare address).
pub fn strip_prefix(address: &str) -> &str {
    address.split('/').next().unwrap_or(address)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The vxnet network this host's Docker network `docker_id` is attached to.
pub fn attached<'a>(list: &'a NetworkList, host: &str, docker_id: &str) -> Option<&'a Network> {
    list.networks.iter().find(|n| {
        n.docker_networks
            .iter()
            .any(|d| d.host == host && d.network_id == docker_id)
    })
}

/// The name of the container's end of an endpoint's pair before dockerd moves it.
pub fn interface_name(endpoint_id: &str) -> String {
    crate::agent::links::runtime_veth_name(endpoint_id)
}

impl<A: Api> Plugin<A> {
    fn unknown_network(&self, docker_id: &str) -> PluginError {
        PluginError::failed(format!(
            "network {} is not a vxnet network of the Docker daemon on host {}",
            short(docker_id),
            self.host
        ))
    }

    pub(super) async fn create_network(&self, req: protocol::CreateNetwork) -> Answer {
        let options = network_options(req.options.as_ref()).map_err(PluginError::failed)?;
        if options.ipv6 || req.ipv6_data.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(PluginError::failed(
                "vxnet networks are IPv4-only for now: create the network without --ipv6",
            ));
        }
        let pools = req.ipv4_data.unwrap_or_default();
        let [data] = pools.as_slice() else {
            return Err(PluginError::failed(format!(
                "a vxnet network has exactly one IPv4 subnet (got {})",
                pools.len()
            )));
        };
        if !ipam::is_ours(&data.address_space) {
            return Err(PluginError::failed(
                "vxnet networks take their addresses from vxnet: add --ipam-driver vxnet to \
                 docker network create (Docker's default IPAM would hand out the same addresses \
                 on every host)",
            ));
        }
        let sub_pool = self.pending().remove(&data.pool).and_then(|p| p.sub_pool);
        let aux_addresses = data
            .aux_addresses
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), strip_prefix(v).to_string()))
            .collect();
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| format!("docker-{}", short(&req.network_id)));
        let create = CreateNetwork {
            name,
            driver: "overlay".into(),
            subnet: Some(data.pool.clone()),
            gateway: (!data.gateway.is_empty()).then(|| strip_prefix(&data.gateway).to_string()),
            ip_range: sub_pool,
            aux_addresses,
            vni: options.vni,
            internal: options.internal,
            labels: Default::default(),
            options: options.other.into_iter().collect(),
            id: req.network_id.clone(),
            created_unix_ms: 0,
        };
        self.call(Req::DockerNetworkAttach(AttachDockerNetwork {
            host: String::new(),
            docker_network_id: req.network_id,
            network: Some(create),
        }))
        .await?;
        empty()
    }

    pub(super) async fn delete_network(&self, req: protocol::NetworkRef) -> Answer {
        self.call(Req::DockerNetworkDetach(DetachDockerNetwork {
            host: String::new(),
            docker_network_id: req.network_id,
        }))
        .await?;
        empty()
    }

    pub(super) async fn create_endpoint(&self, req: protocol::CreateEndpoint) -> Answer {
        let list = self.state().await?;
        let network = attached(&list, &self.host, &req.network_id)
            .ok_or_else(|| self.unknown_network(&req.network_id))?;
        if let Some(existing) = list.endpoints.iter().find(|e| e.id == req.endpoint_id) {
            // A retried call: the endpoint is there already.
            return json(&protocol::CreateEndpointResponse {
                interface: CreatedInterface {
                    mac_address: existing.mac.clone(),
                },
            });
        }
        let interface = req.interface.unwrap_or_default();
        if !interface.address_ipv6.is_empty() {
            return Err(PluginError::failed(
                "vxnet networks are IPv4-only for now: no IPv6 address can be given",
            ));
        }
        if !interface.mac_address.is_empty() {
            return Err(PluginError::failed(
                "vxnet derives each container's MAC address from its IP address: \
                 --mac-address is not supported",
            ));
        }
        if interface.address.is_empty() {
            return Err(PluginError::failed(
                "the endpoint has no IPv4 address: create the network with --ipam-driver vxnet",
            ));
        }
        let (name, aliases) = endpoint_names(&req.options).map_err(PluginError::failed)?;
        let response = self
            .call(Req::NetworkConnect(ConnectEndpoint {
                network: network.id.clone(),
                host: String::new(),
                sandbox: format!("docker:{}", short(&req.endpoint_id)),
                name: name.unwrap_or_else(|| format!("docker-{}", short(&req.endpoint_id))),
                aliases,
                requested_ipv4: Some(strip_prefix(&interface.address).to_string()),
                endpoint_id: req.endpoint_id.clone(),
                runtime: RUNTIME_DOCKER.into(),
                interface: String::new(),
                publish: Vec::new(),
            }))
            .await?;
        let Some(vxnet_proto::response::Kind::EndpointConnected(endpoint)) =
            crate::agent::runtimes::applied(&response)
        else {
            return Err(PluginError::failed("unexpected answer to a connect"));
        };
        json(&protocol::CreateEndpointResponse {
            interface: CreatedInterface {
                mac_address: endpoint.mac.clone(),
            },
        })
    }

    pub(super) async fn delete_endpoint(&self, req: protocol::EndpointRef) -> Answer {
        let list = self.state().await?;
        let Some(endpoint) = list
            .endpoints
            .iter()
            .find(|e| e.id == req.endpoint_id && e.host == self.host)
        else {
            // Already gone (removed after its sandbox vanished, or a retry): nothing to do.
            return empty();
        };
        self.call(Req::NetworkDisconnect(DisconnectEndpoint {
            network: endpoint.network_id.clone(),
            sandbox: endpoint.sandbox.clone(),
            host: String::new(),
            force: false,
            endpoint_id: endpoint.id.clone(),
            release_address: false,
        }))
        .await?;
        empty()
    }

    pub(super) async fn endpoint_info(&self, req: protocol::EndpointRef) -> Answer {
        let list = self.state().await?;
        let endpoint = list
            .endpoints
            .iter()
            .find(|e| e.id == req.endpoint_id)
            .ok_or_else(|| {
                PluginError::failed(format!("endpoint {} not found", short(&req.endpoint_id)))
            })?;
        let network = list.networks.iter().find(|n| n.id == endpoint.network_id);
        let mut value = BTreeMap::new();
        value.insert("vxnet.host".into(), endpoint.host.clone());
        value.insert("vxnet.vni".into(), endpoint.vni.to_string());
        if let Some(network) = network {
            value.insert("vxnet.network".into(), network.name.clone());
        }
        json(&protocol::OperInfo { value })
    }

    pub(super) async fn join(&self, req: protocol::EndpointRef) -> Answer {
        let list = self.state().await?;
        let endpoint = list
            .endpoints
            .iter()
            .find(|e| e.id == req.endpoint_id && e.host == self.host)
            .ok_or_else(|| {
                PluginError::failed(format!(
                    "endpoint {} is not a vxnet endpoint of host {}",
                    short(&req.endpoint_id),
                    self.host
                ))
            })?;
        let network = list
            .networks
            .iter()
            .find(|n| n.id == endpoint.network_id)
            .ok_or_else(|| self.unknown_network(&req.network_id))?;
        let interface = interface_name(&endpoint.id);
        self.call(Req::EndpointLink(EndpointLink {
            endpoint_id: endpoint.id.clone(),
            interface_name: interface.clone(),
        }))
        .await?;
        tracing::info!(
            endpoint = endpoint.name,
            sandbox = req.sandbox_key,
            ip = endpoint.ipv4,
            "docker: joined"
        );
        json(&JoinResponse {
            interface_name: InterfaceName {
                src_name: interface,
                dst_prefix: "eth",
            },
            // The anycast gateway on every host is the way out; an internal network has none.
            gateway: if network.internal {
                String::new()
            } else {
                network.gateway.clone()
            },
            static_routes: Vec::new(),
            disable_gateway_service: true,
        })
    }

    pub(super) async fn leave(&self, req: protocol::EndpointRef) -> Answer {
        self.call(Req::EndpointUnlink(EndpointLink {
            endpoint_id: req.endpoint_id,
            interface_name: String::new(),
        }))
        .await?;
        empty()
    }

    pub(super) async fn program_external(&self, req: protocol::EndpointRef) -> Answer {
        let ports = protocol::port_mappings(req.options.as_ref()).map_err(PluginError::failed)?;
        self.call(Req::EndpointPorts(SetEndpointPorts {
            endpoint_id: req.endpoint_id,
            host: String::new(),
            ports,
        }))
        .await?;
        empty()
    }

    pub(super) async fn revoke_external(&self, req: protocol::EndpointRef) -> Answer {
        let list = self.state().await?;
        if list
            .endpoints
            .iter()
            .any(|e| e.id == req.endpoint_id && !e.ports.is_empty())
        {
            self.call(Req::EndpointPorts(SetEndpointPorts {
                endpoint_id: req.endpoint_id,
                host: String::new(),
                ports: Vec::new(),
            }))
            .await?;
        }
        empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn driver_opts_name_the_endpoint() {
        let options = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let given = options(json!({
            "vxnet.name": "web", "vxnet.alias": "api; www",
            "com.docker.network.portmap": [],
        }));
        assert_eq!(
            endpoint_names(&given).unwrap(),
            (
                Some("web".to_string()),
                vec!["api".to_string(), "www".to_string()]
            )
        );
        assert_eq!(endpoint_names(&options(json!({}))).unwrap(), (None, vec![]));
        let bad = endpoint_names(&options(json!({"vxnet.alias": "ok,no.way."}))).unwrap_err();
        assert!(bad.contains("vxnet.alias=no.way."), "{bad}");
    }

    #[test]
    fn options_map_to_vxnets() {
        let v = json!({"com.docker.network.enable_ipv6": false, "com.docker.network.internal": true,
            "com.docker.network.generic": {"vxnet.network": "prod", "vxnet.vni": "42", "x": "y"}});
        let o = network_options(v.as_object()).unwrap();
        assert_eq!(o.name.as_deref(), Some("prod"));
        assert_eq!(o.vni, Some(42));
        assert!(o.internal && !o.ipv6);
        assert_eq!(o.other.get("x").map(String::as_str), Some("y"));
        assert_eq!(network_options(None).unwrap(), NetworkOptions::default());
    }

    #[test]
    fn bad_options_are_clear_errors() {
        let bad_vni = json!({"com.docker.network.generic": {"vxnet.vni": "many"}});
        assert!(
            network_options(bad_vni.as_object())
                .unwrap_err()
                .contains("vxnet.vni=many")
        );
        let unknown = json!({"com.docker.network.generic": {"vxnet.colour": "blue"}});
        let e = network_options(unknown.as_object()).unwrap_err();
        assert!(
            e.contains("vxnet.colour") && e.contains("vxnet.network"),
            "{e}"
        );
    }

    #[test]
    fn interface_names_fit_the_kernels_limit() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(interface_name(id), "vxc0123456789ab");
        assert!(interface_name(id).len() <= 15);
        assert_eq!(strip_prefix("10.0.0.2/24"), "10.0.0.2");
        assert_eq!(strip_prefix("10.0.0.2"), "10.0.0.2");
    }
}
