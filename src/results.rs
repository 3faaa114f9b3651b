//! What a run measured: one record per (method, seed) as it finishes, and `results.json`, their
//! aggregate over seeds (docs/design.md §7).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::RunDir;
use crate::output::{read_json, write_json};

/// What kind of row a method is in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The pretrained model or the individual fine-tuned models (references, not merges).
    Reference,
    /// A fixed merge.
    Fixed,
    /// A merge computed in one go from unlabeled images (RegMean).
    Data,
    /// A learned merge.
    Learned,
}

/// The unlabeled images a data-based merge read from one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesUsed {
    /// The task.
    pub task: String,
    /// Images read.
    pub count: usize,
    /// Images there were to draw from.
    pub of: usize,
    /// Where they came from: `test` (the scored images, transductive), `adapt` (the task's
    /// `adapt` folder) or `test-split` (the unscored part of a split test set).
    pub from: String,
}

/// One method on one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The method's label (with its hyper-parameters).
    pub method: String,
    /// Its row kind.
    pub role: Role,
    /// The seed.
    pub seed: u64,
    /// Accuracy per task, in task order.
    pub accuracy: Vec<f64>,
    /// Σ_k mean entropy on the adaptation data (fixed and learned merges).
    pub entropy: Option<f64>,
    /// Index of the swept `[[method]]` entry this value belongs to.
    pub sweep: Option<usize>,
    /// Wall time of merging or learning.
    pub seconds: f64,
    /// Learning steps.
    pub steps: Option<usize>,
    /// The learned λ file, relative to the run directory.
    pub lambda: Option<String>,
    /// The images a data-based merge read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImagesUsed>>,
    /// A spectral merge's shared SVD pass on its seed: wall time of every spectral merge's
    /// decompositions together, not in `seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svd_seconds: Option<f64>,
}

/// The records a run has so far (`progress.json`): what `--resume` skips.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Finished (method, seed) records, in the order they finished.
    pub records: Vec<Record>,
    /// What each seed ran on: resolved paths and checkpoint hashes.
    #[serde(default)]
    pub inputs: Vec<serde_json::Value>,
}

impl Progress {
    /// Reads `progress.json` of a run (empty when there is none yet).
    pub fn read(dir: &RunDir) -> Result<Self> {
        let path = dir.progress();
        if !path.exists() {
            return Ok(Self::default());
        }
        read_json(&path)
    }

    /// Writes it atomically.
    pub fn write(&self, dir: &RunDir) -> Result<()> {
        write_json(&dir.progress(), self)
    }

    /// The record of `method` on `seed`, if done.
    pub fn get(&self, method: &str, seed: u64) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.method == method && r.seed == seed)
    }
}

impl MethodResult {
    /// One method's records (one per seed) aggregated: per-task and average mean ± std.
    fn over_seeds(rs: &[&Record], task_names: &[String]) -> Self {
        let k = task_names.len();
        let mut tasks = IndexMap::new();
        let mut tasks_std = IndexMap::new();
        for (t, name) in task_names.iter().enumerate() {
            let v: Vec<f64> = rs.iter().map(|r| r.accuracy[t]).collect();
            let (m, s) = mean_std(&v);
            tasks.insert(name.clone(), m);
            tasks_std.insert(name.clone(), s);
        }
        let per_seed: Vec<f64> = rs
            .iter()
            .map(|r| r.accuracy.iter().sum::<f64>() / k.max(1) as f64)
            .collect();
        let (avg, avg_std) = mean_std(&per_seed);
        let entropies: Vec<f64> = rs.iter().filter_map(|r| r.entropy).collect();
        Self {
            role: rs[0].role,
            tasks,
            tasks_std,
            avg,
            avg_std,
            normalized: None,
            entropy: (!entropies.is_empty()).then(|| mean_std(&entropies).0),
            seconds: mean_std(&rs.iter().map(|r| r.seconds).collect::<Vec<_>>()).0,
            steps: rs[0].steps,
            seeds: rs.iter().map(|r| r.seed).collect(),
            avg_per_seed: per_seed,
            lambda: rs.iter().filter_map(|r| r.lambda.clone()).collect(),
            images: rs.iter().find_map(|r| r.images.clone()),
        }
    }
}

