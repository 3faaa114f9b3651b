//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adamerge::checkpoint::{Checkpoint, StoredDtype, load_weights};
use adamerge::config::VisionConfig;
use adamerge::weights::{FlatTensor, Weights};
use burn::tensor::Device;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The vision tower of a CLIP checkpoint directory: its config and the `vision_model.*` and
/// `visual_projection.weight` tensors.
pub fn vision_tower(dir: &Path, device: &Device) -> (VisionConfig, Weights) {
    let ckpt = Checkpoint::open(dir).expect("open");
    let cfg = VisionConfig::locate(ckpt.config().expect("config"), dir)
        .expect("vision config")
        .expect("a vision tower")
        .config;
    let w = load_weights(&ckpt, device, |n| {
        n.starts_with("vision_model.") || n == "visual_projection.weight"
    })
    .expect("weights");
    (cfg, w)
}

/// Every tensor of a safetensors file or directory, as f32 (u8 masks and i64 ids included).
pub fn read_all(path: &Path) -> HashMap<String, Vec<f32>> {
    let ckpt = Checkpoint::open(path).expect("open");
    ckpt.names()
        .map(|n| {
            let values = match ckpt.meta(n).expect("meta").dtype {
                StoredDtype::Other(safetensors::Dtype::U8) => ckpt
                    .raw(n)
                    .expect("raw")
                    .iter()
                    .map(|&b| b as f32)
                    .collect(),
                StoredDtype::Other(safetensors::Dtype::I64) => ckpt
                    .raw(n)
                    .expect("raw")
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                _ => ckpt.read_f32(n).expect("read"),
            };
            (n.to_string(), values)
        })
        .collect()
}

/// Largest absolute difference between `got` and the expected tensors (same names required).
pub fn max_abs_diff(got: &Weights, expected: &HashMap<String, Vec<f32>>) -> f32 {
    assert_eq!(got.len(), expected.len(), "tensor count");
    let mut worst = 0f32;
    for (name, t) in got.iter() {
        let want = expected
            .get(name)
            .unwrap_or_else(|| panic!("expected has no `{name}`"));
        let have = t.to_vec();
        assert_eq!(have.len(), want.len(), "{name}: length");
        for (a, b) in have.iter().zip(want) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

/// A weight set from `(name, values)` pairs, each rank 1.
pub fn weights(device: &Device, tensors: &[(&str, &[f32])]) -> Weights {
    let mut w = Weights::new();
    for (name, values) in tensors {
        w.insert(
            *name,
            FlatTensor::from_vec(values.to_vec(), vec![values.len()], device),
        );
    }
    w
}

/// Values of one tensor.
pub fn values(w: &Weights, name: &str) -> Vec<f32> {
    w.get(name).expect("tensor").to_vec()
}

/// Asserts element-wise closeness.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol,
            "entry {i}: got {a}, want {b} (tol {tol})"
        );
    }
}
