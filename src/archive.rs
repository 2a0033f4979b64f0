//! Model archives: `.mar` files (zip) and unpacked model folders, read the way TorchServe reads
//! them, with the extraction hardened against zip-slip and decompression bombs.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ArchiveError;

const MANIFEST: &str = "MAR-INF/MANIFEST.json";
/// More entries than any real model archive carries.
const MAX_ENTRIES: usize = 10_000;
/// Entries that inflate more than this ratio (past a small floor) are treated as bombs:
/// weights compress about 1.1:1, text about 5:1; deflate's ceiling on zeros is about 1000:1.
const MAX_RATIO: u64 = 200;
const RATIO_FLOOR: u64 = 1 << 20;
/// model-config.yaml is a few lines; a large one is an attack on the YAML parser.
const MAX_MODEL_CONFIG: u64 = 1 << 20;

/// Aliases a model-config.yaml may use (SnakeYAML's default limit, which TorchServe has).
/// Loading copies each alias's node, so nested aliases ("billion laughs") would grow without
/// bound from a few hundred bytes.
const MAX_YAML_ALIASES: usize = 50;

/// Nesting depth a YAML document may reach (SnakeYAML's default limit too). The YAML loaders
/// recurse once per level, and a one-line `- - - - …` of a megabyte would overflow a thread's
/// stack and abort the whole server.
const MAX_YAML_DEPTH: usize = 50;

/// Counts aliases and nesting depth from the parser's events, one at a time (nothing is built
/// and nothing recurses), before the YAML is loaded.
pub(crate) fn check_yaml(text: &str) -> Result<(), String> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let (mut aliases, mut depth) = (0usize, 0usize);
    loop {
        match parser.next_token().map_err(|e| e.to_string())?.0 {
            Event::StreamEnd if aliases > MAX_YAML_ALIASES => {
                return Err(format!(
                    "{aliases} YAML aliases, more than the {MAX_YAML_ALIASES} allowed"
                ))
            }
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => aliases += 1,
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_YAML_DEPTH {
                    return Err(format!(
                        "YAML nested deeper than the {MAX_YAML_DEPTH} levels allowed"
                    ));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
}

/// `MAR-INF/MANIFEST.json`, every field TorchServe's archiver writes or its frontend reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archiver_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default)]
    pub model: ManifestModel,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serialized_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// The archive's `model-config.yaml` as a JSON value: typed accessors for the keys the server
/// uses; the whole document stays available to handlers (`handler:` section and the like).
#[derive(Debug, Clone, Default)]
pub struct ModelConfig(pub Value);

impl ModelConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        check_yaml(text)?;
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .build()
            .map_err(|e| e.to_string())?;
        cfg.try_deserialize::<Value>()
            .map(ModelConfig)
            .map_err(|e| e.to_string())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// An integer key; wrong types are ignored (logged), as TorchServe does.
    pub fn int(&self, key: &str) -> Option<i64> {
        let v = self.get(key)?;
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
        if n.is_none() {
            tracing::warn!(key, value = %v, "model-config.yaml: not an integer, ignored");
        }
        n
    }

    /// A boolean key; like TorchServe, only a YAML boolean counts (anything else is logged
    /// and ignored).
    pub fn bool(&self, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        let b = v.as_bool();
        if b.is_none() {
            tracing::warn!(key, value = %v, "model-config.yaml: not a boolean, ignored");
        }
        b
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.as_str().map(str::to_string))
    }

    /// `ferroserve.<key>` — settings of ours that TorchServe ignores.
    pub fn ferroserve(&self, key: &str) -> Option<&Value> {
        self.get("ferroserve")?.get(key)
    }
}

