//! The experiment runner: per seed, load the checkpoints once, score the pretrained and the
//! individual models, run every fixed and learned method, and record each as it finishes, so
//! an interrupted run resumes where it stopped. Writes `runs/<experiment>/<timestamp>/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::config::{Experiment, MethodKind, Planned, SUITE_PREFIX, resolve};
use super::results::{INDIVIDUAL, PRETRAINED, Progress, Record, Results, Role};
use crate::adamerging::{
    Adaptation, BatchSource, EvalSet, ImageSampler, Job, JobTask, LearnConfig, Outcome, learn_with,
    mean_entropy, prepare_tasks,
};
use crate::checkpoint::{Checkpoint, load_weights, write_atomic};
use crate::config::VisionConfig;
use crate::data::Preprocessor;
use crate::error::{Error, Result};
use crate::eval::{EvalTask, TextTower};
use crate::model::{VisionTower, logits};
use crate::output::{Inputs, LOCK_FILE, RunLock};
use crate::suite::{SuiteSpec, ensure, provides, suite_dir};
use crate::task_vector::{Finetuned, MergeScope, TaskVectors};
use crate::weights::{Weights, scalar};

/// The experiment file as the run read it (its defaults filled in).
pub const CONFIG: &str = "config.toml";
/// The run's event log.
pub const LOG: &str = "log.jsonl";

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
}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// Every method ran; the table and plots are written.
    Finished(Box<Results>),
    /// Stopped on request; `--resume` continues it.
    Interrupted,
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

/// The folder an experiment file's relative paths start from (its own folder).
fn base_of(path: &Path) -> Result<PathBuf> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.canonicalize().map_err(|e| Error::io(path, e))
}

/// Checks an experiment file without running it: its keys and values, and that every path of
/// every seed resolves (variables set) and exists (a `suite:` path in the built suite, or among
/// what a build writes). Every problem is reported, each by its key.
pub fn check(path: &Path) -> Result<Experiment> {
    let exp = Experiment::load(path)?;
    existing_paths(&exp, &base_of(path)?, path)?;
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
    if let Some(n) = opts.steps {
        for m in exp.methods.iter_mut() {
            if m.kind == MethodKind::Adamerging {
                m.steps = Some(n);
            }
        }
    }
    let base = base_of(path)?;
    let mut inputs = Inputs::new();
    for (key, p) in existing_paths(&exp, &base, path)? {
        inputs.add(key, &p);
    }
    inputs.add("the experiment file", path);
    inputs.check(&opts.runs_root.join(&exp.name))?;
    let dir = new_run_dir(&opts.runs_root, &exp.name)?;
    let lock = RunLock::folder(&dir)?;
    let text = toml::to_string_pretty(&exp).map_err(|e| Error::invalid(CONFIG, e.to_string()))?;
    // The base folder travels with the config so a resumed run resolves paths as this one did.
    let text = format!("# base = {}\n{text}", base.display());
    write_atomic(&dir.join(CONFIG), text.as_bytes())?;
    if opts.progress {
        // Printed first, so a run that fails or is killed can be found and resumed.
        eprintln!("run directory: {}", dir.display());
    }
    crate::fault::point("run-locked");
    match execute(&exp, &base, &dir, opts, stop) {
        Ok(end) => Ok((dir, end)),
        Err(e) => {
            remove_unstarted(&dir, lock);
            Err(e)
        }
    }
}

/// Removes a new run folder that holds no result yet, only what a run writes at its start; a
/// folder holding anything else is left as it is.
fn remove_unstarted(dir: &Path, lock: RunLock) {
    let started = Progress::read(dir).map_or(true, |p| !p.records.is_empty());
    let ours = [CONFIG, LOG, super::results::PROGRESS, LOCK_FILE];
    let Ok(entries) = std::fs::read_dir(dir) else {
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
        let _ = std::fs::remove_file(dir.join(n));
    }
    drop(lock);
    let _ = std::fs::remove_dir(dir);
}

