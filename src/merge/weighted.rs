//! θ = θ₀ + Σ_k c_{k,u(t)} τ_{k,t}: one coefficient per task and unit, the form AdaMerging
//! learns (task-wise when there is one unit).

use std::collections::HashMap;

use burn::tensor::Tensor;

use super::{TensorMerge, VectorSource, by_chunks, part};
use crate::error::{Error, Result};
use crate::kernels::weighted_sum;
use crate::task_vector::Layering;

/// A merge with per-(task, unit) coefficients over any vector source.
pub struct WeightedSum<S> {
    src: S,
    unit_of: HashMap<String, usize>,
    /// Row-major [K, L].
    coefficients: Vec<f32>,
    units: usize,
}

impl<S: VectorSource> WeightedSum<S> {
    /// `coefficients` is row-major [K, L] for the K tasks of `src` and the L units of `layering`,
    /// which must cover every tensor of the source.
    pub fn new(src: S, layering: &Layering, coefficients: Vec<f32>) -> Result<Self> {
        let (k, l) = (src.num_tasks(), layering.len());
        if coefficients.len() != k * l {
            return Err(Error::invalid(
                "coefficients",
                format!("{} values for {k} tasks × {l} units", coefficients.len()),
            ));
        }
        let unit_of: HashMap<String, usize> = layering
            .unit_index()
            .into_iter()
            .map(|(n, u)| (n.to_string(), u))
            .collect();
        if let Some(missing) = src.theta0().names().find(|n| !unit_of.contains_key(*n)) {
            return Err(Error::invalid(
                "coefficients",
                format!("merged tensor `{missing}` belongs to no coefficient unit"),
            ));
        }
        Ok(Self {
            src,
            unit_of,
            coefficients,
            units: l,
        })
    }
}

impl<S: VectorSource> TensorMerge for WeightedSum<S> {
    fn tensor(&self, name: &str) -> Result<Tensor<1>> {
        let t0 = self.src.theta0().require(name)?;
        let u = self.unit_of.get(name).copied().ok_or_else(|| {
            Error::invalid("tensor", format!("`{name}` belongs to no coefficient unit"))
        })?;
        by_chunks(t0.numel(), |r| {
            let terms = (0..self.src.num_tasks())
                .map(|k| (k, self.coefficients[k * self.units + u]))
                .filter(|&(_, c)| c != 0.0)
                .map(|(k, c)| Ok((self.src.vector(k, name, r.clone())?, c)))
                .collect::<Result<Vec<_>>>()?;
            Ok(weighted_sum(&part(&t0.data, r), &terms))
        })
    }
}
