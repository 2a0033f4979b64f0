//! Fault injection with real processes: a worker that answers garbage on its socket, an
//! unwritable log and snapshot directory, a full disk during extraction and download, a store
//! file deleted under a running model, a client whose body stalls, malformed HTTP. In each
//! case no request hangs, other models keep answering, and the logs say what happened.
//! (Worker SIGKILLs during load and inference are in tests/python.rs; hanging and failing
//! native models in tests/batching.rs.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn sign_ok(server: &Server, model: &str) -> u16 {
    let reference = Reference::load();
    let body = request_body(&reference.cases()[0], reference.features(), 1);
    post(
        &format!("{}/predictions/{model}", server.inference),
        "application/json",
        &body,
    )
    .0
}

/// A worker process that loads fine, then answers an inference with garbage bytes.
const GARBAGE_WORKER: &str = r#"
import socket, struct, sys
path = sys.argv[sys.argv.index("--sock-name") + 1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(1)
print("Torch worker started.", flush=True)
c, _ = s.accept()
c.recv(1 << 20)
msg = b"loaded"
c.sendall(struct.pack(">i", 200) + struct.pack(">i", len(msg)) + msg + struct.pack(">i", -1))
c.recv(1 << 20)
print("sending garbage", flush=True)
c.sendall(b"\x7f\xff\xff\xff" * 64)
c.recv(1 << 20)
"#;

#[test]
fn a_worker_writing_garbage_fails_its_requests_fast_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("garbage_worker.py");
    std::fs::write(&script, GARBAGE_WORKER).unwrap();
    // The interpreter the server is given: the real one, except that TorchServe's worker
    // entry point runs the garbage worker instead.
    let wrapper = dir.path().join("python");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in */model_service_worker.py) shift; exec {py} {script} \"$@\";; esac\nexec {py} \"$@\"\n",
            py = test_python(),
            script = script.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = format!(
        "python={}\nmodels={{\"bad\": {{\"1.0\": {{\"minWorkers\": 1, \"maxWorkers\": 1}}}}}}",
        wrapper.display()
    );
    let server = Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: &config,
            ..Setup::default()
        },
        |store| {
            let manifest = r#"{"runtime": "python", "model": {"modelName": "bad", "handler": "h:handle", "modelVersion": "1.0"}}"#;
            write_mar(
                &store.join("bad.mar"),
                manifest,
                &[("h.py", b"def handle(d, c):\n    return d\n")],
            );
        },
    );
    let m = server.management.clone();
    eventually("the garbage worker never became ready", || {
        get(&format!("{m}/models/bad")).1.contains("\"READY\"")
    });
    // Answered, not hung: the client's one-minute deadline would fail the call.
    let (status, body, _) = post(
        &format!("{}/predictions/bad", server.inference),
        "text/plain",
        "x",
    );
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        assert_error(&body, 500, "InternalServerException"),
        "Worker died."
    );
    assert_eq!(sign_ok(&server, "sign"), 200, "other models keep answering");
    eventually("no restart recorded", || {
        let (_, d, _) = get(&format!("{m}/models/bad"));
        let d: serde_json::Value = serde_json::from_str(&d).unwrap();
        d[0]["stats"]["workerRestarts"].as_u64().unwrap_or(0) >= 1
    });
    eventually("the log does not say what happened", || {
        server
            .log_text()
            .contains("Python worker connection failed")
    });
}

#[test]
fn an_unwritable_log_directory_does_not_stop_the_server() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        env: &[
            ("LOG_LOCATION", "/dev/null/logs"),
            ("METRICS_LOCATION", "/dev/null/metrics"),
        ],
        ..Setup::default()
    });
    assert_eq!(sign_ok(&server, "sign"), 200);
    eventually("the log does not name the problem", || {
        let log = server.log_text();
        log.contains("cannot write /dev/null/logs/access_log.log")
            && log.contains("cannot write the startup snapshot")
    });
}

#[test]
fn a_store_file_deleted_under_a_running_model() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "enable_model_api=true",
        ..Setup::default()
    });
    std::fs::remove_file(Server::model_store(server.dir.path()).join("sign.mar")).unwrap();
    // The model runs from its extracted copy: it keeps answering and can be managed.
    assert_eq!(sign_ok(&server, "sign"), 200);
    let m = &server.management;
    assert_eq!(get(&format!("{m}/models/sign")).0, 200);
    let res = agent().delete(format!("{m}/models/sign")).call().unwrap();
    assert_eq!(res.status(), 200);
    // Registering it again names the missing file.
    let mut res = agent()
        .post(format!("{m}/models?url=sign.mar"))
        .send_empty()
        .unwrap();
    assert_eq!(res.status(), 404);
    let body = res.body_mut().read_to_string().unwrap();
    assert_error(&body, 404, "ModelNotFoundException");
}

