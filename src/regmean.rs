//! RegMean (Jin et al., ICLR 2023) and RegMean++: every linear weight merged as the solution of
//! a regression on the inputs each fine-tuned model sees, W = (Σ_k W_k G̃_k)(Σ_k G̃_k)⁻¹, with
//! G_k the Gram of the layer's inputs on task k's images (divided by its rows), and
//! G̃_k = α G_k + (1 − α) diag(G_k); every other merged tensor is the fine-tunes' mean. As in
//! FusionBench (`fusion_bench/method/regmean`, `regmean_plusplus`; docs/design.md §3).
//!
//! RegMean runs each fine-tuned model on its task's images. RegMean++ goes block by block: task
//! k's fine-tuned block l runs on the activations the *merged* blocks before l made of task k's
//! images, so each block is merged for the inputs it will see; its embeddings and pre-LN are the
//! mean, its post-LN stays pretrained. Grams accumulate in f32 on the device, streamed over
//! batches; the solve runs on the host in f64 by a Cholesky factorisation.

use std::collections::HashMap;

use burn::tensor::{Device, Tensor};
use indicatif::ProgressBar;

use crate::config::VisionConfig;
use crate::data_merge::{DataInputs, DataMerge};
use crate::error::{Error, Result};
use crate::linalg::{NotPositiveDefinite, solve_spd};
use crate::model::{LinearKind, NoObserver, Observer, VisionTower};
use crate::task_vector::TaskVectors;
use crate::weights::{FlatTensor, Weights, tensor_to_vec};

/// The paper.
pub const PAPER: &str =
    "Jin et al., Dataless knowledge fusion by merging weights of language models, ICLR 2023";
/// RegMean++'s paper.
pub const PAPER_PP: &str = "Nguyen et al., RegMean++: Enhancing effectiveness and generalization of regression mean for model merging, 2025";

/// RegMean's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegMean {
    /// α: the weight kept on the Grams' off-diagonal entries (FusionBench's
    /// `reduce_non_diagonal_ratio`).
    pub alpha: f64,
    /// Images per task.
    pub images: usize,
    /// Images per forward batch.
    pub batch_size: usize,
    /// Seed of the images drawn (default: the caller's).
    pub seed: Option<u64>,
    /// RegMean++: block by block on the merged model's activations.
    pub plus_plus: bool,
}

/// Where a Gram comes from: the input of some linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Site {
    /// Block l's q, k and v projections (one input, one Gram).
    Qkv(usize),
    /// Block l's attention output projection.
    Out(usize),
    /// Block l's first MLP layer.
    Fc1(usize),
    /// Block l's second MLP layer.
    Fc2(usize),
    /// The tower's projection (its input is the pooled output).
    Projection,
}

impl Site {
    /// The merged weights this site's Gram solves for.
    fn weights(self) -> Vec<String> {
        let layer = |l: usize, kinds: &[LinearKind]| {
            kinds
                .iter()
                .map(|k| format!("vision_model.encoder.layers.{l}.{}.weight", k.name()))
                .collect()
        };
        match self {
            Site::Qkv(l) => layer(l, &[LinearKind::Q, LinearKind::K, LinearKind::V]),
            Site::Out(l) => layer(l, &[LinearKind::Out]),
            Site::Fc1(l) => layer(l, &[LinearKind::Fc1]),
            Site::Fc2(l) => layer(l, &[LinearKind::Fc2]),
            Site::Projection => vec![PROJECTION.to_string()],
        }
    }
}

const PROJECTION: &str = "visual_projection.weight";

/// Sums XᵀX of the inputs it is shown, per site, and the rows they had.
#[derive(Default)]
struct GramSums {
    sums: HashMap<Site, Tensor<2>>,
    rows: HashMap<Site, usize>,
}

