"""Independent PyTorch reference of AdaMerging / AdaMerging++ (Yang et al., ICLR 2024).

This module is the reference the Rust AdaMerging is checked against (through the
fixtures written by ``scripts/fixtures/make_adamerging_fixtures.py``). It is importable and
has a small CLI:

    python scripts/reference/reference_adamerging.py \\
        --pretrained tests/fixtures/adamerging/pretrained \\
        --finetuned alpha=tests/fixtures/adamerging/finetuned/alpha ... \\
        --heads tests/fixtures/adamerging/heads.safetensors \\
        --batches tests/fixtures/adamerging/batches.safetensors \\
        --granularity layer --steps 20 --lr 1e-2 --init 0.3 [--ties-k 0.2] [--no-clamp]

Needs torch, safetensors and transformers (5.x). Gradients are plain PyTorch
autograd: loss -> logits -> ``functional_call`` of the HF model on the merged
weights -> merged weights -> coefficients c = clamp(lambda, 0, 1) -> lambda.
No hand-written chain rule anywhere. Attention is transformers' "sdpa" (the
"eager" one computes its softmax in float32 even in a float64 model).

Definitions (all float32 unless ``dtype`` says otherwise):

* Merge scope: every tensor named ``vision_model.*`` or ``visual_projection.*``
  (names written by transformers 5 without the ``vision_model.`` prefix are read
  as prefixed). Task vectors tau_k = theta_k - theta_0 in float32.
* "paper" units: one unit per tensor, except that within an encoder layer the
  q/k/v projection weights form one unit ``...self_attn.in_proj.weight`` and the
  q/k/v biases one unit ``...self_attn.in_proj.bias``. Units are ordered by the
  first appearance of any of their tensors in the pretrained safetensors file
  (the header order, which for files written by ``safetensors`` is the data order).
* Granularity ``task``: lambda [K, 1] (one column applied to every unit);
  ``layer``: lambda [K, L].
* W_t = theta0_t + sum_k c[k, unit(t)] * tau_k,t (sum in task order), with
  c = torch.clamp(lambda, 0, 1) when clamping is on, else c = lambda.
* Logits_k = normalize(image_embeds) @ W_k^T (head already scaled).
* Loss of a step = sum_k sum_{b < batches_per_task} mean_batch(entropy), entropy
  H = -sum_c softmax * log_softmax. One backward per step; then one
  torch.optim.Adam step (betas 0.9/0.999, eps 1e-8, no weight decay).
* AdaMerging++ (``ties_k``): each tau_k is first replaced by its TIES-processed
  per-task vector: global top-k trim (threshold = (d - floor(d*k))-th smallest
  |x| over the whole flattened task vector, keep |x| >= threshold), elect
  gamma = sign(sum_k tau_hat_k) (exact zeros take sign(sum gamma) of the whole
  vector), keep tau_hat_k where tau_hat_k * gamma > 0.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.dont_write_bytecode = True

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.func import functional_call  # noqa: E402

Tensors = Dict[str, torch.Tensor]
Units = List[Tuple[str, List[str]]]

__all__ = [
    "safetensors_order",
    "load_checkpoint",
    "in_scope",
    "paper_units",
    "task_vectors",
    "ties_process",
    "AdaMerging",
    "run_case",
]

QKV = re.compile(r"^(.*\.self_attn\.)(q|k|v)_proj\.(weight|bias)$")


# --------------------------------------------------------------------------- loading


def _canonical(name: str) -> str:
    """transformers 5 may write vision tensors without the ``vision_model.`` prefix."""
    if name.startswith(("vision_model.", "visual_projection.")):
        return name
    if name.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")):
        return "vision_model." + name
    return name


def safetensors_order(path: Path) -> List[str]:
    """Tensor names of a .safetensors file in header order (by data offset), canonical names."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    return [_canonical(k) for k in names]


def in_scope(name: str) -> bool:
    return name.startswith(("vision_model.", "visual_projection."))


def load_checkpoint(model_dir: Path) -> Tuple[Tensors, List[str]]:
    """Merged-scope floating tensors of ``model_dir/model.safetensors`` as float32, plus their file order."""
    path = Path(model_dir) / "model.safetensors"
    raw = load_file(str(path))
    out = {}
    for k, v in raw.items():
        c = _canonical(k)
        if in_scope(c) and v.is_floating_point():
            out[c] = v.to(torch.float32)
    order = [n for n in safetensors_order(path) if n in out]
    return out, order


# --------------------------------------------------------------------------- units


def unit_of(name: str) -> str:
    m = QKV.match(name)
    if m:
        return f"{m.group(1)}in_proj.{m.group(3)}"
    return name


