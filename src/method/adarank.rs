//! AdaRank (Lee et al., ICLR 2026) as a unit of the method model: masks over each task vector's
//! singular components, learned with layer-wise λ by AdaMerging's entropy minimisation, on a
//! Task Arithmetic base (AdaRank's) or TSV-M's components (ours).

use super::adamerging::{
    BATCH_SIZE, BATCHES_PER_TASK, GRANULARITY, LAYERING, LEARNED, LR, STEPS, TASKS_PER_FORWARD,
    learning,
};
use super::spectral::QKV;
use super::{Bound, Built, Kind, Method, Needs, Param, ParamDefault, Params, Value};
use crate::adamerging::LearnConfig;
use crate::error::Result;
use crate::merge::{ADARANK_PAPER as PAPER, Base, ComponentConfig, Decompose, MaskKind, Qkv, Rest};

const fn choice(
    name: &'static str,
    help: &'static str,
    values: &'static [&'static str],
    default: ParamDefault,
) -> Param {
    Param {
        name,
        help,
        kind: Kind::Choice(values),
        default,
        sweep: false,
        aliases: &[],
    }
}

const fn float(
    name: &'static str,
    help: &'static str,
    min: Bound,
    max: Bound,
    default: ParamDefault,
) -> Param {
    Param {
        name,
        help,
        kind: Kind::Float { min, max },
        default,
        sweep: false,
        aliases: &[],
    }
}

const PARAMS: &[Param] = &[
    choice(
        "base",
        "where the components come from: each task vector's own SVD (ta, AdaRank's Task Arithmetic base) or TSV-M's orthogonalised top ⌊r/K⌋ per task (tsv-m, ours)",
        &["ta", "tsv-m"],
        ParamDefault::Value(Value::Choice("ta")),
    ),
    choice(
        "decompose",
        "which matrices get masks: attention and MLP weights (attn-mlp, AdaRank's) or every 2-D tensor (matrices, TSV-M's)",
        &["attn-mlp", "matrices"],
        ParamDefault::Derived("attn-mlp with base ta, matrices with tsv-m"),
    ),
    QKV,
    float(
        "rank",
        "fraction of each task matrix's rank that gets a mask (base ta)",
        Bound::Excl(0.0),
        Bound::Incl(1.0),
        ParamDefault::Value(Value::Float(1.0)),
    ),
    choice(
        "rest",
        "what a truncated task matrix keeps beyond its masked components (base ta, rank < 1): nothing (drop, AdaRank's truncated SVD) or the remainder, weighted by λ (keep)",
        &["drop", "keep"],
        ParamDefault::Value(Value::Choice("drop")),
    ),
    choice(
        "mask",
        "hard: 0/1 masks trained straight-through (AdaRank's); soft: σ(m/T) in [0, 1]",
        &["hard", "soft"],
        ParamDefault::Value(Value::Choice("hard")),
    ),
    float(
        "temperature",
        "T in σ(m/T) (AdaRank's 10)",
        Bound::Excl(0.0),
        Bound::Open,
        ParamDefault::Value(Value::Float(10.0)),
    ),
    float(
        "mask_init",
        "initial mask logit m",
        Bound::Open,
        Bound::Open,
        ParamDefault::Derived(
            "0.1 with hard masks (AdaRank's: every component on), 2·temperature with soft (σ = 0.88, AdaRank's soft start)",
        ),
    ),
    GRANULARITY,
    LAYERING,
    STEPS,
    LR,
    float(
        "init",
        "initial λ",
        Bound::Open,
        Bound::Open,
        ParamDefault::Derived("0.3 with base ta (AdaRank's prior), 1 with tsv-m (TSV-M itself)"),
    ),
    BATCH_SIZE,
    BATCHES_PER_TASK,
    TASKS_PER_FORWARD,
];

/// AdaRank in the method registry.
pub struct AdaRankMethod;

impl Method for AdaRankMethod {
    fn name(&self) -> &'static str {
        "adarank"
    }
    fn paper(&self) -> &'static str {
        PAPER
    }
    fn summary(&self) -> &'static str {
        "learn masks over each task vector's singular components with layer-wise λ by entropy minimisation (λ unclamped)"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn needs(&self) -> Needs {
        LEARNED
    }
    fn build(&self, p: &Params) -> Result<Built> {
        let base = match p.choice("base") {
            Some("tsv-m") => Base::TsvM,
            _ => Base::Ta,
        };
        let mask = match p.choice("mask") {
            Some("soft") => MaskKind::Soft,
            _ => MaskKind::Hard,
        };
        let temperature = p.float("temperature").expect("temperature has a default");
        let components = ComponentConfig {
            base,
            decompose: match (p.choice("decompose"), base) {
                (Some("matrices"), _) | (None, Base::TsvM) => Decompose::Matrices,
                _ => Decompose::AttnMlp,
            },
            qkv: match p.choice("qkv") {
                Some("split") => Qkv::Split,
                _ => Qkv::Fused,
            },
            rank: p.float("rank").expect("rank has a default"),
            rest: match p.choice("rest") {
                Some("keep") => Rest::Keep,
                _ => Rest::Drop,
            },
            mask,
            temperature,
            mask_init: p.float("mask_init").unwrap_or(match mask {
                MaskKind::Hard => 0.1,
                MaskKind::Soft => 2.0 * temperature,
            }),
        };
        let config = LearnConfig {
            init: p.float("init").unwrap_or(match base {
                Base::Ta => 0.3,
                Base::TsvM => 1.0,
            }),
            clamp: false,
            components: Some(components),
            ..learning(p)
        };
        config.validate()?;
        Ok(Built::Learned(config))
    }
}
