//! Models by name and version, their parameters, and how they are loaded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::archive::{self, ModelArchive};
use crate::backend::RuntimeOptions;
use crate::batching::{BatchSettings, JobQueue, Stats};
use crate::canary::{Event, Split, SplitSpec};
use crate::config::Settings;
use crate::device::Device;
use crate::error::{ApiError, LoadError};
use crate::handler::{self, Handler};
use crate::worker::{WorkerConfig, WorkerPool};

/// How long loading waits for workers to come up before carrying on in the background.
const STARTUP_WAIT: Duration = Duration::from_secs(2);

/// The longest timeout or delay a model may ask for (a year). Any value is accepted, as
/// TorchServe accepts it, but deadlines are instants, and `now + i64::MAX s` would overflow.
const MAX_WAIT_S: u64 = 366 * 24 * 3600;

/// What a registration call (`POST /models`) sets explicitly; start-up loading sets nothing.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub model_name: Option<String>,
    pub handler: Option<String>,
    pub runtime: Option<String>,
    pub batch_size: Option<usize>,
    pub max_batch_delay_ms: Option<u64>,
    /// Workers to start; `None` at start-up (then `default_workers_per_model` applies).
    pub initial_workers: Option<usize>,
    pub response_timeout_s: Option<u64>,
    pub startup_timeout_s: Option<u64>,
    /// The workflow whose node this model is.
    pub workflow: Option<String>,
}

/// A model version's serving parameters, resolved once at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay_ms: u64,
    pub response_timeout_s: u64,
    pub startup_timeout_s: u64,
    pub max_retry_timeout_s: u64,
    pub client_timeout_ms: u64,
    pub job_queue_size: usize,
}

impl ModelParams {
    /// TorchServe's precedence: a registration call's explicit values, then model-config.yaml,
    /// then the `models=` entry, then server defaults; except timeouts, where model-config.yaml
    /// and `models=` come before the call. `gpus` is how many GPUs the server uses (0 on the
    /// CPU): the default worker count.
    pub fn resolve(
        settings: &Settings,
        archive: &ModelArchive,
        name: &str,
        version: &str,
        gpus: usize,
        reg: &Registration,
    ) -> Self {
        let entry = settings
            .models
            .get(name)
            .and_then(|v| v.get(version))
            .cloned()
            .unwrap_or(Value::Null);
        let from_models = |key: &str| entry.get(key).and_then(Value::as_i64).filter(|&v| v > 0);
        let yaml = &archive.config;
        let positive = |key: &str| yaml.int(key).filter(|&v| v > 0);

        let default_workers = match reg.initial_workers {
            Some(n) => n as i64,
            None => settings.workers_default(gpus) as i64,
        };
        let (mut min, mut max) = (default_workers, default_workers);
        if reg.initial_workers.is_none() {
            if let Some(v) = from_models("minWorkers") {
                min = v;
            }
            if let Some(v) = from_models("maxWorkers") {
                max = v;
            }
        }
        if let (Some(ymin), Some(ymax)) = (positive("minWorkers"), yaml.int("maxWorkers")) {
            if ymax >= ymin {
                (min, max) = (ymin, ymax);
            }
        }
        let pick = |key: &str, default: i64| {
            positive(key)
                .or_else(|| from_models(key))
                .unwrap_or(default)
        };
        let explicit =
            |v: Option<i64>, key: &str, default: i64| v.unwrap_or_else(|| pick(key, default));
        // Values found are positive, so the casts keep them.
        let timeout = |v: Option<u64>, key: &str, default: u64| {
            positive(key)
                .or_else(|| from_models(key))
                .map(|found| found as u64)
                .or(v)
                .unwrap_or(default)
                .min(MAX_WAIT_S)
        };
        ModelParams {
            min_workers: min.max(0) as usize,
            max_workers: max.max(min).max(0) as usize,
            batch_size: explicit(reg.batch_size.map(|v| v as i64), "batchSize", 1) as usize,
            max_batch_delay_ms: explicit(
                reg.max_batch_delay_ms.map(|v| v as i64),
                "maxBatchDelay",
                100,
            )
            .min(MAX_WAIT_S as i64 * 1000) as u64,
            response_timeout_s: timeout(
                reg.response_timeout_s,
                "responseTimeout",
                settings.default_response_timeout,
            ),
            startup_timeout_s: timeout(
                reg.startup_timeout_s,
                "startupTimeout",
                settings.default_startup_timeout,
            ),
            max_retry_timeout_s: (positive("maxRetryTimeoutInSec").unwrap_or(300) as u64)
                .min(MAX_WAIT_S),
            client_timeout_ms: (positive("clientTimeoutInMills").unwrap_or(0) as u64)
                .min(MAX_WAIT_S * 1000),
            job_queue_size: positive("jobQueueSize").unwrap_or(settings.job_queue_size as i64)
                as usize,
        }
    }
}

