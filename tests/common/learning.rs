//! The AdaMerging fixture (`tests/fixtures/adamerging/`) as the learning tests read it: its task
//! vectors, heads, expected values and fixed pixel batches.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use adamerge::adamerging::{BatchSource, LearnConfig, Learner, Outcome, Session};
use adamerge::checkpoint::Checkpoint;
use adamerge::config::VisionConfig;
use adamerge::layout::LearnDir;
use adamerge::task_vector::{Finetuned, MergeScope, TaskVectors, VectorDtype};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::ProgressBar;
use serde_json::Value;

use super::fixture;

/// The fixture's pixel batches [steps, batches, B, C, H, W] per task.
pub struct FixedBatches {
    tasks: Vec<Vec<f32>>,
    dims: [usize; 6],
    batches_per_task: usize,
    device: Device,
}

impl FixedBatches {
    pub fn load(tasks: &[String], batches_per_task: usize, device: &Device) -> Self {
        let path = fixture("adamerging/batches.safetensors");
        let ckpt = Checkpoint::open(&path).expect("batches");
        let shape = ckpt.meta(&tasks[0]).expect("batch tensor").shape.clone();
        let dims: [usize; 6] = shape.try_into().expect("rank 6");
        Self {
            tasks: tasks
                .iter()
                .map(|t| ckpt.read_f32(t).expect("read"))
                .collect(),
            dims,
            batches_per_task,
            device: device.clone(),
        }
    }
}

impl BatchSource for FixedBatches {
    fn num_tasks(&self) -> usize {
        self.tasks.len()
    }
    fn batches_per_task(&self) -> usize {
        self.batches_per_task
    }
    fn batch(&self, task: usize, step: usize, b: usize) -> adamerge::Result<Tensor<4>> {
        let [steps, per, n, c, h, w] = self.dims;
        let size = n * c * h * w;
        let at = ((step % steps) * per + b) * size;
        let values = self.tasks[task][at..at + size].to_vec();
        Ok(Tensor::from_data(
            TensorData::new(values, [n, c, h, w]),
            &self.device,
        ))
    }
}

/// The fixture's inputs and `expected.json`.
pub struct Setup {
    pub cfg: VisionConfig,
    pub tv: TaskVectors,
    pub heads: Vec<Tensor<2>>,
    pub expected: Value,
    pub device: Device,
}

/// Loads the fixture on the flex device.
pub fn setup() -> Setup {
    let device = Device::flex();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("adamerging/expected.json")).expect("expected.json"),
    )
    .expect("json");
    let tasks: Vec<String> = expected["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t.as_str().expect("name").to_string())
        .collect();
    let pretrained = fixture("adamerging/pretrained");
    let finetuned: Vec<Finetuned> = tasks
        .iter()
        .map(|t| Finetuned {
            name: t.clone(),
            path: fixture(&format!("adamerging/finetuned/{t}")),
        })
        .collect();
    let (tv, _) = TaskVectors::load(
        &pretrained,
        &finetuned,
        &MergeScope::default(),
        VectorDtype::F32,
        &device,
        &ProgressBar::hidden(),
    )
    .expect("task vectors");
    let cfg =
        VisionConfig::of_checkpoint(&Checkpoint::open(&pretrained).expect("open")).expect("config");
    let heads_file = Checkpoint::open(fixture("adamerging/heads.safetensors")).expect("heads");
    let heads = tasks
        .iter()
        .map(|t| {
            let shape = heads_file.meta(t).expect("head").shape.clone();
            Tensor::<1>::from_data(
                TensorData::new(heads_file.read_f32(t).expect("read"), [shape[0] * shape[1]]),
                &device,
            )
            .reshape([shape[0], shape[1]])
        })
        .collect();
    Setup {
        cfg,
        tv,
        heads,
        expected,
        device,
    }
}

/// The case called `name` of an `expected.json`.
pub fn case<'e>(expected: &'e Value, name: &str) -> &'e Value {
    expected["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// A JSON matrix of numbers.
pub fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

/// Runs `config` for `steps` steps in folder `dir` on the fixture's batches until they are done
/// (or `stop` is set), as `learn` does; returns the learner and how the run ended.
pub fn run_in<'a>(
    s: &'a Setup,
    config: &LearnConfig,
    steps: usize,
    dir: &Path,
    stop: &AtomicBool,
) -> (Learner<'a>, Outcome) {
    let config = LearnConfig {
        steps,
        ..config.clone()
    };
    let batches = FixedBatches::load(s.tv.tasks(), config.batches_per_task, &s.device);
    let mut learner = Learner::new(&s.cfg, &s.tv, &s.heads, config, &s.device).expect("learner");
    let outcome = Session::new(&mut learner, LearnDir::new(dir))
        .expect("session")
        .run(&batches, None, &ProgressBar::hidden(), stop)
        .expect("run");
    (learner, outcome)
}

/// The objective on step 0's batches (one per task) through the plain forward of `merged`, no
/// gradient code: what finite differences of the learners' gradients are taken of.
pub fn step0_loss(s: &Setup, merged: &adamerge::weights::Weights) -> f64 {
    let batches = FixedBatches::load(s.tv.tasks(), 1, &s.device);
    let mut total = 0.0;
    for (k, head) in s.heads.iter().enumerate() {
        let embeds =
            adamerge::model::vision_forward(&s.cfg, merged, batches.batch(k, 0, 0).expect("batch"))
                .expect("forward")
                .image_embeds
                .expect("projection");
        let loss =
            adamerge::adamerging::mean_entropy(adamerge::model::logits(embeds, head.clone()));
        total += adamerge::weights::scalar(loss).expect("loss");
    }
    total
}

/// Steps `learner` once per entry of the case's `losses` (PyTorch's objective before each
/// update) and checks every step's loss against it to 1e-4 relative; returns how many steps.
pub fn step_through_losses(
    name: &str,
    learner: &mut Learner<'_>,
    batches: &FixedBatches,
    case: &Value,
) -> usize {
    let losses: Vec<f64> = case["losses"]
        .as_array()
        .expect("losses")
        .iter()
        .map(|v| v.as_f64().expect("loss"))
        .collect();
    for (step, want) in losses.iter().enumerate() {
        let record = learner.step(batches).expect("step");
        assert!(
            (record.loss - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{name}: loss at step {step}: {} vs PyTorch {want}",
            record.loss
        );
    }
    losses.len()
}
