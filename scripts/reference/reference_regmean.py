"""Independent PyTorch reference of RegMean (Jin et al., ICLR 2023) and RegMean++ (Nguyen et al., 2025).

This module is the reference the Rust RegMean / RegMean++ is checked against (through the
fixtures written by ``scripts/fixtures/make_regmean_fixtures.py``). It follows FusionBench
(tanganke/fusion_bench @ 54c9e8c9, ``fusion_bench/method/regmean/`` and
``fusion_bench/method/regmean_plusplus/``; notes in ``scripts/reference/regmean_fusionbench.md``)
and, like it, collects the Grams with forward hooks on the ``nn.Linear`` modules. It is importable
and has a small CLI:

    python scripts/reference/reference_regmean.py --self-test
    python scripts/reference/reference_regmean.py \\
        --pretrained tests/fixtures/adamerging/pretrained \\
        --finetuned alpha=tests/fixtures/adamerging/finetuned/alpha ... \\
        --batches tests/fixtures/adamerging/batches.safetensors --steps 3 \\
        --alpha 0.6 [--plusplus] [--batch-size 8] [--float32] [--out merged.safetensors]

Needs torch, safetensors and transformers (5.x); models are ``CLIPVisionModelWithProjection``
with transformers' "sdpa" attention (the "eager" one takes its softmax in float32 even in a
float64 model). Definitions (K fine-tuned models, every sum in task order):

* Merged Linear layers: the six ``nn.Linear`` of every encoder layer,
  ``vision_model.encoder.layers.<l>.{self_attn.{q,k,v,out}_proj, mlp.fc1, mlp.fc2}``, each with
  its own Gram (q/k/v share their input, layer_norm1's output, so their Grams are equal).
  ``visual_projection`` gets none (FusionBench's models are ``CLIPVisionModel``s, see below).
* Gram of one layer for task k: the layer's input x [B, T, in] of every batch is reshaped to
  [B*T, in] rows; G_k = (sum over batches of x^T x) / (total number of rows = images * tokens),
  kept as a running mean exactly as FusionBench does, in the model's dtype.
* alpha step (FusionBench's ``reduce_non_diagonal_ratio``): G~ = G * M with M_ii = 1,
  M_ij = alpha (i != j), i.e. G~ = alpha G + (1 - alpha) diag(G).
* Merged weight (HF layout [out, in]): W = ( (sum_k G~_k)^-1 sum_k G~_k W_k^T )^T, solved with
  ``torch.linalg.solve``. Raises ``SingularGramError`` when sum_k G~_k is not positive definite
  to working precision (smallest eigenvalue <= n * eps(dtype) * largest).
* RegMean: every other ``vision_model.*`` tensor (biases, LayerNorms, class / patch / position
  embeddings, pre_layrnorm, post_layernorm) is the plain mean of the K fine-tuned tensors;
  ``visual_projection.weight`` is kept from the pretrained model.
* RegMean++: merged = pretrained; embeddings.* and pre_layrnorm.* <- mean of the fine-tuned;
  X_k^0 = merged.pre_layrnorm(merged.embeddings(pixels_k)) per batch. For each encoder layer l:
  run fine-tuned model k's layer l on X_k^l (hooks give G_k for its six Linear layers), merge
  that layer (Linear weights as above, its biases and layer_norm1/2 by mean), load it into
  merged's layer l, and X_k^{l+1} = merged layer l (X_k^l). post_layernorm and
  visual_projection are kept from the pretrained model (FusionBench never merges them).
* Images: task k's pixels [N, C, H, W] are taken in order in batches of ``batch_size`` (last one
  may be short); batches are used until ``num_examples`` images are reached (FusionBench's check
  happens before each batch, so the count rounds up to whole batches); None = all.

Where this differs from FusionBench, and why:

* Inputs: FusionBench draws the images from each task's *train* split through a
  ``DataLoader(shuffle=True)`` (seed null by default, and RegMean++ draws a fresh shuffle), 256
  images in batches of 32; here the caller passes the (already normalised) pixels and their order.
* alpha: FusionBench builds M in float32 (so its off-diagonal factor is float32(alpha)); here M
  has the dtype of G (alpha exact in float64). Relative difference <= 6e-8.
* Solve: FusionBench forms ``torch.inverse(sum G~) @ sum(G~ W^T)``; here ``torch.linalg.solve``
  (same value up to round-off) plus the positive-definiteness check.
* ``visual_projection``: FusionBench merges ``CLIPVisionModel``s (no projection) and evaluates
  with the pretrained CLIP's projection, so the merged projection is the pretrained one; this is
  what both functions return for ``visual_projection.weight``.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.dont_write_bytecode = True

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

Tensors = Dict[str, torch.Tensor]

__all__ = [
    "SingularGramError",
    "LINEAR_KINDS",
    "load_model",
    "model_state",
    "batches_of",
    "reduce_non_diagonal",
    "regmean_weight",
    "merge_params",
    "GramCollector",
    "regmean_grams",
    "regmean",
    "regmean_plusplus",
    "regmean_models",
    "regmean_plusplus_models",
]

LINEAR_KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
LAYER_RE = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")


class SingularGramError(ValueError):
    """sum_k G~_k of a layer is not positive definite to working precision."""


# --------------------------------------------------------------------------- models


def load_model(model_dir, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A ``CLIPVisionModelWithProjection`` (sdpa attention) from ``model_dir``, in ``dtype``, eval, no grad."""
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(str(model_dir), attn_implementation="sdpa")
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def model_state(model: nn.Module) -> Tensors:
    """Every tensor of the model's state dict (names ``vision_model.*`` / ``visual_projection.*``), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def linear_modules(model: nn.Module) -> Dict[str, nn.Linear]:
    """The Linear modules of the encoder, by full name (``vision_model.encoder.layers.<l>.<kind>``)."""
    out = {f"vision_model.{n}": m for n, m in model.vision_model.named_modules() if isinstance(m, nn.Linear)}
    n_layers = len(model.vision_model.encoder.layers)
    expected = {f"vision_model.encoder.layers.{l}.{k}" for l in range(n_layers) for k in LINEAR_KINDS}
    if set(out) != expected:
        raise ValueError(f"unexpected Linear modules: {sorted(set(out) ^ expected)[:6]}")
    return out


def batches_of(pixels: torch.Tensor, batch_size: int, num_examples: Optional[int] = None) -> List[torch.Tensor]:
    """Consecutive batches of ``pixels`` [N, C, H, W]; FusionBench's stopping rule (count checked before each batch)."""
    if pixels.dim() != 4 or pixels.shape[0] == 0:
        raise ValueError(f"pixels must be [N>0, C, H, W], got {tuple(pixels.shape)}")
    out, seen = [], 0
    for b in pixels.split(batch_size):
        if num_examples is not None and seen >= num_examples:
            break
        out.append(b)
        seen += b.shape[0]
    return out


