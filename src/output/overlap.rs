//! Outputs kept apart from inputs: an output that is, holds or lies inside an input is refused
//! before any work, whatever the flags, so no run can overwrite, replace or grow what it reads.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The inputs of a command, each with what it is (`the pretrained checkpoint`, `task `x`'s
/// data`), for the error message.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    paths: Vec<(String, PathBuf)>,
}

impl Inputs {
    /// No inputs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an input (a file, a folder or a glob of files).
    pub fn add(&mut self, role: impl Into<String>, path: &Path) -> &mut Self {
        self.paths.push((role.into(), path.to_path_buf()));
        self
    }

    /// Fails, naming both paths, when `output` is an input, holds one, or lies inside one.
    /// Paths are compared with links resolved as far as they exist, so a link or a `..` does
    /// not hide an overlap.
    pub fn check(&self, output: &Path) -> Result<()> {
        let out = resolved(output);
        for (role, input) in &self.paths {
            let inp = resolved(input);
            let relation = if out == inp {
                "is"
            } else if out.starts_with(&inp) {
                "lies inside"
            } else if inp.starts_with(&out) {
                "holds"
            } else {
                continue;
            };
            return Err(Error::OutputOverlapsInput {
                output: output.to_path_buf(),
                relation,
                role: role.clone(),
                input: input.clone(),
            });
        }
        Ok(())
    }
}

/// `path` made absolute, with links resolved through its longest existing ancestor and the rest
/// normalised lexically; a glob stands for the folder before its first pattern character.
fn resolved(path: &Path) -> PathBuf {
    let mut literal = PathBuf::new();
    for c in path.components() {
        if c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
            break;
        }
        literal.push(c);
    }
    let abs = std::path::absolute(&literal).unwrap_or(literal);
    let parts: Vec<Component<'_>> = abs.components().collect();
    for split in (1..=parts.len()).rev() {
        let head: PathBuf = parts[..split].iter().collect();
        if let Ok(mut out) = head.canonicalize() {
            for c in &parts[split..] {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return out;
        }
    }
    abs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_are_found_through_links_and_dots() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let models = tmp.path().join("models");
        std::fs::create_dir_all(models.join("pretrained")).expect("mkdir");
        let mut inputs = Inputs::new();
        inputs.add("the pretrained checkpoint", &models.join("pretrained"));
        let err = |p: &Path| inputs.check(p).expect_err("overlap").to_string();
        assert!(err(&models.join("pretrained")).contains(" is the pretrained checkpoint "));
        assert!(err(&models).contains(" holds the pretrained checkpoint "));
        assert!(err(&models.join("pretrained/new/deeper")).contains(" lies inside "));
        assert!(err(&models.join("other/../pretrained")).contains(" is "));
        #[cfg(unix)]
        {
            let link = tmp.path().join("link");
            std::os::unix::fs::symlink(&models, &link).expect("symlink");
            assert!(err(&link).contains(" holds "));
        }
        inputs.check(&models.join("merged")).expect("apart");
        inputs
            .check(&tmp.path().join("models2"))
            .expect("a prefix of a name is not a parent");
    }

    #[test]
    fn a_glob_stands_for_its_folder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut inputs = Inputs::new();
        inputs.add("task `a`'s data", &tmp.path().join("data/test-*.parquet"));
        assert!(inputs.check(&tmp.path().join("data")).is_err());
        inputs.check(&tmp.path().join("out")).expect("apart");
    }
}
