//! AdaMerging against an independent PyTorch implementation
//! (`scripts/reference/reference_adamerging.py`, fixture in `tests/fixtures/adamerging/`), finite
//! differences, and resumption.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use adamerge::adamerging::{Granularity, LearnConfig, Learner, Outcome, Session, StepRecord};
use adamerge::layout::LearnDir;
use adamerge::task_vector::TaskVectors;
use common::learning::{
    FixedBatches, Setup, case, matrix, run_in, setup, step_through_losses, step0_loss,
};
use indicatif::ProgressBar;
use serde_json::Value;

fn config_of(c: &Value) -> LearnConfig {
    LearnConfig {
        granularity: if c["granularity"] == "task" {
            Granularity::Task
        } else {
            Granularity::Layer
        },
        steps: c["steps"].as_u64().expect("steps") as usize,
        lr: c["lr"].as_f64().expect("lr"),
        clamp: c["clamp"].as_bool().expect("clamp"),
        batches_per_task: c["batches_per_task"].as_u64().expect("bpt") as usize,
        ties_k: c["ties_k"].as_f64(),
        batch_size: 4,
        ..LearnConfig::default()
    }
}

/// Reorders a [K][L] matrix given over the fixture's units into the learner's unit order.
fn to_learner_order(learner: &Learner<'_>, units: &Value, m: &[Vec<f64>]) -> Vec<f32> {
    let names: Vec<&str> = units
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["name"].as_str().expect("unit name"))
        .collect();
    let col: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut out = Vec::new();
    for row in m {
        if row.len() == 1 {
            out.push(row[0] as f32);
            continue;
        }
        for unit in learner.layering().units() {
            out.push(row[col[unit.name.as_str()]] as f32);
        }
    }
    out
}

fn processed(tv: &TaskVectors, ties_k: Option<f64>) -> TaskVectors {
    LearnConfig {
        ties_k,
        ..LearnConfig::default()
    }
    .task_vectors(tv.clone())
    .expect("processed")
}

fn run_case(s: &Setup, name: &str) {
    let c = case(&s.expected, name);
    let config = config_of(c);
    let tv = processed(&s.tv, config.ties_k);
    let mut learner =
        Learner::new(&s.cfg, &tv, &s.heads, config.clone(), &s.device).expect("learner");
    let init = to_learner_order(&learner, &c["units"], &matrix(&c["lambda_init"]));
    learner.set_lambda(init).expect("init");
    let batches = FixedBatches::load(tv.tasks(), config.batches_per_task, &s.device);
    let steps = step_through_losses(name, &mut learner, &batches, c);
    let want = to_learner_order(&learner, &c["units"], &matrix(&c["lambda_final"]));
    let got = learner.lambda().unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let moved = got
        .iter()
        .zip(learner_init(&learner, c))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 0.05, "{name}: λ barely moved ({moved})");
    assert!(
        worst <= 1e-4,
        "{name}: λ after {} steps differs from PyTorch's by {worst}",
        steps
    );
}

fn learner_init(learner: &Learner<'_>, c: &Value) -> Vec<f32> {
    to_learner_order(learner, &c["units"], &matrix(&c["lambda_init"]))
}

#[test]
fn task_wise_matches_pytorch_after_20_steps() {
    run_case(&setup(), "task_wise");
}

#[test]
fn layer_wise_with_clamping_matches_pytorch_after_20_steps() {
    run_case(&setup(), "layer_wise");
}

#[test]
fn adamerging_plus_plus_matches_pytorch_after_20_steps() {
    run_case(&setup(), "layer_wise_pp");
}

#[test]
fn two_batches_per_task_without_clamp_matches_pytorch() {
    run_case(&setup(), "layer_wise_two_batches_noclamp");
}

