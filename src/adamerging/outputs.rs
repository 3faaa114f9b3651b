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
use crate::merge::{
    ADARANK_PAPER, ComponentMerge, DecomposedUnit, Decomposition, MergeMethod, TensorMerge,
    WeightedSum,
};
use crate::output::write_atomic;
use crate::task_vector::{Layering, TaskVectors, Unit, VectorDtype};

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
    /// The type the task vectors were held in while learning.
    #[serde(default, skip_serializing_if = "VectorDtype::is_f32")]
    pub tau_dtype: VectorDtype,
    /// The units, one column of λ each, with the tensors they cover.
    pub units: Vec<Unit>,
    /// Steps done.
    pub steps_done: usize,
    /// Raw λ [K][L].
    pub lambda: Vec<Vec<f32>>,
    /// λ as applied (clamped when the run clamps) [K][L].
    pub effective: Vec<Vec<f32>>,
    /// The learned masks over singular components, per decomposed unit (AdaRank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<LearnedUnit>>,
}

/// One decomposed matrix unit's learned masks, per task and component (descending singular
/// value), with the singular values that pin the decomposition they apply to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedUnit {
    /// The unit (a tensor, or a block's fused `in_proj.weight`).
    pub name: String,
    /// Its tensors, top to bottom.
    pub tensors: Vec<String>,
    /// [rows, columns] of the decomposed matrix.
    pub shape: [usize; 2],
    /// Singular values per task [K][components].
    pub sigma: Vec<Vec<f32>>,
    /// Raw mask logits per task [K][components].
    pub logits: Vec<Vec<f32>>,
    /// Masks as applied (0 or 1 when hard) per task [K][components].
    pub applied: Vec<Vec<f32>>,
}

impl LearnedUnit {
    /// Each task's share of its components that the masks keep (the mean applied mask), [K].
    pub fn kept(&self) -> Vec<f32> {
        self.applied
            .iter()
            .map(|a| a.iter().sum::<f32>() / a.len().max(1) as f32)
            .collect()
    }
}

impl LearnedLambda {
    /// The learner's current coefficients.
    pub fn from_learner(learner: &Learner<'_>) -> Result<Self> {
        let (_, l) = learner.shape();
        let rows = |v: Vec<f32>| v.chunks(l.max(1)).map(<[f32]>::to_vec).collect();
        let components = match (learner.decomposition(), learner.masks()?) {
            (Some(d), Some(logits)) => {
                let (applied, _) = d.config().masks(&logits);
                let per_task = |u: &DecomposedUnit, at: usize, v: &[f32]| -> Vec<Vec<f32>> {
                    (0..u.counts.len())
                        .map(|k| u.task_range(k).map(|i| v[at + i]).collect())
                        .collect()
                };
                Some(
                    d.units()
                        .iter()
                        .map(|u| LearnedUnit {
                            name: u.name.clone(),
                            tensors: u.parts.iter().map(|(n, _)| n.clone()).collect(),
                            shape: [u.parts.iter().map(|(_, r)| r).sum(), u.cols],
                            sigma: per_task(u, 0, &u.sigma),
                            logits: per_task(u, u.offset, &logits),
                            applied: per_task(u, u.offset, &applied),
                        })
                        .collect(),
                )
            }
            _ => None,
        };
        Ok(Self {
            components,
            method: learner.config().label(),
            config: learner.config().clone(),
            tasks: learner.task_vectors().tasks().to_vec(),
            tau_dtype: learner.task_vectors().dtype(),
            units: learner.layering().units().to_vec(),
            steps_done: learner.steps_done(),
            lambda: rows(learner.lambda()?),
            effective: rows(learner.effective_lambda()?),
        })
    }

    /// Writes `<stem>.json` and `<stem>.safetensors` (`lambda` and `effective`, [K, L]) in `dir`.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_atomic(&dir.join(format!("{stem}.json")), pretty(self)?.as_bytes())?;
        let (k, l) = (self.tasks.len(), self.units.len());
        let raw = f32_bytes(self.lambda.iter().flatten());
        let eff = f32_bytes(self.effective.iter().flatten());
        // Each component tensor: [components] of one unit and task, named `<what>.<unit>.<task>`.
        let mut component_bytes = Vec::new();
        for u in self.components.iter().flatten() {
            for (t, task) in self.tasks.iter().enumerate() {
                for (what, m) in [
                    ("mask", &u.logits),
                    ("applied", &u.applied),
                    ("sigma", &u.sigma),
                ] {
                    component_bytes
                        .push((format!("{what}.{}.{task}", u.name), f32_bytes(m[t].iter())));
                }
            }
        }
        let mut views = vec![
            ("lambda", TensorView::new(Dtype::F32, vec![k, l], &raw)),
            ("effective", TensorView::new(Dtype::F32, vec![k, l], &eff)),
        ];
        for (name, bytes) in &component_bytes {
            views.push((
                name.as_str(),
                TensorView::new(Dtype::F32, vec![bytes.len() / 4], bytes),
            ));
        }
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
        for u in this.components.iter().flatten() {
            let counts: Vec<usize> = u.sigma.iter().map(Vec::len).collect();
            for (key, m) in [
                ("sigma", &u.sigma),
                ("logits", &u.logits),
                ("applied", &u.applied),
            ] {
                if m.len() != k || m.iter().map(Vec::len).ne(counts.iter().copied()) {
                    return Err(bad(
                        &format!("components.{}.{key}", u.name),
                        format!("expected {k} rows of {counts:?} values"),
                    ));
                }
                if m.iter().flatten().any(|v| !v.is_finite()) {
                    return Err(bad(
                        &format!("components.{}.{key}", u.name),
                        "holds a non-finite value".into(),
                    ));
                }
            }
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
        if self.components.is_some() {
            "adarank"
        } else {
            "adamerging"
        }
    }
    fn reference(&self) -> &'static str {
        if self.components.is_some() {
            ADARANK_PAPER
        } else {
            PAPER
        }
    }
    fn label(&self) -> String {
        self.method.clone()
    }
    fn prepare<'a>(&self, tv: &'a TaskVectors) -> Result<Box<dyn TensorMerge + 'a>> {
        let applied = self.applied(tv.tasks())?;
        let layering = self.layering();
        if let Some(units) = &self.components {
            let (decomposition, masks) = self.pinned(tv, units)?;
            return Ok(Box::new(ComponentMerge::new(
                tv,
                decomposition,
                &layering,
                applied,
                masks,
            )?));
        }
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

