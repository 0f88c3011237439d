//! The UDP side of a listener: one receive loop per gateway address that answers vxnet's names
//! in place and hands only forwarded questions to tasks of their own.
//!
//! hickory-server's own UDP loop spawns a task and queues the answer through a channel for
//! every datagram, and answers undecodable datagrams itself, out of the resolver's sight. This
//! loop keeps hickory for every byte (`Request::from_bytes` parses, `MessageResponse` writes)
//! but counts every datagram, malformed ones included, and answers local names without a task
//! switch: that is what a flood from a container costs. TCP stays on hickory's server.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Header, MessageType, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::net::UdpSocket;

use super::server::{self, Decision, Resolver};

/// The largest datagram read; longer ones are cut, fail to parse and get FORMERR.
const MAX_QUERY: usize = 4096;

/// Answers on `socket` until the task is aborted (the listener is dropped).
pub async fn serve(socket: UdpSocket, resolver: Arc<Resolver>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // ICMP errors of earlier answers surface here (ECONNREFUSED): not fatal.
                tracing::debug!("dns: receive: {e}");
                continue;
            }
        };
        let request = match Request::from_bytes(buf[..len].to_vec(), src, Protocol::Udp) {
            Ok(request) => request,
            Err(_) => {
                server::count_malformed(&resolver);
                form_error(&socket, &buf[..len], src).await;
                continue;
            }
        };
        let responder = Responder {
            socket: Arc::clone(&socket),
            dst: src,
        };
        match server::decide(&resolver, &request) {
            Decision::Reply(reply) => {
                server::send(&request, reply, responder).await;
            }
            Decision::Ignore => {}
            Decision::Forward => {
                let resolver = Arc::clone(&resolver);
                tokio::spawn(async move {
                    let reply = server::forward(&resolver, &request).await;
                    server::send(&request, reply, responder).await;
                });
            }
        }
    }
}

/// FORMERR for a query whose header can be read; nothing for anything else (an answer or
/// less than a header: replying could start a loop with another server).
async fn form_error(socket: &UdpSocket, bytes: &[u8], dst: SocketAddr) {
    let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
        return;
    };
    if header.metadata.message_type != MessageType::Query {
        return;
    }
    // No question is echoed: it could not be read.
    let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
        return;
    };
    let response = MessageResponseBuilder::new(&queries, None)
        .error_msg(&header.metadata, ResponseCode::FormErr);
    let _ = Responder::encode(response, 512).map(|(_, bytes)| socket.try_send_to(&bytes, dst));
}

/// Sends answers straight on the listener's socket.
#[derive(Clone)]
struct Responder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

impl Responder {
    /// Encodes within `max` bytes (hickory truncates and sets TC beyond).
    fn encode<'a>(
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
        max: u16,
    ) -> Result<(ResponseInfo, Vec<u8>), NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response.destructive_emit(&mut encoder)?;
        Ok((info, bytes))
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Responder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // RFC 1035's 512 bytes unless the client's EDNS said more (`server::send` echoes it).
        let max = response.edns().map_or(512, |e| e.max_payload().max(512));
        let (info, bytes) = Self::encode(response, max)?;
        self.socket.send_to(&bytes, self.dst).await?;
        Ok(info)
    }
}
