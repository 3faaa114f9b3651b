//! One writer per run folder: an exclusive lock on a file, held for a run's life and released
//! by the operating system when the process ends however it ends, so a killed run never leaves
//! a folder locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file inside a locked folder.
pub const LOCK_FILE: &str = ".adamerge.lock";

/// A held lock; the file (holding the holder's process id) is removed when it is dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks folder `dir` (which must exist) through `dir/.adamerge.lock`.
    pub fn folder(dir: &Path) -> Result<Self> {
        Self::acquire(&dir.join(LOCK_FILE), dir)
    }

    /// Locks `folder`, which appears only once complete, through `.NAME.lock` beside it.
    pub fn beside(folder: &Path) -> Result<Self> {
        Self::acquire(&super::staged::sibling(folder, ".lock"), folder)
    }

    /// Locks `folder` through the lock file `path`.
    /// A second writer is refused with an error naming the folder and the holder's process id.
    fn acquire(path: &Path, folder: &Path) -> Result<Self> {
        // A holder removes its file on release; whoever opened the old file before that sees
        // it is no longer at `path` and tries again.
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(Error::Locked {
                        path: folder.to_path_buf(),
                        pid: text.trim().parse().ok(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
            }
            if !same_file(&file, path) {
                continue;
            }
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| write!(file, "{}", std::process::id()))
                .and_then(|()| file.flush())
                .map_err(|e| Error::io(path, e))?;
            return Ok(Self {
                file,
                path: path.to_path_buf(),
            });
        }
        Err(Error::Locked {
            path: folder.to_path_buf(),
            pid: None,
        })
    }

    /// Whether the lock file `path` is held by a live process (a missing file is free).
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = OpenOptions::new().read(true).open(path) else {
            return false;
        };
        matches!(file.try_lock(), Err(TryLockError::WouldBlock))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still held, so no other process can take a lock on a file that is
        // about to disappear; the lock itself goes with the handle.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_releases() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = RunLock::folder(tmp.path()).expect("first");
        let err = RunLock::folder(tmp.path()).expect_err("second").to_string();
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        assert!(RunLock::is_held(&tmp.path().join(LOCK_FILE)));
        drop(first);
        assert!(!tmp.path().join(LOCK_FILE).exists(), "removed on release");
        let _again = RunLock::folder(tmp.path()).expect("free again");
    }
}
