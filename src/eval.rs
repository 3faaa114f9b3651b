//! Evaluation: top-1 accuracy of a task head over the merged (or any) vision tower.

use burn::tensor::{Device, Tensor, TensorData};
use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::config::VisionConfig;
use crate::data::{ImageRef, LabeledImages, Preprocessor};
use crate::device::{side_by_side, waves};
use crate::error::{Error, Result};
use crate::model::{VisionTower, logits};
use crate::weights::{Weights, int_vec};

/// A task to score: its head and its labelled images.
pub struct EvalTask {
    /// Task name.
    pub name: String,
    /// Head [classes, projection] (already scaled).
    pub head: Tensor<2>,
    /// Labelled test images.
    pub data: LabeledImages,
}

/// Decodes and preprocesses images in parallel into a batch [B, 3, H, W].
pub fn load_batch(images: &[&ImageRef], pre: &Preprocessor, device: &Device) -> Result<Tensor<4>> {
    let pixels = images
        .par_iter()
        .map(|p| p.pixels(pre))
        .collect::<Result<Vec<_>>>()?;
    let (h, w) = pre.crop;
    let flat: Vec<f32> = pixels.into_iter().flatten().collect();
    Ok(Tensor::from_data(
        TensorData::new(flat, [images.len(), 3, h, w]),
        device,
    ))
}

/// Labelled data to score merged weights on (while learning: never seen by the learner).
pub struct EvalSet<'a> {
    /// The vision config.
    pub cfg: &'a VisionConfig,
    /// Tasks with heads and labelled images, in the learner's task order.
    pub tasks: &'a [EvalTask],
    /// Image preprocessing.
    pub pre: &'a Preprocessor,
    /// Score every this many steps (besides the start and the end); 0: only those two.
    pub every: usize,
    /// Images per evaluation batch.
    pub batch_size: usize,
    /// Where to compute.
    pub device: &'a Device,
}

impl EvalSet<'_> {
    /// Top-1 accuracy of every task with the vision tower `w`. On the CPU tasks are scored side
    /// by side ([`side_by_side`]), each task's batches in turn: a small tower's operations are
    /// too small for the backend to split, and each task's count is the same whichever thread
    /// computes it.
    pub fn score(&self, w: &crate::weights::Weights) -> Result<Vec<f64>> {
        let batches = Batches {
            size: self.batch_size,
            side_by_side: 1,
        };
        waves(self.tasks, side_by_side(self.device), |t| {
            accuracy_in(
                self.cfg,
                w,
                self.pre,
                t,
                batches,
                self.device,
                &ProgressBar::hidden(),
            )
        })
    }
}

/// Fails, naming the task, when a head's width is not the model's projection width.
pub fn check_head_width(cfg: &VisionConfig, task: &str, head: &Tensor<2>) -> Result<()> {
    let [_, width] = head.dims();
    if width != cfg.projection_dim {
        return Err(Error::invalid(
            format!("task `{task}`"),
            format!(
                "the head has width {width} but the model projects to {}",
                cfg.projection_dim
            ),
        ));
    }
    Ok(())
}

/// Top-1 accuracy of `task.head` on `task.data` with the vision tower `w`. On the CPU batches
/// go side by side ([`side_by_side`]): the backend runs its element-wise operations on one core,
/// so a second batch keeps the other busy; each batch is the same whichever thread runs it, so
/// the count is too.
pub fn accuracy(
    cfg: &VisionConfig,
    w: &Weights,
    pre: &Preprocessor,
    task: &EvalTask,
    batch_size: usize,
    device: &Device,
    progress: &ProgressBar,
) -> Result<f64> {
    let batches = Batches {
        size: batch_size,
        side_by_side: side_by_side(device),
    };
    accuracy_in(cfg, w, pre, task, batches, device, progress)
}

/// How a task's images are cut into batches and how many of them run at once.
#[derive(Clone, Copy)]
struct Batches {
    size: usize,
    side_by_side: usize,
}

fn accuracy_in(
    cfg: &VisionConfig,
    w: &Weights,
    pre: &Preprocessor,
    task: &EvalTask,
    batches: Batches,
    device: &Device,
    progress: &ProgressBar,
) -> Result<f64> {
    check_head_width(cfg, &task.name, &task.head)?;
    let [classes, _] = task.head.dims();
    if classes != task.data.classes.len() {
        return Err(Error::invalid(
            format!("task `{}`", task.name),
            format!(
                "the head has {classes} classes but {} has {} classes",
                task.data.root.display(),
                task.data.classes.len()
            ),
        ));
    }
    let tower = VisionTower::new(cfg, w)?;
    let chunks: Vec<_> = task.data.items.chunks(batches.size.max(1)).collect();
    let counts = waves(&chunks, batches.side_by_side, |chunk| {
        let images: Vec<&ImageRef> = chunk.iter().map(|(p, _)| p).collect();
        let pixels = load_batch(&images, pre, device)?;
        let embeds = tower.image_embeds(pixels)?;
        let predicted = int_vec(
            logits(embeds, task.head.clone())
                .argmax(1)
                .reshape([chunk.len()]),
        )?;
        progress.inc(chunk.len() as u64);
        Ok(predicted
            .iter()
            .zip(chunk.iter())
            .filter(|(p, (_, label))| **p == *label as i64)
            .count())
    })?;
    let correct: usize = counts.iter().sum();
    Ok(correct as f64 / task.data.items.len().max(1) as f64)
}

