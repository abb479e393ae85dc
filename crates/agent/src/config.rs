//! Configuration: YAML file (sections as in DESIGN.md), then environment
//! variables on top (standard OTEL_* names, ours prefixed AUTOTEL_). Unknown
//! keys are errors naming the key and line; Beyla-style keys are accepted as
//! aliases and logged once.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Inclusive TCP port ranges, from "80,443,8000-8999".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(pub Vec<(u16, u16)>);

impl PortSet {
    pub fn parse(text: &str) -> Result<Self> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u16 = lo
                .parse()
                .with_context(|| format!("invalid port {lo:?} in {text:?}"))?;
            let hi: u16 = hi
                .parse()
                .with_context(|| format!("invalid port {hi:?} in {text:?}"))?;
            if lo > hi {
                bail!("invalid port range {part:?}: start is above end");
            }
            ranges.push((lo, hi));
        }
        Ok(PortSet(ranges))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// YAML scalars users write either way: `open_port: 8080` or `"80,443"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Str(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub open_ports: Option<Scalar>,
    pub executable_name: Option<String>,
    pub pids: Option<Scalar>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    pub open_ports: Option<Scalar>,
    pub executable_name: Option<String>,
    pub pids: Option<Scalar>,
    pub services: Option<Vec<ServiceFile>>,
    pub skip_sdk_instrumented: Option<bool>,
    pub service_namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SamplerFile {
    pub name: Option<String>,
    pub arg: Option<Scalar>,
}

/// Beyla's `traces:` section (only the sampler is meaningful here).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BeylaTracesFile {
    pub sampler: Option<SamplerFile>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TracesExportFile {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub queue_size: Option<usize>,
    pub max_export_batch_size: Option<usize>,
    pub schedule_delay_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsExportFile {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub interval_ms: Option<u64>,
    pub temporality: Option<String>,
    pub cardinality_limit: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub exited_ttl_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    pub patterns: Option<Vec<String>>,
    pub ignored_patterns: Option<Vec<String>>,
    /// Beyla alias of ignored_patterns.
    pub ignored: Option<Vec<String>>,
    pub ignore_mode: Option<String>,
    pub unmatched: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PrometheusFile {
    pub port: Option<u16>,
    pub address: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CaptureFile {
    pub max_bytes: Option<u32>,
    /// The prefix on HTTP/2 connections, where one call carries the frames
    /// of many streams.
    pub http2_max_bytes: Option<u32>,
    pub ringbuf_bytes: Option<u32>,
    /// `sanitized` (default), `raw` or `off`: what db.query.text carries.
    pub db_query_text: Option<String>,
    /// `auto` (default), `socket` or `syscall`: where payload is captured.
    pub hooks: Option<String>,
}

/// TCP flow metrics: peers inside these networks are reported as the
/// network (e.g. `10.0.0.0/8`) to keep series counts in check.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    pub cidrs: Option<Vec<String>>,
    /// TCP flow metrics for every process on the host, not only the
    /// selected ones (spans stay with the selected processes).
    pub whole_host: Option<bool>,
}

/// `true`, `false` or a word (`auto`): YAML reads the first two as booleans.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Switch {
    Bool(bool),
    Str(String),
}

impl Switch {
    fn text(&self) -> String {
        match self {
            Switch::Bool(b) => b.to_string(),
            Switch::Str(s) => s.clone(),
        }
    }
}

/// Pod metadata from the API server.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    /// `auto` (default), `true` or `false`.
    pub enabled: Option<Switch>,
}

/// Beyla's `attributes.kubernetes.enable`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BeylaKubernetesFile {
    pub enable: Option<Switch>,
}

