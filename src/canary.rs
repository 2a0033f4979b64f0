//! Canary releases: unversioned requests for a model are split between its default version
//! and canary versions by percentage, optionally stepped up over time, mirrored to a shadow
//! version, and rolled back automatically when a canary breaks its guard rails.
//!
//! A request carrying a routing key lands where the key's hash falls in [0, 100): the canaries
//! own the lowest buckets, so a key stays on its version for a given split, and a key in a
//! canary stays there while that canary's weight grows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::ServeError;

/// What an operator asks for (the management API's JSON body, `models=`, model-config.yaml
/// and snapshots all use it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SplitSpec {
    /// Canary versions and their share of unversioned requests, in percent; the default
    /// version gets the rest.
    #[serde(default)]
    pub canaries: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<Guards>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
}

/// Limits a canary must keep, each over the last `window_sec` seconds once the canary has
/// `min_requests` requests in the window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Guards {
    /// Highest share of 5xx answers, 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Highest p99 latency as a multiple of the default version's p99 (which needs
    /// `min_requests` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// Highest Jensen-Shannon divergence (bits, 0–1) between the canary's top-1 labels and
    /// the default version's over the window, compared by name (native classifiers; both
    /// need `min_requests` answers with a label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_label_divergence: Option<f64>,
    #[serde(default = "default_window")]
    pub window_sec: u64,
    #[serde(default = "default_min_requests")]
    pub min_requests: usize,
}

fn default_window() -> u64 {
    60
}

fn default_min_requests() -> usize {
    100
}

/// A stepped rollout of the one canary: its weight moves through `steps` (ascending percents),
/// each held for `dwell_sec` and left only while the guards hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    pub steps: Vec<f64>,
    pub dwell_sec: u64,
}

/// A version that receives a copy of `percent` of the unversioned requests; its answers are
/// recorded and dropped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Shadow {
    pub version: String,
    pub percent: f64,
}

fn bad(message: String) -> ServeError {
    ServeError::BadInput(message)
}

fn percent(what: &str, v: f64) -> Result<(), ServeError> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(())
    } else {
        Err(bad(format!("{what} must be between 0 and 100, got {v}")))
    }
}

impl SplitSpec {
    /// Checks the split against the model's versions; `exists` says whether a version is
    /// loaded.
    pub fn validate(
        &self,
        model: &str,
        default: &str,
        exists: &dyn Fn(&str) -> bool,
    ) -> Result<(), ServeError> {
        let missing = |v: &str| ServeError::version_not_found(model, v);
        if self.canaries.is_empty() && self.shadow.is_none() {
            return Err(bad(format!(
                "A split for model {model} needs at least one canary or a shadow version"
            )));
        }
        for (version, weight) in &self.canaries {
            if !exists(version) {
                return Err(missing(version));
            }
            if version == default {
                return Err(bad(format!(
                    "Version {version} is the default version of model {model}; a canary must be another version"
                )));
            }
            percent(&format!("The weight of version {version}"), *weight)?;
        }
        let sum: f64 = self.canaries.values().sum();
        if sum > 100.0 + 1e-9 {
            return Err(bad(format!(
                "Canary weights of model {model} add up to {sum}, more than 100"
            )));
        }
        if let Some(g) = &self.guards {
            let positive = |name: &str, v: Option<f64>| match v {
                Some(v) if !(v.is_finite() && v > 0.0) => {
                    Err(bad(format!("{name} must be a positive number, got {v}")))
                }
                _ => Ok(()),
            };
            positive("maxErrorRate", g.max_error_rate)?;
            positive("maxP99Ratio", g.max_p99_ratio)?;
            positive("maxLabelDivergence", g.max_label_divergence)?;
            if g.max_label_divergence.is_some_and(|d| d > 1.0) {
                return Err(bad(
                    "maxLabelDivergence is a Jensen-Shannon divergence between 0 and 1".into(),
                ));
            }
            if g.max_error_rate.is_some_and(|r| r > 1.0) {
                return Err(bad("maxErrorRate is a share between 0 and 1".into()));
            }
            if g.window_sec == 0 || g.min_requests == 0 {
                return Err(bad("windowSec and minRequests must be at least 1".into()));
            }
        }
        if let Some(r) = &self.rollout {
            if self.canaries.len() != 1 {
                return Err(bad(
                    "A stepped rollout needs exactly one canary version".into()
                ));
            }
            if r.steps.is_empty() {
                return Err(bad("A stepped rollout needs at least one step".into()));
            }
            for s in &r.steps {
                percent("A rollout step", *s)?;
            }
            if r.steps.windows(2).any(|w| w[0] >= w[1]) {
                return Err(bad("Rollout steps must increase".into()));
            }
        }
        if let Some(s) = &self.shadow {
            if !exists(&s.version) {
                return Err(missing(&s.version));
            }
            if s.version == default {
                return Err(bad(format!(
                    "Version {} is the default version of model {model}; a shadow must be another version",
                    s.version
                )));
            }
            percent("The shadow percentage", s.percent)?;
        }
        Ok(())
    }
}

