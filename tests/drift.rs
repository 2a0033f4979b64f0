//! Drift monitoring on the native sign model: a reference captured from traffic, then traffic
//! from the same distribution (scores stay under the thresholds) and from a shifted one (they
//! cross them), with window 400 and period 100 (10 bins: two samples of 400 from one
//! distribution differ by a PSI of about 0.05); the series in /metrics and their removal; a
//! reference shipped in the archive, taken from the first requests and kept in a snapshot; a
//! canary whose answers diverge from the default version's rolled back.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const WINDOW: usize = 400;
const PERIOD: usize = 100;
/// The usual reading of the population stability index: under 0.1 no change, over 0.25 a
/// significant one.
const STABLE: f64 = 0.1;
const SHIFTED: f64 = 0.25;

/// `model-store/sign.mar` as `version`, with `drift` (YAML flow mapping) as its
/// `ferroserve.drift` and `extra` files added.
fn sign_archive(path: &Path, version: &str, drift: &str, extra: &[(&str, &[u8])]) {
    let src = Path::new(REPO).join("model-store/sign.mar");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut entry = |name: &str| {
        let mut data = Vec::new();
        zip.by_name(name).unwrap().read_to_end(&mut data).unwrap();
        data
    };
    let (model, labels) = (entry("sign.pt"), entry("index_to_name.json"));
    let config = String::from_utf8(entry("model-config.yaml"))
        .unwrap()
        .replace("ferroserve:\n", &format!("ferroserve:\n  drift: {drift}\n"));
    let manifest = format!(
        r#"{{"runtime": "python", "model": {{"modelName": "sign", "serializedFile": "sign.pt", "handler": "sign_handler.py", "modelVersion": "{version}", "configFile": "model-config.yaml"}}}}"#
    );
    let mut files: Vec<(&str, &[u8])> = vec![
        ("sign.pt", &model),
        ("sign_handler.py", b"# served natively\n"),
        ("index_to_name.json", &labels),
        ("model-config.yaml", config.as_bytes()),
    ];
    files.extend_from_slice(extra);
    write_mar(path, &manifest, &files);
}

/// A sign request of the generator's formula: `seed` picks the values, `frames` the
/// sequence's length (the rest of the model's 64 frames is zero padding).
fn body(seed: u64, frames: u64) -> String {
    let case = serde_json::json!({"seed": seed, "frames": frames, "format": "flat"});
    request_body(&case, Reference::load().features(), 1)
}

/// `n` requests of a distribution: formula seeds drawn uniformly from a million, lengths
/// from `frames`; `draw` seeds the draws (the same draws every run).
fn send(server: &Server, path: &str, draw: u64, n: usize, frames: (u64, u64)) {
    let url = format!("{}/predictions/{path}", server.inference);
    let mut rng = fastrand::Rng::with_seed(draw);
    for _ in 0..n {
        let request = body(rng.u64(0..1_000_000), rng.u64(frames.0..=frames.1));
        let (status, text, _) = post(&url, "application/json", &request);
        assert_eq!(status, 200, "{text}");
    }
}

