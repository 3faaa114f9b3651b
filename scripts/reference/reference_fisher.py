"""Independent PyTorch reference of Fisher merging (Matena & Raffel, NeurIPS 2022) as FusionBench runs it on CLIP.

This module is the reference the Rust Fisher merging is checked against (through the fixtures
written by ``scripts/fixtures/make_fisher_fixtures.py``). It follows FusionBench
(tanganke/fusion_bench @ 54c9e8c9, ``fusion_bench/method/fisher_merging/{clip_fisher_merging,
fisher_merging}.py``; notes with line numbers in ``scripts/reference/fisher_fusionbench.md``), in
plain PyTorch autograd over transformers' ``CLIPVisionModelWithProjection`` ("sdpa" attention; the
"eager" one takes its softmax in float32 even in a float64 model). It is importable and has a small
CLI:

    python scripts/reference/reference_fisher.py --self-test
    python scripts/reference/reference_fisher.py \\
        --pretrained tests/fixtures/adamerging/pretrained \\
        --finetuned alpha=tests/fixtures/adamerging/finetuned/alpha ... \\
        --heads tests/fixtures/adamerging/heads.safetensors \\
        --batches tests/fixtures/adamerging/batches.safetensors --steps 3 \\
        [--estimator batch|exact|argmax] [--batch-size 8] [--seed 0] [--no-normalize] \\
        [--scaling 1,2,0.5] [--float32] [--out merged.safetensors]

Needs torch, safetensors and transformers (5.x); numpy for the CLI's uniforms. Definitions
(K fine-tuned models, every sum in task order; sg = stop-gradient):

* Logits of image x through task k's head H_k [C, P] (P = projection dim; the head is already
  multiplied by the logit scale): z = normalize(image_embeds(x)) @ H_k^T, with image_embeds =
  visual_projection(post_layernorm(CLS)) and normalize = divide each row by its L2 norm.
  p = softmax(z), log p = log_softmax(z). Fine-tuned model k runs on task k's images.
* Parameters: every parameter of the model (``model.named_parameters()``, the same names as the
  state dict: all ``vision_model.*`` tensors and ``visual_projection.weight``; 40 for the tiny
  fixture models, 200 for ViT-B/32). Each gets a Fisher of its own shape.
* ``fisher_batch`` (FusionBench's estimator): per batch B, L_B = sum_{x in B} sum_y sg(sqrt p(y|x))
  log p(y|x) (sqrt p detached, log_softmax keeps the graph; summed over classes and over the
  batch, not averaged); g_B = grad_theta L_B; F = (sum_B g_B**2) / N, N = number of images (not of
  batches). The square is per batch, so cross-example terms stay and F depends on the batch
  size. Labels of the data are never used.
* ``fisher_exact`` (the Monte-Carlo diagonal Fisher, one sample per image): per image x_i (its
  own forward and backward, batch of one): p = softmax(z(x_i)); y_i = the first class j with
  u_i < cumsum(p)[j] (cumsum in float64; the last class when none), u_i = uniforms[i];
  g_i = grad_theta log p(y_i|x_i); F = (sum_i g_i**2) / N.
* ``fisher_argmax``: the same with y_i = argmax_j p_j (first maximum); only to show that a fixture
  tells the estimators apart.
* ``fisher_merge`` (FusionBench's ``merging_with_fisher_weights``, fisher_merging.py l.110-189):
  F~_k = F_k + eps (eps = ``minimal_fisher_weight``, 1e-6); c_k = scaling_k (default 1/K);
  if ``normalize``: n_k = 1/(||F_k|| + eps) with ||F_k|| the L2 norm of *all* of model k's Fisher
  entries (every tensor, without eps), c_k *= n_k / sum_j n_j; per element
  theta = sum_k c_k F~_k theta_k / sum_k c_k F~_k. Every tensor with a Fisher is merged.
* Images: the caller passes the (already normalised) pixels and their batches; ``batches_of``
  applies FusionBench's count (checked before each batch, so it rounds up to whole batches).

Where this differs from FusionBench, and why:

* FusionBench merges ``CLIPVisionModel``s: the projection is the *pretrained* CLIP's, frozen and
  not merged, and every fine-tune is evaluated through it. adamerge's fine-tunes each carry their
  own ``visual_projection``, so here it is part of the model: it gets a Fisher and is merged like
  every other tensor (40 of 40). Its Fisher also feeds ||F_k|| (FusionBench's norm is over the
  vision tower only).
* Heads: FusionBench builds them from the pretrained CLIP's text tower (zero-shot templates) times
  exp(logit_scale) = 100; here the caller passes them, already scaled.
* Dtypes: FusionBench runs in float32 with float32 coefficients; here everything (coefficients
  included) has the dtype of the Fishers / model (float64 for the fixtures).
* FusionBench keeps one dict of squared gradients per batch and sums them at the end; here a
  running sum in batch order (the same additions, in the same order).
* ``fisher_exact`` / ``fisher_argmax`` are not in FusionBench (its estimator is ``fisher_batch``);
  they are the estimator of Matena & Raffel's paper (expected Fisher by one sampled label per
  example), with the draw made explicit through ``uniforms`` so that two implementations agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.dont_write_bytecode = True

import torch  # noqa: E402
import torch.nn.functional as tf  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

Tensors = Dict[str, torch.Tensor]

__all__ = [
    "MINIMAL_FISHER_WEIGHT",
    "load_model",
    "model_state",
    "batches_of",
    "logits",
    "probabilities",
    "sample_label",
    "fisher_batch",
    "fisher_exact",
    "fisher_argmax",
    "fisher_norm",
    "fisher_merge",
]

MINIMAL_FISHER_WEIGHT = 1e-6  # FusionBench's clip_fisher_merging.yaml


# --------------------------------------------------------------------------- models and inputs


def load_model(model_dir, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A ``CLIPVisionModelWithProjection`` (sdpa attention) from ``model_dir``, in ``dtype``, eval mode,
    every parameter requiring a gradient."""
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(str(model_dir), attn_implementation="sdpa")
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def model_state(model: nn.Module) -> Tensors:
    """Every tensor of the model's state dict, detached and cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _params(model: nn.Module) -> Tuple[List[str], List[torch.Tensor]]:
    named = [(n, p) for n, p in model.named_parameters()]
    state = set(model.state_dict())
    if {n for n, _ in named} != state:
        raise ValueError(f"parameters and state dict differ: {sorted({n for n, _ in named} ^ state)[:6]}")
    return [n for n, _ in named], [p for _, p in named]


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


def logits(model: nn.Module, head: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """[B, C] = normalize(image_embeds) @ head^T (head [C, P] already scaled by the logit scale)."""
    dtype = next(model.parameters()).dtype
    emb = model(pixel_values=pixels.to(dtype)).image_embeds
    emb = emb / emb.norm(dim=-1, keepdim=True)
    return emb @ head.to(dtype).transpose(0, 1)


@torch.no_grad()
def probabilities(model: nn.Module, head: torch.Tensor, images: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """softmax(logits) [N, C] of every image; batch of one each when ``batch_size`` is None (as ``fisher_exact``)."""
    parts = images.split(batch_size or 1)
    return torch.cat([torch.softmax(logits(model, head, b), dim=-1) for b in parts], 0)


def sample_label(p: torch.Tensor, u: float) -> int:
    """The first class j with u < cumsum(p)[j] (cumsum in float64); the last class if none."""
    c = torch.cumsum(p.detach().to(torch.float64).reshape(-1), 0)
    hit = torch.nonzero(float(u) < c)
    return int(hit[0, 0]) if hit.numel() else int(c.numel() - 1)


# --------------------------------------------------------------------------- estimators


def _add_squares(acc: Optional[List[torch.Tensor]], grads: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """acc + g**2 per tensor (in place after the first; the same roundings as acc + g**2)."""
    if acc is None:
        return [g.detach() ** 2 for g in grads]
    for a, g in zip(acc, grads):
        a.add_(g.detach().square())
    return acc


def fisher_batch(model: nn.Module, head: torch.Tensor, batches: Sequence[torch.Tensor]) -> Tensors:
    """FusionBench's estimator: F = sum_B (grad sum_{x in B} sum_y sg(sqrt p) log p)**2 / N (N images)."""
    names, params = _params(model)
    acc, n = None, 0
    for b in batches:
        z = logits(model, head, b)
        p = torch.softmax(z, dim=-1).detach()
        loss = (torch.sqrt(p) * torch.log_softmax(z, dim=-1)).sum(dim=-1).sum(dim=0)
        grads = torch.autograd.grad(loss, params)
        acc = _add_squares(acc, grads)
        n += b.shape[0]
    if acc is None:
        raise ValueError("no batches")
    return {name: a / n for name, a in zip(names, acc)}


