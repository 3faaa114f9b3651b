//! Fisher merging against an independent PyTorch implementation of FusionBench's estimator and
//! merge (`scripts/reference/reference_fisher.py`, fixture `tests/fixtures/fisher/`, on a case
//! where the batch, exact (sampled) and argmax Fishers all differ), its defining properties (one
//! task gives back its own model), and `merge --method fisher --task ...` end to end.

use crate::common;

use std::collections::HashMap;

use adamerge::checkpoint::Checkpoint;
use adamerge::data::{Preprocessor, UnlabeledImages};
use adamerge::fisher::{Draws, Estimator, Fisher, diagonal};
use adamerge::weights::Weights;
use burn::tensor::{Device, Tensor, TensorData};
use common::{
    TASKS, adamerge, assert_written, fixture, library_merge, make_data, merge_cli, pixels,
    read_all, read_f64, rel, task_vectors,
};
use indicatif::ProgressBar;

/// Task `task`'s head [C, P] from the fixture's heads file.
fn head(task: &str, device: &Device) -> Tensor<2> {
    let heads = Checkpoint::open(fixture("adamerging/heads.safetensors")).unwrap();
    let shape = heads.meta(task).unwrap().shape.clone();
    Tensor::from_data(
        TensorData::new(heads.read_f32(task).unwrap(), [shape[0], shape[1]]),
        device,
    )
}

fn expected() -> HashMap<String, Vec<f64>> {
    read_f64(&fixture("fisher/expected.safetensors"))
}

/// The worst relative error of `got`'s tensors against `want[prefix/name]`, with its name. A
/// tensor is measured against its own largest entry, or 1e-6 of the largest over all tensors
/// where that is smaller: the Fisher of the key projection's bias is analytically zero (a
/// softmax does not see a shift shared by every key), so both sides hold only round-off there.
fn worst(got: &Weights, want: &HashMap<String, Vec<f64>>, prefix: &str) -> (f64, String) {
    let want = |name: &str| {
        let key = format!("{prefix}/{name}");
        want.get(&key).unwrap_or_else(|| panic!("no `{key}`"))
    };
    let largest = |v: &[f64]| v.iter().fold(0f64, |m, x| m.max(x.abs()));
    let floor = 1e-6 * got.names().map(|n| largest(want(n))).fold(0f64, f64::max);
    let mut worst = (0f64, String::new());
    for (name, t) in got.iter() {
        let (g, w) = (t.to_vec().unwrap(), want(name));
        let diff = g
            .iter()
            .zip(w)
            .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        let e = diff / largest(w).max(floor).max(1e-30);
        if e > worst.0 {
            worst = (e, name.to_string());
        }
    }
    worst
}

fn method(estimator: Estimator, normalize: bool, scaling: Option<Vec<f64>>) -> Fisher {
    Fisher {
        estimator,
        images: 24,
        batch_size: 8,
        seed: None,
        normalize,
        scaling,
    }
}

#[test]
fn both_estimators_match_the_pytorch_reference_on_every_task() {
    let device = Device::flex();
    let want = expected();
    let (cfg, tv) = task_vectors(&TASKS, &device);
    for (k, task) in TASKS.iter().enumerate() {
        let uniforms = want[&format!("uniforms/{task}")].clone();
        let batches = pixels(task, &device);
        for estimator in [Estimator::Batch, Estimator::Exact] {
            let mut draws = uniforms.iter().copied();
            let mut uniform = || Ok(draws.next().expect("24 draws"));
            let f = diagonal(
                &cfg,
                &tv,
                k,
                &head(task, &device),
                &batches,
                estimator,
                &mut uniform,
                &ProgressBar::hidden(),
            )
            .unwrap();
            let name = estimator.name();
            let (e, at) = worst(&f, &want, &format!("fisher/{name}/{task}"));
            assert!(e <= 1e-5, "{task} {name}: {at} off by {e:.2e}");
            // The fixture tells the estimators apart: ours is far from the other two.
            for other in ["batch", "exact", "argmax"].iter().filter(|o| **o != name) {
                let (d, _) = worst(&f, &want, &format!("fisher/{other}/{task}"));
                assert!(d > 1e-2, "{task}: {name} is {other} ({d:.2e})");
            }
            eprintln!("{task} {name}: worst relative error {e:.2e} ({at})");
        }
    }
}

