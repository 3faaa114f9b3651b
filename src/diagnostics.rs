//! Task-vector diagnostics: sizes, pairwise cosine similarity and sign conflicts, the quantities
//! that predict how much a merge will interfere.

use serde::Serialize;

use crate::error::Result;
use crate::task_vector::TaskVectors;
use crate::weights::{int_sum, scalar};

/// Diagnostics of K task vectors over the merged tensors.
#[derive(Debug, Clone, Serialize)]
pub struct TaskVectorReport {
    /// Task names.
    pub tasks: Vec<String>,
    /// Number of merged parameters.
    pub num_params: usize,
    /// ‖θ₀‖₂ over the merged tensors.
    pub base_norm: f64,
    /// ‖τ_k‖₂.
    pub norms: Vec<f64>,
    /// cos(τ_i, τ_j).
    pub cosine: Vec<Vec<f64>>,
    /// Among entries where τ_i and τ_j are both non-zero, the fraction with opposite signs.
    pub pairwise_sign_conflict: Vec<Vec<f64>>,
    /// Among entries where at least two task vectors are non-zero, the fraction where their
    /// signs disagree.
    pub sign_conflict_rate: f64,
}

impl TaskVectorReport {
    /// Computes every diagnostic in one pass over the tensors.
    pub fn compute(tv: &TaskVectors) -> Result<Self> {
        let k = tv.num_tasks();
        let mut dots = vec![vec![0f64; k]; k];
        let mut opposite = vec![vec![0i64; k]; k];
        let mut both = vec![vec![0i64; k]; k];
        let mut base_sq = 0f64;
        let (mut conflicts, mut multi) = (0i64, 0i64);
        for (name, t0) in tv.theta0().iter() {
            base_sq += scalar(t0.data.clone().powf_scalar(2.0).sum())?;
            let taus: Vec<_> = (0..k)
                .map(|i| tv.tau(i, name))
                .collect::<Result<Vec<_>>>()?;
            let signs: Vec<_> = taus.iter().map(|t| t.clone().sign()).collect();
            for i in 0..k {
                for j in i..k {
                    dots[i][j] += scalar((taus[i].clone() * taus[j].clone()).sum())?;
                    if i != j {
                        let prod = signs[i].clone() * signs[j].clone();
                        opposite[i][j] += int_sum(prod.clone().lower_elem(0.0).int())?;
                        both[i][j] += int_sum(prod.not_equal_elem(0.0).int())?;
                    }
                }
            }
            let mut pos = taus[0].clone().greater_elem(0.0).int();
            let mut neg = taus[0].clone().lower_elem(0.0).int();
            for t in &taus[1..] {
                pos = pos + t.clone().greater_elem(0.0).int();
                neg = neg + t.clone().lower_elem(0.0).int();
            }
            multi += int_sum((pos.clone() + neg.clone()).greater_equal_elem(2).int())?;
            conflicts += int_sum(pos.greater_elem(0).bool_and(neg.greater_elem(0)).int())?;
        }
        let norms: Vec<f64> = (0..k).map(|i| dots[i][i].sqrt()).collect();
        let mut cosine = vec![vec![1f64; k]; k];
        let mut pairwise = vec![vec![0f64; k]; k];
        for i in 0..k {
            for j in i + 1..k {
                let c = dots[i][j] / (norms[i] * norms[j]).max(f64::MIN_POSITIVE);
                cosine[i][j] = c;
                cosine[j][i] = c;
                let r = opposite[i][j] as f64 / (both[i][j].max(1)) as f64;
                pairwise[i][j] = r;
                pairwise[j][i] = r;
            }
        }
        Ok(Self {
            tasks: tv.tasks().to_vec(),
            num_params: tv.theta0().num_params(),
            base_norm: base_sq.sqrt(),
            norms,
            cosine,
            pairwise_sign_conflict: pairwise,
            sign_conflict_rate: conflicts as f64 / multi.max(1) as f64,
        })
    }

    /// Markdown: a norm table, the cosine matrix and the sign-conflict matrix.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "Task vectors over {} merged parameters; ‖θ₀‖ = {:.4}\n\n| task | ‖τ‖ | ‖τ‖ / ‖θ₀‖ |\n|---|---|---|\n",
            self.num_params, self.base_norm
        );
        for (t, n) in self.tasks.iter().zip(&self.norms) {
            s += &format!(
                "| {t} | {n:.4} | {:.4} |\n",
                n / self.base_norm.max(f64::MIN_POSITIVE)
            );
        }
        s += "\nCosine similarity\n\n";
        s += &matrix(&self.tasks, &self.cosine);
        s += "\nSign conflicts (entries where both are non-zero with opposite signs)\n\n";
        s += &matrix(&self.tasks, &self.pairwise_sign_conflict);
        s += &format!(
            "\nOverall sign-conflict rate (entries with ≥ 2 non-zero tasks whose signs disagree): {:.4}\n",
            self.sign_conflict_rate
        );
        s
    }
}

fn matrix(names: &[String], m: &[Vec<f64>]) -> String {
    let mut s = format!(
        "| | {} |\n|---|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for (name, row) in names.iter().zip(m) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:.3}")).collect();
        s += &format!("| {name} | {} |\n", cells.join(" | "));
    }
    s
}

/// One tensor of a checkpoint, as `inspect` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TensorRow {
    /// Its name.
    pub name: String,
    /// Its stored dtype.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its number of elements.
    pub params: usize,
}

/// Every tensor of a checkpoint, in its natural name order.
#[derive(Debug, Clone, Serialize)]
pub struct TensorListing {
    /// The checkpoint.
    pub path: std::path::PathBuf,
    /// Its tensors.
    pub tensors: Vec<TensorRow>,
    /// Their total number of elements.
    pub params: usize,
}

impl TensorListing {
    /// Lists `ckpt`.
    pub fn of(ckpt: &crate::checkpoint::Checkpoint) -> Self {
        let tensors = ckpt
            .names()
            .filter_map(|n| {
                ckpt.meta(n).map(|m| TensorRow {
                    name: n.to_string(),
                    dtype: m.dtype.name(),
                    shape: m.shape.clone(),
                    params: m.numel(),
                })
            })
            .collect();
        Self {
            path: ckpt.path().to_path_buf(),
            tensors,
            params: ckpt.num_params(),
        }
    }

    /// Markdown: one row per tensor, then the totals per dtype.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| tensor | dtype | shape | parameters |\n|---|---|---|---|\n");
        let mut by_dtype: Vec<(String, usize)> = Vec::new();
        for t in &self.tensors {
            s += &format!(
                "| {} | {} | {:?} | {} |\n",
                t.name, t.dtype, t.shape, t.params
            );
            match by_dtype.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some(e) => e.1 += t.params,
                None => by_dtype.push((t.dtype.clone(), t.params)),
            }
        }
        let dtypes: Vec<String> = by_dtype.iter().map(|(d, c)| format!("{d}: {c}")).collect();
        s += &format!(
            "\n{} tensors, {} parameters ({})\n",
            self.tensors.len(),
            self.params,
            dtypes.join(", ")
        );
        s
    }
}
