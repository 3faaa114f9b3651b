//! Fisher merging (Matena & Raffel, NeurIPS 2022) as FusionBench computes it for CLIP
//! (`fusion_bench/method/fisher_merging`, docs/design.md §3): every merged tensor is the
//! element-wise average of the fine-tunes weighted by their diagonal Fisher information,
//! θ = Σ_k c_k (F_k + ε) θ_k / Σ_k c_k (F_k + ε), ε = 1e-6, c_k ∝ s_k / ‖F_k‖ (the global L2
//! norm of model k's Fisher, when normalised; s_k an optional per-model scaling).
//!
//! F_k is estimated for fine-tuned model k on task k's unlabeled images through task k's head
//! (no label is read), by one of two estimators:
//! - **batch** (FusionBench's): per batch B, g = ∇ Σ_{x∈B} Σ_y sg(√p(y|x)) log p(y|x), with √p
//!   held constant; F = Σ_B g² / N. It squares a sum over classes and images, so it is not the
//!   textbook Fisher and depends on the batch size, but it is what FusionBench's numbers use.
//! - **exact**: per image, y drawn from the model's own p(·|x) (seeded), g = ∇ log p(y|x);
//!   F = Σ_x g² / N: an unbiased estimate of the diagonal Fisher. The per-image gradients come
//!   from one batched backward ([`per_image`]), not one backward per image.
//!
//! Tasks are processed one at a time (on the CPU two of a task's batch backwards side by side,
//! summed in order): the merge keeps two running sums, never K Fishers.

mod per_image;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::ProgressBar;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::adamerging::{FORWARD_BUDGET_BYTES, activation_bytes_per_image};
use crate::config::VisionConfig;
use crate::data_merge::{DataInputs, DataMerge};
use crate::device::{side_by_side, wave};
use crate::error::{Error, Result};
use crate::eval::check_head_width;
use crate::model::{VisionTower, logits};
use crate::task_vector::TaskVectors;
use crate::weights::{TensorGrads, Weights, add_grads, tensor_to_vec};
use per_image::Probes;

/// The paper.
pub const PAPER: &str =
    "Matena & Raffel, Merging models with Fisher-weighted averaging, NeurIPS 2022";

/// ε: added to every Fisher entry (and to the norm it is divided by), FusionBench's
/// `minimal_fisher_weight`.
pub const MIN_FISHER: f64 = 1e-6;

/// How the diagonal Fisher is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// FusionBench's: one backward per batch of Σ_x Σ_y sg(√p) log p, squared.
    Batch,
    /// Per image, the squared gradient of log p(y|x) with y drawn from p(·|x).
    Exact,
}

impl Estimator {
    /// Its name in flags, files and labels.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Batch => "batch",
            Estimator::Exact => "exact",
        }
    }
}

/// Fisher merging's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Fisher {
    /// The estimator of F_k.
    pub estimator: Estimator,
    /// Images per task.
    pub images: usize,
    /// Images per forward (the batch estimator's batch; the exact one takes each image's
    /// gradient from one backward per batch, or per part of one where memory needs).
    pub batch_size: usize,
    /// Seed of the images drawn and of the exact estimator's labels (default: the caller's).
    pub seed: Option<u64>,
    /// Weigh each model by 1 / ‖F_k‖ (FusionBench's `normalize_fisher_weight`).
    pub normalize: bool,
    /// A scaling per model, in task order (default: all equal).
    pub scaling: Option<Vec<f64>>,
}

/// Where the exact estimator's uniform draws come from, per task.
pub enum Draws<'a> {
    /// ChaCha8 streams from a seed, one per task.
    Seeded(u64),
    /// Given values, one list per task, consumed in image order (for tests against a reference).
    Given(&'a [Vec<f64>]),
}

impl Draws<'_> {
    /// Task `t`'s source of uniforms in [0, 1).
    fn task(&self, t: usize) -> Box<dyn FnMut() -> Result<f64> + '_> {
        match self {
            Draws::Seeded(seed) => {
                // A stream of its own, apart from the one that draws the images.
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed ^ 0x5f15_4e7a_11b0_u64 ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                Box::new(move || Ok(rng.random::<f64>()))
            }
            Draws::Given(lists) => {
                let mut it = lists.get(t).map(|l| l.iter()).into_iter().flatten();
                Box::new(move || {
                    it.next().copied().ok_or_else(|| {
                        Error::invalid("fisher", format!("too few draws given for task {t}"))
                    })
                })
            }
        }
    }
}

