//! quick_gelu and the softmax over the last axis, each with its gradient, as one pass over
//! memory: a burn backend extension implemented for flex and for autodiff over it.
//!
//! Composed from burn's operations, quick_gelu is three passes forward and about six backward,
//! a differentiable softmax five and about eight, each allocating its output, and burn-flex
//! computes every `exp` one element at a time with libm. Here they are vectorised loops with a
//! polynomial `exp`, spread over the rayon pool. Their multiply-adds are written as such (none is
//! left to the compiler), so their results are the same bits at every vector width the CPU
//! dispatch may pick.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Tensor, TensorData};

use super::fused_on;
use rayon::prelude::*;
use std::ops::Range;

/// The slope inside quick_gelu's sigmoid (OpenAI CLIP's).
const SLOPE: f32 = 1.702;

/// Elements per rayon task: large enough that a hand-off costs little against the work.
const CHUNK: usize = 1 << 15;

/// `x σ(1.702 x)` over a tensor of any rank, fused where the backend has the kernel.
pub(crate) fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if fused_on(&x.device()) {
        Tensor::from_dispatch(<Dispatch as Fused>::quick_gelu(x.into_dispatch()))
    } else {
        x.clone() * sigmoid(x.mul_scalar(SLOPE))
    }
}

/// The softmax over the last axis, fused where the backend has the kernel. `−∞` entries (masks)
/// get weight 0.
pub(crate) fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if fused_on(&x.device()) {
        Tensor::from_dispatch(<Dispatch as Fused>::softmax_last(x.into_dispatch()))
    } else {
        softmax(x, D - 1)
    }
}

/// The fused operations and their gradients as backend operations.
#[backend_extension(Flex, Autodiff)]
pub trait Fused: Backend {
    /// `x σ(1.702 x)`.
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `grad · d/dx [x σ(1.702 x)]`.
    fn quick_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The softmax over the last axis.
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `y (grad − Σ grad·y)` row by row, `y` the softmax's output.
    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl Fused for Flex {
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return composed_quick_gelu::<Self>(x);
        }
        map_into(x, CHUNK, |_, out| {
            pulp::Arch::new().dispatch(QuickGeluLoop(out))
        })
    }

    fn quick_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.shape() != grad.shape() {
            return composed_quick_gelu_backward::<Self>(x, grad);
        }
        let x = contiguous(x);
        let Some(xs) = x.as_slice::<f32>() else {
            return composed_quick_gelu_backward::<Self>(x, grad);
        };
        map_into(grad, CHUNK, |range, out| {
            pulp::Arch::new().dispatch(QuickGeluBackwardLoop(&xs[range], out))
        })
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let n = shape.last().copied().unwrap_or(0);
        if x.dtype() != DType::F32 || n == 0 {
            return <Self as ActivationOps<Self>>::softmax(x, shape.num_dims().saturating_sub(1));
        }
        map_into(x, rows_per_chunk(n), |_, out| {
            pulp::Arch::new().dispatch(SoftmaxLoop(n, out))
        })
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = y.shape();
        let n = shape.last().copied().unwrap_or(0);
        if y.dtype() != DType::F32 || grad.dtype() != DType::F32 || grad.shape() != shape || n == 0
        {
            return composed_softmax_backward::<Self>(y, grad);
        }
        let y = contiguous(y);
        let Some(ys) = y.as_slice::<f32>() else {
            return composed_softmax_backward::<Self>(y, grad);
        };
        map_into(grad, rows_per_chunk(n), |range, out| {
            pulp::Arch::new().dispatch(SoftmaxBackwardLoop(n, &ys[range], out))
        })
    }
}

impl<B: Fused, C: CheckpointStrategy> Fused for Autodiff<B, C> {
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuickGeluOp;

        impl<B: Fused> Backward<B, 1> for QuickGeluOp {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let input = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::quick_gelu_backward(input, grad)
                });
            }
        }

        match QuickGeluOp
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::quick_gelu(x.primitive().clone()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quick_gelu(x.into_primitive())),
        }
    }

    fn quick_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_quick_gelu_backward::<Self>(x, grad)
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SoftmaxOp;

        impl<B: Fused> Backward<B, 1> for SoftmaxOp {
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let y = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::softmax_last_backward(y, grad)
                });
            }
        }

        match SoftmaxOp
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::softmax_last(x.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::softmax_last(x.into_primitive())),
        }
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_softmax_backward::<Self>(y, grad)
    }
}

fn composed_quick_gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(B::float_mul_scalar(x.clone(), SLOPE.into()));
    B::float_mul(x, s)
}

/// `grad · s (1 + z (1 − s))` with `z = 1.702 x`, `s = σ(z)`.
fn composed_quick_gelu_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let z = B::float_mul_scalar(x, SLOPE.into());
    let s = B::sigmoid(z.clone());
    let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0f32.into());
    let inner = B::float_add_scalar(B::float_mul(z, one_minus_s), 1.0f32.into());
    B::float_mul(grad, B::float_mul(s, inner))
}