impl LearnedLambda {
    /// `tv` decomposed again as the run did, checked against the saved singular values (other
    /// checkpoints give other values), and the saved masks in the decomposition's order (tasks
    /// matched by name).
    fn pinned(&self, tv: &TaskVectors, units: &[LearnedUnit]) -> Result<(Decomposition, Vec<f32>)> {
        let bad = |reason: String| Error::invalid("lambda file", reason);
        // Saved rows by the given tasks' order (`applied` has checked that they are the same).
        let rows: Vec<usize> = tv
            .tasks()
            .iter()
            .map(|t| self.tasks.iter().position(|s| s == t))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("its tasks are not the given ones".into()))?;
        let config = self
            .config
            .components
            .as_ref()
            .ok_or_else(|| bad("component masks without their settings".into()))?;
        let decomposition = Decomposition::compute(tv, config)?;
        if decomposition.units().len() != units.len() {
            return Err(bad(format!(
                "{} decomposed units saved, {} in these checkpoints",
                units.len(),
                decomposition.units().len()
            )));
        }
        let mut masks = Vec::with_capacity(decomposition.num_masks());
        for (d, saved) in decomposition.units().iter().zip(units) {
            if d.name != saved.name {
                return Err(bad(format!(
                    "unit `{}` saved where `{}` is",
                    saved.name, d.name
                )));
            }
            for (k, (&row, task)) in rows.iter().zip(tv.tasks()).enumerate() {
                let sigma = &d.sigma[d.task_range(k)];
                let want = &saved.sigma[row];
                let scale = want.first().copied().unwrap_or(0.0).max(f32::MIN_POSITIVE);
                let off = sigma.len() != want.len()
                    || sigma
                        .iter()
                        .zip(want)
                        .any(|(a, b)| (a - b).abs() > 1e-4 * scale);
                if off {
                    return Err(bad(format!(
                        "the singular values of `{}` for task `{task}` differ from the ones its \
                         masks were learned on: other checkpoints, or another decomposition",
                        d.name
                    )));
                }
                masks.extend_from_slice(&saved.applied[row]);
            }
        }
        Ok((decomposition, masks))
    }
}

/// `serde_json`'s pretty JSON with every array of numbers on one line (a row of λ, a task's
/// masks), so that a person can read the file; the fields keep their declared order.
fn pretty(value: &impl Serialize) -> Result<String> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::invalid("lambda", e.to_string()))?;
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.ends_with('[') {
            // An array opened at the end of a line: one value per line until its `]`.
            let mut raw = Vec::new();
            while let Some(next) = lines.peek() {
                if next.trim().trim_end_matches(',').parse::<f64>().is_err() {
                    break;
                }
                raw.push(*next);
                lines.next();
            }
            let close = lines
                .peek()
                .filter(|l| l.trim().trim_end_matches(',') == "]")
                .copied();
            match close {
                Some(close) if !raw.is_empty() => {
                    lines.next();
                    let items: Vec<&str> =
                        raw.iter().map(|l| l.trim().trim_end_matches(',')).collect();
                    out.push_str(line);
                    out.push_str(&items.join(", "));
                    out.push_str(close.trim());
                    out.push('\n');
                }
                _ => {
                    for l in std::iter::once(line).chain(raw) {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
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
    /// Mask logits, flat (learned components only).
    pub masks: Option<Vec<f32>>,
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
        let masks = self.masks.as_ref().map(|m| f32_bytes(m.iter()));
        let wrap = |e: safetensors::SafeTensorError| Error::invalid("checkpoint", e.to_string());
        let mut views = vec![
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
        if let Some(m) = &masks {
            views.push((
                "masks",
                TensorView::new(Dtype::F32, vec![m.len() / 4], m).map_err(wrap)?,
            ));
        }
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
        let masks = match st.tensor("masks") {
            Ok(m) => Some(
                decode_f32(StoredDtype::F32, m.data())
                    .ok_or_else(|| bad("`masks` is not a whole number of f32 values".into()))?,
            ),
            Err(_) => None,
        };
        let optimizer = st
            .tensor("optimizer")
            .map_err(|e| bad(e.to_string()))?
            .data()
            .to_vec();
        Ok(Self {
            lambda,
            masks,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_arrays_stay_on_one_line_and_the_json_is_unchanged() {
        let value = serde_json::json!({
            "rows": [[0.5, 1.0], [2.0, -3.5e-9]],
            "empty": [],
            "names": ["a[", "b"],
            "mixed": [1, "x"],
            "nested": {"v": [7]},
        });
        let text = pretty(&value).unwrap();
        assert!(text.contains("[0.5, 1.0],\n"), "{text}");
        assert!(text.contains("\"v\": [7]\n"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}
