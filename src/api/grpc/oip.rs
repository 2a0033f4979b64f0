//! KServe's Open Inference Protocol over gRPC (`GRPCInferenceService`), on the gRPC inference
//! listener when `ts_open_inference_protocol` is on. As in TorchServe, `ModelInfer` hands the
//! handler the request as KServe v2 JSON (`{"id", "model_name", "inputs": [{"name", "shape",
//! "datatype", "data"}]}`, parameter `body`, `application/json`) and reads its v2 JSON answer
//! back into typed tensors.

use actix_web::web;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

use super::pb::openinference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use super::pb::openinference::model_infer_response::InferOutputTensor;
use super::pb::openinference::model_metadata_response::TensorMetadata;
use super::pb::openinference::*;
use super::{authorize, infer, nonempty, AppState};
use crate::auth::KeyKind;
use crate::handler::Param;

pub struct OpenInference {
    state: web::Data<AppState>,
}

pub fn server(
    state: web::Data<AppState>,
    limit: usize,
) -> GrpcInferenceServiceServer<OpenInference> {
    GrpcInferenceServiceServer::new(OpenInference { state }).max_decoding_message_size(limit)
}

/// A tensor's values as JSON, from the list its datatype uses.
fn contents_json(datatype: &str, c: &InferTensorContents) -> Value {
    match datatype {
        "BOOL" => json!(c.bool_contents),
        "INT8" | "INT16" | "INT32" => json!(c.int_contents),
        "INT64" => json!(c.int64_contents),
        "UINT8" | "UINT16" | "UINT32" => json!(c.uint_contents),
        "UINT64" => json!(c.uint64_contents),
        "FP16" | "FP32" => json!(c.fp32_contents),
        "FP64" => json!(c.fp64_contents),
        _ => json!(c
            .bytes_contents
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()),
    }
}

/// The typed list a datatype uses, from JSON values (unparseable entries are errors).
fn contents_typed(datatype: &str, data: &[Value]) -> Result<InferTensorContents, Status> {
    let bad = || Status::internal(format!("output data does not fit datatype {datatype}"));
    let mut c = InferTensorContents::default();
    macro_rules! fill {
        ($field:ident, $conv:expr) => {
            c.$field = data
                .iter()
                .map($conv)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?
        };
    }
    match datatype {
        "BOOL" => fill!(bool_contents, Value::as_bool),
        "INT8" | "INT16" | "INT32" => {
            fill!(int_contents, |v| v
                .as_i64()
                .and_then(|i| i32::try_from(i).ok()))
        }
        "INT64" => fill!(int64_contents, Value::as_i64),
        "UINT8" | "UINT16" | "UINT32" => {
            fill!(uint_contents, |v| v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok()))
        }
        "UINT64" => fill!(uint64_contents, Value::as_u64),
        "FP16" | "FP32" => fill!(fp32_contents, |v| v.as_f64().map(|f| f as f32)),
        "FP64" => fill!(fp64_contents, Value::as_f64),
        _ => fill!(bytes_contents, |v| Some(match v {
            Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        })),
    }
    Ok(c)
}

fn required(name: &str) -> Status {
    Status::internal(format!("Parameter {name} is required."))
}

#[tonic::async_trait]
impl GrpcInferenceService for OpenInference {
    async fn server_live(
        &self,
        req: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        req: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        let ready = self
            .state
            .registry
            .defaults()
            .iter()
            .filter(|m| m.loaded_at_startup)
            .all(|m| m.is_ready());
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        let r = req.into_inner();
        let name = nonempty(&r.name).ok_or_else(|| required("name"))?;
        let m = self
            .state
            .registry
            .get(name, nonempty(&r.version))
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(ModelReadyResponse {
            ready: m.is_healthy(),
        }))
    }

    async fn server_metadata(
        &self,
        req: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        Ok(Response::new(ServerMetadataResponse {
            name: "ferroserve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        let r = req.into_inner();
        let name = nonempty(&r.name).ok_or_else(|| required("model_name"))?;
        let not_found = |e: crate::error::ServeError| Status::not_found(e.to_string());
        self.state
            .registry
            .get(name, nonempty(&r.version))
            .map_err(not_found)?;
        let versions = self
            .state
            .registry
            .all_versions(name)
            .map_err(not_found)?
            .iter()
            .map(|m| m.version.clone())
            .collect();
        Ok(Response::new(ModelMetadataResponse {
            name: name.into(),
            versions,
            platform: String::new(),
            inputs: Vec::<TensorMetadata>::new(),
            outputs: Vec::new(),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        authorize(&self.state, &req, KeyKind::Inference)?;
        let r = req.into_inner();
        let model = nonempty(&r.model_name).ok_or_else(|| required("model_name"))?;
        let inputs: Vec<Value> = r
            .inputs
            .iter()
            .map(|t| {
                let data = t
                    .contents
                    .as_ref()
                    .map_or(json!([]), |c| contents_json(&t.datatype, c));
                json!({"name": t.name, "shape": t.shape, "datatype": t.datatype, "data": data})
            })
            .collect();
        let body = json!({"id": r.id, "model_name": model, "inputs": inputs});
        let param = Param {
            name: "body".into(),
            content_type: Some("application/json".into()),
            value: serde_json::to_vec(&body).unwrap_or_default().into(),
        };
        let reply = infer(
            &self.state,
            model,
            nonempty(&r.model_version),
            Vec::new(),
            vec![param],
        )
        .await?;
        let answer: Value = serde_json::from_slice(&reply.body).map_err(|e| {
            Status::internal(format!("the handler's answer is not KServe v2 JSON: {e}"))
        })?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let mut outputs = Vec::new();
        for o in answer["outputs"].as_array().cloned().unwrap_or_default() {
            let datatype = text(&o["datatype"]);
            let data = o["data"].as_array().cloned().unwrap_or_default();
            outputs.push(InferOutputTensor {
                name: text(&o["name"]),
                shape: o["shape"]
                    .as_array()
                    .map(|s| s.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default(),
                contents: Some(contents_typed(&datatype, &data)?),
                datatype,
                parameters: Default::default(),
            });
        }
        Ok(Response::new(ModelInferResponse {
            model_name: text(&answer["model_name"]),
            model_version: text(&answer["model_version"]),
            id: text(&answer["id"]),
            parameters: Default::default(),
            outputs,
            raw_output_contents: Vec::new(),
        }))
    }
}
