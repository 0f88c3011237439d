//! The JSON bodies of Docker's remote network driver and IPAM driver protocol (libnetwork's
//! `drivers/remote/api` and `ipams/remote/api`), as dockerd 20.10 sends and expects them.
//!
//! Requests are parsed leniently where Docker omits fields (options, IPv6 data) and strictly
//! where a value is needed (ids, addresses); unknown fields are ignored, as libnetwork adds some
//! over releases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `Plugin.Activate`'s answer.
#[derive(Debug, Serialize)]
pub struct Activate {
    /// The subsystems served.
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

/// `NetworkDriver.GetCapabilities`'s answer.
#[derive(Debug, Serialize)]
pub struct NetworkCapabilities {
    /// `local`: Docker 20.10 refuses `global` without swarm.
    #[serde(rename = "Scope")]
    pub scope: &'static str,
    /// `local` (see `scope`).
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: &'static str,
}

/// One address family's pool in `CreateNetwork`.
#[derive(Debug, Default, Deserialize)]
pub struct IpamData {
    /// The IPAM driver's address space (tells which IPAM driver allocated it).
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// The subnet, CIDR.
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// The gateway, `ip/prefix`.
    #[serde(rename = "Gateway", default)]
    pub gateway: String,
    /// `--aux-address` entries, name → `ip/prefix`.
    #[serde(rename = "AuxAddresses", default)]
    pub aux_addresses: Option<BTreeMap<String, String>>,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Deserialize)]
