//! The `adamerge` command line: parse, call the library, print.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use std::sync::atomic::{AtomicBool, Ordering};

use adamerge::adamerging::{
    Adaptation, Granularity, Job, JobTask, LearnConfig, LearnedLambda, Outcome, report_markdown,
    run_job,
};
use adamerge::cache::cache_dir;
use adamerge::checkpoint::{Checkpoint, Replacement, load_weights, save_merged};
use adamerge::config::VisionConfig;
use adamerge::data::Preprocessor;
use adamerge::device::{Backend, init_threads};
use adamerge::diagnostics::TaskVectorReport;
use adamerge::eval::{HeadSource, TextTower, accuracy, prepare_task};
use adamerge::experiment::runner::{
    RunEnd, RunOptions, check as check_experiment, resume as resume_experiment, run as run_file,
};
use adamerge::experiment::{Experiment, Results};
use adamerge::merge::{Aggregate, FixedKind, MergeMethod, MethodSpec, TrimScope};
use adamerge::output::{Inputs, OutputDir};
use adamerge::report::table::{compare_runs, markdown};
use adamerge::report::write_report;
use adamerge::suite::{Size, SuiteInfo, SuiteSpec, build as build_suite, suite_dir};
use adamerge::task_vector::{Finetuned, LayeringKind, MergeScope, TaskVectors};
use adamerge::weights::tensor_to_vec;
use adamerge::{Error, Result};

