//! DARE: drop each task-vector entry with probability p and rescale the rest by 1/(1 − p),
//! then merge with Task Arithmetic or TIES.

use std::ops::Range;

use burn::tensor::{Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::{
    MergeMethod, ScaledSum, TensorMerge, Ties, VectorSource, check_range, fmt_param, part,
};
use crate::error::{Error, Result};
use crate::task_vector::TaskVectors;
use crate::weights::Weights;

/// The DARE paper.
pub const PAPER: &str = "Yu et al., Language models are Super Mario: absorbing abilities from homologous models as a free lunch, ICML 2024";

/// The inner merge DARE feeds its dropped task vectors into.
#[derive(Debug, Clone, Copy)]
pub enum DareInner {
    /// θ₀ + λ Σ τ̃_k.
    TaskArithmetic {
        /// λ.
        lambda: f64,
    },
    /// TIES over τ̃_k.
    Ties(Ties),
}

/// Where DARE's keep masks come from.
#[derive(Debug, Clone)]
pub enum DareMasks {
    /// Bernoulli(1 − p) masks drawn from a ChaCha8 stream keyed by (seed, task index, tensor
    /// name), so any tensor's mask can be regenerated alone and results do not depend on the
    /// backend or on the order tensors are visited in.
    Seeded(u64),
    /// Given 0/1 masks, one weight set per task (tests, or masks saved by another tool).
    Given(Vec<Weights>),
}

/// DARE (Yu et al., ICML 2024, "Language models are Super Mario").
#[derive(Debug, Clone, Copy)]
pub struct Dare {
    /// Drop probability p ∈ [0, 1).
    pub p: f64,
    /// Seed of the masks.
    pub seed: u64,
    /// The merge applied to the dropped vectors.
    pub inner: DareInner,
}

impl Dare {
    /// Validates p ∈ [0, 1).
    pub fn new(p: f64, seed: u64, inner: DareInner) -> Result<Self> {
        check_range("p", p, 0.0, 1.0)?;
        if p >= 1.0 {
            return Err(Error::invalid("p", "p = 1 drops every entry; use p < 1"));
        }
        if let DareInner::TaskArithmetic { lambda } = inner {
            check_range("lambda", lambda, -10.0, 10.0)?;
        }
        Ok(Self { p, seed, inner })
    }

    /// Prepares the merge with the given masks instead of seeded ones.
    pub fn prepare_with_masks<'a>(
        &self,
        tv: &'a TaskVectors,
        masks: DareMasks,
    ) -> Result<Box<dyn TensorMerge + 'a>> {
        if let DareMasks::Given(m) = &masks
            && m.len() != tv.num_tasks()
        {
            return Err(Error::invalid(
                "DARE masks",
                format!("{} mask sets for {} tasks", m.len(), tv.num_tasks()),
            ));
        }
        let dropped = Dropped {
            inner: tv,
            p: self.p,
            masks,
        };
        Ok(match self.inner {
            DareInner::TaskArithmetic { lambda } => Box::new(ScaledSum {
                src: dropped,
                lambda,
            }),
            DareInner::Ties(ties) => Box::new(ties.prepare_source(dropped)?),
        })
    }

    /// Merges with the given masks instead of seeded ones.
    pub fn merge_with_masks(&self, tv: &TaskVectors, masks: DareMasks) -> Result<Weights> {
        let merger = self.prepare_with_masks(tv, masks)?;
        tv.theta0().try_map(|name, _| merger.tensor(name))
    }
}

impl MergeMethod for Dare {
    fn name(&self) -> &'static str {
        "dare"
    }
    fn reference(&self) -> &'static str {
        PAPER
    }
    fn label(&self) -> String {
        let inner = match self.inner {
            DareInner::TaskArithmetic { lambda } => {
                format!("task-arithmetic(lambda={})", fmt_param(lambda))
            }
            DareInner::Ties(t) => t.label(),
        };
        format!("dare(p={},seed={})+{inner}", fmt_param(self.p), self.seed)
    }
    fn prepare<'a>(&self, tv: &'a TaskVectors) -> Result<Box<dyn TensorMerge + 'a>> {
        self.prepare_with_masks(tv, DareMasks::Seeded(self.seed))
    }
}

/// Task vectors with DARE's drop-and-rescale applied tensor by tensor, on demand.
pub struct Dropped<'a, S> {
    /// The undropped vectors.
    pub inner: &'a S,
    /// Drop probability.
    pub p: f64,
    /// Mask source.
    pub masks: DareMasks,
}

impl<S: VectorSource> VectorSource for Dropped<'_, S> {
    fn num_tasks(&self) -> usize {
        self.inner.num_tasks()
    }
    fn theta0(&self) -> &Weights {
        self.inner.theta0()
    }
    fn vector(&self, k: usize, name: &str, range: Range<usize>) -> Result<Tensor<1>> {
        let tau = self.inner.vector(k, name, range.clone())?;
        if self.p == 0.0 {
            return Ok(tau);
        }
        let mask = match &self.masks {
            DareMasks::Given(m) => part(&m[k].require(name)?.data, range),
            DareMasks::Seeded(seed) => {
                let n = range.len();
                let values = seeded_mask(*seed, k, name, range, self.p);
                Tensor::from_data(TensorData::new(values, [n]), &tau.device())
            }
        };
        Ok((tau * mask).mul_scalar((1.0 / (1.0 - self.p)) as f32))
    }
}

/// Entries `range` of a 0/1 keep mask with P(1) = 1 − p, reproducible from (seed, task,
/// tensor name). Entry i uses the i-th 64-bit word of its ChaCha8 stream, so any range can be
/// drawn on its own.
pub fn seeded_mask(seed: u64, task: usize, name: &str, range: Range<usize>, p: f64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
    rng.set_stream(task as u64);
    rng.set_word_pos(2 * range.start as u128);
    range
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { 1.0 })
        .collect()
}

/// A stable 64-bit hash (FNV-1a), independent of the platform and of Rust's hasher seeds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_masks_keep_one_minus_p_and_are_reproducible() {
        let n = 200_000;
        for p in [0.1, 0.5, 0.9] {
            let m = seeded_mask(7, 2, "vision_model.x.weight", 0..n, p);
            let kept = m.iter().filter(|&&v| v == 1.0).count() as f64 / n as f64;
            // 5 standard deviations of a binomial proportion.
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((kept - (1.0 - p)).abs() < 5.0 * sd, "p={p}: kept {kept}");
            assert_eq!(m, seeded_mask(7, 2, "vision_model.x.weight", 0..n, p));
            // Any range is the same slice of the whole mask.
            let mut pieces = seeded_mask(7, 2, "vision_model.x.weight", 0..777, p);
            pieces.extend(seeded_mask(7, 2, "vision_model.x.weight", 777..n, p));
            assert_eq!(m, pieces);
        }
        let a = seeded_mask(7, 0, "t", 0..1000, 0.5);
        assert_ne!(
            a,
            seeded_mask(7, 1, "t", 0..1000, 0.5),
            "tasks draw different masks"
        );
        assert_ne!(
            a,
            seeded_mask(8, 0, "t", 0..1000, 0.5),
            "seeds draw different masks"
        );
        assert_ne!(
            a,
            seeded_mask(7, 0, "u", 0..1000, 0.5),
            "tensors draw different masks"
        );
    }
}