/// Beyla's `attributes:` section (only `kubernetes.enable` is meaningful here).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BeylaAttributesFile {
    pub kubernetes: Option<BeylaKubernetesFile>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub discovery: Option<DiscoveryFile>,
    pub otel_traces_export: Option<TracesExportFile>,
    pub otel_metrics_export: Option<MetricsExportFile>,
    pub routes: Option<RoutesFile>,
    pub prometheus_export: Option<PrometheusFile>,
    pub capture: Option<CaptureFile>,
    pub network: Option<NetworkFile>,
    pub kubernetes: Option<KubernetesFile>,
    pub sampler: Option<SamplerFile>,
    pub same_host_linking: Option<bool>,
    pub context_propagation: Option<String>,
    pub context_propagation_cgroup: Option<PathBuf>,
    pub print_traces: Option<bool>,
    pub log_level: Option<String>,
    // Beyla-compatible aliases (see DESIGN.md, "Compatibility").
    pub open_port: Option<Scalar>,
    pub executable_name: Option<String>,
    pub pid: Option<Scalar>,
    pub prometheus: Option<PrometheusFile>,
    pub traces: Option<BeylaTracesFile>,
    pub attributes: Option<BeylaAttributesFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Where and how one OTLP signal is sent.
#[derive(Debug, Clone)]
pub struct OtlpTarget {
    /// None: this signal is not exported over OTLP.
    pub endpoint: Option<String>,
    /// True when the endpoint is signal-specific (used as is, no /v1/<signal> added).
    pub endpoint_is_full: bool,
    pub protocol: OtlpProtocol,
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct TracesExport {
    pub otlp: OtlpTarget,
    pub queue_size: usize,
    pub max_batch: usize,
    pub schedule_delay_ms: u64,
}

#[derive(Debug, Clone)]
pub struct MetricsExport {
    pub otlp: OtlpTarget,
    pub interval_ms: u64,
    pub temporality: crate::metrics::otlp::Temporality,
    pub cardinality_limit: usize,
    /// How long the series (and resource) of an exited process are kept.
    pub exited_ttl_ms: u64,
}

/// A named group of processes: selects them and names their service.
#[derive(Debug, Clone)]
pub struct ServiceRule {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub open_ports: PortSet,
    pub executable_name: Option<regex::Regex>,
    pub pids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Discovery {
    pub open_ports: PortSet,
    pub executable_name: Option<regex::Regex>,
    pub pids: Vec<u32>,
    pub services: Vec<ServiceRule>,
    pub skip_sdk_instrumented: bool,
    pub service_namespace: Option<String>,
}

impl Discovery {
    /// With no selector, every process that listens on a TCP port is selected.
    pub fn has_selector(&self) -> bool {
        !self.open_ports.is_empty()
            || self.executable_name.is_some()
            || !self.pids.is_empty()
            || !self.services.is_empty()
    }

    /// Executable name is the criterion that decides at exec time (ports
    /// are only known once a process listens).
    pub fn selects_on_exec(&self) -> bool {
        (self.executable_name.is_some() && self.open_ports.is_empty())
            || self
                .services
                .iter()
                .any(|s| s.executable_name.is_some() && s.open_ports.is_empty())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub discovery: Discovery,
    pub traces: TracesExport,
    pub metrics: MetricsExport,
    pub router: crate::pipeline::routes::Router,
    pub sampler: crate::pipeline::sampler::Sampler,
    pub same_host_linking: bool,
    /// Some(cgroup v2 directory): trace context travels in TCP header
    /// options of connections made by processes under it.
    pub tcp_option_cgroup: Option<PathBuf>,
    pub prometheus_port: u16,
    pub prometheus_address: String,
    pub prometheus_path: String,
    pub capture_max_bytes: u32,
    pub capture_http2_max_bytes: u32,
    pub capture_hooks: crate::tracer::CaptureHooks,
    /// AUTOTEL_GO_TLS_READ_PROBE=returns: Go's TLS Read is read at its RET
    /// instructions even where its copy call was found (tracer/tls.rs).
    pub go_tls_read_at_returns: bool,
    /// AUTOTEL_OPENSSL_PROBE=exported: OpenSSL probes on SSL_read/SSL_write
    /// even where the internal functions they wrap were found (tracer/tls.rs).
    pub openssl_at_exported: bool,
    pub ringbuf_bytes: u32,
    pub db_query_text: crate::pipeline::db_span::QueryTextMode,
    pub peers: crate::pipeline::network::PeerGrouping,
    pub network_whole_host: bool,
    pub print_traces: bool,
    /// AUTOTEL_BENCH_CAPTURE_ONLY: data records are read from the ring and
    /// dropped (no parsing, spans or RED metrics). A measuring aid: the
    /// benchmark's capture-only rounds show what the kernel side and the
    /// ring reading cost on their own.
    pub capture_only: bool,
    pub log_level: String,
    /// Pod metadata from the API server (`kubernetes.enabled`).
    pub kubernetes: crate::discovery::kubernetes::Mode,
    /// This node's name: the pods watched are the ones scheduled here.
    pub node_name: String,
    /// Notes to log once logging is up (e.g. aliases used).
    pub notes: Vec<String>,
}

/// A configuration error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A variable naming one of two probe sites: false for `default` (or
/// unset), true for `other`.
fn probe_site_choice(var: &str, v: Option<&str>, default: &str, other: &str) -> Result<bool> {
    match v {
        None => Ok(false),
        Some(v) if v == default => Ok(false),
        Some(v) if v == other => Ok(true),
        Some(v) => anyhow::bail!("{var}: {v:?} is not {default} or {other}"),
    }
}

/// AUTOTEL_GO_TLS_READ_PROBE: `copy` (the default) or `returns`.
fn go_tls_read_at_returns(v: Option<&str>) -> Result<bool> {
    probe_site_choice("AUTOTEL_GO_TLS_READ_PROBE", v, "copy", "returns")
}

/// AUTOTEL_OPENSSL_PROBE: `internal` (the default) or `exported`.
fn openssl_at_exported(v: Option<&str>) -> Result<bool> {
    probe_site_choice("AUTOTEL_OPENSSL_PROBE", v, "internal", "exported")
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_pids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("invalid pid {p:?}"))
        })
        .collect()
}

