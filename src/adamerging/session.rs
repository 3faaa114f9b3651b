//! A learning run in a directory: steps with a progress bar, a JSON-lines log, accuracy every N
//! steps, a resume checkpoint after every step, and a clean stop on request (Ctrl-C).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use indicatif::ProgressBar;
use serde_json::json;

use super::batches::BatchSource;
use super::learner::{Learner, StepRecord};
use super::outputs::{ResumePoint, RunLog};
use crate::config::VisionConfig;
use crate::data::Preprocessor;
use crate::error::{Error, Result};
use crate::eval::{EvalTask, accuracy};

/// Labelled data to score the merged model on while learning (never seen by the learner).
pub struct EvalSet<'a> {
    /// The vision config.
    pub cfg: &'a VisionConfig,
    /// Tasks with heads and labelled images, in the learner's task order.
    pub tasks: &'a [EvalTask],
    /// Image preprocessing.
    pub pre: &'a Preprocessor,
    /// Score every this many steps (besides the start and the end); 0: only those two.
    pub every: usize,
    /// Images per evaluation batch.
    pub batch_size: usize,
    /// Where to compute.
    pub device: &'a Device,
}

impl EvalSet<'_> {
    /// Top-1 accuracy of every task with the vision tower `w`.
    pub fn score(&self, w: &crate::weights::Weights) -> Result<Vec<f64>> {
        self.tasks
            .iter()
            .map(|t| {
                accuracy(
                    self.cfg,
                    w,
                    self.pre,
                    t,
                    self.batch_size,
                    self.device,
                    &ProgressBar::hidden(),
                )
            })
            .collect()
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All steps done.
    Finished,
    /// Stopped on request after this many steps; the checkpoint lets it resume.
    Interrupted(usize),
}

/// Whether step `done` of `total` is scored: every `every` steps (0: never) and at the end.
fn is_eval_step(done: usize, total: usize, every: usize) -> bool {
    done == total || (every > 0 && done.is_multiple_of(every))
}

/// A learner bound to its run directory.
pub struct Session<'l, 'a> {
    learner: &'l mut Learner<'a>,
    dir: PathBuf,
    last_eval: Vec<f64>,
}

/// The file holding the resume checkpoint, in the run directory.
pub(crate) const CHECKPOINT: &str = "checkpoint.safetensors";
/// The JSON-lines log, in the run directory.
pub const LOG: &str = "log.jsonl";

impl<'l, 'a> Session<'l, 'a> {
    /// Binds `learner` to `dir` (created if missing).
    pub fn new(learner: &'l mut Learner<'a>, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(Self {
            learner,
            dir: dir.to_path_buf(),
            last_eval: Vec::new(),
        })
    }

    /// What must agree between a run and its resumption: the configuration except the number
    /// of steps (a finished run may be extended), the tasks and the units.
    fn fingerprint(&self) -> String {
        let mut cfg = self.learner.config().clone();
        cfg.steps = 0;
        json!({
            "config": cfg,
            "tasks": self.learner.task_vectors().tasks(),
            "units": self.learner.layering().units().iter().map(|u| &u.name).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// Continues from the directory's checkpoint when there is one; returns the steps done.
    pub fn resume(&mut self) -> Result<usize> {
        let path = self.dir.join(CHECKPOINT);
        if !path.exists() {
            return Ok(0);
        }
        let point = ResumePoint::load(&path)?;
        if point.fingerprint != self.fingerprint() {
            return Err(Error::Checkpoint {
                path,
                reason: "this checkpoint belongs to a run with other tasks or settings; \
                         resume with the same options, or start in a new directory"
                    .into(),
            });
        }
        self.learner
            .restore(point.lambda, point.optimizer, point.steps_done)?;
        Ok(point.steps_done)
    }

    fn checkpoint(&self) -> Result<()> {
        ResumePoint {
            lambda: self.learner.lambda()?,
            optimizer: self.learner.optimizer_state()?,
            steps_done: self.learner.steps_done(),
            fingerprint: self.fingerprint(),
        }
        .save(&self.dir.join(CHECKPOINT))
    }

    /// Runs the remaining steps. `stop` is polled between steps; when it is set, the run ends
    /// after the current step with its checkpoint written.
    pub fn run(
        &mut self,
        source: &dyn BatchSource,
        eval: Option<&EvalSet<'_>>,
        progress: &ProgressBar,
        stop: &AtomicBool,
    ) -> Result<Outcome> {
        let total = self.learner.config().steps;
        let done = self.learner.steps_done();
        let mut log = RunLog::open(&self.dir.join(LOG), Some(done))?;
        // A run stopped between a step's checkpoint and its evaluation scores it now.
        if let Some(eval) = eval
            && done > 0
            && is_eval_step(done, total, eval.every)
            && !log.has_eval(done)
        {
            self.evaluate_into(eval, &mut log)?;
        }
        progress.set_length(total as u64);
        progress.set_position(done as u64);
        while self.learner.steps_done() < total {
            if stop.load(Ordering::SeqCst) {
                return Ok(Outcome::Interrupted(self.learner.steps_done()));
            }
            let record = self.learner.step(source)?;
            log.write(&self.step_event(&record))?;
            self.checkpoint()?;
            progress.set_message(format!("entropy {:.4}", record.loss));
            progress.inc(1);
            let done = self.learner.steps_done();
            crate::fault::point(&format!("step-{done}-saved"));
            if let Some(eval) = eval
                && is_eval_step(done, total, eval.every)
            {
                self.evaluate_into(eval, &mut log)?;
            }
        }
        Ok(Outcome::Finished)
    }

    fn step_event(&self, r: &StepRecord) -> serde_json::Value {
        let tasks = self.learner.task_vectors().tasks();
        let entropy: serde_json::Map<String, serde_json::Value> = tasks
            .iter()
            .zip(&r.entropy)
            .map(|(t, e)| (t.clone(), json!(e)))
            .collect();
        json!({
            "event": "step",
            "step": r.step,
            "loss": r.loss,
            "entropy": entropy,
            "seconds": r.seconds,
        })
    }

    /// The accuracies of the latest evaluation (empty before the first).
    pub fn last_eval(&self) -> &[f64] {
        &self.last_eval
    }

    /// Scores the merged model at the current λ on every evaluation task and logs it; at
    /// step 0 the log starts anew (whatever an earlier start that did no step left in it).
    pub fn evaluate(&mut self, eval: &EvalSet<'_>) -> Result<Vec<f64>> {
        let done = self.learner.steps_done();
        let mut log = RunLog::open(&self.dir.join(LOG), (done > 0).then_some(done))?;
        self.evaluate_into(eval, &mut log)
    }

    fn evaluate_into(&mut self, eval: &EvalSet<'_>, log: &mut RunLog) -> Result<Vec<f64>> {
        let acc = eval.score(&self.learner.merged()?)?;
        let per_task: serde_json::Map<String, serde_json::Value> = eval
            .tasks
            .iter()
            .zip(&acc)
            .map(|(t, a)| (t.name.clone(), json!(a)))
            .collect();
        let average = acc.iter().sum::<f64>() / acc.len().max(1) as f64;
        log.write(&json!({
            "event": "eval",
            "step": self.learner.steps_done(),
            "accuracy": per_task,
            "average": average,
        }))?;
        self.last_eval.clone_from(&acc);
        Ok(acc)
    }
}
