//! Output folders that appear whole or not at all: files go into a hidden staging folder beside
//! the target, renamed into place when complete. A folder is replaced only with `force` and only
//! when its manifest accounts for every file in it; staging folders of dead writers are cleared.

use std::path::{Path, PathBuf};

use super::lock::{LOCK_FILE, RunLock};
use super::manifest::Manifest;
use crate::error::{Error, Result};

/// An output folder under construction; dropped uncommitted, its staging folder is removed.
pub struct OutputDir {
    target: PathBuf,
    staging: PathBuf,
    force: bool,
    lock: Option<RunLock>,
    committed: bool,
}

impl OutputDir {
    /// Starts writing `target`. Fails if `target` is a file, or a folder that is not empty,
    /// unless `force` and its manifest lists every file in it.
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        Self::check_target(target, force)?;
        Self::remove_stale(target)?;
        let staging = sibling(target, &format!(".partial-{}", std::process::id()));
        if staging.exists() {
            // This process's own, left by an earlier writer of the same target.
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let lock = RunLock::folder(&staging)?;
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            force,
            lock: Some(lock),
            committed: false,
        })
    }

    /// Fails unless `target` may be written: absent, an empty folder, or (with `force`) a
    /// folder whose manifest lists every file in it. Cheap; call it before long work.
    pub fn check_target(target: &Path, force: bool) -> Result<()> {
        let Ok(mut entries) = std::fs::read_dir(target) else {
            if target.exists() || target.is_symlink() {
                return Err(Error::Output {
                    path: target.to_path_buf(),
                    reason: "exists and is not a folder".into(),
                });
            }
            return Ok(());
        };
        if entries.next().is_none() {
            return Ok(());
        }
        if !force {
            return Err(Error::Output {
                path: target.to_path_buf(),
                reason: "the output folder exists and is not empty (pass --force to replace a \
                         folder adamerge wrote)"
                    .into(),
            });
        }
        Manifest::check_replaceable(target)
    }

    /// Clears what interrupted writers of `target` left beside it: staging folders whose
    /// writer is gone (its lock is free, or without a lock its process no longer runs), and a
    /// replaced folder kept during a commit (put back when the commit did not finish).
    fn remove_stale(target: &Path) -> Result<()> {
        let marker = sibling(target, "");
        let (Some(parent), Some(prefix)) = (marker.parent(), marker.file_name()) else {
            return Ok(());
        };
        let prefix = prefix.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(parent) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let (kind, pid) = match rest.split_once('-') {
                Some((kind @ (".partial" | ".old"), pid)) => match pid.parse::<u32>() {
                    Ok(pid) => (kind, pid),
                    Err(_) => continue,
                },
                _ => continue,
            };
            let path = entry.path();
            let lock = path.join(LOCK_FILE);
            let alive = if lock.exists() {
                RunLock::is_held(&lock)
            } else {
                pid == std::process::id() || process_alive(pid)
            };
            if alive || !path.is_dir() {
                continue;
            }
            if kind == ".partial" {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            } else if !target.exists() {
                // The commit stopped between its two renames: the old output comes back.
                std::fs::rename(&path, target).map_err(|e| Error::io(&path, e))?;
            } else if Manifest::check_replaceable(&path).is_ok() {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Where files are written until the commit.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Records the staged files in a manifest and moves the folder into place. A folder already
    /// there is replaced only when forced and when its manifest still lists every file in it.
    pub fn commit(mut self) -> Result<PathBuf> {
        drop(self.lock.take());
        Manifest::of_dir(&self.staging)?.write(&self.staging)?;
        crate::fault::point("output-staged");
        let rename =
            |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| Error::io(to, e));
        let empty = std::fs::read_dir(&self.target).is_ok_and(|mut e| e.next().is_none());
        if self.target.exists() && !empty {
            if !self.force {
                return Err(Error::Output {
                    path: self.target.clone(),
                    reason: "the output folder appeared while writing; not replacing it".into(),
                });
            }
            let old = sibling(&self.target, &format!(".old-{}", std::process::id()));
            rename(&self.target, &old)?;
            // Checked again once moved aside, so a file added since the start stops it.
            if let Err(e) = Manifest::check_replaceable(&old) {
                rename(&old, &self.target)?;
                return Err(e);
            }
            if let Err(e) = rename(&self.staging, &self.target) {
                rename(&old, &self.target)?;
                return Err(e);
            }
            self.committed = true;
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            // Over an empty folder this is one atomic rename, which fails if it filled meanwhile.
            rename(&self.staging, &self.target)?;
            self.committed = true;
        }
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
pub(crate) fn process_alive(pid: u32) -> bool {
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
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_output_replaces_only_what_adamerge_wrote() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("out");
        let dir = OutputDir::create(&target, false).expect("create");
        std::fs::write(dir.path().join("model.safetensors"), b"v1").expect("write");
        dir.commit().expect("commit");
        assert!(OutputDir::create(&target, false).is_err(), "not empty");

        let dir = OutputDir::create(&target, true).expect("forced");
        std::fs::write(dir.path().join("model.safetensors"), b"v2").expect("write");
        dir.commit().expect("replace");
        assert_eq!(
            std::fs::read(target.join("model.safetensors")).expect("read"),
            b"v2"
        );

        // A file the user adds while a forced write runs stops the replacement at the commit.
        let dir = OutputDir::create(&target, true).expect("forced");
        std::fs::write(target.join("mine.txt"), b"keep").expect("write");
        assert!(dir.commit().is_err());
        assert_eq!(
            std::fs::read(target.join("mine.txt")).expect("kept"),
            b"keep"
        );
        assert_eq!(
            std::fs::read(target.join("model.safetensors")).expect("kept"),
            b"v2"
        );
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("out")]);
    }

    #[test]
    fn a_commit_killed_between_its_renames_is_undone_by_the_next_writer() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("out");
        // The old output moved aside, the new one not yet in place, its writer gone.
        let old = sibling(&target, ".old-4194303");
        std::fs::create_dir_all(&old).expect("mkdir");
        std::fs::write(old.join("model.safetensors"), b"v1").expect("write");
        Manifest::of_dir(&old)
            .expect("list")
            .write(&old)
            .expect("write");
        OutputDir::remove_stale(&target).expect("clean");
        assert_eq!(
            std::fs::read(target.join("model.safetensors")).expect("back"),
            b"v1"
        );
        assert!(!old.exists());
        // Beside a target in place, a leftover old output of adamerge's is removed; one holding
        // a file adamerge did not write is kept.
        std::fs::create_dir_all(&old).expect("mkdir");
        std::fs::write(old.join("model.safetensors"), b"v0").expect("write");
        Manifest::of_dir(&old)
            .expect("list")
            .write(&old)
            .expect("write");
        OutputDir::remove_stale(&target).expect("clean");
        assert!(!old.exists());
        std::fs::create_dir_all(&old).expect("mkdir");
        std::fs::write(old.join("mine.txt"), b"keep").expect("write");
        OutputDir::remove_stale(&target).expect("clean");
        assert!(old.join("mine.txt").exists());
    }

    #[test]
    fn stale_staging_of_a_dead_writer_is_removed_and_a_live_one_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("out");
        let dead = sibling(&target, ".partial-4194303");
        std::fs::create_dir_all(&dead).expect("mkdir");
        std::fs::write(dead.join(LOCK_FILE), b"4194303").expect("write");
        let live = OutputDir::create(&tmp.path().join("other"), false).expect("live");
        let live_for_target = sibling(&target, &format!(".partial-{}", u32::MAX - 1));
        std::fs::create_dir_all(&live_for_target).expect("mkdir");
        let _held = RunLock::folder(&live_for_target).expect("lock");
        OutputDir::remove_stale(&target).expect("clean");
        assert!(!dead.exists(), "the dead writer's staging is gone");
        assert!(live_for_target.exists(), "a held lock is a live writer");
        assert!(live.path().exists());
    }
}
