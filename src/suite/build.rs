//! `adamerge suite build`: images → pretraining → heads → fine-tuning → accuracy measured from
//! the saved files → `suite.json`, all staged in a hidden directory renamed into place at the end.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use image::ImageEncoder;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::compare::{MethodScore, compare};
use super::images::{ImageKey, PRETRAINING_FACTORS, SIDE, TASKS, Task, render};
use super::recipe::{RECIPE_VERSION, Recipe, Size, SuiteSpec};
use super::tiny_clip;
use super::train::{
    ImageSet, WeightsAdam, add_probes, class_mean_head, cosine_lr, epoch_order, head_loss,
    pretraining_loss, split_batch, strip_probes,
};
use crate::cache::cache_dir;
use crate::config::VisionConfig;
use crate::data::{LabeledImages, Preprocessor};
use crate::error::{Error, Result};
use crate::eval::{EvalTask, accuracy, save_head};
use crate::output::{OutputDir, RunLock};
use crate::output::{read_json, write_json};
use crate::weights::{Weights, scalar};

/// One task of a built suite, as `suite.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteTask {
    /// Task name (folder names under `models/`, `heads/`, `data/`).
    pub name: String,
    /// Class folder names, in label order.
    pub classes: Vec<String>,
    /// Training images.
    pub train: usize,
    /// Test images.
    pub test: usize,
    /// Top-1 test accuracy of the pretrained tower with the task's head.
    pub pretrained_accuracy: f64,
    /// Top-1 test accuracy of the task's fine-tuned tower with its head.
    pub individual_accuracy: f64,
    /// ‖τ‖ / ‖θ₀‖ of the task's fine-tune.
    pub task_vector_ratio: f64,
}

/// `suite.json`: what was built, from what, and how well its models do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteInfo {
    /// The generator's recipe version.
    pub recipe_version: u32,
    /// The seed.
    pub seed: u64,
    /// The size.
    pub size: Size,
    /// Every hyper-parameter.
    pub recipe: Recipe,
    /// Version of adamerge that built it.
    pub adamerge_version: String,
    /// The tasks.
    pub tasks: Vec<SuiteTask>,
    /// Mean over tasks of the pretrained accuracy.
    pub pretrained_average: f64,
    /// Mean over tasks of the individual accuracy.
    pub individual_average: f64,
    /// The merging methods scored on the suite (what it shows).
    pub methods: Vec<MethodScore>,
    /// Wall time per stage.
    pub seconds: BTreeMap<String, f64>,
    /// SHA-256 of every file of the suite but this one, by relative path.
    pub files: BTreeMap<String, String>,
}

impl SuiteInfo {
    /// Reads `dir/suite.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        read_json(&dir.join("suite.json"))
    }

    /// A Markdown table: methods × tasks and the average, in percent.
    pub fn table(&self) -> String {
        let mut s = String::from("| method |");
        for t in &self.tasks {
            s += &format!(" {} |", t.name);
        }
        s += " **avg** |\n|---|";
        s += &"--:|".repeat(self.tasks.len() + 1);
        s += "\n";
        let mut row = |name: &str, acc: Vec<f64>, avg: f64| {
            s += &format!("| {name} |");
            for a in acc {
                s += &format!(" {:.1} |", 100.0 * a);
            }
            s += &format!(" **{:.1}** |\n", 100.0 * avg);
        };
        row(
            "pretrained",
            self.tasks.iter().map(|t| t.pretrained_accuracy).collect(),
            self.pretrained_average,
        );
        row(
            "individual",
            self.tasks.iter().map(|t| t.individual_accuracy).collect(),
            self.individual_average,
        );
        for m in &self.methods {
            row(&m.method, m.accuracy.clone(), m.average);
        }
        s
    }
}

/// Where a suite lives in the cache: `<cache>/suite/v<recipe>-<size>-seed<seed>`.
pub fn suite_dir(spec: &SuiteSpec) -> PathBuf {
    cache_dir().join("suite").join(spec.key())
}

