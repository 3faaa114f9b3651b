//! Reading checkpoints: a Hugging Face directory (single or sharded safetensors plus
//! `config.json`) or a bare `.safetensors` file, memory-mapped, converted to f32 on demand.

mod dtype;
mod export;
mod file;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Deserialize;

pub use dtype::{StoredDtype, decode_f32, encode_f32};
pub use export::{Replacement, save_merged};
pub use file::{SafetensorsFile, TensorMeta};
pub use write::{PendingTensor, serialize_canonical, write_safetensors};

use crate::error::{Error, Result};
use crate::weights::{FlatTensor, Weights};

/// Name of the single-file weights in a Hugging Face directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the shard index in a sharded Hugging Face directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the model configuration in a Hugging Face directory.
pub const CONFIG_FILE: &str = "config.json";

/// An opened checkpoint: its tensors (names in natural order), their files, and its config.
pub struct Checkpoint {
    path: PathBuf,
    files: Vec<SafetensorsFile>,
    /// name -> (file index, metadata), in natural name order.
    tensors: Vec<(String, usize, TensorMeta)>,
    lookup: HashMap<String, usize>,
    config: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens a Hugging Face directory or a single `.safetensors` file.
    ///
    /// Only headers are parsed here; tensor data is read by [`Checkpoint::read_f32`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let (files, config) = if meta.is_file() {
            (vec![SafetensorsFile::open(path)?], None)
        } else {
            let index = path.join(INDEX_FILE);
            let single = path.join(WEIGHTS_FILE);
            let files = if index.is_file() {
                open_shards(&index)?
            } else if single.is_file() {
                vec![SafetensorsFile::open(&single)?]
            } else {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!(
                        "no {WEIGHTS_FILE} or {INDEX_FILE} here (PyTorch .bin checkpoints must be converted to safetensors first)"
                    ),
                });
            };
            let config_path = path.join(CONFIG_FILE);
            let config = if config_path.is_file() {
                let text = std::fs::read_to_string(&config_path)
                    .map_err(|e| Error::io(&config_path, e))?;
                Some(serde_json::from_str(&text).map_err(|e| Error::Config {
                    path: config_path.clone(),
                    key: "<root>".into(),
                    reason: format!("not valid JSON: {e}"),
                })?)
            } else {
                None
            };
            (files, config)
        };

        let unprefixed = is_unprefixed_vision(&files);
        let mut tensors = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (stored, meta) in f.tensors() {
                let name = &canonical_name(stored, unprefixed);
                if let Some(&other) = seen.get(name) {
                    return Err(Error::Checkpoint {
                        path: path.to_path_buf(),
                        reason: format!(
                            "tensor `{name}` is stored twice, in {} and {}",
                            files[other].path().display(),
                            f.path().display()
                        ),
                    });
                }
                seen.insert(name.clone(), fi);
                tensors.push((name.clone(), fi, meta.clone()));
            }
        }
        tensors.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        let lookup = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.0.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            files,
            tensors,
            lookup,
            config,
        })
    }

    /// The directory or file this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed `config.json`, if the directory has one.
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.config.as_ref()
    }

    /// Tensor names in natural order (`layers.2` before `layers.10`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.0.as_str())
    }

    /// Metadata of one tensor.
    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.lookup.get(name).map(|&i| &self.tensors[i].2)
    }

    /// The file that holds a tensor.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.lookup
            .get(name)
            .map(|&i| self.files[self.tensors[i].1].path())
    }

    /// Total number of elements over all tensors.
    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(|t| t.2.numel()).sum()
    }

    /// The raw stored bytes of a tensor.
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        let &i = self.lookup.get(name)?;
        let (_, fi, meta) = &self.tensors[i];
        Some(self.files[*fi].bytes(meta))
    }

    /// Reads a tensor as f32, rejecting unsupported dtypes and non-finite values.
    ///
    /// The mapped pages are released afterwards: the copy is what the caller keeps.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let &i = self.lookup.get(name).ok_or_else(|| Error::Checkpoint {
            path: self.path.clone(),
            reason: format!("no tensor `{name}`"),
        })?;
        let (_, fi, meta) = &self.tensors[i];
        let file = &self.files[*fi];
        let values =
            decode_f32(meta.dtype, file.bytes(meta)).ok_or_else(|| Error::UnsupportedDtype {
                path: file.path().to_path_buf(),
                tensor: name.to_string(),
                dtype: meta.dtype.name(),
            })?;
        file.release(meta);
        let mut bad = values.iter().enumerate().filter(|(_, v)| !v.is_finite());
        if let Some((first, _)) = bad.next() {
            return Err(Error::NonFinite {
                path: file.path().to_path_buf(),
                tensor: name.to_string(),
                count: 1 + bad.count(),
                first,
            });
        }
        Ok(values)
    }
}

