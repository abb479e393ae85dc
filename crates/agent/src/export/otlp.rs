//! Spans -> OTLP (opentelemetry-proto types), sent over gRPC (tonic) or
//! HTTP/protobuf (reqwest), with the retryable/permanent split of the OTLP spec.

use super::span_encoding::GRPC_PREFIX;
use crate::config::{OtlpProtocol, OtlpTarget};
use autotel_model::AttrValue;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use prost::bytes::Bytes;
use prost::Message;
use std::time::Duration;
use tonic::codegen::http;

pub fn any_value(v: &AttrValue) -> AnyValue {
    AnyValue {
        value: Some(match v {
            AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
            AttrValue::Int(i) => any_value::Value::IntValue(*i),
            AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
            AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
        }),
    }
}

pub fn key_value(k: &str, v: &AttrValue) -> KeyValue {
    KeyValue {
        key: k.to_owned(),
        value: Some(any_value(v)),
        ..Default::default()
    }
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "autotel".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The export path encodes spans straight to bytes (span_encoding.rs); this
/// conversion through the prost types is the reference its tests compare to.
#[cfg(test)]
pub mod reference {
    use super::{key_value, scope};
    use autotel_model::{Span, SpanKind, StatusCode};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
    use opentelemetry_proto::tonic::trace::v1::{
        span, status, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status,
    };
    use std::collections::HashMap;

    fn otlp_span(s: &Span) -> OtlpSpan {
        OtlpSpan {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            trace_state: s.trace_state.clone(),
            parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            // W3C flags: sampled (we only export what the sampler kept).
            flags: 0x101,
            name: s.name.to_string(),
            kind: match s.kind {
                SpanKind::Server => span::SpanKind::Server,
                SpanKind::Client => span::SpanKind::Client,
                SpanKind::Internal => span::SpanKind::Internal,
            } as i32,
            start_time_unix_nano: s.start_unix_ns,
            end_time_unix_nano: s.end_unix_ns,
            attributes: s.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
            status: Some(Status {
                message: s.status_message.clone(),
                code: match s.status {
                    StatusCode::Unset => status::StatusCode::Unset,
                    StatusCode::Ok => status::StatusCode::Ok,
                    StatusCode::Error => status::StatusCode::Error,
                } as i32,
            }),
            ..Default::default()
        }
    }

    /// Groups spans by process (resource), one ResourceSpans each.
    pub fn to_request(spans: &[Span]) -> ExportTraceServiceRequest {
        let mut order: Vec<u32> = Vec::new();
        let mut groups: HashMap<u32, ResourceSpans> = HashMap::new();
        for s in spans {
            let pid = s.resource.pid;
            let rs = groups.entry(pid).or_insert_with(|| {
                order.push(pid);
                ResourceSpans {
                    resource: Some(OtlpResource {
                        attributes: s
                            .resource
                            .attributes
                            .iter()
                            .map(|(k, v)| key_value(k, v))
                            .collect(),
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            });
            rs.scope_spans[0].spans.push(otlp_span(s));
        }
        ExportTraceServiceRequest {
            resource_spans: order
                .into_iter()
                .filter_map(|p| groups.remove(&p))
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("retryable: {0}")]
    Retryable(String),
    #[error("permanent: {0}")]
    Permanent(String),
}

enum Transport {
    Grpc(tonic::transport::Channel),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

/// Which OTLP signal a client sends (selects the gRPC service or HTTP path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

/// The trace service's Export method.
const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn note_rejected(rejected: Option<(i64, String)>, what: &str) {
    if let Some((n, message)) = rejected.filter(|(n, _)| *n > 0) {
        tracing::warn!(rejected = n, %message, "collector rejected {what}");
    }
}

/// A reply without a gRPC status: the HTTP status says what happened
/// (gRPC's "HTTP to gRPC status code mapping").
fn status_of_http(status: http::StatusCode) -> tonic::Status {
    let msg = format!("HTTP {} without a gRPC status", status.as_u16());
    match status.as_u16() {
        400 => tonic::Status::internal(msg),
        401 => tonic::Status::unauthenticated(msg),
        403 => tonic::Status::permission_denied(msg),
        404 => tonic::Status::unimplemented(msg),
        429 | 502 | 503 | 504 => tonic::Status::unavailable(msg),
        _ => tonic::Status::unknown(msg),
    }
}

/// A call's HTTP/2 headers: its metadata (timeout, configured headers)
/// without gRPC's own headers, which tonic drops from metadata too, and the
/// protocol's fixed ones.
fn grpc_headers(metadata: tonic::metadata::MetadataMap) -> http::HeaderMap {
    let mut headers = metadata.into_headers();
    for reserved in ["grpc-status", "grpc-message", "grpc-message-type"] {
        headers.remove(reserved);
    }
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers
}

/// The message of a unary reply's body (one gRPC frame); empty when there
/// is none or it is compressed (we never ask for compression).
fn reply_message(mut body: Bytes) -> Bytes {
    if body.len() < GRPC_PREFIX || body[0] != 0 {
        return Bytes::new();
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let end = (GRPC_PREFIX + len).min(body.len());
    body.truncate(end);
    body.slice(GRPC_PREFIX..)
}

pub struct OtlpClient {
    transport: Transport,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

fn grpc_error(status: tonic::Status) -> ExportError {
    use tonic::Code::*;
    let msg = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Cancelled | DeadlineExceeded | ResourceExhausted | Aborted | OutOfRange | Unavailable
        | DataLoss | Unknown => ExportError::Retryable(msg),
        _ => ExportError::Permanent(msg),
    }
}

impl OtlpClient {
    /// Must be called inside a tokio runtime.
    pub fn new(cfg: &OtlpTarget, signal: Signal) -> anyhow::Result<Self> {
        let endpoint = cfg.endpoint.clone().unwrap_or_default();
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let transport = match cfg.protocol {
            OtlpProtocol::Grpc => Transport::Grpc(
                tonic::transport::Channel::from_shared(endpoint.clone())
                    .map_err(|e| anyhow::anyhow!("invalid OTLP endpoint {endpoint:?}: {e}"))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy(),
            ),
            OtlpProtocol::HttpProtobuf => {
                let url = if cfg.endpoint_is_full {
                    endpoint
                } else {
                    let path = match signal {
                        Signal::Traces => "v1/traces",
                        Signal::Metrics => "v1/metrics",
                    };
                    format!("{}/{path}", endpoint.trim_end_matches('/'))
                };
                let client = reqwest::Client::builder().timeout(timeout).build()?;
                Transport::Http { client, url }
            }
        };
        Ok(Self {
            transport,
            headers: cfg.headers.clone(),
            timeout,
        })
    }

    fn grpc_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(msg);
        request.set_timeout(self.timeout);
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                tonic::metadata::MetadataValue::try_from(v.as_str()),
            ) {
                request.metadata_mut().insert(k, v);
            }
        }
        request
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: Bytes,
    ) -> Result<(), ExportError> {
        let mut rb = client
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(body);
        for (k, v) in &self.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        match rb.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let code = resp.status().as_u16();
                let msg = format!("HTTP {code} from {url}");
                if matches!(code, 429 | 502 | 503 | 504) {
                    Err(ExportError::Retryable(msg))
                } else {
                    Err(ExportError::Permanent(msg))
                }
            }
            Err(e) => Err(ExportError::Retryable(format!("{url}: {e}"))),
        }
    }

    /// Sends one request over either transport. `grpc` performs the call on
    /// the signal's service and returns what the collector rejected, if any.
    async fn send<R, F, Fut>(&self, req: R, what: &str, grpc: F) -> Result<(), ExportError>
    where
        R: Message,
        F: FnOnce(tonic::transport::Channel, tonic::Request<R>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<(i64, String)>, tonic::Status>>,
    {
        match &self.transport {
            Transport::Grpc(channel) => {
                let rejected = grpc(channel.clone(), self.grpc_request(req))
                    .await
                    .map_err(grpc_error)?;
                note_rejected(rejected, what);
                Ok(())
            }
            Transport::Http { client, url } => {
                self.post(client, url, req.encode_to_vec().into()).await
            }
        }
    }

    /// An ExportTraceServiceRequest encoded in gRPC's framing
    /// (`span_encoding::encode_request_framed`); the HTTP transport sends
    /// the message after the prefix. Neither copies it.
    pub async fn export_traces(&self, framed: Bytes) -> Result<(), ExportError> {
        match &self.transport {
            Transport::Grpc(channel) => {
                let reply = self
                    .unary_framed(channel.clone(), TRACE_EXPORT_PATH, framed)
                    .await
                    .map_err(grpc_error)?;
                let rejected = ExportTraceServiceResponse::decode(reply)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map(|p| (p.rejected_spans, p.error_message));
                note_rejected(rejected, "spans");
                Ok(())
            }
            Transport::Http { client, url } => {
                self.post(client, url, framed.slice(GRPC_PREFIX.min(framed.len())..))
                    .await
            }
        }
    }

    /// One unary gRPC call over the channel with a body already framed,
    /// made by hand because tonic's codecs only write into a buffer of
    /// their own: copying each batch there was ~110 us per 512 nginx spans
    /// on this machine, a tenth of the export thread's CPU. Returns the
    /// reply's message (empty when there is none).
    async fn unary_framed(
        &self,
        mut channel: tonic::transport::Channel,
        path: &'static str,
        framed: Bytes,
    ) -> Result<Bytes, tonic::Status> {
        use http_body_util::BodyExt;
        use tonic::codegen::Service;
        // Timeout and headers as for any other call (`grpc_request`).
        let (metadata, _, ()) = self.grpc_request(()).into_parts();
        let mut request =
            http::Request::new(tonic::body::Body::new(http_body_util::Full::new(framed)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static(path);
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = grpc_headers(metadata);
        std::future::poll_fn(|cx| Service::poll_ready(&mut channel, cx))
            .await
            .map_err(|e| tonic::Status::from_error(e.into()))?;
        let response = Service::call(&mut channel, request)
            .await
            .map_err(|e| tonic::Status::from_error(e.into()))?;
        let (head, body) = response.into_parts();
        // A failure can come in the headers alone ("trailers-only").
        let in_headers = tonic::Status::from_header_map(&head.headers);
        if let Some(status) = in_headers.as_ref().filter(|s| s.code() != tonic::Code::Ok) {
            return Err(status.clone());
        }
        if head.status != http::StatusCode::OK {
            return Err(status_of_http(head.status));
        }
        let body = body.collect().await?;
        let status = body
            .trailers()
            .and_then(tonic::Status::from_header_map)
            .or(in_headers)
            .unwrap_or_else(|| tonic::Status::unknown("the reply carried no grpc-status"));
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
        Ok(reply_message(body.to_bytes()))
    }

    pub async fn export_metrics(
        &self,
        req: ExportMetricsServiceRequest,
    ) -> Result<(), ExportError> {
        self.send(req, "data points", |ch, r| async move {
            let resp = MetricsServiceClient::new(ch).export(r).await?.into_inner();
            Ok(resp
                .partial_success
                .map(|p| (p.rejected_data_points, p.error_message)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    fn framed(flag: u8, msg: &[u8]) -> Bytes {
        let mut b = vec![flag];
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(msg);
        b.into()
    }

    #[test]
    fn the_reply_message_is_read_from_its_grpc_frame() {
        let reply = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        };
        let msg = reply.encode_to_vec();
        let got = ExportTraceServiceResponse::decode(reply_message(framed(0, &msg))).unwrap();
        assert_eq!(got, reply);
        // Nothing usable: no frame, a compressed one, a cut one.
        assert!(reply_message(Bytes::new()).is_empty());
        assert!(reply_message(Bytes::from_static(&[0, 0, 0])).is_empty());
        assert!(reply_message(framed(1, &msg)).is_empty());
        let cut = framed(0, &msg).slice(..GRPC_PREFIX + 2);
        assert_eq!(reply_message(cut), msg[..2]);
    }

    #[test]
    fn configured_headers_go_out_but_not_over_grpcs_own() {
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_secs(10));
        for (k, v) in [
            ("x-tenant", "a"),
            ("grpc-status", "3"),
            ("content-type", "text/plain"),
            ("te", "gzip"),
        ] {
            request.metadata_mut().insert(k, v.parse().unwrap());
        }
        let headers = grpc_headers(request.into_parts().0);
        assert_eq!(headers["x-tenant"], "a");
        assert_eq!(headers["grpc-timeout"], "10000000u");
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["content-type"], "application/grpc");
        assert!(!headers.contains_key("grpc-status"));
        assert_eq!(headers.len(), 4, "{headers:?}");
    }

    #[test]
    fn http_statuses_without_a_grpc_status_map_as_grpc_says() {
        let code = |s: u16| status_of_http(http::StatusCode::from_u16(s).unwrap()).code();
        assert_eq!(code(400), tonic::Code::Internal);
        assert_eq!(code(401), tonic::Code::Unauthenticated);
        assert_eq!(code(404), tonic::Code::Unimplemented);
        for s in [429, 502, 503, 504] {
            assert_eq!(code(s), tonic::Code::Unavailable);
            assert!(matches!(
                grpc_error(status_of_http(http::StatusCode::from_u16(s).unwrap())),
                ExportError::Retryable(_)
            ));
        }
        assert_eq!(code(500), tonic::Code::Unknown);
    }
}
