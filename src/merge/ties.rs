//! TIES-Merging: trim, elect sign, disjoint merge (DESIGN.md §3).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{MergeMethod, VectorSource, check_range, fmt_param};
use crate::error::Result;
use crate::task_vector::TaskVectors;
use crate::weights::{Weights, int_sum, tensor_to_vec};

/// How the sign-agreeing entries are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregate {
    /// Divide by the number of agreeing tasks (the TIES paper; used with λ = 1).
    #[default]
    Mean,
    /// Plain sum (the AdaMerging paper's TIES baseline; used with λ = 0.3).
    Sum,
}

/// Over what the top-k magnitude threshold (and the majority sign) is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrimScope {
    /// The whole flattened task vector (the TIES reference code).
    #[default]
    Global,
    /// Each tensor on its own.
    PerTensor,
}

/// TIES-Merging (Yadav et al., NeurIPS 2023).
#[derive(Debug, Clone, Copy)]
pub struct Ties {
    /// Fraction of entries kept per task (by magnitude).
    pub k: f64,
    /// Scale of the merged task vector.
    pub lambda: f64,
    /// Disjoint mean or sum.
    pub aggregate: Aggregate,
    /// Threshold over the whole vector or per tensor.
    pub scope: TrimScope,
}

impl Default for Ties {
    fn default() -> Self {
        Self {
            k: 0.2,
            lambda: 1.0,
            aggregate: Aggregate::Mean,
            scope: TrimScope::Global,
        }
    }
}

impl Ties {
    /// Validates `k` ∈ (0, 1] and λ.
    pub fn new(k: f64, lambda: f64, aggregate: Aggregate, scope: TrimScope) -> Result<Self> {
        check_range("--k", k, f64::MIN_POSITIVE, 1.0)?;
        check_range("--lambda", lambda, -10.0, 10.0)?;
        Ok(Self {
            k,
            lambda,
            aggregate,
            scope,
        })
    }

    /// Merges any vector source (plain task vectors, or DARE's dropped ones).
    pub fn merge_source(&self, src: &impl VectorSource) -> Result<Weights> {
        let thresholds = Thresholds::compute(src, self.k, self.scope)?;
        // Majority sign: sgn of Σ γ over the whole vector (or per tensor), for entries whose
        // trimmed sum is exactly zero.
        let mut per_tensor_vote = Vec::with_capacity(src.base().len());
        for (i, name) in src.base().names().enumerate() {
            let gamma = trimmed_sum(src, &thresholds, i, name)?.sign();
            per_tensor_vote.push(int_sum(gamma.int()));
        }
        let global_vote: i64 = per_tensor_vote.iter().sum();
        let mut index = 0;
        src.base().try_map(|name, t0| {
            let i = index;
            index += 1;
            let vote = match self.scope {
                TrimScope::Global => global_vote,
                TrimScope::PerTensor => per_tensor_vote[i],
            };
            let hats = (0..src.num_tasks())
                .map(|k| Ok(trim(src.vector(k, name)?, thresholds.get(k, i))))
                .collect::<Result<Vec<_>>>()?;
            let mut sum = hats[0].clone();
            for h in &hats[1..] {
                sum = sum + h.clone();
            }
            let gamma = sum.sign();
            let gamma = gamma
                .clone()
                .mask_fill(gamma.equal_elem(0.0), vote.signum() as f32);
            let mut merged = t0.data.zeros_like();
            let mut count = t0.data.zeros_like();
            for h in hats {
                let agree = h
                    .clone()
                    .sign()
                    .equal(gamma.clone())
                    .bool_and(h.clone().not_equal_elem(0.0));
                count = count + agree.clone().float();
                merged = merged + h.mask_fill(agree.bool_not(), 0.0);
            }
            if self.aggregate == Aggregate::Mean {
                merged = merged / count.clamp_min(1.0);
            }
            Ok(t0.data.clone() + merged.mul_scalar(self.lambda as f32))
        })
    }
}

impl MergeMethod for Ties {
    fn name(&self) -> &'static str {
        "ties"
    }
    fn reference(&self) -> &'static str {
        "Yadav et al., TIES-Merging: Resolving interference when merging models, NeurIPS 2023"
    }
    fn label(&self) -> String {
        let agg = match self.aggregate {
            Aggregate::Mean => "mean",
            Aggregate::Sum => "sum",
        };
        let scope = match self.scope {
            TrimScope::Global => "",
            TrimScope::PerTensor => ",per-tensor",
        };
        format!(
            "ties(k={},lambda={},{agg}{scope})",
            fmt_param(self.k),
            fmt_param(self.lambda)
        )
    }
    fn merge(&self, tv: &TaskVectors) -> Result<Weights> {
        self.merge_source(tv)
    }
}

/// Per-task magnitude thresholds: one per task (global) or one per task and tensor.
struct Thresholds {
    scope: TrimScope,
    /// `values[k][i]`: task k, tensor i (global scope: one entry per task).
    values: Vec<Vec<f32>>,
}