fn composed_softmax_backward<B: Backend>(
    y: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let last = y.shape().num_dims().saturating_sub(1);
    let dot = B::float_sum_dim(B::float_mul(grad.clone(), y.clone()), last);
    B::float_mul(y, B::float_sub(grad, dot))
}

/// A chunk of whole rows of `n`, about [`CHUNK`] elements.
fn rows_per_chunk(n: usize) -> usize {
    (CHUNK / n).max(1) * n
}

/// `f(range, out)` over `t`'s elements, `chunk` (a multiple of any row length `f` needs) at a
/// time over the rayon pool: `out` holds the values of `t` at `range`. In place when `t` is the
/// only owner of its contiguous storage, else into a new tensor.
fn map_into(
    t: FlexTensor,
    chunk: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync,
) -> FlexTensor {
    let shape = t.shape();
    let n = shape.num_elements();
    let chunked = |out: &mut [f32], src: Option<&[f32]>| {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, part)| {
            let range = i * chunk..i * chunk + part.len();
            if let Some(src) = src {
                part.copy_from_slice(&src[range.clone()]);
            }
            f(range, part)
        })
    };
    if t.is_unique() && t.layout().is_contiguous() && t.layout().start_offset() == 0 {
        let mut t = t;
        chunked(&mut t.storage_mut::<f32>()[..n], None);
        return t;
    }
    let t = contiguous(t);
    let mut out = vec![0.0f32; n];
    chunked(&mut out, t.as_slice::<f32>());
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// `t` itself where its elements are one contiguous run, else a contiguous copy.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// `x ← x σ(1.702 x)`, compiled for each vector width pulp dispatches to.
struct QuickGeluLoop<'a>(&'a mut [f32]);

impl pulp::WithSimd for QuickGeluLoop<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for x in self.0.iter_mut() {
            *x *= sigmoid_f32(SLOPE * *x);
        }
    }
}

/// `g ← g s (1 + z (1 − s))`, `z = 1.702 x`, `s = σ(z)`, over two slices of one length.
struct QuickGeluBackwardLoop<'a>(&'a [f32], &'a mut [f32]);

impl pulp::WithSimd for QuickGeluBackwardLoop<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (g, &x) in self.1.iter_mut().zip(self.0) {
            let z = SLOPE * x;
            let s = sigmoid_f32(z);
            *g *= s * z.mul_add(1.0 - s, 1.0);
        }
    }
}

/// The softmax of each row of `n`, in place.
struct SoftmaxLoop<'a>(usize, &'a mut [f32]);

impl pulp::WithSimd for SoftmaxLoop<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for row in self.1.chunks_exact_mut(self.0) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for v in row.iter_mut() {
                *v = exp_or_zero(*v - max);
            }
            let inv = 1.0 / row.iter().sum::<f32>();
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// `g ← y (g − Σ g·y)` for each row of `n`.
struct SoftmaxBackwardLoop<'a>(usize, &'a [f32], &'a mut [f32]);

impl pulp::WithSimd for SoftmaxBackwardLoop<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let n = self.0;
        for (g, y) in self.2.chunks_exact_mut(n).zip(self.1.chunks_exact(n)) {
            let dot = g
                .iter()
                .zip(y)
                .fold(0.0f32, |acc, (&g, &y)| g.mul_add(y, acc));
            for (g, &y) in g.iter_mut().zip(y) {
                *g = y * (*g - dot);
            }
        }
    }
}

/// `eˣ` for `x ≤ 0`, and exactly 0 below −87 (where `eˣ` is under f32's normal range), so that
/// masked (−∞) entries weigh nothing.
#[inline(always)]
fn exp_or_zero(x: f32) -> f32 {
    let e = exp_nonpositive(x);
    if x < -87.0 { 0.0 } else { e }
}

/// σ(z) from `exp(−|z|)`, which cannot overflow; branch-free so that it vectorises.
#[inline(always)]
fn sigmoid_f32(z: f32) -> f32 {
    let e = exp_nonpositive(-z.abs());
    let d = 1.0 / (1.0 + e);
    if z >= 0.0 { d } else { e * d }
}

