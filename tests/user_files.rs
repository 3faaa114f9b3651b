//! Never lose a user's files: an output over an input is refused, `--force` replaces only what
//! adamerge wrote, folder walks end and read each file once, image decoding is bounded, and one
//! process at a time writes a run folder. Every case compares the files on disk before and
//! after, not exit codes alone.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adamerge::data::{LabeledImages, scan_unlabeled};
use common::{
    AVERAGE_ONLY, TASKS, adamerge, copy_models, experiment, fixture, learn_args_from, make_data,
    merge_args, snapshot,
};

fn refused(args: &[String], must_contain: &[&str]) {
    let (ok, text) = adamerge(args);
    assert!(!ok, "accepted: {args:?}\n{text}");
    for m in must_contain {
        assert!(text.contains(m), "`{m}` not in: {text}");
    }
}

#[test]
fn merge_never_writes_over_its_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    std::fs::write(models.join("notes.txt"), "the user's own file").unwrap();
    let lambda_dir = tmp.path().join("lambda");
    std::fs::create_dir_all(&lambda_dir).unwrap();
    std::fs::write(lambda_dir.join("lambda.json"), "{}").unwrap();
    let before = snapshot(tmp.path());
    let outs = [
        models.clone(),
        models.join("pretrained"),
        models.join("finetuned/beta"),
        models.join("finetuned"),
        models.join("pretrained/merged"),
        models.join("finetuned/../pretrained"),
    ];
    for out in &outs {
        for force in [&[][..], &["--force"][..]] {
            let args = merge_args(&models, "task-arithmetic", out, force);
            refused(
                &args,
                &["never writes where it reads", &out.display().to_string()],
            );
            assert_eq!(
                snapshot(tmp.path()),
                before,
                "merge --out {}",
                out.display()
            );
        }
    }
    // The λ file is an input too, refused before it is even read.
    let mut args = merge_args(&models, "adamerging", &lambda_dir, &["--force"]);
    args.extend([
        "--lambda-file".into(),
        lambda_dir.join("lambda.json").display().to_string(),
    ]);
    refused(&args, &["the λ file"]);
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn force_replaces_only_a_folder_adamerge_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    let out = tmp.path().join("merged");
    let (ok, text) = adamerge(&merge_args(&models, "task-arithmetic", &out, &[]));
    assert!(ok, "{text}");
    assert!(out.join(".adamerge-manifest.json").is_file());
    let written = snapshot(tmp.path());

    refused(
        &merge_args(&models, "task-arithmetic", &out, &[]),
        &["not empty", "--force"],
    );
    assert_eq!(snapshot(tmp.path()), written);
    let (ok, text) = adamerge(&merge_args(
        &models,
        "task-arithmetic",
        &out,
        &["--force", "--lambda", "0.5"],
    ));
    assert!(ok, "{text}");
    assert_ne!(snapshot(tmp.path()), written, "replaced");

    // A file the user put there stops --force, and stays.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let before = snapshot(tmp.path());
    refused(
        &merge_args(&models, "task-arithmetic", &out, &["--force"]),
        &["notes.txt", "not written by adamerge"],
    );
    assert_eq!(snapshot(tmp.path()), before);
    std::fs::remove_file(out.join("notes.txt")).unwrap();

    // A file adamerge wrote but the user changed, too.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("config.json"))
        .unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    let before = snapshot(tmp.path());
    refused(
        &merge_args(&models, "task-arithmetic", &out, &["--force"]),
        &["config.json", "changed"],
    );
    assert_eq!(snapshot(tmp.path()), before);

    // A folder of the user's (no manifest) is never replaced; an empty one is used.
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(mine.join("sub")).unwrap();
    std::fs::write(mine.join("sub/data.bin"), "x").unwrap();
    let before = snapshot(tmp.path());
    refused(
        &merge_args(&models, "task-arithmetic", &mine, &["--force"]),
        &[".adamerge-manifest.json", "remove it"],
    );
    assert_eq!(snapshot(tmp.path()), before);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, text) = adamerge(&merge_args(&models, "task-arithmetic", &empty, &[]));
    assert!(ok, "{text}");
    // Nothing hidden is left beside the outputs.
    let hidden: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn learn_and_run_refuse_outputs_over_their_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    let data_root = tmp.path().join("data");
    let data = make_data(&data_root);
    let exp_dir = tmp.path().join("fx");
    std::fs::create_dir_all(&exp_dir).unwrap();
    let file = exp_dir.join("experiment.toml");
    std::fs::write(&file, experiment("fx", &models, &data, AVERAGE_ONLY)).unwrap();
    let before = snapshot(tmp.path());

    for out in [
        data_root.clone(),
        data[0].1.clone(),
        data[1].1.join("new"),
        models.clone(),
    ] {
        for extra in [&["--steps", "1"][..], &["--steps", "1", "--resume"][..]] {
            refused(
                &learn_args_from(&models, &data, &out, extra),
                &["never writes where it reads", &out.display().to_string()],
            );
            assert_eq!(
                snapshot(tmp.path()),
                before,
                "learn --out {}",
                out.display()
            );
        }
    }
    // runs/<name> would be the experiment's own folder, or lie inside a task's data.
    let f = file.display().to_string();
    for (runs, what) in [
        (tmp.path().to_path_buf(), "the experiment file"),
        (data[0].1.clone(), "task[0].data"),
    ] {
        let args = [
            "run".to_string(),
            f.clone(),
            "--runs".into(),
            runs.display().to_string(),
        ];
        refused(&args, &[what]);
        assert_eq!(
            snapshot(tmp.path()),
            before,
            "run --runs {}",
            runs.display()
        );
    }
}

