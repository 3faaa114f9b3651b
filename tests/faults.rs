//! The fault-injection harness: runs killed at named points (`ADAMERGE_FAULT`, as `kill -9`
//! would) and then rerun or resumed end with the same files as an uninterrupted run, byte for
//! byte but for timing fields, with no debris and no event logged twice; every "try X" that an
//! error message suggests works; and the smaller input errors say precisely what is wrong.

use crate::common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{adamerge, copy_models, experiment, learn_args_from, make_data};
use serde_json::Value;

/// `adamerge args` with extra environment variables, run in `cwd` when given.
fn run_with(args: &[String], env: &[(&str, &str)], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_adamerge"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `args` killed at `point`, asserting that the kill happened there.
fn killed_at(args: &[String], point: &str) {
    let out = run_with(args, &[("ADAMERGE_FAULT", point)], None);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "not killed at {point}: {}",
        text(&out)
    );
}

fn succeeds(args: &[String]) -> String {
    let (ok, said) = adamerge(args);
    assert!(ok, "{args:?}\n{said}");
    said
}

/// A JSON value without its timing fields (`seconds`), the only ones that differ between two
/// runs of the same inputs on one machine.
fn untimed(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("seconds");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// Every file under `root` by relative path: JSON and JSON-lines parsed without timing fields,
/// everything else as bytes.
fn contents(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            let bytes = std::fs::read(e.path()).unwrap();
            let name = rel.to_string_lossy().into_owned();
            let bytes = if name.ends_with(".jsonl") {
                String::from_utf8(bytes)
                    .unwrap()
                    .lines()
                    .map(|l| untimed(serde_json::from_str(l).unwrap()).to_string() + "\n")
                    .collect::<String>()
                    .into_bytes()
            } else if name.ends_with(".json") {
                untimed(serde_json::from_slice(&bytes).unwrap())
                    .to_string()
                    .into_bytes()
            } else {
                bytes
            };
            (rel, bytes)
        })
        .collect();
    out.sort();
    out
}

/// Asserts that `got` holds the same files as `want`, equal but for timing fields.
fn same_files(want: &Path, got: &Path) {
    let (a, b) = (contents(want), contents(got));
    let names = |c: &[(PathBuf, Vec<u8>)]| c.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&a),
        names(&b),
        "{} vs {}",
        want.display(),
        got.display()
    );
    for ((p, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{} differs from the uninterrupted run's",
            got.join(p).display()
        );
    }
}

/// Hidden debris (staging folders, temporary files, locks) anywhere under `root`; the output
/// manifests adamerge writes on purpose are not debris.
fn debris(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| {
            let n = e.file_name().to_string_lossy();
            n.starts_with('.') && n != ".adamerge-manifest.json"
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// Steps of each kind in a JSON-lines log, to show a duplicate plainly.
fn events(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!("{} {} {} {}", v["event"], v["method"], v["seed"], v["step"])
        })
        .collect()
}

fn assert_no_duplicate(log: &Path) {
    let mut seen = std::collections::HashSet::new();
    for e in events(log) {
        assert!(seen.insert(e.clone()), "{} logs `{e}` twice", log.display());
    }
}

