//! Weight averaging: θ = (1/K) Σ_k θ_k.

use super::{MergeMethod, ScaledSum, TensorMerge};
use crate::error::Result;
use crate::task_vector::TaskVectors;

/// Uniform average of the fine-tuned models (Wortsman et al. 2022, "Model soups").
///
/// Computed as θ₀ + (1/K) Σ_k τ_k, which is the same average written over task vectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightAverage;

impl MergeMethod for WeightAverage {
    fn name(&self) -> &'static str {
        "weight-average"
    }
    fn reference(&self) -> &'static str {
        "Wortsman et al., Model soups, ICML 2022"
    }
    fn label(&self) -> String {
        self.name().to_string()
    }
    fn prepare<'a>(&self, tv: &'a TaskVectors) -> Result<Box<dyn TensorMerge + 'a>> {
        Ok(Box::new(ScaledSum {
            src: tv,
            lambda: 1.0 / tv.num_tasks() as f64,
        }))
    }
}
