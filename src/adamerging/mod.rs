//! AdaMerging (Yang et al., ICLR 2024): learn the merge coefficients λ by minimising the entropy
//! of the merged model's predictions on unlabeled test batches (see docs/design.md).
//!
//! θ₀ and the task vectors stay constants. Each step merges once, back-propagates the entropy
//! of a group of tasks' batches (one forward through the merged weights W, the heads split after
//! the tower; all tasks where their activations fit a budget) to W, and forms
//! ∂loss/∂λ_{k,l} = ⟨∂loss/∂W_l, τ_{k,l}⟩, so the graph held never exceeds one group's.

mod batches;
mod coefficients;
mod job;
mod learner;
mod objective;
mod outputs;
mod session;

pub use batches::{BatchSource, ImageSampler};
pub use coefficients::{Coefficients, Granularity};
pub use job::{
    Job, JobReport, LearnOptions, learn_with, report_markdown, run_job, sampler_for, write_merged,
};
pub use learner::{
    FORWARD_BUDGET_BYTES, LearnConfig, Learner, StepRecord, activation_bytes_per_image,
};
pub use objective::mean_entropy;
pub use outputs::{LearnedLambda, LearnedUnit, PAPER, RunLog};
pub use session::{Outcome, Session};
