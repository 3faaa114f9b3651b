//! Experiments: a TOML file names the models, tasks and methods; the runner runs every method
//! side by side and writes logs, `results.json`, the table and the plots.

pub mod config;
pub mod paths;
pub mod runner;
pub mod seed;

pub use config::{Experiment, Planned};
pub use runner::{RunEnd, RunOptions, resume, run};
