//! Task vectors τ_k = θ_k − θ₀, held as frozen burn tensors, and the *layering* that groups
//! tensors into the units that later get one coefficient each.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType, Tensor};
use indicatif::ProgressBar;

use crate::checkpoint::Checkpoint;
use crate::config::{VisionConfig, check_same_vision};
use crate::error::{Error, Result};
use crate::weights::{FlatTensor, Weights};

/// Which tensors are merged (docs/design.md §5).
#[derive(Debug, Clone)]
pub struct MergeScope {
    /// Floating tensors under these prefixes are merged; every fine-tuned checkpoint must have
    /// them with the pretrained shape.
    pub required: Vec<String>,
    /// Floating tensors under these prefixes are merged only when every fine-tuned checkpoint
    /// has them (the public `CLIPVisionModel` fine-tunes lack `visual_projection`).
    pub optional: Vec<String>,
}

impl Default for MergeScope {
    fn default() -> Self {
        Self {
            required: vec!["vision_model.".into()],
            optional: vec!["visual_projection.".into()],
        }
    }
}

/// The element type task vectors are held in (`--tau-dtype`). Arithmetic on them stays f32:
/// every reader widens one tensor, or one chunk of it, at a time, so only the stored copies
/// stay in memory and a half type halves the largest part of a merge's or a learner's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorDtype {
    /// 32-bit floats, exact.
    #[default]
    F32,
    /// bfloat16: f32's range, 8 significant bits (the CPU backend; most GPUs lack it in wgpu).
    Bf16,
    /// IEEE half: 11 significant bits for |x| ≥ 6e-5, absolute error ≤ 3e-8 below, |x| < 65504
    /// (wgpu's half type; for small task vectors the more precise of the two).
    F16,
}

impl VectorDtype {
    /// burn's float type.
    pub fn float(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }

    /// Whether this is f32 (the default, left out of saved settings).
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }

    /// Fails, naming the option and what the device can hold instead, where `device`'s backend
    /// cannot hold this type.
    pub fn check(self, device: &Device) -> Result<()> {
        if self == Self::F32 || device.supports_dtype(self.float()) {
            return Ok(());
        }
        let held: Vec<String> = [Self::F32, Self::Bf16, Self::F16]
            .into_iter()
            .filter(|d| *d == Self::F32 || device.supports_dtype(d.float()))
            .map(|d| d.to_string())
            .collect();
        Err(Error::invalid(
            "--tau-dtype",
            format!(
                "this device ({device:?}) cannot hold {self} tensors; it holds {}",
                held.join(" or ")
            ),
        ))
    }
}

impl std::str::FromStr for VectorDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "half" => Ok(Self::F16),
            other => Err(Error::invalid(
                "--tau-dtype",
                format!("`{other}` is not one of f32, bf16, f16"),
            )),
        }
    }
}

impl std::fmt::Display for VectorDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

/// A fine-tuned checkpoint to merge, with its task name.
#[derive(Debug, Clone)]
pub struct Finetuned {
    /// Task name (unique).
    pub name: String,
    /// Checkpoint directory or file.
    pub path: PathBuf,
}

/// θ₀ and the task vectors over the merged tensors. θ₀ is f32; the task vectors are held in
/// [`VectorDtype`] and read through [`TaskVectors::tau`] and [`TaskVectors::tau_part`] in f32.
#[derive(Clone, Debug)]
pub struct TaskVectors {
    tasks: Vec<String>,
    base: Weights,
    vectors: Vec<Weights>,
    frozen: Weights,
    dtype: VectorDtype,
}

/// What [`TaskVectors::load`] decided about every pretrained tensor.
#[derive(Debug, Clone, Default)]
pub struct LoadPlan {
    /// Merged tensors, in order.
    pub merged: Vec<String>,
    /// Tensors carried over unchanged from the pretrained checkpoint.
    pub carried: Vec<String>,
}

