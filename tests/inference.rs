//! The inference and management APIs against the real server and the bundled sign models.

mod common;

use common::*;

const BOTH: &[&str] = &["sign.mar", "sign_onnx.mar"];

/// Every reference case (full, padded, truncated, `[x, y, z]` points) through both runtimes
/// gives the logits torch computed (within 1e-5 relative, recovered from the probabilities)
/// and its labels in torch's order. The reference model is sensitive enough that a padding,
/// truncation or frame-order mistake moves some logit by more than 0.5.
#[test]
fn predictions_match_reference_for_torchscript_and_onnx() {
    let server = Server::start(Setup {
        archives: BOTH,
        ..Setup::default()
    });
    let reference = Reference::load();
    let classes = reference.classes();
    for model in ["sign", "sign_onnx"] {
        for case in reference.cases() {
            let body = request_body(case, reference.features(), classes);
            let (status, text, headers) = post(
                &format!("{}/predictions/{model}", server.inference),
                "application/json",
                &body,
            );
            assert_eq!(status, 200, "{model} {case}: {text}");
            assert!(header(&headers, "x-request-id").is_some());
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(answer["device"], "cpu");
            assert_eq!(confidences(&answer).len(), classes);
            reference.assert_answer(&answer, case, &format!("{model} seed {}", case["seed"]));
            // Sorted by confidence, best first.
            let confs: Vec<f64> = answer["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["confidence"].as_f64().unwrap())
                .collect();
            assert!(confs.windows(2).all(|w| w[0] >= w[1]));
        }
    }
    // The model tells a handling mistake apart: frames sent in reverse order get a
    // different answer, so the comparison above could not pass with one.
    let case = &reference.cases()[1];
    let mut reversed: serde_json::Value =
        serde_json::from_str(&request_body(case, reference.features(), classes)).unwrap();
    reversed["landmarks"].as_array_mut().unwrap().reverse();
    let (_, text, _) = post(
        &format!("{}/predictions/sign", server.inference),
        "application/json",
        &reversed.to_string(),
    );
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let moved = reference.logit_error(&answer, case);
    assert!(
        moved > 0.1,
        "reversed frames moved the logits by only {moved}"
    );
}

/// An array as `np.save` writes it (format 1.0, C order), for `descr` `<f4` or `<f8`.
fn npy(descr: &str, shape: &[usize], values: &[f64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for v in values {
        match descr {
            "<f4" => out.extend((*v as f32).to_le_bytes()),
            _ => out.extend(v.to_le_bytes()),
        }
    }
    out
}

/// `application/x-npy` bodies and KServe v2 binary tensors (beyond TorchServe) give the very
/// answer the JSON body of the same values gives, flat or as points, float32 or float64, through both runtimes, with
/// `topk` from a header; malformed arrays and a zero `topk` are 400s naming the problem.
#[test]
fn binary_bodies_answer_as_json_bodies() {
    let server = Server::start(Setup {
        archives: BOTH,
        ..Setup::default()
    });
    let reference = Reference::load();
    let features = reference.features();
    let send = |url: &str, topk: &str, body: Vec<u8>| {
        into_parts(
            agent()
                .post(url)
                .header("Content-Type", "application/x-npy")
                .header("topk", topk)
                .send(&body[..])
                .unwrap(),
        )
    };
    for model in ["sign", "sign_onnx"] {
        let url = format!("{}/predictions/{model}", server.inference);
        for case in reference.cases() {
            let json = request_body(case, features, 7);
            let (status, expected, _) = post(&url, "application/json", &json);
            assert_eq!(status, 200, "{expected}");
            let frames = formula_frames(
                case["seed"].as_u64().unwrap(),
                case["frames"].as_u64().unwrap() as usize,
                features,
            );
            let values: Vec<f64> = frames.iter().flatten().map(|v| f64::from(*v)).collect();
            let shapes = [
                vec![frames.len(), features],
                vec![frames.len(), features / 7, 7],
            ];
            // The KServe v2 binary tensor extension, on KServe's route and TorchServe's.
            let raw: Vec<u8> = frames
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let header = serde_json::json!({
                "inputs": [{"name": "landmarks", "shape": [1, frames.len(), features],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": raw.len()}}],
                "parameters": {"topk": 7},
            })
            .to_string();
            let mut body = header.clone().into_bytes();
            body.extend(&raw);
            for url in [
                format!("{}/v2/models/{model}/infer", server.inference),
                url.clone(),
            ] {
                let (status, text, _) = into_parts(
                    agent()
                        .post(&url)
                        .header("Content-Type", "application/octet-stream")
                        .header("Inference-Header-Content-Length", header.len().to_string())
                        .send(&body[..])
                        .unwrap(),
                );
                assert_eq!(status, 200, "{url}: {text}");
                assert_eq!(text, expected, "{url} seed {}", case["seed"]);
            }
            for (descr, shape) in [
                ("<f4", &shapes[0]),
                ("<f8", &shapes[0]),
                ("<f4", &shapes[1]),
            ] {
                let (status, text, _) = send(&url, "7", npy(descr, shape, &values));
                assert_eq!(status, 200, "{model} {descr} {shape:?}: {text}");
                assert_eq!(
                    text, expected,
                    "{model} seed {} {descr} {shape:?}",
                    case["seed"]
                );
            }
        }
        let values = vec![0.5; 2 * features];
        let refused = [
            (
                npy("<f4", &[2, features + 1], &vec![0.5; 2 * (features + 1)]),
                "array of shape [2, 470]",
            ),
            (
                npy("<i4", &[2, features], &values),
                "dtype <i4, expected float32 or float64",
            ),
            (
                npy("<f4", &[2, features], &values[..features]),
                "the array's data ends early",
            ),
            (b"{\"landmarks\": [[1]]}".to_vec(), "not a NumPy .npy array"),
        ];
        for (body, message) in refused {
            let (status, text, _) = send(&url, "5", body);
            assert_eq!(status, 400, "{text}");
            assert!(text.contains(message), "{message}: {text}");
        }
        let (status, text, _) = send(&url, "0", npy("<f4", &[2, features], &values));
        assert_eq!(status, 400, "{text}");
    }
}

/// Default top-k, version routing, the reply relayed like TorchServe's (empty reason phrase,
/// no content type), and the same body sent as a multipart file part.
#[test]
fn request_forms_and_versions() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        ..Setup::default()
    });
    let reference = Reference::load();
    let body = request_body(&reference.cases()[1], reference.features(), 5);
    for path in [
        "/predictions/sign",
        "/predictions/sign/1.0",
        "/predictions/sign/",
        "/explanations/sign",
    ] {
        let (status, text, headers) = post(
            &format!("{}{path}", server.inference),
            "application/json",
            &body,
        );
        assert_eq!(status, 200, "{path}: {text}");
        assert!(header(&headers, "content-type").is_none(), "{path}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["predictions"].as_array().unwrap().len(), 5);
        assert!(
            text.starts_with("{\n  \"predictions\": [\n    {\n      \"label\""),
            "{text}"
        );
    }
    let boundary = "XyZBoundary";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"req.json\"\r\n\
         Content-Type: application/json\r\n\r\n{body}\r\n--{boundary}--\r\n"
    );
    let (status, text, _) = post(
        &format!("{}/predictions/sign", server.inference),
        &format!("multipart/form-data; boundary={boundary}"),
        &multipart,
    );
    assert_eq!(status, 200, "{text}");
}

/// Batches of 4 on both runtimes: the four reference cases sent together form one batch (the
/// batch-size histogram says so) and each client gets the answer its input gets alone, in a
/// batch of one, and torch's.
#[test]
fn batched_answers_equal_single_answers_for_torchscript_and_onnx() {
    // The delay is far longer than the test: a batch dispatches because it is full.
    let server = Server::start(Setup {
        archives: BOTH,
        config: "metrics_mode=prometheus\nenable_model_api=true\nmodels={\"sign\": {\"1.0\": {\"batchSize\": 4, \"maxBatchDelay\": 600000}}, \
                 \"sign_onnx\": {\"1.0\": {\"batchSize\": 4, \"maxBatchDelay\": 600000}}}",
        ..Setup::default()
    });
    let reference = Reference::load();
    let classes = reference.classes();
    for model in ["sign", "sign_onnx"] {
        let (_, describe, _) = get(&format!("{}/models/{model}", server.management));
        let d: serde_json::Value = serde_json::from_str(&describe).unwrap();
        assert_eq!(d[0]["batchSize"], 4);
        assert_eq!(d[0]["maxBatchDelay"], 600000);
        let url = format!("{}/predictions/{model}", server.inference);
        let handles: Vec<_> = reference
            .cases()
            .iter()
            .map(|case| {
                let url = url.clone();
                let body = request_body(case, reference.features(), classes);
                std::thread::spawn(move || {
                    let (status, text, _) = post(&url, "application/json", &body);
                    assert_eq!(status, 200, "{text}");
                    serde_json::from_str::<serde_json::Value>(&text).unwrap()
                })
            })
            .collect();
        let batched: Vec<serde_json::Value> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let (_, metrics, _) = get(&format!("{}/metrics", server.metrics));
        let sample = |name: &str| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with(&format!("{name}{{"))
                        && l.contains(&format!("model_name=\"{model}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        assert_eq!(
            (
                sample("ferroserve_batch_size_count"),
                sample("ferroserve_batch_size_sum")
            ),
            (Some(1.0), Some(4.0)),
            "{model}: one batch of four\n{metrics}"
        );
        // The same archive registered again with batches of one.
        let single = format!("{model}_single");
        let (status, text, _) = post(
            &format!(
                "{}/models?url={model}.mar&model_name={single}&batch_size=1&initial_workers=1&synchronous=true",
                server.management
            ),
            "text/plain",
            "",
        );
        assert_eq!(status, 200, "{text}");
        for (case, answer) in reference.cases().iter().zip(&batched) {
            let what = format!("{model} batched seed {}", case["seed"]);
            reference.assert_answer(answer, case, &what);
            let body = request_body(case, reference.features(), classes);
            let url = format!("{}/predictions/{single}", server.inference);
            let (status, text, _) = post(&url, "application/json", &body);
            assert_eq!(status, 200, "{text}");
            let alone: serde_json::Value = serde_json::from_str(&text).unwrap();
            let error = relative_error(
                &reference.answer_logits(answer, case),
                &reference.answer_logits(&alone, case),
            );
            assert!(error < 1e-5, "{what}: {error} from the answer alone");
        }
    }
}

/// TorchServe's error bodies and status codes on the inference path.
#[test]
fn inference_errors() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "max_request_size=1000000",
        ..Setup::default()
    });
    let base = &server.inference;
    let (status, body, headers) = post(
        &format!("{base}/predictions/nope"),
        "application/json",
        "{}",
    );
    assert_eq!(status, 404);
    assert_eq!(
        assert_error(&body, 404, "ModelNotFoundException"),
        "Model not found: nope"
    );
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));

    let (status, body, _) = post(
        &format!("{base}/predictions/sign/9.9"),
        "application/json",
        "{}",
    );
    assert_eq!(status, 404);
    assert_eq!(
        assert_error(&body, 404, "ModelVersionNotFoundException"),
        "Model version: 9.9 does not exist for model: sign"
    );

    let (status, body, _) = get(&format!("{base}/api-description"));
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.0.1");
    assert!(doc["paths"]["/predictions/{model_name}"].is_object());

    let (status, body, _) = get(&format!("{base}/no/such/path"));
    assert_eq!(status, 404);
    assert_error(&body, 404, "ResourceNotFoundException");

    // A frame of the wrong size names the expected shape.
    let (status, body, _) = post(
        &format!("{base}/predictions/sign"),
        "application/json",
        "{\"landmarks\": [[0.1, 0.2, 0.3]]}",
    );
    assert_eq!(status, 400);
    let msg = assert_error(&body, 400, "BadRequestException");
    assert!(
        msg.contains("expected 469") && msg.contains("[<= 64, 469]"),
        "{msg}"
    );

    for bad in [
        "not json",
        "{\"landmarks\": []}",
        "{\"topk\": 3}",
        "{\"landmarks\": [[1]], \"topk\": -1}",
    ] {
        let (status, body, _) = post(&format!("{base}/predictions/sign"), "application/json", bad);
        assert_eq!(status, 400, "{bad}");
        assert_error(&body, 400, "BadRequestException");
    }

    // Over max_request_size: refused before the model sees it.
    let big = format!("{{\"landmarks\": [[{}]]}}", vec!["0.5"; 300_000].join(","));
    let (status, body, _) = post(
        &format!("{base}/predictions/sign"),
        "application/json",
        &big,
    );
    assert_eq!(status, 413);
    assert_error(&body, 413, "RequestEntityTooLargeException");

    // The server still answers after all of that.
    let reference = Reference::load();
    let ok = request_body(&reference.cases()[0], reference.features(), 1);
    assert_eq!(
        post(&format!("{base}/predictions/sign"), "application/json", &ok).0,
        200
    );
}