impl GramSums {
    fn add(&mut self, site: Site, x: Tensor<2>) {
        let [rows, _] = x.dims();
        let xtx = x.clone().transpose().matmul(x);
        let sum = match self.sums.remove(&site) {
            Some(s) => s + xtx,
            None => xtx,
        };
        self.sums.insert(site, sum);
        *self.rows.entry(site).or_default() += rows;
    }

    /// G = Σ XᵀX / rows per site: the mean, so that tasks weigh alike whatever their image count.
    fn normalised(self) -> HashMap<Site, Tensor<2>> {
        let rows = self.rows;
        self.sums
            .into_iter()
            .map(|(site, s)| {
                let n = rows[&site].max(1) as f64;
                (site, s.div_scalar(n))
            })
            .collect()
    }
}

impl Observer for GramSums {
    fn linear_input(&mut self, layer: usize, kind: LinearKind, x: &Tensor<3>) {
        let site = match kind {
            LinearKind::Q => Site::Qkv(layer),
            // q, k and v read the same input: its Gram is taken once, at q.
            LinearKind::K | LinearKind::V => return,
            LinearKind::Out => Site::Out(layer),
            LinearKind::Fc1 => Site::Fc1(layer),
            LinearKind::Fc2 => Site::Fc2(layer),
        };
        let [b, t, width] = x.dims();
        self.add(site, x.clone().reshape([b * t, width]));
    }

    fn projection_input(&mut self, x: &Tensor<2>) {
        self.add(Site::Projection, x.clone());
    }
}

/// The running sums of the merge: Σ_k G̃_k per site and Σ_k G̃_k W_kᵀ per weight, on the device.
#[derive(Default)]
struct Accumulator {
    sum_g: HashMap<Site, Tensor<2>>,
    sum_gw: HashMap<String, Tensor<2>>,
}

impl Accumulator {
    /// Adds task `k`'s Grams (for the sites it has) with its fine-tuned weights `w`.
    fn add(&mut self, grams: HashMap<Site, Tensor<2>>, alpha: f64, w: &Weights) -> Result<()> {
        for (site, g) in grams {
            let g = reduce_off_diagonal(g, alpha);
            for name in site.weights() {
                let t = w.require(&name)?;
                let [out, inn] = [t.shape[0], t.shape[1]];
                let gw = g
                    .clone()
                    .matmul(t.data.clone().reshape([out, inn]).transpose());
                let sum = match self.sum_gw.remove(&name) {
                    Some(s) => s + gw,
                    None => gw,
                };
                self.sum_gw.insert(name, sum);
            }
            let sum = match self.sum_g.remove(&site) {
                Some(s) => s + g,
                None => g,
            };
            self.sum_g.insert(site, sum);
        }
        Ok(())
    }

    /// The merged weights: W = ((Σ G̃)⁻¹ Σ G̃ Wᵀ)ᵀ, solved in f64 on the host.
    fn solve(self, device: &Device) -> Result<Weights> {
        let mut out = Weights::new();
        let mut sites: Vec<_> = self.sum_g.into_iter().collect();
        sites.sort_by_key(|(s, _)| site_order(*s));
        for (site, a) in sites {
            let [n, _] = a.dims();
            let a = to_f64(a)?;
            for name in site.weights() {
                let b = self
                    .sum_gw
                    .get(&name)
                    .expect("every weight of a site has its product")
                    .clone();
                let [_, m] = b.dims();
                let x = solve_spd(&a, &to_f64(b)?, n, m).map_err(|NotPositiveDefinite| {
                    Error::invalid(
                        name.trim_end_matches(".weight"),
                        format!(
                            "RegMean: the sum of the tasks' Grams ({n} × {n}) is not positive \
                             definite; give more images, or a smaller alpha"
                        ),
                    )
                })?;
                // X is Wᵀ [in, out]; the weight is stored [out, in].
                let w: Vec<f32> = (0..m)
                    .flat_map(|o| (0..n).map(move |i| (o, i)))
                    .map(|(o, i)| x[i * m + o] as f32)
                    .collect();
                out.insert(name, FlatTensor::from_vec(w, vec![m, n], device));
            }
        }
        Ok(out)
    }
}

