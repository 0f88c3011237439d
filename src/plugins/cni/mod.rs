//! The CNI plugin (`vxnet-cni`, installed in a runtime's CNI bin dir as `vxnet`): attaches a
//! container's network namespace to a vxnet network through the local agent's API, as the CLI's
//! `network connect` does, and answers in the CNI specification's terms (1.1, 1.0 and 0.4.0).
//!
//! An attachment is found again by an endpoint id derived from (network, container id, interface
//! name), so DEL, CHECK and GC need nothing but what the runtime passes, and a retried ADD finds
//! the endpoint it made before.

pub mod spec;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vxnet_controlplane::state::RUNTIME_CNI;
use vxnet_proto::{
    ConnectEndpoint, DisconnectEndpoint, Endpoint, ErrorKind, NamesRequest, Network,
    api_request::Kind as Req, api_response::Kind as Resp,
};

use crate::cli::client::Api;
use spec::{CniError, CniResult, Dns, Interface, IpConfig, NetConf, Route, code};

/// The runtime's environment (`CNI_*` variables).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }
}

/// What a command prints on success (`None`: nothing).
pub type Outcome = Result<Option<String>, CniError>;

/// Opens the API of the agent listening on a socket.
pub type Connector<'a> = &'a dyn Fn(&Path) -> Box<dyn Api>;

/// The newest spec version, used when the runtime names none.
const LATEST: &str = "1.1.0";

fn fail(version: &str, code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        cni_version: version.to_string(),
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

/// The endpoint id of an attachment: the same for every command about it.
pub fn endpoint_id(network: &str, container_id: &str, ifname: &str) -> String {
    let mut hash = Sha256::new();
    for part in ["vxnet-cni", network, container_id, ifname] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one CNI command.
pub fn run(env: &Env, stdin: &[u8], connect: Connector<'_>) -> Outcome {
    if env.command == "VERSION" {
        let asked = serde_json::from_slice::<NetConf>(stdin)
            .ok()
            .map(|c| c.cni_version)
            .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| LATEST.to_string());
        return print(&spec::VersionResult {
            cni_version: asked,
            supported_versions: spec::SUPPORTED_VERSIONS.to_vec(),
        });
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        fail(
            LATEST,
            code::DECODE,
            "the network configuration does not decode",
            e.to_string(),
        )
    })?;
    let version = if conf.cni_version.is_empty() {
        "0.4.0".to_string()
    } else {
        conf.cni_version.clone()
    };
    if !spec::SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(fail(
            LATEST,
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {version} is not supported"),
            format!("supported: {}", spec::SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let Some(network) = conf.network.clone().filter(|n| !n.is_empty()) else {
        return Err(fail(
            &version,
            code::INVALID_CONFIG,
            "the network configuration has no \"network\" (the vxnet network to attach to)",
            "",
        ));
    };
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::api::DEFAULT_SOCKET));
    let cmd = Command {
        env,
        conf: &conf,
        version: &version,
        network: &network,
        api: connect(&socket),
        socket: &socket,
    };
    match env.command.as_str() {
        "ADD" => cmd.add(),
        "DEL" => cmd.del(),
        "CHECK" => cmd.check(),
        "GC" => cmd.gc(),
        "STATUS" => cmd.status(),
        other => Err(fail(
            &version,
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "ADD, DEL, CHECK, VERSION, GC or STATUS",
        )),
    }
}

fn print<T: serde::Serialize>(value: &T) -> Outcome {
    serde_json::to_string(value).map(Some).map_err(|e| {
        fail(
            LATEST,
            code::IO_FAILURE,
            "cannot encode the answer",
            e.to_string(),
        )
    })
}

/// One command's context.
struct Command<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    version: &'a str,
    network: &'a str,
    api: Box<dyn Api>,
    socket: &'a Path,
}

/// A request's answer, sorted the way CNI needs.
enum Answer {
    Ok(Box<Resp>),
    NotFound(String),
}

