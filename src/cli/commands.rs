//! One function per command: read the parsed options, call the library, print its answer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;

use super::args::{
    EvalArgs, InspectArgs, LearnArgs, MergeArgs, MethodChoice, ReportArgs, RunArgs, SuiteBuildArgs,
    SuiteIdArgs,
};
use crate::adamerging::{Job, LearnOptions, LearnedLambda, Outcome, report_markdown, run_job};
use crate::checkpoint::Checkpoint;
use crate::data_merge::DataMerge;
use crate::device::Backend;
use crate::diagnostics::{TaskVectorReport, TensorListing};
use crate::error::{Error, Result};
use crate::experiment::runner::{self, RunEnd, RunOptions};
use crate::layout::{LearnDir, RunDir};
use crate::merge::MergeMethod;
use crate::method::Built;
use crate::output::{Inputs, OutputDir};
use crate::pipeline::{Adaptation, Destination, TaskPaths, data_merge_to_dir, merge_to_dir};
use crate::report::table::{compare_runs, markdown};
use crate::results::Results;
use crate::suite::{SuiteInfo, SuiteSpec, build as build_suite, suite_dir};
use crate::task_vector::{Finetuned, MergeScope, TaskVectors, VectorDtype};

fn choice(c: &Option<MethodChoice>) -> &MethodChoice {
    c.as_ref()
        .expect("the parser fills in the method of merge and learn")
}

