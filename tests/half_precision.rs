//! Task vectors held in bf16 or f16 (`--tau-dtype`): stored so, computed in f32. Each merge and
//! the learner over half vectors must equal the f32 path run on the same vectors rounded on the
//! host (so nothing but the storage changed), and stay within the rounding of the f32 results.

use crate::common;

use adamerge::adamerging::{LearnConfig, Learner};
use adamerge::merge::{
    Aggregate, Dare, DareInner, MergeMethod, Qkv, Spectral, TaskArithmetic, Ties, TrimScope,
    WeightAverage,
};
use adamerge::spectral::Variant;
use adamerge::task_vector::{TaskVectors, VectorDtype};
use adamerge::weights::{Weights, tensor_to_vec};
use burn::tensor::{DType, Device, Tensor, TensorData};
use common::learning::{FixedBatches, Setup, setup};
use common::*;

const HALVES: [VectorDtype; 2] = [VectorDtype::Bf16, VectorDtype::F16];

/// `v` rounded to nearest in `dtype`, by the `half` crate (not burn).
fn rounded(v: f32, dtype: VectorDtype) -> f32 {
    match dtype {
        VectorDtype::F32 => v,
        VectorDtype::Bf16 => half::bf16::from_f32(v).to_f32(),
        VectorDtype::F16 => half::f16::from_f32(v).to_f32(),
    }
}

/// Relative spacing of `dtype`'s values (the rounding bound is half of it).
fn epsilon(dtype: VectorDtype) -> f32 {
    match dtype {
        VectorDtype::F32 => f32::EPSILON,
        VectorDtype::Bf16 => 2f32.powi(-7),
        VectorDtype::F16 => 2f32.powi(-10),
    }
}

/// The f32 set `tv` with every task-vector entry rounded to `dtype` on the host, held in f32.
fn rounded_on_host(tv: &TaskVectors, dtype: VectorDtype) -> TaskVectors {
    let vectors = (0..tv.num_tasks())
        .map(|k| {
            tv.stored(k).map(|_, t| {
                let v: Vec<f32> = tensor_to_vec(t.clone()).unwrap();
                let n = v.len();
                let r = v.into_iter().map(|x| rounded(x, dtype)).collect::<Vec<_>>();
                Tensor::from_data(TensorData::new(r, [n]), &t.device())
            })
        })
        .collect();
    TaskVectors::new(tv.tasks().to_vec(), tv.theta0().clone(), vectors).unwrap()
}

