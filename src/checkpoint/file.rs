//! One memory-mapped safetensors file: header parsed once, tensor bytes read on demand.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::SafeTensors;

use super::dtype::StoredDtype;
use crate::error::{Error, Result};

/// Where one tensor lives inside a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Element type as stored.
    pub dtype: StoredDtype,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Byte range inside the file's data section.
    pub(crate) offsets: (usize, usize),
}

impl TensorMeta {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A safetensors file mapped read-only into memory.
///
/// The mapping is dropped with the value, so a caller that keeps only what it converted lets the
/// kernel reclaim the pages it touched.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    tensors: Vec<(String, TensorMeta)>,
}

impl SafetensorsFile {
    /// Maps `path` and validates its header (offsets contiguous and inside the file).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint changed on disk while we read it is a user
        // error that can at worst yield wrong numbers, which the finite-value checks partly catch.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                reason: describe(&e),
            })?;
        let mut tensors = Vec::new();
        for (name, info) in metadata.tensors() {
            tensors.push((
                name,
                TensorMeta {
                    dtype: StoredDtype::from_safetensors(info.dtype),
                    shape: info.shape.clone(),
                    offsets: info.data_offsets,
                },
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names and metadata, in no particular order.
    pub fn tensors(&self) -> &[(String, TensorMeta)] {
        &self.tensors
    }

    /// The raw little-endian bytes of a tensor described by `meta`.
    pub fn bytes(&self, meta: &TensorMeta) -> &[u8] {
        &self.mmap[self.data_start + meta.offsets.0..self.data_start + meta.offsets.1]
    }

    /// Tells the kernel the pages of a tensor that was copied out are not needed any more, so a
    /// checkpoint read tensor by tensor never stays resident as a whole next to its copy.
    pub fn release(&self, meta: &TensorMeta) {
        // SAFETY: the map is a read-only shared file mapping: dropped pages are re-read from the
        // file on the next access, so any slice still borrowed sees the same bytes.
        let _ = unsafe {
            self.mmap.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                self.data_start + meta.offsets.0,
                meta.offsets.1 - meta.offsets.0,
            )
        };
    }
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "the data section is shorter or longer than the header says (truncated or corrupted file)"
                .to_string()
        }
        E::HeaderTooSmall => "the file is too small to hold a safetensors header".to_string(),
        E::InvalidHeaderLength => {
            "the header length points past the end of the file (truncated or not safetensors)"
                .to_string()
        }
        other => other.to_string(),
    }
}
