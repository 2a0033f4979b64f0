//! `index_to_name.json` read by TorchServe's `load_label_mapping` rules: `{"0": "name"}`,
//! list values keep their last element (ImageNet's `["n01440764", "tench"]`), an
//! `object_type_names` list numbers its names from 0; without the file a class is named by
//! its index.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::archive::ModelArchive;
use crate::error::LoadError;

/// The names by class index. TorchServe looks a class up as `mapping[str(class)]`, so only
/// keys spelled as Python spells an index (`"7"`, not `"07"`) can ever name one.
#[derive(Debug, Default, Clone)]
pub struct Labels(Option<HashMap<usize, String>>);

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
                .map(|(i, v)| Ok((i, label(v)?)))
                .collect::<Result<_, String>>()
                .map(|m| Self(Some(m)));
        }
        let mut names = HashMap::new();
        for (k, v) in &map {
            let v = match v {
                serde_json::Value::Array(items) => items.last().unwrap_or(v),
                _ => v,
            };
            // Every value is checked, as TorchServe does, even under a key no class reaches.
            let name = label(v)?;
            if let Some(class) = k.parse::<usize>().ok().filter(|c| c.to_string() == *k) {
                names.insert(class, name);
            }
        }
        Ok(Self(Some(names)))
    }

    /// The name of a class; a class the mapping lacks is named by its index.
    pub fn name(&self, class: usize) -> Cow<'_, str> {
        match self.0.as_ref().and_then(|m| m.get(&class)) {
            Some(name) => Cow::Borrowed(name.as_str()),
            None => Cow::Owned(class.to_string()),
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
        assert_eq!(Labels::parse(r#"{"07": "x"}"#).unwrap().name(7), "7");
        assert!(Labels::parse(r#"{"0": 5}"#).is_err());
        assert!(Labels::parse(r#"["a"]"#).is_err());
    }
}