#[test]
fn stalled_bodies_and_malformed_http_are_answered_and_others_keep_serving() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "body_idle_timeout_sec=1",
        ..Setup::default()
    });
    let addr = server.inference.trim_start_matches("http://").to_string();

    // A body announced as 1000 bytes that stops after 10.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(
        b"POST /predictions/sign HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"landmar",
    )
    .unwrap();
    // Meanwhile another client is served.
    assert_eq!(sign_ok(&server, "sign"), 200);
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reply = String::new();
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("RequestTimeoutException"), "{reply}");

    // Not HTTP at all.
    let mut junk = TcpStream::connect(&addr).unwrap();
    junk.write_all(b"\x16\x03\x01 definitely not http\r\n\r\n")
        .unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = junk.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert_eq!(sign_ok(&server, "sign"), 200);
}

/// Connections past `max_connections` are answered with a clear 503 and closed; once others
/// go, new ones are served again.
#[test]
fn connections_past_the_limit_get_a_clear_error() {
    let server = Server::start(Setup {
        archives: &["sign.mar"],
        config: "max_connections=5",
        ..Setup::default()
    });
    let addr = server.inference.trim_start_matches("http://").to_string();
    // Each held connection has had an answer, so the server has counted it.
    let held: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&seen).contains("Healthy") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            c
        })
        .collect();
    let mut extra = TcpStream::connect(&addr).unwrap();
    extra
        .write_all(b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = String::new();
    let _ = extra.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.contains("Too many connections (max_connections is 5)"),
        "{reply}"
    );
    drop(held);
    eventually("served again once connections closed", || {
        get(&format!("{}/ping", server.inference)).0 == 200
    });
}

/// A tmpfs of a fixed size mounted at a directory for the test's lifetime (the test suite
/// runs as root: it installs its Debian packages itself).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Every entry, recursively (what a failed operation may have left behind).
    fn entries(&self) -> Vec<String> {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
                out.push(e.path().display().to_string());
                if e.path().is_dir() {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out.sort();
        out
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_during_extraction_and_download() {
    let scratch = tempfile::tempdir().unwrap();
    // Extraction goes to TMPDIR: 1 MiB holds the small probe model, not the sign model.
    let tmp = Tmpfs::mount(&scratch.path().join("tmp"), "1m");
    let sign = std::fs::read(std::path::Path::new(REPO).join("model-store/sign.mar")).unwrap();
    let mut store_fs = None;
    let server = Server::start_with(
        Setup {
            archives: &[],
            config: "enable_model_api=true\nload_models=probe.mar",
            env: &[("TMPDIR", tmp.0.to_str().unwrap())],
        },
        |store| {
            // The store is a 4 MiB disk holding both archives and a filler that leaves less
            // room than a download of the sign model needs.
            let fs = Tmpfs::mount(store, "4m");
            std::fs::copy(
                std::path::Path::new(REPO).join("tests/fixtures/probe.mar"),
                store.join("probe.mar"),
            )
            .unwrap();
            std::fs::write(store.join("sign.mar"), &sign).unwrap();
            std::fs::write(store.join("filler"), vec![1u8; 2_300_000]).unwrap();
            store_fs = Some(fs);
        },
    );
    let store_fs = store_fs.unwrap();
    let m = &server.management;
    let probe_ok = || {
        post(
            &format!("{}/predictions/probe", server.inference),
            "application/json",
            r#"{"landmarks": [[0, 0, 0, 0]]}"#,
        )
        .0 == 200
    };
    assert!(probe_ok(), "{}", server.log_text());
    let tmp_before = tmp.entries();
    let store_before = store_fs.entries();

    // Extraction runs out of space: a clear error, nothing left behind, others serve on.
    let (code, body, _) = post(&format!("{m}/models?url=sign.mar"), "text/plain", "");
    assert_eq!(code, 400, "{body}");
    let message = assert_error(&body, 400, "InvalidModelException");
    assert!(message.contains("No space left on device"), "{message}");
    assert_eq!(tmp.entries(), tmp_before);
    assert!(probe_ok());

    // A download runs out of space in the store: refused, no partial file, reason logged.
    let port = serve_bytes(sign.clone());
    let url = format!("http://127.0.0.1:{port}/sign2.mar");
    let (code, body, _) = post(
        &format!("{m}/models?url={url}&model_name=sign2"),
        "text/plain",
        "",
    );
    assert_eq!(code, 400, "{body}");
    assert_error(&body, 400, "DownloadArchiveException");
    assert_eq!(store_fs.entries(), store_before);
    assert!(probe_ok());
    eventually("the log does not name the full disk", || {
        server.log_text().contains("No space left on device")
    });

    // With room again, the same calls succeed and the models answer.
    tmp.resize("16m");
    std::fs::remove_file(store_fs.0.join("filler")).unwrap();
    let (code, body, _) = post(&format!("{m}/models?url=sign.mar"), "text/plain", "");
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = post(
        &format!("{m}/models?url={url}&model_name=sign2"),
        "text/plain",
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(sign_ok(&server, "sign"), 200);
    assert_eq!(sign_ok(&server, "sign2"), 200);
    assert!(probe_ok());
    // Lazily unmounted first, so the server's directory can go.
    drop(store_fs);
    drop(tmp);
    drop(server);
}