/// Normalized accuracy: the mean over tasks of accuracy / the individual model's; left
/// undefined (a dash in the table) when an individual model scores 0 on some task.
fn normalize(methods: &mut IndexMap<String, MethodResult>) {
    let Some(ind) = methods.get(INDIVIDUAL).map(|m| m.tasks.clone()) else {
        return;
    };
    for m in methods.values_mut() {
        let ratios: Option<Vec<f64>> = m
            .tasks
            .iter()
            .map(|(t, a)| ind.get(t).filter(|&&i| i > 0.0).map(|i| a / i))
            .collect();
        m.normalized = ratios.map(|r| r.iter().sum::<f64>() / r.len().max(1) as f64);
    }
}

/// Each sweep's values with its label-free pick (lowest adaptation entropy) and its oracle
/// (highest test accuracy).
fn sweep_picks(
    methods: &IndexMap<String, MethodResult>,
    records: &[Record],
    sweep_names: &IndexMap<usize, String>,
) -> IndexMap<String, Sweep> {
    let mut sweeps = IndexMap::new();
    for (group, name) in sweep_names {
        let values: Vec<String> = methods
            .keys()
            .filter(|l| {
                records
                    .iter()
                    .any(|r| &r.method == *l && r.sweep == Some(*group))
            })
            .cloned()
            .collect();
        let pick = |key: &dyn Fn(&MethodResult) -> f64| {
            values
                .iter()
                .min_by(|a, b| key(&methods[*a]).total_cmp(&key(&methods[*b])))
                .cloned()
        };
        let (Some(label_free), Some(oracle)) = (
            pick(&|m| m.entropy.unwrap_or(f64::INFINITY)),
            pick(&|m| -m.avg),
        ) else {
            continue;
        };
        sweeps.insert(
            name.clone(),
            Sweep {
                values,
                label_free,
                oracle,
            },
        );
    }
    sweeps
}
/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One method over all seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// Its row kind.
    pub role: Role,
    /// Mean accuracy per task.
    pub tasks: IndexMap<String, f64>,
    /// Standard deviation per task over seeds.
    pub tasks_std: IndexMap<String, f64>,
    /// Mean over tasks (then over seeds).
    pub avg: f64,
    /// Standard deviation of the per-seed averages.
    pub avg_std: f64,
    /// Mean over tasks of accuracy / individual accuracy.
    pub normalized: Option<f64>,
    /// Mean entropy objective on the adaptation data.
    pub entropy: Option<f64>,
    /// Mean wall time.
    pub seconds: f64,
    /// Learning steps.
    pub steps: Option<usize>,
    /// Seeds it ran on.
    pub seeds: Vec<u64>,
    /// Per-seed averages, in `seeds` order.
    pub avg_per_seed: Vec<f64>,
    /// λ files per seed (learned methods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lambda: Vec<String>,
    /// The images a data-based merge read (of its first seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImagesUsed>>,
}

/// A swept fixed method: which value a user would pick without labels, and the oracle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// The labels of its values, in sweep order.
    pub values: Vec<String>,
    /// Lowest entropy on the adaptation data: what a user without labels picks.
    pub label_free: String,
    /// Highest test accuracy: an oracle (it reads test labels).
    pub oracle: String,
}

/// `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The experiment's name.
    pub experiment: String,
    /// Task names, in order.
    pub task_names: Vec<String>,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Every method (a sweep gives one per value), keyed by label, in run order.
    pub methods: IndexMap<String, MethodResult>,
    /// Sweeps, keyed by the swept method's kind.
    pub sweeps: IndexMap<String, Sweep>,
    /// Published numbers (%) from the experiment file.
    #[serde(default)]
    pub paper: IndexMap<String, IndexMap<String, f64>>,
    /// Where and how it ran.
    pub provenance: serde_json::Value,
}

