//! The two sums an AdaMerging step takes over the task vectors of every tensor: the merge
//! θ₀ + Σ_k c_k τ_k and the chain rule's ⟨∂loss/∂W, τ_k⟩ for every k. As burn operations each
//! term allocates a product and reads it back (on a ViT-B/32 step with 8 tasks, 0.6 s and 0.7 s
//! of 16.5); here each is one pass over the operands, a block at a time over the rayon pool.

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{flex_f32, fused_on};

/// Elements per inner block: `g`'s block stays in L1 while every τ_k's block streams past it.
const BLOCK: usize = 1 << 12;

/// Elements per rayon task.
const TASK: usize = 16 * BLOCK;

/// Independent accumulators of a dot product (fixed, so the sum's bits do not depend on the
/// vector width the CPU dispatch picks).
const LANES: usize = 16;

/// ⟨g, τ_k⟩ for each of `taus` (all of g's length), as a [K] tensor on g's device. On flex, in
/// one pass over `g` with f32 products summed in 16 lanes per block of 4096 and the blocks in f64,
/// in a fixed order; elsewhere burn's product and sum.
pub(crate) fn dots(g: &Tensor<1>, taus: &[Tensor<1>]) -> Tensor<1> {
    let composed = || {
        Tensor::cat(
            taus.iter().map(|t| (g.clone() * t.clone()).sum()).collect(),
            0,
        )
    };
    if !fused_on(&g.device()) {
        return composed();
    }
    let Some(gf) = flex_f32(g) else {
        return composed();
    };
    let Some(tf) = taus.iter().map(flex_f32).collect::<Option<Vec<_>>>() else {
        return composed();
    };
    let (Some(gs), Some(ts)) = (
        gf.as_slice::<f32>(),
        tf.iter()
            .map(|t| t.as_slice::<f32>())
            .collect::<Option<Vec<_>>>(),
    ) else {
        return composed();
    };
    if ts.iter().any(|t| t.len() != gs.len()) {
        return composed();
    }
    let values: Vec<f32> = dot_slices(gs, &ts).into_iter().map(|v| v as f32).collect();
    let k = values.len();
    Tensor::from_data(TensorData::new(values, [k]), &g.device())
}

/// `t0 + Σ_k τ_k · c_k` over `terms` (all of t0's length), skipping `c_k = 0`, with every product
/// and sum rounded to f32 in that order: the bits of burn's `mul_scalar` and `add` in turn, in
/// one pass on flex.
pub(crate) fn weighted_sum(t0: &Tensor<1>, terms: &[(Tensor<1>, f32)]) -> Tensor<1> {
    let composed = || {
        terms
            .iter()
            .filter(|(_, c)| *c != 0.0)
            .fold(t0.clone(), |m, (t, c)| m + t.clone().mul_scalar(*c))
    };
    if !fused_on(&t0.device()) {
        return composed();
    }
    let Some(base) = flex_f32(t0) else {
        return composed();
    };
    let Some(flex) = terms
        .iter()
        .filter(|(_, c)| *c != 0.0)
        .map(|(t, c)| flex_f32(t).map(|f| (f, *c)))
        .collect::<Option<Vec<_>>>()
    else {
        return composed();
    };
    let (Some(b), Some(ts)) = (
        base.as_slice::<f32>(),
        flex.iter()
            .map(|(t, c)| t.as_slice::<f32>().map(|s| (s, *c)))
            .collect::<Option<Vec<_>>>(),
    ) else {
        return composed();
    };
    if ts.iter().any(|(t, _)| t.len() != b.len()) {
        return composed();
    }
    let mut out = b.to_vec();
    out.par_chunks_mut(TASK).enumerate().for_each(|(i, part)| {
        let start = i * TASK;
        let arch = pulp::Arch::new();
        for &(t, c) in &ts {
            arch.dispatch(AxpyLoop(part, &t[start..start + part.len()], c));
        }
    });
    let n = out.len();
    Tensor::from_data(TensorData::new(out, [n]), &t0.device())
}

