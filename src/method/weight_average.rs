//! Weight averaging as a unit of the method model.

use super::{Built, Method, Param, Params};
use crate::error::Result;
use crate::merge::{MergeMethod, WeightAverage};

/// Weight averaging in the method registry.
pub struct WeightAverageMethod;

impl Method for WeightAverageMethod {
    fn name(&self) -> &'static str {
        "weight-average"
    }
    fn paper(&self) -> &'static str {
        WeightAverage.reference()
    }
    fn summary(&self) -> &'static str {
        "the mean of the fine-tuned models, θ₀ + (1/K) Σ τ_k"
    }
    fn params(&self) -> &'static [Param] {
        &[]
    }
    fn build(&self, _: &Params) -> Result<Built> {
        Ok(Built::Fixed(Box::new(WeightAverage)))
    }
}