/// Where a task's head comes from.
pub enum HeadSource<'a> {
    /// A safetensors file with `weight` [C, P].
    File(&'a std::path::Path),
    /// Zero-shot from a CLIP text tower; cached under `cache` (a directory) when given,
    /// keyed by `model_key`, the class names and the templates.
    ZeroShot {
        /// Directory for cached heads, and the key of the text tower's checkpoint.
        cache: Option<(&'a std::path::Path, u64)>,
        /// Text config.
        cfg: &'a crate::config::TextConfig,
        /// Text tower weights (with `text_projection.weight` and `logit_scale`).
        weights: &'a Weights,
        /// The tokenizer.
        tokenizer: &'a crate::model::ClipTokenizer,
    },
}

impl<'a> HeadSource<'a> {
    /// A task's head: its file when given, else zero-shot from the text tower.
    pub fn for_task(
        task: &str,
        file: Option<&'a std::path::Path>,
        text: Option<&'a TextTower>,
        cache: &'a std::path::Path,
    ) -> Result<Self> {
        match (file, text) {
            (Some(file), _) => Ok(HeadSource::File(file)),
            (None, Some(tower)) => Ok(tower.heads(cache)),
            (None, None) => Err(Error::invalid(
                "--task",
                format!("`{task}` has no head (give head=FILE, or --heads-from a CLIPModel)"),
            )),
        }
    }
}

/// Builds a task: reads its labelled images (ImageFolder or Parquet, see
/// [`LabeledImages::open`]; a paper task's folder order and class names apply), optionally
/// thinned to `limit` images, and its head.
pub fn prepare_task(
    name: &str,
    data: &std::path::Path,
    head: HeadSource<'_>,
    limit: Option<usize>,
    device: &Device,
) -> Result<EvalTask> {
    let spec = crate::data::TaskClasses::builtin(name)?;
    let mut folder = LabeledImages::open(data, spec.as_ref())?;
    if let Some(n) = limit {
        folder.limit(n);
    }
    let head = match head {
        HeadSource::File(path) => crate::model::read_head(path, device)?,
        HeadSource::ZeroShot {
            cache,
            cfg,
            weights,
            tokenizer,
        } => {
            let spec = match (spec, &folder.prompt_names) {
                (Some(spec), Some(names)) => {
                    eprintln!(
                        "note: {name}: the class names stored in {} are not the task's; its \
                         zero-shot head prompts them instead",
                        data.display()
                    );
                    crate::data::TaskClasses {
                        classnames: names.clone(),
                        ..spec
                    }
                }
                (Some(spec), None) => spec,
                (None, _) => crate::data::TaskClasses::from_folders(name, &folder.classes),
            };
            let build = || {
                crate::model::zero_shot_head(
                    cfg,
                    weights,
                    tokenizer,
                    &spec.classnames,
                    &spec.templates,
                    device,
                )
            };
            match cache {
                None => build()?,
                Some((dir, key)) => {
                    let key = crate::cache::mix(key, &(&spec.classnames, &spec.templates));
                    let file = dir.join(format!("{key:016x}.safetensors"));
                    if file.is_file() {
                        crate::model::read_head(&file, device)?
                    } else {
                        let head = build()?;
                        save_head(&file, &head)?;
                        head
                    }
                }
            }
        }
    };
    Ok(EvalTask {
        name: name.to_string(),
        head,
        data: folder,
    })
}

/// Writes a head as safetensors `weight` [C, P] (temporary file, then rename).
pub fn save_head(path: &std::path::Path, head: &Tensor<2>) -> Result<()> {
    use std::borrow::Cow;

    use crate::checkpoint::{PendingTensor, StoredDtype, write_safetensors};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let [c, p] = head.dims();
    let values = crate::weights::tensor_to_vec(head.clone().reshape([c * p]))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensor = PendingTensor {
        dtype: StoredDtype::F32,
        shape: vec![c, p],
        bytes: Box::new(move || Cow::Owned(bytes.clone())),
    };
    write_safetensors(path, &[("weight".to_string(), tensor)])
}

/// A CLIP text tower loaded to build zero-shot heads.
pub struct TextTower {
    /// Its config.
    pub cfg: crate::config::TextConfig,
    /// `text_model.*`, `text_projection.weight`, `logit_scale`.
    pub weights: Weights,
    /// The directory's tokenizer.
    pub tokenizer: crate::model::ClipTokenizer,
    /// The cache key of the directory's files.
    pub key: u64,
}

impl TextTower {
    /// Loads the text tower of the `CLIPModel` in `dir`, or fails naming what is missing.
    pub fn load(dir: &std::path::Path, device: &Device) -> Result<Self> {
        use crate::checkpoint::{Checkpoint, load_weights};
        let ckpt = Checkpoint::open(dir)?;
        let path = dir.join("config.json");
        let cfg = ckpt
            .config()
            .map(|c| crate::config::TextConfig::locate(c, &path))
            .transpose()?
            .flatten()
            .ok_or_else(|| Error::Config {
                path: path.clone(),
                key: "text_config".into(),
                reason: "zero-shot heads need a CLIPModel with a text tower (or give head=FILE)"
                    .into(),
            })?;
        let weights = load_weights(&ckpt, device, |n| {
            n.starts_with("text_model.") || n == "text_projection.weight" || n == "logit_scale"
        })?;
        let tokenizer = crate::model::ClipTokenizer::from_dir(dir, cfg.max_position_embeddings)?;
        let key = crate::cache::model_key(dir)?;
        Ok(Self {
            cfg,
            weights,
            tokenizer,
            key,
        })
    }

    /// The tower of `dir` when any task (`needs`) lacks a head file; `None` otherwise, so a
    /// vision-only checkpoint serves tasks that all bring their heads.
    pub fn load_if_needed(
        mut needs: impl Iterator<Item = bool>,
        dir: &std::path::Path,
        device: &Device,
    ) -> Result<Option<Self>> {
        if needs.any(|n| n) {
            Self::load(dir, device).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Zero-shot heads from this tower, cached under `cache`.
    pub fn heads<'a>(&'a self, cache: &'a std::path::Path) -> HeadSource<'a> {
        HeadSource::ZeroShot {
            cache: Some((cache, self.key)),
            cfg: &self.cfg,
            weights: &self.weights,
            tokenizer: &self.tokenizer,
        }
    }
}

/// A task to score with `eval`: its labelled data and, optionally, its head file.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFiles {
    /// Task name (a paper task's name brings its class names and templates).
    pub name: String,
    /// Its labelled test set (ImageFolder or Parquet).
    pub data: std::path::PathBuf,
    /// Its head file; zero-shot from a text tower when absent.
    pub head: Option<std::path::PathBuf>,
}

/// One task's score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskScore {
    /// Task name.
    pub name: String,
    /// Images scored.
    pub images: usize,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
}

/// Scores the CLIP model in `model` on `tasks` (zero-shot heads from the text tower of
/// `heads_from`, default the model's own), at most `limit` images each.
pub fn evaluate(
    model: &std::path::Path,
    tasks: &[TaskFiles],
    heads_from: Option<&std::path::Path>,
    batch_size: usize,
    limit: Option<usize>,
    device: &Device,
) -> Result<Vec<TaskScore>> {
    let ckpt = crate::checkpoint::Checkpoint::open(model)?;
    let cfg = VisionConfig::of_checkpoint(&ckpt)?;
    let weights = crate::checkpoint::load_weights(&ckpt, device, |n| {
        n.starts_with("vision_model.") || n == "visual_projection.weight"
    })?;
    let pre = Preprocessor::from_dir(model, cfg.image_size)?;
    let text = TextTower::load_if_needed(
        tasks.iter().map(|t| t.head.is_none()),
        heads_from.unwrap_or(model),
        device,
    )?;
    let cache = crate::cache::cache_dir().join("heads");
    let mut prepared = Vec::new();
    for t in tasks {
        let head = HeadSource::for_task(&t.name, t.head.as_deref(), text.as_ref(), &cache)?;
        prepared.push(prepare_task(&t.name, &t.data, head, limit, device)?);
    }
    let total: usize = prepared.iter().map(|t| t.data.items.len()).sum();
    let bar = crate::progress::bar(
        total as u64,
        "{msg} [{bar:30}] {pos}/{len} images {elapsed}",
    );
    let mut scores = Vec::new();
    for task in &prepared {
        bar.set_message(task.name.clone());
        scores.push(TaskScore {
            name: task.name.clone(),
            images: task.data.items.len(),
            accuracy: accuracy(&cfg, &weights, &pre, task, batch_size, device, &bar)?,
        });
    }
    bar.finish_and_clear();
    Ok(scores)
}