/// The class whose cumulative probability first exceeds `u` (the last one when rounding
/// leaves the sum below `u`).
fn sample(p: &[f64], u: f64) -> usize {
    let mut cum = 0.0;
    for (c, pc) in p.iter().enumerate() {
        cum += pc;
        if u < cum {
            return c;
        }
    }
    p.len().saturating_sub(1)
}

/// The diagonal Fisher of fine-tuned model `k` (θ₀ + τ_k over the merged tensors; the frozen
/// ones are constants) on `batches` through `head`, by `estimator`; `uniform` feeds the exact
/// estimator's draws. `progress` advances by one per image.
#[allow(clippy::too_many_arguments)]
pub fn diagonal(
    cfg: &VisionConfig,
    tv: &TaskVectors,
    k: usize,
    head: &Tensor<2>,
    batches: &[Tensor<4>],
    estimator: Estimator,
    uniform: &mut dyn FnMut() -> Result<f64>,
    progress: &ProgressBar,
) -> Result<Weights> {
    let w = tv.finetuned(k, |_| true)?;
    diagonal_of(cfg, tv, k, &w, head, batches, estimator, uniform, progress)
}

/// [`diagonal`] of `w`, fine-tuned model `k` already formed (the merge weighs it next).
#[allow(clippy::too_many_arguments)]
fn diagonal_of(
    cfg: &VisionConfig,
    tv: &TaskVectors,
    k: usize,
    w: &Weights,
    head: &Tensor<2>,
    batches: &[Tensor<4>],
    estimator: Estimator,
    uniform: &mut dyn FnMut() -> Result<f64>,
    progress: &ProgressBar,
) -> Result<Weights> {
    check_head_width(cfg, &tv.tasks()[k], head)?;
    let mut sums: TensorGrads = vec![None; w.len()];
    let mut n = 0usize;
    match estimator {
        Estimator::Batch => {
            // Backwards side by side on the CPU, each from its own leaves of `w` (burn's CPU
            // backend leaves a core idle in much of one), where their activations fit the
            // learner's budget (ViT-B/32 batches of 32: yes; ViT-L/14's: one at a time); their
            // squares are summed in order.
            let images = batches.iter().map(|p| p.dims()[0]).max().unwrap_or(1);
            let width = side_by_side(&head.device());
            let fits = width
                .saturating_mul(images)
                .saturating_mul(activation_bytes_per_image(cfg))
                <= FORWARD_BUDGET_BYTES;
            for group in batches.chunks(if fits { width } else { 1 }) {
                let squares = wave(group, |pixels| {
                    batch_squared_gradient(cfg, tv, w, head, pixels.clone())
                })?;
                for (pixels, square) in group.iter().zip(squares) {
                    add_grads(&mut sums, square);
                    let b = pixels.dims()[0];
                    n += b;
                    progress.inc(b as u64);
                }
            }
        }
        Estimator::Exact => {
            // As many images per backward as the activations, the probes and their gradients
            // (about twice the activations) fit the learner's budget.
            let per = (FORWARD_BUDGET_BYTES / (2 * activation_bytes_per_image(cfg)).max(1)).max(1);
            for pixels in batches {
                let b = pixels.dims()[0];
                for start in (0..b).step_by(per) {
                    let part = pixels.clone().narrow(0, start, per.min(b - start));
                    let m = part.dims()[0];
                    // Drawn in image order, one per image, as one backward per image would.
                    let draws = (0..m).map(|_| uniform()).collect::<Result<Vec<f64>>>()?;
                    add_grads(&mut sums, exact_squares(cfg, tv, w, head, part, &draws)?);
                    n += m;
                    progress.inc(m as u64);
                }
            }
        }
    }
    if n == 0 {
        return Err(Error::invalid(
            tv.tasks()[k].as_str(),
            "Fisher merging needs at least one image",
        ));
    }
    // A tensor no gradient reaches has Fisher 0: it is then weighted by ε alone.
    let mut out = Weights::new();
    for ((name, t), sum) in w.iter().zip(sums) {
        let f = match sum {
            Some(s) => s.div_scalar(n as f64),
            None => t.data.zeros_like(),
        };
        out.insert(name, t.with_data(f));
    }
    Ok(out)
}