def _fisher_per_image(model: nn.Module, head: torch.Tensor, images: torch.Tensor, pick) -> Tuple[Tensors, List[int]]:
    names, params = _params(model)
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be [N>0, C, H, W], got {tuple(images.shape)}")
    acc, labels = None, []
    for i in range(images.shape[0]):
        logp = torch.log_softmax(logits(model, head, images[i : i + 1]), dim=-1)[0]
        y = pick(i, torch.exp(logp.detach()))
        labels.append(y)
        grads = torch.autograd.grad(logp[y], params)
        acc = _add_squares(acc, grads)
    n = images.shape[0]
    return {name: a / n for name, a in zip(names, acc)}, labels


def fisher_exact(model: nn.Module, head: torch.Tensor, images: torch.Tensor, uniforms: Sequence[float],
                 return_labels: bool = False):
    """F = (1/N) sum_i (grad log p(y_i|x_i))**2, y_i drawn from p(.|x_i) by ``uniforms[i]`` (see ``sample_label``)."""
    if len(uniforms) != images.shape[0]:
        raise ValueError(f"{len(uniforms)} uniforms for {images.shape[0]} images")
    f, labels = _fisher_per_image(model, head, images, lambda i, p: sample_label(p, float(uniforms[i])))
    return (f, labels) if return_labels else f


