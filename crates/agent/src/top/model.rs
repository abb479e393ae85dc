//! Pure aggregation behind `autotel top`: no terminal, no clock of its own
//! (callers pass `now_ms`, a monotonic millisecond count), so every figure is
//! unit-testable.
//!
//! Per span the work is O(1): one hash lookup per table, a histogram bucket
//! increment, a push on the trace store (with amortised eviction). Memory is
//! bounded: each table keeps at most `max_rows` rows (the least recently
//! seen tenth goes when full), the trace store at most `max_traces` traces
//! and `max_spans` spans (oldest trace first), the slow list `max_slow`.

use autotel_model::{AttrValue, Span, SpanId, SpanKind, StatusCode, TraceId};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;

/// Seconds in the sliding window rates and percentiles cover.
pub const WINDOW_SECS: usize = 10;
/// Histogram buckets: `SUB` per power of two, from 1 µs up to ~2^40 µs.
const SUB_BITS: u32 = 2;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 40 * SUB;

/// Bucket of a duration in nanoseconds (log-linear, ~19% wide).
fn bucket_of(ns: u64) -> usize {
    let us = ns / 1000;
    if us < SUB as u64 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= SUB_BITS
    let sub = ((us >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    let b = ((exp - SUB_BITS + 1) as usize) * SUB + sub;
    b.min(BUCKETS - 1)
}

/// A representative value (ns) of a bucket: its midpoint.
fn bucket_value(b: usize) -> u64 {
    if b < SUB {
        return b as u64 * 1000 + 500;
    }
    let exp = (b / SUB) as u32 - 1 + SUB_BITS;
    let sub = (b % SUB) as u64;
    let lo = (1u64 << exp) + (sub << (exp - SUB_BITS));
    let width = 1u64 << (exp - SUB_BITS);
    (lo + width / 2) * 1000
}

/// Counts, errors and a latency histogram over the last `WINDOW_SECS`
/// seconds (one slot per second; the sum is kept up to date as slots expire).
#[derive(Debug, Clone)]
pub struct Window {
    slot_sec: [u64; WINDOW_SECS],
    slot_count: [u32; WINDOW_SECS],
    slot_err: [u32; WINDOW_SECS],
    slot_hist: Vec<[u32; BUCKETS]>, // WINDOW_SECS entries
    sum_hist: Box<[u32; BUCKETS]>,
    count: u64,
    errors: u64,
    /// Last second this window was advanced to.
    sec: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slot_sec: [0; WINDOW_SECS],
            slot_count: [0; WINDOW_SECS],
            slot_err: [0; WINDOW_SECS],
            slot_hist: vec![[0; BUCKETS]; WINDOW_SECS],
            sum_hist: Box::new([0; BUCKETS]),
            count: 0,
            errors: 0,
            sec: 0,
        }
    }
}

impl Window {
    /// Drops slots older than the window ending at `sec`.
    pub fn advance(&mut self, sec: u64) {
        if sec <= self.sec && self.count > 0 {
            return;
        }
        for i in 0..WINDOW_SECS {
            if self.slot_count[i] > 0 && self.slot_sec[i] + (WINDOW_SECS as u64) <= sec {
                self.count -= self.slot_count[i] as u64;
                self.errors -= self.slot_err[i] as u64;
                for (s, h) in self.sum_hist.iter_mut().zip(self.slot_hist[i].iter_mut()) {
                    *s -= *h;
                    *h = 0;
                }
                self.slot_count[i] = 0;
                self.slot_err[i] = 0;
            }
        }
        self.sec = self.sec.max(sec);
    }