impl Thresholds {
    fn compute(src: &impl VectorSource, k: f64, scope: TrimScope) -> Result<Self> {
        let names: Vec<&str> = src.base().names().collect();
        let mut values = Vec::with_capacity(src.num_tasks());
        for task in 0..src.num_tasks() {
            let row = match scope {
                TrimScope::Global => {
                    let d = src.base().num_params() as u64;
                    let read = |f: &mut dyn FnMut(&[f32])| -> Result<()> {
                        for name in &names {
                            f(&tensor_to_vec(src.vector(task, name)?));
                        }
                        Ok(())
                    };
                    vec![threshold(d, k, read)?]
                }
                TrimScope::PerTensor => names
                    .iter()
                    .map(|name| {
                        let values = tensor_to_vec(src.vector(task, name)?);
                        threshold(values.len() as u64, k, |f| {
                            f(&values);
                            Ok(())
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            };
            values.push(row);
        }
        Ok(Self { scope, values })
    }

    fn get(&self, task: usize, tensor: usize) -> f32 {
        match self.scope {
            TrimScope::Global => self.values[task][0],
            TrimScope::PerTensor => self.values[task][tensor],
        }
    }
}

/// The keep threshold for top-`k` of `d` entries: the (d − ⌊d·k⌋)-th smallest magnitude
/// (entries with |x| ≥ it are kept); 0 when that rank is 0 (k = 1 keeps everything).
fn threshold(d: u64, k: f64, read: impl Fn(&mut dyn FnMut(&[f32])) -> Result<()>) -> Result<f32> {
    let rank = d - ((d as f64 * k).floor() as u64).min(d);
    if rank == 0 {
        return Ok(0.0);
    }
    kth_smallest_magnitude(rank, read)
}

/// The `rank`-th smallest |x| (1-indexed) over data streamed by `read`, exactly, in two passes
/// and O(1) extra memory: a radix selection on the bits of |x|, whose order as integers is the
/// order of the non-negative floats.
pub fn kth_smallest_magnitude(
    rank: u64,
    read: impl Fn(&mut dyn FnMut(&[f32])) -> Result<()>,
) -> Result<f32> {
    let bits = |x: f32| x.to_bits() & 0x7fff_ffff;
    let mut hist = vec![0u64; 1 << 16];
    read(&mut |xs| {
        for &x in xs {
            hist[(bits(x) >> 16) as usize] += 1;
        }
    })?;
    let (hi, rest) = locate(&hist, rank);
    hist.iter_mut().for_each(|h| *h = 0);
    read(&mut |xs| {
        for &x in xs {
            let b = bits(x);
            if (b >> 16) as usize == hi {
                hist[(b & 0xffff) as usize] += 1;
            }
        }
    })?;
    let (lo, _) = locate(&hist, rest);
    Ok(f32::from_bits(((hi as u32) << 16) | lo as u32))
}

/// The bin holding the `rank`-th smallest element, and the rank within that bin.
fn locate(hist: &[u64], rank: u64) -> (usize, u64) {
    let mut seen = 0;
    for (bin, &count) in hist.iter().enumerate() {
        if seen + count >= rank {
            return (bin, rank - seen);
        }
        seen += count;
    }
    (hist.len() - 1, 1)
}

/// Zeroes entries with |x| below the threshold.
fn trim(tau: Tensor<1>, threshold: f32) -> Tensor<1> {
    if threshold <= 0.0 {
        return tau;
    }
    let drop = tau.clone().abs().lower_elem(threshold);
    tau.mask_fill(drop, 0.0)
}

fn trimmed_sum(
    src: &impl VectorSource,
    thresholds: &Thresholds,
    index: usize,
    name: &str,
) -> Result<Tensor<1>> {
    let mut sum = trim(src.vector(0, name)?, thresholds.get(0, index));
    for k in 1..src.num_tasks() {
        sum = sum + trim(src.vector(k, name)?, thresholds.get(k, index));
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(values: &[f32], rank: u64) -> f32 {
        kth_smallest_magnitude(rank, |f| {
            for chunk in values.chunks(3) {
                f(chunk);
            }
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn radix_selection_matches_sorting() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 * if i % 3 == 0 { -1e-3 } else { 1e-3 })
            .chain([0.0, -0.0, 1e-30, -5.0])
            .collect();
        let mut sorted: Vec<f32> = values.iter().map(|v| v.abs()).collect();
        sorted.sort_by(f32::total_cmp);
        for rank in [1u64, 2, 3, 500, 1003, 1004] {
            assert_eq!(
                select(&values, rank),
                sorted[rank as usize - 1],
                "rank {rank}"
            );
        }
    }

    #[test]
    fn threshold_rank_follows_the_definition() {
        // d = 10, k = 0.2: ⌊2⌋ = 2, threshold = 8th smallest |x| = 8.
        let values: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        let read = |f: &mut dyn FnMut(&[f32])| -> Result<()> {
            f(&values);
            Ok(())
        };
        assert_eq!(threshold(10, 0.2, read).unwrap(), 8.0);
        assert_eq!(threshold(10, 1.0, read).unwrap(), 0.0);
        assert_eq!(threshold(10, 0.05, read).unwrap(), 10.0);
    }
}
