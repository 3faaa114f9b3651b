//! λ ∈ ℝ^{K×L}: AdaMerging's only trainable parameter, in a module of its own so that burn's
//! optimiser can own its state.

use std::str::FromStr;

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::weights::tensor_to_vec;

/// One coefficient per task, or one per task and unit of the layering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// λ ∈ ℝ^K (task-wise AdaMerging).
    Task,
    /// λ ∈ ℝ^{K×L} (layer-wise AdaMerging, the paper's best).
    #[default]
    Layer,
}

impl FromStr for Granularity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "task" | "task-wise" => Ok(Self::Task),
            "layer" | "layer-wise" => Ok(Self::Layer),
            other => Err(Error::invalid(
                "granularity",
                format!("`{other}` is not one of task, layer"),
            )),
        }
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Task => "task",
            Self::Layer => "layer",
        })
    }
}

/// The parameter id of λ, fixed so that a saved optimiser state finds its parameter again.
const LAMBDA_ID: u64 = 0x4c41_4d42_4441;

/// The parameter id of the component masks' logits (AdaRank).
const MASKS_ID: u64 = 0x4d41_534b_5320;

/// The coefficient module: λ [K, L] and, for a merge over singular components, the masks'
/// logits (one per component, flat).
#[derive(Module, Debug)]
pub struct Coefficients {
    /// Raw (unclamped) coefficients [K, L].
    pub lambda: Param<Tensor<2>>,
    /// Mask logits [M], when components are learned.
    pub masks: Option<Param<Tensor<1>>>,
}

impl Coefficients {
    /// λ from row-major values [K, L], on `device` (an autodiff device, as burn's optimisers
    /// expect).
    pub fn new(values: Vec<f32>, tasks: usize, units: usize, device: &Device) -> Self {
        let t = Tensor::from_data(TensorData::new(values, [tasks, units]), device);
        Self {
            lambda: Param::initialized(ParamId::from(LAMBDA_ID), t),
            masks: None,
        }
    }

    /// The same with mask logits (none when `masks` is `None`).
    pub fn with_masks(mut self, masks: Option<Vec<f32>>, device: &Device) -> Self {
        self.masks = masks.map(|m| {
            let n = m.len();
            Param::initialized(
                ParamId::from(MASKS_ID),
                Tensor::from_data(TensorData::new(m, [n]), device),
            )
        });
        self
    }

    /// The id under which gradients for λ are registered.
    pub fn id(&self) -> ParamId {
        self.lambda.id
    }

    /// The id of the mask logits, when there are any.
    pub fn masks_id(&self) -> Option<ParamId> {
        self.masks.as_ref().map(|m| m.id)
    }

    /// The mask logits, when there are any.
    pub fn mask_values(&self) -> Result<Option<Vec<f32>>> {
        self.masks
            .as_ref()
            .map(|m| tensor_to_vec(m.val().inner()))
            .transpose()
    }

    /// Row-major raw values [K, L].
    pub fn values(&self) -> Result<Vec<f32>> {
        let t = self.lambda.val().inner();
        let [k, l] = t.dims();
        tensor_to_vec(t.reshape([k * l]))
    }
}

/// λ as the forward uses it: clamped to [0, 1] when `clamp`.
pub fn effective(raw: &[f32], clamp: bool) -> Vec<f32> {
    if clamp {
        raw.iter().map(|v| v.clamp(0.0, 1.0)).collect()
    } else {
        raw.to_vec()
    }
}
