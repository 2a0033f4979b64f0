//! `ferroserve`: starts, or stops, the model server, accepting TorchServe's command line.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Weak};
use std::time::Duration;

use clap::Parser;
use ferroserve::api::{self, AppState};
use ferroserve::backend::RuntimeOptions;
use ferroserve::config::{Cli, Settings};
use ferroserve::device::{self, DeviceRequest, LibtorchProbe};
use ferroserve::registry::{self, Registry};

/// The token key file, in the working directory as TorchServe writes it.
const KEY_FILE: &str = "key_file.json";

/// Where `--start` records the server's PID for `--stop` (TorchServe's location).
fn pid_file() -> PathBuf {
    std::env::temp_dir().join(".model_server.pid")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.stop || !cli.foreground {
        ferroserve::logging::init_console();
        return if cli.stop { stop() } else { detach() };
    }
    // Flushes the log files when the server returns.
    let _logs = ferroserve::logging::init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferroserve: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `--start` without `--foreground`: start the server in the background and return, as the
/// `torchserve` launcher does.
fn detach() -> ExitCode {
    if let Some(pid) = running_pid() {
        eprintln!(
            "ferroserve is already running (pid {pid}), please use ferroserve --stop to stop it."
        );
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ferroserve: cannot find own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--foreground".into());
    match std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferroserve: cannot start the server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn running_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

fn stop() -> ExitCode {
    match running_pid() {
        Some(pid) => {
            // SAFETY: plain kill(2) on the recorded server PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = std::fs::remove_file(pid_file());
            // As `torchserve --stop`: the key file in the current directory goes too.
            let _ = std::fs::remove_file(KEY_FILE);
            println!("ferroserve has stopped.");
            ExitCode::SUCCESS
        }
        None => {
            println!("ferroserve is not currently running.");
            ExitCode::FAILURE
        }
    }
}

/// Loads one start-up model; a failure is logged and the server starts without it.
fn load_at_startup(
    registry: &Registry,
    settings: &Settings,
    runtime: &RuntimeOptions,
    url: &str,
    reg: &registry::Registration,
) {
    let loaded = registry
        .load(settings, runtime, url, reg, true)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            let (n, v, d, w) = (
                m.name.clone(),
                m.version.clone(),
                m.device(),
                m.pool.limits().0,
            );
            registry
                .insert(m)
                .map(|_| (n, v, d, w))
                .map_err(|e| e.message)
        });
    match loaded {
        Ok((n, v, d, w)) => {
            tracing::info!(model = %n, version = %v, device = %d, workers = w, "model loaded")
        }
        Err(e) => tracing::error!(url = %url, "failed to load model: {e}"),
    }
}

/// Watches for workers stuck past their response timeout, for as long as the registry lives.
fn spawn_supervisor(registry: Weak<Registry>) {
    let spawned = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            while let Some(registry) = registry.upgrade() {
                registry.supervise();
                drop(registry);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the worker supervisor: {e}");
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let settings = Settings::load(cli).map_err(|e| e.to_string())?;
    let store = settings
        .model_store
        .clone()
        .ok_or("Missing mandatory parameter --model-store")?;
    if !store.is_dir() {
        return Err(format!(
            "--model-store directory not found: {}",
            store.display()
        ));
    }
    if let Some(wf) = settings.workflow_store.as_ref().filter(|d| !d.is_dir()) {
        return Err(format!(
            "--workflow-store directory not found: {}",
            wf.display()
        ));
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let request = DeviceRequest::from_env(&env).map_err(|e| e.to_string())?;
    let device =
        device::select(request, &mut LibtorchProbe::new(&env)).map_err(|e| e.to_string())?;
    tracing::info!(%device, ?request, "device selected");
    tch::set_num_threads(settings.intra_op_threads as i32);
    tch::set_num_interop_threads(1);
    if let Some(file) = &settings.config_file {
        tracing::info!("Config file: {}", file.display());
    }
    tracing::info!("Model Store: {}", store.display());
    if let Some(wf) = settings.workflow_store() {
        tracing::info!("Workflow Store: {}", wf.display());
    }
    for key in settings.extra.keys() {
        tracing::debug!(key, "configuration key not used by ferroserve");
    }

    let runtime = RuntimeOptions {
        device,
        intra_op_threads: settings.intra_op_threads,
        onnxruntime_library: settings.onnxruntime_library.clone(),
    };
    let metrics = Arc::new(ferroserve::metrics::Metrics::new(
        settings.metrics_mode,
        ferroserve::metrics::MetricsConfig::load(settings.metrics_config.as_deref()),
        settings.model_metrics_auto_detect,
    ));
    if !settings.disable_system_metrics {
        ferroserve::metrics::system::spawn(
            metrics.clone(),
            Duration::from_secs(settings.metric_time_interval.max(1)),
            matches!(device, device::Device::Cuda(_)),
        );
    }
    let registry = Registry::new(settings.initial_worker_port, metrics.clone());
    match &settings.model_snapshot {
        // A snapshot replaces load_models; every archive it names must be in the store.
        Some(snapshot) => {
            for (name, versions) in &snapshot.models {
                for (version, v) in versions {
                    if !store.join(&v.mar_name).exists() {
                        return Err(format!(
                            "invalid model_snapshot: {} (model {name} version {version}) is not in the model store",
                            v.mar_name
                        ));
                    }
                    let reg = registry::Registration {
                        model_name: Some(name.clone()),
                        runtime: v.runtime_type.clone(),
                        batch_size: Some(v.batch_size),
                        max_batch_delay_ms: Some(v.max_batch_delay),
                        initial_workers: Some(v.min_workers),
                        response_timeout_s: Some(v.response_timeout),
                        startup_timeout_s: Some(v.startup_timeout),
                        ..Default::default()
                    };
                    load_at_startup(&registry, &settings, &runtime, &v.mar_name, &reg);
                    if v.default_version {
                        let _ = registry.set_default(name, version);
                    }
                }
            }
        }
        None => {
            for (name, url) in registry::startup_entries(&settings) {
                let reg = registry::Registration {
                    model_name: name,
                    ..Default::default()
                };
                load_at_startup(&registry, &settings, &runtime, &url, &reg);
            }
        }
    }

    // Traffic splits: from the snapshot, else from `models=` (`"canary"` next to versions).
    let splits: Vec<(String, serde_json::Value)> = match &settings.model_snapshot {
        Some(snapshot) => snapshot
            .canaries
            .iter()
            .filter_map(|(m, s)| Some((m.clone(), serde_json::to_value(s).ok()?)))
            .collect(),
        None => settings
            .models
            .iter()
            .filter_map(|(m, v)| Some((m.clone(), v.get("canary")?.clone())))
            .collect(),
    };
    for (model, spec) in splits {
        let set = serde_json::from_value(spec)
            .map_err(|e| e.to_string())
            .and_then(|spec| registry.set_split(&model, spec).map_err(|e| e.message));
        if let Err(e) = set {
            tracing::error!(model = %model, "traffic split not set: {e}");
        }
    }

    std::fs::write(pid_file(), std::process::id().to_string()).ok();
    let registry = Arc::new(registry);
    spawn_supervisor(Arc::downgrade(&registry));
    let tokens = if settings.disable_token_authorization {
        None
    } else {
        let file = std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(KEY_FILE);
        let tokens = ferroserve::auth::Tokens::create(file, settings.token_expiration_min)
            .map_err(|e| format!("cannot write {KEY_FILE}: {e}"))?;
        tracing::info!(
            "Token authorization is on: keys are in {} (disable with --disable-token-auth)",
            tokens.file().display()
        );
        Some(tokens)
    };
    let snapshots = settings
        .snapshot_dir
        .clone()
        .map(|dir| ferroserve::snapshot::Snapshots {
            dir,
            properties: settings.properties.clone(),
        });
    let state = AppState {
        metrics,
        settings: Arc::new(settings),
        registry,
        runtime,
        tokens,
        snapshots,
        workflows: Default::default(),
    };
    let result = actix_web::rt::System::new()
        .block_on(api::serve(state))
        .map_err(|e| e.to_string());
    if running_pid() == Some(std::process::id() as i32) {
        let _ = std::fs::remove_file(pid_file());
    }
    result
}
