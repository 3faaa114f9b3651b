//! Classification heads: zero-shot heads built from class names and templates with the text
//! tower (docs/design.md §3), or read from a safetensors file; logits over normalised image features.

use std::path::Path;

use burn::tensor::{Device, Tensor};

use super::text::text_forward;
use super::tokenizer::ClipTokenizer;
use crate::checkpoint::Checkpoint;
use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::weights::{FlatTensor, Weights};

/// L2-normalises the rows of a matrix.
pub fn normalize_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt();
    x / norm
}

/// A zero-shot head [C, P]: per class, every template filled with the class name, encoded,
/// L2-normalised, averaged, L2-normalised again; scaled by `logit_scale.exp()`.
pub fn zero_shot_head(
    cfg: &TextConfig,
    w: &Weights,
    tokenizer: &ClipTokenizer,
    classnames: &[String],
    templates: &[String],
    device: &Device,
) -> Result<Tensor<2>> {
    if classnames.is_empty() || templates.is_empty() {
        return Err(Error::invalid(
            "head",
            "needs at least one class name and one template",
        ));
    }
    if let Some(t) = templates.iter().find(|t| t.matches("{}").count() != 1) {
        return Err(Error::invalid(
            "templates",
            format!("`{t}` must hold exactly one `{{}}`"),
        ));
    }
    let scale = w
        .require("logit_scale")
        .map_err(|_| Error::Tensor {
            tensor: "logit_scale".into(),
            reason: "missing: zero-shot heads need a CLIPModel checkpoint".into(),
        })?
        .data
        .clone()
        .exp();
    let mut rows = Vec::with_capacity(classnames.len());
    for class in classnames {
        let texts: Vec<String> = templates
            .iter()
            .map(|t| t.replacen("{}", class, 1))
            .collect();
        let enc = tokenizer.encode(&texts)?;
        let out = text_forward(cfg, w, &enc.ids, &enc.attention_mask, device)?;
        let embeds = out.text_embeds.ok_or_else(|| Error::Tensor {
            tensor: "text_projection.weight".into(),
            reason: "missing: zero-shot heads need the text projection".into(),
        })?;
        let mean = normalize_rows(embeds).mean_dim(0);
        rows.push(normalize_rows(mean));
    }
    Ok(Tensor::cat(rows, 0) * scale.unsqueeze::<2>())
}

/// Reads a head from a safetensors file holding `weight` [C, P] (already scaled).
pub fn read_head(path: &Path, device: &Device) -> Result<Tensor<2>> {
    let ckpt = Checkpoint::open(path)?;
    let meta = ckpt.meta("weight").ok_or_else(|| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: "a head file must hold a tensor named `weight` [classes, projection]".into(),
    })?;
    let [c, p] = meta.shape[..] else {
        return Err(Error::Tensor {
            tensor: "weight".into(),
            reason: format!(
                "{}: has shape {:?}, expected [classes, projection]",
                path.display(),
                meta.shape
            ),
        });
    };
    let values = ckpt.read_f32("weight")?;
    Ok(FlatTensor::from_vec(values, vec![c, p], device)
        .data
        .reshape([c, p]))
}

/// logits = normalize(image_embeds) · headᵀ.
pub fn logits(image_embeds: Tensor<2>, head: Tensor<2>) -> Tensor<2> {
    normalize_rows(image_embeds).matmul(head.transpose())
}
