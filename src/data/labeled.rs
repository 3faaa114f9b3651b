//! Labelled and unlabeled image sets, whatever their on-disk layout (ImageFolder or Parquet).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::decode::{decode_file_then, decode_then};
use super::preprocess::{Preprocessor, Rgb8};
use super::{TaskClasses, folder, parquet};
use crate::error::{Error, Result};

/// One image: a file on disk, or the encoded bytes of a Parquet row (held in memory, so a
/// Parquet data set costs its compressed size in RAM).
#[derive(Debug, Clone)]
pub enum ImageRef {
    /// A PNG or JPEG file.
    File(PathBuf),
    /// Row `row` (0-based, within `file`) of a Parquet shard.
    Row {
        /// The shard.
        file: Arc<Path>,
        /// The row in that shard.
        row: usize,
        /// The encoded image.
        bytes: Arc<[u8]>,
    },
}

impl ImageRef {
    /// Decodes the image to RGB; an error names the file (and row).
    pub fn decode(&self) -> Result<Rgb8> {
        self.decode_then(|img| img)
    }

    /// The image decoded and preprocessed into channels-first pixels, the decoded image
    /// counting against the decoding budget until it is preprocessed.
    pub fn pixels(&self, pre: &Preprocessor) -> Result<Vec<f32>> {
        self.decode_then(|img| pre.pixels(&img))
    }

    fn decode_then<T>(&self, use_it: impl FnOnce(Rgb8) -> T) -> Result<T> {
        match self {
            ImageRef::File(path) => decode_file_then(path, use_it),
            ImageRef::Row { file, row, bytes } => {
                decode_then(std::io::Cursor::new(&bytes[..]), use_it).map_err(|reason| {
                    Error::Data {
                        path: file.to_path_buf(),
                        row: Some(*row),
                        reason,
                    }
                })
            }
        }
    }
}

/// A labelled image set: class names in label order and (image, label) items.
#[derive(Debug, Clone)]
pub struct LabeledImages {
    /// What was opened (a folder, a Parquet file or a glob).
    pub root: PathBuf,
    /// Class names in label order (ImageFolder: folder names; Parquet: the task's class names
    /// when the stored ones name the same classes or none are stored, else the stored names,
    /// else the label numbers).
    pub classes: Vec<String>,
    /// (image, label): ImageFolder sorted by class then file name; Parquet in file order.
    pub items: Vec<(ImageRef, usize)>,
    /// Names to prompt a zero-shot head with in place of the task's class names: set for
    /// Parquet data whose stored class names are not the task's, so head rows follow its labels.
    pub prompt_names: Option<Vec<String>>,
}

impl LabeledImages {
    /// Opens `path` in whichever layout it holds: a `.parquet` file, a glob of them
    /// (`data/test-*.parquet`), a folder holding `.parquet` shards, or else an ImageFolder
    /// (`path/<class>/*.png|jpg`). `spec` gives a paper task's folder order and class names.
    pub fn open(path: &Path, spec: Option<&TaskClasses>) -> Result<Self> {
        match parquet::shards(path)? {
            Some(files) => {
                parquet::read_labeled(path, &files, spec.map(|s| s.classnames.as_slice()))
            }
            None => Self::folder(path, spec.and_then(|s| s.folders.as_deref())),
        }
    }

    /// Opens an ImageFolder. Classes are the sub-folders sorted by name, unless `folders` gives
    /// them (in label order), in which case each must exist. An empty class, or no image at
    /// all, is an error naming the folder.
    pub fn folder(root: &Path, folders: Option<&[String]>) -> Result<Self> {
        folder::read(root, folders)
    }

    /// Keeps at most `n` images, spread evenly over the set so every class stays represented.
    pub fn limit(&mut self, n: usize) {
        if n == 0 || n >= self.items.len() {
            return;
        }
        let step = self.items.len() as f64 / n as f64;
        self.items = (0..n)
            .map(|i| self.items[(i as f64 * step) as usize].clone())
            .collect();
    }
}

/// Every image of `path` without labels: Parquet (as [`LabeledImages::open`] finds it, labels
/// not read) or every image file under a folder at any depth, sorted by path.
pub fn scan_unlabeled(path: &Path) -> Result<Vec<ImageRef>> {
    if let Some(files) = parquet::shards(path)? {
        return parquet::read_images(&files);
    }
    let mut paths: Vec<PathBuf> = folder::files_under(path)?
        .into_iter()
        .filter(|p| folder::is_image(p))
        .collect();
    if paths.is_empty() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "no .png/.jpg/.jpeg image or .parquet file here".into(),
        });
    }
    paths.sort();
    Ok(paths.into_iter().map(ImageRef::File).collect())
}
