//! What a built suite shows: the fixed merges and layer-wise AdaMerging scored on its tasks,
//! read from its files exactly as a user's `merge`, `learn` and `eval` would read them.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::adamerging::{
    BatchSource, EvalSet, Granularity, ImageSampler, LearnConfig, Learner, UnlabeledImages,
};
use crate::checkpoint::Checkpoint;
use crate::config::VisionConfig;
use crate::data::{LabeledImages, Preprocessor};
use crate::error::Result;
use crate::eval::EvalTask;
use crate::merge::{MergeMethod, TaskArithmetic, Ties, WeightAverage};
use crate::model::read_head;
use crate::task_vector::{Finetuned, MergeScope, TaskVectors};

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
    let cfg = VisionConfig::of_checkpoint(&Checkpoint::open(&pretrained)?)?;
    let pre = Preprocessor::from_dir(&pretrained, cfg.image_size)?;
    let finetuned: Vec<Finetuned> = tasks
        .iter()
        .map(|t| Finetuned {
            name: t.clone(),
            path: root.join("models").join(t),
        })
        .collect();
    let hidden = ProgressBar::hidden();
    let (tv, _) = TaskVectors::load(
        &pretrained,
        &finetuned,
        &MergeScope::default(),
        device,
        &hidden,
    )?;
    let mut eval_tasks = Vec::new();
    for t in tasks {
        eval_tasks.push(EvalTask {
            name: t.clone(),
            head: read_head(&root.join(format!("heads/{t}.safetensors")), device)?,
            data: LabeledImages::folder(&root.join(format!("data/{t}/test")), None)?,
        });
    }
    let heads: Vec<Tensor<2>> = eval_tasks.iter().map(|t| t.head.clone()).collect();
    let eval = EvalSet {
        cfg: &cfg,
        tasks: &eval_tasks,
        pre: &pre,
        every: 0,
        batch_size: 256,
        device,
    };
    let fixed: Vec<Box<dyn MergeMethod>> = vec![
        Box::new(WeightAverage),
        Box::new(TaskArithmetic::new(0.3)?),
        Box::new(Ties::default()),
    ];
    let mut scores = Vec::new();
    for method in fixed {
        pb.set_message(method.label());
        let start = Instant::now();
        let merged = tv.complete(method.merge(&tv)?);
        let seconds = start.elapsed().as_secs_f64();
        scores.push(MethodScore::new(
            method.label(),
            eval.score(&merged)?,
            seconds,
        ));
        pb.inc(1);
    }
    let config = LearnConfig {
        granularity: Granularity::Layer,
        steps: run.steps,
        lr: run.lr,
        seed,
        ..LearnConfig::default()
    };
    let label = config.label();
    pb.set_message(label.clone());
    let sets = eval_tasks
        .iter()
        .map(|t| UnlabeledImages::from_labeled(&t.data))
        .collect();
    let sampler = ImageSampler::new(sets, &pre, config.batch_size, 1, seed, device)?;
    let start = Instant::now();
    let mut learner = Learner::new(&cfg, &tv, &heads, config, device)?;
    for _ in 0..run.steps {
        let record = learner.step(&sampler as &dyn BatchSource)?;
        pb.set_message(format!("{label}: entropy {:.3}", record.loss));
        pb.inc(1);
    }
    let seconds = start.elapsed().as_secs_f64();
    scores.push(MethodScore::new(
        label,
        eval.score(&learner.merged()?)?,
        seconds,
    ));
    Ok(scores)
}
