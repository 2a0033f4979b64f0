//! One loaded version of a model: its handler, queue, workers and metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::params::ModelParams;
use crate::archive::ModelArchive;
use crate::batching::JobQueue;
use crate::canary::Split;
use crate::device::Device;
use crate::handler::observe::Observation;
use crate::handler::{Handler, ServedBy};
use crate::metrics::{Outcome, VersionMetrics};
use crate::worker::WorkerPool;

/// A model's traffic split, shared by the registry and the requests it routed.
pub type SharedSplit = Arc<Mutex<Split>>;

/// One loaded version of a model, with its queue and workers.
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    pub runtime: String,
    /// Parameters at load time; the worker limits live in `pool` (they change with scaling).
    pub params: ModelParams,
    pub loaded_at_startup: bool,
    pub handler: Arc<dyn Handler>,
    /// Which runtime serves this version, and why.
    pub served_by: ServedBy,
    pub queue: JobQueue,
    pub pool: WorkerPool,
    pub archive: ModelArchive,
    pub metrics: Arc<VersionMetrics>,
    /// The envelope the server applies for a native handler (`kserve`); Python workers apply
    /// theirs themselves.
    pub native_envelope: Option<String>,
    /// A file fetched into the store by registration; deleted when the model goes.
    pub downloaded: Option<std::path::PathBuf>,
    /// The workflow this model is a node of (such models stay out of snapshots).
    pub workflow: Option<String>,
    /// Drift monitoring of a native version's inputs and answers.
    pub drift: Option<Arc<crate::drift::Monitor>>,
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

    /// A request this version answered: its metrics, its drift monitor, and the window of
    /// the split that routed it there (its guard rails judge the version on it).
    pub fn finished(
        &self,
        split: Option<&SharedSplit>,
        outcome: Outcome,
        took: Duration,
        queued: Option<Duration>,
        seen: Option<&Observation>,
    ) {
        self.metrics.request_done(outcome, took, queued);
        if let (Some(drift), Some(seen)) = (&self.drift, seen) {
            drift.observe(seen);
        }
        if let Some(split) = split {
            if let Ok(mut s) = split.lock() {
                let top1 = seen
                    .and_then(|o| o.top1)
                    .map(|(class, _)| match &self.drift {
                        Some(drift) => drift.label(class).into_owned(),
                        None => class.to_string(),
                    });
                s.record(&self.version, took, outcome == Outcome::ServerError, top1);
            }
        }
    }
}
