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
    let tmp = temp_beside(path)?;
    let result = safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        None,
        tmp.path(),
    );
    if let Err(e) = result {
        return Err(match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(tmp.path(), io),
            other => Error::Checkpoint {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        });
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old file or the new one, and concurrent or killed writers leave no
/// half-written file under `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// A uniquely named temporary file beside `path` (removed when dropped unpersisted), with an
/// ordinary file's permissions rather than a temporary file's private ones.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".adamerge-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))
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

    /// Removes staging directories that interrupted writers of `target` left behind (their
    /// process no longer runs), so a killed build leaves no debris for long.
    pub fn remove_stale(target: &Path) -> Result<()> {
        let marker = sibling(target, ".partial-");
        let (Some(parent), Some(prefix)) = (marker.parent(), marker.file_name()) else {
            return Ok(());
        };
        let prefix = prefix.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(parent) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !process_alive(pid) {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
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

/// Whether a process with this id runs (on other platforms: assumed, so nothing is removed).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
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

/// Reads a JSON file, naming it on failure.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        key: "<root>".into(),
        reason: e.to_string(),
    })
}

/// Writes pretty JSON atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    write_atomic(path, text.as_bytes())
}
