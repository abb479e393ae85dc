//! The RED store as Prometheus series, following the OTel -> Prometheus
//! compatibility rules: dots become underscores, the unit is a suffix
//! (`_seconds`, `_bytes`), resources become `job`/`instance` labels plus one
//! `target_info` series carrying the other resource attributes.

use super::{Metric, SharedStore};
use autotel_model::{AttrValue, Resource};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

#[derive(Debug)]
pub struct RedCollector {
    pub store: SharedStore,
}

/// `[a-zA-Z_][a-zA-Z0-9_]*` label names.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn resource_attr(r: &Resource, key: &str) -> Option<String> {
    r.attributes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.to_string())
}

/// `job` = service.namespace/service.name, `instance` = service.instance.id.
fn job_instance(r: &Resource) -> Vec<(String, String)> {
    let job = match resource_attr(r, "service.namespace") {
        Some(ns) => format!("{ns}/{}", r.service_name),
        None => r.service_name.clone(),
    };
    vec![
        ("job".into(), job),
        (
            "instance".into(),
            resource_attr(r, "service.instance.id").unwrap_or_else(|| r.pid.to_string()),
        ),
    ]
}

fn labels(r: &Resource, attrs: &[(&'static str, AttrValue)]) -> Vec<(String, String)> {
    let mut l = job_instance(r);
    l.extend(attrs.iter().map(|(k, v)| (sanitize(k), v.to_string())));
    l
}

impl Collector for RedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        // target_info: one series per process with its resource attributes.
        let resources = store.resources();
        if !resources.is_empty() {
            let mut e = encoder.encode_descriptor(
                "target_info",
                "Target metadata",
                None,
                MetricType::Gauge,
            )?;
            for r in &resources {
                let mut l = job_instance(r);
                for (k, v) in &r.attributes {
                    if k != "service.name" && k != "service.instance.id" && k != "service.namespace"
                    {
                        l.push((sanitize(k), v.to_string()));
                    }
                }
                prometheus_client::metrics::gauge::ConstGauge::new(1i64)
                    .encode(e.encode_family(&l)?)?;
            }
        }
        for metric in Metric::ALL {
            let def = metric.def();
            if store.series_count(metric) == 0 {
                continue;
            }
            let name = sanitize(def.name);
            // The unit becomes a suffix, unless the name already ends with
            // it or it is an annotation like {connection}.
            let unit = match def.unit {
                "s" => Some(Unit::Seconds),
                "By" if !name.ends_with("bytes") => Some(Unit::Bytes),
                _ => None,
            };
            if def.counter {
                let mut e = encoder.encode_descriptor(
                    &name,
                    def.description,
                    unit.as_ref(),
                    MetricType::Counter,
                )?;
                for s in store.each(metric) {
                    let l = labels(&s.resource, &s.attrs);
                    prometheus_client::metrics::counter::ConstCounter::new(s.sum as u64)
                        .encode(e.encode_family(&l)?)?;
                }
                continue;
            }
            let mut e = encoder.encode_descriptor(
                &name,
                def.description,
                unit.as_ref(),
                MetricType::Histogram,
            )?;
            for s in store.each(metric) {
                let l = labels(&s.resource, &s.attrs);
                let mut buckets: Vec<(f64, u64)> = def
                    .buckets
                    .iter()
                    .copied()
                    .zip(s.counts.iter().copied())
                    .collect();
                buckets.push((f64::INFINITY, *s.counts.last().unwrap_or(&0)));
                e.encode_family(&l)?
                    .encode_histogram::<Vec<(String, String)>>(s.sum, s.count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(sanitize("http.route"), "http_route");
        assert_eq!(sanitize("1x"), "_1x");
    }
}