/// ⟨g, t⟩ for every `t` of `ts`, blocks of [`BLOCK`] summed in f64 in block order.
fn dot_slices(g: &[f32], ts: &[&[f32]]) -> Vec<f64> {
    let partials: Vec<Vec<f64>> = g
        .par_chunks(TASK)
        .enumerate()
        .map(|(i, part)| {
            let arch = pulp::Arch::new();
            let mut acc = vec![0.0f64; ts.len()];
            for (j, block) in part.chunks(BLOCK).enumerate() {
                let start = i * TASK + j * BLOCK;
                for (a, t) in acc.iter_mut().zip(ts) {
                    let t = &t[start..start + block.len()];
                    *a += arch.dispatch(DotLoop(block, t));
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; ts.len()];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// ⟨a, b⟩ of two slices of one length: f32 products accumulated in [`LANES`] lanes, the lanes
/// and the tail summed in f64.
struct DotLoop<'a>(&'a [f32], &'a [f32]);

impl pulp::WithSimd for DotLoop<'_> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
        let mut lanes = [0.0f32; LANES];
        let (a, b) = (self.0.chunks_exact(LANES), self.1.chunks_exact(LANES));
        let (ta, tb) = (a.remainder(), b.remainder());
        for (x, y) in a.zip(b) {
            for l in 0..LANES {
                lanes[l] = x[l].mul_add(y[l], lanes[l]);
            }
        }
        let tail: f64 = ta
            .iter()
            .zip(tb)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
    }
}

/// `m ← m + t · c`, the product and the sum each rounded (no fused multiply-add).
struct AxpyLoop<'a>(&'a mut [f32], &'a [f32], f32);

impl pulp::WithSimd for AxpyLoop<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let c = self.2;
        for (m, &t) in self.0.iter_mut().zip(self.1) {
            *m += t * c;
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    fn vals(t: Tensor<1>) -> Vec<f32> {
        crate::weights::tensor_to_vec(t).unwrap()
    }

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * seed).sin() * 1e-2).collect()
    }

    #[test]
    fn dots_match_f64_and_the_composed_sum() {
        let device = Device::flex();
        let n = 3 * TASK + 4097;
        let g = ramp(n, 0.37);
        let taus: Vec<Vec<f32>> = (1..4).map(|k| ramp(n, 0.11 * k as f32)).collect();
        let gt = Tensor::<1>::from_floats(g.as_slice(), &device);
        let tt: Vec<Tensor<1>> = taus
            .iter()
            .map(|t| Tensor::from_floats(t.as_slice(), &device))
            .collect();
        let fused = vals(dots(&gt, &tt));
        assert_eq!(fused.len(), 3);
        for (k, t) in taus.iter().enumerate() {
            let terms = g.iter().zip(t).map(|(&a, &b)| f64::from(a) * f64::from(b));
            let exact: f64 = terms.clone().sum();
            // The sums cancel: errors are measured against the sum of the terms' sizes.
            let size: f64 = terms.map(f64::abs).sum();
            let composed = vals((gt.clone() * tt[k].clone()).sum())[0];
            assert!((f64::from(fused[k]) - exact).abs() <= 1e-7 * size, "{k}");
            assert!((f64::from(composed) - exact).abs() <= 1e-5 * size, "{k}");
        }
    }

    #[test]
    fn weighted_sum_has_the_bits_of_burns_operations() {
        let device = Device::flex();
        let n = 2 * TASK + 33;
        let t0 = Tensor::<1>::from_floats(ramp(n, 0.7).as_slice(), &device);
        let terms: Vec<(Tensor<1>, f32)> = [0.3f32, 0.0, 1.7, 0.01]
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let t = Tensor::from_floats(ramp(n, 0.13 * (k + 1) as f32).as_slice(), &device);
                (t, c)
            })
            .collect();
        let fused = vals(weighted_sum(&t0, &terms));
        let mut composed = t0.clone();
        for (t, c) in &terms {
            if *c != 0.0 {
                composed = composed + t.clone().mul_scalar(*c);
            }
        }
        let composed = vals(composed);
        assert!(
            fused
                .iter()
                .zip(&composed)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // A strided operand (a view that is not one run of memory) takes the composed path.
        let view = Tensor::<1>::from_floats(ramp(2 * n, 0.5).as_slice(), &device)
            .reshape([n, 2])
            .narrow(1, 0, 1)
            .reshape([n]);
        let mixed = vals(weighted_sum(&t0, &[(view.clone(), 0.5)]));
        let want = vals(t0 + view.mul_scalar(0.5f32));
        assert!(
            mixed
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}