/// An opened model: its directory (extracted or in place), manifest and config.
#[derive(Debug)]
pub struct ModelArchive {
    /// The `url` as given at registration (`sign.mar`, a folder name...).
    pub url: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub config: ModelConfig,
    /// Holds the private extraction directory; dropping the last holder deletes the files
    /// (a workflow's function nodes share its archive's).
    _extracted: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl ModelArchive {
    /// Opens `url` relative to the model store (a `.mar` file or a model folder), or an
    /// absolute folder.
    pub fn open(store: &Path, url: &str, max_size: u64) -> Result<Self, ArchiveError> {
        if url.contains("..") {
            return Err(ArchiveError::NotFound(format!(
                "Relative path is not allowed in url: {url}"
            )));
        }
        if url.contains("://") {
            return Err(ArchiveError::NotFound(format!(
                "{url}: registration from URLs is not supported yet"
            )));
        }
        let in_store = store.join(url);
        let (dir, extracted) = if in_store.is_file() {
            let tgz = is_tgz(url);
            if !tgz && !url.ends_with(".mar") && !url.ends_with(".model") {
                return Err(ArchiveError::Corrupt {
                    path: url.into(),
                    reason: "only .mar (zip) and .tar.gz archives are supported".into(),
                });
            }
            let tmp = extraction_dir().map_err(|source| ArchiveError::Io {
                path: url.into(),
                source,
            })?;
            if tgz {
                extract_tgz(&in_store, tmp.path(), max_size)?;
            } else {
                extract_zip(&in_store, tmp.path(), max_size)?;
            }
            // A tgz archive holds its model in a folder of its own, like a model folder.
            (descend_single_dir(tmp.path().to_path_buf()), Some(tmp))
        } else if in_store.is_dir() {
            (descend_single_dir(in_store), None)
        } else if Path::new(url).is_absolute() && Path::new(url).is_dir() {
            (descend_single_dir(PathBuf::from(url)), None)
        } else {
            return Err(ArchiveError::NotFound(format!("Model not found at: {url}")));
        };
        let manifest = read_manifest(&dir, url)?;
        let config = match &manifest.model.config_file {
            Some(file) => read_model_config(&dir, url, file)?,
            None => ModelConfig::default(),
        };
        Ok(ModelArchive {
            url: url.to_string(),
            dir,
            manifest,
            config,
            _extracted: extracted.map(std::sync::Arc::new),
        })
    }

    /// A model made of one Python function of an extracted folder (a workflow's function
    /// node): TorchServe's worker loads `handler` (`file.py:function`) from `dir`.
    pub fn function(
        dir: PathBuf,
        extracted: std::sync::Arc<tempfile::TempDir>,
        model_name: &str,
        handler: String,
    ) -> Self {
        let manifest = Manifest {
            runtime: Some("python".into()),
            model: ManifestModel {
                model_name: Some(model_name.into()),
                version: Some("1.0".into()),
                model_version: Some("1.0".into()),
                handler: Some(handler),
                ..ManifestModel::default()
            },
            ..Manifest::default()
        };
        ModelArchive {
            url: String::new(),
            dir,
            manifest,
            config: ModelConfig::default(),
            _extracted: Some(extracted),
        }
    }

    /// A file of the model, by the name the manifest gives (a basename).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A gzipped tar archive, by its name (TorchServe's `--archive-format tgz`).
pub fn is_tgz(url: &str) -> bool {
    url.ends_with(".tar.gz")
}

/// TorchServe's default model name for a startup entry without `name=` or manifest name:
/// the file name without `.mar`/`.model`, non-word characters replaced by `_`.
pub fn default_model_name(url: &str) -> String {
    let base = url.rsplit('/').next().unwrap_or(url);
    let stem = base
        .strip_suffix(".mar")
        .or_else(|| base.strip_suffix(".model"))
        .unwrap_or(base);
    stem.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(crate) fn extraction_dir() -> std::io::Result<tempfile::TempDir> {
    let root = std::env::temp_dir().join("models");
    fs::create_dir_all(&root)?;
    tempfile::Builder::new().prefix("").tempdir_in(root)
}

/// A folder whose only entry is a folder is descended into (SageMaker layout).
fn descend_single_dir(dir: PathBuf) -> PathBuf {
    let entries: Vec<_> = match fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(Result::ok).collect(),
        Err(_) => return dir,
    };
    match entries.as_slice() {
        [only] if only.path().is_dir() && !dir.join(MANIFEST).exists() => only.path(),
        _ => dir,
    }
}

/// The archive's manifest; without one, TorchServe's default: a Python model whose handler
/// comes from the registration (`handler=`) or `default_service_handler`.
fn read_manifest(dir: &Path, url: &str) -> Result<Manifest, ArchiveError> {
    let path = dir.join(MANIFEST);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(url, "no {MANIFEST}: a Python model, as TorchServe assumes");
            return Ok(Manifest {
                runtime: Some("python".into()),
                ..Manifest::default()
            });
        }
        Err(e) => {
            return Err(ArchiveError::InvalidManifest {
                path: url.into(),
                reason: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| ArchiveError::InvalidManifest {
        path: url.into(),
        reason: e.to_string(),
    })
}

fn read_model_config(dir: &Path, url: &str, file: &str) -> Result<ModelConfig, ArchiveError> {
    let err = |reason: String| ArchiveError::InvalidModelConfig {
        path: url.into(),
        file: file.into(),
        reason,
    };
    let text = read_small_file(dir, file, MAX_MODEL_CONFIG).map_err(err)?;
    ModelConfig::parse(&text).map_err(err)
}

/// A small text file of an archive's directory, named by its manifest (model-config.yaml, a
/// workflow spec): refused when the name leaves the directory or the file is larger than `max`
/// (input for a YAML parser).
pub(crate) fn read_small_file(dir: &Path, file: &str, max: u64) -> Result<String, String> {
    let path = safe_join(dir, file).ok_or("path escapes the archive's directory")?;
    let meta = fs::metadata(&path).map_err(|e| e.to_string())?;
    if meta.len() > max {
        return Err(format!("larger than {max} bytes"));
    }
    fs::read_to_string(&path).map_err(|e| e.to_string())
}

/// `dir/name` when `name` is a plain relative path that stays inside `dir`.
pub fn safe_join(dir: &Path, name: &str) -> Option<PathBuf> {
    let rel = Path::new(name);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| dir.join(rel))
}

/// Writes the entries of one archive into `dest` with the limits every format shares: no
/// absolute paths, `..` or links, at most [`MAX_ENTRIES`] entries and `max_total` bytes, and
/// no inflation past [`MAX_RATIO`]. Sizes are counted on the bytes actually inflated, never
/// on the sizes the archive claims.
struct Extraction<'a> {
    name: String,
    dest: &'a Path,
    max_total: u64,
    total: u64,
    entries: usize,
    buf: Vec<u8>,
}

impl<'a> Extraction<'a> {
    fn new(archive: &Path, dest: &'a Path, max_total: u64) -> Self {
        Self {
            name: archive.display().to_string(),
            dest,
            max_total,
            total: 0,
            entries: 0,
            buf: vec![0u8; 64 * 1024],
        }
    }

