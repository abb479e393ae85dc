//! Head sampling per the OTel spec (OTEL_TRACES_SAMPLER / _ARG). The ratio
//! decision depends only on the trace id, so every agent (and every span of
//! a trace) decides alike: sampled iff the trace id's lower 56 bits (its
//! random part in W3C Trace Context level 2) reach the rejection threshold
//! (1 - ratio) * 2^56, as consistent probability sampling specifies.

use anyhow::{bail, Result};
use autotel_model::TraceId;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    root: Root,
    /// Follow the parent's decision when there is a parent.
    parent_based: bool,
}

impl Default for Sampler {
    /// The OTel default: parentbased_always_on.
    fn default() -> Self {
        Sampler {
            root: Root::AlwaysOn,
            parent_based: true,
        }
    }
}

const RANDOM_BITS: u32 = 56;

fn ratio_sampled(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low[1..].copy_from_slice(&trace_id[9..16]);
    let randomness = u64::from_be_bytes(low);
    let threshold = ((1.0 - ratio) * (1u64 << RANDOM_BITS) as f64) as u64;
    randomness >= threshold
}

impl Sampler {
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self> {
        let ratio = || -> Result<f64> {
            match arg {
                None => Ok(1.0),
                Some(a) => {
                    let r: f64 = a.trim().parse().map_err(|_| {
                        anyhow::anyhow!("sampler argument must be a ratio in [0, 1], got {a:?}")
                    })?;
                    if !(0.0..=1.0).contains(&r) {
                        bail!("sampler ratio must be in [0, 1], got {r}");
                    }
                    Ok(r)
                }
            }
        };
        let (root, parent_based) = match name.trim() {
            "always_on" => (Root::AlwaysOn, false),
            "always_off" => (Root::AlwaysOff, false),
            "traceidratio" => (Root::Ratio(ratio()?), false),
            "parentbased_always_on" => (Root::AlwaysOn, true),
            "parentbased_always_off" => (Root::AlwaysOff, true),
            "parentbased_traceidratio" => (Root::Ratio(ratio()?), true),
            other => bail!(
                "unknown sampler {other:?}: use always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
            ),
        };
        Ok(Sampler { root, parent_based })
    }

    /// `parent_sampled`: the parent's decision, None for a root span.
    pub fn sample(&self, trace_id: &TraceId, parent_sampled: Option<bool>) -> bool {
        if self.parent_based {
            if let Some(p) = parent_sampled {
                return p;
            }
        }
        match self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio(r) => ratio_sampled(trace_id, r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_decide() {
        let id = [0xab; 16];
        assert!(Sampler::parse("always_on", None)
            .unwrap()
            .sample(&id, Some(false)));
        assert!(!Sampler::parse("always_off", None)
            .unwrap()
            .sample(&id, Some(true)));
        let pb = Sampler::parse("parentbased_always_off", None).unwrap();
        assert!(pb.sample(&id, Some(true)));
        assert!(!pb.sample(&id, None));
        assert!(Sampler::parse("traceidratio", Some("2")).is_err());
        assert!(Sampler::parse("nope", None).is_err());
    }

    #[test]
    fn ratio_is_close_and_deterministic() {
        let s = Sampler::parse("traceidratio", Some("0.25")).unwrap();
        let n = 40_000;
        let kept = (0..n)
            .filter(|_| s.sample(&autotel_model::new_trace_id(), None))
            .count();
        let expected = n as f64 * 0.25;
        let sd = (n as f64 * 0.25 * 0.75).sqrt();
        assert!(
            (kept as f64 - expected).abs() < 5.0 * sd,
            "kept {kept} of {n}"
        );
        let id = autotel_model::new_trace_id();
        assert_eq!(s.sample(&id, None), s.sample(&id, None));
        // A lower ratio keeps a subset of what a higher one keeps.
        let half = Sampler::parse("traceidratio", Some("0.5")).unwrap();
        for _ in 0..1000 {
            let id = autotel_model::new_trace_id();
            assert!(!s.sample(&id, None) || half.sample(&id, None));
        }
    }
}
