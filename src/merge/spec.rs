//! A method named with its hyper-parameters, as the CLI and experiment files give it, turned
//! into a [`MergeMethod`] with the documented defaults.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{
    Aggregate, Dare, DareBase, MergeMethod, TaskArithmetic, Ties, TrimScope, WeightAverage,
};
use crate::error::{Error, Result};

/// The fixed methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FixedKind {
    /// Weight averaging.
    WeightAverage,
    /// Task Arithmetic.
    TaskArithmetic,
    /// TIES-Merging.
    Ties,
    /// DARE (on Task Arithmetic or TIES).
    Dare,
}

impl FromStr for FixedKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "weight-average" | "average" => Ok(Self::WeightAverage),
            "task-arithmetic" => Ok(Self::TaskArithmetic),
            "ties" => Ok(Self::Ties),
            "dare" => Ok(Self::Dare),
            other => Err(Error::invalid(
                "--method",
                format!("`{other}` is not one of weight-average, task-arithmetic, ties, dare"),
            )),
        }
    }
}

/// A fixed method and its hyper-parameters; `None` means the method's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSpec {
    /// Which method.
    pub kind: FixedKind,
    /// λ (Task Arithmetic 0.3; TIES 1 with mean, 0.3 with sum).
    pub lambda: Option<f64>,
    /// TIES keep fraction (0.2).
    pub k: Option<f64>,
    /// DARE drop probability (0.5).
    pub p: Option<f64>,
    /// DARE mask seed (0).
    pub seed: Option<u64>,
    /// TIES aggregation (mean).
    pub aggregate: Option<Aggregate>,
    /// TIES trim scope (global).
    pub trim: Option<TrimScope>,
    /// The merge DARE feeds (task-arithmetic or ties; default task-arithmetic).
    pub dare_base: Option<FixedKind>,
}

impl MethodSpec {
    /// A spec with every hyper-parameter at its default.
    pub fn new(kind: FixedKind) -> Self {
        Self {
            kind,
            lambda: None,
            k: None,
            p: None,
            seed: None,
            aggregate: None,
            trim: None,
            dare_base: None,
        }
    }

    /// Builds the method, rejecting hyper-parameters that do not apply to it.
    pub fn build(&self) -> Result<Box<dyn MergeMethod>> {
        let uses_ties = self.kind == FixedKind::Ties
            || (self.kind == FixedKind::Dare && self.dare_base == Some(FixedKind::Ties));
        let method = match self.kind {
            FixedKind::WeightAverage => "weight-average",
            FixedKind::TaskArithmetic => "task-arithmetic",
            FixedKind::Ties => "ties",
            FixedKind::Dare => "dare",
        };
        let reject = |given: bool, flag: &str| -> Result<()> {
            if given {
                return Err(Error::invalid(flag, format!("does not apply to {method}")));
            }
            Ok(())
        };
        if !uses_ties {
            reject(self.k.is_some(), "--k")?;
            reject(self.aggregate.is_some(), "--aggregate")?;
            reject(self.trim.is_some(), "--trim")?;
        }
        if self.kind != FixedKind::Dare {
            reject(self.p.is_some(), "--p")?;
            reject(self.seed.is_some(), "--seed")?;
            reject(self.dare_base.is_some(), "--dare-base")?;
        }
        let ties = || {
            let aggregate = self.aggregate.unwrap_or_default();
            let default_lambda = match aggregate {
                Aggregate::Mean => 1.0,
                Aggregate::Sum => 0.3,
            };
            Ties::new(
                self.k.unwrap_or(0.2),
                self.lambda.unwrap_or(default_lambda),
                aggregate,
                self.trim.unwrap_or_default(),
            )
        };
        Ok(match self.kind {
            FixedKind::WeightAverage => {
                reject(self.lambda.is_some(), "--lambda")?;
                Box::new(WeightAverage)
            }
            FixedKind::TaskArithmetic => Box::new(TaskArithmetic::new(self.lambda.unwrap_or(0.3))?),
            FixedKind::Ties => Box::new(ties()?),
            FixedKind::Dare => {
                let base = match self.dare_base.unwrap_or(FixedKind::TaskArithmetic) {
                    FixedKind::TaskArithmetic => DareBase::TaskArithmetic {
                        lambda: self.lambda.unwrap_or(0.3),
                    },
                    FixedKind::Ties => DareBase::Ties(ties()?),
                    _ => {
                        return Err(Error::invalid(
                            "--dare-base",
                            "must be task-arithmetic or ties",
                        ));
                    }
                };
                Box::new(Dare::new(
                    self.p.unwrap_or(0.5),
                    self.seed.unwrap_or(0),
                    base,
                )?)
            }
        })
    }
}

impl FromStr for Aggregate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Self::Mean),
            "sum" => Ok(Self::Sum),
            other => Err(Error::invalid(
                "--aggregate",
                format!("`{other}` is not mean or sum"),
            )),
        }
    }
}

impl FromStr for TrimScope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "global" => Ok(Self::Global),
            "per-tensor" | "tensor" => Ok(Self::PerTensor),
            other => Err(Error::invalid(
                "--trim",
                format!("`{other}` is not global or per-tensor"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_labels() {
        let label = |spec: MethodSpec| spec.build().unwrap().label();
        assert_eq!(
            label(MethodSpec::new(FixedKind::WeightAverage)),
            "weight-average"
        );
        assert_eq!(
            label(MethodSpec::new(FixedKind::TaskArithmetic)),
            "task-arithmetic(lambda=0.3)"
        );
        assert_eq!(
            label(MethodSpec::new(FixedKind::Ties)),
            "ties(k=0.2,lambda=1,mean)"
        );
        let mut sum = MethodSpec::new(FixedKind::Ties);
        sum.aggregate = Some(Aggregate::Sum);
        assert_eq!(label(sum), "ties(k=0.2,lambda=0.3,sum)");
        assert_eq!(
            label(MethodSpec::new(FixedKind::Dare)),
            "dare(p=0.5,seed=0)+task-arithmetic(lambda=0.3)"
        );
    }

    #[test]
    fn rejects_parameters_that_do_not_apply_and_out_of_range_values() {
        let mut s = MethodSpec::new(FixedKind::TaskArithmetic);
        s.k = Some(0.2);
        assert!(s.build().err().unwrap().to_string().contains("--k"));
        let mut s = MethodSpec::new(FixedKind::Ties);
        s.k = Some(1.5);
        assert!(s.build().err().unwrap().to_string().contains("--k"));
        let mut s = MethodSpec::new(FixedKind::Dare);
        s.p = Some(1.0);
        assert!(s.build().err().unwrap().to_string().contains("--p"));
        let mut s = MethodSpec::new(FixedKind::TaskArithmetic);
        s.lambda = Some(f64::NAN);
        assert!(s.build().is_err());
    }
}