    pub fn record(&mut self, sec: u64, dur_ns: u64, error: bool) {
        self.advance(sec);
        let i = (sec % WINDOW_SECS as u64) as usize;
        if self.slot_sec[i] != sec {
            // A stale slot advance() kept (only when it was empty).
            debug_assert_eq!(self.slot_count[i], 0);
            self.slot_sec[i] = sec;
        }
        let b = bucket_of(dur_ns);
        self.slot_count[i] += 1;
        self.slot_hist[i][b] += 1;
        self.sum_hist[b] += 1;
        self.count += 1;
        if error {
            self.slot_err[i] += 1;
            self.errors += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Latency quantile (ns) over the window, `q` in [0, 1].
    pub fn quantile(&self, q: f64) -> Option<u64> {
        self.quantile_bucket(q).map(bucket_value)
    }

    /// The histogram bucket holding quantile `q`.
    fn quantile_bucket(&self, q: f64) -> Option<usize> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (b, &n) in self.sum_hist.iter().enumerate() {
            seen += n as u64;
            if seen >= rank {
                return Some(b);
            }
        }
        None
    }
}

/// Which table a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Services,
    Database,
    Dns,
}

/// One aggregated row: three key columns (meaning depends on the table).
#[derive(Debug, Clone)]
pub struct Row {
    pub key: [String; 3],
    pub window: Window,
    pub total: u64,
    pub total_errors: u64,
    pub last_seen_ms: u64,
    /// Cached p99 bucket of the window, refreshed once a second: spans in
    /// a higher bucket are "slower than usual" for the slow list.
    p99_cache: Option<usize>,
    p99_sec: u64,
    /// Database: a sanitized sample query; DNS: the last error type.
    pub sample: String,
}

/// A bounded table of rows keyed by three strings.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Row>,
    index: FxHashMap<[String; 3], usize>,
    max_rows: usize,
    pub evicted: u64,
}

impl Table {
    pub fn new(max_rows: usize) -> Self {
        Table {
            rows: Vec::new(),
            index: FxHashMap::default(),
            max_rows: max_rows.max(1),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    #[cfg(test)]
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The row for `key`, created if missing (evicting when full).
    fn row(&mut self, key: [String; 3], now_ms: u64) -> &mut Row {
        if let Some(&i) = self.index.get(&key) {
            return &mut self.rows[i];
        }
        if self.rows.len() >= self.max_rows {
            self.evict();
        }
        let i = self.rows.len();
        self.index.insert(key.clone(), i);
        self.rows.push(Row {
            key,
            window: Window::default(),
            total: 0,
            total_errors: 0,
            last_seen_ms: now_ms,
            p99_cache: None,
            p99_sec: u64::MAX,
            sample: String::new(),
        });
        &mut self.rows[i]
    }

    /// Drops the least recently seen tenth (at least one row): O(n) once
    /// per n/10 insertions.
    fn evict(&mut self) {
        let drop_n = (self.rows.len() / 10).max(1);
        let mut seen: Vec<u64> = self.rows.iter().map(|r| r.last_seen_ms).collect();
        seen.sort_unstable();
        let cutoff = seen[drop_n - 1];
        let mut dropped = 0;
        self.rows.retain(|r| {
            if dropped < drop_n && r.last_seen_ms <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
        self.evicted += dropped as u64;
        self.index.clear();
        for (i, r) in self.rows.iter().enumerate() {
            self.index.insert(r.key.clone(), i);
        }
    }

    /// Records one request; returns whether it is slower than the row's p99
    /// (once the row has enough samples for a p99 to mean something).
    fn record(
        &mut self,
        key: [String; 3],
        now_ms: u64,
        dur_ns: u64,
        error: bool,
    ) -> (bool, &mut Row) {
        let sec = now_ms / 1000;
        let row = self.row(key, now_ms);
        row.last_seen_ms = now_ms;
        if row.p99_sec != sec {
            row.window.advance(sec);
            row.p99_cache = if row.window.count() >= 100 {
                row.window.quantile_bucket(0.99)
            } else {
                None
            };
            row.p99_sec = sec;
        }
        let slow = row.p99_cache.is_some_and(|p| bucket_of(dur_ns) > p);
        row.window.record(sec, dur_ns, error);
        row.total += 1;
        if error {
            row.total_errors += 1;
        }
        (slow, row)
    }
}

/// Sort columns of the tables (`s` cycles them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Rate,
    Errors,
    P99,
    Name,
}

impl SortBy {
    pub fn next(self) -> Self {
        match self {
            SortBy::Rate => SortBy::Errors,
            SortBy::Errors => SortBy::P99,
            SortBy::P99 => SortBy::Name,
            SortBy::Name => SortBy::Rate,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Rate => "rate",
            SortBy::Errors => "errors",
            SortBy::P99 => "p99",
            SortBy::Name => "name",
        }
    }
}

/// A row as shown: figures computed for one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RowView {
    pub key: [String; 3],
    /// Requests per second over the window.
    pub rate: f64,
    /// Errors / requests over the window (0 when idle).
    pub error_rate: f64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub total: u64,
    pub total_errors: u64,
    pub sample: String,
}

/// Sorts views by `by` (rate, errors, p99: highest first; name: A-Z);
/// `reverse` flips the order. Ties fall back to the key, so the order is
/// stable from frame to frame.
pub fn sort_views(views: &mut [RowView], by: SortBy, reverse: bool) {
    use std::cmp::Ordering;
    let f = |a: &f64, b: &f64| b.partial_cmp(a).unwrap_or(Ordering::Equal);
    views.sort_by(|a, b| {
        let o = match by {
            SortBy::Rate => f(&a.rate, &b.rate),
            SortBy::Errors => f(&a.error_rate, &b.error_rate).then(f(&a.rate, &b.rate)),
            SortBy::P99 => b.p99_ns.cmp(&a.p99_ns),
            SortBy::Name => Ordering::Equal,
        };
        let o = o.then_with(|| a.key.cmp(&b.key));
        if reverse {
            o.reverse()
        } else {
            o
        }
    });
}

/// Why a span made the slow & failed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Failed,
    Slow,
}

#[derive(Debug, Clone)]
pub struct SlowEntry {
    pub span: Arc<Span>,
    pub reason: Reason,
    pub seen_ms: u64,
}

/// Recent spans grouped by trace id, oldest trace evicted first.
#[derive(Debug)]
pub struct TraceStore {
    traces: FxHashMap<TraceId, Vec<Arc<Span>>>,
    order: VecDeque<TraceId>,
    spans: usize,
    max_traces: usize,
    max_spans: usize,
    /// Spans kept per trace at most (a runaway trace cannot hog the store).
    max_per_trace: usize,
}

impl TraceStore {
    pub fn new(max_traces: usize, max_spans: usize) -> Self {
        TraceStore {
            traces: FxHashMap::default(),
            order: VecDeque::new(),
            spans: 0,
            max_traces: max_traces.max(1),
            max_spans: max_spans.max(1),
            max_per_trace: 500.min(max_spans.max(1)),
        }
    }

