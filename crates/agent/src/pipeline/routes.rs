//! Route reduction: URL paths -> low-cardinality `http.route` values, so
//! metrics and span names never explode with ids.
//!
//! Patterns are segment-wise: `{name}` or `:name` matches one segment, `*`
//! matches one segment, or any remainder when it is the last segment.
//! Unmatched paths are reduced by a heuristic (ids -> `{id}`), collapsed to
//! `/*` (wildcard), or kept (path).

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Heuristic,
    Wildcard,
    Path,
}

impl Unmatched {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "heuristic" => Ok(Unmatched::Heuristic),
            "wildcard" => Ok(Unmatched::Wildcard),
            "path" => Ok(Unmatched::Path),
            other => bail!("routes.unmatched: expected heuristic, wildcard or path, got {other:?}"),
        }
    }
}

/// What an ignored route is left out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreMode {
    Traces,
    Metrics,
    Both,
}

impl IgnoreMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "traces" => Ok(IgnoreMode::Traces),
            "metrics" => Ok(IgnoreMode::Metrics),
            "both" | "all" => Ok(IgnoreMode::Both),
            other => bail!("routes.ignore_mode: expected traces, metrics or both, got {other:?}"),
        }
    }
    pub fn skips_traces(self) -> bool {
        matches!(self, IgnoreMode::Traces | IgnoreMode::Both)
    }
    pub fn skips_metrics(self) -> bool {
        matches!(self, IgnoreMode::Metrics | IgnoreMode::Both)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// `{id}`, `:id` or `*` in the middle.
    Param,
    /// `*` at the end: any remainder.
    Rest,
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    segs: Vec<Seg>,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self> {
        if !text.starts_with('/') {
            bail!("route pattern {text:?} must start with '/'");
        }
        let parts: Vec<&str> = text.split('/').skip(1).collect();
        let last = parts.len().saturating_sub(1);
        let segs = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if *p == "*" && i == last {
                    Seg::Rest
                } else if *p == "*"
                    || p.starts_with(':')
                    || (p.starts_with('{') && p.ends_with('}'))
                {
                    Seg::Param
                } else {
                    Seg::Literal((*p).to_owned())
                }
            })
            .collect();
        Ok(Pattern {
            text: text.to_owned(),
            segs,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').skip(1);
        for seg in &self.segs {
            match seg {
                Seg::Rest => return true,
                Seg::Param => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
                Seg::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

#[derive(Debug, Clone)]
pub struct Router {
    patterns: Vec<Pattern>,
    ignored: Vec<Pattern>,
    pub ignore_mode: IgnoreMode,
    unmatched: Unmatched,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            patterns: Vec::new(),
            ignored: Vec::new(),
            ignore_mode: IgnoreMode::Both,
            unmatched: Unmatched::Heuristic,
        }
    }
}

/// Does a path segment look like an identifier rather than a name?
fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let hex = b.iter().all(|c| c.is_ascii_hexdigit());
    // numbers
    if digits == b.len() {
        return true;
    }
    // UUIDs (8-4-4-4-12)
    if b.len() == 36
        && seg.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && seg.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit())
    {
        return true;
    }
    // long hex (hashes, object ids) with at least one digit
    if hex && b.len() >= 16 && digits > 0 {
        return true;
    }
    // dates: 2024-01-31, 20240131T..., with mostly digits
    if b.len() >= 8
        && digits * 2 > b.len()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
    {
        return true;
    }
    // long mixed tokens (base64-ish ids): long and digit-heavy
    b.len() >= 20 && digits >= 4
}

/// `/users/42/orders/9f8e...` -> `/users/{id}/orders/{id}`.
pub fn heuristic_route(path: &str) -> String {
    if path.is_empty() || path == "/" {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        out.push('/');
        out.push_str(if is_id(seg) { "{id}" } else { seg });
    }
    out
}

impl Router {
    pub fn new(
        patterns: &[String],
        ignored: &[String],
        ignore_mode: IgnoreMode,
        unmatched: Unmatched,
    ) -> Result<Self> {
        Ok(Router {
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_>>()?,
            ignored: ignored
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_>>()?,
            ignore_mode,
            unmatched,
        })
    }

    pub fn is_ignored(&self, path: &str) -> bool {
        self.ignored.iter().any(|p| p.matches(path))
    }

    pub fn route(&self, path: &str) -> String {
        if let Some(p) = self.patterns.iter().find(|p| p.matches(path)) {
            return p.text.clone();
        }
        match self.unmatched {
            Unmatched::Heuristic => heuristic_route(path),
            Unmatched::Wildcard => "/*".to_owned(),
            Unmatched::Path => path.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(p: &[&str], i: &[&str]) -> Router {
        let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
        let i: Vec<String> = i.iter().map(|s| s.to_string()).collect();
        Router::new(&p, &i, IgnoreMode::Both, Unmatched::Heuristic).unwrap()
    }

    #[test]
    fn patterns_match_by_segment() {
        let r = router(&["/users/{id}", "/files/*", "/a/:x/b"], &["/health"]);
        assert_eq!(r.route("/users/42"), "/users/{id}");
        assert_eq!(r.route("/users/42/x"), "/users/{id}/x");
        assert_eq!(r.route("/files/a/b/c.txt"), "/files/*");
        assert_eq!(r.route("/a/zz/b"), "/a/:x/b");
        assert!(r.is_ignored("/health"));
        assert!(!r.is_ignored("/healthz"));
        assert!(Pattern::parse("users").is_err());
    }

    #[test]
    fn heuristic_replaces_ids() {
        assert_eq!(heuristic_route("/users/123/orders"), "/users/{id}/orders");
        assert_eq!(
            heuristic_route("/o/550e8400-e29b-41d4-a716-446655440000"),
            "/o/{id}"
        );
        assert_eq!(
            heuristic_route("/blob/9f86d081884c7d659a2feaa0c55ad015"),
            "/blob/{id}"
        );
        assert_eq!(heuristic_route("/day/2024-01-31"), "/day/{id}");
        assert_eq!(heuristic_route("/api/v1/items"), "/api/v1/items");
        assert_eq!(heuristic_route("/static/app.css"), "/static/app.css");
        assert_eq!(heuristic_route("/"), "/");
    }

    #[test]
    fn other_modes() {
        let w = Router::new(&[], &[], IgnoreMode::Traces, Unmatched::Wildcard).unwrap();
        assert_eq!(w.route("/x/1"), "/*");
        let p = Router::new(&[], &[], IgnoreMode::Metrics, Unmatched::Path).unwrap();
        assert_eq!(p.route("/x/1"), "/x/1");
        assert!(Unmatched::parse("nope").is_err());
        assert!(IgnoreMode::parse("all").unwrap().skips_traces());
    }
}
