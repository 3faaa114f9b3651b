//! A whole learning job from paths: load θ₀, the fine-tuned checkpoints, heads and data; learn
//! in a run directory; write λ, the merged checkpoint and the log. The CLI's `learn` and the
//! experiment runner both end here.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::batches::{ImageSampler, UnlabeledImages, split_for_adaptation};
use super::learner::{LearnConfig, Learner};
use super::outputs::LearnedLambda;
use super::session::{EvalSet, Outcome, Session};
use crate::checkpoint::{Checkpoint, Replacement, save_merged};
use crate::config::VisionConfig;
use crate::data::Preprocessor;
use crate::error::{Error, Result};
use crate::eval::{EvalTask, HeadSource, TextTower, prepare_task};
use crate::merge::TensorMerge;
use crate::output::{Inputs, LOCK_FILE, RunLock};
use crate::task_vector::{Finetuned, MergeScope, TaskVectors};
use crate::weights::tensor_to_vec;

/// One task of a learning job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobTask {
    /// Task name.
    pub name: String,
    /// Its fine-tuned checkpoint.
    pub checkpoint: PathBuf,
    /// Its labelled test set (ImageFolder or Parquet).
    pub data: PathBuf,
    /// Its head file; zero-shot from the text tower when absent.
    pub head: Option<PathBuf>,
    /// A separate unlabeled folder to adapt on (instead of the test set).
    pub adapt: Option<PathBuf>,
}

/// Where the learner's unlabeled images come from.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Adaptation {
    /// The test images themselves, as the paper does (transductive); or each task's `adapt`
    /// folder where one is given.
    Transductive,
    /// A seeded fraction of each test set; accuracy is scored on the rest (inductive).
    Split(f64),
}

/// Everything a learning job needs.
#[derive(Debug, Clone)]
pub struct Job {
    /// Pretrained checkpoint.
    pub pretrained: PathBuf,
    /// The tasks, in order.
    pub tasks: Vec<JobTask>,
    /// A CLIPModel whose text tower builds zero-shot heads (default: the pretrained one).
    pub heads_from: Option<PathBuf>,
    /// What to learn.
    pub config: LearnConfig,
    /// Adaptation data.
    pub adaptation: Adaptation,
    /// Score every this many steps (besides start and end).
    pub eval_every: usize,
    /// Score at most this many images per task.
    pub eval_limit: Option<usize>,
    /// The run directory.
    pub out: PathBuf,
    /// Write the merged checkpoint (Hugging Face layout) to `out/merged`.
    pub save_merged: bool,
}

impl Job {
    /// Everything the job reads, which its run folder must keep apart from.
    pub fn inputs(&self) -> Inputs {
        let mut inputs = Inputs::new();
        inputs.add("the pretrained checkpoint", &self.pretrained);
        if let Some(dir) = &self.heads_from {
            inputs.add("the text tower (--heads-from)", dir);
        }
        for t in &self.tasks {
            let n = &t.name;
            inputs.add(format!("task `{n}`'s checkpoint"), &t.checkpoint);
            inputs.add(format!("task `{n}`'s data"), &t.data);
            if let Some(head) = &t.head {
                inputs.add(format!("task `{n}`'s head"), head);
            }
            if let Some(adapt) = &t.adapt {
                inputs.add(format!("task `{n}`'s adaptation images"), adapt);
            }
        }
        inputs
    }
}

