//! Experiment files (docs/design.md §7): TOML read with serde, every key checked. An error names the
//! file and the key path (`method[2].lambda`); paths are resolved relative to the file, and a
//! `suite:` prefix points into the built-in suite.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::method::{Built, Method, Params, Source};
use crate::suite::Size;
use crate::task_vector::VectorDtype;

/// One experiment file, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name: the run directory is `runs/<name>/<timestamp>`.
    pub name: String,
    /// Seeds; several give mean ± std. With `suite:` paths each seed uses the suite built from
    /// it, unless `suite.seed` pins one.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Backend: cpu, ndarray or wgpu (the CLI's `--device` overrides it).
    pub device: Option<String>,
    /// The type task vectors are held in: f32, bf16 (CPU) or f16 (wgpu); `--tau-dtype`
    /// overrides it.
    #[serde(default, skip_serializing_if = "VectorDtype::is_f32")]
    pub tau_dtype: VectorDtype,
    /// Score learned methods every this many steps (besides start and end); 0: only those.
    #[serde(default)]
    pub eval_every: usize,
    /// Score at most this many test images per task (default: all).
    pub eval_limit: Option<usize>,
    /// Read at most this many images per task, for scoring and adaptation alike (default: all):
    /// a quick end-to-end run, not a measurement.
    pub limit: Option<usize>,
    /// Where learned methods take their unlabeled images from.
    #[serde(default)]
    pub adaptation: AdaptationSpec,
    /// The built-in suite that `suite:` paths point into.
    #[serde(default)]
    pub suite: SuiteRef,
    /// The pretrained model.
    pub model: ModelSpec,
    /// The tasks, in order.
    #[serde(rename = "task")]
    pub tasks: Vec<TaskEntry>,
    /// The methods, in order.
    #[serde(rename = "method")]
    pub methods: Vec<MethodEntry>,
    /// Published numbers (%) to show beside ours: row label → task name (or `avg`) → accuracy.
    #[serde(default)]
    pub paper: indexmap::IndexMap<String, indexmap::IndexMap<String, f64>>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// Which built suite `suite:` paths mean.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteRef {
    /// Its size (full or tiny).
    #[serde(default)]
    pub size: Size,
    /// One suite seed for every run seed (default: each run seed's own suite).
    pub seed: Option<u64>,
}

/// Adaptation data of learned methods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptationSpec {
    /// Learn on this seeded fraction of each test set and score on the rest; absent: learn on
    /// the test images themselves, as the paper does (or on a task's `adapt` folder).
    pub fraction: Option<f64>,
}

/// The pretrained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A Hugging Face CLIP directory.
    pub pretrained: String,
    /// A CLIPModel whose text tower builds zero-shot heads (default: the pretrained one).
    pub heads_from: Option<String>,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEntry {
    /// Task name (a column of the table).
    pub name: String,
    /// Its fine-tuned checkpoint directory.
    pub checkpoint: String,
    /// Its labelled test set (ImageFolder or Parquet).
    pub data: String,
    /// A head file (`weight` [C, P]); absent: zero-shot from the text tower.
    pub head: Option<String>,
    /// A separate folder of unlabeled images to adapt on.
    pub adapt: Option<String>,
}

/// One `[[method]]` entry, as written: the method's name and its parameters, read and checked
/// against the method's declaration in the registry (a list sweeps a sweepable parameter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodEntry {
    /// The method's name in the registry (`ties`, `adamerging`).
    pub kind: String,
    /// Its parameters, as written.
    #[serde(flatten)]
    pub params: toml::Table,
}

/// A method ready to run: one value of a sweep, or one learned configuration.
pub struct Planned {
    /// The method.
    pub method: &'static dyn Method,
    /// Its checked values.
    pub params: Params,
    /// The method built from them.
    pub built: Built,
    /// Index of the `[[method]]` entry when it sweeps a parameter.
    pub sweep: Option<usize>,
}

