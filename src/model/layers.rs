//! The building blocks shared by the vision and text towers, as typed views of a weight set:
//! linear layers in Hugging Face's [out, in] layout, layer norms and pre-LN encoder layers,
//! each looked up and shape-checked once when the view is built, and run with an optional
//! observer of the inputs of every linear layer.

use burn::tensor::activation::gelu;
use burn::tensor::module::{attention, layer_norm};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use crate::config::Activation;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// A parameter reshaped to the shape the config implies, or an error naming it.
pub(crate) fn param<const D: usize>(
    w: &Weights,
    name: &str,
    shape: [usize; D],
) -> Result<Tensor<D>> {
    let t = w.get(name).ok_or_else(|| Error::Tensor {
        tensor: name.to_string(),
        reason: "missing from the weights".into(),
    })?;
    if t.shape.iter().product::<usize>() != shape.iter().product::<usize>()
        || (t.shape.len() == D && t.shape != shape)
    {
        return Err(Error::Tensor {
            tensor: name.to_string(),
            reason: format!("has shape {:?} but the config needs {shape:?}", t.shape),
        });
    }
    Ok(t.data.clone().reshape(shape))
}

/// A Hugging Face linear layer: `weight` [out, in] and an optional `bias` [out].
#[derive(Clone, Debug)]
pub struct Linear {
    /// `prefix.weight`, [out, in].
    pub weight: Tensor<2>,
    /// `prefix.bias`, [out].
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// `prefix.weight` (and `prefix.bias` when `bias`), checked against [d_out, d_in].
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            weight: param(w, &format!("{prefix}.weight"), [d_out, d_in])?,
            bias: bias
                .then(|| param(w, &format!("{prefix}.bias"), [d_out]))
                .transpose()?,
        })
    }

    /// The layer when the weights have it (a vision-only or text-less checkpoint may lack its
    /// projection).
    pub(crate) fn optional(
        w: &Weights,
        prefix: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Option<Self>> {
        if w.get(&format!("{prefix}.weight")).is_none() {
            return Ok(None);
        }
        Self::new(w, prefix, d_in, d_out, false).map(Some)
    }

    /// `x · Wᵀ + b`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // One [rows, in] × [in, out] product over every leading dimension: burn may keep a
        // [B, T, in] input as a broadcast batched matmul, whose backward forms one weight
        // gradient per image ([B, in, out]) before summing them.
        let mut dims = x.dims();
        let rows = dims[..D - 1].iter().product();
        let y = crate::kernels::linear_nt(
            x.reshape([rows, dims[D - 1]]),
            self.weight.clone(),
            self.bias.clone(),
        );
        dims[D - 1] = y.dims()[1];
        y.reshape(dims)
    }
}

/// A layer norm over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// `prefix.weight` (gain).
    pub weight: Tensor<1>,
    /// `prefix.bias`.
    pub bias: Tensor<1>,
    /// ε.
    pub eps: f64,
}

impl LayerNorm {
    /// `prefix.weight` and `prefix.bias`, checked against [width].
    pub(crate) fn new(w: &Weights, prefix: &str, width: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: param(w, &format!("{prefix}.weight"), [width])?,
            bias: param(w, &format!("{prefix}.bias"), [width])?,
            eps,
        })
    }

    /// Normalises `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        layer_norm(x, self.weight.clone(), Some(self.bias.clone()), self.eps)
    }
}

/// The linear layers of an encoder layer, named as in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearKind {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.out_proj`.
    Out,
    /// `mlp.fc1`.
    Fc1,
    /// `mlp.fc2`.
    Fc2,
}

impl LinearKind {
    /// All six, in forward order.
    pub const ALL: [LinearKind; 6] = [Self::Q, Self::K, Self::V, Self::Out, Self::Fc1, Self::Fc2];

    /// The checkpoint name of the layer inside `…layers.<l>.`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::Out => "self_attn.out_proj",
            Self::Fc1 => "mlp.fc1",
            Self::Fc2 => "mlp.fc2",
        }
    }
}

