//! The suite's tiny CLIP-style vision tower: Hugging Face `CLIPVisionModelWithProjection` layout,
//! initialised as `transformers` initialises it, written as a model directory any CLIP tool reads.

use std::borrow::Cow;
use std::path::Path;

use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde_json::json;

use crate::checkpoint::{PendingTensor, StoredDtype, write_safetensors};
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::output::write_atomic;
use crate::weights::{FlatTensor, Weights};

/// Pixel normalisation of the suite's preprocessor (images are centred on mid-grey).
pub const PIXEL_MEAN: f32 = 0.5;
/// Pixel scale of the suite's preprocessor.
pub const PIXEL_STD: f32 = 0.25;

/// The tower's shape: 32×32 inputs in 8×8 patches (16 + 1 tokens).
pub fn config(width: usize, layers: usize, heads: usize) -> VisionConfig {
    VisionConfig {
        hidden_size: width,
        intermediate_size: 4 * width,
        projection_dim: width,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_channels: 3,
        image_size: super::images::SIDE,
        patch_size: 8,
        hidden_act: crate::config::Activation::QuickGelu,
        layer_norm_eps: 1e-5,
    }
}

/// Every tensor name and shape of the tower, in the order `transformers` lists them.
pub fn shapes(cfg: &VisionConfig) -> Vec<(String, Vec<usize>)> {
    let (w, m, p) = (cfg.hidden_size, cfg.intermediate_size, cfg.patch_size);
    let tokens = (cfg.image_size / p).pow(2) + 1;
    let mut out = vec![
        (
            "vision_model.embeddings.class_embedding".to_string(),
            vec![w],
        ),
        (
            "vision_model.embeddings.patch_embedding.weight".into(),
            vec![w, cfg.num_channels, p, p],
        ),
        (
            "vision_model.embeddings.position_embedding.weight".into(),
            vec![tokens, w],
        ),
        ("vision_model.pre_layrnorm.weight".into(), vec![w]),
        ("vision_model.pre_layrnorm.bias".into(), vec![w]),
    ];
    for i in 0..cfg.num_hidden_layers {
        let l = format!("vision_model.encoder.layers.{i}");
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            out.push((format!("{l}.self_attn.{proj}.weight"), vec![w, w]));
            out.push((format!("{l}.self_attn.{proj}.bias"), vec![w]));
        }
        out.push((format!("{l}.layer_norm1.weight"), vec![w]));
        out.push((format!("{l}.layer_norm1.bias"), vec![w]));
        out.push((format!("{l}.mlp.fc1.weight"), vec![m, w]));
        out.push((format!("{l}.mlp.fc1.bias"), vec![m]));
        out.push((format!("{l}.mlp.fc2.weight"), vec![w, m]));
        out.push((format!("{l}.mlp.fc2.bias"), vec![w]));
        out.push((format!("{l}.layer_norm2.weight"), vec![w]));
        out.push((format!("{l}.layer_norm2.bias"), vec![w]));
    }
    out.push(("vision_model.post_layernorm.weight".into(), vec![w]));
    out.push(("vision_model.post_layernorm.bias".into(), vec![w]));
    out.push((
        "visual_projection.weight".into(),
        vec![cfg.projection_dim, w],
    ));
    out
}

/// The standard deviation `transformers`' `_init_weights` gives a tensor; `None` for a constant
/// (layer norms: weight 1, bias 0; linear biases: 0).
fn init_std(cfg: &VisionConfig, name: &str) -> Option<f32> {
    let w = cfg.hidden_size as f32;
    let depth = (2 * cfg.num_hidden_layers) as f32;
    let in_proj = w.powf(-0.5) * depth.powf(-0.5);
    // Every layer norm's name contains "norm" (`pre_layrnorm` is spelt so in `transformers`).
    if name.ends_with(".bias") || name.contains("norm") {
        return None;
    }
    Some(if name.ends_with("class_embedding") {
        w.powf(-0.5)
    } else if name.contains("patch_embedding") || name.contains("position_embedding") {
        0.02
    } else if name.contains("out_proj") {
        w.powf(-0.5)
    } else if name.contains("_proj.weight") && name.contains("self_attn") {
        in_proj
    } else if name.contains("fc1") {
        (2.0 * w).powf(-0.5)
    } else if name.contains("fc2") {
        in_proj
    } else {
        // visual_projection
        w.powf(-0.5)
    })
}

