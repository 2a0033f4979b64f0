//! The inference API: `/ping`, `/predictions/{model}[/{version}]`, `/explanations/...`.

use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use tokio::sync::oneshot;

use super::{input, response, AppState, RequestId};
use crate::batching::{Job, SubmitError};
use crate::error::ApiError;

pub async fn route(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let segs = input::segments(req.path());
    let result = match segs
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] if req.method() == Method::OPTIONS => Ok(api_description()),
        [] => Err(ApiError::method_not_allowed()),
        [_, "api-description"] => Ok(api_description()),
        [_, "ping"] => Ok(ping(&state)),
        [_, "predictions" | "explanations", model, rest @ ..] => {
            let version = rest.first().copied();
            predict(&req, payload, &state, model, version).await
        }
        _ => Err(ApiError::resource_not_found()),
    };
    result.unwrap_or_else(|e| response::error(&e))
}

/// Healthy when every model's default version has at least its minimum of live workers.
fn ping(state: &AppState) -> HttpResponse {
    let healthy = state
        .registry
        .defaults()
        .iter()
        .all(|m| m.healthy_workers() >= m.params.min_workers);
    if healthy {
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

async fn predict(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let version = version.filter(|v| !v.is_empty());
    let mv = state.registry.get(model, version)?;
    let body = input::read_body(req, payload, state.settings.max_request_size).await?;
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let request = input::request_input(req, request_id, body).await?;
    let prepared = mv.handler.preprocess(&request)?;

    if mv.workers.is_empty() {
        return Err(ApiError::no_worker(model, version));
    }
    let (tx, rx) = oneshot::channel();
    mv.queue
        .submit(Job {
            input: prepared,
            reply: tx,
        })
        .map_err(|e| match e {
            SubmitError::Full | SubmitError::Closed => ApiError::no_worker(model, version),
        })?;
    let timeout = Duration::from_secs(mv.params.response_timeout_s.max(1));
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(reply))) => Ok(response::reply(reply)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) | Err(_) => Err(ApiError::internal(500, "Worker died.")),
    }
}

/// A short OpenAPI 3.0.1 description of this listener.
fn api_description() -> HttpResponse {
    response::json(
        200,
        &serde_json::json!({
            "openapi": "3.0.1",
            "info": {"title": "TorchServe APIs", "version": env!("CARGO_PKG_VERSION")},
            "paths": {
                "/ping": {"get": {"operationId": "ping"}},
                "/predictions/{model_name}": {"post": {"operationId": "predictions"}},
                "/predictions/{model_name}/{model_version}": {"post": {"operationId": "version_predictions"}}
            }
        }),
    )
}
