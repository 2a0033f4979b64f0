//! The management API: register, scale, describe, list, unregister and set-default, with
//! TorchServe's parameters, status codes and bodies.

use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::input::{self, param, query, Page, Params};
use super::{response, AppState};
use crate::auth::KeyKind;
use crate::canary::SplitSpec;
use crate::error::ServeError;
use crate::registry::{ModelVersion, Registration};

pub async fn route(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let segs = input::segments(req.path());
    let method = req.method().clone();
    if segs.get(1).map(String::as_str) == Some("token") {
        return rotate_token(&req, &state).unwrap_or_else(|e| response::error(&e));
    }
    let description = matches!(segs.len(), 0) && method == Method::OPTIONS
        || segs.get(1).map(String::as_str) == Some("api-description");
    if description {
        return response::json(200, &super::openapi::management());
    }
    if !state.authorized(&req, KeyKind::Management) {
        return response::error(&ApiError::denied());
    }
    let result = match segs
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "models"] => match method {
            Method::GET => Ok(list(&state, &query(&req)).rest()),
            Method::POST if state.settings.enable_model_api => {
                match Params::read(&req, payload, &state.settings).await {
                    Ok(p) => rest(register(&state, p).await),
                    Err(e) => Err(e),
                }
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        [_, "workflows"] => super::workflow::manage(&req, payload, &state, None).await,
        // TorchServe ignores a further segment here.
        [_, "workflows", name] | [_, "workflows", name, _] => {
            super::workflow::manage(&req, payload, &state, Some(name)).await
        }
        // KServe v1 model readiness.
        [_, "v1", "models", model] => match method {
            Method::GET => kserve_ready(&state, model),
            _ => Err(ApiError::method_not_allowed()),
        },
        [_, "models", model, ..] if method == Method::OPTIONS => state
            .registry
            .get(model, None)
            .map(|_| response::json(200, &super::openapi::model_management(model)))
            .map_err(ApiError::from),
        [_, "models", model] => match method {
            Method::GET => describe_request(&req, &state, model, None).await,
            Method::PUT => rest(scale(&state, model, None, &query(&req)).await),
            Method::DELETE if state.settings.enable_model_api => {
                rest(unregister(&state, model, None))
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        // Traffic splits (ferroserve's extension), before `/models/{m}/{v}`.
        [_, "models", model, "canary"] => match method {
            Method::GET => state
                .canaries
                .view(model)
                .map(|v| response::json(200, &v))
                .map_err(ApiError::from),
            Method::PUT => set_split(&req, payload, &state, model).await,
            Method::DELETE => clear_split(&state, model),
            _ => Err(ApiError::method_not_allowed()),
        },
        [_, "models", model, "canary", "promote"] => match method {
            Method::PUT => promote(&req, &state, model),
            _ => Err(ApiError::method_not_allowed()),
        },
        [_, "models", model, version] => match method {
            Method::GET => describe_request(&req, &state, model, Some(version)).await,
            Method::PUT => rest(scale(&state, model, Some(version), &query(&req)).await),
            Method::DELETE if state.settings.enable_model_api => {
                rest(unregister(&state, model, Some(version)))
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        // Drift monitoring (ferroserve's extension).
        [_, "models", model, version, "drift"] => match method {
            Method::GET => {
                drift_monitor(&state, model, version).map(|d| response::json(200, &d.view()))
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        [_, "models", model, version, "drift", "reference"] => match method {
            Method::PUT => capture_reference(&state, model, version),
            _ => Err(ApiError::method_not_allowed()),
        },
        // TorchServe's quirks: GET describes and DELETE unregisters the *default* version.
        [_, "models", model, version, "set-default"] => match method {
            Method::GET => describe_request(&req, &state, model, None).await,
            Method::PUT => rest(set_default(&state, model, version)),
            Method::DELETE if state.settings.enable_model_api => {
                rest(unregister(&state, model, None))
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        _ => Err(ApiError::resource_not_found()),
    };
    result.unwrap_or_else(|e| response::error(&e))
}

/// What a management operation answers, whatever the transport asked.
pub(super) enum Answer {
    /// Done: `{"status": ...}` on REST, the text alone on gRPC.
    Done(String),
    /// Accepted; the work goes on in the background (REST's 202).
    Accepted(&'static str),
    /// Waited for, and not finished yet (REST's 206).
    InProgress(&'static str),
    /// A document (describe, list), as TorchServe writes it: pretty JSON and a newline.
    Document(String),
}

impl Answer {
    fn document<T: Serialize>(value: &T) -> Self {
        let mut body = serde_json::to_string_pretty(value).expect("a view serializes");
        body.push('\n');
        Self::Document(body)
    }

    fn rest(self) -> HttpResponse {
        let status =
            |code: u16, text: &str| response::json(code, &response::Status { status: text });
        match self {
            Answer::Done(text) => status(200, &text),
            Answer::Accepted(text) => status(202, text),
            Answer::InProgress(text) => status(206, text),
            Answer::Document(body) => HttpResponse::Ok()
                .content_type("application/json")
                .body(body),
        }
    }

    /// The text of a gRPC management reply's `msg`.
    pub(super) fn into_message(self) -> String {
        match self {
            Answer::Done(text) | Answer::Document(text) => text,
            Answer::Accepted(text) | Answer::InProgress(text) => text.to_string(),
        }
    }
}

fn rest(answer: Result<Answer, ServeError>) -> Result<HttpResponse, ApiError> {
    answer.map(Answer::rest).map_err(ApiError::from)
}

/// Describe from REST: `?customized=true`, the request's headers for the handler.
async fn describe_request(
    req: &HttpRequest,
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let customized = param::<bool>(&query(req), "customized").unwrap_or(false);
    rest(describe(state, model, version, customized, input::header_list(req)).await)
}

/// `GET /v1/models/{m}`: ready when the default version has a worker (loaded or not), as
/// TorchServe answers KServe.
fn kserve_ready(state: &AppState, model: &str) -> Result<HttpResponse, ApiError> {
    let m = state.registry.get(model, None)?;
    let ready = m.pool.with_workers(|w| !w.is_empty());
    Ok(response::json(
        200,
        &serde_json::json!({ "name": model, "ready": ready }),
    ))
}

/// `PUT /models/{m}[/{v}]?min_worker=&max_worker=&synchronous=`. Native workers start in
/// microseconds, so a synchronous call answers once they run.
pub(super) async fn scale(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    q: &[(String, String)],
) -> Result<Answer, ServeError> {
    let version = version
        .map(str::to_string)
        .or_else(|| param(q, "model_version"));
    let m = state.registry.get(model, version.as_deref())?;
    let min: i64 = param(q, "min_worker").unwrap_or(1);
    let max: i64 = param(q, "max_worker").unwrap_or(min);
    if max < min {
        return Err(ServeError::bad_input(
            "max_worker cannot be less than min_worker.",
        ));
    }
    // TorchServe fails here with a 500 (an index error inside its scaler) and keeps the
    // negative counts; the status is kept, the counts are not.
    let (Ok(min), Ok(max)) = (usize::try_from(min), usize::try_from(max)) else {
        return Err(ServeError::Internal(
            "min_worker and max_worker cannot be negative.".into(),
        ));
    };
    if max > crate::worker::MAX_WORKERS {
        return Err(ServeError::bad_input(format!(
            "max_worker cannot be more than {}.",
            crate::worker::MAX_WORKERS
        )));
    }
    let synchronous = param::<bool>(q, "synchronous").unwrap_or(false);
    let registry = state.registry.clone();
    let pool_model = m.clone();
    web::block(move || {
        pool_model
            .pool
            .scale(min, max, &|| registry.next_worker_id())
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?
    .map_err(|e| {
        ServeError::WorkersNotStarted(format!(
            "Failed to start workers for model {model} version: {}: {e}",
            m.version
        ))
    })?;
    tracing::info!(model, version = %m.version, min, max, "workers scaled");
    state.snapshot("snapshot");
    if synchronous {
        let timeout = Duration::from_secs(m.params.startup_timeout_s.max(1));
        let waiting = m.clone();
        let settled = web::block(move || waiting.pool.wait_started(timeout))
            .await
            .unwrap_or(false);
        // Settled with fewer workers than asked: one failed to start.
        if settled && m.pool.ready() < min {
            return Err(ServeError::WorkersNotStarted(format!(
                "Failed to start workers for model {model} version: {}",
                version.as_deref().unwrap_or("null")
            )));
        }
        if !settled {
            return Ok(Answer::InProgress("Workers scaling in progress..."));
        }
    }
    if !synchronous {
        return Ok(Answer::Accepted("Processing worker updates..."));
    }
    let suffix = version
        .map(|v| format!(", version: {v}"))
        .unwrap_or_default();
    Ok(Answer::Done(format!(
        "Workers scaled to {min} for model: {model}{suffix}"
    )))
}

/// `POST /models`: TorchServe's parameters, from the query string or a JSON body.
pub(super) async fn register(state: &AppState, p: Params) -> Result<Answer, ServeError> {
    let settings = state.settings.clone();
    let url = p.string("url").ok_or_else(|| match p.0.get("url") {
        Some(_) => ServeError::ArchiveNotFound("empty url".into()),
        None => ServeError::bad_input("Parameter url is required."),
    })?;
    let runtime_name = p.string("runtime");
    if let Some(rt) = &runtime_name {
        if !matches!(rt.as_str(), "python" | "python3" | "LSP") {
            return Err(ServeError::bad_input(format!(
                "Invalid RuntimeType value: {rt}"
            )));
        }
    }
    let registration = Registration {
        model_name: p.string("model_name"),
        handler: p.string("handler"),
        runtime: runtime_name,
        batch_size: p.positive("batch_size").map(|v| v as usize),
        max_batch_delay_ms: p.positive("max_batch_delay"),
        // Unset means `default_workers_per_model` as configured (0 when it is not).
        initial_workers: Some(
            p.positive("initial_workers")
                .map_or(settings.default_workers_per_model, |v| v as usize),
        ),
        response_timeout_s: p
            .int("response_timeout")
            .filter(|&v| v > 0)
            .map(|v| v as u64),
        // 0 is kept, as TorchServe keeps it: workers then have no time to start.
        startup_timeout_s: p
            .int("startup_timeout")
            .filter(|&v| v >= 0)
            .map(|v| v as u64),
        workflow: None,
    };
    let synchronous = p.boolean("synchronous").unwrap_or(true);
    let loader = state.loader.clone();
    let model = web::block(move || loader.register_url(&url, &registration))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))??;
    let (name, version) = (model.name.clone(), model.version.clone());
    let workers = model.pool.limits().0;
    state.snapshot("snapshot");
    if workers == 0 {
        let status = format!(
            "Model \"{name}\" Version: {version} registered with 0 initial workers. Use scale workers API to add workers for the model."
        );
        return Ok(Answer::Done(status));
    }
    if !synchronous {
        return Ok(Answer::Accepted("Processing worker updates..."));
    }
    let loader = state.loader.clone();
    web::block(move || loader.await_workers(&model))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))??;
    let status =
        format!("Model \"{name}\" Version: {version} registered with {workers} initial workers");
    Ok(Answer::Done(status))
}

/// `/token?type=inference|management` with the API key: a new key, written to the key file.
/// (TorchServe treats any request mentioning `/token` anywhere, headers included, as a
/// rotation; here only the `/token` path is.)
fn rotate_token(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    let Some(tokens) = &state.tokens else {
        return Err(ApiError::resource_not_found());
    };
    if !state.authorized(req, KeyKind::Api) {
        return Err(ApiError::rotation_denied());
    }
    let kind = match param::<String>(&query(req), "type").as_deref() {
        Some("inference") => KeyKind::Inference,
        Some("management") => KeyKind::Management,
        _ => return Err(ApiError::rotation_denied()),
    };
    tokens
        .rotate(kind)
        .map_err(|e| ApiError::internal(format!("cannot write the key file: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body("\n"))
}

pub(super) fn unregister(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Answer, ServeError> {
    state.loader.unregister(model, version)?;
    state.snapshot("snapshot");
    let status = format!("Model \"{model}\" unregistered");
    Ok(Answer::Done(status))
}

pub(super) fn set_default(
    state: &AppState,
    model: &str,
    version: &str,
) -> Result<Answer, ServeError> {
    state.registry.set_default(model, version)?;
    state.snapshot("snapshot");
    let status =
        format!("Default version successfully updated for model \"{model}\" to \"{version}\"");
    Ok(Answer::Done(status))
}

/// A version's drift monitor; a version without one (a Python handler, or monitoring off)
/// is a bad request.
fn drift_monitor(
    state: &AppState,
    model: &str,
    version: &str,
) -> Result<std::sync::Arc<crate::drift::Monitor>, ApiError> {
    let m = state.registry.get(model, Some(version))?;
    m.drift.clone().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Model {model} version {version} has no drift monitoring: it runs on {} ({}), or drift monitoring is off",
            m.served_by.runtime, m.served_by.handler
        ))
    })
}

/// `PUT /models/{m}/{v}/drift/reference`: the version's current window becomes its drift
/// reference (kept in snapshots); the answer is the reference.
fn capture_reference(
    state: &AppState,
    model: &str,
    version: &str,
) -> Result<HttpResponse, ApiError> {
    let reference = drift_monitor(state, model, version)?
        .capture()
        .map_err(ApiError::bad_request)?;
    tracing::info!(
        model,
        version,
        requests = reference.requests,
        "drift reference captured"
    );
    state.snapshot("snapshot");
    Ok(response::json(200, &reference))
}

/// `PUT /models/{m}/canary`: a JSON body with the whole split (`canaries`, `guards`,
/// `rollout`, `shadow`), or `?version=<v>&weight=<percent>` for one canary.
async fn set_split(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    model: &str,
) -> Result<HttpResponse, ApiError> {
    let body = input::read_body(req, payload, &state.settings).await?;
    let spec: SplitSpec = if body.iter().all(u8::is_ascii_whitespace) {
        let q = query(req);
        let version = param::<String>(&q, "version")
            .ok_or_else(|| ApiError::bad_request("Parameter version is required"))?;
        let weight = param::<f64>(&q, "weight")
            .ok_or_else(|| ApiError::bad_request("Parameter weight is required"))?;
        SplitSpec {
            canaries: [(version, weight)].into(),
            ..SplitSpec::default()
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid traffic split: {e}")))?
    };
    state.canaries.set(model, spec)?;
    state.snapshot("snapshot");
    let status = format!("Traffic split set for model \"{model}\"");
    Ok(response::json(200, &response::Status { status: &status }))
}

fn clear_split(state: &AppState, model: &str) -> Result<HttpResponse, ApiError> {
    state.canaries.clear(model)?;
    state.snapshot("snapshot");
    let status = format!("Traffic split cleared for model \"{model}\"");
    Ok(response::json(200, &response::Status { status: &status }))
}

/// `PUT /models/{m}/canary/promote[?version=<v>]`: the canary becomes the default version.
fn promote(req: &HttpRequest, state: &AppState, model: &str) -> Result<HttpResponse, ApiError> {
    let version = param::<String>(&query(req), "version");
    let chosen = state.canaries.promote(model, version.as_deref())?;
    state.snapshot("snapshot");
    let status =
        format!("Default version successfully updated for model \"{model}\" to \"{chosen}\"");
    Ok(response::json(200, &response::Status { status: &status }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListEntry<'a> {
    model_name: &'a str,
    model_url: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
    models: Vec<ListEntry<'a>>,
}

/// Default versions sorted by name, paged as TorchServe pages them.
pub(super) fn list(state: &AppState, q: &[(String, String)]) -> Answer {
    // A workflow's function nodes have no archive; TorchServe leaves them out of the list.
    let models: Vec<_> = state
        .registry
        .defaults()
        .into_iter()
        .filter(|m| !m.is_function())
        .collect();
    let Page {
        offset,
        limit,
        next_page_token,
    } = Page::of(q, models.len());
    let page = models
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| ListEntry {
            model_name: &m.name,
            model_url: m.url(),
        })
        .collect();
    Answer::document(&ListResponse {
        next_page_token,
        models: page,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkerView {
    id: String,
    start_time: String,
    status: &'static str,
    memory_usage: u64,
    pid: i64,
    gpu: bool,
    gpu_usage: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueView {
    remaining_capacity: usize,
    pending_requests: usize,
}

/// TorchServe's describe element, fields in its order; `device` is ours (where it runs).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescribeView<'a> {
    model_name: &'a str,
    model_version: &'a str,
    /// None for a workflow's function node (TorchServe has no URL for it and omits the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    model_url: Option<&'a str>,
    runtime: &'a str,
    min_workers: usize,
    max_workers: usize,
    batch_size: usize,
    max_batch_delay: u64,
    response_timeout: u64,
    startup_timeout: u64,
    max_retry_timeout_in_sec: u64,
    client_timeout_in_mills: u64,
    parallel_type: &'a str,
    parallel_level: u32,
    device_type: &'a str,
    continuous_batching: bool,
    use_job_ticket: bool,
    use_venv: bool,
    stateful: bool,
    sequence_max_idle_m_sec: u64,
    sequence_timeout_m_sec: u64,
    max_num_sequence: u32,
    max_sequence_job_queue_size: u32,
    loaded_at_startup: bool,
    workers: Vec<WorkerView>,
    job_queue_status: QueueView,
    #[serde(skip_serializing_if = "Option::is_none")]
    customized_metadata: Option<serde_json::Value>,
    device: String,
    /// Which runtime serves the version (native or Python) and why (ferroserve's extension).
    served_by: &'a crate::handler::ServedBy,
    stats: StatsView,
    /// The model's traffic split, when it has one (ferroserve's extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    traffic_split: Option<serde_json::Value>,
    /// Drift monitoring of a native version (ferroserve's extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<serde_json::Value>,
}

/// ferroserve's counters for this version (not in TorchServe's describe).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatsView {
    batches: u64,
    requests: u64,
    dropped_requests: u64,
    failed_batches: u64,
    worker_restarts: u64,
}

fn describe_one(m: &ModelVersion) -> DescribeView<'_> {
    let device = m.device();
    let pending = m.queue.pending();
    let (min_workers, max_workers) = m.pool.limits();
    let stats = m.pool.stats();
    let sequence = m.params.sequence.as_ref();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    DescribeView {
        model_name: &m.name,
        model_version: &m.version,
        model_url: (!m.is_function()).then(|| m.url()),
        runtime: &m.runtime,
        min_workers,
        max_workers,
        batch_size: m.params.batch_size,
        max_batch_delay: m.params.max_batch_delay_ms,
        response_timeout: m.params.response_timeout_s,
        startup_timeout: m.params.startup_timeout_s,
        max_retry_timeout_in_sec: m.params.max_retry_timeout_s,
        client_timeout_in_mills: m.params.client_timeout_ms,
        parallel_type: "",
        parallel_level: 0,
        device_type: device.device_type(),
        continuous_batching: m.params.continuous_batching,
        use_job_ticket: m.params.use_job_ticket,
        use_venv: m.params.use_venv,
        stateful: sequence.is_some(),
        sequence_max_idle_m_sec: sequence.map_or(0, |s| s.max_idle.as_millis() as u64),
        sequence_timeout_m_sec: sequence
            .and_then(|s| s.max_age)
            .map_or(0, |age| age.as_millis() as u64),
        max_num_sequence: sequence.map_or(0, |s| s.max_sequences as u32),
        max_sequence_job_queue_size: sequence.map_or(0, |s| s.queue_size as u32),
        loaded_at_startup: m.loaded_at_startup,
        workers: m.pool.with_workers(|workers| {
            workers
                .iter()
                .map(|w| WorkerView {
                    id: w.id.to_string(),
                    start_time: w.started.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    status: w.status(),
                    // A worker process's RSS now (TorchServe: as of its last system-metrics
                    // sample); threads in this process have no memory of their own.
                    memory_usage: w
                        .pid()
                        .filter(|&pid| pid != std::process::id())
                        .and_then(crate::metrics::system::process_rss_bytes)
                        .unwrap_or(0),
                    pid: w.pid().map_or(-1, i64::from),
                    gpu: device.is_gpu(),
                    gpu_usage: "N/A",
                })
                .collect()
        }),
        customized_metadata: None,
        job_queue_status: QueueView {
            remaining_capacity: m.queue.capacity().saturating_sub(pending),
            pending_requests: pending,
        },
        device: device.to_string(),
        served_by: &m.served_by,
        traffic_split: None,
        drift: m.drift.as_ref().map(|d| d.view()),
        stats: StatsView {
            batches: count(&stats.batches),
            requests: count(&stats.requests),
            dropped_requests: count(&stats.dropped),
            failed_batches: count(&stats.failed_batches),
            worker_restarts: m
                .pool
                .with_workers(|w| w.iter().map(|w| w.restarts()).sum()),
        },
    }
}

/// Describe; `customized` asks the handler for its metadata, with the caller's `headers`.
pub(super) async fn describe(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    customized: bool,
    headers: Vec<(String, String)>,
) -> Result<Answer, ServeError> {
    let versions = match version {
        Some("all") => state.registry.all_versions(model)?,
        other => vec![state.registry.get(model, other)?],
    };
    let mut views: Vec<_> = versions.iter().map(|m| describe_one(m)).collect();
    if let Ok(split) = state.canaries.view(model) {
        for v in &mut views {
            v.traffic_split = Some(split.clone());
        }
    }
    if customized && version != Some("all") {
        views[0].customized_metadata = Some(customized_metadata(headers, &versions[0]).await?);
    }
    Ok(Answer::document(&views))
}

/// TorchServe's DESCRIBE: a request with no parameters and header `describe: True`, run on
/// its own; the handler's `describe_handle` answer (a JSON object) is the metadata.
async fn customized_metadata(
    mut headers: Vec<(String, String)>,
    m: &ModelVersion,
) -> Result<serde_json::Value, ServeError> {
    if !m.handler.describes() {
        return Ok(serde_json::json!({}));
    }
    if !m.pool.has_workers() {
        return Err(ServeError::NoDescribeWorker(m.name.clone()));
    }
    headers.push(("describe".into(), "True".into()));
    let input = crate::handler::RequestInput {
        request_id: uuid::Uuid::new_v4().to_string(),
        headers,
        params: Vec::new(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = crate::batching::Job {
        input: crate::handler::Prepared::Request(input),
        reply: tx,
        solo: true,
        enqueued: std::time::Instant::now(),
        span: tracing::Span::current(),
        sequence: None,
    };
    if m.queue.submit(job).is_err() {
        return Err(ServeError::no_worker(&m.name, None));
    }
    let failed = || ServeError::Internal("Failed to get customized model matadata.".into());
    let reply = match tokio::time::timeout(m.response_timeout(), rx).await {
        Ok(Ok(Ok(reply))) => reply,
        _ => return Err(failed()),
    };
    Ok(match serde_json::from_slice(&reply.body) {
        Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
        _ => serde_json::json!({}),
    })
}