impl TaskVectors {
    /// Builds task vectors from weights already in memory (θ₀ and each θ_k's τ), held in f32.
    pub fn new(tasks: Vec<String>, base: Weights, vectors: Vec<Weights>) -> Result<Self> {
        let vectors = vectors
            .into_iter()
            .map(|v| v.into_map(|_, t| t.cast(FloatDType::F32)))
            .collect();
        Self::held(tasks, base, vectors, VectorDtype::F32)
    }

    /// Checks names and shapes; `vectors` are already held in `dtype`.
    fn held(
        tasks: Vec<String>,
        base: Weights,
        vectors: Vec<Weights>,
        dtype: VectorDtype,
    ) -> Result<Self> {
        check_unique(&tasks)?;
        if tasks.len() != vectors.len() || tasks.is_empty() {
            return Err(Error::invalid(
                "task vectors",
                format!("{} task names for {} vectors", tasks.len(), vectors.len()),
            ));
        }
        for (task, v) in tasks.iter().zip(&vectors) {
            if v.len() != base.len() {
                return Err(Error::invalid(
                    "task vectors",
                    format!(
                        "task `{task}` has {} tensors, θ₀ has {}",
                        v.len(),
                        base.len()
                    ),
                ));
            }
            for ((n0, t0), (n1, t1)) in base.iter().zip(v.iter()) {
                if n0 != n1 || t0.shape != t1.shape {
                    return Err(Error::invalid(
                        "task vectors",
                        format!(
                            "task `{task}`: `{n1}` {:?} where θ₀ has `{n0}` {:?}",
                            t1.shape, t0.shape
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            tasks,
            base,
            vectors,
            frozen: Weights::new(),
            dtype,
        })
    }

    /// The same task vectors held in `dtype` (rounded to nearest), converted one tensor at a
    /// time so no second full set is ever held.
    pub fn stored_as(mut self, dtype: VectorDtype) -> Result<Self> {
        dtype.check(&self.device())?;
        for v in &mut self.vectors {
            *v = std::mem::take(v).into_map(|_, t| t.cast(dtype.float()));
        }
        self.dtype = dtype;
        Ok(self)
    }

    /// Builds task vectors from fine-tuned weights: τ_k = θ_k − θ₀.
    pub fn from_finetuned(
        tasks: Vec<String>,
        base: Weights,
        finetuned: &[Weights],
    ) -> Result<Self> {
        let vectors = finetuned
            .iter()
            .map(|ft| ft.try_map(|name, t| Ok(t.data.clone() - base.require(name)?.data.clone())))
            .collect::<Result<Vec<_>>>()?;
        Self::new(tasks, base, vectors)
    }

    /// Reads the pretrained and fine-tuned checkpoints and subtracts, holding each τ_k in
    /// `dtype` as soon as it is computed (so a half type never holds f32 task vectors).
    ///
    /// Every header is checked before any data is read, so a mismatch fails fast. Each
    /// fine-tuned checkpoint is unmapped once its task vector is built.
    pub fn load(
        pretrained: &Path,
        finetuned: &[Finetuned],
        scope: &MergeScope,
        dtype: VectorDtype,
        device: &Device,
        progress: &ProgressBar,
    ) -> Result<(Self, LoadPlan)> {
        dtype.check(device)?;
        let tasks: Vec<String> = finetuned.iter().map(|f| f.name.clone()).collect();
        check_unique(&tasks)?;
        if finetuned.is_empty() {
            return Err(Error::invalid(
                "--finetuned",
                "at least one fine-tuned checkpoint is needed",
            ));
        }
        let base_ckpt = Checkpoint::open(pretrained)?;
        let fts = finetuned
            .iter()
            .map(|f| Checkpoint::open(&f.path))
            .collect::<Result<Vec<_>>>()?;
        check_configs(&base_ckpt, &fts)?;
        let plan = plan(&base_ckpt, &fts, scope)?;

        let per_ckpt: u64 = plan
            .merged
            .iter()
            .filter_map(|n| base_ckpt.meta(n))
            .map(|m| m.numel() as u64)
            .sum();
        progress.set_length(per_ckpt * (1 + fts.len() as u64));
        let mut base = Weights::new();
        for name in &plan.merged {
            let meta = base_ckpt
                .meta(name)
                .map(|m| m.shape.clone())
                .expect("the merge plan lists only tensors of the pretrained checkpoint");
            let values = base_ckpt.read_f32(name)?;
            progress.inc(values.len() as u64);
            base.insert(name.clone(), FlatTensor::from_vec(values, meta, device));
        }
        // An optional tensor some fine-tune lacks (the public CLIPVisionModel fine-tunes have no
        // visual_projection) is not merged, but scoring the merged model still needs its θ₀.
        let under = |name: &str| scope.optional.iter().any(|p| name.starts_with(p));
        let mut frozen = Weights::new();
        for name in plan.carried.iter().filter(|n| under(n)) {
            let Some(meta) = base_ckpt.meta(name) else {
                continue;
            };
            if meta.dtype.is_mergeable() {
                let shape = meta.shape.clone();
                frozen.insert(
                    name.clone(),
                    FlatTensor::from_vec(base_ckpt.read_f32(name)?, shape, device),
                );
            }
        }
        drop(base_ckpt);

        let mut vectors = Vec::with_capacity(fts.len());
        for ft in fts {
            let mut tau = Weights::new();
            for (name, t0) in base.iter() {
                let values = ft.read_f32(name)?;
                progress.inc(values.len() as u64);
                let theta = FlatTensor::from_vec(values, t0.shape.clone(), device);
                let diff = theta.data - t0.data.clone();
                tau.insert(name, t0.with_data(diff.cast(dtype.float())));
            }
            vectors.push(tau);
        }
        let mut tv = Self::held(tasks, base, vectors, dtype)?;
        tv.frozen = frozen;
        Ok((tv, plan))
    }

    /// Task names, in the order given.
    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }

    /// Number of tasks K.
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// θ₀ over the merged tensors.
    pub fn theta0(&self) -> &Weights {
        &self.base
    }

    /// Pretrained tensors outside the merge that a forward needs (`visual_projection` when the
    /// fine-tunes lack it): every merged model uses them as θ₀.
    pub fn frozen(&self) -> &Weights {
        &self.frozen
    }

    /// `weights` with every tensor of θ₀ (merged or frozen) that it lacks, so it can be scored:
    /// a merge's output, or a vision-only fine-tune.
    pub fn complete(&self, mut weights: Weights) -> Weights {
        for (name, tensor) in self.base.iter().chain(self.frozen.iter()) {
            if weights.get(name).is_none() {
                weights.insert(name, tensor.clone());
            }
        }
        weights
    }

    /// θ₀ ready to be scored (merged and frozen tensors).
    pub fn pretrained(&self) -> Weights {
        self.complete(self.base.clone())
    }

    /// The type the task vectors are held in.
    pub fn dtype(&self) -> VectorDtype {
        self.dtype
    }

    /// τ_k as held (in [`Self::dtype`]): for inspecting storage; compute with [`Self::tau`].
    pub fn stored(&self, k: usize) -> &Weights {
        &self.vectors[k]
    }

    /// τ_k of tensor `name`, in f32.
    pub fn tau(&self, k: usize, name: &str) -> Result<Tensor<1>> {
        let t = &self.vectors[k].require(name)?.data;
        Ok(t.clone().cast(FloatDType::F32))
    }

    /// Entries `range` of τ_k of tensor `name`, in f32 (only that chunk is widened).
    pub fn tau_part(&self, k: usize, name: &str, range: Range<usize>) -> Result<Tensor<1>> {
        let t = &self.vectors[k].require(name)?.data;
        let part = match range.start == 0 && range.end == t.dims()[0] {
            true => t.clone(),
            false => t.clone().narrow(0, range.start, range.len()),
        };
        Ok(part.cast(FloatDType::F32))
    }

    /// Fine-tuned model `k` over the merged tensors that `keep` names: θ₀ + τ_k.
    pub fn finetuned(&self, k: usize, keep: impl Fn(&str) -> bool) -> Result<Weights> {
        let mut w = Weights::new();
        for (name, t0) in self.base.iter().filter(|(n, _)| keep(n)) {
            w.insert(name, t0.with_data(t0.data.clone() + self.tau(k, name)?));
        }
        Ok(w)
    }

    /// A copy on `device` (e.g. loaded on the CPU, learned on a GPU), in the same type.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.dtype.check(device)?;
        Ok(Self {
            tasks: self.tasks.clone(),
            base: self.base.to_device(device),
            vectors: self.vectors.iter().map(|v| v.to_device(device)).collect(),
            frozen: self.frozen.to_device(device),
            dtype: self.dtype,
        })
    }

    fn device(&self) -> Device {
        self.base
            .iter()
            .next()
            .map_or_else(Device::default, |(_, t)| t.data.device())
    }

    /// Replaces task `k`'s vector for tensor `name` by `data` (same number of entries; f32),
    /// held in [`Self::dtype`].
    pub(crate) fn replace_vector(&mut self, k: usize, name: &str, data: Tensor<1>) -> Result<()> {
        let old = self.vectors[k].require(name)?;
        if old.numel() != data.dims()[0] {
            return Err(Error::invalid(
                "task vectors",
                format!(
                    "replacement for `{name}` has {} entries, expected {}",
                    data.dims()[0],
                    old.numel()
                ),
            ));
        }
        let t = old.with_data(data.cast(self.dtype.float()));
        self.vectors[k].insert(name, t);
        Ok(())
    }

    /// Replaces the task vectors (same names and shapes), e.g. by TIES-processed ones, held
    /// in the same type as these.
    pub fn with_vectors(&self, vectors: Vec<Weights>) -> Result<Self> {
        let mut tv = Self::new(self.tasks.clone(), self.base.clone(), vectors)?;
        tv.frozen = self.frozen.clone();
        tv.stored_as(self.dtype)
    }
}

fn check_unique(tasks: &[String]) -> Result<()> {
    let mut seen = HashSet::new();
    for t in tasks {
        if t.is_empty() {
            return Err(Error::invalid("task name", "task names must not be empty"));
        }
        if !seen.insert(t.as_str()) {
            return Err(Error::DuplicateTask(t.clone()));
        }
    }
    Ok(())
}

fn check_configs(base: &Checkpoint, fts: &[Checkpoint]) -> Result<()> {
    let Some(base_cfg) = base.config() else {
        return Ok(());
    };
    let base_cfg_path = base.path().join(crate::checkpoint::CONFIG_FILE);
    let Some(base_vision) = VisionConfig::locate(base_cfg, &base_cfg_path)? else {
        return Ok(());
    };
    for ft in fts {
        let Some(cfg) = ft.config() else { continue };
        let path = ft.path().join(crate::checkpoint::CONFIG_FILE);
        if let Some(v) = VisionConfig::locate(cfg, &path)? {
            check_same_vision(&base_vision, &base_cfg_path, &v, &path)?;
        }
    }
    Ok(())
}

/// Decides which pretrained tensors are merged and checks every fine-tuned header against them.
fn plan(base: &Checkpoint, fts: &[Checkpoint], scope: &MergeScope) -> Result<LoadPlan> {
    let under = |name: &str, prefixes: &[String]| prefixes.iter().any(|p| name.starts_with(p));
    let mut plan = LoadPlan::default();
    for name in base.names() {
        let Some(meta) = base.meta(name) else {
            continue;
        };
        let required = under(name, &scope.required);
        let optional = under(name, &scope.optional);
        let merge = meta.dtype.is_float()
            && (required || (optional && fts.iter().all(|f| f.meta(name).is_some())));
        if !merge {
            plan.carried.push(name.to_string());
            continue;
        }
        if !meta.dtype.is_mergeable() {
            return Err(Error::UnsupportedDtype {
                path: base.file_of(name).unwrap_or(base.path()).to_path_buf(),
                tensor: name.to_string(),
                dtype: meta.dtype.name(),
            });
        }
        for ft in fts {
            let Some(m) = ft.meta(name) else {
                return Err(Error::MissingTensor {
                    path: ft.path().to_path_buf(),
                    pretrained: base.path().to_path_buf(),
                    tensor: name.to_string(),
                });
            };
            if m.shape != meta.shape {
                return Err(Error::ShapeMismatch {
                    path: ft.file_of(name).unwrap_or(ft.path()).to_path_buf(),
                    pretrained: base.file_of(name).unwrap_or(base.path()).to_path_buf(),
                    tensor: name.to_string(),
                    expected: meta.shape.clone(),
                    found: m.shape.clone(),
                });
            }
            if !m.dtype.is_mergeable() {
                return Err(Error::UnsupportedDtype {
                    path: ft.file_of(name).unwrap_or(ft.path()).to_path_buf(),
                    tensor: name.to_string(),
                    dtype: m.dtype.name(),
                });
            }
        }
        plan.merged.push(name.to_string());
    }
    if plan.merged.is_empty() {
        return Err(Error::Checkpoint {
            path: base.path().to_path_buf(),
            reason: format!(
                "no floating-point tensor under {:?} to merge (is this a CLIP checkpoint?)",
                scope.required
            ),
        });
    }
    Ok(plan)
}

/// How tensors are grouped into coefficient units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayeringKind {
    /// The paper's units: one per open_clip parameter tensor, i.e. one per Hugging Face tensor
    /// with the q/k/v projection weights grouped, and their biases grouped (152 for ViT-B/32).
    #[default]
    Paper,
    /// One unit per Hugging Face tensor.
    PerTensor,
    /// One unit per transformer block, plus one for the embeddings and one for the output.
    PerBlock,
}

impl std::str::FromStr for LayeringKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Self::Paper),
            "tensor" | "per-tensor" => Ok(Self::PerTensor),
            "block" | "per-block" => Ok(Self::PerBlock),
            other => Err(Error::invalid(
                "layering",
                format!("`{other}` is not one of paper, tensor, block"),
            )),
        }
    }
}

