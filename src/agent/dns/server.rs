//! One DNS question in, one answer out: hickory-server's request handler over [`Names`] and
//! the upstreams. hickory parses and writes every message (a malformed one gets FORMERR from
//! it before this code runs); this file only decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::Semaphore;
use vxnet_controlplane::state::State;

use super::names::{Ask, Lookup, Names};
use super::upstream::{self, Upstreams};

/// TTL of vxnet's answers: short, as CoreDNS's for Kubernetes services, since endpoints come
/// and go (Docker's 600 s outlives a restarted container's old address).
pub const TTL: u32 = 5;
/// Forwarded queries in flight at most; beyond, SERVFAIL at once (a flood of outside names
/// must not pile up sockets and tasks).
pub const MAX_FORWARDS: usize = 256;
/// Largest UDP answer advertised (EDNS), as most resolvers since DNS flag day 2020.
const EDNS_PAYLOAD: u16 = 1232;

/// What the resolver did, by outcome (shown by `vxnet stats` as `dns.<name>`).
#[derive(Debug, Default)]
pub struct DnsCounters {
    /// Questions handed to the resolver.
    pub queries: AtomicU64,
    /// Answered from vxnet's names (with records, or none of the asked type).
    pub answered: AtomicU64,
    /// No such name for the querier.
    pub nxdomain: AtomicU64,
    /// Not from a container of this host: refused; or an internal network's outside name.
    pub refused: AtomicU64,
    /// Answered by an upstream.
    pub forwarded: AtomicU64,
    /// No upstream answered: SERVFAIL.
    pub upstream_failed: AtomicU64,
    /// Not a single standard query: FORMERR or NOTIMP.
    pub malformed: AtomicU64,
    /// Too many forwards in flight: SERVFAIL without asking.
    pub overloaded: AtomicU64,
}

impl DnsCounters {
    /// The counters by name.
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("queries", get(&self.queries)),
            ("answered", get(&self.answered)),
            ("nxdomain", get(&self.nxdomain)),
            ("refused", get(&self.refused)),
            ("forwarded", get(&self.forwarded)),
            ("upstream_failed", get(&self.upstream_failed)),
            ("malformed", get(&self.malformed)),
            ("overloaded", get(&self.overloaded)),
        ]
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The names of the state last seen, rebuilt when the applied state changes.
struct Indexed {
    state: Arc<State>,
    names: Arc<Names>,
}

/// Everything the listeners of all networks share.
pub struct Resolver {
    host: String,
    current: Box<dyn Fn() -> Arc<State> + Send + Sync>,
    indexed: ArcSwap<Indexed>,
    upstreams: Upstreams,
    forwards: Semaphore,
    turn: AtomicUsize,
    /// Outcome counters.
    pub counters: DnsCounters,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("host", &self.host)
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver for host `host` answering from the state `current` returns (this host's
    /// applied state: no quorum needed).
    pub fn new(
        host: String,
        current: Box<dyn Fn() -> Arc<State> + Send + Sync>,
        upstreams: Upstreams,
    ) -> Resolver {
        let state = current();
        let names = Arc::new(Names::build(&state, &host));
        Resolver {
            host,
            current,
            indexed: ArcSwap::from_pointee(Indexed { state, names }),
            upstreams,
            forwards: Semaphore::new(MAX_FORWARDS),
            turn: AtomicUsize::new(0),
            counters: DnsCounters::default(),
        }
    }

    /// The names of the current state: a pointer comparison when nothing was applied since the
    /// last question, so a connect anywhere is answered as soon as it is applied here.
    pub fn names(&self) -> Arc<Names> {
        let state = (self.current)();
        let indexed = self.indexed.load();
        if Arc::ptr_eq(&indexed.state, &state) {
            return Arc::clone(&indexed.names);
        }
        let names = Arc::new(Names::build(&state, &self.host));
        self.indexed.store(Arc::new(Indexed {
            state,
            names: Arc::clone(&names),
        }));
        names
    }
}

/// hickory's handler: one per listener, all sharing the resolver.
#[derive(Debug, Clone)]
pub struct Handler(pub Arc<Resolver>);

/// The answer, before it is written.
#[derive(Debug)]
pub enum Reply {
    /// A code, no records.
    Code(ResponseCode),
    /// vxnet's records.
    Records {
        /// The code (NOERROR).
        code: ResponseCode,
        /// The answer section.
        answers: Vec<Record>,
    },
    /// An upstream's answer, passed on.
    Upstream(Box<Message>),
}

/// What to do with a question.
#[derive(Debug)]
pub enum Decision {
    /// Answer this now.
    Reply(Reply),
    /// Ask the upstreams ([`forward`]), which takes time: not on the receiving loop.
    Forward,
    /// Say nothing: a response, not a question (answering could start a loop with another
    /// server, or reflect traffic).
    Ignore,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let reply = match decide(&self.0, request) {
            Decision::Reply(reply) => reply,
            Decision::Forward => forward(&self.0, request).await,
            Decision::Ignore => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::Refused;
                return Header {
                    metadata,
                    counts: HeaderCounts::default(),
                }
                .into();
            }
        };
        send(request, reply, response).await
    }
}

