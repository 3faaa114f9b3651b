//! The CLIP forward against `transformers` on tiny random configs (fixtures written by
//! `scripts/fixtures/make_clip_fixtures.py`): both activations, vision and text towers, the
//! tokenizer, zero-shot heads and logits.

use crate::common;

use adamerge::checkpoint::{Checkpoint, load_weights};
use adamerge::config::{TextConfig, VisionConfig};
use adamerge::model::{
    ClipTokenizer, LinearKind, Observer, VisionTower, logits, text_forward, vision_forward,
    zero_shot_head,
};
use burn::tensor::{Device, Tensor, TensorData};
use common::*;

/// Largest |a − b| relative to the largest |b|.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn flat<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn vision_tower_matches_transformers_for_both_activations() {
    let device = Device::flex();
    for cfg_name in ["quick_gelu", "gelu"] {
        let dir = fixture("clip").join(cfg_name);
        let (cfg, w) = vision_tower(&dir, &device);
        assert_eq!(cfg.hidden_act.to_string(), cfg_name);
        let expected = read_all(&dir.join("expected.safetensors"));
        let pixels = Tensor::<4>::from_data(
            TensorData::new(expected["pixel_values"].clone(), [4, 3, 32, 32]),
            &device,
        );
        let out = vision_forward(&cfg, &w, pixels).unwrap();
        for (name, got) in [
            ("vision_last_hidden_state", flat(out.last_hidden_state)),
            ("vision_pooled", flat(out.pooled)),
            ("image_embeds", flat(out.image_embeds.unwrap())),
        ] {
            let err = rel_err(&got, &expected[name]);
            assert!(err <= 1e-4, "{cfg_name} {name}: relative error {err}");
        }
    }
}

#[test]
fn vision_config_and_weight_errors_name_the_key_or_tensor() {
    let device = Device::flex();
    let dir = fixture("clip/quick_gelu");
    let ckpt = Checkpoint::open(&dir).unwrap();
    let mut cfg = VisionConfig::locate(ckpt.config().unwrap(), &dir)
        .unwrap()
        .unwrap()
        .config;
    let w = load_weights(&ckpt, &device, |n| n.starts_with("vision_model.")).unwrap();
    let pixels = Tensor::<4>::zeros([1, 3, 32, 32], &device);
    let out = vision_forward(&cfg, &w, pixels.clone()).unwrap();
    assert!(
        out.image_embeds.is_none(),
        "no projection in the weights, no embeds"
    );

    // An unknown activation is refused where config.json is read, naming the key.
    let mut raw = ckpt.config().unwrap().clone();
    let section = if raw.get("vision_config").is_some() {
        &mut raw["vision_config"]
    } else {
        &mut raw
    };
    section["hidden_act"] = "swish".into();
    let e = VisionConfig::locate(&raw, &dir).err().unwrap().to_string();
    assert!(e.contains("hidden_act") && e.contains("swish"), "{e}");
    cfg.hidden_act = adamerge::config::Activation::Gelu;
    cfg.intermediate_size = 48;
    let e = vision_forward(&cfg, &w, pixels.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("vision_model.encoder.layers.0.mlp.fc1.weight") && e.contains("[48, 32]"),
        "{e}"
    );
    cfg.intermediate_size = 64;
    let e = vision_forward(&cfg, &w, Tensor::<4>::zeros([1, 3, 24, 24], &device))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("pixel_values") && e.contains("image_size 32"),
        "{e}"
    );
}

fn rows(values: &[f32], width: usize) -> Vec<Vec<i64>> {
    values
        .chunks(width)
        .map(|r| r.iter().map(|&v| v as i64).collect())
        .collect()
}

