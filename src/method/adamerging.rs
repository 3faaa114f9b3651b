//! AdaMerging and AdaMerging++ as a unit of the method model: their parameters, and the
//! learning configuration they build.

use super::{Bound, Built, Kind, Method, Needs, Param, ParamDefault, Params, Value};
use crate::adamerging::{Granularity, LearnConfig};
use crate::error::Result;
use crate::task_vector::LayeringKind;

const fn int_at_least_1(name: &'static str, help: &'static str, default: u64) -> Param {
    Param {
        name,
        help,
        kind: Kind::Int {
            min: 1,
            max: u64::MAX,
        },
        default: ParamDefault::Value(Value::Int(default)),
        sweep: false,
        aliases: &[],
    }
}

pub(super) const GRANULARITY: Param = Param {
    name: "granularity",
    help: "one λ per task, or one per task and layer unit",
    kind: Kind::Choice(&["task", "layer"]),
    default: ParamDefault::Value(Value::Choice("layer")),
    sweep: false,
    aliases: &[],
};

pub(super) const LAYERING: Param = Param {
    name: "layering",
    help: "the units of layer-wise λ: the paper's (open_clip tensors, q/k/v fused), each tensor, or each block",
    kind: Kind::Choice(&["paper", "tensor", "block"]),
    default: ParamDefault::Value(Value::Choice("paper")),
    sweep: false,
    aliases: &[],
};

pub(super) const STEPS: Param = int_at_least_1("steps", "Adam steps", 500);

pub(super) const LR: Param = Param {
    name: "lr",
    help: "Adam's learning rate",
    kind: Kind::Float {
        min: Bound::Excl(0.0),
        max: Bound::Open,
    },
    default: ParamDefault::Value(Value::Float(1e-3)),
    sweep: false,
    aliases: &[],
};

pub(super) const INIT: Param = Param {
    name: "init",
    help: "initial λ",
    kind: Kind::Float {
        min: Bound::Open,
        max: Bound::Open,
    },
    default: ParamDefault::Value(Value::Float(0.3)),
    sweep: false,
    aliases: &[],
};

pub(super) const CLAMP: Param = Param {
    name: "clamp",
    help: "clamp λ to [0, 1] in the forward",
    kind: Kind::Bool,
    default: ParamDefault::Value(Value::Bool(true)),
    sweep: false,
    aliases: &[],
};

pub(super) const BATCH_SIZE: Param = int_at_least_1("batch_size", "unlabeled images per batch", 16);

pub(super) const BATCHES_PER_TASK: Param = int_at_least_1(
    "batches_per_task",
    "batches per task per step (the official code reads 2)",
    1,
);

pub(super) const TASKS_PER_FORWARD: Param = Param {
    name: "tasks_per_forward",
    help: "tasks whose batches share one forward and backward, the groups in turn (default: from 4 GiB of activations, two groups side by side on the CPU: halves where all tasks fit, else half as many as fit; 1 = one task at a time, the least memory)",
    kind: Kind::Int {
        min: 1,
        max: u64::MAX,
    },
    default: ParamDefault::Unset,
    sweep: false,
    aliases: &[],
};

pub(super) const TIES_K: Param = Param {
    name: "ties_k",
    help: "AdaMerging++: learn over TIES-processed task vectors keeping this fraction",
    kind: Kind::Float {
        min: Bound::Excl(0.0),
        max: Bound::Incl(1.0),
    },
    default: ParamDefault::Unset,
    sweep: false,
    aliases: &[],
};

const PARAMS: &[Param] = &[
    GRANULARITY,
    LAYERING,
    STEPS,
    LR,
    INIT,
    CLAMP,
    BATCH_SIZE,
    BATCHES_PER_TASK,
    TASKS_PER_FORWARD,
    TIES_K,
];

/// AdaMerging (AdaMerging++ with `ties_k`) in the method registry.
pub struct AdaMergingMethod;

impl Method for AdaMergingMethod {
    fn name(&self) -> &'static str {
        "adamerging"
    }
    fn paper(&self) -> &'static str {
        crate::adamerging::PAPER
    }
    fn summary(&self) -> &'static str {
        "learn task- or layer-wise λ by minimising prediction entropy on unlabeled images (AdaMerging++ with ties_k)"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn needs(&self) -> Needs {
        LEARNED
    }
    fn build(&self, p: &Params) -> Result<Built> {
        Ok(Built::Learned(LearnConfig {
            init: p.float("init").expect("init has a default"),
            clamp: p.bool("clamp").expect("clamp has a default"),
            ties_k: p.float("ties_k"),
            ..learning(p)
        }))
    }
}

/// What a method learned by entropy minimisation needs: unlabeled images, heads, a learning run.
pub(super) const LEARNED: Needs = Needs {
    unlabeled_data: true,
    layer_inputs: false,
    block_by_block: false,
    backward: false,
    heads: true,
    learning: true,
};

/// The settings every learned method reads alike (granularity, layering, steps, lr, batches,
/// tasks per forward); the rest at their defaults.
pub(super) fn learning(p: &Params) -> LearnConfig {
    let int = |name| p.int(name).expect("every integer has a default") as usize;
    LearnConfig {
        granularity: match p.choice("granularity") {
            Some("task") => Granularity::Task,
            _ => Granularity::Layer,
        },
        layering: match p.choice("layering") {
            Some("tensor") => LayeringKind::PerTensor,
            Some("block") => LayeringKind::PerBlock,
            _ => LayeringKind::Paper,
        },
        steps: int("steps"),
        lr: p.float("lr").expect("lr has a default"),
        batch_size: int("batch_size"),
        batches_per_task: int("batches_per_task"),
        tasks_per_forward: p.int("tasks_per_forward").map(|n| n as usize),
        ..LearnConfig::default()
    }
}
