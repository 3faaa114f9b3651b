//! A linear layer's matrix products on flex, each written once. burn-flex allocates every
//! product's output as zeroed bytes and then copies them into a buffer aligned for any element
//! type (`FlexTensor::empty`): two passes over every activation and gradient a linear layer
//! makes (5 % of a ViT-B/32 `eval`, 12 % of its AdaMerging step, BENCHMARKS.md). Here gemm
//! writes an f32 buffer that becomes the tensor.
//!
//! The products are the gemm calls burn makes for `linear(x, wᵀ, b)` and its backward, with the
//! same operands, strides and threads (the weight's gradient with its operands swapped, which
//! sums in the same order), so every result is the same bits as burn's (tested).

use std::mem::MaybeUninit;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, backend_extension};
use burn::tensor::module::linear;
use burn::tensor::{Tensor, TensorData};

use super::fused_on;

/// burn-flex's threshold (m·n·k) from which a product is split over every thread.
const PARALLEL_THRESHOLD: usize = 192 * 192 * 192;

/// `x · wᵀ + b` for `x` [rows, in], `w` [out, in], `b` [out], differentiable.
pub(crate) fn linear_nt(x: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<2> {
    if !fused_on(&x.device()) {
        return linear(x, w.transpose(), b);
    }
    let y = Tensor::from_dispatch(<Dispatch as Products>::matmul_nt(
        x.into_dispatch(),
        w.into_dispatch(),
    ));
    match b {
        Some(b) => y + b.unsqueeze::<2>(),
        None => y,
    }
}

/// The products as backend operations.
#[backend_extension(Flex, Autodiff)]
pub trait Products: Backend {
    /// `x · wᵀ` for `x` [rows, in] and `w` [out, in].
    fn matmul_nt(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `lhs · rhs` for 2-D operands, either a strided view.
    fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl Products for Flex {
    fn matmul_nt(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::product(x, Self::float_transpose(w))
    }

    fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        product_f32(&lhs, &rhs).unwrap_or_else(|| Self::float_matmul(lhs, rhs))
    }
}

/// burn-flex's 2-D strided product of two f32 matrices into a buffer of its own; None where
/// burn-flex's own path must serve (other ranks or types, an empty product).
fn product_f32(lhs: &FlexTensor, rhs: &FlexTensor) -> Option<FlexTensor> {
    let (ls, rs) = (lhs.layout(), rhs.layout());
    let (&[m, k], &[k2, n]) = (ls.shape().as_slice(), rs.shape().as_slice()) else {
        return None;
    };
    if lhs.dtype() != DType::F32
        || rhs.dtype() != DType::F32
        || k != k2
        || m == 0
        || n == 0
        || k == 0
    {
        return None;
    }
    let (l_rs, l_cs) = (ls.strides()[0], ls.strides()[1]);
    let (r_rs, r_cs) = (rs.strides()[0], rs.strides()[1]);
    let (l, r) = (lhs.storage::<f32>(), rhs.storage::<f32>());
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_THRESHOLD {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst: &mut [MaybeUninit<f32>] = &mut out.spare_capacity_mut()[..m * n];
    // SAFETY: dst is m × n row-major inside `out`'s capacity; the operands are read through
    // their layouts' offsets and strides, which burn-flex keeps inside their storage, and
    // outlive the call. With `read_dst` false gemm reads no element of dst and writes every one
    // (k > 0), so `out` is initialised when its length is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            false,
            l.as_ptr().add(ls.start_offset()),
            l_cs,
            l_rs,
            r.as_ptr().add(rs.start_offset()),
            r_cs,
            r_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    Some(FlexTensor::from_data(TensorData::new(out, [m, n])))
}

impl<B: Products, C: CheckpointStrategy> Products for Autodiff<B, C> {
    fn matmul_nt(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatmulNt;

        impl<B: Products> Backward<B, 2> for MatmulNt {
            type State = (Option<NodeId>, Option<NodeId>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w) = ops.state;
                let x = x.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
                let w = w.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
                // dX = dY · W as burn's linear backward; dW = dYᵀ · X directly in W's [out, in]
                // layout, where burn forms (Xᵀ · dY)ᵀ as a transposed view that its consumers
                // copy: gemm sums every entry over the same rows in the same order either way.
                if let (Some(node), Some(w)) = (node_x, w) {
                    grads.register::<B>(node.id, B::product(grad.clone(), w));
                }
                if let (Some(node), Some(x)) = (node_w, x) {
                    grads.register::<B>(node.id, B::product(B::float_transpose(grad), x));
                }
            }
        }

        let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
        match MatmulNt
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                // x is only needed for the weight's gradient, and w for x's.
                let x_state = w_tracked.then(|| prep.checkpoint(&x));
                let w_state = x_tracked.then(|| prep.checkpoint(&w));
                prep.finish(
                    (x_state, w_state),
                    B::matmul_nt(x.into_primitive(), w.into_primitive()),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::matmul_nt(x.into_primitive(), w.into_primitive()))
            }
        }
    }

    fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    fn tensor<const D: usize>(dims: [usize; D], seed: f32, device: &Device) -> Tensor<D> {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * seed).sin()).collect();
        Tensor::from_data(TensorData::new(v, dims), device)
    }

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        let v = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// y, dy/dx, dy/dw, dy/db of Σ r ⊙ f(x, w, b) for `f` this module's product or burn's linear.
    fn run(ours: bool, [rows, inn, out]: [usize; 3], strided: bool) -> [Vec<u32>; 4] {
        let device = Device::flex().autodiff();
        let x = if strided {
            // A transposed view, as an attention output reaches the output projection.
            tensor([inn, rows], 0.37, &device).transpose()
        } else {
            tensor([rows, inn], 0.37, &device)
        }
        .require_grad();
        let w = tensor([out, inn], 0.11, &device).require_grad();
        let b = tensor([out], 0.53, &device).require_grad();
        let r = tensor([rows, out], 0.29, &device);
        let y = if ours {
            linear_nt(x.clone(), w.clone(), Some(b.clone()))
        } else {
            linear(x.clone(), w.clone().transpose(), Some(b.clone()))
        };
        let grads = (y.clone() * r).sum().backward();
        [
            bits(y),
            bits(x.grad(&grads).unwrap()),
            bits(w.grad(&grads).unwrap()),
            bits(b.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn products_and_gradients_are_burns_bits() {
        // Below and above burn-flex's threshold for threads; a weight gradient over more rows
        // than one of gemm's blocks of the inner dimension.
        for shape in [[7, 5, 3], [300, 160, 192], [1100, 64, 48]] {
            for strided in [false, true] {
                let ours = run(true, shape, strided);
                let burn = run(false, shape, strided);
                for (what, (o, b)) in ["y", "dx", "dw", "db"].iter().zip(ours.iter().zip(&burn)) {
                    assert!(o == b, "{what} differs at {shape:?}, strided {strided}");
                }
            }
        }
    }

    #[test]
    fn product_matches_f64_without_a_graph() {
        let device = Device::flex();
        let (rows, inn, out) = (9, 13, 4);
        let x = tensor([rows, inn], 0.37, &device);
        let w = tensor([out, inn], 0.11, &device);
        let want: Vec<f64> = {
            let (xv, wv) = (
                x.to_data().try_into_vec::<f32>().unwrap(),
                w.to_data().try_into_vec::<f32>().unwrap(),
            );
            (0..rows * out)
                .map(|i| {
                    let (r, o) = (i / out, i % out);
                    (0..inn)
                        .map(|c| f64::from(xv[r * inn + c]) * f64::from(wv[o * inn + c]))
                        .sum()
                })
                .collect()
        };
        let got = linear_nt(x, w, None)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{g} against {w}");
        }
    }
}