impl MethodEntry {
    /// The method this entry names; `at` is its index, for error messages.
    pub fn method(&self, at: usize) -> Result<&'static dyn Method> {
        crate::method::find(&self.kind, &Source::File { index: at }.method_key())
    }

    /// The runs of this entry; `at` is its index, for error messages and sweep groups.
    pub fn plan(&self, at: usize) -> Result<Vec<Planned>> {
        let method = self.method(at)?;
        let all = crate::method::params::from_toml(method, &self.params, at)?;
        let sweep = (all.len() > 1).then_some(at);
        all.into_iter()
            .map(|params| {
                // Building checks every value now, before anything runs.
                let built = method.build(&params)?;
                Ok(Planned {
                    method,
                    params,
                    built,
                    sweep,
                })
            })
            .collect()
    }
}

impl Experiment {
    /// Reads and checks an experiment file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses and checks experiment text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config_error = |key: String, reason: String| Error::Config {
            path: path.to_path_buf(),
            key,
            reason,
        };
        // TOML errors say where: line and column (1-based) of the offending text.
        let located = |e: &toml::de::Error| match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
                format!("line {line}, column {column}: {}", e.message())
            }
            None => e.message().to_string(),
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| config_error("<syntax>".into(), located(&e)))?;
        let exp: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                root if root == "." => "<root>".to_string(),
                key => key,
            };
            config_error(key, located(&e.into_inner()))
        })?;
        exp.check().map_err(|e| match e {
            Error::InvalidArgument { name, reason } => config_error(name, reason),
            other => other,
        })?;
        Ok(exp)
    }

    fn check(&self) -> Result<()> {
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return Err(Error::invalid("name", "must be a plain folder name"));
        }
        if self.seeds.is_empty() {
            return Err(Error::invalid("seeds", "at least one seed is needed"));
        }
        if self.tasks.is_empty() {
            return Err(Error::invalid("task", "at least one [[task]] is needed"));
        }
        if self.methods.is_empty() {
            return Err(Error::invalid(
                "method",
                "at least one [[method]] is needed",
            ));
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if self.tasks[..i].iter().any(|o| o.name == t.name) {
                return Err(Error::invalid(
                    format!("task[{i}].name"),
                    format!("`{}` is given twice", t.name),
                ));
            }
        }
        if let Some(f) = self.adaptation.fraction
            && !(f > 0.0 && f < 1.0)
        {
            return Err(Error::invalid(
                "adaptation.fraction",
                format!("{f} is not in (0, 1)"),
            ));
        }
        if let Some(d) = &self.device {
            d.parse::<crate::device::Backend>().map_err(|_| {
                Error::invalid("device", format!("`{d}` is not cpu, ndarray or wgpu"))
            })?;
        }
        if self.eval_limit == Some(0) {
            return Err(Error::invalid("eval_limit", "must be at least 1"));
        }
        if self.limit == Some(0) {
            return Err(Error::invalid("limit", "must be at least 1"));
        }
        self.plan().map(|_| ())
    }

    /// Every method run, in file order (a sweep expanded).
    pub fn plan(&self) -> Result<Vec<Planned>> {
        let mut out = Vec::new();
        for (i, m) in self.methods.iter().enumerate() {
            for planned in m.plan(i)? {
                planned.params.check_tasks(self.tasks.len())?;
                out.push(planned);
            }
        }
        Ok(out)
    }

    /// Every path of the file with its key, as written (`model.pretrained`, `task[2].data`).
    pub fn paths(&self) -> Vec<(String, &str)> {
        let mut out = vec![(
            "model.pretrained".to_string(),
            self.model.pretrained.as_str(),
        )];
        if let Some(p) = &self.model.heads_from {
            out.push(("model.heads_from".into(), p.as_str()));
        }
        for (i, t) in self.tasks.iter().enumerate() {
            out.push((format!("task[{i}].checkpoint"), t.checkpoint.as_str()));
            out.push((format!("task[{i}].data"), t.data.as_str()));
            if let Some(p) = &t.head {
                out.push((format!("task[{i}].head"), p.as_str()));
            }
            if let Some(p) = &t.adapt {
                out.push((format!("task[{i}].adapt"), p.as_str()));
            }
        }
        out
    }

    /// Whether any path points into the built-in suite.
    pub fn uses_suite(&self) -> bool {
        self.paths()
            .iter()
            .any(|(_, p)| p.starts_with(SUITE_PREFIX))
    }
}

