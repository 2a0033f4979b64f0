//! Management input: registration URLs through the allow-list and path checks (no network:
//! only `file://` and store paths resolve), and model-name defaults.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(store) = tempfile::tempdir() else {
        return;
    };
    let allowed = vec!["file://.*".to_string()];
    if !url.to_ascii_lowercase().starts_with("http") {
        let _ = ferroserve::fetch::resolve(url, store.path(), &allowed, 1 << 20);
    }
    let _ = ferroserve::fetch::allowed(url, &allowed);
    let _ = ferroserve::archive::default_model_name(url);
    let _ = ferroserve::archive::safe_join(store.path(), url);
});
