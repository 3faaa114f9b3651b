//! One loader for every command that merges and scores (`learn`, `run`, the suite's own
//! comparison): the pretrained checkpoint with its config and preprocessing, the fine-tuned
//! checkpoints as task vectors, each task's head (a file, or zero-shot from a text tower) and
//! labelled test data, and the unlabeled images learned methods adapt on.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::config::VisionConfig;
use crate::data::{Preprocessor, UnlabeledImages, split_for_adaptation};
use crate::data_merge::{DataInputs, DataMerge};
use crate::error::Result;
use crate::eval::{EvalTask, HeadSource, TextTower, prepare_task};
use crate::output::Inputs;
use crate::results::ImagesUsed;
use crate::task_vector::{Finetuned, MergeScope, TaskVectors, VectorDtype};

/// One task's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPaths {
    /// Task name.
    pub name: String,
    /// Its fine-tuned checkpoint.
    pub checkpoint: PathBuf,
    /// Its labelled test set (ImageFolder or Parquet).
    pub data: PathBuf,
    /// Its head file; zero-shot from the text tower when absent.
    pub head: Option<PathBuf>,
    /// A separate unlabeled folder to adapt on (instead of the test set).
    pub adapt: Option<PathBuf>,
}

impl TaskPaths {
    /// The task's fine-tuned checkpoint, named by the task.
    pub fn finetuned(&self) -> Finetuned {
        Finetuned {
            name: self.name.clone(),
            path: self.checkpoint.clone(),
        }
    }
}

/// Where learned methods' unlabeled images come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Adaptation {
    /// The test images themselves, as the paper does (transductive); or each task's `adapt`
    /// folder where one is given.
    Transductive,
    /// A seeded fraction of each test set; accuracy is scored on the rest (inductive).
    Split(f64),
}

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadSpec<'a> {
    /// The pretrained checkpoint.
    pub pretrained: &'a Path,
    /// The tasks, in order.
    pub tasks: &'a [TaskPaths],
    /// A CLIPModel whose text tower builds zero-shot heads (default: the pretrained one).
    pub heads_from: Option<&'a Path>,
    /// Where adaptation images come from.
    pub adaptation: Adaptation,
    /// Seed of the adaptation split.
    pub seed: u64,
    /// Read at most this many images per task (scoring and adaptation alike).
    pub limit: Option<usize>,
    /// Score at most this many images per task.
    pub eval_limit: Option<usize>,
    /// The type the task vectors are held in.
    pub tau_dtype: VectorDtype,
}

impl LoadSpec<'_> {
    /// Every path it reads, with what it is: what outputs are kept apart from.
    pub fn inputs(&self) -> Inputs {
        let mut inputs = Inputs::new();
        inputs.add("the pretrained checkpoint", self.pretrained);
        if let Some(dir) = self.heads_from {
            inputs.add("the text tower (--heads-from)", dir);
        }
        for t in self.tasks {
            let n = &t.name;
            inputs.add(format!("task `{n}`'s checkpoint"), &t.checkpoint);
            inputs.add(format!("task `{n}`'s data"), &t.data);
            if let Some(head) = &t.head {
                inputs.add(format!("task `{n}`'s head"), head);
            }
            if let Some(adapt) = &t.adapt {
                inputs.add(format!("task `{n}`'s adaptation images"), adapt);
            }
        }
        inputs
    }
}

/// Everything loaded.
pub struct Loaded {
    /// The pretrained checkpoint's path.
    pub pretrained: PathBuf,
    /// Its vision config.
    pub cfg: VisionConfig,
    /// Its preprocessing.
    pub pre: Preprocessor,
    /// θ₀ and the task vectors.
    pub tv: TaskVectors,
    /// Each task's head and labelled (scored) images.
    pub eval_tasks: Vec<EvalTask>,
    /// Each task's unlabeled adaptation images.
    pub adapt: Vec<UnlabeledImages>,
}

impl Loaded {
    /// The heads, in task order.
    pub fn heads(&self) -> Vec<Tensor<2>> {
        self.eval_tasks.iter().map(|t| t.head.clone()).collect()
    }
}