#[test]
fn a_learn_killed_anywhere_ends_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    let data = make_data(&tmp.path().join("data"));
    let learn = |out: &Path, extra: &[&str]| {
        let mut e = vec!["--steps", "4", "--eval-every", "2"];
        e.extend(extra);
        learn_args_from(&models, &data, out, &e)
    };
    let reference = tmp.path().join("runs/reference");
    succeeds(&learn(&reference, &[]));

    // (kill point, whether the rerun passes --resume): before any step a folder is rerun as it
    // is or resumed from step 0; after one, resumed.
    let cases = [
        ("run-locked", false),
        ("started", false),
        ("started", true),
        ("step-1-saved", true),
        ("step-2-saved", true),
        ("output-staged", true),
    ];
    for (i, (point, resume)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("runs/killed-{i}"));
        killed_at(&learn(&out, &[]), point);
        let said = succeeds(&learn(&out, if resume { &["--resume"] } else { &[] }));
        assert!(said.contains("| **average** |"), "{said}");
        same_files(&reference, &out);
        assert_no_duplicate(&out.join("log.jsonl"));
    }
    let left = debris(&tmp.path().join("runs"));
    assert!(left.is_empty(), "{left:?}");

    // An input error before the first step leaves a folder that the corrected command reuses.
    let out = tmp.path().join("runs/bad-input");
    let bad = data[1].1.join("class0/broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let (ok, said) = adamerge(&learn(&out, &[]));
    assert!(!ok && said.contains("broken.png"), "{said}");
    std::fs::remove_file(&bad).unwrap();
    succeeds(&learn(&out, &[]));
    same_files(&reference, &out);
}

#[test]
fn a_run_killed_anywhere_ends_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    let data = make_data(&tmp.path().join("data"));
    let methods = "[[method]]\nkind = \"weight-average\"\n\
                   [[method]]\nkind = \"task-arithmetic\"\nlambda = [0.1, 0.3]\n\
                   [[method]]\nkind = \"adamerging\"\ngranularity = \"layer\"\nsteps = 3\nlr = 0.01\n";
    let file = tmp.path().join("fx.toml");
    let body = experiment("fx", &models, &data, methods)
        .replace("seeds = [0]", "seeds = [0]\neval_every = 1");
    std::fs::write(&file, body).unwrap();
    let start = |runs: &Path| {
        [
            "run",
            file.to_str().unwrap(),
            "--runs",
            runs.to_str().unwrap(),
        ]
        .map(String::from)
    };
    let only_run = |runs: &Path| {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs.join("fx"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs.remove(0)
    };
    let reference = tmp.path().join("reference");
    succeeds(&start(&reference));
    let reference = only_run(&reference);

    // The run records pretrained, individual, weight-average, two Task Arithmetic values and
    // AdaMerging, in that order; `events-logged@n` falls between the n-th one's log event and
    // its progress mark. `started` and `step-2-saved` fall inside AdaMerging's learning.
    let points = [
        "run-locked",
        "events-logged@1",
        "events-logged@3",
        "started",
        "step-2-saved",
        "step-3-saved",
        "events-logged@6",
    ];
    for (i, point) in points.into_iter().enumerate() {
        let runs = tmp.path().join(format!("killed-{i}"));
        killed_at(&start(&runs), point);
        let dir = only_run(&runs);
        let resume = ["run", "--resume", dir.to_str().unwrap()].map(String::from);
        succeeds(&resume);
        same_files(&reference, &dir);
        assert_no_duplicate(&dir.join("log.jsonl"));
        let left = debris(&runs);
        assert!(left.is_empty(), "{point}: {left:?}");
    }
}

