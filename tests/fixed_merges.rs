//! Fixed merges against the independent numpy reference (`scripts/reference/reference_merge.py`,
//! fixtures in `tests/fixtures/merge/a`), hand-computed cases and identities.

use crate::common;

use adamerge::merge::{
    Aggregate, Dare, DareInner, DareMasks, MergeMethod, TaskArithmetic, Ties, TrimScope,
    WeightAverage,
};
use adamerge::task_vector::{TaskVectors, VectorDtype};
use adamerge::weights::{FlatTensor, Weights};
use burn::tensor::Device;
use common::*;
use serde_json::Value;

fn given_masks(device: &Device, tv: &TaskVectors) -> DareMasks {
    let all = read_all(&fixture("merge/a/dare_masks.safetensors"));
    let sets = tv
        .tasks()
        .iter()
        .map(|task| {
            let mut w = Weights::new();
            for (name, t0) in tv.theta0().iter() {
                let m = all[&format!("{task}/{name}")].clone();
                w.insert(name, FlatTensor::from_vec(m, t0.shape.clone(), device));
            }
            w
        })
        .collect();
    DareMasks::Given(sets)
}

fn ties_from(p: &Value) -> Ties {
    Ties {
        k: p["k"].as_f64().unwrap(),
        lambda: p["lambda"].as_f64().unwrap(),
        aggregate: match p["agg"].as_str().unwrap() {
            "mean" => Aggregate::Mean,
            _ => Aggregate::Sum,
        },
        scope: match p["scope"].as_str().unwrap() {
            "global" => TrimScope::Global,
            _ => TrimScope::PerTensor,
        },
    }
}

fn check_reference_cases(device: &Device) {
    let tv = merge_set_a(VectorDtype::F32, device);
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("merge/a/cases.json")).unwrap())
            .unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let p = &case["params"];
        let merged = match case["method"].as_str().unwrap() {
            "weight_average" => WeightAverage.merge(&tv),
            "task_arithmetic" => TaskArithmetic::new(p["lambda"].as_f64().unwrap())
                .unwrap()
                .merge(&tv),
            "ties" => ties_from(p).merge(&tv),
            "dare" => {
                let base = match p["then"].as_str().unwrap() {
                    "task_arithmetic" => DareInner::TaskArithmetic {
                        lambda: p["lambda"].as_f64().unwrap(),
                    },
                    _ => DareInner::Ties(ties_from(p)),
                };
                Dare::new(p["p"].as_f64().unwrap(), 0, base)
                    .unwrap()
                    .merge_with_masks(&tv, given_masks(device, &tv))
            }
            other => panic!("unknown method {other}"),
        }
        .expect("merge");
        let expected = read_all(&fixture("merge/a").join(case["file"].as_str().unwrap()));
        let diff = max_abs_diff(&merged, &expected);
        assert!(diff <= 1e-6, "{}: max |diff| {diff}", case["file"]);
    }
}

#[test]
fn every_method_matches_the_numpy_reference_on_flex() {
    check_reference_cases(&Device::flex());
}

#[test]
#[allow(deprecated)]
fn every_method_matches_the_numpy_reference_on_ndarray() {
    check_reference_cases(&Device::ndarray());
}

fn tiny(device: &Device, base: &[f32], taus: &[&[f32]]) -> TaskVectors {
    let base_w = weights(device, &[("w", base)]);
    let vectors = taus.iter().map(|t| weights(device, &[("w", t)])).collect();
    let names = (0..taus.len()).map(|k| format!("t{k}")).collect();
    TaskVectors::new(names, base_w, vectors).unwrap()
}

