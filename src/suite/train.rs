//! Training the suite's tower: the weights are a plain [`Weights`] set (the model stays a pure
//! forward), made autodiff leaves for each step and updated with burn's Adam tensor by tensor.

use burn::optim::{Adam, AdamConfig, AdamState, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::images::{Factor, SIDE, Sample, Task};
use super::tiny_clip::{PIXEL_MEAN, PIXEL_STD};
use crate::config::VisionConfig;
use crate::device::{side_by_side, waves};
use crate::error::{Error, Result};
use crate::model::{VisionTower, normalize_rows};
use crate::weights::{FlatTensor, TensorGrads, Weights, add_grads, scalar};

/// Images in memory, bytes as they are saved to PNG, with every factor's class.
#[derive(Debug, Clone, Default)]
pub struct ImageSet {
    /// The samples, in order.
    pub samples: Vec<Sample>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Preprocessed pixels [B, 3, 32, 32] of the images at `indices`, exactly as the suite's
    /// `preprocessor_config.json` maps the saved PNGs.
    pub fn pixels(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        let n = SIDE * SIDE;
        let mut out = Vec::with_capacity(indices.len() * 3 * n);
        for &i in indices {
            let px = &self.samples[i].pixels;
            for c in 0..3 {
                out.extend((0..n).map(|p| (px[p * 3 + c] as f32 / 255.0 - PIXEL_MEAN) / PIXEL_STD));
            }
        }
        Tensor::from_data(TensorData::new(out, [indices.len(), 3, SIDE, SIDE]), device)
    }

    /// The classes (of `c`, given by `label`) of the images at `indices`, one-hot [B, C].
    pub fn one_hot(
        &self,
        c: usize,
        label: impl Fn(&Sample) -> usize,
        indices: &[usize],
        device: &Device,
    ) -> Tensor<2> {
        let mut out = vec![0f32; indices.len() * c];
        for (row, &i) in indices.iter().enumerate() {
            out[row * c + label(&self.samples[i])] = 1.0;
        }
        Tensor::from_data(TensorData::new(out, [indices.len(), c]), device)
    }
}

/// Cross-entropy of logits [B, C] against one-hot targets, averaged over the batch.
fn cross_entropy(logits: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
    (log_softmax(logits, 1) * one_hot).sum_dim(1).mean().neg()
}

/// Learning rate of step `s` of `total` under cosine decay from `lr` to 0 (PyTorch's
/// `CosineAnnealingLR` with `T_max = total`).
pub fn cosine_lr(lr: f64, s: usize, total: usize) -> f64 {
    lr * 0.5 * (1.0 + (std::f64::consts::PI * s as f64 / total.max(1) as f64).cos())
}

/// Adam over a named weight set, one state per tensor.
pub struct WeightsAdam {
    adam: Adam,
    states: Vec<Option<AdamState<1>>>,
}

impl WeightsAdam {
    /// PyTorch's Adam defaults (β 0.9/0.999, ε 1e-8), no weight decay.
    pub fn new(num_tensors: usize) -> Self {
        Self {
            adam: AdamConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.999)
                .with_epsilon(1e-8)
                .build(),
            states: vec![None; num_tensors],
        }
    }

    /// One step over a batch split in `shards`: each shard's `loss` is evaluated on its own
    /// autodiff leaves of `w` and back-propagated (on threads of their own on the CPU, see
    /// [`side_by_side`]), the shards' gradients are summed in shard order and every tensor of
    /// `w` is updated in place. A shard's loss must be its part of the batch's loss (e.g. its
    /// mean scaled by its share of the batch), so the sum is the batch's gradient. The shards
    /// and the order of their sum are the same on one core or many. Returns the batch's loss.
    pub fn step<S: Sync>(
        &mut self,
        w: &mut Weights,
        lr: f64,
        shards: &[S],
        loss: impl Fn(&Weights, &S) -> Result<Tensor<1>> + Sync,
    ) -> Result<f64> {
        let names: Vec<String> = w.names().map(str::to_string).collect();
        let width = w
            .iter()
            .next()
            .map_or(1, |(_, t)| side_by_side(&t.data.device()));
        let parts = waves(shards, width, |shard| {
            shard_gradients(w, &names, shard, &loss)
        })?;
        let value: f64 = parts.iter().map(|(v, _)| v).sum();
        if !value.is_finite() {
            return Err(Error::invalid(
                "training",
                format!("the loss became {value}"),
            ));
        }
        let mut sums: TensorGrads = vec![None; names.len()];
        for (_, grads) in parts {
            add_grads(&mut sums, grads);
        }
        for (i, (name, g)) in names.iter().zip(sums).enumerate() {
            let (Some(current), Some(g)) = (w.get(name), g) else {
                continue;
            };
            let (updated, state) =
                self.adam
                    .step(lr, current.data.clone(), g, self.states[i].take());
            self.states[i] = state;
            let replaced = current.with_data(updated);
            w.insert(name.clone(), replaced);
        }
        Ok(value)
    }
}

