//! The CLIP vision tower of `transformers` (`CLIPVisionModel[WithProjection]`), batched, as a
//! typed view of a weight set that can also run one stage at a time.

use burn::tensor::Tensor;

use super::layers::{
    EncoderLayer, EncoderShape, LayerNorm, Linear, NoObserver, Observer, Tap, encoder_layers, param,
};
use crate::config::VisionConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// The vision encoder's prefix: its layers are `vision_model.encoder.layers.<l>`.
const ENCODER: &str = "vision_model.encoder";

/// What the vision tower returns.
pub struct VisionOutput {
    /// Encoder output [B, 1 + patches, hidden].
    pub last_hidden_state: Tensor<3>,
    /// `post_layernorm` of the class token [B, hidden].
    pub pooled: Tensor<2>,
    /// `visual_projection` of `pooled` [B, projection] when the weights have the projection.
    pub image_embeds: Option<Tensor<2>>,
}

/// The vision tower of one weight set: every tensor looked up and shape-checked against the
/// config once, held as views of the weights (no data copied), so merged weights built inside
/// an autodiff graph stay in it. Fields are named after the checkpoint keys.
#[derive(Clone, Debug)]
pub struct VisionTower {
    cfg: VisionConfig,
    /// `vision_model.embeddings.patch_embedding.weight` as a matrix [hidden, C·p·p].
    pub patch_embedding: Tensor<2>,
    /// `vision_model.embeddings.class_embedding` [hidden].
    pub class_embedding: Tensor<1>,
    /// `vision_model.embeddings.position_embedding.weight` [1 + patches, hidden].
    pub position_embedding: Tensor<2>,
    /// `vision_model.pre_layrnorm`.
    pub pre_layrnorm: LayerNorm,
    /// `vision_model.encoder.layers.<l>`.
    pub layers: Vec<EncoderLayer>,
    /// `vision_model.post_layernorm`.
    pub post_layernorm: LayerNorm,
    /// `visual_projection`, where the weights have it.
    pub visual_projection: Option<Linear>,
}

