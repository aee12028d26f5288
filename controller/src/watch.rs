//! `RouteDistribution.Watch`, served without tonic's message encoder.
//!
//! Every node of a site receives the same update but for its nonce, so the controller encodes
//! each site's update once per table (`proto::wire`). tonic's generated server would copy that
//! shared body into a buffer of each stream, and the buffer stays as large as the largest
//! update for as long as the stream lives: at 10,000 agents and 200-site tables, a few hundred
//! megabytes of copies of the same bytes. This service writes each message as three HTTP/2 data
//! chunks instead (the 5-byte gRPC prefix, the shared body by reference count, the nonce field),
//! so what a stream costs does not grow with the table. Requests are decoded by tonic's own
//! `Streaming`, with a buffer sized for agent messages (small) rather than tonic's 8 KiB.
//!
//! The bytes on the wire are exactly what the generated server would send; agents use the
//! generated client.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use prost::Message;
use proto::auth::Role;
use proto::v1 as pb;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::services::{Services, UpdateReceiver};

/// The one method of the service.
const WATCH_PATH: &str = "/axon.v1.RouteDistribution/Watch";

/// The largest agent message accepted (a NACK's error text is the longest part).
const MAX_AGENT_MESSAGE: usize = 64 * 1024;

/// The route distribution service (see the module documentation).
#[derive(Clone)]
pub struct WatchServer {
    services: Services,
}

impl WatchServer {
    /// Serves `Watch` over the controller's shared state.
    pub fn new(services: Services) -> Self {
        WatchServer { services }
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "axon.v1.RouteDistribution";
}

impl Service<http::Request<Body>> for WatchServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let services = self.services.clone();
        Box::pin(async move {
            if req.uri().path() != WATCH_PATH {
                return Ok(Status::unimplemented(format!("no method {}", req.uri().path())).into_http());
            }
            if req
                .headers()
                .get("grpc-encoding")
                .is_some_and(|e| e != "identity")
            {
                return Ok(Status::unimplemented("compressed requests are not accepted").into_http());
            }
            let metadata = tonic::metadata::MetadataMap::from_headers(req.headers().clone());
            let caller = match services.0.auth.require(req.extensions(), &metadata, Role::Agent) {
                Ok(c) => c,
                Err(status) => {
                    services
                        .0
                        .metrics
                        .auth_refused
                        .with_label_values(&["agent"])
                        .inc();
                    return Ok(status.into_http());
                }
            };
            let inbound =
                Streaming::new_request(AgentDecoder, req.into_body(), None, Some(MAX_AGENT_MESSAGE));
            Ok(match services.open_watch(caller, inbound).await {
                Ok(updates) => {
                    let mut resp = http::Response::new(Body::new(UpdateBody {
                        updates,
                        queued: VecDeque::with_capacity(2),
                        done: false,
                    }));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    resp
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Decodes `AgentMessage`s with a small initial buffer (they are tens of bytes).
struct AgentDecoder;

impl Decoder for AgentDecoder {
    type Item = pb::AgentMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::AgentMessage>, Status> {
        pb::AgentMessage::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed agent message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(256, 32 * 1024)
    }
}

/// The response body: each update as its gRPC chunks, then the trailers with the status that
/// ended the stream (`OK` when the controller closed it cleanly).
struct UpdateBody {
    updates: UpdateReceiver,
    queued: VecDeque<Bytes>,
    done: bool,
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value gets here; the code still can.
        map.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    Frame::trailers(map)
}

impl http_body::Body for UpdateBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(this.updates.poll_recv(cx)) {
                Some(Ok(update)) => match update.grpc_chunks() {
                    Ok(chunks) => this.queued.extend(chunks.into_iter().filter(|c| !c.is_empty())),
                    Err(_) => {
                        this.done = true;
                        return Poll::Ready(Some(Ok(trailers(&Status::internal("update too large")))));
                    }
                },
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(trailers(&status))));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(trailers(&Status::ok("")))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.queued.is_empty()
    }
}