# --------------------------------------------------------------------------- grams and the solve


class GramCollector:
    """Forward hooks on Linear modules that keep G = sum x^T x / rows as FusionBench's running mean."""

    def __init__(self, modules: Dict[str, nn.Module]):
        self.grams: Tensors = {}
        self.rows: Dict[str, int] = {}
        self.images: Dict[str, int] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            n_img = x.shape[0]
            x = x.reshape(-1, x.shape[-1])  # [B*T, in]
            xtx = x.transpose(0, 1) @ x
            if name not in self.grams:
                self.grams[name] = xtx / x.shape[0]
                self.rows[name] = x.shape[0]
                self.images[name] = n_img
            else:
                n = self.rows[name]
                self.grams[name] = (self.grams[name] * n + xtx) / (n + x.shape[0])
                self.rows[name] = n + x.shape[0]
                self.images[name] += n_img

        return hook

    def remove(self) -> Tensors:
        for h in self.handles:
            h.remove()
        self.handles = []
        return self.grams


def reduce_non_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """G~ = G * M, M_ii = 1, M_ij = alpha: alpha G + (1 - alpha) diag(G)."""
    n = gram.shape[0]
    m = torch.full((n, n), alpha, dtype=gram.dtype, device=gram.device)
    m.fill_diagonal_(1.0)
    return gram * m


def regmean_weight(weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float, name: str = "") -> torch.Tensor:
    """W = ((sum G~_k)^-1 sum G~_k W_k^T)^T for HF weights W_k [out, in] and Grams G_k [in, in]."""
    if len(weights) != len(grams) or not weights:
        raise ValueError("need one Gram per weight, at least one")
    gts = [reduce_non_diagonal(g, alpha) for g in grams]
    a = sum(gts[1:], gts[0].clone())
    b = sum((g @ w.transpose(0, 1) for g, w in zip(gts[1:], weights[1:])), gts[0] @ weights[0].transpose(0, 1))
    a_sym = 0.5 * (a + a.transpose(0, 1))
    ev = torch.linalg.eigvalsh(a_sym)
    tol = a.shape[0] * torch.finfo(a.dtype).eps * float(ev.abs().max())
    if not bool(torch.isfinite(ev).all()) or float(ev.min()) <= tol:
        raise SingularGramError(
            f"{name or 'layer'}: sum of G~ is singular (eigenvalues {float(ev.min()):.3e} .. {float(ev.max()):.3e})"
        )
    return torch.linalg.solve(a, b).transpose(0, 1).contiguous()


