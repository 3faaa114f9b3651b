//! RegMean and RegMean++ as units of the method model: merges computed in one go from the
//! Grams of the linear layers' inputs on each task's unlabeled images.

use super::{Bound, Built, Kind, Method, Needs, Param, ParamDefault, Params, Value};
use crate::error::Result;
use crate::regmean::{PAPER, PAPER_PP, RegMean};

const PARAMS: &[Param] = &[
    Param {
        name: "alpha",
        help: "weight kept on the Grams' off-diagonal entries (FusionBench's reduce_non_diagonal_ratio: 1 is the full Gram, 0 its diagonal)",
        kind: Kind::Float {
            min: Bound::Incl(0.0),
            max: Bound::Incl(1.0),
        },
        // FusionBench's CLIP configurations (clip_regmean.yaml, clip_regmean_plusplus.yaml).
        default: ParamDefault::Value(Value::Float(0.95)),
        sweep: true,
        aliases: &[],
    },
    images("unlabeled images per task whose layer inputs make the Grams (drawn by the seed)"),
    batch_size("images per forward batch"),
    seed("seed of the images drawn from each task"),
];

/// Images per task a data-based method draws (FusionBench's 256); `help` says what for.
pub(super) const fn images(help: &'static str) -> Param {
    Param {
        name: "images",
        help,
        kind: Kind::Int {
            min: 1,
            max: u64::MAX,
        },
        default: ParamDefault::Value(Value::Int(256)),
        sweep: false,
        aliases: &[],
    }
}

/// Images per forward batch of a data-based method (FusionBench's 32).
pub(super) const fn batch_size(help: &'static str) -> Param {
    Param {
        name: "batch_size",
        help,
        kind: Kind::Int {
            min: 1,
            max: u64::MAX,
        },
        default: ParamDefault::Value(Value::Int(32)),
        sweep: false,
        aliases: &[],
    }
}

/// The seed of a data-based method's draws: the run's in an experiment.
pub(super) const fn seed(help: &'static str) -> Param {
    Param {
        name: "seed",
        help,
        kind: Kind::Int {
            min: 0,
            max: u64::MAX,
        },
        default: ParamDefault::Derived("the run's seed in an experiment, 0 in merge"),
        sweep: false,
        aliases: &[],
    }
}

/// RegMean (`plus_plus: false`) or RegMean++ in the method registry.
pub struct RegMeanMethod {
    /// Block by block on the merged model's activations.
    pub plus_plus: bool,
}

impl Method for RegMeanMethod {
    fn name(&self) -> &'static str {
        if self.plus_plus {
            "regmean++"
        } else {
            "regmean"
        }
    }
    fn paper(&self) -> &'static str {
        if self.plus_plus { PAPER_PP } else { PAPER }
    }
    fn summary(&self) -> &'static str {
        if self.plus_plus {
            "RegMean block by block: each block's Grams come from the activations the merged blocks before it produce"
        } else {
            "each linear weight solves a regression on the inputs every fine-tune sees on its task's unlabeled images; the rest is the mean"
        }
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn needs(&self) -> Needs {
        Needs {
            unlabeled_data: true,
            layer_inputs: true,
            block_by_block: self.plus_plus,
            ..Needs::default()
        }
    }
    fn build(&self, p: &Params) -> Result<Built> {
        let int = |name| p.int(name).expect("every integer has a default") as usize;
        Ok(Built::Data(Box::new(RegMean {
            alpha: p.float("alpha").expect("alpha has a default"),
            images: int("images"),
            batch_size: int("batch_size"),
            seed: p.int("seed"),
            plus_plus: self.plus_plus,
        })))
    }
}
