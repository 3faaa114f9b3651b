//! Stored element types and their conversion to and from the f32 the merges compute in.

use half::{bf16, f16};

/// The element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Anything else (integers, f64, f8, ...): carried over byte for byte, never merged.
    Other(safetensors::Dtype),
}

impl StoredDtype {
    /// Maps the safetensors dtype.
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Self {
        match dtype {
            safetensors::Dtype::F32 => Self::F32,
            safetensors::Dtype::F16 => Self::F16,
            safetensors::Dtype::BF16 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The safetensors dtype.
    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::F16 => safetensors::Dtype::F16,
            Self::BF16 => safetensors::Dtype::BF16,
            Self::Other(d) => d,
        }
    }

    /// Whether the merges can compute with this type (as f32).
    pub fn is_mergeable(self) -> bool {
        !matches!(self, Self::Other(_))
    }

    /// Whether this is a floating-point type at all (f64 and f8 included).
    pub fn is_float(self) -> bool {
        use safetensors::Dtype as D;
        match self {
            Self::F32 | Self::F16 | Self::BF16 => true,
            Self::Other(d) => matches!(
                d,
                D::F64 | D::F8_E4M3 | D::F8_E5M2 | D::F8_E8M0 | D::F4 | D::F6_E2M3 | D::F6_E3M2
            ),
        }
    }

    /// Bytes per element for the mergeable types.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Other(d) => d.bitsize().div_ceil(8),
        }
    }

    /// The name safetensors uses in headers (`F32`, `BF16`, ...).
    pub fn name(self) -> String {
        format!("{:?}", self.to_safetensors())
    }
}

/// Decodes little-endian bytes of a mergeable dtype into f32.
///
/// Returns `None` for types that are not mergeable.
pub fn decode_f32(dtype: StoredDtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let out = match dtype {
        StoredDtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(s) => s.to_vec(),
            Err(_) => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        },
        StoredDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StoredDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StoredDtype::Other(_) => return None,
    };
    Some(out)
}

/// Encodes f32 values as little-endian bytes of `dtype` (round to nearest even).
///
/// Returns `None` for types that are not mergeable.
pub fn encode_f32(dtype: StoredDtype, values: &[f32]) -> Option<Vec<u8>> {
    let out = match dtype {
        StoredDtype::F32 => bytemuck::cast_slice::<f32, u8>(values).to_vec(),
        StoredDtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        StoredDtype::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        StoredDtype::Other(_) => return None,
    };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_mergeable_dtype() {
        let values = [0.0f32, -1.5, 3.25, 1e-3, -65504.0];
        for dtype in [StoredDtype::F32, StoredDtype::F16, StoredDtype::BF16] {
            let bytes = encode_f32(dtype, &values).unwrap();
            assert_eq!(bytes.len(), values.len() * dtype.size());
            let back = decode_f32(dtype, &bytes).unwrap();
            for (a, b) in values.iter().zip(&back) {
                assert!(
                    (a - b).abs() <= a.abs() * 1e-2 + 1e-6,
                    "{dtype:?}: {a} vs {b}"
                );
            }
        }
        assert!(decode_f32(StoredDtype::Other(safetensors::Dtype::I64), &[0; 8]).is_none());
    }
}
