//! TorchServe's documented config.properties keys that ferroserve does not act on, each with
//! its reason. Keys about the JVM, Netty or TorchServe's own files have no counterpart here and
//! are named in a start-up warning; keys whose absence a client or a handler would notice are
//! refused, so the server does not start and say it serves them.

use std::collections::BTreeMap;

use crate::error::ConfigError;

/// What becomes of a key ferroserve does not act on.
#[derive(Debug, Clone, Copy)]
pub enum Unused {
    /// Accepted with a warning: nothing a client or handler sees depends on it.
    NoEffect(&'static str),
    /// Refused when it asks for something (a value other than empty or `false`).
    Refused(&'static str),
}

pub const KEYS: &[(&str, Unused)] = &[
    ("netty_client_threads", Unused::NoEffect("Python workers are driven from threads of their own, not an event loop")),
    ("async_logging", Unused::NoEffect("each log line is one write(2) by the thread that logs it, as log4j's default synchronous appenders write: cheaper than waking a writer thread per line")),
    ("prefer_direct_buffer", Unused::NoEffect("a Netty buffer setting")),
    ("io_ratio", Unused::NoEffect("a Netty event-loop setting")),
    ("use_native_io", Unused::NoEffect("Python workers always listen on Unix sockets")),
    ("vmargs", Unused::NoEffect("arguments of the JVM, which ferroserve does not have")),
    ("model_server_home", Unused::NoEffect("TorchServe's Python package is found through the worker interpreter (`python`)")),
    ("unregister_model_timeout", Unused::NoEffect("unregistering drains the version's queue (up to the response timeout), then stops its workers")),
    ("initial_distribution_port", Unused::NoEffect("torchrun workers are not launched (parallelType is refused)")),
    ("keystore_pass", Unused::NoEffect("keystores are refused; TLS takes certificate_file and private_key_file")),
    ("keystore_type", Unused::NoEffect("keystores are refused; TLS takes certificate_file and private_key_file")),
    ("cpp_log_config", Unused::NoEffect("the C++ backend is not run")),
    ("cpu_launcher_args", Unused::NoEffect("workers are not started through the CPU launcher (cpu_launcher_enable is refused)")),
    ("version", Unused::NoEffect("written into snapshots by TorchServe; ferroserve writes its own")),
    ("tsConfigFile", Unused::NoEffect("written into snapshots by TorchServe; ferroserve writes its own")),
    ("debug", Unused::Refused("debug mode expects worker processes started by hand; ferroserve starts them itself")),
    ("cpu_launcher_enable", Unused::Refused("workers are not started through torch.backends.xeon.run_cpu")),
    ("plugins_path", Unused::Refused("Java plugins (endpoints, snapshot serializers) cannot be loaded")),
    ("system_metrics_cmd", Unused::Refused("a custom system-metrics command is not run; the built-in collector is")),
];

/// The keys of `extra` TorchServe documents and ferroserve does not act on, with their
/// reasons; an error for the first one that is refused.
pub fn check(extra: &BTreeMap<String, String>) -> Result<Vec<(String, &'static str)>, ConfigError> {
    let mut no_effect = Vec::new();
    for (key, value) in extra {
        let Some((_, unused)) = KEYS.iter().find(|(k, _)| k == key) else {
            continue;
        };
        match *unused {
            Unused::NoEffect(why) => no_effect.push((key.clone(), why)),
            Unused::Refused(why) => {
                let v = value.trim();
                if !v.is_empty() && !v.eq_ignore_ascii_case("false") {
                    return Err(ConfigError::invalid(
                        key,
                        value,
                        format!("not supported by ferroserve: {why}"),
                    ));
                }
            }
        }
    }
    Ok(no_effect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jvm_keys_warn_and_behaviour_keys_refuse() {
        let extra = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let warned = check(&extra(&[
            ("vmargs", "-Xmx4g"),
            ("debug", "false"),
            ("custom", "x"),
        ]))
        .unwrap();
        assert_eq!(warned.len(), 1);
        assert_eq!(warned[0].0, "vmargs");
        let e = check(&extra(&[("cpu_launcher_enable", "true")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cpu_launcher_enable") && e.contains("not supported by ferroserve"),
            "{e}"
        );
    }
}