#[test]
fn hand_computed_task_arithmetic_and_average() {
    let d = Device::flex();
    let tv = tiny(&d, &[1.0, 2.0, 3.0], &[&[1.0, 0.0, -1.0], &[0.5, 0.5, 0.5]]);
    let ta = TaskArithmetic::new(0.5).unwrap().merge(&tv).unwrap();
    assert_close(&values(&ta, "w"), &[1.75, 2.25, 2.75], 1e-7);
    // θ_1 = [2, 2, 2], θ_2 = [1.5, 2.5, 3.5]; their mean:
    let avg = WeightAverage.merge(&tv).unwrap();
    assert_close(&values(&avg, "w"), &[1.75, 2.25, 2.75], 1e-7);
}

#[test]
fn hand_computed_ties_with_ties_at_threshold_and_zero_sums() {
    let d = Device::flex();
    // d = 5, k = 0.4: ⌊2⌋ = 2, threshold = 3rd smallest |x|; entries with |x| ≥ it are kept.
    // τ1 = [ 3, -1,  2,  0.5, -4]: |.| sorted 0.5 1 2 3 4 -> thr 2   -> [3, 0, 2, 0, -4]
    // τ2 = [-3,  2,  1, -2,    1]: |.| sorted 1 1 2 2 3    -> thr 2   -> [-3, 2, 0, -2, 0]
    //      (both 2s tie at the threshold and are kept)
    // τ3 = [ 1,  1, -5,  1,    1]: |.| sorted 1 1 1 1 5    -> thr 1   -> all kept
    // Σ   = [ 1,  3, -3, -1,   -3]  γ = [+, +, -, -, -]
    let tv = tiny(
        &d,
        &[0.0; 5],
        &[
            &[3.0, -1.0, 2.0, 0.5, -4.0],
            &[-3.0, 2.0, 1.0, -2.0, 1.0],
            &[1.0, 1.0, -5.0, 1.0, 1.0],
        ],
    );
    let mean = Ties::new(0.4, 1.0, Aggregate::Mean, TrimScope::Global)
        .unwrap()
        .merge(&tv)
        .unwrap();
    // agreeing entries: e0 {3, 1} -> 2; e1 {2, 1} -> 1.5; e2 {-5} -> -5; e3 {-2} -> -2; e4 {-4} -> -4
    assert_close(&values(&mean, "w"), &[2.0, 1.5, -5.0, -2.0, -4.0], 1e-7);
    let sum = Ties::new(0.4, 0.5, Aggregate::Sum, TrimScope::Global)
        .unwrap()
        .merge(&tv)
        .unwrap();
    assert_close(&values(&sum, "w"), &[2.0, 1.5, -2.5, -1.0, -2.0], 1e-7);

    // An exactly-zero trimmed sum takes the majority sign of the whole vector.
    // k = 1 keeps all: Σ = [2, 0, 3] -> γ = [+, 0, +], majority + -> e1 keeps only the +1.
    let tv = tiny(
        &d,
        &[10.0, 10.0, 10.0],
        &[&[1.0, 1.0, 1.0], &[1.0, -1.0, 2.0]],
    );
    let m = Ties::new(1.0, 1.0, Aggregate::Mean, TrimScope::Global)
        .unwrap()
        .merge(&tv)
        .unwrap();
    assert_close(&values(&m, "w"), &[11.0, 11.0, 11.5], 1e-7);
}

#[test]
fn hand_computed_dare_with_a_given_mask() {
    let d = Device::flex();
    let tv = tiny(
        &d,
        &[1.0, 1.0, 1.0, 1.0],
        &[&[1.0, 2.0, 3.0, 4.0], &[-1.0, -1.0, -1.0, -1.0]],
    );
    let masks = DareMasks::Given(vec![
        weights(&d, &[("w", &[1.0, 0.0, 1.0, 0.0])]),
        weights(&d, &[("w", &[0.0, 0.0, 1.0, 1.0])]),
    ]);
    // p = 0.75: kept entries scaled by 4. τ̃1 = [4, 0, 12, 0], τ̃2 = [0, 0, -4, -4].
    let dare = Dare::new(0.75, 0, DareInner::TaskArithmetic { lambda: 0.5 }).unwrap();
    let w = dare.merge_with_masks(&tv, masks).unwrap();
    assert_close(&values(&w, "w"), &[3.0, 1.0, 5.0, -1.0], 1e-6);
}