/// Writes `reply` to `request` through `response`.
pub async fn send<R: ResponseHandler>(
    request: &Request,
    reply: Reply,
    mut response: R,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    metadata.recursion_available = true;
    // Our EDNS answer advertises what the client may receive, up to what we send over UDP.
    let mut edns = Edns::new();
    if let Some(asked) = &request.edns {
        edns.set_max_payload(asked.max_payload().clamp(512, EDNS_PAYLOAD));
    }
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if request.edns.is_some() {
        builder.edns(&edns);
    }
    let none: [Record; 0] = [];
    let sent = match reply {
        Reply::Code(code) => {
            metadata.response_code = code;
            response
                .send_response(builder.build_no_records(metadata))
                .await
        }
        Reply::Records { code, answers } => {
            metadata.response_code = code;
            response
                .send_response(builder.build(
                    metadata,
                    answers.iter(),
                    none.iter(),
                    none.iter(),
                    none.iter(),
                ))
                .await
        }
        Reply::Upstream(answer) => {
            metadata.authoritative = answer.metadata.authoritative;
            metadata.truncation = answer.metadata.truncation;
            metadata.authentic_data = answer.metadata.authentic_data;
            metadata.response_code = answer.metadata.response_code;
            response
                .send_response(builder.build(
                    metadata,
                    answer.answers.iter(),
                    answer.authorities.iter(),
                    none.iter(),
                    answer.additionals.iter(),
                ))
                .await
        }
    };
    match sent {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(src = %request.src(), "dns: answer not sent: {e}");
            let mut failed = Metadata::response_from_request(&request.metadata);
            failed.response_code = ResponseCode::ServFail;
            Header {
                metadata: failed,
                counts: HeaderCounts::default(),
            }
            .into()
        }
    }
}

/// Counts a datagram that is no DNS message at all.
pub fn count_malformed(resolver: &Resolver) {
    bump(&resolver.counters.queries);
    bump(&resolver.counters.malformed);
}

/// Decides what a question gets; counts it.
pub fn decide(resolver: &Resolver, request: &Request) -> Decision {
    let counters = &resolver.counters;
    bump(&counters.queries);
    let code = |counter: &AtomicU64, code: ResponseCode| {
        bump(counter);
        Decision::Reply(Reply::Code(code))
    };
    if request.metadata.message_type != MessageType::Query {
        bump(&counters.malformed);
        return Decision::Ignore;
    }
    if request.metadata.op_code != OpCode::Query {
        return code(&counters.malformed, ResponseCode::NotImp);
    }
    let Ok(info) = request.request_info() else {
        return code(&counters.malformed, ResponseCode::FormErr);
    };
    let names = resolver.names();
    let Some(visible) = names.visible(request.src().ip()) else {
        return code(&counters.refused, ResponseCode::Refused);
    };
    let asked = info.query.original();
    let ask = match asked.query_type() {
        RecordType::A | RecordType::ANY => Ask::A,
        RecordType::PTR => Ask::Ptr,
        _ => Ask::Other,
    };
    let qname = asked.name().to_ascii().to_ascii_lowercase();
    let turn = resolver.turn.fetch_add(1, Ordering::Relaxed);
    let records = |rdata: Vec<RData>| {
        bump(&counters.answered);
        let owner = asked.name().clone();
        Decision::Reply(Reply::Records {
            code: ResponseCode::NoError,
            answers: rdata
                .into_iter()
                .map(|r| Record::from_rdata(owner.clone(), TTL, r))
                .collect(),
        })
    };
    match names.lookup(visible, &qname, ask, turn) {
        Lookup::Addresses(addresses) => {
            records(addresses.into_iter().map(|ip| RData::A(A(ip))).collect())
        }
        Lookup::Names(targets) => records(
            targets
                .iter()
                .filter_map(|t| Name::from_ascii(t).ok())
                .map(|t| RData::PTR(PTR(t)))
                .collect(),
        ),
        Lookup::NoData => code(&counters.answered, ResponseCode::NoError),
        Lookup::NxDomain => code(&counters.nxdomain, ResponseCode::NXDomain),
        Lookup::NoForwarding => code(&counters.refused, ResponseCode::Refused),
        Lookup::Forward => Decision::Forward,
    }
}

/// Asks the upstreams (at most [`MAX_FORWARDS`] at once); counts the outcome.
pub async fn forward(resolver: &Resolver, request: &Request) -> Reply {
    let counters = &resolver.counters;
    let Ok(_permit) = resolver.forwards.try_acquire() else {
        bump(&counters.overloaded);
        return Reply::Code(ResponseCode::ServFail);
    };
    let Ok(asked) = Message::from_vec(request.as_slice()) else {
        bump(&counters.malformed);
        return Reply::Code(ResponseCode::FormErr);
    };
    let servers = resolver.upstreams.servers();
    let tcp = request.protocol() == Protocol::Tcp;
    match upstream::forward(&servers, request.as_slice(), &asked, tcp).await {
        Ok(answer) => {
            bump(&counters.forwarded);
            Reply::Upstream(Box::new(answer))
        }
        Err(e) => {
            bump(&counters.upstream_failed);
            log_upstream_failure(&e);
            Reply::Code(ResponseCode::ServFail)
        }
    }
}