/// Merges allocate and free multi-megabyte buffers at a high rate. glibc serves those with
/// mmap and trims freed heap back to the kernel, so every buffer is faulted in again (over half
/// the time of a TIES merge); keeping them on the heap for reuse halves that without raising the
/// peak. (mimalloc was tried: faster TIES, but slower loading and a higher peak.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Merge fine-tuned CLIP models into one multi-task model.
#[derive(Parser)]
#[command(name = "adamerge", version, about)]
struct Cli {
    /// Compute backend: cpu (= flex), ndarray, or wgpu (GPU; needs the `wgpu` build feature).
    /// Default: cpu, or an experiment file's `device`.
    #[arg(long, global = true)]
    device: Option<Backend>,
    /// CPU threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Refuse images larger than this many pixels (width × height), read from each image's
    /// header before decoding; images decoded at once hold at most this many pixels in total.
    #[arg(long, global = true, value_name = "N", default_value_t = adamerge::data::DEFAULT_MAX_IMAGE_PIXELS)]
    max_image_pixels: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Merge fine-tuned checkpoints with a fixed method and save a Hugging Face checkpoint.
    Merge(MergeArgs),
    /// List a checkpoint's tensors, or diagnose the task vectors of fine-tuned checkpoints.
    Inspect(InspectArgs),
    /// Top-1 accuracy of a CLIP model on ImageFolder or Parquet tasks, with zero-shot or given heads.
    Eval(EvalArgs),
    /// Learn merge coefficients by entropy minimisation (AdaMerging, AdaMerging++).
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

#[derive(Args)]
struct RunArgs {
    /// The experiment file (TOML), e.g. experiments/suite.toml.
    #[arg(required_unless_present = "resume")]
    file: Option<PathBuf>,
    /// Check the file without running anything: keys, values, and every path of every seed
    /// (variables set, files present); every problem is listed.
    #[arg(long, conflicts_with = "resume")]
    check: bool,
    /// Continue an interrupted run in its directory.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Where run directories go.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Read at most N images per task, for scoring and adaptation alike: a quick end-to-end
    /// check of a file, not a measurement (recorded in the run's config.toml).
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    limit: Option<std::num::NonZeroUsize>,
    /// Run every learned method for N Adam steps instead of the file's.
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    steps: Option<std::num::NonZeroUsize>,
}

#[derive(Args)]
struct ReportArgs {
    /// A run directory (holding results.json).
    run: PathBuf,
    /// A second run to compare with, column by column.
    other: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SuiteCommand {
    /// Generate the suite (images, pretraining, heads, fine-tuning) and measure its models.
    Build(SuiteBuildArgs),
    /// Print where the suite of a seed and size is cached (building nothing).
    Path(SuiteIdArgs),
}

#[derive(Args)]
struct SuiteIdArgs {
    /// Seed of the images, initialisation and batch orders.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// full (the README's suite) or tiny (tests).
    #[arg(long, default_value = "full")]
    size: Size,
}

#[derive(Args)]
struct SuiteBuildArgs {
    #[command(flatten)]
    id: SuiteIdArgs,
    /// Where to write it (default: the cache, `adamerge suite path`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rebuild even if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct LearnArgs {
    /// task (one λ per task) or layer (one per task and unit).
    #[arg(long, default_value = "layer")]
    granularity: Granularity,
    /// Units for layer granularity: paper (open_clip tensors, q/k/v fused), tensor or block.
    #[arg(long, default_value = "paper")]
    layering: LayeringKind,
    /// AdaMerging++: learn over TIES-processed task vectors keeping this fraction (e.g. 0.2).
    #[arg(long)]
    ties_k: Option<f64>,
    /// Pretrained checkpoint (Hugging Face CLIP directory).
    #[arg(long)]
    pretrained: PathBuf,
    /// A task as NAME,checkpoint=DIR,data=DIR[,head=FILE][,adapt=DIR] (repeat). data= is the
    /// labelled test set (ImageFolder or Parquet); adapt= unlabeled images to learn on instead.
    #[arg(long = "task", value_parser = parse_learn_task, required = true)]
    tasks: Vec<JobTask>,
    /// Build zero-shot heads with this CLIPModel's text tower (default: the pretrained one).
    #[arg(long)]
    heads_from: Option<PathBuf>,
    /// Adam steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Initial λ.
    #[arg(long, default_value_t = 0.3)]
    init: f64,
    /// Do not clamp λ to [0, 1] in the forward.
    #[arg(long)]
    no_clamp: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Batches per task per step (the official code reads 2).
    #[arg(long, default_value_t = 1)]
    batches_per_task: usize,
    /// Seed of the batch sampling (and of the adaptation split).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Learn on this fraction of each test set and score on the rest (default: learn on the
    /// test images themselves, as the paper does).
    #[arg(long)]
    adapt_fraction: Option<f64>,
    /// Score every N steps besides the start and the end.
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Score at most N images per task.
    #[arg(long)]
    eval_limit: Option<std::num::NonZeroUsize>,
    /// Run directory (λ, log, checkpoint, merged model).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Do not write the merged checkpoint.
    #[arg(long)]
    no_merged: bool,
}

fn parse_learn_task(s: &str) -> std::result::Result<JobTask, String> {
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
    Ok(JobTask {
        name,
        checkpoint: checkpoint.ok_or_else(|| format!("`{s}`: checkpoint=DIR is required"))?,
        data: data.ok_or_else(|| format!("`{s}`: data=DIR is required"))?,
        head,
        adapt,
    })
}

#[derive(Args)]
struct EvalArgs {
    /// The CLIP model to score (Hugging Face directory).
    #[arg(long)]
    model: PathBuf,
    /// A task as NAME,data=DIR[,head=FILE] (repeat). Paper task names (sun397, cars, resisc45,
    /// eurosat, svhn, gtsrb, mnist, dtd) use their class names, templates and folder order.
    #[arg(long = "task", value_parser = parse_task, required = true)]
    tasks: Vec<TaskArg>,
    /// Build zero-shot heads with this CLIPModel's text tower (default: the model's own).
    #[arg(long)]
    heads_from: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Score at most N images per task (spread over the classes).
    #[arg(long)]
    limit: Option<std::num::NonZeroUsize>,
}

#[derive(Clone)]
struct TaskArg {
    name: String,
    data: PathBuf,
    head: Option<PathBuf>,
}

fn parse_task(s: &str) -> std::result::Result<TaskArg, String> {
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
    Ok(TaskArg { name, data, head })
}

#[derive(Args)]
struct Models {
    /// Pretrained checkpoint (Hugging Face CLIP directory or .safetensors file).
    #[arg(long)]
    pretrained: PathBuf,
    /// A fine-tuned checkpoint as NAME=DIR (repeat for each task; NAME defaults to DIR's name).
    #[arg(long = "finetuned", value_parser = parse_finetuned, required = true)]
    finetuned: Vec<Finetuned>,
}

#[derive(Args)]
struct MergeArgs {
    /// weight-average, task-arithmetic, ties, dare, or adamerging (with --lambda-file).
    #[arg(long)]
    method: MethodArg,
    /// adamerging: the `lambda.json` a `learn` run wrote.
    #[arg(long)]
    lambda_file: Option<PathBuf>,
    #[command(flatten)]
    models: Models,
    /// Scale λ of the merged task vector (task-arithmetic 0.3; ties 1 with mean, 0.3 with sum).
    #[arg(long)]
    lambda: Option<f64>,
    /// TIES: fraction of each task vector kept by magnitude (default 0.2).
    #[arg(long)]
    k: Option<f64>,
    /// TIES: mean or sum of the sign-agreeing entries (default mean).
    #[arg(long)]
    aggregate: Option<Aggregate>,
    /// TIES: top-k threshold over the whole task vector (global) or per tensor.
    #[arg(long)]
    trim: Option<TrimScope>,
    /// DARE: drop probability (default 0.5).
    #[arg(long)]
    p: Option<f64>,
    /// DARE: mask seed (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// DARE: the merge applied after dropping, task-arithmetic or ties.
    #[arg(long)]
    dare_base: Option<FixedKind>,
    /// Output directory (written whole or not at all; never one of the inputs or a folder
    /// holding or inside one).
    #[arg(long)]
    out: PathBuf,
    /// Replace an output directory that an earlier `merge` wrote (refused when any file in it
    /// was not written by adamerge).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// A checkpoint to list.
    dir: Option<PathBuf>,
    /// Pretrained checkpoint, for task-vector diagnostics.
    #[arg(long, requires = "finetuned")]
    pretrained: Option<PathBuf>,
    /// Fine-tuned checkpoints as NAME=DIR, for task-vector diagnostics.
    #[arg(long = "finetuned", value_parser = parse_finetuned, requires = "pretrained")]
    finetuned: Vec<Finetuned>,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

/// A fixed method, or learned coefficients applied from a file.
#[derive(Clone, Copy)]
enum MethodArg {
    Fixed(FixedKind),
    AdaMerging,
}

impl std::str::FromStr for MethodArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adamerging" => Ok(Self::AdaMerging),
            other => other.parse().map(Self::Fixed).map_err(|_| {
                Error::invalid(
                    "--method",
                    format!(
                        "`{other}` is not one of weight-average, task-arithmetic, ties, dare, adamerging"
                    ),
                )
            }),
        }
    }
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

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let backend = match chosen_backend(&cli) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    pin_default_device(backend);
    match run(cli, backend) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// burn creates some state on its default device (an optimiser's restored moments, before they
/// move to the parameter's device), and in a wgpu build that default is the GPU even for a CPU
/// run, which fails where no Vulkan driver exists. Pin it to the backend the user chose.
fn pin_default_device(backend: Backend) {
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: called first thing in `main`, before any thread exists.
        unsafe { std::env::set_var("BURN_DEVICE", backend.to_string()) };
    }
}

