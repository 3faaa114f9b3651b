//! Merges computed in one go from each task's unlabeled images (RegMean, RegMean++, Fisher):
//! what they read, how they draw their images, and the one interface the pipeline calls.

use burn::tensor::{Device, Tensor};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use crate::config::VisionConfig;
use crate::data::{ImageRef, Preprocessor, UnlabeledImages};
use crate::error::{Error, Result};
use crate::eval::load_batch;
use crate::task_vector::TaskVectors;
use crate::weights::Weights;

/// What a data-based merge reads: the model's config and preprocessing, θ₀ and the task
/// vectors, each task's unlabeled images and (for methods that predict) its head.
pub struct DataInputs<'a> {
    /// The vision config.
    pub cfg: &'a VisionConfig,
    /// Preprocessing.
    pub pre: &'a Preprocessor,
    /// θ₀ and τ_k.
    pub tv: &'a TaskVectors,
    /// Each task's images (all of its adaptation images; a method draws some of them).
    pub images: &'a [UnlabeledImages],
    /// Each task's head [C, P] (logit scale included); empty for a method that reads none.
    pub heads: &'a [Tensor<2>],
    /// Seed of the draw, where the method has none of its own.
    pub seed: u64,
    /// Advanced as the merge goes (its length is set by the method).
    pub progress: &'a ProgressBar,
}

impl DataInputs<'_> {
    /// Checks that there is one image set (and, when `heads`, one head) per task.
    pub fn check(&self, method: &str, heads: bool) -> Result<()> {
        let k = self.tv.num_tasks();
        if self.images.len() != k {
            return Err(Error::invalid(
                method,
                format!("{} image sets for {k} tasks", self.images.len()),
            ));
        }
        if heads && self.heads.len() != k {
            return Err(Error::invalid(
                method,
                format!("{} heads for {k} tasks", self.heads.len()),
            ));
        }
        Ok(())
    }

    /// `take` of task `t`'s images (all when it has fewer), drawn by `seed` (else the inputs'
    /// seed) and kept in their folder order, in batches of `batch_size`.
    pub fn draw(
        &self,
        t: usize,
        take: usize,
        batch_size: usize,
        seed: Option<u64>,
        device: &Device,
    ) -> Result<Vec<Tensor<4>>> {
        let set = &self.images[t].images;
        let seed = seed.unwrap_or(self.seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9e37_79b9));
        let take = take.min(set.len());
        if take == 0 {
            return Err(Error::invalid(
                self.tv.tasks()[t].as_str(),
                "has no images to draw from",
            ));
        }
        let mut picked = rand::seq::index::sample(&mut rng, set.len(), take).into_vec();
        picked.sort_unstable();
        picked
            .chunks(batch_size.max(1))
            .map(|chunk| {
                let refs: Vec<&ImageRef> = chunk.iter().map(|&i| &set[i]).collect();
                load_batch(&refs, self.pre, device)
            })
            .collect()
    }
}

/// A merge computed in one go from the task vectors and each task's unlabeled images.
pub trait DataMerge: Send + Sync {
    /// The label of a run (a result key, the name in tables).
    fn label(&self) -> String;
    /// The paper it comes from.
    fn paper(&self) -> &'static str;
    /// Images it draws per task.
    fn images(&self) -> usize;
    /// Whether it predicts through the tasks' heads (they must be loaded).
    fn needs_heads(&self) -> bool;
    /// The merged weights over the task vectors' merged tensors.
    fn merge(&self, inputs: &DataInputs<'_>, device: &Device) -> Result<Weights>;
}
