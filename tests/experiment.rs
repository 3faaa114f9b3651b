//! The experiment runner end to end on the tiny built-in suite, through the CLI: a run's files,
//! its logs and plots, `report`, `--check`, `--resume`, and bad experiment files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adamerge::experiment::Experiment;
use adamerge::layout::RunDir;
use adamerge::results::Progress;
use adamerge::results::Results;

const TASKS: [&str; 8] = [
    "colour",
    "frame",
    "stripes",
    "frequency",
    "background",
    "bgpair",
    "huepair",
    "stripepair",
];

fn experiment(seeds: &str) -> String {
    let mut s = format!(
        "name = \"tiny\"\nseeds = {seeds}\neval_every = 2\n[suite]\nsize = \"tiny\"\n\
         [model]\npretrained = \"suite:models/pretrained\"\n"
    );
    for t in TASKS {
        s += &format!(
            "[[task]]\nname = \"{t}\"\ncheckpoint = \"suite:models/{t}\"\n\
             data = \"suite:data/{t}/test\"\nhead = \"suite:heads/{t}.safetensors\"\n"
        );
    }
    s += "[[method]]\nkind = \"weight-average\"\n\
          [[method]]\nkind = \"task-arithmetic\"\nlambda = [0.1, 0.3, 0.5]\n\
          [[method]]\nkind = \"ties\"\n\
          [[method]]\nkind = \"adamerging\"\ngranularity = \"task\"\nsteps = 3\nlr = 0.01\n\
          [[method]]\nkind = \"adamerging\"\ngranularity = \"layer\"\nsteps = 4\nlr = 0.01\n\
          [[method]]\nkind = \"regmean\"\nalpha = [0.6, 0.95]\nimages = 16\n\
          [[method]]\nkind = \"regmean++\"\nimages = 16\n\
          [[method]]\nkind = \"fisher\"\nfisher_estimator = \"exact\"\nimages = 16\n\
          [[method]]\nkind = \"tsv-m\"\nalpha = [0.5, 1.0]\n\
          [[method]]\nkind = \"iso-cts\"\nqkv = \"split\"\n";
    s
}

