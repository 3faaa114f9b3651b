//! One AdaMerging learner: λ, burn's Adam, and the gradient of the entropy objective.

use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::batches::BatchSource;
use super::coefficients::{Coefficients, Granularity, effective};
use super::objective::mean_entropy;
use crate::config::VisionConfig;
use crate::device::{side_by_side, wave};
use crate::error::{Error, Result};
use crate::eval::check_head_width;
use crate::kernels;
use crate::merge::{
    Aggregate, Base, ComponentConfig, ComponentMerge, Decomposition, MaskKind, TensorMerge, Ties,
    TrimScope, WeightedSum, merge_all,
};
use crate::model::{VisionTower, logits};
use crate::task_vector::{Layering, LayeringKind, TaskVectors};
use crate::weights::{TensorGrads, Weights, add_grads, tensor_to_vec};

/// What is learned and how (docs/design.md §3 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnConfig {
    /// One λ per task, or per task and unit.
    pub granularity: Granularity,
    /// How tensors group into units (layer granularity).
    pub layering: LayeringKind,
    /// Adam steps.
    pub steps: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Initial λ.
    pub init: f64,
    /// Clamp λ to [0, 1] in the forward.
    pub clamp: bool,
    /// Images per batch.
    pub batch_size: usize,
    /// Batches read per task per step (the official code reads 2).
    pub batches_per_task: usize,
    /// Seed of the batch sampling.
    pub seed: u64,
    /// AdaMerging++: learn over TIES-processed task vectors trimmed to this fraction.
    pub ties_k: Option<f64>,
    /// Tasks whose batches share one forward and one backward, the groups in turn; `None` picks
    /// from [`FORWARD_BUDGET_BYTES`] of activations (see [`LearnConfig::forward_plan`]), 1 is
    /// one task at a time (the least memory). Only float rounding depends on it.
    pub tasks_per_forward: Option<usize>,
    /// AdaRank: learn masks over the singular components of the task vectors' matrices too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub components: Option<ComponentConfig>,
}

/// The activation memory the automatic [`LearnConfig::tasks_per_forward`] fills (4 GiB).
pub const FORWARD_BUDGET_BYTES: usize = 4 << 30;

impl Default for LearnConfig {
    fn default() -> Self {
        Self {
            granularity: Granularity::Layer,
            layering: LayeringKind::Paper,
            steps: 500,
            lr: 1e-3,
            init: 0.3,
            clamp: true,
            batch_size: 16,
            batches_per_task: 1,
            seed: 0,
            ties_k: None,
            tasks_per_forward: None,
            components: None,
        }
    }
}