    fn io(&self, source: std::io::Error) -> ArchiveError {
        ArchiveError::Io {
            path: self.name.clone(),
            source,
        }
    }

    fn corrupt(&self, reason: String) -> ArchiveError {
        ArchiveError::Corrupt {
            path: self.name.clone(),
            reason,
        }
    }

    fn too_large(&self, reason: String) -> ArchiveError {
        ArchiveError::TooLarge {
            path: self.name.clone(),
            reason,
        }
    }

    /// Where an entry goes, after the checks on its name; `refused` names a kind of entry
    /// that is never extracted (links, devices).
    fn target(
        &mut self,
        entry: &str,
        refused: Option<&'static str>,
    ) -> Result<PathBuf, ArchiveError> {
        let unsafe_entry = |reason| ArchiveError::UnsafeEntry {
            path: self.name.clone(),
            entry: entry.to_string(),
            reason,
        };
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(self.too_large(format!("more than {MAX_ENTRIES} entries")));
        }
        if entry.starts_with('/') || entry.starts_with('\\') || entry.contains(":\\") {
            return Err(unsafe_entry("absolute path"));
        }
        if entry.split(['/', '\\']).any(|c| c == "..") {
            return Err(unsafe_entry("path traversal (..)"));
        }
        if let Some(kind) = refused {
            return Err(unsafe_entry(kind));
        }
        safe_join(self.dest, entry).ok_or_else(|| unsafe_entry("path escapes the archive"))
    }

    fn dir(&mut self, entry: &str) -> Result<(), ArchiveError> {
        let target = self.target(entry, None)?;
        fs::create_dir_all(&target).map_err(|e| self.io(e))
    }

