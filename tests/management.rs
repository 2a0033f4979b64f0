//! The management API's write calls: register (query string, JSON body, URLs), versions and
//! set-default, unregister, with TorchServe's status codes and bodies.

mod common;

use std::path::Path;

use common::*;

fn request(method: &str, url: &str, json: Option<&str>) -> (u16, String) {
    let agent = agent();
    let res = match (method, json) {
        ("POST", Some(body)) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body),
        ("POST", None) => agent.post(url).send_empty(),
        ("PUT", _) => agent.put(url).send_empty(),
        ("DELETE", _) => agent.delete(url).call(),
        _ => agent.get(url).call(),
    };
    let mut res = res.unwrap();
    (
        res.status().as_u16(),
        res.body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("unreadable body: {e}")),
    )
}

fn status_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn register_versions_set_default_and_unregister() {
    let server = Server::start_with(
        Setup {
            config: "enable_model_api=true\nload_models=",
            ..Setup::default()
        },
        |store| {
            std::fs::copy(
                Path::new(REPO).join("model-store/sign.mar"),
                store.join("sign.mar"),
            )
            .unwrap();
            // The same model as version 2.0, unpacked in a folder.
            let dir = store.join("sign_v2");
            let file = std::fs::File::open(Path::new(REPO).join("model-store/sign.mar")).unwrap();
            zip::ZipArchive::new(file).unwrap().extract(&dir).unwrap();
            let manifest = dir.join("MAR-INF/MANIFEST.json");
            let text = std::fs::read_to_string(&manifest)
                .unwrap()
                .replace("\"1.0\"", "\"2.0\"");
            std::fs::write(manifest, text).unwrap();
            // Its own labels, so an answer says which version gave it.
            let labels = dir.join("index_to_name.json");
            let mut names: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(&labels).unwrap()).unwrap();
            for name in names.values_mut() {
                *name = format!("v2 {}", name.as_str().unwrap()).into();
            }
            std::fs::write(labels, serde_json::Value::Object(names).to_string()).unwrap();
            // A copy without worker counts in model-config.yaml (those would win over the API's).
            let idle = store.join("sign_idle");
            let file = std::fs::File::open(Path::new(REPO).join("model-store/sign.mar")).unwrap();
            zip::ZipArchive::new(file).unwrap().extract(&idle).unwrap();
            let yaml = idle.join("model-config.yaml");
            let text = std::fs::read_to_string(&yaml)
                .unwrap()
                .replace("minWorkers: 1\nmaxWorkers: 1\n", "");
            std::fs::write(yaml, text).unwrap();
        },
    );
    let m = &server.management;
    let reference = Reference::load();
    let sign_body = request_body(&reference.cases()[0], reference.features(), 1);
    let best = reference.label(argmax(&reference.logits(&reference.cases()[0])));
    // The label a path answers with (version 2.0's labels start with "v2 ").
    let label_of = |path: &str| {
        let (code, body, _) = post(
            &format!("{}/predictions/{path}", server.inference),
            "application/json",
            &sign_body,
        );
        assert_eq!(code, 200, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["predictions"][0]["label"].as_str().unwrap().to_string()
    };

    let (code, body) = request("POST", &format!("{m}/models"), None);
    assert_eq!(
        (
            code,
            assert_error(&body, 400, "BadRequestException").as_str()
        ),
        (400, "Parameter url is required.")
    );
    let (code, body) = request("POST", &format!("{m}/models?url=../sign.mar"), None);
    assert_eq!(code, 404);
    assert_eq!(
        assert_error(&body, 404, "ModelNotFoundException"),
        "Relative path is not allowed in url: ../sign.mar"
    );
    let (code, body) = request("POST", &format!("{m}/models?url=nope.mar"), None);
    assert_eq!(code, 404);
    assert_eq!(
        assert_error(&body, 404, "ModelNotFoundException"),
        "Model not found at: nope.mar"
    );
    let (code, body) = request(
        "POST",
        &format!("{m}/models?url=sign.mar&runtime=PYTHON"),
        None,
    );
    assert_eq!(
        (
            code,
            assert_error(&body, 400, "BadRequestException").as_str()
        ),
        (400, "Invalid RuntimeType value: PYTHON")
    );

    let (code, body) = request(
        "POST",
        &format!("{m}/models?url=sign.mar&model_name=s2&initial_workers=1"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        status_of(&body),
        "Model \"s2\" Version: 1.0 registered with 1 initial workers"
    );
    assert_eq!(label_of("s2"), best);
    let (code, body) = request(
        "POST",
        &format!("{m}/models?url=sign.mar&model_name=s2&initial_workers=1"),
        None,
    );
    assert_eq!(code, 409);
    assert_eq!(
        assert_error(&body, 409, "ConflictStatusException"),
        "Model version 1.0 is already registered for model s2"
    );

    // A second version through a JSON body; the first stays the default.
    let (code, body) = request(
        "POST",
        &format!("{m}/models"),
        Some(r#"{"url": "sign_v2", "model_name": "s2", "initial_workers": 1, "batch_size": 2}"#),
    );
    assert_eq!(code, 200, "{body}");
    let (_, body) = request("GET", &format!("{m}/models/s2/all"), None);
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, body) = request("GET", &format!("{m}/models/s2/2.0"), None);
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            d[0]["batchSize"].as_u64(),
            d[0]["loadedAtStartup"].as_bool()
        ),
        (Some(2), Some(false))
    );
    let v2 = format!("v2 {best}");
    assert_eq!(
        (label_of("s2/2.0"), label_of("s2/1.0"), label_of("s2")),
        (v2.clone(), best.clone(), best.clone())
    );
    let (_, body) = request("GET", &format!("{m}/models"), None);
    assert!(body.contains("\"modelUrl\": \"sign.mar\""), "{body}");

    let (code, body) = request("PUT", &format!("{m}/models/s2/2.0/set-default"), None);
    assert_eq!(code, 200);
    assert_eq!(
        status_of(&body),
        "Default version successfully updated for model \"s2\" to \"2.0\""
    );
    let (_, body) = request("GET", &format!("{m}/models"), None);
    assert!(body.contains("\"modelUrl\": \"sign_v2\""), "{body}");
    assert_eq!(
        (label_of("s2"), label_of("s2/1.0")),
        (v2.clone(), best.clone())
    );
    let (code, body) = request("PUT", &format!("{m}/models/s2/9.9/set-default"), None);
    assert_eq!(code, 404);
    assert_eq!(
        assert_error(&body, 404, "ModelVersionNotFoundException"),
        "Model version 9.9 does not exist for model s2"
    );

    let (code, body) = request("DELETE", &format!("{m}/models/s2"), None);
    assert_eq!(code, 403);
    assert_eq!(
        assert_error(&body, 403, "InvalidModelVersionException"),
        "Cannot remove default version for model s2"
    );
    let (code, body) = request("DELETE", &format!("{m}/models/s2/1.0"), None);
    assert_eq!(
        (code, status_of(&body)),
        (200, "Model \"s2\" unregistered".to_string())
    );
    assert_eq!(label_of("s2"), v2);
    let (code, _) = request("DELETE", &format!("{m}/models/s2/1.0"), None);
    assert_eq!(code, 404);
    let (code, _) = request("DELETE", &format!("{m}/models/s2"), None);
    assert_eq!(code, 200);
    let (code, body) = request("GET", &format!("{m}/models/s2"), None);
    assert_eq!(code, 404);
    assert_error(&body, 404, "ModelNotFoundException");

    // No workers: registered, and inference answers TorchServe's 503.
    let (code, body) = request(
        "POST",
        &format!("{m}/models?url=sign_idle&model_name=idle&initial_workers=0"),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        status_of(&body),
        "Model \"idle\" Version: 1.0 registered with 0 initial workers. Use scale workers API to add workers for the model."
    );
    let (code, body, _) = post(
        &format!("{}/predictions/idle", server.inference),
        "application/json",
        &sign_body,
    );
    assert_eq!(code, 503);
    assert!(assert_error(&body, 503, "ServiceUnavailableException")
        .starts_with("Model \"idle\" has no worker"));
    let (_, body, _) = post(
        &format!("{}/predictions/idle/1.0", server.inference),
        "application/json",
        &sign_body,
    );
    assert!(
        body.contains("Model \\\"idle\\\" Version 1.0\\\" has no worker"),
        "{body}"
    );
    let (code, _) = request(
        "POST",
        &format!("{m}/models?url=sign.mar&model_name=later&synchronous=false&initial_workers=1"),
        None,
    );
    assert_eq!(code, 202);
}

