//! Where a registration `url` points: a file or folder of the model store, or a `file://` /
//! `http(s)://` URL that `allowed_urls` permits, fetched into the store first (streamed, with a
//! size cap, never over an existing file). TorchServe's checks and messages.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::ServeError;

/// The store entry to open, and the file fetched for it (deleted on unregister).
pub struct Resolved {
    pub entry: String,
    pub downloaded: Option<PathBuf>,
}

fn not_found(message: String) -> ServeError {
    ServeError::ArchiveNotFound(message)
}

fn download_failed(url: &str) -> ServeError {
    ServeError::DownloadFailed(url.to_string())
}

pub fn is_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    ["file://", "http://", "https://"]
        .iter()
        .any(|s| lower.starts_with(s))
}

/// Whole-string, case-insensitive match against any of the patterns.
pub fn allowed(url: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| {
        regex::RegexBuilder::new(&format!("^(?:{p})$"))
            .case_insensitive(true)
            .build()
            .is_ok_and(|r| r.is_match(url))
    })
}

pub fn resolve(
    url: &str,
    store: &Path,
    allowed_urls: &[String],
    max_size: u64,
) -> Result<Resolved, ServeError> {
    if url.is_empty() {
        return Err(not_found("empty url".into()));
    }
    // Checked before anything is fetched or opened (TorchServe's fix for path traversal).
    if url.contains("..") {
        return Err(not_found(format!(
            "Relative path is not allowed in url: {url}"
        )));
    }
    if !is_url(url) {
        return Ok(Resolved {
            entry: url.to_string(),
            downloaded: None,
        });
    }
    if !allowed(url, allowed_urls) {
        return Err(not_found(format!(
            "Given URL {url} does not match any allowed URL(s)"
        )));
    }
    let path = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    let name = path.rsplit('/').next().unwrap_or("");
    if name.is_empty() || name.contains('\\') || name.starts_with('.') {
        return Err(download_failed(url));
    }
    // A file:// URL may only copy from inside the store: TorchServe's default allow-list
    // (`file://.*`) would otherwise let any readable file on the host be copied in.
    if url.to_ascii_lowercase().starts_with("file://") {
        let source = std::fs::canonicalize(format!("/{}", path.trim_start_matches('/')))
            .map_err(|_| download_failed(url))?;
        let inside = std::fs::canonicalize(store).is_ok_and(|s| source.starts_with(s));
        if !inside {
            return Err(not_found(format!(
                "Given URL {url} is outside the model store"
            )));
        }
    }
    let target = store.join(name);
    if target.exists() {
        return Err(ServeError::FileExists(name.to_string()));
    }
    fetch(url, path, &target, max_size, allowed_urls).map_err(|e| {
        tracing::warn!(url, "download failed: {e}");
        match e {
            Fetch::Redirect(to) => not_found(format!(
                "Given URL {url} redirects to {to}, which does not match any allowed URL(s)"
            )),
            Fetch::Io(_) => download_failed(url),
        }
    })?;
    Ok(Resolved {
        entry: name.to_string(),
        downloaded: Some(target),
    })
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
enum Fetch {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A redirect to a URL the allow-list refuses (or with `..`).
    #[error("redirect to a URL outside allowed_urls: {0}")]
    Redirect(String),
}

/// Redirect hops followed, each one checked against `allowed_urls`.
const MAX_REDIRECTS: usize = 5;

/// An HTTP(S) response body, following redirects only to allowed URLs: the HTTP client
/// itself follows none, so a redirect cannot carry a registration past the allow-list.
fn http_get(url: &str, allowed_urls: &[String]) -> Result<Box<dyn Read>, Fetch> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    let mut current = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let res = agent.get(&current).call().map_err(std::io::Error::other)?;
        let status = res.status();
        if status.is_redirection() {
            let location = res
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| std::io::Error::other("redirect without a location"))?;
            let next = absolute(&current, location);
            if next.contains("..") || !allowed(&next, allowed_urls) {
                return Err(Fetch::Redirect(next));
            }
            current = next;
            continue;
        }
        if !status.is_success() {
            return Err(std::io::Error::other(format!("HTTP status {status}")).into());
        }
        return Ok(Box::new(res.into_body().into_reader()));
    }
    Err(std::io::Error::other("too many redirects").into())
}

/// A `Location` made absolute against the URL that answered it.
fn absolute(base: &str, location: &str) -> String {
    if is_url(location) || location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let authority = rest.split('/').next().unwrap_or("");
    if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.rsplit_once('/').map_or(base, |(d, _)| d);
        format!("{dir}/{location}")
    }
}

