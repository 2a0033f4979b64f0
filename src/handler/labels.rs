//! `index_to_name.json` read by TorchServe's `load_label_mapping` rules: `{"0": "name"}`,
//! list values keep their last element (ImageNet's `["n01440764", "tench"]`), an
//! `object_type_names` list numbers its names from 0; without the file a class is named by
//! its index.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::archive::ModelArchive;
use crate::error::LoadError;

#[derive(Debug, Default, Clone)]
pub struct Labels(Option<HashMap<String, String>>);

impl Labels {
    pub fn load(archive: &ModelArchive) -> Result<Self, LoadError> {
        let path = archive.file("index_to_name.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Self(None));
        };
        Self::parse(&text).map_err(|e| LoadError::Invalid(format!("index_to_name.json: {e}")))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let serde_json::Value::Object(map) = value else {
            return Err(
                "index->name JSON mapping should be in \"class\": \"label\" format.".into(),
            );
        };
        if let Some(serde_json::Value::Array(names)) = map.get("object_type_names") {
            return names
                .iter()
                .enumerate()
                .map(|(i, v)| Ok((i.to_string(), label(v)?)))
                .collect::<Result<_, String>>()
                .map(|m| Self(Some(m)));
        }
        map.iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::Array(items) => items.last().unwrap_or(v),
                    _ => v,
                };
                Ok((k.clone(), label(v)?))
            })
            .collect::<Result<_, String>>()
            .map(|m| Self(Some(m)))
    }

    /// The name of a class; a class the mapping lacks is named by its index.
    pub fn name(&self, class: usize) -> Cow<'_, str> {
        let key = class.to_string();
        match self.0.as_ref().and_then(|m| m.get(&key)) {
            Some(name) => Cow::Borrowed(name.as_str()),
            None => Cow::Owned(key),
        }
    }
}

fn label(v: &serde_json::Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| "labels in index->name mapping must be either str or List[str]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_follow_load_label_mapping() {
        let l = Labels::parse(r#"{"0": ["n01440764", "tench"], "1": "goldfish"}"#).unwrap();
        assert_eq!(l.name(0), "tench");
        assert_eq!(l.name(1), "goldfish");
        assert_eq!(l.name(7), "7");
        let l = Labels::parse(r#"{"object_type_names": ["bg", "person"]}"#).unwrap();
        assert_eq!(l.name(1), "person");
        assert_eq!(Labels::default().name(3), "3");
        assert!(Labels::parse(r#"{"0": 5}"#).is_err());
        assert!(Labels::parse(r#"["a"]"#).is_err());
    }
}