def merge_params(param_lists: Dict[str, List[torch.Tensor]], gram_lists: Dict[str, List[torch.Tensor]], alpha: float) -> Tensors:
    """FusionBench's ``merging_with_regmean_weights``: ``<module>.weight`` with Grams by RegMean, the rest by mean."""
    out = {}
    for name, values in param_lists.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module is not None and module in gram_lists:
            out[name] = regmean_weight(values, gram_lists[module], alpha, module)
        else:
            out[name] = torch.stack(values, 0).mean(0)
    return out


# --------------------------------------------------------------------------- RegMean


@torch.no_grad()
def regmean_grams(model: nn.Module, pixels: torch.Tensor, batch_size: int, num_examples: Optional[int] = None,
                  projection: bool = False) -> Tensors:
    """Normalised input Grams {``vision_model.encoder.layers.<l>.<kind>``: [in, in]} of one task's model
    (and of ``visual_projection``, whose input is the pooled output, when ``projection``)."""
    modules = linear_modules(model)
    if projection:
        modules["visual_projection"] = model.visual_projection
    col = GramCollector(modules)
    try:
        for b in batches_of(pixels, batch_size, num_examples):
            model(pixel_values=b.to(next(model.parameters()).dtype))
    finally:
        grams = col.remove()
    return grams


@torch.no_grad()
def regmean_models(
    pretrained: nn.Module,
    finetuned: Sequence[nn.Module],
    pixels_per_task: Sequence[torch.Tensor],
    alpha: float,
    batch_size: int,
    num_examples: Optional[int] = None,
    return_grams: bool = False,
    merge_projection: bool = False,
):
    """RegMean over loaded models; returns every tensor of the merged state dict (and the Grams per task).

    ``merge_projection``: also merge ``visual_projection.weight`` by RegMean, with the Grams of its input
    (the pooled output); FusionBench's models have no projection, so it keeps the pretrained one."""
    if len(finetuned) != len(pixels_per_task) or not finetuned:
        raise ValueError("need one pixel tensor per fine-tuned model, at least one")
    merged = model_state(pretrained)
    states = [model_state(m) for m in finetuned]
    grams = [regmean_grams(m, p, batch_size, num_examples, merge_projection) for m, p in zip(finetuned, pixels_per_task)]
    names = [n for n in merged if n.startswith("vision_model.") or (merge_projection and n == "visual_projection.weight")]
    params = {n: [s[n] for s in states] for n in names}
    gram_lists = {mod: [g[mod] for g in grams] for mod in grams[0]}
    merged.update(merge_params(params, gram_lists, alpha))  # visual_projection.* stays pretrained
    return (merged, grams) if return_grams else merged


def regmean(pretrained_dir, finetuned_dirs, pixels_per_task, alpha: float, batch_size: int = 8,
            dtype: torch.dtype = torch.float64, num_examples: Optional[int] = None, return_grams: bool = False):
    """RegMean from checkpoint directories (float32 files converted to ``dtype``)."""
    pre = load_model(pretrained_dir, dtype)
    fts = [load_model(d, dtype) for d in finetuned_dirs]
    pixels = [p.to(dtype) for p in pixels_per_task]
    return regmean_models(pre, fts, pixels, alpha, batch_size, num_examples, return_grams)


# --------------------------------------------------------------------------- RegMean++


