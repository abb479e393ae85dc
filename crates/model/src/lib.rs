//! What the pipeline produces and exporters consume: spans, attributes and
//! the resource (process) they belong to. No OTel, BPF or I/O types here.

use std::fmt;
use std::sync::Arc;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

thread_local! {
    /// Ids need to be unique and unpredictable enough to not collide, not
    /// secret: a per-thread xoshiro generator seeded from the OS is what
    /// OpenTelemetry SDKs use too, at a fraction of ChaCha's cost.
    static ID_RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
}

fn random_id<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    // fill_bytes takes 8 bytes per generator step; `random::<[u8; N]>()`
    // draws every byte on its own (16 steps for a trace id).
    let mut id = [0u8; N];
    ID_RNG.with(|r| r.borrow_mut().fill_bytes(&mut id));
    id
}

/// Random W3C ids: 128-bit trace ids, 64-bit span ids, never all zero.
pub fn new_trace_id() -> TraceId {
    loop {
        let id: TraceId = random_id();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> SpanId {
    loop {
        let id: SpanId = random_id();
        if id != [0; 8] {
            return id;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Server,
    Client,
    Internal,
}

impl fmt::Display for SpanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            SpanKind::Internal => "INTERNAL",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

/// Attribute text: values up to 24 bytes (methods, addresses, short paths,
/// user agents) live inline, so a span's attributes cost no allocation each.
pub type AttrStr = compact_str::CompactString;

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(AttrStr),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Double(d) => write!(f, "{d}"),
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(AttrStr::new(s))
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(AttrStr::from(s))
    }
}
impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}
impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

pub type Attributes = Vec<(&'static str, AttrValue)>;

/// The process a span belongs to: OTel resource attributes, built once per
/// process and shared by all its spans.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resource {
    pub service_name: String,
    pub pid: u32,
    /// All resource attributes, service.name included, in export order.
    pub attributes: Vec<(String, AttrValue)>,
}

/// A finished span; times are Unix nanoseconds.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: String,
    pub name: AttrStr,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Attributes,
    pub status: StatusCode,
    pub status_message: String,
    pub resource: Arc<Resource>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_non_zero() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, b);
        assert_ne!(new_span_id(), [0; 8]);
    }

    #[test]
    fn every_byte_of_an_id_is_drawn() {
        // A byte left out of the draw would keep one value across ids.
        let traces: Vec<TraceId> = (0..64).map(|_| new_trace_id()).collect();
        let spans: Vec<SpanId> = (0..64).map(|_| new_span_id()).collect();
        for i in 0..16 {
            assert!(
                traces.iter().any(|t| t[i] != traces[0][i]),
                "trace id byte {i}"
            );
        }
        for i in 0..8 {
            assert!(
                spans.iter().any(|s| s[i] != spans[0][i]),
                "span id byte {i}"
            );
        }
    }
}