fn site_order(s: Site) -> (usize, usize) {
    match s {
        Site::Qkv(l) => (l, 0),
        Site::Out(l) => (l, 1),
        Site::Fc1(l) => (l, 2),
        Site::Fc2(l) => (l, 3),
        Site::Projection => (usize::MAX, 0),
    }
}

/// G̃ = α G + (1 − α) diag(G): the off-diagonal entries scaled by α.
fn reduce_off_diagonal(g: Tensor<2>, alpha: f64) -> Tensor<2> {
    let [n, _] = g.dims();
    let diag = g.clone() * Tensor::<2>::eye(n, &g.device());
    g.mul_scalar(alpha) + diag.mul_scalar(1.0 - alpha)
}

fn to_f64(t: Tensor<2>) -> Result<Vec<f64>> {
    let [r, c] = t.dims();
    Ok(tensor_to_vec(t.reshape([r * c]))?
        .into_iter()
        .map(f64::from)
        .collect())
}

impl RegMean {
    /// The merged weights from each task's preprocessed pixel batches [B, C, H, W].
    pub fn merge_pixels(
        &self,
        cfg: &VisionConfig,
        tv: &TaskVectors,
        batches: Vec<Vec<Tensor<4>>>,
        device: &Device,
    ) -> Result<Weights> {
        let k = tv.num_tasks();
        if batches.len() != k || batches.iter().any(Vec::is_empty) {
            return Err(Error::invalid(
                "RegMean",
                format!(
                    "{} image sets for {k} tasks (each needs an image)",
                    batches.len()
                ),
            ));
        }
        let hidden = ProgressBar::hidden();
        self.run(cfg, tv, &|t| Ok(batches[t].clone()), &hidden, device)
    }

    /// The merge, reading task `t`'s pixel batches from `batches(t)` when it needs them, so that
    /// one task's images (and, in RegMean++, every task's activations) are held at a time.
    fn run(
        &self,
        cfg: &VisionConfig,
        tv: &TaskVectors,
        batches: &dyn Fn(usize) -> Result<Vec<Tensor<4>>>,
        progress: &ProgressBar,
        device: &Device,
    ) -> Result<Weights> {
        let mean = mean_of(tv)?;
        let k = tv.num_tasks();
        let steps = if self.plus_plus {
            (cfg.num_hidden_layers + 1) * k
        } else {
            k
        };
        progress.set_length(steps as u64);
        progress.set_position(0);
        if self.plus_plus {
            self.merge_plus_plus(cfg, tv, mean, batches, progress, device)
        } else {
            self.merge_plain(cfg, tv, mean, batches, progress, device)
        }
    }

    /// RegMean: each fine-tuned model on its own task's images, one task at a time.
    fn merge_plain(
        &self,
        cfg: &VisionConfig,
        tv: &TaskVectors,
        mean: Weights,
        batches: &dyn Fn(usize) -> Result<Vec<Tensor<4>>>,
        progress: &ProgressBar,
        device: &Device,
    ) -> Result<Weights> {
        let mut acc = Accumulator::default();
        for k in 0..tv.num_tasks() {
            let w = tv.finetuned(k, |_| true)?;
            let tower = VisionTower::new(cfg, &tv.complete(w.clone()))?;
            let mut grams = GramSums::default();
            for pixels in batches(k)? {
                tower.forward_observed(pixels, &mut grams)?;
            }
            let mut grams = grams.normalised();
            keep_merged_sites(&mut grams, tv);
            acc.add(grams, self.alpha, &w)?;
            progress.inc(1);
        }
        let solved = acc.solve(device)?;
        Ok(mean.map(|name, t| solved.get(name).map_or(t, |s| s.data.clone())))
    }

