//! The command line's definitions (clap): the commands and their options. A method's
//! parameters are not written here: [`super::methods`] adds them from the method registry.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::device::Backend;
use crate::eval::TaskFiles;
use crate::method::{Method, Params};
use crate::pipeline::TaskPaths;
use crate::suite::Size;
use crate::task_vector::{Finetuned, VectorDtype};

/// A method chosen on the command line, with its checked parameters.
#[derive(Clone)]
pub struct MethodChoice {
    /// The method.
    pub method: &'static dyn Method,
    /// Its values.
    pub params: Params,
}

/// Merge fine-tuned CLIP models into one multi-task model.
#[derive(Parser)]
#[command(name = "adamerge", version, about)]
pub struct Cli {
    /// Compute backend: cpu (= flex), ndarray, or wgpu (GPU; needs the `wgpu` build feature).
    /// Default: cpu, or an experiment file's `device`.
    #[arg(long, global = true)]
    pub device: Option<Backend>,
    /// CPU threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Refuse images larger than this many pixels (width × height), read from each image's
    /// header before decoding; images decoded at once hold at most this many pixels in total.
    #[arg(long, global = true, value_name = "N", default_value_t = crate::data::DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Merge fine-tuned checkpoints with a method of the registry and save a Hugging Face
    /// checkpoint.
    Merge(MergeArgs),
    /// List a checkpoint's tensors, or diagnose the task vectors of fine-tuned checkpoints.
    Inspect(InspectArgs),
    /// Top-1 accuracy of a CLIP model on ImageFolder or Parquet tasks, with zero-shot or given heads.
    Eval(EvalArgs),
    /// Learn merge coefficients by entropy minimisation (AdaMerging, AdaMerging++, AdaRank).
    Learn(LearnArgs),
    /// The built-in small suite: 8 procedural tasks, a tiny CLIP and its fine-tunes.
    #[command(subcommand)]
    Suite(SuiteCommand),
    /// Run an experiment file: every fixed and learned method side by side, with logs, tables
    /// and plots in runs/<experiment>/<timestamp>/.
    Run(RunArgs),
    /// Rebuild the table and plots of a run from its files; two runs are compared side by side.
    Report(ReportArgs),
}

/// How the task vectors are held.
#[derive(Args, Clone, Copy)]
pub struct Storage {
    /// Hold the task vectors in bf16 (CPU) or f16 (wgpu): half their memory, computed in f32.
    /// Default f32 (for `run`: the file's `tau_dtype`, else f32).
    #[arg(long, value_name = "f32|bf16|f16")]
    pub tau_dtype: Option<VectorDtype>,
}

#[derive(Args)]
pub struct RunArgs {
    /// The experiment file (TOML), e.g. experiments/suite.toml.
    #[arg(required_unless_present = "resume")]
    pub file: Option<PathBuf>,
    /// Check the file without running anything: keys, values, and every path of every seed
    /// (variables set, files present); every problem is listed.
    #[arg(long, conflicts_with = "resume")]
    pub check: bool,
    /// Continue an interrupted run in its directory.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Where run directories go.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Read at most N images per task, for scoring and adaptation alike: a quick end-to-end
    /// check of a file, not a measurement (recorded in the run's config.toml).
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    pub limit: Option<NonZeroUsize>,
    /// Run every learned method for N Adam steps instead of the file's.
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    pub steps: Option<NonZeroUsize>,
    /// The task vectors' type, in place of the file's `tau_dtype` (new runs only).
    #[command(flatten)]
    pub storage: Storage,
}