/// Streams the URL into a temporary file next to `target`, then renames it into place.
fn fetch(
    url: &str,
    path: &str,
    target: &Path,
    max_size: u64,
    allowed_urls: &[String],
) -> Result<(), Fetch> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut source: Box<dyn Read> = if url.to_ascii_lowercase().starts_with("file://") {
        Box::new(std::fs::File::open(format!(
            "/{}",
            path.trim_start_matches('/')
        ))?)
    } else {
        http_get(url, allowed_urls)?
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max_size {
            return Err(std::io::Error::other(format!(
                "larger than max_archive_size ({max_size} bytes)"
            ))
            .into());
        }
        tmp.write_all(&buf[..n])?;
    }
    tmp.persist_noclobber(target).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_patterns_match_whole_urls_case_insensitively() {
        let default = vec!["file://.*".to_string(), "http(s)?://.*".to_string()];
        assert!(allowed("HTTPS://example.com/m.mar", &default));
        assert!(!allowed("ftp://example.com/m.mar", &default));
        let narrow = vec!["http://127\\.0\\.0\\.1:\\d+/.*".to_string()];
        assert!(allowed("http://127.0.0.1:80/a.mar", &narrow));
        assert!(!allowed("http://127.0.0.1:80.evil.com/a.mar", &narrow));
        assert!(!allowed("xhttp://127.0.0.1:80/a.mar", &narrow));
    }

    #[test]
    fn traversal_and_disallowed_urls_are_refused_before_any_io() {
        let store = tempfile::tempdir().unwrap();
        let e = resolve("../x.mar", store.path(), &[], 1 << 20)
            .err()
            .unwrap();
        assert!(matches!(
            &e,
            ServeError::ArchiveNotFound(m) if m == "Relative path is not allowed in url: ../x.mar"
        ));
        let e = resolve(
            "http://h/a.mar",
            store.path(),
            &["file://.*".into()],
            1 << 20,
        )
        .err()
        .unwrap();
        assert_eq!(
            e.to_string(),
            "Given URL http://h/a.mar does not match any allowed URL(s)"
        );
        let plain = resolve("sign.mar", store.path(), &[], 1 << 20).unwrap();
        assert_eq!(
            (plain.entry.as_str(), plain.downloaded.is_none()),
            ("sign.mar", true)
        );
    }

    #[test]
    fn file_urls_are_copied_once_from_inside_the_store_and_never_overwrite() {
        let store = tempfile::tempdir().unwrap();
        let src = store.path().join("incoming");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("m.mar"), b"zip").unwrap();
        let url = format!("file://{}/m.mar", src.display());
        let all = vec![".*".to_string()];
        let r = resolve(&url, store.path(), &all, 1 << 20).unwrap();
        assert_eq!(r.entry, "m.mar");
        assert_eq!(std::fs::read(store.path().join("m.mar")).unwrap(), b"zip");
        let e = resolve(&url, store.path(), &all, 1 << 20).err().unwrap();
        assert!(matches!(&e, ServeError::FileExists(m) if m == "m.mar"));
        let e = resolve("file:///no/such/x.mar", store.path(), &all, 1 << 20)
            .err()
            .unwrap();
        assert!(matches!(e, ServeError::DownloadFailed(_)));
        std::fs::write(src.join("big.mar"), vec![0u8; 2048]).unwrap();
        let big = format!("file://{}/big.mar", src.display());
        assert!(resolve(&big, store.path(), &all, 1024).is_err());
        assert!(!store.path().join("big.mar").exists());
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("o.mar"), b"zip").unwrap();
        let url = format!("file://{}/o.mar", outside.path().display());
        let e = resolve(&url, store.path(), &all, 1 << 20).err().unwrap();
        assert!(
            matches!(&e, ServeError::ArchiveNotFound(m) if m.ends_with("is outside the model store")),
            "{e}"
        );
    }

    #[test]
    fn redirect_locations_are_made_absolute() {
        assert_eq!(absolute("http://h:1/a/b.mar", "/c.mar"), "http://h:1/c.mar");
        assert_eq!(
            absolute("http://h:1/a/b.mar", "c.mar"),
            "http://h:1/a/c.mar"
        );
        assert_eq!(
            absolute("http://h:1/a/b.mar", "https://x/y.mar"),
            "https://x/y.mar"
        );
    }
}