/// Continues an interrupted run in its directory.
pub fn resume(dir: &Path, opts: &RunOptions, stop: &AtomicBool) -> Result<RunEnd> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let base = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# base = "))
        .map(PathBuf::from)
        .ok_or_else(|| Error::Config {
            path: path.clone(),
            key: "# base".into(),
            reason: "not a run directory's config (its first line names the base folder)".into(),
        })?;
    let exp = Experiment::parse(&text, &path)?;
    let mut inputs = Inputs::new();
    for (key, p) in resolved_paths(&exp, &base, &path)? {
        inputs.add(key, &p);
    }
    inputs.check(dir)?;
    let _lock = RunLock::folder(dir)?;
    crate::fault::point("run-locked");
    execute(&exp, &base, dir, opts, stop)
}

/// Every path of the experiment resolved for every seed (a `suite:` path where that seed's
/// suite is or will be built), with its key, and a line for each that does not resolve.
fn resolve_all(exp: &Experiment, base: &Path) -> (Vec<(String, PathBuf)>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for &seed in &exp.seeds {
        let suite_root = exp.uses_suite().then(|| {
            suite_dir(&SuiteSpec {
                seed: exp.suite.seed.unwrap_or(seed),
                size: exp.suite.size,
            })
        });
        for (key, raw) in exp.paths() {
            match resolve(raw, base, suite_root.as_deref()) {
                Ok(p) => out.push((key, p)),
                Err(e) => problems.push(format!("`{key}`: {}", reason_of(e))),
            }
        }
    }
    (out, problems)
}

/// Fails listing every problem (each once), or passes `value` on.
fn or_problems<T>(value: T, mut problems: Vec<String>, file: &Path) -> Result<T> {
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(Error::Problems {
            path: file.to_path_buf(),
            problems,
        })
    }
}

/// Every path of the experiment, resolved; an unset variable is an error naming every key.
fn resolved_paths(exp: &Experiment, base: &Path, file: &Path) -> Result<Vec<(String, PathBuf)>> {
    let (paths, problems) = resolve_all(exp, base);
    or_problems(paths, problems, file)
}

/// Every path of the experiment, resolved and present; the error lists every key that does
/// not resolve or names nothing.
fn existing_paths(exp: &Experiment, base: &Path, file: &Path) -> Result<Vec<(String, PathBuf)>> {
    let (paths, mut problems) = resolve_all(exp, base);
    let raw: std::collections::HashMap<String, &str> = exp.paths().into_iter().collect();
    for (key, p) in &paths {
        let written = raw.get(key).copied().unwrap_or_default();
        let text = p.to_string_lossy();
        let found = match written.strip_prefix(SUITE_PREFIX) {
            // A suite not built yet will hold exactly what a build writes.
            Some(rel) if !p.exists() => {
                !p.ancestors().any(|a| a.join("suite.json").is_file()) && provides(rel)
            }
            _ if text.contains(['*', '?', '[']) => {
                glob::glob(&text).is_ok_and(|mut m| m.next().is_some())
            }
            _ => p.exists(),
        };
        if !found {
            problems.push(format!("`{key}`: {} does not exist", p.display()));
        }
    }
    or_problems(paths, problems, file)
}