    /// RegMean++: block by block, each fine-tuned block on the merged model's activations. Task
    /// k's fine-tuned weights are formed one block at a time, over the merged model's others.
    fn merge_plus_plus(
        &self,
        cfg: &VisionConfig,
        tv: &TaskVectors,
        mean: Weights,
        batches: &dyn Fn(usize) -> Result<Vec<Tensor<4>>>,
        progress: &ProgressBar,
        device: &Device,
    ) -> Result<Weights> {
        // The mean everywhere but post_layernorm (pretrained); blocks are replaced as they merge.
        let mut merged = mean.try_map(|name, t| {
            Ok(if name.starts_with("vision_model.post_layernorm.") {
                tv.theta0().require(name)?.data.clone()
            } else {
                t.data.clone()
            })
        })?;
        let start = VisionTower::new(cfg, &tv.complete(merged.clone()))?;
        let mut xs: Vec<Vec<Tensor<3>>> = (0..tv.num_tasks())
            .map(|k| {
                let x = batches(k)?.into_iter().map(|p| start.embed(p)).collect();
                progress.inc(1);
                x
            })
            .collect::<Result<_>>()?;
        for l in 0..cfg.num_hidden_layers {
            let prefix = format!("vision_model.encoder.layers.{l}.");
            let mut acc = Accumulator::default();
            for (k, xk) in xs.iter().enumerate() {
                let block = tv.finetuned(k, |name| name.starts_with(&prefix))?;
                let mut w = merged.clone();
                for (name, t) in block.iter() {
                    w.insert(name, t.clone());
                }
                let tower = VisionTower::new(cfg, &tv.complete(w))?;
                let mut grams = GramSums::default();
                for x in xk {
                    tower.block(l, x.clone(), &mut grams);
                }
                acc.add(grams.normalised(), self.alpha, &block)?;
                progress.inc(1);
            }
            for (name, t) in acc.solve(device)?.iter() {
                merged.insert(name, t.clone());
            }
            let tower = VisionTower::new(cfg, &tv.complete(merged.clone()))?;
            for xk in xs.iter_mut() {
                for x in xk.iter_mut() {
                    *x = tower.block(l, x.clone(), &mut NoObserver);
                }
            }
        }
        if tv.theta0().get(PROJECTION).is_some() {
            // The projection reads the (pretrained) post-LN of the merged model's class token.
            let tower = VisionTower::new(cfg, &tv.complete(merged.clone()))?;
            let mut acc = Accumulator::default();
            for (k, xk) in xs.into_iter().enumerate() {
                let mut grams = GramSums::default();
                for x in xk {
                    tower.head_observed(x, &mut grams);
                }
                let w = tv.finetuned(k, |name| name == PROJECTION)?;
                acc.add(grams.normalised(), self.alpha, &w)?;
            }
            for (name, t) in acc.solve(device)?.iter() {
                merged.insert(name, t.clone());
            }
        }
        Ok(merged)
    }
}

impl DataMerge for RegMean {
    /// `regmean(alpha=0.95)`, `regmean++(alpha=0.95)`, with the image count when it is not
    /// FusionBench's 256 and the seed when one is set.
    fn label(&self) -> String {
        let pp = if self.plus_plus { "++" } else { "" };
        let mut s = format!("regmean{pp}(alpha={})", crate::merge::fmt_param(self.alpha));
        let mut extra = Vec::new();
        if self.images != 256 {
            extra.push(format!("images={}", self.images));
        }
        if let Some(seed) = self.seed {
            extra.push(format!("seed={seed}"));
        }
        if !extra.is_empty() {
            s += &format!("[{}]", extra.join(","));
        }
        s
    }

    fn paper(&self) -> &'static str {
        if self.plus_plus { PAPER_PP } else { PAPER }
    }
    fn images(&self) -> usize {
        self.images
    }
    fn needs_heads(&self) -> bool {
        false
    }
    fn merge(&self, inputs: &DataInputs<'_>, device: &Device) -> Result<Weights> {
        inputs.check("RegMean", false)?;
        self.run(
            inputs.cfg,
            inputs.tv,
            &|t| inputs.draw(t, self.images, self.batch_size, self.seed, device),
            inputs.progress,
            device,
        )
    }
}