/// Where a parameterised operation of a tower sits: what [`Observer::tap`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tap {
    /// The patch embedding: a linear layer without bias over the flattened patches.
    PatchEmbedding,
    /// The embeddings' sum (class token and patches, plus the positions), before the first norm.
    Embeddings,
    /// `pre_layrnorm`.
    PreNorm,
    /// `layer_norm1` of encoder layer `l`.
    Norm1(usize),
    /// Linear layer `kind` of encoder layer `l`.
    Linear(usize, LinearKind),
    /// `layer_norm2` of encoder layer `l`.
    Norm2(usize),
    /// `post_layernorm`.
    PostNorm,
    /// `visual_projection`.
    Projection,
}

/// Sees the input of every linear layer of an encoder as it runs: what data-based merges
/// (RegMean) record; and, through [`Observer::tap`], every parameterised operation's input and
/// output. The default methods do nothing, so a forward without an observer pays nothing for the
/// hooks.
pub trait Observer {
    /// The operation at `at` read `input` and wrote `output`; the output the forward goes on
    /// with is what this returns. The exact Fisher adds a zero leaf there, whose gradient is then
    /// ∂loss/∂output for every image of a batch: per-image gradients from one batched backward.
    fn tap<const D: usize>(&mut self, at: Tap, input: &Tensor<D>, output: Tensor<D>) -> Tensor<D> {
        let _ = (at, input);
        output
    }
    /// The input [B, T, in] of linear layer `kind` of encoder layer `layer`.
    fn linear_input(&mut self, layer: usize, kind: LinearKind, x: &Tensor<3>) {
        let _ = (layer, kind, x);
    }
    /// The input [B, hidden] of the tower's projection (`visual_projection`): the pooled output.
    fn projection_input(&mut self, x: &Tensor<2>) {
        let _ = x;
    }
}

/// The observer that observes nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Sizes of one transformer tower.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderShape {
    pub width: usize,
    pub heads: usize,
    pub mlp: usize,
    pub layers: usize,
    pub eps: f64,
    pub act: Activation,
}

impl EncoderShape {
    /// Validates a tower's sizes; `key` prefixes config keys in errors (`text_config.` for the
    /// text tower).
    pub fn new(
        key: &str,
        width: usize,
        heads: usize,
        mlp: usize,
        layers: usize,
        eps: f64,
        act: Activation,
    ) -> Result<Self> {
        if heads == 0 || !width.is_multiple_of(heads) {
            return Err(Error::Tensor {
                tensor: format!("{key}num_attention_heads"),
                reason: format!("hidden_size {width} is not divisible by {heads} heads"),
            });
        }
        Ok(Self {
            width,
            heads,
            mlp,
            layers,
            eps,
            act,
        })
    }
}

/// One pre-LN encoder layer of `transformers`' `CLIPEncoder`: attention and MLP with residuals.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    /// `layer_norm1`.
    pub layer_norm1: LayerNorm,
    /// `self_attn.q_proj`.
    pub q_proj: Linear,
    /// `self_attn.k_proj`.
    pub k_proj: Linear,
    /// `self_attn.v_proj`.
    pub v_proj: Linear,
    /// `self_attn.out_proj`.
    pub out_proj: Linear,
    /// `layer_norm2`.
    pub layer_norm2: LayerNorm,
    /// `mlp.fc1`.
    pub fc1: Linear,
    /// `mlp.fc2`.
    pub fc2: Linear,
    heads: usize,
    act: Activation,
}

