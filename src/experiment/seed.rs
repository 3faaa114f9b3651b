//! One seed of an experiment run: its inputs loaded once through the pipeline, then the
//! references and every planned method run on them, each recorded as it finishes.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use indicatif::ProgressBar;

use super::config::Experiment;
use crate::adamerging::{
    BatchSource, ImageSampler, LearnConfig, LearnOptions, Outcome, learn_with, mean_entropy,
    sampler_for,
};
use crate::checkpoint::{Checkpoint, load_weights};
use crate::config::VisionConfig;
use crate::data_merge::{DataInputs, DataMerge};
use crate::device::{side_by_side, waves};
use crate::error::{Error, Result};
use crate::eval::EvalSet;
use crate::layout::RunDir;
use crate::merge::{MergeMethod, SpectralDeltas, WeightedSum, merge_all};
use crate::model::{VisionTower, logits};
use crate::pipeline::{Adaptation, LoadSpec, Loaded, TaskPaths, images_used};
use crate::results::{INDIVIDUAL, ImagesUsed, PRETRAINED, Record, Role};
use crate::weights::{Weights, scalar};

/// What a seed runs on.
pub struct SeedRun {
    /// The seed.
    pub seed: u64,
    /// The tasks' files.
    pub tasks: Vec<TaskPaths>,
    /// Everything loaded.
    pub loaded: Loaded,
    /// Where the adaptation images come from.
    adaptation: Adaptation,
    /// Where the run's scoring settings come from.
    eval_every: usize,
    device: Device,
}

/// Batches of the AdaMerging objective scored for every merge: the first steps of the run's
/// sampler (or the one batch that already holds every image of a small set).
const ENTROPY_STEPS: usize = 4;

impl SeedRun {
    /// Loads `spec` (the seed's inputs).
    pub fn load(
        spec: &LoadSpec<'_>,
        eval_every: usize,
        device: &Device,
        progress: bool,
    ) -> Result<Self> {
        let loading =
            crate::progress::bar_if(progress, 0, "{msg:40} [{bar:30}] {pos}/{len} {elapsed}")
                .with_message("loading checkpoints");
        let loaded = crate::pipeline::load(spec, device, &loading)?;
        Ok(Self {
            seed: spec.seed,
            tasks: spec.tasks.to_vec(),
            loaded,
            adaptation: spec.adaptation,
            eval_every,
            device: device.clone(),
        })
    }