/// What a finished (or stopped) job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Task names.
    pub tasks: Vec<String>,
    /// Accuracy per task at the initial λ, and at the learned one.
    pub before: Vec<f64>,
    /// Accuracy per task at the learned λ (empty when stopped early).
    pub after: Vec<f64>,
    /// Images scored per task.
    pub scored: Vec<usize>,
    /// The learned coefficients.
    pub lambda: LearnedLambda,
    /// Wall time of the learning steps.
    pub seconds: f64,
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Runs `job` on `device`, resuming from its directory's checkpoint when `resume`. `stop` is
/// polled between steps (set it from a Ctrl-C handler).
pub fn run_job(job: &Job, device: &Device, resume: bool, stop: &AtomicBool) -> Result<JobReport> {
    job.config.validate()?;
    if job.tasks.is_empty() {
        return Err(Error::invalid("--task", "at least one task is needed"));
    }
    job.inputs().check(&job.out)?;
    if resume && !job.out.is_dir() {
        return Err(Error::Output {
            path: job.out.clone(),
            reason: "nothing to resume: no such folder (leave out --resume to start a run here)"
                .into(),
        });
    }
    std::fs::create_dir_all(&job.out).map_err(|e| Error::io(&job.out, e))?;
    let _lock = RunLock::folder(&job.out)?;
    crate::fault::point("run-locked");
    // Checked again under the lock: another writer may have written meanwhile.
    prepare_dir(&job.out, resume)?;
    record_inputs(job, resume)?;
    let finetuned: Vec<Finetuned> = job
        .tasks
        .iter()
        .map(|t| Finetuned {
            name: t.name.clone(),
            path: t.checkpoint.clone(),
        })
        .collect();
    let loading = bar(0, "loading checkpoints [{bar:30}] {percent}% {elapsed}");
    let (tv, _) = TaskVectors::load(
        &job.pretrained,
        &finetuned,
        &MergeScope::default(),
        device,
        &loading,
    )?;
    loading.finish_and_clear();
    let tv = job.config.task_vectors(tv)?;
    let cfg = VisionConfig::of_checkpoint(&Checkpoint::open(&job.pretrained)?)?;
    let pre = Preprocessor::from_dir(&job.pretrained, cfg.image_size)?;

    let text = TextTower::load_if_needed(
        job.tasks.iter().map(|t| t.head.is_none()),
        job.heads_from.as_deref().unwrap_or(&job.pretrained),
        device,
    )?;
    let (eval_tasks, adapt_sets) = prepare_tasks(
        &job.tasks,
        text.as_ref(),
        job.adaptation,
        job.config.seed,
        None,
        job.eval_limit,
        device,
    )?;
    let heads: Vec<Tensor<2>> = eval_tasks.iter().map(|t| t.head.clone()).collect();
    let sampler = ImageSampler::new(
        adapt_sets,
        &pre,
        job.config.batch_size,
        job.config.batches_per_task,
        job.config.seed,
        device,
    )?;
    learn_with(
        job,
        &cfg,
        &tv,
        &heads,
        &eval_tasks,
        &pre,
        &sampler,
        device,
        resume,
        stop,
    )
}

/// Every task's head and labelled test data, and the unlabeled images it adapts on (its
/// `adapt` folder, its test images, or a seeded fraction of them that is then not scored).
pub fn prepare_tasks(
    tasks: &[JobTask],
    text: Option<&TextTower>,
    adaptation: Adaptation,
    seed: u64,
    limit: Option<usize>,
    eval_limit: Option<usize>,
    device: &Device,
) -> Result<(Vec<EvalTask>, Vec<UnlabeledImages>)> {
    let cache = crate::cache::cache_dir().join("heads");
    let mut eval_tasks = Vec::new();
    let mut adapt_sets = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let head = HeadSource::for_task(&t.name, t.head.as_deref(), text, &cache)?;
        let mut task = prepare_task(&t.name, &t.data, head, limit, device)?;
        let adapt = match (adaptation, &t.adapt) {
            (_, Some(dir)) => UnlabeledImages::scan(dir)?,
            (Adaptation::Transductive, None) => UnlabeledImages::from_labeled(&task.data),
            (Adaptation::Split(f), None) => {
                // A different permutation per task, all from the run's seed.
                let seed = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let (adapt, scored) = split_for_adaptation(&task.data, f, seed)?;
                task.data = scored;
                adapt
            }
        };
        if let Some(n) = eval_limit {
            task.data.limit(n);
        }
        eval_tasks.push(task);
        adapt_sets.push(adapt);
    }
    Ok((eval_tasks, adapt_sets))
}

/// Learns over loaded task vectors, heads and data (the experiment runner's entry point),
/// writing the run files into `job.out`.
#[allow(clippy::too_many_arguments)]
pub fn learn_with(
    job: &Job,
    cfg: &VisionConfig,
    tv: &TaskVectors,
    heads: &[Tensor<2>],
    eval_tasks: &[EvalTask],
    pre: &Preprocessor,
    sampler: &ImageSampler<'_>,
    device: &Device,
    resume: bool,
    stop: &AtomicBool,
) -> Result<JobReport> {
    let mut learner = Learner::new(cfg, tv, heads, job.config.clone(), device)?;
    let eval = EvalSet {
        cfg,
        tasks: eval_tasks,
        pre,
        every: job.eval_every,
        batch_size: 64,
        device,
    };
    let initial = learner.merged()?;
    let mut session = Session::new(&mut learner, &job.out)?;
    let done = if resume { session.resume()? } else { 0 };
    // The start is scored (and logged) once; a resumed run scores it again without logging.
    let before = if done == 0 {
        let before = session.evaluate(&eval)?;
        crate::fault::point("started");
        before
    } else {
        eval.score(&initial)?
    };
    drop(initial);
    let progress = bar(
        0,
        "learning λ [{bar:30}] {pos}/{len} steps {msg} {elapsed}<{eta}",
    );
    let start = Instant::now();
    let outcome = session.run(sampler, Some(&eval), &progress, stop)?;
    let last = session.last_eval().to_vec();
    progress.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let lambda = LearnedLambda::from_learner(&learner)?;
    lambda.save(&job.out, "lambda")?;
    let after = if outcome == Outcome::Finished {
        if job.save_merged {
            let merger = learner.merger()?;
            write_merged(&job.pretrained, tv, &merger, &job.out.join("merged"))?;
        }
        if last.is_empty() {
            // Resumed after its last step: nothing ran, so score the learned λ here.
            eval.score(&learner.merged()?)?
        } else {
            last
        }
    } else {
        Vec::new()
    };
    Ok(JobReport {
        outcome,
        tasks: tv.tasks().to_vec(),
        before,
        after,
        scored: eval_tasks.iter().map(|t| t.data.items.len()).collect(),
        lambda,
        seconds,
    })
}

