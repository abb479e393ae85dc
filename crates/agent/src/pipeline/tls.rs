//! What we know of a connection's TLS session: seen from its handshake
//! records (version, ALPN) and from the handshake probe (duration). Spans of
//! the connection carry it; ciphertext itself is never parsed.

use autotel_model::{AttrValue, Span};
use autotel_protocols::tls;
use std::cell::Cell;

#[derive(Debug, Default)]
pub struct TlsState {
    pub version: Option<String>,
    pub alpn: Option<String>,
    /// First handshake record seen (the ClientHello) to the first
    /// plaintext call: the handshake as the application lived it.
    pub handshake_ns: Option<u64>,
    /// When the first handshake record was seen.
    pub hello_ns: Option<u64>,
    /// The handshake attribute goes on the first span only.
    first_span_done: Cell<bool>,
    /// Bytes the server sent, until its hello is read: OpenSSL reads the
    /// 5-byte record header and the record body in separate calls.
    server_bytes: Vec<u8>,
}

/// Enough for any ServerHello; beyond it we stop looking.
const MAX_HELLO_BYTES: usize = 4096;

impl TlsState {
    /// Raw bytes of the connection (handshake records, or ciphertext);
    /// `from_server`: the server sent them.
    pub fn observe_record(&mut self, data: &[u8], from_server: bool) {
        if self.version.is_some() || !from_server || self.server_bytes.len() >= MAX_HELLO_BYTES {
            return;
        }
        let room = MAX_HELLO_BYTES - self.server_bytes.len();
        self.server_bytes
            .extend_from_slice(&data[..data.len().min(room)]);
        if let Some(info) = tls::server_hello(&self.server_bytes) {
            self.version = Some(info.version);
            self.alpn = info.alpn;
            self.server_bytes = Vec::new();
        }
    }

    /// HTTP spans of a TLS connection are https; every span says which TLS.
    pub fn decorate(&self, span: &mut Span) {
        for (k, v) in span.attributes.iter_mut() {
            match *k {
                "url.scheme" => *v = "https".into(),
                "url.full" => {
                    if let AttrValue::Str(s) = v {
                        if let Some(rest) = s.strip_prefix("http://") {
                            let rest = rest.replacen(":443/", "/", 1);
                            *s = format!("https://{rest}").into();
                        }
                    }
                }
                _ => {}
            }
        }
        span.attributes.push(("tls.protocol.name", "tls".into()));
        if let Some(v) = &self.version {
            span.attributes
                .push(("tls.protocol.version", v.clone().into()));
        }
        if let Some(a) = &self.alpn {
            span.attributes
                .push(("tls.next_protocol", a.clone().into()));
        }
        if !self.first_span_done.replace(true) {
            if let Some(ns) = self.handshake_ns {
                span.attributes.push((
                    "autotel.tls.handshake.duration",
                    AttrValue::Double(ns as f64 / 1e9),
                ));
            }
        }
    }
}
