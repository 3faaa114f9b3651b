//! DARE as a unit of the method model.

use super::ties::{AGGREGATE, K, TRIM, ties_from};
use super::{Bound, Built, Kind, Method, Param, ParamDefault, Params, Value};
use crate::error::Result;
use crate::merge::{Dare, DareInner};

/// DARE's drop probability.
const P: Param = Param {
    name: "p",
    help: "probability of dropping each task-vector entry",
    kind: Kind::Float {
        min: Bound::Incl(0.0),
        max: Bound::Excl(1.0),
    },
    default: ParamDefault::Value(Value::Float(0.5)),
    sweep: false,
    aliases: &[],
};

/// The seed of DARE's masks.
const SEED: Param = Param {
    name: "seed",
    help: "seed of the drop masks",
    kind: Kind::Int {
        min: 0,
        max: u64::MAX,
    },
    default: ParamDefault::Value(Value::Int(0)),
    sweep: false,
    aliases: &[],
};

/// The merge DARE feeds.
const INNER: Param = Param {
    name: "inner",
    help: "the merge applied to the dropped task vectors",
    kind: Kind::Choice(&["task-arithmetic", "ties"]),
    default: ParamDefault::Value(Value::Choice("task-arithmetic")),
    sweep: false,
    aliases: &["base", "dare_base"],
};

/// λ of DARE's inner merge, whose default follows it.
const LAMBDA: Param = Param {
    name: "lambda",
    help: "scale of the inner merge (a list in a file sweeps it)",
    kind: Kind::Float {
        min: Bound::Incl(-10.0),
        max: Bound::Incl(10.0),
    },
    default: ParamDefault::Derived("0.3 on task-arithmetic; on ties 1 with mean, 0.3 with sum"),
    sweep: true,
    aliases: &[],
};

/// DARE in the method registry.
pub struct DareMethod;

impl Method for DareMethod {
    fn name(&self) -> &'static str {
        "dare"
    }
    fn paper(&self) -> &'static str {
        crate::merge::DARE_PAPER
    }
    fn summary(&self) -> &'static str {
        "drop each task-vector entry with probability p, rescale by 1/(1 − p), then merge"
    }
    fn params(&self) -> &'static [Param] {
        &[P, SEED, INNER, LAMBDA, K, AGGREGATE, TRIM]
    }
    fn build(&self, p: &Params) -> Result<Built> {
        let inner = match p.choice("inner") {
            Some("ties") => DareInner::Ties(ties_from(p)?),
            _ => {
                let why = "with inner = task-arithmetic (it is a TIES parameter)";
                for name in ["k", "aggregate", "trim"] {
                    p.reject(name, why)?;
                }
                DareInner::TaskArithmetic {
                    lambda: p.float("lambda").unwrap_or(0.3),
                }
            }
        };
        let seed = p.int("seed").expect("seed has a default");
        let prob = p.float("p").expect("p has a default");
        Ok(Built::Fixed(Box::new(Dare::new(prob, seed, inner)?)))
    }
}
