//! `metrics.yaml` (`metrics_config`): which metrics exist, with their type, unit and
//! dimensions, in TorchServe's schema. Read through `config`'s YAML source, so anchors and
//! aliases work as in TorchServe's own file.

use std::path::Path;

use serde::Deserialize;

/// TorchServe 0.12's default set, used when `metrics_config` names no file.
pub const DEFAULT_YAML: &str = include_str!("metrics.yaml");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The `#type:` part of a worker's `[METRICS]` line; gauges when it says nothing known.
    pub fn from_line(kind: Option<&str>) -> Self {
        match kind.map(str::to_ascii_uppercase).as_deref() {
            Some("COUNTER") => Kind::Counter,
            Some("HISTOGRAM") => Kind::Histogram,
            _ => Kind::Gauge,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Spec {
    pub name: String,
    pub unit: String,
    #[serde(default)]
    pub dimensions: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Kinds {
    counter: Option<Vec<Spec>>,
    gauge: Option<Vec<Spec>>,
    histogram: Option<Vec<Spec>>,
}

impl Kinds {
    fn flatten(self) -> Vec<(Kind, Spec)> {
        let tag = |kind: Kind, specs: Option<Vec<Spec>>| {
            specs
                .unwrap_or_default()
                .into_iter()
                .map(move |s| (kind, s))
        };
        tag(Kind::Counter, self.counter)
            .chain(tag(Kind::Gauge, self.gauge))
            .chain(tag(Kind::Histogram, self.histogram))
            .collect()
    }
}

#[derive(Debug, Default, Deserialize)]
struct File {
    ts_metrics: Option<Kinds>,
    model_metrics: Option<Kinds>,
}

/// The parsed file: the server's own metrics and those Python workers report.
#[derive(Debug, Default, Clone)]
pub struct MetricsConfig {
    pub frontend: Vec<(Kind, Spec)>,
    pub backend: Vec<(Kind, Spec)>,
}

impl MetricsConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        crate::archive::check_yaml(text)?;
        let file: File = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| e.to_string())?;
        let parsed = Self {
            frontend: file.ts_metrics.unwrap_or_default().flatten(),
            backend: file.model_metrics.unwrap_or_default().flatten(),
        };
        for (_, spec) in parsed.frontend.iter().chain(&parsed.backend) {
            if spec.name.trim().is_empty() || spec.unit.trim().is_empty() {
                return Err(format!(
                    "every metric needs a name and a unit (found name {:?}, unit {:?})",
                    spec.name, spec.unit
                ));
            }
        }
        Ok(parsed)
    }

    /// The file at `path`, or the default set. As in TorchServe, a file that cannot be read
    /// or parsed disables every metric; the reason is logged.
    pub fn load(path: Option<&Path>) -> Self {
        let Some(path) = path else {
            return Self::parse(DEFAULT_YAML).expect("the default metrics.yaml is valid");
        };
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| Self::parse(&text));
        parsed.unwrap_or_else(|e| {
            tracing::error!(
                "metrics_config {}: {e}; every metric is disabled",
                path.display()
            );
            Self::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_has_torchserves_metrics() {
        let c = MetricsConfig::parse(DEFAULT_YAML).unwrap();
        let find = |list: &[(Kind, Spec)], name: &str| {
            list.iter()
                .find(|(_, s)| s.name == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let (kind, spec) = find(&c.frontend, "ts_inference_requests_total");
        assert_eq!(kind, Kind::Counter);
        assert_eq!(spec.dimensions, ["model_name", "model_version", "hostname"]);
        let (kind, spec) = find(&c.frontend, "WorkerLoadTime");
        assert_eq!(kind, Kind::Gauge);
        assert_eq!(spec.dimensions, ["WorkerName", "Level", "Hostname"]);
        assert_eq!(spec.unit, "Milliseconds");
        let (_, spec) = find(&c.backend, "PredictionTime");
        assert_eq!((spec.unit.as_str(), spec.dimensions.len()), ("ms", 2));
        assert_eq!(c.frontend.len(), 19);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let empty_unit = "ts_metrics:\n  counter:\n    - name: X\n      unit: \"\"\n";
        assert!(MetricsConfig::parse(empty_unit)
            .unwrap_err()
            .contains("name and a unit"));
        assert!(MetricsConfig::parse("ts_metrics: [unclosed").is_err());
        let c = MetricsConfig::load(Some(Path::new("/nonexistent/metrics.yaml")));
        assert!(c.frontend.is_empty() && c.backend.is_empty());
    }
}
