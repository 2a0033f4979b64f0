//! Configuration like TorchServe's: `config.properties`, `TS_*` environment overrides (only
//! with `enable_envvars_config=true`) and the launcher's flags.
//! Precedence: command line > environment > file > defaults.

pub mod cli;
pub mod properties;
pub mod snapshot;
pub mod unused;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
pub use cli::Cli;

/// Keys TorchServe never takes from the environment.
const NOT_FROM_ENV: &[&str] = &["models", "model_snapshot", "enable_envvars_config"];

/// Keys this server reads; everything else is kept in [`Settings::extra`] and ignored.
const KNOWN_KEYS: &[&str] = &[
    "inference_address",
    "management_address",
    "metrics_address",
    "enable_metrics_api",
    "model_store",
    "workflow_store",
    "load_models",
    "models",
    "default_workers_per_model",
    "job_queue_size",
    "default_response_timeout",
    "default_startup_timeout",
    "max_request_size",
    "max_response_size",
    "number_of_gpu",
    "initial_worker_port",
    "disable_token_authorization",
    "enable_model_api",
    "enable_envvars_config",
    "intra_op_threads",
    "onnxruntime_library",
    "max_archive_size",
    "python",
    "decode_input_request",
    "service_envelope",
    "limit_max_image_pixels",
    "drift_monitoring",
    "default_service_handler",
    "install_py_dep_per_model",
    "allowed_urls",
    "use_env_allowed_urls",
    "token_expiration_min",
    "model_snapshot",
    "certificate_file",
    "private_key_file",
    "keystore",
    "metrics_mode",
    "metrics_config",
    "model_metrics_auto_detect",
    "disable_system_metrics",
    "metric_time_interval",
    "canary_routing_header",
    "cors_allowed_origin",
    "cors_allowed_methods",
    "cors_allowed_headers",
    "ipex_enable",
    "grpc_inference_max_connection_age_ms",
    "grpc_management_max_connection_age_ms",
    "grpc_inference_max_connection_age_grace_ms",
    "grpc_management_max_connection_age_grace_ms",
    "ipex_gpu_enable",
    "ts_header_key_sequence_id",
    "ts_header_key_sequence_start",
    "ts_header_key_sequence_end",
    "grpc_inference_address",
    "grpc_management_address",
    "grpc_inference_port",
    "grpc_management_port",
    "ts_open_inference_protocol",
    "enable_grpc_ssl",
    "blacklist_env_vars",
    "body_idle_timeout_sec",
    "max_connections",
    "number_of_netty_threads",
];

/// The request headers of a stateful model's sequence (`ts_header_key_sequence_*`): its id,
/// and the flags of its first and last request.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceHeaders {
    pub id: String,
    pub start: String,
    pub end: String,
}

impl Default for SequenceHeaders {
    fn default() -> Self {
        Self {
            id: "ts_request_sequence_id".into(),
            start: "ts_request_sequence_start".into(),
            end: "ts_request_sequence_end".into(),
        }
    }
}

/// A listener address (`http[s]://host[:port]` or `unix:/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Http { host: String, port: u16 },
    Https { host: String, port: u16 },
    Unix(PathBuf),
}