fn adamerge(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adamerge"))
        .args(args)
        .env("ADAMERGE_CACHE", cache)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The only run directory under `runs/<name>/`.
fn run_dirs(runs: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs.join("tiny"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn a_run_writes_results_logs_tables_and_plots_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, runs) = (tmp.path().join("cache"), tmp.path().join("runs"));
    let file = tmp.path().join("tiny.toml");
    std::fs::write(&file, experiment("[0, 1]")).unwrap();
    let f = file.to_str().unwrap();
    let r = runs.to_str().unwrap();

    let checked = ok(&adamerge(&cache, &["run", "--check", f]));
    assert!(
        checked.contains("8 tasks, 14 method runs per seed"),
        "{checked}"
    );

    let stdout = ok(&adamerge(&cache, &["run", f, "--runs", r]));
    assert!(stdout.contains("| individual |"), "{stdout}");
    let dirs = run_dirs(&runs);
    assert_eq!(dirs.len(), 1);
    let dir = &dirs[0];

    // results.json: every method on every task, over both seeds.
    let results = Results::read(&RunDir::new(dir)).unwrap();
    let expected = [
        "pretrained",
        "individual",
        "weight-average",
        "task-arithmetic(lambda=0.1)",
        "task-arithmetic(lambda=0.3)",
        "task-arithmetic(lambda=0.5)",
        "ties(k=0.2,lambda=1,mean)",
        "adamerging(task)[steps=3,lr=0.01]",
        "adamerging(layer)[steps=4,lr=0.01]",
        "regmean(alpha=0.6)[images=16]",
        "regmean(alpha=0.95)[images=16]",
        "regmean++(alpha=0.95)[images=16]",
        "fisher(exact)[images=16]",
        "tsv-m(alpha=0.5,qkv=fused)",
        "tsv-m(alpha=1,qkv=fused)",
        "iso-cts(alpha=1,common=0.8,qkv=split)",
    ];
    let labels: Vec<&str> = results.methods.keys().map(String::as_str).collect();
    assert_eq!(labels, expected);
    for (label, m) in &results.methods {
        assert_eq!(m.tasks.len(), 8, "{label}");
        assert_eq!(m.seeds, [0, 1], "{label}");
        assert!(m.tasks.values().all(|a| (0.0..=1.0).contains(a)), "{label}");
    }
    assert_eq!(
        results.sweeps["task-arithmetic (method[1])"].values.len(),
        3
    );
    assert_eq!(results.sweeps["regmean (method[5])"].values.len(), 2);
    // Data-based merges record which unlabeled images they read: 16 of each task's test set.
    for label in &expected[9..13] {
        let images = results.methods[*label].images.as_ref().unwrap();
        assert_eq!(images.len(), 8, "{label}");
        for i in images {
            assert!(
                i.count == 16 && i.of > 16 && i.from == "test",
                "{label}: {i:?}"
            );
        }
    }
    assert!(results.methods["weight-average"].images.is_none());
    // The spectral merges of a seed share one SVD pass, whose time each records.
    let progress = Progress::read(&RunDir::new(dir)).unwrap();
    for seed in [0, 1] {
        let svd: Vec<Option<f64>> = progress
            .records
            .iter()
            .filter(|r| r.seed == seed)
            .map(|r| r.svd_seconds)
            .collect();
        let spectral: Vec<f64> = svd.iter().flatten().copied().collect();
        assert_eq!(spectral.len(), 3, "seed {seed}: {svd:?}");
        assert!(spectral.iter().all(|s| *s > 0.0 && *s == spectral[0]));
    }
    assert!(results.provenance["inputs"].as_array().unwrap().len() == 2);

    // Learned methods log their steps, and lower the entropy objective on fixed adaptation
    // batches below where they started (λ = 0.3 everywhere: Task Arithmetic at 0.3).
    for stem in [
        "adamerging-layer-steps-4-lr-0.01-seed0",
        "adamerging-task-steps-3-lr-0.01-seed1",
    ] {
        let log =
            std::fs::read_to_string(dir.join("learned").join(stem).join("log.jsonl")).unwrap();
        let steps = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == "step" && v["loss"].as_f64().is_some())
            .count();
        assert!(steps >= 3, "{stem}");
        assert!(
            dir.join("lambda")
                .join(format!("{stem}.safetensors"))
                .is_file(),
            "{stem}"
        );
    }
    for seed in [0, 1] {
        let entropy = |m: &str| {
            progress
                .records
                .iter()
                .find(|r| r.method == m && r.seed == seed)
                .unwrap()
                .entropy
                .unwrap()
        };
        let start = entropy("task-arithmetic(lambda=0.3)");
        for learned in [
            "adamerging(task)[steps=3,lr=0.01]",
            "adamerging(layer)[steps=4,lr=0.01]",
        ] {
            assert!(
                entropy(learned) < start,
                "seed {seed} {learned}: {} vs {start}",
                entropy(learned)
            );
        }
    }
    let run_log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = run_log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events.iter().filter(|v| v["event"] == "method").count(),
        2 * 16
    );
    // Both learned methods' steps, on both seeds, with their method and seed.
    let steps = events.iter().filter(|v| v["event"] == "step").count();
    assert_eq!(steps, 2 * (3 + 4));
    assert!(
        events
            .iter()
            .any(|v| v["event"] == "eval" && v["seed"] == 1)
    );

    // The table and the plots.
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(
        table.contains("(lowest entropy")
            && table.contains("±")
            && table
                .contains("- regmean++(alpha=0.95)[images=16]: 16 of each task's 24 test images"),
        "{table}"
    );
    for plot in [
        "learned-vs-fixed.svg",
        "accuracy-adamerging-layer-steps-4-lr-0.01-seed0.svg",
        "lambda-adamerging-layer-steps-4-lr-0.01-seed0.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot}"
        );
    }
    assert!(dir.join("config.toml").is_file());

    // An interrupted run: forget the last two records, as if stopped there; --resume redoes
    // exactly those and ends with the same results.
    let mut progress = Progress::read(&RunDir::new(dir)).unwrap();
    let all = progress.records.clone();
    progress.records.truncate(all.len() - 2);
    progress.write(&RunDir::new(dir)).unwrap();
    std::fs::remove_file(dir.join("results.json")).unwrap();
    ok(&adamerge(
        &cache,
        &["run", "--resume", dir.to_str().unwrap()],
    ));
    let resumed = Progress::read(&RunDir::new(dir)).unwrap();
    assert_eq!(resumed.records.len(), all.len());
    for (a, b) in all.iter().zip(&resumed.records) {
        assert_eq!(
            (&a.method, a.seed, &a.accuracy),
            (&b.method, b.seed, &b.accuracy)
        );
    }
    let again = Results::read(&RunDir::new(dir)).unwrap();
    for (label, m) in &results.methods {
        assert_eq!(
            (&again.methods[label].tasks, again.methods[label].avg),
            (&m.tasks, m.avg),
            "{label}"
        );
    }

    // report rebuilds the table; two runs compare side by side; a new run never reuses a
    // directory.
    std::fs::remove_file(dir.join("table.md")).unwrap();
    let report = ok(&adamerge(&cache, &["report", dir.to_str().unwrap()]));
    assert!(report.contains("| individual |"));
    assert!(dir.join("table.md").is_file());
    ok(&adamerge(&cache, &["run", f, "--runs", r]));
    let dirs = run_dirs(&runs);
    assert_eq!(dirs.len(), 2);
    let both = ok(&adamerge(
        &cache,
        &[
            "report",
            dirs[0].to_str().unwrap(),
            dirs[1].to_str().unwrap(),
        ],
    ));
    assert!(
        both.contains("B − A") && both.contains("| ties(k=0.2,lambda=1,mean) |"),
        "{both}"
    );
}

