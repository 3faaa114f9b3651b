//! A learning run in a directory: steps with a progress bar, a JSON-lines log, accuracy every N
//! steps, a resume checkpoint after every step, and a clean stop on request (Ctrl-C).

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::ProgressBar;
use serde_json::json;

use super::batches::BatchSource;
use super::learner::{Learner, StepRecord};
use super::outputs::{ResumePoint, RunLog};
use crate::error::{Error, Result};
use crate::eval::EvalSet;
use crate::events::Event;
use crate::layout::LearnDir;
use crate::task_vector::VectorDtype;

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

/// A learner bound to its run folder.
pub struct Session<'l, 'a> {
    learner: &'l mut Learner<'a>,
    dir: LearnDir,
    last_eval: Vec<f64>,
}

impl<'l, 'a> Session<'l, 'a> {
    /// Binds `learner` to `dir` (created if missing).
    pub fn new(learner: &'l mut Learner<'a>, dir: LearnDir) -> Result<Self> {
        std::fs::create_dir_all(dir.root()).map_err(|e| Error::io(dir.root(), e))?;
        Ok(Self {
            learner,
            dir,
            last_eval: Vec::new(),
        })
    }

    /// What must agree between a run and its resumption: the configuration except the number
    /// of steps (a finished run may be extended), the tasks, the units and the type the task
    /// vectors are held in (named only when not f32, so f32 checkpoints of earlier versions
    /// resume).
    fn fingerprint(&self) -> String {
        let mut cfg = self.learner.config().clone();
        cfg.steps = 0;
        let tv = self.learner.task_vectors();
        let mut id = json!({
            "config": cfg,
            "tasks": tv.tasks(),
            "units": self.learner.layering().units().iter().map(|u| &u.name).collect::<Vec<_>>(),
        });
        if tv.dtype() != VectorDtype::F32 {
            id["tau_dtype"] = json!(tv.dtype());
        }
        id.to_string()
    }

    /// Continues from the directory's checkpoint when there is one; returns the steps done.
    pub fn resume(&mut self) -> Result<usize> {
        let path = self.dir.checkpoint();
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
            .restore(point.lambda, point.masks, point.optimizer, point.steps_done)?;
        Ok(point.steps_done)
    }

    fn checkpoint(&self) -> Result<()> {
        ResumePoint {
            lambda: self.learner.lambda()?,
            masks: self.learner.masks()?,
            optimizer: self.learner.optimizer_state()?,
            steps_done: self.learner.steps_done(),
            fingerprint: self.fingerprint(),
        }
        .save(&self.dir.checkpoint())
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
        let mut log = RunLog::open(&self.dir.log(), Some(done))?;
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

    fn step_event(&self, r: &StepRecord) -> Event {
        let tasks = self.learner.task_vectors().tasks();
        Event::Step {
            step: r.step,
            loss: r.loss,
            entropy: tasks
                .iter()
                .cloned()
                .zip(r.entropy.iter().copied())
                .collect(),
            seconds: r.seconds,
            of: None,
        }
    }

    /// The accuracies of the latest evaluation (empty before the first).
    pub fn last_eval(&self) -> &[f64] {
        &self.last_eval
    }

    /// Scores the merged model at the current λ on every evaluation task and logs it; at
    /// step 0 the log starts anew (whatever an earlier start that did no step left in it).
    pub fn evaluate(&mut self, eval: &EvalSet<'_>) -> Result<Vec<f64>> {
        let done = self.learner.steps_done();
        let mut log = RunLog::open(&self.dir.log(), (done > 0).then_some(done))?;
        self.evaluate_into(eval, &mut log)
    }

    fn evaluate_into(&mut self, eval: &EvalSet<'_>, log: &mut RunLog) -> Result<Vec<f64>> {
        let acc = eval.score(&self.learner.merged()?)?;
        log.write(&Event::Eval {
            step: self.learner.steps_done(),
            accuracy: eval
                .tasks
                .iter()
                .map(|t| t.name.clone())
                .zip(acc.iter().copied())
                .collect(),
            average: acc.iter().sum::<f64>() / acc.len().max(1) as f64,
            of: None,
        })?;
        self.last_eval.clone_from(&acc);
        Ok(acc)
    }
}
