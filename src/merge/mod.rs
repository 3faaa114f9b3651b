//! Merge methods: each one small unit with a name and the paper it comes from. Fixed methods are
//! pure functions of task vectors; TIES and DARE are configurations of one task-arithmetic core
//! (sparsify, elect signs, aggregate, scale).

mod average;
mod components;
mod dare;
mod spectral;
mod task_arithmetic;
mod ties;
mod weighted;

use std::ops::Range;

use burn::tensor::Tensor;

pub use average::WeightAverage;
pub use components::{
    ADARANK_PAPER, Base, ComponentConfig, ComponentMerge, Decompose, DecomposedUnit, Decomposition,
    MaskKind, Rest,
};
pub use dare::{Dare, DareInner, DareMasks, Dropped, PAPER as DARE_PAPER, seeded_mask};
pub use spectral::{MatrixUnit, Qkv, Spectral, SpectralDeltas, matrix_units};
pub use task_arithmetic::TaskArithmetic;
pub use ties::{Aggregate, Ties, TiesMerge, TrimScope, kth_smallest_magnitude};
pub use weighted::WeightedSum;

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
    /// Runs whatever pass over all tensors the method needs first (TIES: thresholds and the
    /// majority sign) and returns a merger that computes any merged tensor on its own, so a
    /// caller can write each tensor as it is merged instead of holding the merged model.
    fn prepare<'a>(&self, tv: &'a TaskVectors) -> Result<Box<dyn TensorMerge + 'a>>;
    /// The merged weights over the merged tensors.
    fn merge(&self, tv: &TaskVectors) -> Result<Weights> {
        merge_all(tv.theta0(), &*self.prepare(tv)?)
    }
    /// A spectral merge's settings, so that a run computes the SVDs of every spectral merge it
    /// holds in one shared pass ([`SpectralDeltas`]); `None` for every other method.
    fn spectral(&self) -> Option<&Spectral> {
        None
    }
}

/// Every tensor of `base` merged by `merger`, in memory.
pub fn merge_all(base: &Weights, merger: &dyn TensorMerge) -> Result<Weights> {
    base.try_map(|name, _| merger.tensor(name))
}

/// A prepared merge: one merged tensor at a time.
pub trait TensorMerge {
    /// The merged values of tensor `name` (flat).
    fn tensor(&self, name: &str) -> Result<Tensor<1>>;
}

/// K task vectors seen tensor by tensor, so a transformed set (DARE's dropped vectors) never
/// has to be held whole in memory.
pub trait VectorSource {
    /// Number of tasks K.
    fn num_tasks(&self) -> usize;
    /// θ₀ (names, shapes, order).
    fn theta0(&self) -> &Weights;
    /// Entries `range` of task `k`'s vector for tensor `name` (flat).
    fn vector(&self, k: usize, name: &str, range: Range<usize>) -> Result<Tensor<1>>;
}

impl<S: VectorSource> VectorSource for &S {
    fn num_tasks(&self) -> usize {
        (**self).num_tasks()
    }
    fn theta0(&self) -> &Weights {
        (**self).theta0()
    }
    fn vector(&self, k: usize, name: &str, range: Range<usize>) -> Result<Tensor<1>> {
        (**self).vector(k, name, range)
    }
}

impl VectorSource for TaskVectors {
    fn num_tasks(&self) -> usize {
        TaskVectors::num_tasks(self)
    }
    fn theta0(&self) -> &Weights {
        TaskVectors::theta0(self)
    }
    fn vector(&self, k: usize, name: &str, range: Range<usize>) -> Result<Tensor<1>> {
        self.tau_part(k, name, range)
    }
}

/// Elements per chunk. Merges run chunk by chunk so that their temporaries stay in cache and
/// their memory stays bounded whatever the size of a tensor.
pub(crate) const CHUNK: usize = 1 << 18;

/// Builds a tensor of `n` elements from its chunks.
pub(crate) fn by_chunks(
    n: usize,
    mut f: impl FnMut(Range<usize>) -> Result<Tensor<1>>,
) -> Result<Tensor<1>> {
    if n <= CHUNK {
        return f(0..n);
    }
    let parts = chunks(n).map(f).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(parts, 0))
}

/// The chunk ranges covering `0..n`.
pub(crate) fn chunks(n: usize) -> impl Iterator<Item = Range<usize>> {
    (0..n)
        .step_by(CHUNK)
        .map(move |start| start..(start + CHUNK).min(n))
}

/// Entries `range` of a flat tensor.
pub(crate) fn part(t: &Tensor<1>, range: Range<usize>) -> Tensor<1> {
    if range.start == 0 && range.end == t.dims()[0] {
        return t.clone();
    }
    t.clone().narrow(0, range.start, range.len())
}

/// θ₀ + λ Σ_k τ_k over any source: the core every fixed method ends in.
pub(crate) struct ScaledSum<S> {
    pub src: S,
    pub lambda: f64,
}

impl<S: VectorSource> TensorMerge for ScaledSum<S> {
    fn tensor(&self, name: &str) -> Result<Tensor<1>> {
        let t0 = self.src.theta0().require(name)?;
        by_chunks(t0.numel(), |r| {
            let mut sum = self.src.vector(0, name, r.clone())?;
            for k in 1..self.src.num_tasks() {
                sum = sum + self.src.vector(k, name, r.clone())?;
            }
            Ok(part(&t0.data, r) + sum.mul_scalar(self.lambda as f32))
        })
    }
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

/// Checks that a fraction is finite and inside `(0, 1]`.
pub(crate) fn check_fraction(name: &str, value: f64) -> Result<()> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(Error::invalid(name, format!("{value} is not in (0, 1]")));
    }
    Ok(())
}

/// Formats a hyper-parameter for a label without trailing zeros (`0.3`, `1`).
pub(crate) fn fmt_param(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