/// The prefix of paths into the built-in suite.
pub const SUITE_PREFIX: &str = "suite:";

/// Resolves a path of an experiment file: `suite:` into `suite_root`, a relative one against
/// the file's folder.
pub fn resolve(path: &str, experiment_dir: &Path, suite_root: Option<&Path>) -> Result<PathBuf> {
    if let Some(rest) = path.strip_prefix(SUITE_PREFIX) {
        let root = suite_root.ok_or_else(|| {
            Error::invalid(
                path,
                "a suite: path, but no suite was prepared for this run",
            )
        })?;
        return Ok(root.join(rest.trim_start_matches('/')));
    }
    let expanded = expand_env(path)?;
    let p = PathBuf::from(expanded);
    Ok(if p.is_absolute() {
        p
    } else {
        experiment_dir.join(p)
    })
}

/// Expands `${VAR}` (so paper experiments can point at a data root the user sets).
fn expand_env(path: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| Error::invalid(path, "an unclosed `${`"))?;
        let var = &after[..end];
        let value = std::env::var(var).map_err(|_| {
            Error::invalid(
                path,
                format!("uses ${{{var}}}, which is not set in the environment"),
            )
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
seeds = [0, 1]
[model]
pretrained = "suite:models/pretrained"
[[task]]
name = "a"
checkpoint = "suite:models/a"
data = "suite:data/a/test"
head = "suite:heads/a.safetensors"
[[method]]
kind = "task-arithmetic"
lambda = [0.1, 0.3]
[[method]]
kind = "adamerging"
granularity = "layer"
steps = 5
"#;

    fn err(text: &str) -> String {
        Experiment::parse(text, Path::new("x.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_file_plans_a_sweep_and_a_learned_method() {
        let e = Experiment::parse(GOOD, Path::new("x.toml")).unwrap();
        let plan = e.plan().unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].sweep, Some(0));
        assert_eq!(plan[0].built.label(), "task-arithmetic(lambda=0.1)");
        assert!(matches!(&plan[2].built, Built::Learned(c) if c.steps == 5));
        assert!(e.uses_suite());
    }

    #[test]
    fn errors_name_the_file_and_key_path() {
        let unknown = err(&GOOD.replace("steps = 5", "steps = 5\nstpes = 3"));
        assert!(
            unknown.contains("x.toml") && unknown.contains("method[1]"),
            "{unknown}"
        );
        assert!(unknown.contains("stpes"), "{unknown}");
        let typed = err(&GOOD.replace("steps = 5", "steps = \"five\""));
        assert!(typed.contains("method[1].steps"), "{typed}");
        let value = err(&GOOD.replace("[0.1, 0.3]", "[0.1, 20.0]"));
        assert!(value.contains("method[0].lambda"), "{value}");
        let misplaced = err(&GOOD.replace("lambda = [0.1, 0.3]", "steps = 3"));
        assert!(misplaced.contains("method[0].steps"), "{misplaced}");
        let learned = err(&GOOD.replace("steps = 5", "lr = 0.0"));
        assert!(learned.contains("method[1].lr"), "{learned}");
        let fraction = err(&format!("{GOOD}\n[adaptation]\nfraction = 1.5\n"));
        assert!(fraction.contains("adaptation.fraction"), "{fraction}");
    }

    #[test]
    fn paths_resolve_against_the_file_the_suite_and_the_environment() {
        let dir = Path::new("/exp");
        assert_eq!(
            resolve("a/b", dir, None).unwrap(),
            PathBuf::from("/exp/a/b")
        );
        assert_eq!(resolve("/a", dir, None).unwrap(), PathBuf::from("/a"));
        let s = Path::new("/cache/suite");
        assert_eq!(
            resolve("suite:models/x", dir, Some(s)).unwrap(),
            PathBuf::from("/cache/suite/models/x")
        );
        assert!(resolve("suite:x", dir, None).is_err());
        let missing = resolve("${ADAMERGE_SURELY_UNSET_VAR}/x", dir, None).unwrap_err();
        assert!(missing.to_string().contains("ADAMERGE_SURELY_UNSET_VAR"));
    }
}
