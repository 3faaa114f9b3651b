//! TIES-Merging as a unit of the method model.

use super::{Bound, Built, Kind, Method, Param, ParamDefault, Params, Value};
use crate::error::Result;
use crate::merge::{Aggregate, MergeMethod, Ties, TrimScope};

/// TIES's keep fraction (also DARE's over TIES).
pub(crate) const K: Param = Param {
    name: "k",
    help: "fraction of each task vector kept, by magnitude",
    kind: Kind::Float {
        min: Bound::Excl(0.0),
        max: Bound::Incl(1.0),
    },
    default: ParamDefault::Value(Value::Float(0.2)),
    sweep: false,
    aliases: &[],
};

/// TIES's aggregation of the sign-agreeing entries.
pub(crate) const AGGREGATE: Param = Param {
    name: "aggregate",
    help: "mean or sum of the sign-agreeing entries",
    kind: Kind::Choice(&["mean", "sum"]),
    default: ParamDefault::Value(Value::Choice("mean")),
    sweep: false,
    aliases: &[],
};

/// Over what TIES's magnitude threshold is taken.
pub(crate) const TRIM: Param = Param {
    name: "trim",
    help: "top-k threshold over the whole task vector (global) or per tensor",
    kind: Kind::Choice(&["global", "per-tensor"]),
    default: ParamDefault::Value(Value::Choice("global")),
    sweep: false,
    aliases: &[],
};

/// TIES's λ, whose default follows the aggregation.
const LAMBDA: Param = Param {
    name: "lambda",
    help: "scale of the merged task vector (a list in a file sweeps it)",
    kind: Kind::Float {
        min: Bound::Incl(-10.0),
        max: Bound::Incl(10.0),
    },
    default: ParamDefault::Derived("1 with mean, 0.3 with sum"),
    sweep: true,
    aliases: &[],
};

/// TIES from checked values (DARE's inner TIES too), λ defaulting by aggregation.
pub(crate) fn ties_from(p: &Params) -> Result<Ties> {
    let aggregate = match p.choice("aggregate") {
        Some("sum") => Aggregate::Sum,
        _ => Aggregate::Mean,
    };
    let trim = match p.choice("trim") {
        Some("per-tensor") => TrimScope::PerTensor,
        _ => TrimScope::Global,
    };
    let lambda = p.float("lambda").unwrap_or(match aggregate {
        Aggregate::Mean => 1.0,
        Aggregate::Sum => 0.3,
    });
    let k = p.float("k").expect("k has a default");
    Ties::new(k, lambda, aggregate, trim)
}

/// TIES-Merging in the method registry.
pub struct TiesMethod;

impl Method for TiesMethod {
    fn name(&self) -> &'static str {
        "ties"
    }
    fn paper(&self) -> &'static str {
        Ties::default().reference()
    }
    fn summary(&self) -> &'static str {
        "trim each τ_k to its top-k magnitudes, elect signs, merge the agreeing entries"
    }
    fn params(&self) -> &'static [Param] {
        &[K, LAMBDA, AGGREGATE, TRIM]
    }
    fn build(&self, p: &Params) -> Result<Built> {
        Ok(Built::Fixed(Box::new(ties_from(p)?)))
    }
}