def paper_units(ordered_names: Sequence[str]) -> Units:
    """[(unit name, [tensor names])], units in order of first appearance of any member tensor.

    Members of an in_proj unit are listed q, k, v.
    """
    units: Dict[str, List[str]] = {}
    for n in ordered_names:
        units.setdefault(unit_of(n), []).append(n)

    def member_key(n: str):
        m = QKV.match(n)
        return "qkv".index(m.group(2)) if m else 0

    return [(u, sorted(ts, key=member_key)) for u, ts in units.items()]


# --------------------------------------------------------------------------- task vectors


def task_vectors(base: Tensors, finetuned: Sequence[Tensors]) -> List[Tensors]:
    for i, ft in enumerate(finetuned):
        if set(ft) != set(base):
            raise KeyError(f"checkpoint {i}: names differ from pretrained")
    return [{n: ft[n].to(torch.float32) - base[n].to(torch.float32) for n in base} for ft in finetuned]


def ties_process(taus: Sequence[Tensors], k: float) -> List[Tensors]:
    """AdaMerging++ per-task vectors: trim (global top-k), elect, keep agreeing entries (float32)."""
    names = sorted(taus[0])
    trimmed: List[Tensors] = []
    for tau in taus:
        flat = torch.cat([tau[n].reshape(-1).abs() for n in names])
        d = flat.numel()
        r = d - int(d * float(k))  # r-th smallest |x|, 1-based
        if r <= 0:
            trimmed.append({n: tau[n].clone() for n in names})
            continue
        thr = torch.kthvalue(flat, r).values
        trimmed.append({n: torch.where(tau[n].abs() >= thr, tau[n], torch.zeros_like(tau[n])) for n in names})
    gamma: Tensors = {}
    for n in names:
        s = trimmed[0][n].clone()
        for t in trimmed[1:]:
            s = s + t[n]
        gamma[n] = torch.sign(s)
    total = sum(float(gamma[n].to(torch.float64).sum()) for n in names)
    maj = float(torch.sign(torch.tensor(total)))
    for n in names:
        gamma[n] = torch.where(gamma[n] == 0, torch.full_like(gamma[n], maj), gamma[n])
    return [{n: torch.where(t[n] * gamma[n] > 0, t[n], torch.zeros_like(t[n])) for n in names} for t in trimmed]


# --------------------------------------------------------------------------- AdaMerging