/// Where a split stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A fixed split.
    Active,
    /// Stepping up; the index of the current step.
    RollingOut(usize),
    /// The dwell time is over but the guards cannot confirm the canary yet (too few
    /// requests in the window).
    Held(usize),
    /// The last step is reached.
    Completed,
    RolledBack,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::RollingOut(_) => "rolling_out",
            Phase::Held(_) => "held",
            Phase::Completed => "completed",
            Phase::RolledBack => "rolled_back",
        }
    }
}

/// Recent answers of one version: (when, latency, 5xx, top-1 label of a native handler).
#[derive(Default)]
struct Window {
    samples: VecDeque<(Instant, Duration, bool, Option<String>)>,
    requests: u64,
    errors: u64,
}

/// Bounds a window's memory whatever the request rate.
const MAX_SAMPLES: usize = 100_000;

impl Window {
    fn trim(&mut self, span: Duration) {
        let now = Instant::now();
        while self
            .samples
            .front()
            .is_some_and(|(t, ..)| now.duration_since(*t) > span)
        {
            self.samples.pop_front();
        }
    }

    fn error_rate(&self) -> f64 {
        let errors = self.samples.iter().filter(|s| s.2).count();
        errors as f64 / self.samples.len().max(1) as f64
    }

    /// Top-1 labels in the window, counted.
    fn labels(&self) -> (BTreeMap<&str, f64>, usize) {
        let mut counts = BTreeMap::new();
        let mut n = 0;
        for label in self.samples.iter().filter_map(|s| s.3.as_deref()) {
            *counts.entry(label).or_insert(0.0) += 1.0;
            n += 1;
        }
        (counts, n)
    }

    fn p99(&self) -> Duration {
        let mut l: Vec<Duration> = self.samples.iter().map(|s| s.1).collect();
        l.sort_unstable();
        l.get((l.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }
}

/// A guard that tripped, with the numbers that tripped it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    pub version: String,
    pub reason: String,
    pub at: String,
}

/// What happened to a split, for the log and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Weight { version: String, weight: f64 },
    RolledBack { version: String, reason: String },
}

/// A model's split while it runs.
pub struct Split {
    spec: SplitSpec,
    /// Current weights (the rollout step, or 0 after a rollback).
    weights: Vec<(String, f64)>,
    phase: Phase,
    step_since: Instant,
    windows: HashMap<String, Window>,
    rollback: Option<Rollback>,
}

/// Where an unversioned request goes.
pub struct Route {
    /// A canary version, or `None` for the default.
    pub version: Option<String>,
    pub shadow: Option<String>,
}

/// Stable across processes and releases (a routing key must keep its version after a
/// restart): FNV-1a.
fn bucket(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 10_000) as f64 / 100.0
}

impl Split {
    pub fn new(spec: SplitSpec) -> Self {
        let (weights, phase) = match &spec.rollout {
            Some(r) => (
                spec.canaries
                    .keys()
                    .map(|v| (v.clone(), r.steps[0]))
                    .collect(),
                if r.steps.len() == 1 {
                    Phase::Completed
                } else {
                    Phase::RollingOut(0)
                },
            ),
            None => (
                spec.canaries.iter().map(|(v, w)| (v.clone(), *w)).collect(),
                Phase::Active,
            ),
        };
        Self {
            spec,
            weights,
            phase,
            step_since: Instant::now(),
            windows: HashMap::new(),
            rollback: None,
        }
    }

    pub fn spec(&self) -> &SplitSpec {
        &self.spec
    }

    pub fn weights(&self) -> &[(String, f64)] {
        &self.weights
    }

    /// The canaries' share together, in percent; the default version serves the rest.
    pub fn canary_share(&self) -> f64 {
        self.weights.iter().map(|(_, w)| w).sum()
    }