/// `GET /models` and describe, with TorchServe's JSON shapes; model API writes are refused.
#[test]
fn management_list_and_describe() {
    let server = Server::start(Setup {
        archives: BOTH,
        ..Setup::default()
    });
    let m = &server.management;
    let (status, body, _) = get(&format!("{m}/models"));
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"models": [
            {"modelName": "sign", "modelUrl": "sign.mar"},
            {"modelName": "sign_onnx", "modelUrl": "sign_onnx.mar"}
        ]})
    );
    let (_, body, _) = get(&format!("{m}/models?limit=1"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nextPageToken"], "1");
    assert_eq!(v["models"].as_array().unwrap().len(), 1);
    // Paging boundaries, as TorchServe: the token appears whenever offset + limit <= count.
    let page = |q: &str| -> serde_json::Value {
        serde_json::from_str(&get(&format!("{m}/models?{q}")).1).unwrap()
    };
    assert_eq!(page("limit=2")["nextPageToken"], "2");
    assert_eq!(page("limit=0")["nextPageToken"], "0");
    assert_eq!(page("limit=0")["models"].as_array().unwrap().len(), 0);
    assert!(
        page("limit=500")["nextPageToken"].is_null(),
        "over 100 means 100"
    );
    assert_eq!(
        page("limit=-3&next_page_token=-5")["models"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(page("limit=1&next_page_token=2")["models"]
        .as_array()
        .unwrap()
        .is_empty());
    let (_, body, _) = get(&format!("{m}/models?limit=1&next_page_token=1"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["models"][0]["modelName"], "sign_onnx");

    let (status, body, _) = get(&format!("{m}/models/sign_onnx"));
    assert_eq!(status, 200);
    let keys = [
        "modelName",
        "modelVersion",
        "modelUrl",
        "runtime",
        "minWorkers",
        "maxWorkers",
        "batchSize",
        "maxBatchDelay",
        "responseTimeout",
        "startupTimeout",
        "maxRetryTimeoutInSec",
        "clientTimeoutInMills",
        "parallelType",
        "parallelLevel",
        "deviceType",
        "continuousBatching",
        "useJobTicket",
        "useVenv",
        "stateful",
        "sequenceMaxIdleMSec",
        "sequenceTimeoutMSec",
        "maxNumSequence",
        "maxSequenceJobQueueSize",
        "loadedAtStartup",
        "workers",
        "jobQueueStatus",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            body.find(&format!("\"{k}\""))
                .unwrap_or_else(|| panic!("{k} missing: {body}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "field order: {body}"
    );
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    let d = &d[0];
    assert_eq!(d["modelName"], "sign_onnx");
    assert_eq!(d["modelVersion"], "1.0");
    assert_eq!(d["runtime"], "python");
    assert_eq!(d["minWorkers"], 1);
    assert_eq!(d["batchSize"], 1);
    assert_eq!(d["maxBatchDelay"], 100);
    assert_eq!(d["deviceType"], "cpu");
    assert_eq!(d["device"], "cpu");
    assert_eq!(d["loadedAtStartup"], true);
    assert_eq!(d["workers"][0]["status"], "READY");
    assert_eq!(d["workers"][0]["id"], "9001");
    assert_eq!(
        d["workers"][0]["pid"], server.pid,
        "native workers are threads of the server"
    );
    assert_eq!(d["workers"][0]["memoryUsage"], 0, "no process of their own");
    assert_eq!(
        d["jobQueueStatus"],
        serde_json::json!({"remainingCapacity": 100, "pendingRequests": 0})
    );

    let (_, body, _) = get(&format!("{m}/models/sign/all"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, body, _) = get(&format!("{m}/models/nope"));
    assert_eq!(status, 404);
    assert_error(&body, 404, "ModelNotFoundException");
    let (status, body, _) = get(&format!("{m}/models/sign/2.0"));
    assert_eq!(status, 404);
    assert_error(&body, 404, "ModelVersionNotFoundException");
    let (status, body, _) = post(&format!("{m}/models?url=sign.mar"), "text/plain", "");
    assert_eq!(status, 405);
    assert_error(&body, 405, "MethodNotAllowedException");

    let (status, _, _) = get(&format!("{}/metrics", server.metrics));
    assert_eq!(status, 200);

    // OpenAPI descriptions: of each listener, and of one model.
    let options = |url: String| {
        let mut res = agent().options(url).call().unwrap();
        let status = res.status().as_u16();
        let body = res.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    let (status, doc) = options(format!("{}/", server.inference));
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.0.1")));
    assert!(doc["paths"]["/predictions/{model_name}"]["post"].is_object());
    let (_, doc) = options(format!("{m}/"));
    assert!(doc["paths"]["/models/{model_name}/{model_version}/set-default"]["put"].is_object());
    let (status, doc) = options(format!("{}/predictions/sign", server.inference));
    assert_eq!(
        (status, doc["info"]["title"].as_str()),
        (200, Some("RESTful API for: sign"))
    );
    let (status, _) = options(format!("{}/predictions/nope", server.inference));
    assert_eq!(status, 404);
    let (status, doc) = options(format!("{m}/models/sign"));
    assert_eq!(
        (status, doc["info"]["title"].as_str()),
        (200, Some("RESTful Management API for: sign"))
    );
}

/// KServe deployments (`service_envelope=kserve`): a native model answers v1 `instances` as
/// TorchServe's envelope does, and the management listener's `/v1/models/{m}` reports
/// readiness.
#[test]
fn kserve_v1_on_a_native_model() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "service_envelope=kserve",
        ..Setup::default()
    });
    let base = server.inference.clone();
    let reference = Reference::load();
    let bodies: Vec<String> = reference.cases()[..2]
        .iter()
        .map(|c| request_body(c, reference.features(), 2))
        .collect();
    // Without the envelope each body is one request; with it, one instance each.
    let plain = Server::start(Setup {
        archives: &["sign.mar"],
        ..Setup::default()
    });
    let expected: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| {
            let (status, text, _) = post(
                &format!("{}/predictions/sign", plain.inference),
                "application/json",
                b,
            );
            assert_eq!(status, 200, "{text}");
            serde_json::from_str(&text).unwrap()
        })
        .collect();
    let instances: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let (status, text, _) = post(
        &format!("{base}/v1/models/sign:predict"),
        "application/json",
        &serde_json::json!({ "instances": instances }).to_string(),
    );
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer, serde_json::json!({ "predictions": expected }));
    let (status, text, _) = post(
        &format!("{base}/v1/models/sign:predict"),
        "application/json",
        r#"{"instances": []}"#,
    );
    assert_eq!(status, 400, "{text}");
    // More instances than the job queue holds (100 here): refused before any is sized.
    let many = format!("{{\"instances\": [{}]}}", vec!["[[0]]"; 101].join(","));
    let (status, text, _) = post(
        &format!("{base}/v1/models/sign:predict"),
        "application/json",
        &many,
    );
    assert_eq!(
        (status, assert_error(&text, 400, "BadRequestException")),
        (
            400,
            "101 instances, more than the 100 the model's job queue holds".to_string()
        )
    );

    let m = &server.management;
    let (status, text, _) = get(&format!("{m}/v1/models/sign"));
    assert_eq!(status, 200);
    let ready: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ready, serde_json::json!({"name": "sign", "ready": true}));
    assert_eq!(get(&format!("{m}/v1/models/nope")).0, 404);
    assert_eq!(
        post(&format!("{m}/v1/models/sign"), "text/plain", "x").0,
        405
    );
}

/// TorchServe's BaseHandler contract natively (`json_tensor`) on an identity model: each
/// request gets its own array back, spelled as TorchServe's Python worker writes a handler's
/// list (`json.dumps(indent=2)` of float32 values); three requests sent together form one
/// batch (the batch-size histogram says so) and keep their rows apart; bad bodies get
/// TorchServe's error JSON without reaching the model.
#[test]
fn json_tensor_handler_on_torchscript_and_onnx() {
    let server = Server::start(Setup {
        archives: &["noop.mar", "noop_onnx.mar"],
        config: "metrics_mode=prometheus\nmodels={\"noop\": {\"1.0\": {\"batchSize\": 3, \"maxBatchDelay\": 600000}}, \
                 \"noop_onnx\": {\"1.0\": {\"batchSize\": 3, \"maxBatchDelay\": 600000}}}",
        ..Setup::default()
    });
    let cases = [
        ("[1, 2, 3, 4]", "[\n  1.0,\n  2.0,\n  3.0,\n  4.0\n]"),
        (
            "[0.1, -2.5, 1e-05, 1e16]",
            "[\n  0.10000000149011612,\n  -2.5,\n  9.999999747378752e-06,\n  1.0000000272564224e+16\n]",
        ),
        ("[5, 6, 7, 8.5]", "[\n  5.0,\n  6.0,\n  7.0,\n  8.5\n]"),
    ];
    for model in ["noop", "noop_onnx"] {
        let url = format!("{}/predictions/{model}", server.inference);
        let handles: Vec<_> = cases
            .iter()
            .map(|(body, _)| {
                let (url, body) = (url.clone(), body.to_string());
                std::thread::spawn(move || post(&url, "application/json", &body))
            })
            .collect();
        for ((body, want), h) in cases.iter().zip(handles) {
            let (status, text, _) = h.join().unwrap();
            assert_eq!((status, text.as_str()), (200, *want), "{model} {body}");
        }
        let (_, metrics, _) = get(&format!("{}/metrics", server.metrics));
        let batches = metrics.lines().find(|l| {
            l.starts_with("ferroserve_batch_size_sum{")
                && l.contains(&format!("model_name=\"{model}\""))
        });
        assert_eq!(
            batches.and_then(|l| l.rsplit(' ').next()),
            Some("3"),
            "{model}: one batch of three\n{metrics}"
        );
        for (bad, why) in [
            ("[[1, 2], [3]]", "not rectangular"),
            ("[1, \"a\"]", "expected numbers"),
            ("{\"a\": 1}", "expected numbers"),
            ("[1, 2", "invalid request"),
        ] {
            let (status, text, _) = post(&url, "application/json", bad);
            assert_eq!(status, 400, "{model} {bad}: {text}");
            let msg = assert_error(&text, 400, "BadRequestException");
            assert!(msg.contains(why), "{bad}: {msg}");
        }
        // No values at all (three, to fill the batch): the identity of an empty row, as
        // `json.dumps([], indent=2)`.
        let empty: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || post(&url, "application/json", "[]"))
            })
            .collect();
        for h in empty {
            let (status, text, _) = h.join().unwrap();
            assert_eq!((status, text.as_str()), (200, "[]"), "{model}");
        }
    }
}
