//! TorchServe's `kserve` envelope for a native handler: each of a KServe v1 body's
//! `instances` is one request to the handler; the answers come back as
//! `{"predictions": [..]}` (`explanations` for `:explain`). Python workers apply their
//! envelopes themselves.

use super::{prepare, Call};
use crate::error::ServeError;
use crate::handler::{Param, Reply, RequestInput};

pub(super) async fn kserve_v1(call: &Call, request: RequestInput) -> Result<Reply, ServeError> {
    let body = request
        .param("body")
        .or_else(|| request.param("data"))
        .map(|p| p.value.clone())
        .unwrap_or_default();
    let instances = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut o)) => match o.remove("instances") {
            Some(serde_json::Value::Array(list)) if !list.is_empty() => list,
            _ => {
                return Err(ServeError::bad_input(
                    "the body needs a non-empty \"instances\" list",
                ))
            }
        },
        _ => {
            return Err(ServeError::bad_input(
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
    let capacity = call.mv.queue.capacity();
    if instances.len() > capacity {
        return Err(ServeError::bad_input(format!(
            "{} instances, more than the {capacity} the model's job queue holds",
            instances.len(),
        )));
    }
    let mut pending = Vec::with_capacity(instances.len());
    for (i, instance) in instances.into_iter().enumerate() {
        let input = RequestInput {
            request_id: format!("{}-{i}", request.request_id),
            headers: request.headers.clone(),
            params: vec![Param {
                name: "body".into(),
                content_type: Some("application/json".into()),
                value: serde_json::to_vec(&instance).unwrap_or_default().into(),
            }],
        };
        let prepared = prepare(&call.mv, input).await?;
        // The native envelope serves native handlers, which keep no sequence state.
        pending.push(call.wait(call.submit(prepared, None)?));
    }
    let mut answers = Vec::with_capacity(pending.len());
    let mut queued = std::time::Duration::ZERO;
    for reply in futures_util::future::join_all(pending).await {
        let reply = reply?;
        if reply.status >= 400 {
            return Ok(reply);
        }
        queued = queued.max(reply.queue_time);
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
    let mut body = serde_json::to_string_pretty(&serde_json::json!({ key: answers }))
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    body.push('\n');
    let mut reply = Reply::new(
        200,
        Some("application/json".into()),
        Vec::new(),
        body.into(),
    );
    reply.queue_time = queued;
    Ok(reply)
}
