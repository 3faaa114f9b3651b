//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod learning;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use adamerge::checkpoint::{Checkpoint, StoredDtype, load_weights};
use adamerge::config::VisionConfig;
use adamerge::data::{Preprocessor, UnlabeledImages};
use adamerge::data_merge::{DataInputs, DataMerge};
use adamerge::eval::save_head;
use adamerge::task_vector::{Finetuned, MergeScope, TaskVectors, VectorDtype};
use adamerge::weights::{FlatTensor, Weights};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The vision tower of a CLIP checkpoint directory: its config and the `vision_model.*` and
/// `visual_projection.weight` tensors.
pub fn vision_tower(dir: &Path, device: &Device) -> (VisionConfig, Weights) {
    let ckpt = Checkpoint::open(dir).expect("open");
    let cfg = VisionConfig::locate(ckpt.config().expect("config"), dir)
        .expect("vision config")
        .expect("a vision tower")
        .config;
    let w = load_weights(&ckpt, device, |n| {
        n.starts_with("vision_model.") || n == "visual_projection.weight"
    })
    .expect("weights");
    (cfg, w)
}

/// Every tensor of a safetensors file or directory, as f32 (u8 masks and i64 ids included).
pub fn read_all(path: &Path) -> HashMap<String, Vec<f32>> {
    let ckpt = Checkpoint::open(path).expect("open");
    ckpt.names()
        .map(|n| {
            let values = match ckpt.meta(n).expect("meta").dtype {
                StoredDtype::Other(safetensors::Dtype::U8) => ckpt
                    .raw(n)
                    .expect("raw")
                    .iter()
                    .map(|&b| b as f32)
                    .collect(),
                StoredDtype::Other(safetensors::Dtype::I64) => ckpt
                    .raw(n)
                    .expect("raw")
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                _ => ckpt.read_f32(n).expect("read"),
            };
            (n.to_string(), values)
        })
        .collect()
}

/// The library's merge by data-based `method` of `images` (heads `heads`, none for RegMean), with
/// `merge`'s default seed 0: what the command line must have written.
pub fn library_merge(
    method: &dyn DataMerge,
    cfg: &VisionConfig,
    pre: &Preprocessor,
    tv: &TaskVectors,
    images: &[UnlabeledImages],
    heads: &[Tensor<2>],
) -> Weights {
    let inputs = DataInputs {
        cfg,
        pre,
        tv,
        images,
        heads,
        seed: 0,
        progress: &ProgressBar::hidden(),
    };
    method.merge(&inputs, &Device::flex()).unwrap()
}

/// Asserts that every tensor of `want` is in the checkpoint `written` (read with [`read_all`];
/// it may hold more) within `tol`; `what` names the case in the message.
pub fn assert_written(want: &Weights, written: &HashMap<String, Vec<f32>>, tol: f32, what: &str) {
    for (name, t) in want.iter() {
        let have = written
            .get(name)
            .unwrap_or_else(|| panic!("{what}: `{name}` was not written"));
        let e = t
            .to_vec()
            .unwrap()
            .iter()
            .zip(have)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(e < tol, "{what}: {name} off by {e:.2e}");
    }
}

/// Largest absolute difference between `got` and the expected tensors (same names required).
pub fn max_abs_diff(got: &Weights, expected: &HashMap<String, Vec<f32>>) -> f32 {
    assert_eq!(got.len(), expected.len(), "tensor count");
    let mut worst = 0f32;
    for (name, t) in got.iter() {
        let want = expected
            .get(name)
            .unwrap_or_else(|| panic!("expected has no `{name}`"));
        let have = t.to_vec().unwrap();
        assert_eq!(have.len(), want.len(), "{name}: length");
        for (a, b) in have.iter().zip(want) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

/// A weight set from `(name, values)` pairs, each rank 1.
pub fn weights(device: &Device, tensors: &[(&str, &[f32])]) -> Weights {
    let mut w = Weights::new();
    for (name, values) in tensors {
        w.insert(
            *name,
            FlatTensor::from_vec(values.to_vec(), vec![values.len()], device),
        );
    }
    w
}

/// Values of one tensor.
pub fn values(w: &Weights, name: &str) -> Vec<f32> {
    w.get(name).expect("tensor").to_vec().unwrap()
}

/// Asserts element-wise closeness.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol,
            "entry {i}: got {a}, want {b} (tol {tol})"
        );
    }
}

