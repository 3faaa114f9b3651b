//! adamerge: merge fine-tuned CLIP models into one multi-task model, with fixed recipes
//! (weight averaging, Task Arithmetic, TIES, DARE) and learned coefficients (AdaMerging).
//!
//! Data flows one way: checkpoint files → [`weights::Weights`] → [`task_vector::TaskVectors`]
//! → [`merge::MergeMethod`] → merged weights → [`checkpoint::save_merged`].

pub mod adamerging;
pub mod cache;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod data_merge;
pub mod device;
pub mod diagnostics;
pub mod error;
pub mod eval;
pub mod events;
pub mod experiment;
pub mod fault;
pub mod fisher;
pub(crate) mod kernels;
pub mod layout;
pub mod linalg;
pub mod merge;
pub mod method;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod regmean;
pub mod report;
pub mod results;
pub mod spectral;
pub mod suite;
pub mod task_vector;
pub mod weights;

pub use error::{Error, Result};
