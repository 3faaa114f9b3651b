//! Unlabeled image sets: what learned methods adapt on. The type carries no label, so nothing
//! that reads one can learn from it.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use super::{ImageRef, LabeledImages};
use crate::error::{Error, Result};

/// Images of one task without their labels.
#[derive(Debug, Clone)]
pub struct UnlabeledImages {
    /// The images.
    pub images: Vec<ImageRef>,
}

impl UnlabeledImages {
    /// The images of a labelled folder, labels dropped.
    pub fn from_labeled(set: &LabeledImages) -> Self {
        Self {
            images: set.items.iter().map(|(p, _)| p.clone()).collect(),
        }
    }

    /// Every image of `path`: Parquet shards (labels not read), or every image file under a
    /// folder at any depth (class folders or none), sorted by path.
    pub fn scan(path: &Path) -> Result<Self> {
        Ok(Self {
            images: super::scan_unlabeled(path)?,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Splits a labelled test set into an unlabeled adaptation part (a seeded `fraction` of it) and
/// the labelled rest for scoring, so that learned coefficients can be scored inductively.
pub fn split_for_adaptation(
    folder: &LabeledImages,
    fraction: f64,
    seed: u64,
) -> Result<(UnlabeledImages, LabeledImages)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "adaptation fraction",
            format!("{fraction} is not in (0, 1)"),
        ));
    }
    let n = folder.items.len();
    let take = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order = rand::seq::index::sample(&mut rng, n, n).into_vec();
    let mut rest = order.split_off(take);
    order.sort_unstable();
    rest.sort_unstable();
    let adapt = UnlabeledImages {
        images: order.iter().map(|&i| folder.items[i].0.clone()).collect(),
    };
    let mut scored = folder.clone();
    scored.items = rest.iter().map(|&i| folder.items[i].clone()).collect();
    Ok((adapt, scored))
}
