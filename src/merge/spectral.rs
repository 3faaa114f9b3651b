//! The spectral merges TSV-M, Iso-C and Iso-CTS over task vectors: which tensors are matrix
//! units (q/k/v fused or split), their Δ from `crate::spectral`, and θ₀ + α Δ (docs/design.md §3).

use std::sync::Mutex;

use burn::tensor::{Device, Tensor};
use faer::Mat;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::{MergeMethod, TensorMerge, by_chunks, check_fraction, check_range, fmt_param, part};
use crate::error::{Error, Result};
use crate::spectral::{NoConvergence, Variant, deltas};
use crate::task_vector::TaskVectors;
use crate::weights::{FlatTensor, Weights, tensor_to_vec};

/// How a block's q, k and v projection weights are decomposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Qkv {
    /// As one [3d, d] matrix, open_clip's `in_proj_weight` (the authors' code; our paper
    /// layering's unit).
    #[default]
    Fused,
    /// Each on its own, as Hugging Face stores them (FusionBench's code).
    Split,
}

impl Qkv {
    fn name(self) -> &'static str {
        match self {
            Qkv::Fused => "fused",
            Qkv::Split => "split",
        }
    }
}

/// A spectral merge: θ = θ₀ + α Δ, Δ from the SVDs of every 2-D tensor's task vectors and the
/// mean of τ_k elsewhere.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spectral {
    /// TSV-M, Iso-C or Iso-CTS.
    pub variant: Variant,
    /// Scale of the merged update (FusionBench: 1).
    pub alpha: f64,
    /// q/k/v fused or split.
    pub qkv: Qkv,
}

impl Spectral {
    /// Checks α and Iso-CTS's common fraction.
    pub fn new(variant: Variant, alpha: f64, qkv: Qkv) -> Result<Self> {
        check_range("alpha", alpha, -10.0, 10.0)?;
        if let Variant::IsoCts { common } = variant {
            check_fraction("common_fraction", common)?;
        }
        Ok(Self {
            variant,
            alpha,
            qkv,
        })
    }

    /// θ₀ + α Δ over every merged tensor, the 2-D ones' Δ taken from `deltas` (computed for
    /// this merge's variant and q/k/v mode by [`SpectralDeltas`]).
    pub fn merge_from(&self, tv: &TaskVectors, deltas: &Weights) -> Result<Weights> {
        tv.theta0().try_map(|name, t0| match deltas.get(name) {
            Some(d) => Ok(t0.data.clone() + d.data.clone().mul_scalar(self.alpha as f32)),
            None => mean_update(tv, name, self.alpha),
        })
    }
}

impl MergeMethod for Spectral {
    fn name(&self) -> &'static str {
        match self.variant {
            Variant::TsvM => "tsv-m",
            Variant::IsoC => "iso-c",
            Variant::IsoCts { .. } => "iso-cts",
        }
    }
    fn reference(&self) -> &'static str {
        match self.variant {
            Variant::TsvM => {
                "Gargiulo et al., Task Singular Vectors: Reducing Task Interference in Model \
                 Merging, CVPR 2025"
            }
            _ => {
                "Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and \
                 Task-Specific Subspaces, ICML 2025"
            }
        }
    }
    fn label(&self) -> String {
        let common = match self.variant {
            Variant::IsoCts { common } => format!(",common={}", fmt_param(common)),
            _ => String::new(),
        };
        format!(
            "{}(alpha={}{common},qkv={})",
            self.name(),
            fmt_param(self.alpha),
            self.qkv.name()
        )
    }
    fn prepare<'a>(&self, tv: &'a TaskVectors) -> Result<Box<dyn TensorMerge + 'a>> {
        Ok(Box::new(SpectralMerge {
            spec: *self,
            tv,
            units: matrix_units(tv.theta0(), self.qkv),
            last: Mutex::new(None),
        }))
    }
    fn spectral(&self) -> Option<&Spectral> {
        Some(self)
    }
}

/// θ₀ + α · mean_k τ_k for tensor `name`: what every tensor outside the SVDs gets.
fn mean_update(tv: &TaskVectors, name: &str, alpha: f64) -> Result<Tensor<1>> {
    let t0 = tv.theta0().require(name)?;
    let k = tv.num_tasks();
    by_chunks(t0.numel(), |r| {
        let mut sum = tv.tau_part(0, name, r.clone())?;
        for j in 1..k {
            sum = sum + tv.tau_part(j, name, r.clone())?;
        }
        Ok(part(&t0.data, r) + sum.mul_scalar((alpha / k as f64) as f32))
    })
}

