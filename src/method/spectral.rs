//! TSV-M, Iso-C and Iso-CTS as units of the method model: data-free merges that rebuild every
//! 2-D tensor's update from the singular value decompositions of its task vectors.

use super::{Bound, Built, Kind, Method, Param, ParamDefault, Params, Value};
use crate::error::Result;
use crate::merge::{MergeMethod, Qkv, Spectral};
use crate::spectral::Variant;

const ALPHA: Param = Param {
    name: "alpha",
    help: "scale of the merged update, θ₀ + α Δ, on every tensor (FusionBench's default 1; its published Iso runs use 1.5; a list in a file sweeps it)",
    kind: Kind::Float {
        min: Bound::Incl(-10.0),
        max: Bound::Incl(10.0),
    },
    default: ParamDefault::Value(Value::Float(1.0)),
    sweep: true,
    aliases: &[],
};

pub(super) const QKV: Param = Param {
    name: "qkv",
    help: "decompose a block's q, k, v weights as one [3d, d] matrix (fused, open_clip's in_proj as the authors' code) or each alone (split, Hugging Face's tensors as FusionBench)",
    kind: Kind::Choice(&["fused", "split"]),
    default: ParamDefault::Value(Value::Choice("fused")),
    sweep: false,
    aliases: &[],
};

const COMMON_FRACTION: Param = Param {
    name: "common_fraction",
    help: "fraction of each matrix's rank given to the tasks' common subspace, before rounding the task-specific rest to a multiple of K",
    kind: Kind::Float {
        min: Bound::Excl(0.0),
        max: Bound::Incl(1.0),
    },
    default: ParamDefault::Value(Value::Float(0.8)),
    sweep: false,
    aliases: &[],
};

/// One of the spectral merges in the method registry.
pub struct SpectralMethod {
    /// Which one (Iso-CTS's fraction is read from its parameters).
    pub variant: Variant,
}

impl Method for SpectralMethod {
    fn name(&self) -> &'static str {
        self.example().name()
    }
    fn paper(&self) -> &'static str {
        self.example().reference()
    }
    fn summary(&self) -> &'static str {
        match self.variant {
            Variant::TsvM => {
                "each task's top ⌊r/K⌋ singular components of every 2-D tensor, orthogonalised across tasks; the rest is the mean"
            }
            Variant::IsoC => {
                "Σ τ_k of every 2-D tensor with its spectrum flattened to the mean singular value; the rest is the mean"
            }
            Variant::IsoCts { .. } => {
                "Iso-C over Σ τ_k's common subspace plus each task's own directions off it, orthogonalised; the rest is the mean"
            }
        }
    }
    fn params(&self) -> &'static [Param] {
        match self.variant {
            Variant::IsoCts { .. } => &[ALPHA, COMMON_FRACTION, QKV],
            _ => &[ALPHA, QKV],
        }
    }
    fn build(&self, p: &Params) -> Result<Built> {
        let variant = match self.variant {
            Variant::IsoCts { .. } => Variant::IsoCts {
                common: p
                    .float("common_fraction")
                    .expect("common_fraction has a default"),
            },
            v => v,
        };
        let qkv = match p.choice("qkv") {
            Some("split") => Qkv::Split,
            _ => Qkv::Fused,
        };
        let alpha = p.float("alpha").expect("alpha has a default");
        Ok(Built::Fixed(Box::new(Spectral::new(variant, alpha, qkv)?)))
    }
}

impl SpectralMethod {
    fn example(&self) -> Spectral {
        Spectral {
            variant: self.variant,
            alpha: 1.0,
            qkv: Qkv::Fused,
        }
    }
}
