//! The folders adamerge writes runs into, every file name in one place: a learning run's
//! folder (`learn --out`, and each learned method inside an experiment run) and an experiment
//! run's folder (`runs/<experiment>/<timestamp>/`).

use std::path::{Path, PathBuf};

/// A learning run's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnDir(PathBuf);

impl LearnDir {
    /// The inputs a run learned from, compared on resume.
    pub const JOB: &'static str = "job.json";
    /// The JSON-lines log of steps and evaluations.
    pub const LOG: &'static str = "log.jsonl";
    /// λ, Adam's state and the steps done, rewritten after every step.
    pub const CHECKPOINT: &'static str = "checkpoint.safetensors";
    /// The stem of the learned λ files (`lambda.json`, `lambda.safetensors`).
    pub const LAMBDA: &'static str = "lambda";
    /// The merged checkpoint.
    pub const MERGED: &'static str = "merged";
    /// What a run writes before its first step: a folder holding only these (and no
    /// checkpoint) has nothing to lose.
    pub const START_FILES: [&'static str; 2] = [Self::JOB, Self::LOG];

    /// The folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }
    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// `job.json`.
    pub fn job(&self) -> PathBuf {
        self.0.join(Self::JOB)
    }
    /// `log.jsonl`.
    pub fn log(&self) -> PathBuf {
        self.0.join(Self::LOG)
    }
    /// `checkpoint.safetensors`.
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join(Self::CHECKPOINT)
    }
    /// `lambda.json`.
    pub fn lambda_json(&self) -> PathBuf {
        self.0.join(format!("{}.json", Self::LAMBDA))
    }
    /// `merged/`.
    pub fn merged(&self) -> PathBuf {
        self.0.join(Self::MERGED)
    }
}

/// An experiment run's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The experiment file as the run read it (its defaults and overrides filled in).
    pub const CONFIG: &'static str = "config.toml";
    /// Where the run came from (the experiment file's folder, which relative paths start
    /// from).
    pub const ORIGIN: &'static str = "run.json";
    /// The run's event log.
    pub const LOG: &'static str = "log.jsonl";
    /// Finished (method, seed) records: what a resumed run skips.
    pub const PROGRESS: &'static str = "progress.json";
    /// The aggregated results.
    pub const RESULTS: &'static str = "results.json";
    /// The results as a Markdown table.
    pub const TABLE: &'static str = "table.md";
    /// The plots.
    pub const PLOTS: &'static str = "plots";
    /// Each learned method's learning folder, per seed.
    pub const LEARNED: &'static str = "learned";
    /// Each learned method's λ, per seed.
    pub const LAMBDA: &'static str = "lambda";

    /// The folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }
    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join(Self::CONFIG)
    }
    /// `run.json`.
    pub fn origin(&self) -> PathBuf {
        self.0.join(Self::ORIGIN)
    }
    /// `log.jsonl`.
    pub fn log(&self) -> PathBuf {
        self.0.join(Self::LOG)
    }
    /// `progress.json`.
    pub fn progress(&self) -> PathBuf {
        self.0.join(Self::PROGRESS)
    }
    /// `results.json`.
    pub fn results(&self) -> PathBuf {
        self.0.join(Self::RESULTS)
    }
    /// `table.md`.
    pub fn table(&self) -> PathBuf {
        self.0.join(Self::TABLE)
    }
    /// `plots/`.
    pub fn plots(&self) -> PathBuf {
        self.0.join(Self::PLOTS)
    }
    /// The stem of a method's files on one seed: `<slug of its label>-seed<seed>`.
    pub fn stem(label: &str, seed: u64) -> String {
        format!("{}-seed{seed}", slug(label))
    }
    /// `learned/<stem>/`: a learned method's learning folder on one seed.
    pub fn learned(&self, label: &str, seed: u64) -> LearnDir {
        LearnDir::new(self.0.join(Self::LEARNED).join(Self::stem(label, seed)))
    }
    /// `lambda/`.
    pub fn lambda_dir(&self) -> PathBuf {
        self.0.join(Self::LAMBDA)
    }
    /// `lambda/<stem>.safetensors` relative to the run folder, as results record it.
    pub fn lambda_file(label: &str, seed: u64) -> String {
        format!("{}/{}.safetensors", Self::LAMBDA, Self::stem(label, seed))
    }
}

/// A file-name-safe form of a label.
pub fn slug(label: &str) -> String {
    // `++` must survive: AdaMerging++ and AdaMerging would share a folder otherwise.
    let mut s: String = label
        .replace("++", "pp")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names_and_keep_methods_apart() {
        assert_eq!(
            slug("adamerging(layer)[steps=200,lr=0.01]"),
            "adamerging-layer-steps-200-lr-0.01"
        );
        assert_eq!(slug("adamerging++(layer)"), "adamergingpp-layer");
        assert_ne!(slug("adamerging++(task)"), slug("adamerging(task)"));
    }
}
