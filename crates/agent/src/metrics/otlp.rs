//! The RED store as OTLP metrics, cumulative or delta. Deltas are the
//! difference to what the previous export reported, so the store itself
//! stays cumulative (Prometheus reads the same store).

use super::{key_of, Metric, Store};
use crate::export::otlp::{key_value, scope};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint,
    Metric as OtlpMetric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

impl Temporality {
    /// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE values. `lowmemory`
    /// means delta for histograms, which is all we have.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cumulative" => Ok(Temporality::Cumulative),
            "delta" | "lowmemory" => Ok(Temporality::Delta),
            other => anyhow::bail!(
                "metrics temporality: expected cumulative, delta or lowmemory, got {other:?}"
            ),
        }
    }
}

type SeriesId = (Metric, u32, String);

/// What the last delta export reported, per series.
#[derive(Default)]
pub struct DeltaState {
    last: HashMap<SeriesId, (Vec<u64>, f64, u64)>,
    last_export_ns: u64,
}

pub fn to_request(
    store: &Store,
    temporality: Temporality,
    delta: &mut DeltaState,
    now_ns: u64,
) -> ExportMetricsServiceRequest {
    // pid -> (resource attributes, metric -> data points)
    let mut by_resource: HashMap<u32, (Vec<_>, HashMap<Metric, Vec<HistogramDataPoint>>)> =
        HashMap::new();
    for metric in Metric::ALL {
        let def = metric.def();
        for s in store.each(metric) {
            let (counts, sum, count, start) = match temporality {
                Temporality::Cumulative => (s.counts.clone(), s.sum, s.count, s.start_unix_ns),
                Temporality::Delta => {
                    let id = (metric, s.resource.pid, key_of(&s.attrs));
                    let prev = delta.last.get(&id);
                    let counts: Vec<u64> = match prev {
                        Some((c, _, _)) => s.counts.iter().zip(c).map(|(a, b)| a - b).collect(),
                        None => s.counts.clone(),
                    };
                    let sum = s.sum - prev.map_or(0.0, |p| p.1);
                    let count = s.count - prev.map_or(0, |p| p.2);
                    let start = if prev.is_some() {
                        delta.last_export_ns
                    } else {
                        s.start_unix_ns
                    };
                    delta.last.insert(id, (s.counts.clone(), s.sum, s.count));
                    if count == 0 {
                        continue; // nothing new in this interval
                    }
                    (counts, sum, count, start)
                }
            };
            let point = HistogramDataPoint {
                attributes: s.attrs.iter().map(|(k, v)| key_value(k, v)).collect(),
                start_time_unix_nano: start,
                time_unix_nano: now_ns,
                count,
                sum: Some(sum),
                bucket_counts: counts,
                explicit_bounds: def.buckets.to_vec(),
                min: (temporality == Temporality::Cumulative && s.count > 0).then_some(s.min),
                max: (temporality == Temporality::Cumulative && s.count > 0).then_some(s.max),
                ..Default::default()
            };
            by_resource
                .entry(s.resource.pid)
                .or_insert_with(|| {
                    (
                        s.resource
                            .attributes
                            .iter()
                            .map(|(k, v)| key_value(k, v))
                            .collect(),
                        HashMap::new(),
                    )
                })
                .1
                .entry(metric)
                .or_default()
                .push(point);
        }
    }
    delta.last_export_ns = now_ns;
    let temporality_code = match temporality {
        Temporality::Cumulative => AggregationTemporality::Cumulative,
        Temporality::Delta => AggregationTemporality::Delta,
    } as i32;
    let mut pids: Vec<u32> = by_resource.keys().copied().collect();
    pids.sort_unstable();
    let resource_metrics = pids
        .into_iter()
        .filter_map(|pid| by_resource.remove(&pid))
        .map(|(attrs, metrics)| ResourceMetrics {
            resource: Some(OtlpResource {
                attributes: attrs,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: Metric::ALL
                    .iter()
                    .filter_map(|m| metrics.get(m).map(|points| (m, points)))
                    .map(|(m, points)| {
                        let def = m.def();
                        let data = if def.counter {
                            // Counters travel as monotonic sums; the point's
                            // histogram sum holds their value.
                            metric::Data::Sum(Sum {
                                data_points: points
                                    .iter()
                                    .map(|p| NumberDataPoint {
                                        attributes: p.attributes.clone(),
                                        start_time_unix_nano: p.start_time_unix_nano,
                                        time_unix_nano: p.time_unix_nano,
                                        value: Some(number_data_point::Value::AsInt(
                                            p.sum.unwrap_or(0.0) as i64,
                                        )),
                                        ..Default::default()
                                    })
                                    .collect(),
                                aggregation_temporality: temporality_code,
                                is_monotonic: true,
                            })
                        } else {
                            metric::Data::Histogram(Histogram {
                                data_points: points.clone(),
                                aggregation_temporality: temporality_code,
                            })
                        };
                        OtlpMetric {
                            name: def.name.into(),
                            description: def.description.into(),
                            unit: def.unit.into(),
                            data: Some(data),
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autotel_model::Resource;
    use std::sync::Arc;

    #[test]
    fn delta_reports_only_the_interval() {
        let mut store = Store::new(100);
        let r = Arc::new(Resource {
            service_name: "s".into(),
            pid: 1,
            attributes: vec![],
        });
        let mut d = DeltaState::default();
        for _ in 0..3 {
            store.record(Metric::HttpServerDuration, &r, vec![], 0.01, 1);
        }
        let first = to_request(&store, Temporality::Delta, &mut d, 10);
        store.record(Metric::HttpServerDuration, &r, vec![], 0.01, 11);
        let second = to_request(&store, Temporality::Delta, &mut d, 20);
        let count = |req: &ExportMetricsServiceRequest| match &req.resource_metrics[0].scope_metrics
            [0]
        .metrics[0]
            .data
        {
            Some(metric::Data::Histogram(h)) => h.data_points[0].count,
            _ => panic!(),
        };
        assert_eq!((count(&first), count(&second)), (3, 1));
        let third = to_request(&store, Temporality::Delta, &mut d, 30);
        assert!(third.resource_metrics.is_empty());
        let cumulative = to_request(
            &store,
            Temporality::Cumulative,
            &mut DeltaState::default(),
            40,
        );
        assert_eq!(count(&cumulative), 4);
    }
}
