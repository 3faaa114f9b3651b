//! ImageFolder data sets: one sub-folder per class, images inside.

use std::collections::HashMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{ImageRef, LabeledImages};
use crate::error::{Error, Result};

/// Image file extensions read (case-insensitive).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether a path has an image extension read here.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Every entry of folder `dir` (one level), an entry that cannot be read an error naming the
/// folder rather than a file silently left out.
pub fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect()
}

/// Every file under `root` at any depth, in no particular order. Links are followed, but a
/// link back to a folder already being walked is skipped (so the walk ends), and a file reached
/// by two paths is listed once (the first path found).
pub fn files_under(root: &Path) -> Result<Vec<PathBuf>> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(true) {
        let entry = match entry {
            Ok(e) => e,
            // A cycle adds nothing: its target is walked anyway.
            Err(e) if e.loop_ancestor().is_some() => continue,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                return Err(Error::io(path, e.into()));
            }
        };
        if entry.file_type().is_dir() {
            continue;
        }
        let path = entry.into_path();
        let canonical = path.canonicalize().map_err(|e| Error::io(&path, e))?;
        if seen.insert(canonical) {
            files.push(path);
        }
    }
    Ok(files)
}

/// Reads `root/<class>/*.{png,jpg,jpeg}`: class names in label order and (image, label) sorted
/// by class then file name. See [`LabeledImages::folder`].
pub(super) fn read(root: &Path, folders: Option<&[String]>) -> Result<LabeledImages> {
    let mut found: Vec<String> = entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    found.sort();
    let classes = match folders {
        Some(list) => {
            if let Some(missing) = list.iter().find(|c| !found.contains(c)) {
                return Err(Error::Checkpoint {
                    path: root.join(missing),
                    reason: "class folder listed by the task is missing".into(),
                });
            }
            list.to_vec()
        }
        None => found,
    };
    if classes.is_empty() {
        return Err(Error::Checkpoint {
            path: root.to_path_buf(),
            reason: "no class folders and no .parquet file here (expected ROOT/<class>/<image>.png|jpg or Parquet shards)".into(),
        });
    }
    let mut items = Vec::new();
    // Each image file once, whatever links lead to it; one file under two classes has no label.
    let mut seen: HashMap<PathBuf, (PathBuf, usize)> = HashMap::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let mut files: Vec<PathBuf> = entries(&dir)?
            .into_iter()
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        if files.is_empty() {
            return Err(Error::Checkpoint {
                path: dir,
                reason: "class folder holds no .png/.jpg/.jpeg image".into(),
            });
        }
        files.sort();
        for f in files {
            let canonical = f.canonicalize().map_err(|e| Error::io(&f, e))?;
            match seen.get(&canonical) {
                Some((_, l)) if *l == label => continue,
                Some((first, l)) => {
                    return Err(Error::Data {
                        path: f.clone(),
                        row: None,
                        reason: format!(
                            "the same image as {} (class `{}`), so it has two labels",
                            first.display(),
                            classes[*l]
                        ),
                    });
                }
                None => {
                    seen.insert(canonical, (f.clone(), label));
                }
            }
            items.push((ImageRef::File(f), label));
        }
    }
    Ok(LabeledImages {
        root: root.to_path_buf(),
        classes,
        items,
        prompt_names: None,
    })
}