#[test]
fn register_from_urls() {
    let mar = std::fs::read(Path::new(REPO).join("model-store/sign.mar")).unwrap();
    let port = serve_bytes(mar);
    let config = format!(
        "enable_model_api=true\nload_models=\nallowed_urls=http://127\\\\.0\\\\.0\\\\.1:{port}/allowed/.*"
    );
    let server = Server::start(Setup {
        config: &config,
        ..Setup::default()
    });
    let m = &server.management;
    let store = Server::model_store(server.dir.path());

    let other = format!("http://127.0.0.1:{port}/other/remote.mar");
    let (code, body) = request("POST", &format!("{m}/models?url={other}"), None);
    assert_eq!(code, 404);
    assert_eq!(
        assert_error(&body, 404, "ModelNotFoundException"),
        format!("Given URL {other} does not match any allowed URL(s)")
    );

    let url = format!("http://127.0.0.1:{port}/allowed/remote.mar");
    let (code, body) = request(
        "POST",
        &format!("{m}/models?url={url}&model_name=remote&initial_workers=1"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        store.join("remote.mar").exists(),
        "downloaded into the store"
    );
    let (_, body) = request("GET", &format!("{m}/models/remote"), None);
    assert!(body.contains(&format!("\"modelUrl\": \"{url}\"")), "{body}");
    let reference = Reference::load();
    let sign_body = request_body(&reference.cases()[0], reference.features(), 1);
    assert_eq!(
        post(
            &format!("{}/predictions/remote", server.inference),
            "application/json",
            &sign_body
        )
        .0,
        200
    );

    // The store file now exists: the same URL is refused without a download.
    let (code, body) = request(
        "POST",
        &format!("{m}/models?url={url}&model_name=again"),
        None,
    );
    assert_eq!(code, 500);
    assert_eq!(
        assert_error(&body, 500, "InternalServerException"),
        "Model file already exists remote.mar"
    );

    let (code, _) = request("DELETE", &format!("{m}/models/remote"), None);
    assert_eq!(code, 200);
    assert!(
        !store.join("remote.mar").exists(),
        "a downloaded archive is deleted with its model"
    );
}