impl std::fmt::Display for LayeringKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Paper => "paper",
            Self::PerTensor => "per-tensor",
            Self::PerBlock => "per-block",
        })
    }
}

/// One coefficient unit: a name and the tensors it covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unit {
    /// Unit name (a tensor name, a fused name such as `...self_attn.in_proj.weight`, or a block).
    pub name: String,
    /// Tensor names in the unit.
    pub tensors: Vec<String>,
}

/// The grouping of merged tensors into coefficient units, in tensor order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layering {
    units: Vec<Unit>,
}

impl Layering {
    /// Groups `names` (in order) by `kind`.
    pub fn new<'a>(kind: LayeringKind, names: impl IntoIterator<Item = &'a str>) -> Self {
        let names: Vec<&str> = names.into_iter().collect();
        let first_block = names.iter().position(|n| block_of(n).is_some());
        let mut units: Vec<Unit> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let key = match kind {
                LayeringKind::PerTensor => name.to_string(),
                LayeringKind::Paper => fused_qkv(name).unwrap_or_else(|| name.to_string()),
                LayeringKind::PerBlock => match block_of(name) {
                    Some(b) => b,
                    None if first_block.is_none_or(|f| i < f) => "embeddings".to_string(),
                    None => "head".to_string(),
                },
            };
            match units.iter_mut().find(|u| u.name == key) {
                Some(u) => u.tensors.push(name.to_string()),
                None => units.push(Unit {
                    name: key,
                    tensors: vec![name.to_string()],
                }),
            }
        }
        Self { units }
    }

    /// One unit covering every tensor (task-wise coefficients).
    pub fn single<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            units: vec![Unit {
                name: "all".into(),
                tensors: names.into_iter().map(str::to_string).collect(),
            }],
        }
    }

    /// Units given explicitly (as saved with learned coefficients).
    pub fn from_units(units: Vec<Unit>) -> Self {
        Self { units }
    }

    /// The unit index of every tensor, by name.
    pub fn unit_index(&self) -> std::collections::HashMap<&str, usize> {
        self.units
            .iter()
            .enumerate()
            .flat_map(|(u, unit)| unit.tensors.iter().map(move |t| (t.as_str(), u)))
            .collect()
    }

    /// The units, in order.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Number of units L.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether there are no units.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