/// `context_propagation: tcp_option | off` (default off: it changes what
/// goes on the wire, so it is asked for). The cgroup defaults to the cgroup
/// v2 root, i.e. every process of the host.
fn context_propagation(mode: Option<String>, cgroup: Option<PathBuf>) -> Result<Option<PathBuf>> {
    let mode = mode.unwrap_or_else(|| "off".into());
    match mode.trim() {
        "off" | "disabled" | "none" => Ok(None),
        "tcp_option" => match cgroup {
            Some(dir) if dir.is_dir() => Ok(Some(dir)),
            Some(dir) => bail!(
                "context_propagation_cgroup: {} is not a directory",
                dir.display()
            ),
            None => cgroup2_root().map(Some).context(
                "context_propagation: tcp_option needs cgroup v2, and no cgroup2 mount is in \
                 /proc/mounts (mount -t cgroup2 none /sys/fs/cgroup/unified)",
            ),
        },
        other => bail!("context_propagation: expected tcp_option or off, got {other:?}"),
    }
}

/// Where cgroup v2 is mounted (its root cgroup).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let dir = f.nth(1)?;
        (f.next()? == "cgroup2").then(|| PathBuf::from(dir))
    })
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => bail!("{name}: expected true or false, got {v:?}"),
    }
}

/// `k1=v1,k2=v2` with percent-decoding, as OTEL_EXPORTER_OTLP_HEADERS and
/// OTEL_RESOURCE_ATTRIBUTES are specified.
pub fn parse_kv_list(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k.trim()), percent_decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_protocol(text: &str) -> Result<OtlpProtocol> {
    match text.trim() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => bail!("OTLP protocol http/json is not supported; use grpc or http/protobuf"),
        other => bail!("unknown OTLP protocol {other:?}; use grpc or http/protobuf"),
    }
}

