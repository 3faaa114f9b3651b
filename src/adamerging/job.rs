//! A whole learning run: the `learn` command's job (load through the pipeline, learn in a run
//! folder, write λ, the merged checkpoint and the log) and the learning session the
//! experiment runner also uses.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::Device;

use super::batches::ImageSampler;
use super::learner::{LearnConfig, Learner};
use super::outputs::LearnedLambda;
use super::session::{Outcome, Session};
use crate::checkpoint::{Replacement, save_merged};
use crate::error::{Error, Result};
use crate::eval::EvalSet;
use crate::layout::LearnDir;
use crate::merge::TensorMerge;
use crate::output::{LOCK_FILE, RunLock};
use crate::pipeline::{Adaptation, LoadSpec, Loaded, TaskPaths};
use crate::progress;
use crate::task_vector::{TaskVectors, VectorDtype};
use crate::weights::tensor_to_vec;

/// How one learning session runs in its folder.
#[derive(Debug, Clone)]
pub struct LearnOptions {
    /// What is learned and how.
    pub config: LearnConfig,
    /// Score every this many steps (besides start and end).
    pub eval_every: usize,
    /// The run folder.
    pub dir: LearnDir,
    /// Write the merged checkpoint (Hugging Face layout) to `merged/`.
    pub save_merged: bool,
}

/// The `learn` command's job: its inputs and its session.
#[derive(Debug, Clone)]
pub struct Job {
    /// Pretrained checkpoint.
    pub pretrained: PathBuf,
    /// The tasks, in order.
    pub tasks: Vec<TaskPaths>,
    /// A CLIPModel whose text tower builds zero-shot heads (default: the pretrained one).
    pub heads_from: Option<PathBuf>,
    /// Adaptation data.
    pub adaptation: Adaptation,
    /// Score at most this many images per task.
    pub eval_limit: Option<usize>,
    /// The type the task vectors are held in.
    pub tau_dtype: VectorDtype,
    /// The session.
    pub options: LearnOptions,
}

impl Job {
    /// What the pipeline loads for it.
    pub fn load_spec(&self) -> LoadSpec<'_> {
        LoadSpec {
            pretrained: &self.pretrained,
            tasks: &self.tasks,
            heads_from: self.heads_from.as_deref(),
            adaptation: self.adaptation,
            seed: self.options.config.seed,
            limit: None,
            eval_limit: self.eval_limit,
            tau_dtype: self.tau_dtype,
        }
    }
}

/// What a finished (or stopped) session reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Task names.
    pub tasks: Vec<String>,
    /// Accuracy per task at the initial λ.
    pub before: Vec<f64>,
    /// Accuracy per task at the learned λ (empty when stopped early).
    pub after: Vec<f64>,
    /// Images scored per task.
    pub scored: Vec<usize>,
    /// The learned coefficients.
    pub lambda: LearnedLambda,
    /// Wall time of the learning steps.
    pub seconds: f64,
    /// Wall time of the singular value decompositions, when components are learned.
    pub decompose_seconds: Option<f64>,
}

/// Runs `job` on `device`, resuming from its folder's checkpoint when `resume`. `stop` is
/// polled between steps (set it from a Ctrl-C handler).
pub fn run_job(job: &Job, device: &Device, resume: bool, stop: &AtomicBool) -> Result<JobReport> {
    job.options.config.validate()?;
    if job.tasks.is_empty() {
        return Err(Error::invalid("--task", "at least one task is needed"));
    }
    let dir = &job.options.dir;
    let spec = job.load_spec();
    spec.inputs().check(dir.root())?;
    if resume && !dir.root().is_dir() {
        return Err(Error::Output {
            path: dir.root().to_path_buf(),
            reason: "nothing to resume: no such folder (leave out --resume to start a run here)"
                .into(),
        });
    }
    std::fs::create_dir_all(dir.root()).map_err(|e| Error::io(dir.root(), e))?;
    let _lock = RunLock::folder(dir.root())?;
    crate::fault::point("run-locked");
    // Checked under the lock: another writer may have written meanwhile.
    prepare_dir(dir, resume)?;
    record_inputs(job, resume)?;
    let loading = progress::bar(0, "loading checkpoints [{bar:30}] {percent}% {elapsed}");
    let mut loaded = crate::pipeline::load(&spec, device, &loading)?;
    // Nothing else of this job reads the loaded vectors, so AdaMerging++'s TIES-processed ones
    // replace them, tensor by tensor, instead of being held beside them.
    loaded.tv = job.options.config.task_vectors(loaded.tv)?;
    let sampler = sampler_for(&loaded, &job.options.config, device)?;
    learn_with(
        &job.options,
        &loaded,
        &loaded.tv,
        &sampler,
        device,
        resume,
        stop,
    )
}