/// FusionBench's squared gradient, per tensor of `w` (None where none reaches it): of
/// Σ_x Σ_y sg(√p) log p over the batch.
fn batch_squared_gradient(
    cfg: &VisionConfig,
    tv: &TaskVectors,
    w: &Weights,
    head: &Tensor<2>,
    pixels: Tensor<4>,
) -> Result<TensorGrads> {
    let leaves = w.map(|_, t| t.autodiff().require_grad());
    let model = tv.complete(leaves.clone());
    let embeds = VisionTower::new(cfg, &model)?.image_embeds(pixels)?;
    let log_p = log_softmax(logits(embeds, head.clone()), 1);
    let sqrt_p = log_p.clone().detach().exp().sqrt();
    let grads = (sqrt_p * log_p).sum().backward();
    // One pass each, in place where the buffer is not shared.
    Ok(leaves
        .iter()
        .map(|(_, leaf)| leaf.data.grad(&grads).map(|g| g.square()))
        .collect())
}

/// Σ_i g_i², per tensor of `w` (None where none reaches it), over the images i of `pixels`,
/// g_i = ∇ log p(y_i|x_i) with y_i drawn from the model's own p(·|x_i) by `draws[i]`; from one
/// batched forward and backward through probes ([`per_image`]).
fn exact_squares(
    cfg: &VisionConfig,
    tv: &TaskVectors,
    w: &Weights,
    head: &Tensor<2>,
    pixels: Tensor<4>,
    draws: &[f64],
) -> Result<TensorGrads> {
    // The weights are constants: no weight gradient is formed, only the probes' gradients.
    let model = tv.complete(w.clone());
    let mut probes = Probes::new(w);
    let embeds = VisionTower::new(cfg, &model)?.image_embeds_observed(pixels, &mut probes)?;
    if !probes.any() {
        return Ok(vec![None; w.len()]);
    }
    let log_p = log_softmax(logits(embeds, head.clone()), 1);
    let [b, c] = log_p.dims();
    let values = tensor_to_vec(log_p.clone().inner().reshape([b * c]))?;
    let mut picked = vec![0.0f32; b * c];
    for (i, (row, u)) in values.chunks(c.max(1)).zip(draws).enumerate() {
        let p: Vec<f64> = row.iter().map(|l| f64::from(*l).exp()).collect();
        picked[i * c + sample(&p, *u)] = 1.0;
    }
    let picked = Tensor::<2>::from_data(TensorData::new(picked, [b, c]), &log_p.device());
    let grads = (log_p * picked).sum().backward();
    Ok(probes.squares(&grads, cfg.layer_norm_eps))
}

/// ‖F‖: the L2 norm of every entry of every tensor (FusionBench's `get_models_fisher_norm`).
pub fn global_norm(f: &Weights) -> Result<f64> {
    if f.is_empty() {
        return Ok(0.0);
    }
    let squares: Vec<Tensor<1>> = f
        .iter()
        .map(|(_, t)| (t.data.clone() * t.data.clone()).sum())
        .collect();
    let sum: f64 = tensor_to_vec(Tensor::cat(squares, 0))?
        .into_iter()
        .map(f64::from)
        .sum();
    Ok(sum.sqrt())
}

/// Σ_k c_k (F_k + ε) θ_k and Σ_k c_k (F_k + ε), per merged tensor.
#[derive(Default)]
struct Accumulator {
    num: Vec<Tensor<1>>,
    den: Vec<Tensor<1>>,
}

impl Accumulator {
    /// Adds model `theta` with Fisher `f` and coefficient `c` (both over the same tensors).
    fn add(&mut self, theta: &Weights, f: Weights, c: f64) {
        let first = self.num.is_empty();
        for (i, ((_, t), (_, fi))) in theta.iter().zip(f.iter()).enumerate() {
            let weight = fi.data.clone().add_scalar(MIN_FISHER).mul_scalar(c);
            let wt = weight.clone() * t.data.clone();
            if first {
                self.num.push(wt);
                self.den.push(weight);
            } else {
                self.num[i] = self.num[i].clone() + wt;
                self.den[i] = self.den[i].clone() + weight;
            }
        }
    }

