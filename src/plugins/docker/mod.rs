//! Docker's remote network driver and IPAM driver (libnetwork's plugin protocol): HTTP/1.1 and
//! JSON on a Unix socket, served by axum. Every call becomes vxnet API requests (the same ones
//! the CLI makes, answered in this process); the plugin keeps no state of its own that matters
//! after a restart, because Docker replays nothing: networks and endpoints are found again in the
//! replicated state by Docker's ids.
//!
//! How Docker's model maps onto vxnet's:
//! - a Docker network (one per daemon, `-d vxnet --ipam-driver vxnet`) is attached to the vxnet
//!   network named by `-o vxnet.network=NAME` (created by the first daemon, joined by the next
//!   ones), or to a network of its own named `docker-<12 hex of its id>`;
//! - IPAM: the pool is the subnet (its id `vxnet:<cidr>`); an address is a reservation in the
//!   replicated state, so two daemons never hand out the same one; the gateway is the network's;
//! - an endpoint is a vxnet endpoint with Docker's EndpointID, on this host; at Join the agent
//!   makes its veth pair and dockerd moves the container's end into the sandbox.

mod ipam;
mod network;
pub mod protocol;

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use vxnet_proto::{ApiRequest, ApiResponse, NetworkList, api_request, api_response};

/// The largest request body accepted (Docker's are a few hundred bytes).
pub const MAX_BODY: usize = 256 * 1024;
/// Requests handled at once; more wait their turn (a flood slows down, never piles up work).
pub const MAX_IN_FLIGHT: usize = 32;
/// The content type of the plugin protocol's answers.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The vxnet API, as the plugin calls it (the agent answers in the same process).
pub trait Api: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, request: ApiRequest) -> impl Future<Output = ApiResponse> + Send;
}

/// A failed call: the HTTP status and one sentence for the Docker user.
#[derive(Debug)]
pub struct PluginError {
    status: StatusCode,
    message: String,
}