/// Endpoint, protocol and headers of one signal: OTEL_EXPORTER_OTLP_<SIGNAL>_*
/// wins over OTEL_EXPORTER_OTLP_*, which wins over the file.
fn otlp_target(
    signal: &str,
    file_endpoint: Option<String>,
    file_protocol: Option<String>,
    file_headers: Option<BTreeMap<String, String>>,
    file_timeout_ms: Option<u64>,
) -> Result<OtlpTarget> {
    let mut endpoint = file_endpoint;
    let mut endpoint_is_full = false;
    if let Some(v) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
        endpoint = Some(v);
    }
    if let Some(v) = env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")) {
        endpoint = Some(v);
        endpoint_is_full = true;
    }
    let protocol_text = env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .or(file_protocol);
    let protocol = match protocol_text {
        Some(p) => parse_protocol(&p)?,
        // Port 4318 is the OTLP/HTTP convention; everything else defaults to gRPC.
        None if endpoint
            .as_deref()
            .is_some_and(|e| e.trim_end_matches('/').ends_with(":4318")) =>
        {
            OtlpProtocol::HttpProtobuf
        }
        None => OtlpProtocol::Grpc,
    };
    let mut headers: Vec<(String, String)> = file_headers.unwrap_or_default().into_iter().collect();
    if let Some(v) = env("OTEL_EXPORTER_OTLP_HEADERS") {
        headers.extend(parse_kv_list(&v));
    }
    if let Some(v) = env(&format!("OTEL_EXPORTER_OTLP_{signal}_HEADERS")) {
        headers.extend(parse_kv_list(&v));
    }
    let timeout_ms = match env(&format!("OTEL_EXPORTER_OTLP_{signal}_TIMEOUT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
    {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .with_context(|| format!("OTLP timeout: expected milliseconds, got {v:?}"))?,
        None => file_timeout_ms.unwrap_or(10_000),
    };
    Ok(OtlpTarget {
        endpoint,
        endpoint_is_full,
        protocol,
        headers,
        timeout_ms,
    })
}

impl Config {
    /// Reads the file (if any), then applies the environment.
    pub fn load(path: Option<&Path>) -> std::result::Result<Config, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", p.display()))
                })?;
                parse_file(&text)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", p.display())))?
            }
            None => ConfigFile::default(),
        };
        Self::from_file_and_env(file).map_err(|e| ConfigError(format!("{e:#}")))
    }

    fn from_file_and_env(file: ConfigFile) -> Result<Config> {
        let mut notes = Vec::new();
        let disc = file.discovery.clone().unwrap_or_default();
        let traces_file = file.otel_traces_export.clone().unwrap_or_default();

        // Selection: our key, then the Beyla alias, then the environment.
        // Each value keeps where it came from, so an error names the
        // variable or key the user has to fix.
        let mut open_ports = disc
            .open_ports
            .as_ref()
            .map(|v| (v.text(), "discovery.open_ports"));
        if let Some(p) = &file.open_port {
            notes.push("config key `open_port` is a Beyla alias of `discovery.open_ports`".into());
            open_ports = Some((p.text(), "open_port"));
        }
        let mut exe = disc
            .executable_name
            .clone()
            .map(|v| (v, "discovery.executable_name"));
        if let Some(e) = &file.executable_name {
            notes.push(
                "config key `executable_name` is a Beyla alias of `discovery.executable_name`"
                    .into(),
            );
            exe = Some((e.clone(), "executable_name"));
        }
        let mut pids = disc.pids.as_ref().map(|v| (v.text(), "discovery.pids"));
        if let Some(p) = &file.pid {
            notes.push("config key `pid` is a Beyla alias of `discovery.pids`".into());
            pids = Some((p.text(), "pid"));
        }
        if let Some(v) = env("BEYLA_OPEN_PORT") {
            notes.push("environment BEYLA_OPEN_PORT is an alias of AUTOTEL_OPEN_PORTS".into());
            open_ports = Some((v, "BEYLA_OPEN_PORT"));
        }
        for (var, slot) in [
            ("AUTOTEL_OPEN_PORTS", &mut open_ports),
            ("AUTOTEL_PIDS", &mut pids),
            ("AUTOTEL_EXECUTABLE_NAME", &mut exe),
        ] {
            if let Some(v) = env(var) {
                *slot = Some((v, var));
            }
        }
        let regex = |e: String| {
            regex::Regex::new(&e).with_context(|| format!("invalid executable_name regex {e:?}"))
        };
        let services = disc
            .services
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|s| -> Result<ServiceRule> {
                let rule = ServiceRule {
                    name: s.name,
                    namespace: s.namespace,
                    open_ports: PortSet::parse(
                        &s.open_ports.as_ref().map(Scalar::text).unwrap_or_default(),
                    )?,
                    executable_name: s.executable_name.map(regex).transpose()?,
                    pids: parse_pids(&s.pids.as_ref().map(Scalar::text).unwrap_or_default())?,
                };
                if rule.open_ports.is_empty()
                    && rule.executable_name.is_none()
                    && rule.pids.is_empty()
                {
                    bail!(
                        "discovery.services: each entry needs open_ports, executable_name or pids"
                    );
                }
                Ok(rule)
            })
            .collect::<Result<Vec<_>>>()?;
        let skip_sdk = match env("AUTOTEL_SKIP_SDK_INSTRUMENTED") {
            Some(v) => parse_bool("AUTOTEL_SKIP_SDK_INSTRUMENTED", &v)?,
            None => disc.skip_sdk_instrumented.unwrap_or(false),
        };
        let discovery = Discovery {
            open_ports: match open_ports {
                Some((v, from)) => PortSet::parse(&v).context(from)?,
                None => PortSet::default(),
            },
            executable_name: exe.map(|(v, from)| regex(v).context(from)).transpose()?,
            pids: match pids {
                Some((v, from)) => parse_pids(&v).context(from)?,
                None => Vec::new(),
            },
            services,
            skip_sdk_instrumented: skip_sdk,
            service_namespace: disc.service_namespace.clone(),
        };

        // Sampler: environment, then our section, then Beyla's traces.sampler.
        let mut sampler_file = file.sampler.clone();
        if let Some(t) = file.traces.as_ref().and_then(|t| t.sampler.clone()) {
            notes.push("config key `traces.sampler` is a Beyla alias of `sampler`".into());
            sampler_file = sampler_file.or(Some(t));
        }
        let sampler_name =
            env("OTEL_TRACES_SAMPLER").or(sampler_file.as_ref().and_then(|s| s.name.clone()));
        let sampler_arg =
            env("OTEL_TRACES_SAMPLER_ARG").or(sampler_file.and_then(|s| s.arg.map(|a| a.text())));
        let sampler = match sampler_name {
            Some(n) => crate::pipeline::sampler::Sampler::parse(&n, sampler_arg.as_deref())?,
            None => crate::pipeline::sampler::Sampler::default(),
        };
        let same_host_linking = match env("AUTOTEL_SAME_HOST_LINKING") {
            Some(v) => parse_bool("AUTOTEL_SAME_HOST_LINKING", &v)?,
            None => file.same_host_linking.unwrap_or(true),
        };

        let tcp_option_cgroup = context_propagation(
            env("AUTOTEL_CONTEXT_PROPAGATION").or(file.context_propagation.clone()),
            env("AUTOTEL_CONTEXT_PROPAGATION_CGROUP")
                .map(PathBuf::from)
                .or(file.context_propagation_cgroup.clone()),
        )?;

        let env_u64 = |name: &str| -> Result<Option<u64>> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .with_context(|| format!("{name}: expected a number, got {v:?}"))
                })
                .transpose()
        };
        let traces = TracesExport {
            otlp: otlp_target(
                "TRACES",
                traces_file.endpoint.clone(),
                traces_file.protocol.clone(),
                traces_file.headers.clone(),
                traces_file.timeout_ms,
            )?,
            queue_size: env_u64("OTEL_BSP_MAX_QUEUE_SIZE")?
                .map(|v| v as usize)
                .or(traces_file.queue_size)
                .unwrap_or(16384)
                .max(1),
            max_batch: env_u64("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
                .map(|v| v as usize)
                .or(traces_file.max_export_batch_size)
                .unwrap_or(512)
                .max(1),
            schedule_delay_ms: env_u64("OTEL_BSP_SCHEDULE_DELAY")?
                .or(traces_file.schedule_delay_ms)
                .unwrap_or(1000),
        };
        let metrics_file = file.otel_metrics_export.clone().unwrap_or_default();
        let temporality_text = env("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
            .or(metrics_file.temporality.clone())
            .unwrap_or_else(|| "cumulative".into());
        let metrics = MetricsExport {
            otlp: otlp_target(
                "METRICS",
                metrics_file.endpoint.clone(),
                metrics_file.protocol.clone(),
                metrics_file.headers.clone(),
                metrics_file.timeout_ms,
            )?,
            interval_ms: env_u64("OTEL_METRIC_EXPORT_INTERVAL")?
                .or(metrics_file.interval_ms)
                .unwrap_or(60_000)
                .max(100),
            temporality: crate::metrics::otlp::Temporality::parse(&temporality_text)?,
            cardinality_limit: env_u64("AUTOTEL_METRICS_CARDINALITY_LIMIT")?
                .map(|v| v as usize)
                .or(metrics_file.cardinality_limit)
                .unwrap_or(2000),
            // Two OTLP exports and several scrapes at the default intervals
            // still see a process's last values; then its series go, so
            // short-lived processes do not grow the store without bound.
            exited_ttl_ms: env_u64("AUTOTEL_METRICS_EXITED_TTL_MS")?
                .or(metrics_file.exited_ttl_ms)
                .unwrap_or(120_000)
                .max(1000),
        };
        let routes = file.routes.clone().unwrap_or_default();
        if routes.ignored.is_some() {
            notes.push(
                "config key `routes.ignored` is a Beyla alias of `routes.ignored_patterns`".into(),
            );
        }
        let router = crate::pipeline::routes::Router::new(
            &routes.patterns.unwrap_or_default(),
            &routes
                .ignored_patterns
                .or(routes.ignored)
                .unwrap_or_default(),
            crate::pipeline::routes::IgnoreMode::parse(
                routes.ignore_mode.as_deref().unwrap_or("both"),
            )?,
            crate::pipeline::routes::Unmatched::parse(
                routes.unmatched.as_deref().unwrap_or("heuristic"),
            )?,
        )?;

        let mut prom = file.prometheus_export.clone().unwrap_or_default();
        if let Some(alias) = &file.prometheus {
            notes
                .push("config section `prometheus` is a Beyla alias of `prometheus_export`".into());
            prom.port = alias.port.or(prom.port);
            prom.path = alias.path.clone().or(prom.path);
            prom.address = alias.address.clone().or(prom.address);
        }
        let prometheus_port = match env("AUTOTEL_PROMETHEUS_PORT") {
            Some(v) => v
                .trim()
                .parse::<u16>()
                .with_context(|| format!("AUTOTEL_PROMETHEUS_PORT: invalid port {v:?}"))?,
            None => prom.port.unwrap_or(9400),
        };
        let capture = file.capture.clone().unwrap_or_default();
        let capture_max_bytes = capture.max_bytes.unwrap_or(4096);
        let capture_http2_max_bytes = capture
            .http2_max_bytes
            .unwrap_or(crate::tracer::abi::MAX_CAPTURE);
        for (key, v) in [
            ("max_bytes", capture_max_bytes),
            ("http2_max_bytes", capture_http2_max_bytes),
        ] {
            if v == 0 || v > crate::tracer::abi::MAX_CAPTURE {
                bail!(
                    "capture.{key} must be between 1 and {}, got {v}",
                    crate::tracer::abi::MAX_CAPTURE
                );
            }
        }
        let capture_hooks = match env("AUTOTEL_CAPTURE_HOOKS") {
            Some(v) => crate::tracer::CaptureHooks::parse(&v).context("AUTOTEL_CAPTURE_HOOKS")?,
            None => match &capture.hooks {
                Some(v) => crate::tracer::CaptureHooks::parse(v).context("capture.hooks")?,
                None => Default::default(),
            },
        };
        let go_tls_read_at_returns =
            go_tls_read_at_returns(env("AUTOTEL_GO_TLS_READ_PROBE").as_deref())?;
        let openssl_at_exported = openssl_at_exported(env("AUTOTEL_OPENSSL_PROBE").as_deref())?;
        let db_query_text = match env("AUTOTEL_DB_QUERY_TEXT") {
            Some(v) => crate::pipeline::db_span::QueryTextMode::parse(&v)
                .context("AUTOTEL_DB_QUERY_TEXT")?,
            None => match &capture.db_query_text {
                Some(v) => crate::pipeline::db_span::QueryTextMode::parse(v)
                    .context("capture.db_query_text")?,
                None => Default::default(),
            },
        };
        let peers = match env("AUTOTEL_NETWORK_CIDRS") {
            Some(v) => crate::pipeline::network::PeerGrouping::parse(
                &v.split(',').map(str::to_owned).collect::<Vec<_>>(),
            )
            .context("AUTOTEL_NETWORK_CIDRS")?,
            None => crate::pipeline::network::PeerGrouping::parse(
                &file
                    .network
                    .as_ref()
                    .and_then(|n| n.cidrs.clone())
                    .unwrap_or_default(),
            )
            .context("network.cidrs")?,
        };
        let network_whole_host = match env("AUTOTEL_NETWORK_WHOLE_HOST") {
            Some(v) => parse_bool("AUTOTEL_NETWORK_WHOLE_HOST", &v)?,
            None => file
                .network
                .as_ref()
                .and_then(|n| n.whole_host)
                .unwrap_or(false),
        };
        let print_traces = match env("AUTOTEL_PRINT_TRACES") {
            Some(v) => parse_bool("AUTOTEL_PRINT_TRACES", &v)?,
            None => file.print_traces.unwrap_or(false),
        };
        let (kubernetes, node_name) = kubernetes_settings(&file, &mut notes)?;
        Ok(Config {
            discovery,
            traces,
            metrics,
            router,
            sampler,
            same_host_linking,
            tcp_option_cgroup,
            prometheus_port,
            prometheus_address: env("AUTOTEL_PROMETHEUS_ADDRESS")
                .or(prom.address)
                .unwrap_or_else(|| "127.0.0.1".into()),
            prometheus_path: prom.path.unwrap_or_else(|| "/metrics".into()),
            capture_max_bytes,
            capture_http2_max_bytes,
            capture_hooks,
            go_tls_read_at_returns,
            openssl_at_exported,
            db_query_text,
            peers,
            network_whole_host,
            ringbuf_bytes: capture
                .ringbuf_bytes
                .unwrap_or(16 << 20)
                .clamp(1 << 16, 1 << 30),
            print_traces,
            capture_only: match env("AUTOTEL_BENCH_CAPTURE_ONLY") {
                Some(v) => parse_bool("AUTOTEL_BENCH_CAPTURE_ONLY", &v)?,
                None => false,
            },
            log_level: env("AUTOTEL_LOG_LEVEL")
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            kubernetes,
            node_name,
            notes,
        })
    }
}

