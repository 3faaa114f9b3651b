//! What a learning run leaves on disk: the learned λ (JSON with unit names, and safetensors),
//! the resume checkpoint, and the JSON-lines log. Every file is written whole or not at all.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::learner::{LearnConfig, Learner};
use crate::checkpoint::{StoredDtype, decode_f32, encode_f32, serialize_canonical};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::merge::{MergeMethod, TensorMerge, WeightedSum};
use crate::output::write_atomic;
use crate::task_vector::{Layering, TaskVectors, Unit};

/// The AdaMerging paper.
pub const PAPER: &str =
    "Yang et al., AdaMerging: Adaptive model merging for multi-task learning, ICLR 2024";

/// Learned coefficients with everything needed to apply them again to the same checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LearnedLambda {
    /// The method's label (`adamerging(layer)`, `adamerging++(task)`).
    pub method: String,
    /// The configuration that learned them.
    pub config: LearnConfig,
    /// Task names, one row of λ each.
    pub tasks: Vec<String>,
    /// The units, one column of λ each, with the tensors they cover.
    pub units: Vec<Unit>,
    /// Steps done.
    pub steps_done: usize,
    /// Raw λ [K][L].
    pub lambda: Vec<Vec<f32>>,
    /// λ as applied (clamped when the run clamps) [K][L].
    pub effective: Vec<Vec<f32>>,
}

impl LearnedLambda {
    /// The learner's current coefficients.
    pub fn from_learner(learner: &Learner<'_>) -> Result<Self> {
        let (_, l) = learner.shape();
        let rows = |v: Vec<f32>| v.chunks(l.max(1)).map(<[f32]>::to_vec).collect();
        Ok(Self {
            method: learner.config().label(),
            config: learner.config().clone(),
            tasks: learner.task_vectors().tasks().to_vec(),
            units: learner.layering().units().to_vec(),
            steps_done: learner.steps_done(),
            lambda: rows(learner.lambda()?),
            effective: rows(learner.effective_lambda()?),
        })
    }

    /// Writes `<stem>.json` and `<stem>.safetensors` (`lambda` and `effective`, [K, L]) in `dir`.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| Error::invalid("lambda", e.to_string()))?;
        write_atomic(&dir.join(format!("{stem}.json")), &json)?;
        let (k, l) = (self.tasks.len(), self.units.len());
        let raw = f32_bytes(self.lambda.iter().flatten());
        let eff = f32_bytes(self.effective.iter().flatten());
        let views = [
            ("lambda", TensorView::new(Dtype::F32, vec![k, l], &raw)),
            ("effective", TensorView::new(Dtype::F32, vec![k, l], &eff)),
        ];
        let meta = BTreeMap::from([
            ("tasks".to_string(), self.tasks.join(",")),
            ("method".to_string(), self.method.clone()),
        ]);
        let views = views
            .into_iter()
            .map(|(n, v)| v.map(|v| (n, v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid("lambda", e.to_string()))?;
        let bytes = serialize_canonical(views, meta).map_err(|e| Error::invalid("lambda", e))?;
        write_atomic(&dir.join(format!("{stem}.safetensors")), &bytes)
    }

    /// Reads a `lambda.json` written by [`LearnedLambda::save`], checking its shape.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let this: Self = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            key: "lambda".into(),
            reason: e.to_string(),
        })?;
        let (k, l) = (this.tasks.len(), this.units.len());
        let bad = |key: &str, reason: String| Error::Config {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        };
        for (key, m) in [("lambda", &this.lambda), ("effective", &this.effective)] {
            if m.len() != k || m.iter().any(|r| r.len() != l) {
                return Err(bad(key, format!("expected {k} rows of {l} values")));
            }
            if m.iter().flatten().any(|v| !v.is_finite()) {
                return Err(bad(key, "holds a non-finite value".into()));
            }
        }
        if k == 0 || l == 0 {
            return Err(bad("tasks", "no task or no unit".into()));
        }
        if this.config.clamp {
            // A run that clamps never applies λ outside [0, 1]: such a file was edited or is
            // not what its run wrote.
            let outside: Vec<String> = this
                .effective
                .iter()
                .enumerate()
                .flat_map(|(t, row)| row.iter().enumerate().map(move |(u, v)| (t, u, *v)))
                .filter(|(_, _, v)| !(0.0..=1.0).contains(v))
                .map(|(t, u, v)| format!("effective[{t}][{u}] = {}", readable(v)))
                .collect();
            if !outside.is_empty() {
                let shown = outside
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(bad(
                    "effective",
                    format!(
                        "{} value(s) lie outside [0, 1], the range its run clamped λ to: {shown}",
                        outside.len()
                    ),
                ));
            }
        }
        Ok(this)
    }

    /// The layering of λ's columns.
    pub fn layering(&self) -> Layering {
        Layering::from_units(self.units.clone())
    }

    /// The applied coefficients, row-major [K, L], with rows in the order of `tasks`.
    pub fn applied(&self, tasks: &[String]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(tasks.len() * self.units.len());
        for task in tasks {
            let row = self.tasks.iter().position(|t| t == task).ok_or_else(|| {
                Error::invalid(
                    "lambda file",
                    format!(
                        "learned for tasks [{}], which do not include `{task}`",
                        self.tasks.join(", ")
                    ),
                )
            })?;
            out.extend_from_slice(&self.effective[row]);
        }
        if tasks.len() != self.tasks.len() {
            return Err(Error::invalid(
                "lambda file",
                format!(
                    "learned for {} tasks [{}], given {}",
                    self.tasks.len(),
                    self.tasks.join(", "),
                    tasks.len()
                ),
            ));
        }
        Ok(out)
    }
}