impl PluginError {
    /// A request that does not parse.
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// Anything else.
    fn failed(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

type Answer = Result<Response, PluginError>;

fn json<T: Serialize>(value: &T) -> Answer {
    let body = serde_json::to_vec(value).map_err(|e| PluginError::failed(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response())
}

fn empty() -> Answer {
    json(&serde_json::Map::new())
}

fn error_response(e: PluginError) -> Response {
    let body = serde_json::to_vec(&protocol::ErrorBody {
        err: e.message.clone(),
    })
    .unwrap_or_else(|_| b"{\"Err\":\"error\"}".to_vec());
    (e.status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

fn parse<T: DeserializeOwned>(method: &str, body: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(body)
        .map_err(|e| PluginError::bad_request(format!("malformed {method} request: {e}")))
}

/// A pool asked for before its network exists: what `CreateNetwork` must remember.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PendingPool {
    /// `--ip-range`, if any.
    sub_pool: Option<String>,
}

/// The plugin: the API, this host's name and the pools between `RequestPool` and
/// `CreateNetwork`.
#[derive(Debug)]
pub struct Plugin<A> {
    api: A,
    host: String,
    pending: Mutex<BTreeMap<String, PendingPool>>,
    in_flight: Semaphore,
}

impl<A: Api> Plugin<A> {
    /// A plugin for the agent of `host`.
    pub fn new(api: A, host: String) -> Self {
        Self {
            api,
            host,
            pending: Mutex::new(BTreeMap::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// One API request; an error answer becomes a [`PluginError`] with the agent's message.
    async fn call(&self, kind: api_request::Kind) -> Result<ApiResponse, PluginError> {
        let response = self.api.call(ApiRequest { kind: Some(kind) }).await;
        match response.kind {
            Some(api_response::Kind::Error(e)) => Err(PluginError::failed(e.message)),
            None => Err(PluginError::failed("the agent sent an empty answer")),
            _ => Ok(response),
        }
    }

    /// The networks and endpoints as this host's agent knows them.
    async fn state(&self) -> Result<NetworkList, PluginError> {
        let response = self
            .call(api_request::Kind::NetworkList(Default::default()))
            .await?;
        match response.kind {
            Some(api_response::Kind::Networks(list)) => Ok(list),
            _ => Err(PluginError::failed("unexpected answer to a network list")),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PendingPool>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Dispatches one call by its path.
    async fn dispatch(&self, path: &str, body: &[u8]) -> Answer {
        match path {
            "/Plugin.Activate" => json(&protocol::Activate {
                implements: vec!["NetworkDriver", "IpamDriver"],
            }),
            "/NetworkDriver.GetCapabilities" => json(&protocol::NetworkCapabilities {
                scope: "local",
                connectivity_scope: "local",
            }),
            "/NetworkDriver.CreateNetwork" => self.create_network(parse(path, body)?).await,
            "/NetworkDriver.DeleteNetwork" => self.delete_network(parse(path, body)?).await,
            "/NetworkDriver.CreateEndpoint" => self.create_endpoint(parse(path, body)?).await,
            "/NetworkDriver.DeleteEndpoint" => self.delete_endpoint(parse(path, body)?).await,
            "/NetworkDriver.EndpointOperInfo" => self.endpoint_info(parse(path, body)?).await,
            "/NetworkDriver.Join" => self.join(parse(path, body)?).await,
            "/NetworkDriver.Leave" => self.leave(parse(path, body)?).await,
            "/NetworkDriver.ProgramExternalConnectivity" => {
                self.program_external(parse(path, body)?).await
            }
            "/NetworkDriver.RevokeExternalConnectivity" => {
                self.revoke_external(parse(path, body)?).await
            }
            // Node discovery and global-scope allocation: swarm's, nothing to do here.
            "/NetworkDriver.DiscoverNew"
            | "/NetworkDriver.DiscoverDelete"
            | "/NetworkDriver.AllocateNetwork"
            | "/NetworkDriver.FreeNetwork" => empty(),
            "/IpamDriver.GetCapabilities" => json(&protocol::IpamCapabilities {
                requires_mac_address: false,
                requires_request_replay: false,
            }),
            "/IpamDriver.GetDefaultAddressSpaces" => json(&protocol::AddressSpaces {
                local: ipam::LOCAL_SPACE,
                global: ipam::GLOBAL_SPACE,
            }),
            "/IpamDriver.RequestPool" => self.request_pool(parse(path, body)?).await,
            "/IpamDriver.ReleasePool" => self.release_pool(parse(path, body)?),
            "/IpamDriver.RequestAddress" => self.request_address(parse(path, body)?).await,
            "/IpamDriver.ReleaseAddress" => self.release_address(parse(path, body)?).await,
            _ => Err(PluginError {
                status: StatusCode::NOT_FOUND,
                message: format!("vxnet's Docker plugin has no method {path}"),
            }),
        }
    }
}

async fn handle<A: Api>(State(plugin): State<Arc<Plugin<A>>>, uri: Uri, body: Bytes) -> Response {
    let Ok(_permit) = plugin.in_flight.acquire().await else {
        return error_response(PluginError::failed("the plugin is shutting down"));
    };
    let path = uri.path();
    match plugin.dispatch(path, &body).await {
        Ok(response) => response,
        Err(e) => {
            tracing::info!(method = path, "docker plugin: {}", e.message);
            error_response(e)
        }
    }
}

/// The plugin's HTTP routes: every path goes to one dispatcher (Docker POSTs to
/// `/<Subsystem>.<Method>`, with or without a content type).
pub fn router<A: Api>(plugin: Arc<Plugin<A>>) -> Router {
    Router::new()
        .fallback(handle::<A>)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(plugin)
}

/// Binds the plugin socket (mode 0600: dockerd runs as root), replacing a stale socket file and
/// creating its directory.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the plugin until the process ends.
pub async fn serve<A: Api>(plugin: Arc<Plugin<A>>, listener: UnixListener) -> std::io::Result<()> {
    axum::serve(listener, router(plugin)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vxnet_proto::{ApplyFailure, NetworkList};

    /// An agent that knows no network and refuses every write.
    struct Empty;

    impl Api for Empty {
        fn call(&self, request: ApiRequest) -> impl Future<Output = ApiResponse> + Send {
            let kind = match request.kind {
                Some(api_request::Kind::NetworkList(_)) => {
                    api_response::Kind::Networks(NetworkList::default())
                }
                _ => api_response::Kind::Error(ApplyFailure {
                    kind: 2,
                    message: "not found".into(),
                }),
            };
            async move { ApiResponse { kind: Some(kind) } }
        }
    }

    const PATHS: &[&str] = &[
        "/Plugin.Activate",
        "/NetworkDriver.CreateNetwork",
        "/NetworkDriver.DeleteNetwork",
        "/NetworkDriver.CreateEndpoint",
        "/NetworkDriver.DeleteEndpoint",
        "/NetworkDriver.EndpointOperInfo",
        "/NetworkDriver.Join",
        "/NetworkDriver.Leave",
        "/NetworkDriver.ProgramExternalConnectivity",
        "/NetworkDriver.RevokeExternalConnectivity",
        "/IpamDriver.RequestPool",
        "/IpamDriver.ReleasePool",
        "/IpamDriver.RequestAddress",
        "/IpamDriver.ReleaseAddress",
        "/nope",
    ];

    /// Bodies that are JSON objects with the protocol's keys and odd values.
    fn json_body() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(vec![
            "NetworkID",
            "EndpointID",
            "Interface",
            "Options",
            "IPv4Data",
            "IPv6Data",
            "PoolID",
            "Pool",
            "SubPool",
            "Address",
            "AddressSpace",
            "V6",
        ]);
        let value = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ -~]{0,40}".prop_map(serde_json::Value::from),
            Just(serde_json::json!({"Address": "10.30.0.2/24", "MacAddress": ""})),
            Just(
                serde_json::json!([{"AddressSpace": "vxnet-local", "Pool": "10.30.0.0/24",
                "Gateway": "10.30.0.1/24"}])
            ),
            Just(serde_json::json!({"com.docker.network.generic": {"vxnet.vni": "x"}})),
        ];
        prop::collection::btree_map(key, value, 0..6).prop_map(|m| {
            serde_json::to_vec(
                &m.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<serde_json::Map<_, _>>(),
            )
            .unwrap_or_default()
        })
    }

    proptest! {
        /// Whatever arrives, every call gets an answer: a result, or an error with a sentence.
        #[test]
        fn every_request_gets_an_answer(
            path in prop::sample::select(PATHS),
            body in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), json_body()],
        ) {
            let plugin = Plugin::new(Empty, "h1".into());
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            if let Err(e) = runtime.block_on(plugin.dispatch(path, &body)) {
                prop_assert!(!e.message.is_empty());
                prop_assert!(e.status != StatusCode::OK);
            }
        }
    }
}
