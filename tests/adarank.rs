//! AdaRank (masks over singular components, learned with λ) against an independent PyTorch
//! implementation (`scripts/reference/reference_adarank.py`, fixture `tests/fixtures/adarank/`,
//! on the AdaMerging fixture's models), central finite differences, resumption, and saved
//! coefficients applied again.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use adamerge::adamerging::{LearnConfig, LearnedLambda, Learner, Session};
use adamerge::layout::LearnDir;
use adamerge::merge::{Base, ComponentConfig, Decompose, MaskKind, MergeMethod, Qkv, Rest};
use common::fixture;
use common::learning::{
    FixedBatches, Setup, case, matrix, run_in, setup, step_through_losses, step0_loss,
};
use indicatif::ProgressBar;
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("adarank/expected.json")).expect("expected.json"),
    )
    .expect("json")
}

fn config_of(c: &Value) -> LearnConfig {
    let str_of = |k: &str| c[k].as_str().unwrap_or_else(|| panic!("config.{k}"));
    let num = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("config.{k}"));
    LearnConfig {
        steps: c["steps"].as_u64().expect("steps") as usize,
        lr: num("lr"),
        init: num("init"),
        clamp: c["clamp"].as_bool().expect("clamp"),
        batch_size: 4,
        batches_per_task: c["batches_per_task"].as_u64().expect("bpt") as usize,
        components: Some(ComponentConfig {
            base: if str_of("base") == "tsv-m" {
                Base::TsvM
            } else {
                Base::Ta
            },
            decompose: if str_of("decompose") == "matrices" {
                Decompose::Matrices
            } else {
                Decompose::AttnMlp
            },
            qkv: if str_of("qkv") == "split" {
                Qkv::Split
            } else {
                Qkv::Fused
            },
            rank: num("rank"),
            rest: if str_of("rest") == "keep" {
                Rest::Keep
            } else {
                Rest::Drop
            },
            mask: if str_of("mask") == "soft" {
                MaskKind::Soft
            } else {
                MaskKind::Hard
            },
            temperature: num("temperature"),
            mask_init: num("mask_init"),
        }),
        ..LearnConfig::default()
    }
}

