//! TorchServe's gRPC APIs (inference 7070, management 7071) through a real tonic client
//! generated from the same protos, against the real server.

mod common;

use std::collections::HashMap;

use common::*;
use ferroserve::api::grpc::pb::inference::inference_ap_is_service_client::InferenceApIsServiceClient;
use ferroserve::api::grpc::pb::inference::PredictionsRequest;
use ferroserve::api::grpc::pb::management::management_ap_is_service_client::ManagementApIsServiceClient;
use ferroserve::api::grpc::pb::management::{
    DescribeModelRequest, ListModelsRequest, RegisterModelRequest, ScaleWorkerRequest,
    SetDefaultRequest, UnregisterModelRequest,
};
use tonic::Code;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn sign_body() -> String {
    let reference = Reference::load();
    request_body(&reference.cases()[0], reference.features(), 3)
}

fn predictions(model: &str, version: &str, body: &str) -> PredictionsRequest {
    PredictionsRequest {
        model_name: model.into(),
        model_version: version.into(),
        input: HashMap::from([("data".to_string(), body.as_bytes().to_vec())]),
        sequence_id: None,
    }
}

#[test]
fn inference_over_grpc_answers_like_rest() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "metrics_mode=prometheus",
        ..Setup::default()
    });
    let body = sign_body();
    let (status, rest, _) = post(
        &format!("{}/predictions/sign", server.inference),
        "application/json",
        &body,
    );
    assert_eq!(status, 200, "{rest}");
    runtime().block_on(async {
        let mut c = InferenceApIsServiceClient::connect(server.grpc_inference.clone())
            .await
            .unwrap();
        let health = c.ping(()).await.unwrap().into_inner().health;
        let health: serde_json::Value = serde_json::from_str(&health).unwrap();
        assert_eq!(health["status"], "Healthy");

        let answer = c
            .predictions(predictions("sign", "", &body))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(String::from_utf8(answer.prediction).unwrap(), rest);
        let versioned = c
            .predictions(predictions("sign", "1.0", &body))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(String::from_utf8(versioned.prediction).unwrap(), rest);

        let mut stream = c
            .stream_predictions(predictions("sign", "", &body))
            .await
            .unwrap()
            .into_inner();
        let mut parts = Vec::new();
        while let Some(part) = stream.message().await.unwrap() {
            parts.push(String::from_utf8(part.prediction).unwrap());
        }
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0], rest);

        // TorchServe's codes: an unknown model is INTERNAL here, an unknown version too, a
        // bad input INVALID_ARGUMENT; a sequence id means nothing to a model that is not
        // stateful.
        let e = c
            .predictions(predictions("nope", "", &body))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e:?}");
        assert!(e.message().contains("Model not found: nope"), "{e:?}");
        let e = c.predictions(predictions("", "", &body)).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::Internal, "Parameter model_name is required.")
        );
        let e = c
            .predictions(predictions("sign", "", "{not json"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let mut seq = predictions("sign", "", &body);
        seq.sequence_id = Some("s1".into());
        let answer = c.predictions(seq).await.unwrap().into_inner();
        assert_eq!(String::from_utf8(answer.prediction).unwrap(), rest);
    });
    // gRPC requests count in the same metrics as REST ones (REST 1, gRPC 4 reaching "sign"
    // unversioned: unary, stream, bad input, with a sequence id).
    let (_, text, _) = get(&format!(
        "{}/metrics?name[]=ts_inference_requests_total",
        server.metrics
    ));
    assert!(
        text.contains("model_name=\"sign\",model_version=\"default\",hostname="),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with(
            "ts_inference_requests_total{model_name=\"sign\",model_version=\"default\","
        ) && l.ends_with(",} 5.0")),
        "{text}"
    );
}

