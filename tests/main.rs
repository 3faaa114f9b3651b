//! The integration tests, built as one test binary: each file of `tests/` is a module of it, but
//! for `user_files.rs`, which measures the memory of the processes it starts (see Cargo.toml).
//! One binary compiles and links against the library (burn, and wgpu where enabled) once instead
//! of once per file: 30 s of a cold wgpu test build instead of 125 s for twenty binaries.

mod common;

mod adamerging;
mod adarank;
mod checkpoints;
mod clip_parity;
mod eval_cli;
mod experiment;
mod faults;
mod fisher;
mod fixed_merges;
mod half_precision;
mod layering;
mod learn_cli;
mod methods;
mod parquet;
mod preprocess;
mod regmean;
mod spectral;
mod suite;
mod training_grads;
