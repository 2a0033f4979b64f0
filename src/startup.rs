//! The models a server loads when it starts (`model_snapshot`, else `load_models`, with the
//! traffic splits of either). They load in the background while the listeners already answer,
//! as TorchServe's workers do: a liveness probe gets its `/ping` at once, however long a model
//! takes, and readiness (`/v2/health/ready`) waits for this load to finish.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Settings;
use crate::loader::{self, Loader};
use crate::registry::canaries::Canaries;
use crate::registry::Registration;

/// Whether the start-up load is still running, and whether it should stop early.
#[derive(Default)]
pub struct StartupLoad {
    done: AtomicBool,
    cancelled: AtomicBool,
}

impl StartupLoad {
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// Asks the load to stop after the model it is loading (the server is shutting down).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// One start-up model: where it comes from and how it registers.
pub struct Entry {
    url: String,
    registration: Registration,
    /// The version (model, version) made the default once loaded: snapshots record it.
    default_version: Option<(String, String)>,
    /// A drift reference the snapshot kept (captured from traffic).
    drift_reference: Option<crate::drift::Reference>,
}

/// What the server will load, checked before any listener opens: a snapshot naming an archive
/// that is not in the store is a configuration error, as in TorchServe.
pub fn plan(settings: &Settings, store: &Path) -> Result<Vec<Entry>, String> {
    let Some(snapshot) = &settings.model_snapshot else {
        return Ok(loader::startup_entries(settings)
            .into_iter()
            .map(|(name, url)| Entry {
                url,
                registration: Registration {
                    model_name: name,
                    ..Default::default()
                },
                default_version: None,
                drift_reference: None,
            })
            .collect());
    };
    let mut entries = Vec::new();
    for (name, versions) in &snapshot.models {
        for (version, v) in versions {
            if !store.join(&v.mar_name).exists() {
                return Err(format!(
                    "invalid model_snapshot: {} (model {name} version {version}) is not in the model store",
                    v.mar_name
                ));
            }
            entries.push(Entry {
                url: v.mar_name.clone(),
                registration: Registration {
                    model_name: Some(name.clone()),
                    runtime: v.runtime_type.clone(),
                    batch_size: Some(v.batch_size),
                    max_batch_delay_ms: Some(v.max_batch_delay),
                    initial_workers: Some(v.min_workers),
                    response_timeout_s: Some(v.response_timeout),
                    startup_timeout_s: Some(v.startup_timeout),
                    ..Default::default()
                },
                default_version: v.default_version.then(|| (name.clone(), version.clone())),
                drift_reference: v
                    .drift_reference
                    .clone()
                    .and_then(|r| serde_json::from_value(r).ok()),
            });
        }
    }
    Ok(entries)
}

/// Loads every planned model (a failure is logged and the server goes on without it), then
/// the traffic splits, then marks the load done.
pub fn load(loader: &Loader, canaries: &Canaries, entries: Vec<Entry>, state: &StartupLoad) {
    let registry = loader.registry();
    let total = entries.len();
    let mut loaded = 0;
    for entry in entries {
        if state.is_cancelled() {
            tracing::info!("shutting down: the remaining start-up models are not loaded");
            break;
        }
        let result = loader
            .load_url(&entry.url, &entry.registration, true)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                if let (Some(drift), Some(r)) = (&m.drift, entry.drift_reference.clone()) {
                    drift.restore(r);
                }
                let (n, v, d, w) = (
                    m.name.clone(),
                    m.version.clone(),
                    m.device(),
                    m.pool.limits().0,
                );
                loader
                    .add(m)
                    .map(|_| (n, v, d, w))
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok((n, v, d, w)) => {
                loaded += 1;
                tracing::info!(model = %n, version = %v, device = %d, workers = w, "model loaded");
                if let Some((name, version)) = &entry.default_version {
                    let _ = registry.set_default(name, version);
                }
            }
            Err(e) => tracing::error!(url = %entry.url, "failed to load model: {e}"),
        }
    }
    set_splits(canaries, loader.settings());
    state.finish();
    tracing::info!("start-up models loaded: {loaded} of {total}");
}

/// Traffic splits: from the snapshot, else from `models=` (`"canary"` next to versions).
fn set_splits(canaries: &Canaries, settings: &Settings) {
    let splits: Vec<(String, serde_json::Value)> = match &settings.model_snapshot {
        Some(snapshot) => snapshot
            .canaries
            .iter()
            .filter_map(|(m, s)| Some((m.clone(), serde_json::to_value(s).ok()?)))
            .collect(),
        None => settings
            .models
            .iter()
            .filter_map(|(m, v)| Some((m.clone(), v.get("canary")?.clone())))
            .collect(),
    };
    for (model, spec) in splits {
        let set = serde_json::from_value(spec)
            .map_err(|e| e.to_string())
            .and_then(|spec| canaries.set(&model, spec).map_err(|e| e.to_string()));
        if let Err(e) = set {
            tracing::error!(model = %model, "traffic split not set: {e}");
        }
    }
}