fn management(server: &Server, method: &str, path: &str) -> (u16, Value) {
    let url = format!("{}/models/{path}", server.management);
    let res = match method {
        "GET" => agent().get(&url).call(),
        _ => agent().put(&url).send_empty(),
    };
    let (status, text, _) = into_parts(res.unwrap());
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn drift(server: &Server, version: &str) -> Value {
    let (status, d) = management(server, "GET", &format!("sign/{version}/drift"));
    assert_eq!(status, 200, "{d}");
    d
}

fn score(d: &Value, feature: &str, method: &str) -> f64 {
    d["scores"][feature][method]
        .as_f64()
        .unwrap_or_else(|| panic!("no {method} score for {feature}: {d}"))
}

/// The value of one sample of the exposition.
fn sample(server: &Server, name: &str, labels: &str) -> Option<f64> {
    let (_, text, _) = get(&format!("{}/metrics", server.metrics));
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

const IN_RANGE: (u64, u64) = (40, 64);
const SHORT: (u64, u64) = (8, 20);

#[test]
fn scores_stay_low_on_the_reference_distribution_and_cross_the_threshold_on_a_shifted_one() {
    let config = format!("{{window: {WINDOW}, period: {PERIOD}}}");
    let server = Server::start_with(
        Setup {
            config: "load_models=sign.mar\nmetrics_mode=prometheus\nenable_model_api=true",
            ..Setup::default()
        },
        |store| sign_archive(&store.join("sign.mar"), "1.0", &config, &[]),
    );
    // Before any traffic there is nothing to take a reference from.
    let (status, e) = management(&server, "PUT", "sign/1.0/drift/reference");
    assert_eq!(status, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("no request"), "{e}");

    send(&server, "sign", 1, WINDOW, IN_RANGE);
    let (status, reference) = management(&server, "PUT", "sign/1.0/drift/reference");
    assert_eq!(status, 200, "{reference}");
    assert_eq!(reference["requests"], WINDOW);
    for input in ["mean", "std", "zero_share", "frames"] {
        let shares = reference["inputs"][input]["shares"].as_array().unwrap();
        let sum: f64 = shares.iter().map(|s| s.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{input}: {reference}");
    }
    let labels = reference["labels"].as_object().unwrap();
    assert!(
        labels.len() > 1,
        "the reference traffic has one top-1 label: {reference}"
    );

    // The same distribution, other draws: a full window of it.
    send(&server, "sign", 2, WINDOW, IN_RANGE);
    let d = drift(&server, "1.0");
    assert_eq!(d["window"], WINDOW, "{d}");
    assert_eq!(d["reference"]["source"], "captured");
    for input in ["mean", "std", "zero_share", "frames"] {
        assert!(score(&d, input, "psi") < STABLE, "{input}: {d}");
    }
    assert!(score(&d, "label", "js") < 0.1, "{d}");

    // Shorter sequences: more padding, other answers.
    send(&server, "sign", 3, WINDOW, SHORT);
    let d = drift(&server, "1.0");
    for input in ["zero_share", "frames"] {
        assert!(score(&d, input, "psi") > SHIFTED, "{input}: {d}");
    }
    assert!(score(&d, "label", "js") > 0.2, "{d}");

    // The same numbers in /metrics, and every request counted once.
    let mv = r#"model_name="sign",model_version="1.0""#;
    let psi = sample(
        &server,
        "ferroserve_drift_score",
        &format!(r#"feature="frames",method="psi",{mv}"#),
    )
    .expect("drift score exposed");
    assert!((psi - score(&d, "frames", "psi")).abs() < 1e-9);
    let sent = (3 * WINDOW) as f64;
    assert_eq!(
        sample(&server, "ferroserve_prediction_confidence_count", mv),
        Some(sent)
    );
    assert_eq!(
        sample(
            &server,
            "ferroserve_input_feature_count",
            &format!(r#"feature="mean",{mv}"#)
        ),
        Some(sent)
    );
    let (_, text, _) = get(&format!("{}/metrics", server.metrics));
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("ferroserve_prediction_top1_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(counted, sent);

    // Unregistered, the version's series leave the exposition.
    let gone = agent()
        .delete(format!("{}/models/sign/1.0", server.management))
        .call()
        .unwrap();
    assert_eq!(gone.status(), 200);
    let (_, text, _) = get(&format!("{}/metrics", server.metrics));
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("ferroserve_drift_score{")
                || l.starts_with("ferroserve_prediction_top1_total{")),
        "{text}"
    );
}

#[test]
fn references_come_from_the_archive_the_first_requests_and_snapshots() {
    // A reference with every request in one `frames` bin below 30: in-range traffic is all
    // past it.
    let shipped = br#"{"requests": 10, "labels": {}, "inputs": {"frames": {"edges": [30], "shares": [1.0, 0.0]}}}"#;
    let mut server = Server::start_with(
        Setup {
            config: "load_models=shipped.mar,first.mar",
            ..Setup::default()
        },
        |store| {
            sign_archive(
                &store.join("shipped.mar"),
                "1.0",
                &format!("{{window: {WINDOW}, period: {PERIOD}}}"),
                &[("drift-reference.json", shipped)],
            );
            sign_archive(
                &store.join("first.mar"),
                "2.0",
                &format!("{{window: {WINDOW}, period: {PERIOD}, referenceRequests: {PERIOD}}}"),
                &[],
            );
        },
    );
    let d = drift(&server, "1.0");
    assert_eq!(d["reference"]["source"], "archive", "{d}");
    send(&server, "sign/1.0", 1, PERIOD, IN_RANGE);
    assert!(score(&drift(&server, "1.0"), "frames", "psi") > SHIFTED);

    assert_eq!(drift(&server, "2.0")["reference"], Value::Null);
    send(&server, "sign/2.0", 1, PERIOD, IN_RANGE);
    let d = drift(&server, "2.0");
    assert_eq!(d["reference"]["source"], "first_requests", "{d}");
    assert_eq!(d["reference"]["requests"], PERIOD);

    // A captured reference is kept in the snapshot and restored with the version.
    assert_eq!(
        management(&server, "PUT", "sign/1.0/drift/reference").0,
        200
    );
    assert!(server.terminate().success());
    let dir = server.dir.path();
    let mut again = std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--foreground")
        .current_dir(dir)
        .env("TMPDIR", dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_models_ready(&server.inference, Duration::from_secs(60)),
        "models not ready after the restart"
    );
    let (status, d) = management(&server, "GET", "sign/1.0/drift");
    let _ = again.kill();
    let _ = again.wait();
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["reference"]["source"], "snapshot", "{d}");
    assert_eq!(d["reference"]["requests"], PERIOD);
}

#[test]
fn bad_references_and_unmonitored_versions_get_clear_errors() {
    let server = Server::start_with(
        Setup {
            config: "load_models=\nenable_model_api=true",
            ..Setup::default()
        },
        |store| {
            sign_archive(
                &store.join("bad.mar"),
                "1.0",
                "{window: 10}",
                &[("drift-reference.json", br#"{"labels": {"hello": 3}}"#)],
            );
            sign_archive(&store.join("off.mar"), "1.0", "{enabled: false}", &[]);
        },
    );
    let register = |url: &str| {
        let res = agent()
            .post(format!("{}/models?url={url}", server.management))
            .send_empty()
            .unwrap();
        into_parts(res)
    };
    let (status, text, _) = register("bad.mar");
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("drift-reference.json: label shares"),
        "{text}"
    );
    let (status, text, _) = register("off.mar");
    assert_eq!(status, 200, "{text}");
    let (status, e) = management(&server, "PUT", "sign/1.0/drift/reference");
    assert_eq!(status, 400, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no drift monitoring"),
        "{e}"
    );
    assert_eq!(management(&server, "GET", "nope/1.0/drift").0, 404);
}