impl Command<'_> {
    fn err(&self, code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        fail(self.version, code, msg, details)
    }

    fn need_env(&self, value: &str, name: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(self.err(code::INVALID_ENV, format!("{name} is not set"), ""));
        }
        Ok(())
    }

    /// Sends a request; an unreachable agent is "try again later", a refusal other than
    /// not-found is [`code::REFUSED`].
    fn send(&self, request: Req) -> Result<Answer, CniError> {
        match self.api.send(request) {
            Err(e) => Err(self.err(
                code::TRY_AGAIN,
                format!(
                    "the vxnet agent does not answer on {}",
                    self.socket.display()
                ),
                format!("{e:#}"),
            )),
            Ok(Some(Resp::Error(f))) if f.kind == ErrorKind::NotFound as i32 => {
                Ok(Answer::NotFound(f.message))
            }
            Ok(Some(Resp::Error(f))) => Err(self.err(code::REFUSED, f.message, "")),
            Ok(Some(resp)) => Ok(Answer::Ok(Box::new(resp))),
            Ok(None) => Err(self.err(code::TRY_AGAIN, "the vxnet agent sent an empty answer", "")),
        }
    }

    /// The network and its endpoints; `None` when the network does not exist.
    fn inspect(&self) -> Result<Option<(Network, Vec<Endpoint>)>, CniError> {
        let answer = self.send(Req::NetworkInspect(NamesRequest {
            names: vec![self.network.to_string()],
        }))?;
        let Answer::Ok(resp) = answer else {
            return Ok(None);
        };
        match *resp {
            Resp::Networks(list) => Ok(list
                .networks
                .into_iter()
                .next()
                .map(|n| (n, list.endpoints))),
            _ => Err(self.err(code::REFUSED, "unexpected answer to inspect", "")),
        }
    }

    fn unknown_network(&self) -> CniError {
        self.err(
            code::UNKNOWN_NETWORK,
            format!("vxnet network {} not found", self.network),
            "create it first: vxnet network create NAME",
        )
    }

    fn id(&self) -> String {
        endpoint_id(self.network, &self.env.container_id, &self.env.ifname)
    }

    fn add(&self) -> Outcome {
        self.need_env(&self.env.container_id, "CNI_CONTAINERID")?;
        self.need_env(&self.env.netns, "CNI_NETNS")?;
        self.need_env(&self.env.ifname, "CNI_IFNAME")?;
        if !Path::new(&self.env.netns).exists() {
            return Err(self.err(
                code::NO_NETNS,
                format!("network namespace {} does not exist", self.env.netns),
                "",
            ));
        }
        let (network, endpoints) = self.inspect()?.ok_or_else(|| self.unknown_network())?;
        let id = self.id();
        let endpoint = match endpoints.into_iter().find(|e| e.id == id) {
            // A retried ADD: what the first one made.
            Some(e) => e,
            None => self.connect(&network, id)?,
        };
        // The agent adds `default via` the gateway only where the namespace had no default
        // route yet (a second network keeps the first one's): report what is there.
        let default_via = self.default_gateway();
        print(&self.result(&network, &endpoint, default_via))
    }

    /// The namespace's IPv4 default gateway, if it has one (and can be read).
    fn default_gateway(&self) -> Option<String> {
        use vxnet_dataplane::io::{NetnsHandle, in_netns_blocking};
        let ns = NetnsHandle::open(&self.env.netns).ok()?;
        let routes = in_netns_blocking(&ns, |nl| async move { nl.routes_v4(None).await }).ok()?;
        routes
            .iter()
            .find(|r| r.prefix_len == 0)
            .and_then(|r| r.gateway)
            .map(|gw| gw.to_string())
    }

    fn connect(&self, network: &Network, id: String) -> Result<Endpoint, CniError> {
        let args = spec::parse_args(&self.env.args);
        let name = args
            .get("K8S_POD_NAME")
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| self.env.container_id.clone());
        // Podman passes `--network-alias` through the `aliases` capability.
        let aliases = self
            .conf
            .runtime_config
            .aliases
            .get(&self.conf.name)
            .cloned()
            .unwrap_or_default();
        let answer = self.send(Req::NetworkConnect(ConnectEndpoint {
            network: network.id.clone(),
            host: String::new(),
            sandbox: self.env.netns.clone(),
            name,
            aliases,
            requested_ipv4: None,
            endpoint_id: id,
            runtime: RUNTIME_CNI.into(),
            interface: self.env.ifname.clone(),
            publish: Vec::new(),
        }))?;
        match answer {
            Answer::Ok(resp) => match *resp {
                Resp::Applied(vxnet_proto::Response {
                    kind: Some(vxnet_proto::response::Kind::EndpointConnected(e)),
                }) => Ok(e),
                _ => Err(self.err(code::REFUSED, "unexpected answer to connect", "")),
            },
            Answer::NotFound(m) => Err(self.err(code::REFUSED, m, "")),
        }
    }

    fn result(
        &self,
        network: &Network,
        endpoint: &Endpoint,
        default_via: Option<String>,
    ) -> CniResult {
        let gateway =
            (!network.internal && !network.gateway.is_empty()).then(|| network.gateway.clone());
        let default_route = gateway
            .clone()
            .filter(|gw| default_via.as_ref() == Some(gw));
        CniResult {
            cni_version: self.version.to_string(),
            interfaces: vec![Interface {
                name: self.env.ifname.clone(),
                mac: endpoint.mac.clone(),
                sandbox: Some(self.env.netns.clone()),
            }],
            ips: vec![IpConfig {
                version: (self.version == "0.4.0").then(|| "4".to_string()),
                address: format!("{}/{}", endpoint.ipv4, endpoint.prefix_len),
                gateway: gateway.clone(),
                interface: Some(0),
            }],
            routes: default_route
                .map(|gw| Route {
                    dst: "0.0.0.0/0".into(),
                    gw: Some(gw),
                })
                .into_iter()
                .collect(),
            // The embedded resolver answers on the gateway address (internal networks too).
            dns: Dns {
                nameservers: (!network.gateway.is_empty())
                    .then(|| network.gateway.clone())
                    .into_iter()
                    .collect(),
                ..Dns::default()
            },
        }
    }

    fn disconnect(&self, network: &Network, endpoint: &Endpoint) -> Result<(), CniError> {
        self.send(Req::NetworkDisconnect(DisconnectEndpoint {
            network: network.id.clone(),
            sandbox: endpoint.sandbox.clone(),
            host: String::new(),
            force: false,
            endpoint_id: endpoint.id.clone(),
            release_address: false,
        }))
        .map(|_| ())
    }

    fn del(&self) -> Outcome {
        self.need_env(&self.env.container_id, "CNI_CONTAINERID")?;
        self.need_env(&self.env.ifname, "CNI_IFNAME")?;
        // Idempotent: an unknown network or endpoint is already deleted.
        let Some((network, endpoints)) = self.inspect()? else {
            return Ok(None);
        };
        let id = self.id();
        if let Some(endpoint) = endpoints.iter().find(|e| e.id == id) {
            self.disconnect(&network, endpoint)?;
        }
        Ok(None)
    }

    fn check(&self) -> Outcome {
        self.need_env(&self.env.container_id, "CNI_CONTAINERID")?;
        self.need_env(&self.env.netns, "CNI_NETNS")?;
        self.need_env(&self.env.ifname, "CNI_IFNAME")?;
        let prev: CniResult = self
            .conf
            .prev_result
            .clone()
            .ok_or_else(|| self.err(code::INVALID_CONFIG, "CHECK needs prevResult", ""))
            .and_then(|v| {
                serde_json::from_value(v).map_err(|e| {
                    self.err(code::DECODE, "prevResult does not decode", e.to_string())
                })
            })?;
        let (_, endpoints) = self.inspect()?.ok_or_else(|| self.unknown_network())?;
        let id = self.id();
        let endpoint = endpoints.iter().find(|e| e.id == id).ok_or_else(|| {
            self.err(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {} has no {} on vxnet network {}",
                    self.env.container_id, self.env.ifname, self.network
                ),
                "",
            )
        })?;
        let want = format!("{}/{}", endpoint.ipv4, endpoint.prefix_len);
        if !prev.ips.iter().any(|ip| ip.address == want) {
            return Err(self.err(
                code::CHECK_FAILED,
                format!("prevResult does not hold the endpoint's address {want}"),
                "",
            ));
        }
        self.check_interface(endpoint)?;
        Ok(None)
    }

    /// The interface is in the namespace with the endpoint's address.
    fn check_interface(&self, endpoint: &Endpoint) -> Result<(), CniError> {
        use vxnet_dataplane::io::{LinkRef, NetnsHandle, in_netns_blocking};
        let ns = NetnsHandle::open(&self.env.netns).map_err(|e| {
            self.err(
                code::NO_NETNS,
                format!("network namespace {}: {e}", self.env.netns),
                "",
            )
        })?;
        let ifname = self.env.ifname.clone();
        let addresses = in_netns_blocking(&ns, move |nl| async move {
            nl.addresses(LinkRef::Name(&ifname)).await
        })
        .map_err(|e| {
            self.err(
                code::CHECK_FAILED,
                format!("interface {} in {}: {e}", self.env.ifname, self.env.netns),
                "",
            )
        })?;
        let ip: IpAddr = endpoint
            .ipv4
            .parse()
            .map_err(|_| self.err(code::CHECK_FAILED, "the endpoint has no address", ""))?;
        let prefix = u8::try_from(endpoint.prefix_len).unwrap_or(32);
        if !addresses.contains(&(ip, prefix)) {
            return Err(self.err(
                code::CHECK_FAILED,
                format!(
                    "interface {} in {} lacks its address {ip}/{prefix}",
                    self.env.ifname, self.env.netns
                ),
                "",
            ));
        }
        Ok(())
    }

    /// Removes this host's endpoints made by the plugin on this network that the runtime no
    /// longer lists.
    fn gc(&self) -> Outcome {
        let valid: BTreeSet<String> = self
            .conf
            .valid_attachments
            .iter()
            .flatten()
            .map(|a| endpoint_id(self.network, &a.container_id, &a.ifname))
            .collect();
        let Some((network, endpoints)) = self.inspect()? else {
            return Ok(None);
        };
        let host = self.host_name()?;
        for endpoint in endpoints
            .iter()
            .filter(|e| e.runtime == RUNTIME_CNI && e.host == host && !valid.contains(&e.id))
        {
            self.disconnect(&network, endpoint)?;
        }
        Ok(None)
    }

    fn host_name(&self) -> Result<String, CniError> {
        if let Answer::Ok(resp) = self.send(Req::ClusterMembers(Default::default()))?
            && let Resp::Members(members) = *resp
            && !members.self_name.is_empty()
        {
            return Ok(members.self_name);
        }
        Err(self.err(
            code::REFUSED,
            "the agent did not say its host name (an older release?)",
            "",
        ))
    }

    fn status(&self) -> Outcome {
        match self.inspect() {
            Ok(Some(_)) => Ok(None),
            Ok(None) => Err(self.err(
                code::NOT_AVAILABLE,
                format!("vxnet network {} not found", self.network),
                "",
            )),
            Err(e) => Err(self.err(code::NOT_AVAILABLE, e.msg, e.details)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::fake::FakeApi;
    use vxnet_proto::{ApplyFailure, NetworkList, Response, response};

    fn env(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "c0ffee".into(),
            netns: "/proc/self/ns/net".into(),
            ifname: "eth0".into(),
            args: "K8S_POD_NAME=web-0;IgnoreUnknown=1".into(),
        }
    }

    fn network() -> Network {
        Network {
            id: "a".repeat(64),
            name: "pods".into(),
            subnet: "10.60.0.0/24".into(),
            gateway: "10.60.0.1".into(),
            ..Default::default()
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            id: endpoint_id("pods", "c0ffee", "eth0"),
            network_id: "a".repeat(64),
            ipv4: "10.60.0.2".into(),
            prefix_len: 24,
            mac: "02:42:0a:3c:00:02".into(),
            sandbox: "/proc/self/ns/net".into(),
            runtime: RUNTIME_CNI.into(),
            ..Default::default()
        }
    }

    fn listed(endpoints: Vec<Endpoint>) -> Resp {
        Resp::Networks(NetworkList {
            networks: vec![network()],
            endpoints,
            reservations: Vec::new(),
        })
    }

    const CONF: &str =
        r#"{"cniVersion":"1.0.0","name":"pods","type":"vxnet","network":"pods","socket":"/x"}"#;

    fn run_with(command: &str, stdin: &str, answers: Vec<Resp>) -> (Outcome, Vec<Req>) {
        let fake = std::rc::Rc::new(FakeApi::new(answers));
        struct Shared(std::rc::Rc<FakeApi>);
        impl Api for Shared {
            fn send(&self, r: Req) -> anyhow::Result<Option<Resp>> {
                self.0.send(r)
            }
            fn send_streaming(
                &self,
                r: Req,
            ) -> anyhow::Result<(Option<Resp>, Box<dyn std::io::Read>)> {
                self.0.send_streaming(r)
            }
        }
        let f = std::rc::Rc::clone(&fake);
        let connect = move |_: &Path| -> Box<dyn Api> { Box::new(Shared(std::rc::Rc::clone(&f))) };
        let out = run(&env(command), stdin.as_bytes(), &connect);
        let requests = fake.requests.borrow().clone();
        (out, requests)
    }

    #[test]
    fn add_connects_with_the_derived_id_and_prints_a_result() {
        let connected = Resp::Applied(Response {
            kind: Some(response::Kind::EndpointConnected(endpoint())),
        });
        let (out, requests) = run_with("ADD", CONF, vec![listed(Vec::new()), connected]);
        let result: CniResult = serde_json::from_str(&out.unwrap().unwrap()).unwrap();
        assert_eq!(result.ips[0].address, "10.60.0.2/24");
        assert_eq!(result.ips[0].gateway.as_deref(), Some("10.60.0.1"));
        // The namespace (this test's own) has no default route via 10.60.0.1: none reported.
        assert!(result.routes.is_empty(), "{:?}", result.routes);
        assert_eq!(
            result.interfaces[0].sandbox.as_deref(),
            Some("/proc/self/ns/net")
        );
        let Req::NetworkConnect(c) = &requests[1] else {
            panic!("{requests:?}")
        };
        assert_eq!(c.name, "web-0");
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.endpoint_id, endpoint_id("pods", "c0ffee", "eth0"));
    }

    #[test]
    fn a_retried_add_returns_what_exists() {
        let (out, requests) = run_with("ADD", CONF, vec![listed(vec![endpoint()])]);
        assert!(out.unwrap().unwrap().contains("10.60.0.2/24"));
        assert_eq!(requests.len(), 1);
    }

    #[test]
    fn del_is_idempotent() {
        let not_found = Resp::Error(ApplyFailure {
            kind: ErrorKind::NotFound as i32,
            message: "network pods not found".into(),
        });
        assert_eq!(run_with("DEL", CONF, vec![not_found]).0.unwrap(), None);
        assert_eq!(
            run_with("DEL", CONF, vec![listed(Vec::new())]).0.unwrap(),
            None
        );
        let (out, requests) = run_with(
            "DEL",
            CONF,
            vec![listed(vec![endpoint()]), Resp::Applied(Response::default())],
        );
        assert_eq!(out.unwrap(), None);
        assert!(
            matches!(&requests[1], Req::NetworkDisconnect(d) if d.endpoint_id == endpoint().id)
        );
    }

    #[test]
    fn bad_input_gets_cni_errors() {
        let e = run_with("ADD", "{", Vec::new()).0.unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = run_with(
            "ADD",
            r#"{"cniVersion":"1.0.0","type":"vxnet"}"#,
            Vec::new(),
        )
        .0
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = run_with("ADD", r#"{"cniVersion":"9.9.9","network":"x"}"#, Vec::new())
            .0
            .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let not_found = Resp::Error(ApplyFailure {
            kind: ErrorKind::NotFound as i32,
            message: "network pods not found".into(),
        });
        let e = run_with("ADD", CONF, vec![not_found]).0.unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_NETWORK);
        let v = run_with("VERSION", "", Vec::new()).0.unwrap().unwrap();
        assert!(
            v.contains("\"supportedVersions\":[\"0.4.0\",\"1.0.0\",\"1.1.0\"]"),
            "{v}"
        );
    }

    #[test]
    fn ids_differ_per_attachment() {
        assert_ne!(endpoint_id("n", "c", "eth0"), endpoint_id("n", "c", "eth1"));
        assert_ne!(
            endpoint_id("n", "c1", "eth0"),
            endpoint_id("n", "c", "1eth0")
        );
        assert_eq!(endpoint_id("n", "c", "eth0").len(), 64);
    }
}
