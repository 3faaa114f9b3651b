//! An experiment's paths: resolved against the file's folder, the environment and the built-in
//! suite, for every seed, with every problem reported at once and by its key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::config::{Experiment, SUITE_PREFIX, resolve};
use crate::error::{Error, Result};
use crate::pipeline::TaskPaths;
use crate::suite::{SuiteSpec, provides, suite_dir};

/// The folder an experiment file's relative paths start from (its own folder).
pub fn experiment_dir(file: &Path) -> Result<PathBuf> {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.canonicalize().map_err(|e| Error::io(file, e))
}

/// Where seed `seed`'s suite is or will be, when the experiment uses the suite.
pub fn suite_root(exp: &Experiment, seed: u64) -> Option<PathBuf> {
    exp.uses_suite().then(|| {
        suite_dir(&SuiteSpec {
            seed: exp.suite.seed.unwrap_or(seed),
            size: exp.suite.size,
        })
    })
}

/// The models and tasks of one seed, resolved (`suite:` paths into `suite`).
pub struct SeedPaths {
    /// The pretrained checkpoint.
    pub pretrained: PathBuf,
    /// The text tower for zero-shot heads, when not the pretrained one.
    pub heads_from: Option<PathBuf>,
    /// The tasks.
    pub tasks: Vec<TaskPaths>,
}

/// Resolves the models and tasks against `dir` (the experiment's folder) and `suite`.
pub fn seed_paths(exp: &Experiment, dir: &Path, suite: Option<&Path>) -> Result<SeedPaths> {
    let r = |p: &str| resolve(p, dir, suite);
    let tasks = exp
        .tasks
        .iter()
        .map(|t| {
            Ok(TaskPaths {
                name: t.name.clone(),
                checkpoint: r(&t.checkpoint)?,
                data: r(&t.data)?,
                head: t.head.as_deref().map(r).transpose()?,
                adapt: t.adapt.as_deref().map(r).transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SeedPaths {
        pretrained: r(&exp.model.pretrained)?,
        heads_from: exp.model.heads_from.as_deref().map(r).transpose()?,
        tasks,
    })
}

/// Every path of every seed, resolved, with its key, and a line for each that does not
/// resolve (an unset variable).
fn resolve_all(exp: &Experiment, dir: &Path) -> (Vec<(String, PathBuf)>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for &seed in &exp.seeds {
        let suite = suite_root(exp, seed);
        for (key, raw) in exp.paths() {
            match resolve(raw, dir, suite.as_deref()) {
                Ok(p) => out.push((key, p)),
                Err(e) => problems.push(format!("`{key}`: {}", reason_of(e))),
            }
        }
    }
    (out, problems)
}

/// Every path of the experiment, resolved; unset variables are one error naming every key.
pub fn resolved(exp: &Experiment, dir: &Path, file: &Path) -> Result<Vec<(String, PathBuf)>> {
    let (paths, problems) = resolve_all(exp, dir);
    or_problems(paths, problems, file)
}

/// Every path of the experiment, resolved and present (a `suite:` path in the built suite, or
/// among what a build writes); the error lists every key that does not resolve or names
/// nothing.
pub fn existing(exp: &Experiment, dir: &Path, file: &Path) -> Result<Vec<(String, PathBuf)>> {
    let (paths, mut problems) = resolve_all(exp, dir);
    let raw: std::collections::HashMap<String, &str> = exp.paths().into_iter().collect();
    for (key, p) in &paths {
        let written = raw[key.as_str()];
        let text = p.to_string_lossy();
        let found = match written.strip_prefix(SUITE_PREFIX) {
            // A suite not built yet will hold exactly what a build writes.
            Some(rel) if !p.exists() => {
                !p.ancestors().any(|a| a.join("suite.json").is_file()) && provides(rel)
            }
            _ if text.contains(['*', '?', '[']) => {
                glob::glob(&text).is_ok_and(|mut m| m.next().is_some())
            }
            _ => p.exists(),
        };
        if !found {
            problems.push(format!("`{key}`: {} does not exist", p.display()));
        }
    }
    or_problems(paths, problems, file)
}

/// Fails listing every problem (each once), or passes `value` on.
fn or_problems<T>(value: T, mut problems: Vec<String>, file: &Path) -> Result<T> {
    let mut seen = HashSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(Error::Problems {
            path: file.to_path_buf(),
            problems,
        })
    }
}

/// The reason of an argument error, without its name (the caller names the key).
fn reason_of(e: Error) -> String {
    match e {
        Error::InvalidArgument { reason, .. } => reason,
        other => other.to_string(),
    }
}
