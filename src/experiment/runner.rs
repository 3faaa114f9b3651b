//! The experiment runner: per seed, load the inputs once, score the pretrained and the
//! individual models, run every planned method, and record each as it finishes, so an
//! interrupted run resumes where it stopped. Writes `runs/<experiment>/<timestamp>/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use indexmap::IndexMap;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::config::{Experiment, Planned};
use super::paths::{self, SeedPaths};
use super::seed::{SeedRun, checkpoint_hash, load_spec};
use crate::error::{Error, Result};
use crate::events::{Event, Of};
use crate::layout::RunDir;
use crate::merge::{Spectral, SpectralDeltas};
use crate::method::Built;
use crate::output::{Inputs, LOCK_FILE, RunLock};
use crate::output::{read_json, write_atomic, write_json};
use crate::pipeline::Adaptation;
use crate::results::{INDIVIDUAL, PRETRAINED, Progress, Record, Results};
use crate::suite::{SuiteSpec, ensure};
use crate::task_vector::VectorDtype;

/// How a run is started.
pub struct RunOptions {
    /// Where run directories go (`runs/`).
    pub runs_root: PathBuf,
    /// The device.
    pub device: Device,
    /// The backend's name, for provenance.
    pub backend: String,
    /// Show progress bars.
    pub progress: bool,
    /// Overrides the experiment's `limit` (images per task) in a new run.
    pub limit: Option<usize>,
    /// Overrides every learned method's `steps` in a new run.
    pub steps: Option<usize>,
    /// Overrides the experiment's `tau_dtype` in a new run.
    pub tau_dtype: Option<VectorDtype>,
}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// Every method ran; the table and plots are written.
    Finished(Box<Results>),
    /// Stopped on request; `--resume` continues it.
    Interrupted,
}

/// Where a run came from: `run.json` in its folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Origin {
    /// The experiment file's folder: relative paths start there.
    experiment_dir: PathBuf,
    /// The experiment file.
    file: PathBuf,
}

/// A new run directory `runs/<name>/<UTC timestamp>` (never an existing one).
pub fn new_run_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let parent = root.join(name);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    for n in 0.. {
        let dir = if n == 0 {
            parent.join(&stamp)
        } else {
            parent.join(format!("{stamp}-{n}"))
        };
        // create_dir fails when it exists, so two runs never share a directory.
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    unreachable!("an unbounded range")
}

/// Checks an experiment file without running it: its keys and values, and that every path of
/// every seed resolves (variables set) and exists (a `suite:` path in the built suite, or among
/// what a build writes). Every problem is reported, each by its key.
pub fn check(path: &Path) -> Result<Experiment> {
    let exp = Experiment::load(path)?;
    paths::existing(&exp, &paths::experiment_dir(path)?, path)?;
    Ok(exp)
}

/// Starts a run of the experiment file `path` in a new directory. Nothing is created when the
/// file, a path or the run folder's place is wrong, and a run that fails before its first
/// result removes its folder.
pub fn run(path: &Path, opts: &RunOptions, stop: &AtomicBool) -> Result<(PathBuf, RunEnd)> {
    let mut exp = Experiment::load(path)?;
    // Overrides go into the run's config.toml, so a resumed run keeps them.
    if let Some(n) = opts.limit {
        exp.limit = Some(n);
    }
    if let Some(d) = opts.tau_dtype {
        exp.tau_dtype = d;
    }
    if let Some(n) = opts.steps {
        for (i, m) in exp.methods.iter_mut().enumerate() {
            if m.method(i)?.needs().learning {
                m.params
                    .insert("steps".into(), toml::Value::Integer(n as i64));
            }
        }
    }
    let experiment_dir = paths::experiment_dir(path)?;
    let mut inputs = Inputs::new();
    for (key, p) in paths::existing(&exp, &experiment_dir, path)? {
        inputs.add(key, &p);
    }
    inputs.add("the experiment file", path);
    inputs.check(&opts.runs_root.join(&exp.name))?;
    let dir = RunDir::new(new_run_dir(&opts.runs_root, &exp.name)?);
    let lock = RunLock::folder(dir.root())?;
    let text =
        toml::to_string_pretty(&exp).map_err(|e| Error::invalid(RunDir::CONFIG, e.to_string()))?;
    write_atomic(&dir.config(), text.as_bytes())?;
    let origin = Origin {
        experiment_dir: experiment_dir.clone(),
        file: path.to_path_buf(),
    };
    write_json(&dir.origin(), &origin)?;
    if opts.progress {
        // Printed first, so a run that fails or is killed can be found and resumed.
        eprintln!("run directory: {}", dir.root().display());
    }
    crate::fault::point("run-locked");
    match execute(&exp, &experiment_dir, &dir, opts, stop) {
        Ok(end) => Ok((dir.root().to_path_buf(), end)),
        Err(e) => {
            remove_unstarted(&dir, lock);
            Err(e)
        }
    }
}