#[test]
fn ties_processed_vectors_match_the_reference_digest() {
    let s = setup();
    let c = case(&s.expected, "layer_wise_pp");
    let tv = processed(&s.tv, Some(0.2));
    for (k, task) in tv.tasks().iter().enumerate() {
        let (mut l1, mut nonzeros) = (0f64, 0usize);
        for (_, t) in tv.stored(k).iter() {
            for v in t.to_vec().unwrap() {
                l1 += v.abs() as f64;
                nonzeros += usize::from(v != 0.0);
            }
        }
        let want = &c["ties_checks"][task];
        assert_eq!(
            nonzeros as u64,
            want["nonzeros"].as_u64().expect("nz"),
            "{task}"
        );
        let l1_want = want["l1"].as_f64().expect("l1");
        assert!(
            (l1 - l1_want).abs() <= 1e-5 * l1_want,
            "{task}: {l1} vs {l1_want}"
        );
    }
}

/// The loss at λ, on step 0's batches, through the plain merged forward (no gradient code).
fn loss_at(s: &Setup, config: &LearnConfig, lambda: Vec<f32>) -> f64 {
    let mut learner =
        Learner::new(&s.cfg, &s.tv, &s.heads, config.clone(), &s.device).expect("learner");
    learner.set_lambda(lambda).expect("λ");
    step0_loss(s, &learner.merged().expect("merged"))
}

/// Central differences with Richardson extrapolation (f32 forward, so h cannot be tiny).
fn check_finite_differences(granularity: Granularity) {
    let s = setup();
    let config = LearnConfig {
        granularity,
        batch_size: 4,
        ..LearnConfig::default()
    };
    let learner = Learner::new(&s.cfg, &s.tv, &s.heads, config.clone(), &s.device).expect("l");
    let (k, l) = learner.shape();
    // Interior values, away from the clamp bounds by more than the largest step (0.08).
    let lambda: Vec<f32> = (0..k * l)
        .map(|i| 0.25 + 0.5 * ((i * 37 % 101) as f32 / 101.0))
        .collect();
    let mut learner = learner;
    learner.set_lambda(lambda.clone()).expect("λ");
    let batches = FixedBatches::load(s.tv.tasks(), 1, &s.device);
    let (grad, _) = learner.gradient(&batches).expect("gradient");
    let central = |i: usize, h: f32| {
        let mut plus = lambda.clone();
        plus[i] += h;
        let mut minus = lambda.clone();
        minus[i] -= h;
        (loss_at(&s, &config, plus) - loss_at(&s, &config, minus)) / (2.0 * h as f64)
    };
    // Layer-wise: a spread of entries over every task; task-wise: all.
    let picks: Vec<usize> = if l == 1 {
        (0..k).collect()
    } else {
        (0..k * l).step_by(7).collect()
    };
    let (mut err2, mut norm2) = (0.0f64, 0.0f64);
    for &i in &picks {
        let fd = (4.0 * central(i, 0.04) - central(i, 0.08)) / 3.0;
        err2 += (grad[i] as f64 - fd).powi(2);
        norm2 += fd * fd;
    }
    let rel = (err2 / norm2).sqrt();
    eprintln!("{granularity}: finite-difference relative error {rel:.2e}");
    assert!(norm2 > 1e-6, "gradient too small to check");
    assert!(rel <= 1e-3, "{granularity}: relative error {rel}");
}

#[test]
fn task_wise_gradient_matches_finite_differences() {
    check_finite_differences(Granularity::Task);
}

#[test]
fn layer_wise_gradient_matches_finite_differences() {
    check_finite_differences(Granularity::Layer);
}

