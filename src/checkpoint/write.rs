//! Writing: safetensors streamed tensor by tensor, and output directories that appear whole or
//! not at all (built under a temporary name, then renamed).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use safetensors::tensor::View;

use super::dtype::StoredDtype;
use crate::error::{Error, Result};

/// One tensor to write; its bytes are produced only when the writer reaches it, so a large
/// checkpoint is never held twice in memory.
pub struct PendingTensor<'a> {
    /// Stored dtype.
    pub dtype: StoredDtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Produces exactly `numel × dtype size` little-endian bytes.
    pub bytes: Box<dyn Fn() -> Cow<'a, [u8]> + 'a>,
}

impl View for &PendingTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        (self.bytes)()
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes `tensors` to `path` through a temporary file in the same directory and a rename.
pub fn write_safetensors(path: &Path, tensors: &[(String, PendingTensor<'_>)]) -> Result<()> {
    let tmp = sibling(path, ".tmp");
    let result =
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(&tmp, io),
            other => Error::Checkpoint {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        });
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, ".tmp");
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// An output directory under construction: files go into a hidden staging directory beside the
/// target, which [`OutputDir::commit`] renames into place; dropped uncommitted, it is removed.
pub struct OutputDir {
    target: PathBuf,
    staging: PathBuf,
    force: bool,
    committed: bool,
}

impl OutputDir {
    /// Starts writing `target`. Fails if `target` exists and is not empty, unless `force`.
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        if let Ok(mut entries) = std::fs::read_dir(target) {
            if entries.next().is_some() && !force {
                return Err(Error::Checkpoint {
                    path: target.to_path_buf(),
                    reason: "output directory exists and is not empty (pass --force to replace it)"
                        .into(),
                });
            }
        } else if target.exists() {
            return Err(Error::Checkpoint {
                path: target.to_path_buf(),
                reason: "output path exists and is not a directory".into(),
            });
        }
        let staging = sibling(target, &format!(".partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            force,
            committed: false,
        })
    }

    /// Where files are written until the commit.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the staged directory into place (replacing an old one only when forced).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            if !self.force {
                return Err(Error::Checkpoint {
                    path: self.target.clone(),
                    reason: "output directory appeared while writing; not replacing it".into(),
                });
            }
            let old = sibling(&self.target, &format!(".old-{}", std::process::id()));
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            std::fs::rename(&self.staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            std::fs::rename(&self.staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// `dir/.name<suffix>` beside `path`, so a rename stays on one file system.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent.join(format!(".{name}{suffix}"))
}