/// Logs an upstream failure at most once every 10 s (a dead upstream fails every query).
fn log_upstream_failure(error: &upstream::ForwardError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::agent::unix_ms();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!("dns: no upstream answered: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    use proptest::prelude::*;
    use vxnet_proto::{Endpoint, Network, StateSnapshot};

    fn resolver() -> Resolver {
        let net = Network {
            id: "a".repeat(64),
            name: "alpha".into(),
            vni: 4096,
            subnet: "10.1.0.0/24".into(),
            gateway: "10.1.0.1".into(),
            ..Network::default()
        };
        let ep = |n: u64, ip: &str| Endpoint {
            id: format!("{n:064x}"),
            network_id: net.id.clone(),
            name: format!("c{n}"),
            host: "h1".into(),
            sandbox: format!("c{n}"),
            aliases: vec!["db".into()],
            ipv4: ip.into(),
            created_index: n,
            ..Endpoint::default()
        };
        let snapshot = StateSnapshot {
            endpoints: vec![ep(1, "10.1.0.2"), ep(2, "10.1.0.3")],
            networks: vec![net.clone()],
            ..State::new().to_snapshot()
        };
        let state = Arc::new(State::from_snapshot(&snapshot).expect("a valid snapshot"));
        Resolver::new(
            "h1".into(),
            Box::new(move || Arc::clone(&state)),
            Upstreams::new(Vec::new(), "/nonexistent/resolv.conf".into()),
        )
    }

    fn request(name: &str, kind: RecordType, src: &str) -> Request {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        Request::from_bytes(
            message.to_vec().unwrap(),
            src.parse().unwrap(),
            Protocol::Udp,
        )
        .unwrap()
    }

    #[test]
    fn decisions_and_their_counters() {
        let resolver = resolver();
        let answered = |d: Decision| match d {
            Decision::Reply(Reply::Records { answers, .. }) => answers.len(),
            other => panic!("records expected: {other:?}"),
        };
        assert_eq!(
            answered(decide(
                &resolver,
                &request("c1.", RecordType::A, "10.1.0.3:5000")
            )),
            1
        );
        assert_eq!(
            answered(decide(
                &resolver,
                &request("db.alpha.", RecordType::A, "10.1.0.3:5000")
            )),
            2
        );
        assert_eq!(
            answered(decide(
                &resolver,
                &request("2.0.1.10.in-addr.arpa.", RecordType::PTR, "10.1.0.3:5000")
            )),
            1
        );
        assert!(matches!(
            decide(&resolver, &request("c9.", RecordType::A, "10.1.0.3:5000")),
            Decision::Reply(Reply::Code(ResponseCode::NXDomain))
        ));
        assert!(matches!(
            decide(
                &resolver,
                &request("example.com.", RecordType::A, "10.1.0.3:5000")
            ),
            Decision::Forward
        ));
        assert!(matches!(
            decide(&resolver, &request("c1.", RecordType::A, "10.9.0.3:5000")),
            Decision::Reply(Reply::Code(ResponseCode::Refused))
        ));
        // A response sent to the resolver gets no answer (and is counted as malformed).
        let mut answer = Message::query();
        answer.metadata.message_type = MessageType::Response;
        answer.add_query(Query::query(
            Name::from_ascii("c1.").unwrap(),
            RecordType::A,
        ));
        let answer = Request::from_bytes(
            answer.to_vec().unwrap(),
            "10.1.0.3:5000".parse().unwrap(),
            Protocol::Udp,
        )
        .unwrap();
        assert!(matches!(decide(&resolver, &answer), Decision::Ignore));
        let counted: std::collections::BTreeMap<_, _> =
            resolver.counters.snapshot().into_iter().collect();
        assert_eq!(counted["malformed"], 1);
        assert_eq!(counted["queries"], 7);
        assert_eq!(counted["answered"], 3);
        assert_eq!(counted["nxdomain"], 1);
        assert_eq!(counted["refused"], 1);
    }

    proptest! {
        /// Any bytes from a container: hickory's parser either refuses them or the resolver
        /// decides; nothing panics.
        #[test]
        fn any_datagram_gets_a_decision(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let resolver = resolver();
            if let Ok(request) = Request::from_bytes(bytes, "10.1.0.2:5353".parse().unwrap(), Protocol::Udp) {
                let _ = decide(&resolver, &request);
            }
        }

        /// Any name asked: an answer, never a panic; names that are not vxnet's are not NXDOMAIN
        /// unless they are single labels.
        #[test]
        fn any_name_gets_an_answer(labels in proptest::collection::vec("[a-z][a-z0-9]{0,19}", 1..5)) {
            let resolver = resolver();
            let name = format!("{}.", labels.join("."));
            let decision = decide(&resolver, &request(&name, RecordType::A, "10.1.0.2:5353"));
            if labels.len() > 1 && !name.ends_with(".alpha.") {
                prop_assert!(matches!(decision, Decision::Forward), "{name}: {decision:?}");
            }
        }
    }
}