/// Removes a new run folder that holds no result yet, only what a run writes at its start; a
/// folder holding anything else is left as it is.
fn remove_unstarted(dir: &RunDir, lock: RunLock) {
    let started = Progress::read(dir).map_or(true, |p| !p.records.is_empty());
    let ours = [
        RunDir::CONFIG,
        RunDir::ORIGIN,
        RunDir::LOG,
        RunDir::PROGRESS,
        LOCK_FILE,
    ];
    let Ok(entries) = std::fs::read_dir(dir.root()) else {
        return;
    };
    let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    if started
        || names
            .iter()
            .any(|n| !ours.iter().any(|o| n.as_os_str() == *o))
    {
        return;
    }
    for n in names.iter().filter(|n| n.as_os_str() != LOCK_FILE) {
        let _ = std::fs::remove_file(dir.root().join(n));
    }
    drop(lock);
    let _ = std::fs::remove_dir(dir.root());
}

/// Continues an interrupted run in its directory.
pub fn resume(dir: &Path, opts: &RunOptions, stop: &AtomicBool) -> Result<RunEnd> {
    let dir = RunDir::new(dir);
    let path = dir.config();
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let experiment_dir = origin_of(&dir, &text)?;
    let exp = Experiment::parse(&text, &path)?;
    let mut inputs = Inputs::new();
    for (key, p) in paths::resolved(&exp, &experiment_dir, &path)? {
        inputs.add(key, &p);
    }
    inputs.check(dir.root())?;
    let _lock = RunLock::folder(dir.root())?;
    crate::fault::point("run-locked");
    execute(&exp, &experiment_dir, &dir, opts, stop)
}

/// The experiment's folder a run resolves paths against: `run.json`, or in runs written before
/// it existed, the `# base = ` comment heading `config.toml`.
fn origin_of(dir: &RunDir, config: &str) -> Result<PathBuf> {
    if dir.origin().is_file() {
        return Ok(read_json::<Origin>(&dir.origin())?.experiment_dir);
    }
    config
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# base = "))
        .map(PathBuf::from)
        .ok_or_else(|| Error::Config {
            path: dir.origin(),
            key: "experiment_dir".into(),
            reason: "missing: this is not a run folder (no run.json beside config.toml)".into(),
        })
}

/// Every planned run with its label (numbered when two share one).
fn planned_with_labels(exp: &Experiment) -> Result<Vec<(String, Planned)>> {
    let mut labels: Vec<String> = Vec::new();
    Ok(exp
        .plan()?
        .into_iter()
        .map(|p| {
            let first = p.built.label();
            let mut label = first.clone();
            let mut n = 2;
            while labels.contains(&label) {
                label = format!("{first}#{n}");
                n += 1;
            }
            labels.push(label.clone());
            (label, p)
        })
        .collect())
}

/// The run: every seed's stages, then the report.
fn execute(
    exp: &Experiment,
    experiment_dir: &Path,
    dir: &RunDir,
    opts: &RunOptions,
    stop: &AtomicBool,
) -> Result<RunEnd> {
    let planned = planned_with_labels(exp)?;
    let mut progress = Progress::read(dir)?;
    for &seed in &exp.seeds {
        let all_done = [PRETRAINED, INDIVIDUAL]
            .iter()
            .map(|s| s.to_string())
            .chain(planned.iter().map(|(l, _)| l.clone()))
            .all(|l| progress.get(&l, seed).is_some());
        if all_done {
            continue;
        }
        let seed_run = load_seed(exp, experiment_dir, seed, opts, dir, &mut progress)?;
        references(&seed_run, exp, dir, opts, &mut progress)?;
        if !methods(&seed_run, &planned, dir, opts, stop, &mut progress)? {
            return Ok(RunEnd::Interrupted);
        }
    }
    let results = aggregate(exp, &planned, &progress, opts)?;
    crate::report::write_report(dir.root(), &results)?;
    Ok(RunEnd::Finished(Box::new(results)))
}

