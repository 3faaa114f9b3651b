//! The built-in suite on its tiny size: determinism, layout, the models a user's tools read, an
//! interrupted build, and the trainer it is made with.

use std::process::Command;

use adamerge::checkpoint::Checkpoint;
use adamerge::config::VisionConfig;
use adamerge::data::LabeledImages;
use adamerge::model::read_head;
use adamerge::suite::images::{FACTORS, Factor, ImageKey, TASKS, render};
use adamerge::suite::train::{ImageSet, WeightsAdam, cosine_lr, embed};
use adamerge::suite::{Size, SuiteInfo, SuiteSpec, build, tiny_clip};
use adamerge::task_vector::{Finetuned, MergeScope, TaskVectors, VectorDtype};
use burn::tensor::Device;
use indicatif::ProgressBar;

fn tiny(seed: u64) -> SuiteSpec {
    SuiteSpec {
        seed,
        size: Size::Tiny,
    }
}

#[test]
fn the_same_seed_gives_the_same_files_on_any_thread_count_and_another_seed_other_ones() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    // Built on one thread and on three: the shards of a batch and their sum do not depend on it.
    let on = |threads: usize, out: &str| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| build(&tiny(5), &dir.path().join(out), false, &device, false).unwrap())
    };
    let a = on(3, "a");
    let b = on(1, "b");
    let c = build(&tiny(6), &dir.path().join("c"), false, &device, false).unwrap();
    assert!(a.files.len() > 100, "{} files", a.files.len());
    // Only the suite's own files: no lock or other builder's file, whose bytes vary by process.
    assert!(
        a.files.keys().all(|k| !k.starts_with('.')),
        "{:?}",
        a.files.keys().next()
    );
    assert_eq!(a.files, b.files);
    assert_eq!(a.tasks, b.tasks);
    assert_eq!(a.methods.len(), b.methods.len());
    for (x, y) in a.methods.iter().zip(&b.methods) {
        assert_eq!((&x.method, &x.accuracy), (&y.method, &y.accuracy));
    }
    let differing = a
        .files
        .iter()
        .filter(|(k, v)| c.files.get(*k) != Some(v))
        .count();
    assert!(differing > a.files.len() / 2, "{differing} files differ");
    // suite.json on disk is what build returned.
    assert_eq!(SuiteInfo::read(&dir.path().join("a")).unwrap(), a);
}

#[test]
fn a_suite_has_the_layout_users_tools_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("suite");
    let device = Device::flex();
    let info = build(&tiny(0), &root, false, &device, false).unwrap();
    assert_eq!(info.tasks.len(), 8);
    let recipe = tiny(0).recipe();
    for file in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        assert!(
            root.join("models/pretrained").join(file).is_file(),
            "{file}"
        );
    }
    let cfg =
        VisionConfig::of_checkpoint(&Checkpoint::open(root.join("models/pretrained")).unwrap())
            .unwrap();
    assert_eq!(
        cfg,
        tiny_clip::config(recipe.width, recipe.layers, recipe.heads)
    );
    for task in &info.tasks {
        let head = read_head(
            &root.join(format!("heads/{}.safetensors", task.name)),
            &device,
        )
        .unwrap();
        assert_eq!(head.dims(), [task.classes.len(), cfg.projection_dim]);
        for (split, n) in [("train", task.train), ("test", task.test)] {
            let folder =
                LabeledImages::folder(&root.join(format!("data/{}/{split}", task.name)), None)
                    .unwrap();
            assert_eq!(folder.classes, task.classes);
            assert_eq!(folder.items.len(), n);
        }
        assert!((0.0..=1.0).contains(&task.individual_accuracy));
        assert!(task.task_vector_ratio > 0.0 && task.task_vector_ratio < 0.5);
    }
    // The fine-tunes load as task vectors over the pretrained model, every tensor merged.
    let finetuned: Vec<Finetuned> = info
        .tasks
        .iter()
        .map(|t| Finetuned {
            name: t.name.clone(),
            path: root.join("models").join(&t.name),
        })
        .collect();
    let (tv, plan) = TaskVectors::load(
        &root.join("models/pretrained"),
        &finetuned,
        &MergeScope::default(),
        VectorDtype::F32,
        &device,
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(tv.num_tasks(), 8);
    assert!(plan.carried.is_empty(), "{:?}", plan.carried);
    assert_eq!(tv.theta0().len(), tiny_clip::shapes(&cfg).len());
    // Every method is scored on every task.
    let names: Vec<&str> = info.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("adamerging")),
        "{names:?}"
    );
    assert!(info.methods.iter().all(|m| m.accuracy.len() == 8));
    assert!(info.table().contains("| individual |"));
    transformers_check(&root);
}