/// The reason of an argument error, without its name (the caller names the key).
fn reason_of(e: Error) -> String {
    match e {
        Error::InvalidArgument { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn bar(progress: bool, len: usize, msg: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64).with_message(msg.to_string());
    pb.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// A file-name-safe form of a label.
pub fn slug(label: &str) -> String {
    // `++` must survive: AdaMerging++ and AdaMerging would share a folder otherwise.
    let mut s: String = label
        .replace("++", "pp")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

/// The label of a planned method (a learned one's `label` key, else its kind and settings).
fn label_of(p: &Planned, labels: &mut Vec<String>) -> Result<String> {
    let base = match p {
        Planned::Fixed { spec, .. } => spec.build()?.label(),
        Planned::Learned(c) => {
            let mut l = c.label();
            let d = LearnConfig::default();
            let mut extra = Vec::new();
            if c.steps != d.steps {
                extra.push(format!("steps={}", c.steps));
            }
            if c.lr != d.lr {
                extra.push(format!("lr={}", c.lr));
            }
            if c.batches_per_task != d.batches_per_task {
                extra.push(format!("batches={}", c.batches_per_task));
            }
            if !extra.is_empty() {
                l = format!("{l}[{}]", extra.join(","));
            }
            l
        }
    };
    let mut label = base.clone();
    let mut n = 2;
    while labels.contains(&label) {
        label = format!("{base}#{n}");
        n += 1;
    }
    labels.push(label.clone());
    Ok(label)
}

/// Everything loaded for one seed.
struct Loaded {
    pretrained: PathBuf,
    cfg: VisionConfig,
    pre: Preprocessor,
    tv: TaskVectors,
    tasks: Vec<JobTask>,
    eval_tasks: Vec<EvalTask>,
    adapt: Vec<crate::adamerging::UnlabeledImages>,
    hashes: Vec<(String, String)>,
}

fn load(exp: &Experiment, base: &Path, seed: u64, opts: &RunOptions) -> Result<Loaded> {
    let suite_root = if exp.uses_suite() {
        let spec = SuiteSpec {
            seed: exp.suite.seed.unwrap_or(seed),
            size: exp.suite.size,
        };
        Some(ensure(&spec, &opts.device, opts.progress)?)
    } else {
        None
    };
    let r = |p: &str| resolve(p, base, suite_root.as_deref());
    let pretrained = r(&exp.model.pretrained)?;
    let heads_from = exp.model.heads_from.as_deref().map(r).transpose()?;
    let tasks = exp
        .tasks
        .iter()
        .map(|t| {
            Ok(JobTask {
                name: t.name.clone(),
                checkpoint: r(&t.checkpoint)?,
                data: r(&t.data)?,
                head: t.head.as_deref().map(r).transpose()?,
                adapt: t.adapt.as_deref().map(r).transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let finetuned: Vec<Finetuned> = tasks
        .iter()
        .map(|t| Finetuned {
            name: t.name.clone(),
            path: t.checkpoint.clone(),
        })
        .collect();
    let loading = bar(opts.progress, 0, "loading checkpoints");
    let (tv, _) = TaskVectors::load(
        &pretrained,
        &finetuned,
        &MergeScope::default(),
        &opts.device,
        &loading,
    )?;
    loading.finish_and_clear();
    let cfg = VisionConfig::of_checkpoint(&Checkpoint::open(&pretrained)?)?;
    let pre = Preprocessor::from_dir(&pretrained, cfg.image_size)?;
    let text = TextTower::load_if_needed(
        tasks.iter().map(|t| t.head.is_none()),
        heads_from.as_deref().unwrap_or(&pretrained),
        &opts.device,
    )?;
    let adaptation = exp
        .adaptation
        .fraction
        .map_or(Adaptation::Transductive, Adaptation::Split);
    let (eval_tasks, adapt) = prepare_tasks(
        &tasks,
        text.as_ref(),
        adaptation,
        seed,
        exp.limit,
        exp.eval_limit,
        &opts.device,
    )?;
    let mut hashes = vec![("pretrained".to_string(), checkpoint_hash(&pretrained)?)];
    for t in &tasks {
        hashes.push((t.name.clone(), checkpoint_hash(&t.checkpoint)?));
    }
    Ok(Loaded {
        pretrained,
        cfg,
        pre,
        tv,
        tasks,
        eval_tasks,
        adapt,
        hashes,
    })
}

/// A content key of a checkpoint's weights: the safetensors headers (names, dtypes, shapes and
/// offsets) and the first and last MiB of data, hashed; cheap on multi-GB files.
fn checkpoint_hash(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
        let len = file.metadata().map_err(|e| Error::io(&f, e))?.len();
        h.update(len.to_le_bytes());
        let mut buf = vec![0u8; (1 << 20).min(len as usize)];
        file.read_exact(&mut buf).map_err(|e| Error::io(&f, e))?;
        h.update(&buf);
        if len > buf.len() as u64 {
            file.seek(SeekFrom::End(-(buf.len() as i64)))
                .map_err(|e| Error::io(&f, e))?;
            file.read_exact(&mut buf).map_err(|e| Error::io(&f, e))?;
            h.update(&buf);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The AdaMerging objective of merged weights on fixed adaptation batches (the first
/// `ENTROPY_STEPS` steps' batches of the run's sampler, or the one batch that already holds
/// every image of a small set): what a user without labels can compare.
fn adaptation_entropy(
    cfg: &VisionConfig,
    w: &Weights,
    heads: &[Tensor<2>],
    sampler: &ImageSampler<'_>,
) -> Result<f64> {
    let tower = VisionTower::new(cfg, w)?;
    let mut total = 0.0;
    for (k, head) in heads.iter().enumerate() {
        let steps = if sampler.batch_len(k) == sampler.task_len(k) {
            1
        } else {
            ENTROPY_STEPS
        };
        let mut sum = 0.0;
        for step in 0..steps {
            let pixels = sampler.batch(k, step, 0)?;
            let embeds = tower.image_embeds(pixels)?;
            sum += scalar(mean_entropy(logits(embeds, head.clone())))?;
        }
        total += sum / steps as f64;
    }
    Ok(total)
}

const ENTROPY_STEPS: usize = 4;

/// Appends `events` of one method and seed to the run's log, first dropping the events of the
/// same method, seed and kinds that an interrupted attempt logged, so that whatever point a run
/// was killed at, a resumed one logs every event once.
fn log_events(
    dir: &Path,
    method: &str,
    seed: u64,
    kinds: &[&str],
    events: &[serde_json::Value],
) -> Result<()> {
    use std::io::Write;
    let path = dir.join(LOG);
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let earlier = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
            v["method"] == method
                && v["seed"] == seed
                && v["event"].as_str().is_some_and(|k| kinds.contains(&k))
        })
    };
    let mut new = String::new();
    for e in events {
        new += &e.to_string();
        new.push('\n');
    }
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

fn execute(
    exp: &Experiment,
    base: &Path,
    dir: &Path,
    opts: &RunOptions,
    stop: &AtomicBool,
) -> Result<RunEnd> {
    let plan = exp.plan()?;
    let mut labels = Vec::new();
    let planned: Vec<(String, Planned)> = plan
        .into_iter()
        .map(|p| Ok((label_of(&p, &mut labels)?, p)))
        .collect::<Result<_>>()?;
    let mut progress = Progress::read(dir)?;
    let task_names: Vec<String> = exp.tasks.iter().map(|t| t.name.clone()).collect();
    for &seed in &exp.seeds {
        let all_done = [PRETRAINED, INDIVIDUAL]
            .iter()
            .map(|s| s.to_string())
            .chain(planned.iter().map(|(l, _)| l.clone()))
            .all(|l| progress.get(&l, seed).is_some());
        if all_done {
            continue;
        }
        let loaded = load(exp, base, seed, opts)?;
        if !progress.inputs.iter().any(|i| i["seed"] == seed) {
            progress.inputs.push(json!({
                "seed": seed,
                "pretrained": loaded.pretrained,
                "checkpoints": loaded.hashes.iter().map(|(n, h)| (n.clone(), json!(h))).collect::<serde_json::Map<_, _>>(),
            }));
            progress.write(dir)?;
        }
        let heads: Vec<Tensor<2>> = loaded.eval_tasks.iter().map(|t| t.head.clone()).collect();
        let eval = EvalSet {
            cfg: &loaded.cfg,
            tasks: &loaded.eval_tasks,
            pre: &loaded.pre,
            every: exp.eval_every,
            batch_size: 64,
            device: &opts.device,
        };
        let entropy_sampler = ImageSampler::new(
            loaded.adapt.clone(),
            &loaded.pre,
            LearnConfig::default().batch_size,
            1,
            seed,
            &opts.device,
        )?;
        let finish = |progress: &mut Progress, record: Record| -> Result<()> {
            log_events(
                dir,
                &record.method,
                record.seed,
                &["method"],
                &[json!({
                    "event": "method",
                    "seed": record.seed,
                    "method": record.method,
                    "accuracy": task_names.iter().zip(&record.accuracy).map(|(t, a)| (t.clone(), json!(a))).collect::<serde_json::Map<_, _>>(),
                    "avg": record.accuracy.iter().sum::<f64>() / record.accuracy.len().max(1) as f64,
                    "entropy": record.entropy,
                    "seconds": record.seconds,
                })],
            )?;
            crate::fault::point("events-logged");
            progress.records.push(record);
            progress.write(dir)
        };
        // References: the pretrained model, and each task's own fine-tune on its task.
        if progress.get(PRETRAINED, seed).is_none() {
            let base = loaded.tv.pretrained();
            let acc = eval.score(&base)?;
            let entropy = adaptation_entropy(&loaded.cfg, &base, &heads, &entropy_sampler)?;
            finish(
                &mut progress,
                reference(PRETRAINED, seed, acc, Some(entropy)),
            )?;
        }
        if progress.get(INDIVIDUAL, seed).is_none() {
            let pb = bar(
                opts.progress,
                loaded.tasks.len(),
                &format!("seed {seed}: individual models"),
            );
            let mut acc = Vec::new();
            for (k, t) in loaded.tasks.iter().enumerate() {
                let ckpt = Checkpoint::open(&t.checkpoint)?;
                let base = loaded.tv.base();
                let w = load_weights(&ckpt, &opts.device, |n| base.get(n).is_some())?;
                // Tensors a vision-only fine-tune lacks (the projection) come from θ₀.
                let w = loaded.tv.complete(w);
                let one = EvalSet {
                    tasks: std::slice::from_ref(&loaded.eval_tasks[k]),
                    ..eval
                };
                acc.extend(one.score(&w)?);
                pb.inc(1);
            }
            pb.finish_and_clear();
            finish(&mut progress, reference(INDIVIDUAL, seed, acc, None))?;
        }
        for (label, p) in &planned {
            if stop.load(Ordering::SeqCst) {
                return Ok(RunEnd::Interrupted);
            }
            if progress.get(label, seed).is_some() {
                continue;
            }
            match p {
                Planned::Fixed { spec, sweep } => {
                    let pb = bar(opts.progress, 1, &format!("seed {seed}: {label}"));
                    let start = Instant::now();
                    let merged = loaded.tv.complete(spec.build()?.merge(&loaded.tv)?);
                    let seconds = start.elapsed().as_secs_f64();
                    let accuracy = eval.score(&merged)?;
                    let entropy =
                        adaptation_entropy(&loaded.cfg, &merged, &heads, &entropy_sampler)?;
                    pb.finish_and_clear();
                    finish(
                        &mut progress,
                        Record {
                            method: label.clone(),
                            role: Role::Fixed,
                            seed,
                            accuracy,
                            entropy: Some(entropy),
                            sweep: *sweep,
                            seconds,
                            steps: None,
                            lambda: None,
                        },
                    )?;
                }
                Planned::Learned(config) => {
                    let config = LearnConfig {
                        seed,
                        ..config.clone()
                    };
                    let job_dir = dir
                        .join("learned")
                        .join(format!("{}-seed{seed}", slug(label)));
                    let resuming = job_dir.join("checkpoint.safetensors").exists();
                    let job = Job {
                        pretrained: loaded.pretrained.clone(),
                        tasks: loaded.tasks.clone(),
                        heads_from: None,
                        config: config.clone(),
                        adaptation: exp
                            .adaptation
                            .fraction
                            .map_or(Adaptation::Transductive, Adaptation::Split),
                        eval_every: exp.eval_every,
                        eval_limit: exp.eval_limit,
                        out: job_dir.clone(),
                        save_merged: false,
                    };
                    let tv = config.task_vectors(loaded.tv.clone())?;
                    let sampler = ImageSampler::new(
                        loaded.adapt.clone(),
                        &loaded.pre,
                        config.batch_size,
                        config.batches_per_task,
                        seed,
                        &opts.device,
                    )?;
                    if opts.progress {
                        // learn_with's bar says "learning λ"; this line says which method.
                        eprintln!("seed {seed}: {label}");
                    }
                    let report = learn_with(
                        &job,
                        &loaded.cfg,
                        &tv,
                        &heads,
                        &loaded.eval_tasks,
                        &loaded.pre,
                        &sampler,
                        &opts.device,
                        resuming,
                        stop,
                    )?;
                    if report.outcome != Outcome::Finished {
                        return Ok(RunEnd::Interrupted);
                    }
                    copy_events(&job_dir.join(crate::adamerging::LOG), dir, label, seed)?;
                    let lambda_dir = dir.join("lambda");
                    std::fs::create_dir_all(&lambda_dir).map_err(|e| Error::io(&lambda_dir, e))?;
                    let stem = format!("{}-seed{seed}", slug(label));
                    report.lambda.save(&lambda_dir, &stem)?;
                    let merged = tv.complete(crate::merge::merge_all(
                        tv.base(),
                        &crate::merge::WeightedSum::new(
                            &tv,
                            &report.lambda.layering(),
                            report.lambda.applied(tv.tasks())?,
                        )?,
                    )?);
                    let entropy =
                        adaptation_entropy(&loaded.cfg, &merged, &heads, &entropy_sampler)?;
                    finish(
                        &mut progress,
                        Record {
                            method: label.clone(),
                            role: Role::Learned,
                            seed,
                            accuracy: report.after.clone(),
                            entropy: Some(entropy),
                            sweep: None,
                            seconds: report.seconds,
                            steps: Some(config.steps),
                            lambda: Some(format!("lambda/{stem}.safetensors")),
                        },
                    )?;
                }
            }
        }
    }
    let sweep_names: IndexMap<usize, String> = exp
        .methods
        .iter()
        .enumerate()
        .filter(
            |(_, m)| matches!(&m.lambda, Some(super::config::OneOrMany::Many(v)) if v.len() > 1),
        )
        .map(|(i, m)| {
            let kind = serde_json::to_value(m.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            (i, format!("{kind} (method[{i}])"))
        })
        .collect();
    let provenance = json!({
        "adamerge": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("ADAMERGE_COMMIT").unwrap_or("unknown"),
        "device": opts.backend,
        "threads": rayon::current_num_threads(),
        "seeds": exp.seeds,
        "inputs": progress.inputs,
    });
    let results = Results::aggregate(
        &exp.name,
        &task_names,
        &exp.seeds,
        &progress.records,
        &sweep_names,
        exp.paper.clone(),
        provenance,
    )?;
    crate::report::write_report(dir, &results)?;
    Ok(RunEnd::Finished(Box::new(results)))
}

/// Appends a learned method's step and eval events to the run's log, tagged with the method and
/// the seed, so one file holds the whole run.
fn copy_events(job_log: &Path, dir: &Path, label: &str, seed: u64) -> Result<()> {
    let text = std::fs::read_to_string(job_log).map_err(|e| Error::io(job_log, e))?;
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.insert("method".into(), json!(label));
                o.insert("seed".into(), json!(seed));
            }
            v
        })
        .collect();
    log_events(dir, label, seed, &["step", "eval"], &events)
}

fn reference(label: &str, seed: u64, accuracy: Vec<f64>, entropy: Option<f64>) -> Record {
    Record {
        method: label.into(),
        role: Role::Reference,
        seed,
        accuracy,
        entropy,
        sweep: None,
        seconds: 0.0,
        steps: None,
        lambda: None,
    }
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs_are_file_names_and_keep_methods_apart() {
        assert_eq!(
            slug("adamerging(layer)[steps=200,lr=0.01]"),
            "adamerging-layer-steps-200-lr-0.01"
        );
        assert_eq!(slug("adamerging++(layer)"), "adamergingpp-layer");
        assert_ne!(slug("adamerging++(task)"), slug("adamerging(task)"));
    }
}