def _layer_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = layer(x, attention_mask=None)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def regmean_plusplus_models(
    pretrained: nn.Module,
    finetuned: Sequence[nn.Module],
    pixels_per_task: Sequence[torch.Tensor],
    alpha: float,
    batch_size: int,
    num_examples: Optional[int] = None,
    return_grams: bool = False,
    merge_projection: bool = False,
):
    """RegMean++ over loaded models (FusionBench's block-by-block flow); returns every tensor of the merged state dict.

    ``merge_projection``: also merge ``visual_projection.weight`` by RegMean, with the Grams of its input: the
    (pretrained) post_layernorm of the class token the merged last layer gives each task."""
    if len(finetuned) != len(pixels_per_task) or not finetuned:
        raise ValueError("need one pixel tensor per fine-tuned model, at least one")
    merged_model = copy.deepcopy(pretrained)
    states = [model_state(m) for m in finetuned]
    # 1. embeddings.* and pre_layrnorm.* <- mean of the fine-tuned models
    emb = {
        n: torch.stack([s[n] for s in states], 0).mean(0)
        for n in states[0]
        if n.startswith(("vision_model.embeddings", "vision_model.pre_layrnorm"))
    }
    unexpected = merged_model.load_state_dict(emb, strict=False).unexpected_keys
    if unexpected or not emb:
        raise KeyError(f"embedding merge: unexpected {unexpected}, {len(emb)} tensors")
    vm = merged_model.vision_model
    dtype = next(merged_model.parameters()).dtype
    # 1.1 first-layer input of every task, by the merged embeddings and pre_layrnorm
    xs = [
        [vm.pre_layrnorm(vm.embeddings(b.to(dtype))) for b in batches_of(p, batch_size, num_examples)]
        for p in pixels_per_task
    ]
    layers = vm.encoder.layers
    merged_params: Tensors = dict(emb)
    grams_per_task: List[Tensors] = [dict() for _ in finetuned]
    for l, merged_layer in enumerate(layers):
        prefix = f"vision_model.encoder.layers.{l}."
        param_lists: Dict[str, List[torch.Tensor]] = {}
        gram_lists: Dict[str, List[torch.Tensor]] = {}
        for k, ft in enumerate(finetuned):
            layer = ft.vision_model.encoder.layers[l]
            for n, v in layer.state_dict().items():
                param_lists.setdefault(n, []).append(v.detach().clone())
            col = GramCollector({n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)})
            try:
                for x in xs[k]:
                    _layer_forward(layer, x)
            finally:
                g = col.remove()
            if set(g) != set(LINEAR_KINDS):
                raise ValueError(f"layer {l}: unexpected Linear modules {sorted(g)}")
            for n, v in g.items():
                gram_lists.setdefault(n, []).append(v)
                grams_per_task[k][prefix + n] = v
        layer_params = merge_params(param_lists, gram_lists, alpha)
        merged_params.update({prefix + n: v for n, v in layer_params.items()})
        merged_layer.load_state_dict(layer_params, strict=True)
        # 2.3 next input of every task, by the merged layer (FusionBench skips it after the last layer)
        if l < len(layers) - 1 or merge_projection:
            xs = [[_layer_forward(merged_layer, x) for x in xk] for xk in xs]
    if merge_projection:
        weights = [s["visual_projection.weight"] for s in states]
        grams = []
        for k in range(len(finetuned)):
            pooled = torch.cat([vm.post_layernorm(x[:, 0, :]) for x in xs[k]], 0)
            grams.append(pooled.transpose(0, 1) @ pooled / pooled.shape[0])
            grams_per_task[k]["visual_projection"] = grams[-1]
        merged_params["visual_projection.weight"] = regmean_weight(weights, grams, alpha, "visual_projection")
    out = model_state(pretrained)  # post_layernorm.* (and visual_projection.* unless merged) stay pretrained
    for n, v in merged_params.items():
        if n not in out:
            raise KeyError(n)
        out[n] = v
    return (out, grams_per_task) if return_grams else out


def regmean_plusplus(pretrained_dir, finetuned_dirs, pixels_per_task, alpha: float, batch_size: int = 8,
                     dtype: torch.dtype = torch.float64, num_examples: Optional[int] = None, return_grams: bool = False):
    """RegMean++ from checkpoint directories (float32 files converted to ``dtype``)."""
    pre = load_model(pretrained_dir, dtype)
    fts = [load_model(d, dtype) for d in finetuned_dirs]
    pixels = [p.to(dtype) for p in pixels_per_task]
    return regmean_plusplus_models(pre, fts, pixels, alpha, batch_size, num_examples, return_grams)


# --------------------------------------------------------------------------- self-test