    /// The split as it stands now, to restore after a restart: current weights, and only the
    /// rollout steps still ahead (none once completed or rolled back).
    pub fn effective_spec(&self) -> SplitSpec {
        let mut spec = self.spec.clone();
        spec.canaries = self.weights.iter().cloned().collect();
        spec.rollout = match (&self.phase, spec.rollout.take()) {
            (Phase::RollingOut(step) | Phase::Held(step), Some(mut r)) => {
                r.steps.drain(..*step);
                Some(r)
            }
            _ => None,
        };
        spec
    }

    /// Picks the version of an unversioned request (`key`: its routing key).
    pub fn route(&self, key: Option<&str>) -> Route {
        let point = match key {
            Some(k) => bucket(k),
            None => fastrand::f64() * 100.0,
        };
        let mut edge = 0.0;
        let mut version = None;
        for (v, w) in &self.weights {
            edge += w;
            if point < edge {
                version = Some(v.clone());
                break;
            }
        }
        let shadow = self
            .spec
            .shadow
            .as_ref()
            .filter(|s| fastrand::f64() * 100.0 < s.percent)
            .map(|s| s.version.clone());
        Route { version, shadow }
    }

    /// Records an answer of `version` (default, canary or shadow) and its top-1 label.
    pub fn record(&mut self, version: &str, latency: Duration, error: bool, top1: Option<String>) {
        let w = self.windows.entry(version.to_string()).or_default();
        w.requests += 1;
        w.errors += u64::from(error);
        w.samples.push_back((Instant::now(), latency, error, top1));
        if w.samples.len() > MAX_SAMPLES {
            w.samples.pop_front();
        }
    }