/// `run --tau-dtype bf16` holds the task vectors in bf16: the run's config.toml and results.json
/// say so, a resume keeps it (and refuses another), and a device that cannot hold it fails
/// before the run leaves a folder.
#[test]
fn a_half_precision_run_records_its_type_and_resumes_in_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, runs) = (tmp.path().join("cache"), tmp.path().join("runs"));
    let file = tmp.path().join("tiny.toml");
    let methods = experiment("[0]");
    let short = &methods[..methods.find("[[method]]").unwrap()];
    let text = format!(
        "{short}[[method]]\nkind = \"task-arithmetic\"\nlambda = 0.3\n\
         [[method]]\nkind = \"adamerging\"\ngranularity = \"task\"\nsteps = 2\nlr = 0.01\n"
    );
    std::fs::write(&file, text).unwrap();
    let (f, r) = (file.to_str().unwrap(), runs.to_str().unwrap());

    let refused = adamerge(
        &cache,
        &[
            "--device",
            "ndarray",
            "run",
            f,
            "--runs",
            r,
            "--tau-dtype",
            "bf16",
        ],
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("--tau-dtype"),
        "{err}"
    );
    assert!(!runs.join("tiny").exists() || run_dirs(&runs).is_empty());

    ok(&adamerge(
        &cache,
        &["run", f, "--runs", r, "--tau-dtype", "bf16"],
    ));
    let dir = run_dirs(&runs).pop().unwrap();
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("tau_dtype = \"bf16\""), "{config}");
    let results = Results::read(&RunDir::new(&dir)).unwrap();
    assert_eq!(results.provenance["tau_dtype"], "bf16");

    let d = dir.to_str().unwrap();
    let out = adamerge(&cache, &["run", "--resume", d, "--tau-dtype", "f32"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tau-dtype"));
    let mut progress = Progress::read(&RunDir::new(&dir)).unwrap();
    let all = progress.records.clone();
    progress.records.truncate(all.len() - 1);
    progress.write(&RunDir::new(&dir)).unwrap();
    std::fs::remove_file(dir.join("results.json")).unwrap();
    // The learned method is redone from nothing: its λ file must come back learned in bf16.
    let learned = dir.join("learned");
    std::fs::remove_dir_all(&learned).unwrap();
    ok(&adamerge(&cache, &["run", "--resume", d]));
    let resumed = Progress::read(&RunDir::new(&dir)).unwrap();
    let (a, b) = (all.last().unwrap(), resumed.records.last().unwrap());
    assert_eq!((&a.method, &a.accuracy), (&b.method, &b.accuracy));
    let runs_of: Vec<PathBuf> = std::fs::read_dir(&learned)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs_of.len(), 1);
    let lambda = std::fs::read_to_string(runs_of[0].join("lambda.json")).unwrap();
    assert!(lambda.contains("\"tau_dtype\": \"bf16\""), "{lambda}");
}