/// One matrix decomposed as a whole: a 2-D tensor, or a block's q, k and v stacked by rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixUnit {
    /// Its tensors, top to bottom, each with its number of rows.
    pub parts: Vec<(String, usize)>,
    /// Columns (the input dimension of a Hugging Face [out, in] weight).
    pub cols: usize,
}

impl MatrixUnit {
    /// The name a progress bar or an error shows: the tensor, or the fused `in_proj.weight`.
    pub fn name(&self) -> String {
        match self.parts.as_slice() {
            [(one, _)] => one.clone(),
            [(q, _), ..] => q.replace("q_proj.weight", "in_proj.weight"),
            [] => String::new(),
        }
    }

    fn rows(&self) -> usize {
        self.parts.iter().map(|(_, r)| r).sum()
    }

    /// A [rows, cols] matrix of this unit split back into its tensors (flat f32 on `device`).
    pub(crate) fn split(&self, m: &Mat<f64>, device: &Device) -> Vec<Tensor<1>> {
        let mut row = 0;
        self.parts
            .iter()
            .map(|(_, rows)| {
                let values: Vec<f32> = (row..row + rows)
                    .flat_map(|i| (0..self.cols).map(move |j| (i, j)))
                    .map(|(i, j)| m[(i, j)] as f32)
                    .collect();
                row += rows;
                FlatTensor::from_vec(values, vec![*rows, self.cols], device).data
            })
            .collect()
    }

    /// The error of an SVD of this unit's task matrices that did not converge.
    pub(crate) fn not_converged(&self) -> Error {
        Error::Tensor {
            tensor: self.name(),
            reason: "the SVD of its task vectors did not converge".into(),
        }
    }
}

/// Every 2-D tensor of `theta0` as a matrix unit, in tensor order; with `Qkv::Fused`, a block's
/// q, k and v weights (all 2-D, equal columns) make one unit in that order, placed where q is.
pub fn matrix_units(theta0: &Weights, qkv: Qkv) -> Vec<MatrixUnit> {
    let matrix = |name: &str| {
        theta0
            .get(name)
            .filter(|t| t.shape.len() == 2)
            .map(|t| (t.shape[0], t.shape[1]))
    };
    let fused_of = |name: &str| -> Option<[String; 3]> {
        let stem = ["q_proj.weight", "k_proj.weight", "v_proj.weight"]
            .iter()
            .find_map(|p| name.strip_suffix(p))?
            .strip_suffix("self_attn.")
            .map(|s| format!("{s}self_attn."))?;
        let names = ["q", "k", "v"].map(|p| format!("{stem}{p}_proj.weight"));
        let shapes: Vec<_> = names.iter().map(|n| matrix(n)).collect();
        let cols = shapes.first().copied().flatten()?.1;
        shapes
            .iter()
            .all(|s| s.is_some_and(|(_, c)| c == cols))
            .then_some(names)
    };
    let mut units = Vec::new();
    for (name, t) in theta0.iter() {
        if t.shape.len() != 2 {
            continue;
        }
        match (qkv, fused_of(name)) {
            (Qkv::Fused, Some(names)) => {
                if name == names[0] {
                    units.push(MatrixUnit {
                        parts: names
                            .iter()
                            .map(|n| (n.clone(), matrix(n).map_or(0, |s| s.0)))
                            .collect(),
                        cols: t.shape[1],
                    });
                }
            }
            _ => units.push(MatrixUnit {
                parts: vec![(name.to_string(), t.shape[0])],
                cols: t.shape[1],
            }),
        }
    }
    units
}

/// Every task's matrix of `unit` in f64.
pub(crate) fn task_matrices(tv: &TaskVectors, unit: &MatrixUnit) -> Result<Vec<Mat<f64>>> {
    (0..tv.num_tasks())
        .map(|k| task_matrix(tv, k, unit))
        .collect()
}

