//! The paper's eight tasks: class names, prompt templates and ImageFolder folder names, from
//! `datasets/<task>.toml` (compiled into the binary so it runs from any directory).

use serde::Deserialize;

use crate::error::{Error, Result};

/// Class names and zero-shot templates of a classification task.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskClasses {
    /// Task name (lower case).
    pub name: String,
    /// Class names in label order.
    pub classnames: Vec<String>,
    /// Templates with one `{}` for the class name.
    pub templates: Vec<String>,
    /// ImageFolder folder names in label order, where they differ from sorted class names.
    #[serde(default)]
    pub folders: Option<Vec<String>>,
}

const BUILTIN: [(&str, &str); 8] = [
    ("sun397", include_str!("../../datasets/sun397.toml")),
    ("cars", include_str!("../../datasets/cars.toml")),
    ("resisc45", include_str!("../../datasets/resisc45.toml")),
    ("eurosat", include_str!("../../datasets/eurosat.toml")),
    ("svhn", include_str!("../../datasets/svhn.toml")),
    ("gtsrb", include_str!("../../datasets/gtsrb.toml")),
    ("mnist", include_str!("../../datasets/mnist.toml")),
    ("dtd", include_str!("../../datasets/dtd.toml")),
];

impl TaskClasses {
    /// The built-in spec of a paper task (case-insensitive), if `name` is one.
    pub fn builtin(name: &str) -> Result<Option<Self>> {
        let lower = name.to_ascii_lowercase();
        let Some((file, text)) = BUILTIN.iter().find(|(n, _)| *n == lower) else {
            return Ok(None);
        };
        let spec: Self = toml::from_str(text).map_err(|e| Error::Config {
            path: format!("datasets/{file}.toml").into(),
            key: "<root>".into(),
            reason: e.to_string(),
        })?;
        Ok(Some(spec))
    }

    /// A spec for a task that is not built in: class names from folder names (underscores as
    /// spaces), the plain CLIP template.
    pub fn from_folders(name: &str, folders: &[String]) -> Self {
        Self {
            name: name.to_string(),
            classnames: folders.iter().map(|f| f.replace('_', " ")).collect(),
            templates: vec!["a photo of a {}.".into()],
            folders: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_task_parses_with_the_paper_class_counts() {
        for (name, classes) in [
            ("sun397", 397),
            ("cars", 196),
            ("resisc45", 45),
            ("eurosat", 10),
            ("svhn", 10),
            ("gtsrb", 43),
            ("mnist", 10),
            ("dtd", 47),
        ] {
            let spec = TaskClasses::builtin(name).unwrap().unwrap();
            assert_eq!(spec.classnames.len(), classes, "{name}");
            assert!(
                spec.templates.iter().all(|t| t.matches("{}").count() == 1),
                "{name}"
            );
            if let Some(f) = &spec.folders {
                assert_eq!(f.len(), classes, "{name} folders");
            }
        }
        assert!(TaskClasses::builtin("EuroSAT").unwrap().is_some());
        assert!(TaskClasses::builtin("imagenet").unwrap().is_none());
    }
}