impl Address {
    fn parse(key: &str, raw: &str, default_port: u16) -> Result<Self, ConfigError> {
        let lower = raw.to_ascii_lowercase();
        if let Some(path) = lower.strip_prefix("unix:") {
            return Ok(Address::Unix(PathBuf::from(&raw[raw.len() - path.len()..])));
        }
        let (https, rest) = if let Some(r) = lower.strip_prefix("https://") {
            (true, &raw[raw.len() - r.len()..])
        } else if let Some(r) = lower.strip_prefix("http://") {
            (false, &raw[raw.len() - r.len()..])
        } else {
            return Err(ConfigError::invalid(
                key,
                raw,
                "expected http://HOST[:PORT], https://HOST[:PORT] or unix:/PATH",
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
                let port: u32 = p
                    .parse()
                    .map_err(|_| ConfigError::invalid(key, raw, "port is not a number"))?;
                if port == 0 || port >= 65535 {
                    return Err(ConfigError::invalid(key, raw, "port out of range"));
                }
                (h.to_string(), port as u16)
            }
            _ => (rest.to_string(), default_port),
        };
        if host.is_empty() {
            return Err(ConfigError::invalid(key, raw, "missing host"));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(if https {
            Address::Https { host, port }
        } else {
            Address::Http { host, port }
        })
    }
}

/// The longest token lifetime accepted (about 1,900 years).
const MAX_TOKEN_MINUTES: f64 = 1e9;

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub inference_address: Address,
    pub management_address: Address,
    pub metrics_address: Address,
    pub enable_metrics_api: bool,
    pub model_store: Option<PathBuf>,
    /// Where workflow archives are registered from; the model store when unset.
    pub workflow_store: Option<PathBuf>,
    /// Raw `load_models` entries (`all`, or `[name=]url`).
    pub load_models: Vec<String>,
    /// `models=` JSON: model name → version → parameters.
    pub models: serde_json::Map<String, serde_json::Value>,
    /// 0 means "one per GPU, else one per CPU core", as in TorchServe.
    pub default_workers_per_model: usize,
    pub job_queue_size: usize,
    pub default_response_timeout: u64,
    pub default_startup_timeout: u64,
    pub max_request_size: usize,
    pub max_response_size: usize,
    pub number_of_gpu: Option<usize>,
    pub initial_worker_port: u32,
    pub disable_token_authorization: bool,
    pub enable_model_api: bool,
    /// Intra-op threads of each native worker (libtorch and ONNX Runtime).
    pub intra_op_threads: usize,
    /// Where ONNX Runtime's shared library is (`ORT_DYLIB_PATH` otherwise).
    pub onnxruntime_library: Option<PathBuf>,
    /// Cap on the total extracted size of one archive.
    pub max_archive_size: u64,
    /// The interpreter that runs TorchServe's Python worker (`python`, `--python`).
    pub python: PathBuf,
    pub decode_input_request: bool,
    pub service_envelope: Option<String>,
    pub limit_max_image_pixels: bool,
    /// Drift monitoring of native versions (on unless `drift_monitoring=false`).
    pub drift_monitoring: bool,
    pub default_service_handler: Option<String>,
    /// Minutes an inference or management key stays valid (fractions allowed).
    pub token_expiration_min: f64,
    /// Regexes a registration URL must match (whole string, case-insensitive).
    pub allowed_urls: Vec<String>,
    /// pip-install an archive's `requirementsFile` (into a private directory of the model).
    pub install_py_dep_per_model: bool,
    /// What the metrics listener exposes (`metrics_mode`: log, prometheus, legacy).
    pub metrics_mode: crate::metrics::Mode,
    /// `metrics_config`: a metrics.yaml replacing the default set.
    pub metrics_config: Option<PathBuf>,
    /// Expose backend metrics metrics.yaml does not list (`model_metrics_auto_detect`).
    pub model_metrics_auto_detect: bool,
    pub disable_system_metrics: bool,
    /// Seconds between system metric samples (`metric_time_interval`).
    pub metric_time_interval: u64,
    /// gRPC listeners (TorchServe's `grpc_*_address` hosts and `grpc_*_port` ports).
    pub grpc_inference_address: String,
    pub grpc_inference_port: u16,
    pub grpc_management_address: String,
    pub grpc_management_port: u16,
    /// Open connections a listener serves; requests on connections past it get a 503
    /// (`max_connections`).
    pub max_connections: usize,
    /// Threads serving the inference listener's connections (`number_of_netty_threads`;
    /// 0 or absent: one per CPU core, what TorchServe's documentation gives as the default;
    /// its Netty takes twice that, for the management listener too).
    pub http_threads: usize,
    /// Seconds a request body may stall before the request is answered 408
    /// (`body_idle_timeout_sec`).
    pub body_idle_timeout_sec: u64,
    /// Environment variables Python workers never see (`blacklist_env_vars`, a regex matched
    /// against whole names).
    pub blacklist_env_vars: Option<regex::Regex>,
    /// KServe's Open Inference Protocol gRPC service on the gRPC inference listener
    /// (`ts_open_inference_protocol=true`, or `TS_OPEN_INFERENCE_PROTOCOL=oip`).
    pub open_inference_protocol: bool,
    /// The request header whose value pins a client to one version of a split.
    pub canary_routing_header: String,
    /// `cors_allowed_origin`, `cors_allowed_methods`, `cors_allowed_headers`: the
    /// `Access-Control-Allow-*` headers every response carries when set.
    pub cors: Vec<(&'static str, String)>,
    /// `ipex_enable` / `ipex_gpu_enable`, handed to Python workers as `TS_IPEX_ENABLE` /
    /// `TS_IPEX_GPU_ENABLE` (TorchServe's handlers then use Intel's extension if installed).
    pub ipex_enable: bool,
    pub ipex_gpu_enable: bool,
    /// `grpc_{inference,management}_max_connection_age[_grace]_ms`: (age, grace) of the
    /// inference and the management listener's connections; none: forever.
    pub grpc_connection_age: [(Option<std::time::Duration>, Option<std::time::Duration>); 2],
    /// TorchServe's keys set here that have no effect in ferroserve, with the reason (logged
    /// at start-up).
    pub no_effect: Vec<(String, &'static str)>,
    /// The request headers of a stateful model's sequences (`ts_header_key_sequence_*`).
    pub sequence_headers: SequenceHeaders,
    /// PEM certificate chain and private key for `https://` listeners.
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    /// A Java keystore (`keystore`): not supported; named so start-up can say so.
    pub keystore: Option<String>,
    /// `model_snapshot`: models to restore instead of `load_models`.
    pub model_snapshot: Option<snapshot::ModelSnapshot>,
    /// Where snapshots go; `None` with `--ncs`.
    pub snapshot_dir: Option<PathBuf>,
    /// The configuration file's properties as read (written back into snapshots).
    pub properties: BTreeMap<String, String>,
    /// The configuration file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Keys this server does not use; kept so nothing is lost.
    pub extra: BTreeMap<String, String>,
}

impl Settings {
    /// Resolves the configuration from the process environment and command line.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::resolve(cli, &env, Path::new("config.properties"))
    }

    /// Resolution with an explicit environment (testable). `local_default` is the file read
    /// when neither `TS_CONFIG_FILE` nor `--ts-config` names one.
    pub fn resolve(
        cli: &Cli,
        env: &HashMap<String, String>,
        local_default: &Path,
    ) -> Result<Self, ConfigError> {
        let named = env
            .get("TS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| cli.ts_config.clone());
        let config_file = match named {
            Some(p) if !p.is_file() => {
                return Err(ConfigError::File {
                    path: p.display().to_string(),
                    reason: "file not found".into(),
                })
            }
            Some(p) => Some(p),
            // Unless snapshots are off (--ncs), the newest snapshot is the configuration and
            // ./config.properties is not read, as in TorchServe.
            None => {
                let newest = (!cli.no_config_snapshots)
                    .then(|| {
                        snapshot::newest(&snapshot::directory(
                            env.get("LOG_LOCATION").map(String::as_str),
                        ))
                    })
                    .flatten();
                newest.or_else(|| local_default.is_file().then(|| local_default.to_path_buf()))
            }
        };
        let file = match &config_file {
            Some(p) => properties::read_file(p)?,
            None => HashMap::new(),
        };

        let mut builder =
            config::Config::builder().add_source(properties::PropertiesSource(file.clone()));
        if file.get("enable_envvars_config").map(|v| v.trim()) == Some("true") {
            let env_urls = file.get("use_env_allowed_urls").map(|v| v.trim()) == Some("true");
            builder = builder.add_source(
                config::Environment::with_prefix("TS").source(Some(env_overrides(env, env_urls))),
            );
        }
        builder = apply_cli(builder, cli).map_err(|e| ConfigError::Other(e.to_string()))?;
        let merged = builder
            .build()
            .map_err(|e| ConfigError::Other(e.to_string()))?;
        let get = |key: &str| merged.get_string(key).ok();

        let extra = file
            .iter()
            .filter(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();

        let models = match get("models") {
            None => serde_json::Map::new(),
            Some(raw) if raw.trim().is_empty() => serde_json::Map::new(),
            Some(raw) => match serde_json::from_str::<serde_json::Value>(&raw) {
                Ok(serde_json::Value::Object(m)) => m,
                Ok(_) => return Err(ConfigError::invalid("models", &raw, "not a JSON object")),
                Err(e) => return Err(ConfigError::invalid("models", &raw, e.to_string())),
            },
        };

        let address = |key: &str, default: &str, port: u16| {
            Address::parse(key, &get(key).unwrap_or_else(|| default.to_string()), port)
        };

        // Refused rather than served in clear text behind the user's back.
        if parse_bool(&get, "enable_grpc_ssl", false)? {
            return Err(ConfigError::invalid(
                "enable_grpc_ssl",
                "true",
                "TLS on the gRPC listeners is not supported; terminate TLS in front of them",
            ));
        }
        Ok(Settings {
            inference_address: address("inference_address", "http://127.0.0.1:8080", 80)?,
            management_address: address("management_address", "http://127.0.0.1:8081", 8081)?,
            metrics_address: address("metrics_address", "http://127.0.0.1:8082", 8082)?,
            enable_metrics_api: parse_bool(&get, "enable_metrics_api", true)?,
            model_store: get("model_store")
                .filter(|s| !s.trim().is_empty())
                .map(PathBuf::from),
            workflow_store: get("workflow_store")
                .filter(|s| !s.trim().is_empty())
                .map(PathBuf::from),
            load_models: get("load_models")
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            models,
            default_workers_per_model: parse_num(&get, "default_workers_per_model", 0)?,
            job_queue_size: parse_num(&get, "job_queue_size", 100)?,
            default_response_timeout: parse_num(&get, "default_response_timeout", 120)?,
            default_startup_timeout: parse_num(&get, "default_startup_timeout", 120)?,
            max_request_size: parse_num(&get, "max_request_size", 6_553_500)?,
            max_response_size: parse_num(&get, "max_response_size", 6_553_500)?,
            number_of_gpu: get("number_of_gpu")
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| ConfigError::invalid("number_of_gpu", &v, "not a number"))
                })
                .transpose()?,
            initial_worker_port: parse_num(&get, "initial_worker_port", 9000)?,
            disable_token_authorization: parse_bool(&get, "disable_token_authorization", false)?,
            enable_model_api: parse_bool(&get, "enable_model_api", false)?,
            intra_op_threads: parse_num(&get, "intra_op_threads", 1)?.max(1),
            onnxruntime_library: get("onnxruntime_library")
                .or_else(|| env.get("ORT_DYLIB_PATH").cloned())
                .map(PathBuf::from),
            max_archive_size: parse_num(&get, "max_archive_size", 4 << 30)?,
            python: get("python")
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("python3")),
            decode_input_request: parse_bool(&get, "decode_input_request", true)?,
            service_envelope: get("service_envelope").filter(|e| !e.trim().is_empty()),
            limit_max_image_pixels: parse_bool(&get, "limit_max_image_pixels", true)?,
            drift_monitoring: parse_bool(&get, "drift_monitoring", true)?,
            install_py_dep_per_model: parse_bool(&get, "install_py_dep_per_model", false)?,
            token_expiration_min: match get("token_expiration_min") {
                None => 60.0,
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    // A token's expiry must stay a representable date.
                    .filter(|m| m.is_finite() && (0.0..=MAX_TOKEN_MINUTES).contains(m))
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            "token_expiration_min",
                            &v,
                            "not a number of minutes from 0 to 1000000000",
                        )
                    })?,
            },
            allowed_urls: {
                let raw = get("allowed_urls").unwrap_or_else(|| "file://.*|http(s)?://.*".into());
                let list: Vec<String> = raw
                    .split(',')
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
                    .collect();
                for r in &list {
                    regex::Regex::new(r)
                        .map_err(|e| ConfigError::invalid("allowed_urls", &raw, e.to_string()))?;
                }
                list
            },
            default_service_handler: get("default_service_handler")
                .filter(|h| !h.trim().is_empty()),
            metrics_mode: crate::metrics::Mode::parse(get("metrics_mode").as_deref()),
            metrics_config: get("metrics_config")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from),
            model_metrics_auto_detect: parse_bool(&get, "model_metrics_auto_detect", false)?,
            disable_system_metrics: parse_bool(&get, "disable_system_metrics", false)?,
            metric_time_interval: parse_num(&get, "metric_time_interval", 60)?,
            grpc_inference_address: get("grpc_inference_address")
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "127.0.0.1".into()),
            grpc_inference_port: parse_num(&get, "grpc_inference_port", 7070)?,
            grpc_management_address: get("grpc_management_address")
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "127.0.0.1".into()),
            grpc_management_port: parse_num(&get, "grpc_management_port", 7071)?,
            max_connections: parse_num(&get, "max_connections", 10_000)?.max(1),
            http_threads: match parse_num(&get, "number_of_netty_threads", 0)? {
                0 => cores(),
                n => n,
            },
            body_idle_timeout_sec: parse_num(&get, "body_idle_timeout_sec", 30)?.max(1),
            blacklist_env_vars: match get("blacklist_env_vars").filter(|v| !v.trim().is_empty()) {
                None => None,
                Some(raw) => Some(regex::Regex::new(&format!("^(?:{})$", raw.trim())).map_err(
                    |e| ConfigError::invalid("blacklist_env_vars", &raw, e.to_string()),
                )?),
            },
            open_inference_protocol: env
                .get("TS_OPEN_INFERENCE_PROTOCOL")
                .is_some_and(|v| v.eq_ignore_ascii_case("oip"))
                || parse_bool(&get, "ts_open_inference_protocol", false)?,
            canary_routing_header: get("canary_routing_header")
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "x-routing-key".into()),
            cors: [
                ("cors_allowed_origin", "access-control-allow-origin"),
                ("cors_allowed_methods", "access-control-allow-methods"),
                ("cors_allowed_headers", "access-control-allow-headers"),
            ]
            .into_iter()
            .filter_map(|(key, header)| {
                get(key)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .map(|v| (header, v))
            })
            .collect(),
            ipex_enable: parse_bool(&get, "ipex_enable", false)?,
            ipex_gpu_enable: parse_bool(&get, "ipex_gpu_enable", false)?,
            grpc_connection_age: {
                let millis = |key: &str| -> Result<Option<std::time::Duration>, ConfigError> {
                    match get(key)
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                    {
                        None => Ok(None),
                        Some(v) => v
                            .parse::<u64>()
                            .map(|ms| Some(std::time::Duration::from_millis(ms)))
                            .map_err(|e| ConfigError::invalid(key, &v, e.to_string())),
                    }
                };
                [
                    (
                        millis("grpc_inference_max_connection_age_ms")?,
                        millis("grpc_inference_max_connection_age_grace_ms")?,
                    ),
                    (
                        millis("grpc_management_max_connection_age_ms")?,
                        millis("grpc_management_max_connection_age_grace_ms")?,
                    ),
                ]
            },
            no_effect: {
                if let Some(path) = &cli.plugins_path {
                    return Err(ConfigError::invalid(
                        "--plugins-path",
                        &path.display().to_string(),
                        "not supported by ferroserve: Java plugins (endpoints, snapshot serializers) cannot be loaded",
                    ));
                }
                unused::check(&extra)?
            },
            sequence_headers: {
                let named = |key: &str, default: String| {
                    get(key)
                        .map(|h| h.trim().to_string())
                        .filter(|h| !h.is_empty())
                        .unwrap_or(default)
                };
                let d = SequenceHeaders::default();
                SequenceHeaders {
                    id: named("ts_header_key_sequence_id", d.id),
                    start: named("ts_header_key_sequence_start", d.start),
                    end: named("ts_header_key_sequence_end", d.end),
                }
            },
            certificate_file: get("certificate_file")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from),
            private_key_file: get("private_key_file")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from),
            keystore: get("keystore").filter(|v| !v.trim().is_empty()),
            model_snapshot: match file.get("model_snapshot").filter(|v| !v.trim().is_empty()) {
                None => None,
                Some(raw) => Some(
                    serde_json::from_str(raw)
                        .map_err(|e| ConfigError::invalid("model_snapshot", raw, e.to_string()))?,
                ),
            },
            snapshot_dir: (!cli.no_config_snapshots)
                .then(|| snapshot::directory(env.get("LOG_LOCATION").map(String::as_str))),
            properties: file.clone().into_iter().collect(),
            config_file,
            extra,
        })
    }

    pub fn body_idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.body_idle_timeout_sec)
    }

    /// The workflow store: `workflow_store`, else the model store (as TorchServe).
    pub fn workflow_store(&self) -> Option<PathBuf> {
        self.workflow_store
            .clone()
            .or_else(|| self.model_store.clone())
    }

    /// Workers for a model when nothing more specific is configured.
    pub fn workers_default(&self, gpus: usize) -> usize {
        match self.default_workers_per_model {
            0 if gpus > 0 => gpus,
            0 => cores(),
            n => n,
        }
    }
}