/// `--device`, else an experiment file's `device`, else the CPU.
fn chosen_backend(cli: &Cli) -> Result<Backend> {
    if let Some(b) = cli.device {
        return Ok(b);
    }
    match &cli.command {
        Command::Run(RunArgs {
            file: Some(file), ..
        }) => match Experiment::load(file)?.device {
            Some(d) => d.parse(),
            None => Ok(Backend::default()),
        },
        _ => Ok(Backend::default()),
    }
}

fn run(cli: Cli, backend: Backend) -> Result<()> {
    init_threads(cli.threads)?;
    adamerge::data::set_max_image_pixels(cli.max_image_pixels);
    match cli.command {
        Command::Merge(args) => merge(args, backend),
        Command::Inspect(args) => inspect(args, backend),
        Command::Eval(args) => eval(args, backend),
        Command::Learn(args) => learn(args, backend),
        Command::Suite(SuiteCommand::Build(args)) => suite_build(args, backend),
        Command::Run(args) => run_experiment(args, backend),
        Command::Report(args) => report(args),
        Command::Suite(SuiteCommand::Path(args)) => {
            println!("{}", suite_dir(&spec_of(&args)).display());
            Ok(())
        }
    }
}

fn run_experiment(args: RunArgs, backend: Backend) -> Result<()> {
    if args.check {
        let file = args.file.as_deref().unwrap_or(std::path::Path::new(""));
        let exp = check_experiment(file)?;
        let plan = exp.plan()?;
        println!(
            "{}: {} tasks, {} method runs per seed, seeds {:?}{}",
            file.display(),
            exp.tasks.len(),
            plan.len(),
            exp.seeds,
            if exp.uses_suite() {
                " (on the built-in suite)"
            } else {
                ""
            }
        );
        return Ok(());
    }
    let opts = RunOptions {
        runs_root: args.runs.clone(),
        device: backend.device()?,
        backend: backend.to_string(),
        progress: true,
        limit: args.limit.map(|n| n.get()),
        steps: args.steps.map(|n| n.get()),
    };
    let stop = interrupt_flag();
    let (dir, end) = match (&args.resume, &args.file) {
        (Some(dir), _) => (dir.clone(), resume_experiment(dir, &opts, stop)?),
        (None, Some(file)) => run_file(file, &opts, stop)?,
        (None, None) => return Err(Error::invalid("run", "give an experiment file or --resume")),
    };
    match end {
        RunEnd::Finished(results) => {
            println!("{}", markdown(&results));
            println!("wrote {}", dir.display());
            Ok(())
        }
        RunEnd::Interrupted => Err(Error::invalid(
            "run",
            format!(
                "interrupted; `adamerge run --resume {}` continues it",
                dir.display()
            ),
        )),
    }
}

