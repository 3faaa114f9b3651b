//! The suite's training losses and their gradients against PyTorch (fixture written by
//! `scripts/fixtures/make_grad_fixtures.py` on the quick_gelu CLIP fixture): every tensor of the
//! tower, the projection and the pretraining probes.

use crate::common;

use adamerge::config::VisionConfig;
use adamerge::suite::images::Factor;
use adamerge::suite::train::{WeightsAdam, head_loss, pretraining_loss, probe};
use adamerge::weights::{FlatTensor, Weights, scalar};
use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use std::collections::HashMap;

fn one_hot(labels: &[f32], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * classes];
    for (row, &l) in labels.iter().enumerate() {
        v[row * classes + l as usize] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), classes]), device)
}

/// Backpropagates `loss` of `w` (as autodiff leaves) and checks every tensor's gradient and the
/// loss against `grad.<tag>.<name>` and `loss.<tag>`.
fn check(
    tag: &str,
    w: &Weights,
    expected: &HashMap<String, Vec<f32>>,
    loss: impl FnOnce(&Weights) -> Tensor<1>,
) {
    let leaves = w.map(|_, t| t.autodiff().require_grad());
    let loss = loss(&leaves);
    let value = scalar(loss.clone().inner()).unwrap();
    let want = expected[&format!("loss.{tag}")][0] as f64;
    assert!(
        (value - want).abs() <= 1e-4 * want.abs().max(1.0),
        "{tag} loss {value} vs {want}"
    );
    let grads = loss.backward();
    let mut checked = 0;
    for (name, leaf) in leaves.iter() {
        let want = &expected[&format!("grad.{tag}.{name}")];
        let got = leaf
            .data
            .grad(&grads)
            .map(|g| g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
            .unwrap_or_else(|| vec![0.0; want.len()]);
        assert_eq!(got.len(), want.len(), "{tag} {name}: length");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // k_proj.bias has a zero gradient in exact arithmetic (softmax ignores a shift shared
        // by every key), hence the absolute floor.
        assert!(
            err <= 2e-3 * scale + 1e-7,
            "{tag} {name}: gradient error {err} against a largest entry {scale}"
        );
        checked += 1;
    }
    assert_eq!(checked, w.len());
}

/// The quick_gelu fixture's tower with the PyTorch references of `grads.safetensors`.
struct Fixture {
    device: Device,
    cfg: VisionConfig,
    w: Weights,
    expected: HashMap<String, Vec<f32>>,
}

impl Fixture {
    fn load() -> Self {
        let device = Device::flex();
        let (cfg, w) = vision_tower(&fixture("clip/quick_gelu"), &device);
        let expected = read_all(&fixture("clip/grads.safetensors"));
        Self {
            device,
            cfg,
            w,
            expected,
        }
    }

    fn pixels(&self) -> Tensor<4> {
        Tensor::from_data(
            TensorData::new(self.expected["pixel_values"].clone(), [4, 3, 32, 32]),
            &self.device,
        )
    }

    /// The fine-tuning head [3, P] and its one-hot targets.
    fn head(&self) -> (Tensor<2>, Tensor<2>) {
        let head = Tensor::from_data(
            TensorData::new(self.expected["head"].clone(), [3, self.cfg.projection_dim]),
            &self.device,
        );
        (head, one_hot(&self.expected["labels"], 3, &self.device))
    }
}

#[test]
fn training_gradients_match_pytorch_for_every_tensor() {
    let mut fx = Fixture::load();
    let (head, target) = fx.head();
    check("head", &fx.w, &fx.expected, |w| {
        head_loss(&fx.cfg, w, &head, fx.pixels(), target).unwrap()
    });

    let mut targets = Vec::new();
    for f in [Factor::Frequency, Factor::Frame] {
        for part in ["weight", "bias"] {
            let name = probe(f, part);
            let values = fx.expected[&name].clone();
            let n = values.len();
            fx.w.insert(name, FlatTensor::from_vec(values, vec![n], &fx.device));
        }
        let labels = &fx.expected[&format!("labels.{}", f.name())];
        targets.push((f, one_hot(labels, f.num_classes(), &fx.device)));
    }
    check("pretrain", &fx.w, &fx.expected, |w| {
        pretraining_loss(&fx.cfg, w, fx.pixels(), &targets, 10.0).unwrap()
    });
}

/// Five Adam steps on the fixture's batch of 4 split in `shards` (each shard's mean loss scaled
/// by its share of the batch, as the suite's build does); returns the losses and the weights.
fn adam_steps(fx: &Fixture, shards: usize) -> (Vec<f64>, Weights) {
    let (head, target) = fx.head();
    let pixels = fx.pixels();
    let size = 4 / shards;
    let parts: Vec<_> = (0..shards)
        .map(|s| {
            let rows = s * size..(s + 1) * size;
            (
                pixels.clone().slice([rows.clone()]),
                target.clone().slice([rows]),
            )
        })
        .collect();
    let mut w = fx.w.clone();
    let mut adam = WeightsAdam::new(w.len());
    let losses = (0..5)
        .map(|_| {
            adam.step(&mut w, 1e-2, &parts, |w, (pixels, target)| {
                let loss = head_loss(&fx.cfg, w, &head, pixels.clone(), target.clone())?;
                Ok(loss.mul_scalar(size as f64 / 4.0))
            })
            .unwrap()
        })
        .collect();
    (losses, w)
}

/// Largest absolute difference between two equally long vectors.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn adam_steps_match_pytorch_whole_and_in_shards() {
    let fx = Fixture::load();
    let (whole_losses, whole) = adam_steps(&fx, 1);
    for shards in [1, 2, 4] {
        let (losses, w) = adam_steps(&fx, shards);
        for (step, (loss, want)) in losses.iter().zip(&fx.expected["adam.losses"]).enumerate() {
            assert!(
                (loss - *want as f64).abs() <= 1e-3 * want.abs() as f64,
                "{shards} shards, step {step}: {loss} vs {want}"
            );
            assert!(
                (loss - whole_losses[step]).abs() <= 1e-6 * loss.abs(),
                "{shards} shards, step {step}: {loss} vs {} in one backward",
                whole_losses[step]
            );
        }
        // k_proj.bias is left out: its true gradient is zero, so Adam's normalised step follows
        // the sign of round-off, which differs between any two implementations.
        for (name, t) in w.iter().filter(|(n, _)| !n.ends_with("k_proj.bias")) {
            let got = t.to_vec().unwrap();
            let err = max_diff(&got, &fx.expected[&format!("adam.{name}")]);
            assert!(
                err <= 1e-4,
                "{shards} shards, {name}: after 5 steps off by {err}"
            );
            let err = max_diff(&got, &whole.require(name).unwrap().to_vec().unwrap());
            assert!(
                err <= 1e-5,
                "{shards} shards, {name}: {err} from one backward after 5 steps"
            );
        }
    }
}