#[test]
fn tokenizer_text_tower_heads_and_logits_match_transformers() {
    let device = Device::flex();
    let texts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip/texts.json")).unwrap())
            .unwrap();
    let heads: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip/heads.json")).unwrap())
            .unwrap();
    for cfg_name in ["quick_gelu", "gelu"] {
        let dir = fixture("clip").join(cfg_name);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let config = ckpt.config().unwrap();
        let cfg = TextConfig::locate(config, &dir).unwrap().unwrap();
        let vcfg = VisionConfig::locate(config, &dir).unwrap().unwrap().config;
        let w = load_weights(&ckpt, &device, |_| true).unwrap();
        let expected = read_all(&dir.join("expected.safetensors"));
        let ctx = cfg.max_position_embeddings;

        let tok = ClipTokenizer::from_dir(&dir, ctx).unwrap();
        let enc = tok.encode(&texts).unwrap();
        assert_eq!(
            enc.ids,
            rows(&expected["input_ids"], ctx),
            "{cfg_name}: token ids"
        );
        assert_eq!(enc.attention_mask, rows(&expected["attention_mask"], ctx));

        let out = text_forward(&cfg, &w, &enc.ids, &enc.attention_mask, &device).unwrap();
        for (name, got) in [
            ("text_pooled", flat(out.pooled)),
            ("text_embeds", flat(out.text_embeds.unwrap())),
        ] {
            let err = rel_err(&got, &expected[name]);
            assert!(err <= 1e-4, "{cfg_name} {name}: relative error {err}");
        }

        let pixels = Tensor::<4>::from_data(
            TensorData::new(expected["pixel_values"].clone(), [4, 3, 32, 32]),
            &device,
        );
        let image_embeds = vision_forward(&vcfg, &w, pixels)
            .unwrap()
            .image_embeds
            .unwrap();
        for (task, spec) in heads.as_object().unwrap() {
            let strings = |k: &str| -> Vec<String> {
                spec[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            let head = zero_shot_head(
                &cfg,
                &w,
                &tok,
                &strings("classnames"),
                &strings("templates"),
                &device,
            )
            .unwrap();
            let err = rel_err(&flat(head.clone()), &expected[&format!("head.{task}")]);
            assert!(err <= 1e-4, "{cfg_name} head.{task}: relative error {err}");
            let l = logits(image_embeds.clone(), head);
            let err = rel_err(&flat(l), &expected[&format!("logits.{task}")]);
            assert!(
                err <= 1e-4,
                "{cfg_name} logits.{task}: relative error {err}"
            );
        }
    }
}

#[test]
fn a_missing_tokenizer_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_dir(tmp.path(), 16)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

/// Records every linear layer's input.
#[derive(Default)]
struct Recorder(std::collections::HashMap<(usize, LinearKind), Tensor<3>>);

impl Observer for Recorder {
    fn linear_input(&mut self, layer: usize, kind: LinearKind, x: &Tensor<3>) {
        self.0.insert((layer, kind), x.clone());
    }
}

#[test]
fn the_tower_runs_block_by_block_and_shows_every_linear_input() {
    let device = Device::flex();
    let dir = fixture("clip").join("quick_gelu");
    let (cfg, w) = vision_tower(&dir, &device);
    let expected = read_all(&dir.join("expected.safetensors"));
    let pixels = Tensor::<4>::from_data(
        TensorData::new(expected["pixel_values"].clone(), [4, 3, 32, 32]),
        &device,
    );
    let tower = VisionTower::new(&cfg, &w).unwrap();
    let whole = tower.forward(pixels.clone()).unwrap();

    let mut seen = Recorder::default();
    let mut x = tower.embed(pixels).unwrap();
    let mut inputs = vec![x.clone()];
    for l in 0..cfg.num_hidden_layers {
        x = tower.block(l, x, &mut seen);
        inputs.push(x.clone());
    }
    let staged = tower.head(x);
    for (got, want) in [
        (
            flat(staged.last_hidden_state),
            flat(whole.last_hidden_state),
        ),
        (
            flat(staged.image_embeds.unwrap()),
            flat(whole.image_embeds.unwrap()),
        ),
    ] {
        assert_eq!(got, want, "block by block is the same computation");
    }

    assert_eq!(seen.0.len(), 6 * cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let layer = &tower.layers[l];
        let at = |k| seen.0[&(l, k)].clone();
        let [b, t, _] = inputs[l].dims();
        assert_eq!(at(LinearKind::Fc2).dims(), [b, t, cfg.intermediate_size]);
        // q, k and v read the same normalised input, layer_norm1 of the block's input.
        let h = layer.layer_norm1.forward(inputs[l].clone());
        for k in [LinearKind::Q, LinearKind::K, LinearKind::V] {
            assert!(rel_err(&flat(at(k)), &flat(h.clone())) < 1e-6, "{l} {k:?}");
        }
        // The residual stream is its input plus what out_proj and fc2 make of what they saw.
        let rebuilt = inputs[l].clone()
            + layer.out_proj.forward(at(LinearKind::Out))
            + layer.fc2.forward(at(LinearKind::Fc2));
        let err = rel_err(&flat(rebuilt), &flat(inputs[l + 1].clone()));
        assert!(err < 1e-5, "layer {l}: {err}");
    }
}