/// One loaded version of a model, with its queue and workers.
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    pub runtime: String,
    /// Parameters at load time; the worker limits live in `pool` (they change with scaling).
    pub params: ModelParams,
    pub loaded_at_startup: bool,
    pub handler: Arc<dyn Handler>,
    pub queue: JobQueue,
    pub pool: WorkerPool,
    pub archive: ModelArchive,
    pub metrics: Arc<crate::metrics::VersionMetrics>,
    /// The envelope the server applies for a native handler (`kserve`); Python workers apply
    /// theirs themselves.
    pub native_envelope: Option<String>,
    /// A file fetched into the store by registration; deleted when the model goes.
    pub downloaded: Option<std::path::PathBuf>,
    /// The workflow this model is a node of (such models stay out of snapshots).
    pub workflow: Option<String>,
}

impl ModelVersion {
    pub fn url(&self) -> &str {
        &self.archive.url
    }

    /// A workflow's function node: code of the workflow archive, no model archive of its own.
    pub fn is_function(&self) -> bool {
        self.workflow.is_some() && self.archive.url.is_empty()
    }

    pub fn device(&self) -> Device {
        self.handler.device()
    }

    /// TorchServe's health rule: at least `minWorkers` healthy workers.
    pub fn is_healthy(&self) -> bool {
        self.pool.healthy() >= self.pool.limits().0
    }

    /// Readiness: at least `minWorkers` workers READY (and at least one).
    pub fn is_ready(&self) -> bool {
        self.pool.ready() >= self.pool.limits().0.max(1)
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.params.response_timeout_s.max(1))
    }

    /// A request this version answered: its metrics, and the window of the split that
    /// routed it there (its guard rails judge the version on it).
    pub fn finished(
        &self,
        split: Option<&SharedSplit>,
        status: u16,
        took: Duration,
        queued: Option<Duration>,
    ) {
        self.metrics.request_done(status, took, queued);
        if let Some(split) = split {
            if let Ok(mut s) = split.lock() {
                s.record(&self.version, took, status >= 500);
            }
        }
    }
}

struct Versions {
    default: String,
    versions: BTreeMap<String, Arc<ModelVersion>>,
    /// A traffic split between the default and canary versions.
    split: Option<SharedSplit>,
}

impl Versions {
    /// Takes `version` out of the split (gone, or now the default); an empty split goes.
    fn leave_split(&mut self, version: &str) {
        let Some(split) = &self.split else { return };
        let mut s = split.lock().expect("split lock");
        s.drop_version(version);
        let empty = s.is_empty();
        drop(s);
        if empty {
            self.split = None;
        }
    }
}

pub type SharedSplit = Arc<Mutex<Split>>;

fn no_split(name: &str) -> ApiError {
    ApiError::new(
        404,
        "ModelNotFoundException",
        format!("Model {name} has no traffic split"),
    )
}

/// Where a request goes: its version, the split that chose it, and a shadow copy's version.
pub struct Routed {
    pub version: Arc<ModelVersion>,
    pub split: Option<SharedSplit>,
    pub shadow: Option<Arc<ModelVersion>>,
}

