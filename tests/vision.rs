//! TorchServe's built-in vision handlers served natively, compared with the answers real
//! TorchServe 0.12 gave on the same archives and images (tests/fixtures/vision/expected.json,
//! recorded by tests/vision_record.py). The servers here have no Python interpreter at all.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Probabilities and scores: within this of TorchServe's. The pixels are Pillow's to the bit,
/// so the answers differ only where libtorch's kernels round differently.
const TOLERANCE: f64 = 1e-5;
/// Explanations: within this of captum's.
const EXPLAIN_TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(REPO).join("tests/fixtures/vision").join(name)
}

fn recorded() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

const ARCHIVES: &[&str] = &[
    "vclass.mar",
    "vclass_onnx.mar",
    "vseg.mar",
    "vdet.mar",
    "vdet_tv.mar",
];

/// A server on the vision archives, without Python.
fn server(extra: &str) -> Server {
    let config = format!("python=/nonexistent/python3\n{extra}");
    Server::start_with(
        Setup {
            archives: &[],
            config: &config,
            ..Setup::default()
        },
        |store| {
            for a in ARCHIVES {
                std::fs::copy(fixture(a), store.join(a)).unwrap();
            }
        },
    )
}

fn content_type(image: &str) -> &'static str {
    match image.rsplit('.').next().unwrap() {
        "jpg" => "image/jpeg",
        "png" => "image/png",
        "bmp" => "image/bmp",
        "webp" => "image/webp",
        "tiff" => "image/tiff",
        "gif" => "image/gif",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

fn send(url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let res = agent()
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap();
    let status = res.status().as_u16();
    (status, res.into_body().read_to_string().unwrap())
}

fn predict(server: &Server, model: &str, image: &str) -> (u16, String) {
    let body = std::fs::read(fixture(image)).unwrap();
    send(
        &format!("{}/predictions/{model}", server.inference),
        content_type(image),
        &body,
    )
}

/// The largest difference between two answers of the same structure (keys and their order,
/// list lengths, strings equal), or why they differ.
fn max_difference(ours: &Value, theirs: &Value, relative_from: f64) -> Result<f64, String> {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let (ka, kb): (Vec<_>, Vec<_>) = (a.keys().collect(), b.keys().collect());
            if ka != kb {
                return Err(format!("keys {ka:?} vs TorchServe's {kb:?}"));
            }
            a.values().zip(b.values()).try_fold(0f64, |m, (x, y)| {
                Ok(m.max(max_difference(x, y, relative_from)?))
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).try_fold(0f64, |m, (x, y)| {
                Ok(m.max(max_difference(x, y, relative_from)?))
            })
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            // Box coordinates are in pixels: compared relative to their size.
            Ok((a - b).abs() / b.abs().max(relative_from))
        }
        _ if ours == theirs => Ok(0.0),
        _ => Err(format!("{ours} vs TorchServe's {theirs}")),
    }
}

/// A segmentation map compared pixel by pixel: the share of pixels whose class differs, and
/// the largest probability difference where the class is the same.
fn segment_difference(ours: &Value, theirs: &Value) -> (f64, f64) {
    let pixels = |v: &Value| -> Vec<(f64, f64)> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter())
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (pixels(ours), pixels(theirs));
    assert_eq!(a.len(), b.len());
    let differing = a.iter().zip(&b).filter(|(x, y)| x.0 != y.0).count();
    let worst = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.0 == y.0)
        .map(|(x, y)| (x.1 - y.1).abs())
        .fold(0.0, f64::max);
    (differing as f64 / a.len() as f64, worst)
}

/// What ferroserve says where TorchServe answers 503 "Prediction failed".
fn refusal(image: &str) -> &'static str {
    match image {
        "palette.png" => "PNG image is mode P (1 channel)",
        "grey.jpg" => "JPEG image is mode L (1 channel)",
        "cmyk.jpg" => "JPEG image is mode CMYK (4 channels)",
        "rgba.png" => "PNG image is mode RGBA (4 channels)",
        "first-frame.gif" => "GIF image is mode P",
        "truncated.jpg" => "image file is truncated",
        "not-an-image.bin" => "cannot identify image file",
        other => panic!("no refusal expected for {other}"),
    }
}