fn report(args: ReportArgs) -> Result<()> {
    let a = Results::read(&args.run)?;
    write_report(&args.run, &a)?;
    println!("{}", markdown(&a));
    if let Some(other) = &args.other {
        let b = Results::read(other)?;
        println!("{}", compare_runs(&a, &b, &args.run, other));
    }
    Ok(())
}

fn spec_of(args: &SuiteIdArgs) -> SuiteSpec {
    SuiteSpec {
        seed: args.seed,
        size: args.size,
    }
}

fn suite_build(args: SuiteBuildArgs, backend: Backend) -> Result<()> {
    let spec = spec_of(&args.id);
    let out = args.out.unwrap_or_else(|| suite_dir(&spec));
    if out.join("suite.json").is_file() && !args.force {
        eprintln!(
            "{} is already built (pass --force to rebuild it)",
            out.display()
        );
    } else {
        eprintln!(
            "building the {} suite, seed {}, into {}",
            spec.size,
            spec.seed,
            out.display()
        );
        build_suite(&spec, &out, args.force, &backend.device()?, true)?;
    }
    let info = SuiteInfo::read(&out)?;
    println!("{}", info.table());
    println!("suite: {}", out.display());
    Ok(())
}

fn load_bar(tasks: usize) -> ProgressBar {
    let bar = ProgressBar::new(0).with_message(format!("loading θ₀ and {tasks} fine-tuned"));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {percent}% {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn merge(args: MergeArgs, backend: Backend) -> Result<()> {
    // Refused before any work: an output over an input, or a folder adamerge may not replace.
    let mut inputs = Inputs::new();
    inputs.add("the pretrained checkpoint", &args.models.pretrained);
    for f in &args.models.finetuned {
        inputs.add(format!("the fine-tuned checkpoint `{}`", f.name), &f.path);
    }
    if let Some(file) = &args.lambda_file {
        inputs.add("the λ file", file);
    }
    inputs.check(&args.out)?;
    OutputDir::check_target(&args.out, args.force)?;
    let method: Box<dyn MergeMethod> = match args.method {
        MethodArg::Fixed(kind) => {
            if args.lambda_file.is_some() {
                return Err(Error::invalid(
                    "--lambda-file",
                    "only applies to --method adamerging",
                ));
            }
            MethodSpec {
                kind,
                lambda: args.lambda,
                k: args.k,
                p: args.p,
                seed: args.seed,
                aggregate: args.aggregate,
                trim: args.trim,
                dare_base: args.dare_base,
            }
            .build()?
        }
        MethodArg::AdaMerging => {
            let file = args.lambda_file.as_ref().ok_or_else(|| {
                Error::invalid(
                    "--lambda-file",
                    "--method adamerging needs the lambda.json of a learn run",
                )
            })?;
            Box::new(LearnedLambda::load(file)?)
        }
    };
    let device = backend.device()?;
    let start = Instant::now();
    let bar = load_bar(args.models.finetuned.len());
    let (tv, plan) = TaskVectors::load(
        &args.models.pretrained,
        &args.models.finetuned,
        &MergeScope::default(),
        &device,
        &bar,
    )?;
    bar.finish_and_clear();
    let loaded = start.elapsed();
    // Each merged tensor is computed when the writer reaches it, so the merged model is never
    // held whole next to the task vectors.
    let merger = method.prepare(&tv)?;
    let merging = Cell::new(start.elapsed() - loaded);
    let shapes = tv
        .base()
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape.clone()))
        .collect();
    let replacement = Replacement::new(shapes, |name| {
        let t = Instant::now();
        let values = tensor_to_vec(merger.tensor(name)?)?;
        merging.set(merging.get() + t.elapsed());
        Ok(values)
    });
    let out = save_merged(&args.models.pretrained, &replacement, &args.out, args.force)?;
    let total = start.elapsed();
    let merge_time = merging.get();
    println!(
        "{} — {}\nmerged {} tensors ({} parameters) of {} tasks; carried {} tensors over from the pretrained checkpoint\nload {:.2}s, merge {:.2}s, write {:.2}s on {backend}\nwrote {}",
        method.label(),
        method.reference(),
        plan.merged.len(),
        tv.base().num_params(),
        args.models.finetuned.len(),
        plan.carried.len(),
        loaded.as_secs_f64(),
        merge_time.as_secs_f64(),
        (total - loaded - merge_time).as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn learn(args: LearnArgs, backend: Backend) -> Result<()> {
    let device = backend.device()?;
    let job = Job {
        pretrained: args.pretrained,
        tasks: args.tasks,
        heads_from: args.heads_from,
        config: LearnConfig {
            granularity: args.granularity,
            layering: args.layering,
            steps: args.steps,
            lr: args.lr,
            init: args.init,
            clamp: !args.no_clamp,
            batch_size: args.batch_size,
            batches_per_task: args.batches_per_task,
            seed: args.seed,
            ties_k: args.ties_k,
        },
        adaptation: match args.adapt_fraction {
            Some(f) => Adaptation::Split(f),
            None => Adaptation::Transductive,
        },
        eval_every: args.eval_every,
        eval_limit: args.eval_limit.map(|n| n.get()),
        out: args.out.clone(),
        save_merged: !args.no_merged,
    };
    let stop = interrupt_flag();
    let report = run_job(&job, &device, args.resume, stop)?;
    println!("{}", report_markdown(&report));
    match report.outcome {
        Outcome::Finished => {
            println!(
                "learned {} in {:.1}s on {backend}; wrote {}",
                report.lambda.method,
                report.seconds,
                args.out.display()
            );
            Ok(())
        }
        Outcome::Interrupted(done) => Err(Error::invalid(
            "learn",
            format!(
                "interrupted after {done} steps; the checkpoint in {} resumes it with --resume",
                args.out.display()
            ),
        )),
    }
}

/// Set by Ctrl-C: long runs finish their current step, save, and stop.
fn interrupt_flag() -> &'static AtomicBool {
    static STOP: AtomicBool = AtomicBool::new(false);
    // A second handler cannot be installed (tests may call twice); the first one stays.
    // A second Ctrl-C quits at once (work that polls no flag, such as a suite build, is staged
    // and renamed into place, so quitting leaves nothing half-written).
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after the current step (Ctrl-C again to quit now)");
    });
    &STOP
}

