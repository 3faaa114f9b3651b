//! Checkpoint layouts (sharded CLIPModel + f16/bf16 CLIPVisionModel fine-tunes), writing, bad
//! input, the diagnostics, and the transformers load check where Python has transformers.

use crate::common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Command;

use adamerge::Error;
use adamerge::checkpoint::{
    Checkpoint, PendingTensor, Replacement, StoredDtype, save_merged, write_safetensors,
};
use adamerge::diagnostics::TaskVectorReport;
use adamerge::merge::{MergeMethod, TaskArithmetic};
use adamerge::task_vector::{Finetuned, MergeScope, TaskVectors, VectorDtype};
use burn::tensor::Device;
use common::*;
use indicatif::ProgressBar;

fn ft(name: &str, path: PathBuf) -> Finetuned {
    Finetuned {
        name: name.to_string(),
        path,
    }
}

fn load(pretrained: &Path, fts: &[Finetuned]) -> adamerge::Result<TaskVectors> {
    TaskVectors::load(
        pretrained,
        fts,
        &MergeScope::default(),
        VectorDtype::F32,
        &Device::flex(),
        &ProgressBar::hidden(),
    )
    .map(|(tv, _)| tv)
}

fn set_b() -> Vec<Finetuned> {
    ["ft_f32", "ft_f16", "ft_bf16"]
        .iter()
        .map(|n| ft(n, fixture("merge/b").join(n)))
        .collect()
}

#[test]
fn sharded_clipmodel_with_half_precision_finetunes_merges_and_saves() {
    let root = fixture("merge/b");
    let pretrained = root.join("pretrained");
    let (tv, plan) = TaskVectors::load(
        &pretrained,
        &set_b(),
        &MergeScope::default(),
        VectorDtype::F32,
        &Device::flex(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    let carried: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("expected/carried.json")).unwrap())
            .unwrap();
    let mut want_carried: Vec<String> = carried["carried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut got_carried = plan.carried.clone();
    want_carried.sort();
    got_carried.sort();
    assert_eq!(
        got_carried, want_carried,
        "visual_projection, text tower, position_ids carried"
    );
    assert_eq!(plan.merged.len(), 39);
    // The projection the vision-only fine-tunes lack is not merged but still scores the model.
    let frozen: Vec<&str> = tv.frozen().names().collect();
    assert_eq!(frozen, ["visual_projection.weight"]);
    let ckpt = adamerge::checkpoint::Checkpoint::open(&pretrained).unwrap();
    assert_eq!(
        tv.frozen()
            .get("visual_projection.weight")
            .unwrap()
            .to_vec()
            .unwrap(),
        ckpt.read_f32("visual_projection.weight").unwrap()
    );
    let scored = tv.pretrained();
    assert_eq!(scored.len(), 40);
    assert!(scored.get("visual_projection.weight").is_some());

    let merged = TaskArithmetic::new(0.3).unwrap().merge(&tv).unwrap();
    let expected = read_all(&root.join("expected/task_arithmetic_l0.3.safetensors"));
    assert!(max_abs_diff(&merged, &expected) <= 1e-6);

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    save_merged(
        &pretrained,
        &Replacement::from_weights(&merged),
        &out,
        false,
    )
    .unwrap();
    assert!(out.join("config.json").is_file());
    assert!(out.join("model.safetensors").is_file());
    assert!(!out.join("model.safetensors.index.json").exists());
    let written = Checkpoint::open(&out).unwrap();
    let original = Checkpoint::open(&pretrained).unwrap();
    assert_eq!(
        written.names().collect::<Vec<_>>(),
        original.names().collect::<Vec<_>>()
    );
    for name in original.names() {
        let (a, b) = (original.meta(name).unwrap(), written.meta(name).unwrap());
        assert_eq!((a.dtype, &a.shape), (b.dtype, &b.shape), "{name}");
        if plan.carried.iter().any(|c| c == name) {
            assert_eq!(
                original.raw(name),
                written.raw(name),
                "{name} carried byte for byte"
            );
        } else {
            assert_close(&written.read_f32(name).unwrap(), &expected[name], 1e-6);
        }
    }
    assert_eq!(
        written
            .meta("vision_model.embeddings.position_ids")
            .unwrap()
            .dtype,
        StoredDtype::Other(safetensors::Dtype::I64)
    );
    hf_load_check(&out);
}

#[test]
fn unprefixed_vision_names_read_as_prefixed() {
    let root = fixture("merge/b");
    let a = Checkpoint::open(root.join("ft_f32")).unwrap();
    let b = Checkpoint::open(root.join("ft_f32_unprefixed")).unwrap();
    assert_eq!(a.names().collect::<Vec<_>>(), b.names().collect::<Vec<_>>());
    for n in a.names() {
        assert_eq!(a.read_f32(n).unwrap(), b.read_f32(n).unwrap(), "{n}");
    }
}

#[test]
fn half_precision_pretrained_is_written_back_in_half_precision() {
    let root = fixture("merge/b");
    let pretrained = root.join("ft_f16");
    let fts = vec![ft("a", root.join("ft_f32")), ft("b", root.join("ft_bf16"))];
    let tv = load(&pretrained, &fts).unwrap();
    let merged = TaskArithmetic::new(0.5).unwrap().merge(&tv).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m16");
    save_merged(
        &pretrained,
        &Replacement::from_weights(&merged),
        &out,
        false,
    )
    .unwrap();
    let written = Checkpoint::open(&out).unwrap();
    for (name, t) in merged.iter() {
        assert_eq!(
            written.meta(name).unwrap().dtype,
            StoredDtype::F16,
            "{name}"
        );
        let want: Vec<f32> = t
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect();
        assert_eq!(written.read_f32(name).unwrap(), want, "{name}");
    }
}

/// Rewrites `src`'s weights into `dst` with `edit` applied to each (name, dtype, shape, bytes).
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, StoredDtype, Vec<usize>, Vec<u8>) -> Option<(StoredDtype, Vec<usize>, Vec<u8>)>,
) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(src).unwrap();
    let mut tensors = Vec::new();
    for name in ckpt.names() {
        let meta = ckpt.meta(name).unwrap();
        let raw = ckpt.raw(name).unwrap().to_vec();
        if let Some((dtype, shape, bytes)) = edit(name, meta.dtype, meta.shape.clone(), raw) {
            tensors.push((
                name.to_string(),
                PendingTensor {
                    dtype,
                    shape,
                    bytes: Box::new(move || Cow::Owned(bytes.clone())),
                },
            ));
        }
    }
    write_safetensors(&dst.join("model.safetensors"), &tensors).unwrap();
}

