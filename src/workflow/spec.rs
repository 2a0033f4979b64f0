//! The workflow specification (the `.war`'s YAML): per-model settings with workflow-wide
//! defaults, and the `dag` section. Read as TorchServe reads it: keys in file order, a
//! default applying to the models after it, DAG names not in `models` being functions of the
//! archive's handler file.

use yaml_rust2::Yaml;

use super::dag::{Dag, DagError};

/// Why a spec is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpecError {
    /// Not YAML at all (TorchServe's message).
    #[error("Failed to parse yaml.")]
    Yaml,
    /// YAML, but not a workflow specification.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Dag(#[from] DagError),
}

/// A node's serving settings: the `models` section's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSettings {
    pub min_workers: u32,
    pub max_workers: u32,
    pub batch_size: u32,
    pub max_batch_delay_ms: u32,
    /// Retries after a failed or timed-out call of the node.
    pub retry_attempts: u32,
    /// How long one call of the node may take.
    pub timeout_ms: u32,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            min_workers: 1,
            max_workers: 1,
            batch_size: 1,
            max_batch_delay_ms: 50,
            retry_attempts: 1,
            timeout_ms: 10_000,
        }
    }
}

impl NodeSettings {
    /// Applies `key: value` when `key` is one of the settings; false otherwise.
    fn set(&mut self, key: &str, value: &Yaml, at: &str) -> Result<bool, SpecError> {
        let slot = match key {
            "min-workers" => &mut self.min_workers,
            "max-workers" => &mut self.max_workers,
            "batch-size" => &mut self.batch_size,
            "max-batch-delay" => &mut self.max_batch_delay_ms,
            "retry-attempts" => &mut self.retry_attempts,
            "timeout-ms" => &mut self.timeout_ms,
            _ => return Ok(false),
        };
        *slot = value
            .as_i64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                SpecError::Invalid(format!("{at}{key} must be a non-negative integer"))
            })?;
        Ok(true)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A model archive (`url`, as for `POST /models`).
    Model { url: String },
    /// A function of the workflow's handler file, run in TorchServe's Python worker.
    Function,
}

/// One DAG node and the model that serves it (`{workflow}__{node}`).
#[derive(Debug, Clone)]
pub struct Node {
    pub model: String,
    pub kind: NodeKind,
    pub settings: NodeSettings,
}

#[derive(Debug, Clone)]
pub struct Spec {
    /// The workflow-wide settings (what describe reports).
    pub defaults: NodeSettings,
    pub dag: Dag,
    /// Indexed like the DAG's nodes.
    pub nodes: Vec<Node>,
    /// The `dag` section as TorchServe prints it (`{pre=[m1], m1=[post]}`).
    pub dag_text: String,
}

fn text(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => "null".into(),
        Yaml::Array(a) => format!("[{}]", a.iter().map(text).collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}"),
    }
}

impl Spec {
    /// Parses a spec for the workflow `workflow` (its models become `{workflow}__{name}`).
    pub fn parse(source: &str, workflow: &str) -> Result<Self, SpecError> {
        crate::archive::check_yaml(source).map_err(|_| SpecError::Yaml)?;
        let docs = yaml_rust2::YamlLoader::load_from_str(source).map_err(|_| SpecError::Yaml)?;
        let root = docs.into_iter().next().unwrap_or(Yaml::Null);
        let Yaml::Hash(root) = root else {
            return Err(SpecError::Invalid(
                "the specification is not a YAML mapping".into(),
            ));
        };
        let section = |key: &str| match root.get(&Yaml::String(key.into())) {
            Some(Yaml::Hash(h)) => Ok(h),
            _ => Err(SpecError::Invalid(format!(
                "the specification has no `{key}` mapping"
            ))),
        };

        let mut defaults = NodeSettings::default();
        let mut models: Vec<(String, String, NodeSettings)> = Vec::new();
        for (key, value) in section("models")? {
            let key = text(key);
            if defaults.set(&key, value, "models.")? {
                continue;
            }
            let Yaml::Hash(entry) = value else {
                return Err(SpecError::Invalid(format!(
                    "models.{key} must be a mapping with a url"
                )));
            };
            let at = format!("models.{key}.");
            let mut settings = defaults;
            let mut url = None;
            for (k, v) in entry {
                let k = text(k);
                if k == "url" {
                    url = v.as_str().map(str::to_string);
                } else {
                    settings.set(&k, v, &at)?;
                }
            }
            let url = url
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| SpecError::Invalid(format!("{at}url is missing")))?;
            models.push((key, url, settings));
        }