/// A [K][L] matrix over the fixture's λ units, in the learner's column order.
fn lambda_in_learner_order(learner: &Learner<'_>, c: &Value, m: &[Vec<f64>]) -> Vec<f64> {
    let col: HashMap<&str, usize> = c["lambda_units"]
        .as_array()
        .expect("lambda_units")
        .iter()
        .enumerate()
        .map(|(i, u)| (u["name"].as_str().expect("name"), i))
        .collect();
    m.iter()
        .flat_map(|row| {
            learner
                .layering()
                .units()
                .iter()
                .map(|u| row[col[u.name.as_str()]])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A per-unit [K][components] field of the fixture, flat in the learner's mask order.
fn masks_in_learner_order(learner: &Learner<'_>, c: &Value, field: &str) -> Vec<f64> {
    let units: HashMap<&str, &Value> = c["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| (u["name"].as_str().expect("name"), u))
        .collect();
    let d = learner.decomposition().expect("components");
    assert_eq!(d.units().len(), units.len(), "decomposed units");
    d.units()
        .iter()
        .flat_map(|u| matrix(&units[u.name.as_str()][field]).concat())
        .collect()
}

/// max |a − b| / max |b|.
fn rel_to_max(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
    worst / scale.max(1e-30)
}

fn max_abs(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()))
}

fn run_case(name: &str) {
    let s = setup();
    let all = expected();
    let c = case(&all, name);
    let config = config_of(&c["config"]);
    let mut learner =
        Learner::new(&s.cfg, &s.tv, &s.heads, config.clone(), &s.device).expect("learner");
    let (k, l) = learner.shape();

    // The same components: counts and singular values (the vectors' signs may differ).
    let d = learner.decomposition().expect("components");
    for unit in c["units"].as_array().expect("units") {
        let name = unit["name"].as_str().expect("name");
        let ours = d
            .units()
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("unit {name} not decomposed"));
        let kept: Vec<usize> = unit["kept"]
            .as_array()
            .expect("kept")
            .iter()
            .map(|v| v.as_u64().expect("count") as usize)
            .collect();
        assert_eq!(ours.counts, kept, "{name}: components per task");
        let sigma = matrix(&unit["singular_values"]).concat();
        assert!(
            rel_to_max(&ours.sigma, &sigma) <= 1e-5,
            "{name}: singular values"
        );
    }

    // The first gradient, λ and mask logits.
    let batches = FixedBatches::load(s.tv.tasks(), 1, &s.device);
    let (grad, _) = learner.gradient(&batches).expect("gradient");
    let want_l = lambda_in_learner_order(&learner, c, &matrix(&c["lambda_grad_init"]));
    let want_m = masks_in_learner_order(&learner, c, "mask_grad_init");
    let (gl, gm) = grad.split_at(k * l);
    let (el, em) = (rel_to_max(gl, &want_l), rel_to_max(gm, &want_m));
    eprintln!("{name}: initial gradient vs PyTorch: λ {el:.1e}, masks {em:.1e} (of the largest)");
    assert!(el <= 1e-4 && em <= 1e-4, "{name}: λ {el}, masks {em}");

    // Twenty Adam steps.
    let steps = step_through_losses(name, &mut learner, &batches, c);
    let lambda = lambda_in_learner_order(&learner, c, &matrix(&c["lambda_final"]));
    let masks = masks_in_learner_order(&learner, c, "mask_final");
    let (dl, dm) = (
        max_abs(&learner.lambda().unwrap(), &lambda),
        max_abs(&learner.masks().unwrap().expect("masks"), &masks),
    );
    eprintln!(
        "{name}: after {} steps, max |Δλ| {dl:.1e}, max |Δm| {dm:.1e}",
        steps
    );
    assert!(dl <= 1e-4 && dm <= 1e-4, "{name}: λ {dl}, masks {dm}");
    let init = config.components.expect("components").mask_init as f32;
    let moved = learner
        .masks()
        .unwrap()
        .expect("masks")
        .iter()
        .fold(0f32, |m, v| m.max((v - init).abs()));
    assert!(moved > 0.05, "{name}: the masks barely moved ({moved})");
    if let Some(flips) = c["mask_flips"].get("final_differs") {
        let ours = learner
            .masks()
            .unwrap()
            .expect("masks")
            .iter()
            .filter(|m| (**m > 0.0) != (init > 0.0))
            .count();
        assert_eq!(
            ours as u64,
            flips.as_u64().expect("flips"),
            "{name}: masks flipped"
        );
    }
}

#[test]
fn task_arithmetic_base_with_hard_masks_matches_pytorch() {
    run_case("ta_hard");
}

#[test]
fn soft_masks_match_pytorch() {
    run_case("ta_soft");
}

#[test]
fn half_rank_with_the_rest_kept_and_split_qkv_matches_pytorch() {
    run_case("ta_hard_half_keep");
}

#[test]
fn tsv_m_base_matches_pytorch() {
    run_case("tsvm_hard");
}

/// The entropy objective of step 0's batches at the given coefficients, through the merged
/// model alone (no gradient code).
fn loss_at(s: &Setup, config: &LearnConfig, lambda: Vec<f32>, masks: Vec<f32>) -> f64 {
    let mut learner =
        Learner::new(&s.cfg, &s.tv, &s.heads, config.clone(), &s.device).expect("learner");
    learner.set_lambda(lambda).expect("λ");
    learner.set_masks(masks).expect("masks");
    step0_loss(s, &learner.merged().expect("merged"))
}

#[test]
fn soft_mask_gradient_matches_finite_differences() {
    let s = setup();
    let all = expected();
    let mut config = config_of(&case(&all, "ta_soft")["config"]);
    // Rest kept, so that λ's gradient has its three parts: components, rest, other tensors.
    if let Some(c) = config.components.as_mut() {
        c.rank = 0.5;
        c.rest = Rest::Keep;
    }
    let mut learner =
        Learner::new(&s.cfg, &s.tv, &s.heads, config.clone(), &s.device).expect("learner");
    let (k, l) = learner.shape();
    let m = learner.decomposition().expect("components").num_masks();
    let lambda: Vec<f32> = (0..k * l)
        .map(|i| 0.2 + 0.6 * ((i * 37 % 101) as f32 / 101.0))
        .collect();
    let masks: Vec<f32> = (0..m)
        .map(|i| -2.0 + 4.0 * ((i * 53 % 97) as f32 / 97.0))
        .collect();
    learner.set_lambda(lambda.clone()).unwrap();
    learner.set_masks(masks.clone()).unwrap();
    let batches = FixedBatches::load(s.tv.tasks(), 1, &s.device);
    let (grad, _) = learner.gradient(&batches).expect("gradient");
    let loss = |i: usize, h: f32| {
        let (mut lam, mut mk) = (lambda.clone(), masks.clone());
        if i < k * l {
            lam[i] += h;
        } else {
            mk[i - k * l] += h;
        }
        loss_at(&s, &config, lam, mk)
    };
    let central = |i: usize, h: f32| (loss(i, h) - loss(i, -h)) / (2.0 * f64::from(h));
    // A spread of λ entries, and the mask logits with the largest gradients (most are tiny).
    let mut by_size: Vec<usize> = (k * l..k * l + m).collect();
    by_size.sort_by(|a, b| grad[*b].abs().total_cmp(&grad[*a].abs()));
    let picks: Vec<(usize, f32)> = (0..k * l)
        .step_by(9)
        .map(|i| (i, 0.04))
        .chain(by_size.into_iter().take(8).map(|i| (i, 0.25)))
        .collect();
    let (mut err2, mut norm2) = (0.0f64, 0.0f64);
    for (i, h) in picks {
        let fd = (4.0 * central(i, h) - central(i, 2.0 * h)) / 3.0;
        err2 += (f64::from(grad[i]) - fd).powi(2);
        norm2 += fd * fd;
    }
    let rel = (err2 / norm2).sqrt();
    eprintln!("adarank: finite-difference relative error {rel:.2e}");
    assert!(norm2 > 1e-8, "gradient too small to check");
    assert!(rel <= 1e-3, "relative error {rel}");
}

#[test]
fn saved_coefficients_rebuild_the_merge_and_a_resumed_run_ends_the_same() {
    let s = setup();
    let all = expected();
    let config = LearnConfig {
        steps: 6,
        ..config_of(&case(&all, "tsvm_hard")["config"])
    };
    let batches = FixedBatches::load(s.tv.tasks(), 1, &s.device);
    let never = AtomicBool::new(false);
    let straight_dir = tempfile::tempdir().expect("tmp");
    let (straight, _) = run_in(&s, &config, 6, straight_dir.path(), &never);

    // Stopped after 3 steps and resumed in a fresh learner: the same bits.
    let dir = tempfile::tempdir().expect("tmp");
    run_in(&s, &config, 3, dir.path(), &never);
    let mut second = Learner::new(&s.cfg, &s.tv, &s.heads, config.clone(), &s.device).unwrap();
    let mut session = Session::new(&mut second, LearnDir::new(dir.path())).unwrap();
    assert_eq!(session.resume().unwrap(), 3);
    session
        .run(&batches, None, &ProgressBar::hidden(), &never)
        .unwrap();
    assert_eq!(second.lambda().unwrap(), straight.lambda().unwrap());
    assert_eq!(second.masks().unwrap(), straight.masks().unwrap());

    // Saved and applied again: the learner's merge, tensor for tensor.
    let out = tempfile::tempdir().expect("tmp");
    let saved = LearnedLambda::from_learner(&straight).unwrap();
    saved.save(out.path(), "lambda").unwrap();
    let loaded = LearnedLambda::load(&out.path().join("lambda.json")).unwrap();
    assert_eq!(loaded.components, saved.components);
    let units = loaded.components.as_ref().expect("components");
    assert!(
        units
            .iter()
            .all(|u| u.sigma.len() == 3 && u.logits.len() == 3)
    );
    let applied = loaded.merge(&s.tv).unwrap();
    let want = straight.merged().unwrap();
    for (name, t) in applied.iter() {
        assert_eq!(
            t.to_vec().unwrap(),
            want.require(name).unwrap().to_vec().unwrap(),
            "{name}"
        );
    }
    let st = common::read_all(&out.path().join("lambda.safetensors"));
    let some = &units[0];
    assert_eq!(st[&format!("mask.{}.alpha", some.name)], some.logits[0]);

    // Other checkpoints (the tasks' vectors halved) are refused by their singular values.
    let halved =
        s.tv.with_vectors(
            (0..s.tv.num_tasks())
                .map(|k| s.tv.stored(k).map(|_, t| t.mul_scalar(0.5)))
                .collect(),
        )
        .unwrap();
    let err = loaded.merge(&halved).unwrap_err().to_string();
    assert!(err.contains("singular values"), "{err}");
}