/// Task `k`'s matrix of `unit` in f64.
fn task_matrix(tv: &TaskVectors, k: usize, unit: &MatrixUnit) -> Result<Mat<f64>> {
    let mut values = Vec::with_capacity(unit.rows() * unit.cols);
    for (name, _) in &unit.parts {
        values.extend(tensor_to_vec(tv.tau(k, name)?)?);
    }
    let cols = unit.cols;
    Ok(Mat::from_fn(unit.rows(), cols, |i, j| {
        f64::from(values[i * cols + j])
    }))
}

/// Each variant's Δ of `unit`, split back into its tensors (flat f32 on the task vectors'
/// device).
fn unit_deltas(
    tv: &TaskVectors,
    unit: &MatrixUnit,
    variants: &[Variant],
) -> Result<Vec<Vec<Tensor<1>>>> {
    let mats = task_matrices(tv, unit)?;
    let ds = deltas(&mats, variants).map_err(|NoConvergence| unit.not_converged())?;
    let device = tv.theta0().require(&unit.parts[0].0)?.data.device();
    Ok(ds.iter().map(|d| unit.split(d, &device)).collect())
}

/// A spectral merge prepared for streaming: a unit's Δ is computed when its first tensor is
/// asked for and kept until another unit's is (a fused q/k/v unit serves three tensors), so
/// memory holds the checkpoints and one unit's factors.
struct SpectralMerge<'a> {
    spec: Spectral,
    tv: &'a TaskVectors,
    units: Vec<MatrixUnit>,
    last: Mutex<Option<(usize, Vec<Tensor<1>>)>>,
}

impl TensorMerge for SpectralMerge<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor<1>> {
        let found = self.units.iter().enumerate().find_map(|(u, unit)| {
            let p = unit.parts.iter().position(|(n, _)| n == name)?;
            Some((u, p))
        });
        let Some((u, p)) = found else {
            return mean_update(self.tv, name, self.spec.alpha);
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref().is_none_or(|(i, _)| *i != u) {
            let mut d = unit_deltas(self.tv, &self.units[u], &[self.spec.variant])?;
            *last = Some((u, d.remove(0)));
        }
        let delta = last.as_ref().expect("just computed").1[p].clone();
        let t0 = &self.tv.theta0().require(name)?.data;
        Ok(t0.clone() + delta.mul_scalar(self.spec.alpha as f32))
    }
}

/// The Δ of several spectral merges over one run's task vectors, computed in one pass over the
/// matrix units: each unit's SVDs are shared by every variant that needs them, and every α of a
/// sweep reuses its variant's Δ. Holds one Δ (the size of the 2-D tensors) per variant.
pub struct SpectralDeltas {
    entries: Vec<((Variant, Qkv), Weights)>,
    /// Wall time of the pass.
    pub seconds: f64,
}

impl SpectralDeltas {
    /// Δ for every (variant, q/k/v) of `specs` (duplicates computed once); `progress` counts
    /// units.
    pub fn compute(tv: &TaskVectors, specs: &[Spectral], progress: &ProgressBar) -> Result<Self> {
        let start = std::time::Instant::now();
        let mut entries: Vec<((Variant, Qkv), Weights)> = Vec::new();
        for s in specs {
            if !entries.iter().any(|(k, _)| *k == (s.variant, s.qkv)) {
                entries.push(((s.variant, s.qkv), Weights::new()));
            }
        }
        for qkv in [Qkv::Fused, Qkv::Split] {
            let slots: Vec<usize> = (0..entries.len())
                .filter(|&i| entries[i].0.1 == qkv)
                .collect();
            if slots.is_empty() {
                continue;
            }
            let variants: Vec<Variant> = slots.iter().map(|&i| entries[i].0.0).collect();
            let units = matrix_units(tv.theta0(), qkv);
            progress.inc_length(units.len() as u64);
            for unit in &units {
                let ds = unit_deltas(tv, unit, &variants)?;
                for (&slot, parts) in slots.iter().zip(ds) {
                    for ((name, _), data) in unit.parts.iter().zip(parts) {
                        let shape = tv.theta0().require(name)?.shape.clone();
                        entries[slot]
                            .1
                            .insert(name.clone(), FlatTensor { data, shape });
                    }
                }
                progress.inc(1);
            }
        }
        Ok(Self {
            entries,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The Δ computed for `spec`'s variant and q/k/v mode.
    pub fn get(&self, spec: &Spectral) -> Option<&Weights> {
        self.entries
            .iter()
            .find(|(k, _)| *k == (spec.variant, spec.qkv))
            .map(|(_, w)| w)
    }
}
