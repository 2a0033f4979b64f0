//! Malformed and hostile archives are refused with clear errors while the server keeps serving.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use zip::write::SimpleFileOptions;

const MANIFEST: &str = r#"{"runtime": "python", "model": {"modelName": "evil", "serializedFile": "sign.pt", "handler": "json_tensor_classifier", "modelVersion": "1.0"}}"#;

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn hostile_archives_are_refused_and_others_keep_serving() {
    let zeros = vec![0u8; 50 << 20];
    // No usable interpreter: the Python-handler archive is refused with a clear error.
    let server = Server::start_with(
        Setup {
            archives: &["sign.mar"],
            config: "python=/nonexistent/python3",
            ..Setup::default()
        },
        |store| {
            write_zip(
                &store.join("slip.mar"),
                &[
                    ("MAR-INF/MANIFEST.json", MANIFEST.as_bytes()),
                    ("../../escaped.txt", b"pwned"),
                ],
            );
            write_zip(
                &store.join("absolute.mar"),
                &[
                    ("MAR-INF/MANIFEST.json", MANIFEST.as_bytes()),
                    ("/tmp/ferroserve-absolute.txt", b"pwned"),
                ],
            );
            write_zip(
                &store.join("bomb.mar"),
                &[
                    ("MAR-INF/MANIFEST.json", MANIFEST.as_bytes()),
                    ("sign.pt", &zeros),
                ],
            );
            write_zip(&store.join("nomanifest.mar"), &[("sign.pt", b"weights")]);
            write_zip(
                &store.join("badmanifest.mar"),
                &[("MAR-INF/MANIFEST.json", b"{not json")],
            );
            std::fs::write(
                store.join("corrupt.mar"),
                b"PK\x03\x04 this is not a zip file at all",
            )
            .unwrap();
            let python = r#"{"runtime": "python", "model": {"modelName": "pyhandler", "serializedFile": "m.pt", "handler": "my_handler.py", "modelVersion": "1.0"}}"#;
            write_zip(
                &store.join("python.mar"),
                &[
                    ("MAR-INF/MANIFEST.json", python.as_bytes()),
                    ("my_handler.py", b"def handle(d, c): return d"),
                ],
            );
        },
    );
    let log = server.log_text();
    for (file, expected) in [
        ("slip.mar", "path traversal"),
        ("absolute.mar", "absolute path"),
        ("bomb.mar", "decompression bomb"),
        // No manifest: a Python model, as TorchServe assumes (here without an interpreter).
        (
            "nomanifest.mar",
            "cannot run the Python interpreter /nonexistent/python3",
        ),
        ("badmanifest.mar", "invalid MAR-INF/MANIFEST.json"),
        ("corrupt.mar", "corrupt model archive"),
        (
            "python.mar",
            "cannot run the Python interpreter /nonexistent/python3",
        ),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(file) && l.contains("failed to load model"))
            .unwrap_or_else(|| panic!("no error logged for {file}:\n{log}"));
        assert!(line.contains(expected), "{file}: {line}");
    }
    assert!(!server.dir.path().join("escaped.txt").exists());
    assert!(!Path::new("/tmp/ferroserve-absolute.txt").exists());

    // Only the good model is registered, and it serves.
    let (_, body, _) = get(&format!("{}/models", server.management));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 1, "{body}");
    let (status, body, _) = post(
        &format!("{}/predictions/evil", server.inference),
        "application/json",
        "{}",
    );
    assert_eq!(status, 404);
    assert_error(&body, 404, "ModelNotFoundException");
    let reference = Reference::load();
    let ok = request_body(&reference.cases()[0], reference.features(), 1);
    assert_eq!(
        post(
            &format!("{}/predictions/sign", server.inference),
            "application/json",
            &ok
        )
        .0,
        200
    );
}

/// An unpacked model folder in the store serves like its archive; `name=url` renames it.
#[test]
fn model_folders_and_named_entries() {
    let server = Server::start_with(
        Setup {
            config: "load_models=renamed=sign_dir",
            ..Setup::default()
        },
        |store| {
            let dir = store.join("sign_dir");
            std::fs::create_dir_all(&dir).unwrap();
            let file = std::fs::File::open(Path::new(REPO).join("model-store/sign.mar")).unwrap();
            zip::ZipArchive::new(file).unwrap().extract(&dir).unwrap();
        },
    );
    let (_, body, _) = get(&format!("{}/models", server.management));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["models"],
        serde_json::json!([{"modelName": "renamed", "modelUrl": "sign_dir"}])
    );
    let reference = Reference::load();
    let ok = request_body(&reference.cases()[0], reference.features(), 1);
    assert_eq!(
        post(
            &format!("{}/predictions/renamed", server.inference),
            "application/json",
            &ok
        )
        .0,
        200
    );
}