impl LearnConfig {
    /// Checks every value, naming the offending option.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("batches_per_task", self.batches_per_task),
            ("tasks_per_forward", self.tasks_per_forward.unwrap_or(1)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::invalid(*key, "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(
                "lr",
                format!("{} is not a positive number", self.lr),
            ));
        }
        if !self.init.is_finite() {
            return Err(Error::invalid("init", "must be finite"));
        }
        if let Some(k) = self.ties_k
            && !(k > 0.0 && k <= 1.0)
        {
            return Err(Error::invalid("ties_k", format!("{k} is not in (0, 1]")));
        }
        if let Some(c) = &self.components {
            c.validate()?;
            if self.ties_k.is_some() {
                return Err(Error::invalid(
                    "ties_k",
                    "masks over singular components are learned on plain task vectors",
                ));
            }
        }
        Ok(())
    }

    /// The method's name in tables: `adamerging[++](task|layer)`, `adarank(ta|tsv-m,hard|soft)`.
    pub fn label(&self) -> String {
        if let Some(c) = &self.components {
            let base = match c.base {
                Base::Ta => "ta",
                Base::TsvM => "tsv-m",
            };
            let mask = match c.mask {
                MaskKind::Hard => "hard",
                MaskKind::Soft => "soft",
            };
            return format!("adarank({base},{mask})");
        }
        let pp = if self.ties_k.is_some() { "++" } else { "" };
        format!("adamerging{pp}({})", self.granularity)
    }

    /// The label of one run among others: [`LearnConfig::label`] with the settings that differ
    /// from the defaults (`adamerging(layer)[steps=200,lr=0.01]`), a result key.
    pub fn run_label(&self) -> String {
        let d = Self::default();
        let mut extra = Vec::new();
        if self.steps != d.steps {
            extra.push(format!("steps={}", self.steps));
        }
        if self.lr != d.lr {
            extra.push(format!("lr={}", self.lr));
        }
        if self.batches_per_task != d.batches_per_task {
            extra.push(format!("batches={}", self.batches_per_task));
        }
        if let Some(c) = &self.components {
            let d = ComponentConfig::default();
            if self.granularity == Granularity::Task {
                extra.push("task".into());
            }
            if c.rank != d.rank {
                extra.push(format!("rank={}", c.rank));
            }
            if c.rest != d.rest {
                extra.push("rest".into());
            }
            if c.qkv != d.qkv {
                extra.push("qkv=split".into());
            }
            if c.temperature != d.temperature {
                extra.push(format!("T={}", c.temperature));
            }
        }
        let label = self.label();
        if extra.is_empty() {
            label
        } else {
            format!("{label}[{}]", extra.join(","))
        }
    }

    /// The task vectors λ weights: `tv` itself, or for AdaMerging++ its TIES-processed
    /// per-task vectors (trimmed to `ties_k`, sign-agreeing, kept apart), built in place.
    pub fn task_vectors(&self, tv: TaskVectors) -> Result<TaskVectors> {
        match self.ties()? {
            None => Ok(tv),
            Some(ties) => ties.prepare_source(tv)?.into_task_vectors(),
        }
    }

    /// AdaMerging++'s TIES processing (global top-k trim, sign election), if any. λ and
    /// aggregation are not used: the per-task vectors are weighted by the learned λ.
    pub fn ties(&self) -> Result<Option<Ties>> {
        self.ties_k
            .map(|k| Ties::new(k, 1.0, Aggregate::Sum, TrimScope::Global))
            .transpose()
    }

    /// Tasks per forward for a tower of shape `cfg`: the configured number, or as many as
    /// fit [`FORWARD_BUDGET_BYTES`] by [`activation_bytes_per_image`] (at least one).
    pub fn tasks_per_forward(&self, cfg: &VisionConfig) -> usize {
        self.tasks_per_forward.unwrap_or_else(|| {
            let per_task = activation_bytes_per_image(cfg)
                .saturating_mul(self.batch_size.saturating_mul(self.batches_per_task))
                .max(1);
            (FORWARD_BUDGET_BYTES / per_task).max(1)
        })
    }

    /// How a step's `k` tasks go through a tower of shape `cfg` on a device that runs `width`
    /// forwards side by side ([`side_by_side`]): tasks per forward and how many such groups run
    /// at once, each forward and backward on its own thread. A set
    /// `tasks_per_forward` runs its groups one at a time (its memory is the point). Unset, when
    /// all `k` tasks fit [`FORWARD_BUDGET_BYTES`] they go in two halves side by side, so that
    /// both cores of a laptop work even where the tower's operations are too small for the CPU
    /// backend to split; when fewer fit, groups of half as many go two at a time (the same
    /// activations); when only one fits, one task at a time. The groups depend on `cfg` and `k`
    /// alone, never on the thread count.
    pub fn forward_plan(&self, cfg: &VisionConfig, k: usize, width: usize) -> (usize, usize) {
        let fit = self.tasks_per_forward(cfg);
        if self.tasks_per_forward.is_some() || k < 2 || width < 2 || fit < 2 {
            (fit, 1)
        } else if fit >= k {
            (k.div_ceil(2), 2)
        } else {
            (fit / 2, 2)
        }
    }

    /// The units λ's columns stand for, over the merged tensors `names`.
    pub fn layering<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Layering {
        match self.granularity {
            Granularity::Task => Layering::single(names),
            Granularity::Layer => Layering::new(self.layering, names),
        }
    }
}