def fisher_exact_vmap(model: nn.Module, head: torch.Tensor, images: torch.Tensor, uniforms: Sequence[float],
                      chunk_size: int = 8) -> Tensors:
    """``fisher_exact`` with the per-image gradients batched by ``torch.func`` (vmap of grad over the
    images, ``chunk_size`` at a time): the same estimate, PyTorch's own way to batch it. The labels come
    from one batched forward (``fisher_exact`` takes them from each image's own, equal up to rounding)."""
    from torch.func import functional_call, grad, vmap

    if len(uniforms) != images.shape[0]:
        raise ValueError(f"{len(uniforms)} uniforms for {images.shape[0]} images")
    names, params = _params(model)
    dtype = params[0].dtype
    with torch.no_grad():
        p = torch.softmax(logits(model, head, images), dim=-1)
    labels = torch.tensor([sample_label(p[i], float(u)) for i, u in enumerate(uniforms)])
    detached = {n: t.detach() for n, t in zip(names, params)}
    h = head.to(dtype).transpose(0, 1)

    def log_p(theta, x, y):
        emb = functional_call(model, theta, (), {"pixel_values": x.unsqueeze(0).to(dtype)}).image_embeds
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return torch.log_softmax(emb @ h, dim=-1)[0].gather(0, y.reshape(1))[0]

    per_image = vmap(grad(log_p), in_dims=(None, 0, 0), chunk_size=chunk_size)(detached, images, labels)
    n = images.shape[0]
    return {name: (per_image[name] ** 2).sum(0) / n for name in names}