#[test]
fn gradient_matches_pytorch_float64_autograd() {
    let s = setup();
    let g = &s.expected["gradient_check"];
    let c = case(&s.expected, "layer_wise");
    let config = LearnConfig {
        batch_size: 4,
        ..config_of(c)
    };
    let mut learner = Learner::new(&s.cfg, &s.tv, &s.heads, config, &s.device).expect("learner");
    learner
        .set_lambda(to_learner_order(
            &learner,
            &c["units"],
            &matrix(&g["lambda"]),
        ))
        .expect("λ");
    let batches = FixedBatches::load(s.tv.tasks(), 1, &s.device);
    let (grad, record) = learner.gradient(&batches).expect("gradient");
    let want = to_learner_order(&learner, &c["units"], &matrix(&g["grad"]));
    let loss = g["loss"].as_f64().expect("loss");
    assert!(
        (record.loss - loss).abs() < 1e-5,
        "{} vs {loss}",
        record.loss
    );
    let err: f64 = grad
        .iter()
        .zip(&want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    let rel = (err / norm).sqrt();
    eprintln!("relative error against float64 autograd {rel:.2e}");
    assert!(rel <= 1e-4, "relative error {rel}");
}

/// The joint forward (all tasks' batches in one graph), groups of two tasks (3 tasks: 2 + 1),
/// the automatic plan (those two groups side by side, on threads of their own) and one task at a
/// time give the same gradient and, over steps inside the clamp bounds, the same λ: only the
/// summation order differs. Side by side or in turn, one thread or three, the same groups give
/// the same bits.
#[test]
fn joint_and_per_task_forwards_agree() {
    let s = setup();
    let run = |tasks_per_forward: Option<usize>, threads: usize| {
        let config = LearnConfig {
            batch_size: 4,
            batches_per_task: 2,
            lr: 1e-2,
            tasks_per_forward,
            ..LearnConfig::default()
        };
        let mut learner =
            Learner::new(&s.cfg, &s.tv, &s.heads, config, &s.device).expect("learner");
        let (k, l) = learner.shape();
        let init: Vec<f32> = (0..k * l)
            .map(|i| 0.35 + 0.3 * ((i * 37 % 101) as f32 / 101.0))
            .collect();
        learner.set_lambda(init).expect("λ");
        let batches = FixedBatches::load(s.tv.tasks(), 2, &s.device);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let (grad, record) = learner.gradient(&batches).expect("gradient");
            for _ in 0..5 {
                learner.step(&batches).expect("step");
            }
            (grad, record, learner.lambda().expect("λ"))
        })
    };
    let (g1, r1, l1) = run(Some(1), 2);
    let norm = g1.iter().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 1e-3, "gradient too small to compare ({norm})");
    assert!(
        l1.iter().all(|l| (0.05..=0.95).contains(l)),
        "λ reached a clamp bound"
    );
    // Everything but the step's wall time.
    let bits = |(g, r, l): (Vec<f32>, StepRecord, Vec<f32>)| (g, r.loss, r.entropy, l);
    let side_by_side = bits(run(None, 3));
    assert_eq!(
        side_by_side,
        bits(run(Some(2), 2)),
        "side by side and in turn"
    );
    assert_eq!(side_by_side, bits(run(None, 1)), "one thread and three");
    for tasks in [Some(2), Some(3), None] {
        let (g, r, l) = run(tasks, 2);
        let err = g
            .iter()
            .zip(&g1)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            err <= 1e-5 * norm,
            "{tasks:?}: gradient differs by {err} (norm {norm})"
        );
        for (a, b) in r.entropy.iter().zip(&r1.entropy) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{tasks:?}: {a} vs {b}"
            );
        }
        let worst = l
            .iter()
            .zip(&l1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{tasks:?}: λ differs by {worst} after 5 steps"
        );
    }
}