/// Streams a merge into a Hugging Face checkpoint directory (replacing an earlier one).
pub fn write_merged(
    pretrained: &Path,
    tv: &TaskVectors,
    merger: &dyn TensorMerge,
    out: &Path,
) -> Result<PathBuf> {
    let shapes = tv
        .base()
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape.clone()))
        .collect();
    let replacement = Replacement::new(shapes, |name| tensor_to_vec(merger.tensor(name)?));
    save_merged(pretrained, &replacement, out, true)
}

/// What a run learned from (`job.json`): written when it starts, and compared on resume so that
/// a run never continues on other checkpoints, data or adaptation settings.
fn record_inputs(job: &Job, resume: bool) -> Result<()> {
    let mut config = job.config.clone();
    config.steps = 0;
    let inputs = serde_json::json!({
        "pretrained": job.pretrained,
        "tasks": job.tasks,
        "heads_from": job.heads_from,
        "adaptation": job.adaptation,
        "eval_limit": job.eval_limit,
        "config": config,
    });
    let path = job.out.join("job.json");
    // Only a run with a step done has inputs to keep; a folder that never stepped takes new ones.
    if resume && job.out.join(super::session::CHECKPOINT).exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let saved: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            key: "job".into(),
            reason: e.to_string(),
        })?;
        if saved != inputs {
            return Err(Error::Checkpoint {
                path,
                reason: "this run learned from other checkpoints, data or settings; resume \
                         with the same options (only --steps may change)"
                    .into(),
            });
        }
        return Ok(());
    }
    let text =
        serde_json::to_vec_pretty(&inputs).map_err(|e| Error::invalid("job", e.to_string()))?;
    crate::checkpoint::write_atomic(&path, &text)
}

/// What a run writes before its first step: a folder holding only these (and no checkpoint)
/// has nothing to lose, so it is started again as it is, with or without `--resume`.
const START_FILES: [&str; 2] = ["job.json", super::session::LOG];

/// A fresh run needs a new, empty or never-stepped folder; a resume needs a checkpoint or a
/// never-stepped folder (which it starts from step 0). Every refusal says what works instead.
fn prepare_dir(out: &Path, resume: bool) -> Result<()> {
    let mut others = Vec::new();
    let mut has_checkpoint = false;
    if let Ok(entries) = std::fs::read_dir(out) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == super::session::CHECKPOINT {
                has_checkpoint = true;
            } else if name != LOCK_FILE && !START_FILES.contains(&name.as_str()) {
                others.push(name);
            }
        }
    }
    if has_checkpoint {
        if resume {
            return Ok(());
        }
        return Err(Error::Output {
            path: out.to_path_buf(),
            reason: "this folder holds a learning run (pass --resume to continue it, or choose a \
                     new folder)"
                .into(),
        });
    }
    if others.is_empty() {
        return Ok(());
    }
    others.sort();
    Err(Error::Output {
        path: out.to_path_buf(),
        reason: format!(
            "the folder is not empty and holds no learning run to {} ({}); choose a new folder",
            if resume { "resume" } else { "continue" },
            others.join(", ")
        ),
    })
}

/// Accuracy rows as a Markdown table: task, images, before, after.
pub fn report_markdown(r: &JobReport) -> String {
    let mut s = format!(
        "| task | images | {} init (%) | {} (%) |\n|---|--:|--:|--:|\n",
        r.lambda.method, r.lambda.method
    );
    for (i, task) in r.tasks.iter().enumerate() {
        let after = r
            .after
            .get(i)
            .map_or("–".into(), |a| format!("{:.2}", 100.0 * a));
        s += &format!(
            "| {task} | {} | {:.2} | {after} |\n",
            r.scored[i],
            100.0 * r.before[i]
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let after = if r.after.is_empty() {
        "–".into()
    } else {
        format!("**{:.2}**", 100.0 * mean(&r.after))
    };
    s += &format!(
        "| **average** | {} | {:.2} | {after} |\n",
        r.scored.iter().sum::<usize>(),
        100.0 * mean(&r.before)
    );
    s
}