/// Whether a built suite holds `rel` (a path relative to its root), known before it is built.
pub fn provides(rel: &str) -> bool {
    let rel = rel.trim_start_matches('/').trim_end_matches('/');
    rel == "models/pretrained"
        || TASKS.iter().any(|t| {
            [
                format!("models/{}", t.name),
                format!("heads/{}.safetensors", t.name),
                format!("data/{}", t.name),
                format!("data/{}/train", t.name),
                format!("data/{}/test", t.name),
            ]
            .contains(&rel.to_string())
        })
}

/// The cached suite of `spec`, built first when missing.
pub fn ensure(spec: &SuiteSpec, device: &Device, progress: bool) -> Result<PathBuf> {
    let dir = suite_dir(spec);
    if dir.join("suite.json").is_file() {
        return Ok(dir);
    }
    let _lock = lock(&dir)?;
    // Another process may have finished it between the look above and the lock.
    if !dir.join("suite.json").is_file() {
        build_locked(spec, &dir, false, device, progress)?;
    }
    Ok(dir)
}

/// The lock of a suite folder, held by its one builder (a file beside it, as the folder itself
/// appears only when complete).
fn lock(out: &Path) -> Result<RunLock> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    RunLock::beside(out)
}

fn bar(progress: bool, len: usize, stage: &str) -> ProgressBar {
    let pb = crate::progress::bar_if(
        progress,
        len as u64,
        "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
    );
    pb.set_prefix(stage.to_string());
    pb
}

/// Builds the suite of `spec` into `out` (refusing a non-empty `out` unless `force` and
/// adamerge wrote every file in it), one builder at a time.
pub fn build(
    spec: &SuiteSpec,
    out: &Path,
    force: bool,
    device: &Device,
    progress: bool,
) -> Result<SuiteInfo> {
    let _lock = lock(out)?;
    build_locked(spec, out, force, device, progress)
}