    fn finish(self, like: &Weights) -> Weights {
        let mut out = Weights::new();
        for (((name, t), num), den) in like.iter().zip(self.num).zip(self.den) {
            out.insert(name, t.with_data(num / den));
        }
        out
    }
}

impl Fisher {
    /// Model k's coefficient before the common factors that cancel: s_k / (‖F_k‖ + ε) when
    /// normalised, else s_k.
    fn coefficient(&self, k: usize, norm: f64) -> f64 {
        let s = self.scaling.as_ref().map_or(1.0, |s| s[k]);
        if self.normalize {
            s / (norm + MIN_FISHER)
        } else {
            s
        }
    }

    fn check(&self, tv: &TaskVectors, heads: &[Tensor<2>]) -> Result<()> {
        let k = tv.num_tasks();
        if heads.len() != k {
            return Err(Error::invalid(
                "fisher",
                format!("{} heads for {k} tasks", heads.len()),
            ));
        }
        if let Some(s) = &self.scaling {
            if s.len() != k {
                return Err(Error::invalid(
                    "scaling",
                    format!(
                        "{} values for {k} tasks (one per task, in task order)",
                        s.len()
                    ),
                ));
            }
            if s.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(Error::invalid("scaling", "every value must be positive"));
            }
        }
        Ok(())
    }

    /// The merged weights from each task's preprocessed pixel batches [B, C, H, W] and head.
    pub fn merge_pixels(
        &self,
        cfg: &VisionConfig,
        tv: &TaskVectors,
        heads: &[Tensor<2>],
        batches: Vec<Vec<Tensor<4>>>,
        draws: Draws<'_>,
    ) -> Result<Weights> {
        let k = tv.num_tasks();
        if batches.len() != k {
            return Err(Error::invalid(
                "fisher",
                format!("{} image sets for {k} tasks", batches.len()),
            ));
        }
        let hidden = ProgressBar::hidden();
        self.run(cfg, tv, heads, &|t| Ok(batches[t].clone()), &draws, &hidden)
    }

    /// The merge, one task at a time: its images, its Fisher, its share of the two sums.
    fn run(
        &self,
        cfg: &VisionConfig,
        tv: &TaskVectors,
        heads: &[Tensor<2>],
        batches: &dyn Fn(usize) -> Result<Vec<Tensor<4>>>,
        draws: &Draws<'_>,
        progress: &ProgressBar,
    ) -> Result<Weights> {
        self.check(tv, heads)?;
        let mut acc = Accumulator::default();
        for (k, head) in heads.iter().enumerate() {
            let pixels = batches(k)?;
            let w = tv.finetuned(k, |_| true)?;
            let f = diagonal_of(
                cfg,
                tv,
                k,
                &w,
                head,
                &pixels,
                self.estimator,
                &mut draws.task(k),
                progress,
            )?;
            let c = self.coefficient(k, global_norm(&f)?);
            acc.add(&w, f, c);
        }
        Ok(acc.finish(tv.theta0()))
    }
}