    /// Copies one file entry; `compressed` is its compressed size where the format tells
    /// it (zip), for the per-entry ratio; otherwise the whole file's ratio is checked.
    fn file(
        &mut self,
        entry: &str,
        mut data: impl Read,
        compressed: u64,
    ) -> Result<(), ArchiveError> {
        let target = self.target(entry, None)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| self.io(e))?;
        }
        let mut out = fs::File::create(&target).map_err(|e| self.io(e))?;
        let compressed = compressed.max(1);
        let mut written: u64 = 0;
        loop {
            let n = data
                .read(&mut self.buf)
                .map_err(|e| self.corrupt(format!("{entry}: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            written += n as u64;
            self.total += n as u64;
            if self.total > self.max_total {
                let max = self.max_total;
                return Err(self.too_large(format!("more than {max} bytes (max_archive_size)")));
            }
            if written > RATIO_FLOOR && written / compressed > MAX_RATIO {
                return Err(self.too_large(format!(
                    "{entry} inflates more than {MAX_RATIO}:1 (decompression bomb)"
                )));
            }
            out.write_all(&self.buf[..n]).map_err(|e| self.io(e))?;
        }
    }
}

/// Extracts a zip (`.mar`) into `dest` with [`Extraction`]'s limits.
pub(crate) fn extract_zip(archive: &Path, dest: &Path, max_total: u64) -> Result<(), ArchiveError> {
    let mut x = Extraction::new(archive, dest, max_total);
    let file = fs::File::open(archive).map_err(|e| x.io(e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| x.corrupt(e.to_string()))?;
    if zip.len() > MAX_ENTRIES {
        return Err(x.too_large(format!("{} entries (limit {MAX_ENTRIES})", zip.len())));
    }
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| x.corrupt(e.to_string()))?;
        let entry_name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        if entry.is_symlink() {
            x.target(&entry_name, Some("symbolic link"))?;
        } else if entry.is_dir() {
            x.dir(&entry_name)?;
        } else {
            let compressed = entry.compressed_size();
            x.file(&entry_name, entry, compressed)?;
        }
    }
    Ok(())
}