#[test]
fn no_gradient_reaches_theta0_or_task_vectors() {
    let s = setup();
    let config = LearnConfig {
        batch_size: 4,
        steps: 2,
        ..LearnConfig::default()
    };
    let mut learner = Learner::new(&s.cfg, &s.tv, &s.heads, config, &s.device).expect("learner");
    let batches = FixedBatches::load(s.tv.tasks(), 1, &s.device);
    learner.step(&batches).expect("step");
    for (name, t) in s.tv.theta0().iter() {
        assert!(
            !t.data.is_autodiff() && !t.data.is_require_grad(),
            "θ₀ {name}"
        );
    }
    for k in 0..s.tv.num_tasks() {
        for (name, t) in s.tv.stored(k).iter() {
            assert!(
                !t.data.is_autodiff() && !t.data.is_require_grad(),
                "τ_{k} {name}"
            );
        }
    }
    for (name, t) in learner.merged().expect("merged").iter() {
        assert!(!t.data.is_require_grad(), "merged {name}");
    }
}

#[test]
fn a_resumed_run_ends_with_the_same_lambda() {
    let s = setup();
    let config = LearnConfig {
        batch_size: 4,
        steps: 6,
        lr: 1e-2,
        ..LearnConfig::default()
    };
    let batches = FixedBatches::load(s.tv.tasks(), 1, &s.device);
    let never = AtomicBool::new(false);

    let straight_dir = tempfile::tempdir().expect("tmp");
    let (straight, outcome) = run_in(&s, &config, 6, straight_dir.path(), &never);
    assert_eq!(outcome, Outcome::Finished);

    // Stop after 3 steps (as Ctrl-C would), then resume in a fresh learner.
    let dir = tempfile::tempdir().expect("tmp");
    run_in(&s, &config, 3, dir.path(), &never);
    let stop = AtomicBool::new(true);
    let mut second = Learner::new(&s.cfg, &s.tv, &s.heads, config.clone(), &s.device).unwrap();
    let mut session = Session::new(&mut second, LearnDir::new(dir.path())).unwrap();
    assert_eq!(session.resume().unwrap(), 3);
    assert_eq!(
        session
            .run(&batches, None, &ProgressBar::hidden(), &stop)
            .unwrap(),
        Outcome::Interrupted(3)
    );
    let mut session = Session::new(&mut second, LearnDir::new(dir.path())).unwrap();
    session.resume().unwrap();
    session
        .run(&batches, None, &ProgressBar::hidden(), &never)
        .unwrap();
    assert_eq!(second.steps_done(), 6);
    assert_eq!(second.lambda().unwrap(), straight.lambda().unwrap());

    // The log holds each step once, in order.
    let log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);

    // Other settings cannot resume this run.
    let mut other = Learner::new(
        &s.cfg,
        &s.tv,
        &s.heads,
        LearnConfig { seed: 9, ..config },
        &s.device,
    )
    .unwrap();
    let err = Session::new(&mut other, LearnDir::new(dir.path()))
        .unwrap()
        .resume()
        .unwrap_err();
    assert!(err.to_string().contains("checkpoint"), "{err}");
}

/// The wgpu backend (a GPU, or Mesa's software Vulkan without one) learns the λ the CPU does.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_lambda_agrees_with_the_cpu_backend() {
    use burn::tensor::{Device, Tensor};
    let cpu = setup();
    let gpu_device = Device::wgpu(Default::default());
    let config = LearnConfig {
        batch_size: 4,
        lr: 1e-2,
        ..LearnConfig::default()
    };
    let lambda_on = |s: &Setup, device: &Device| {
        let tv = s.tv.to_device(device).unwrap();
        let heads: Vec<Tensor<2>> = s
            .heads
            .iter()
            .map(|h| h.clone().to_device(device))
            .collect();
        let mut learner = Learner::new(&s.cfg, &tv, &heads, config.clone(), device).unwrap();
        let batches = FixedBatches::load(tv.tasks(), 1, device);
        for _ in 0..3 {
            learner.step(&batches).unwrap();
        }
        learner.lambda().unwrap()
    };
    let a = lambda_on(&cpu, &cpu.device);
    let b = lambda_on(&cpu, &gpu_device);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    eprintln!("wgpu vs cpu: max |Δλ| after 3 steps = {worst:.2e}");
    assert!(worst <= 1e-4, "wgpu λ differs from the CPU's by {worst}");
}
