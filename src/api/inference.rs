//! The inference API: `/ping`, `/predictions/{model}[/{version}]`, `/explanations/...`.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use tokio::sync::oneshot;

use super::{input, response, AppState};
use crate::auth::{self, KeyKind};
use crate::batching::{Job, SubmitError};
use crate::error::ApiError;
use crate::handler::RequestInput;
use crate::registry::{ModelVersion, SharedSplit};
use std::sync::Arc;

pub async fn route(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let segs = input::segments(req.path());
    let parts: Vec<&str> = segs.iter().map(String::as_str).collect();
    // The API description and the Kubernetes probes need no key; everything else here does.
    let open = match parts.as_slice() {
        [] => req.method() == Method::OPTIONS,
        [_, "api-description"] | [_, "v2", "health", _] | [_, "v2", "models", _, "ready"] => true,
        _ => false,
    };
    if !open && !state.authorized(&req, KeyKind::Inference) {
        return response::error(&auth::denied());
    }
    let result = match parts.as_slice() {
        [] if req.method() == Method::OPTIONS => {
            Ok(response::json(200, &listener_description(&state)))
        }
        [] => Err(ApiError::method_not_allowed()),
        [_, "api-description"] => Ok(response::json(200, &listener_description(&state))),
        [_, "ping"] => Ok(ping(&state)),
        [_, "v2", "health", "live"] => Ok(response::json(200, &serde_json::json!({"live": true}))),
        [_, "v2", "health", "ready"] => Ok(server_ready(&state)),
        [_, "v2", "models", model, "ready"] => model_ready(&state, model),
        // OPTIONS on a prediction route describes that model (it must exist); no inference.
        [_, "predictions" | "explanations", model, ..] if req.method() == Method::OPTIONS => state
            .registry
            .get(model, None)
            .map(|_| response::json(200, &super::openapi::model_inference(model))),
        [_, kind @ ("predictions" | "explanations"), model, rest @ ..] => {
            let version = rest.first().copied();
            // TorchServe tells handlers which route was used and what followed the version.
            let extra = vec![
                explain_header(*kind == "explanations"),
                (
                    "url_path".to_string(),
                    rest.get(1..).unwrap_or_default().join("/"),
                ),
            ];
            predict(&req, payload, &state, model, version, extra).await
        }
        [_, "wfpredict", name, ..] => super::workflow::predict(&req, payload, &state, name).await,
        // KServe v1 (`/v1/models/{m}:predict|:explain`) and v2 (`/v2/models/{m}/infer|explain`):
        // the default version, the body as is; the envelope (service_envelope) translates.
        [_, "v1", "models", target] if target.contains(':') => {
            let (model, verb) = target.split_once(':').unwrap_or((target, ""));
            match verb {
                "predict" | "explain" => {
                    let explain = explain_header(verb == "explain");
                    predict(&req, payload, &state, model, None, vec![explain]).await
                }
                _ => Err(ApiError::resource_not_found()),
            }
        }
        [_, "v2", "models", model, verb @ ("infer" | "explain")] => {
            let explain = explain_header(*verb == "explain");
            predict(&req, payload, &state, model, None, vec![explain]).await
        }
        _ => Err(ApiError::resource_not_found()),
    };
    result.unwrap_or_else(|e| response::error(&e))
}

/// This listener's description: inference, or every API in single-port mode.
fn listener_description(state: &AppState) -> serde_json::Value {
    if state.settings.inference_address == state.settings.management_address {
        super::openapi::all()
    } else {
        super::openapi::inference()
    }
}

fn explain_header(explain: bool) -> (String, String) {
    let value = if explain { "True" } else { "False" };
    ("explain".to_string(), value.to_string())
}

/// Healthy when every model's default version has at least its minimum of healthy workers.
fn ping(state: &AppState) -> HttpResponse {
    if state.registry.defaults().iter().all(|m| m.is_healthy()) {
        response::json(200, &response::Status { status: "Healthy" })
    } else {
        response::json(
            500,
            &response::Status {
                status: "Unhealthy",
            },
        )
    }
}

/// KServe/OIP readiness: the start-up load is done and every model it loaded has its minimum
/// of READY workers.
fn server_ready(state: &AppState) -> HttpResponse {
    let ready = state.startup.is_done()
        && state
            .registry
            .defaults()
            .iter()
            .filter(|m| m.loaded_at_startup)
            .all(|m| m.is_ready());
    response::json(
        if ready { 200 } else { 503 },
        &serde_json::json!({ "ready": ready }),
    )
}

fn model_ready(state: &AppState, model: &str) -> Result<HttpResponse, ApiError> {
    let ready = state.registry.get(model, None)?.is_ready();
    Ok(response::json(
        if ready { 200 } else { 503 },
        &serde_json::json!({ "name": model, "ready": ready }),
    ))
}

