//! The inference service: the one owner of a prediction under every transport. REST, KServe
//! v1/v2, gRPC (TorchServe's and the Open Inference Protocol) and workflow nodes make two
//! calls: [`Service::route`] picks the version (canary split included) and starts the
//! request's accounting, [`Call::run`] decodes, queues, waits and records the outcome.
//! Transports only translate: their bytes into a [`RequestInput`], a [`Reply`] or a
//! [`ServeError`] into their answer.

mod envelope;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::Instrument;

use crate::batching::sequence::Membership;
use crate::batching::{Job, SubmitError};
use crate::error::ServeError;
use crate::handler::observe::Observation;
use crate::handler::{Prepared, Reply, RequestInput};
use crate::metrics::{Metrics, Outcome};
use crate::registry::{ModelVersion, Registry, SharedSplit};

/// The counters' version label of a request that named no version, as TorchServe's.
const DEFAULT_LABEL: &str = "default";

/// Which transport asks: TorchServe accounts them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// REST and KServe: request counter, latency and queue-latency counters.
    Rest,
    /// gRPC: the request counter and `QueueTime` only.
    Grpc,
    /// A workflow node: the version's own metrics only.
    Workflow,
    /// A split's shadow copy (the service's own): the version's metrics and the split's
    /// window only.
    Shadow,
}

/// Where a prediction goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub model: &'a str,
    /// The version named by the caller; none means the default, or the split's choice.
    pub version: Option<&'a str>,
    /// The canary routing key (sticky assignment), if the caller sent one.
    pub routing_key: Option<&'a str>,
}

pub struct Service {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Service {
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        Self { registry, metrics }
    }

    /// Chooses the version that serves a request and starts counting it.
    pub fn route(&self, target: Target<'_>, origin: Origin) -> Result<Call, ServeError> {
        let routed = self
            .registry
            .route(target.model, target.version, target.routing_key)?;
        if matches!(origin, Origin::Rest | Origin::Grpc) {
            let label = target.version.unwrap_or(DEFAULT_LABEL);
            self.metrics.inference_request(target.model, label);
        }
        let in_flight = routed.version.metrics.in_flight();
        Ok(Call {
            metrics: self.metrics.clone(),
            asked: target.version.map(str::to_string),
            origin,
            mv: routed.version,
            split: routed.split,
            shadow: routed.shadow,
            arrived: Instant::now(),
            _in_flight: in_flight,
        })
    }
}

/// One routed request, accounted when it ends.
pub struct Call {
    metrics: Arc<Metrics>,
    /// The version the caller named (for TorchServe's error texts and the counters' label).
    asked: Option<String>,
    origin: Origin,
    mv: Arc<ModelVersion>,
    split: Option<SharedSplit>,
    shadow: Option<Arc<ModelVersion>>,
    arrived: Instant,
    _in_flight: crate::metrics::InFlight,
}

impl Call {
    /// The version serving the request.
    pub fn version(&self) -> &str {
        &self.mv.version
    }

    /// The version label of the request counters: the one named, else `default`.
    fn label(&self) -> &str {
        self.asked.as_deref().unwrap_or(DEFAULT_LABEL)
    }

    /// Runs the request: decode, queue, wait for the answer (at most the response timeout),
    /// or stop waiting when `cancel` resolves (the client left, the node timed out), which
    /// lets the worker skip the job.
    pub async fn run(
        self,
        input: RequestInput,
        cancel: impl Future<Output = ServeError>,
    ) -> Result<Reply, ServeError> {
        // At DEBUG: a span costs a few microseconds, a noticeable share of a native no-op
        // request; `RUST_LOG=ferroserve::serve=debug` turns them on.
        let span = tracing::debug_span!("request", id = %input.request_id, model = %self.mv.name, version = %self.mv.version);
        let work = async {
            tokio::select! {
                result = self.answer(input) => result,
                reason = cancel => Err(reason),
            }
        };
        let result = work.instrument(span).await;
        self.finish(&result);
        result
    }

    /// The transport could not read the request (too large, malformed): counted as the
    /// client's failure.
    pub fn reject(self) {
        self.account(Outcome::ClientError, None, None);
    }

