//! Fisher merging as a unit of the method model: a merge computed in one go from each
//! fine-tune's diagonal Fisher on its task's unlabeled images.

use super::regmean::{batch_size, images, seed};
use super::{Bound, Built, Kind, Method, Needs, Param, ParamDefault, Params, Value};
use crate::error::Result;
use crate::fisher::{Estimator, Fisher, PAPER};

const PARAMS: &[Param] = &[
    Param {
        name: "fisher_estimator",
        help: "batch: FusionBench's (the squared gradient of Σ sg(√p)·log p per batch); exact: per image, the squared gradient of log p(y|x) with y drawn from the model's prediction (per-image gradients from one batched backward)",
        kind: Kind::Choice(&["batch", "exact"]),
        default: ParamDefault::Value(Value::Choice("batch")),
        sweep: false,
        aliases: &["estimator"],
    },
    images("unlabeled images per task the Fisher is estimated on (drawn by the seed)"),
    batch_size("images per forward (the batch estimator squares one gradient per batch)"),
    seed("seed of the images drawn from each task and of the exact estimator's labels"),
    Param {
        name: "normalize",
        help: "weigh each model by 1 / the global norm of its Fisher (FusionBench's normalize_fisher_weight)",
        kind: Kind::Bool,
        default: ParamDefault::Value(Value::Bool(true)),
        sweep: false,
        aliases: &[],
    },
    Param {
        name: "scaling",
        help: "a positive weight per model, in task order (FusionBench's fisher_scaling_coefficients; all equal when unset)",
        kind: Kind::PerTask {
            min: Bound::Excl(0.0),
            max: Bound::Open,
        },
        default: ParamDefault::Unset,
        sweep: false,
        aliases: &[],
    },
];

/// Fisher merging in the method registry.
pub struct FisherMethod;

impl Method for FisherMethod {
    fn name(&self) -> &'static str {
        "fisher"
    }
    fn paper(&self) -> &'static str {
        PAPER
    }
    fn summary(&self) -> &'static str {
        "each parameter the fine-tunes' average weighted by their diagonal Fisher information on their tasks' unlabeled images"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn needs(&self) -> Needs {
        Needs {
            unlabeled_data: true,
            heads: true,
            backward: true,
            ..Needs::default()
        }
    }
    fn build(&self, p: &Params) -> Result<Built> {
        let int = |name| p.int(name).expect("every integer has a default") as usize;
        let estimator = match p.choice("fisher_estimator") {
            Some("exact") => Estimator::Exact,
            _ => Estimator::Batch,
        };
        Ok(Built::Data(Box::new(Fisher {
            estimator,
            images: int("images"),
            batch_size: int("batch_size"),
            seed: p.int("seed"),
            normalize: p.bool("normalize").expect("normalize has a default"),
            scaling: p.floats("scaling"),
        })))
    }
}
