//! Configuration snapshots: written on start, on changes and on shutdown, restored on start.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn snapshots(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("logs/config"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn wait_for(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent().get(url).call().is_err() {
        assert!(Instant::now() < deadline, "no answer from {url}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn snapshots_are_written_and_restored() {
    let mut server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "enable_model_api=true\nload_models=",
        ..Setup::default()
    });
    let dir = server.dir.path().to_path_buf();
    assert!(
        snapshots(&dir).iter().any(|n| n.ends_with("-startup.cfg")),
        "{:?}",
        snapshots(&dir)
    );
    let m = server.management.clone();
    let res = agent()
        .post(format!(
            "{m}/models?url=sign.mar&model_name=snap&batch_size=3&initial_workers=1"
        ))
        .send_empty()
        .unwrap();
    assert_eq!(res.status(), 200);
    let names = snapshots(&dir);
    let last = names
        .iter()
        .rfind(|n| n.ends_with("-snapshot.cfg"))
        .expect("a snapshot after registering");
    let text = std::fs::read_to_string(dir.join("logs/config").join(last)).unwrap();
    assert!(text.contains("model_snapshot"), "{text}");
    assert!(text.contains("snap") && text.contains("sign.mar"), "{text}");
    assert!(server.terminate().success());
    assert!(snapshots(&dir).iter().any(|n| n.ends_with("-shutdown.cfg")));

    // Started again with no config named: the newest snapshot is the configuration.
    let mut again = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--foreground")
        .current_dir(&dir)
        .env("TMPDIR", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&format!("{}/ping", server.inference));
    assert!(wait_models_ready(
        &server.inference,
        Duration::from_secs(60)
    ));
    let (status, body, _) = get(&format!("{m}/models/snap"));
    let _ = again.kill();
    let _ = again.wait();
    assert_eq!(status, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (d[0]["batchSize"].as_u64(), d[0]["modelUrl"].as_str()),
        (Some(3), Some("sign.mar"))
    );
}

#[test]
fn a_model_snapshot_in_the_config_file_replaces_load_models() {
    let snapshot = r#"{"name": "k", "modelCount": 1, "created": 1, "models": {"kserve_sign": {"1.0": {"defaultVersion": true, "marName": "sign.mar", "minWorkers": 1, "maxWorkers": 1, "batchSize": 2, "maxBatchDelay": 20}}}}"#;
    let config = format!("model_snapshot={snapshot}");
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: &config,
        ..Setup::default()
    });
    let (_, body, _) = get(&format!("{}/models", server.management));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["models"],
        serde_json::json!([{"modelName": "kserve_sign", "modelUrl": "sign.mar"}])
    );
    let (_, body, _) = get(&format!("{}/models/kserve_sign", server.management));
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (d[0]["batchSize"].as_u64(), d[0]["maxBatchDelay"].as_u64()),
        (Some(2), Some(20))
    );

    // An archive the snapshot names must exist.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    let missing = snapshot.replace("sign.mar", "gone.mar");
    std::fs::write(
        dir.path().join("config.properties"),
        format!(
            "model_store={}\nmodel_snapshot={missing}\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let (code, out) = run_to_exit(dir.path(), &["--foreground", "--ncs"], &[]);
    assert_ne!(code, 0);
    assert!(
        out.contains("gone.mar") && out.contains("model_snapshot"),
        "{out}"
    );
}