/// Loads `spec` on `device`; `progress` shows the checkpoint loading.
pub fn load(spec: &LoadSpec<'_>, device: &Device, progress: &ProgressBar) -> Result<Loaded> {
    let finetuned: Vec<Finetuned> = spec.tasks.iter().map(TaskPaths::finetuned).collect();
    let (tv, _) = TaskVectors::load(
        spec.pretrained,
        &finetuned,
        &MergeScope::default(),
        spec.tau_dtype,
        device,
        progress,
    )?;
    progress.finish_and_clear();
    let cfg = VisionConfig::of_checkpoint(&Checkpoint::open(spec.pretrained)?)?;
    let pre = Preprocessor::from_dir(spec.pretrained, cfg.image_size)?;
    let text = TextTower::load_if_needed(
        spec.tasks.iter().map(|t| t.head.is_none()),
        spec.heads_from.unwrap_or(spec.pretrained),
        device,
    )?;
    let (eval_tasks, adapt) = tasks(spec, text.as_ref(), device)?;
    Ok(Loaded {
        pretrained: spec.pretrained.to_path_buf(),
        cfg,
        pre,
        tv,
        eval_tasks,
        adapt,
    })
}

/// Every task's head and labelled test data, and the unlabeled images it adapts on (its
/// `adapt` folder, its test images, or a seeded fraction of them that is then not scored).
fn tasks(
    spec: &LoadSpec<'_>,
    text: Option<&TextTower>,
    device: &Device,
) -> Result<(Vec<EvalTask>, Vec<UnlabeledImages>)> {
    let cache = crate::cache::cache_dir().join("heads");
    let mut eval_tasks = Vec::new();
    let mut adapt_sets = Vec::new();
    for (i, t) in spec.tasks.iter().enumerate() {
        let head = HeadSource::for_task(&t.name, t.head.as_deref(), text, &cache)?;
        let mut task = prepare_task(&t.name, &t.data, head, spec.limit, device)?;
        let adapt = match (spec.adaptation, &t.adapt) {
            (_, Some(dir)) => UnlabeledImages::scan(dir)?,
            (Adaptation::Transductive, None) => UnlabeledImages::from_labeled(&task.data),
            (Adaptation::Split(f), None) => {
                // A different permutation per task, all from the run's seed.
                let seed = spec.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let (adapt, scored) = split_for_adaptation(&task.data, f, seed)?;
                task.data = scored;
                adapt
            }
        };
        if let Some(n) = spec.eval_limit {
            task.data.limit(n);
        }
        eval_tasks.push(task);
        adapt_sets.push(adapt);
    }
    Ok((eval_tasks, adapt_sets))
}

/// What a merge into a folder did.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    /// The method's label.
    pub label: String,
    /// Its paper.
    pub paper: String,
    /// Tensors merged.
    pub merged: usize,
    /// Tensors copied from the pretrained checkpoint.
    pub carried: usize,
    /// Parameters merged.
    pub params: usize,
    /// Fine-tuned checkpoints.
    pub tasks: usize,
    /// Seconds loading, merging and writing.
    pub seconds: (f64, f64, f64),
    /// The folder written.
    pub out: PathBuf,
    /// The unlabeled images a data-based merge read, per task (none for the others).
    pub images: Vec<ImagesUsed>,
}

/// Which of each task's images a data-based merge drawing `take` per task read, and from where.
pub fn images_used(
    tasks: &[TaskPaths],
    sets: &[UnlabeledImages],
    take: usize,
    adaptation: Adaptation,
) -> Vec<ImagesUsed> {
    tasks
        .iter()
        .zip(sets)
        .map(|(t, set)| ImagesUsed {
            task: t.name.clone(),
            count: take.min(set.len()),
            of: set.len(),
            from: match (&t.adapt, adaptation) {
                (Some(_), _) => "adapt",
                (None, Adaptation::Transductive) => "test",
                (None, Adaptation::Split(_)) => "test-split",
            }
            .to_string(),
        })
        .collect()
}

/// Where a merge is written.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The checkpoint folder to create.
    pub dir: &'a Path,
    /// Replace a folder adamerge wrote before.
    pub force: bool,
}

/// Merges `finetuned` over `pretrained` with `method` (task vectors held in `tau_dtype`) and
/// streams the result into `out`, each tensor merged when the writer reaches it, so the merged
/// model is never held whole beside the task vectors.
pub fn merge_to_dir(
    method: &dyn crate::merge::MergeMethod,
    pretrained: &Path,
    finetuned: &[Finetuned],
    tau_dtype: VectorDtype,
    out: Destination<'_>,
    device: &Device,
    progress: &ProgressBar,
) -> Result<MergeSummary> {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let (tv, plan) = TaskVectors::load(
        pretrained,
        finetuned,
        &MergeScope::default(),
        tau_dtype,
        device,
        progress,
    )?;
    progress.finish_and_clear();
    let loaded = start.elapsed();
    let merger = method.prepare(&tv)?;
    let merging = Cell::new(start.elapsed() - loaded);
    let shapes = tv
        .theta0()
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape.clone()))
        .collect();
    let replacement = crate::checkpoint::Replacement::new(shapes, |name| {
        let t = Instant::now();
        let values = crate::weights::tensor_to_vec(merger.tensor(name)?)?;
        merging.set(merging.get() + t.elapsed());
        Ok(values)
    });
    let out = crate::checkpoint::save_merged(pretrained, &replacement, out.dir, out.force)?;
    let total = start.elapsed();
    let merge: Duration = merging.get();
    Ok(MergeSummary {
        label: method.label(),
        paper: method.reference().to_string(),
        merged: plan.merged.len(),
        carried: plan.carried.len(),
        params: tv.theta0().num_params(),
        tasks: finetuned.len(),
        seconds: (
            loaded.as_secs_f64(),
            merge.as_secs_f64(),
            (total - loaded - merge).as_secs_f64(),
        ),
        out,
        images: Vec::new(),
    })
}