/// `eˣ` for `x ≤ 0` (inputs below −87 give e⁻⁸⁷), to about one ulp: Cephes' `expf`, with the
/// power of two built from the rounding shift's bits.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    // 1.5 · 2²³: adding it rounds to an integer, which then sits in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, SHIFT);
    let n = t - SHIFT;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    // n ∈ [−126, 0], so 2ⁿ is a normal float: exponent bits n + 127.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127) << 23);
    e * two_n
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0u32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let ours = exp_nonpositive(x);
            let libm = x.exp();
            worst = worst.max(ours.to_bits().abs_diff(libm.to_bits()));
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) > 0.0);
    }

    /// quick_gelu and its derivative in f64.
    fn reference(x: f32) -> (f64, f64) {
        let x = f64::from(x);
        let z = f64::from(SLOPE) * x;
        let s = 1.0 / (1.0 + (-z).exp());
        (x * s, s * (1.0 + z * (1.0 - s)))
    }

    fn assert_close(ours: &[f32], reference: &[f64]) {
        assert_eq!(ours.len(), reference.len());
        for (i, (&o, &r)) in ours.iter().zip(reference).enumerate() {
            let err = (f64::from(o) - r).abs();
            assert!(err <= 1e-6 * r.abs().max(1.0), "entry {i}: {o} against {r}");
        }
    }

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 - n as f32 / 2.0) / 97.0).collect()
    }

    #[test]
    fn forward_matches_f64_in_place_shared_and_strided() {
        let device = Device::flex();
        let xs = values(3 * CHUNK + 17);
        let want: Vec<f64> = xs.iter().map(|&x| reference(x).0).collect();
        let vals = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().unwrap();

        let unique = Tensor::<1>::from_floats(xs.as_slice(), &device);
        assert_close(&vals(quick_gelu(unique)), &want);
        let shared = Tensor::<1>::from_floats(xs.as_slice(), &device);
        assert_close(&vals(quick_gelu(shared.clone())), &want);
        assert_close(
            &vals(shared),
            &xs.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
        );

        let strided = Tensor::<1>::from_floats(&xs[..3000], &device)
            .reshape([3, 1000])
            .transpose();
        let want_t: Vec<f64> = (0..1000)
            .flat_map(|c| (0..3).map(move |r| r * 1000 + c))
            .map(|i| reference(xs[i]).0)
            .collect();
        assert_close(&vals(quick_gelu(strided).reshape([3000])), &want_t);
    }

    #[test]
    fn gradient_matches_f64() {
        let device = Device::flex().autodiff();
        let xs = values(2 * CHUNK + 5);
        let x = Tensor::<1>::from_floats(xs.as_slice(), &device).require_grad();
        let weights: Vec<f32> = (0..xs.len()).map(|i| (i as f32 * 0.37).cos()).collect();
        let w = Tensor::<1>::from_floats(weights.as_slice(), &device);
        let y = quick_gelu(x.clone());
        let grads = (y.clone() * w).sum().backward();
        let gx = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let y = y.into_data().try_into_vec::<f32>().unwrap();
        let want_y: Vec<f64> = xs.iter().map(|&x| reference(x).0).collect();
        let want_g: Vec<f64> = xs
            .iter()
            .zip(&weights)
            .map(|(&x, &w)| f64::from(w) * reference(x).1)
            .collect();
        assert_close(&y, &want_y);
        assert_close(&gx, &want_g);
    }

    /// The softmax of each row and, for weights `w`, the gradient of Σ w·softmax, in f64.
    fn softmax_reference(row: &[f32], w: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let e: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let y: Vec<f64> = e.iter().map(|v| v / sum).collect();
        let dot: f64 = y.iter().zip(w).map(|(y, &w)| y * f64::from(w)).sum();
        let g = y
            .iter()
            .zip(w)
            .map(|(y, &w)| y * (f64::from(w) - dot))
            .collect();
        (y, g)
    }

    #[test]
    fn softmax_and_its_gradient_match_f64_with_masked_entries() {
        let (rows, n) = (CHUNK / 50 + 7, 50);
        let mut xs: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 61.0 - 8.0)
            .collect();
        for r in 0..rows {
            xs[r * n + r % n] = f32::NEG_INFINITY;
        }
        let ws: Vec<f32> = (0..rows * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut want_y, mut want_g) = (Vec::new(), Vec::new());
        for (row, w) in xs.chunks(n).zip(ws.chunks(n)) {
            let (y, g) = softmax_reference(row, w);
            want_y.extend(y);
            want_g.extend(g);
        }
        let device = Device::flex().autodiff();
        let x = Tensor::<1>::from_floats(xs.as_slice(), &device)
            .reshape([rows, n])
            .require_grad();
        let w = Tensor::<1>::from_floats(ws.as_slice(), &device).reshape([rows, n]);
        let y = softmax_last(x.clone());
        let grads = (y.clone() * w).sum().backward();
        let vals = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
        let gx = vals(x.grad(&grads).unwrap());
        let y = vals(y);
        for r in 0..rows {
            assert_eq!(y[r * n + r % n], 0.0, "a masked entry has weight");
        }
        assert_close(&y, &want_y);
        assert_close(&gx, &want_g);

        let strided = Tensor::<1>::from_floats(xs.as_slice(), &Device::flex())
            .reshape([n, rows])
            .transpose();
        let ys = vals(softmax_last(strided));
        let mut want_t = Vec::new();
        for c in 0..rows {
            let row: Vec<f32> = (0..n).map(|r| xs[r * rows + c]).collect();
            want_t.extend(softmax_reference(&row, &row).0);
        }
        assert_close(&ys, &want_t);
    }
}