    pub fn insert(&mut self, span: Arc<Span>) {
        let id = span.trace_id;
        match self.traces.get_mut(&id) {
            Some(v) => {
                if v.len() >= self.max_per_trace {
                    return;
                }
                v.push(span);
            }
            None => {
                self.traces.insert(id, vec![span]);
                self.order.push_back(id);
            }
        }
        self.spans += 1;
        while self.traces.len() > self.max_traces || self.spans > self.max_spans {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.traces.remove(&old) {
                self.spans -= v.len();
            }
        }
    }

    pub fn get(&self, id: &TraceId) -> Option<&[Arc<Span>]> {
        self.traces.get(id).map(|v| v.as_slice())
    }

    pub fn trace_count(&self) -> usize {
        self.traces.len()
    }

    pub fn span_count(&self) -> usize {
        self.spans
    }
}

/// One line of a span tree: depth (indent) and the span.
#[derive(Debug, Clone)]
pub struct TreeLine {
    pub depth: usize,
    pub span: Arc<Span>,
}

/// Orders a trace's spans as a tree: roots (no parent, or a parent we did
/// not see) by start time, each followed by its children, depth-first.
pub fn span_tree(spans: &[Arc<Span>]) -> Vec<TreeLine> {
    let ids: FxHashMap<SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id, i))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id.and_then(|p| ids.get(&p)) {
            Some(&p) if p != i => children[p].push(i),
            _ => roots.push(i),
        }
    }
    let by_start = |v: &mut Vec<usize>| {
        v.sort_by_key(|&i| (spans[i].start_unix_ns, spans[i].span_id));
    };
    by_start(&mut roots);
    for c in children.iter_mut() {
        by_start(c);
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut visited = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 0)).collect();
    let walk =
        |stack: &mut Vec<(usize, usize)>, out: &mut Vec<TreeLine>, visited: &mut Vec<bool>| {
            while let Some((i, d)) = stack.pop() {
                if visited[i] {
                    continue;
                }
                visited[i] = true;
                out.push(TreeLine {
                    depth: d,
                    span: spans[i].clone(),
                });
                for &c in children[i].iter().rev() {
                    stack.push((c, d + 1));
                }
            }
        };
    walk(&mut stack, &mut out, &mut visited);
    // Spans in a parent cycle have no root: show them flat at the end.
    for i in 0..spans.len() {
        if !visited[i] {
            stack.push((i, 0));
            walk(&mut stack, &mut out, &mut visited);
        }
    }
    out
}

