//! Unlabeled batches for learning. A [`BatchSource`] yields pixels only, so the learner cannot
//! read a label: the types carry none.

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use crate::data::{ImageRef, Preprocessor, UnlabeledImages};
use crate::error::{Error, Result};
use crate::eval::load_batch;

/// Where the learner's unlabeled batches come from (`Sync`: groups of tasks read their batches
/// on threads of their own).
pub trait BatchSource: Sync {
    /// Number of tasks.
    fn num_tasks(&self) -> usize;
    /// Batches read per task per step.
    fn batches_per_task(&self) -> usize;
    /// The `b`-th batch [B, C, H, W] of task `task` at step `step` (0-based). A function of its
    /// arguments alone, so that a resumed run reads what an uninterrupted one would have.
    fn batch(&self, task: usize, step: usize, b: usize) -> Result<Tensor<4>>;
}

/// Seeded sampling of unlabeled images: at every step each task draws `batch_size ×
/// batches_per_task` distinct images (all of them, reshuffled, when it has fewer), like a
/// freshly shuffled data loader. A task with fewer images than `batch_size` reads batches of
/// all its images, once each, rather than repeating some.
pub struct ImageSampler<'a> {
    sets: Vec<UnlabeledImages>,
    pre: &'a Preprocessor,
    batch_size: usize,
    batches_per_task: usize,
    seed: u64,
    device: Device,
}

impl<'a> ImageSampler<'a> {
    /// A sampler over one image set per task.
    pub fn new(
        sets: Vec<UnlabeledImages>,
        pre: &'a Preprocessor,
        batch_size: usize,
        batches_per_task: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 || batches_per_task == 0 {
            return Err(Error::invalid(
                "batch size",
                "the batch size and the batches per task must be at least 1",
            ));
        }
        if let Some(i) = sets.iter().position(UnlabeledImages::is_empty) {
            return Err(Error::invalid(
                "adaptation data",
                format!("task {i} has no image to adapt on"),
            ));
        }
        Ok(Self {
            sets,
            pre,
            batch_size,
            batches_per_task,
            seed,
            device: device.clone(),
        })
    }

    /// Images per batch of task `task`: `batch_size`, or all its images when it has fewer.
    pub fn batch_len(&self, task: usize) -> usize {
        self.batch_size.min(self.sets[task].len())
    }

    /// Number of images task `task` draws from.
    pub fn task_len(&self, task: usize) -> usize {
        self.sets[task].len()
    }

    /// The image indices task `task` reads at step `step`, in batch order.
    pub fn indices(&self, task: usize, step: usize) -> Vec<usize> {
        let n = self.sets[task].len();
        let want = self.batch_len(task) * self.batches_per_task;
        let key = splitmix(splitmix(self.seed ^ splitmix(task as u64)) ^ step as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            let take = (want - out.len()).min(n);
            out.extend(rand::seq::index::sample(&mut rng, n, take));
        }
        out
    }
}

impl BatchSource for ImageSampler<'_> {
    fn num_tasks(&self) -> usize {
        self.sets.len()
    }
    fn batches_per_task(&self) -> usize {
        self.batches_per_task
    }
    fn batch(&self, task: usize, step: usize, b: usize) -> Result<Tensor<4>> {
        let idx = self.indices(task, step);
        let set = &self.sets[task];
        let len = self.batch_len(task);
        let images: Vec<&ImageRef> = idx[b * len..(b + 1) * len]
            .iter()
            .map(|&i| &set.images[i])
            .collect();
        load_batch(&images, self.pre, &self.device)
    }
}

/// SplitMix64: a fixed, platform-independent mix of seeds (std's hasher may change).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler<'a>(sizes: &[usize], batch_size: usize, pre: &'a Preprocessor) -> ImageSampler<'a> {
        let sets = sizes
            .iter()
            .map(|&n| UnlabeledImages {
                images: (0..n)
                    .map(|i| ImageRef::File(format!("{i}.png").into()))
                    .collect(),
            })
            .collect();
        ImageSampler::new(sets, pre, batch_size, 2, 7, &Device::flex()).unwrap()
    }

    #[test]
    fn batches_are_distinct_images_and_a_small_set_is_read_once_per_batch() {
        let pre = Preprocessor::default();
        let s = sampler(&[40, 3], 16, &pre);
        let big = s.indices(0, 5);
        assert_eq!(big.len(), 32);
        let mut distinct = big.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 32);
        assert_eq!(s.batch_len(1), 3);
        let small = s.indices(1, 5);
        assert_eq!(small.len(), 6);
        for batch in small.chunks(3) {
            let mut b = batch.to_vec();
            b.sort_unstable();
            assert_eq!(b, [0, 1, 2]);
        }
        assert_eq!(
            s.indices(1, 5),
            small,
            "a step's batches depend on its arguments alone"
        );
    }
}
