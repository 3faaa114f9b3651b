//! The method model: every merge method, fixed, data-based or learned, is one unit that
//! declares its name, its paper, its parameters (types, defaults, ranges) and what it needs,
//! and builds itself from checked values. [`registry`] lists them all; the command line, the
//! experiment files, labels, result keys and `--help` are derived from it.

mod adamerging;
mod adarank;
mod dare;
mod fisher;
pub mod params;
mod regmean;
mod spectral;
mod task_arithmetic;
mod ties;
mod weight_average;

pub use params::{Bound, Kind, Param, ParamDefault, Params, Source, Value};

use crate::adamerging::LearnConfig;
use crate::data_merge::DataMerge;
use crate::error::{Error, Result};
use crate::merge::MergeMethod;
use crate::spectral::Variant;

/// What a method needs beyond θ₀ and the task vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Needs {
    /// Unlabeled images of every task, run through a forward.
    pub unlabeled_data: bool,
    /// The inputs of the linear layers, observed during a forward (RegMean).
    pub layer_inputs: bool,
    /// Blocks run one at a time, on activations of another model (RegMean++).
    pub block_by_block: bool,
    /// Backward passes through the fine-tuned models (Fisher: per batch, or per image).
    pub backward: bool,
    /// Task heads: zero-shot ones from a text tower where no head file is given.
    pub heads: bool,
    /// Coefficients learned over steps (a learning run with a checkpoint and a log).
    pub learning: bool,
}

/// A method built from its values.
pub enum Built {
    /// A merge computed from task vectors (and whatever else it needs) in one go.
    Fixed(Box<dyn MergeMethod>),
    /// A merge computed in one go from the task vectors and each task's unlabeled images.
    Data(Box<dyn DataMerge>),
    /// Coefficients learned by entropy minimisation (AdaMerging, AdaMerging++, AdaRank).
    Learned(LearnConfig),
}

/// One merge method.
pub trait Method: Sync {
    /// Its name on the command line and in files (`ties`).
    fn name(&self) -> &'static str;
    /// The paper it comes from.
    fn paper(&self) -> &'static str;
    /// One line on what it does, for `--help`.
    fn summary(&self) -> &'static str;
    /// Its parameters, in the order help lists them.
    fn params(&self) -> &'static [Param];
    /// What it needs beyond the task vectors.
    fn needs(&self) -> Needs {
        Needs::default()
    }
    /// Builds the method from checked values; an error names the key as the user spelled it.
    fn build(&self, params: &Params) -> Result<Built>;
}

/// Every method, in the order help lists them.
pub fn registry() -> &'static [&'static dyn Method] {
    &[
        &weight_average::WeightAverageMethod,
        &task_arithmetic::TaskArithmeticMethod,
        &ties::TiesMethod,
        &dare::DareMethod,
        &regmean::RegMeanMethod { plus_plus: false },
        &regmean::RegMeanMethod { plus_plus: true },
        &fisher::FisherMethod,
        &spectral::SpectralMethod {
            variant: Variant::TsvM,
        },
        &spectral::SpectralMethod {
            variant: Variant::IsoC,
        },
        &spectral::SpectralMethod {
            variant: Variant::IsoCts { common: 0.8 },
        },
        &adamerging::AdaMergingMethod,
        &adarank::AdaRankMethod,
    ]
}

/// The method called `name`, or an error under `key` listing them all.
pub fn find(name: &str, key: &str) -> Result<&'static dyn Method> {
    registry()
        .iter()
        .find(|m| m.name() == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = registry().iter().map(|m| m.name()).collect();
            Error::invalid(key, format!("`{name}` is not one of {}", names.join(", ")))
        })
}

impl Built {
    /// The label of this run: a result key and the name in tables and plots
    /// (`ties(k=0.2,lambda=1,mean)`, `regmean(alpha=0.95)`, `adamerging(layer)[steps=200,lr=0.01]`).
    pub fn label(&self) -> String {
        match self {
            Built::Fixed(m) => m.label(),
            Built::Data(m) => m.label(),
            Built::Learned(c) => c.run_label(),
        }
    }
}
