//! Drift monitoring of a native model version, in process: what it answers (top-1 labels and
//! their confidence) and what it is given (cheap input summaries) as Prometheus series, and
//! drift scores of a sliding window of recent requests against a reference distribution.
//!
//! The reference is `drift-reference.json` in the archive, the window captured with
//! `PUT /models/{m}/{v}/drift/reference`, or the first `referenceRequests` requests after
//! load. Scores are recomputed every `period` requests, so a request costs a few counter
//! updates; memory is the window (bounded) and at most `maxLabels + 1` label series.

pub mod score;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use prometheus::{Counter, Histogram};
use serde::Serialize;
use serde_json::{json, Value};

use crate::handler::labels::Labels;
use crate::handler::observe::Observation;
use crate::metrics::drift::DriftFamilies;
pub use score::Reference;
use score::{aligned, js, psi, Binned};

/// The most requests a window or a first-requests reference holds.
const MAX_REQUESTS: usize = 100_000;

/// The reference file an archive may ship.
pub const REFERENCE_FILE: &str = "drift-reference.json";

/// `ferroserve.drift` in model-config.yaml.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    pub enabled: bool,
    /// Requests in the sliding window the scores are computed on.
    pub window: usize,
    /// Scores are recomputed every this many requests.
    pub period: usize,
    /// Labels (class indices below this) counted by name; the rest count as `other`.
    pub max_labels: usize,
    /// Bins of each input summary in a captured reference (its quantiles).
    pub bins: usize,
    /// When > 0, the first this many requests after load become the reference (unless the
    /// archive ships one).
    pub reference_requests: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            window: 1000,
            period: 100,
            max_labels: 100,
            bins: 10,
            reference_requests: 0,
        }
    }
}

impl Settings {
    /// The settings of model-config.yaml's `ferroserve.drift`, checked.
    pub fn from_config(section: Option<&Value>) -> Result<Self, String> {
        let s: Self = match section {
            None => Self::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| format!("model-config.yaml: ferroserve.drift: {e}"))?,
        };
        if s.window == 0 || s.period == 0 || s.bins < 2 {
            return Err(
                "model-config.yaml: ferroserve.drift: window and period must be at least 1, bins at least 2"
                    .into(),
            );
        }
        // What a version holds is bounded by these, whatever the traffic.
        if s.window > MAX_REQUESTS || s.reference_requests > MAX_REQUESTS || s.max_labels > 10_000 {
            return Err(format!(
                "model-config.yaml: ferroserve.drift: window and referenceRequests are at most {MAX_REQUESTS}, maxLabels at most 10000"
            ));
        }
        Ok(s)
    }
}