/// An estimate of the activations a forward keeps for its backward, per image, in f32: per
/// encoder layer and token, twelve hidden-width vectors (norms, q, k, v, attention output,
/// residuals and the copies burn makes of them), four MLP-width ones and three per head and key
/// (scores, probabilities, their gradient). Calibrated on the measured peak of a ViT-B/32 step
/// (≈ 0.9 GiB more per task of 16 images, BENCHMARKS.md); it only sizes the joint forward.
pub fn activation_bytes_per_image(cfg: &VisionConfig) -> usize {
    let tokens = (cfg.image_size / cfg.patch_size.max(1)).pow(2) + 1;
    let per_token =
        12 * cfg.hidden_size + 4 * cfg.intermediate_size + 3 * cfg.num_attention_heads * tokens;
    (tokens * per_token)
        .saturating_mul(cfg.num_hidden_layers)
        .saturating_mul(std::mem::size_of::<f32>())
}

/// What one read-back value (or run of values) of the gradient pass stands for.
enum Read {
    /// ⟨G, τ⟩ for λ's `slot`, times `weight`.
    Dot { slot: usize, weight: f64 },
    /// diag(Uᵀ G V) over decomposed unit `unit`'s components; λ's column `column`.
    Diag { unit: usize, column: usize },
}

/// One step's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps done after this one (1-based).
    pub step: usize,
    /// The objective before the update: Σ over tasks and batches of the batch-mean entropy.
    pub loss: f64,
    /// Each task's share of the loss.
    pub entropy: Vec<f64>,
    /// Wall time of the step.
    pub seconds: f64,
}

/// λ, its optimiser and what the objective needs: the vision config, the (possibly
/// TIES-processed) task vectors and one head per task.
pub struct Learner<'a> {
    cfg: &'a VisionConfig,
    tv: &'a TaskVectors,
    heads: &'a [Tensor<2>],
    config: LearnConfig,
    layering: Layering,
    decomposition: Option<Decomposition>,
    coefficients: Coefficients,
    optimizer: ModuleOptimizer,
    ad_device: Device,
    /// Forwards the device runs side by side ([`side_by_side`]).
    width: usize,
    step: usize,
}

impl<'a> Learner<'a> {
    /// A learner at step 0 with λ = `config.init` everywhere.
    pub fn new(
        cfg: &'a VisionConfig,
        tv: &'a TaskVectors,
        heads: &'a [Tensor<2>],
        config: LearnConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if heads.len() != tv.num_tasks() {
            return Err(Error::invalid(
                "heads",
                format!("{} heads for {} tasks", heads.len(), tv.num_tasks()),
            ));
        }
        for (task, head) in tv.tasks().iter().zip(heads) {
            check_head_width(cfg, task, head)?;
        }
        let layering = config.layering(tv.theta0().names());
        let (k, l) = (tv.num_tasks(), layering.len());
        let ad_device = device.clone().autodiff();
        let decomposition = config
            .components
            .as_ref()
            .map(|c| Decomposition::compute(tv, c))
            .transpose()?;
        let masks = decomposition
            .as_ref()
            .map(|d| vec![d.config().mask_init as f32; d.num_masks()]);
        let coefficients = Coefficients::new(vec![config.init as f32; k * l], k, l, &ad_device)
            .with_masks(masks, &ad_device);
        Ok(Self {
            cfg,
            tv,
            heads,
            config,
            layering,
            decomposition,
            coefficients,
            optimizer: adam(),
            ad_device,
            width: side_by_side(device),
            step: 0,
        })
    }

