//! Writing files whole or not at all: safetensors streamed tensor by tensor and small files,
//! each through a temporary file renamed into place.

use std::borrow::Cow;
use std::path::Path;

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
    let tmp = crate::output::temp_beside(path)?;
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

/// Serialises tensors and string metadata as safetensors bytes with a canonical header (keys
/// sorted), so the same values always give the same bytes; `safetensors` itself writes its
/// metadata map in a random order.
pub fn serialize_canonical(
    views: Vec<(&str, safetensors::tensor::TensorView<'_>)>,
    metadata: std::collections::BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let bytes = safetensors::serialize(views, Some(metadata.into_iter().collect()))
        .map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(
        bytes[..8]
            .try_into()
            .map_err(|_| "a header of under 8 bytes")?,
    );
    let end = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&e| e <= bytes.len())
        .ok_or("a header longer than the file")?;
    // serde_json's maps are sorted by key, and the data offsets in the header are explicit, so
    // re-serialising the header reorders it without moving any data.
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| e.to_string())?;
    let mut text = serde_json::to_string(&header).map_err(|e| e.to_string())?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}
