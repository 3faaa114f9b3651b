//! `adamerge learn` and `adamerge merge --method adamerging` end to end on the tiny AdaMerging
//! fixture models, with ImageFolders of generated PNGs.

use crate::common;

use std::path::Path;

use common::{TASKS, adamerge, fixture, learn_args, make_data, read_all};
use serde_json::Value;

fn merge_args(method: &str, lambda: &Path, out: &Path) -> Vec<String> {
    let mut args = vec![
        "merge".to_string(),
        "--method".into(),
        method.into(),
        "--lambda-file".into(),
        lambda.display().to_string(),
        "--pretrained".into(),
        fixture("adamerging/pretrained").display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    // Another order than the learn run's: rows are matched by task name.
    for task in TASKS.iter().rev() {
        args.push("--finetuned".into());
        args.push(format!(
            "{task}={}",
            fixture(&format!("adamerging/finetuned/{task}")).display()
        ));
    }
    args
}

fn check_run(run: &Path, steps: u64, units: usize) {
    let lambda: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("lambda.json")).unwrap()).unwrap();
    assert_eq!(lambda["steps_done"], steps);
    let rows = lambda["lambda"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.as_array().unwrap().len() == units));
    assert!(run.join("lambda.safetensors").is_file());
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps_logged: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps_logged, (1..=steps).collect::<Vec<_>>());
    let evals: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "eval")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals.first(), Some(&0), "scored at the start");
    assert_eq!(evals.last(), Some(&steps), "scored at the end");
    for e in events.iter().filter(|e| e["event"] == "step") {
        for task in TASKS {
            assert!(e["entropy"][task].as_f64().unwrap() > 0.0);
        }
    }
}

#[test]
fn learn_writes_lambda_log_and_a_merged_model_that_merge_rebuilds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = make_data(tmp.path());
    for (name, extra, units) in [
        ("layer", vec!["--steps", "3"], 32),
        (
            "task-pp",
            vec!["--steps", "2", "--granularity", "task", "--ties-k", "0.2"],
            1,
        ),
        (
            "adarank",
            vec!["--steps", "3", "--method", "adarank", "--base", "tsv-m"],
            32,
        ),
    ] {
        let method = if name == "adarank" {
            "adarank"
        } else {
            "adamerging"
        };
        let run = tmp.path().join(name);
        let (ok, text) = adamerge(&learn_args(&data, &run, &extra));
        assert!(ok, "{text}");
        assert!(text.contains("| **average** |"), "{text}");
        let steps = extra[1].parse().unwrap();
        check_run(&run, steps, units);

        let rebuilt = tmp.path().join(format!("{name}-rebuilt"));
        let (ok, text) = adamerge(&merge_args(method, &run.join("lambda.json"), &rebuilt));
        assert!(ok, "{text}");
        let a = read_all(&run.join("merged"));
        let b = read_all(&rebuilt);
        assert_eq!(a.len(), b.len());
        for (n, v) in &a {
            let w = &b[n];
            let worst = v
                .iter()
                .zip(w)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-6, "{name}: {n} differs by {worst}");
        }
    }

    // AdaRank's file carries its masks per unit, task and component, and only AdaRank applies it.
    let lambda: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adarank/lambda.json")).unwrap(),
    )
    .unwrap();
    let units = lambda["components"].as_array().unwrap();
    assert_eq!(units.len(), 10, "every 2-D tensor with the TSV-M base");
    assert!(
        units
            .iter()
            .all(|u| u["logits"].as_array().unwrap().len() == 3)
    );
    let (ok, text) = adamerge(&merge_args(
        "adamerging",
        &tmp.path().join("adarank/lambda.json"),
        &tmp.path().join("wrong"),
    ));
    assert!(!ok && text.contains("--method adarank"), "{text}");

    // A finished run is not overwritten, and an extended one continues from its checkpoint.
    let run = tmp.path().join("layer");
    let (ok, text) = adamerge(&learn_args(&data, &run, &["--steps", "3"]));
    assert!(!ok && text.contains("--resume"), "{text}");
    let (ok, text) = adamerge(&learn_args(&data, &run, &["--steps", "4", "--resume"]));
    assert!(ok, "{text}");
    check_run(&run, 4, 32);
    let (ok, text) = adamerge(&learn_args(
        &data,
        &run,
        &["--steps", "5", "--resume", "--adapt-fraction", "0.5"],
    ));
    assert!(!ok && text.contains("job.json"), "{text}");
}

#[test]
fn bad_learn_input_names_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let data = make_data(tmp.path());
    let run = tmp.path().join("run");
    let (ok, text) = adamerge(&learn_args(&data, &run, &["--ties-k", "1.5"]));
    assert!(!ok && text.contains("ties-k"), "{text}");
    let (ok, text) = adamerge(&learn_args(&data, &run, &["--resume"]));
    assert!(!ok && text.contains("nothing to resume"), "{text}");
    let (ok, text) = adamerge(&learn_args(&data, &run, &["--adapt-fraction", "1.0"]));
    assert!(!ok && text.contains("adaptation fraction"), "{text}");
    let merged = tmp.path().join("merged");
    let (ok, text) = adamerge(&merge_args(
        "adamerging",
        &tmp.path().join("missing.json"),
        &merged,
    ));
    assert!(!ok && text.contains("missing.json"), "{text}");
}
