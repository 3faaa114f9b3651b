//! The built-in small suite (docs/design.md §6): eight procedural image tasks, a tiny CLIP-style ViT
//! pretrained on all of them, class-mean heads and one gently fine-tuned copy per task, generated
//! from a seed with no download and cached outside the repository.

pub mod build;
pub mod compare;
pub mod images;
pub mod recipe;
pub mod tiny_clip;
pub mod train;

pub use build::{SuiteInfo, SuiteTask, build, ensure, provides, suite_dir};
pub use compare::{AdaMergingRun, MethodScore, compare};
pub use recipe::{RECIPE_VERSION, Recipe, Size, SuiteSpec};
