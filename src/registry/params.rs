//! A model version's serving parameters, resolved once at load time with TorchServe's
//! precedence.

use std::time::Duration;

use serde_json::Value;

use crate::archive::ModelArchive;
use crate::batching::sequence::SequenceSettings;
use crate::config::Settings;

/// The longest timeout or delay a model may ask for (a year). Any value is accepted, as
/// TorchServe accepts it, but deadlines are instants, and `now + i64::MAX s` would overflow.
const MAX_WAIT_S: u64 = 366 * 24 * 3600;

/// A positive number of milliseconds from model-config.yaml, at most [`MAX_WAIT_S`].
fn millis(v: i64) -> u64 {
    (v.max(0) as u64).min(MAX_WAIT_S * 1000)
}

/// What a registration call (`POST /models`) sets explicitly; start-up loading sets nothing.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub model_name: Option<String>,
    pub handler: Option<String>,
    pub runtime: Option<String>,
    pub batch_size: Option<usize>,
    pub max_batch_delay_ms: Option<u64>,
    /// Workers to start; `None` at start-up (then `default_workers_per_model` applies).
    pub initial_workers: Option<usize>,
    pub response_timeout_s: Option<u64>,
    pub startup_timeout_s: Option<u64>,
    /// The workflow whose node this model is.
    pub workflow: Option<String>,
}

/// A model version's serving parameters, resolved once at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay_ms: u64,
    pub response_timeout_s: u64,
    pub startup_timeout_s: u64,
    pub max_retry_timeout_s: u64,
    /// A queued job older than this is answered without being run; 0: never.
    pub client_timeout_ms: u64,
    pub job_queue_size: usize,
    /// Accept a request only while a worker waits for one (`useJobTicket`).
    pub use_job_ticket: bool,
    /// Python workers run in a virtual environment of the model's own (`useVenv`).
    pub use_venv: bool,
    /// `continuousBatching`: workers serve rounds of streaming requests.
    pub continuous_batching: bool,
    /// A stateful model's sequences (`sequenceBatching` with `sequenceMaxIdleMSec`).
    pub sequence: Option<SequenceSettings>,
}

/// Keys of model-config.yaml that TorchServe documents and ferroserve cannot honour: a model
/// asking for one is refused at load with the key and the reason, never served differently.
/// The reason names what would be needed.
pub fn unsupported(yaml: &crate::archive::ModelConfig) -> Option<String> {
    let refuse = |key: &str, why: &str| {
        Some(format!(
            "model-config.yaml: {key} is not supported by ferroserve: {why}"
        ))
    };
    let parallel = yaml
        .string("parallelType")
        .filter(|t| !t.trim().is_empty() && !t.eq_ignore_ascii_case("none"));
    if let (Some(kind), Some(level)) = (&parallel, yaml.int("parallelLevel").filter(|&l| l > 0)) {
        return refuse(
            "parallelType",
            &format!("'{kind}' with parallelLevel {level} runs one worker across several GPUs or processes (torchrun), which ferroserve does not launch"),
        );
    }
    if yaml.get("torchrun").is_some() {
        return refuse(
            "torchrun",
            "workers launched as multi-process torchrun groups are not run",
        );
    }
    if yaml.get("deepspeed").is_some() {
        return refuse(
            "deepspeed",
            "DeepSpeed needs multi-process torchrun workers, which ferroserve does not launch",
        );
    }
    if yaml.bool("asyncCommunication") == Some(true) {
        return refuse(
            "asyncCommunication",
            "the asynchronous worker protocol (replies out of order) is not spoken",
        );
    }
    if yaml.bool("continuousBatching") == Some(true) && yaml.bool("sequenceBatching") == Some(true)
    {
        return refuse(
            "continuousBatching",
            "together with sequenceBatching (TorchServe's sequence continuous batching) it is not implemented",
        );
    }
    if yaml.bool("sequenceBatching") == Some(true)
        && yaml.int("sequenceMaxIdleMSec").unwrap_or(0) <= 0
    {
        return refuse(
            "sequenceBatching",
            "a stateful model needs sequenceMaxIdleMSec > 0 (without it TorchServe refuses every request of the model)",
        );
    }
    None
}