/// Drops the Grams of weights the merge does not cover (a projection the fine-tunes lack).
fn keep_merged_sites(grams: &mut HashMap<Site, Tensor<2>>, tv: &TaskVectors) {
    grams.retain(|site, _| site.weights().iter().all(|n| tv.theta0().get(n).is_some()));
}

/// The fine-tunes' mean over the merged tensors: θ₀ + (1/K) Σ_k τ_k.
fn mean_of(tv: &TaskVectors) -> Result<Weights> {
    let k = tv.num_tasks() as f64;
    tv.theta0().try_map(|name, t0| {
        let mut sum = t0.data.zeros_like();
        for j in 0..tv.num_tasks() {
            sum = sum + tv.tau(j, name)?;
        }
        Ok(t0.data.clone() + sum.div_scalar(k))
    })
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;

    fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, [rows, cols]), device)
    }

    #[test]
    fn equal_grams_give_the_mean_of_different_weights() {
        let device = Device::flex();
        let name = "vision_model.encoder.layers.0.mlp.fc2.weight";
        // A full (non-diagonal) SPD Gram, so that α and the off-diagonal path are exercised.
        let g = matrix(
            vec![4.0, 1.0, 0.5, 1.0, 3.0, -0.7, 0.5, -0.7, 2.0],
            3,
            3,
            &device,
        );
        let w1 = [1.0f32, -2.0, 0.5, 3.0, 0.25, -1.0];
        let w2 = [-0.5f32, 4.0, 1.5, 0.0, 2.0, 7.0];
        let mut acc = Accumulator::default();
        for w in [w1, w2] {
            let mut weights = Weights::new();
            weights.insert(name, FlatTensor::from_vec(w.to_vec(), vec![2, 3], &device));
            let grams = HashMap::from([(Site::Fc2(0), g.clone())]);
            acc.add(grams, 0.6, &weights).unwrap();
        }
        let merged = acc.solve(&device).unwrap();
        let got = merged.require(name).unwrap().to_vec().unwrap();
        for (i, g) in got.iter().enumerate() {
            let want = (w1[i] + w2[i]) / 2.0;
            assert!((g - want).abs() < 1e-5, "{i}: {g} vs {want}");
        }
    }

    #[test]
    fn different_grams_weigh_each_model_by_its_inputs() {
        // Diagonal Grams: column i of the merge is Σ_k g_k,i W_k[:, i] / Σ_k g_k,i.
        let device = Device::flex();
        let name = "vision_model.encoder.layers.0.mlp.fc2.weight";
        let g1 = matrix(vec![1.0, 0.0, 0.0, 3.0], 2, 2, &device);
        let g2 = matrix(vec![3.0, 0.0, 0.0, 1.0], 2, 2, &device);
        let (w1, w2) = ([1.0f32, 2.0], [5.0f32, 6.0]);
        let mut acc = Accumulator::default();
        for (w, g) in [(w1, g1), (w2, g2)] {
            let mut weights = Weights::new();
            weights.insert(name, FlatTensor::from_vec(w.to_vec(), vec![1, 2], &device));
            acc.add(HashMap::from([(Site::Fc2(0), g)]), 1.0, &weights)
                .unwrap();
        }
        let got = acc
            .solve(&device)
            .unwrap()
            .require(name)
            .unwrap()
            .to_vec()
            .unwrap();
        let want = [(1.0 + 3.0 * 5.0) / 4.0, (3.0 * 2.0 + 6.0) / 4.0];
        for i in 0..2 {
            assert!(
                (got[i] - want[i]).abs() < 1e-5,
                "{i}: {} vs {}",
                got[i],
                want[i]
            );
        }
    }
}