pub struct CreateNetwork {
    /// Docker's id of the network (this daemon's).
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `com.docker.network.generic` (the `-o` options), `...enable_ipv6`, `...internal`.
    #[serde(rename = "Options", default)]
    pub options: Option<Map<String, Value>>,
    /// IPv4 pools.
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    /// IPv6 pools.
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// A request naming only a network.
#[derive(Debug, Deserialize)]
pub struct NetworkRef {
    /// Docker's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// The interface in `CreateEndpoint`.
#[derive(Debug, Default, Deserialize)]
pub struct EndpointInterface {
    /// IPv4 `ip/prefix` from the IPAM driver.
    #[serde(rename = "Address", default)]
    pub address: String,
    /// IPv6 `ip/prefix`.
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    /// `--mac-address`.
    #[serde(rename = "MacAddress", default)]
    pub mac_address: String,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Deserialize)]
pub struct CreateEndpoint {
    /// Docker's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's id of the endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The addresses Docker's IPAM call returned.
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    /// Endpoint options: Docker's own (`com.docker.network.*`) and the user's
    /// `docker network connect --driver-opt KEY=VALUE`.
    #[serde(rename = "Options", default)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// The interface in `CreateEndpoint`'s answer: only what the driver chose.
#[derive(Debug, Serialize)]
pub struct CreatedInterface {
    /// The MAC the container's interface gets.
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

/// `CreateEndpoint`'s answer (never an `Address`: Docker refuses a driver that changes it).
#[derive(Debug, Serialize)]
pub struct CreateEndpointResponse {
    /// The interface.
    #[serde(rename = "Interface")]
    pub interface: CreatedInterface,
}

/// A request naming an endpoint (`Join`, `Leave`, `DeleteEndpoint`, `EndpointOperInfo`,
/// `ProgramExternalConnectivity`, `RevokeExternalConnectivity`).
#[derive(Debug, Deserialize)]
pub struct EndpointRef {
    /// Docker's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's id of the endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The sandbox's network namespace (`Join` only).
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
    /// `com.docker.network.portmap`, `...exposedports` (`Join`, `ProgramExternalConnectivity`).
    #[serde(rename = "Options", default)]
    pub options: Option<Map<String, Value>>,
}

/// The interface Docker moves into the sandbox.
#[derive(Debug, Serialize)]
pub struct InterfaceName {
    /// Its name in the host's namespace.
    #[serde(rename = "SrcName")]
    pub src_name: String,
    /// Docker names it this prefix plus a number inside the sandbox.
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: &'static str,
}

/// `Join`'s answer.
#[derive(Debug, Serialize)]
pub struct JoinResponse {
    /// The interface.
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    /// The default gateway, empty for none (an internal network).
    #[serde(rename = "Gateway")]
    pub gateway: String,
    /// Extra routes (none).
    #[serde(rename = "StaticRoutes")]
    pub static_routes: Vec<Value>,
    /// True: the network has its own way out (or none), Docker must not add docker_gwbridge.
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

/// `EndpointOperInfo`'s answer.
#[derive(Debug, Serialize)]
pub struct OperInfo {
    /// Free-form details.
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, String>,
}

/// `IpamDriver.GetCapabilities`'s answer.
#[derive(Debug, Serialize)]
pub struct IpamCapabilities {
    /// False: addresses do not depend on MACs.
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// False: the allocations live in the cluster's state, nothing needs replaying.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

/// `IpamDriver.GetDefaultAddressSpaces`'s answer.
#[derive(Debug, Serialize)]
pub struct AddressSpaces {
    /// Local scope.
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: &'static str,
    /// Global scope.
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: &'static str,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Deserialize)]
pub struct RequestPool {
    /// Address space (one of ours).
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// `--subnet`, empty for "pick one".
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// `--ip-range`.
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    /// IPv6 pool.
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

/// `RequestPool`'s answer.
#[derive(Debug, Serialize)]
pub struct PoolResponse {
    /// The id Docker passes back in address requests.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The subnet, CIDR.
    #[serde(rename = "Pool")]
    pub pool: String,
    /// Extra data (none).
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Deserialize)]
pub struct PoolRef {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress` and `ReleaseAddress`.
#[derive(Debug, Deserialize)]
pub struct AddressRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A specific address (`--ip`, `--gateway`, `--aux-address`), or empty.
    #[serde(rename = "Address", default)]
    pub address: String,
    /// `RequestAddressType: com.docker.network.gateway` for the gateway.
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, String>>,
}

/// `RequestAddress`'s answer.
#[derive(Debug, Serialize)]
pub struct AddressResponse {
    /// `ip/prefix`.
    #[serde(rename = "Address")]
    pub address: String,
    /// Extra data (none).
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// An error, as Docker shows it: `Error response from daemon: <method>: <Err>`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// One clear sentence.
    #[serde(rename = "Err")]
    pub err: String,
}

/// One entry of `com.docker.network.portmap` (`-p`), as libnetwork's `types.PortBinding`.
#[derive(Debug, Deserialize)]
pub struct PortBinding {
    /// IP protocol number: 6 TCP, 17 UDP.
    #[serde(rename = "Proto", default)]
    pub proto: u8,
    /// The container's port.
    #[serde(rename = "Port", default)]
    pub port: u32,
    /// The host address (empty: all).
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
    /// The host port (0: Docker asks the driver to pick one).
    #[serde(rename = "HostPort", default)]
    pub host_port: u32,
    /// The end of a host port range (0 or `host_port`: one port).
    #[serde(rename = "HostPortEnd", default)]
    pub host_port_end: u32,
}

/// The published ports a `com.docker.network.portmap` option asks for, as vxnet's mappings.
pub fn port_mappings(
    options: Option<&Map<String, Value>>,
) -> Result<Vec<vxnet_proto::PortMapping>, String> {
    let Some(list) = options.and_then(|o| o.get("com.docker.network.portmap")) else {
        return Ok(Vec::new());
    };
    let bindings: Vec<PortBinding> =
        serde_json::from_value(list.clone()).map_err(|e| format!("malformed port map: {e}"))?;
    bindings
        .into_iter()
        .map(|b| {
            let protocol = match b.proto {
                6 => "tcp",
                17 => "udp",
                other => return Err(format!("protocol {other} cannot be published: tcp or udp")),
            };
            if b.host_port == 0 || (b.host_port_end != 0 && b.host_port_end != b.host_port) {
                return Err(format!(
                    "give the host port of {}/{protocol} (-p HOSTPORT:CONTAINERPORT): vxnet \
                     does not pick host ports",
                    b.port
                ));
            }
            let host_ip = match b.host_ip.as_str() {
                "" | "0.0.0.0" => String::new(),
                ip => ip
                    .parse::<std::net::Ipv4Addr>()
                    .map_err(|_| format!("host address {ip}: vxnet publishes on IPv4 only"))?
                    .to_string(),
            };
            Ok(vxnet_proto::PortMapping {
                protocol: protocol.into(),
                host_ip,
                host_port: b.host_port,
                container_port: b.port,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_dockerd_sends() {
        let create: CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"7f1e","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"vxnet.vni":"42"},"com.docker.network.internal":true},
            "IPv4Data":[{"AddressSpace":"vxnet-local","Gateway":"10.78.0.1/24","Pool":"10.78.0.0/24"}],
            "IPv6Data":[]}"#,
        )
        .unwrap();
        let v4 = create.ipv4_data.unwrap();
        assert_eq!(v4[0].pool, "10.78.0.0/24");
        assert_eq!(v4[0].gateway, "10.78.0.1/24");
        let request: AddressRequest =
            serde_json::from_str(r#"{"PoolID":"vxnet:10.78.0.0/24","Address":"","Options":null}"#)
                .unwrap();
        assert!(request.options.is_none());
        let endpoint: EndpointRef = serde_json::from_str(
            r#"{"NetworkID":"a","EndpointID":"b","Options":{"com.docker.network.portmap":[]}}"#,
        )
        .unwrap();
        assert!(port_mappings(endpoint.options.as_ref()).unwrap().is_empty());
        let published: EndpointRef = serde_json::from_str(
            r#"{"NetworkID":"a","EndpointID":"b","Options":{"com.docker.network.portmap":
            [{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}}"#,
        )
        .unwrap();
        let ports = port_mappings(published.options.as_ref()).unwrap();
        assert_eq!((ports[0].host_port, ports[0].container_port), (8080, 80));
        assert_eq!(ports[0].protocol, "tcp");
    }

    #[test]
    fn answers_have_dockers_field_names() {
        let join = JoinResponse {
            interface_name: InterfaceName {
                src_name: "vxc0123456789ab".into(),
                dst_prefix: "eth",
            },
            gateway: "10.30.0.1".into(),
            static_routes: Vec::new(),
            disable_gateway_service: true,
        };
        assert_eq!(
            serde_json::to_value(&join).unwrap(),
            serde_json::json!({"InterfaceName":{"SrcName":"vxc0123456789ab","DstPrefix":"eth"},
                "Gateway":"10.30.0.1","StaticRoutes":[],"DisableGatewayService":true})
        );
    }

    #[test]
    fn missing_ids_are_errors() {
        assert!(serde_json::from_str::<EndpointRef>(r#"{"NetworkID":"a"}"#).is_err());
        assert!(serde_json::from_str::<CreateNetwork>("{").is_err());
    }
}