#[derive(Args)]
pub struct ReportArgs {
    /// A run directory (holding results.json).
    pub run: PathBuf,
    /// A second run to compare with, column by column.
    pub other: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum SuiteCommand {
    /// Generate the suite (images, pretraining, heads, fine-tuning) and measure its models.
    Build(SuiteBuildArgs),
    /// Print where the suite of a seed and size is cached (building nothing).
    Path(SuiteIdArgs),
}

#[derive(Args)]
pub struct SuiteIdArgs {
    /// Seed of the images, initialisation and batch orders.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// full (the README's suite) or tiny (tests).
    #[arg(long, default_value = "full")]
    pub size: Size,
}

#[derive(Args)]
pub struct SuiteBuildArgs {
    #[command(flatten)]
    pub id: SuiteIdArgs,
    /// Where to write it (default: the cache, `adamerge suite path`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rebuild even if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `learn`: the job's own options; the method's parameters (`--steps`, `--lr`, …) are added
/// from the method registry.
#[derive(Args)]
pub struct LearnArgs {
    /// The learned method (see the registry; default adamerging).
    #[arg(long, default_value = "adamerging")]
    pub method: String,
    /// Pretrained checkpoint (Hugging Face CLIP directory).
    #[arg(long)]
    pub pretrained: PathBuf,
    /// A task as NAME,checkpoint=DIR,data=DIR[,head=FILE][,adapt=DIR] (repeat). data= is the
    /// labelled test set (ImageFolder or Parquet); adapt= unlabeled images to learn on instead.
    #[arg(long = "task", value_parser = parse_learn_task, required = true)]
    pub tasks: Vec<TaskPaths>,
    /// Build zero-shot heads with this CLIPModel's text tower (default: the pretrained one).
    #[arg(long)]
    pub heads_from: Option<PathBuf>,
    /// Seed of the batch sampling (and of the adaptation split).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Learn on this fraction of each test set and score on the rest (default: learn on the
    /// test images themselves, as the paper does).
    #[arg(long)]
    pub adapt_fraction: Option<f64>,
    /// Score every N steps besides the start and the end.
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Score at most N images per task.
    #[arg(long)]
    pub eval_limit: Option<NonZeroUsize>,
    /// Run directory (λ, log, checkpoint, merged model).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Do not write the merged checkpoint.
    #[arg(long)]
    pub no_merged: bool,
    /// The task vectors' type (a resumed run must use the same).
    #[command(flatten)]
    pub storage: Storage,
    /// The method and its checked parameters, read from the registry-derived flags.
    #[arg(skip)]
    pub choice: Option<MethodChoice>,
}

fn parse_learn_task(s: &str) -> std::result::Result<TaskPaths, String> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or_default().to_string();
    let (mut checkpoint, mut data, mut head, mut adapt) = (None, None, None, None);
    for p in parts {
        match p.split_once('=') {
            Some(("checkpoint", v)) => checkpoint = Some(PathBuf::from(v)),
            Some(("data", v)) => data = Some(PathBuf::from(v)),
            Some(("head", v)) => head = Some(PathBuf::from(v)),
            Some(("adapt", v)) => adapt = Some(PathBuf::from(v)),
            _ => {
                return Err(format!(
                    "`{p}`: expected checkpoint=DIR, data=DIR, head=FILE or adapt=DIR"
                ));
            }
        }
    }
    let usage = "NAME,checkpoint=DIR,data=DIR[,head=FILE][,adapt=DIR]";
    if name.is_empty() {
        return Err(format!("`{s}`: expected {usage}"));
    }
    Ok(TaskPaths {
        name,
        checkpoint: checkpoint.ok_or_else(|| format!("`{s}`: checkpoint=DIR is required"))?,
        data: data.ok_or_else(|| format!("`{s}`: data=DIR is required"))?,
        head,
        adapt,
    })
}

#[derive(Args)]
pub struct EvalArgs {
    /// The CLIP model to score (Hugging Face directory).
    #[arg(long)]
    pub model: PathBuf,
    /// A task as NAME,data=DIR[,head=FILE] (repeat). Paper task names (sun397, cars, resisc45,
    /// eurosat, svhn, gtsrb, mnist, dtd) use their class names, templates and folder order.
    #[arg(long = "task", value_parser = parse_task, required = true)]
    pub tasks: Vec<TaskFiles>,
    /// Build zero-shot heads with this CLIPModel's text tower (default: the model's own).
    #[arg(long)]
    pub heads_from: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Score at most N images per task (spread over the classes).
    #[arg(long)]
    pub limit: Option<NonZeroUsize>,
}

fn parse_task(s: &str) -> std::result::Result<TaskFiles, String> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or_default().to_string();
    let (mut data, mut head) = (None, None);
    for p in parts {
        match p.split_once('=') {
            Some(("data", v)) => data = Some(PathBuf::from(v)),
            Some(("head", v)) => head = Some(PathBuf::from(v)),
            _ => return Err(format!("`{p}`: expected data=DIR or head=FILE")),
        }
    }
    if name.is_empty() {
        return Err(format!("`{s}`: expected NAME,data=DIR[,head=FILE]"));
    }
    let data = data.ok_or_else(|| format!("`{s}`: data=DIR is required"))?;
    Ok(TaskFiles { name, data, head })
}