#[test]
fn folder_walks_end_and_read_each_file_once() {
    let tmp = tempfile::tempdir().unwrap();
    let adapt = tmp.path().join("adapt");
    std::fs::create_dir_all(adapt.join("sub/deeper")).unwrap();
    let png = |p: &Path, v: u8| {
        image::GrayImage::from_pixel(4, 4, image::Luma([v]))
            .save(p)
            .unwrap()
    };
    png(&adapt.join("a.png"), 1);
    png(&adapt.join("sub/b.png"), 2);
    png(&adapt.join("sub/deeper/c.png"), 3);
    let link = |target: &Path, at: &Path| std::os::unix::fs::symlink(target, at).unwrap();
    link(&adapt, &adapt.join("sub/up")); // a cycle one level deep
    link(&adapt.join("sub"), &adapt.join("sub/deeper/up")); // and two levels deep
    link(&adapt.join("a.png"), &adapt.join("sub/again.png")); // one file by two paths
    let start = Instant::now();
    let images = scan_unlabeled(&adapt).unwrap();
    assert_eq!(images.len(), 3, "{images:?}");
    assert!(start.elapsed() < Duration::from_secs(10));

    // ImageFolder: a link to an image of the same class is one image; to another class, an error.
    let set = tmp.path().join("set");
    for c in ["c0", "c1"] {
        std::fs::create_dir_all(set.join(c)).unwrap();
    }
    png(&set.join("c0/x.png"), 1);
    png(&set.join("c1/y.png"), 2);
    link(&set.join("c0/x.png"), &set.join("c0/x-again.png"));
    let read = LabeledImages::folder(&set, None).unwrap();
    assert_eq!(read.items.len(), 2);
    link(&set.join("c0/x.png"), &set.join("c1/z.png"));
    let err = LabeledImages::folder(&set, None).unwrap_err().to_string();
    assert!(err.contains("z.png") && err.contains("two labels"), "{err}");

    // `learn` on adaptation folders that hold cycles ends, and leaves the inputs as they were.
    let data_root = tmp.path().join("data");
    let data = make_data(&data_root);
    for (_, dir, _) in &data {
        link(dir, &dir.join("class0/loop"));
    }
    let before = snapshot(&data_root);
    let out = tmp.path().join("run");
    let mut args = learn_args_from(&fixture("adamerging"), &data, &out, &["--steps", "1"]);
    for (i, (_, dir, _)) in data.iter().enumerate() {
        let pos = args.iter().position(|a| a.starts_with(TASKS[i])).unwrap();
        args[pos] += &format!(",adapt={}", dir.display());
    }
    let (ok, text) = adamerge(&args);
    assert!(ok, "{text}");
    assert_eq!(snapshot(&data_root), before);
}