/// The CPU cores this process may use: TorchServe's "number of processors" defaults.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `TS_<KEY>` variables, named as TorchServe names them, minus the keys it never takes from env.
/// `allowed_urls` comes from the environment only with `use_env_allowed_urls=true`.
fn env_overrides(env: &HashMap<String, String>, allowed_urls: bool) -> config::Map<String, String> {
    env.iter()
        .filter_map(|(k, v)| {
            let key = match k.as_str() {
                "TS_TOKEN_EXPIRATION_TIME_MIN" => "TS_TOKEN_EXPIRATION_MIN".to_string(),
                "TS_CONFIG_FILE" => return None,
                "TS_ALLOWED_URLS" if !allowed_urls => return None,
                _ => k.clone(),
            };
            let stripped = key.strip_prefix("TS_")?.to_ascii_lowercase();
            (!NOT_FROM_ENV.contains(&stripped.as_str())).then(|| (key, v.clone()))
        })
        .collect()
}

fn apply_cli(
    mut b: config::ConfigBuilder<config::builder::DefaultState>,
    cli: &Cli,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, config::ConfigError> {
    if let Some(store) = &cli.model_store {
        b = b.set_override("model_store", store.display().to_string())?;
    }
    if let Some(store) = &cli.workflow_store {
        b = b.set_override("workflow_store", store.display().to_string())?;
    }
    if !cli.models.is_empty() {
        b = b.set_override("load_models", cli.models.join(","))?;
    }
    // The CLI can only disable token auth and only enable the model API.
    if cli.disable_token_auth {
        b = b.set_override("disable_token_authorization", "true")?;
    }
    if let Some(python) = &cli.python {
        b = b.set_override("python", python.display().to_string())?;
    }
    if cli.enable_model_api {
        b = b.set_override("enable_model_api", "true")?;
    }
    Ok(b)
}

fn parse_num<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
) -> Result<T, ConfigError> {
    match get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ConfigError::invalid(key, &v, "not a valid non-negative integer")),
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(key) {
        None => Ok(default),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ConfigError::invalid(key, &v, "expected true or false")),
        },
    }
}

