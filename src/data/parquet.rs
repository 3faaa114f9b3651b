//! Parquet image data sets in the layout of the Hugging Face hub copies of the paper's data
//! sets (`data/test-*.parquet`): an image column (`image` or `img`, stored as `datasets`'
//! struct<bytes, path> or as plain binary) and an integer label column (`label` or `labels`),
//! class names in the `huggingface` file metadata when `datasets` wrote it.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{ImageRef, LabeledImages};
use crate::error::{Error, Result};

const IMAGE_COLUMNS: [&str; 2] = ["image", "img"];
const LABEL_COLUMNS: [&str; 2] = ["label", "labels"];
const BATCH_ROWS: usize = 256;
/// Paths a glob may match before it is refused.
const MAX_GLOB_MATCHES: usize = 100_000;

/// The Parquet shards `path` names, sorted, or `None` when it is not Parquet: a `.parquet`
/// file, a glob (`*`, `?`, `[`), or a folder holding `.parquet` files directly.
pub(super) fn shards(path: &Path) -> Result<Option<Vec<PathBuf>>> {
    let text = path.to_string_lossy();
    if text.contains(['*', '?', '[']) {
        let pattern = glob::glob(&text).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("not a valid glob: {e}"),
        })?;
        // Each file once, whatever links lead to it; a bounded count ends a walk that links
        // lead in circles (`**` follows links).
        let mut seen = HashSet::new();
        let mut files = Vec::new();
        for p in pattern.filter_map(|p| p.ok()) {
            if seen.len() >= MAX_GLOB_MATCHES {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the glob matches more than {MAX_GLOB_MATCHES} paths (links in a cycle?)"
                    ),
                });
            }
            if let Ok(canonical) = p.canonicalize()
                && seen.insert(canonical)
            {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: "the glob matches no file".into(),
            });
        }
        files.sort();
        return Ok(Some(files));
    }
    if path.is_file() && is_parquet(path) {
        return Ok(Some(vec![path.to_path_buf()]));
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = super::entries(path)?
            .into_iter()
            .filter(|p| p.is_file() && is_parquet(p))
            .collect();
        if !files.is_empty() {
            files.sort();
            return Ok(Some(files));
        }
    }
    Ok(None)
}