        let mut entries = Vec::new();
        let mut printed = Vec::new();
        for (key, value) in section("dag")? {
            let targets = match value {
                Yaml::Array(list) => list.iter().map(text).collect::<Vec<_>>(),
                Yaml::Null => Vec::new(),
                other => vec![text(other)],
            };
            printed.push(format!("{}={}", text(key), text(value)));
            entries.push((text(key), targets));
        }
        let dag = Dag::build(&entries)?;
        let nodes = dag
            .names()
            .iter()
            .map(|name| {
                let model = format!("{workflow}__{name}");
                match models.iter().find(|(m, _, _)| m == name) {
                    Some((_, url, settings)) => Node {
                        model,
                        kind: NodeKind::Model { url: url.clone() },
                        settings: *settings,
                    },
                    // TorchServe's function nodes: one worker, no batching, the workflow's
                    // retry and timeout settings.
                    None => Node {
                        model,
                        kind: NodeKind::Function,
                        settings: NodeSettings {
                            max_batch_delay_ms: 0,
                            retry_attempts: defaults.retry_attempts,
                            timeout_ms: defaults.timeout_ms,
                            ..NodeSettings::default()
                        },
                    },
                }
            })
            .collect();
        Ok(Spec {
            defaults,
            dag,
            nodes,
            dag_text: format!("{{{}}}", printed.join(", ")),
        })
    }

    pub fn has_functions(&self) -> bool {
        self.nodes.iter().any(|n| n.kind == NodeKind::Function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "
models:
    min-workers: 1
    max-workers: 4
    batch-size: 3
    max-batch-delay : 5000
    retry-attempts : 3
    timeout-ms : 5000
    m1:
       url : model1.mar
       max-workers: 2
       batch-size: 4
    m2:
       url : model2.mar
dag:
  pre_processing : [m1]
  m1 : [m2]
  m2 : [postprocessing]
";

    #[test]
    fn models_inherit_the_defaults_and_functions_fill_the_gaps() {
        let s = Spec::parse(SPEC, "wf").unwrap();
        assert_eq!(s.defaults.batch_size, 3);
        assert_eq!(
            s.dag_text,
            "{pre_processing=[m1], m1=[m2], m2=[postprocessing]}"
        );
        let names: Vec<&str> = s.dag.names().iter().map(String::as_str).collect();
        assert_eq!(names, ["pre_processing", "m1", "m2", "postprocessing"]);
        let m1 = &s.nodes[1];
        assert_eq!(m1.model, "wf__m1");
        assert_eq!(
            m1.kind,
            NodeKind::Model {
                url: "model1.mar".into()
            }
        );
        assert_eq!((m1.settings.max_workers, m1.settings.batch_size), (2, 4));
        assert_eq!(m1.settings.max_batch_delay_ms, 5000);
        let pre = &s.nodes[0];
        assert_eq!(pre.kind, NodeKind::Function);
        assert_eq!((pre.settings.max_workers, pre.settings.batch_size), (1, 1));
        assert_eq!(
            (pre.settings.retry_attempts, pre.settings.timeout_ms),
            (3, 5000)
        );
        assert!(s.has_functions());
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        assert!(matches!(
            Spec::parse("models: [", "w"),
            Err(SpecError::Yaml)
        ));
        let e = Spec::parse("dag: {a: [b]}", "w").unwrap_err();
        assert_eq!(e.to_string(), "the specification has no `models` mapping");
        let e = Spec::parse("models: {batch-size: x}\ndag: {a: [b]}", "w").unwrap_err();
        assert_eq!(
            e.to_string(),
            "models.batch-size must be a non-negative integer"
        );
        let e = Spec::parse("models: {m: {batch-size: 2}}\ndag: {m: [b]}", "w").unwrap_err();
        assert_eq!(e.to_string(), "models.m.url is missing");
        let e = Spec::parse("models: {}\ndag: {a: [b], c: [b]}", "w").unwrap_err();
        assert!(matches!(e, SpecError::Dag(DagError::StartNodes)));
        // A billion-laughs document is refused before it is expanded.
        let mut bomb = String::from("a: &a [x, x]\n");
        for i in 0..60 {
            bomb.push_str(&format!("b{i}: *a\n"));
        }
        assert!(matches!(Spec::parse(&bomb, "w"), Err(SpecError::Yaml)));
    }
}
