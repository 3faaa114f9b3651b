//! TIES-Merging: trim, elect sign, disjoint merge (docs/design.md §3).

use std::ops::Range;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    MergeMethod, TensorMerge, VectorSource, by_chunks, check_fraction, check_range, chunks,
    fmt_param, part,
};
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
        check_fraction("k", k)?;
        check_range("lambda", lambda, -10.0, 10.0)?;
        Ok(Self {
            k,
            lambda,
            aggregate,
            scope,
        })
    }

    /// Prepares TIES over any vector source (plain task vectors, or DARE's dropped ones): the
    /// per-task thresholds and the majority sign, which need a pass over every tensor.
    pub fn prepare_source<S: VectorSource>(&self, src: S) -> Result<TiesMerge<S>> {
        let thresholds = Thresholds::compute(&src, self.k, self.scope)?;
        // Majority sign: sgn of Σ γ over the whole vector (or per tensor), for entries whose
        // trimmed sum is exactly zero.
        let mut votes = Vec::with_capacity(src.theta0().len());
        for (i, (name, t0)) in src.theta0().iter().enumerate() {
            let mut vote = 0;
            for r in chunks(t0.numel()) {
                let hats = trimmed(&src, &thresholds, i, name, r)?;
                vote += int_sum(sum(&hats).sign().int())?;
            }
            votes.push(vote);
        }
        if self.scope == TrimScope::Global {
            let total: i64 = votes.iter().sum();
            votes.iter_mut().for_each(|v| *v = total);
        }
        Ok(TiesMerge {
            ties: *self,
            src,
            thresholds,
            votes,
        })
    }
}

/// TIES prepared over a source: merges any tensor on its own.
pub struct TiesMerge<S> {
    ties: Ties,
    src: S,
    thresholds: Thresholds,
    /// Σ γ deciding the sign of exactly-zero sums, per tensor (the global total in every slot
    /// for the global scope).
    votes: Vec<i64>,
}

impl<S: VectorSource> TiesMerge<S> {
    /// The elected sign γ over `range` of tensor `index`, with exactly-zero sums given the
    /// majority sign, and every task's trimmed vector there.
    fn elect(&self, index: usize, name: &str, range: Range<usize>) -> Result<ElectedChunk> {
        let hats = trimmed(&self.src, &self.thresholds, index, name, range)?;
        let gamma = sum(&hats).sign();
        let majority = self.votes[index].signum() as f32;
        let gamma = gamma.clone().mask_fill(gamma.equal_elem(0.0), majority);
        Ok(ElectedChunk { hats, gamma })
    }
}

impl TiesMerge<TaskVectors> {
    /// AdaMerging++'s task vectors: per task, the trimmed entries that agree with the elected
    /// sign, kept apart rather than merged. Each original tensor is released as soon as its
    /// processed replacement exists, so memory stays at K + 1 checkpoints plus one tensor.
    pub fn into_task_vectors(mut self) -> Result<TaskVectors> {
        let names: Vec<String> = self.src.theta0().names().map(str::to_string).collect();
        for (i, name) in names.iter().enumerate() {
            let n = self.src.theta0().require(name)?.numel();
            let mut per_task: Vec<Vec<Tensor<1>>> = vec![Vec::new(); self.src.num_tasks()];
            for r in chunks(n) {
                let ElectedChunk { hats, gamma } = self.elect(i, name, r)?;
                for (k, h) in hats.into_iter().enumerate() {
                    let aligned = h * gamma.clone();
                    per_task[k].push(aligned.clamp_min(0.0) * gamma.clone());
                }
            }
            for (k, mut parts) in per_task.into_iter().enumerate() {
                let data = match parts.len() {
                    1 => parts.remove(0),
                    _ => Tensor::cat(parts, 0),
                };
                self.src.replace_vector(k, name, data)?;
            }
        }
        Ok(self.src)
    }
}