#[test]
fn merges_match_the_pytorch_reference() {
    let device = Device::flex();
    let want = expected();
    let uniforms: Vec<Vec<f64>> = TASKS
        .iter()
        .map(|t| want[&format!("uniforms/{t}")].clone())
        .collect();
    let cases = [
        ("batch", method(Estimator::Batch, true, None)),
        ("exact", method(Estimator::Exact, true, None)),
        (
            "batch_scaled_unnormalized",
            method(Estimator::Batch, false, Some(vec![1.0, 2.0, 0.5])),
        ),
    ];
    let (cfg, tv) = task_vectors(&TASKS, &device);
    let heads: Vec<Tensor<2>> = TASKS.iter().map(|t| head(t, &device)).collect();
    for (case, m) in cases {
        let batches = TASKS.iter().map(|t| pixels(t, &device)).collect();
        let got = m
            .merge_pixels(&cfg, &tv, &heads, batches, Draws::Given(&uniforms))
            .unwrap();
        let (e, at) = worst(&got, &want, &format!("merged/{case}"));
        assert!(e <= 1e-5, "{case}: {at} off by {e:.2e}");
        eprintln!("{case}: worst relative error {e:.2e} ({at})");
    }
}

/// The exact estimator takes every image's gradient from one backward per batch: batches of one
/// image (a backward each, as the textbook loop) give the same Fisher, with the same draws.
#[test]
fn exact_fishers_do_not_depend_on_how_images_are_batched() {
    let device = Device::flex();
    let want = expected();
    let (cfg, tv) = task_vectors(&TASKS, &device);
    let task = TASKS[0];
    let uniforms = want[&format!("uniforms/{task}")].clone();
    let batched = pixels(task, &device);
    let single: Vec<Tensor<4>> = batched
        .iter()
        .flat_map(|b| (0..b.dims()[0]).map(move |i| b.clone().narrow(0, i, 1)))
        .collect();
    assert_eq!(single.len(), 24);
    let fisher = |batches: &[Tensor<4>]| {
        let mut draws = uniforms.iter().copied();
        let mut uniform = || Ok(draws.next().expect("24 draws"));
        diagonal(
            &cfg,
            &tv,
            0,
            &head(task, &device),
            batches,
            Estimator::Exact,
            &mut uniform,
            &ProgressBar::hidden(),
        )
        .unwrap()
    };
    let one_by_one: HashMap<String, Vec<f64>> = fisher(&single)
        .iter()
        .map(|(name, t)| {
            let v = t.to_vec().unwrap().into_iter().map(f64::from).collect();
            (format!("single/{name}"), v)
        })
        .collect();
    let (e, at) = worst(&fisher(&batched), &one_by_one, "single");
    assert!(e <= 1e-5, "{at} off by {e:.2e}");
}

#[test]
fn one_task_gives_back_its_own_model() {
    let device = Device::flex();
    let (cfg, tv) = task_vectors(&["alpha"], &device);
    let got = method(Estimator::Batch, true, None)
        .merge_pixels(
            &cfg,
            &tv,
            &[head("alpha", &device)],
            vec![pixels("alpha", &device)],
            Draws::Seeded(0),
        )
        .unwrap();
    let own = read_f64(&fixture("adamerging/finetuned/alpha/model.safetensors"));
    for (name, t) in got.iter() {
        let e = rel(&t.to_vec().unwrap(), &own[name]);
        assert!(e < 1e-6, "{name} off by {e:.2e}");
    }
    let (e, at) = worst(&got, &expected(), "merged/batch_one_task");
    assert!(e < 1e-6, "{at} off by {e:.2e}");
}