#[test]
fn identities() {
    let d = Device::flex();
    let base = [0.5f32, -1.0, 2.0, 0.0, 3.0];
    let tau = [0.1f32, -0.2, 0.0, 0.3, -0.05];
    let finetuned: Vec<f32> = base.iter().zip(&tau).map(|(a, b)| a + b).collect();
    let one = tiny(&d, &base, &[&tau]);
    // One task and λ = 1 gives the fine-tuned model.
    let w = TaskArithmetic::new(1.0).unwrap().merge(&one).unwrap();
    assert_close(&values(&w, "w"), &finetuned, 1e-6);
    // K identical models average to that model.
    let same = tiny(&d, &base, &[&tau, &tau, &tau, &tau]);
    assert_close(
        &values(&WeightAverage.merge(&same).unwrap(), "w"),
        &finetuned,
        1e-6,
    );
    // TIES with k = 1 and one task equals Task Arithmetic (for any λ, mean or sum).
    for (lambda, agg) in [
        (1.0, Aggregate::Mean),
        (0.3, Aggregate::Sum),
        (0.7, Aggregate::Mean),
    ] {
        let ties = Ties::new(1.0, lambda, agg, TrimScope::Global)
            .unwrap()
            .merge(&one)
            .unwrap();
        let ta = TaskArithmetic::new(lambda).unwrap().merge(&one).unwrap();
        assert_close(&values(&ties, "w"), &values(&ta, "w"), 1e-7);
    }
    // DARE with p = 0 is its base merge.
    let dare = Dare::new(0.0, 3, DareInner::TaskArithmetic { lambda: 0.3 })
        .unwrap()
        .merge(&same)
        .unwrap();
    let ta = TaskArithmetic::new(0.3).unwrap().merge(&same).unwrap();
    assert_close(&values(&dare, "w"), &values(&ta, "w"), 0.0);
}

#[test]
fn seeded_dare_is_reproducible_and_unbiased_on_average() {
    let d = Device::flex();
    let n = 20_000;
    let base = vec![0f32; n];
    let tau = vec![1f32; n];
    let tv = tiny(&d, &base, &[&tau]);
    let dare = |seed| Dare::new(0.5, seed, DareInner::TaskArithmetic { lambda: 1.0 }).unwrap();
    let a = values(&dare(1).merge(&tv).unwrap(), "w");
    assert_eq!(a, values(&dare(1).merge(&tv).unwrap(), "w"));
    assert_ne!(a, values(&dare(2).merge(&tv).unwrap(), "w"));
    // Entries are 0 or 2, and their mean stays near τ = 1 (rescaling keeps the expectation).
    assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
    let mean = a.iter().sum::<f32>() / n as f32;
    assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
}

#[test]
fn per_tensor_trim_differs_from_global_when_scales_differ() {
    let d = Device::flex();
    // Two tensors of very different scale. d = 8, k = 0.5: threshold = 4th smallest |x| (0.4),
    // so the global trim keeps the large tensor and only the largest small entry; per tensor,
    // the threshold is the 2nd smallest of each (0.2 and 20).
    let base = weights(&d, &[("big", &[0.0; 4]), ("small", &[0.0; 4])]);
    let tau = weights(
        &d,
        &[
            ("big", &[10.0, 20.0, 30.0, 40.0]),
            ("small", &[0.1, 0.2, 0.3, 0.4]),
        ],
    );
    let tv = TaskVectors::new(vec!["t".into()], base, vec![tau]).unwrap();
    let global = Ties::new(0.5, 1.0, Aggregate::Mean, TrimScope::Global)
        .unwrap()
        .merge(&tv)
        .unwrap();
    assert_close(&values(&global, "small"), &[0.0, 0.0, 0.0, 0.4], 0.0);
    assert_close(&values(&global, "big"), &[10.0, 20.0, 30.0, 40.0], 0.0);
    let per = Ties::new(0.5, 1.0, Aggregate::Mean, TrimScope::PerTensor)
        .unwrap()
        .merge(&tv)
        .unwrap();
    assert_close(&values(&per, "small"), &[0.0, 0.2, 0.3, 0.4], 0.0);
    assert_close(&values(&per, "big"), &[0.0, 20.0, 30.0, 40.0], 0.0);
}