#[derive(Args)]
pub struct Models {
    /// Pretrained checkpoint (Hugging Face CLIP directory or .safetensors file).
    #[arg(long)]
    pub pretrained: PathBuf,
    /// A fine-tuned checkpoint as NAME=DIR (repeat for each task; NAME defaults to DIR's name).
    #[arg(long = "finetuned", value_parser = parse_finetuned, required_unless_present = "tasks", conflicts_with = "tasks")]
    pub finetuned: Vec<Finetuned>,
}

/// `merge`: the inputs and the output; the method's parameters (`--lambda`, `--k`, …) are
/// added from the method registry.
#[derive(Args)]
pub struct MergeArgs {
    /// The method (any of the registry's; a learned one applies the coefficients of
    /// --lambda-file).
    #[arg(long)]
    pub method: String,
    /// A learned method: the `lambda.json` a `learn` run wrote.
    #[arg(long)]
    pub lambda_file: Option<PathBuf>,
    /// The checkpoints.
    #[command(flatten)]
    pub models: Models,
    /// A task as NAME,checkpoint=DIR,data=DIR[,head=FILE][,adapt=DIR] (repeat), in place of
    /// --finetuned: data-based methods (fisher, regmean, regmean++) read unlabeled images from
    /// adapt=, else from data= (labels unused); fisher predicts through head= (else a zero-shot
    /// head from the pretrained CLIPModel's text tower), the others read no head.
    #[arg(long = "task", value_parser = parse_learn_task)]
    pub tasks: Vec<TaskPaths>,
    /// Output directory (written whole or not at all; never one of the inputs or a folder
    /// holding or inside one).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an output directory that an earlier `merge` wrote (refused when any file in it
    /// was not written by adamerge).
    #[arg(long)]
    pub force: bool,
    /// The task vectors' type.
    #[command(flatten)]
    pub storage: Storage,
    /// The method and its checked parameters, read from the registry-derived flags.
    #[arg(skip)]
    pub choice: Option<MethodChoice>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// A checkpoint to list.
    pub dir: Option<PathBuf>,
    /// Pretrained checkpoint, for task-vector diagnostics.
    #[arg(long, requires = "finetuned")]
    pub pretrained: Option<PathBuf>,
    /// Fine-tuned checkpoints as NAME=DIR, for task-vector diagnostics.
    #[arg(long = "finetuned", value_parser = parse_finetuned, requires = "pretrained")]
    pub finetuned: Vec<Finetuned>,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

fn parse_finetuned(s: &str) -> std::result::Result<Finetuned, String> {
    let (name, path) = match s.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let path = PathBuf::from(s);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| format!("`{s}`: give NAME=DIR"))?;
            (name, path)
        }
    };
    if name.is_empty() || path.as_os_str().is_empty() {
        return Err(format!("`{s}`: expected NAME=DIR"));
    }
    Ok(Finetuned { name, path })
}
