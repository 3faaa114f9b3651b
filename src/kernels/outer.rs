//! Σ_i (dY_iᵀ X_i)²: the squared per-image gradients of a linear layer's weight, summed over a
//! batch, from the layer's input X and the gradient dY of its output. The exact Fisher needs
//! them; one [out, in] gradient per image in memory would be written and read back once per
//! image (88 M entries for a ViT-B/32), so on flex each rayon task keeps a band of rows in
//! cache and takes every image's product for that band (a small matrix product) and its square
//! there.

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{flex_f32, fused_on};

/// Floats of one band's scratch product: a band of rows of every image's gradient stays in L2.
const BAND: usize = 48 * 1024;

/// Floats of the per-image gradients the composed path forms at once.
const COMPOSED: usize = 1 << 24;

/// Σ_i (dY_iᵀ X_i)² over the images i of `dy` [B, T, out] and `x` [B, T, in], as [out, in]
/// (element-wise square). Images are added in order, each product computed in f32.
pub(crate) fn outer_squares(dy: &Tensor<3>, x: &Tensor<3>) -> Tensor<2> {
    let [b, t, out] = dy.dims();
    let inn = x.dims()[2];
    assert_eq!(
        x.dims()[..2],
        [b, t],
        "outer_squares: dY and X differ in images or tokens"
    );
    if !fused_on(&dy.device()) {
        return composed(dy, x);
    }
    let (Some(df), Some(xf)) = (flex_f32(dy), flex_f32(x)) else {
        return composed(dy, x);
    };
    let (Some(ds), Some(xs)) = (df.as_slice::<f32>(), xf.as_slice::<f32>()) else {
        return composed(dy, x);
    };
    let mut acc = vec![0.0f32; out * inn];
    if acc.is_empty() {
        return Tensor::zeros([out, inn], &dy.device());
    }
    // Bands of whole rows, a multiple of 8 (the kernel's column panel once gemm transposes).
    let rows = ((BAND / inn.max(1)) / 8 * 8).clamp(8, out.max(8));
    acc.par_chunks_mut(rows * inn)
        .enumerate()
        .for_each(|(r, band)| {
            let (a0, m) = (r * rows, band.len() / inn);
            let mut scratch = vec![0.0f32; band.len()];
            let arch = pulp::Arch::new();
            for i in 0..b {
                let lhs = &ds[i * t * out..(i + 1) * t * out];
                let rhs = &xs[i * t * inn..(i + 1) * t * inn];
                // SAFETY: dst is m × inn row-major in `scratch`; lhs reads dY_i[τ, a0 + a] for
                // a < m, τ < t (a0 + m ≤ out) and rhs X_i[τ, c] for c < inn: all inside the
                // slices above, which outlive the call.
                unsafe {
                    gemm::gemm(
                        m,
                        inn,
                        t,
                        scratch.as_mut_ptr(),
                        1,
                        inn as isize,
                        false,
                        lhs.as_ptr().add(a0),
                        out as isize,
                        1,
                        rhs.as_ptr(),
                        1,
                        inn as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                arch.dispatch(SquareAdd(band, &scratch));
            }
        });
    Tensor::from_data(TensorData::new(acc, [out, inn]), &dy.device())
}

/// The same sum from burn's operations (any device, any float type): the products of a run of
/// images at once, squared and summed over the run, the runs added in order.
fn composed(dy: &Tensor<3>, x: &Tensor<3>) -> Tensor<2> {
    let [b, _, out] = dy.dims();
    let inn = x.dims()[2];
    let per = (COMPOSED / (out * inn).max(1)).clamp(1, b.max(1));
    let mut acc: Option<Tensor<2>> = None;
    for start in (0..b).step_by(per) {
        let n = per.min(b - start);
        let g = dy
            .clone()
            .narrow(0, start, n)
            .swap_dims(1, 2)
            .matmul(x.clone().narrow(0, start, n));
        let part = g.square().sum_dim(0).reshape([out, inn]);
        acc = Some(match acc {
            Some(a) => a + part,
            None => part,
        });
    }
    acc.unwrap_or_else(|| Tensor::zeros([out, inn], &dy.device()))
}

/// `acc ← acc + g · g`, the product and the sum each rounded.
struct SquareAdd<'a>(&'a mut [f32], &'a [f32]);

impl pulp::WithSimd for SquareAdd<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (a, &g) in self.0.iter_mut().zip(self.1) {
            *a += g * g;
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * seed).sin()).collect()
    }

    /// Σ_i (Σ_τ dy[i, τ, a] x[i, τ, c])² in f64.
    fn reference(dy: &[f32], x: &[f32], [b, t, out, inn]: [usize; 4]) -> Vec<f64> {
        let mut acc = vec![0.0f64; out * inn];
        for i in 0..b {
            for a in 0..out {
                for c in 0..inn {
                    let g: f64 = (0..t)
                        .map(|s| {
                            f64::from(dy[(i * t + s) * out + a])
                                * f64::from(x[(i * t + s) * inn + c])
                        })
                        .sum();
                    acc[a * inn + c] += g * g;
                }
            }
        }
        acc
    }

    #[test]
    fn fused_and_composed_match_f64() {
        let device = Device::flex();
        // Bands of 8 rows with a short last band (out = 21); more than one band per image.
        for (b, t, out, inn) in [(3, 5, 21, 2100), (2, 7, 9, 4), (1, 1, 1, 1)] {
            let dy = ramp(b * t * out, 0.37);
            let x = ramp(b * t * inn, 0.11);
            let want = reference(&dy, &x, [b, t, out, inn]);
            let dyt = Tensor::<3>::from_data(TensorData::new(dy, [b, t, out]), &device);
            let xt = Tensor::<3>::from_data(TensorData::new(x, [b, t, inn]), &device);
            let fused = outer_squares(&dyt, &xt);
            // A view that is not one run of memory takes the composed path.
            let view = dyt.clone().swap_dims(1, 2).add_scalar(0.0).swap_dims(1, 2);
            let strided = outer_squares(&view, &xt);
            let composed = composed(&dyt, &xt);
            for got in [fused, strided, composed] {
                let got = crate::weights::tensor_to_vec(got.reshape([out * inn])).unwrap();
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    let err = (f64::from(*g) - w).abs() / w.abs().max(1e-3);
                    assert!(err < 2e-5, "[{b},{t},{out},{inn}] {k}: {g} vs {w}");
                }
            }
        }
    }
}