def fisher_argmax(model: nn.Module, head: torch.Tensor, images: torch.Tensor, return_labels: bool = False):
    """F = (1/N) sum_i (grad log p(y_i|x_i))**2 with y_i = argmax p(.|x_i)."""
    f, labels = _fisher_per_image(model, head, images, lambda i, p: int(torch.argmax(p)))
    return (f, labels) if return_labels else f


# --------------------------------------------------------------------------- merge


def fisher_norm(fisher: Tensors) -> torch.Tensor:
    """||F||: FusionBench's get_models_fisher_norm for one model: the L2 norm of the per-tensor L2 norms."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in fisher.values()]))


def fisher_merge(models: Sequence[Tensors], fishers: Sequence[Tensors], scaling: Optional[Sequence[float]] = None,
                 normalize: bool = True, eps: float = MINIMAL_FISHER_WEIGHT) -> Tensors:
    """FusionBench's merging_with_fisher_weights: theta = sum_k c_k (F_k + eps) theta_k / sum_k c_k (F_k + eps)
    per element; c_k = scaling_k (default 1/K), times (1/(||F_k|| + eps)) / sum_j (1/(||F_j|| + eps)) when
    ``normalize``. Returns every tensor that has a Fisher (names of ``fishers[0]``)."""
    k = len(models)
    if k == 0 or len(fishers) != k:
        raise ValueError("need one Fisher per model, at least one")
    names = list(fishers[0])
    for f, m in zip(fishers, models):
        if list(f) != names or any(n not in m for n in names):
            raise KeyError("every model and Fisher must have the same tensor names")
    dtype = fishers[0][names[0]].dtype
    coef = torch.full((k,), 1.0 / k, dtype=dtype) if scaling is None else torch.tensor(list(scaling), dtype=dtype)
    if coef.shape != (k,):
        raise ValueError(f"{coef.numel()} scaling coefficients for {k} models")
    if normalize:
        norms = torch.stack([fisher_norm(f) for f in fishers]).to(dtype)
        inv = 1.0 / (norms + eps)
        coef = coef * (inv / inv.sum())
    out = {}
    for n in names:
        fk = torch.stack([f[n] for f in fishers], 0) + eps
        theta = torch.stack([m[n].to(dtype) for m in models], 0)
        c = coef.reshape(-1, *([1] * (fk.dim() - 1)))
        out[n] = (c * fk * theta).sum(dim=0) / (c * fk).sum(dim=0)
    return out


# --------------------------------------------------------------------------- self-test


def self_test(repo: Path) -> None:
    fx = repo / "tests" / "fixtures" / "adamerging"
    dt = torch.float64
    torch.manual_seed(0)

    def close(a, b, tol, what):
        a, b = torch.as_tensor(a, dtype=dt), torch.as_tensor(b, dtype=dt)
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
        if not err <= tol:
            raise AssertionError(f"{what}: max rel err {err:.3e} > {tol:.1e}")
        print(f"ok  {what}: max rel err {err:.1e}")

    # sample_label
    p = torch.tensor([0.2, 0.5, 0.3], dtype=dt)
    assert [sample_label(p, u) for u in (0.0, 0.19, 0.2, 0.69, 0.7, 0.99, 1.0)] == [0, 0, 1, 1, 2, 2, 2]
    print("ok  sample_label: first j with u < cumsum(p)[j], last class when none")

    # merge: one model gives itself; equal Fishers give the scaled mean; normalisation by the global norm
    a = {"w": torch.randn(3, 4, dtype=dt), "b": torch.randn(5, dtype=dt)}
    b = {"w": torch.randn(3, 4, dtype=dt), "b": torch.randn(5, dtype=dt)}
    fa = {"w": torch.rand(3, 4, dtype=dt), "b": torch.rand(5, dtype=dt)}
    fb = {"w": torch.rand(3, 4, dtype=dt) * 3, "b": torch.rand(5, dtype=dt) * 3}
    close(fisher_merge([a], [fa])["w"], a["w"], 1e-15, "merge, one model")
    m = fisher_merge([a, b], [fa, fa], scaling=[1.0, 3.0], normalize=False)
    close(m["w"], (a["w"] + 3 * b["w"]) / 4, 1e-15, "merge, equal Fishers, scaling 1:3")
    na, nb = float(fisher_norm(fa)), float(fisher_norm(fb))
    close(na, torch.cat([fa["w"].reshape(-1), fa["b"]]).norm(), 1e-15, "global Fisher norm")
    m = fisher_merge([a, b], [fa, fb])
    ca, cb = 1 / (na + 1e-6), 1 / (nb + 1e-6)
    want = (ca * (fa["b"] + 1e-6) * a["b"] + cb * (fb["b"] + 1e-6) * b["b"]) / (ca * (fa["b"] + 1e-6) + cb * (fb["b"] + 1e-6))
    close(m["b"], want, 1e-14, "merge, normalised by 1/(||F_k|| + eps)")
    zero = {"w": torch.zeros(3, 4, dtype=dt), "b": torch.zeros(5, dtype=dt)}
    close(fisher_merge([a, b], [zero, zero], normalize=False)["b"], (a["b"] + b["b"]) / 2, 1e-15,
          "merge, zero Fishers: eps gives the mean")

    # estimators on the tiny fixture models
    model = load_model(fx / "finetuned" / "alpha", dt)
    head = load_file(str(fx / "heads.safetensors"))["alpha"].to(dt)
    pix = load_file(str(fx / "batches.safetensors"))["alpha"][0:1].reshape(-1, 3, 8, 8).to(dt)  # 8 images
    names, params = _params(model)
    print(f"ok  {len(names)} parameters, all in the state dict")

    # batch estimator: the gradient of L_B at the logits is sqrt p - p * sum sqrt p (notes, "Derived")
    z = logits(model, head, pix).detach().requires_grad_(True)
    pz = torch.softmax(z, -1).detach()
    (gz,) = torch.autograd.grad((torch.sqrt(pz) * torch.log_softmax(z, -1)).sum(), z)
    close(gz, torch.sqrt(pz) - pz * torch.sqrt(pz).sum(-1, keepdim=True), 1e-14, "dL_B/dz = sqrt p - p sum sqrt p")

    # F of two batches = (g_1^2 + g_2^2) / N, each g from its own batch
    f2 = fisher_batch(model, head, batches_of(pix, 4))
    f1a = fisher_batch(model, head, [pix[:4]])
    f1b = fisher_batch(model, head, [pix[4:]])
    n = "vision_model.encoder.layers.0.mlp.fc1.weight"
    close(f2[n], (f1a[n] * 4 + f1b[n] * 4) / 8, 1e-14, "batch Fisher: per-batch squares summed, / images")
    f8 = fisher_batch(model, head, [pix])
    d = float((f8[n] - f2[n]).abs().max() / f2[n].abs().max())
    assert d > 1e-3, "batch size does not matter?"
    print(f"ok  batch Fisher depends on the batch size (8 vs 4: rel diff {d:.2e})")

    # exact estimator = mean of per-image squared gradients of log p(y_i)
    u = torch.rand(8, dtype=dt).tolist()
    fe, labels = fisher_exact(model, head, pix, u, return_labels=True)
    probs = probabilities(model, head, pix)
    assert labels == [sample_label(probs[i], u[i]) for i in range(8)]
    sq = 0
    for i in range(8):
        (g,) = torch.autograd.grad(torch.log_softmax(logits(model, head, pix[i:i + 1]), -1)[0, labels[i]],
                                   model.get_parameter(n))
        sq = sq + g ** 2
    close(fe[n], sq / 8, 1e-14, "exact Fisher = mean of (grad log p(y_i|x_i))^2")
    fv = fisher_exact_vmap(model, head, pix, u, chunk_size=3)
    close(fv[n], fe[n], 1e-12, "exact Fisher through torch.func's vmap = the per-image loop")
    fam, am = fisher_argmax(model, head, pix, return_labels=True)
    assert am == probs.argmax(-1).tolist()
    print(f"ok  argmax labels {am}, sampled {labels}")
    print("self-test passed")


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self-test", action="store_true", help="run the built-in checks on tests/fixtures/adamerging and exit")
    ap.add_argument("--pretrained", type=Path, help="only for the names and a comparison; every tensor is merged")
    ap.add_argument("--finetuned", action="append", default=[], help="NAME=DIR (task order = argument order)")
    ap.add_argument("--heads", type=Path, help="safetensors, one [C, P] tensor per task name (already scaled)")
    ap.add_argument("--batches", type=Path, help="safetensors, one [S, NB, B, C, H, W] (or [N, C, H, W]) tensor per task name")
    ap.add_argument("--steps", type=int, default=None, help="use batches[task][0:steps] (flattened); default all")
    ap.add_argument("--estimator", choices=("batch", "exact", "argmax"), default="batch")
    ap.add_argument("--batch-size", type=int, default=8, help="batch estimator's batch size")
    ap.add_argument("--num-examples", type=int, default=None, help="images per task (rounded up to whole batches); default all")
    ap.add_argument("--seed", type=int, default=0, help="exact estimator: uniforms from numpy default_rng([seed, task index])")
    ap.add_argument("--scaling", default=None, help="comma-separated per-task coefficients (default 1/K each)")
    ap.add_argument("--no-normalize", action="store_true", help="do not divide by the global Fisher norms")
    ap.add_argument("--eps", type=float, default=MINIMAL_FISHER_WEIGHT)
    ap.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
    ap.add_argument("--out", type=Path, default=None, help="write the merged state dict (safetensors) here")
    a = ap.parse_args(argv)

    if a.self_test:
        self_test(Path(__file__).resolve().parents[2])
        return
    if not a.finetuned or a.heads is None or a.batches is None:
        ap.error("--finetuned, --heads and --batches are required (or --self-test)")
    import numpy as np

    dtype = torch.float32 if a.float32 else torch.float64
    bf, hf = load_file(str(a.batches)), load_file(str(a.heads))
    states, fishers = [], []
    for k, spec in enumerate(a.finetuned):
        name, _, d = spec.partition("=")
        model = load_model(Path(d), dtype)
        p = bf[name] if a.steps is None else bf[name][0 : a.steps]
        batches = batches_of(p.reshape(-1, *p.shape[-3:]).to(dtype), a.batch_size, a.num_examples)
        images = torch.cat(batches, 0)
        head = hf[name].to(dtype)
        if a.estimator == "batch":
            f = fisher_batch(model, head, batches)
        elif a.estimator == "exact":
            u = np.random.default_rng([a.seed, k]).random(images.shape[0])
            f, labels = fisher_exact(model, head, images, u.tolist(), return_labels=True)
            print(f"{name}: labels {labels}")
        else:
            f = fisher_argmax(model, head, images)
        print(f"{name}: {images.shape[0]} images, ||F|| = {float(fisher_norm(f)):.6e}")
        states.append(model_state(model))
        fishers.append(f)
    scaling = None if a.scaling is None else [float(x) for x in a.scaling.split(",")]
    merged = fisher_merge(states, fishers, scaling, not a.no_normalize, a.eps)
    mean = {n: torch.stack([s[n] for s in states]).mean(0) for n in merged}
    worst = max(((float((merged[n] - mean[n]).abs().max()), n) for n in merged))
    print(f"max |merged - plain mean| = {worst[0]:.4e} ({worst[1]})")
    if a.out:
        save_file({n: v.contiguous() for n, v in merged.items()}, str(a.out))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