/// A grayscale PNG of `side`² black pixels, written row by row (a few hundred KB for 20000²).
fn black_png(path: &Path, side: u32) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(file, side, side);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
    let row = vec![0u8; side as usize];
    for _ in 0..side {
        w.write_all(&row).unwrap();
    }
    w.finish().unwrap();
}

/// Runs `adamerge args` and returns (success, output, peak resident memory in bytes).
fn adamerge_peak_rss(args: &[String]) -> (bool, String, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_adamerge"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        })
    };
    let (mut child, out, err) = {
        let mut child = child;
        let out = read(Box::new(child.stdout.take().unwrap()));
        let err = read(Box::new(child.stderr.take().unwrap()));
        (child, out, err)
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid for writing.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let _ = child.try_wait();
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, text, usage.ru_maxrss as u64 * 1024)
}

fn eval_args(data: &str, head: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "eval".to_string(),
        "--model".into(),
        fixture("adamerging/pretrained").display().to_string(),
        "--task".into(),
        format!("alpha,data={data},head={}", head.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn an_image_bomb_is_refused_from_its_header_in_folders_and_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let data = make_data(&tmp.path().join("data"));
    let (_, dir, head) = &data[0];
    let bomb = dir.join("class0/bomb.png");
    black_png(&bomb, 20_000);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 4 << 20);
    let (ok, text, peak) = adamerge_peak_rss(&eval_args(
        &dir.display().to_string(),
        head,
        &["--threads", "2"],
    ));
    assert!(!ok, "{text}");
    assert!(
        text.contains("bomb.png") && text.contains("above the limit"),
        "{text}"
    );
    // Decoding it would take 400 MB as gray and 1.2 GB more as RGB.
    assert!(peak < 300 << 20, "peak {} MB", peak >> 20);

    // The same image as the second row of a Parquet file.
    let parquet = tmp.path().join("bomb.parquet");
    let small = std::fs::read(dir.join("class0/0.png")).unwrap();
    let bomb_bytes = std::fs::read(&bomb).unwrap();
    let images = arrow_array::BinaryArray::from(vec![&small[..], &bomb_bytes[..], &small[..]]);
    let labels = arrow_array::Int64Array::from(vec![0, 1, 2]);
    let batch = arrow_array::RecordBatch::try_from_iter([
        ("image", Arc::new(images) as arrow_array::ArrayRef),
        ("label", Arc::new(labels) as arrow_array::ArrayRef),
    ])
    .unwrap();
    let file = std::fs::File::create(&parquet).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let (ok, text, peak) = adamerge_peak_rss(&eval_args(&parquet.display().to_string(), head, &[]));
    assert!(!ok, "{text}");
    assert!(
        text.contains("bomb.parquet, row 1") && text.contains("above the limit"),
        "{text}"
    );
    assert!(peak < 300 << 20, "peak {} MB", peak >> 20);

    // The limit is the user's to raise or lower.
    let (ok, text) = adamerge(&eval_args(
        &dir.display().to_string(),
        head,
        &["--max-image-pixels", "100"],
    ));
    // Every image of the folder is over 100 pixels; which one the parallel decode meets first
    // varies from run to run.
    assert!(
        !ok && text.contains(".png") && text.contains("limit of 100"),
        "{text}"
    );
}