/// Limits of the model.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: usize,
    pub max_traces: usize,
    pub max_spans: usize,
    pub max_slow: usize,
    /// Spans at least this long are "slow" whatever their row's p99.
    pub slow_threshold_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rows: 2_000,
            max_traces: 2_000,
            max_spans: 20_000,
            max_slow: 500,
            slow_threshold_ns: 1_000_000_000,
        }
    }
}

/// Everything `top` shows.
#[derive(Debug)]
pub struct Model {
    pub services: Table,
    pub database: Table,
    pub dns: Table,
    pub traces: TraceStore,
    /// Newest first.
    pub slow: VecDeque<SlowEntry>,
    pub total_spans: u64,
    /// All spans over the window (for the header's spans/s).
    pub all: Window,
    start_ms: u64,
    limits: Limits,
}

fn attr_str(span: &Span, key: &str) -> Option<String> {
    span.attr(key).map(|v| match v {
        AttrValue::Str(s) => s.to_string(),
        other => other.to_string(),
    })
}

pub fn kind_label(k: SpanKind) -> &'static str {
    match k {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Internal => "internal",
    }
}

/// Query text with literals masked (`'..'` and numbers -> `?`), whitespace
/// collapsed and cut to 200 characters: what a sample column may show.
pub fn sanitize_query(q: &str) -> String {
    let mut out = String::with_capacity(q.len().min(256));
    let mut chars = q.chars().peekable();
    let mut prev_word = false; // previous char part of an identifier
    let mut prev_space = true;
    while let Some(c) = chars.next() {
        if out.chars().count() >= 200 {
            out.push('…');
            break;
        }
        if c == '\'' {
            // String literal ('' escapes a quote).
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                    }
                    Some('\'') | None => break,
                    _ => {}
                }
            }
            out.push('?');
            prev_word = false;
            prev_space = false;
        } else if c.is_ascii_digit() && !prev_word {
            while chars
                .peek()
                .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '.')
            {
                chars.next();
            }
            out.push('?');
            prev_word = false;
            prev_space = false;
        } else if c.is_whitespace() {
            if !prev_space {
                out.push(' ');
            }
            prev_space = true;
            prev_word = false;
        } else {
            out.push(c);
            prev_word = c.is_alphanumeric() || c == '_' || c == '$';
            prev_space = false;
        }
    }
    out.trim_end().to_owned()
}