/// Merges the tasks' checkpoints over `pretrained` with a data-based `method`, from each task's
/// unlabeled images (its `adapt` folder, else the images of its `data`; labels are not read)
/// and, for a method that predicts, its head (its `head` file, else zero-shot from the
/// pretrained checkpoint's text tower), and writes the result into `out`. The images are drawn
/// with the method's seed, else 0. `progress` shows the loading; a bar like it (hidden when it
/// is) then shows the merge.
pub fn data_merge_to_dir(
    method: &dyn DataMerge,
    pretrained: &Path,
    tasks: &[TaskPaths],
    tau_dtype: VectorDtype,
    out: Destination<'_>,
    device: &Device,
    progress: &ProgressBar,
) -> Result<MergeSummary> {
    use std::time::Instant;
    let start = Instant::now();
    let finetuned: Vec<Finetuned> = tasks.iter().map(TaskPaths::finetuned).collect();
    // Heads and image folders first: a missing text tower or folder fails before the
    // checkpoints load.
    let heads = if method.needs_heads() {
        heads_of(pretrained, tasks, device)?
    } else {
        Vec::new()
    };
    let images = tasks
        .iter()
        .map(|t| UnlabeledImages::scan(t.adapt.as_deref().unwrap_or(&t.data)))
        .collect::<Result<Vec<_>>>()?;
    let (tv, plan) = TaskVectors::load(
        pretrained,
        &finetuned,
        &MergeScope::default(),
        tau_dtype,
        device,
        progress,
    )?;
    progress.finish_and_clear();
    let cfg = VisionConfig::of_checkpoint(&Checkpoint::open(pretrained)?)?;
    let pre = Preprocessor::from_dir(pretrained, cfg.image_size)?;
    let loaded = start.elapsed();
    let merge_bar = crate::progress::bar_if(
        !progress.is_hidden(),
        0,
        "{msg} [{bar:30}] {pos}/{len} {elapsed}",
    )
    .with_message(method.label());
    let inputs = DataInputs {
        cfg: &cfg,
        pre: &pre,
        tv: &tv,
        images: &images,
        heads: &heads,
        seed: 0,
        progress: &merge_bar,
    };
    let merged = method.merge(&inputs, device)?;
    merge_bar.finish_and_clear();
    let merging = start.elapsed() - loaded;
    let out = crate::checkpoint::save_merged(
        pretrained,
        &crate::checkpoint::Replacement::from_weights(&merged),
        out.dir,
        out.force,
    )?;
    let total = start.elapsed();
    Ok(MergeSummary {
        label: method.label(),
        paper: method.paper().to_string(),
        merged: plan.merged.len(),
        carried: plan.carried.len(),
        params: tv.theta0().num_params(),
        tasks: tasks.len(),
        seconds: (
            loaded.as_secs_f64(),
            merging.as_secs_f64(),
            (total - loaded - merging).as_secs_f64(),
        ),
        out,
        images: images_used(tasks, &images, method.images(), Adaptation::Transductive),
    })
}

/// Each task's head: its file, else zero-shot from the text tower of `pretrained` (class names
/// from its data folder or the paper task's list).
fn heads_of(pretrained: &Path, tasks: &[TaskPaths], device: &Device) -> Result<Vec<Tensor<2>>> {
    let text =
        TextTower::load_if_needed(tasks.iter().map(|t| t.head.is_none()), pretrained, device)?;
    let cache = crate::cache::cache_dir().join("heads");
    tasks
        .iter()
        .map(|t| {
            let head = HeadSource::for_task(&t.name, t.head.as_deref(), text.as_ref(), &cache)?;
            Ok(prepare_task(&t.name, &t.data, head, None, device)?.head)
        })
        .collect()
}
