//! The drift monitor's Prometheus families (ferroserve's own): what each model version
//! answers and is given, and its drift scores.

use prometheus::{CounterVec, GaugeVec, HistogramOpts, HistogramVec, Opts};

/// Top-1 probabilities.
const CONFIDENCE_BUCKETS: [f64; 12] =
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0];
/// Input summaries span shares and normalized values (around 0–1), sequence lengths and
/// image sides (up to thousands): one set of buckets covers them all.
const INPUT_BUCKETS: [f64; 24] = [
    -2.0, -1.0, -0.5, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0,
    10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0,
];

#[derive(Clone)]
pub struct DriftFamilies {
    pub top1: CounterVec,
    pub top1_share: GaugeVec,
    pub confidence: HistogramVec,
    pub input: HistogramVec,
    pub score: GaugeVec,
}

impl DriftFamilies {
    pub fn new() -> Self {
        let labels = |extra: &[&'static str]| {
            let mut l = vec!["model_name", "model_version"];
            l.extend_from_slice(extra);
            l
        };
        Self {
            top1: CounterVec::new(
                Opts::new(
                    "ferroserve_prediction_top1_total",
                    "Answers by their top-1 label (labels past the configured limit as \"other\")",
                ),
                &labels(&["label"]),
            )
            .expect("valid metric"),
            top1_share: GaugeVec::new(
                Opts::new(
                    "ferroserve_prediction_top1_share",
                    "Share of each top-1 label over the drift window",
                ),
                &labels(&["label"]),
            )
            .expect("valid metric"),
            confidence: HistogramVec::new(
                HistogramOpts::new(
                    "ferroserve_prediction_confidence",
                    "Probability of the top-1 label",
                )
                .buckets(CONFIDENCE_BUCKETS.to_vec()),
                &labels(&[]),
            )
            .expect("valid metric"),
            input: HistogramVec::new(
                HistogramOpts::new(
                    "ferroserve_input_feature",
                    "Summaries of each request's input (mean, std, zero_share, frames, width, height, channel_<i>_mean)",
                )
                .buckets(INPUT_BUCKETS.to_vec()),
                &labels(&["feature"]),
            )
            .expect("valid metric"),
            score: GaugeVec::new(
                Opts::new(
                    "ferroserve_drift_score",
                    "Drift of the window against the reference: population stability index (method=\"psi\") per input summary and for the top-1 labels, Jensen-Shannon divergence (method=\"js\", base 2) for the labels",
                ),
                &labels(&["feature", "method"]),
            )
            .expect("valid metric"),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.top1.clone()),
            Box::new(self.top1_share.clone()),
            Box::new(self.confidence.clone()),
            Box::new(self.input.clone()),
            Box::new(self.score.clone()),
        ]
    }
}

impl Default for DriftFamilies {
    fn default() -> Self {
        Self::new()
    }
}