#[cfg(test)]
impl Settings {
    /// Settings from a config.properties text alone (no command line, no environment), for
    /// other modules' unit tests.
    pub(crate) fn from_properties(props: &str) -> Self {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), props).unwrap();
        Settings::resolve(&Cli::default(), &HashMap::new(), f.path()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_config(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn resolve(
        cli: &Cli,
        env: &[(&str, &str)],
        file: &tempfile::NamedTempFile,
    ) -> Result<Settings, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(cli, &env, file.path())
    }

    #[test]
    fn defaults_without_file() {
        let s =
            Settings::resolve(&Cli::default(), &HashMap::new(), Path::new("/nonexistent")).unwrap();
        assert_eq!(
            s.inference_address,
            Address::Http {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(s.max_request_size, 6_553_500);
        assert_eq!(s.job_queue_size, 100);
        assert!(s.model_store.is_none());
        assert!(s.config_file.is_none());
    }

    #[test]
    fn precedence_cli_over_env_over_file() {
        let f = write_config(
            "enable_envvars_config=true\nmodel_store=/file\nload_models=a.mar\nmax_request_size=100\nsome_unknown_key=kept\n",
        );
        let cli = Cli {
            model_store: Some("/cli".into()),
            ..Cli::default()
        };
        let s = resolve(
            &cli,
            &[
                ("TS_MODEL_STORE", "/env"),
                ("TS_LOAD_MODELS", "b.mar"),
                ("TS_MAX_REQUEST_SIZE", "200"),
            ],
            &f,
        )
        .unwrap();
        assert_eq!(s.model_store.unwrap(), PathBuf::from("/cli"));
        assert_eq!(s.load_models, vec!["b.mar"]);
        assert_eq!(s.max_request_size, 200);
        assert_eq!(s.extra["some_unknown_key"], "kept");
    }

    #[test]
    fn env_ignored_unless_enabled() {
        let f = write_config("max_request_size=100\n");
        let s = resolve(&Cli::default(), &[("TS_MAX_REQUEST_SIZE", "200")], &f).unwrap();
        assert_eq!(s.max_request_size, 100);
    }

    #[test]
    fn models_json_never_from_env() {
        let f = write_config(
            "enable_envvars_config=true\nmodels={\"m\": {\"1.0\": {\"batchSize\": 4}}}\n",
        );
        let s = resolve(&Cli::default(), &[("TS_MODELS", "{}")], &f).unwrap();
        assert_eq!(s.models["m"]["1.0"]["batchSize"], 4);
    }

    #[test]
    fn bad_values_name_the_key() {
        let f = write_config("inference_address=http://127.0.0.1:80x0\n");
        let err = resolve(&Cli::default(), &[], &f).unwrap_err().to_string();
        assert!(err.contains("inference_address"), "{err}");
        let f = write_config("max_request_size=lots\n");
        let err = resolve(&Cli::default(), &[], &f).unwrap_err().to_string();
        assert!(err.contains("max_request_size"), "{err}");
        let f = write_config("models={not json\n");
        assert!(resolve(&Cli::default(), &[], &f)
            .unwrap_err()
            .to_string()
            .contains("models"));
    }

    #[test]
    fn named_missing_file_is_an_error() {
        let cli = Cli {
            ts_config: Some("/no/such/config.properties".into()),
            ..Cli::default()
        };
        let err = Settings::resolve(&cli, &HashMap::new(), Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("/no/such/config.properties"));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("k", "HTTP://0.0.0.0", 8081).unwrap(),
            Address::Http {
                host: "0.0.0.0".into(),
                port: 8081
            }
        );
        assert_eq!(
            Address::parse("k", "https://[::1]:8443", 443).unwrap(),
            Address::Https {
                host: "::1".into(),
                port: 8443
            }
        );
        assert_eq!(
            Address::parse("k", "unix:/tmp/s.sock", 1).unwrap(),
            Address::Unix("/tmp/s.sock".into())
        );
        assert!(Address::parse("k", "http://h:65535", 1).is_err());
        assert!(Address::parse("k", "ftp://h:1", 1).is_err());
    }
}