fn load_bar(tasks: usize) -> ProgressBar {
    let bar = crate::progress::bar(0, "{msg} [{bar:30}] {percent}% {elapsed}")
        .with_message(format!("loading θ₀ and {tasks} fine-tuned"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The coefficients a learn run saved in `file`, refused when another method learned them.
fn learned_for(file: &Path, method: &str) -> Result<LearnedLambda> {
    let learned = LearnedLambda::load(file)?;
    if learned.name() != method {
        return Err(Error::invalid(
            "--lambda-file",
            format!(
                "{} holds {}'s coefficients; merge it with --method {}",
                file.display(),
                learned.method,
                learned.name()
            ),
        ));
    }
    Ok(learned)
}

/// `merge`: refused before any work when the output overlaps an input or may not be replaced.
pub fn merge(args: MergeArgs, backend: Backend) -> Result<()> {
    let mut inputs = Inputs::new();
    inputs.add("the pretrained checkpoint", &args.models.pretrained);
    for f in &args.models.finetuned {
        inputs.add(format!("the fine-tuned checkpoint `{}`", f.name), &f.path);
    }
    for t in &args.tasks {
        let n = &t.name;
        inputs.add(format!("task `{n}`'s checkpoint"), &t.checkpoint);
        inputs.add(format!("task `{n}`'s data"), &t.data);
        if let Some(adapt) = &t.adapt {
            inputs.add(format!("task `{n}`'s adaptation images"), adapt);
        }
        if let Some(head) = &t.head {
            inputs.add(format!("task `{n}`'s head"), head);
        }
    }
    if let Some(file) = &args.lambda_file {
        inputs.add("the λ file", file);
    }
    inputs.check(&args.out)?;
    OutputDir::check_target(&args.out, args.force)?;
    let c = choice(&args.choice);
    c.params
        .check_tasks(args.tasks.len().max(args.models.finetuned.len()))?;
    // What runs: a merge from images, or one over the task vectors alone (a learned method's
    // saved λ included). Every refusal comes before anything loads.
    enum Job {
        Images(Box<dyn DataMerge>),
        Tensors(Box<dyn MergeMethod>),
    }
    let job = match (c.method.build(&c.params)?, &args.lambda_file) {
        (Built::Learned(_), Some(file)) => {
            Job::Tensors(Box::new(learned_for(file, c.method.name())?))
        }
        (Built::Learned(_), None) => {
            return Err(Error::invalid(
                "--lambda-file",
                format!(
                    "--method {} needs the lambda.json of a learn run",
                    c.method.name()
                ),
            ));
        }
        (_, Some(_)) => {
            return Err(Error::invalid(
                "--lambda-file",
                format!("only applies to a learned method, not {}", c.method.name()),
            ));
        }
        (Built::Data(_), None) if args.tasks.is_empty() => {
            return Err(Error::invalid(
                "--finetuned",
                format!(
                    "{} reads each task's images: give --task \
                     NAME,checkpoint=DIR,data=DIR[,head=FILE][,adapt=DIR] instead",
                    c.method.name()
                ),
            ));
        }
        (Built::Data(m), None) => Job::Images(m),
        (Built::Fixed(m), None) => Job::Tensors(m),
    };
    let finetuned: Vec<Finetuned> = if args.tasks.is_empty() {
        args.models.finetuned.clone()
    } else {
        args.tasks.iter().map(TaskPaths::finetuned).collect()
    };
    let bar = load_bar(finetuned.len());
    let device = backend.device()?;
    let tau_dtype = args.storage.tau_dtype.unwrap_or_default();
    let out = Destination {
        dir: &args.out,
        force: args.force,
    };
    let s = match job {
        Job::Images(m) => data_merge_to_dir(
            m.as_ref(),
            &args.models.pretrained,
            &args.tasks,
            tau_dtype,
            out,
            &device,
            &bar,
        )?,
        Job::Tensors(m) => merge_to_dir(
            m.as_ref(),
            &args.models.pretrained,
            &finetuned,
            tau_dtype,
            out,
            &device,
            &bar,
        )?,
    };
    println!(
        "{} — {}\nmerged {} tensors ({} parameters) of {} tasks; carried {} tensors over from the pretrained checkpoint\nload {:.2}s, merge {:.2}s, write {:.2}s on {backend}\nwrote {}",
        s.label,
        s.paper,
        s.merged,
        s.params,
        s.tasks,
        s.carried,
        s.seconds.0,
        s.seconds.1,
        s.seconds.2,
        s.out.display()
    );
    for i in &s.images {
        println!(
            "task `{}`: {} of its {} {} images read (no labels)",
            i.task, i.count, i.of, i.from
        );
    }
    Ok(())
}

/// `learn`.
pub fn learn(args: LearnArgs, backend: Backend) -> Result<()> {
    let c = choice(&args.choice);
    let Built::Learned(mut config) = c.method.build(&c.params)? else {
        unreachable!("the parser takes learned methods only");
    };
    config.seed = args.seed;
    let job = Job {
        pretrained: args.pretrained,
        tasks: args.tasks,
        heads_from: args.heads_from,
        adaptation: args
            .adapt_fraction
            .map_or(Adaptation::Transductive, Adaptation::Split),
        eval_limit: args.eval_limit.map(|n| n.get()),
        tau_dtype: args.storage.tau_dtype.unwrap_or_default(),
        options: LearnOptions {
            config,
            eval_every: args.eval_every,
            dir: LearnDir::new(&args.out),
            save_merged: !args.no_merged,
        },
    };
    let report = run_job(&job, &backend.device()?, args.resume, interrupt_flag())?;
    println!("{}", report_markdown(&report));
    match report.outcome {
        Outcome::Finished => {
            let svd = report
                .decompose_seconds
                .map(|s| format!(" (after {s:.1}s of SVDs)"))
                .unwrap_or_default();
            println!(
                "learned {} in {:.1}s{svd} on {backend}; wrote {}",
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

/// `inspect`: a checkpoint's tensors, or the task vectors of fine-tuned checkpoints.
pub fn inspect(args: InspectArgs, backend: Backend) -> Result<()> {
    if let Some(pretrained) = &args.pretrained {
        let bar = load_bar(args.finetuned.len());
        let device = backend.device()?;
        let scope = MergeScope::default();
        let f32 = VectorDtype::F32;
        let (tv, plan) =
            TaskVectors::load(pretrained, &args.finetuned, &scope, f32, &device, &bar)?;
        bar.finish_and_clear();
        let report = TaskVectorReport::compute(&tv)?;
        match args.json {
            true => println!("{}", to_json(&report)?),
            false => println!(
                "{} merged tensors, {} carried over\n\n{}",
                plan.merged.len(),
                plan.carried.len(),
                report.to_markdown()
            ),
        }
        return Ok(());
    }
    let dir = args.dir.ok_or_else(|| {
        Error::invalid(
            "inspect",
            "give a checkpoint DIR, or --pretrained and --finetuned",
        )
    })?;
    let listing = TensorListing::of(&Checkpoint::open(&dir)?);
    match args.json {
        true => println!("{}", to_json(&listing)?),
        false => print!("{}", listing.to_markdown()),
    }
    Ok(())
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::invalid("--json", e.to_string()))
}

/// `eval`.
pub fn eval(args: EvalArgs, backend: Backend) -> Result<()> {
    let scores = crate::eval::evaluate(
        &args.model,
        &args.tasks,
        args.heads_from.as_deref(),
        args.batch_size,
        args.limit.map(|n| n.get()),
        &backend.device()?,
    )?;
    println!("| task | images | top-1 accuracy (%) |\n|---|--:|--:|");
    for s in &scores {
        println!("| {} | {} | {:.2} |", s.name, s.images, 100.0 * s.accuracy);
    }
    let total: usize = scores.iter().map(|s| s.images).sum();
    let avg = scores.iter().map(|s| s.accuracy).sum::<f64>() / scores.len().max(1) as f64;
    println!("| **average** | {total} | **{:.2}** |", 100.0 * avg);
    Ok(())
}

fn spec_of(args: &SuiteIdArgs) -> SuiteSpec {
    SuiteSpec {
        seed: args.seed,
        size: args.size,
    }
}

/// `suite build`.
pub fn suite_build(args: SuiteBuildArgs, backend: Backend) -> Result<()> {
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
    println!("{}", SuiteInfo::read(&out)?.table());
    println!("suite: {}", out.display());
    Ok(())
}

/// `suite path`.
pub fn suite_path(args: SuiteIdArgs) -> Result<()> {
    println!("{}", suite_dir(&spec_of(&args)).display());
    Ok(())
}

/// `run`: an experiment file, its check, or the resumption of a run.
pub fn run(args: RunArgs, backend: Backend) -> Result<()> {
    if args.check {
        let file = args.file.as_deref().unwrap_or(std::path::Path::new(""));
        let exp = runner::check(file)?;
        let suite = if exp.uses_suite() {
            " (on the built-in suite)"
        } else {
            ""
        };
        println!(
            "{}: {} tasks, {} method runs per seed, seeds {:?}{suite}",
            file.display(),
            exp.tasks.len(),
            exp.plan()?.len(),
            exp.seeds,
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
        tau_dtype: args.storage.tau_dtype,
    };
    if args.resume.is_some() && opts.tau_dtype.is_some() {
        return Err(Error::invalid(
            "--tau-dtype",
            "a resumed run keeps its own (its config.toml's `tau_dtype`)",
        ));
    }
    let stop = interrupt_flag();
    let (dir, end) = match (&args.resume, &args.file) {
        (Some(dir), _) => (dir.clone(), runner::resume(dir, &opts, stop)?),
        (None, Some(file)) => runner::run(file, &opts, stop)?,
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

/// `report`: a run's table and plots rebuilt from its files; a second run beside it.
pub fn report(args: ReportArgs) -> Result<()> {
    let a = Results::read(&RunDir::new(&args.run))?;
    crate::report::write_report(&args.run, &a)?;
    println!("{}", markdown(&a));
    if let Some(other) = &args.other {
        let b = Results::read(&RunDir::new(other))?;
        println!("{}", compare_runs(&a, &b, &args.run, other));
    }
    Ok(())
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