    /// Replaces λ (row-major [K, L]); for a given start or a restored run.
    pub fn set_lambda(&mut self, values: Vec<f32>) -> Result<()> {
        let (k, l) = self.shape();
        if values.len() != k * l || values.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "lambda",
                format!("expected {} finite values ({k} tasks × {l} units)", k * l),
            ));
        }
        let masks = self.masks()?;
        self.coefficients =
            Coefficients::new(values, k, l, &self.ad_device).with_masks(masks, &self.ad_device);
        Ok(())
    }

    /// Replaces the mask logits (flat, the decomposition's order).
    pub fn set_masks(&mut self, values: Vec<f32>) -> Result<()> {
        let want = self
            .decomposition
            .as_ref()
            .map_or(0, Decomposition::num_masks);
        if self.decomposition.is_none()
            || values.len() != want
            || values.iter().any(|v| !v.is_finite())
        {
            return Err(Error::invalid(
                "masks",
                format!("expected {want} finite mask logits"),
            ));
        }
        let lambda = self.lambda()?;
        let (k, l) = self.shape();
        self.coefficients = Coefficients::new(lambda, k, l, &self.ad_device)
            .with_masks(Some(values), &self.ad_device);
        Ok(())
    }

    /// The mask logits, flat, when components are learned.
    pub fn masks(&self) -> Result<Option<Vec<f32>>> {
        self.coefficients.mask_values()
    }

    /// The decomposed units, when components are learned.
    pub fn decomposition(&self) -> Option<&Decomposition> {
        self.decomposition.as_ref()
    }

    /// (K, L).
    pub fn shape(&self) -> (usize, usize) {
        (self.tv.num_tasks(), self.layering.len())
    }

    /// The configuration.
    pub fn config(&self) -> &LearnConfig {
        &self.config
    }

    /// The units of λ's columns.
    pub fn layering(&self) -> &Layering {
        &self.layering
    }

    /// The task vectors λ weights.
    pub fn task_vectors(&self) -> &TaskVectors {
        self.tv
    }

    /// Steps done.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Raw λ, row-major [K, L].
    pub fn lambda(&self) -> Result<Vec<f32>> {
        self.coefficients.values()
    }

    /// λ as the forward uses it (clamped when configured).
    pub fn effective_lambda(&self) -> Result<Vec<f32>> {
        Ok(effective(&self.lambda()?, self.config.clamp))
    }

    /// The merge at the current coefficients, tensor by tensor.
    pub fn merger(&self) -> Result<Box<dyn TensorMerge + '_>> {
        let applied = self.applied_masks()?.map(|(applied, _)| applied);
        self.merger_at(effective(&self.lambda()?, self.config.clamp), applied)
    }

    /// The masks as the forward applies them and their factor ∂ĉ/∂m, when components are learned.
    fn applied_masks(&self) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        Ok(match (&self.decomposition, self.masks()?) {
            (Some(d), Some(m)) => Some(d.config().masks(&m)),
            _ => None,
        })
    }

    /// The merge at applied λ (row-major [K, L]) and applied masks.
    fn merger_at(
        &self,
        lambda: Vec<f32>,
        masks: Option<Vec<f32>>,
    ) -> Result<Box<dyn TensorMerge + '_>> {
        Ok(match (&self.decomposition, masks) {
            (Some(d), Some(m)) => {
                Box::new(ComponentMerge::new(self.tv, d, &self.layering, lambda, m)?)
            }
            _ => Box::new(WeightedSum::new(self.tv, &self.layering, lambda)?),
        })
    }

    /// The merged model at the current λ (frozen tensors included, ready to score).
    pub fn merged(&self) -> Result<Weights> {
        Ok(self
            .tv
            .complete(merge_all(self.tv.theta0(), &*self.merger()?)?))
    }

    /// The objective at the current coefficients on step `step`'s batches, and its gradient:
    /// ∂loss/∂λ (row-major [K, L]) followed by ∂loss/∂(mask logits) when components are learned.
    pub fn gradient(&self, source: &dyn BatchSource) -> Result<(Vec<f32>, StepRecord)> {
        let start = Instant::now();
        let k_tasks = self.tv.num_tasks();
        if source.num_tasks() != k_tasks {
            return Err(Error::invalid(
                "batches",
                format!("{} tasks of data for {k_tasks} tasks", source.num_tasks()),
            ));
        }
        let raw = self.lambda()?;
        let lambda = effective(&raw, self.config.clamp);
        let (applied, factor) = self.applied_masks()?.unzip();
        let merged = merge_all(
            self.tv.theta0(),
            &*self.merger_at(lambda.clone(), applied.clone())?,
        )?;
        let (grad_w, entropy) = self.backward(source, &merged)?;
        let (mut grad, mut mask_grad) =
            self.chain_rule(&grad_w, &lambda, applied.as_deref().unwrap_or_default())?;
        if self.config.clamp {
            // torch.clamp's gradient: 1 inside [0, 1], bounds included, 0 outside.
            for (g, l) in grad.iter_mut().zip(raw) {
                if !(0.0..=1.0).contains(&l) {
                    *g = 0.0;
                }
            }
        }
        // Hard masks pass σ's gradient straight through; soft ones are σ itself.
        for (g, f) in mask_grad.iter_mut().zip(factor.unwrap_or_default()) {
            *g *= f64::from(f);
        }
        let record = StepRecord {
            step: self.step + 1,
            loss: entropy.iter().sum(),
            entropy,
            seconds: start.elapsed().as_secs_f64(),
        };
        let flat = grad
            .into_iter()
            .chain(mask_grad)
            .map(|g| g as f32)
            .collect();
        Ok((flat, record))
    }

    /// ∂loss/∂W for every merged tensor (None where no gradient reaches it), and each task's
    /// entropy, from the forwards and backwards of this step's batches at the `merged` weights.
    fn backward(
        &self,
        source: &dyn BatchSource,
        merged: &Weights,
    ) -> Result<(TensorGrads, Vec<f64>)> {
        let k_tasks = self.tv.num_tasks();
        let mut grad_w: TensorGrads = vec![None; merged.len()];
        let mut entropy = vec![0.0; k_tasks];
        // Every task's batches go through the same merged weights, so groups of tasks share one
        // forward (bigger matmuls, fewer operations) and one backward; the heads and entropies
        // are split after the tower. Σ of the groups' gradients, in group order whichever
        // thread finished first, is the step's gradient.
        let per_task = source.batches_per_task();
        let batches: Vec<(usize, usize)> = (0..k_tasks)
            .flat_map(|task| (0..per_task).map(move |b| (task, b)))
            .collect();
        let (tasks, at_once) = self.config.forward_plan(self.cfg, k_tasks, self.width);
        // Saturating: a user's huge `tasks_per_forward` means "all", never a wrapped 0.
        let group = tasks.saturating_mul(per_task).max(1);
        let groups: Vec<&[(usize, usize)]> = batches.chunks(group).collect();
        let pass = GroupPass {
            cfg: self.cfg,
            tv: self.tv,
            heads: self.heads,
            step: self.step,
            source,
            merged,
        };
        for groups in groups.chunks(at_once.max(1)) {
            for (grads, entropies) in wave(groups, |chunk| pass.run(chunk))? {
                for (task, v) in entropies {
                    entropy[task] += v;
                }
                add_grads(&mut grad_w, grads);
            }
        }
        Ok((grad_w, entropy))
    }

    /// The chain rule from ∂loss/∂W to ∂loss/∂λ (applied λ, [K·L]) and ∂loss/∂ĉ (the applied
    /// masks', before their factor): ⟨∂loss/∂W_t, τ_{k,t}⟩ for every tensor t and task k, and
    /// diag(Uᵀ ∂loss/∂W_t V) for a decomposed one, read back in one transfer.
    fn chain_rule(
        &self,
        grad_w: &[Option<Tensor<1>>],
        lambda: &[f32],
        applied: &[f32],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let (k_tasks, l_units) = self.shape();
        let unit_index = self.layering.unit_index();
        let decomposition = self.decomposition.as_ref();
        let scale = decomposition.map_or(1.0, |d| f64::from(d.config().other_scale(k_tasks)));
        let mut dots = Vec::new();
        let mut reads = Vec::new();
        for ((name, _), g) in self.tv.theta0().iter().zip(grad_w) {
            let Some(g) = g else { continue };
            let u = unit_index[name];
            match decomposition.and_then(|d| d.part_of(name).map(|p| (d, p.0))) {
                Some((d, unit)) => {
                    if let Some(diag) = d.projected_gradient(name, g.clone()) {
                        dots.push(diag);
                        reads.push(Read::Diag { unit, column: u });
                    }
                    for k in 0..k_tasks {
                        if let Some(rest) = d.rest(k, name) {
                            dots.push((g.clone() * rest.clone()).sum());
                            reads.push(Read::Dot {
                                slot: k * l_units + u,
                                weight: 1.0,
                            });
                        }
                    }
                }
                None => {
                    let taus = (0..k_tasks)
                        .map(|k| self.tv.tau(k, name))
                        .collect::<Result<Vec<_>>>()?;
                    dots.push(kernels::dots(g, &taus));
                    reads.extend((0..k_tasks).map(|k| Read::Dot {
                        slot: k * l_units + u,
                        weight: scale,
                    }));
                }
            }
        }
        let mut grad = vec![0f64; k_tasks * l_units];
        let mut mask_grad = vec![0f64; decomposition.map_or(0, Decomposition::num_masks)];
        if !dots.is_empty() {
            let values = tensor_to_vec(Tensor::cat(dots, 0))?;
            let mut at = 0;
            for read in reads {
                match read {
                    Read::Dot { slot, weight } => {
                        grad[slot] += weight * f64::from(values[at]);
                        at += 1;
                    }
                    Read::Diag { unit, column } => {
                        let d = decomposition.expect("a projected gradient has its decomposition");
                        let du = &d.units()[unit];
                        let off = du.offset;
                        // ∂/∂ĉ_{k,i} = λ_{k,u} s_i u_iᵀ G v_i; ∂/∂λ_{k,u} = Σ_i ĉ_{k,i} s_i u_iᵀ G v_i.
                        for k in 0..k_tasks {
                            let l = f64::from(lambda[k * l_units + column]);
                            for i in du.task_range(k) {
                                let ds = f64::from(values[at + i]) * f64::from(du.sigma[i]);
                                mask_grad[off + i] += l * ds;
                                grad[k * l_units + column] += f64::from(applied[off + i]) * ds;
                            }
                        }
                        at += du.len();
                    }
                }
            }
        }
        Ok((grad, mask_grad))
    }

    /// One Adam step on step `steps_done()`'s batches.
    pub fn step(&mut self, source: &dyn BatchSource) -> Result<StepRecord> {
        let start = Instant::now();
        let (mut grad, mut record) = self.gradient(source)?;
        let (k, l) = self.shape();
        let mask_grad = grad.split_off(k * l);
        let grad = Tensor::<2>::from_data(TensorData::new(grad, [k, l]), &self.ad_device).inner();
        let mut grads = GradientsParams::new();
        grads.register(self.coefficients.id(), grad);
        if let Some(id) = self.coefficients.masks_id() {
            let n = mask_grad.len();
            let g = Tensor::<1>::from_data(TensorData::new(mask_grad, [n]), &self.ad_device);
            grads.register(id, g.inner());
        }
        self.coefficients = self
            .optimizer
            .step(self.config.lr, self.coefficients.clone(), grads);
        self.step += 1;
        record.seconds = start.elapsed().as_secs_f64();
        Ok(record)
    }

    /// Adam's state, serialised (burn's record format).
    pub fn optimizer_state(&self) -> Result<Vec<u8>> {
        let bytes = self
            .optimizer
            .into_bytes()
            .map_err(|e| Error::invalid("optimizer state", e.to_string()))?;
        Ok(bytes.to_vec())
    }

    /// Restores a saved run: λ, the mask logits, Adam's state and the number of steps done.
    pub fn restore(
        &mut self,
        lambda: Vec<f32>,
        masks: Option<Vec<f32>>,
        optimizer: Vec<u8>,
        steps_done: usize,
    ) -> Result<()> {
        self.set_lambda(lambda)?;
        match masks {
            Some(m) => self.set_masks(m)?,
            None if self.decomposition.is_some() => {
                return Err(Error::invalid(
                    "masks",
                    "the checkpoint holds no mask logits",
                ));
            }
            None => {}
        }
        self.optimizer = adam()
            .from_bytes(Bytes::from_bytes_vec(optimizer))
            .map_err(|e| Error::invalid("optimizer state", e.to_string()))?;
        self.step = steps_done;
        Ok(())
    }
}