/// `a.self_attn.q_proj.weight` -> `a.self_attn.in_proj.weight` (open_clip's fused tensor).
fn fused_qkv(name: &str) -> Option<String> {
    for proj in ["q_proj.", "k_proj.", "v_proj."] {
        let needle = format!("self_attn.{proj}");
        if let Some(pos) = name.find(&needle) {
            let rest = &name[pos + needle.len()..];
            return Some(format!("{}self_attn.in_proj.{rest}", &name[..pos]));
        }
    }
    None
}

/// `vision_model.encoder.layers.3.mlp.fc1.weight` -> `vision_model.encoder.layers.3`.
fn block_of(name: &str) -> Option<String> {
    let pos = name.find(".layers.")?;
    let after = &name[pos + ".layers.".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    Some(format!("{}.layers.{digits}", &name[..pos]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vit_names(layers: usize) -> Vec<String> {
        let mut n = vec![
            "vision_model.embeddings.class_embedding".to_string(),
            "vision_model.embeddings.patch_embedding.weight".into(),
            "vision_model.embeddings.position_embedding.weight".into(),
            "vision_model.pre_layrnorm.weight".into(),
            "vision_model.pre_layrnorm.bias".into(),
        ];
        for l in 0..layers {
            for t in [
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.q_proj",
                "self_attn.out_proj",
                "layer_norm1",
                "mlp.fc1",
                "mlp.fc2",
                "layer_norm2",
            ] {
                for p in ["weight", "bias"] {
                    n.push(format!("vision_model.encoder.layers.{l}.{t}.{p}"));
                }
            }
        }
        n.push("vision_model.post_layernorm.weight".into());
        n.push("vision_model.post_layernorm.bias".into());
        n.push("visual_projection.weight".into());
        n
    }

    #[test]
    fn paper_layering_has_152_units_for_vit_b32_and_296_for_l14() {
        let b32 = vit_names(12);
        assert_eq!(b32.len(), 200);
        let l = Layering::new(LayeringKind::Paper, b32.iter().map(String::as_str));
        assert_eq!(l.len(), 152);
        let qkv = &l.units()[5];
        assert_eq!(
            qkv.name,
            "vision_model.encoder.layers.0.self_attn.in_proj.weight"
        );
        assert_eq!(qkv.tensors.len(), 3);
        let l14 = vit_names(24);
        assert_eq!(
            Layering::new(LayeringKind::Paper, l14.iter().map(String::as_str)).len(),
            296
        );
        assert_eq!(
            Layering::new(LayeringKind::PerTensor, l14.iter().map(String::as_str)).len(),
            392
        );
    }

    #[test]
    fn block_layering_groups_embeddings_blocks_and_head() {
        let names = vit_names(3);
        let l = Layering::new(LayeringKind::PerBlock, names.iter().map(String::as_str));
        let unit_names: Vec<&str> = l.units().iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            unit_names,
            vec![
                "embeddings",
                "vision_model.encoder.layers.0",
                "vision_model.encoder.layers.1",
                "vision_model.encoder.layers.2",
                "head"
            ]
        );
        assert_eq!(l.units()[0].tensors.len(), 5);
        assert_eq!(l.units()[4].tensors.len(), 3);
    }
}
