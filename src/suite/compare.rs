//! What a built suite shows: the fixed merges and layer-wise AdaMerging scored on its tasks,
//! read from its files exactly as a user's `merge`, `learn` and `eval` would read them.

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::adamerging::{BatchSource, Granularity, LearnConfig, Learner, sampler_for};
use crate::error::Result;
use crate::eval::EvalSet;
use crate::merge::{MergeMethod, TaskArithmetic, Ties, WeightAverage};
use crate::pipeline::{Adaptation, LoadSpec, Loaded, TaskPaths};

/// One method's test accuracy on every task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodScore {
    /// The method with its hyper-parameters.
    pub method: String,
    /// Top-1 accuracy per task, in the suite's task order.
    pub accuracy: Vec<f64>,
    /// Mean over tasks.
    pub average: f64,
    /// Wall time (merging or learning, not scoring).
    pub seconds: f64,
}

impl MethodScore {
    fn new(method: String, accuracy: Vec<f64>, seconds: f64) -> Self {
        let average = accuracy.iter().sum::<f64>() / accuracy.len().max(1) as f64;
        Self {
            method,
            accuracy,
            average,
            seconds,
        }
    }
}

/// How layer-wise AdaMerging runs in the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaMergingRun {
    /// Adam steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
}

/// Scores weight averaging, Task Arithmetic (λ = 0.3), TIES (top 20 %, λ = 1) and layer-wise
/// AdaMerging (transductive, on each task's unlabeled test images) on the suite in `root`.
pub fn compare(
    root: &Path,
    tasks: &[String],
    run: &AdaMergingRun,
    seed: u64,
    device: &Device,
    pb: &ProgressBar,
) -> Result<Vec<MethodScore>> {
    let pretrained = root.join("models/pretrained");
    let paths: Vec<TaskPaths> = tasks
        .iter()
        .map(|t| TaskPaths {
            name: t.clone(),
            checkpoint: root.join("models").join(t),
            data: root.join(format!("data/{t}/test")),
            head: Some(root.join(format!("heads/{t}.safetensors"))),
            adapt: None,
        })
        .collect();
    let spec = LoadSpec {
        pretrained: &pretrained,
        tasks: &paths,
        heads_from: None,
        adaptation: Adaptation::Transductive,
        seed,
        limit: None,
        eval_limit: None,
        tau_dtype: Default::default(),
    };
    let loaded = crate::pipeline::load(&spec, device, &ProgressBar::hidden())?;
    let eval = EvalSet {
        cfg: &loaded.cfg,
        tasks: &loaded.eval_tasks,
        pre: &loaded.pre,
        every: 0,
        batch_size: 256,
        device,
    };
    let mut scores = fixed_scores(&loaded, &eval, pb)?;
    scores.push(adamerging_score(&loaded, &eval, run, seed, device, pb)?);
    Ok(scores)
}

/// Weight averaging, Task Arithmetic (λ = 0.3) and TIES (top 20 %, λ = 1), scored.
fn fixed_scores(loaded: &Loaded, eval: &EvalSet<'_>, pb: &ProgressBar) -> Result<Vec<MethodScore>> {
    let fixed: Vec<Box<dyn MergeMethod>> = vec![
        Box::new(WeightAverage),
        Box::new(TaskArithmetic::new(0.3)?),
        Box::new(Ties::default()),
    ];
    let mut scores = Vec::new();
    for method in fixed {
        pb.set_message(method.label());
        let start = Instant::now();
        let merged = loaded.tv.complete(method.merge(&loaded.tv)?);
        let seconds = start.elapsed().as_secs_f64();
        scores.push(MethodScore::new(
            method.label(),
            eval.score(&merged)?,
            seconds,
        ));
        pb.inc(1);
    }
    Ok(scores)
}

/// Layer-wise AdaMerging (transductive, on each task's unlabeled test images), scored.
fn adamerging_score(
    loaded: &Loaded,
    eval: &EvalSet<'_>,
    run: &AdaMergingRun,
    seed: u64,
    device: &Device,
    pb: &ProgressBar,
) -> Result<MethodScore> {
    let config = LearnConfig {
        granularity: Granularity::Layer,
        steps: run.steps,
        lr: run.lr,
        seed,
        ..LearnConfig::default()
    };
    let label = config.label();
    pb.set_message(label.clone());
    let sampler = sampler_for(loaded, &config, device)?;
    let start = Instant::now();
    let heads = loaded.heads();
    let mut learner = Learner::new(&loaded.cfg, &loaded.tv, &heads, config, device)?;
    for _ in 0..run.steps {
        let record = learner.step(&sampler as &dyn BatchSource)?;
        pb.set_message(format!("{label}: entropy {:.3}", record.loss));
        pb.inc(1);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(MethodScore::new(
        label,
        eval.score(&learner.merged()?)?,
        seconds,
    ))
}
