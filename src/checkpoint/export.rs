//! Saving a merged model in the pretrained checkpoint's layout, loadable by `transformers`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use super::write::PendingTensor;
use super::{Checkpoint, INDEX_FILE, WEIGHTS_FILE, encode_f32, write_safetensors};
use crate::error::{Error, Result};
use crate::output::OutputDir;
use crate::weights::Weights;

/// Computes one replacement tensor's values by name.
type ValuesFn<'a> = Box<dyn Fn(&str) -> Result<Vec<f32>> + 'a>;

/// The tensors that replace pretrained ones in a saved model, each computed only when the writer
/// reaches it, so that a merge can stream into the file without holding the merged model.
pub struct Replacement<'a> {
    shapes: IndexMap<String, Vec<usize>>,
    values: ValuesFn<'a>,
}

impl<'a> Replacement<'a> {
    /// Tensors `shapes` (name → shape) whose values `values` computes on demand.
    pub fn new(
        shapes: IndexMap<String, Vec<usize>>,
        values: impl Fn(&str) -> Result<Vec<f32>> + 'a,
    ) -> Self {
        Self {
            shapes,
            values: Box::new(values),
        }
    }

    /// Weights already in memory.
    pub fn from_weights(w: &'a Weights) -> Self {
        let shapes = w
            .iter()
            .map(|(n, t)| (n.to_string(), t.shape.clone()))
            .collect();
        Self::new(shapes, move |name| w.require(name)?.to_vec())
    }
}

/// Writes `merged` over a copy of the pretrained checkpoint into `out`.
///
/// Merged tensors are stored in the pretrained tensor's dtype; every other tensor (text tower,
/// integer buffers, ...) is copied byte for byte. The weights go into one `model.safetensors`;
/// `config.json` and the other small files of the pretrained directory (preprocessor and
/// tokenizer files) are copied. The directory appears only once complete.
pub fn save_merged(
    pretrained: &Path,
    merged: &Replacement<'_>,
    out: &Path,
    force: bool,
) -> Result<PathBuf> {
    let ckpt = Checkpoint::open(pretrained)?;
    for (name, shape) in &merged.shapes {
        match ckpt.meta(name) {
            Some(meta) if &meta.shape == shape => {}
            Some(meta) => {
                return Err(Error::ShapeMismatch {
                    path: PathBuf::from("<merged weights>"),
                    pretrained: pretrained.to_path_buf(),
                    tensor: name.to_string(),
                    expected: meta.shape.clone(),
                    found: shape.clone(),
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
    // The writer's callbacks cannot fail, so the first error is kept here and returned after.
    let failure: RefCell<Option<Error>> = RefCell::new(None);
    let mut tensors = Vec::new();
    for name in ckpt.names() {
        let Some(meta) = ckpt.meta(name) else {
            continue;
        };
        let pending = if merged.shapes.contains_key(name) {
            let (dtype, numel, failure) = (meta.dtype, meta.numel(), &failure);
            PendingTensor {
                dtype,
                shape: meta.shape.clone(),
                bytes: Box::new(move || {
                    let values = (merged.values)(name).unwrap_or_else(|e| {
                        failure.borrow_mut().get_or_insert(e);
                        vec![0.0; numel]
                    });
                    // The placeholder bytes of a failed tensor are never committed: the
                    // staged folder is dropped when the failure is returned below.
                    Cow::Owned(encode_f32(dtype, &values).unwrap_or_else(|| {
                        failure.borrow_mut().get_or_insert(Error::UnsupportedDtype {
                            path: pretrained.to_path_buf(),
                            tensor: name.to_string(),
                            dtype: dtype.name(),
                        });
                        vec![0; numel * dtype.size()]
                    }))
                }),
            }
        } else {
            let raw = ckpt.raw(name).expect("a name the checkpoint lists");
            PendingTensor {
                dtype: meta.dtype,
                shape: meta.shape.clone(),
                bytes: Box::new(move || Cow::Borrowed(raw)),
            }
        };
        tensors.push((name.to_string(), pending));
    }
    write_safetensors(&dir.path().join(WEIGHTS_FILE), &tensors)?;
    drop(tensors);
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
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