#[test]
fn merge_on_the_command_line_is_the_library_merge_of_the_images_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let data = make_data(&tmp.path().join("data"));
    let device = Device::flex();
    let (cfg, tv) = task_vectors(&TASKS, &device);
    let pre = Preprocessor::from_dir(&fixture("adamerging/pretrained"), cfg.image_size).unwrap();
    let sets: Vec<UnlabeledImages> = data
        .iter()
        .map(|(_, dir, _)| UnlabeledImages::scan(dir).unwrap())
        .collect();
    let heads: Vec<Tensor<2>> = TASKS.iter().map(|t| head(t, &device)).collect();
    let q = "vision_model.encoder.layers.0.self_attn.q_proj.weight";
    let mut runs = HashMap::new();
    for (estimator, seed) in [("batch", None), ("exact", None), ("exact", Some(7u64))] {
        let out = tmp.path().join(format!("{estimator}-{seed:?}"));
        let mut extra = vec!["--fisher-estimator", estimator, "--images", "5"];
        extra.extend(["--batch-size", "2"]);
        let seed_text = seed.map(|s| s.to_string());
        if let Some(s) = &seed_text {
            extra.extend(["--seed", s.as_str()]);
        }
        let (ok, said) = adamerge(&merge_cli("fisher", &data, None, &out, &extra));
        assert!(ok, "{said}");
        assert!(
            said.contains("fisher(") && said.contains("task `gamma`: 5 of its"),
            "{said}"
        );
        let m = Fisher {
            estimator: if estimator == "exact" {
                Estimator::Exact
            } else {
                Estimator::Batch
            },
            images: 5,
            batch_size: 2,
            seed,
            normalize: true,
            scaling: None,
        };
        let want = library_merge(&m, &cfg, &pre, &tv, &sets, &heads);
        let got = read_all(&out);
        assert_written(&want, &got, 1e-6, &format!("{estimator} {seed:?}"));
        runs.insert(format!("{estimator}-{seed:?}"), got[q].clone());
    }
    // The estimator and the seed (of the images and of the exact estimator's labels) matter.
    assert_ne!(runs["batch-None"], runs["exact-None"]);
    assert_ne!(runs["exact-None"], runs["exact-Some(7)"]);

    // A scaling per task: one value for each, or a refusal naming the key before any output.
    let out = tmp.path().join("scaled");
    let args = merge_cli("fisher", &data, None, &out, &["--scaling", "1,2"]);
    let (ok, said) = adamerge(&args);
    assert!(
        !ok && said.contains("scaling") && said.contains("2 values for 3 tasks") && !out.exists(),
        "{said}"
    );
    let args = merge_cli("fisher", &data, None, &out, &["--scaling", "1,2,0"]);
    let (ok, said) = adamerge(&args);
    assert!(!ok && said.contains("--scaling") && !out.exists(), "{said}");
    let args = merge_cli("fisher", &data, None, &out, &["--scaling", "1,2,0.5"]);
    let (ok, said) = adamerge(&args);
    assert!(ok && said.contains("scaling=1:2:0.5"), "{said}");
    // No head file and no text tower to build a zero-shot head: refused before the checkpoints
    // load, naming what to give.
    let headless: Vec<_> = data
        .iter()
        .map(|(t, d, _)| (t.clone(), d.clone(), std::path::PathBuf::new()))
        .collect();
    let out = tmp.path().join("headless");
    let mut args = merge_cli("fisher", &headless, None, &out, &[]);
    for a in args.iter_mut() {
        if let Some(spec) = a.strip_suffix(",head=") {
            *a = spec.to_string();
        }
    }
    let (ok, said) = adamerge(&args);
    assert!(
        !ok && said.contains("head=FILE") && !said.contains("load ") && !out.exists(),
        "{said}"
    );
    // Checkpoints without images: refused, naming the form that works.
    let out = tmp.path().join("refused");
    let args = common::merge_args(&fixture("adamerging"), "fisher", &out, &[]);
    let (ok, said) = adamerge(&args);
    assert!(!ok && said.contains("--task") && !out.exists(), "{said}");
}

