//! Learned coefficients over singular components (AdaRank, Lee et al., ICLR 2026, and our TSV-M
//! base): each task's matrix units decomposed once, and θ₀ + Σ_k λ_{k,u} Σ_i ĉ_{k,i} s_i u_i v_iᵀ
//! merged from λ and the masks ĉ (docs/design.md §3).

use std::borrow::Borrow;
use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use faer::Mat;
use serde::{Deserialize, Serialize};

use super::spectral::task_matrices;
use super::{MatrixUnit, Qkv, TensorMerge, WeightedSum, check_fraction, check_range, matrix_units};
use crate::error::{Error, Result};
use crate::spectral::{ComponentBase, NoConvergence, components};
use crate::task_vector::{Layering, TaskVectors};

/// The AdaRank paper.
pub const ADARANK_PAPER: &str = "Lee et al., AdaRank: Adaptive Rank Pruning for Enhanced Model \
                                 Merging, ICLR 2026 (arXiv 2503.22178)";

/// Where the components come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Base {
    /// Each task vector's own SVD (AdaRank's Task Arithmetic base).
    #[default]
    Ta,
    /// TSV-M's components: each task's top ⌊r/K⌋, orthogonalised across tasks.
    TsvM,
}

/// Which matrices are decomposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decompose {
    /// Attention and MLP weights of every block (AdaRank's).
    #[default]
    AttnMlp,
    /// Every 2-D merged tensor (TSV-M's).
    Matrices,
}

/// How a component's coefficient is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskKind {
    /// 1[σ(m/T) > 0.5] forward, σ(m/T)'s gradient backward (AdaRank's straight-through mask).
    #[default]
    Hard,
    /// σ(m/T), a continuous value in [0, 1].
    Soft,
}

/// What a decomposed task vector keeps beyond its learned components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rest {
    /// Nothing: a truncated task vector is its components (AdaRank's truncated SVD, TSV-M).
    #[default]
    Drop,
    /// τ − its components, weighted by λ with no mask.
    Keep,
}

/// The settings of a learned merge over singular components.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentConfig {
    /// Task Arithmetic (AdaRank's) or TSV-M components.
    pub base: Base,
    /// Which matrices are decomposed.
    pub decompose: Decompose,
    /// q/k/v as one matrix or three.
    pub qkv: Qkv,
    /// Fraction of each task matrix's rank that gets a coefficient (task-arithmetic base).
    pub rank: f64,
    /// What the components of a truncated task vector leave out (task-arithmetic base).
    pub rest: Rest,
    /// Hard (straight-through) or soft masks.
    pub mask: MaskKind,
    /// T in σ(m/T).
    pub temperature: f64,
    /// The mask logits' start.
    pub mask_init: f64,
}

impl Default for ComponentConfig {
    fn default() -> Self {
        Self {
            base: Base::Ta,
            decompose: Decompose::AttnMlp,
            qkv: Qkv::Fused,
            rank: 1.0,
            rest: Rest::Drop,
            mask: MaskKind::Hard,
            temperature: 10.0,
            mask_init: 0.1,
        }
    }
}

impl ComponentConfig {
    /// Checks every value, naming the offending option.
    pub fn validate(&self) -> Result<()> {
        check_fraction("rank", self.rank)?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::invalid(
                "temperature",
                format!("{} is not a positive number", self.temperature),
            ));
        }
        check_range("mask_init", self.mask_init, -1e6, 1e6)?;
        if self.base == Base::TsvM && self.rest == Rest::Keep {
            return Err(Error::invalid(
                "rest",
                "`keep` needs the task-arithmetic base: TSV-M's orthogonalised components leave \
                 no rest of a task vector",
            ));
        }
        Ok(())
    }

    /// The mask values the forward applies for logits `m`, and the factor ∂ĉ/∂m.
    pub fn masks(&self, logits: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let t = self.temperature as f32;
        logits
            .iter()
            .map(|m| {
                let c = 1.0 / (1.0 + (-m / t).exp());
                let forward = match self.mask {
                    MaskKind::Hard => f32::from(u8::from(c > 0.5)),
                    MaskKind::Soft => c,
                };
                (forward, c * (1.0 - c) / t)
            })
            .unzip()
    }

    /// The factor by which λ weighs a tensor that is not decomposed: 1, or 1/K with the TSV-M
    /// base, whose other tensors take the mean of τ_k (so λ = 1 starts at TSV-M itself).
    pub fn other_scale(&self, tasks: usize) -> f32 {
        match self.base {
            Base::Ta => 1.0,
            Base::TsvM => 1.0 / tasks as f32,
        }
    }

    fn is_decomposed(&self, unit: &MatrixUnit) -> bool {
        match self.decompose {
            Decompose::Matrices => true,
            Decompose::AttnMlp => unit.parts.iter().all(|(n, _)| {
                (n.contains(".self_attn.") || n.contains(".mlp.")) && n.ends_with(".weight")
            }),
        }
    }
}

