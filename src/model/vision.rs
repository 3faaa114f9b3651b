//! The CLIP vision tower of `transformers` (`CLIPVisionModel[WithProjection]`), batched.

use burn::tensor::Tensor;

use super::layers::{EncoderShape, encoder, hf_layer_norm, optional_projection, param};
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// What the vision tower returns.
pub struct VisionOutput {
    /// Encoder output [B, 1 + patches, hidden].
    pub last_hidden_state: Tensor<3>,
    /// `post_layernorm` of the class token [B, hidden].
    pub pooled: Tensor<2>,
    /// `visual_projection` of `pooled` [B, projection] when the weights have the projection.
    pub image_embeds: Option<Tensor<2>>,
}

/// Runs the vision tower on preprocessed pixels [B, C, H, W].
pub fn vision_forward(cfg: &VisionConfig, w: &Weights, pixels: Tensor<4>) -> Result<VisionOutput> {
    let [b, c, h, wd] = pixels.dims();
    let (p, width) = (cfg.patch_size, cfg.hidden_size);
    if c != cfg.num_channels
        || h != cfg.image_size
        || wd != cfg.image_size
        || p == 0
        || !h.is_multiple_of(p)
    {
        return Err(Error::Tensor {
            tensor: "pixel_values".into(),
            reason: format!(
                "shape [{b}, {c}, {h}, {wd}] does not fit the config (num_channels {}, image_size {}, patch_size {p})",
                cfg.num_channels, cfg.image_size
            ),
        });
    }
    let eps = cfg.layer_norm_eps;
    let shape = EncoderShape::new(
        "",
        width,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
        eps,
        &cfg.hidden_act,
    )?;
    let g = h / p;
    let n = g * g;
    // Patch embedding as one matmul: [B, C, g, p, g, p] -> [B, g, g, C, p, p] -> [B, n, C·p·p].
    let patches = pixels
        .reshape([b, c, g, p, g, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, n, c * p * p]);
    let conv = param(
        w,
        "vision_model.embeddings.patch_embedding.weight",
        [width, c, p, p],
    )?;
    let x = patches.matmul(
        conv.reshape([width, c * p * p])
            .transpose()
            .unsqueeze::<3>(),
    );
    let cls = param(w, "vision_model.embeddings.class_embedding", [width])?
        .reshape([1, 1, width])
        .expand([b, 1, width]);
    let pos = param(
        w,
        "vision_model.embeddings.position_embedding.weight",
        [n + 1, width],
    )?;
    let x = Tensor::cat(vec![cls, x], 1) + pos.unsqueeze::<3>();
    let x = hf_layer_norm(w, "vision_model.pre_layrnorm", x, width, eps)?;
    let last_hidden_state = encoder(w, "vision_model.encoder", x, shape, None)?;
    let cls_out = last_hidden_state
        .clone()
        .narrow(1, 0, 1)
        .reshape([b, width]);
    let pooled = hf_layer_norm(w, "vision_model.post_layernorm", cls_out, width, eps)?;
    let image_embeds = optional_projection(
        w,
        "visual_projection",
        pooled.clone(),
        width,
        cfg.projection_dim,
    )?;
    Ok(VisionOutput {
        last_hidden_state,
        pooled,
        image_embeds,
    })
}
