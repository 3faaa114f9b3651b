//! Task Arithmetic as a unit of the method model.

use super::{Bound, Built, Kind, Method, Param, ParamDefault, Params, Value};
use crate::error::Result;
use crate::merge::{MergeMethod, TaskArithmetic};

/// λ of Task Arithmetic (and of DARE over it).
pub(crate) const LAMBDA: Param = Param {
    name: "lambda",
    help: "scale of the summed task vectors (a list in a file sweeps it)",
    kind: Kind::Float {
        min: Bound::Incl(-10.0),
        max: Bound::Incl(10.0),
    },
    default: ParamDefault::Value(Value::Float(0.3)),
    sweep: true,
    aliases: &[],
};

/// Task Arithmetic in the method registry.
pub struct TaskArithmeticMethod;

impl Method for TaskArithmeticMethod {
    fn name(&self) -> &'static str {
        "task-arithmetic"
    }
    fn paper(&self) -> &'static str {
        TaskArithmetic::default().reference()
    }
    fn summary(&self) -> &'static str {
        "θ₀ + λ Σ τ_k"
    }
    fn params(&self) -> &'static [Param] {
        &[LAMBDA]
    }
    fn build(&self, p: &Params) -> Result<Built> {
        let lambda = p.float("lambda").expect("lambda has a default");
        Ok(Built::Fixed(Box::new(TaskArithmetic::new(lambda)?)))
    }
}
