//! TSV-M, Iso-C and Iso-CTS against an independent PyTorch implementation
//! (`scripts/reference/reference_spectral.py`, fixture `tests/fixtures/spectral/`: non-square
//! matrices, ranks K does not divide, a task whose τ is exactly rank-deficient, a rounding tie),
//! the shared SVD pass of a run against one merge at a time, and `merge --method ...` end to end.

use crate::common;

use std::collections::HashMap;

use adamerge::merge::{MergeMethod, Qkv, Spectral, SpectralDeltas};
use adamerge::spectral::Variant;
use adamerge::task_vector::{Finetuned, MergeScope, TaskVectors, VectorDtype};
use adamerge::weights::Weights;
use burn::tensor::Device;
use common::{adamerge, fixture, read_all, read_f64, rel};
use indicatif::ProgressBar;

/// One case of `cases.json`.
#[derive(serde::Deserialize)]
struct Case {
    name: String,
    method: String,
    tasks: Vec<String>,
    alpha: f64,
    qkv: String,
    common_fraction: Option<f64>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("spectral/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn checkpoint(task: &str) -> std::path::PathBuf {
    match task {
        "delta" => fixture("spectral/finetuned/delta"),
        t => fixture(&format!("adamerging/finetuned/{t}")),
    }
}

fn task_vectors(tasks: &[String]) -> TaskVectors {
    let fts: Vec<Finetuned> = tasks
        .iter()
        .map(|t| Finetuned {
            name: t.clone(),
            path: checkpoint(t),
        })
        .collect();
    let (tv, _) = TaskVectors::load(
        &fixture("adamerging/pretrained"),
        &fts,
        &MergeScope::default(),
        VectorDtype::F32,
        &Device::flex(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    tv
}

impl Case {
    fn spectral(&self) -> Spectral {
        let variant = match self.method.as_str() {
            "tsv-m" => Variant::TsvM,
            "iso-c" => Variant::IsoC,
            "iso-cts" => Variant::IsoCts {
                common: self.common_fraction.unwrap(),
            },
            m => panic!("unknown method {m}"),
        };
        let qkv = if self.qkv == "split" {
            Qkv::Split
        } else {
            Qkv::Fused
        };
        Spectral::new(variant, self.alpha, qkv).unwrap()
    }
}

/// The worst relative error (per tensor, against its largest entry) of `got` against the
/// case's expected tensors, with the tensor's name; every expected tensor must be there.
fn worst(
    got: &HashMap<String, Vec<f32>>,
    want: &HashMap<String, Vec<f64>>,
    case: &str,
) -> (f64, String) {
    let prefix = format!("{case}/");
    let mut worst = (0f64, String::new());
    let mut seen = 0;
    for (key, w) in want.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let name = &key[prefix.len()..];
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{case}: `{name}` missing"));
        let e = rel(g, w);
        if e > worst.0 {
            worst = (e, name.to_string());
        }
        seen += 1;
    }
    assert!(seen > 0, "no expected tensors for {case}");
    worst
}

fn host(w: &Weights) -> HashMap<String, Vec<f32>> {
    w.iter()
        .map(|(n, t)| (n.to_string(), t.to_vec().unwrap()))
        .collect()
}

#[test]
fn every_case_matches_the_pytorch_reference() {
    let want = read_f64(&fixture("spectral/expected.safetensors"));
    let cases = cases();
    assert!(cases.len() >= 8, "{} cases", cases.len());
    for case in &cases {
        let tv = task_vectors(&case.tasks);
        let s = case.spectral();
        let merged = s.merge(&tv).unwrap();
        let (e, at) = worst(&host(&merged), &want, &case.name);
        assert!(e <= 1e-5, "{}: {e:.2e} at {at}", case.name);
        eprintln!("{}: {e:.1e} ({at})", case.name);
    }
}

#[test]
fn one_shared_pass_gives_each_merge_exactly_as_alone() {
    let tasks: Vec<String> = ["alpha", "beta", "gamma", "delta"]
        .map(String::from)
        .to_vec();
    let tv = task_vectors(&tasks);
    let specs = [
        Spectral::new(Variant::TsvM, 1.0, Qkv::Fused).unwrap(),
        Spectral::new(Variant::IsoC, 1.5, Qkv::Fused).unwrap(),
        Spectral::new(Variant::IsoCts { common: 0.8 }, 1.0, Qkv::Fused).unwrap(),
        Spectral::new(Variant::IsoCts { common: 0.5 }, 1.0, Qkv::Split).unwrap(),
        Spectral::new(Variant::TsvM, 0.5, Qkv::Split).unwrap(),
    ];
    let shared = SpectralDeltas::compute(&tv, &specs, &ProgressBar::hidden()).unwrap();
    assert!(shared.seconds > 0.0);
    for s in &specs {
        let alone = host(&s.merge(&tv).unwrap());
        let from_shared = host(&s.merge_from(&tv, shared.get(s).unwrap()).unwrap());
        assert_eq!(alone, from_shared, "{}", s.label());
    }
    // α = 0 is θ₀ whatever the variant.
    let zero = Spectral::new(Variant::IsoC, 0.0, Qkv::Fused).unwrap();
    let z = host(
        &zero
            .merge_from(&tv, shared.get(&specs[1]).unwrap())
            .unwrap(),
    );
    assert_eq!(z, host(tv.theta0()));
}

#[test]
fn merge_command_writes_the_reference_merge() {
    let want = read_f64(&fixture("spectral/expected.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    for case in cases().iter().filter(|c| c.tasks.len() > 1) {
        let out = tmp.path().join(&case.name);
        let mut args: Vec<String> = ["merge", "--method", &case.method, "--pretrained"]
            .map(String::from)
            .to_vec();
        args.push(fixture("adamerging/pretrained").display().to_string());
        args.extend(["--out".into(), out.display().to_string()]);
        for t in &case.tasks {
            args.extend([
                "--finetuned".into(),
                format!("{t}={}", checkpoint(t).display()),
            ]);
        }
        args.extend([
            "--alpha".into(),
            case.alpha.to_string(),
            "--qkv".into(),
            case.qkv.clone(),
        ]);
        if let Some(f) = case.common_fraction {
            args.extend(["--common-fraction".into(), f.to_string()]);
        }
        let (ok, log) = adamerge(&args);
        assert!(ok, "{}: {log}", case.name);
        let (e, at) = worst(&read_all(&out), &want, &case.name);
        assert!(e <= 1e-5, "{}: {e:.2e} at {at}", case.name);
    }
    // A fraction out of range and a q/k/v mode that does not exist are refused by name.
    let base = |extra: &[&str]| {
        let mut a: Vec<String> = ["merge", "--method", "iso-cts", "--pretrained"]
            .map(String::from)
            .to_vec();
        a.push(fixture("adamerging/pretrained").display().to_string());
        a.extend(["--out".into(), tmp.path().join("bad").display().to_string()]);
        a.extend([
            "--finetuned".into(),
            format!("alpha={}", checkpoint("alpha").display()),
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (ok, log) = adamerge(&base(&["--common-fraction", "0"]));
    assert!(!ok && log.contains("common-fraction"), "{log}");
    let (ok, log) = adamerge(&base(&["--qkv", "both"]));
    assert!(!ok && log.contains("qkv"), "{log}");
    assert!(!tmp.path().join("bad").exists());
}