/// Loads a seed's inputs (building its suite first where needed) and records what they were.
fn load_seed(
    exp: &Experiment,
    experiment_dir: &Path,
    seed: u64,
    opts: &RunOptions,
    dir: &RunDir,
    progress: &mut Progress,
) -> Result<SeedRun> {
    let suite = match paths::suite_root(exp, seed) {
        Some(_) => {
            let spec = SuiteSpec {
                seed: exp.suite.seed.unwrap_or(seed),
                size: exp.suite.size,
            };
            Some(ensure(&spec, &opts.device, opts.progress)?)
        }
        None => None,
    };
    let seed_paths: SeedPaths = paths::seed_paths(exp, experiment_dir, suite.as_deref())?;
    let adaptation = exp
        .adaptation
        .fraction
        .map_or(Adaptation::Transductive, Adaptation::Split);
    let spec = load_spec(&seed_paths, adaptation, seed, exp);
    let seed_run = SeedRun::load(&spec, exp.eval_every, &opts.device, opts.progress)?;
    if !progress.inputs.iter().any(|i| i["seed"] == seed) {
        let mut hashes = serde_json::Map::new();
        hashes.insert(
            "pretrained".into(),
            checkpoint_hash(&seed_paths.pretrained)?.into(),
        );
        for t in &seed_paths.tasks {
            hashes.insert(t.name.clone(), checkpoint_hash(&t.checkpoint)?.into());
        }
        progress.inputs.push(serde_json::json!({
            "seed": seed,
            "pretrained": seed_paths.pretrained,
            "checkpoints": hashes,
        }));
        progress.write(dir)?;
    }
    Ok(seed_run)
}

/// The references of a seed: the pretrained model, and each task's own fine-tune.
fn references(
    seed_run: &SeedRun,
    exp: &Experiment,
    dir: &RunDir,
    opts: &RunOptions,
    progress: &mut Progress,
) -> Result<()> {
    let seed = seed_run.seed;
    if progress.get(PRETRAINED, seed).is_none() {
        record(dir, progress, exp, seed_run.pretrained()?)?;
    }
    if progress.get(INDIVIDUAL, seed).is_none() {
        let pb = bar(
            opts,
            seed_run.tasks.len(),
            &format!("seed {seed}: individual models"),
        );
        let r = seed_run.individual(&pb)?;
        pb.finish_and_clear();
        record(dir, progress, exp, r)?;
    }
    Ok(())
}

/// Every planned method not yet done on the seed; `false` when stopped on request.
fn methods(
    seed_run: &SeedRun,
    planned: &[(String, Planned)],
    dir: &RunDir,
    opts: &RunOptions,
    stop: &AtomicBool,
    progress: &mut Progress,
) -> Result<bool> {
    let seed = seed_run.seed;
    let exp_tasks: Vec<String> = seed_run.tasks.iter().map(|t| t.name.clone()).collect();
    // Every spectral merge still to run shares one SVD pass, made when the first needs it and
    // dropped after the last.
    let spectral = |(label, p): &(String, Planned)| match &p.built {
        Built::Fixed(m) if progress.get(label, seed).is_none() => m.spectral().copied(),
        _ => None,
    };
    let pending: Vec<Spectral> = planned.iter().filter_map(spectral).collect();
    let last_spectral = planned.iter().rposition(|e| spectral(e).is_some());
    let mut shared: Option<SpectralDeltas> = None;
    for (i, (label, p)) in planned.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if progress.get(label, seed).is_some() {
            continue;
        }
        let r = match &p.built {
            Built::Fixed(method) => {
                if method.spectral().is_some() && shared.is_none() {
                    let pb = bar(opts, 0, &format!("seed {seed}: SVDs of the task vectors"));
                    shared = Some(SpectralDeltas::compute(&seed_run.loaded.tv, &pending, &pb)?);
                    pb.finish_and_clear();
                }
                let pb = bar(opts, 1, &format!("seed {seed}: {label}"));
                let r = seed_run.fixed(label, method.as_ref(), p.sweep, shared.as_ref())?;
                if Some(i) == last_spectral {
                    shared = None;
                }
                pb.finish_and_clear();
                r
            }
            Built::Data(method) => {
                let pb = bar(opts, 1, &format!("seed {seed}: {label}"));
                let r = seed_run.data(label, method.as_ref(), p.sweep, &pb)?;
                pb.finish_and_clear();
                r
            }
            Built::Learned(config) => {
                if opts.progress {
                    // The learner's bar says "learning λ"; this line says which method.
                    eprintln!("seed {seed}: {label}");
                }
                match seed_run.learned(label, config, dir, stop)? {
                    Some(r) => r,
                    None => return Ok(false),
                }
            }
        };
        record_with(dir, progress, &exp_tasks, r)?;
    }
    Ok(true)
}