def _manual_layer(layer: nn.Module, x: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """A CLIP encoder layer written out by hand (float64 softmax), to check transformers' sdpa path."""
    ln = lambda t, m: torch.nn.functional.layer_norm(t, (t.shape[-1],), m.weight, m.bias, eps)  # noqa: E731
    a = layer.self_attn
    h = ln(x, layer.layer_norm1)
    b, t, d = h.shape
    split = lambda z: z.reshape(b, t, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(a.q_proj(h)), split(a.k_proj(h)), split(a.v_proj(h))
    att = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, -1) @ v
    x = x + a.out_proj(att.transpose(1, 2).reshape(b, t, d))
    h = ln(x, layer.layer_norm2)
    f = layer.mlp.fc1(h)
    return x + layer.mlp.fc2(f * torch.sigmoid(1.702 * f))


def self_test(repo: Path) -> None:
    fx = repo / "tests" / "fixtures" / "adamerging"
    torch.manual_seed(0)
    dt = torch.float64

    def close(a, b, tol, what):
        err = float((a - b).abs().max())
        if not err <= tol:
            raise AssertionError(f"{what}: max abs err {err:.3e} > {tol:.1e}")
        print(f"ok  {what}: max abs err {err:.1e}")

    # solver: one task gives its own weight; equal Grams give the mean; alpha = 0 gives a per-column weighted mean
    g1 = (lambda x: x.T @ x / 50)(torch.randn(50, 6, dtype=dt))
    g2 = (lambda x: x.T @ x / 40)(torch.randn(40, 6, dtype=dt) * 2 + 0.3)
    w1, w2 = torch.randn(4, 6, dtype=dt), torch.randn(4, 6, dtype=dt)
    close(regmean_weight([w1], [g1], 0.6), w1, 1e-12, "solver, one task")
    close(regmean_weight([w1, w2], [g1, g1], 0.6), (w1 + w2) / 2, 1e-12, "solver, equal Grams")
    d1, d2 = g1.diagonal(), g2.diagonal()
    close(regmean_weight([w1, w2], [g1, g2], 0.0), (w1 * d1 + w2 * d2) / (d1 + d2), 1e-12, "solver, alpha = 0")
    close(reduce_non_diagonal(g1, 0.6), 0.6 * g1 + 0.4 * torch.diag(d1), 1e-15, "alpha step")
    x = torch.randn(3, 6, dtype=dt)
    for gg, what in (([x.T @ x / 3], "rank-3 Gram"), ([torch.zeros(6, 6, dtype=dt)], "zero Gram")):
        try:
            regmean_weight([w1], gg, 1.0)
        except SingularGramError as e:
            print(f"ok  singular sum raises ({what}): {e}")
        else:
            raise AssertionError(f"{what}: no SingularGramError")

    pre = load_model(fx / "pretrained", dt)
    fa = load_model(fx / "finetuned" / "alpha", dt)
    fb = load_model(fx / "finetuned" / "beta", dt)
    pix = load_file(str(fx / "batches.safetensors"))
    pa = pix["alpha"][0:3].reshape(-1, 3, 8, 8).to(dt)
    pb = pix["beta"][0:3].reshape(-1, 3, 8, 8).to(dt)
    sa, sp = model_state(fa), model_state(pre)
    cfg = fa.config

    # transformers' sdpa layer in float64 = a hand-written layer
    vm = fa.vision_model
    h0 = vm.pre_layrnorm(vm.embeddings(pa[:8]))
    close(_layer_forward(vm.encoder.layers[0], h0), _manual_layer(vm.encoder.layers[0], h0, cfg.num_attention_heads,
          cfg.layer_norm_eps), 1e-12, "sdpa float64 layer = hand-written layer")

    # Gram normalisation: q_proj's input is layer_norm1's output; G = X^T X / (images * tokens)
    g = regmean_grams(fa, pa, 8)
    xs = torch.nn.functional.layer_norm(vm.pre_layrnorm(vm.embeddings(pa)), (cfg.hidden_size,),
                                        vm.encoder.layers[0].layer_norm1.weight, vm.encoder.layers[0].layer_norm1.bias,
                                        cfg.layer_norm_eps).reshape(-1, cfg.hidden_size)
    close(g["vision_model.encoder.layers.0.self_attn.q_proj"], xs.T @ xs / xs.shape[0], 1e-13, "Gram = X^T X / rows")
    close(g["vision_model.encoder.layers.0.self_attn.k_proj"], g["vision_model.encoder.layers.0.self_attn.q_proj"], 0.0,
          "q/k Grams equal")
    close(regmean_grams(fa, pa, 5)["vision_model.encoder.layers.1.mlp.fc2"], g["vision_model.encoder.layers.1.mlp.fc2"],
          1e-13, "Gram independent of batch size")

    # one task: its own model back (RegMean++: except post_layernorm / visual_projection, kept pretrained)
    for fn, keep in ((regmean_models, ("visual_projection.",)),
                     (regmean_plusplus_models, ("visual_projection.", "vision_model.post_layernorm."))):
        out = fn(pre, [fa], [pa], 0.6, 8)
        if set(out) != set(sp):
            raise AssertionError("state dict names differ")
        err = max(float((out[n] - (sp[n] if n.startswith(keep) else sa[n])).abs().max()) for n in out)
        close(torch.tensor(err), torch.tensor(0.0), 1e-10, f"{fn.__name__}, one task = its model")

    # identical Grams: the same model twice except the last fc2 (whose input does not depend on it) -> the mean
    fb2 = copy.deepcopy(fa)
    last = f"vision_model.encoder.layers.{cfg.num_hidden_layers - 1}.mlp.fc2"
    fb2.get_submodule(last).weight.copy_(fb.get_submodule(last).weight)
    for fn in (regmean_models, regmean_plusplus_models):
        out, grams = fn(pre, [fa, fb2], [pa, pa], 0.6, 8, return_grams=True)
        close(grams[0][last], grams[1][last], 1e-14, f"{fn.__name__}, equal Grams of {last}")
        close(out[last + ".weight"], (sa[last + ".weight"] + fb.get_submodule(last).weight) / 2, 1e-12,
              f"{fn.__name__}, equal Grams give the mean")

    # two different tasks: RegMean and RegMean++ both differ from the mean and from each other
    r = regmean_models(pre, [fa, fb], [pa, pb], 0.6, 8)
    rpp = regmean_plusplus_models(pre, [fa, fb], [pa, pb], 0.6, 8)
    n = "vision_model.encoder.layers.1.mlp.fc1.weight"
    mean = (sa[n] + model_state(fb)[n]) / 2
    for what, o in (("RegMean", r), ("RegMean++", rpp)):
        if float((o[n] - mean).abs().max()) < 1e-4:
            raise AssertionError(f"{what} equals the mean on {n}")
    if float((r[n] - rpp[n]).abs().max()) < 1e-6:
        raise AssertionError("RegMean equals RegMean++")
    print("ok  two tasks: RegMean, RegMean++ and the mean all differ")
    print("self-test passed")


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self-test", action="store_true", help="run the built-in checks on tests/fixtures/adamerging and exit")
    ap.add_argument("--pretrained", type=Path)
    ap.add_argument("--finetuned", action="append", default=[], help="NAME=DIR (task order = argument order)")
    ap.add_argument("--batches", type=Path, help="safetensors, one [S, NB, B, C, H, W] (or [N, C, H, W]) tensor per task name")
    ap.add_argument("--steps", type=int, default=None, help="use batches[task][0:steps] (flattened); default all")
    ap.add_argument("--alpha", type=float, default=0.95, help="reduce_non_diagonal_ratio (FusionBench CLIP default 0.95)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-examples", type=int, default=None, help="images per task (rounded up to whole batches); default all")
    ap.add_argument("--plusplus", action="store_true", help="RegMean++ instead of RegMean")
    ap.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
    ap.add_argument("--out", type=Path, default=None, help="write the merged state dict (safetensors) here")
    a = ap.parse_args(argv)

    if a.self_test:
        self_test(Path(__file__).resolve().parents[2])
        return
    if a.pretrained is None or not a.finetuned or a.batches is None:
        ap.error("--pretrained, --finetuned and --batches are required (or --self-test)")
    tasks, dirs = [], []
    for spec in a.finetuned:
        name, _, d = spec.partition("=")
        tasks.append(name)
        dirs.append(Path(d))
    bf = load_file(str(a.batches))
    pixels = []
    for t in tasks:
        p = bf[t] if a.steps is None else bf[t][0 : a.steps]
        pixels.append(p.reshape(-1, *p.shape[-3:]))
    dtype = torch.float32 if a.float32 else torch.float64
    fn = regmean_plusplus if a.plusplus else regmean
    merged = fn(a.pretrained, dirs, pixels, a.alpha, a.batch_size, dtype, a.num_examples)
    ft0 = model_state(load_model(dirs[0], dtype))
    for n, v in merged.items():
        if any(n.endswith(k + ".weight") for k in LINEAR_KINDS):
            print(f"{n}: max |merged - {tasks[0]}| = {float((v - ft0[n]).abs().max()):.4e}")
    if a.out:
        save_file({n: v.contiguous() for n, v in merged.items()}, str(a.out))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
