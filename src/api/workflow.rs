//! The workflow API: `/workflows` on the management listener (register, list, describe,
//! unregister), `/wfpredict/{name}` on the inference listener, which runs the workflow's DAG
//! (`workflow::executor`) on the request.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::input::{query, Page, Params};
use super::{input, response, AppState};
use crate::error::ServeError;
use crate::workflow::{executor, RegisterRequest};

/// `/workflows[/{name}]`. Registering and unregistering are open whatever `enable_model_api`
/// says, as in TorchServe (its own workflow suite runs with the model API off); token
/// authorization guards them with the rest of the management API.
pub(super) async fn manage(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    name: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let method = req.method();
    match name {
        None if method == Method::GET => Ok(list(state, &query(req))),
        None if method == Method::POST => register(req, payload, state).await,
        Some(name) if method == Method::GET => describe(state, name),
        Some(name) if method == Method::DELETE => unregister(state, name),
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListEntry<'a> {
    workflow_name: &'a str,
    workflow_url: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
    workflows: Vec<ListEntry<'a>>,
}

/// `GET /workflows?limit=&next_page_token=`: TorchServe's paging, sorted by name.
fn list(state: &AppState, q: &[(String, String)]) -> HttpResponse {
    let all = state.workflows.list();
    let page = Page::of(q, all.len());
    let workflows = all
        .iter()
        .skip(page.offset)
        .take(page.limit)
        .map(|w| ListEntry {
            workflow_name: &w.name,
            workflow_url: &w.url,
        })
        .collect();
    response::json(
        200,
        &ListResponse {
            next_page_token: page.next_page_token,
            workflows,
        },
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Description<'a> {
    workflow_name: &'a str,
    workflow_url: &'a str,
    min_workers: u32,
    max_workers: u32,
    batch_size: u32,
    max_batch_delay: u32,
    workflow_dag: &'a str,
}

/// `GET /workflows/{name}`: a one-element list, as TorchServe answers.
fn describe(state: &AppState, name: &str) -> Result<HttpResponse, ApiError> {
    let w = state.workflows.get(name).map_err(ServeError::from)?;
    let d = &w.spec.defaults;
    Ok(response::json(
        200,
        &[Description {
            workflow_name: &w.name,
            workflow_url: &w.url,
            min_workers: d.min_workers,
            max_workers: d.max_workers,
            batch_size: d.batch_size,
            max_batch_delay: d.max_batch_delay_ms,
            workflow_dag: &w.spec.dag_text,
        }],
    ))
}

/// `POST /workflows?url=&workflow_name=&response_timeout=&startup_timeout=` (or the same keys
/// in a JSON body).
async fn register(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let settings = &state.settings;
    let p = Params::read(req, payload, settings).await?;
    let url = p
        .string("url")
        .ok_or_else(|| ApiError::bad_request("Parameter url is required."))?;
    let request = RegisterRequest {
        url,
        workflow_name: p.string("workflow_name"),
        response_timeout_s: p.int("response_timeout").unwrap_or(120).max(1) as u64,
        startup_timeout_s: p.int("startup_timeout").unwrap_or(120).max(1) as u64,
    };
    let (workflows, loader) = (state.workflows.clone(), state.loader.clone());
    let name = web::block(move || workflows.register(&loader, request))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ServeError::from)?;
    let status = format!("Workflow {name} has been registered and scaled successfully.");
    Ok(response::json(200, &response::Status { status: &status }))
}

fn unregister(state: &AppState, name: &str) -> Result<HttpResponse, ApiError> {
    state
        .workflows
        .unregister(&state.loader, name)
        .map_err(ServeError::from)?;
    let status = format!("Workflow \"{name}\" unregistered");
    Ok(response::json(200, &response::Status { status: &status }))
}

/// `/wfpredict/{name}`: runs the DAG on the request. One leaf: its output as the body; several:
/// a JSON object of each leaf's output by node name.
pub(super) async fn predict(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    name: &str,
) -> Result<HttpResponse, ApiError> {
    let workflow = state.workflows.get(name).map_err(ServeError::from)?;
    let request = input::read_request(req, payload, &state.settings).await?;
    let conn = req.conn_data::<super::ConnFd>().copied();
    let limit = state.settings.max_response_size;
    let run = executor::run(&state.service, &workflow, request, limit);
    let leaves = tokio::select! {
        leaves = run => leaves?,
        gone = super::client_gone(conn) => return Err(gone.into()),
    };
    match leaves.as_slice() {
        [(_, only)] => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(only.clone())),
        _ => {
            let mut out = serde_json::Map::new();
            for (node, bytes) in &leaves {
                let value = serde_json::from_slice(bytes)
                    .map_err(|_| ServeError::Internal(format!("Output of {node} is not JSON")))?;
                out.insert(node.clone(), value);
            }
            Ok(response::json(200, &out))
        }
    }
}
