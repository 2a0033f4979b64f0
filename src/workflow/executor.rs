//! Running a workflow: its nodes' models called through the inference service in DAG order,
//! as TorchServe does: the start node gets the request, a node with one parent gets that
//! parent's output as `body`, a node with several gets each parent's output under the
//! parent's name; every node sees the request's headers.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::Workflow;
use crate::error::ServeError;
use crate::handler::{Param, RequestInput};
use crate::serve::{deadline, Origin, Service, Target};

/// One leaf's output per leaf, by node name.
pub type Leaves = Vec<(String, Bytes)>;

/// Runs every node once its parents have answered; nodes whose inputs are ready run
/// concurrently. The first node that fails (after its retries) fails the request.
pub async fn run(
    service: &Service,
    workflow: &Workflow,
    request: RequestInput,
    max_response_size: usize,
) -> Result<Leaves, ServeError> {
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
    running.push(call(
        service,
        max_response_size,
        workflow,
        start,
        input_of(start, params),
    ));
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
                running.push(call(
                    service,
                    max_response_size,
                    workflow,
                    child,
                    input_of(child, params),
                ));
            }
        }
    }
    Ok(leaves)
}

/// The most retries of a workflow node (a spec may ask for four billion).
const MAX_RETRIES: u32 = 100;

/// One node: its model called with the node's timeout, retried `retry-attempts` times.
async fn call(
    service: &Service,
    max_response_size: usize,
    workflow: &Workflow,
    node: usize,
    input: RequestInput,
) -> (usize, Result<Bytes, ServeError>) {
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
        match invoke(
            service,
            &spec.model,
            input.clone(),
            timeout,
            max_response_size,
        )
        .await
        {
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
    (node, Err(ServeError::Internal(message)))
}

/// Calls a node's model once: its output, or why it gave none.
async fn invoke(
    service: &Service,
    model: &str,
    input: RequestInput,
    timeout: Duration,
    max_response_size: usize,
) -> Result<Bytes, String> {
    let target = Target {
        model,
        version: None,
        routing_key: None,
    };
    let call = service
        .route(target, Origin::Workflow)
        .map_err(|e| e.to_string())?;
    let reply = call
        .run(input, deadline(timeout))
        .await
        .map_err(|e| match e {
            ServeError::Timeout => format!("no answer within {} ms", timeout.as_millis()),
            e => e.to_string(),
        })?;
    if reply.status >= 400 {
        return Err(format!(
            "status {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    // A streamed answer is passed on whole.
    reply.collect(max_response_size).await
}
