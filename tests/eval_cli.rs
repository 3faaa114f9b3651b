//! `adamerge eval` end to end on a tiny CLIP model and an ImageFolder made of the fixture
//! images, checked against the library computing the same accuracy.

use crate::common;

use std::path::Path;
use std::process::Command;

use adamerge::checkpoint::{Checkpoint, load_weights};
use adamerge::config::{TextConfig, VisionConfig};
use adamerge::data::{LabeledImages, Preprocessor};
use adamerge::eval::{HeadSource, accuracy, load_batch, prepare_task};
use adamerge::model::{ClipTokenizer, VisionTower, logits};
use burn::tensor::Device;
use common::*;
use indicatif::ProgressBar;

fn flat(t: burn::tensor::Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// ROOT/{circle,square,triangle}/*.png from the fixture images.
fn make_folder(root: &Path) {
    let images = fixture("clip/images");
    let files = [
        "rgb_37x23.png",
        "rgb_23x37.png",
        "rgb_50x50.png",
        "rgb_19x64.png",
        "rgb_64x19.png",
        "gray_40x29.png",
    ];
    for (i, f) in files.iter().enumerate() {
        let class = ["circle", "square", "triangle"][i % 3];
        std::fs::create_dir_all(root.join(class)).unwrap();
        std::fs::copy(images.join(f), root.join(class).join(f)).unwrap();
    }
}

#[test]
fn eval_prints_the_accuracy_the_library_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    make_folder(&data);
    let model = fixture("clip/quick_gelu");

    let device = Device::flex();
    let ckpt = Checkpoint::open(&model).unwrap();
    let config = ckpt.config().unwrap();
    let vision = VisionConfig::locate(config, &model)
        .unwrap()
        .unwrap()
        .config;
    let text = TextConfig::locate(config, &model).unwrap().unwrap();
    let w = load_weights(&ckpt, &device, |_| true).unwrap();
    let tok = ClipTokenizer::from_dir(&model, text.max_position_embeddings).unwrap();
    let task = prepare_task(
        "shapes",
        &data,
        HeadSource::ZeroShot {
            cache: None,
            cfg: &text,
            weights: &w,
            tokenizer: &tok,
        },
        None,
        &device,
    )
    .unwrap();
    assert_eq!(task.data.classes, vec!["circle", "square", "triangle"]);
    let pre = Preprocessor::from_dir(&model, vision.image_size).unwrap();
    let bar = ProgressBar::hidden();
    let acc = accuracy(&vision, &w, &pre, &task, 4, &device, &bar).unwrap();
    assert_eq!(bar.position(), 6, "every image counted once");
    // Batch size does not change the answer.
    let acc1 = accuracy(&vision, &w, &pre, &task, 1, &device, &ProgressBar::hidden()).unwrap();
    assert_eq!(acc, acc1);
    // Nor do the batches that go side by side on the CPU: the count made here, one image at a
    // time, is the same.
    let tower = VisionTower::new(&vision, &w).unwrap();
    let correct = task
        .data
        .items
        .iter()
        .filter(|(image, label)| {
            let pixels = load_batch(&[image], &pre, &device).unwrap();
            let scores = flat(logits(
                tower.image_embeds(pixels).unwrap(),
                task.head.clone(),
            ));
            let best = (0..scores.len())
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .unwrap();
            best == *label
        })
        .count();
    assert_eq!(acc, correct as f64 / 6.0);

    // The CLI caches the heads it builds: a second run reads them back and agrees.
    let cache = tmp.path().join("cache");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_adamerge"))
            .env("ADAMERGE_CACHE", &cache)
            .args(["--threads", "1", "eval", "--model"])
            .arg(&model)
            .arg("--task")
            .arg(format!("shapes,data={}", data.display()))
            .arg("--batch-size")
            .arg("4")
            .output()
            .unwrap()
    };
    for round in 0..2 {
        let out = run();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("| shapes | 6 | {:.2} |", 100.0 * acc)),
            "round {round}: {stdout}"
        );
        let cached: Vec<_> = std::fs::read_dir(cache.join("heads")).unwrap().collect();
        assert_eq!(cached.len(), 1, "one head cached after round {round}");
        let file = cached[0].as_ref().unwrap().path();
        let head = adamerge::model::read_head(&file, &device).unwrap();
        assert_close(&flat(head), &flat(task.head.clone()), 1e-6);
    }
}

#[test]
fn empty_classes_and_missing_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(root.join("a/x.png"), b"").unwrap();
    let err = LabeledImages::folder(&root, None).unwrap_err().to_string();
    assert!(err.contains("data/b") && err.contains("no .png"), "{err}");
    let err = LabeledImages::folder(&root, Some(&["a".into(), "c".into()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("data/c") && err.contains("missing"), "{err}");
    let err = LabeledImages::folder(&tmp.path().join("nowhere"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nowhere"), "{err}");

    // The CLI says which folder and exits 1 without a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_adamerge"))
        .args(["eval", "--model"])
        .arg(fixture("clip/quick_gelu"))
        .arg("--task")
        .arg(format!("t,data={}", root.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("data/b") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// The images of [`make_folder`] as one Parquet file: binary `image`, int64 `label`, class names
/// in `huggingface` metadata as `datasets` stores them.
fn make_parquet(folder: &Path, file: &Path) {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;

    let set = LabeledImages::folder(folder, None).unwrap();
    let mut bytes = Vec::new();
    let mut labels = Vec::new();
    for (image, label) in &set.items {
        let adamerge::data::ImageRef::File(path) = image else {
            panic!("an ImageFolder item is a file");
        };
        bytes.push(std::fs::read(path).unwrap());
        labels.push(*label as i64);
    }
    let batch = RecordBatch::try_from_iter([
        (
            "image",
            Arc::new(BinaryArray::from_iter_values(&bytes)) as ArrayRef,
        ),
        ("label", Arc::new(Int64Array::from(labels)) as ArrayRef),
    ])
    .unwrap();
    let meta = serde_json::json!({"info": {"features": {
        "image": {"_type": "Image"},
        "label": {"names": set.classes, "_type": "ClassLabel"},
    }}});
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "huggingface".into(),
            meta.to_string(),
        )]))
        .set_max_row_group_row_count(Some(4))
        .build();
    let out = std::fs::File::create(file).unwrap();
    let mut writer = ArrowWriter::try_new(out, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn eval_reads_parquet_as_it_reads_the_same_images_in_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("shapes");
    make_folder(&folder);
    let parquet = tmp.path().join("test-00000-of-00001.parquet");
    make_parquet(&folder, &parquet);
    let model = fixture("clip/quick_gelu");
    let eval = |data: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_adamerge"))
            .env("ADAMERGE_CACHE", tmp.path().join("cache"))
            .args(["--threads", "1", "eval", "--model"])
            .arg(&model)
            .arg("--task")
            .arg(format!("shapes,data={}", data.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .find(|l| l.starts_with("| shapes |"))
            .unwrap_or_else(|| panic!("no row for the task: {stdout}"))
            .to_string()
    };
    let from_folder = eval(&folder);
    assert!(from_folder.starts_with("| shapes | 6 |"), "{from_folder}");
    assert_eq!(eval(&parquet), from_folder);
    assert_eq!(eval(&tmp.path().join("test-*.parquet")), from_folder);
}