fn largest_diff(a: &Weights, b: &Weights) -> f32 {
    a.iter()
        .map(|(name, t)| {
            let (x, y) = (
                t.to_vec().unwrap(),
                b.require(name).unwrap().to_vec().unwrap(),
            );
            x.iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

#[test]
fn half_task_vectors_are_held_half_and_read_back_rounded_to_nearest() {
    let full = merge_set_a(VectorDtype::F32, &Device::flex());
    for dtype in HALVES {
        let tv = merge_set_a(dtype, &Device::flex());
        assert_eq!(tv.dtype(), dtype);
        let mut changed = 0;
        for k in 0..tv.num_tasks() {
            for (name, t) in tv.stored(k).iter() {
                let want_dtype = match dtype {
                    VectorDtype::Bf16 => DType::BF16,
                    _ => DType::F16,
                };
                assert_eq!(t.data.dtype(), want_dtype, "{dtype} τ_{k} {name}");
                let exact = tensor_to_vec(full.tau(k, name).unwrap()).unwrap();
                let read = tensor_to_vec(tv.tau(k, name).unwrap()).unwrap();
                for (x, r) in exact.iter().zip(&read) {
                    assert_eq!(r.to_bits(), rounded(*x, dtype).to_bits(), "{dtype} {name}");
                    changed += usize::from(r != x);
                }
            }
        }
        assert!(changed > 0, "{dtype}: no entry was rounded");
        // θ₀ stays f32.
        for (_, t) in tv.theta0().iter() {
            assert_eq!(t.data.dtype(), DType::F32);
        }
        // Converting a loaded f32 set gives the same storage.
        let converted = full.clone().stored_as(dtype).unwrap();
        for k in 0..tv.num_tasks() {
            for (name, _) in tv.theta0().iter() {
                let a = tensor_to_vec(converted.tau(k, name).unwrap()).unwrap();
                let b = tensor_to_vec(tv.tau(k, name).unwrap()).unwrap();
                assert_eq!(a, b, "{dtype} {name}");
            }
        }
    }
}

#[test]
fn merges_over_half_vectors_are_the_f32_merges_of_the_rounded_vectors() {
    let full = merge_set_a(VectorDtype::F32, &Device::flex());
    // (method, its scale on Σ τ_k for the linear ones). TIES and TSV-M select (top-k, signs,
    // singular components) from the rounded values, so rounding may flip a choice: only their
    // equality with the f32 merge of the rounded vectors is asserted.
    let methods: Vec<(&str, Box<dyn MergeMethod>, Option<f32>)> = vec![
        ("weight average", Box::new(WeightAverage), Some(1.0 / 3.0)),
        (
            "task arithmetic",
            Box::new(TaskArithmetic::new(0.3).unwrap()),
            Some(0.3),
        ),
        (
            "dare",
            Box::new(Dare::new(0.5, 7, DareInner::TaskArithmetic { lambda: 0.3 }).unwrap()),
            Some(0.6),
        ),
        (
            "ties",
            Box::new(Ties::new(0.2, 1.0, Aggregate::Sum, TrimScope::Global).unwrap()),
            None,
        ),
        (
            "tsv-m",
            Box::new(Spectral::new(Variant::TsvM, 1.0, Qkv::Fused).unwrap()),
            None,
        ),
    ];
    // Σ_k |τ_k| per entry bounds how far rounding every τ can move a weighted sum.
    let mut worst_tau = 0f32;
    for (name, _) in full.theta0().iter() {
        let mut sum: Option<Vec<f32>> = None;
        for k in 0..full.num_tasks() {
            let v = tensor_to_vec(full.tau(k, name).unwrap()).unwrap();
            sum = Some(match sum {
                None => v.iter().map(|x| x.abs()).collect(),
                Some(s) => s.iter().zip(&v).map(|(a, b)| a + b.abs()).collect(),
            });
        }
        worst_tau = sum.unwrap().into_iter().fold(worst_tau, f32::max);
    }
    for dtype in HALVES {
        let half = merge_set_a(dtype, &Device::flex());
        let host = rounded_on_host(&full, dtype);
        for (label, method, scale) in &methods {
            let got = method.merge(&half).unwrap();
            let want = method.merge(&host).unwrap();
            let same = largest_diff(&got, &want);
            assert!(
                same <= 1e-6,
                "{label} {dtype}: {same} from the rounded f32 merge"
            );
            let exact = method.merge(&full).unwrap();
            let moved = largest_diff(&got, &exact);
            eprintln!("{label} {dtype}: largest |half − f32| = {moved:.2e}");
            assert!(moved > 0.0, "{label} {dtype}: nothing rounded");
            // A linear merge moves by at most scale × Σ_k |τ_k| × ε/2 (ε the type's spacing),
            // plus f32 rounding of the sum.
            if let Some(scale) = scale {
                let bound = scale * worst_tau * epsilon(dtype) / 2.0 * 1.01 + 1e-7;
                assert!(moved <= bound, "{label} {dtype}: {moved} > {bound}");
            }
        }
    }
}

fn lambda_after(s: &Setup, tv: &TaskVectors, config: &LearnConfig, steps: usize) -> Vec<f32> {
    let tv = config.task_vectors(tv.clone()).unwrap();
    let mut learner = Learner::new(&s.cfg, &tv, &s.heads, config.clone(), &s.device).unwrap();
    let batches = FixedBatches::load(tv.tasks(), config.batches_per_task, &s.device);
    for _ in 0..steps {
        learner.step(&batches).unwrap();
    }
    learner.lambda().unwrap()
}

fn largest(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// λ after 20 steps over half vectors: equal to the f32 learner over the rounded vectors, and
/// close to the f32 learner: layer-wise AdaMerging within 2e-3 (measured 8.1e-4 in bf16, 9.4e-5
/// in f16); AdaMerging++ within 5e-2 (its global top-20 % trim of the rounded vectors keeps
/// other entries near the threshold, so its inputs differ by more than rounding).
#[test]
fn learned_lambda_over_half_vectors_matches_the_f32_learner() {
    let s = setup();
    let configs = [
        (
            "layer",
            2e-3,
            LearnConfig {
                batch_size: 4,
                lr: 1e-2,
                ..LearnConfig::default()
            },
        ),
        (
            "layer++",
            5e-2,
            LearnConfig {
                batch_size: 4,
                lr: 1e-2,
                ties_k: Some(0.2),
                ..LearnConfig::default()
            },
        ),
    ];
    for (label, tolerance, config) in &configs {
        let exact = lambda_after(&s, &s.tv, config, 20);
        for dtype in HALVES {
            let half = s.tv.clone().stored_as(dtype).unwrap();
            let got = lambda_after(&s, &half, config, 20);
            let host = lambda_after(&s, &rounded_on_host(&s.tv, dtype), config, 20);
            let same = largest(&got, &host);
            let moved = largest(&got, &exact);
            eprintln!(
                "{label} {dtype}: max |Δλ| vs f32 = {moved:.2e}, vs rounded f32 = {same:.1e}"
            );
            assert!(
                same <= 1e-6,
                "{label} {dtype}: {same} from the rounded f32 learner"
            );
            assert!(
                moved <= *tolerance,
                "{label} {dtype}: λ moved {moved} from f32"
            );
        }
    }
}

#[test]
fn the_command_line_holds_half_vectors_and_refuses_what_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let models = fixture("adamerging");
    // merge --tau-dtype bf16 writes the library's merge over bf16 vectors.
    let out = dir.path().join("ta-bf16");
    let (ok, text) = adamerge(&merge_args(
        &models,
        "task-arithmetic",
        &out,
        &["--lambda", "0.3", "--tau-dtype", "bf16"],
    ));
    assert!(ok, "{text}");
    let (_, tv) = task_vectors(&TASKS, &Device::flex());
    let want = TaskArithmetic::new(0.3)
        .unwrap()
        .merge(&tv.stored_as(VectorDtype::Bf16).unwrap())
        .unwrap();
    assert_written(
        &want,
        &read_all(&out.join("model.safetensors")),
        1e-7,
        "bf16",
    );

    // The ndarray backend holds f32 only: refused, naming the option, nothing written.
    let refused = dir.path().join("refused");
    let mut args = vec!["--device".to_string(), "ndarray".into()];
    args.extend(merge_args(
        &models,
        "task-arithmetic",
        &refused,
        &["--tau-dtype", "bf16"],
    ));
    let (ok, text) = adamerge(&args);
    assert!(!ok && text.contains("--tau-dtype"), "{text}");
    assert!(!refused.exists());

    // learn records the type, and a run is resumed only in the type it was learned in.
    let data = make_data(&dir.path().join("data"));
    let run = dir.path().join("learn");
    let (ok, text) = adamerge(&learn_args(
        &data,
        &run,
        &["--steps", "2", "--tau-dtype", "f16", "--no-merged"],
    ));
    assert!(ok, "{text}");
    let lambda: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("lambda.json")).unwrap()).unwrap();
    assert_eq!(lambda["tau_dtype"], "f16");
    let (ok, text) = adamerge(&learn_args(
        &data,
        &run,
        &["--steps", "3", "--resume", "--no-merged"],
    ));
    assert!(!ok && text.contains("checkpoint"), "{text}");
    let (ok, text) = adamerge(&learn_args(
        &data,
        &run,
        &[
            "--steps",
            "3",
            "--resume",
            "--tau-dtype",
            "f16",
            "--no-merged",
        ],
    ));
    assert!(ok, "{text}");
}

/// On the wgpu backend (a GPU, or Mesa's software Vulkan) f16 task vectors give the λ the CPU
/// gives over the same f16 vectors.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_learns_over_f16_vectors_as_the_cpu_does() {
    let s = setup();
    let gpu = Device::wgpu(Default::default());
    let config = LearnConfig {
        batch_size: 4,
        lr: 1e-2,
        ..LearnConfig::default()
    };
    let cpu_half = s.tv.clone().stored_as(VectorDtype::F16).unwrap();
    let want = lambda_after(&s, &cpu_half, &config, 3);
    let on_gpu = Setup {
        cfg: s.cfg.clone(),
        tv: cpu_half.to_device(&gpu).unwrap(),
        heads: s.heads.iter().map(|h| h.clone().to_device(&gpu)).collect(),
        expected: s.expected.clone(),
        device: gpu.clone(),
    };
    for k in 0..on_gpu.tv.num_tasks() {
        for (name, t) in on_gpu.tv.stored(k).iter() {
            assert_eq!(t.data.dtype(), DType::F16, "τ_{k} {name} on the GPU");
        }
    }
    let got = lambda_after(&on_gpu, &on_gpu.tv, &config, 3);
    let worst = largest(&got, &want);
    eprintln!("wgpu f16 vs cpu f16: max |Δλ| after 3 steps = {worst:.2e}");
    assert!(worst <= 1e-4, "wgpu λ differs from the CPU's by {worst}");
}
