//! Token authorization, as TorchServe 0.11+ does it: on unless disabled, three keys (inference,
//! management, and the API key that rotates the other two) written to `key_file.json` in the
//! working directory with mode 0600; clients send `Authorization: Bearer <key>`. Keys are
//! compared in constant time.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Inference,
    Management,
    Api,
}

struct Key {
    value: String,
    /// `None` for the API key, which never expires.
    expires: Option<SystemTime>,
}

pub struct Tokens {
    keys: RwLock<[Key; 3]>,
    file: PathBuf,
    lifetime: Duration,
}

/// Six random bytes, URL-safe base64: eight characters, as TorchServe's keys.
fn new_key() -> std::io::Result<String> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn index(kind: KeyKind) -> usize {
    kind as usize
}

impl Tokens {
    /// Generates all three keys and writes the key file (replacing an old one).
    pub fn create(file: PathBuf, lifetime_minutes: f64) -> std::io::Result<Self> {
        let lifetime = Duration::from_secs_f64((lifetime_minutes * 60.0).max(0.0));
        let expires = Some(SystemTime::now() + lifetime);
        let tokens = Tokens {
            keys: RwLock::new([
                Key {
                    value: new_key()?,
                    expires,
                },
                Key {
                    value: new_key()?,
                    expires,
                },
                Key {
                    value: new_key()?,
                    expires: None,
                },
            ]),
            file,
            lifetime,
        };
        tokens.write_file()?;
        Ok(tokens)
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Checks an `Authorization` header value against a key.
    pub fn check(&self, kind: KeyKind, authorization: Option<&str>) -> bool {
        // TorchServe's pattern: ^Bearer\s+(\S+)$ (case-sensitive "Bearer").
        let Some(given) = authorization
            .and_then(|h| h.strip_prefix("Bearer"))
            .filter(|rest| rest.starts_with(char::is_whitespace))
            .map(str::trim_start)
            .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace))
        else {
            return false;
        };
        let keys = self.keys.read().expect("token lock");
        let key = &keys[index(kind)];
        let fresh = key.expires.is_none_or(|t| SystemTime::now() < t);
        let same: bool = key.value.as_bytes().ct_eq(given.as_bytes()).into();
        same && fresh
    }

    /// A new key (and expiry) for `kind`, written to the key file.
    pub fn rotate(&self, kind: KeyKind) -> std::io::Result<()> {
        {
            let mut keys = self.keys.write().expect("token lock");
            keys[index(kind)] = Key {
                value: new_key()?,
                expires: Some(SystemTime::now() + self.lifetime),
            };
        }
        self.write_file()
    }

    fn write_file(&self) -> std::io::Result<()> {
        let keys = self.keys.read().expect("token lock");
        let instant = |t: SystemTime| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .format("%Y-%m-%dT%H:%M:%S%.9fZ")
                .to_string()
        };
        let entry = |k: &Key| match k.expires {
            Some(t) => serde_json::json!({"key": k.value, "expiration time": instant(t)}),
            None => serde_json::json!({"key": k.value}),
        };
        let mut doc = serde_json::Map::new();
        doc.insert(
            "management".into(),
            entry(&keys[index(KeyKind::Management)]),
        );
        doc.insert("inference".into(), entry(&keys[index(KeyKind::Inference)]));
        doc.insert("API".into(), entry(&keys[index(KeyKind::Api)]));
        let text = serde_json::to_string_pretty(&doc).expect("keys serialize");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.file)?;
        // An older file may have had wider permissions.
        std::fs::set_permissions(
            &self.file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        file.write_all(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_check_rotate_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::create(dir.path().join("key_file.json"), 60.0).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(t.file()).unwrap()).unwrap();
        let key = doc["inference"]["key"].as_str().unwrap().to_string();
        assert_eq!(key.len(), 8);
        assert!(doc["API"]["expiration time"].is_null());
        assert!(t.check(KeyKind::Inference, Some(&format!("Bearer {key}"))));
        assert!(t.check(KeyKind::Inference, Some(&format!("Bearer \t{key}"))));
        assert!(!t.check(KeyKind::Management, Some(&format!("Bearer {key}"))));
        assert!(!t.check(KeyKind::Inference, Some(&format!("bearer {key}"))));
        assert!(!t.check(KeyKind::Inference, Some(&key)));
        assert!(!t.check(KeyKind::Inference, Some(&format!("Bearer {key} x"))));
        assert!(!t.check(KeyKind::Inference, None));
        t.rotate(KeyKind::Inference).unwrap();
        assert!(!t.check(KeyKind::Inference, Some(&format!("Bearer {key}"))));
        let mode = std::fs::metadata(t.file()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let expired = Tokens::create(dir.path().join("k2.json"), 0.0).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(expired.file()).unwrap()).unwrap();
        let key = doc["management"]["key"].as_str().unwrap();
        assert!(!expired.check(KeyKind::Management, Some(&format!("Bearer {key}"))));
        let api = doc["API"]["key"].as_str().unwrap();
        assert!(
            expired.check(KeyKind::Api, Some(&format!("Bearer {api}"))),
            "the API key never expires"
        );
    }
}