/// `kubernetes.enabled` (env AUTOTEL_KUBERNETES; Beyla's
/// `attributes.kubernetes.enable` / BEYLA_KUBE_METADATA_ENABLE as aliases)
/// and the node name: AUTOTEL_NODE_NAME, NODE_NAME, then the hostname.
fn kubernetes_settings(
    file: &ConfigFile,
    notes: &mut Vec<String>,
) -> Result<(crate::discovery::kubernetes::Mode, String)> {
    use crate::discovery::kubernetes::Mode;
    let mut mode = file
        .kubernetes
        .as_ref()
        .and_then(|k| k.enabled.as_ref())
        .map(|v| (v.text(), "kubernetes.enabled"));
    if let Some(v) = file
        .attributes
        .as_ref()
        .and_then(|a| a.kubernetes.as_ref())
        .and_then(|k| k.enable.as_ref())
    {
        notes.push(
            "config key `attributes.kubernetes.enable` is a Beyla alias of `kubernetes.enabled`"
                .into(),
        );
        mode = mode.or(Some((v.text(), "attributes.kubernetes.enable")));
    }
    if let Some(v) = env("BEYLA_KUBE_METADATA_ENABLE") {
        notes.push(
            "environment BEYLA_KUBE_METADATA_ENABLE is an alias of AUTOTEL_KUBERNETES".into(),
        );
        mode = Some((v, "BEYLA_KUBE_METADATA_ENABLE"));
    }
    if let Some(v) = env("AUTOTEL_KUBERNETES") {
        mode = Some((v, "AUTOTEL_KUBERNETES"));
    }
    let mode = match mode {
        // Beyla says `autodetect` for auto.
        Some((v, from)) => {
            match Mode::parse(&v).or_else(|| (v.trim() == "autodetect").then_some(Mode::Auto)) {
                Some(m) => m,
                None => bail!("{from}: expected auto, true or false, got {v:?}"),
            }
        }
        None => Mode::Auto,
    };
    let node = env("AUTOTEL_NODE_NAME")
        .or_else(|| env("NODE_NAME"))
        .map(|n| n.trim().to_owned())
        .unwrap_or_else(crate::discovery::resource::host_name);
    Ok((mode, node))
}

