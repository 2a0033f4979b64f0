//! Turning archives into running model versions, and taking them down again: a registration's
//! parameters, archive, handler, queue and worker pool; URL registration into the store; the
//! start-up entries of `load_models`; unregistration with its drain.

use std::sync::Arc;
use std::time::Duration;

use crate::archive::{self, ModelArchive};
use crate::backend::RuntimeOptions;
use crate::batching::{BatchSettings, JobQueue, Stats};
use crate::config::Settings;
use crate::drift;
use crate::error::{LoadError, ServeError};
use crate::handler;
use crate::metrics::Metrics;
use crate::registry::canaries::Canaries;
use crate::registry::{ModelParams, ModelVersion, Registration, Registry};
use crate::worker::{WorkerConfig, WorkerPool};

/// How long loading waits for workers to come up before carrying on in the background.
const STARTUP_WAIT: Duration = Duration::from_secs(2);

pub struct Loader {
    registry: Arc<Registry>,
    canaries: Arc<Canaries>,
    metrics: Arc<Metrics>,
    settings: Arc<Settings>,
    runtime: RuntimeOptions,
    /// The runtime whose timers bound the workers' streamed answers.
    tasks: tokio::runtime::Handle,
}

impl Loader {
    pub fn new(
        registry: Arc<Registry>,
        canaries: Arc<Canaries>,
        metrics: Arc<Metrics>,
        settings: Arc<Settings>,
        runtime: RuntimeOptions,
        tasks: tokio::runtime::Handle,
    ) -> Self {
        Self {
            registry,
            canaries,
            metrics,
            settings,
            runtime,
            tasks,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Adds a loaded version to the registry; an archive's model-config.yaml may enter a
    /// version that is not the default as a canary: `ferroserve: {canary: {weight, guards,
    /// rollout}}`.
    pub fn add(&self, version: ModelVersion) -> Result<Arc<ModelVersion>, ServeError> {
        let canary = version.archive.config.ferroserve("canary").cloned();
        let added = self.registry.insert(version)?;
        let is_default = self
            .registry
            .get(&added.name, None)
            .is_ok_and(|d| d.version == added.version);
        if let Some(canary) = canary.filter(|_| !is_default) {
            if let Err(e) = self.canaries.join(&added.name, &added.version, canary) {
                tracing::error!(model = %added.name, version = %added.version, "canary from model-config.yaml not set: {e}");
            }
        }
        Ok(added)
    }

    /// Removes a version (the default one when none is named) and retires it: its queue
    /// drains, its workers finish their batch, its metric series and fetched file go.
    pub fn unregister(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<ModelVersion>, ServeError> {
        let removed = self.registry.remove(name, version)?;
        // Its series go now, so a re-registered version starts afresh.
        self.metrics.forget_version(name, &removed.version);
        if let Some(drift) = &removed.drift {
            drift.forget();
        }
        if let Some(file) = &removed.downloaded {
            let _ = std::fs::remove_file(file);
        }
        crate::lifecycle::retire(removed.clone());
        Ok(removed)
    }

    /// Registers `url` as `POST /models` does: a store entry, or an allowed URL fetched into
    /// the store first (deleted again if the model does not register). Blocking.
    pub fn register_url(
        &self,
        url: &str,
        reg: &Registration,
    ) -> Result<Arc<ModelVersion>, ServeError> {
        let m = self.load_url(url, reg, false)?;
        let downloaded = m.downloaded.clone();
        self.add(m).inspect_err(|_| {
            if let Some(file) = &downloaded {
                let _ = std::fs::remove_file(file);
            }
        })
    }

    /// Loads `url` (a store entry, or an allowed URL fetched into the store first, deleted
    /// again if it does not load) without adding it. Blocking.
    pub fn load_url(
        &self,
        url: &str,
        reg: &Registration,
        at_startup: bool,
    ) -> Result<ModelVersion, ServeError> {
        let settings = &self.settings;
        let store = settings.model_store.as_deref().ok_or_else(|| {
            ServeError::ArchiveNotFound("Model store has not been configured.".into())
        })?;
        let resolved = crate::fetch::resolve(
            url,
            store,
            &settings.allowed_urls,
            settings.max_archive_size,
        )?;
        match self.load(&resolved.entry, reg, at_startup) {
            Ok(mut m) => {
                m.archive.url = url.to_string();
                m.downloaded = resolved.downloaded;
                Ok(m)
            }
            Err(e) => {
                if let Some(file) = &resolved.downloaded {
                    let _ = std::fs::remove_file(file);
                }
                Err(e.into())
            }
        }
    }

    /// Waits up to the version's start-up timeout for its workers; a version whose workers do
    /// not start is unregistered again, as TorchServe does. Blocking.
    pub fn await_workers(&self, m: &ModelVersion) -> Result<(), ServeError> {
        let startup = Duration::from_secs(m.params.startup_timeout_s.max(1));
        if m.pool.wait_started(startup) && m.is_ready() {
            return Ok(());
        }
        let _ = self.unregister(&m.name, Some(&m.version));
        Err(ServeError::WorkersNotStarted(format!(
            "Failed to start workers for model {} version: {}",
            m.name, m.version
        )))
    }

    /// Opens an archive, builds its handler and starts its workers.
    pub fn load(
        &self,
        url: &str,
        reg: &Registration,
        at_startup: bool,
    ) -> Result<ModelVersion, LoadError> {
        let store = self
            .settings
            .model_store
            .as_deref()
            .ok_or_else(|| LoadError::Invalid("Model store has not been configured.".into()))?;
        let archive = ModelArchive::open(store, url, self.settings.max_archive_size)?;
        self.load_archive(archive, reg, at_startup)
    }

    /// Builds the handler of an opened archive and starts its workers.
    pub fn load_archive(
        &self,
        mut archive: ModelArchive,
        reg: &Registration,
        at_startup: bool,
    ) -> Result<ModelVersion, LoadError> {
        let (settings, runtime) = (&*self.settings, &self.runtime);
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
        if let Some(reason) = crate::registry::params::unsupported(&archive.config) {
            return Err(LoadError::Invalid(reason));
        }
        // `deviceType` / `deviceIds` may move this model off the server's device.
        let ids: Option<Vec<i64>> = archive
            .config
            .get("deviceIds")
            .and_then(|v| v.as_array())
            .map(|ids| ids.iter().filter_map(|id| id.as_i64()).collect());
        let device = crate::device::for_model(
            archive.config.string("deviceType").as_deref(),
            ids.as_deref(),
            runtime.device,
            settings.number_of_gpu.unwrap_or(1),
        )
        .map_err(LoadError::Invalid)?;
        let own_device;
        let runtime = if device == runtime.device {
            runtime
        } else {
            own_device = RuntimeOptions {
                device,
                ..runtime.clone()
            };
            &own_device
        };
        let gpus = if runtime.device.is_gpu() {
            settings.number_of_gpu.unwrap_or(1)
        } else {
            0
        };
        let params = ModelParams::resolve(settings, &archive, &name, &version, gpus, reg);
        let drift_settings = drift::Settings::from_config(archive.config.ferroserve("drift"))
            .map_err(LoadError::Invalid)?;
        let observe = settings.drift_monitoring && drift_settings.enabled;
        let (handler, served_by) = handler::load(
            &archive,
            &handler::HandlerSpec {
                runtime,
                model_name: &name,
                model_version: &version,
                batch_size: params.batch_size,
                response_timeout: Duration::from_secs(params.response_timeout_s.max(1)),
                startup_timeout: Duration::from_secs(params.startup_timeout_s.max(1)),
                use_venv: params.use_venv,
                settings,
                metrics: &self.metrics,
                observe,
            },
        )?;
        let native = served_by.runtime == handler::Runtime::Native;
        if params.continuous_batching && native {
            return Err(LoadError::Invalid(
                "model-config.yaml: continuousBatching is not supported by ferroserve for a native handler: it serves streaming Python handlers".into(),
            ));
        }
        tracing::info!(
            model = %name,
            version = %version,
            runtime = %served_by.runtime,
            handler = %served_by.handler,
            reason = %served_by.reason,
            "handler chosen"
        );
        let queue = JobQueue::with(
            params.job_queue_size.max(1),
            params.use_job_ticket,
            params
                .sequence
                .clone()
                .map(|s| (s, params.min_workers.max(1))),
        );
        let metrics = self.metrics.version(&name, &version);
        let drift = (native && observe)
            .then(|| {
                self.drift_monitor(
                    &archive,
                    drift_settings,
                    (&name, &version),
                    handler.observed_inputs(),
                )
            })
            .transpose()?;
        let native_envelope = native
            .then(|| handler::envelope(settings, &archive))
            .flatten()
            .filter(|e| !e.trim().is_empty());
        let config = WorkerConfig {
            metrics: metrics.clone(),
            label: format!("{name}_{version}"),
            batch: BatchSettings {
                batch_size: params.batch_size.max(1),
                max_batch_delay: Duration::from_millis(params.max_batch_delay_ms),
                client_timeout: (params.client_timeout_ms > 0)
                    .then(|| Duration::from_millis(params.client_timeout_ms)),
            },
            continuous: params.continuous_batching,
            max_retry: Duration::from_secs(params.max_retry_timeout_s),
            startup_timeout: Duration::from_secs(params.startup_timeout_s),
            runtime: self.tasks.clone(),
        };
        let pool = WorkerPool::new(
            config,
            queue.intake(),
            handler.clone(),
            Arc::new(Stats::default()),
        );
        pool.scale(params.min_workers, params.max_workers, &|| {
            self.registry.next_worker_id()
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
            served_by,
            queue,
            pool,
            archive,
            metrics,
            native_envelope,
            downloaded: None,
            workflow: reg.workflow.clone(),
            drift,
        })
    }

    /// The drift monitor of a native version; the archive's `drift-reference.json` is its
    /// reference.
    fn drift_monitor(
        &self,
        archive: &ModelArchive,
        settings: drift::Settings,
        version: (&str, &str),
        inputs: &[&str],
    ) -> Result<Arc<drift::Monitor>, LoadError> {
        let file = archive.dir.join(drift::REFERENCE_FILE);
        let reference = match std::fs::read(&file) {
            Ok(bytes) => Some(
                drift::Reference::parse(&bytes)
                    .map_err(|e| LoadError::Invalid(format!("{}: {e}", drift::REFERENCE_FILE)))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(LoadError::Invalid(format!(
                    "cannot read {}: {e}",
                    file.display()
                )))
            }
        };
        Ok(Arc::new(drift::Monitor::new(
            settings,
            crate::handler::labels::Labels::load(archive)?,
            self.metrics.drift().clone(),
            version,
            inputs,
            reference,
        )))
    }
}

/// Expands `load_models` entries: `all` means every `.mar`/`.model`/`.tar.gz` file and folder of the
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
                                    || name.ends_with(".model")
                                    || archive::is_tgz(&name));
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

    #[test]
    fn startup_entries_expand_all_and_names() {
        let store = tempfile::tempdir().unwrap();
        for f in ["b.mar", "a.mar", ".hidden.mar", "notes.txt"] {
            std::fs::write(store.path().join(f), "").unwrap();
        }
        std::fs::create_dir(store.path().join("folder")).unwrap();
        let s = Settings::from_properties(&format!(
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