/// Learned coefficients applied as a merge: θ₀ + Σ_k λ_{k,u} τ_k (over TIES-processed vectors
/// for AdaMerging++), so that λ learned once can rebuild the model or be shared.
impl MergeMethod for LearnedLambda {
    fn name(&self) -> &'static str {
        "adamerging"
    }
    fn reference(&self) -> &'static str {
        PAPER
    }
    fn label(&self) -> String {
        self.method.clone()
    }
    fn prepare<'a>(&self, tv: &'a TaskVectors) -> Result<Box<dyn TensorMerge + 'a>> {
        let applied = self.applied(tv.tasks())?;
        let layering = self.layering();
        Ok(match self.config.ties()? {
            None => Box::new(WeightedSum::new(tv, &layering, applied)?),
            Some(ties) => Box::new(WeightedSum::new(
                ties.prepare_source(tv)?,
                &layering,
                applied,
            )?),
        })
    }
}

/// A number as a person reads it: plain when moderate, in exponent form when huge or tiny.
fn readable(v: f32) -> String {
    if v != 0.0 && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

fn f32_bytes<'a>(values: impl Iterator<Item = &'a f32>) -> Vec<u8> {
    let values: Vec<f32> = values.copied().collect();
    encode_f32(StoredDtype::F32, &values).expect("f32 values always encode as F32")
}

/// The resume checkpoint of a run: λ, Adam's state and the steps done, in one file written
/// atomically, so that a run stopped at any moment resumes from a consistent state.
pub struct ResumePoint {
    /// Raw λ, row-major.
    pub lambda: Vec<f32>,
    /// Adam's state (burn's record bytes).
    pub optimizer: Vec<u8>,
    /// Steps done.
    pub steps_done: usize,
    /// What must match for a resume to continue the same run.
    pub fingerprint: String,
}

impl ResumePoint {
    /// Writes the checkpoint file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let lambda = f32_bytes(self.lambda.iter());
        let wrap = |e: safetensors::SafeTensorError| Error::invalid("checkpoint", e.to_string());
        let views = vec![
            (
                "lambda",
                TensorView::new(Dtype::F32, vec![self.lambda.len()], &lambda).map_err(wrap)?,
            ),
            (
                "optimizer",
                TensorView::new(Dtype::U8, vec![self.optimizer.len()], &self.optimizer)
                    .map_err(wrap)?,
            ),
        ];
        let meta = BTreeMap::from([
            ("steps_done".to_string(), self.steps_done.to_string()),
            ("fingerprint".to_string(), self.fingerprint.clone()),
        ]);
        let bytes =
            serialize_canonical(views, meta).map_err(|e| Error::invalid("checkpoint", e))?;
        write_atomic(path, &bytes)
    }

    /// Reads a checkpoint file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let steps_done = meta
            .get("steps_done")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no `steps_done` in the metadata".into()))?;
        let fingerprint = meta
            .get("fingerprint")
            .cloned()
            .ok_or_else(|| bad("no `fingerprint` in the metadata".into()))?;
        let lambda = st.tensor("lambda").map_err(|e| bad(e.to_string()))?;
        let lambda = decode_f32(StoredDtype::F32, lambda.data())
            .ok_or_else(|| bad("`lambda` is not a whole number of f32 values".into()))?;
        let optimizer = st
            .tensor("optimizer")
            .map_err(|e| bad(e.to_string()))?
            .data()
            .to_vec();
        Ok(Self {
            lambda,
            optimizer,
            steps_done,
            fingerprint,
        })
    }
}

/// A JSON-lines log of [`Event`]s, appended one flushed line per event.
pub struct RunLog {
    path: PathBuf,
    file: std::fs::File,
    evals: Vec<usize>,
}

impl RunLog {
    /// Opens `path` for appending, keeping only the events of steps up to `keep_through` (a
    /// resumed run redoes the later ones); `None` starts it empty, for a run from step 0.
    pub fn open(path: &Path, keep_through: Option<usize>) -> Result<Self> {
        let mut evals = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let mut kept = String::new();
            for event in text.lines().filter_map(Event::parse) {
                let keep = match (keep_through, event.step()) {
                    (Some(k), Some(step)) => step <= k,
                    _ => false,
                };
                if keep {
                    if let Event::Eval { step, .. } = &event {
                        evals.push(*step);
                    }
                    kept += &event.line();
                }
            }
            write_atomic(path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            evals,
        })
    }

    /// Whether the log holds an evaluation at `step`.
    pub fn has_eval(&self, step: usize) -> bool {
        self.evals.contains(&step)
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        self.file
            .write_all(event.line().as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        if let Event::Eval { step, .. } = event {
            self.evals.push(*step);
        }
        Ok(())
    }
}