/// The results of every seed, aggregated, with the run's provenance.
fn aggregate(
    exp: &Experiment,
    planned: &[(String, Planned)],
    progress: &Progress,
    opts: &RunOptions,
) -> Result<Results> {
    let task_names: Vec<String> = exp.tasks.iter().map(|t| t.name.clone()).collect();
    let sweep_names: IndexMap<usize, String> = planned
        .iter()
        .filter_map(|(_, p)| {
            p.sweep
                .map(|i| (i, format!("{} (method[{i}])", p.method.name())))
        })
        .collect();
    let provenance = serde_json::json!({
        "adamerge": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("ADAMERGE_COMMIT").unwrap_or("unknown"),
        "device": opts.backend,
        "tau_dtype": exp.tau_dtype,
        "threads": rayon::current_num_threads(),
        "seeds": exp.seeds,
        "inputs": progress.inputs,
    });
    Results::aggregate(
        &exp.name,
        &task_names,
        &exp.seeds,
        &progress.records,
        &sweep_names,
        exp.paper.clone(),
        provenance,
    )
}

fn bar(opts: &RunOptions, len: usize, msg: &str) -> ProgressBar {
    crate::progress::bar_if(
        opts.progress,
        len as u64,
        "{msg:40} [{bar:30}] {pos}/{len} {elapsed}",
    )
    .with_message(msg.to_string())
}

fn record(dir: &RunDir, progress: &mut Progress, exp: &Experiment, r: Record) -> Result<()> {
    let tasks: Vec<String> = exp.tasks.iter().map(|t| t.name.clone()).collect();
    record_with(dir, progress, &tasks, r)
}

/// Logs a finished method's event, then marks it done in `progress.json`; a run killed
/// between the two logs it again on resume in place of the first.
fn record_with(dir: &RunDir, progress: &mut Progress, tasks: &[String], r: Record) -> Result<()> {
    let event = Event::Method {
        of: Of {
            method: r.method.clone(),
            seed: r.seed,
        },
        accuracy: tasks
            .iter()
            .cloned()
            .zip(r.accuracy.iter().copied())
            .collect(),
        avg: r.accuracy.iter().sum::<f64>() / r.accuracy.len().max(1) as f64,
        entropy: r.entropy,
        seconds: r.seconds,
    };
    log_events(dir, &r.method, r.seed, &["method"], &[event])?;
    crate::fault::point("events-logged");
    progress.records.push(r);
    progress.write(dir)
}

/// Appends `events` of one method and seed to the run's log, first dropping the events of the
/// same method, seed and kinds that an interrupted attempt logged, so that whatever point a run
/// was killed at, a resumed one logs every event once.
fn log_events(
    dir: &RunDir,
    method: &str,
    seed: u64,
    kinds: &[&str],
    events: &[Event],
) -> Result<()> {
    use std::io::Write;
    let path = dir.log();
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let earlier = |line: &str| {
        Event::parse(line).is_some_and(|e| {
            e.of().is_some_and(|o| o.method == method && o.seed == seed)
                && kinds.contains(&e.kind())
        })
    };
    let new: String = events.iter().map(Event::line).collect();
    if old.lines().any(earlier) {
        let mut kept: String = old
            .lines()
            .filter(|l| !earlier(l))
            .map(|l| format!("{l}\n"))
            .collect();
        kept += &new;
        return write_atomic(&path, kept.as_bytes());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    f.write_all(new.as_bytes()).map_err(|e| Error::io(&path, e))
}

/// Appends a learned method's step and evaluation events to the run's log, tagged with the
/// method and the seed, so one file holds the whole run.
pub(super) fn copy_events(job_log: &Path, dir: &RunDir, label: &str, seed: u64) -> Result<()> {
    let of = Of {
        method: label.to_string(),
        seed,
    };
    let events: Vec<Event> = crate::events::read(job_log)?
        .into_iter()
        .map(|e| e.tagged(of.clone()))
        .collect();
    log_events(dir, label, seed, &["step", "eval"], &events)
}