/// Adam with PyTorch's defaults (burn's default epsilon is 1e-5, which shifts every step).
fn adam() -> ModuleOptimizer {
    AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .init()
}

/// What one group of batches' forward and backward reads; shared by the groups that run side
/// by side (the learner's optimiser stays on its own thread).
struct GroupPass<'p> {
    cfg: &'p VisionConfig,
    tv: &'p TaskVectors,
    heads: &'p [Tensor<2>],
    step: usize,
    source: &'p dyn BatchSource,
    merged: &'p Weights,
}

impl GroupPass<'_> {
    /// The gradient of the group's summed batch entropies for every merged tensor, and each
    /// batch's (task, entropy), through the group's own autodiff leaves of the merged weights
    /// (θ₀ and τ never enter the graph).
    fn run(&self, chunk: &[(usize, usize)]) -> Result<(TensorGrads, Vec<(usize, f64)>)> {
        let leaves = self.merged.map(|_, t| t.autodiff().require_grad());
        let model = self.tv.complete(leaves.clone());
        let pixels = chunk
            .iter()
            .map(|&(task, b)| self.source.batch(task, self.step, b))
            .collect::<Result<Vec<_>>>()?;
        let sizes: Vec<usize> = pixels.iter().map(|p| p.dims()[0]).collect();
        let embeds = VisionTower::new(self.cfg, &model)?.image_embeds(Tensor::cat(pixels, 0))?;
        let mut start = 0;
        let losses: Vec<Tensor<1>> = chunk
            .iter()
            .zip(&sizes)
            .map(|(&(task, _), &n)| {
                let rows = embeds.clone().narrow(0, start, n);
                start += n;
                mean_entropy(logits(rows, self.heads[task].clone()))
            })
            .collect();
        let losses = Tensor::cat(losses, 0);
        let entropies = chunk
            .iter()
            .zip(tensor_to_vec(losses.clone().inner())?)
            .map(|(&(task, _), v)| (task, f64::from(v)))
            .collect();
        let grads = losses.sum().backward();
        let per_tensor = leaves
            .iter()
            .map(|(_, leaf)| leaf.data.grad(&grads))
            .collect();
        Ok((per_tensor, entropies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_group_fits_the_budget_and_holds_at_least_one_task() {
        let config = LearnConfig::default();
        let b32 = VisionConfig::default();
        let l14 = VisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            patch_size: 14,
            ..VisionConfig::default()
        };
        // The built-in suite's tower (width 64, 6 layers, 32×32 images in 8×8 patches).
        let suite = VisionConfig {
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 6,
            num_attention_heads: 4,
            image_size: 32,
            patch_size: 8,
            ..VisionConfig::default()
        };
        assert_eq!(config.tasks_per_forward(&b32), 4);
        assert_eq!(config.tasks_per_forward(&l14), 1);
        assert!(config.tasks_per_forward(&suite) >= 8);
        let two_batches = LearnConfig {
            batches_per_task: 2,
            ..LearnConfig::default()
        };
        assert_eq!(two_batches.tasks_per_forward(&b32), 2);
        let fixed = LearnConfig {
            tasks_per_forward: Some(3),
            ..LearnConfig::default()
        };
        assert_eq!(fixed.tasks_per_forward(&l14), 3);
        // Two halves side by side where every task fits and none was set; where fewer fit, two
        // groups of half as many; where one fits (L/14), one at a time.
        assert_eq!(config.forward_plan(&suite, 8, 2), (4, 2));
        assert_eq!(config.forward_plan(&suite, 3, 2), (2, 2));
        assert_eq!(
            config.forward_plan(&suite, 1, 2),
            (config.tasks_per_forward(&suite), 1)
        );
        // One at a time on a GPU.
        assert_eq!(
            config.forward_plan(&suite, 8, 1),
            (config.tasks_per_forward(&suite), 1)
        );
        assert_eq!(config.forward_plan(&b32, 8, 2), (2, 2));
        assert_eq!(config.forward_plan(&b32, 8, 1), (4, 1));
        assert_eq!(config.forward_plan(&b32, 4, 2), (2, 2));
        assert_eq!(config.forward_plan(&l14, 8, 2), (1, 1));
        assert_eq!(two_batches.forward_plan(&b32, 8, 2), (1, 2));
        assert_eq!(fixed.forward_plan(&suite, 8, 2), (3, 1));
    }
}
