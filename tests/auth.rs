//! Token authorization, on by default as in TorchServe 0.11+.

mod common;

use common::*;

fn keys(server: &Server) -> serde_json::Value {
    let text = std::fs::read_to_string(server.dir.path().join("key_file.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn call(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut res = req.call().unwrap();
    (
        res.status().as_u16(),
        res.body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("unreadable body: {e}")),
    )
}

#[test]
fn keys_guard_the_apis_and_rotate() {
    let server = Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: "disable_token_authorization=false",
            ..Setup::default()
        },
        |_| {},
    );
    let k = keys(&server);
    let (inference, management, api) = (
        k["inference"]["key"].as_str().unwrap().to_string(),
        k["management"]["key"].as_str().unwrap().to_string(),
        k["API"]["key"].as_str().unwrap().to_string(),
    );
    assert!(k["inference"]["expiration time"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let mode = std::fs::metadata(server.dir.path().join("key_file.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let (i, m) = (&server.inference, &server.management);
    let (code, body) = call(&format!("{i}/ping"), None);
    assert_eq!(code, 400);
    assert_eq!(
        assert_error(&body, 400, "InvalidKeyException"),
        "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
    );
    assert_eq!(call(&format!("{i}/ping"), Some(&management)).0, 400);
    assert_eq!(call(&format!("{i}/ping"), Some(&inference)).0, 200);
    assert_eq!(call(&format!("{m}/models"), Some(&inference)).0, 400);
    assert_eq!(call(&format!("{m}/models"), Some(&management)).0, 200);
    // Workflows: management key for /workflows, inference key for /wfpredict.
    assert_eq!(call(&format!("{m}/workflows"), Some(&inference)).0, 400);
    assert_eq!(call(&format!("{m}/workflows"), Some(&management)).0, 200);
    assert_eq!(call(&format!("{i}/wfpredict/wf"), None).0, 400);
    let (code, body) = call(&format!("{i}/wfpredict/wf"), Some(&inference));
    assert_eq!(
        (code, assert_error(&body, 404, "WorkflowNotFoundException")),
        (404, "Workflow not found: wf".to_string())
    );
    // Traffic splits are management calls like any other.
    let put_split = |key: &str| {
        let mut res = agent()
            .put(format!("{m}/models/sign/canary?version=1.0&weight=10"))
            .header("Authorization", &format!("Bearer {key}"))
            .send_empty()
            .unwrap();
        let status = res.status().as_u16();
        let body = res.body_mut().read_to_string().unwrap();
        let kind = serde_json::from_str::<serde_json::Value>(&body).unwrap()["type"].clone();
        (status, kind)
    };
    assert_eq!(put_split(&inference), (400, "InvalidKeyException".into()));
    // The key passes; 1.0 is the default version, so the split itself is refused.
    assert_eq!(put_split(&management), (400, "BadRequestException".into()));
    assert_eq!(call(&format!("{m}/models/sign/canary"), None).0, 400);
    // No key needed: API description, Kubernetes probes, metrics.
    assert_eq!(call(&format!("{i}/api-description"), None).0, 200);
    assert_eq!(call(&format!("{i}/v2/health/live"), None).0, 200);
    assert_eq!(call(&format!("{i}/v2/health/ready"), None).0, 200);
    assert_eq!(call(&format!("{}/metrics", server.metrics), None).0, 200);

    // Rotation needs the API key and a type; the old key stops working at once.
    let (code, body) = call(&format!("{m}/token?type=inference"), Some(&management));
    assert_eq!(code, 400);
    assert_eq!(
        assert_error(&body, 400, "InvalidKeyException"),
        "Token Authentication failed. Token either incorrect, expired, or not provided correctly"
    );
    assert_eq!(call(&format!("{m}/token?type=other"), Some(&api)).0, 400);
    let (code, body) = call(&format!("{m}/token?type=inference"), Some(&api));
    assert_eq!((code, body.as_str()), (200, "\n"));
    let rotated = keys(&server)["inference"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(rotated, inference);
    assert_eq!(call(&format!("{i}/ping"), Some(&inference)).0, 400);
    assert_eq!(call(&format!("{i}/ping"), Some(&rotated)).0, 200);
    let reference = Reference::load();
    let body = request_body(&reference.cases()[0], reference.features(), 1);
    let res = agent()
        .post(format!("{i}/predictions/sign"))
        .header("Authorization", &format!("Bearer {rotated}"))
        .header("Content-Type", "application/json")
        .send(body.as_str())
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn keys_expire() {
    // 0.002 minutes: 120 ms.
    let server = Server::start_with(
        Setup {
            config: "disable_token_authorization=false\ntoken_expiration_min=0.002",
            ..Setup::default()
        },
        |_| {},
    );
    let key = keys(&server)["inference"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    eventually("the key expired", || {
        call(&format!("{}/ping", server.inference), Some(&key)).0 == 400
    });
}
