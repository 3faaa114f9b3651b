//! Merge methods: each one small unit with a name and the paper it comes from. Fixed methods are
//! pure functions of task vectors; TIES and DARE are configurations of one task-arithmetic core
//! (sparsify, elect signs, aggregate, scale).

mod average;
mod dare;
mod spec;
mod task_arithmetic;
mod ties;

use burn::tensor::Tensor;

pub use average::WeightAverage;
pub use dare::{Dare, DareBase, DareMasks, Dropped};
pub use spec::{FixedKind, MethodSpec};
pub use task_arithmetic::TaskArithmetic;
pub use ties::{Aggregate, Ties, TrimScope, kth_smallest_magnitude};

use crate::error::{Error, Result};
use crate::task_vector::TaskVectors;
use crate::weights::Weights;

/// A way to combine θ₀ and K task vectors into one set of weights.
pub trait MergeMethod {
    /// Short name, as on the command line (`ties`).
    fn name(&self) -> &'static str;
    /// The paper the method comes from.
    fn reference(&self) -> &'static str;
    /// Name plus hyper-parameters, used as the key of a result (`ties(k=0.2,lambda=1,mean)`).
    fn label(&self) -> String;
    /// The merged weights over the merged tensors.
    fn merge(&self, tv: &TaskVectors) -> Result<Weights>;
}

/// K task vectors seen tensor by tensor, so a transformed set (DARE's dropped vectors) never
/// has to be held whole in memory.
pub trait VectorSource {
    /// Number of tasks K.
    fn num_tasks(&self) -> usize;
    /// θ₀ (names, shapes, order).
    fn base(&self) -> &Weights;
    /// Task `k`'s vector for tensor `name`, flat.
    fn vector(&self, k: usize, name: &str) -> Result<Tensor<1>>;
}

impl VectorSource for TaskVectors {
    fn num_tasks(&self) -> usize {
        TaskVectors::num_tasks(self)
    }
    fn base(&self) -> &Weights {
        TaskVectors::base(self)
    }
    fn vector(&self, k: usize, name: &str) -> Result<Tensor<1>> {
        Ok(self.vector(k).require(name)?.data.clone())
    }
}

/// θ₀ + λ Σ_k τ_k over any source: the core every fixed method ends in.
pub(crate) fn scaled_sum(src: &impl VectorSource, lambda: f64) -> Result<Weights> {
    src.base().try_map(|name, t0| {
        let mut sum = src.vector(0, name)?;
        for k in 1..src.num_tasks() {
            sum = sum + src.vector(k, name)?;
        }
        Ok(t0.data.clone() + sum.mul_scalar(lambda as f32))
    })
}

/// Checks that a hyper-parameter is finite and inside `[lo, hi]`.
pub(crate) fn check_range(name: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
    if !value.is_finite() || value < lo || value > hi {
        return Err(Error::invalid(
            name,
            format!("{value} is not in [{lo}, {hi}]"),
        ));
    }
    Ok(())
}

/// Formats a hyper-parameter for a label without trailing zeros (`0.3`, `1`).
pub(crate) fn fmt_param(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
