//! The CLIP text tower of `transformers` (`CLIPTextModel` inside `CLIPModel`), batched.

use burn::tensor::module::embedding;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::layers::{EncoderShape, LayerNorm, Linear, NoObserver, encoder_layers, param};
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// What the text tower returns.
pub struct TextOutput {
    /// After `final_layer_norm` [B, T, hidden].
    pub last_hidden_state: Tensor<3>,
    /// The end-of-text row of each sequence [B, hidden].
    pub pooled: Tensor<2>,
    /// `text_projection` of `pooled` [B, projection] when the weights have the projection.
    pub text_embeds: Option<Tensor<2>>,
}

/// Runs the text tower on token ids (`ids[b]` all of one length T ≤ the context length) with
/// their attention masks (1 = token, 0 = padding).
pub fn text_forward(
    cfg: &TextConfig,
    w: &Weights,
    ids: &[Vec<i64>],
    attention_mask: &[Vec<i64>],
    device: &burn::tensor::Device,
) -> Result<TextOutput> {
    check_inputs(cfg, ids, attention_mask)?;
    let (b, t, width) = (ids.len(), ids[0].len(), cfg.hidden_size);
    let shape = EncoderShape::new(
        "text_config.",
        width,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
        cfg.layer_norm_eps,
        cfg.hidden_act,
    )?;

    let flat_ids: Vec<i64> = ids.iter().flatten().copied().collect();
    let id_tensor = Tensor::<2, Int>::from_data(TensorData::new(flat_ids, [b, t]), device);
    let tokens = param(
        w,
        "text_model.embeddings.token_embedding.weight",
        [cfg.vocab_size, width],
    )?;
    let positions = param(
        w,
        "text_model.embeddings.position_embedding.weight",
        [cfg.max_position_embeddings, width],
    )?;
    let x = embedding(tokens, id_tensor) + positions.narrow(0, 0, t).unsqueeze::<3>();

    let mask = causal_mask(attention_mask, cfg.num_attention_heads, device);
    let mut x = x;
    for (l, layer) in encoder_layers(w, "text_model.encoder", &shape)?
        .iter()
        .enumerate()
    {
        x = layer.forward(l, x, Some(&mask), &mut NoObserver);
    }
    let final_norm = LayerNorm::new(w, "text_model.final_layer_norm", width, cfg.layer_norm_eps)?;
    let last_hidden_state = final_norm.forward(x);

    let rows: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(i, r)| (i * t + eos_position(r, cfg.eos_token_id)) as i64)
        .collect();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), device);
    let pooled = last_hidden_state
        .clone()
        .reshape([b * t, width])
        .select(0, rows);
    let text_embeds = Linear::optional(w, "text_projection", width, cfg.projection_dim)?
        .map(|proj| proj.forward(pooled.clone()));
    Ok(TextOutput {
        last_hidden_state,
        pooled,
        text_embeds,
    })
}

/// Fails, naming the input, unless `ids` is a non-empty batch of sequences of one length within
/// the context, of known tokens, with a mask of the same shape.
fn check_inputs(cfg: &TextConfig, ids: &[Vec<i64>], attention_mask: &[Vec<i64>]) -> Result<()> {
    let b = ids.len();
    let t = ids.first().map_or(0, Vec::len);
    if b == 0 || t == 0 || t > cfg.max_position_embeddings || ids.iter().any(|r| r.len() != t) {
        return Err(Error::Tensor {
            tensor: "input_ids".into(),
            reason: format!(
                "need a non-empty batch of sequences of one length ≤ max_position_embeddings {}",
                cfg.max_position_embeddings
            ),
        });
    }
    if attention_mask.len() != b || attention_mask.iter().any(|r| r.len() != t) {
        return Err(Error::Tensor {
            tensor: "attention_mask".into(),
            reason: "must have the shape of input_ids".into(),
        });
    }
    if let Some(bad) = ids
        .iter()
        .flatten()
        .find(|&&i| i < 0 || i as usize >= cfg.vocab_size)
    {
        return Err(Error::Tensor {
            tensor: "input_ids".into(),
            reason: format!(
                "token id {bad} is outside the vocabulary of {}",
                cfg.vocab_size
            ),
        });
    }
    Ok(())
}

/// The causal mask [B, heads, T, T] (true = masked), plus padded keys masked out as
/// `transformers` does with an attention mask.
fn causal_mask(
    attention_mask: &[Vec<i64>],
    heads: usize,
    device: &burn::tensor::Device,
) -> Tensor<4, Bool> {
    let (b, t) = (attention_mask.len(), attention_mask[0].len());
    let mut masked = Vec::with_capacity(b * t * t);
    for row in attention_mask {
        for i in 0..t {
            for (j, &m) in row.iter().enumerate() {
                masked.push(j > i || m == 0);
            }
        }
    }
    Tensor::<4, Bool>::from_data(TensorData::new(masked, [b, 1, t, t]), device)
        .expand([b, heads, t, t])
}

/// Where `transformers` pools: the first end-of-text token, or the largest id for the legacy
/// configs whose `eos_token_id` is 2.
fn eos_position(ids: &[i64], eos: i64) -> usize {
    if eos == 2 {
        let max = ids.iter().copied().max().unwrap_or(0);
        return ids.iter().position(|&i| i == max).unwrap_or(0);
    }
    ids.iter().position(|&i| i == eos).unwrap_or(ids.len() - 1)
}