#[test]
fn management_over_grpc_answers_as_torchserves_grpc_service() {
    let server = Server::start(Setup {
        archives: &["sign.mar", "sign_onnx.mar"],
        config: "enable_model_api=true\nload_models=sign.mar",
        ..Setup::default()
    });
    let m = server.management.clone();
    runtime().block_on(async {
        let mut c = ManagementApIsServiceClient::connect(server.grpc_management.clone())
            .await
            .unwrap();
        let list = c
            .list_models(ListModelsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .msg;
        // The proto's defaults are TorchServe's `limit=0`: an empty page and its token.
        assert_eq!(
            list,
            get(&format!("{m}/models?limit=0&next_page_token=0")).1
        );
        assert!(list.contains("\"nextPageToken\": \"0\""), "{list}");
        let listed = c
            .list_models(ListModelsRequest {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .msg;
        assert_eq!(listed, get(&format!("{m}/models")).1);

        let described = c
            .describe_model(DescribeModelRequest {
                model_name: "sign".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .msg;
        let d: serde_json::Value = serde_json::from_str(&described).unwrap();
        assert_eq!(d[0]["modelName"], "sign");

        // Registration is asynchronous unless asked, as TorchServe's gRPC.
        let registered = c
            .register_model(RegisterModelRequest {
                url: "sign_onnx.mar".into(),
                model_name: "onnx".into(),
                initial_workers: 1,
                synchronous: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .msg;
        // A status reply's text alone, as TorchServe's gRPC service sends it.
        assert_eq!(
            registered, "Model \"onnx\" Version: 1.0 registered with 1 initial workers",
            "{registered}"
        );
        let e = c
            .register_model(RegisterModelRequest {
                url: "sign_onnx.mar".into(),
                model_name: "onnx".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unknown, "a conflict (409): {e:?}");

        let scaled = c
            .scale_worker(ScaleWorkerRequest {
                model_name: "onnx".into(),
                min_worker: 2,
                synchronous: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .msg;
        assert_eq!(scaled, "Workers scaled to 2 for model: onnx");
        let e = c
            .set_default(SetDefaultRequest {
                model_name: "onnx".into(),
                model_version: "9.9".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert_eq!(
            e.message(),
            "Model version 9.9 does not exist for model onnx"
        );
        let gone = c
            .unregister_model(UnregisterModelRequest {
                model_name: "onnx".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .msg;
        assert_eq!(gone, "Model \"onnx\" unregistered");
    });
    assert_eq!(get(&format!("{m}/models/onnx")).0, 404);
}

#[test]
fn grpc_checks_keys_and_the_model_api() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "disable_token_authorization=false",
        ..Setup::default()
    });
    let text = std::fs::read_to_string(server.dir.path().join("key_file.json")).unwrap();
    let keys: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = |kind: &str| format!("Bearer {}", keys[kind]["key"].as_str().unwrap());
    runtime().block_on(async {
        let mut c = InferenceApIsServiceClient::connect(server.grpc_inference.clone())
            .await
            .unwrap();
        assert_eq!(c.ping(()).await.unwrap_err().code(), Code::PermissionDenied);
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert("authorization", key("inference").parse().unwrap());
        assert!(c.ping(req).await.is_ok());

        let mut m = ManagementApIsServiceClient::connect(server.grpc_management.clone())
            .await
            .unwrap();
        let mut req = tonic::Request::new(ListModelsRequest::default());
        req.metadata_mut()
            .insert("authorization", key("inference").parse().unwrap());
        assert_eq!(
            m.list_models(req).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        let mut req = tonic::Request::new(RegisterModelRequest {
            url: "sign.mar".into(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", key("management").parse().unwrap());
        let e = m.register_model(req).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::PermissionDenied, "Model API disabled")
        );
    });
}

/// KServe's Open Inference Protocol over gRPC: the handler gets v2 JSON and its v2 JSON answer
/// comes back as typed tensors.
#[test]
fn open_inference_protocol_over_grpc() {
    use ferroserve::api::grpc::pb::openinference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use ferroserve::api::grpc::pb::openinference::model_infer_request::InferInputTensor;
    use ferroserve::api::grpc::pb::openinference::{
        InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
        ServerLiveRequest,
    };
    const DOUBLER: &str = "\
import json

def handle(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        req = row.get('body')
        if isinstance(req, (bytes, bytearray)):
            req = json.loads(req)
        x = req['inputs'][0]['data']
        out.append({'id': req['id'], 'model_name': req['model_name'], 'model_version': '1.0',
                    'outputs': [{'name': 'doubled', 'datatype': 'FP32', 'shape': [len(x)],
                                 'data': [v * 2 for v in x]}]})
    return out
";
    let server = python_model_server("doubler", DOUBLER, "ts_open_inference_protocol=true");
    runtime().block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(server.grpc_inference.clone())
            .await
            .unwrap();
        assert!(
            c.server_live(ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
        let meta = c
            .model_metadata(ModelMetadataRequest {
                name: "doubler".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(meta.versions, ["1.0"]);
        let e = c
            .model_ready(ModelReadyRequest {
                name: "nope".into(),
                version: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let request = ModelInferRequest {
            model_name: "doubler".into(),
            id: "r1".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![3],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![1.0, 2.5, -4.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        // The Python worker may still be starting.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let answer = loop {
            match c.model_infer(request.clone()).await {
                Ok(a) => break a.into_inner(),
                Err(e) if std::time::Instant::now() < deadline => {
                    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(
            (
                answer.id.as_str(),
                answer.model_name.as_str(),
                answer.model_version.as_str()
            ),
            ("r1", "doubler", "1.0")
        );
        let out = &answer.outputs[0];
        assert_eq!(
            (out.name.as_str(), out.datatype.as_str()),
            ("doubled", "FP32")
        );
        assert_eq!(out.shape, [3]);
        assert_eq!(
            out.contents.as_ref().unwrap().fp32_contents,
            [2.0, 5.0, -8.0]
        );
    });
}
