//! `Weights`: an ordered map from tensor name to a flat burn tensor with its shape beside it.
//!
//! Flat storage makes every merge, mask and coefficient uniform element-wise work; the model
//! reshapes at use.

use burn::tensor::{Device, Int, Tensor, TensorData};
use indexmap::IndexMap;

use crate::error::{Error, Result};

/// One named parameter tensor, stored flat.
#[derive(Clone, Debug)]
pub struct FlatTensor {
    /// The values, rank 1.
    pub data: Tensor<1>,
    /// The logical shape.
    pub shape: Vec<usize>,
}

impl FlatTensor {
    /// Builds a tensor on `device` from host values.
    pub fn from_vec(values: Vec<f32>, shape: Vec<usize>, device: &Device) -> Self {
        let n = values.len();
        debug_assert_eq!(n, shape.iter().product::<usize>());
        Self {
            data: Tensor::from_data(TensorData::new(values, [n]), device),
            shape,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Copies the values to the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        tensor_to_vec(self.data.clone())
    }

    /// Same shape, new values.
    pub fn with_data(&self, data: Tensor<1>) -> Self {
        Self {
            data,
            shape: self.shape.clone(),
        }
    }
}

fn read_back(e: impl std::fmt::Debug) -> Error {
    Error::Device {
        reason: format!("reading a tensor back to the host failed: {e:?}"),
    }
}

/// Copies a rank-1 tensor's values to the host as f32.
pub fn tensor_to_vec(t: Tensor<1>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(read_back)
}

/// One gradient per tensor of a weight set, in its order (None where none reaches a tensor).
pub type TensorGrads = Vec<Option<Tensor<1>>>;

/// Adds `grads` into `sums`, tensor by tensor: `sum + g`, in that order, so that sums taken in a
/// fixed order of parts have the same bits however the parts were computed.
pub fn add_grads(
    sums: &mut [Option<Tensor<1>>],
    grads: impl IntoIterator<Item = Option<Tensor<1>>>,
) {
    for (sum, g) in sums.iter_mut().zip(grads) {
        *sum = match (sum.take(), g) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// Reads a scalar (a one-element tensor) to the host as f64.
pub fn scalar(t: Tensor<1>) -> Result<f64> {
    let v = tensor_to_vec(t)?;
    match v.as_slice() {
        [x] => Ok(*x as f64),
        other => Err(read_back(format!(
            "{} values where one was expected",
            other.len()
        ))),
    }
}

/// Copies an integer tensor's values (class indices, counts) to the host.
pub fn int_vec<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(read_back)
}

/// Exact sum of an integer tensor (counts, signs), read to the host.
pub fn int_sum(t: Tensor<1, Int>) -> Result<i64> {
    match int_vec(t.sum())?.as_slice() {
        [x] => Ok(*x),
        other => Err(read_back(format!(
            "{} values where one was expected",
            other.len()
        ))),
    }
}

/// Named flat tensors in a fixed order.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    map: IndexMap<String, FlatTensor>,
}

impl Weights {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tensor (keeping the position of a replaced one).
    pub fn insert(&mut self, name: impl Into<String>, tensor: FlatTensor) {
        self.map.insert(name.into(), tensor);
    }

    /// Looks a tensor up.
    pub fn get(&self, name: &str) -> Option<&FlatTensor> {
        self.map.get(name)
    }

    /// Looks a tensor up, or fails naming it.
    pub fn require(&self, name: &str) -> Result<&FlatTensor> {
        self.map
            .get(name)
            .ok_or_else(|| Error::invalid("tensor", format!("`{name}` is not in this weight set")))
    }

    /// Position of a tensor in the order.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.map.get_index_of(name)
    }

    /// Names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// `(name, tensor)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FlatTensor)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total number of elements.
    pub fn num_params(&self) -> usize {
        self.map.values().map(FlatTensor::numel).sum()
    }

    /// Applies `f` to every tensor, keeping names, order and shapes.
    pub fn map(&self, mut f: impl FnMut(&str, Tensor<1>) -> Tensor<1>) -> Self {
        let map = self
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.with_data(f(k, v.data.clone()))))
            .collect();
        Self { map }
    }

    /// Like [`Self::map`], but consuming: each old tensor is freed as its new one is made.
    pub fn into_map(self, mut f: impl FnMut(&str, Tensor<1>) -> Tensor<1>) -> Self {
        let map = self
            .map
            .into_iter()
            .map(|(k, v)| {
                let data = f(&k, v.data);
                let t = FlatTensor {
                    data,
                    shape: v.shape,
                };
                (k, t)
            })
            .collect();
        Self { map }
    }

    /// A copy on `device`.
    pub fn to_device(&self, device: &Device) -> Self {
        self.map(|_, t| t.to_device(device))
    }

    /// Builds a set with the same names and shapes as `self` from a per-name function.
    pub fn try_map(
        &self,
        mut f: impl FnMut(&str, &FlatTensor) -> Result<Tensor<1>>,
    ) -> Result<Self> {
        let mut map = IndexMap::with_capacity(self.map.len());
        for (k, v) in &self.map {
            map.insert(k.clone(), v.with_data(f(k, v)?));
        }
        Ok(Self { map })
    }
}
