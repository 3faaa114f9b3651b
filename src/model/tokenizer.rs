//! The CLIP tokenizer, from a directory's `tokenizer.json`, padded and truncated to the model's
//! context length as `transformers` does with `padding="max_length", truncation=True`.

use std::path::Path;

use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// CLIP's end-of-text token, which its tokenizers also pad with.
const END_OF_TEXT: &str = "<|endoftext|>";

/// A CLIP tokenizer with fixed-length output.
pub struct ClipTokenizer {
    inner: Tokenizer,
}

/// Token ids and attention masks of a batch, each row `context` long.
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<Vec<i64>>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Vec<Vec<i64>>,
}

impl ClipTokenizer {
    /// Loads `dir/tokenizer.json`; every sequence is padded with the pad token of
    /// `tokenizer_config.json` (`<|endoftext|>` when absent) and truncated to `context` tokens,
    /// special tokens included.
    pub fn from_dir(dir: &Path, context: usize) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                reason:
                    "no tokenizer.json here (the CLIP tokenizer is needed to build zero-shot heads)"
                        .into(),
            });
        }
        let mut inner = Tokenizer::from_file(&file).map_err(|e| Error::Config {
            path: file.clone(),
            key: "<root>".into(),
            reason: format!("not a tokenizers file: {e}"),
        })?;
        let pad_token = pad_token(dir).unwrap_or_else(|| END_OF_TEXT.to_string());
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| Error::Config {
            path: file.clone(),
            key: "model.vocab".into(),
            reason: format!("has no pad token `{pad_token}`"),
        })?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: context,
                ..Default::default()
            }))
            .map_err(|e| Error::invalid("tokenizer truncation", e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(context),
            direction: PaddingDirection::Right,
            pad_id,
            pad_token,
            ..Default::default()
        }));
        Ok(Self { inner })
    }

    /// Tokenizes a batch.
    pub fn encode(&self, texts: &[String]) -> Result<Encoded> {
        let batch = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::invalid("text", e.to_string()))?;
        let to_i64 = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        Ok(Encoded {
            ids: batch.iter().map(|e| to_i64(e.get_ids())).collect(),
            attention_mask: batch
                .iter()
                .map(|e| to_i64(e.get_attention_mask()))
                .collect(),
        })
    }
}

/// The pad token named by `tokenizer_config.json` or `special_tokens_map.json`.
fn pad_token(dir: &Path) -> Option<String> {
    ["tokenizer_config.json", "special_tokens_map.json"]
        .iter()
        .find_map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            match v.get("pad_token")? {
                serde_json::Value::String(s) => Some(s.clone()),
                other => other.get("content")?.as_str().map(str::to_string),
            }
        })
}