/// Every registered model. Lookups take a read lock; (un)registration is rare.
pub struct Registry {
    models: RwLock<BTreeMap<String, Versions>>,
    next_worker_id: AtomicU32,
    /// Handed to handlers whose workers report metrics.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Registry {
    pub fn new(first_worker_id: u32, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            models: RwLock::new(BTreeMap::new()),
            next_worker_id: AtomicU32::new(first_worker_id),
            metrics,
        }
    }

    /// The requested version, or the default one.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, ApiError> {
        let models = self.models.read().expect("registry lock");
        let entry = models
            .get(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        let v = version.unwrap_or(&entry.default);
        entry
            .versions
            .get(v)
            .cloned()
            .ok_or_else(|| ApiError::version_not_found(name, v))
    }

    /// An inference request's version: the named one, else the split's choice for `key` (the
    /// routing key), else the default.
    pub fn route(
        &self,
        name: &str,
        version: Option<&str>,
        key: Option<&str>,
    ) -> Result<Routed, ApiError> {
        let models = self.models.read().expect("registry lock");
        let entry = models
            .get(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        let find = |v: &str| {
            entry
                .versions
                .get(v)
                .cloned()
                .ok_or_else(|| ApiError::version_not_found(name, v))
        };
        let (Some(split), None) = (&entry.split, version) else {
            return Ok(Routed {
                version: find(version.unwrap_or(&entry.default))?,
                split: None,
                shadow: None,
            });
        };
        let route = split.lock().expect("split lock").route(key);
        Ok(Routed {
            version: find(route.version.as_deref().unwrap_or(&entry.default))?,
            split: Some(split.clone()),
            shadow: route.shadow.and_then(|v| entry.versions.get(&v).cloned()),
        })
    }

    /// Sets (or replaces) a model's split after checking it against its versions.
    pub fn set_split(&self, name: &str, spec: SplitSpec) -> Result<(), ApiError> {
        let mut models = self.models.write().expect("registry lock");
        let entry = models
            .get_mut(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        spec.validate(name, &entry.default, &|v| entry.versions.contains_key(v))?;
        let split = Split::new(spec);
        self.publish_weights(name, &entry.default, Some(&split), entry.split.as_ref());
        tracing::info!(model = name, split = ?split.spec(), "traffic split set");
        entry.split = Some(Arc::new(Mutex::new(split)));
        Ok(())
    }

    /// Removes a model's split; every unversioned request goes to the default again.
    pub fn clear_split(&self, name: &str) -> Result<(), ApiError> {
        let mut models = self.models.write().expect("registry lock");
        let entry = models
            .get_mut(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        let old = entry.split.take().ok_or_else(|| no_split(name))?;
        self.publish_weights(name, &entry.default, None, Some(&old));
        tracing::info!(model = name, "traffic split cleared");
        Ok(())
    }

    /// Makes a canary the default version and clears the split; returns the new default.
    pub fn promote(&self, name: &str, version: Option<&str>) -> Result<String, ApiError> {
        let mut models = self.models.write().expect("registry lock");
        let entry = models
            .get_mut(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        let split = entry.split.clone().ok_or_else(|| no_split(name))?;
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
                return Err(ApiError::new(
                    400,
                    "BadRequestException",
                    format!("Version {v} is not a canary of model {name}"),
                ))
            }
            (None, [only]) => only.clone(),
            (None, _) => {
                return Err(ApiError::new(
                    400,
                    "BadRequestException",
                    format!("Model {name} has several canaries; name one with ?version="),
                ))
            }
        };
        if !entry.versions.contains_key(&chosen) {
            return Err(ApiError::version_not_found(name, &chosen));
        }
        let old_default = std::mem::replace(&mut entry.default, chosen.clone());
        entry.split = None;
        self.publish_weights(name, &old_default, None, Some(&split));
        tracing::info!(model = name, version = %chosen, "canary promoted to default version");
        Ok(chosen)
    }

    /// A model's split as the API shows it.
    pub fn split_view(&self, name: &str) -> Result<serde_json::Value, ApiError> {
        let models = self.models.read().expect("registry lock");
        let entry = models
            .get(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        let split = entry.split.as_ref().ok_or_else(|| no_split(name))?;
        let view = split.lock().expect("split lock").view(name, &entry.default);
        Ok(view)
    }

    /// Every model's split, as it should come back after a restart.
    pub fn splits(&self) -> BTreeMap<String, SplitSpec> {
        let models = self.models.read().expect("registry lock");
        models
            .iter()
            .filter_map(|(name, e)| {
                let split = e.split.as_ref()?;
                Some((
                    name.clone(),
                    split.lock().expect("split lock").effective_spec(),
                ))
            })
            .collect()
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

    /// A fresh worker id (TorchServe numbers workers like ports, from `initial_worker_port`).
    pub fn next_worker_id(&self) -> u32 {
        self.next_worker_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Sets the gauges read at scrape time (queue depths).
    pub fn refresh_gauges(&self) {
        for mv in self.all() {
            mv.metrics.set_queue_depth(mv.queue.pending());
        }
    }

    /// Every loaded version of every model.
    pub fn all(&self) -> Vec<Arc<ModelVersion>> {
        let models = self.models.read().expect("registry lock");
        models
            .values()
            .flat_map(|e| e.versions.values().cloned())
            .collect()
    }

    /// Every model with its default version and all its versions, for snapshots.
    pub fn snapshot_view(&self) -> Vec<(String, String, Vec<Arc<ModelVersion>>)> {
        let models = self.models.read().expect("registry lock");
        models
            .iter()
            .map(|(name, e)| {
                (
                    name.clone(),
                    e.default.clone(),
                    e.versions.values().cloned().collect(),
                )
            })
            .collect()
    }

    /// Replaces workers stuck past their model's response timeout.
    pub fn supervise(&self) {
        for m in self.all() {
            m.pool
                .replace_stuck(m.response_timeout(), &|| self.next_worker_id());
        }
        self.tick_splits();
    }

    /// Checks every split's guards and moves stepped rollouts on.
    fn tick_splits(&self) {
        let splits: Vec<(String, String, SharedSplit)> = {
            let models = self.models.read().expect("registry lock");
            models
                .iter()
                .filter_map(|(n, e)| Some((n.clone(), e.default.clone(), e.split.clone()?)))
                .collect()
        };
        for (name, default, split) in splits {
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

    /// Every version of a model (default first).
    pub fn all_versions(&self, name: &str) -> Result<Vec<Arc<ModelVersion>>, ApiError> {
        let models = self.models.read().expect("registry lock");
        let entry = models
            .get(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        let mut all: Vec<_> = entry.versions.values().cloned().collect();
        all.sort_by_key(|m| m.version != entry.default);
        Ok(all)
    }

    /// Default versions, sorted by name.
    pub fn defaults(&self) -> Vec<Arc<ModelVersion>> {
        let models = self.models.read().expect("registry lock");
        models
            .values()
            .filter_map(|e| e.versions.get(&e.default).cloned())
            .collect()
    }

    /// Adds a loaded version; a version already there is a 409, as in TorchServe.
    pub fn insert(&self, model: ModelVersion) -> Result<Arc<ModelVersion>, ApiError> {
        let mut models = self.models.write().expect("registry lock");
        let entry = models
            .entry(model.name.clone())
            .or_insert_with(|| Versions {
                default: model.version.clone(),
                versions: BTreeMap::new(),
                split: None,
            });
        if entry.versions.contains_key(&model.version) {
            return Err(ApiError::new(
                409,
                "ConflictStatusException",
                format!(
                    "Model version {} is already registered for model {}",
                    model.version, model.name
                ),
            ));
        }
        let canary = (model.version != entry.default)
            .then(|| model.archive.config.ferroserve("canary").cloned())
            .flatten();
        let (name, version) = (model.name.clone(), model.version.clone());
        let model = Arc::new(model);
        entry.versions.insert(version.clone(), model.clone());
        drop(models);
        if let Some(canary) = canary {
            // An archive's model-config.yaml may enter its version as a canary:
            // `ferroserve: {canary: {weight, guards, rollout}}`.
            if let Err(e) = self.join_split(&name, &version, canary) {
                tracing::error!(model = %name, %version, "canary from model-config.yaml not set: {e}");
            }
        }
        Ok(model)
    }

    /// Registers `url` as `POST /models` does: a store entry, or an allowed URL fetched into
    /// the store first (deleted again if the model does not register). Blocking.
    pub fn register_url(
        &self,
        settings: &Settings,
        runtime: &RuntimeOptions,
        url: &str,
        reg: &Registration,
    ) -> Result<Arc<ModelVersion>, ApiError> {
        let store = settings.model_store.as_deref().ok_or_else(|| {
            ApiError::new(
                404,
                "ModelNotFoundException",
                "Model store has not been configured.",
            )
        })?;
        let resolved = crate::fetch::resolve(
            url,
            store,
            &settings.allowed_urls,
            settings.max_archive_size,
        )?;
        let registered = self
            .load(settings, runtime, &resolved.entry, reg, false)
            .map_err(ApiError::from)
            .and_then(|mut m| {
                m.archive.url = url.to_string();
                m.downloaded = resolved.downloaded.clone();
                self.insert(m)
            });
        if registered.is_err() {
            if let Some(file) = &resolved.downloaded {
                let _ = std::fs::remove_file(file);
            }
        }
        registered
    }

    /// Waits up to the version's start-up timeout for its workers; a version whose workers do
    /// not start is unregistered again, as TorchServe does. Blocking.
    pub fn await_workers(&self, m: &ModelVersion) -> Result<(), ApiError> {
        let startup = Duration::from_secs(m.params.startup_timeout_s.max(1));
        if m.pool.wait_started(startup) && m.is_ready() {
            return Ok(());
        }
        let _ = self.remove(&m.name, Some(&m.version));
        Err(ApiError::internal(
            500,
            format!(
                "Failed to start workers for model {} version: {}",
                m.name, m.version
            ),
        ))
    }

    /// Adds `version` to its model's split (created if needed) with the archive's settings.
    fn join_split(&self, name: &str, version: &str, canary: Value) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ArchiveCanary {
            weight: f64,
            guards: Option<crate::canary::Guards>,
            rollout: Option<crate::canary::Rollout>,
        }
        let c: ArchiveCanary = serde_json::from_value(canary).map_err(|e| e.to_string())?;
        let mut spec = {
            let models = self.models.read().expect("registry lock");
            models
                .get(name)
                .and_then(|e| e.split.as_ref())
                .map(|s| s.lock().expect("split lock").effective_spec())
                .unwrap_or_default()
        };
        spec.canaries.insert(version.to_string(), c.weight);
        spec.guards = c.guards.or(spec.guards);
        spec.rollout = c.rollout.or(spec.rollout);
        self.set_split(name, spec).map_err(|e| e.message)
    }

    /// Removes a version (the default one when none is named). The default version cannot go
    /// while others remain (403, as TorchServe). Its workers are retired: they finish the
    /// batch they are running.
    pub fn remove(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, ApiError> {
        let mut models = self.models.write().expect("registry lock");
        let entry = models
            .get_mut(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        let v = version.unwrap_or(&entry.default).to_string();
        if !entry.versions.contains_key(&v) {
            return Err(ApiError::version_not_found(name, &v));
        }
        if v == entry.default && entry.versions.len() > 1 {
            return Err(ApiError::new(
                403,
                "InvalidModelVersionException",
                format!("Cannot remove default version for model {name}"),
            ));
        }
        let removed = entry.versions.remove(&v).expect("checked above");
        entry.leave_split(&v);
        if entry.versions.is_empty() {
            models.remove(name);
        }
        drop(models);
        // Its series go now, so a re-registered version starts afresh.
        self.metrics.forget_version(name, &v);
        // No new request can reach it now; let the queue drain (bounded by the response
        // timeout), then retire the workers, which finish their batch first.
        let draining = removed.clone();
        let _ = std::thread::Builder::new()
            .name(format!("drain-{name}"))
            .spawn(move || {
                let deadline = Instant::now() + draining.response_timeout();
                while draining.queue.pending() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = draining.pool.scale(0, 0, &|| 0);
                // Once the version's last holder is gone its model is freed; give the freed
                // pages back to the system (glibc keeps them otherwise, and RSS creeps up over
                // many load/unload cycles).
                let deadline = Instant::now() + Duration::from_secs(5);
                while Arc::strong_count(&draining) > 1 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                drop(draining);
                release_freed_memory();
            });
        if let Some(file) = &removed.downloaded {
            let _ = std::fs::remove_file(file);
        }
        Ok(removed)
    }

    pub fn set_default(&self, name: &str, version: &str) -> Result<(), ApiError> {
        let mut models = self.models.write().expect("registry lock");
        let entry = models
            .get_mut(name)
            .ok_or_else(|| ApiError::model_not_found(name))?;
        if !entry.versions.contains_key(version) {
            // TorchServe words this one differently from describe's.
            return Err(ApiError::new(
                404,
                "ModelVersionNotFoundException",
                format!("Model version {version} does not exist for model {name}"),
            ));
        }
        entry.default = version.to_string();
        // The new default cannot also be a canary of itself.
        entry.leave_split(version);
        Ok(())
    }

    /// Opens an archive, builds its handler and starts its workers.
    pub fn load(
        &self,
        settings: &Settings,
        runtime: &RuntimeOptions,
        url: &str,
        reg: &Registration,
        at_startup: bool,
    ) -> Result<ModelVersion, LoadError> {
        let store = settings
            .model_store
            .as_deref()
            .ok_or_else(|| LoadError::Invalid("Model store has not been configured.".into()))?;
        let archive = ModelArchive::open(store, url, settings.max_archive_size)?;
        self.load_archive(settings, runtime, archive, reg, at_startup)
    }

    /// Builds the handler of an opened archive and starts its workers.
    pub fn load_archive(
        &self,
        settings: &Settings,
        runtime: &RuntimeOptions,
        mut archive: ModelArchive,
        reg: &Registration,
        at_startup: bool,
    ) -> Result<ModelVersion, LoadError> {
        let url = archive.url.clone();
        if let Some(handler) = &reg.handler {
            archive.manifest.model.handler = Some(handler.clone());
        }
        if let Some(runtime) = &reg.runtime {
            archive.manifest.runtime = Some(runtime.clone());
        }
        let name = match reg
            .model_name
            .clone()
            .or_else(|| archive.manifest.model.model_name.clone())
        {
            Some(name) => name,
            // Start-up entries get a default name; the register API insists on one.
            None if at_startup => archive::default_model_name(&url),
            None => return Err(LoadError::Invalid("Model name is not defined.".into())),
        };
        let version = archive
            .manifest
            .model
            .model_version
            .clone()
            .unwrap_or_else(|| "1.0".into());
        let runtime_name = archive
            .manifest
            .runtime
            .clone()
            .unwrap_or_else(|| "python".into());
        if !matches!(runtime_name.as_str(), "python" | "python3" | "LSP") {
            return Err(LoadError::Invalid(
                "Runtime is not defined or invalid.".into(),
            ));
        }
        let gpus = if runtime.device.is_gpu() {
            settings.number_of_gpu.unwrap_or(1)
        } else {
            0
        };
        let params = ModelParams::resolve(settings, &archive, &name, &version, gpus, reg);
        let handler = handler::load(
            &archive,
            &handler::HandlerSpec {
                runtime,
                model_name: &name,
                model_version: &version,
                batch_size: params.batch_size,
                response_timeout: Duration::from_secs(params.response_timeout_s.max(1)),
                startup_timeout: Duration::from_secs(params.startup_timeout_s.max(1)),
                settings,
                metrics: &self.metrics,
            },
        )?;
        let queue = JobQueue::new(params.job_queue_size.max(1));
        let metrics = self.metrics.version(&name, &version);
        let native_envelope = handler::native_handler_name(&archive)
            .and(handler::envelope(settings, &archive))
            .filter(|e| !e.trim().is_empty());
        let config = WorkerConfig {
            metrics: metrics.clone(),
            label: format!("{name}_{version}"),
            batch: BatchSettings {
                batch_size: params.batch_size.max(1),
                max_batch_delay: Duration::from_millis(params.max_batch_delay_ms),
            },
            max_retry: Duration::from_secs(params.max_retry_timeout_s),
        };
        let pool = WorkerPool::new(
            config,
            queue.intake(),
            handler.clone(),
            Arc::new(Stats::default()),
        );
        pool.scale(params.min_workers, params.max_workers, &|| {
            self.next_worker_id()
        })
        .map_err(|e| LoadError::Invalid(format!("cannot start worker threads: {e}")))?;
        // Native workers start at once; slower ones (Python) go on loading in the background.
        // Start-up models do not wait at all: their workers all start together, and
        // readiness reports when they are up.
        if !at_startup {
            pool.wait_started(STARTUP_WAIT);
        }
        Ok(ModelVersion {
            name,
            version,
            runtime: runtime_name,
            params,
            loaded_at_startup: at_startup,
            handler,
            queue,
            pool,
            archive,
            metrics,
            native_envelope,
            downloaded: None,
            workflow: reg.workflow.clone(),
        })
    }
}

/// Returns free heap pages to the system.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Expands `load_models` entries: `all` means every `.mar`/`.model` file and folder of the
/// store (hidden entries skipped); otherwise `[name=]url` entries.
pub fn startup_entries(settings: &Settings) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for entry in &settings.load_models {
        if entry.eq_ignore_ascii_case("all") {
            let Some(store) = &settings.model_store else {
                continue;
            };
            let mut names: Vec<String> = std::fs::read_dir(store)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter_map(|e| {
                            let name = e.file_name().to_string_lossy().to_string();
                            let keep = !name.starts_with('.')
                                && (e.path().is_dir()
                                    || name.ends_with(".mar")
                                    || name.ends_with(".model"));
                            keep.then_some(name)
                        })
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            out.extend(names.into_iter().map(|n| (None, n)));
        } else {
            match entry.split_once('=') {
                Some((name, url)) => {
                    out.push((Some(name.trim().to_string()), url.trim().to_string()))
                }
                None => out.push((None, entry.clone())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use std::collections::HashMap;

    fn folder(yaml: Option<&str>) -> (tempfile::TempDir, ModelArchive) {
        let store = tempfile::tempdir().unwrap();
        let dir = store.path().join("m");
        std::fs::create_dir_all(dir.join("MAR-INF")).unwrap();
        let config = yaml.map_or(String::new(), |_| {
            ", \"configFile\": \"model-config.yaml\"".into()
        });
        std::fs::write(
            dir.join("MAR-INF/MANIFEST.json"),
            format!("{{\"model\": {{\"modelName\": \"m\", \"modelVersion\": \"2.0\"{config}}}}}"),
        )
        .unwrap();
        if let Some(y) = yaml {
            std::fs::write(dir.join("model-config.yaml"), y).unwrap();
        }
        let archive = ModelArchive::open(store.path(), "m", 1 << 20).unwrap();
        (store, archive)
    }

    fn settings(props: &str) -> Settings {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), props).unwrap();
        Settings::resolve(&Cli::default(), &HashMap::new(), f.path()).unwrap()
    }

    #[test]
    fn defaults_then_models_entry_then_yaml() {
        let s = settings(
            "default_workers_per_model=3\ndefault_response_timeout=50\njob_queue_size=7\n",
        );
        let (_d, a) = folder(None);
        let p = ModelParams::resolve(&s, &a, "m", "2.0", 0, &Registration::default());
        assert_eq!(
            (
                p.min_workers,
                p.max_workers,
                p.batch_size,
                p.max_batch_delay_ms
            ),
            (3, 3, 1, 100)
        );
        assert_eq!((p.response_timeout_s, p.job_queue_size), (50, 7));

        let s = settings(
            "default_workers_per_model=3\nmodels={\"m\": {\"2.0\": {\"minWorkers\": 2, \"maxWorkers\": 4, \"batchSize\": 8, \"maxBatchDelay\": 5, \"responseTimeout\": 9}}}\n",
        );
        let p = ModelParams::resolve(&s, &a, "m", "2.0", 0, &Registration::default());
        assert_eq!(
            (
                p.min_workers,
                p.max_workers,
                p.batch_size,
                p.max_batch_delay_ms,
                p.response_timeout_s
            ),
            (2, 4, 8, 5, 9)
        );

        let (_d, a) = folder(Some(
            "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 16\njobQueueSize: 3\n",
        ));
        let p = ModelParams::resolve(&s, &a, "m", "2.0", 0, &Registration::default());
        assert_eq!(
            (
                p.min_workers,
                p.max_workers,
                p.batch_size,
                p.max_batch_delay_ms
            ),
            (1, 1, 16, 5)
        );
        assert_eq!((p.response_timeout_s, p.job_queue_size), (9, 3));

        // An invalid YAML worker pair (max < min) is ignored.
        let (_d, a) = folder(Some("minWorkers: 5\nmaxWorkers: 2\n"));
        let p = ModelParams::resolve(&s, &a, "m", "2.0", 0, &Registration::default());
        assert_eq!((p.min_workers, p.max_workers), (2, 4));
    }

    /// Deadlines are `now + timeout`: any value is accepted, at most a year is used.
    #[test]
    fn huge_timeouts_are_bounded() {
        let (_d, a) = folder(Some(
            "maxRetryTimeoutInSec: 9223372036854775807\nclientTimeoutInMills: 9223372036854775807\n",
        ));
        let reg = Registration {
            response_timeout_s: Some(u64::MAX),
            startup_timeout_s: Some(i64::MAX as u64),
            max_batch_delay_ms: Some(i64::MAX as u64),
            ..Registration::default()
        };
        let p = ModelParams::resolve(&settings(""), &a, "m", "2.0", 0, &reg);
        let year = MAX_WAIT_S;
        assert_eq!(
            (
                p.response_timeout_s,
                p.startup_timeout_s,
                p.max_retry_timeout_s,
                p.client_timeout_ms,
                p.max_batch_delay_ms
            ),
            (year, year, year, year * 1000, year * 1000)
        );
        let later = std::time::Instant::now() + Duration::from_secs(p.startup_timeout_s);
        assert!(later > std::time::Instant::now());
    }

    #[test]
    fn gpus_set_the_default_worker_count() {
        let (_d, a) = folder(None);
        let p = ModelParams::resolve(&settings(""), &a, "m", "2.0", 4, &Registration::default());
        assert_eq!(p.min_workers, 4);
    }

    #[test]
    fn startup_entries_expand_all_and_names() {
        let store = tempfile::tempdir().unwrap();
        for f in ["b.mar", "a.mar", ".hidden.mar", "notes.txt"] {
            std::fs::write(store.path().join(f), "").unwrap();
        }
        std::fs::create_dir(store.path().join("folder")).unwrap();
        let s = settings(&format!(
            "model_store={}\nload_models=all, x=y.mar\n",
            store.path().display()
        ));
        let e = startup_entries(&s);
        let names: Vec<_> = e.iter().map(|(n, u)| (n.as_deref(), u.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (None, "a.mar"),
                (None, "b.mar"),
                (None, "folder"),
                (Some("x"), "y.mar")
            ]
        );
    }
}