#[test]
fn builtin_vision_handlers_answer_as_torchserve_without_python() {
    let server = server("metrics_mode=prometheus");
    let recorded = recorded();
    let mut compared = 0;
    for (key, expected) in &recorded {
        let parts: Vec<&str> = key.split(' ').collect();
        let [model, image] = parts[..] else { continue };
        // The torchvision-style detector (list in, (losses, detections) out) must give the
        // plain detector's answers.
        let models = match model {
            "vdet" => vec!["vdet", "vdet_tv"],
            "vclass" => vec!["vclass", "vclass_onnx"],
            other => vec![other],
        };
        for model in models {
            let (status, body) = predict(&server, model, image);
            compared += 1;
            if expected["status"] == 503 {
                assert_eq!(status, 400, "{model} {image}: {body}");
                let message = assert_error(&body, 400, "BadRequestException");
                assert!(
                    message.contains(refusal(image)),
                    "{model} {image}: {message}"
                );
                continue;
            }
            assert_eq!(status, 200, "{model} {image}: {body}");
            let ours: Value = serde_json::from_str(&body).unwrap();
            let theirs: Value = serde_json::from_str(expected["body"].as_str().unwrap()).unwrap();
            if model.starts_with("vseg") {
                let (differing, worst) = segment_difference(&ours, &theirs);
                assert!(
                    differing <= 0.001,
                    "{model} {image}: {differing} of pixels differ"
                );
                assert!(
                    worst <= TOLERANCE,
                    "{model} {image}: probabilities off by {worst}"
                );
                eprintln!("{model} {image}: class map differs on {differing} of pixels, probabilities within {worst:.1e}");
            } else {
                let worst = max_difference(&ours, &theirs, 1.0)
                    .unwrap_or_else(|e| panic!("{model} {image}: {e}\n{body}"));
                assert!(
                    worst <= TOLERANCE,
                    "{model} {image}: off by {worst}\n{body}"
                );
                eprintln!("{model} {image}: same labels in the same order, within {worst:.1e}");
            }
        }
    }
    assert!(compared >= 90, "only {compared} answers compared");

    // A JSON string is a base64 image; a JSON list is the input tensor itself.
    let image = std::fs::read(fixture("baseline-420.jpg")).unwrap();
    let b64 = serde_json::to_string(&base64_encode(&image)).unwrap();
    let url = format!("{}/predictions/vclass", server.inference);
    let (status, body) = send(&url, "application/json", b64.as_bytes());
    assert_eq!(status, 200, "{body}");
    assert_same(
        &body,
        &recorded["vclass base64 baseline-420.jpg"],
        TOLERANCE,
    );
    let tensor = std::fs::read(fixture("tensor.json")).unwrap();
    let (status, body) = send(&url, "application/json", &tensor);
    assert_eq!(status, 200, "{body}");
    assert_same(&body, &recorded["vclass predictions tensor.json"], 1e-6);

    // Every version is served in process, and says so.
    for model in ["vclass", "vclass_onnx", "vseg", "vdet", "vdet_tv"] {
        let (status, body, _) = get(&format!("{}/models/{model}", server.management));
        assert_eq!(status, 200);
        let describe: Value = serde_json::from_str(&body).unwrap();
        let served = &describe[0]["servedBy"];
        assert_eq!(served["runtime"], "native", "{model}: {body}");
        // Its workers are threads of the server itself: no process of their own.
        for worker in describe[0]["workers"].as_array().unwrap() {
            assert_eq!(worker["pid"], server.pid, "{model}: {body}");
        }
    }
    // TorchServe's handler-side metrics, as its Python handlers print them.
    let (_, metrics, _) = get(&format!("{}/metrics", server.metrics));
    for name in ["HandlerTime", "PredictionTime"] {
        let line = format!("{name}{{ModelName=\"vclass\",Level=\"Model\",Hostname=");
        assert!(metrics.contains(&line), "no {line} in {metrics}");
    }
    let log = server.log_text();
    assert!(log.contains("handler chosen"), "{log}");
    assert!(log.contains("built-in image_classifier over ONNX"), "{log}");

    // Drift monitoring saw every answer: one top-1 label each, and each image's decoded size
    // and mean channel intensities (0–1).
    let (_, body, _) = get(&format!("{}/models/vclass/1.0/drift", server.management));
    let window = serde_json::from_str::<Value>(&body).unwrap()["window"]
        .as_f64()
        .unwrap();
    let (_, metrics, _) = get(&format!("{}/metrics", server.metrics));
    let of_vclass = |name: &str, feature: Option<&str>| -> Vec<f64> {
        let labels = match feature {
            Some(f) => format!("{{feature=\"{f}\",model_name=\"vclass\","),
            None => "{".to_string(),
        };
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{name}{labels}")) && l.contains("model_name=\"vclass\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let answered: f64 = of_vclass("ferroserve_prediction_top1_total", None)
        .iter()
        .sum();
    assert!(
        window >= 10.0 && answered == window,
        "{window} {answered}: {body}"
    );
    let images = of_vclass("ferroserve_input_feature_count", Some("width"))[0];
    assert!(images >= 10.0 && images < window, "{images} of {window}");
    for c in 0..3 {
        let feature = format!("channel_{c}_mean");
        let sum = of_vclass("ferroserve_input_feature_sum", Some(&feature))[0];
        let n = of_vclass("ferroserve_input_feature_count", Some(&feature))[0];
        assert!(
            n > 0.0 && (0.0..=1.0).contains(&(sum / n)),
            "{feature}: {sum} / {n}"
        );
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Asserts an answer matches TorchServe's recorded one; returns the largest difference.
fn assert_same(body: &str, expected: &Value, tolerance: f64) -> f64 {
    let ours: Value = serde_json::from_str(body).unwrap();
    let theirs: Value = serde_json::from_str(expected["body"].as_str().unwrap()).unwrap();
    let worst = max_difference(&ours, &theirs, 1.0).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert!(worst <= tolerance, "off by {worst}\n{body}");
    worst
}

#[test]
fn explanations_are_captums_integrated_gradients() {
    let server = server("");
    let recorded = recorded();
    let url = |model: &str| format!("{}/explanations/{model}", server.inference);
    let tensor = std::fs::read(fixture("tensor.json")).unwrap();
    let (status, body) = send(&url("vclass"), "application/json", &tensor);
    assert_eq!(status, 200, "{body}");
    let worst = assert_same(
        &body,
        &recorded["vclass explanations tensor.json"],
        EXPLAIN_TOLERANCE,
    );
    eprintln!("explanations of tensor.json within {worst:.1e} of captum's");

    // A picture's 150,528 attributions, by the recorded summary of captum's.
    let image = std::fs::read(fixture("baseline-420.jpg")).unwrap();
    let (status, body) = send(&url("vclass"), "image/jpeg", &image);
    assert_eq!(status, 200);
    let ours: Vec<Vec<Vec<f64>>> = serde_json::from_str(&body).unwrap();
    let flat: Vec<f64> = ours.iter().flatten().flatten().copied().collect();
    assert_eq!(flat.len(), 3 * 224 * 224);
    let summary = &recorded["vclass explanations baseline-420.jpg"]["summary"];
    let abs_sum: f64 = flat.iter().map(|v| v.abs()).sum();
    let mut worst = 0f64;
    let expected_abs = summary["abs_sum"].as_f64().unwrap();
    assert!(
        (abs_sum - expected_abs).abs() / expected_abs < 1e-6,
        "{abs_sum} vs {expected_abs}"
    );
    for (c, expected) in summary["channel_sums"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let sum: f64 = ours[c].iter().flatten().sum();
        assert!(
            (sum - expected.as_f64().unwrap()).abs() < EXPLAIN_TOLERANCE,
            "channel {c}: {sum} vs {expected}"
        );
    }
    for (i, expected) in summary["every_997th"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let v = flat[i * 997];
        worst = worst.max((v - expected.as_f64().unwrap()).abs());
        assert!(
            (v - expected.as_f64().unwrap()).abs() < EXPLAIN_TOLERANCE,
            "value {}: {v} vs {expected}",
            i * 997
        );
    }

    eprintln!("explanations of baseline-420.jpg: sampled values within {worst:.1e} of captum's, absolute sum {abs_sum} vs {expected_abs}");

    // ONNX Runtime gives no gradients: a clear error, as TorchServe cannot explain it either.
    let (status, body) = send(&url("vclass_onnx"), "application/json", &tensor);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("explanations need gradients"), "{body}");
}

/// A KServe v1 call with one instance: its answer under `key`, compared with TorchServe's
/// recorded answer; the largest difference.
fn kserve_one(server: &Server, verb: &str, instance: Value, key: &str, recorded: &Value) -> f64 {
    let body = serde_json::json!({ "instances": [instance] }).to_string();
    let url = format!("{}/v1/models/vclass:{verb}", server.inference);
    let (status, body) = send(&url, "application/json", body.as_bytes());
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let theirs: Value = serde_json::from_str(recorded["body"].as_str().unwrap()).unwrap();
    max_difference(&answer[key][0], &theirs, 1.0).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

#[test]
fn kserve_envelope_carries_base64_images_and_explanations() {
    let server = server("service_envelope=kserve");
    let recorded = recorded();
    let image = std::fs::read(fixture("baseline-420.jpg")).unwrap();
    let instance = serde_json::json!({"data": base64_encode(&image)});
    let worst = kserve_one(
        &server,
        "predict",
        instance,
        "predictions",
        &recorded["vclass baseline-420.jpg"],
    );
    assert!(worst <= TOLERANCE, "off by {worst}");

    let tensor: Value =
        serde_json::from_slice(&std::fs::read(fixture("tensor.json")).unwrap()).unwrap();
    let instance = serde_json::json!({"data": tensor, "target": 0});
    let worst = kserve_one(
        &server,
        "explain",
        instance,
        "explanations",
        &recorded["vclass explanations tensor.json"],
    );
    assert!(worst <= EXPLAIN_TOLERANCE, "off by {worst}");
}

#[test]
fn a_batch_of_images_runs_as_one_forward_pass() {
    let server = server(
        "models={\"vclass\": {\"1.0\": {\"batchSize\": 4, \"maxBatchDelay\": 5000, \"minWorkers\": 1, \"maxWorkers\": 1}}}",
    );
    let recorded = recorded();
    let images = ["baseline-420.jpg", "rgb.png", "lossy.webp", "tiny.jpg"];
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|image| s.spawn(|| predict(&server, "vclass", image)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (image, (status, body)) in images.iter().zip(&answers) {
        assert_eq!(*status, 200, "{image}: {body}");
        assert_same(body, &recorded[&format!("vclass {image}")], TOLERANCE);
    }
    let (_, body, _) = get(&format!("{}/models/vclass", server.management));
    let describe: Value = serde_json::from_str(&body).unwrap();
    let stats = &describe[0]["stats"];
    assert_eq!(stats["requests"], 4, "{body}");
    // Four requests within the batch delay of a batch of four: one forward pass.
    assert_eq!(stats["batches"], 1, "{body}");
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    // A 1 × 1 PNG whose header claims 100000 × 100000 pixels (30 GB of RGB).
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&[1, 2, 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
    }
    png[16..24].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]);
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    for (config, expected) in [
        (
            "",
            "exceeds limit of 178956970 pixels, could be decompression bomb DOS attack.",
        ),
        (
            "limit_max_image_pixels=false",
            "which limit_max_image_pixels=false does not lift",
        ),
    ] {
        let server = server(config);
        let url = format!("{}/predictions/vclass", server.inference);
        let (status, body) = send(&url, "image/png", &png);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(expected), "{body}");
        // Nothing lost: the model answers the next request.
        let (status, _) = predict(&server, "vclass", "rgb.png");
        assert_eq!(status, 200);
    }
}

/// A built-in handler's TorchScript file that libtorch cannot load goes to the Python worker,
/// with the reason in describe and the log.
#[test]
fn a_model_file_libtorch_cannot_load_falls_back_to_python() {
    let config = format!(
        "python={}\nmodels={{\"broken\": {{\"1.0\": {{\"minWorkers\": 0, \"maxWorkers\": 1}}}}}}",
        test_python()
    );
    let server = Server::start_with(
        Setup {
            archives: &[],
            config: &config,
            ..Setup::default()
        },
        |store| {
            let manifest = r#"{"runtime": "python", "model": {"modelName": "broken", "modelVersion": "1.0", "handler": "image_classifier", "serializedFile": "model.pt"}}"#;
            write_mar(
                &store.join("broken.mar"),
                manifest,
                &[("model.pt", b"not TorchScript".as_slice())],
            );
        },
    );
    let (status, body, _) = get(&format!("{}/models/broken", server.management));
    assert_eq!(status, 200, "{body}");
    let describe: Value = serde_json::from_str(&body).unwrap();
    let served = &describe[0]["servedBy"];
    assert_eq!(served["runtime"], "python", "{body}");
    assert_eq!(served["handler"], "image_classifier", "{body}");
    assert!(
        served["reason"]
            .as_str()
            .unwrap()
            .starts_with("native load failed: cannot load"),
        "{body}"
    );
    let log = server.log_text();
    assert!(
        log.contains("the native runtime cannot load the model file; the Python worker serves it"),
        "{log}"
    );
}