/// A series' label values: the version's, then `extra`.
fn label_values(model: &str, version: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![model.to_string(), version.to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Where the reference came from, for describe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Archive,
    Captured,
    FirstRequests,
    Snapshot,
}

struct State {
    window: VecDeque<Observation>,
    since_scored: usize,
    reference: Option<(Reference, Source)>,
    /// The first requests, while they are gathered into the reference.
    first: Option<Vec<Observation>>,
    /// Scores by (input summary or `label`, method).
    scores: BTreeMap<(String, &'static str), f64>,
    /// Label series set in the share gauge (to zero or drop them later).
    shared: BTreeSet<String>,
}

/// A model version's drift monitor.
pub struct Monitor {
    settings: Settings,
    labels: Labels,
    families: DriftFamilies,
    model: String,
    version: String,
    state: Mutex<State>,
    /// Label values of the series this monitor created, to drop them when the version goes.
    series: Mutex<BTreeSet<Vec<String>>>,
    /// Handles bound once, so that a request does not look label values up: the confidence
    /// histogram, the input summaries' histograms by name, the top-1 counters by class
    /// (classes past `maxLabels` share one).
    confidence: Histogram,
    inputs: Vec<(String, Histogram)>,
    top1: Mutex<HashMap<usize, Counter>>,
    forgotten: AtomicBool,
}

impl Monitor {
    /// `inputs` are the summaries the handler records: their series (and the confidence's)
    /// exist from load on, at 0, so that a rate over them sees the first requests.
    pub fn new(
        settings: Settings,
        labels: Labels,
        families: DriftFamilies,
        (model, version): (&str, &str),
        inputs: &[&str],
        reference: Option<Reference>,
    ) -> Self {
        let first = (reference.is_none() && settings.reference_requests > 0)
            .then(|| Vec::with_capacity(settings.reference_requests));
        let bind = |extra: &[&str]| label_values(model, version, extra);
        let confidence = families.confidence.with_label_values(&bind(&[]));
        let input_handles = inputs
            .iter()
            .map(|i| (i.to_string(), families.input.with_label_values(&bind(&[i]))))
            .collect();
        let series = std::iter::once(bind(&[]))
            .chain(inputs.iter().map(|i| bind(&[i])))
            .collect();
        Self {
            state: Mutex::new(State {
                window: VecDeque::with_capacity(settings.window),
                since_scored: 0,
                reference: reference.map(|r| (r, Source::Archive)),
                first,
                scores: BTreeMap::new(),
                shared: BTreeSet::new(),
            }),
            settings,
            labels,
            families,
            model: model.to_string(),
            version: version.to_string(),
            series: Mutex::new(series),
            confidence,
            inputs: input_handles,
            top1: Mutex::new(HashMap::new()),
            forgotten: AtomicBool::new(false),
        }
    }

    /// The label a class counts under.
    pub fn label(&self, class: usize) -> Cow<'_, str> {
        if class < self.settings.max_labels {
            self.labels.name(class)
        } else {
            Cow::Borrowed("other")
        }
    }

    /// The label values of a series of this version, remembered for `forget`.
    fn values(&self, extra: &[&str]) -> Vec<String> {
        let v = label_values(&self.model, &self.version, extra);
        if let Ok(mut series) = self.series.lock() {
            if !series.contains(&v) {
                series.insert(v.clone());
            }
        }
        v
    }

    /// Records one answered request.
    pub fn observe(&self, seen: &Observation) {
        if self.forgotten.load(Ordering::Relaxed) {
            return;
        }
        if let Some((class, p)) = seen.top1 {
            let key = class.min(self.settings.max_labels);
            if let Ok(mut counters) = self.top1.lock() {
                counters
                    .entry(key)
                    .or_insert_with(|| {
                        let label = self.label(class);
                        self.families
                            .top1
                            .with_label_values(&self.values(&[&label]))
                    })
                    .inc();
            }
            self.confidence.observe(f64::from(p));
        }
        for (name, v) in &seen.input {
            match self.inputs.iter().find(|(n, _)| n == name) {
                Some((_, h)) => h.observe(*v),
                None => self
                    .families
                    .input
                    .with_label_values(&self.values(&[name]))
                    .observe(*v),
            }
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(first) = &mut st.first {
            first.push(seen.clone());
            if first.len() >= self.settings.reference_requests {
                let reference = self.build(first.iter());
                tracing::info!(model = %self.model, version = %self.version, requests = reference.requests, "drift reference taken from the first requests");
                st.reference = Some((reference, Source::FirstRequests));
                st.first = None;
            }
        }
        // Room first: the window never grows past the capacity it was given.
        if st.window.len() == self.settings.window {
            st.window.pop_front();
        }
        st.window.push_back(seen.clone());
        st.since_scored += 1;
        if st.since_scored >= self.settings.period {
            st.since_scored = 0;
            self.score(&mut st);
        }
    }

    /// A reference from observations: label shares and quantile bins of each summary.
    fn build<'a>(&self, seen: impl IntoIterator<Item = &'a Observation> + Clone) -> Reference {
        let requests = seen.clone().into_iter().count();
        let mut inputs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for o in seen.clone() {
            for (name, v) in &o.input {
                inputs.entry(name).or_default().push(*v);
            }
        }
        Reference {
            requests,
            labels: self.label_shares(seen),
            inputs: inputs
                .into_iter()
                .map(|(k, v)| (k.to_string(), Binned::from_values(v, self.settings.bins)))
                .collect(),
        }
    }

    fn label_shares<'a>(
        &self,
        seen: impl IntoIterator<Item = &'a Observation>,
    ) -> BTreeMap<String, f64> {
        // Counted by class, named once per class (not once per request).
        let mut by_class: HashMap<usize, f64> = HashMap::new();
        let mut n = 0.0;
        for (class, _) in seen.into_iter().filter_map(|o| o.top1) {
            *by_class
                .entry(class.min(self.settings.max_labels))
                .or_default() += 1.0;
            n += 1.0;
        }
        let mut shares: BTreeMap<String, f64> = BTreeMap::new();
        for (class, count) in by_class {
            *shares.entry(self.label(class).into_owned()).or_default() += count / n;
        }
        shares
    }

    /// Recomputes the window's label shares and, against the reference, its scores.
    fn score(&self, st: &mut State) {
        let f = &self.families;
        let shares = self.label_shares(&st.window);
        for gone in st.shared.difference(&shares.keys().cloned().collect()) {
            f.top1_share
                .with_label_values(&self.values(&[gone]))
                .set(0.0);
        }
        for (label, share) in &shares {
            f.top1_share
                .with_label_values(&self.values(&[label]))
                .set(*share);
        }
        st.shared.extend(shares.keys().cloned());
        let Some((reference, _)) = &st.reference else {
            return;
        };
        let mut scores = BTreeMap::new();
        if !reference.labels.is_empty() && !shares.is_empty() {
            let (expected, actual) = aligned(&reference.labels, &shares);
            scores.insert(("label".to_string(), "psi"), psi(&expected, &actual));
            scores.insert(("label".to_string(), "js"), js(&expected, &actual));
        }
        for (name, bins) in &reference.inputs {
            let values: Vec<f64> = st
                .window
                .iter()
                .flat_map(|o| o.input.iter().filter(|(n, _)| n == name).map(|(_, v)| *v))
                .collect();
            if !values.is_empty() {
                scores.insert((name.clone(), "psi"), bins.psi(&values));
            }
        }
        for ((feature, method), v) in &scores {
            f.score
                .with_label_values(&self.values(&[feature, method]))
                .set(*v);
        }
        st.scores = scores;
    }

    /// Makes the current window the reference; the answer is the new reference.
    pub fn capture(&self) -> Result<Reference, String> {
        let mut st = self.state.lock().map_err(|_| "drift state poisoned")?;
        if st.window.is_empty() {
            return Err(format!(
                "Model {} version {} has answered no request since it was loaded: there is no traffic to take a drift reference from",
                self.model, self.version
            ));
        }
        let reference = self.build(st.window.iter());
        st.reference = Some((reference.clone(), Source::Captured));
        st.first = None;
        self.score(&mut st);
        Ok(reference)
    }

    /// Sets a reference restored from a snapshot.
    pub fn restore(&self, reference: Reference) {
        if let Ok(mut st) = self.state.lock() {
            st.reference = Some((reference, Source::Snapshot));
            st.first = None;
        }
    }

    /// The reference to keep in snapshots: one not shipped in the archive.
    pub fn kept_reference(&self) -> Option<Reference> {
        let st = self.state.lock().ok()?;
        match &st.reference {
            Some((r, source)) if *source != Source::Archive => Some(r.clone()),
            _ => None,
        }
    }

    /// The version's drift, as describe shows it.
    pub fn view(&self) -> Value {
        let Ok(st) = self.state.lock() else {
            return Value::Null;
        };
        let mut scores = serde_json::Map::new();
        for ((feature, method), v) in &st.scores {
            let entry = scores.entry(feature.clone()).or_insert_with(|| json!({}));
            entry[*method] = json!(v);
        }
        json!({
            "window": st.window.len(),
            "windowSize": self.settings.window,
            "period": self.settings.period,
            "reference": st.reference.as_ref().map(|(r, source)| json!({
                "source": source,
                "requests": r.requests,
            })),
            "scores": scores,
        })
    }

    /// The version is gone: its series leave the exposition and later answers are ignored.
    pub fn forget(&self) {
        self.forgotten.store(true, Ordering::Relaxed);
        let f = &self.families;
        let Ok(series) = self.series.lock() else {
            return;
        };
        for values in series.iter() {
            let v: Vec<&str> = values.iter().map(String::as_str).collect();
            match v.len() {
                2 => {
                    let _ = f.confidence.remove_label_values(&v);
                }
                3 => {
                    let _ = f.top1.remove_label_values(&v);
                    let _ = f.top1_share.remove_label_values(&v);
                    let _ = f.input.remove_label_values(&v);
                }
                _ => {
                    let _ = f.score.remove_label_values(&v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(settings: Settings, families: &DriftFamilies) -> Monitor {
        let labels = Labels::parse(r#"{"0": "zero", "1": "one", "2": "two"}"#).unwrap();
        Monitor::new(
            settings,
            labels,
            families.clone(),
            ("m", "1.0"),
            &["mean"],
            None,
        )
    }

    fn seen(class: usize, mean: f64) -> Observation {
        Observation {
            top1: Some((class, 0.9)),
            input: [("mean", mean)].into_iter().collect(),
        }
    }

    #[test]
    fn settings_are_checked() {
        let yaml = |v: Value| Settings::from_config(Some(&v));
        assert_eq!(yaml(json!({})).unwrap(), Settings::default());
        assert_eq!(yaml(json!({"window": 50})).unwrap().window, 50);
        assert!(yaml(json!({"window": 0})).is_err());
        assert!(yaml(json!({"window": 1_000_000}))
            .unwrap_err()
            .contains("at most"));
        assert!(yaml(json!({"windw": 5}))
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn a_window_is_scored_every_period_against_its_captured_reference() {
        let families = DriftFamilies::new();
        let settings = Settings {
            window: 20,
            period: 10,
            max_labels: 2,
            ..Settings::default()
        };
        let m = monitor(settings, &families);
        for i in 0..20 {
            m.observe(&seen(i % 2, (i % 10) as f64));
        }
        let reference = m.capture().unwrap();
        assert_eq!(reference.requests, 20);
        assert_eq!(reference.labels["zero"], 0.5);
        // Shifted: class 2 (past maxLabels: "other") and larger means, for a whole window.
        for i in 0..20 {
            m.observe(&seen(2, 20.0 + i as f64));
        }
        let view = m.view();
        assert_eq!(view["window"], 20);
        assert!(
            view["scores"]["mean"]["psi"].as_f64().unwrap() > 1.0,
            "{view}"
        );
        assert!((view["scores"]["label"]["js"].as_f64().unwrap() - 1.0).abs() < 1e-9);
        let other = families
            .top1
            .with_label_values(&["m", "1.0", "other"])
            .get();
        assert_eq!(other, 20.0);
        assert_eq!(
            families
                .top1_share
                .with_label_values(&["m", "1.0", "zero"])
                .get(),
            0.0
        );
        // Gone: no series of the version remain.
        m.forget();
        m.observe(&seen(0, 1.0));
        let left: usize = families
            .collectors()
            .iter()
            .flat_map(|c| c.collect())
            .map(|f| f.get_metric().len())
            .sum();
        assert_eq!(left, 0);
    }
}