/// The batches `config` learns on, from the loaded adaptation images.
pub fn sampler_for<'a>(
    loaded: &'a Loaded,
    config: &LearnConfig,
    device: &Device,
) -> Result<ImageSampler<'a>> {
    ImageSampler::new(
        loaded.adapt.clone(),
        &loaded.pre,
        config.batch_size,
        config.batches_per_task,
        config.seed,
        device,
    )
}

/// Learns over loaded inputs (`tv`: the task vectors λ weights, TIES-processed for
/// AdaMerging++) in `options.dir`: the experiment runner's entry point too.
pub fn learn_with(
    options: &LearnOptions,
    loaded: &Loaded,
    tv: &TaskVectors,
    sampler: &ImageSampler<'_>,
    device: &Device,
    resume: bool,
    stop: &AtomicBool,
) -> Result<JobReport> {
    let heads = loaded.heads();
    let decomposing = options.config.components.is_some().then(|| {
        let bar = progress::bar(
            0,
            "{spinner} decomposing the task vectors (f64 SVDs) {elapsed}",
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        (bar, Instant::now())
    });
    let mut learner = Learner::new(&loaded.cfg, tv, &heads, options.config.clone(), device)?;
    let decompose_seconds = decomposing.map(|(bar, start)| {
        bar.finish_and_clear();
        start.elapsed().as_secs_f64()
    });
    let eval = EvalSet {
        cfg: &loaded.cfg,
        tasks: &loaded.eval_tasks,
        pre: &loaded.pre,
        every: options.eval_every,
        batch_size: 64,
        device,
    };
    let initial = learner.merged()?;
    let mut session = Session::new(&mut learner, options.dir.clone())?;
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
    let bar = progress::bar(
        0,
        "learning λ [{bar:30}] {pos}/{len} steps {msg} {elapsed}<{eta}",
    );
    let start = Instant::now();
    let outcome = session.run(sampler, Some(&eval), &bar, stop)?;
    let last = session.last_eval().to_vec();
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let lambda = LearnedLambda::from_learner(&learner)?;
    lambda.save(options.dir.root(), LearnDir::LAMBDA)?;
    let after = match outcome {
        Outcome::Interrupted(_) => Vec::new(),
        Outcome::Finished => {
            if options.save_merged {
                let merger = learner.merger()?;
                write_merged(&loaded.pretrained, tv, &*merger, &options.dir.merged())?;
            }
            if last.is_empty() {
                // Resumed after its last step: nothing ran, so score the learned λ here.
                eval.score(&learner.merged()?)?
            } else {
                last
            }
        }
    };
    Ok(JobReport {
        outcome,
        tasks: tv.tasks().to_vec(),
        before,
        after,
        scored: loaded
            .eval_tasks
            .iter()
            .map(|t| t.data.items.len())
            .collect(),
        lambda,
        seconds,
        decompose_seconds,
    })
}

/// Streams a merge into a Hugging Face checkpoint directory (replacing one adamerge wrote).
pub fn write_merged(
    pretrained: &Path,
    tv: &TaskVectors,
    merger: &dyn TensorMerge,
    out: &Path,
) -> Result<PathBuf> {
    let shapes = tv
        .theta0()
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape.clone()))
        .collect();
    let replacement = Replacement::new(shapes, |name| tensor_to_vec(merger.tensor(name)?));
    save_merged(pretrained, &replacement, out, true)
}

/// What a run learned from (`job.json`): written when it starts, and compared on resume so that
/// a run never continues on other checkpoints, data or adaptation settings.
fn record_inputs(job: &Job, resume: bool) -> Result<()> {
    let mut config = job.options.config.clone();
    config.steps = 0;
    let inputs = serde_json::json!({
        "pretrained": job.pretrained,
        "tasks": job.tasks,
        "heads_from": job.heads_from,
        "adaptation": job.adaptation,
        "eval_limit": job.eval_limit,
        "config": config,
    });
    let path = job.options.dir.job();
    // Only a run with a step done has inputs to keep; a folder that never stepped takes new ones.
    if resume && job.options.dir.checkpoint().exists() {
        let saved: serde_json::Value = crate::output::read_json(&path)?;
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
    crate::output::write_json(&path, &inputs)
}

/// A fresh run needs a new, empty or never-stepped folder; a resume needs a checkpoint or a
/// never-stepped folder (which it starts from step 0). Every refusal says what works instead.
fn prepare_dir(dir: &LearnDir, resume: bool) -> Result<()> {
    let mut others = Vec::new();
    let mut has_checkpoint = false;
    if let Ok(entries) = std::fs::read_dir(dir.root()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == LearnDir::CHECKPOINT {
                has_checkpoint = true;
            } else if name != LOCK_FILE && !LearnDir::START_FILES.contains(&name.as_str()) {
                others.push(name);
            }
        }
    }
    let path = dir.root().to_path_buf();
    if has_checkpoint {
        if resume {
            return Ok(());
        }
        return Err(Error::Output {
            path,
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
        path,
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