fn is_parquet(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Reads labelled images from `files`. Class names come from the files' `huggingface` metadata,
/// else `classnames`, else the label numbers `0..=max`. Stored names that are the task's
/// `classnames` up to case, `_`/`-` and order are mapped onto the task's label order, so the
/// task's zero-shot head scores them; other stored names become the set's prompt names.
pub(super) fn read_labeled(
    root: &Path,
    files: &[PathBuf],
    classnames: Option<&[String]>,
) -> Result<LabeledImages> {
    let mut stored: Option<(PathBuf, Vec<String>)> = None;
    let mut items = Vec::new();
    for file in files {
        let shard = read_shard(file, true)?;
        if let Some(names) = shard.names {
            match &stored {
                Some((first, known)) if *known != names => {
                    return Err(Error::Data {
                        path: file.clone(),
                        row: None,
                        reason: format!(
                            "its class names differ from those of {} ({} vs {} names)",
                            first.display(),
                            names.len(),
                            known.len()
                        ),
                    });
                }
                Some(_) => {}
                None => stored = Some((file.clone(), names)),
            }
        }
        items.extend(shard.images.into_iter().zip(shard.labels));
    }
    let max = items.iter().map(|(_, l)| *l).max();
    let (classes, task_names) = match (stored, classnames) {
        (Some((_, names)), Some(task)) => match task_order(&names, task) {
            Some(map) => {
                for (_, label) in &mut items {
                    if let Some(&to) = map.get(*label) {
                        *label = to;
                    }
                }
                (task.to_vec(), true)
            }
            None => (names, false),
        },
        (Some((_, names)), None) => (names, false),
        (None, Some(names)) => (names.to_vec(), true),
        (None, None) => (
            (0..=max.unwrap_or(0)).map(|l| l.to_string()).collect(),
            false,
        ),
    };
    if let Some((ImageRef::Row { file, row, .. }, label)) =
        items.iter().find(|(_, l)| *l >= classes.len())
    {
        return Err(Error::Data {
            path: file.to_path_buf(),
            row: Some(*row),
            reason: format!(
                "label {label} is out of range: the task has {} classes",
                classes.len()
            ),
        });
    }
    Ok(LabeledImages {
        root: root.to_path_buf(),
        prompt_names: (!task_names).then(|| classes.clone()),
        classes,
        items,
    })
}

/// For each stored label, its index among the task's class names, when both name the same
/// classes (compared without case, `_` or `-`).
fn task_order(stored: &[String], task: &[String]) -> Option<Vec<usize>> {
    let key = |s: &str| {
        s.to_lowercase()
            .replace(['_', '-'], " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    if stored.len() != task.len() {
        return None;
    }
    let task: Vec<String> = task.iter().map(|s| key(s)).collect();
    let map: Vec<usize> = stored
        .iter()
        .map(|s| task.iter().position(|t| *t == key(s)))
        .collect::<Option<_>>()?;
    let mut seen = vec![false; map.len()];
    map.iter()
        .all(|&i| !std::mem::replace(&mut seen[i], true))
        .then_some(map)
}

impl Shard {
    /// Appends the rows of one record batch: each image's bytes, and its label where read.
    fn push(
        &mut self,
        batch: &arrow_array::RecordBatch,
        image_name: &str,
        label_name: Option<&str>,
        file: &Arc<Path>,
    ) -> Result<()> {
        let bad = |row: Option<usize>, reason: String| Error::Data {
            path: file.to_path_buf(),
            row,
            reason,
        };
        let offset = self.images.len();
        let column = batch
            .column_by_name(image_name)
            .ok_or_else(|| bad(None, format!("column `{image_name}` vanished")))?;
        for (i, bytes) in image_bytes(column, image_name)
            .map_err(|r| bad(None, r))?
            .into_iter()
            .enumerate()
        {
            let row = offset + i;
            let bytes = bytes.ok_or_else(|| bad(Some(row), format!("`{image_name}` is null")))?;
            self.images.push(ImageRef::Row {
                file: file.clone(),
                row,
                bytes: Arc::from(bytes),
            });
        }
        let Some(name) = label_name else {
            return Ok(());
        };
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| bad(None, format!("column `{name}` vanished")))?;
        for (i, label) in labels(column, name)
            .map_err(|r| bad(None, r))?
            .into_iter()
            .enumerate()
        {
            let row = offset + i;
            let label = label.ok_or_else(|| bad(Some(row), format!("`{name}` is null")))?;
            let label = usize::try_from(label)
                .map_err(|_| bad(Some(row), format!("`{name}` is negative ({label})")))?;
            self.labels.push(label);
        }
        Ok(())
    }
}

/// Reads the images of `files`, labels ignored (an unlabeled adaptation set).
pub(super) fn read_images(files: &[PathBuf]) -> Result<Vec<ImageRef>> {
    let mut images = Vec::new();
    for file in files {
        images.extend(read_shard(file, false)?.images);
    }
    Ok(images)
}

struct Shard {
    images: Vec<ImageRef>,
    labels: Vec<usize>,
    names: Option<Vec<String>>,
}

fn read_shard(path: &Path, with_labels: bool) -> Result<Shard> {
    let bad = |row: Option<usize>, reason: String| Error::Data {
        path: path.to_path_buf(),
        row,
        reason,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(None, format!("not a readable Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let find = |wanted: &[&str], what: &str| {
        wanted
            .iter()
            .find_map(|w| names.iter().position(|n| n == w))
            .ok_or_else(|| {
                bad(
                    None,
                    format!(
                        "no {what} column (looked for {}; the file has {})",
                        wanted.join(" or "),
                        names.join(", ")
                    ),
                )
            })
    };
    let image_col = find(&IMAGE_COLUMNS, "image")?;
    let label_col = if with_labels {
        Some(find(&LABEL_COLUMNS, "label")?)
    } else {
        None
    };
    let class_names = match label_col {
        Some(col) => hf_class_names(&builder, names[col]).map_err(|r| bad(None, r))?,
        None => None,
    };
    let image_name = names[image_col].to_string();
    let label_name = label_col.map(|c| names[c].to_string());
    let roots: Vec<usize> = std::iter::once(image_col).chain(label_col).collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| bad(None, format!("cannot read: {e}")))?;
    let shared: Arc<Path> = Arc::from(path);
    let mut shard = Shard {
        images: Vec::new(),
        labels: Vec::new(),
        names: class_names,
    };
    for batch in reader {
        let batch = batch.map_err(|e| bad(None, format!("cannot read: {e}")))?;
        shard.push(&batch, &image_name, label_name.as_deref(), &shared)?;
    }
    if shard.images.is_empty() {
        return Err(bad(None, "holds no row".into()));
    }
    Ok(shard)
}

/// Class names of `label` stored by `datasets` as a `ClassLabel` feature in the `huggingface`
/// metadata, if any.
fn hf_class_names<T>(
    builder: &parquet::arrow::arrow_reader::ArrowReaderBuilder<T>,
    label: &str,
) -> std::result::Result<Option<Vec<String>>, String> {
    let Some(kv) = builder.metadata().file_metadata().key_value_metadata() else {
        return Ok(None);
    };
    let Some(text) = kv
        .iter()
        .find(|k| k.key == "huggingface")
        .and_then(|k| k.value.as_deref())
    else {
        return Ok(None);
    };
    let meta: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("its `huggingface` metadata is not JSON: {e}"))?;
    let Some(names) = meta
        .pointer(&format!("/info/features/{label}/names"))
        .and_then(|n| n.as_array())
    else {
        return Ok(None);
    };
    names
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .map(Some)
        .ok_or_else(|| format!("the class names of `{label}` in its metadata are not strings"))
}

/// The encoded bytes of each row of an image column: `datasets`' struct<bytes, path> or plain
/// binary. `None` for a null row.
fn image_bytes<'a>(
    column: &'a ArrayRef,
    name: &str,
) -> std::result::Result<Vec<Option<&'a [u8]>>, String> {
    let binary = |array: &'a dyn Array| -> Option<Vec<Option<&'a [u8]>>> {
        match array.data_type() {
            DataType::Binary => Some(array.as_binary::<i32>().iter().collect()),
            DataType::LargeBinary => Some(array.as_binary::<i64>().iter().collect()),
            DataType::BinaryView => Some(array.as_binary_view().iter().collect()),
            _ => None,
        }
    };
    if let Some(rows) = binary(column.as_ref()) {
        return Ok(rows);
    }
    if let DataType::Struct(_) = column.data_type() {
        let s = column.as_struct();
        if let Some(rows) = s.column_by_name("bytes").and_then(|b| binary(b.as_ref())) {
            return Ok(rows
                .into_iter()
                .enumerate()
                .map(|(i, r)| if s.is_null(i) { None } else { r })
                .collect());
        }
    }
    Err(format!(
        "column `{name}` has type {}; expected binary image bytes or a struct with a binary `bytes` field",
        column.data_type()
    ))
}

/// The values of an integer label column; `None` for a null row.
fn labels(column: &ArrayRef, name: &str) -> std::result::Result<Vec<Option<i64>>, String> {
    macro_rules! ints {
        ($t:ty) => {
            column
                .as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|v| v as i64))
                .collect()
        };
    }
    Ok(match column.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => column
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
            .collect(),
        other => {
            return Err(format!(
                "column `{name}` has type {other}; expected integer labels"
            ));
        }
    })
}
