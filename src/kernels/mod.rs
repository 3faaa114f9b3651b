//! Fused CPU loops for what burn-flex runs as many small passes: the transformer's activations
//! and their gradients, its linear layers' products, the sums over task vectors that every
//! AdaMerging step takes, and the exact Fisher's summed squares of per-image weight gradients.
//!
//! Each runs on flex's tensors where every input is there (plain `f32`), and falls back to the
//! same computation composed from burn's operations elsewhere (wgpu, ndarray, half precision),
//! so callers need not know which backend they are on. In the suite's training and in ViT
//! forwards and backwards the composed activations were a sixth of the CPU time (BENCHMARKS.md).

mod activation;
mod linear;
mod outer;
mod sums;

use burn::backend::DType;
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Device, Tensor};

pub(crate) use activation::{quick_gelu, softmax_last};
pub(crate) use linear::linear_nt;
pub(crate) use outer::outer_squares;
pub(crate) use sums::{dots, weighted_sum};

/// Whether `device` runs the fused loops: flex, with or without autodiff.
fn fused_on(device: &Device) -> bool {
    // Device equality ignores autodiff.
    *device == Device::flex()
}

/// `t`'s flex tensor where `t` is a plain f32 tensor on flex (not inside an autodiff graph).
fn flex_f32<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    let f = t.clone().try_into_primitive::<Flex>().ok()?;
    (f.dtype() == DType::F32).then_some(f)
}