    /// The scoring of merged weights on the tasks' labelled images.
    pub fn eval(&self) -> EvalSet<'_> {
        EvalSet {
            cfg: &self.loaded.cfg,
            tasks: &self.loaded.eval_tasks,
            pre: &self.loaded.pre,
            every: self.eval_every,
            batch_size: 64,
            device: &self.device,
        }
    }

    fn entropy_sampler(&self) -> Result<ImageSampler<'_>> {
        let d = LearnConfig::default();
        ImageSampler::new(
            self.loaded.adapt.clone(),
            &self.loaded.pre,
            d.batch_size,
            1,
            self.seed,
            &self.device,
        )
    }

    /// The AdaMerging objective of merged weights on fixed adaptation batches: what a user
    /// without labels can compare methods by.
    pub fn entropy(&self, w: &Weights) -> Result<f64> {
        adaptation_entropy(
            &self.loaded.cfg,
            w,
            &self.loaded.heads(),
            &self.entropy_sampler()?,
        )
    }

    /// The pretrained model on every task.
    pub fn pretrained(&self) -> Result<Record> {
        let pretrained = self.loaded.tv.pretrained();
        let accuracy = self.eval().score(&pretrained)?;
        Ok(reference(
            PRETRAINED,
            self.seed,
            accuracy,
            Some(self.entropy(&pretrained)?),
        ))
    }

    /// Each task's own fine-tune on its task.
    pub fn individual(&self, pb: &ProgressBar) -> Result<Record> {
        let eval = self.eval();
        let mut acc = Vec::new();
        for (k, t) in self.tasks.iter().enumerate() {
            let ckpt = Checkpoint::open(&t.checkpoint)?;
            let theta0 = self.loaded.tv.theta0();
            let w = load_weights(&ckpt, &self.device, |n| theta0.get(n).is_some())?;
            // Tensors a vision-only fine-tune lacks (the projection) come from θ₀.
            let w = self.loaded.tv.complete(w);
            let one = EvalSet {
                tasks: std::slice::from_ref(&self.loaded.eval_tasks[k]),
                ..eval
            };
            acc.extend(one.score(&w)?);
            pb.inc(1);
        }
        Ok(reference(INDIVIDUAL, self.seed, acc, None))
    }

    /// A fixed merge, scored; a spectral one from the Δ of the run's shared SVD pass where
    /// `shared` holds it.
    pub fn fixed(
        &self,
        label: &str,
        method: &dyn MergeMethod,
        sweep: Option<usize>,
        shared: Option<&SpectralDeltas>,
    ) -> Result<Record> {
        let start = Instant::now();
        let tv = &self.loaded.tv;
        let from_shared = method
            .spectral()
            .zip(shared)
            .and_then(|(s, d)| Some((s, d.get(s)?, d.seconds)));
        let (merged, svd_seconds) = match from_shared {
            Some((s, delta, seconds)) => (s.merge_from(tv, delta)?, Some(seconds)),
            None => (method.merge(tv)?, None),
        };
        let merged = tv.complete(merged);
        let mut r = self.merged_record(label, Role::Fixed, &merged, sweep, start, None)?;
        r.svd_seconds = svd_seconds;
        Ok(r)
    }

    /// A data-based merge (RegMean, Fisher), from the seed's unlabeled images, scored;
    /// `progress` follows the merge.
    pub fn data(
        &self,
        label: &str,
        method: &dyn DataMerge,
        sweep: Option<usize>,
        progress: &ProgressBar,
    ) -> Result<Record> {
        let start = Instant::now();
        let heads = self.loaded.heads();
        let inputs = DataInputs {
            cfg: &self.loaded.cfg,
            pre: &self.loaded.pre,
            tv: &self.loaded.tv,
            images: &self.loaded.adapt,
            heads: &heads,
            seed: self.seed,
            progress,
        };
        let merged = self
            .loaded
            .tv
            .complete(method.merge(&inputs, &self.device)?);
        let images = images_used(
            &self.tasks,
            &self.loaded.adapt,
            method.images(),
            self.adaptation,
        );
        self.merged_record(label, Role::Data, &merged, sweep, start, Some(images))
    }

    /// The record of a merge computed in one go since `start`: scored, with its entropy.
    fn merged_record(
        &self,
        label: &str,
        role: Role,
        merged: &Weights,
        sweep: Option<usize>,
        start: Instant,
        images: Option<Vec<ImagesUsed>>,
    ) -> Result<Record> {
        let seconds = start.elapsed().as_secs_f64();
        Ok(Record {
            method: label.to_string(),
            role,
            seed: self.seed,
            accuracy: self.eval().score(merged)?,
            entropy: Some(self.entropy(merged)?),
            sweep,
            seconds,
            steps: None,
            lambda: None,
            images,
            svd_seconds: None,
        })
    }

    /// A learned merge: learns in the run's `learned/` folder (resuming what an interrupted run
    /// left there), saves λ under `lambda/` and scores it; `None` when stopped.
    pub fn learned(
        &self,
        label: &str,
        config: &LearnConfig,
        dir: &RunDir,
        stop: &AtomicBool,
    ) -> Result<Option<Record>> {
        let config = LearnConfig {
            seed: self.seed,
            ..config.clone()
        };
        let options = LearnOptions {
            config: config.clone(),
            eval_every: self.eval_every,
            dir: dir.learned(label, self.seed),
            save_merged: false,
        };
        let resuming = options.dir.checkpoint().exists();
        let tv = config.task_vectors(self.loaded.tv.clone())?;
        let sampler = sampler_for(&self.loaded, &config, &self.device)?;
        let report = learn_with(
            &options,
            &self.loaded,
            &tv,
            &sampler,
            &self.device,
            resuming,
            stop,
        )?;
        if report.outcome != Outcome::Finished {
            return Ok(None);
        }
        super::runner::copy_events(&options.dir.log(), dir, label, self.seed)?;
        let stem = RunDir::stem(label, self.seed);
        report.lambda.save(&dir.lambda_dir(), &stem)?;
        let weighted = WeightedSum::new(
            &tv,
            &report.lambda.layering(),
            report.lambda.applied(tv.tasks())?,
        )?;
        let merged = tv.complete(merge_all(tv.theta0(), &weighted)?);
        Ok(Some(Record {
            method: label.to_string(),
            role: Role::Learned,
            seed: self.seed,
            accuracy: report.after.clone(),
            entropy: Some(self.entropy(&merged)?),
            sweep: None,
            seconds: report.seconds,
            steps: Some(config.steps),
            lambda: Some(RunDir::lambda_file(label, self.seed)),
            images: None,
            svd_seconds: None,
        }))
    }
}

/// A content key of a checkpoint's weights: the safetensors headers (names, dtypes, shapes and
/// offsets) and the first and last MiB of data, hashed; cheap on multi-GB files.
pub fn checkpoint_hash(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut files: Vec<std::path::PathBuf> = crate::data::entries(dir)?
        .into_iter()
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

/// Σ over tasks of the mean entropy of merged weights `w` on the sampler's first batches.
fn adaptation_entropy(
    cfg: &VisionConfig,
    w: &Weights,
    heads: &[Tensor<2>],
    sampler: &ImageSampler<'_>,
) -> Result<f64> {
    let tower = VisionTower::new(cfg, w)?;
    // Tasks side by side on the CPU; their means are summed in task order after.
    let tasks: Vec<(usize, &Tensor<2>)> = heads.iter().enumerate().collect();
    let width = heads.first().map_or(1, |h| side_by_side(&h.device()));
    let means = waves(&tasks, width, |&(k, head)| {
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
        Ok(sum / steps as f64)
    })?;
    Ok(means.iter().sum())
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
        images: None,
        svd_seconds: None,
    }
}

/// The pipeline's inputs of a seed of `exp`.
pub fn load_spec<'a>(
    paths: &'a super::paths::SeedPaths,
    adaptation: Adaptation,
    seed: u64,
    exp: &Experiment,
) -> LoadSpec<'a> {
    LoadSpec {
        pretrained: &paths.pretrained,
        tasks: &paths.tasks,
        heads_from: paths.heads_from.as_deref(),
        adaptation,
        seed,
        limit: exp.limit,
        eval_limit: exp.eval_limit,
        tau_dtype: exp.tau_dtype,
    }
}
