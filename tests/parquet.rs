//! Parquet data sets (the Hugging Face hub layout) against the fixtures that
//! `scripts/fixtures/make_parquet_fixtures.py` wrote with `datasets` and `pyarrow`: labels, class
//! names and decoded pixels as PIL reads them, and clear errors for bad files.

use std::path::{Path, PathBuf};

use adamerge::data::{ImageRef, LabeledImages, TaskClasses, scan_unlabeled};
use serde::Deserialize;

#[derive(Deserialize)]
struct Row {
    label: usize,
    jpeg: bool,
    shape: Vec<usize>,
    rgb: Vec<u8>,
}

#[derive(Deserialize)]
struct Expected {
    classes: Vec<String>,
    hf: Vec<Row>,
    plain: Vec<Row>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet")
}

fn expected() -> Expected {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

/// Decodes every item and compares it with PIL: PNG exactly, JPEG within decoder rounding.
fn assert_rows(set: &LabeledImages, rows: &[Row]) {
    assert_eq!(set.items.len(), rows.len());
    for (i, ((image, label), want)) in set.items.iter().zip(rows).enumerate() {
        assert_eq!(*label, want.label, "label of row {i}");
        let img = image.decode().unwrap();
        assert_eq!(
            [img.height, img.width, 3],
            want.shape[..],
            "shape of row {i}"
        );
        let diffs: Vec<u8> = img
            .data
            .iter()
            .zip(&want.rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        if want.jpeg {
            // The image crate's JPEG decoder upsamples chroma unlike libjpeg; on these noise
            // images that moves pixels by about one level on average.
            assert!(mean < 2.0, "row {i}: pixels differ by {mean} on average");
        } else {
            assert_eq!(mean, 0.0, "row {i}: PNG pixels differ");
        }
    }
}

#[test]
fn hub_shards_read_as_datasets_wrote_them() {
    let want = expected();
    // A folder of shards, a glob and the files one by one give the same rows.
    let set = LabeledImages::open(&dir().join("hf"), None).unwrap();
    assert_eq!(set.classes, want.classes);
    assert_rows(&set, &want.hf);
    let glob = LabeledImages::open(&dir().join("hf/test-*.parquet"), None).unwrap();
    assert_rows(&glob, &want.hf);
    let first = LabeledImages::open(&dir().join("hf/test-00000-of-00002.parquet"), None).unwrap();
    assert_rows(&first, &want.hf[..11]);
    // Rows are numbered within their own shard, so an error names the right one.
    let ImageRef::Row { file, row, .. } = &set.items[12].0 else {
        panic!("a Parquet item is a row");
    };
    assert!(file.ends_with("test-00001-of-00002.parquet"));
    assert_eq!(*row, 1);
}

#[test]
fn stored_class_names_other_than_the_task_s_are_kept_for_the_prompts() {
    let spec = TaskClasses::from_folders("x", &["a".into(), "b".into(), "c".into()]);
    let set = LabeledImages::open(&dir().join("hf"), Some(&spec)).unwrap();
    assert_eq!(set.classes, expected().classes);
    assert_eq!(set.prompt_names.as_ref(), Some(&expected().classes));
}

#[test]
fn stored_class_names_in_another_order_are_mapped_onto_the_task_s_labels() {
    // The fixture stores ["annual crop", "forest", "sea or lake"].
    let task = ["Sea_or_Lake", "forest", "annual-crop"].map(String::from);
    let spec = TaskClasses {
        classnames: task.to_vec(),
        ..TaskClasses::from_folders("x", &task)
    };
    let set = LabeledImages::open(&dir().join("hf"), Some(&spec)).unwrap();
    assert_eq!(set.classes, task);
    assert_eq!(set.prompt_names, None);
    let to_task = [2, 1, 0];
    let labels: Vec<usize> = set.items.iter().map(|(_, l)| *l).collect();
    let want: Vec<usize> = expected().hf.iter().map(|r| to_task[r.label]).collect();
    assert_eq!(labels, want);
}

#[test]
fn plain_binary_columns_without_metadata() {
    let want = expected();
    let set = LabeledImages::open(&dir().join("plain.parquet"), None).unwrap();
    assert_eq!(set.classes, ["0", "1"]);
    assert_rows(&set, &want.plain);
    let spec = TaskClasses::from_folders("x", &["cat".into(), "dog".into(), "owl".into()]);
    let named = LabeledImages::open(&dir().join("plain.parquet"), Some(&spec)).unwrap();
    assert_eq!(named.classes, ["cat", "dog", "owl"]);
    assert_eq!(named.prompt_names, None);
    let one = TaskClasses::from_folders("x", &["cat".into()]);
    let err = LabeledImages::open(&dir().join("plain.parquet"), Some(&one))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("plain.parquet, row 1") && err.contains("out of range"),
        "{err}"
    );
}

#[test]
fn unlabeled_scan_reads_images_only() {
    let images = scan_unlabeled(&dir().join("bad/no_label.parquet")).unwrap();
    assert_eq!(images.len(), 1);
    images[0].decode().unwrap();
    assert_eq!(scan_unlabeled(&dir().join("hf")).unwrap().len(), 18);
}

#[test]
fn bad_files_fail_naming_file_row_and_column() {
    let err = |name: &str| {
        LabeledImages::open(&dir().join("bad").join(name), None)
            .unwrap_err()
            .to_string()
    };
    let e = err("no_label.parquet");
    assert!(
        e.contains("no_label.parquet") && e.contains("no label column") && e.contains("image"),
        "{e}"
    );
    let e = err("null_image.parquet");
    assert!(
        e.contains("null_image.parquet, row 1") && e.contains("null"),
        "{e}"
    );
    let e = err("negative_label.parquet");
    assert!(
        e.contains("negative_label.parquet, row 1") && e.contains("negative"),
        "{e}"
    );
    // A corrupt image fails when decoded, naming where its bytes came from.
    let set = LabeledImages::open(&dir().join("bad/corrupt_image.parquet"), None).unwrap();
    let e = set.items[0].0.decode().unwrap_err().to_string();
    assert!(
        e.contains("corrupt_image.parquet, row 0") && e.contains("cannot decode"),
        "{e}"
    );
    let e = LabeledImages::open(&dir().join("hf/nothing-*.parquet"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches no file"), "{e}");
    let e = LabeledImages::open(&dir().join("expected.json"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected.json"), "{e}");
}
