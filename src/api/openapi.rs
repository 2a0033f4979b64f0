//! OpenAPI 3.0.1 descriptions of the listeners (`OPTIONS /`, `/api-description`) and of one
//! model (`OPTIONS` on its prediction or management path), in TorchServe's shape.

use serde_json::{json, Value};

/// The server version reported where TorchServe reports its own.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn op(id: &str, summary: &str, params: &[(&str, &str, bool)]) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|(name, place, required)| {
            json!({"in": place, "name": name, "required": required, "schema": {"type": "string"}})
        })
        .collect();
    json!({
        "operationId": id,
        "summary": summary,
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK"},
            "400": {"description": "Bad request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "404": {"description": "Not found", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        }
    })
}

fn document(title: &str, version: &str, paths: Value) -> Value {
    json!({
        "openapi": "3.0.1",
        "info": {"title": title, "description": "ferroserve: TorchServe-compatible model server", "version": version},
        "paths": paths,
        "components": {"schemas": {
            "Error": {
                "type": "object",
                "required": ["code", "type", "message"],
                "properties": {
                    "code": {"type": "integer"},
                    "type": {"type": "string"},
                    "message": {"type": "string"}
                }
            },
            "TrafficSplit": {
                "type": "object",
                "properties": {
                    "canaries": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 100}, "description": "canary version -> percent of unversioned requests; the default version gets the rest"},
                    "guards": {"type": "object", "properties": {
                        "maxErrorRate": {"type": "number", "description": "highest 5xx share (0-1)"},
                        "maxP99Ratio": {"type": "number", "description": "highest p99 latency as a multiple of the default version's"},
                        "windowSec": {"type": "integer", "default": 60},
                        "minRequests": {"type": "integer", "default": 100}
                    }},
                    "rollout": {"type": "object", "required": ["steps", "dwellSec"], "properties": {
                        "steps": {"type": "array", "items": {"type": "number"}, "description": "ascending percents for the one canary"},
                        "dwellSec": {"type": "integer"}
                    }},
                    "shadow": {"type": "object", "required": ["version", "percent"], "properties": {
                        "version": {"type": "string"},
                        "percent": {"type": "number"}
                    }}
                }
            }
        }}
    })
}

const M: (&str, &str, bool) = ("model_name", "path", true);
const V: (&str, &str, bool) = ("model_version", "path", true);
const W: (&str, &str, bool) = ("workflow_name", "path", true);

fn inference_paths() -> serde_json::Map<String, Value> {
    let mut p = serde_json::Map::new();
    p.insert(
        "/".into(),
        json!({"options": op("apiDescription", "This API description", &[])}),
    );
    p.insert(
        "/api-description".into(),
        json!({"get": op("apiDescription", "This API description", &[])}),
    );
    p.insert(
        "/ping".into(),
        json!({"get": op("ping", "Health: every model's minimum of healthy workers", &[])}),
    );
    p.insert(
        "/predictions/{model_name}".into(),
        json!({"post": op("predictions", "Inference on the default version", &[M])}),
    );
    p.insert(
        "/predictions/{model_name}/{model_version}".into(),
        json!({"post": op("versionPredictions", "Inference on a version", &[M, V])}),
    );
    p.insert(
        "/explanations/{model_name}".into(),
        json!({"post": op("explanations", "Explanations (handler header explain: True)", &[M])}),
    );
    p.insert(
        "/v1/models/{model_name}:predict".into(),
        json!({"post": op("kserveV1Predict", "KServe v1 predict", &[M])}),
    );
    p.insert(
        "/v2/models/{model_name}/infer".into(),
        json!({"post": op("kserveV2Infer", "KServe v2 infer", &[M])}),
    );
    p.insert(
        "/v2/health/live".into(),
        json!({"get": op("live", "Liveness (no token)", &[])}),
    );
    p.insert("/v2/health/ready".into(), json!({"get": op("ready", "Readiness: start-up models have their workers (no token)", &[])}));
    p.insert(
        "/v2/models/{model_name}/ready".into(),
        json!({"get": op("modelReady", "One model's readiness (no token)", &[M])}),
    );
    p.insert(
        "/wfpredict/{workflow_name}".into(),
        json!({"post": op("workflowPredictions", "Run a workflow's DAG on the request", &[W])}),
    );
    p
}

