//! Split administration: setting, clearing and promoting a model's traffic split, moving
//! stepped rollouts on and rolling canaries back, with the weight gauges kept in step.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{Registry, SharedSplit};
use crate::canary::{Event, Guards, Rollout, Split, SplitSpec};
use crate::error::ServeError;
use crate::metrics::Metrics;

pub struct Canaries {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Canaries {
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        Self { registry, metrics }
    }

    /// Sets (or replaces) a model's split after checking it against its versions.
    pub fn set(&self, name: &str, spec: SplitSpec) -> Result<(), ServeError> {
        self.registry.update(name, |model| {
            spec.validate(name, model.default_version(), &|v| model.has_version(v))?;
            let split = Split::new(spec);
            self.publish_weights(name, model.default_version(), Some(&split), model.split());
            tracing::info!(model = name, split = ?split.spec(), "traffic split set");
            model.replace_split(Some(Arc::new(Mutex::new(split))));
            Ok(())
        })
    }

    /// Removes a model's split; every unversioned request goes to the default again.
    pub fn clear(&self, name: &str) -> Result<(), ServeError> {
        self.registry.update(name, |model| {
            let old = model
                .replace_split(None)
                .ok_or_else(|| ServeError::NoSplit(name.to_string()))?;
            self.publish_weights(name, model.default_version(), None, Some(&old));
            tracing::info!(model = name, "traffic split cleared");
            Ok(())
        })
    }

    /// Makes a canary the default version and clears the split; returns the new default.
    pub fn promote(&self, name: &str, version: Option<&str>) -> Result<String, ServeError> {
        self.registry.update(name, |model| {
            let split = model
                .split()
                .cloned()
                .ok_or_else(|| ServeError::NoSplit(name.to_string()))?;
            let canaries: Vec<String> = split
                .lock()
                .expect("split lock")
                .spec()
                .canaries
                .keys()
                .cloned()
                .collect();
            let chosen = match (version, canaries.as_slice()) {
                (Some(v), _) if canaries.iter().any(|c| c == v) => v.to_string(),
                (Some(v), _) => {
                    return Err(ServeError::NotCanary {
                        model: name.to_string(),
                        version: v.to_string(),
                    })
                }
                (None, [only]) => only.clone(),
                (None, _) => return Err(ServeError::AmbiguousCanary(name.to_string())),
            };
            if !model.has_version(&chosen) {
                return Err(ServeError::version_not_found(name, &chosen));
            }
            let old_default = model.make_default(&chosen);
            model.replace_split(None);
            self.publish_weights(name, &old_default, None, Some(&split));
            tracing::info!(model = name, version = %chosen, "canary promoted to default version");
            Ok(chosen)
        })
    }

    /// A model's split as the API shows it.
    pub fn view(&self, name: &str) -> Result<Value, ServeError> {
        self.registry.inspect(name, |model| {
            let split = model
                .split()
                .ok_or_else(|| ServeError::NoSplit(name.to_string()))?;
            let view = split
                .lock()
                .expect("split lock")
                .view(name, model.default_version());
            Ok(view)
        })
    }

    /// Every model's split, as it should come back after a restart.
    pub fn specs(&self) -> BTreeMap<String, SplitSpec> {
        self.registry
            .splits()
            .into_iter()
            .map(|(name, _, split)| {
                let spec = split.lock().expect("split lock").effective_spec();
                (name, spec)
            })
            .collect()
    }

    /// Adds `version` to its model's split (created if needed) with an archive's
    /// `ferroserve: {canary: {weight, guards, rollout}}` settings.
    pub fn join(&self, name: &str, version: &str, canary: Value) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ArchiveCanary {
            weight: f64,
            guards: Option<Guards>,
            rollout: Option<Rollout>,
        }
        let c: ArchiveCanary = serde_json::from_value(canary).map_err(|e| e.to_string())?;
        let mut spec = self
            .registry
            .inspect(name, |model| {
                Ok(model
                    .split()
                    .map(|s| s.lock().expect("split lock").effective_spec()))
            })
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        spec.canaries.insert(version.to_string(), c.weight);
        spec.guards = c.guards.or(spec.guards);
        spec.rollout = c.rollout.or(spec.rollout);
        self.set(name, spec).map_err(|e| e.to_string())
    }

    /// Checks every split's guards and moves stepped rollouts on.
    pub fn tick(&self) {
        for (name, default, split) in self.registry.splits() {
            let (events, total) = {
                let mut s = split.lock().expect("split lock");
                let events = s.tick(&default);
                (events, s.canary_share())
            };
            for event in events {
                match event {
                    Event::Weight { version, weight } => {
                        tracing::info!(model = %name, %version, weight, "canary weight changed");
                        self.metrics.canary_weight(&name, &version, weight);
                        self.metrics.canary_weight(&name, &default, 100.0 - total);
                    }
                    Event::RolledBack { version, reason } => {
                        tracing::warn!(model = %name, %version, "canary rolled back: {reason}");
                        self.metrics.canary_rollback(&name, &version);
                    }
                }
            }
        }
    }

    /// The canary weight gauges after a split changed (`old` zeroed, `new` set).
    fn publish_weights(
        &self,
        name: &str,
        default: &str,
        new: Option<&Split>,
        old: Option<&SharedSplit>,
    ) {
        if let Some(old) = old {
            for (v, _) in old.lock().expect("split lock").weights() {
                self.metrics.canary_weight(name, v, 0.0);
            }
        }
        let canary = new.map_or(0.0, Split::canary_share);
        self.metrics.canary_weight(name, default, 100.0 - canary);
        if let Some(new) = new {
            for (v, w) in new.weights() {
                self.metrics.canary_weight(name, v, *w);
            }
        }
    }
}
