//! Hugging Face CLIP configurations (`config.json`), read with serde, defaults as in
//! `transformers`' `CLIPVisionConfig`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The MLP activation of a CLIP tower, as `hidden_act` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x·σ(1.702x), the original CLIP's.
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::QuickGelu => "quick_gelu",
            Self::Gelu => "gelu",
        })
    }
}

/// The vision tower's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Output size of `visual_projection`.
    pub projection_dim: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Input resolution.
    pub image_size: usize,
    /// Patch size.
    pub patch_size: usize,
    /// MLP activation (`quick_gelu` or `gelu`).
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// The text tower's hyper-parameters (`CLIPTextConfig` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Output size of `text_projection`.
    pub projection_dim: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// End-of-text id; 2 marks the legacy configs that pool at the largest id instead.
    pub eos_token_id: i64,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

impl TextConfig {
    /// Reads `text_config` of a `CLIPModel` config; `None` when there is none.
    pub fn locate(value: &serde_json::Value, path: &Path) -> Result<Option<Self>> {
        let Some(section) = value.get("text_config") else {
            return Ok(None);
        };
        parse_section(section.clone(), "text_config.", path).map(Some)
    }
}

/// Parses one section of a `config.json`; an error names the key (`vision_config.hidden_size`).
fn parse_section<T: serde::de::DeserializeOwned>(
    section: serde_json::Value,
    prefix: &str,
    path: &Path,
) -> Result<T> {
    serde_path_to_error::deserialize(section).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        key: format!("{prefix}{}", e.path()),
        reason: e.into_inner().to_string(),
    })
}

/// Where a vision config was found inside a `config.json`.
#[derive(Debug, Clone)]
pub struct LocatedVisionConfig {
    /// The parsed values.
    pub config: VisionConfig,
    /// Key prefix in the file: `vision_config.` for a `CLIPModel`, empty for a vision model.
    pub prefix: &'static str,
}

impl VisionConfig {
    /// The vision config of a checkpoint directory's `config.json`, or an error naming it.
    pub fn of_checkpoint(ckpt: &crate::checkpoint::Checkpoint) -> Result<Self> {
        let dir = ckpt.path();
        let dir = if dir.is_dir() {
            dir
        } else {
            dir.parent().unwrap_or(dir)
        };
        let path = dir.join("config.json");
        let value = ckpt.config().ok_or_else(|| Error::Checkpoint {
            path: path.clone(),
            reason: "missing: the vision tower's config.json is needed".into(),
        })?;
        Self::locate(value, &path)?
            .map(|l| l.config)
            .ok_or_else(|| Error::Config {
                path,
                key: "vision_config".into(),
                reason: "no CLIP vision config".into(),
            })
    }

    /// Extracts the vision config from a parsed `config.json` of any CLIP layout.
    ///
    /// Returns `None` when the file describes no CLIP vision tower.
    pub fn locate(value: &serde_json::Value, path: &Path) -> Result<Option<LocatedVisionConfig>> {
        let (section, prefix) = if let Some(v) = value.get("vision_config") {
            (v.clone(), "vision_config.")
        } else if value.get("model_type").and_then(|m| m.as_str()) == Some("clip_vision_model")
            || value.get("hidden_size").is_some()
        {
            (value.clone(), "")
        } else {
            return Ok(None);
        };
        let config = parse_section(section, prefix, path)?;
        Ok(Some(LocatedVisionConfig { config, prefix }))
    }

    /// The fields that must agree between checkpoints being merged, as `(key, value)` pairs.
    pub fn architecture(&self) -> Vec<(&'static str, String)> {
        vec![
            ("hidden_size", self.hidden_size.to_string()),
            ("intermediate_size", self.intermediate_size.to_string()),
            ("num_hidden_layers", self.num_hidden_layers.to_string()),
            ("num_attention_heads", self.num_attention_heads.to_string()),
            ("num_channels", self.num_channels.to_string()),
            ("image_size", self.image_size.to_string()),
            ("patch_size", self.patch_size.to_string()),
            ("hidden_act", self.hidden_act.to_string()),
        ]
    }
}

/// Checks that two located vision configs describe the same architecture.
pub fn check_same_vision(
    a: &LocatedVisionConfig,
    a_path: &Path,
    b: &LocatedVisionConfig,
    b_path: &Path,
) -> Result<()> {
    for ((key, va), (_, vb)) in a.config.architecture().iter().zip(b.config.architecture()) {
        if *va != vb {
            return Err(Error::Config {
                path: b_path.to_path_buf(),
                key: format!("{}{key}", b.prefix),
                reason: format!(
                    "is {vb} but {}{key} is {va} in {}; the vision towers differ",
                    a.prefix,
                    a_path.display()
                ),
            });
        }
    }
    Ok(())
}