/// Vision tower names that `transformers` 5 writes without the `vision_model.` prefix when a
/// `CLIPVisionModel` is built from a config rather than loaded from a prefixed checkpoint.
const VISION_ROOTS: [&str; 4] = [
    "embeddings.",
    "encoder.",
    "pre_layrnorm.",
    "post_layernorm.",
];

fn is_unprefixed_vision(files: &[SafetensorsFile]) -> bool {
    let names = || {
        files
            .iter()
            .flat_map(|f| f.tensors().iter().map(|(n, _)| n.as_str()))
    };
    !names().any(|n| n.starts_with("vision_model.") || n.starts_with("text_model."))
        && names().any(|n| n == "embeddings.patch_embedding.weight")
}

/// Our names are the Hugging Face `CLIPModel` names: unprefixed vision names gain `vision_model.`.
fn canonical_name(stored: &str, unprefixed: bool) -> String {
    if unprefixed && VISION_ROOTS.iter().any(|r| stored.starts_with(r)) {
        format!("vision_model.{stored}")
    } else {
        stored.to_string()
    }
}

/// Reads the mergeable floating-point tensors whose names `keep` accepts into [`Weights`].
pub fn load_weights(
    ckpt: &Checkpoint,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<Weights> {
    let mut w = Weights::new();
    for name in ckpt.names() {
        let Some(meta) = ckpt.meta(name) else {
            continue;
        };
        if meta.dtype.is_mergeable() && keep(name) {
            let values = ckpt.read_f32(name)?;
            w.insert(
                name,
                FlatTensor::from_vec(values, meta.shape.clone(), device),
            );
        }
    }
    Ok(w)
}

fn open_shards(index: &Path) -> Result<Vec<SafetensorsFile>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: index.to_path_buf(),
        key: "weight_map".into(),
        reason: format!("not a shard index: {e}"),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shard_names: Vec<&String> = parsed.weight_map.values().collect();
    shard_names.sort();
    shard_names.dedup();
    let mut files = Vec::new();
    for shard in shard_names {
        if shard.contains('/') || shard.contains('\\') || shard.starts_with("..") {
            return Err(Error::Config {
                path: index.to_path_buf(),
                key: "weight_map".into(),
                reason: format!("shard `{shard}` is not a plain file name"),
            });
        }
        files.push(SafetensorsFile::open(&dir.join(shard))?);
    }
    // Every tensor the index names must be in the shard it names.
    for (name, shard) in &parsed.weight_map {
        let found = files.iter().any(|f| {
            f.path().file_name().and_then(|n| n.to_str()) == Some(shard.as_str())
                && f.tensors().iter().any(|(n, _)| n == name)
        });
        if !found {
            return Err(Error::Checkpoint {
                path: index.to_path_buf(),
                reason: format!(
                    "the index puts tensor `{name}` in {shard}, which does not hold it"
                ),
            });
        }
    }
    Ok(files)
}

/// Compares names so that embedded numbers sort numerically (`layers.2` < `layers.10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = match (x.0, y.0) {
            (true, true) => {
                let (tx, ty) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                tx.len().cmp(&ty.len()).then(tx.cmp(ty))
            }
            _ => x.1.cmp(y.1),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then(a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn natural_order_sorts_layer_numbers_numerically() {
        let mut names = vec!["l.10.w", "l.2.w", "l.1.w", "a", "l.2.b"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, vec!["a", "l.1.w", "l.2.b", "l.2.w", "l.10.w"]);
    }
}
