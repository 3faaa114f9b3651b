//! Where derived artefacts (zero-shot heads, later the built-in suite) are cached: outside the
//! repository, under `$ADAMERGE_CACHE` or the platform cache directory.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::checkpoint::{INDEX_FILE, WEIGHTS_FILE};
use crate::error::{Error, Result};

/// The cache root: `$ADAMERGE_CACHE`, else `<platform cache dir>/adamerge`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ADAMERGE_CACHE")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("adamerge")))
        .unwrap_or_else(|| std::env::temp_dir().join("adamerge"))
}

/// A key for the files of a model directory: their names, sizes and modification times, so a
/// changed or replaced checkpoint misses the cache. (Rust's hasher is stable for one toolchain;
/// another one merely misses.)
pub fn model_key(dir: &Path) -> Result<u64> {
    let mut h = DefaultHasher::new();
    let canonical = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    canonical.hash(&mut h);
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            n.ends_with(".safetensors")
                || n == INDEX_FILE
                || n == "tokenizer.json"
                || n == "config.json"
        })
        .collect();
    names.sort();
    for p in names {
        let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        p.file_name().hash(&mut h);
        meta.len().hash(&mut h);
        meta.modified().ok().hash(&mut h);
    }
    if !dir.join(WEIGHTS_FILE).exists() && !dir.join(INDEX_FILE).exists() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("no {WEIGHTS_FILE} or {INDEX_FILE} here"),
        });
    }
    Ok(h.finish())
}

/// A key for any hashable value mixed with another key.
pub fn mix(key: u64, value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}