impl Model {
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        Model {
            services: Table::new(limits.max_rows),
            database: Table::new(limits.max_rows),
            dns: Table::new(limits.max_rows),
            traces: TraceStore::new(limits.max_traces, limits.max_spans),
            slow: VecDeque::new(),
            total_spans: 0,
            all: Window::default(),
            start_ms: now_ms,
            limits,
        }
    }

    pub fn ingest(&mut self, span: Span, now_ms: u64) {
        let sec = now_ms / 1000;
        let dur = span.duration_ns();
        let error = span.status == StatusCode::Error;
        self.total_spans += 1;
        self.all.record(sec, dur, error);

        // Services/routes: HTTP server spans are named "METHOD route" already;
        // everything else by its span name.
        let label = span.name.to_string();
        let key = [
            span.resource.service_name.clone(),
            label,
            kind_label(span.kind).to_owned(),
        ];
        let (slower_than_p99, _) = self.services.record(key, now_ms, dur, error);

        if let Some(system) = attr_str(&span, "db.system.name") {
            let (_, row) = self.database.record(
                [system, span.name.to_string(), String::new()],
                now_ms,
                dur,
                error,
            );
            if let Some(q) = span.attr("db.query.text") {
                // Refresh the sample now and then; sanitizing is not free.
                if row.sample.is_empty() || row.total % 64 == 1 {
                    row.sample = sanitize_query(&q.to_string());
                }
            }
        } else if let Some(qname) = attr_str(&span, "dns.question.name") {
            let qtype = attr_str(&span, "dns.question.type")
                .or_else(|| span.name.strip_prefix("DNS ").map(str::to_owned))
                .unwrap_or_default();
            let (_, row) = self
                .dns
                .record([qname, qtype, String::new()], now_ms, dur, error);
            if error {
                row.sample = attr_str(&span, "error.type")
                    .or_else(|| attr_str(&span, "dns.response_code"))
                    .unwrap_or_else(|| "error".to_owned());
            }
        }

        let span = Arc::new(span);
        let reason = if error {
            Some(Reason::Failed)
        } else if slower_than_p99 || dur >= self.limits.slow_threshold_ns {
            Some(Reason::Slow)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.slow.push_front(SlowEntry {
                span: span.clone(),
                reason,
                seen_ms: now_ms,
            });
            self.slow.truncate(self.limits.max_slow);
        }
        self.traces.insert(span);
    }

    /// Seconds the window currently covers (less than `WINDOW_SECS` while
    /// the view is younger than that; never below 1 s).
    pub fn window_secs(&self, now_ms: u64) -> f64 {
        let since_start = now_ms.saturating_sub(self.start_ms) as f64 / 1000.0;
        let full = (WINDOW_SECS - 1) as f64 + (now_ms % 1000) as f64 / 1000.0;
        since_start.min(full).max(1.0)
    }

    /// The rows of `table` as shown at `now_ms`, sorted.
    pub fn views(
        &mut self,
        table: TableKind,
        now_ms: u64,
        by: SortBy,
        reverse: bool,
    ) -> Vec<RowView> {
        let secs = self.window_secs(now_ms);
        let sec = now_ms / 1000;
        let t = match table {
            TableKind::Services => &mut self.services,
            TableKind::Database => &mut self.database,
            TableKind::Dns => &mut self.dns,
        };
        let mut out: Vec<RowView> = t
            .rows
            .iter_mut()
            .map(|r| {
                r.window.advance(sec);
                let n = r.window.count();
                RowView {
                    key: r.key.clone(),
                    rate: n as f64 / secs,
                    error_rate: if n == 0 {
                        0.0
                    } else {
                        r.window.errors() as f64 / n as f64
                    },
                    p50_ns: r.window.quantile(0.5),
                    p99_ns: r.window.quantile(0.99),
                    total: r.total,
                    total_errors: r.total_errors,
                    sample: r.sample.clone(),
                }
            })
            .collect();
        sort_views(&mut out, by, reverse);
        out
    }

    /// All spans per second over the window.
    pub fn span_rate(&mut self, now_ms: u64) -> f64 {
        self.all.advance(now_ms / 1000);
        self.all.count() as f64 / self.window_secs(now_ms)
    }

    /// The span tree of `entry`'s trace (just the span when its trace was
    /// evicted already) and the index of the entry's span in it.
    pub fn trace_of(&self, span: &Arc<Span>) -> (Vec<TreeLine>, usize) {
        let lines = match self.traces.get(&span.trace_id) {
            Some(spans) if spans.iter().any(|s| s.span_id == span.span_id) => span_tree(spans),
            Some(spans) => {
                let mut v = spans.to_vec();
                v.push(span.clone());
                span_tree(&v)
            }
            None => span_tree(std::slice::from_ref(span)),
        };
        let sel = lines
            .iter()
            .position(|l| l.span.span_id == span.span_id)
            .unwrap_or(0);
        (lines, sel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autotel_model::Resource;

    fn res(name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: name.into(),
            pid: 1,
            attributes: vec![],
        })
    }

    fn span(svc: &Arc<Resource>, name: &str, dur_ms: u64, error: bool) -> Span {
        Span {
            trace_id: autotel_model::new_trace_id(),
            span_id: autotel_model::new_span_id(),
            parent_span_id: None,
            trace_state: String::new(),
            name: name.into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_000_000_000 + dur_ms * 1_000_000,
            attributes: vec![],
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: String::new(),
            resource: svc.clone(),
        }
    }

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for us in [
            0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 12_345, 1_000_000, 60_000_000,
        ] {
            let b = bucket_of(us * 1000);
            assert!(b >= last, "{us}");
            last = b;
            let v = bucket_value(b) as f64 / 1000.0;
            let err = (v - us as f64).abs() / (us as f64).max(1.0);
            assert!(err <= 0.2 || us < 4, "{us} µs -> {v} ({err})");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn rates_over_sliding_window() {
        let svc = res("web");
        let mut m = Model::new(Limits::default(), 0);
        // 20 spans/s for 30 s on /a, then nothing.
        for s in 0..30u64 {
            for i in 0..20u64 {
                m.ingest(span(&svc, "GET /a", 5, false), s * 1000 + i * 50);
            }
        }
        let v = m.views(TableKind::Services, 29_999, SortBy::Rate, false);
        assert_eq!(v.len(), 1);
        assert!((v[0].rate - 20.0).abs() < 0.1, "{}", v[0].rate);
        assert_eq!(v[0].total, 600);
        // Early: 2 s in, 40 spans -> ~20/s, not 4/s.
        let mut m2 = Model::new(Limits::default(), 0);
        for i in 0..40u64 {
            m2.ingest(span(&svc, "GET /a", 5, false), i * 50);
        }
        let v = m2.views(TableKind::Services, 2_000, SortBy::Rate, false);
        assert!((v[0].rate - 20.0).abs() < 0.5, "{}", v[0].rate);
        // Half the window later: half the rate.
        let v = m.views(TableKind::Services, 34_500, SortBy::Rate, false);
        assert!((v[0].rate - 100.0 / 9.5).abs() < 0.1, "{}", v[0].rate);
        // 15 s after the last span, the window is empty but the total stays.
        let v = m.views(TableKind::Services, 45_000, SortBy::Rate, false);
        assert_eq!(v[0].rate, 0.0);
        assert_eq!(v[0].p99_ns, None);
        assert_eq!(v[0].total, 600);
    }

    #[test]
    fn error_rate_and_percentiles() {
        let svc = res("web");
        let mut m = Model::new(Limits::default(), 0);
        // 1000 spans: 1..=1000 ms; every 4th fails.
        for i in 1..=1000u64 {
            m.ingest(span(&svc, "GET /x", i, i % 4 == 0), 5_000 + i);
        }
        let v = m.views(TableKind::Services, 6_500, SortBy::Rate, false);
        assert!((v[0].error_rate - 0.25).abs() < 1e-9);
        let p50 = v[0].p50_ns.unwrap() as f64 / 1e6;
        let p99 = v[0].p99_ns.unwrap() as f64 / 1e6;
        assert!((p50 - 500.0).abs() / 500.0 < 0.2, "p50 {p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.2, "p99 {p99}");
        assert_eq!(v[0].total_errors, 250);
    }

    #[test]
    fn sorting() {
        let mk = |name: &str, rate: f64, err: f64, p99: u64| RowView {
            key: ["s".into(), name.into(), "server".into()],
            rate,
            error_rate: err,
            p50_ns: None,
            p99_ns: Some(p99),
            total: 0,
            total_errors: 0,
            sample: String::new(),
        };
        let mut v = vec![
            mk("b", 1.0, 0.5, 30),
            mk("a", 3.0, 0.0, 10),
            mk("c", 2.0, 0.1, 20),
        ];
        let names = |v: &[RowView]| v.iter().map(|r| r.key[1].clone()).collect::<Vec<_>>();
        sort_views(&mut v, SortBy::Rate, false);
        assert_eq!(names(&v), ["a", "c", "b"]);
        sort_views(&mut v, SortBy::Errors, false);
        assert_eq!(names(&v), ["b", "c", "a"]);
        sort_views(&mut v, SortBy::P99, false);
        assert_eq!(names(&v), ["b", "c", "a"]);
        sort_views(&mut v, SortBy::Name, false);
        assert_eq!(names(&v), ["a", "b", "c"]);
        sort_views(&mut v, SortBy::Name, true);
        assert_eq!(names(&v), ["c", "b", "a"]);
        sort_views(&mut v, SortBy::Rate, true);
        assert_eq!(names(&v), ["b", "c", "a"]);
        assert_eq!(SortBy::Rate.next().next().next().next(), SortBy::Rate);
    }

    #[test]
    fn rows_are_bounded() {
        let svc = res("web");
        let limits = Limits {
            max_rows: 100,
            ..Limits::default()
        };
        let mut m = Model::new(limits, 0);
        for i in 0..10_000u64 {
            m.ingest(span(&svc, &format!("GET /r{i}"), 1, false), i);
            assert!(m.services.len() <= 100);
        }
        assert_eq!(m.services.len() + m.services.evicted as usize, 10_000);
        // The most recent row survives eviction; lookups still work.
        assert!(m.services.rows().iter().any(|r| r.key[1] == "GET /r9999"));
        m.ingest(span(&svc, "GET /r9999", 1, false), 10_000);
        let r = m
            .services
            .rows()
            .iter()
            .find(|r| r.key[1] == "GET /r9999")
            .unwrap();
        assert_eq!(r.total, 2);
    }

    #[test]
    fn traces_are_bounded_oldest_first() {
        let svc = res("web");
        let limits = Limits {
            max_traces: 50,
            max_spans: 120,
            ..Limits::default()
        };
        let mut m = Model::new(limits, 0);
        let mut ids = vec![];
        for i in 0..1000u64 {
            let s = span(&svc, "GET /", 1, false);
            ids.push(s.trace_id);
            m.ingest(s.clone(), i);
            // A second span in the same trace.
            let mut c = s;
            c.span_id = autotel_model::new_span_id();
            m.ingest(c, i);
            assert!(m.traces.trace_count() <= 50);
            assert!(m.traces.span_count() <= 120);
        }
        assert_eq!(m.traces.span_count(), 2 * m.traces.trace_count());
        assert!(m.traces.get(&ids[999]).is_some());
        assert!(m.traces.get(&ids[0]).is_none());
        // Slow list bounded too (every span fails here).
        let mut m = Model::new(
            Limits {
                max_slow: 10,
                ..limits
            },
            0,
        );
        for i in 0..100 {
            m.ingest(span(&svc, "GET /e", 1, true), i);
        }
        assert_eq!(m.slow.len(), 10);
        assert_eq!(m.slow[0].seen_ms, 99);
    }

    #[test]
    fn slow_and_failed() {
        let svc = res("web");
        let mut m = Model::new(Limits::default(), 0);
        for i in 0..500u64 {
            m.ingest(span(&svc, "GET /a", 10, false), i);
        }
        assert!(m.slow.is_empty());
        // Next second: p99 is known (~10 ms); a 100 ms span is slow.
        m.ingest(span(&svc, "GET /a", 100, false), 1_500);
        m.ingest(span(&svc, "GET /a", 10, false), 1_501);
        m.ingest(span(&svc, "GET /b", 1, true), 1_502);
        m.ingest(span(&svc, "GET /c", 2_000, false), 1_503); // over the threshold
        let got: Vec<_> = m
            .slow
            .iter()
            .map(|e| (e.span.name.as_str(), e.reason))
            .collect();
        assert_eq!(
            got,
            [
                ("GET /c", Reason::Slow),
                ("GET /b", Reason::Failed),
                ("GET /a", Reason::Slow)
            ]
        );
    }

    #[test]
    fn span_tree_indents_by_parent() {
        let svc = res("web");
        let mut root = span(&svc, "GET /", 10, false);
        root.start_unix_ns = 100;
        let mk = |name: &str, parent: &Span, start: u64| {
            let mut s = span(&svc, name, 1, false);
            s.trace_id = parent.trace_id;
            s.parent_span_id = Some(parent.span_id);
            s.start_unix_ns = start;
            s
        };
        let c2 = mk("SELECT b", &root, 300);
        let c1 = mk("SELECT a", &root, 200);
        let g = mk("DNS A", &c1, 250);
        let mut orphan = span(&svc, "orphan", 1, false);
        orphan.trace_id = root.trace_id;
        orphan.parent_span_id = Some([9; 8]);
        orphan.start_unix_ns = 50;
        let mut cyc_a = span(&svc, "cyc a", 1, false);
        let mut cyc_b = span(&svc, "cyc b", 1, false);
        cyc_a.parent_span_id = Some(cyc_b.span_id);
        cyc_b.parent_span_id = Some(cyc_a.span_id);
        let all: Vec<Arc<Span>> = [g, c2, root, c1, orphan, cyc_a, cyc_b]
            .into_iter()
            .map(Arc::new)
            .collect();
        let t = span_tree(&all);
        let got: Vec<_> = t.iter().map(|l| (l.depth, l.span.name.as_str())).collect();
        assert_eq!(
            got[..5],
            [
                (0, "orphan"),
                (0, "GET /"),
                (1, "SELECT a"),
                (2, "DNS A"),
                (1, "SELECT b")
            ]
        );
        assert_eq!(t.len(), 7, "cycle members still shown");

        // Through the model: the trace of a failed child span.
        let mut m = Model::new(Limits::default(), 0);
        for s in &all[..4] {
            m.ingest((**s).clone(), 0);
        }
        let (lines, sel) = m.trace_of(&all[3]);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[sel].span.name, "SELECT a");
    }

    fn with_attrs(mut s: Span, attrs: Vec<(&'static str, AttrValue)>) -> Span {
        s.attributes = attrs;
        s.kind = SpanKind::Client;
        s
    }

    #[test]
    fn database_and_dns_tables() {
        let svc = res("app");
        let mut m = Model::new(Limits::default(), 0);
        for i in 0..10u64 {
            let s = with_attrs(
                span(&svc, "SELECT orders", 2, i == 0),
                vec![
                    ("db.system.name", "postgresql".into()),
                    (
                        "db.query.text",
                        format!("SELECT * FROM orders WHERE id = {i} AND n = 'bob'").into(),
                    ),
                ],
            );
            m.ingest(s, 1000 + i);
        }
        let mut dns = with_attrs(
            span(&svc, "DNS A", 30, true),
            vec![
                ("dns.question.name", "nope.example".into()),
                ("dns.question.type", "A".into()),
                ("dns.response_code", "NXDOMAIN".into()),
                ("error.type", "NXDOMAIN".into()),
            ],
        );
        m.ingest(dns.clone(), 1500);
        dns.status = StatusCode::Unset;
        m.ingest(dns, 1600);
        let db = m.views(TableKind::Database, 2000, SortBy::Rate, false);
        assert_eq!(db.len(), 1);
        assert_eq!(db[0].key[0], "postgresql");
        assert_eq!(db[0].key[1], "SELECT orders");
        assert_eq!(db[0].total, 10);
        assert!((db[0].error_rate - 0.1).abs() < 1e-9);
        assert_eq!(db[0].sample, "SELECT * FROM orders WHERE id = ? AND n = ?");
        let d = m.views(TableKind::Dns, 2000, SortBy::Rate, false);
        assert_eq!(d[0].key[..2], ["nope.example".to_string(), "A".to_string()]);
        assert_eq!(d[0].total_errors, 1);
        assert_eq!(d[0].sample, "NXDOMAIN");
        // Both also count in services.
        assert_eq!(m.services.len(), 2);
    }

    #[test]
    fn sanitizer() {
        assert_eq!(
            sanitize_query("select a1, $1 from t2\n  where x = 'it''s' and y=42.5"),
            "select a1, $1 from t2 where x = ? and y=?"
        );
        assert!(sanitize_query(&"x ".repeat(500)).chars().count() <= 201);
    }
}
