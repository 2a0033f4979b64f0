//! The workflow API: `/workflows` on the management listener (register, list, describe,
//! unregister), `/wfpredict/{name}` on the inference listener. Running a workflow calls its
//! nodes' models in DAG order, as TorchServe does: the start node gets the request, a node
//! with one parent gets that parent's output as `body`, a node with several gets each
//! parent's output under the parent's name; every node sees the request's headers.

use std::time::{Duration, Instant};

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use super::inference::{client_gone, dispatch};
use super::management::{query, Page, Params};
use super::{input, response, AppState};
use crate::error::ApiError;
use crate::handler::{Param, RequestInput};
use crate::workflow::{Context, RegisterRequest, Workflow};

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
    let w = state.workflows.get(name)?;
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
    let (workflows, registry) = (state.workflows.clone(), state.registry.clone());
    let (settings, runtime) = (state.settings.clone(), state.runtime.clone());
    let name = web::block(move || {
        let cx = Context {
            registry: &registry,
            settings: &settings,
            runtime: &runtime,
        };
        workflows.register(&cx, request)
    })
    .await
    .map_err(|e| ApiError::internal(500, e.to_string()))??;
    let status = format!("Workflow {name} has been registered and scaled successfully.");
    Ok(response::json(200, &response::Status { status: &status }))
}

fn unregister(state: &AppState, name: &str) -> Result<HttpResponse, ApiError> {
    state.workflows.unregister(&state.registry, name)?;
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
    let workflow = state.workflows.get(name)?;
    let request = input::read_request(req, payload, &state.settings).await?;
    let conn = req.conn_data::<super::ConnFd>().copied();
    let run = run(state, &workflow, request);
    let leaves = tokio::select! {
        leaves = run => leaves?,
        _ = client_gone(conn) => return Err(ApiError::bad_request("client disconnected")),
    };
    match leaves.as_slice() {
        [(_, only)] => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(only.clone())),
        _ => {
            let mut out = serde_json::Map::new();
            for (node, bytes) in &leaves {
                let value = serde_json::from_slice(bytes).map_err(|_| {
                    ApiError::internal(500, format!("Output of {node} is not JSON"))
                })?;
                out.insert(node.clone(), value);
            }
            Ok(response::json(200, &out))
        }
    }
}

/// Runs every node once its parents have answered; nodes whose inputs are ready run
/// concurrently. The first node that fails (after its retries) fails the request.
async fn run(
    state: &AppState,
    workflow: &Workflow,
    request: RequestInput,
) -> Result<Vec<(String, Bytes)>, ApiError> {
    let dag = &workflow.spec.dag;
    let mut waiting: Vec<usize> = (0..dag.len()).map(|i| dag.parents(i).len()).collect();
    let mut inputs: Vec<Vec<Param>> = vec![Vec::new(); dag.len()];
    let RequestInput {
        request_id,
        headers,
        params,
    } = request;
    let input_of = |node: usize, params: Vec<Param>| RequestInput {
        request_id: format!("{request_id}-{}", dag.name(node)),
        headers: headers.clone(),
        params,
    };
    let mut running = FuturesUnordered::new();
    let start = dag.start();
    running.push(call(state, workflow, start, input_of(start, params)));
    let mut leaves = Vec::new();
    while let Some((node, output)) = running.next().await {
        let output = output?;
        let children = dag.children(node);
        if children.is_empty() {
            leaves.push((dag.name(node).to_string(), output));
            continue;
        }
        for &child in children {
            let name = if dag.parents(child).len() == 1 {
                "body"
            } else {
                dag.name(node)
            };
            inputs[child].push(Param {
                name: name.to_string(),
                content_type: None,
                value: output.clone(),
            });
            waiting[child] -= 1;
            if waiting[child] == 0 {
                let params = std::mem::take(&mut inputs[child]);
                running.push(call(state, workflow, child, input_of(child, params)));
            }
        }
    }
    Ok(leaves)
}

/// The most retries of a workflow node (a spec may ask for four billion).
const MAX_RETRIES: u32 = 100;

/// One node: its model called with the node's timeout, retried `retry-attempts` times.
async fn call(
    state: &AppState,
    workflow: &Workflow,
    node: usize,
    input: RequestInput,
) -> (usize, Result<Bytes, ApiError>) {
    let spec = &workflow.spec.nodes[node];
    let name = workflow.spec.dag.name(node);
    let timeout = Duration::from_millis(u64::from(spec.settings.timeout_ms.max(1)));
    let retries = spec.settings.retry_attempts.min(MAX_RETRIES);
    for attempt in 0..=retries {
        if attempt > 0 {
            // A node that fails at once must not hold this thread for all its attempts.
            tokio::task::yield_now().await;
        }
        tracing::info!(workflow = %workflow.name, node = name, attempt, "invoking workflow node");
        match invoke(state, &spec.model, input.clone(), timeout).await {
            Ok(output) => return (node, Ok(output)),
            Err(reason) => tracing::warn!(
                workflow = %workflow.name,
                node = name,
                attempt,
                "workflow node failed: {reason}"
            ),
        }
    }
    tracing::error!(
        workflow = %workflow.name,
        "Failed to execute workflow Node after {retries} attempts : Error executing {name}"
    );
    let message = format!("Error executing {name}");
    (node, Err(ApiError::internal(500, message)))
}

/// Calls a node's model once: its output, or why it gave none.
async fn invoke(
    state: &AppState,
    model: &str,
    input: RequestInput,
    timeout: Duration,
) -> Result<Bytes, String> {
    let mv = state.registry.get(model, None).map_err(|e| e.message)?;
    let started = Instant::now();
    // Every call counts in the model's metrics, the failed ones too (a timeout as a 500).
    let finished = |status: u16, queued: Option<Duration>| {
        mv.finished(None, status, started.elapsed(), queued)
    };
    let prepared = mv.handler.prepare(input).map_err(|e| {
        finished(e.code, None);
        e.message
    })?;
    let pending = std::future::pending::<()>();
    let reply = tokio::time::timeout(timeout, dispatch(&mv, None, prepared, |_| {}, pending))
        .await
        .map_err(|_| {
            finished(500, None);
            format!("no answer within {} ms", timeout.as_millis())
        })?
        .map_err(|e| {
            let e = ApiError::from(e);
            finished(e.code, None);
            e.message
        })?;
    finished(reply.status, Some(reply.queue_time));
    if reply.status >= 400 {
        return Err(format!(
            "status {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    // A streamed answer is passed on whole.
    reply.collect(state.settings.max_response_size).await
}
