//! The building blocks shared by the vision and text towers: parameters looked up by name and
//! shape-checked against the config, linear layers in Hugging Face's [out, in] layout, pre-LN
//! encoder layers.

use burn::tensor::activation::{gelu, sigmoid, softmax};
use burn::tensor::module::{layer_norm, linear};
use burn::tensor::{Bool, Tensor};

use crate::error::{Error, Result};
use crate::weights::Weights;

/// The MLP activation of a CLIP tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// x·σ(1.702x), the original CLIP's.
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
}

impl Activation {
    /// Parses `hidden_act`; anything else is an error naming the key.
    pub fn parse(name: &str, key: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(Error::Tensor {
                tensor: key.to_string(),
                reason: format!("activation `{other}` is not supported (quick_gelu or gelu)"),
            }),
        }
    }

    pub(crate) fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::QuickGelu => x.clone() * sigmoid(x.mul_scalar(1.702)),
            Self::Gelu => gelu(x),
        }
    }
}

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

/// `x · Wᵀ + b` for a Hugging Face linear layer `prefix.weight` [out, in] (+ `prefix.bias`).
pub(crate) fn hf_linear<const D: usize>(
    w: &Weights,
    prefix: &str,
    x: Tensor<D>,
    d_in: usize,
    d_out: usize,
    bias: bool,
) -> Result<Tensor<D>> {
    let weight = param(w, &format!("{prefix}.weight"), [d_out, d_in])?;
    let b = if bias {
        Some(param(w, &format!("{prefix}.bias"), [d_out])?)
    } else {
        None
    };
    Ok(linear(x, weight.transpose(), b))
}

/// A CLIP projection (`prefix.weight`, no bias) applied when the weights have it; vision-only
/// and text-less checkpoints may lack theirs.
pub(crate) fn optional_projection(
    w: &Weights,
    prefix: &str,
    x: Tensor<2>,
    d_in: usize,
    d_out: usize,
) -> Result<Option<Tensor<2>>> {
    if w.get(&format!("{prefix}.weight")).is_none() {
        return Ok(None);
    }
    hf_linear(w, prefix, x, d_in, d_out, false).map(Some)
}

/// Layer norm `prefix.weight`, `prefix.bias` over the last dimension.
pub(crate) fn hf_layer_norm<const D: usize>(
    w: &Weights,
    prefix: &str,
    x: Tensor<D>,
    width: usize,
    eps: f64,
) -> Result<Tensor<D>> {
    let gamma = param(w, &format!("{prefix}.weight"), [width])?;
    let beta = param(w, &format!("{prefix}.bias"), [width])?;
    Ok(layer_norm(x, gamma, Some(beta), eps))
}

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
    /// Validates a tower's sizes and activation; `key` prefixes config keys in errors
    /// (`text_config.` for the text tower).
    pub fn new(
        key: &str,
        width: usize,
        heads: usize,
        mlp: usize,
        layers: usize,
        eps: f64,
        act: &str,
    ) -> Result<Self> {
        if heads == 0 || !width.is_multiple_of(heads) {
            return Err(Error::Tensor {
                tensor: format!("{key}num_attention_heads"),
                reason: format!("hidden_size {width} is not divisible by {heads} heads"),
            });
        }
        let act = Activation::parse(act, &format!("{key}hidden_act"))?;
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

/// The pre-LN encoder of `transformers`' `CLIPEncoder`: attention and MLP blocks with residuals.
/// `mask` ([B, 1, T, T], true = masked) carries the text tower's causal and padding masks.
pub(crate) fn encoder(
    w: &Weights,
    prefix: &str,
    mut x: Tensor<3>,
    s: EncoderShape,
    mask: Option<Tensor<4, Bool>>,
) -> Result<Tensor<3>> {
    let [b, t, _] = x.dims();
    let hd = s.width / s.heads;
    let scale = (hd as f64).powf(-0.5);
    for l in 0..s.layers {
        let p = format!("{prefix}.layers.{l}");
        let h = hf_layer_norm(w, &format!("{p}.layer_norm1"), x.clone(), s.width, s.eps)?;
        let split = |y: Tensor<3>| y.reshape([b, t, s.heads, hd]).swap_dims(1, 2);
        let q = split(hf_linear(
            w,
            &format!("{p}.self_attn.q_proj"),
            h.clone(),
            s.width,
            s.width,
            true,
        )?);
        let k = split(hf_linear(
            w,
            &format!("{p}.self_attn.k_proj"),
            h.clone(),
            s.width,
            s.width,
            true,
        )?);
        let v = split(hf_linear(
            w,
            &format!("{p}.self_attn.v_proj"),
            h,
            s.width,
            s.width,
            true,
        )?);
        let mut scores = q.mul_scalar(scale).matmul(k.swap_dims(2, 3));
        if let Some(m) = &mask {
            scores = scores.mask_fill(m.clone(), f32::NEG_INFINITY);
        }
        let attn = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, t, s.width]);
        let attn = hf_linear(
            w,
            &format!("{p}.self_attn.out_proj"),
            attn,
            s.width,
            s.width,
            true,
        )?;
        x = x + attn;
        let h = hf_layer_norm(w, &format!("{p}.layer_norm2"), x.clone(), s.width, s.eps)?;
        let h = hf_linear(w, &format!("{p}.mlp.fc1"), h, s.width, s.mlp, true)?;
        let h = hf_linear(
            w,
            &format!("{p}.mlp.fc2"),
            s.act.apply(h),
            s.mlp,
            s.width,
            true,
        )?;
        x = x + h;
    }
    Ok(x)
}
