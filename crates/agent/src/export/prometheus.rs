//! The Prometheus scrape endpoint (text exposition from prometheus-client).

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use std::sync::Arc;

pub struct PromServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PromServer {
    /// Binds now (so a taken port is a startup error) and serves on a thread.
    /// `before_scrape` refreshes values that are read on demand.
    pub fn start(
        address: &str,
        port: u16,
        path: &str,
        registry: Arc<Registry>,
        before_scrape: Box<dyn Fn() + Send>,
    ) -> Result<Self> {
        let addr = format!("{address}:{port}");
        let server = Arc::new(
            tiny_http::Server::http(&addr)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("cannot serve Prometheus metrics on {addr} (set AUTOTEL_PROMETHEUS_PORT, 0 = off)"))?,
        );
        tracing::info!("Prometheus metrics on http://{addr}{path}");
        let s = server.clone();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("prometheus".into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    let url_path = req.url().split('?').next().unwrap_or("").to_owned();
                    if url_path != path {
                        let _ = req.respond(
                            tiny_http::Response::from_string("not found\n").with_status_code(404),
                        );
                        continue;
                    }
                    before_scrape();
                    let mut body = String::new();
                    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry)
                    {
                        let _ = req.respond(
                            tiny_http::Response::from_string(format!("{e}\n"))
                                .with_status_code(500),
                        );
                        continue;
                    }
                    // Prometheus asks for OpenMetrics; other clients (curl,
                    // promtool, older scrapers) get the classic text format.
                    let wants_openmetrics = req.headers().iter().any(|h| {
                        h.field.equiv("Accept")
                            && h.value.as_str().contains("application/openmetrics-text")
                    });
                    let (body, ct): (String, &[u8]) = if wants_openmetrics {
                        (
                            body,
                            b"application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                    } else {
                        (
                            openmetrics_to_text(&body),
                            b"text/plain; version=0.0.4; charset=utf-8",
                        )
                    };
                    let ct = tiny_http::Header::from_bytes(&b"Content-Type"[..], ct)
                        .expect("static header");
                    let _ = req.respond(tiny_http::Response::from_string(body).with_header(ct));
                }
            })?;
        Ok(Self {
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// OpenMetrics text -> Prometheus text format 0.0.4: counter families are
/// named with their `_total` suffix in HELP/TYPE, UNIT and EOF lines go.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_owned());
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}").trim_end().to_owned())
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_in_metadata() {
        let om = "# HELP a_b Help.\n# TYPE a_b counter\na_b_total 1\n# HELP h Hist.\n# TYPE h histogram\n# UNIT h seconds\nh_count 0\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_b_total Help.\n# TYPE a_b_total counter\na_b_total 1\n# HELP h Hist.\n# TYPE h histogram\nh_count 0\n"
        );
    }
}