async fn predict(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    model: &str,
    version: Option<&str>,
    extra_headers: Vec<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let arrived = std::time::Instant::now();
    let version = version.filter(|v| !v.is_empty());
    let key = req
        .headers()
        .get(state.settings.canary_routing_header.as_str())
        .and_then(|v| v.to_str().ok());
    let routed = state.registry.route(model, version, key)?;
    let mv = routed.version;
    let version_label = version.unwrap_or("default");
    state.metrics.inference_request(model, version_label);
    let _in_flight = mv.metrics.in_flight();
    let mut queued = None;
    let shadow = routed.split.clone().zip(routed.shadow);
    let call = Call {
        mv: &mv,
        version,
        extra_headers,
        shadow,
    };
    let result = run_request(req, payload, state, call, &mut queued).await;
    let status = match &result {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.code,
    };
    let took = arrived.elapsed();
    mv.finished(routed.split.as_ref(), status, took, queued);
    if let (Ok(_), Some(queued)) = (&result, queued) {
        state
            .metrics
            .inference_done(model, version_label, took, queued);
    }
    // Every answer says which version served it.
    let mut res = result.unwrap_or_else(|e| response::error(&e));
    if let Ok(v) = HeaderValue::from_str(&mv.version) {
        res.headers_mut().insert(MODEL_VERSION.clone(), v);
    }
    Ok(res)
}

/// The response header naming the version that served an inference request.
static MODEL_VERSION: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("x-model-version");

/// Mirrors a request to a shadow version: queued if there is room, answered into the void;
/// its latency and errors go to the split's record.
fn shadow_copy(split: SharedSplit, shadow: Arc<ModelVersion>, request: RequestInput) {
    let started = std::time::Instant::now();
    actix_web::rt::spawn(async move {
        // Decoding happens off the client's path.
        let target = shadow.clone();
        let rx = actix_web::rt::task::spawn_blocking(move || {
            let input = target.handler.prepare(request).ok()?;
            let (tx, rx) = oneshot::channel();
            let job = Job {
                input,
                reply: tx,
                solo: false,
                enqueued: started,
            };
            target.queue.submit(job).ok().map(|_| rx)
        })
        .await;
        let Ok(Some(rx)) = rx else { return };
        let answer = tokio::time::timeout(shadow.response_timeout(), rx).await;
        let status = match answer {
            Ok(Ok(Ok(reply))) => reply.status,
            Ok(Ok(Err(e))) => e.code,
            _ => 500,
        };
        shadow.finished(Some(&split), status, started.elapsed(), None);
    });
}

/// One inference request's target: the routed version, the URL's version (for error texts),
/// the route's headers for the handler, and a shadow to mirror it to.
struct Call<'a> {
    mv: &'a ModelVersion,
    version: Option<&'a str>,
    extra_headers: Vec<(String, String)>,
    shadow: Option<(SharedSplit, Arc<ModelVersion>)>,
}

/// Reads, queues and awaits one inference request; `queued` learns its queue time.
async fn run_request(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    call: Call<'_>,
    queued: &mut Option<std::time::Duration>,
) -> Result<HttpResponse, ApiError> {
    let Call {
        mv,
        version,
        extra_headers,
        shadow,
    } = call;
    let mut request = input::read_request(req, payload, &state.settings).await?;
    request.headers.extend(extra_headers);
    if mv.native_envelope.as_deref() == Some("kserve") {
        return kserve_v1(
            mv,
            version,
            request,
            req.conn_data::<super::ConnFd>().copied(),
            queued,
        )
        .await;
    }
    let shadow = shadow.map(|(split, version)| (split, version, request.clone()));
    let prepared = mv.handler.prepare(request)?;

    let conn = req.conn_data::<super::ConnFd>().copied();
    let sent = |_: &ModelVersion| {
        if let Some((split, version, request)) = shadow {
            shadow_copy(split, version, request);
        }
    };
    match dispatch(mv, version, prepared, sent, client_gone(conn)).await {
        Ok(reply) => {
            *queued = Some(reply.queue_time);
            Ok(response::reply(reply))
        }
        Err(Refused::Full(e)) => {
            // The queue drains within about one batch time; tell clients to come back soon.
            let mut res = response::error(&e);
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(res)
        }
        Err(Refused::Error(e)) => Err(e),
    }
}