/// Strict YAML parsing: serde_yaml's errors name the unknown key and its line.
pub fn parse_file(text: &str) -> Result<ConfigFile> {
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    serde_yaml::from_str::<ConfigFile>(text).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_sets() {
        let p = PortSet::parse("80, 443,8000-8999").unwrap();
        assert!(p.contains(80) && p.contains(8500) && !p.contains(9000));
        assert!(PortSet::parse("9-1").is_err());
        assert!(PortSet::parse("http").is_err());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse_file("discovery:\n  open_portz: 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("open_portz") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn network_whole_host_key() {
        let f = parse_file("network:\n  whole_host: true\n").unwrap();
        assert_eq!(f.network.unwrap().whole_host, Some(true));
        let err = parse_file("network:\n  whole_hosts: true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("whole_hosts"), "{err}");
    }

    #[test]
    fn beyla_config_from_the_article_parses() {
        let f =
            parse_file("open_port: 8080\notel_traces_export:\n  endpoint: http://localhost:4317\n")
                .unwrap();
        assert_eq!(f.open_port.unwrap().text(), "8080");
        assert_eq!(
            f.otel_traces_export.unwrap().endpoint.as_deref(),
            Some("http://localhost:4317")
        );
    }

    #[test]
    fn kv_lists_are_percent_decoded() {
        assert_eq!(
            parse_kv_list("api-key=a%20b,x=1"),
            vec![("api-key".into(), "a b".into()), ("x".into(), "1".into())]
        );
    }

    #[test]
    fn kubernetes_section() {
        use crate::discovery::kubernetes::Mode;
        let mode = |yaml: &str| {
            let f = parse_file(yaml).unwrap();
            kubernetes_settings(&f, &mut Vec::new()).map(|(m, _)| m)
        };
        // Environment-free keys only (AUTOTEL_KUBERNETES is read here too).
        if env("AUTOTEL_KUBERNETES").is_none() && env("BEYLA_KUBE_METADATA_ENABLE").is_none() {
            assert_eq!(mode("log_level: info\n").unwrap(), Mode::Auto);
            assert_eq!(mode("kubernetes:\n  enabled: auto\n").unwrap(), Mode::Auto);
            assert_eq!(mode("kubernetes:\n  enabled: true\n").unwrap(), Mode::On);
            assert_eq!(mode("kubernetes:\n  enabled: false\n").unwrap(), Mode::Off);
            assert_eq!(
                mode("attributes:\n  kubernetes:\n    enable: autodetect\n").unwrap(),
                Mode::Auto
            );
            let err = mode("kubernetes:\n  enabled: sometimes\n").unwrap_err();
            assert!(err.to_string().contains("kubernetes.enabled"), "{err}");
        }
        let err = parse_file("kubernetes:\n  enable: true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enable") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn tls_probe_sites() {
        assert!(!go_tls_read_at_returns(None).unwrap());
        assert!(!go_tls_read_at_returns(Some("copy")).unwrap());
        assert!(go_tls_read_at_returns(Some("returns")).unwrap());
        let err = go_tls_read_at_returns(Some("ret")).unwrap_err();
        assert!(err.to_string().contains("not copy or returns"), "{err}");
        assert!(!openssl_at_exported(None).unwrap());
        assert!(!openssl_at_exported(Some("internal")).unwrap());
        assert!(openssl_at_exported(Some("exported")).unwrap());
        let err = openssl_at_exported(Some("SSL_read")).unwrap_err();
        assert!(
            err.to_string()
                .contains("AUTOTEL_OPENSSL_PROBE: \"SSL_read\" is not internal or exported"),
            "{err}"
        );
    }

    #[test]
    fn context_propagation_modes() {
        assert_eq!(context_propagation(None, None).unwrap(), None);
        assert_eq!(context_propagation(Some("off".into()), None).unwrap(), None);
        let dir = std::env::temp_dir();
        assert_eq!(
            context_propagation(Some("tcp_option".into()), Some(dir.clone())).unwrap(),
            Some(dir)
        );
        let err = context_propagation(Some("tcp-options".into()), None).unwrap_err();
        assert!(err.to_string().contains("tcp_option or off"), "{err}");
        let err = context_propagation(
            Some("tcp_option".into()),
            Some(PathBuf::from("/no/such/cgroup")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let f = parse_file("context_propagation: tcp_option\n").unwrap();
        assert_eq!(f.context_propagation.as_deref(), Some("tcp_option"));
    }
}