    async fn answer(&self, input: RequestInput) -> Result<Reply, ServeError> {
        if self.mv.native_envelope.as_deref() == Some("kserve") {
            return envelope::kserve_v1(self, input).await;
        }
        let mut input = input;
        // A stateful model's request joins its sequence (the headers tell the handler too).
        let sequence = self
            .mv
            .queue
            .sequence_headers()
            .map(|headers| crate::batching::sequence::assign(headers, &mut input));
        let shadow = self.shadow_call().map(|call| (call, input.clone()));
        let prepared = prepare(&self.mv, input).await?;
        let answer = self.submit(prepared, sequence)?;
        if let Some((call, input)) = shadow {
            mirror(call, input);
        }
        self.wait(answer).await
    }

    /// The copy of this request for the split's shadow version, if it has one.
    fn shadow_call(&self) -> Option<Call> {
        let (split, mv) = (self.split.clone()?, self.shadow.clone()?);
        Some(Call {
            metrics: self.metrics.clone(),
            asked: None,
            origin: Origin::Shadow,
            _in_flight: mv.metrics.in_flight(),
            mv,
            split: Some(split),
            shadow: None,
            arrived: Instant::now(),
        })
    }

    /// Queues a prepared request; the receiver gets its answer.
    fn submit(
        &self,
        input: Prepared,
        sequence: Option<Membership>,
    ) -> Result<oneshot::Receiver<crate::batching::JobResult>, ServeError> {
        let (model, version) = (self.mv.name.as_str(), self.asked.as_deref());
        if !self.mv.pool.has_workers() {
            return Err(ServeError::no_worker(model, version));
        }
        let (tx, rx) = oneshot::channel();
        let job = Job {
            input,
            reply: tx,
            solo: false,
            enqueued: Instant::now(),
            span: tracing::Span::current(),
            sequence,
        };
        self.mv.queue.submit(job).map_err(|e| match e {
            SubmitError::Full => ServeError::QueueFull {
                model: model.to_string(),
                version: version.map(str::to_string),
            },
            SubmitError::Closed => ServeError::no_worker(model, version),
        })?;
        Ok(rx)
    }

    async fn wait(
        &self,
        answer: oneshot::Receiver<crate::batching::JobResult>,
    ) -> Result<Reply, ServeError> {
        match tokio::time::timeout(self.mv.response_timeout(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServeError::WorkerDied),
            Err(_) => Err(ServeError::Timeout),
        }
    }

    /// The version's metrics and its split's window, then the transport's counters.
    fn finish(&self, result: &Result<Reply, ServeError>) {
        match result {
            Ok(reply) => self.account(
                Outcome::of_status(reply.status),
                Some(reply.queue_time),
                reply.observation.as_ref(),
            ),
            Err(e) => self.account(Outcome::of_error(e), None, None),
        }
    }

    fn account(&self, outcome: Outcome, queued: Option<Duration>, seen: Option<&Observation>) {
        let took = self.arrived.elapsed();
        self.mv
            .finished(self.split.as_ref(), outcome, took, queued, seen);
        let Some(queued) = queued else { return };
        match self.origin {
            Origin::Rest => self
                .metrics
                .inference_done(&self.mv.name, self.label(), took, queued),
            // TorchServe counts gRPC predictions in QueueTime only: its latency counters
            // are REST's.
            Origin::Grpc => self.metrics.queue_time(&self.mv.name, self.label(), queued),
            Origin::Workflow | Origin::Shadow => {}
        }
    }
}

/// Decodes a request for its model, off the async executor when that takes long.
async fn prepare(mv: &Arc<ModelVersion>, input: RequestInput) -> Result<Prepared, ServeError> {
    if !mv.handler.prepare_blocks(&input) {
        return mv.handler.prepare(input);
    }
    let handler = mv.handler.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| handler.prepare(input)))
        .await
        .map_err(|e| ServeError::Internal(format!("decoding the request failed: {e}")))?
}

/// Mirrors a request to a shadow version: queued if there is room, answered into the void;
/// its latency and errors go to the split's record.
fn mirror(call: Call, input: RequestInput) {
    let span = tracing::debug_span!("shadow", id = %input.request_id, version = %call.mv.version);
    tokio::spawn(
        async move {
            let Ok(prepared) = prepare(&call.mv, input).await else {
                return;
            };
            // A shadow copy joins no sequence: its model's state is not the one answering.
            let Ok(answer) = call.submit(prepared, None) else {
                return;
            };
            let result = call.wait(answer).await;
            call.finish(&result);
        }
        .instrument(span),
    );
}

/// A cancellation that never comes (transports that cannot see their client leave).
pub async fn never() -> ServeError {
    std::future::pending().await
}

/// A node's deadline as a cancellation.
pub async fn deadline(after: Duration) -> ServeError {
    tokio::time::sleep(after).await;
    ServeError::Timeout
}