/// A freshly initialised tower, deterministic in `seed`.
pub fn init(cfg: &VisionConfig, seed: u64, device: &Device) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Weights::new();
    for (name, shape) in shapes(cfg) {
        let n: usize = shape.iter().product();
        let values = match init_std(cfg, &name) {
            Some(std) => {
                let normal = Normal::new(0.0f32, std).expect("a positive standard deviation");
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            }
            None if name.ends_with(".weight") => vec![1.0; n],
            None => vec![0.0; n],
        };
        w.insert(name, FlatTensor::from_vec(values, shape, device));
    }
    w
}

/// Writes a model directory: `config.json`, `model.safetensors` (f32) and
/// `preprocessor_config.json`, each file atomically.
pub fn save(dir: &Path, cfg: &VisionConfig, w: &Weights) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors = Vec::new();
    for (name, shape) in shapes(cfg) {
        let t = w.require(&name)?;
        let bytes: Vec<u8> = t.to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((
            name,
            PendingTensor {
                dtype: StoredDtype::F32,
                shape,
                bytes: Box::new(move || Cow::Owned(bytes.clone())),
            },
        ));
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    let config = json!({
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "projection_dim": cfg.projection_dim,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_channels": cfg.num_channels,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "hidden_act": cfg.hidden_act,
        "layer_norm_eps": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
    });
    let preprocessor = json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": cfg.image_size},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": cfg.image_size, "width": cfg.image_size},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [PIXEL_MEAN, PIXEL_MEAN, PIXEL_MEAN],
        "image_std": [PIXEL_STD, PIXEL_STD, PIXEL_STD],
        "do_convert_rgb": true,
    });
    for (file, value) in [
        ("config.json", config),
        ("preprocessor_config.json", preprocessor),
    ] {
        let text = serde_json::to_string_pretty(&value).expect("a JSON value always serialises");
        write_atomic(&dir.join(file), text.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The init `transformers` gives: every layer norm (including the misspelt `pre_layrnorm`)
    /// starts as the identity, and the random tensors have their `_init_weights` deviations.
    #[test]
    fn init_is_transformers_init() {
        let device = Device::flex();
        let cfg = config(64, 6, 4);
        let w = init(&cfg, 0, &device);
        let std = |name: &str| {
            let v = w.require(name).unwrap().to_vec().unwrap();
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
        };
        for (name, _) in shapes(&cfg) {
            let values = w.require(&name).unwrap().to_vec().unwrap();
            if name.contains("norm") && name.ends_with(".weight") {
                assert!(values.iter().all(|&v| v == 1.0), "{name} is not all ones");
            } else if name.ends_with(".bias") {
                assert!(values.iter().all(|&v| v == 0.0), "{name} is not all zeros");
            }
        }
        let in_proj = 64f32.powf(-0.5) * 12f32.powf(-0.5);
        for (name, want) in [
            ("vision_model.embeddings.class_embedding", 0.125),
            ("vision_model.embeddings.patch_embedding.weight", 0.02),
            (
                "vision_model.encoder.layers.3.self_attn.q_proj.weight",
                in_proj,
            ),
            (
                "vision_model.encoder.layers.3.self_attn.out_proj.weight",
                0.125,
            ),
            (
                "vision_model.encoder.layers.3.mlp.fc1.weight",
                128f32.powf(-0.5),
            ),
            ("vision_model.encoder.layers.3.mlp.fc2.weight", in_proj),
            ("visual_projection.weight", 0.125),
        ] {
            let got = std(name);
            assert!(
                (got - want).abs() < 0.1 * want,
                "{name}: std {got}, want {want}"
            );
        }
    }
}