/// Gradients of the head loss at the full suite's sizes (width 64, 6 layers, batch 64), on
/// `device`, for a fixed random tower, head and batch.
fn suite_size_gradients(device: &Device) -> Weights {
    use adamerge::suite::tiny_clip;
    let cfg = tiny_clip::config(64, 6, 4);
    let w = tiny_clip::init(&cfg, 5, device);
    let n = 64 * 3 * 32 * 32;
    let pixels: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [64, 3, 32, 32]), device);
    let head: Vec<f32> = (0..8 * 64)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 2.0)
        .collect();
    let head = Tensor::<2>::from_data(TensorData::new(head, [8, 64]), device);
    let labels: Vec<f32> = (0..64).map(|i| (i % 8) as f32).collect();
    let target = one_hot(&labels, 8, device);
    let leaves = w.map(|_, t| t.autodiff().require_grad());
    let loss = head_loss(&cfg, &leaves, &head, pixels, target).unwrap();
    let grads = loss.backward();
    leaves.map(|_, t| t.grad(&grads).unwrap())
}

/// ndarray is deprecated upstream but is the only other CPU backend: an independent check of
/// flex's kernels at sizes the PyTorch fixture does not reach.
#[test]
#[allow(deprecated)]
fn flex_and_ndarray_gradients_agree_at_the_suites_size() {
    let a = suite_size_gradients(&Device::flex());
    let b = suite_size_gradients(&Device::ndarray());
    for ((name, x), (_, y)) in a.iter().zip(b.iter()) {
        let (x, y) = (x.to_vec().unwrap(), y.to_vec().unwrap());
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = x
            .iter()
            .zip(&y)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            err <= 1e-3 * scale + 1e-7,
            "{name}: flex and ndarray differ by {err} (scale {scale})"
        );
    }
}
