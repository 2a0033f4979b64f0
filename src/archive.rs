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
            if !url.ends_with(".mar") && !url.ends_with(".model") {
                return Err(ArchiveError::Corrupt {
                    path: url.into(),
                    reason: "only .mar (zip) archives are supported".into(),
                });
            }
            let tmp = extraction_dir().map_err(|source| ArchiveError::Io {
                path: url.into(),
                source,
            })?;
            extract_zip(&in_store, tmp.path(), max_size)?;
            (tmp.path().to_path_buf(), Some(tmp))
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

/// Extracts a zip into `dest`, refusing absolute paths, `..`, symlinks, too many entries,
/// and entries or totals that inflate past the limits. Sizes are counted on the bytes
/// actually inflated, never on the sizes the archive claims.
pub(crate) fn extract_zip(archive: &Path, dest: &Path, max_total: u64) -> Result<(), ArchiveError> {
    let name = archive.display().to_string();
    let corrupt = |reason: String| ArchiveError::Corrupt {
        path: name.clone(),
        reason,
    };
    let file = fs::File::open(archive).map_err(|source| ArchiveError::Io {
        path: name.clone(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| corrupt(e.to_string()))?;
    if zip.len() > MAX_ENTRIES {
        return Err(ArchiveError::TooLarge {
            path: name,
            reason: format!("{} entries (limit {MAX_ENTRIES})", zip.len()),
        });
    }
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| corrupt(e.to_string()))?;
        let entry_name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let unsafe_entry = |reason| ArchiveError::UnsafeEntry {
            path: name.clone(),
            entry: entry_name.clone(),
            reason,
        };
        if entry_name.starts_with('/') || entry_name.starts_with('\\') || entry_name.contains(":\\")
        {
            return Err(unsafe_entry("absolute path"));
        }
        if entry_name.split(['/', '\\']).any(|c| c == "..") {
            return Err(unsafe_entry("path traversal (..)"));
        }
        if entry.is_symlink() {
            return Err(unsafe_entry("symbolic link"));
        }
        let target =
            safe_join(dest, &entry_name).ok_or_else(|| unsafe_entry("path escapes the archive"))?;
        if entry.is_dir() {
            fs::create_dir_all(&target).map_err(|source| ArchiveError::Io {
                path: name.clone(),
                source,
            })?;
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|source| ArchiveError::Io {
                path: name.clone(),
                source,
            })?;
        }
        let compressed = entry.compressed_size().max(1);
        let mut out = fs::File::create(&target).map_err(|source| ArchiveError::Io {
            path: name.clone(),
            source,
        })?;
        let mut written: u64 = 0;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| corrupt(format!("{entry_name}: {e}")))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            total += n as u64;
            if total > max_total {
                return Err(ArchiveError::TooLarge {
                    path: name,
                    reason: format!("more than {max_total} bytes (max_archive_size)"),
                });
            }
            if written > RATIO_FLOOR && written / compressed > MAX_RATIO {
                return Err(ArchiveError::TooLarge {
                    path: name,
                    reason: format!(
                        "{entry_name} inflates more than {MAX_RATIO}:1 (decompression bomb)"
                    ),
                });
            }
            out.write_all(&buf[..n])
                .map_err(|source| ArchiveError::Io {
                    path: name.clone(),
                    source,
                })?;
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
}