#[test]
fn a_bad_experiment_file_fails_with_its_key_path() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cases = [
        ("steps = 4", "steps = 4\nstepz = 1", "method[4]"),
        (
            "lambda = [0.1, 0.3, 0.5]",
            "lambda = [0.1, \"x\"]",
            "method[1].lambda",
        ),
        ("steps = 4", "steps = 0", "method[4].steps"),
        ("size = \"tiny\"", "size = \"huge\"", "suite.size"),
        (
            "eval_every = 2",
            "eval_every = 2\ntau_dtype = \"bf8\"",
            "tau_dtype",
        ),
    ];
    for (from, to, key) in cases {
        let file = tmp.path().join("bad.toml");
        std::fs::write(&file, experiment("[0]").replacen(from, to, 1)).unwrap();
        let out = adamerge(&cache, &["run", "--check", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{to}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml") && err.contains(key), "{to}: {err}");
    }
    let missing = adamerge(&cache, &["run", "--check", "no/such.toml"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such.toml"));
}

#[test]
fn the_shipped_experiment_files_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (models, data) = (tmp.path().join("models"), tmp.path().join("data"));
        let check = |vars: &[(&str, &Path)]| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_adamerge"));
            cmd.args(["run", "--check", path.to_str().unwrap()])
                .env("ADAMERGE_CACHE", "/nonexistent-cache")
                .env_remove("ADAMERGE_MODELS")
                .env_remove("ADAMERGE_DATA");
            for (k, v) in vars {
                cmd.env(k, v);
            }
            cmd.output().unwrap()
        };
        let exp = Experiment::load(&path).unwrap();
        if exp.uses_suite() {
            let said = ok(&check(&[]));
            assert!(said.contains("8 tasks"), "{}: {said}", path.display());
        } else {
            // Unset variables: every path is named by its key, not just the first.
            let out = check(&[]);
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            for (key, _) in exp.paths() {
                assert!(err.contains(&format!("`{key}`")), "{key} not in {err}");
            }
            // Set, but the folders missing: each named; present: the file checks.
            let vars = [
                ("ADAMERGE_MODELS", models.as_path()),
                ("ADAMERGE_DATA", data.as_path()),
            ];
            let err = String::from_utf8_lossy(&check(&vars).stderr).into_owned();
            assert!(
                err.contains("does not exist") && err.contains("`task[7].data`"),
                "{err}"
            );
            for (_, raw) in exp.paths() {
                let p = raw
                    .replace("${ADAMERGE_MODELS}", models.to_str().unwrap())
                    .replace("${ADAMERGE_DATA}", data.to_str().unwrap());
                std::fs::create_dir_all(p).unwrap();
            }
            let said = ok(&check(&vars));
            assert!(said.contains("8 tasks"), "{}: {said}", path.display());
        }
        checked += 1;
    }
    // suite.toml, adarank.toml, half-precision.toml and the two paper files.
    assert_eq!(checked, 5);
}
