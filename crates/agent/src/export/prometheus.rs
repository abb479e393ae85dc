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
                    let ct = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                    )
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