impl Results {
    /// Aggregates per-seed records; `sweep_names` names each sweep group. A record with another
    /// number of accuracies than there are tasks (a run whose `config.toml` was edited) is an
    /// error naming it.
    pub fn aggregate(
        experiment: &str,
        task_names: &[String],
        seeds: &[u64],
        records: &[Record],
        sweep_names: &IndexMap<usize, String>,
        paper: IndexMap<String, IndexMap<String, f64>>,
        provenance: serde_json::Value,
    ) -> Result<Self> {
        if let Some(r) = records
            .iter()
            .find(|r| r.accuracy.len() != task_names.len())
        {
            return Err(Error::invalid(
                format!("the record of `{}` (seed {})", r.method, r.seed),
                format!(
                    "has {} accuracies for the run's {} tasks: its config.toml changed since; \
                     start a new run",
                    r.accuracy.len(),
                    task_names.len()
                ),
            ));
        }
        let mut order: Vec<&str> = Vec::new();
        for r in records {
            if !order.contains(&r.method.as_str()) {
                order.push(&r.method);
            }
        }
        let mut methods: IndexMap<String, MethodResult> = order
            .into_iter()
            .map(|label| {
                let rs: Vec<&Record> = records.iter().filter(|r| r.method == label).collect();
                (label.to_string(), MethodResult::over_seeds(&rs, task_names))
            })
            .collect();
        normalize(&mut methods);
        let sweeps = sweep_picks(&methods, records, sweep_names);
        Ok(Self {
            experiment: experiment.into(),
            task_names: task_names.to_vec(),
            seeds: seeds.to_vec(),
            methods,
            sweeps,
            paper,
            provenance,
        })
    }

    /// Reads `results.json` from a run directory.
    pub fn read(dir: &RunDir) -> Result<Self> {
        read_json(&dir.results())
    }

    /// Writes `results.json` atomically.
    pub fn write(&self, dir: &RunDir) -> Result<()> {
        write_json(&dir.results(), self)
    }
}

/// The label of the pretrained model's row.
pub const PRETRAINED: &str = "pretrained";
/// The label of the individual models' row (each task scored with its own fine-tune).
pub const INDIVIDUAL: &str = "individual";

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(method: &str, seed: u64, acc: [f64; 2], entropy: f64, sweep: Option<usize>) -> Record {
        Record {
            method: method.into(),
            role: if method == INDIVIDUAL {
                Role::Reference
            } else {
                Role::Fixed
            },
            seed,
            accuracy: acc.to_vec(),
            entropy: Some(entropy),
            sweep,
            seconds: 1.0,
            steps: None,
            lambda: None,
            images: None,
            svd_seconds: None,
        }
    }

    #[test]
    fn seeds_average_and_sweeps_pick_by_entropy_and_by_accuracy() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        let records = vec![
            rec(INDIVIDUAL, 0, [1.0, 0.8], 0.0, None),
            rec(INDIVIDUAL, 1, [1.0, 0.8], 0.0, None),
            rec("ta(0.1)", 0, [0.5, 0.4], 1.0, Some(3)),
            rec("ta(0.1)", 1, [0.7, 0.4], 1.2, Some(3)),
            rec("ta(0.5)", 0, [0.9, 0.1], 2.0, Some(3)),
            rec("ta(0.5)", 1, [0.9, 0.3], 2.0, Some(3)),
        ];
        let names = IndexMap::from([(3usize, "ta".to_string())]);
        let r = Results::aggregate(
            "x",
            &tasks,
            &[0, 1],
            &records,
            &names,
            IndexMap::new(),
            serde_json::Value::Null,
        )
        .unwrap();
        let m = &r.methods["ta(0.1)"];
        assert!((m.tasks["a"] - 0.6).abs() < 1e-12);
        assert!((m.tasks_std["a"] - 0.02f64.sqrt()).abs() < 1e-12);
        assert!((m.avg - 0.5).abs() < 1e-12);
        assert!((m.normalized.unwrap() - (0.6 / 1.0 + 0.4 / 0.8) / 2.0).abs() < 1e-12);
        let s = &r.sweeps["ta"];
        assert_eq!(s.values, ["ta(0.1)", "ta(0.5)"]);
        assert_eq!(s.label_free, "ta(0.1)");
        assert_eq!(s.oracle, "ta(0.5)");
    }

    #[test]
    fn normalized_accuracy_is_undefined_where_an_individual_model_scores_zero() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        let records = vec![
            rec(INDIVIDUAL, 0, [1.0, 0.0], 0.0, None),
            rec("ta", 0, [0.5, 0.4], 1.0, None),
        ];
        let r = Results::aggregate(
            "x",
            &tasks,
            &[0],
            &records,
            &IndexMap::new(),
            IndexMap::new(),
            serde_json::Value::Null,
        )
        .unwrap();
        assert_eq!(r.methods["ta"].normalized, None);
        assert_eq!(r.methods[INDIVIDUAL].normalized, None);
    }
}