/// One decomposed matrix unit: every task's components side by side.
pub struct DecomposedUnit {
    /// The unit's name (the tensor, or the fused `in_proj.weight`).
    pub name: String,
    /// Its tensors, top to bottom, with their rows.
    pub parts: Vec<(String, usize)>,
    /// Columns.
    pub cols: usize,
    /// Components per task.
    pub counts: Vec<usize>,
    /// Singular values, task after task.
    pub sigma: Vec<f32>,
    /// Where this unit's masks start in the flat mask vector (unit-major, then task, then
    /// component).
    pub offset: usize,
    /// Left vectors [rows of the part, R] per part, R = Σ counts.
    u: Vec<Tensor<2>>,
    /// Right vectors [cols, R].
    v: Tensor<2>,
    /// τ − components, per task and part (rest = keep).
    rest: Option<Vec<Vec<Tensor<1>>>>,
}

impl DecomposedUnit {
    /// Components over all tasks, R.
    pub fn len(&self) -> usize {
        self.sigma.len()
    }

    /// Whether no task has a component here.
    pub fn is_empty(&self) -> bool {
        self.sigma.is_empty()
    }

    /// Task `k`'s components' range within this unit.
    pub fn task_range(&self, k: usize) -> std::ops::Range<usize> {
        let start: usize = self.counts[..k].iter().sum();
        start..start + self.counts[k]
    }
}

/// Every decomposed unit of a run, computed once (f64 SVDs, faer) and held as frozen f32 tensors.
pub struct Decomposition {
    config: ComponentConfig,
    units: Vec<DecomposedUnit>,
    /// Tensor name → (unit, part).
    part_of: HashMap<String, (usize, usize)>,
}

