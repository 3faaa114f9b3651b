//! What a suite is made of: its size and every hyper-parameter of its recipe, in one place, so
//! `suite.json` can record them and the cache key can follow them.

use serde::{Deserialize, Serialize};

use super::compare::AdaMergingRun;
use crate::error::{Error, Result};

/// Bumped whenever the recipe or the generator changes what a seed produces; part of the cache
/// key, so an old suite is never mistaken for a new one. v4: batches back-propagated in shards;
/// v5: quick_gelu and the attention softmax as fused kernels with a polynomial `exp`.
pub const RECIPE_VERSION: u32 = 5;

/// How large a suite is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Size {
    /// The suite of the README (≤ 10 minutes on 2 cores).
    #[default]
    Full,
    /// A few images and steps, for tests (seconds).
    Tiny,
}

impl std::str::FromStr for Size {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "tiny" => Ok(Self::Tiny),
            other => Err(Error::invalid(
                "--size",
                format!("`{other}` is not one of full, tiny"),
            )),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::Tiny => "tiny",
        })
    }
}

/// Which suite: everything a build depends on besides the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SuiteSpec {
    /// Seed of the images, the initialisation and the batch orders.
    pub seed: u64,
    /// Size.
    pub size: Size,
}

impl SuiteSpec {
    /// The cache folder name: recipe version, size and seed.
    pub fn key(&self) -> String {
        format!("v{RECIPE_VERSION}-{}-seed{}", self.size, self.seed)
    }

    /// The recipe of this size.
    pub fn recipe(&self) -> Recipe {
        Recipe::of(self.size)
    }
}

/// Every hyper-parameter of a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Training images per task.
    pub train_per_task: usize,
    /// Test images per task.
    pub test_per_task: usize,
    /// Width of the tower (and of the projection).
    pub width: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Batch size of pretraining and fine-tuning.
    pub batch_size: usize,
    /// Shards of each batch, back-propagated on their own threads and their gradients summed
    /// (v4): part of the recipe because the sum's rounding differs from one backward's.
    pub shards: usize,
    /// Pretraining epochs over the union of the training sets.
    pub pretrain_epochs: usize,
    /// Pretraining's peak learning rate (cosine decay to 0).
    pub pretrain_lr: f64,
    /// Scale of the normalised embeddings fed to pretraining's probes.
    pub pretrain_scale: f64,
    /// Training images per class averaged into a head.
    pub head_shots: usize,
    /// Scale of the heads (a logit scale, as CLIP's).
    pub head_scale: f64,
    /// Fine-tuning epochs per task.
    pub finetune_epochs: usize,
    /// Fine-tuning's peak learning rate (cosine decay to 0).
    pub finetune_lr: f64,
    /// Layer-wise AdaMerging of the build's comparison of methods.
    pub adamerging: AdaMergingRun,
}

impl Recipe {
    /// The recipe of a size.
    pub fn of(size: Size) -> Self {
        let full = Self {
            train_per_task: 2000,
            test_per_task: 600,
            width: 64,
            layers: 6,
            heads: 4,
            batch_size: 64,
            // Two shards keep both of a laptop's cores busy: at 32 images of 17 tokens most of
            // burn-flex's operations are too small to be split across threads themselves.
            shards: 2,
            pretrain_epochs: 8,
            pretrain_lr: 2e-3,
            pretrain_scale: 10.0,
            head_shots: 16,
            head_scale: 20.0,
            finetune_epochs: 3,
            // Fine-tuning strength sets how much the task vectors clash. Over seeds 0–2 (same
            // pretrained towers), layer-wise AdaMerging beat Task Arithmetic 0.3 by +4.3 at 5e-4
            // (‖τ‖/‖θ₀‖ 3–4 %), +4.9 at 7e-4, +4.6 at 8e-4 and +6.0 at 1e-3 (5–6 %).
            finetune_lr: 1e-3,
            // The setting that separated the methods most in the prototype and in recipe v1
            // (seed 0: +4.1 over Task Arithmetic, against +2.4 for the paper's 500 × 1e-3), in
            // 40 % of the time; 300 steps or 32 images per task changed v2's average by ≤ 0.5.
            adamerging: AdaMergingRun {
                steps: 200,
                lr: 1e-2,
            },
        };
        match size {
            Size::Full => full,
            Size::Tiny => Self {
                train_per_task: 48,
                test_per_task: 24,
                width: 32,
                layers: 2,
                heads: 2,
                batch_size: 16,
                pretrain_epochs: 1,
                finetune_epochs: 1,
                head_shots: 2,
                adamerging: AdaMergingRun { steps: 3, lr: 1e-2 },
                ..full
            },
        }
    }
}