/// Extracts a gzipped tar (`torch-model-archiver --archive-format tgz`) into `dest` with
/// [`Extraction`]'s limits; only files and folders are taken (links and devices refused).
pub(crate) fn extract_tgz(archive: &Path, dest: &Path, max_total: u64) -> Result<(), ArchiveError> {
    let mut x = Extraction::new(archive, dest, max_total);
    let file = fs::File::open(archive).map_err(|e| x.io(e))?;
    let compressed = file.metadata().map_err(|e| x.io(e))?.len();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = tar.entries().map_err(|e| x.corrupt(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| x.corrupt(e.to_string()))?;
        let path = entry.path().map_err(|e| x.corrupt(e.to_string()))?;
        let entry_name = path.to_string_lossy().into_owned();
        // `./` prefixes are common in tar files: the entry is the rest.
        let entry_name = entry_name.trim_start_matches("./").to_string();
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                if !entry_name.is_empty() {
                    x.dir(&entry_name)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // A tar's entries have no compressed size of their own: each is held to the
                // whole file's size, and the whole to the same ratio after it.
                x.file(&entry_name, entry, compressed)?;
                if x.total > RATIO_FLOOR && x.total / compressed.max(1) > MAX_RATIO {
                    return Err(x.too_large(format!(
                        "inflates more than {MAX_RATIO}:1 (decompression bomb)"
                    )));
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                x.target(&entry_name, Some("link"))?;
            }
            _ => {
                x.target(&entry_name, Some("not a file or folder"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(default_model_name("resnet-18.mar"), "resnet_18");
        assert_eq!(default_model_name("dir/my.model"), "my");
        assert_eq!(default_model_name("folder"), "folder");
    }

    #[test]
    fn safe_join_refuses_escapes() {
        let d = Path::new("/m");
        assert_eq!(safe_join(d, "a/b.pt"), Some(PathBuf::from("/m/a/b.pt")));
        assert!(safe_join(d, "../x").is_none());
        assert!(safe_join(d, "/etc/passwd").is_none());
    }

    #[test]
    fn yaml_alias_bombs_are_refused_before_loading() {
        let mut bomb = String::from("a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
        let mut prev = 'a';
        for name in 'b'..='i' {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
            prev = name;
        }
        let e = ModelConfig::parse(&bomb).unwrap_err();
        assert!(e.contains("72 YAML aliases"), "{e}");
        let few = "base: &b {batchSize: 2}\nother: *b\nminWorkers: 1\n";
        assert_eq!(ModelConfig::parse(few).unwrap().int("minWorkers"), Some(1));
    }

    /// A megabyte of `- - - …` on one line would overflow the loader's recursion; it is refused
    /// from the event stream, on a thread with a small stack to prove nothing recursed.
    #[test]
    fn deeply_nested_yaml_is_refused_without_recursing() {
        let deep = format!("{}x\n", "- ".repeat(500_000));
        let nested = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || ModelConfig::parse(&deep).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(
            nested.contains("nested deeper than the 50 levels"),
            "{nested}"
        );
        let flow = format!("a: {}1{}\n", "[".repeat(51), "]".repeat(51));
        assert!(ModelConfig::parse(&flow).unwrap_err().contains("50 levels"));
        let fine = format!("minWorkers: 1\na: {}1{}\n", "[".repeat(48), "]".repeat(48));
        assert_eq!(
            ModelConfig::parse(&fine).unwrap().int("minWorkers"),
            Some(1)
        );
    }

    #[test]
    fn model_config_types() {
        let c =
            ModelConfig::parse("minWorkers: 2\nbatchSize: four\nhandler:\n  frames: 64\n").unwrap();
        assert_eq!(c.int("minWorkers"), Some(2));
        assert_eq!(c.int("batchSize"), None);
        assert_eq!(c.get("handler").unwrap()["frames"], 64);
    }

    /// A gzipped tar of `entries`: (raw name, kind, data); raw names bypass the tar
    /// writer's own checks, so hostile archives can be made.
    fn tgz(dir: &Path, entries: &[(&str, tar::EntryType, &[u8])]) -> PathBuf {
        let path = dir.join("m.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&path).unwrap(),
            flate2::Compression::default(),
        );
        let mut tar = tar::Builder::new(gz);
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_old();
            let raw = &mut header.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            tar.append(&header, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn tgz_archives_open_as_their_model_folder() {
        let store = tempfile::tempdir().unwrap();
        let manifest = br#"{"model": {"modelName": "t", "modelVersion": "3.0"}}"#;
        tgz(
            store.path(),
            &[
                ("t/", tar::EntryType::Directory, b""),
                ("t/MAR-INF/MANIFEST.json", tar::EntryType::Regular, manifest),
                ("t/handler.py", tar::EntryType::Regular, b"x = 1\n"),
            ],
        );
        let a = ModelArchive::open(store.path(), "m.tar.gz", 1 << 20).unwrap();
        assert_eq!(a.manifest.model.model_version.as_deref(), Some("3.0"));
        assert!(a.file("handler.py").is_file());
        assert_eq!(default_model_name("m.tar.gz"), "m_tar_gz");
    }

    #[test]
    fn tgz_links_traversal_and_bombs_are_refused() {
        let refused = |entries: &[(&str, tar::EntryType, &[u8])], max: u64| {
            let store = tempfile::tempdir().unwrap();
            tgz(store.path(), entries);
            ModelArchive::open(store.path(), "m.tar.gz", max)
                .unwrap_err()
                .to_string()
        };
        let e = refused(&[("m/link", tar::EntryType::Symlink, b"")], 1 << 20);
        assert!(e.contains("link"), "{e}");
        let e = refused(&[("m/../../x", tar::EntryType::Regular, b"x")], 1 << 20);
        assert!(e.contains("path traversal"), "{e}");
        let e = refused(&[("/etc/x", tar::EntryType::Regular, b"x")], 1 << 20);
        assert!(e.contains("absolute path"), "{e}");
        let e = refused(&[("m/dev", tar::EntryType::Char, b"")], 1 << 20);
        assert!(e.contains("not a file or folder"), "{e}");
        let zeros = vec![0u8; 4 << 20];
        let e = refused(&[("m/zeros", tar::EntryType::Regular, &zeros)], 1 << 30);
        assert!(e.contains("decompression bomb"), "{e}");
        let e = refused(&[("m/zeros", tar::EntryType::Regular, &zeros)], 1 << 20);
        assert!(e.contains("max_archive_size"), "{e}");
    }
}