/// One shard's loss and the gradient of every tensor of `w` (in the order of `names`), from its
/// own autodiff leaves.
fn shard_gradients<S>(
    w: &Weights,
    names: &[String],
    shard: &S,
    loss: &impl Fn(&Weights, &S) -> Result<Tensor<1>>,
) -> Result<(f64, TensorGrads)> {
    let leaves = w.map(|_, t| t.autodiff().require_grad());
    let loss = loss(&leaves, shard)?;
    let value = scalar(loss.clone().inner())?;
    let grads = loss.backward();
    let per_tensor = names
        .iter()
        .map(|name| leaves.get(name).and_then(|leaf| leaf.data.grad(&grads)))
        .collect();
    Ok((value, per_tensor))
}

/// The shards of a batch: `shards` consecutive runs of (nearly) equal length, the longer first.
pub fn split_batch(batch: &[usize], shards: usize) -> Vec<&[usize]> {
    batch
        .chunks(batch.len().div_ceil(shards.max(1)).max(1))
        .collect()
}

/// A deterministic shuffled order of `n` items for epoch `epoch`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(epoch as u64));
    rand::seq::index::sample(&mut rng, n, n).into_vec()
}

/// The tower's image embeddings [B, P].
pub fn embed(cfg: &VisionConfig, w: &Weights, pixels: Tensor<4>) -> Result<Tensor<2>> {
    VisionTower::new(cfg, w)?.image_embeds(pixels)
}

/// Name of pretraining's linear probe for a factor (kept beside the tower, never saved): its
/// `weight` is stored [in, out], its `bias` [out].
pub fn probe(factor: Factor, part: &str) -> String {
    format!("probe.{}.{part}", factor.name())
}

/// Adds a linear probe per factor of `factors` to `w` (trained jointly with the tower during
/// pretraining), initialised as PyTorch's `nn.Linear`: U(−1/√width, 1/√width).
pub fn add_probes(w: &mut Weights, factors: &[Factor], width: usize, seed: u64, device: &Device) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x009b_0be5);
    let bound = 1.0 / (width as f32).sqrt();
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
    for &f in factors {
        let c = f.num_classes();
        w.insert(
            probe(f, "weight"),
            FlatTensor::from_vec(draw(c * width), vec![width, c], device),
        );
        w.insert(
            probe(f, "bias"),
            FlatTensor::from_vec(draw(c), vec![c], device),
        );
    }
}

/// Removes the probes, leaving the tower.
pub fn strip_probes(w: &Weights) -> Weights {
    let mut out = Weights::new();
    for (name, t) in w.iter().filter(|(n, _)| !n.starts_with("probe.")) {
        out.insert(name, t.clone());
    }
    out
}

/// Pretraining loss: the sum over `targets` (a factor and its one-hot classes [B, C]) of the
/// cross-entropy of each factor's probe on `scale · normalize(image_embeds)`.
pub fn pretraining_loss(
    cfg: &VisionConfig,
    w: &Weights,
    pixels: Tensor<4>,
    targets: &[(Factor, Tensor<2>)],
    scale: f64,
) -> Result<Tensor<1>> {
    let e = normalize_rows(embed(cfg, w, pixels)?).mul_scalar(scale);
    let width = cfg.projection_dim;
    let mut total: Option<Tensor<1>> = None;
    for (f, target) in targets {
        let weight = w
            .require(&probe(*f, "weight"))?
            .data
            .clone()
            .reshape([width, f.num_classes()]);
        let bias = w.require(&probe(*f, "bias"))?.data.clone();
        let loss = cross_entropy(linear(e.clone(), weight, Some(bias)), target.clone());
        total = Some(match total {
            Some(t) => t + loss,
            None => loss,
        });
    }
    total.ok_or_else(|| Error::invalid("pretraining", "no factor to learn"))
}

/// Fine-tuning loss: cross-entropy of the frozen head [C, P] against one-hot classes [B, C].
pub fn head_loss(
    cfg: &VisionConfig,
    w: &Weights,
    head: &Tensor<2>,
    pixels: Tensor<4>,
    target: Tensor<2>,
) -> Result<Tensor<1>> {
    let e = normalize_rows(embed(cfg, w, pixels)?);
    Ok(cross_entropy(e.matmul(head.clone().transpose()), target))
}

/// A class-mean head [C, P]: per class, the mean normalised embedding of its first `shots`
/// images in `set`, normalised and scaled — a stand-in for CLIP's zero-shot heads, fixed from
/// the pretrained tower.
pub fn class_mean_head(
    cfg: &VisionConfig,
    w: &Weights,
    set: &ImageSet,
    task: &Task,
    shots: usize,
    scale: f64,
    device: &Device,
) -> Result<Tensor<2>> {
    let c = task.classes;
    let mut picked: Vec<Vec<usize>> = vec![Vec::new(); c];
    for (i, s) in set.samples.iter().enumerate() {
        let class = task.label(s);
        if picked[class].len() < shots {
            picked[class].push(i);
        }
    }
    let mut rows = Vec::with_capacity(c);
    for (class, idx) in picked.iter().enumerate() {
        if idx.is_empty() {
            return Err(Error::invalid(
                "suite",
                format!(
                    "task `{}` has no training image of class {class}",
                    task.name
                ),
            ));
        }
        let e = normalize_rows(embed(cfg, w, set.pixels(idx, device))?);
        rows.push(e.mean_dim(0));
    }
    Ok(normalize_rows(Tensor::cat(rows, 0)).mul_scalar(scale))
}