/// Runs `scripts/checks/check_suite_transformers.py` (transformers loads every model; its accuracy
/// from the PNGs equals suite.json's) where Python has torch; CI has none and says it skipped.
fn transformers_check(root: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/checks/check_suite_transformers.py");
    match Command::new("python3").arg(&script).arg(root).output() {
        Err(_) => eprintln!("SKIP transformers suite check: python3 not found"),
        Ok(out) => match out.status.code() {
            Some(0) => {}
            Some(77) => {
                eprintln!("SKIP transformers suite check: torch/transformers not installed")
            }
            _ => panic!(
                "the transformers check failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        },
    }
}

#[test]
fn an_interrupted_build_leaves_no_suite_and_its_debris_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("suite");
    // What a killed build leaves: a staging folder of a process that no longer runs.
    let stale = dir.path().join(".suite.partial-4000000");
    std::fs::create_dir_all(stale.join("data")).unwrap();
    assert!(!target.exists());
    build(&tiny(1), &target, false, &Device::flex(), false).unwrap();
    assert!(!stale.exists());
    assert!(target.join("suite.json").is_file());
    // A finished suite is not overwritten without --force.
    let err = build(&tiny(1), &target, false, &Device::flex(), false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
}

#[test]
fn every_task_class_is_balanced_and_other_factors_vary() {
    for (k, task) in TASKS.iter().enumerate() {
        let samples: Vec<_> = (0..120)
            .map(|index| {
                render(
                    ImageKey {
                        seed: 0,
                        task: k,
                        split: 1,
                        index,
                    },
                    task.factor,
                )
            })
            .collect();
        let c = task.classes;
        for class in 0..c {
            let n = samples.iter().filter(|s| task.label(s) == class).count();
            assert_eq!(n, 120 / c, "{}: class {class}", task.name);
        }
        // Every other factor is drawn, not fixed.
        for f in FACTORS.iter().filter(|f| **f != task.factor) {
            let distinct: std::collections::HashSet<_> =
                samples.iter().map(|s| s.labels[*f as usize]).collect();
            assert!(distinct.len() > 2, "{}: {}", task.name, f.name());
        }
    }
}

#[test]
fn the_trainer_lowers_a_loss_and_the_schedule_is_cosine() {
    assert!((cosine_lr(1e-3, 0, 10) - 1e-3).abs() < 1e-12);
    assert!((cosine_lr(1e-3, 5, 10) - 5e-4).abs() < 1e-12);
    assert!(cosine_lr(1e-3, 10, 10).abs() < 1e-12);
    // Pull the embeddings of a few images towards zero: the loss must fall step after step.
    let device = Device::flex();
    let cfg = tiny_clip::config(16, 1, 2);
    let mut w = tiny_clip::init(&cfg, 0, &device);
    let set = ImageSet {
        samples: (0..8)
            .map(|index| {
                render(
                    ImageKey {
                        seed: 0,
                        task: 0,
                        split: 0,
                        index,
                    },
                    Factor::Colour,
                )
            })
            .collect(),
    };
    let batch: Vec<usize> = (0..8).collect();
    let mut adam = WeightsAdam::new(w.len());
    let mut losses = Vec::new();
    for _ in 0..5 {
        losses.push(
            adam.step(&mut w, 1e-3, &[&batch[..]], |w, batch| {
                let e = embed(&cfg, w, set.pixels(batch, &device))?;
                Ok(e.powf_scalar(2.0).mean().reshape([1]))
            })
            .unwrap(),
        );
    }
    assert!(losses.windows(2).all(|p| p[1] < p[0]), "{losses:?}");
}

#[test]
fn the_cli_builds_and_prints_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("suite");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_adamerge"))
            .args(["suite", "build", "--size", "tiny", "--seed", "2", "--out"])
            .arg(&out)
            .args(extra)
            .env("ADAMERGE_CACHE", dir.path().join("cache"))
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("| pretrained |") && stdout.contains("adamerging"),
        "{stdout}"
    );
    // A second build reuses it and says so.
    let second = run(&[]);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already built"));
    let bad = Command::new(env!("CARGO_BIN_EXE_adamerge"))
        .args(["suite", "build", "--size", "huge"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("huge"));
}