/// Straight-from-the-definition TIES on host vectors (one global threshold per task).
fn naive_ties(base: &[f32], taus: &[Vec<f32>], k: f64, lambda: f32) -> Vec<f32> {
    let d = base.len();
    let hats: Vec<Vec<f32>> = taus
        .iter()
        .map(|t| {
            let mut mags: Vec<f32> = t.iter().map(|x| x.abs()).collect();
            mags.sort_by(f32::total_cmp);
            let rank = d - (d as f64 * k).floor() as usize;
            let thr = if rank == 0 { 0.0 } else { mags[rank - 1] };
            t.iter()
                .map(|&x| if x.abs() >= thr { x } else { 0.0 })
                .collect()
        })
        .collect();
    let sums: Vec<f32> = (0..d)
        .map(|i| hats.iter().fold(0.0, |a, h| a + h[i]))
        .collect();
    let majority: f32 = sums
        .iter()
        .map(|s| s.signum() * (*s != 0.0) as i32 as f32)
        .sum::<f32>()
        .signum();
    (0..d)
        .map(|i| {
            let g = if sums[i] == 0.0 {
                majority
            } else {
                sums[i].signum()
            };
            let agree: Vec<f32> = hats
                .iter()
                .map(|h| h[i])
                .filter(|&x| x != 0.0 && x.signum() == g)
                .collect();
            let m = agree.iter().fold(0.0, |a, x| a + x) / (agree.len().max(1) as f32);
            base[i] + m * lambda
        })
        .collect()
}

#[test]
fn chunked_merges_of_large_tensors_match_host_computations() {
    let d = Device::flex();
    // Larger than several chunks, split over two tensors of unequal size.
    let n = 3 * (1 << 18) + 12_345;
    let split = 200_001;
    let mut rng = 12345u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        ((rng % 20_001) as f32 - 10_000.0) * 1e-4
    };
    let base: Vec<f32> = (0..n).map(|_| next()).collect();
    let taus: Vec<Vec<f32>> = (0..3).map(|_| (0..n).map(|_| next()).collect()).collect();
    let to_w = |v: &[f32]| weights(&d, &[("a", &v[..split]), ("b", &v[split..])]);
    let tv = TaskVectors::new(
        vec!["x".into(), "y".into(), "z".into()],
        to_w(&base),
        taus.iter().map(|t| to_w(t)).collect(),
    )
    .unwrap();
    let joined = |w: &Weights| [values(w, "a"), values(w, "b")].concat();

    let ties = Ties::new(0.2, 1.0, Aggregate::Mean, TrimScope::Global)
        .unwrap()
        .merge(&tv)
        .unwrap();
    assert_close(&joined(&ties), &naive_ties(&base, &taus, 0.2, 1.0), 1e-6);

    // Seeded DARE drawn chunk by chunk equals Task Arithmetic on whole-tensor masks.
    let p = 0.3;
    let dare = Dare::new(p, 9, DareInner::TaskArithmetic { lambda: 0.5 })
        .unwrap()
        .merge(&tv)
        .unwrap();
    let scale = (1.0 / (1.0 - p)) as f32;
    let mut want = base.clone();
    for (k, tau) in taus.iter().enumerate() {
        for (name, range) in [("a", 0..split), ("b", split..n)] {
            let mask = adamerge::merge::seeded_mask(9, k, name, 0..range.len(), p);
            for (j, i) in range.enumerate() {
                want[i] += 0.5 * (tau[i] * mask[j] * scale);
            }
        }
    }
    assert_close(&joined(&dare), &want, 1e-5);
}
