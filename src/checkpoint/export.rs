//! Saving a merged model in the pretrained checkpoint's layout, loadable by `transformers`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::write::PendingTensor;
use super::{Checkpoint, INDEX_FILE, OutputDir, WEIGHTS_FILE, encode_f32, write_safetensors};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Writes `merged` over a copy of the pretrained checkpoint into `out`.
///
/// Merged tensors are stored in the pretrained tensor's dtype; every other tensor (text tower,
/// integer buffers, ...) is copied byte for byte. The weights go into one `model.safetensors`;
/// `config.json` and the other small files of the pretrained directory (preprocessor and
/// tokenizer files) are copied. The directory appears only once complete.
pub fn save_merged(
    pretrained: &Path,
    merged: &Weights,
    out: &Path,
    force: bool,
) -> Result<PathBuf> {
    let ckpt = Checkpoint::open(pretrained)?;
    for (name, t) in merged.iter() {
        match ckpt.meta(name) {
            Some(meta) if meta.shape == t.shape => {}
            Some(meta) => {
                return Err(Error::ShapeMismatch {
                    path: PathBuf::from("<merged weights>"),
                    pretrained: pretrained.to_path_buf(),
                    tensor: name.to_string(),
                    expected: meta.shape.clone(),
                    found: t.shape.clone(),
                });
            }
            None => {
                return Err(Error::Checkpoint {
                    path: pretrained.to_path_buf(),
                    reason: format!("merged tensor `{name}` is not in the pretrained checkpoint"),
                });
            }
        }
    }
    let dir = OutputDir::create(out, force)?;
    let mut tensors = Vec::new();
    for name in ckpt.names() {
        let Some(meta) = ckpt.meta(name) else {
            continue;
        };
        let pending = match merged.get(name) {
            Some(t) => {
                let dtype = meta.dtype;
                PendingTensor {
                    dtype,
                    shape: meta.shape.clone(),
                    bytes: Box::new(move || {
                        Cow::Owned(encode_f32(dtype, &t.to_vec()).unwrap_or_default())
                    }),
                }
            }
            None => {
                let raw = ckpt.raw(name).unwrap_or_default();
                PendingTensor {
                    dtype: meta.dtype,
                    shape: meta.shape.clone(),
                    bytes: Box::new(move || Cow::Borrowed(raw)),
                }
            }
        };
        tensors.push((name.to_string(), pending));
    }
    write_safetensors(&dir.path().join(WEIGHTS_FILE), &tensors)?;
    drop(tensors);
    if pretrained.is_dir() {
        copy_side_files(pretrained, dir.path())?;
    }
    dir.commit()
}

/// Copies the small non-weight files (config, preprocessor, tokenizer) of a checkpoint directory.
fn copy_side_files(from: &Path, to: &Path) -> Result<()> {
    let entries = std::fs::read_dir(from).map_err(|e| Error::io(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_weights = name.ends_with(".safetensors")
            || name == INDEX_FILE
            || [".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx"]
                .iter()
                .any(|ext| name.ends_with(ext));
        if path.is_file() && !is_weights && !name.starts_with('.') {
            std::fs::copy(&path, to.join(&name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}
