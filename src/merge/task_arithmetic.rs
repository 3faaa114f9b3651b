//! Task Arithmetic: θ = θ₀ + λ Σ_k τ_k.

use super::{MergeMethod, ScaledSum, TensorMerge, check_range, fmt_param};
use crate::error::Result;
use crate::task_vector::TaskVectors;

/// Adds the scaled sum of task vectors to the pretrained weights.
#[derive(Debug, Clone, Copy)]
pub struct TaskArithmetic {
    /// The one coefficient λ shared by every task (0.3 in the AdaMerging paper's baseline).
    pub lambda: f64,
}

impl Default for TaskArithmetic {
    fn default() -> Self {
        Self { lambda: 0.3 }
    }
}

impl TaskArithmetic {
    /// Validates λ (finite, in [-10, 10]).
    pub fn new(lambda: f64) -> Result<Self> {
        check_range("lambda", lambda, -10.0, 10.0)?;
        Ok(Self { lambda })
    }
}

impl MergeMethod for TaskArithmetic {
    fn name(&self) -> &'static str {
        "task-arithmetic"
    }
    fn reference(&self) -> &'static str {
        "Ilharco et al., Editing models with task arithmetic, ICLR 2023"
    }
    fn label(&self) -> String {
        format!("task-arithmetic(lambda={})", fmt_param(self.lambda))
    }
    fn prepare<'a>(&self, tv: &'a TaskVectors) -> Result<Box<dyn TensorMerge + 'a>> {
        Ok(Box::new(ScaledSum {
            src: tv,
            lambda: self.lambda,
        }))
    }
}
