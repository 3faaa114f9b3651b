//! The record of what adamerge wrote in an output folder: every file with its size. `--force`
//! replaces a folder only when that record accounts for every file in it, so a file a user
//! added, changed or linked there stops the replacement.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::atomic::{read_json, write_json};
use crate::error::{Error, Result};

/// The manifest's file name inside an output folder.
pub const MANIFEST: &str = ".adamerge-manifest.json";

/// Files an output folder holds, by '/'-separated relative path, with their sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The adamerge version that wrote the folder.
    pub written_by: String,
    /// Relative path → size.
    pub files: BTreeMap<String, u64>,
}

impl Manifest {
    /// Lists every file under `dir` (the manifest itself excepted).
    pub fn of_dir(dir: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        for entry in entries(dir)? {
            let (rel, meta) = entry?;
            if meta.is_dir() {
                continue;
            }
            files.insert(rel, meta.len());
        }
        Ok(Self {
            written_by: format!("adamerge {}", env!("CARGO_PKG_VERSION")),
            files,
        })
    }

    /// Writes the manifest into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(MANIFEST), self)
    }

    /// Succeeds when `dir` may be replaced: it is empty, or every file in it is one its
    /// manifest lists, at the listed size. Links are never followed, and a link is never a
    /// file adamerge wrote. A suite built before manifests existed is accounted for by the
    /// file list of its `suite.json`.
    pub fn check_replaceable(dir: &Path) -> Result<()> {
        let listed = listed_files(dir)?;
        for entry in entries(dir)? {
            let (rel, meta) = entry?;
            if meta.is_dir() {
                continue;
            }
            let refuse = |why: &str| Error::NotReplaceable {
                path: dir.to_path_buf(),
                reason: format!("`{rel}` {why}"),
            };
            let Some(listed) = &listed else {
                return Err(Error::NotReplaceable {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "it has no {MANIFEST}, so adamerge cannot tell that it wrote every file \
                         in it (an output of an older version, or not adamerge's); remove it \
                         yourself or choose another output"
                    ),
                });
            };
            if meta.file_type().is_symlink() {
                return Err(refuse("is a link, which adamerge never writes"));
            }
            match listed.get(&rel) {
                None => return Err(refuse("was not written by adamerge")),
                Some(Some(size)) if *size != meta.len() => {
                    return Err(refuse("changed since adamerge wrote it"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The files a folder's record lists (sizes where known), or `None` without a record.
fn listed_files(dir: &Path) -> Result<Option<BTreeMap<String, Option<u64>>>> {
    let path = dir.join(MANIFEST);
    if path.is_file() {
        let m: Manifest = read_json(&path)?;
        let mut files: BTreeMap<_, _> = m.files.into_iter().map(|(k, v)| (k, Some(v))).collect();
        files.insert(MANIFEST.to_string(), None);
        return Ok(Some(files));
    }
    #[derive(Deserialize)]
    struct SuiteFiles {
        files: BTreeMap<String, String>,
    }
    let suite = dir.join("suite.json");
    if suite.is_file()
        && let Ok(s) = read_json::<SuiteFiles>(&suite)
    {
        let mut files: BTreeMap<_, _> = s.files.into_keys().map(|k| (k, None)).collect();
        files.insert("suite.json".to_string(), None);
        return Ok(Some(files));
    }
    Ok(None)
}

/// Every entry under `dir` (links not followed, so the walk ends) as its relative path and
/// metadata, the manifest excepted.
fn entries(dir: &Path) -> Result<impl Iterator<Item = Result<(String, std::fs::Metadata)>>> {
    let root = dir.to_path_buf();
    Ok(walkdir::WalkDir::new(dir)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_map(move |entry| {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().unwrap_or(&root).to_path_buf();
                    return Some(Err(Error::io(path, e.into())));
                }
            };
            let rel = entry
                .path()
                .strip_prefix(&root)
                .unwrap_or(entry.path())
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if rel == MANIFEST {
                return None;
            }
            Some(
                entry
                    .metadata()
                    .map(|m| (rel, m))
                    .map_err(|e| Error::io(entry.path(), e.into())),
            )
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_folder_of_listed_files_is_replaceable() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        std::fs::create_dir(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("a.json"), b"{}").expect("write");
        std::fs::write(dir.join("sub/b.bin"), b"123").expect("write");
        assert!(Manifest::check_replaceable(dir).is_err(), "no manifest");
        Manifest::of_dir(dir)
            .expect("list")
            .write(dir)
            .expect("write");
        Manifest::check_replaceable(dir).expect("all listed");
        std::fs::write(dir.join("sub/b.bin"), b"1234").expect("write");
        let e = Manifest::check_replaceable(dir).expect_err("changed");
        assert!(e.to_string().contains("sub/b.bin"), "{e}");
        std::fs::write(dir.join("sub/b.bin"), b"123").expect("write");
        std::fs::write(dir.join("notes.txt"), b"mine").expect("write");
        let e = Manifest::check_replaceable(dir).expect_err("added");
        assert!(e.to_string().contains("notes.txt"), "{e}");
    }
}