impl Decomposition {
    /// Decomposes `tv`'s matrix units as `config` says.
    pub fn compute(tv: &TaskVectors, config: &ComponentConfig) -> Result<Self> {
        config.validate()?;
        let base = match config.base {
            Base::Ta => ComponentBase::TaskArithmetic { rank: config.rank },
            Base::TsvM => ComponentBase::TsvM,
        };
        let mut units = Vec::new();
        let mut part_of = HashMap::new();
        for unit in matrix_units(tv.theta0(), config.qkv) {
            if !config.is_decomposed(&unit) {
                continue;
            }
            let mats = task_matrices(tv, &unit)?;
            let comps = components(&mats, base, config.rest == Rest::Keep)
                .map_err(|NoConvergence| unit.not_converged())?;
            let device = tv.theta0().require(&unit.parts[0].0)?.data.device();
            for (p, (name, _)) in unit.parts.iter().enumerate() {
                part_of.insert(name.clone(), (units.len(), p));
            }
            let offset = units.iter().map(DecomposedUnit::len).sum();
            units.push(DecomposedUnit::new(&unit, comps, offset, &device));
        }
        Ok(Self {
            config: *config,
            units,
            part_of,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ComponentConfig {
        &self.config
    }

    /// The decomposed units, in tensor order.
    pub fn units(&self) -> &[DecomposedUnit] {
        &self.units
    }

    /// Mask logits in all (unit-major, then task, then component), M.
    pub fn num_masks(&self) -> usize {
        self.units.iter().map(DecomposedUnit::len).sum()
    }

    /// (unit, part) of a decomposed tensor.
    pub fn part_of(&self, name: &str) -> Option<(usize, usize)> {
        self.part_of.get(name).copied()
    }

    /// Σ_k λ_{k,u} ĉ_{k,i} s_{k,i} u_i v_iᵀ (+ λ rest) over the rows of one part: its update.
    fn update(&self, unit: usize, part: usize, weights: &[f32], lambda: &[f32]) -> Tensor<1> {
        let d = &self.units[unit];
        let (_, rows) = &d.parts[part];
        let device = d.v.device();
        let mut out = if d.is_empty() {
            Tensor::zeros([rows * d.cols], &device)
        } else {
            let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [d.len()]), &device);
            let scaled = d.u[part].clone() * w.unsqueeze_dim::<2>(0);
            scaled
                .matmul(d.v.clone().transpose())
                .reshape([rows * d.cols])
        };
        if let Some(rest) = &d.rest {
            for (k, parts) in rest.iter().enumerate() {
                if lambda[k] != 0.0 {
                    out = out + parts[part].clone().mul_scalar(lambda[k]);
                }
            }
        }
        out
    }

    /// For the gradient G of one decomposed tensor: diag(U_partᵀ G V) over the unit's R
    /// components, as a tensor (read back with the others in one transfer).
    pub fn projected_gradient(&self, name: &str, grad: Tensor<1>) -> Option<Tensor<1>> {
        let (unit, part) = self.part_of(name)?;
        let d = &self.units[unit];
        if d.is_empty() {
            return None;
        }
        let rows = d.parts[part].1;
        let g: Tensor<2> = grad.reshape([rows, d.cols]);
        Some(
            (g.matmul(d.v.clone()) * d.u[part].clone())
                .sum_dim(0)
                .reshape([d.len()]),
        )
    }

    /// The rest of task `k` on tensor `name` (rest = keep), for λ's gradient.
    pub fn rest(&self, k: usize, name: &str) -> Option<&Tensor<1>> {
        let (unit, part) = self.part_of(name)?;
        self.units[unit].rest.as_ref().map(|r| &r[k][part])
    }
}

impl DecomposedUnit {
    fn new(
        unit: &MatrixUnit,
        comps: Vec<crate::spectral::TaskComponents>,
        offset: usize,
        device: &Device,
    ) -> Self {
        let counts: Vec<usize> = comps.iter().map(|c| c.s.len()).collect();
        let total: usize = counts.iter().sum();
        let sigma: Vec<f32> = comps
            .iter()
            .flat_map(|c| c.s.iter().map(|&s| s as f32))
            .collect();
        let stacked = |rows: usize,
                       side: &dyn Fn(&crate::spectral::TaskComponents) -> &Mat<f64>,
                       row0: usize| {
            let mut values = Vec::with_capacity(rows * total);
            for i in row0..row0 + rows {
                for c in &comps {
                    let m = side(c);
                    values.extend((0..m.ncols()).map(|j| m[(i, j)] as f32));
                }
            }
            Tensor::<2>::from_data(TensorData::new(values, [rows, total]), device)
        };
        let mut row0 = 0;
        let mut u = Vec::new();
        for (_, rows) in &unit.parts {
            u.push(stacked(*rows, &|c| &c.u, row0));
            row0 += rows;
        }
        let v = stacked(unit.cols, &|c| &c.v, 0);
        // Every task has its rest, or none has (`rest = keep` or not).
        let rest = comps
            .iter()
            .map(|c| c.rest.as_ref().map(|r| unit.split(r, device)))
            .collect();
        Self {
            name: unit.name(),
            parts: unit.parts.clone(),
            cols: unit.cols,
            counts,
            sigma,
            offset,
            u,
            v,
            rest,
        }
    }
}

/// θ₀ + Σ_k λ_{k,u} (Σ_i ĉ_{k,i} s_{k,i} u_i v_iᵀ [+ rest]) on decomposed tensors and θ₀ + Σ_k
/// λ_{k,u} τ_k (× 1/K with the TSV-M base) elsewhere.
pub struct ComponentMerge<'a, D: Borrow<Decomposition> = &'a Decomposition> {
    tv: &'a TaskVectors,
    decomposition: D,
    others: WeightedSum<&'a TaskVectors>,
    unit_of: HashMap<String, usize>,
    /// Applied λ, row-major [K, L].
    lambda: Vec<f32>,
    units: usize,
    /// Applied masks, flat.
    masks: Vec<f32>,
    tasks: usize,
}

impl<'a, D: Borrow<Decomposition>> ComponentMerge<'a, D> {
    /// The merge at applied λ (row-major [K, L] over `layering`) and applied masks (flat, in
    /// the decomposition's order).
    pub fn new(
        tv: &'a TaskVectors,
        decomposition: D,
        layering: &Layering,
        lambda: Vec<f32>,
        masks: Vec<f32>,
    ) -> Result<Self> {
        let d = decomposition.borrow();
        if masks.len() != d.num_masks() {
            return Err(Error::invalid(
                "masks",
                format!("{} values for {} components", masks.len(), d.num_masks()),
            ));
        }
        let scale = d.config.other_scale(tv.num_tasks());
        let others = WeightedSum::new(tv, layering, lambda.iter().map(|l| l * scale).collect())?;
        Ok(Self {
            tv,
            decomposition,
            others,
            unit_of: layering
                .unit_index()
                .into_iter()
                .map(|(n, u)| (n.to_string(), u))
                .collect(),
            units: layering.len(),
            lambda,
            masks,
            tasks: tv.num_tasks(),
        })
    }

    /// λ_{k,u(t)} for every task k, u(t) the unit of tensor `name`.
    fn lambda_of(&self, name: &str) -> Result<Vec<f32>> {
        let u = self.unit_of.get(name).copied().ok_or_else(|| {
            Error::invalid("tensor", format!("`{name}` belongs to no coefficient unit"))
        })?;
        Ok((0..self.tasks)
            .map(|k| self.lambda[k * self.units + u])
            .collect())
    }
}

impl<D: Borrow<Decomposition>> TensorMerge for ComponentMerge<'_, D> {
    fn tensor(&self, name: &str) -> Result<Tensor<1>> {
        let decomposition = self.decomposition.borrow();
        let Some((unit, part)) = decomposition.part_of(name) else {
            return self.others.tensor(name);
        };
        let d = &decomposition.units[unit];
        let lambda = self.lambda_of(name)?;
        let off = d.offset;
        let mut weights = vec![0f32; d.len()];
        for (k, l) in lambda.iter().enumerate() {
            for i in d.task_range(k) {
                weights[i] = l * self.masks[off + i] * d.sigma[i];
            }
        }
        let t0 = self.tv.theta0().require(name)?.data.clone();
        Ok(t0 + decomposition.update(unit, part, &weights, &lambda))
    }
}
