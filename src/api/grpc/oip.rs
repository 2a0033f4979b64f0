//! KServe's Open Inference Protocol over gRPC (`GRPCInferenceService`), on the gRPC inference
//! listener when `ts_open_inference_protocol` is on. As in TorchServe, `ModelInfer` hands the
//! handler the request as KServe v2 JSON (`{"id", "model_name", "inputs": [{"name", "shape",
//! "datatype", "data"}]}`, parameter `body`, `application/json`) and reads its v2 JSON answer
//! back into typed tensors.

use actix_web::web;
use base64::prelude::*;
use serde::Serialize;
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

/// The request as the handler is given it: KServe v2 JSON. TorchServe builds it in Java hash
/// maps, so its keys come out in these orders, which a handler that serializes the dict again
/// sees.
#[derive(Serialize)]
struct HandlerRequest<'a> {
    model_name: &'a str,
    inputs: Vec<HandlerInput<'a>>,
    id: &'a str,
}

#[derive(Serialize)]
struct HandlerInput<'a> {
    shape: &'a [i64],
    /// Absent for a datatype TorchServe does not copy (FP16 and unknown ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    datatype: &'a str,
    name: &'a str,
}

/// A tensor's values as TorchServe hands them on: BYTES as base64, unsigned values through
/// Java's signed integers, nothing for FP16 and unknown datatypes.
fn contents_json(datatype: &str, c: &InferTensorContents) -> Option<Value> {
    Some(match datatype {
        "BOOL" => json!(c.bool_contents),
        "INT8" | "INT16" | "INT32" => json!(c.int_contents),
        "INT64" => json!(c.int64_contents),
        "UINT8" | "UINT16" | "UINT32" => {
            json!(c
                .uint_contents
                .iter()
                .map(|&v| v as i32)
                .collect::<Vec<_>>())
        }
        "UINT64" => json!(c
            .uint64_contents
            .iter()
            .map(|&v| v as i64)
            .collect::<Vec<_>>()),
        "FP32" => json!(c.fp32_contents),
        "FP64" => json!(c.fp64_contents),
        "BYTES" => json!(c
            .bytes_contents
            .iter()
            .map(|b| BASE64_STANDARD.encode(b))
            .collect::<Vec<_>>()),
        _ => return None,
    })
}

/// A JSON value as a number the way Gson's `getAsLong`/`getAsDouble` read one: numbers, and
/// strings that parse as numbers; a fraction read as an integer is truncated.
fn gson_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s
            .parse::<i64>()
            .ok()
            .or_else(|| s.parse::<f64>().ok().map(|f| f as i64)),
        _ => None,
    }
}

fn gson_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The typed list a datatype uses, from the handler's JSON values as TorchServe reads them:
/// a BYTES entry is the entry's JSON text (a string keeps its quotes), and FP16 or an unknown
/// datatype gives no values. Values that do not fit are an error.
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
        // Java's int narrowing, as `getAsInt` does.
        "INT8" | "INT16" | "INT32" => fill!(int_contents, |v| gson_i64(v).map(|i| i as i32)),
        "INT64" => fill!(int64_contents, gson_i64),
        "UINT8" | "UINT16" | "UINT32" => {
            fill!(uint_contents, |v| gson_i64(v).map(|i| i as i32 as u32))
        }
        "UINT64" => fill!(uint64_contents, |v| gson_i64(v).map(|i| i as u64)),
        "FP32" => fill!(fp32_contents, |v| gson_f64(v).map(|f| f as f32)),
        "FP64" => fill!(fp64_contents, gson_f64),
        "BYTES" => fill!(bytes_contents, |v| Some(v.to_string().into_bytes())),
        _ => {}
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
        let empty = InferTensorContents::default();
        let body = HandlerRequest {
            model_name: model,
            inputs: r
                .inputs
                .iter()
                .map(|t| HandlerInput {
                    shape: &t.shape,
                    data: contents_json(&t.datatype, t.contents.as_ref().unwrap_or(&empty)),
                    datatype: &t.datatype,
                    name: &t.name,
                })
                .collect(),
            id: &r.id,
        };
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
        // Gson's getAsString: a string's text, or a number or boolean written out.
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => v.to_string(),
            _ => String::new(),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_gets_the_request_as_torchserve_writes_it() {
        let bytes = InferTensorContents {
            bytes_contents: vec![b"hi".to_vec()],
            ..Default::default()
        };
        let unsigned = InferTensorContents {
            uint_contents: vec![4_000_000_000],
            ..Default::default()
        };
        let body = HandlerRequest {
            model_name: "m",
            inputs: vec![
                HandlerInput {
                    shape: &[1],
                    data: contents_json("BYTES", &bytes),
                    datatype: "BYTES",
                    name: "s",
                },
                HandlerInput {
                    shape: &[1],
                    data: contents_json("UINT32", &unsigned),
                    datatype: "UINT32",
                    name: "u",
                },
                HandlerInput {
                    shape: &[1],
                    data: contents_json("FP16", &unsigned),
                    datatype: "FP16",
                    name: "h",
                },
            ],
            id: "r",
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"model_name":"m","inputs":[{"shape":[1],"data":["aGk="],"datatype":"BYTES","name":"s"},{"shape":[1],"data":[-294967296],"datatype":"UINT32","name":"u"},{"shape":[1],"datatype":"FP16","name":"h"}],"id":"r"}"#
        );
    }

    #[test]
    fn answers_are_read_as_gson_reads_them() {
        let c = contents_typed("BYTES", &[json!("a\"b"), json!(3)]).unwrap();
        assert_eq!(
            c.bytes_contents,
            vec![b"\"a\\\"b\"".to_vec(), b"3".to_vec()]
        );
        let c =
            contents_typed("INT32", &[json!(1.9), json!("-4"), json!(3_000_000_000u64)]).unwrap();
        assert_eq!(c.int_contents, vec![1, -4, -1_294_967_296]);
        let c = contents_typed("UINT64", &[json!(-2)]).unwrap();
        assert_eq!(c.uint64_contents, vec![u64::MAX - 1]);
        assert_eq!(
            contents_typed("FP16", &[json!(1.0)]).unwrap(),
            Default::default()
        );
        assert!(contents_typed("FP32", &[json!(true)]).is_err());
    }
}