fn management_paths() -> serde_json::Map<String, Value> {
    let q = |n| (n, "query", false);
    let mut p = serde_json::Map::new();
    p.insert(
        "/".into(),
        json!({"options": op("apiDescription", "This API description", &[])}),
    );
    p.insert(
        "/api-description".into(),
        json!({"get": op("apiDescription", "This API description", &[])}),
    );
    p.insert("/models".into(), json!({
        "get": op("listModels", "Default versions, paged", &[q("limit"), q("next_page_token")]),
        "post": op("registerModel", "Register a model (needs the model API)", &[("url", "query", true), q("model_name"), q("handler"), q("runtime"), q("batch_size"), q("max_batch_delay"), q("initial_workers"), q("synchronous"), q("response_timeout"), q("startup_timeout")])
    }));
    p.insert("/models/{model_name}".into(), json!({
        "get": op("describeModel", "Describe the default version", &[M, q("customized")]),
        "put": op("setAutoScale", "Scale workers", &[M, q("min_worker"), q("max_worker"), q("synchronous")]),
        "delete": op("unregisterModel", "Unregister the default version (needs the model API)", &[M])
    }));
    p.insert("/models/{model_name}/{model_version}".into(), json!({
        "get": op("versionDescribeModel", "Describe a version (or all)", &[M, V, q("customized")]),
        "put": op("versionSetAutoScale", "Scale a version's workers", &[M, V, q("min_worker"), q("max_worker"), q("synchronous")]),
        "delete": op("versionUnregisterModel", "Unregister a version (needs the model API)", &[M, V])
    }));
    p.insert(
        "/models/{model_name}/{model_version}/set-default".into(),
        json!({"put": op("setDefault", "Make a version the default", &[M, V])}),
    );
    p.insert("/models/{model_name}/canary".into(), json!({
        "get": op("getTrafficSplit", "The model's traffic split: weights, guard rails, rollout, shadow, state, per-version requests and errors", &[M]),
        "put": {
            "operationId": "setTrafficSplit",
            "summary": "Set or replace the traffic split of unversioned requests between the default and canary versions",
            "parameters": [
                {"in": "path", "name": "model_name", "required": true, "schema": {"type": "string"}},
                {"in": "query", "name": "version", "required": false, "schema": {"type": "string"}, "description": "one canary version (without a body)"},
                {"in": "query", "name": "weight", "required": false, "schema": {"type": "number"}, "description": "its percentage (without a body)"}
            ],
            "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TrafficSplit"}}}},
            "responses": {
                "200": {"description": "OK"},
                "400": {"description": "Invalid split", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "404": {"description": "Unknown model or version", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        },
        "delete": op("clearTrafficSplit", "Remove the split: every unversioned request to the default version", &[M])
    }));
    p.insert(
        "/models/{model_name}/canary/promote".into(),
        json!({"put": op("promoteCanary", "Make the canary the default version and clear the split", &[M, q("version")])}),
    );
    p.insert("/workflows".into(), json!({
        "get": op("listWorkflows", "List workflows", &[q("limit"), q("next_page_token")]),
        "post": op("registerWorkflow", "Register a workflow archive (.war) and its nodes' models (needs enable_model_api)",
            &[("url", "query", true), q("workflow_name"), q("response_timeout"), q("startup_timeout")])
    }));
    p.insert("/workflows/{workflow_name}".into(), json!({
        "get": op("describeWorkflow", "Describe a workflow", &[W]),
        "delete": op("unregisterWorkflow", "Unregister a workflow and its nodes' models (needs enable_model_api)", &[W])
    }));
    p.insert("/token".into(), json!({"get": op("rotateToken", "New inference or management key (API key)", &[("type", "query", true)])}));
    p
}

fn metrics_paths() -> serde_json::Map<String, Value> {
    let mut p = serde_json::Map::new();
    p.insert(
        "/metrics".into(),
        json!({"get": op("metrics", "Prometheus metrics", &[("name[]", "query", false)])}),
    );
    p
}

pub fn inference() -> Value {
    document("TorchServe APIs", VERSION, Value::Object(inference_paths()))
}

pub fn management() -> Value {
    document(
        "TorchServe APIs",
        VERSION,
        Value::Object(management_paths()),
    )
}

/// Single-port mode: every route on one listener.
pub fn all() -> Value {
    let mut paths = inference_paths();
    paths.extend(management_paths());
    paths.extend(metrics_paths());
    document("TorchServe APIs", VERSION, Value::Object(paths))
}

pub fn metrics() -> Value {
    document("TorchServe APIs", VERSION, Value::Object(metrics_paths()))
}

/// `OPTIONS /predictions/{m}`: the model's inference routes.
pub fn model_inference(model: &str) -> Value {
    let mut p = serde_json::Map::new();
    p.insert(
        format!("/predictions/{model}"),
        json!({"post": op("predictions", "Inference", &[])}),
    );
    p.insert(
        "/v1/models/{model_name}:predict".into(),
        json!({"post": op("kserveV1Predict", "KServe v1 predict", &[M])}),
    );
    p.insert(
        "/v2/models/{model_name}/infer".into(),
        json!({"post": op("kserveV2Infer", "KServe v2 infer", &[M])}),
    );
    document(
        &format!("RESTful API for: {model}"),
        "1.0.0",
        Value::Object(p),
    )
}

/// `OPTIONS /models/{m}`: the model's management routes.
pub fn model_management(model: &str) -> Value {
    let mut all = management_paths();
    all.retain(|k, _| k.starts_with("/models/"));
    document(
        &format!("RESTful Management API for: {model}"),
        VERSION,
        Value::Object(all),
    )
}