#[test]
fn merge_builds_zero_shot_heads_from_the_pretrained_clip_model_where_no_head_is_given() {
    use adamerge::checkpoint::{Replacement, load_weights, save_merged};
    use adamerge::config::{TextConfig, VisionConfig};
    use adamerge::eval::{HeadSource, prepare_task};
    use adamerge::model::ClipTokenizer;
    use adamerge::task_vector::{Finetuned, MergeScope, TaskVectors, VectorDtype};

    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let pretrained = fixture("clip/quick_gelu");
    let ckpt = Checkpoint::open(&pretrained).unwrap();
    let all = load_weights(&ckpt, &device, |_| true).unwrap();
    // Two "fine-tunes": the CLIPModel with its vision tower scaled by 1.04 and 1.08.
    let data = make_data(&tmp.path().join("data"));
    let mut fts = Vec::new();
    for (k, (task, _, _)) in data.iter().take(2).enumerate() {
        let scale = 1.0 + 0.04 * (k + 1) as f64;
        let mut w = Weights::new();
        for (name, t) in all.iter().filter(|(n, _)| n.starts_with("vision_model.")) {
            w.insert(name, t.with_data(t.data.clone().mul_scalar(scale)));
        }
        let dir = tmp.path().join(format!("ft-{task}"));
        save_merged(&pretrained, &Replacement::from_weights(&w), &dir, false).unwrap();
        fts.push(Finetuned {
            name: task.clone(),
            path: dir,
        });
    }
    let out = tmp.path().join("merged");
    let mut args: Vec<String> = ["merge", "--method", "fisher", "--images", "6"]
        .map(String::from)
        .to_vec();
    args.extend(["--pretrained".into(), pretrained.display().to_string()]);
    args.extend(["--out".into(), out.display().to_string()]);
    for (f, (_, dir, _)) in fts.iter().zip(&data) {
        args.push("--task".into());
        args.push(format!(
            "{},checkpoint={},data={}",
            f.name,
            f.path.display(),
            dir.display()
        ));
    }
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_adamerge"))
        .args(&args)
        .env("ADAMERGE_CACHE", tmp.path().join("cache"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{said}");

    // The same merge in the library, with heads built from the text tower as `eval` does.
    let config = ckpt.config().unwrap();
    let text = TextConfig::locate(config, &pretrained).unwrap().unwrap();
    let tok = ClipTokenizer::from_dir(&pretrained, text.max_position_embeddings).unwrap();
    let heads: Vec<Tensor<2>> = data
        .iter()
        .take(2)
        .map(|(task, dir, _)| {
            let source = HeadSource::ZeroShot {
                cache: None,
                cfg: &text,
                weights: &all,
                tokenizer: &tok,
            };
            prepare_task(task, dir, source, None, &device).unwrap().head
        })
        .collect();
    let (tv, _) = TaskVectors::load(
        &pretrained,
        &fts,
        &MergeScope::default(),
        VectorDtype::F32,
        &device,
        &ProgressBar::hidden(),
    )
    .unwrap();
    let cfg = VisionConfig::of_checkpoint(&ckpt).unwrap();
    let pre = Preprocessor::from_dir(&pretrained, cfg.image_size).unwrap();
    let sets: Vec<UnlabeledImages> = data
        .iter()
        .take(2)
        .map(|(_, dir, _)| UnlabeledImages::scan(dir).unwrap())
        .collect();
    let m = Fisher {
        estimator: Estimator::Batch,
        images: 6,
        batch_size: 32,
        seed: None,
        normalize: true,
        scaling: None,
    };
    let want = library_merge(&m, &cfg, &pre, &tv, &sets, &heads);
    assert!(want.len() > 10);
    assert_written(&want, &read_all(&out), 1e-6, "zero-shot heads");
}