/// The per-task TIES vectors (trimmed, sign-agreeing, not merged) as a source, computed chunk
/// by chunk on demand: AdaMerging++ over a streamed merge.
impl<S: VectorSource> VectorSource for TiesMerge<S> {
    fn num_tasks(&self) -> usize {
        self.src.num_tasks()
    }
    fn theta0(&self) -> &Weights {
        self.src.theta0()
    }
    fn vector(&self, k: usize, name: &str, range: Range<usize>) -> Result<Tensor<1>> {
        let i = self.src.theta0().index_of(name).ok_or_else(|| {
            crate::error::Error::invalid("tensor", format!("`{name}` is not merged"))
        })?;
        let ElectedChunk { mut hats, gamma } = self.elect(i, name, range)?;
        let aligned = hats.swap_remove(k) * gamma.clone();
        Ok(aligned.clamp_min(0.0) * gamma)
    }
}

/// One chunk's trimmed task vectors and elected sign.
struct ElectedChunk {
    hats: Vec<Tensor<1>>,
    gamma: Tensor<1>,
}

impl<S: VectorSource> TensorMerge for TiesMerge<S> {
    fn tensor(&self, name: &str) -> Result<Tensor<1>> {
        let base = self.src.theta0();
        let i = base.index_of(name).ok_or_else(|| {
            crate::error::Error::invalid("tensor", format!("`{name}` is not merged"))
        })?;
        let t0 = &base.require(name)?.data;
        by_chunks(t0.dims()[0], |r| {
            let ElectedChunk { hats, gamma } = self.elect(i, name, r.clone())?;
            // τ̂·γ > 0 exactly where τ̂ is non-zero and agrees with γ, so Σ relu(τ̂·γ)·γ is the
            // sum of the agreeing entries (γ is ±1, or 0 where nothing may be kept).
            let mut agreeing = gamma.zeros_like();
            let mut count = gamma.zeros_like();
            for h in hats {
                let aligned = h * gamma.clone();
                count = count + aligned.clone().greater_elem(0.0).float();
                agreeing = agreeing + aligned.clamp_min(0.0);
            }
            let mut merged = agreeing * gamma;
            if self.ties.aggregate == Aggregate::Mean {
                merged = merged / count.clamp_min(1.0);
            }
            Ok(part(t0, r) + merged.mul_scalar(self.ties.lambda as f32))
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
    fn prepare<'a>(&self, tv: &'a TaskVectors) -> Result<Box<dyn TensorMerge + 'a>> {
        Ok(Box::new(self.prepare_source(tv)?))
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
        let mut values = Vec::with_capacity(src.num_tasks());
        for task in 0..src.num_tasks() {
            let row = match scope {
                TrimScope::Global => {
                    let d = src.theta0().num_params() as u64;
                    let read = |f: &mut dyn FnMut(&[f32])| -> Result<()> {
                        for (name, t0) in src.theta0().iter() {
                            for r in chunks(t0.numel()) {
                                f(&tensor_to_vec(src.vector(task, name, r)?)?);
                            }
                        }
                        Ok(())
                    };
                    vec![threshold(d, k, read)?]
                }
                TrimScope::PerTensor => src
                    .theta0()
                    .iter()
                    .map(|(name, t0)| {
                        let values = tensor_to_vec(src.vector(task, name, 0..t0.numel())?)?;
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

/// Every task's trimmed vector τ̂_k over `range` of tensor `index`.
fn trimmed(
    src: &impl VectorSource,
    thresholds: &Thresholds,
    index: usize,
    name: &str,
    range: Range<usize>,
) -> Result<Vec<Tensor<1>>> {
    (0..src.num_tasks())
        .map(|k| {
            Ok(trim(
                src.vector(k, name, range.clone())?,
                thresholds.get(k, index),
            ))
        })
        .collect()
}

fn sum(ts: &[Tensor<1>]) -> Tensor<1> {
    let mut total = ts[0].clone();
    for t in &ts[1..] {
        total = total + t.clone();
    }
    total
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
