//! Files written whole or not at all: through a temporary file in the same folder, renamed
//! into place, so readers see the old file or the new one, and a killed writer leaves nothing
//! half-written under the name (and its temporary file is removed by the next writer).

use std::path::Path;

use crate::error::{Error, Result};

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
/// ordinary file's permissions rather than a temporary file's private ones. Its name carries
/// the process id, so the temporary files of writers killed mid-write are recognised and
/// removed by the next writer in the folder.
pub(crate) fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    remove_dead_temps(dir);
    let mut builder = tempfile::Builder::new();
    let prefix = format!("{TEMP_PREFIX}{}-", std::process::id());
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))
}

/// The start of every temporary file's name: `.adamerge-<pid>-<random>.tmp`.
const TEMP_PREFIX: &str = ".adamerge-";

/// Removes `dir`'s temporary files whose writer no longer runs (best effort: a file that
/// cannot be removed stays for the next writer).
fn remove_dead_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .filter(|n| n.ends_with(".tmp"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !super::staged::process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