/// KServe v1 for a native handler (TorchServe's `kserve` envelope): each of the body's
/// `instances` is one request to the handler; the answers come back as `{"predictions": [..]}`
/// (`explanations` for `:explain`).
async fn kserve_v1(
    mv: &ModelVersion,
    version: Option<&str>,
    request: RequestInput,
    conn: Option<super::ConnFd>,
    queued: &mut Option<std::time::Duration>,
) -> Result<HttpResponse, ApiError> {
    let body = request
        .param("body")
        .or_else(|| request.param("data"))
        .map(|p| p.value.clone())
        .unwrap_or_default();
    let instances = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut o)) => match o.remove("instances") {
            Some(serde_json::Value::Array(list)) if !list.is_empty() => list,
            _ => {
                return Err(ApiError::bad_request(
                    "the body needs a non-empty \"instances\" list",
                ))
            }
        },
        _ => {
            return Err(ApiError::bad_request(
                "the body is not a KServe v1 JSON object",
            ))
        }
    };
    let explain = request
        .headers
        .iter()
        .any(|(k, v)| k == "explain" && v == "True");
    // Each instance is a job, prepared (and sized for the model) before any is queued: more
    // than the queue holds could never be answered, and would only hold memory.
    if instances.len() > mv.queue.capacity() {
        return Err(ApiError::bad_request(format!(
            "{} instances, more than the {} the model's job queue holds",
            instances.len(),
            mv.queue.capacity()
        )));
    }
    let mut pending = Vec::with_capacity(instances.len());
    for (i, instance) in instances.into_iter().enumerate() {
        let input = RequestInput {
            request_id: format!("{}-{i}", request.request_id),
            headers: request.headers.clone(),
            params: vec![crate::handler::Param {
                name: "body".into(),
                content_type: Some("application/json".into()),
                value: serde_json::to_vec(&instance).unwrap_or_default().into(),
            }],
        };
        let prepared = mv.handler.prepare(input)?;
        pending.push(dispatch(mv, version, prepared, |_| {}, client_gone(conn)));
    }
    let mut answers = Vec::with_capacity(pending.len());
    for reply in futures_util::future::join_all(pending).await {
        let reply = reply.map_err(ApiError::from)?;
        if reply.status >= 400 {
            return Ok(response::reply(reply));
        }
        *queued = Some(queued.unwrap_or_default().max(reply.queue_time));
        answers.push(
            serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&reply.body).into_owned())
            }),
        );
    }
    let key = if explain {
        "explanations"
    } else {
        "predictions"
    };
    Ok(response::json(200, &serde_json::json!({ key: answers })))
}

/// Why a dispatched request got no answer from the model.
pub(super) enum Refused {
    /// The queue is full (TorchServe's 503; REST adds `Retry-After`).
    Full(ApiError),
    Error(ApiError),
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Full(e) | Refused::Error(e) => e,
        }
    }
}

/// Queues a prepared request on a version and waits for its answer, at most the response
/// timeout; `queued` runs once the job is in the queue; `gone` resolving (the client left)
/// abandons it, which lets the worker skip the job.
pub(super) async fn dispatch(
    mv: &ModelVersion,
    version: Option<&str>,
    input: crate::handler::Prepared,
    queued: impl FnOnce(&ModelVersion),
    gone: impl std::future::Future<Output = ()>,
) -> Result<crate::handler::Reply, Refused> {
    let model = mv.name.as_str();
    if !mv.pool.has_workers() {
        return Err(Refused::Error(ApiError::no_worker(model, version)));
    }
    let (tx, rx) = oneshot::channel();
    let job = Job {
        input,
        reply: tx,
        solo: false,
        enqueued: std::time::Instant::now(),
    };
    if let Err(e) = mv.queue.submit(job) {
        let error = ApiError::no_worker(model, version);
        return Err(match e {
            SubmitError::Full => Refused::Full(error),
            SubmitError::Closed => Refused::Error(error),
        });
    }
    queued(mv);
    let waited = tokio::time::timeout(mv.response_timeout(), async {
        tokio::select! {
            reply = rx => Some(reply),
            _ = gone => None,
        }
    })
    .await;
    match waited {
        Ok(Some(Ok(Ok(reply)))) => Ok(reply),
        Ok(Some(Ok(Err(e)))) => Err(Refused::Error(e)),
        // Nobody is listening any more; the connection is closed with whatever we write.
        Ok(None) => Err(Refused::Error(ApiError::bad_request("client disconnected"))),
        Ok(Some(Err(_))) | Err(_) => Err(Refused::Error(ApiError::internal(500, "Worker died."))),
    }
}

/// Resolves when the client closes its connection. actix notices a disconnect only when it
/// writes, so while a request waits for a worker its socket is peeked now and then.
pub(super) async fn client_gone(conn: Option<super::ConnFd>) {
    let Some(conn) = conn else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        tick.tick().await;
        if conn.peer_closed() {
            return;
        }
    }
}