/// The tasks of the tiny AdaMerging fixture models (`tests/fixtures/adamerging`).
pub const TASKS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Per task: ROOT/<task>/<class>/*.png with as many classes as its head, and the head file.
pub fn make_data(root: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    let heads = Checkpoint::open(fixture("adamerging/heads.safetensors")).unwrap();
    let device = Device::flex();
    let mut out = Vec::new();
    for (t, task) in TASKS.iter().enumerate() {
        let shape = heads.meta(task).unwrap().shape.clone();
        let head = Tensor::<1>::from_data(
            TensorData::new(heads.read_f32(task).unwrap(), [shape[0] * shape[1]]),
            &device,
        )
        .reshape([shape[0], shape[1]]);
        let head_file = root.join(format!("{task}.safetensors"));
        save_head(&head_file, &head).unwrap();
        let data = root.join(task);
        for class in 0..shape[0] {
            let dir = data.join(format!("class{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..4u32 {
                let (w, h) = (10 + i, 12 - i);
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let v = (x * 31 + y * 17 + i * 53 + class as u32 * 89 + t as u32 * 7) % 256;
                    image::Rgb([v as u8, (255 - v) as u8, ((v * 3) % 256) as u8])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
        out.push((task.to_string(), data, head_file));
    }
    out
}

pub fn adamerge(args: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_adamerge"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `learn` over the fixture models on `data` (from [`make_data`]) into `out`.
pub fn learn_args(data: &[(String, PathBuf, PathBuf)], out: &Path, extra: &[&str]) -> Vec<String> {
    learn_args_from(&fixture("adamerging"), data, out, extra)
}

/// `learn` over the models in `models` (laid out as `tests/fixtures/adamerging`).
pub fn learn_args_from(
    models: &Path,
    data: &[(String, PathBuf, PathBuf)],
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "learn".to_string(),
        "--pretrained".into(),
        models.join("pretrained").display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--batch-size".into(),
        "4".into(),
        "--lr".into(),
        "0.01".into(),
    ];
    for (task, dir, head) in data {
        args.push("--task".into());
        args.push(format!(
            "{task},checkpoint={},data={},head={}",
            models.join(format!("finetuned/{task}")).display(),
            dir.display(),
            head.display()
        ));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Every entry under `root` (links not followed) → a digest of its contents or link target.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            let digest = if e.path_is_symlink() {
                format!(
                    "link to {}",
                    std::fs::read_link(e.path()).unwrap().display()
                )
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                format!("{:x}", Sha256::digest(&bytes))
            };
            (e.path().strip_prefix(root).unwrap().to_path_buf(), digest)
        })
        .collect()
}

/// Copies of the fixture models under `root/models` (`pretrained`, `finetuned/<task>`).
pub fn copy_models(root: &Path) -> PathBuf {
    let models = root.join("models");
    let from = fixture("adamerging");
    for rel in [
        "pretrained",
        "finetuned/alpha",
        "finetuned/beta",
        "finetuned/gamma",
    ] {
        std::fs::create_dir_all(models.join(rel)).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(from.join(rel).join(f), models.join(rel).join(f)).unwrap();
        }
    }
    models
}

/// The methods of a quick experiment: weight averaging alone.
pub const AVERAGE_ONLY: &str = "[[method]]\nkind = \"weight-average\"\n";

/// An experiment over copies of the fixture models and `make_data`'s sets, with `methods`
/// (TOML `[[method]]` tables).
pub fn experiment(
    name: &str,
    models: &Path,
    data: &[(String, PathBuf, PathBuf)],
    methods: &str,
) -> String {
    let mut s = format!(
        "name = \"{name}\"\nseeds = [0]\n[model]\npretrained = \"{}\"\n",
        models.join("pretrained").display()
    );
    for (t, dir, head) in data {
        s += &format!(
            "[[task]]\nname = \"{t}\"\ncheckpoint = \"{}\"\ndata = \"{}\"\nhead = \"{}\"\n",
            models.join("finetuned").join(t).display(),
            dir.display(),
            head.display()
        );
    }
    s + methods
}

/// `merge --method METHOD` of the models in `models` (laid out as `tests/fixtures/adamerging`)
/// into `out`, then `extra`.
pub fn merge_args(models: &Path, method: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "merge".to_string(),
        "--method".into(),
        method.into(),
        "--pretrained".into(),
        models.join("pretrained").display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for t in TASKS {
        args.push("--finetuned".into());
        args.push(format!(
            "{t}={}",
            models.join("finetuned").join(t).display()
        ));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts `adamerge args` held at fault point `point` (`ADAMERGE_FAULT`'s `wait=`) with the
/// extra environment `env`, returning once it is there (stdout and stderr piped).
pub fn held_at(
    args: &[String],
    point: &str,
    hold: &Path,
    env: &[(&str, &Path)],
) -> std::process::Child {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_adamerge"));
    cmd.args(args)
        .env("ADAMERGE_FAULT", format!("{point}:wait={}", hold.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while !hold.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("ended before {point} ({status}): {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The fixture's models `tasks` (a model may come twice: its second copy is named `<t>2`).
pub fn task_vectors(tasks: &[&str], device: &Device) -> (VisionConfig, TaskVectors) {
    let pretrained = fixture("adamerging/pretrained");
    let fts: Vec<Finetuned> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| Finetuned {
            name: if tasks[..i].contains(t) {
                format!("{t}2")
            } else {
                t.to_string()
            },
            path: fixture(&format!("adamerging/finetuned/{t}")),
        })
        .collect();
    let scope = MergeScope::default();
    let f32 = VectorDtype::F32;
    let (tv, _) = TaskVectors::load(
        &pretrained,
        &fts,
        &scope,
        f32,
        device,
        &ProgressBar::hidden(),
    )
    .expect("task vectors");
    let cfg = VisionConfig::of_checkpoint(&Checkpoint::open(&pretrained).unwrap()).unwrap();
    (cfg, tv)
}

/// Task `task`'s fixture images: `batches[task][0:3]` flattened, in batches of 8.
pub fn pixels(task: &str, device: &Device) -> Vec<Tensor<4>> {
    let all = read_all(&fixture("adamerging/batches.safetensors"));
    let values = &all[task][..3 * 2 * 4 * 3 * 8 * 8];
    values
        .chunks(8 * 3 * 8 * 8)
        .map(|c| Tensor::from_data(TensorData::new(c.to_vec(), [8, 3, 8, 8]), device))
        .collect()
}

/// Largest |got − want| over the largest |want|, for one tensor.
pub fn rel(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()))
        / scale
}

/// Every tensor of a safetensors file or directory as f64 (float64 and int64 ones exactly).
pub fn read_f64(path: &Path) -> HashMap<String, Vec<f64>> {
    let ckpt = Checkpoint::open(path).expect("open");
    ckpt.names()
        .map(|n| {
            let values = match ckpt.meta(n).expect("meta").dtype {
                StoredDtype::Other(safetensors::Dtype::F64) => ckpt
                    .raw(n)
                    .expect("raw")
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                StoredDtype::Other(safetensors::Dtype::I64) => ckpt
                    .raw(n)
                    .expect("raw")
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                _ => ckpt
                    .read_f32(n)
                    .expect("read")
                    .into_iter()
                    .map(f64::from)
                    .collect(),
            };
            (n.to_string(), values)
        })
        .collect()
}

/// `merge --method METHOD --task T,checkpoint=..,data=..,head=..[,adapt=..]` for the fixture's
/// tasks over `data` (from `make_data`), `adapt` giving task alpha's adaptation folder.
pub fn merge_cli(
    method: &str,
    data: &[(String, std::path::PathBuf, std::path::PathBuf)],
    adapt: Option<&std::path::Path>,
    out: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = ["merge", "--method", method, "--pretrained"]
        .map(String::from)
        .to_vec();
    args.push(fixture("adamerging/pretrained").display().to_string());
    args.extend(["--out".to_string(), out.display().to_string()]);
    for (task, dir, head) in data {
        let mut spec = format!(
            "{task},checkpoint={},data={},head={}",
            fixture(&format!("adamerging/finetuned/{task}")).display(),
            dir.display(),
            head.display()
        );
        if let (Some(a), "alpha") = (adapt, task.as_str()) {
            spec += &format!(",adapt={}", a.display());
        }
        args.extend(["--task".to_string(), spec]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `tests/fixtures/merge/a` (θ₀ and three fine-tunes; all 40 tensors merged) as task vectors
/// held in `dtype` on `device`.
pub fn merge_set_a(dtype: VectorDtype, device: &Device) -> TaskVectors {
    let root = fixture("merge/a");
    let fts: Vec<Finetuned> = ["task1", "task2", "task3"]
        .iter()
        .map(|t| Finetuned {
            name: t.to_string(),
            path: root.join(t),
        })
        .collect();
    let (tv, plan) = TaskVectors::load(
        &root.join("pretrained"),
        &fts,
        &MergeScope::default(),
        dtype,
        device,
        &ProgressBar::hidden(),
    )
    .expect("load set a");
    assert_eq!(plan.merged.len(), 40);
    assert!(plan.carried.is_empty());
    tv
}