    /// A version is gone (unregistered, or now the default): it leaves the split.
    pub fn drop_version(&mut self, version: &str) {
        self.spec.canaries.remove(version);
        self.weights.retain(|(v, _)| v != version);
        if self
            .spec
            .shadow
            .as_ref()
            .is_some_and(|s| s.version == version)
        {
            self.spec.shadow = None;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.spec.canaries.is_empty() && self.spec.shadow.is_none()
    }

    /// Checks the guards and moves the rollout on; returns what changed. `default` is the
    /// model's default version.
    pub fn tick(&mut self, default: &str) -> Vec<Event> {
        let mut events = Vec::new();
        if self.phase == Phase::RolledBack {
            return events;
        }
        let guards = self.spec.guards.clone();
        let mut confirmed = true;
        if let Some(g) = &guards {
            let span = Duration::from_secs(g.window_sec);
            for w in self.windows.values_mut() {
                w.trim(span);
            }
            let base_p99 = self
                .windows
                .get(default)
                .filter(|w| w.samples.len() >= g.min_requests)
                .map(Window::p99);
            for (version, weight) in self.weights.clone() {
                let Some(w) = self.windows.get(&version) else {
                    confirmed = false;
                    continue;
                };
                if w.samples.len() < g.min_requests {
                    confirmed = false;
                    continue;
                }
                let n = w.samples.len();
                let mut reason = None;
                if let Some(max) = g.max_error_rate {
                    let rate = w.error_rate();
                    if rate > max {
                        reason = Some(format!(
                            "error rate {:.1}% over the last {n} requests exceeds the limit of {:.1}%",
                            rate * 100.0,
                            max * 100.0
                        ));
                    }
                }
                if let (None, Some(max), Some(base)) = (&reason, g.max_p99_ratio, base_p99) {
                    let p99 = w.p99();
                    let ratio = p99.as_secs_f64() / base.as_secs_f64().max(1e-6);
                    if ratio > max {
                        reason = Some(format!(
                            "p99 latency {:.1} ms over the last {n} requests is {ratio:.2}x the default version's {:.1} ms, more than {max}x",
                            p99.as_secs_f64() * 1e3,
                            base.as_secs_f64() * 1e3
                        ));
                    }
                }
                if let (None, Some(max)) = (&reason, g.max_label_divergence) {
                    let (canary, n_canary) = w.labels();
                    let base = self.windows.get(default).map(Window::labels);
                    if let Some((base, n_base)) =
                        base.filter(|(_, n)| *n >= g.min_requests && n_canary >= g.min_requests)
                    {
                        let (p, q) = crate::drift::score::aligned(&canary, &base);
                        let divergence = crate::drift::score::js(&p, &q);
                        if divergence > max {
                            reason = Some(format!(
                                "top-1 labels of the last {n_canary} requests diverge from the default version's last {n_base}: Jensen-Shannon divergence {divergence:.3} exceeds the limit of {max}"
                            ));
                        }
                    }
                }
                if let Some(reason) = reason {
                    if weight > 0.0 {
                        for (v, wt) in &mut self.weights {
                            if *v == version {
                                *wt = 0.0;
                            }
                        }
                        self.phase = Phase::RolledBack;
                        self.rollback = Some(Rollback {
                            version: version.clone(),
                            reason: reason.clone(),
                            at: chrono::Local::now().to_rfc3339(),
                        });
                        events.push(Event::Weight {
                            version: version.clone(),
                            weight: 0.0,
                        });
                        events.push(Event::RolledBack { version, reason });
                        return events;
                    }
                }
            }
        }
        let dwell = self
            .spec
            .rollout
            .as_ref()
            .map(|r| (r.steps.clone(), Duration::from_secs(r.dwell_sec)));
        if let (Phase::RollingOut(step) | Phase::Held(step), Some((steps, dwell))) =
            (self.phase.clone(), dwell)
        {
            if self.step_since.elapsed() >= dwell {
                if !confirmed {
                    self.phase = Phase::Held(step);
                    return events;
                }
                let next = step + 1;
                for (v, w) in &mut self.weights {
                    *w = steps[next];
                    events.push(Event::Weight {
                        version: v.clone(),
                        weight: *w,
                    });
                }
                self.step_since = Instant::now();
                // A new step is judged on its own traffic.
                self.windows.clear();
                self.phase = if next + 1 == steps.len() {
                    Phase::Completed
                } else {
                    Phase::RollingOut(next)
                };
            } else {
                self.phase = Phase::RollingOut(step);
            }
        }
        events
    }

    /// The split as describe and `GET /models/{m}/canary` show it.
    pub fn view(&self, model: &str, default: &str) -> serde_json::Value {
        let mut versions = serde_json::Map::new();
        let weight_of = |v: &str| {
            self.weights
                .iter()
                .find(|(w, _)| w == v)
                .map_or(0.0, |(_, w)| *w)
        };
        let canary_total = self.canary_share();
        let mut names: Vec<String> = vec![default.to_string()];
        names.extend(self.weights.iter().map(|(v, _)| v.clone()));
        if let Some(s) = &self.spec.shadow {
            names.push(s.version.clone());
        }
        for v in names {
            let w = self.windows.get(&v);
            let role = if v == default {
                "default"
            } else if self.weights.iter().any(|(c, _)| *c == v) {
                "canary"
            } else {
                "shadow"
            };
            versions.insert(
                v.clone(),
                serde_json::json!({
                    "role": role,
                    "weight": if v == default { 100.0 - canary_total } else if role == "shadow" { 0.0 } else { weight_of(&v) },
                    "requests": w.map_or(0, |w| w.requests),
                    "errors": w.map_or(0, |w| w.errors),
                }),
            );
        }
        serde_json::json!({
            "modelName": model,
            "defaultVersion": default,
            "state": self.phase.name(),
            "versions": versions,
            "spec": self.spec,
            "rollback": self.rollback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> SplitSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn validation_names_the_problem() {
        let exists = |v: &str| ["1.0", "2.0", "3.0"].contains(&v);
        let check = |json: &str| spec(json).validate("m", "1.0", &exists);
        assert!(check(r#"{"canaries": {"2.0": 10, "3.0": 20}}"#).is_ok());
        let e = check(r#"{"canaries": {"2.0": 150}}"#).unwrap_err();
        assert!(
            matches!(&e, ServeError::BadInput(m) if m.contains("between 0 and 100")),
            "{e}"
        );
        let e = check(r#"{"canaries": {"2.0": 60, "3.0": 50}}"#).unwrap_err();
        assert!(e.to_string().contains("add up to 110"), "{e}");
        assert!(matches!(
            check(r#"{"canaries": {"9.9": 5}}"#).unwrap_err(),
            ServeError::VersionNotFound { .. }
        ));
        for bad in [r#"{"canaries": {"1.0": 5}}"#, r#"{}"#] {
            assert!(matches!(check(bad).unwrap_err(), ServeError::BadInput(_)));
        }
        let steps = r#"{"canaries": {"2.0": 0}, "rollout": {"steps": [50, 25], "dwellSec": 1}}"#;
        assert!(check(steps).unwrap_err().to_string().contains("increase"));
        assert!(serde_json::from_str::<SplitSpec>(r#"{"canary": {}}"#).is_err());
    }

    #[test]
    fn keys_stick_and_canaries_own_the_low_buckets() {
        let mut split = Split::new(spec(r#"{"canaries": {"2.0": 30}}"#));
        let first: Vec<Option<String>> = (0..200)
            .map(|i| split.route(Some(&format!("user-{i}"))).version)
            .collect();
        let again: Vec<Option<String>> = (0..200)
            .map(|i| split.route(Some(&format!("user-{i}"))).version)
            .collect();
        assert_eq!(first, again);
        let in_canary = first.iter().filter(|v| v.is_some()).count();
        assert!((30..=90).contains(&in_canary), "{in_canary}");
        // Raising the weight keeps every key already in the canary there.
        split.weights[0].1 = 60.0;
        for (i, before) in first.iter().enumerate() {
            if before.is_some() {
                assert!(split.route(Some(&format!("user-{i}"))).version.is_some());
            }
        }
    }

    #[test]
    fn an_erroring_canary_is_rolled_back_once_its_window_fills() {
        let mut split = Split::new(spec(
            r#"{"canaries": {"2.0": 50}, "guards": {"maxErrorRate": 0.1, "minRequests": 10}}"#,
        ));
        for i in 0..9 {
            split.record("2.0", Duration::from_millis(1), i % 2 == 0, None);
        }
        assert!(split.tick("1.0").is_empty(), "too few requests to judge");
        split.record("2.0", Duration::from_millis(1), true, None);
        let events = split.tick("1.0");
        assert!(
            matches!(&events[1], Event::RolledBack { version, reason } if version == "2.0" && reason.contains("error rate 60.0%")),
            "{events:?}"
        );
        assert_eq!(split.weights()[0].1, 0.0);
        assert!(split.route(None).version.is_none());
        assert_eq!(split.view("m", "1.0")["state"], "rolled_back");
    }

    #[test]
    fn a_slow_canary_trips_the_latency_guard() {
        let mut split = Split::new(spec(
            r#"{"canaries": {"2.0": 50}, "guards": {"maxP99Ratio": 2, "minRequests": 5}}"#,
        ));
        for _ in 0..5 {
            split.record("1.0", Duration::from_millis(2), false, None);
            split.record("2.0", Duration::from_millis(10), false, None);
        }
        let events = split.tick("1.0");
        assert!(
            matches!(&events[1], Event::RolledBack { reason, .. } if reason.contains("5.00x")),
            "{events:?}"
        );
    }

    #[test]
    fn a_canary_whose_labels_diverge_is_rolled_back() {
        let guard = r#"{"canaries": {"2.0": 50}, "guards": {"maxLabelDivergence": 0.1, "minRequests": 20}}"#;
        let ms = Duration::from_millis(1);
        // The same mix of classes on both sides holds.
        let mut split = Split::new(spec(guard));
        for i in 0..40 {
            split.record("1.0", ms, false, Some((i % 4).to_string()));
            split.record("2.0", ms, false, Some(((i + 1) % 4).to_string()));
        }
        assert_eq!(split.tick("1.0"), vec![]);
        // The canary answers class 0 three times as often as the default version.
        let mut split = Split::new(spec(guard));
        for i in 0..40 {
            split.record("1.0", ms, false, Some((i % 4).to_string()));
            let skewed = if i % 4 == 3 { "1" } else { "0" };
            split.record("2.0", ms, false, Some(skewed.to_string()));
        }
        let events = split.tick("1.0");
        assert!(
            matches!(&events[1], Event::RolledBack { reason, .. } if reason.contains("Jensen-Shannon divergence 0.3")),
            "{events:?}"
        );
    }

    #[test]
    fn a_rollout_steps_up_while_guards_hold() {
        let mut split = Split::new(spec(
            r#"{"canaries": {"2.0": 0}, "rollout": {"steps": [5, 50, 100], "dwellSec": 0}, "guards": {"maxErrorRate": 0.5, "minRequests": 2}}"#,
        ));
        assert_eq!(split.weights()[0].1, 5.0);
        assert!(split.tick("1.0").is_empty());
        assert_eq!(split.view("m", "1.0")["state"], "held");
        split.record("2.0", Duration::from_millis(1), false, None);
        split.record("2.0", Duration::from_millis(1), false, None);
        assert_eq!(
            split.tick("1.0"),
            vec![Event::Weight {
                version: "2.0".into(),
                weight: 50.0
            }]
        );
        split.record("2.0", Duration::from_millis(1), false, None);
        split.record("2.0", Duration::from_millis(1), false, None);
        split.tick("1.0");
        assert_eq!(split.weights()[0].1, 100.0);
        assert_eq!(split.view("m", "1.0")["state"], "completed");
    }
}