#[test]
fn decoding_memory_does_not_grow_with_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = make_data(&tmp.path().join("data"));
    let (_, dir, head) = &data[0];
    for i in 0..4 {
        black_png(&dir.join(format!("class{}/large{i}.png", i % 2)), 6_000);
    }
    // 36 Mpixel each: about 150 MB to decode and convert to RGB; within a 40 Mpixel budget
    // only one is in flight, whatever the threads.
    let limit = ["--max-image-pixels", "40000000", "--batch-size", "16"];
    let peak = |threads: &str| {
        let mut extra = vec!["--threads", threads];
        extra.extend(limit);
        let (ok, text, peak) =
            adamerge_peak_rss(&eval_args(&dir.display().to_string(), head, &extra));
        assert!(ok, "{text}");
        peak
    };
    let one = peak("1");
    let four = peak("4");
    eprintln!(
        "peak RSS: 1 thread {} MB, 4 threads {} MB",
        one >> 20,
        four >> 20
    );
    assert!(
        four < one + (100 << 20),
        "1 thread: {} MB, 4 threads: {} MB",
        one >> 20,
        four >> 20
    );
}

/// Starts `adamerge args` held just after it took its folder's lock.
fn held_at_lock(args: &[String], hold: &Path, env: &[(&str, &Path)]) -> Child {
    common::held_at(args, "run-locked", hold, env)
}

fn finish(mut child: Child, hold: &Path) {
    std::fs::remove_file(hold).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
}

#[test]
fn one_writer_per_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let models = copy_models(tmp.path());
    let data = make_data(&tmp.path().join("data"));
    let hold = tmp.path().join("hold");

    // learn: a second writer started during another's resume is refused, naming the holder.
    let out = tmp.path().join("learn");
    let (ok, text) = adamerge(&learn_args_from(&models, &data, &out, &["--steps", "2"]));
    assert!(ok, "{text}");
    let first = held_at_lock(
        &learn_args_from(&models, &data, &out, &["--steps", "4", "--resume"]),
        &hold,
        &[],
    );
    let pid = format!("process {}", first.id());
    let before = snapshot(&out);
    for extra in [&["--steps", "6", "--resume"][..], &["--steps", "2"][..]] {
        refused(
            &learn_args_from(&models, &data, &out, extra),
            &[&pid, &out.display().to_string()],
        );
        assert_eq!(snapshot(&out), before);
    }
    finish(first, &hold);
    let lambda: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lambda.json")).unwrap()).unwrap();
    assert_eq!(lambda["steps_done"], 4);
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    assert!(!out.join(".adamerge.lock").exists());

    // run: a resume of a run that is running is refused.
    let file = tmp.path().join("fx.toml");
    std::fs::write(&file, experiment("fx", &models, &data, AVERAGE_ONLY)).unwrap();
    let runs = tmp.path().join("runs");
    let args = [
        "run",
        file.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
    ]
    .map(String::from);
    let first = held_at_lock(&args, &hold, &[]);
    let dir = std::fs::read_dir(runs.join("fx"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let before = snapshot(&dir);
    let resume = ["run", "--resume", dir.to_str().unwrap()].map(String::from);
    refused(&resume, &[&format!("process {}", first.id())]);
    assert_eq!(snapshot(&dir), before);
    finish(first, &hold);
    assert!(dir.join("results.json").is_file());

    // suite build: a second builder of the same folder is refused.
    let suite = tmp.path().join("suite");
    let cache = tmp.path().join("cache");
    let build = [
        "suite",
        "build",
        "--size",
        "tiny",
        "--out",
        suite.to_str().unwrap(),
    ]
    .map(String::from);
    let mut first = held_at_lock(&build, &hold, &[("ADAMERGE_CACHE", &cache)]);
    refused(
        &build,
        &[&format!("process {}", first.id()), suite.to_str().unwrap()],
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!suite.exists());
}