fn inspect(args: InspectArgs, backend: Backend) -> Result<()> {
    if let Some(pretrained) = &args.pretrained {
        let device = backend.device()?;
        let bar = load_bar(args.finetuned.len());
        let (tv, plan) = TaskVectors::load(
            pretrained,
            &args.finetuned,
            &MergeScope::default(),
            &device,
            &bar,
        )?;
        bar.finish_and_clear();
        let report = TaskVectorReport::compute(&tv)?;
        if args.json {
            println!("{}", to_json(&report)?);
        } else {
            println!(
                "{} merged tensors, {} carried over\n\n{}",
                plan.merged.len(),
                plan.carried.len(),
                report.to_markdown()
            );
        }
        return Ok(());
    }
    let dir = args.dir.ok_or_else(|| {
        Error::invalid(
            "inspect",
            "give a checkpoint DIR, or --pretrained and --finetuned",
        )
    })?;
    let ckpt = Checkpoint::open(&dir)?;
    let rows: Vec<(String, String, Vec<usize>, usize)> = ckpt
        .names()
        .filter_map(|n| {
            ckpt.meta(n)
                .map(|m| (n.to_string(), m.dtype.name(), m.shape.clone(), m.numel()))
        })
        .collect();
    if args.json {
        let tensors: Vec<_> = rows
            .iter()
            .map(|(n, d, s, c)| serde_json::json!({"name": n, "dtype": d, "shape": s, "params": c}))
            .collect();
        let doc = serde_json::json!({"path": dir, "tensors": tensors, "params": ckpt.num_params()});
        println!("{}", to_json(&doc)?);
        return Ok(());
    }
    println!("| tensor | dtype | shape | parameters |\n|---|---|---|---|");
    for (n, d, s, c) in &rows {
        println!("| {n} | {d} | {s:?} | {c} |");
    }
    let mut by_dtype: Vec<(String, usize)> = Vec::new();
    for (_, d, _, c) in &rows {
        match by_dtype.iter_mut().find(|(x, _)| x == d) {
            Some(e) => e.1 += c,
            None => by_dtype.push((d.clone(), *c)),
        }
    }
    let dtypes: Vec<String> = by_dtype.iter().map(|(d, c)| format!("{d}: {c}")).collect();
    println!(
        "\n{} tensors, {} parameters ({})",
        rows.len(),
        ckpt.num_params(),
        dtypes.join(", ")
    );
    Ok(())
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::invalid("--json", e.to_string()))
}