#[test]
fn a_run_that_fails_before_its_first_result_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    let data = make_data(&tmp.path().join("data"));
    let file = tmp.path().join("fx.toml");
    let runs = tmp.path().join("runs");
    let body = experiment("fx", &models, &data, common::AVERAGE_ONLY)
        .replace(
            &data[1].1.display().to_string(),
            "${ADAMERGE_TEST_UNSET}/beta",
        )
        .replace(
            &models.join("finetuned/gamma").display().to_string(),
            "missing/gamma",
        );
    std::fs::write(&file, body).unwrap();
    for check in [true, false] {
        let mut args = vec!["run".to_string(), file.display().to_string()];
        args.extend(["--runs".into(), runs.display().to_string()]);
        if check {
            args.push("--check".into());
        }
        let (ok, said) = adamerge(&args);
        assert!(!ok, "{said}");
        // Every problem at once, each by its key.
        assert!(
            said.contains("`task[1].data`") && said.contains("ADAMERGE_TEST_UNSET"),
            "{said}"
        );
        assert!(
            said.contains("`task[2].checkpoint`") && said.contains("missing/gamma"),
            "{said}"
        );
        assert!(!runs.exists(), "a run folder was made");
    }
    // A failure found only while loading (a fine-tune of another shape) removes its folder too.
    let body = experiment("fx", &models, &data, common::AVERAGE_ONLY);
    std::fs::write(&file, body).unwrap();
    let cfg = models.join("finetuned/beta/model.safetensors");
    std::fs::copy(
        models.join("finetuned/alpha/config.json"),
        models.join("x.json"),
    )
    .unwrap();
    std::fs::write(&cfg, b"not safetensors").unwrap();
    let (ok, said) = adamerge(
        &[
            "run",
            file.to_str().unwrap(),
            "--runs",
            runs.to_str().unwrap(),
        ]
        .map(String::from),
    );
    assert!(!ok && said.contains("model.safetensors"), "{said}");
    let left: Vec<_> = std::fs::read_dir(runs.join("fx")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Ctrl-C while held at `point`, then released: returns what the stopped process said.
fn interrupted_at(args: &[String], point: &str, hold: &Path) -> String {
    let child = common::held_at(args, point, hold, &[]);
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    std::fs::remove_file(hold).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    text(&out)
}

/// The command an error suggests, as the argument list it spells between backticks.
fn suggested_command(said: &str) -> Vec<String> {
    let start = said.find("`adamerge ").expect("a suggested command") + "`adamerge ".len();
    let end = start + said[start..].find('`').unwrap();
    said[start..end].split(' ').map(String::from).collect()
}

#[test]
fn every_suggestion_an_error_makes_works() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    let data = make_data(&tmp.path().join("data"));
    let learn = |out: &Path, extra: &[&str]| learn_args_from(&models, &data, out, extra);
    let hold = tmp.path().join("hold");

    // "pass --resume to continue it"
    let run = tmp.path().join("learn");
    succeeds(&learn(&run, &["--steps", "2"]));
    let (ok, said) = adamerge(&learn(&run, &["--steps", "2"]));
    assert!(!ok && said.contains("pass --resume"), "{said}");
    succeeds(&learn(&run, &["--steps", "2", "--resume"]));
    // "resume with the same options (only --steps may change)"
    let (ok, said) = adamerge(&learn(&run, &["--steps", "3", "--resume", "--init", "0.2"]));
    assert!(!ok && said.contains("only --steps may change"), "{said}");
    succeeds(&learn(&run, &["--steps", "3", "--resume"]));
    // "nothing to resume ... leave out --resume"
    let fresh = tmp.path().join("fresh");
    let (ok, said) = adamerge(&learn(&fresh, &["--steps", "1", "--resume"]));
    assert!(!ok && said.contains("leave out --resume"), "{said}");
    succeeds(&learn(&fresh, &["--steps", "1"]));
    // Ctrl-C: "the checkpoint in DIR resumes it with --resume"
    let stopped = tmp.path().join("stopped");
    let said = interrupted_at(&learn(&stopped, &["--steps", "4"]), "step-1-saved", &hold);
    assert!(said.contains("resumes it with --resume"), "{said}");
    succeeds(&learn(&stopped, &["--steps", "4", "--resume"]));
    let lambda: Value =
        serde_json::from_str(&std::fs::read_to_string(stopped.join("lambda.json")).unwrap())
            .unwrap();
    assert_eq!(lambda["steps_done"], 4);

    // Ctrl-C in a run: "`adamerge run --resume DIR` continues it", run as written.
    let file = tmp.path().join("fx.toml");
    std::fs::write(
        &file,
        experiment("fx", &models, &data, common::AVERAGE_ONLY),
    )
    .unwrap();
    let runs = tmp.path().join("runs");
    let args = [
        "run",
        file.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
    ]
    .map(String::from);
    let said = interrupted_at(&args, "events-logged@1", &hold);
    let said = succeeds(&suggested_command(&said));
    assert!(said.contains("weight-average"), "{said}");

    // "pass --force to replace a folder adamerge wrote"
    let merged = tmp.path().join("merged");
    let mut merge = common::merge_args(&models, "weight-average", &merged, &[]);
    succeeds(&merge);
    let (ok, said) = adamerge(&merge);
    assert!(!ok && said.contains("pass --force"), "{said}");
    merge.push("--force".into());
    succeeds(&merge);

    // "raise it with --max-image-pixels"
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval".to_string(),
            "--model".into(),
            models.join("pretrained").display().to_string(),
            "--task".into(),
            format!(
                "alpha,data={},head={}",
                data[0].1.display(),
                data[0].2.display()
            ),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (ok, said) = adamerge(&eval(&["--max-image-pixels", "64"]));
    assert!(
        !ok && said.contains("raise it with --max-image-pixels"),
        "{said}"
    );
    succeeds(&eval(&["--max-image-pixels", "1000"]));
}