const VICTIM: &str = "vision_model.encoder.layers.1.mlp.fc1.weight";

fn bad_case(
    edit: impl Fn(&str, StoredDtype, Vec<usize>, Vec<u8>) -> Option<(StoredDtype, Vec<usize>, Vec<u8>)>,
) -> (tempfile::TempDir, Vec<Finetuned>) {
    let root = fixture("merge/a");
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad_task");
    rewrite(&root.join("task2"), &bad, edit);
    let fts = vec![ft("task1", root.join("task1")), ft("bad", bad)];
    (tmp, fts)
}

fn expect_error(fts: &[Finetuned], must_contain: &[&str]) -> Error {
    let err = load(&fixture("merge/a/pretrained"), fts).expect_err("bad input must fail");
    let msg = err.to_string();
    for needle in must_contain {
        assert!(msg.contains(needle), "`{msg}` should mention `{needle}`");
    }
    err
}

#[test]
fn shape_mismatch_names_file_tensor_and_both_shapes() {
    let (_tmp, fts) = bad_case(|name, d, shape, bytes| {
        if name == VICTIM {
            let n: usize = shape.iter().product();
            Some((d, vec![n], bytes))
        } else {
            Some((d, shape, bytes))
        }
    });
    let err = expect_error(&fts, &[VICTIM, "bad_task", "[16, 8]", "[128]"]);
    assert!(matches!(err, Error::ShapeMismatch { .. }));
}

