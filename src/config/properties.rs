//! `config.properties` in Java properties format, as a `config` source.

use std::collections::HashMap;
use std::path::Path;

use crate::error::ConfigError;

/// Reads a Java properties file (`#`/`!` comments, `=`/`:`/whitespace separators, line
/// continuations, `\uXXXX` escapes; later duplicates win), then expands `$$NAME$$` references
/// to environment variables as TorchServe does.
pub fn read_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse(&bytes)
        .map_err(|reason| ConfigError::File {
            path: path.display().to_string(),
            reason,
        })?
        .into_iter()
        .map(|(k, v)| {
            let v = expand_env(&k, &v, |name| std::env::var(name).ok())?;
            Ok((k, v))
        })
        .collect()
}

/// The properties of a file's bytes: windows-1252 unless a byte-order mark says otherwise,
/// decoded whole before parsing. (java_properties' own streaming decoder panics at the end of
/// a file whose last bytes decode to a character only at the end, such as an odd byte after a
/// UTF-16 mark.)
fn parse(bytes: &[u8]) -> Result<HashMap<String, String>, String> {
    let (text, _, _) = encoding_rs::WINDOWS_1252.decode(bytes);
    let mut map = HashMap::new();
    java_properties::PropertiesIter::new_with_encoding(text.as_bytes(), encoding_rs::UTF_8)
        .read_into(|k, v| {
            map.insert(k, v);
        })
        .map_err(|e| e.to_string())?;
    Ok(map)
}

/// Replaces every `$$NAME$$` with the value of environment variable `NAME`; an unset variable
/// is an error, as in TorchServe.
pub fn expand_env(
    key: &str,
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("$$") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("$$") else { break };
        let name = &after[..end];
        let resolved = lookup(name).ok_or_else(|| {
            ConfigError::invalid(
                key,
                value,
                format!("environment variable {name} is not set"),
            )
        })?;
        out.push_str(&rest[..start]);
        out.push_str(&resolved);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A properties map fed into the `config` layering (file < env < CLI).
#[derive(Debug, Clone)]
pub struct PropertiesSource(pub HashMap<String, String>);

impl config::Source for PropertiesSource {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self
            .0
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    config::Value::new(Some(&"config.properties".to_string()), v.as_str()),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> HashMap<String, String> {
        super::parse(text.as_bytes()).unwrap()
    }

    /// Found by fuzzing: a UTF-16 byte-order mark and an odd last byte made the streaming
    /// decoder panic; the bytes are now decoded whole. Marks are still honoured, and other
    /// bytes read as windows-1252.
    #[test]
    fn byte_order_marks_and_stray_bytes_never_panic() {
        let mut odd = b"\xfe\xff".to_vec();
        odd.extend("a=1\n".encode_utf16().flat_map(|u| u.to_be_bytes()));
        odd.push(0xf9);
        let m = super::parse(&odd).unwrap();
        assert_eq!(m["a"], "1");
        let crash =
            b"\xfe\xff\xff\xff\xff\xff\xff\xf6inference_address=http://127.0.0.1:8080\n\xf9";
        assert!(super::parse(crash).is_ok());
        let utf8 = super::parse("\u{feff}k=caf\u{e9}\n".as_bytes()).unwrap();
        assert_eq!(utf8["k"], "café");
        let latin = super::parse(b"k=caf\xe9\n").unwrap();
        assert_eq!(latin["k"], "café");
    }

    #[test]
    fn separators_and_comments() {
        let m = parse("# comment\n! bang comment\na=1\nb:2\nc 3\n  d  =  4  \ne\\ key=5\nf=\n");
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "2");
        assert_eq!(m["c"], "3");
        // leading whitespace of the value is dropped, trailing whitespace kept
        assert_eq!(m["d"], "4  ");
        assert_eq!(m["e key"], "5");
        assert_eq!(m["f"], "");
        assert_eq!(m.len(), 6);
    }

    #[test]
    fn continuation_escapes_and_duplicates() {
        let m = parse(
            "models={\\\n  \"sign\": {\\\n    \"1.0\": {\"batchSize\": 4}}}\nu=caf\\u00e9\\tx\nk=first\nk=second\nbs=a\\\\b\n",
        );
        assert_eq!(m["models"], "{\"sign\": {\"1.0\": {\"batchSize\": 4}}}");
        assert_eq!(m["u"], "café\tx");
        assert_eq!(m["k"], "second");
        assert_eq!(m["bs"], "a\\b");
    }

    #[test]
    fn colon_and_equals_in_values() {
        let m = parse("inference_address=http://0.0.0.0:8080\nkey:value=with=equals\n");
        assert_eq!(m["inference_address"], "http://0.0.0.0:8080");
        assert_eq!(m["key"], "value=with=equals");
    }

    #[test]
    fn env_expansion() {
        let lookup = |n: &str| (n == "HOME_DIR").then(|| "/srv".to_string());
        assert_eq!(
            expand_env("k", "$$HOME_DIR$$/store", lookup).unwrap(),
            "/srv/store"
        );
        assert_eq!(expand_env("k", "no vars", lookup).unwrap(), "no vars");
        let err = expand_env("model_store", "$$MISSING$$", lookup).unwrap_err();
        assert!(err.to_string().contains("model_store"));
        assert!(err.to_string().contains("MISSING"));
    }
}