#[test]
fn smaller_input_errors_say_precisely_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    let data = make_data(&tmp.path().join("data"));

    // A bare file name in the current folder.
    let exp_dir = tmp.path().join("exp");
    std::fs::create_dir(&exp_dir).unwrap();
    std::fs::write(
        exp_dir.join("small.toml"),
        experiment("small", &models, &data, common::AVERAGE_ONLY),
    )
    .unwrap();
    let args = ["run", "small.toml", "--runs", "../runs"].map(String::from);
    let out = run_with(&args, &[], Some(&exp_dir));
    assert!(out.status.success(), "{}", text(&out));

    // A TOML syntax error has its line and column.
    std::fs::write(exp_dir.join("broken.toml"), "name = \"x\"\nseeds = [0,\n").unwrap();
    let out = run_with(
        &["run".into(), "--check".into(), "broken.toml".into()],
        &[],
        Some(&exp_dir),
    );
    assert!(text(&out).contains("line 2, column 12"), "{}", text(&out));

    // A config.json error names its key.
    let cfg_path = models.join("finetuned/beta/config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let mut v: Value = serde_json::from_str(&cfg).unwrap();
    let section = if v.get("vision_config").is_some() {
        &mut v["vision_config"]
    } else {
        &mut v
    };
    section["hidden_size"] = Value::from("wide");
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let out = tmp.path().join("avg");
    let merge = common::merge_args(&models, "weight-average", &out, &[]);
    let (ok, said) = adamerge(&merge);
    assert!(
        !ok && said.contains("hidden_size") && !said.contains("<fields>"),
        "{said}"
    );
    std::fs::write(&cfg_path, cfg).unwrap();

    // A bound prints readably.
    let ties = common::merge_args(&models, "ties", &out, &["--k", "0"]);
    let (ok, said) = adamerge(&ties);
    assert!(
        !ok && said.contains("0 is not in (0, 1]") && said.len() < 200,
        "{said}"
    );

    // `--eval-limit 0` is refused, not read as "every image".
    let run = tmp.path().join("learn");
    let (ok, said) = adamerge(&learn_args_from(
        &models,
        &data,
        &run,
        &["--eval-limit", "0"],
    ));
    assert!(!ok && said.contains("--eval-limit"), "{said}");

    // A λ file outside the range its run clamped to is refused, naming the values.
    succeeds(&learn_args_from(&models, &data, &run, &["--steps", "1"]));
    let path = run.join("lambda.json");
    let mut lambda: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    lambda["effective"][0][2] = Value::from(1e36);
    let edited = tmp.path().join("edited.json");
    std::fs::write(&edited, lambda.to_string()).unwrap();
    let apply = common::merge_args(
        &models,
        "adamerging",
        &tmp.path().join("ada"),
        &["--lambda-file", edited.to_str().unwrap()],
    );
    let (ok, said) = adamerge(&apply);
    assert!(!ok && said.contains("effective[0][2] = 1e36"), "{said}");
}