fn eval(args: EvalArgs, backend: Backend) -> Result<()> {
    let device = backend.device()?;
    let model = Checkpoint::open(&args.model)?;
    let vision = VisionConfig::of_checkpoint(&model)?;
    let weights = load_weights(&model, &device, |n| {
        n.starts_with("vision_model.") || n == "visual_projection.weight"
    })?;
    let pre = Preprocessor::from_dir(&args.model, vision.image_size)?;

    // The text tower is loaded only when some task needs a zero-shot head.
    let heads_dir = args
        .heads_from
        .clone()
        .unwrap_or_else(|| args.model.clone());
    let text = if args.tasks.iter().any(|t| t.head.is_none()) {
        Some(TextTower::load(&heads_dir, &device)?)
    } else {
        None
    };
    let heads_cache = cache_dir().join("heads");
    let mut tasks = Vec::new();
    for t in &args.tasks {
        let head = HeadSource::for_task(&t.name, t.head.as_deref(), text.as_ref(), &heads_cache)?;
        tasks.push(prepare_task(
            &t.name,
            &t.data,
            head,
            args.limit.map(|n| n.get()),
            &device,
        )?);
    }
    let total: usize = tasks.iter().map(|t| t.data.items.len()).sum();
    let bar = ProgressBar::new(total as u64).with_message("evaluating");
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for task in &tasks {
        bar.set_message(task.name.clone());
        let acc = accuracy(
            &vision,
            &weights,
            &pre,
            task,
            args.batch_size,
            &device,
            &bar,
        )?;
        rows.push((task.name.clone(), task.data.items.len(), acc));
    }
    bar.finish_and_clear();
    println!("| task | images | top-1 accuracy (%) |\n|---|--:|--:|");
    for (name, n, acc) in &rows {
        println!("| {name} | {n} | {:.2} |", 100.0 * acc);
    }
    let avg = rows.iter().map(|r| r.2).sum::<f64>() / rows.len().max(1) as f64;
    println!("| **average** | {total} | **{:.2}** |", 100.0 * avg);
    Ok(())
}