impl EncoderLayer {
    /// The layer `prefix.layers.<l>` (`prefix` the encoder's, e.g. `vision_model.encoder`).
    pub(crate) fn new(w: &Weights, prefix: &str, l: usize, s: &EncoderShape) -> Result<Self> {
        let p = format!("{prefix}.layers.{l}");
        let lin = |kind: LinearKind, d_in, d_out| {
            Linear::new(w, &format!("{p}.{}", kind.name()), d_in, d_out, true)
        };
        Ok(Self {
            layer_norm1: LayerNorm::new(w, &format!("{p}.layer_norm1"), s.width, s.eps)?,
            q_proj: lin(LinearKind::Q, s.width, s.width)?,
            k_proj: lin(LinearKind::K, s.width, s.width)?,
            v_proj: lin(LinearKind::V, s.width, s.width)?,
            out_proj: lin(LinearKind::Out, s.width, s.width)?,
            layer_norm2: LayerNorm::new(w, &format!("{p}.layer_norm2"), s.width, s.eps)?,
            fc1: lin(LinearKind::Fc1, s.width, s.mlp)?,
            fc2: lin(LinearKind::Fc2, s.mlp, s.width)?,
            heads: s.heads,
            act: s.act,
        })
    }

    /// Runs the layer (layer `l` of its encoder, for the observer); `mask` ([B, heads, T, T],
    /// true = masked) carries the text tower's causal and padding masks.
    pub fn forward(
        &self,
        l: usize,
        x: Tensor<3>,
        mask: Option<&Tensor<4, Bool>>,
        obs: &mut impl Observer,
    ) -> Tensor<3> {
        let [b, t, width] = x.dims();
        let hd = width / self.heads;
        let scale = (hd as f64).powf(-0.5);
        let h = obs.tap(Tap::Norm1(l), &x, self.layer_norm1.forward(x.clone()));
        obs.linear_input(l, LinearKind::Q, &h);
        obs.linear_input(l, LinearKind::K, &h);
        obs.linear_input(l, LinearKind::V, &h);
        let split = |y: Tensor<3>| y.reshape([b, t, self.heads, hd]).swap_dims(1, 2);
        let mut project = |kind, lin: &Linear, h: &Tensor<3>| {
            split(obs.tap(Tap::Linear(l, kind), h, lin.forward(h.clone())))
        };
        let q = project(LinearKind::Q, &self.q_proj, &h);
        let k = project(LinearKind::K, &self.k_proj, &h);
        let v = project(LinearKind::V, &self.v_proj, &h);
        let context = if mask.is_none() && !q.is_autodiff() {
            // The backend's fused attention (one pass over each head's scores); it has no
            // backward of its own (burn's autodiff decomposes it with extra guards), so graphs
            // keep the decomposition below.
            let options = AttentionModuleOptions {
                scale: Some(scale),
                softcap: None,
                is_causal: false,
            };
            attention(q, k, v, None, None, options)
        } else {
            let mut scores = q.mul_scalar(scale).matmul(k.swap_dims(2, 3));
            if let Some(m) = mask {
                scores = scores.mask_fill(m.clone(), f32::NEG_INFINITY);
            }
            crate::kernels::softmax_last(scores).matmul(v)
        };
        let attn = context.swap_dims(1, 2).reshape([b, t, width]);
        obs.linear_input(l, LinearKind::Out, &attn);
        let out = self.out_proj.forward(attn.clone());
        let x = x + obs.tap(Tap::Linear(l, LinearKind::Out), &attn, out);
        let h = obs.tap(Tap::Norm2(l), &x, self.layer_norm2.forward(x.clone()));
        obs.linear_input(l, LinearKind::Fc1, &h);
        let fc1 = self.fc1.forward(h.clone());
        let h = activate(self.act, obs.tap(Tap::Linear(l, LinearKind::Fc1), &h, fc1));
        obs.linear_input(l, LinearKind::Fc2, &h);
        let fc2 = self.fc2.forward(h.clone());
        x + obs.tap(Tap::Linear(l, LinearKind::Fc2), &h, fc2)
    }
}

/// The encoder's layers, `prefix.layers.0 …`.
pub(crate) fn encoder_layers(
    w: &Weights,
    prefix: &str,
    s: &EncoderShape,
) -> Result<Vec<EncoderLayer>> {
    (0..s.layers)
        .map(|l| EncoderLayer::new(w, prefix, l, s))
        .collect()
}

fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::QuickGelu => crate::kernels::quick_gelu(x),
        Activation::Gelu => gelu(x),
    }
}
