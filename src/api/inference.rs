//! The inference API: `/ping`, `/predictions/{model}[/{version}]`, `/explanations/...`.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::{input, response, AppState};
use crate::auth::KeyKind;
use crate::error::ServeError;
use crate::serve::{Origin, Target};

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
        return response::error(&ApiError::denied());
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
            .map(|_| response::json(200, &super::openapi::model_inference(model)))
            .map_err(ApiError::from),
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
    let target = Target {
        model,
        version: version.filter(|v| !v.is_empty()),
        routing_key: req
            .headers()
            .get(state.settings.canary_routing_header.as_str())
            .and_then(|v| v.to_str().ok()),
    };
    let call = state.service.route(target, Origin::Rest)?;
    // Every answer says which version served it.
    let served = HeaderValue::from_str(call.version()).ok();
    let result = match input::read_request(req, payload, &state.settings).await {
        Ok(mut request) => {
            request.headers.extend(extra_headers);
            let conn = req.conn_data::<super::ConnFd>().copied();
            call.run(request, super::client_gone(conn)).await
        }
        Err(e) => {
            call.reject();
            return Err(e);
        }
    };
    let mut res = match result {
        Ok(reply) => response::reply(reply),
        Err(e) => {
            let full = matches!(
                e,
                ServeError::QueueFull { .. } | ServeError::ClientTimeout { .. }
            );
            let mut res = response::error(&e.into());
            if full {
                // The queue drains within about one batch time; tell clients to come back soon.
                res.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            res
        }
    };
    if let Some(v) = served {
        res.headers_mut().insert(MODEL_VERSION.clone(), v);
    }
    Ok(res)
}

/// The response header naming the version that served an inference request.
static MODEL_VERSION: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("x-model-version");