fn build_locked(
    spec: &SuiteSpec,
    out: &Path,
    force: bool,
    device: &Device,
    progress: bool,
) -> Result<SuiteInfo> {
    let staging = OutputDir::create(out, force)?;
    crate::fault::point("run-locked");
    let root = staging.path().to_path_buf();
    let recipe = spec.recipe();
    let tasks = TASKS;
    let cfg = tiny_clip::config(recipe.width, recipe.layers, recipe.heads);
    let mut seconds = BTreeMap::new();

    let t = Instant::now();
    let sets = generate(spec, &recipe, &tasks, &root, progress)?;
    seconds.insert("images".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let pretrained = pretrain(spec, &recipe, &cfg, &sets, device, progress)?;
    tiny_clip::save(&root.join("models/pretrained"), &cfg, &pretrained)?;
    seconds.insert("pretrain".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let heads = heads_of(&recipe, &cfg, &pretrained, &sets, &root, device)?;
    seconds.insert("heads".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let stage = Stage {
        spec,
        recipe: &recipe,
        cfg: &cfg,
        root: &root,
    };
    let finetuned = stage.finetune_all(&pretrained, &heads, &sets, progress)?;
    seconds.insert("finetune".into(), t.elapsed().as_secs_f64());
    drop(sets);

    let t = Instant::now();
    let tasks = measure(
        &cfg,
        &root,
        &tasks,
        &pretrained,
        &finetuned,
        &heads,
        &recipe,
        device,
        progress,
    )?;
    seconds.insert("evaluate".into(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let pb = bar(progress, 3 + recipe.adamerging.steps, "merges");
    let methods = compare(&root, &names, &recipe.adamerging, spec.seed, device, &pb)?;
    pb.finish_and_clear();
    seconds.insert("merges".into(), t.elapsed().as_secs_f64());

    let files = checksums(&root)?;
    let mean = |f: fn(&SuiteTask) -> f64| tasks.iter().map(f).sum::<f64>() / tasks.len() as f64;
    let info = SuiteInfo {
        recipe_version: RECIPE_VERSION,
        seed: spec.seed,
        size: spec.size,
        recipe,
        adamerge_version: env!("CARGO_PKG_VERSION").into(),
        pretrained_average: mean(|t| t.pretrained_accuracy),
        individual_average: mean(|t| t.individual_accuracy),
        tasks,
        methods,
        seconds,
        files,
    };
    write_json(&root.join("suite.json"), &info)?;
    staging.commit()?;
    Ok(info)
}

/// Each task's head (the class means of its pretrained embeddings), saved under `heads/`.
fn heads_of(
    recipe: &Recipe,
    cfg: &VisionConfig,
    pretrained: &Weights,
    sets: &[(ImageSet, ImageSet)],
    root: &Path,
    device: &Device,
) -> Result<Vec<Tensor<2>>> {
    let mut heads = Vec::new();
    for (k, task) in TASKS.iter().enumerate() {
        let head = class_mean_head(
            cfg,
            pretrained,
            &sets[k].0,
            task,
            recipe.head_shots,
            recipe.head_scale,
            device,
        )?;
        save_head(
            &root.join(format!("heads/{}.safetensors", task.name)),
            &head,
        )?;
        heads.push(head);
    }
    Ok(heads)
}

/// What every stage of a build shares.
struct Stage<'a> {
    spec: &'a SuiteSpec,
    recipe: &'a Recipe,
    cfg: &'a VisionConfig,
    root: &'a Path,
}

impl Stage<'_> {
    /// Every task's fine-tune, saved under `models/`, with ‖τ‖ / ‖θ₀‖.
    fn finetune_all(
        &self,
        pretrained: &Weights,
        heads: &[Tensor<2>],
        sets: &[(ImageSet, ImageSet)],
        progress: bool,
    ) -> Result<Vec<(Weights, f64)>> {
        let r = self.recipe;
        let steps_per_task = r.finetune_epochs * (r.train_per_task / r.batch_size);
        let pb = bar(progress, steps_per_task * TASKS.len(), "fine-tune");
        let theta0_norm = norm(pretrained)?;
        let mut finetuned = Vec::new();
        for (k, task) in TASKS.iter().enumerate() {
            pb.set_message(task.name);
            let w = finetune(
                self.spec, r, self.cfg, task, k, pretrained, &heads[k], &sets[k].0, &pb,
            )?;
            tiny_clip::save(
                &self.root.join(format!("models/{}", task.name)),
                self.cfg,
                &w,
            )?;
            let tau = w.try_map(|n, t| Ok(t.data.clone() - pretrained.require(n)?.data.clone()))?;
            finetuned.push((w, norm(&tau)? / theta0_norm));
        }
        pb.finish_and_clear();
        Ok(finetuned)
    }
}

/// Renders every task's train and test images and writes them as ImageFolder PNGs. Returns the
/// in-memory (train, test) sets.
fn generate(
    spec: &SuiteSpec,
    recipe: &Recipe,
    tasks: &[Task],
    root: &Path,
    progress: bool,
) -> Result<Vec<(ImageSet, ImageSet)>> {
    let per_task = recipe.train_per_task + recipe.test_per_task;
    let pb = bar(progress, per_task * tasks.len(), "images");
    let mut sets = Vec::new();
    for (k, task) in tasks.iter().enumerate() {
        pb.set_message(task.name);
        let classes = task.class_names();
        let mut pair = Vec::new();
        for (split, (name, n)) in [
            ("train", recipe.train_per_task),
            ("test", recipe.test_per_task),
        ]
        .into_iter()
        .enumerate()
        {
            let dir = root.join("data").join(task.name).join(name);
            for c in &classes {
                let d = dir.join(c);
                std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            }
            let samples = (0..n)
                .into_par_iter()
                .map(|index| {
                    let key = ImageKey {
                        seed: spec.seed,
                        task: k,
                        split,
                        index,
                    };
                    let sample = render(key, task.factor);
                    let path = dir
                        .join(&classes[task.label(&sample)])
                        .join(format!("{index:05}.png"));
                    write_png(&path, &sample.pixels)?;
                    pb.inc(1);
                    Ok(sample)
                })
                .collect::<Result<Vec<_>>>()?;
            pair.push(ImageSet { samples });
        }
        let test = pair.pop().expect("two splits were generated");
        let train = pair.pop().expect("two splits were generated");
        sets.push((train, test));
    }
    pb.finish_and_clear();
    Ok(sets)
}

fn write_png(path: &Path, pixels: &[u8]) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            pixels,
            SIDE as u32,
            SIDE as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Pretraining: the tower and one linear probe per factor, jointly on every factor of the union
/// of the training sets.
fn pretrain(
    spec: &SuiteSpec,
    recipe: &Recipe,
    cfg: &VisionConfig,
    sets: &[(ImageSet, ImageSet)],
    device: &Device,
    progress: bool,
) -> Result<Weights> {
    let all = ImageSet {
        samples: sets
            .iter()
            .flat_map(|(train, _)| train.samples.clone())
            .collect(),
    };
    let mut w = tiny_clip::init(cfg, spec.seed, device);
    add_probes(
        &mut w,
        &PRETRAINING_FACTORS,
        cfg.projection_dim,
        spec.seed,
        device,
    );
    let per_epoch = all.len() / recipe.batch_size;
    let total = recipe.pretrain_epochs * per_epoch;
    let pb = bar(progress, total, "pretrain");
    let mut adam = WeightsAdam::new(w.len());
    let mut s = 0;
    for epoch in 0..recipe.pretrain_epochs {
        let order = epoch_order(all.len(), spec.seed, epoch);
        let mut epoch_loss = 0.0;
        for batch in order.chunks_exact(recipe.batch_size) {
            let lr = cosine_lr(recipe.pretrain_lr, s, total);
            let shards: Vec<_> = split_batch(batch, recipe.shards)
                .into_iter()
                .map(|part| {
                    let targets: Vec<_> = PRETRAINING_FACTORS
                        .iter()
                        .map(|&f| {
                            let classes = f.num_classes();
                            let one_hot =
                                all.one_hot(classes, |s| s.labels[f as usize], part, device);
                            (f, one_hot)
                        })
                        .collect();
                    (all.pixels(part, device), targets, part.len())
                })
                .collect();
            let share = |n: usize| n as f64 / batch.len() as f64;
            let loss = adam.step(&mut w, lr, &shards, |w, (pixels, targets, n)| {
                let loss =
                    pretraining_loss(cfg, w, pixels.clone(), targets, recipe.pretrain_scale)?;
                Ok(loss.mul_scalar(share(*n)))
            })?;
            s += 1;
            pb.inc(1);
            pb.set_message(format!("loss {loss:.3}"));
            epoch_loss += loss;
        }
        if std::env::var_os("ADAMERGE_SUITE_DEBUG").is_some() {
            eprintln!(
                "pretrain epoch {epoch} loss {:.4}",
                epoch_loss / per_epoch as f64
            );
        }
    }
    pb.finish_and_clear();
    Ok(strip_probes(&w))
}

/// Fine-tunes a copy of the pretrained tower on one task with its head frozen.
#[allow(clippy::too_many_arguments)]
fn finetune(
    spec: &SuiteSpec,
    recipe: &Recipe,
    cfg: &VisionConfig,
    task: &Task,
    index: usize,
    pretrained: &Weights,
    head: &Tensor<2>,
    train: &ImageSet,
    pb: &ProgressBar,
) -> Result<Weights> {
    let mut w = pretrained.clone();
    let mut adam = WeightsAdam::new(w.len());
    let per_epoch = train.len() / recipe.batch_size;
    let total = recipe.finetune_epochs * per_epoch;
    let seed = spec.seed.wrapping_mul(1000).wrapping_add(1 + index as u64);
    let device = head.device();
    let mut s = 0;
    for epoch in 0..recipe.finetune_epochs {
        let order = epoch_order(train.len(), seed, epoch);
        for batch in order.chunks_exact(recipe.batch_size) {
            let lr = cosine_lr(recipe.finetune_lr, s, total);
            let shards: Vec<_> = split_batch(batch, recipe.shards)
                .into_iter()
                .map(|part| {
                    let pixels = train.pixels(part, &device);
                    let target = train.one_hot(task.classes, |s| task.label(s), part, &device);
                    (pixels, target, part.len())
                })
                .collect();
            let share = |n: usize| n as f64 / batch.len() as f64;
            adam.step(&mut w, lr, &shards, |w, (pixels, target, n)| {
                let loss = head_loss(cfg, w, head, pixels.clone(), target.clone())?;
                Ok(loss.mul_scalar(share(*n)))
            })?;
            s += 1;
            pb.inc(1);
        }
    }
    Ok(w)
}

/// The pretrained and each individual model's accuracy, measured from the saved test PNGs
/// through the preprocessor and heads a user's evaluation reads.
#[allow(clippy::too_many_arguments)]
fn measure(
    cfg: &VisionConfig,
    root: &Path,
    tasks: &[Task],
    pretrained: &Weights,
    finetuned: &[(Weights, f64)],
    heads: &[Tensor<2>],
    recipe: &Recipe,
    device: &Device,
    progress: bool,
) -> Result<Vec<SuiteTask>> {
    let pre = Preprocessor::from_dir(&root.join("models/pretrained"), cfg.image_size)?;
    let pb = bar(progress, 2 * tasks.len(), "evaluate");
    let hidden = ProgressBar::hidden();
    let mut out = Vec::new();
    for (k, t) in tasks.iter().enumerate() {
        pb.set_message(t.name);
        let task = EvalTask {
            name: t.name.into(),
            head: heads[k].clone(),
            data: LabeledImages::folder(&root.join(format!("data/{}/test", t.name)), None)?,
        };
        let pretrained_accuracy = accuracy(cfg, pretrained, &pre, &task, 256, device, &hidden)?;
        pb.inc(1);
        let (w, ratio) = &finetuned[k];
        let individual_accuracy = accuracy(cfg, w, &pre, &task, 256, device, &hidden)?;
        pb.inc(1);
        out.push(SuiteTask {
            name: t.name.into(),
            classes: t.class_names(),
            train: recipe.train_per_task,
            test: recipe.test_per_task,
            pretrained_accuracy,
            individual_accuracy,
            task_vector_ratio: *ratio,
        });
    }
    pb.finish_and_clear();
    Ok(out)
}

fn norm(w: &Weights) -> Result<f64> {
    let mut sum = 0.0;
    for (_, t) in w.iter() {
        sum += scalar(t.data.clone().powf_scalar(2.0).sum())?;
    }
    Ok(sum.sqrt())
}

/// SHA-256 of every file under `root`, by '/'-separated relative path.
fn checksums(root: &Path) -> Result<BTreeMap<String, String>> {
    // The staging folder's lock is the builder's, not the suite's (and holds its process id).
    let files: Vec<PathBuf> = crate::data::files_under(root)?
        .into_iter()
        .filter(|p| p.file_name().is_none_or(|n| n != crate::output::LOCK_FILE))
        .collect();
    files
        .par_iter()
        .map(|path| {
            let mut hasher = Sha256::new();
            let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
            hasher.update(&buf);
            let rel = path
                .strip_prefix(root)
                .unwrap_or(path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let digest: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Ok((rel, digest))
        })
        .collect()
}
