//! Spans -> OTLP (opentelemetry-proto types), sent over gRPC (tonic) or
//! HTTP/protobuf (reqwest), with the retryable/permanent split of the OTLP spec.

use super::span_encoding::PreEncoded;
use crate::config::{OtlpProtocol, OtlpTarget};
use autotel_model::AttrValue;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use prost::Message;
use std::time::Duration;

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
        body: Vec<u8>,
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
                if let Some((n, message)) = rejected.filter(|(n, _)| *n > 0) {
                    tracing::warn!(rejected = n, %message, "collector rejected {what}");
                }
                Ok(())
            }
            Transport::Http { client, url } => self.post(client, url, req.encode_to_vec()).await,
        }
    }

    /// An ExportTraceServiceRequest already encoded (span_encoding.rs): the
    /// same call the generated TraceServiceClient makes, with bytes as body.
    pub async fn export_traces(&self, req: PreEncoded) -> Result<(), ExportError> {
        self.send(req, "spans", |ch, mut r| async move {
            let mut grpc = tonic::client::Grpc::new(ch);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
            r.extensions_mut().insert(tonic::GrpcMethod::new(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                "Export",
            ));
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            );
            let codec =
                tonic_prost::ProstCodec::<PreEncoded, ExportTraceServiceResponse>::default();
            let resp = grpc.unary(r, path, codec).await?.into_inner();
            Ok(resp
                .partial_success
                .map(|p| (p.rejected_spans, p.error_message)))
        })
        .await
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