#[test]
fn missing_tensor_names_the_checkpoint_and_tensor() {
    let (_tmp, fts) = bad_case(|name, d, s, b| (name != VICTIM).then_some((d, s, b)));
    assert!(matches!(
        expect_error(&fts, &[VICTIM, "bad_task"]),
        Error::MissingTensor { .. }
    ));
}

#[test]
fn non_finite_values_are_rejected_with_their_position() {
    let (_tmp, fts) = bad_case(|name, d, s, mut b| {
        if name == VICTIM {
            b[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Some((d, s, b))
    });
    expect_error(&fts, &[VICTIM, "bad_task", "NaN", "index 2"]);
}

#[test]
fn unsupported_dtype_is_named() {
    let (_tmp, fts) = bad_case(|name, d, s, b| {
        if name == VICTIM {
            let wide: Vec<u8> = b
                .chunks_exact(4)
                .flat_map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).to_le_bytes())
                .collect();
            Some((StoredDtype::Other(safetensors::Dtype::F64), s, wide))
        } else {
            Some((d, s, b))
        }
    });
    expect_error(&fts, &[VICTIM, "F64"]);
}

#[test]
fn truncated_and_garbage_files_are_reported_by_path() {
    let root = fixture("merge/a");
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    let bytes = std::fs::read(root.join("task2/model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let fts = vec![ft("task1", root.join("task1")), ft("cut", cut.clone())];
    expect_error(&fts, &["cut/model.safetensors", "truncated"]);

    std::fs::write(
        cut.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
    )
    .unwrap();
    expect_error(
        &fts,
        &["cut/model.safetensors", "not a valid safetensors file"],
    );

    let fts = vec![ft("gone", tmp.path().join("does-not-exist"))];
    expect_error(&fts, &["does-not-exist"]);
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let fts = vec![ft("empty", empty)];
    expect_error(&fts, &["empty", "model.safetensors"]);
}

#[test]
fn duplicate_task_names_and_config_mismatches_are_rejected() {
    let root = fixture("merge/a");
    let fts = vec![ft("x", root.join("task1")), ft("x", root.join("task2"))];
    assert!(matches!(
        expect_error(&fts, &["`x`"]),
        Error::DuplicateTask(_)
    ));

    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("gelu");
    rewrite(&root.join("task2"), &other, |_, d, s, b| Some((d, s, b)));
    let cfg = std::fs::read_to_string(other.join("config.json"))
        .unwrap()
        .replace("quick_gelu", "gelu");
    std::fs::write(other.join("config.json"), cfg).unwrap();
    let fts = vec![ft("task1", root.join("task1")), ft("gelu", other)];
    expect_error(&fts, &["hidden_act", "gelu/config.json"]);
}

#[test]
fn diagnostics_match_a_hand_computed_case() {
    let d = Device::flex();
    let base = weights(&d, &[("w", &[3.0, 0.0, 4.0])]);
    let t1 = weights(&d, &[("w", &[1.0, 1.0, 0.0])]);
    let t2 = weights(&d, &[("w", &[-1.0, 1.0, 1.0])]);
    let tv = TaskVectors::new(vec!["a".into(), "b".into()], base, vec![t1, t2]).unwrap();
    let r = TaskVectorReport::compute(&tv).unwrap();
    assert!((r.base_norm - 5.0).abs() < 1e-9);
    assert!((r.norms[0] - 2f64.sqrt()).abs() < 1e-6);
    assert!((r.norms[1] - 3f64.sqrt()).abs() < 1e-6);
    assert!(r.cosine[0][1].abs() < 1e-9);
    assert!((r.pairwise_sign_conflict[0][1] - 0.5).abs() < 1e-9);
    assert!((r.sign_conflict_rate - 0.5).abs() < 1e-9);
    assert!(r.to_markdown().contains("| a | 1.4142 | 0.2828 |"));
}

fn adamerge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_adamerge"))
        .args(args)
        .output()
        .expect("run adamerge")
}

#[test]
fn cli_merges_refuses_to_overwrite_and_fails_cleanly() {
    let root = fixture("merge/a");
    let p = |rel: &str| root.join(rel).to_string_lossy().into_owned();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out_s = out.to_string_lossy().into_owned();
    let (pre, t1, t2) = (
        p("pretrained"),
        format!("a={}", p("task1")),
        format!("b={}", p("task2")),
    );
    let base = [
        "--threads",
        "1",
        "merge",
        "--pretrained",
        &pre,
        "--finetuned",
        &t1,
        "--finetuned",
        &t2,
    ];
    let ok = adamerge(
        &[
            &base[..],
            &["--method", "ties", "--k", "0.5", "--out", &out_s],
        ]
        .concat(),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("ties(k=0.5,lambda=1,mean)"), "{stdout}");
    let before = std::fs::read(out.join("model.safetensors")).unwrap();

    // An existing output is not replaced without --force.
    let again = adamerge(&[&base[..], &["--method", "task-arithmetic", "--out", &out_s]].concat());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );

    // Bad input: clear error, non-zero exit, no panic, nothing written.
    let bad_out = tmp.path().join("never");
    let bad_out_s = bad_out.to_string_lossy().into_owned();
    let missing = format!("c={}", tmp.path().join("nope").display());
    let bad = adamerge(&[
        "merge",
        "--method",
        "task-arithmetic",
        "--pretrained",
        &pre,
        "--finetuned",
        &t1,
        "--finetuned",
        &missing,
        "--out",
        &bad_out_s,
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error:") && err.contains("nope"), "{err}");
    assert!(!err.contains("panicked"));
    assert!(!bad_out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no staging directory is left behind");

    let wrong = adamerge(
        &[
            &base[..],
            &[
                "--method",
                "task-arithmetic",
                "--k",
                "0.2",
                "--out",
                &bad_out_s,
            ],
        ]
        .concat(),
    );
    assert!(!wrong.status.success());
    let msg = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        msg.contains("--k: does not apply to task-arithmetic"),
        "{msg}"
    );
}

#[test]
fn cli_inspect_lists_tensors_and_diagnoses_task_vectors() {
    let root = fixture("merge/a");
    let listing = adamerge(&["inspect", &root.join("pretrained").to_string_lossy()]);
    assert!(listing.status.success());
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("| visual_projection.weight | F32 | [4, 8] | 32 |"),
        "{text}"
    );
    assert!(text.contains("40 tensors, 1696 parameters"), "{text}");

    let diag = adamerge(&[
        "inspect",
        "--pretrained",
        &root.join("pretrained").to_string_lossy(),
        "--finetuned",
        &format!("a={}", root.join("task1").display()),
        "--finetuned",
        &format!("b={}", root.join("task2").display()),
        "--json",
    ]);
    assert!(
        diag.status.success(),
        "{}",
        String::from_utf8_lossy(&diag.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&diag.stdout).unwrap();
    assert_eq!(report["tasks"], serde_json::json!(["a", "b"]));
    let cos = report["cosine"][0][1].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&cos));
    // task2 holds entries that are exactly −task1, so some signs conflict.
    assert!(report["pairwise_sign_conflict"][0][1].as_f64().unwrap() > 0.0);
}

/// Runs `scripts/checks/check_hf_load.py` where Python with transformers is present; CI has no
/// torch, so there it says it skipped.
fn hf_load_check(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/checks/check_hf_load.py");
    match Command::new("python3").arg(&script).arg(dir).output() {
        Err(_) => eprintln!("SKIP transformers load check: python3 not found"),
        Ok(out) => match out.status.code() {
            Some(0) => {}
            Some(77) => eprintln!("SKIP transformers load check: transformers not installed"),
            _ => panic!(
                "transformers could not load {}: {}{}",
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        },
    }
}

#[test]
fn a_failing_tensor_while_streaming_leaves_no_output() {
    let pretrained = fixture("merge/a/pretrained");
    let tv = load(&pretrained, &[ft("t", fixture("merge/a/task1"))]).unwrap();
    let shapes = tv
        .theta0()
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape.clone()))
        .collect();
    let failing = Replacement::new(shapes, |name| {
        if name == VICTIM {
            Err(Error::invalid("test", "refused"))
        } else {
            tv.theta0().require(name)?.to_vec()
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let err = save_merged(&pretrained, &failing, &out, false).unwrap_err();
    assert!(err.to_string().contains("refused"));
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