impl DataMerge for Fisher {
    /// `fisher(batch)`, `fisher(exact)`, with the image count when it is not FusionBench's 256,
    /// the seed when one is set, the scaling when given and `unnormalized` when the norms are
    /// not divided out.
    fn label(&self) -> String {
        let mut s = format!("fisher({})", self.estimator.name());
        let mut extra = Vec::new();
        if self.images != 256 {
            extra.push(format!("images={}", self.images));
        }
        if let Some(seed) = self.seed {
            extra.push(format!("seed={seed}"));
        }
        if let Some(scaling) = &self.scaling {
            let v: Vec<String> = scaling
                .iter()
                .map(|x| crate::merge::fmt_param(*x))
                .collect();
            extra.push(format!("scaling={}", v.join(":")));
        }
        if !self.normalize {
            extra.push("unnormalized".into());
        }
        if !extra.is_empty() {
            s += &format!("[{}]", extra.join(","));
        }
        s
    }
    fn paper(&self) -> &'static str {
        PAPER
    }
    fn images(&self) -> usize {
        self.images
    }
    fn needs_heads(&self) -> bool {
        true
    }
    fn merge(&self, inputs: &DataInputs<'_>, device: &Device) -> Result<Weights> {
        inputs.check("fisher", true)?;
        let total: usize = inputs
            .images
            .iter()
            .map(|set| self.images.min(set.images.len()))
            .sum();
        inputs.progress.set_length(total as u64);
        inputs.progress.set_position(0);
        self.run(
            inputs.cfg,
            inputs.tv,
            inputs.heads,
            &|t| inputs.draw(t, self.images, self.batch_size, self.seed, device),
            &Draws::Seeded(self.seed.unwrap_or(inputs.seed)),
            inputs.progress,
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::weights::FlatTensor;

    fn weights(name: &str, values: &[f32], device: &Device) -> Weights {
        let mut w = Weights::new();
        w.insert(
            name,
            FlatTensor::from_vec(values.to_vec(), vec![values.len()], device),
        );
        w
    }

    fn merged(models: &[[f32; 3]], fishers: &[[f32; 3]], m: &Fisher) -> Vec<f32> {
        let device = Device::flex();
        let mut acc = Accumulator::default();
        for (k, (t, f)) in models.iter().zip(fishers).enumerate() {
            let f = weights("w", f, &device);
            let c = m.coefficient(k, global_norm(&f).unwrap());
            acc.add(&weights("w", t, &device), f, c);
        }
        let like = weights("w", &[0.0; 3], &device);
        acc.finish(&like).require("w").unwrap().to_vec().unwrap()
    }

    fn method(normalize: bool, scaling: Option<Vec<f64>>) -> Fisher {
        Fisher {
            estimator: Estimator::Batch,
            images: 256,
            batch_size: 32,
            seed: None,
            normalize,
            scaling,
        }
    }

    #[test]
    fn equal_fishers_give_the_average() {
        let models = [[1.0, -2.0, 4.0], [3.0, 6.0, -1.0]];
        let f = [0.5, 2.0, 1e-3];
        let got = merged(&models, &[f, f], &method(true, None));
        for i in 0..3 {
            let want = (models[0][i] + models[1][i]) / 2.0;
            assert!((got[i] - want).abs() < 1e-5, "{i}: {} vs {want}", got[i]);
        }
    }

    #[test]
    fn fishers_weigh_each_entry_and_norms_each_model() {
        let models = [[1.0, 1.0, 1.0], [5.0, 5.0, 5.0]];
        let fishers = [[3.0, 0.0, 4.0], [0.0, 2.0, 0.0]];
        let eps = MIN_FISHER;
        let check = |m: &Fisher, c: [f64; 2]| {
            let got = merged(&models, &fishers, m);
            for i in 0..3 {
                let w: Vec<f64> = (0..2)
                    .map(|k| c[k] * (fishers[k][i] as f64 + eps))
                    .collect();
                let want = (w[0] * 1.0 + w[1] * 5.0) / (w[0] + w[1]);
                assert!(
                    (got[i] as f64 - want).abs() < 1e-5,
                    "{i}: {} vs {want}",
                    got[i]
                );
            }
        };
        // ‖F_1‖ = 5, ‖F_2‖ = 2.
        check(&method(true, None), [1.0 / (5.0 + eps), 1.0 / (2.0 + eps)]);
        check(&method(false, None), [1.0, 1.0]);
        check(
            &method(true, Some(vec![2.0, 0.5])),
            [2.0 / (5.0 + eps), 0.5 / (2.0 + eps)],
        );
    }

    #[test]
    fn sampling_inverts_the_cumulative_distribution() {
        let p = [0.2, 0.5, 0.3];
        assert_eq!(sample(&p, 0.0), 0);
        assert_eq!(sample(&p, 0.19), 0);
        assert_eq!(sample(&p, 0.2), 1);
        assert_eq!(sample(&p, 0.69), 1);
        assert_eq!(sample(&p, 0.71), 2);
        assert_eq!(sample(&p, 0.999_999_9), 2);
    }
}