impl ModelParams {
    /// TorchServe's precedence: a registration call's explicit values, then model-config.yaml,
    /// then the `models=` entry, then server defaults; except timeouts, where model-config.yaml
    /// and `models=` come before the call. `gpus` is how many GPUs the server uses (0 on the
    /// CPU): the default worker count.
    pub fn resolve(
        settings: &Settings,
        archive: &ModelArchive,
        name: &str,
        version: &str,
        gpus: usize,
        reg: &Registration,
    ) -> Self {
        let entry = settings
            .models
            .get(name)
            .and_then(|v| v.get(version))
            .cloned()
            .unwrap_or(Value::Null);
        let from_models = |key: &str| entry.get(key).and_then(Value::as_i64).filter(|&v| v > 0);
        let yaml = &archive.config;
        let positive = |key: &str| yaml.int(key).filter(|&v| v > 0);

        let default_workers = match reg.initial_workers {
            Some(n) => n as i64,
            None => settings.workers_default(gpus) as i64,
        };
        let (mut min, mut max) = (default_workers, default_workers);
        if reg.initial_workers.is_none() {
            if let Some(v) = from_models("minWorkers") {
                min = v;
            }
            if let Some(v) = from_models("maxWorkers") {
                max = v;
            }
        }
        if let (Some(ymin), Some(ymax)) = (positive("minWorkers"), yaml.int("maxWorkers")) {
            if ymax >= ymin {
                (min, max) = (ymin, ymax);
            }
        }
        let pick = |key: &str, default: i64| {
            positive(key)
                .or_else(|| from_models(key))
                .unwrap_or(default)
        };
        let explicit =
            |v: Option<i64>, key: &str, default: i64| v.unwrap_or_else(|| pick(key, default));
        // Values found are positive, so the casts keep them.
        let timeout = |v: Option<u64>, key: &str, default: u64| {
            positive(key)
                .or_else(|| from_models(key))
                .map(|found| found as u64)
                .or(v)
                .unwrap_or(default)
                .min(MAX_WAIT_S)
        };
        ModelParams {
            min_workers: min.max(0) as usize,
            max_workers: max.max(min).max(0) as usize,
            batch_size: explicit(reg.batch_size.map(|v| v as i64), "batchSize", 1) as usize,
            max_batch_delay_ms: explicit(
                reg.max_batch_delay_ms.map(|v| v as i64),
                "maxBatchDelay",
                100,
            )
            .min(MAX_WAIT_S as i64 * 1000) as u64,
            response_timeout_s: timeout(
                reg.response_timeout_s,
                "responseTimeout",
                settings.default_response_timeout,
            ),
            startup_timeout_s: timeout(
                reg.startup_timeout_s,
                "startupTimeout",
                settings.default_startup_timeout,
            ),
            max_retry_timeout_s: (positive("maxRetryTimeoutInSec").unwrap_or(300) as u64)
                .min(MAX_WAIT_S),
            client_timeout_ms: millis(positive("clientTimeoutInMills").unwrap_or(0)),
            job_queue_size: positive("jobQueueSize").unwrap_or(settings.job_queue_size as i64)
                as usize,
            use_job_ticket: yaml.bool("useJobTicket").unwrap_or(false),
            use_venv: yaml.bool("useVenv").unwrap_or(false),
            continuous_batching: yaml.bool("continuousBatching").unwrap_or(false),
            sequence: (yaml.bool("sequenceBatching") == Some(true))
                .then(|| positive("sequenceMaxIdleMSec"))
                .flatten()
                .map(|idle| SequenceSettings {
                    max_idle: Duration::from_millis(millis(idle)),
                    max_age: positive("sequenceTimeoutMSec")
                        .map(|t| Duration::from_millis(millis(t))),
                    max_sequences: positive("maxNumSequence").unwrap_or(1) as usize,
                    queue_size: positive("maxSequenceJobQueueSize").unwrap_or(1) as usize,
                    headers: settings.sequence_headers.clone(),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(yaml: Option<&str>) -> (tempfile::TempDir, ModelArchive) {
        let store = tempfile::tempdir().unwrap();
        let dir = store.path().join("m");
        std::fs::create_dir_all(dir.join("MAR-INF")).unwrap();
        let config = yaml.map_or(String::new(), |_| {
            ", \"configFile\": \"model-config.yaml\"".into()
        });
        std::fs::write(
            dir.join("MAR-INF/MANIFEST.json"),
            format!("{{\"model\": {{\"modelName\": \"m\", \"modelVersion\": \"2.0\"{config}}}}}"),
        )
        .unwrap();
        if let Some(y) = yaml {
            std::fs::write(dir.join("model-config.yaml"), y).unwrap();
        }
        let archive = ModelArchive::open(store.path(), "m", 1 << 20).unwrap();
        (store, archive)
    }

    #[test]
    fn defaults_then_models_entry_then_yaml() {
        let s = Settings::from_properties(
            "default_workers_per_model=3\ndefault_response_timeout=50\njob_queue_size=7\n",
        );
        let (_d, a) = folder(None);
        let p = ModelParams::resolve(&s, &a, "m", "2.0", 0, &Registration::default());
        assert_eq!(
            (
                p.min_workers,
                p.max_workers,
                p.batch_size,
                p.max_batch_delay_ms
            ),
            (3, 3, 1, 100)
        );
        assert_eq!((p.response_timeout_s, p.job_queue_size), (50, 7));

        let s = Settings::from_properties(
            "default_workers_per_model=3\nmodels={\"m\": {\"2.0\": {\"minWorkers\": 2, \"maxWorkers\": 4, \"batchSize\": 8, \"maxBatchDelay\": 5, \"responseTimeout\": 9}}}\n",
        );
        let p = ModelParams::resolve(&s, &a, "m", "2.0", 0, &Registration::default());
        assert_eq!(
            (
                p.min_workers,
                p.max_workers,
                p.batch_size,
                p.max_batch_delay_ms,
                p.response_timeout_s
            ),
            (2, 4, 8, 5, 9)
        );

        let (_d, a) = folder(Some(
            "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 16\njobQueueSize: 3\n",
        ));
        let p = ModelParams::resolve(&s, &a, "m", "2.0", 0, &Registration::default());
        assert_eq!(
            (
                p.min_workers,
                p.max_workers,
                p.batch_size,
                p.max_batch_delay_ms
            ),
            (1, 1, 16, 5)
        );
        assert_eq!((p.response_timeout_s, p.job_queue_size), (9, 3));

        // An invalid YAML worker pair (max < min) is ignored.
        let (_d, a) = folder(Some("minWorkers: 5\nmaxWorkers: 2\n"));
        let p = ModelParams::resolve(&s, &a, "m", "2.0", 0, &Registration::default());
        assert_eq!((p.min_workers, p.max_workers), (2, 4));
    }

    /// Deadlines are `now + timeout`: any value is accepted, at most a year is used.
    #[test]
    fn huge_timeouts_are_bounded() {
        let (_d, a) = folder(Some(
            "maxRetryTimeoutInSec: 9223372036854775807\nclientTimeoutInMills: 9223372036854775807\n",
        ));
        let reg = Registration {
            response_timeout_s: Some(u64::MAX),
            startup_timeout_s: Some(i64::MAX as u64),
            max_batch_delay_ms: Some(i64::MAX as u64),
            ..Registration::default()
        };
        let p = ModelParams::resolve(&Settings::from_properties(""), &a, "m", "2.0", 0, &reg);
        let year = MAX_WAIT_S;
        assert_eq!(
            (
                p.response_timeout_s,
                p.startup_timeout_s,
                p.max_retry_timeout_s,
                p.client_timeout_ms,
                p.max_batch_delay_ms
            ),
            (year, year, year, year * 1000, year * 1000)
        );
        let later = std::time::Instant::now() + std::time::Duration::from_secs(p.startup_timeout_s);
        assert!(later > std::time::Instant::now());
    }

    #[test]
    fn gpus_set_the_default_worker_count() {
        let (_d, a) = folder(None);
        let p = ModelParams::resolve(
            &Settings::from_properties(""),
            &a,
            "m",
            "2.0",
            4,
            &Registration::default(),
        );
        assert_eq!(p.min_workers, 4);
    }

    #[test]
    fn settings_that_cannot_run_are_named() {
        let refused = |yaml: &str| {
            unsupported(&crate::archive::ModelConfig::parse(yaml).unwrap()).unwrap_or_default()
        };
        assert!(refused("parallelType: pp\nparallelLevel: 2\n").contains("parallelType"));
        assert!(refused("torchrun:\n  nproc-per-node: 4\n").contains("torchrun"));
        assert!(refused("deepspeed:\n  config: x.json\n").contains("deepspeed"));
        assert!(refused("asyncCommunication: true\n").contains("asyncCommunication"));
        assert!(refused("sequenceBatching: true\n").contains("sequenceMaxIdleMSec > 0"));
        assert_eq!(refused("continuousBatching: true\n"), "");
        assert!(refused(
            "continuousBatching: true\nsequenceBatching: true\nsequenceMaxIdleMSec: 10\n"
        )
        .contains("continuousBatching"));
        assert_eq!(
            refused("sequenceBatching: true\nsequenceMaxIdleMSec: 10\n"),
            ""
        );
        // What TorchServe itself ignores is no refusal: a type without a level, a level of
        // none, or a flag that is off.
        assert_eq!(refused("parallelType: tp\n"), "");
        assert_eq!(refused("parallelType: none\nparallelLevel: 2\n"), "");
        assert_eq!(
            refused("asyncCommunication: false\nuseJobTicket: true\n"),
            ""
        );
    }

    #[test]
    fn flags_are_read_as_booleans_only() {
        let (_d, a) = folder(Some(
            "useJobTicket: true\nuseVenv: \"true\"\nclientTimeoutInMills: 250\n",
        ));
        let p = ModelParams::resolve(
            &Settings::from_properties(""),
            &a,
            "m",
            "2.0",
            0,
            &Registration::default(),
        );
        // A quoted "true" is a string: ignored, as TorchServe's `instanceof Boolean`.
        assert_eq!(
            (p.use_job_ticket, p.use_venv, p.client_timeout_ms),
            (true, false, 250)
        );
    }
}