impl VisionTower {
    /// The view of `w` for `cfg`; an error names the missing or misshapen tensor.
    pub fn new(cfg: &VisionConfig, w: &Weights) -> Result<Self> {
        let (c, p, width) = (cfg.num_channels, cfg.patch_size, cfg.hidden_size);
        if p == 0 || !cfg.image_size.is_multiple_of(p) {
            return Err(Error::Tensor {
                tensor: "vision_config.patch_size".into(),
                reason: format!("{p} does not divide image_size {}", cfg.image_size),
            });
        }
        let g = cfg.image_size / p;
        let eps = cfg.layer_norm_eps;
        let shape = EncoderShape::new(
            "",
            width,
            cfg.num_attention_heads,
            cfg.intermediate_size,
            cfg.num_hidden_layers,
            eps,
            cfg.hidden_act,
        )?;
        let at = vision_prefix;
        let embeddings = at(Tap::Embeddings);
        let conv = param(
            w,
            &format!("{}.weight", at(Tap::PatchEmbedding)),
            [width, c, p, p],
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embedding: conv.reshape([width, c * p * p]),
            class_embedding: param(w, &format!("{embeddings}.class_embedding"), [width])?,
            position_embedding: param(
                w,
                &format!("{embeddings}.position_embedding.weight"),
                [g * g + 1, width],
            )?,
            pre_layrnorm: LayerNorm::new(w, &at(Tap::PreNorm), width, eps)?,
            layers: encoder_layers(w, ENCODER, &shape)?,
            post_layernorm: LayerNorm::new(w, &at(Tap::PostNorm), width, eps)?,
            visual_projection: Linear::optional(
                w,
                &at(Tap::Projection),
                width,
                cfg.projection_dim,
            )?,
        })
    }

    /// Runs the whole tower on preprocessed pixels [B, C, H, W].
    pub fn forward(&self, pixels: Tensor<4>) -> Result<VisionOutput> {
        self.forward_observed(pixels, &mut NoObserver)
    }

    /// [`VisionTower::forward`], showing `obs` the input of every linear layer.
    pub fn forward_observed(
        &self,
        pixels: Tensor<4>,
        obs: &mut impl Observer,
    ) -> Result<VisionOutput> {
        let mut x = self.embed_observed(pixels, obs)?;
        for l in 0..self.layers.len() {
            x = self.block(l, x, obs);
        }
        Ok(self.head_observed(x, obs))
    }

    /// The projected image embeddings [B, projection]: what a head scores. An error when the
    /// weights have no `visual_projection`.
    pub fn image_embeds(&self, pixels: Tensor<4>) -> Result<Tensor<2>> {
        self.image_embeds_observed(pixels, &mut NoObserver)
    }

    /// [`VisionTower::image_embeds`], tapped by `obs`.
    pub fn image_embeds_observed(
        &self,
        pixels: Tensor<4>,
        obs: &mut impl Observer,
    ) -> Result<Tensor<2>> {
        if self.visual_projection.is_none() {
            return Err(Error::Tensor {
                tensor: "visual_projection.weight".into(),
                reason: "missing: scoring with a head needs the visual projection".into(),
            });
        }
        let out = self.forward_observed(pixels, obs)?;
        out.image_embeds.ok_or_else(|| Error::Tensor {
            tensor: "visual_projection.weight".into(),
            reason: "missing".into(),
        })
    }

    /// The embeddings and `pre_layrnorm`: the input of block 0, [B, 1 + patches, hidden].
    pub fn embed(&self, pixels: Tensor<4>) -> Result<Tensor<3>> {
        self.embed_observed(pixels, &mut NoObserver)
    }

    /// [`VisionTower::embed`], tapped by `obs`.
    pub fn embed_observed(&self, pixels: Tensor<4>, obs: &mut impl Observer) -> Result<Tensor<3>> {
        let [b, c, h, wd] = pixels.dims();
        let cfg = &self.cfg;
        let (p, width) = (cfg.patch_size, cfg.hidden_size);
        if c != cfg.num_channels || h != cfg.image_size || wd != cfg.image_size {
            return Err(Error::Tensor {
                tensor: "pixel_values".into(),
                reason: format!(
                    "shape [{b}, {c}, {h}, {wd}] does not fit the config (num_channels {}, image_size {}, patch_size {p})",
                    cfg.num_channels, cfg.image_size
                ),
            });
        }
        let g = h / p;
        let n = g * g;
        // Patch embedding as one matmul: [B, C, g, p, g, p] -> [B, g, g, C, p, p] -> [B, n, C·p·p].
        let patches = pixels
            .reshape([b, c, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, n, c * p * p]);
        // A linear layer without bias, so it runs as one 2-D product (see `Linear::forward`).
        let embedding = Linear {
            weight: self.patch_embedding.clone(),
            bias: None,
        };
        let x = obs.tap(
            Tap::PatchEmbedding,
            &patches,
            embedding.forward(patches.clone()),
        );
        let cls = self
            .class_embedding
            .clone()
            .reshape([1, 1, width])
            .expand([b, 1, width]);
        let x = Tensor::cat(vec![cls, x], 1) + self.position_embedding.clone().unsqueeze::<3>();
        let x = obs.tap(Tap::Embeddings, &x.clone(), x);
        let normed = self.pre_layrnorm.forward(x.clone());
        Ok(obs.tap(Tap::PreNorm, &x, normed))
    }

    /// Encoder block `l` on its input (the output of block `l − 1`, or of [`VisionTower::embed`]).
    pub fn block(&self, l: usize, x: Tensor<3>, obs: &mut impl Observer) -> Tensor<3> {
        self.layers[l].forward(l, x, None, obs)
    }

    /// `post_layernorm` of the class token and the projection, on the last block's output.
    pub fn head(&self, last_hidden_state: Tensor<3>) -> VisionOutput {
        self.head_observed(last_hidden_state, &mut NoObserver)
    }

    /// [`VisionTower::head`], showing `obs` the projection's input.
    pub fn head_observed(
        &self,
        last_hidden_state: Tensor<3>,
        obs: &mut impl Observer,
    ) -> VisionOutput {
        let [b, _, width] = last_hidden_state.dims();
        let cls_out = last_hidden_state
            .clone()
            .narrow(1, 0, 1)
            .reshape([b, width]);
        let pooled = self.post_layernorm.forward(cls_out.clone());
        let pooled = obs.tap(Tap::PostNorm, &cls_out, pooled);
        let image_embeds = self.visual_projection.as_ref().map(|proj| {
            obs.projection_input(&pooled);
            obs.tap(Tap::Projection, &pooled, proj.forward(pooled.clone()))
        });
        VisionOutput {
            last_hidden_state,
            pooled,
            image_embeds,
        }
    }
}

/// The checkpoint prefix of the vision tower's operation at `tap`: its tensors are
/// `<prefix>.weight` and `<prefix>.bias` where it has them, and for the embeddings
/// `<prefix>.class_embedding` and `<prefix>.position_embedding.weight`.
pub fn vision_prefix(tap: Tap) -> String {
    match tap {
        Tap::PatchEmbedding => "vision_model.embeddings.patch_embedding".into(),
        Tap::Embeddings => "vision_model.embeddings".into(),
        Tap::PreNorm => "vision_model.pre_layrnorm".into(),
        Tap::Norm1(l) => format!("{ENCODER}.layers.{l}.layer_norm1"),
        Tap::Linear(l, kind) => format!("{ENCODER}.layers.{l}.{}", kind.name()),
        Tap::Norm2(l) => format!("{ENCODER}.layers.{l}.layer_norm2"),
        Tap::PostNorm => "vision_model.post_layernorm".into(),
        Tap::Projection => "visual_projection".into(),
    }
}

/// Runs the vision tower of `w` on preprocessed pixels [B, C, H, W] (builds the view each call:
/// hold a [`VisionTower`] to run one weight set many times).
pub fn vision_forward(cfg: &VisionConfig, w: &Weights, pixels: Tensor<4>) -> Result<VisionOutput> {
    VisionTower::new(cfg, w)?.forward(pixels)
}
