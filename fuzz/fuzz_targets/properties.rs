//! config.properties: the properties reader and the whole settings resolution.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("config.properties");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = ferroserve::config::properties::read_file(&path);
    let cli = ferroserve::config::Cli {
        ts_config: Some(path.clone()),
        ..Default::default()
    };
    let env = std::collections::HashMap::new();
    let _ = ferroserve::config::Settings::resolve(&cli, &env, &path);
});