class AdaMerging:
    """Holds the frozen model, theta_0, task vectors, units and heads; computes the loss of lambda."""

    def __init__(
        self,
        pretrained_dir: Path,
        finetuned_dirs: Sequence[Path],
        heads: Sequence[torch.Tensor],
        ties_k: Optional[float] = None,
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import CLIPVisionModelWithProjection

        self.dtype = dtype
        base, order = load_checkpoint(pretrained_dir)
        fts = [load_checkpoint(d)[0] for d in finetuned_dirs]
        taus = task_vectors(base, fts)  # float32
        if ties_k is not None:
            taus = ties_process(taus, ties_k)  # float32
        self.taus32 = taus
        self.order = order
        self.units = paper_units(order)
        self.unit_index = {t: i for i, (_, ts) in enumerate(self.units) for t in ts}
        self.base = {n: v.to(dtype) for n, v in base.items()}
        self.taus = [{n: v.to(dtype) for n, v in t.items()} for t in taus]
        self.heads = [h.to(dtype) for h in heads]
        # "sdpa", not "eager": transformers' eager CLIP attention takes its softmax in float32 even for a
        # float64 model, which breaks float64 finite-difference checks (noise ~1e-9 in the loss).
        model = CLIPVisionModelWithProjection.from_pretrained(str(pretrained_dir), attn_implementation="sdpa")
        model = model.to(dtype).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        missing = set(self.base) - {n for n, _ in model.named_parameters()}
        if missing:
            raise KeyError(f"model has no parameters {sorted(missing)[:5]}")
        self.model = model

    @property
    def num_tasks(self) -> int:
        return len(self.taus)

    @property
    def num_units(self) -> int:
        return len(self.units)

    def merged_params(self, lam: torch.Tensor, clamp: bool) -> Tensors:
        """W_t = theta0_t + sum_k c[k, unit(t)] tau_k,t; lam is [K, L] or [K, 1]."""
        c = torch.clamp(lam, 0.0, 1.0) if clamp else lam
        out = {}
        for n in self.order:
            col = self.unit_index[n] if c.shape[1] > 1 else 0
            w = self.base[n]
            for k in range(self.num_tasks):
                w = w + c[k, col] * self.taus[k][n]
            out[n] = w
        return out

    def loss(self, lam: torch.Tensor, clamp: bool, batches: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """batches[k] = list of pixel tensors [B, C, H, W] for task k (one entry per batch)."""
        params = self.merged_params(lam, clamp)
        total = lam.new_zeros(())
        for k, task_batches in enumerate(batches):
            for pixels in task_batches:
                emb = functional_call(self.model, params, (pixels.to(self.dtype),)).image_embeds
                logits = F.normalize(emb, dim=-1) @ self.heads[k].T
                ent = -(F.softmax(logits, dim=-1) * F.log_softmax(logits, dim=-1)).sum(dim=-1)
                total = total + ent.mean()
        return total

    def gradient(self, lam: torch.Tensor, clamp: bool, batches) -> Tuple[float, torch.Tensor]:
        lam = lam.detach().clone().to(self.dtype).requires_grad_(True)
        loss = self.loss(lam, clamp, batches)
        (g,) = torch.autograd.grad(loss, lam)
        return float(loss.detach()), g

    def learn(
        self,
        lambda_init: torch.Tensor,
        clamp: bool,
        step_batches,
        lr: float,
        steps: int,
    ) -> dict:
        """``step_batches(s)`` -> per-task list of batches for step s. Returns lambda history and losses."""
        lam = torch.nn.Parameter(lambda_init.detach().clone().to(self.dtype))
        opt = torch.optim.Adam([lam], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
        losses, history, grads = [], [lam.detach().clone()], []
        for s in range(steps):
            opt.zero_grad()
            loss = self.loss(lam, clamp, step_batches(s))
            loss.backward()
            losses.append(float(loss.detach()))
            grads.append(lam.grad.detach().clone())
            opt.step()
            history.append(lam.detach().clone())
        return {"lambda_final": lam.detach().clone(), "losses": losses, "history": history, "grads": grads}


def step_batches_from(batches: Dict[str, torch.Tensor], tasks: Sequence[str], batches_per_task: int):
    """batches[task] is [steps, batches, B, C, H, W]; step s uses batches[task][s, b] for b < batches_per_task."""

    def f(s: int):
        return [[batches[t][s, b] for b in range(batches_per_task)] for t in tasks]

    return f


def run_case(
    pretrained: Path,
    finetuned: Sequence[Path],
    heads: Sequence[torch.Tensor],
    batches: Dict[str, torch.Tensor],
    tasks: Sequence[str],
    granularity: str,
    clamp: bool,
    ties_k: Optional[float],
    batches_per_task: int,
    lr: float,
    steps: int,
    lambda_init: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> dict:
    am = AdaMerging(pretrained, finetuned, heads, ties_k=ties_k, dtype=dtype)
    expect = (len(tasks), 1 if granularity == "task" else am.num_units)
    if tuple(lambda_init.shape) != expect:
        raise ValueError(f"lambda_init shape {tuple(lambda_init.shape)} != {expect}")
    res = am.learn(lambda_init, clamp, step_batches_from(batches, tasks, batches_per_task), lr, steps)
    res["model"] = am
    return res


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", type=Path, required=True)
    ap.add_argument("--finetuned", action="append", required=True, help="NAME=DIR (task order = argument order)")
    ap.add_argument("--heads", type=Path, required=True, help="safetensors, one [C, P] tensor per task name")
    ap.add_argument("--batches", type=Path, required=True, help="safetensors, one [S, NB, B, C, H, W] tensor per task")
    ap.add_argument("--granularity", choices=["task", "layer"], default="layer")
    ap.add_argument("--no-clamp", action="store_true")
    ap.add_argument("--ties-k", type=float, default=None)
    ap.add_argument("--batches-per-task", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--init", type=float, default=0.3)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write lambda_final / losses JSON here")
    a = ap.parse_args(argv)

    torch.manual_seed(0)
    tasks, dirs = [], []
    for spec in a.finetuned:
        name, _, d = spec.partition("=")
        tasks.append(name)
        dirs.append(Path(d))
    head_file = load_file(str(a.heads))
    batch_file = load_file(str(a.batches))
    heads = [head_file[t] for t in tasks]
    dtype = torch.float64 if a.float64 else torch.float32
    am = AdaMerging(a.pretrained, dirs, heads, ties_k=a.ties_k, dtype=dtype)
    cols = 1 if a.granularity == "task" else am.num_units
    lam0 = torch.full((len(tasks), cols), a.init, dtype=torch.float32)
    res = am.learn(lam0, not a.no_clamp, step_batches_from(batch_file, tasks, a.batches_per_task), a.lr, a.steps)
    for s, l in enumerate(res["losses"]):
        print(f"step {s:3d} loss {l:.6f}")
    lf = res["lambda_final"]
    print(f"units {am.num_units}; max |lambda_final - lambda_init| = {float((lf - lam0.to(dtype)).abs().max()):.6f}")
    if a.out:
        a.out.write_text(
            json.dumps(
                {
                    "tasks": tasks,
                    "units": [{"name": u, "tensors": ts} for u, ts in am.units],
                    "lambda_final": lf.tolist(),
                    "losses": res["losses"],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
