"""Independent PyTorch reference of the spectral merges TSV-M, Iso-C and Iso-CTS.

This module is the reference the Rust spectral merges are checked against (through the fixtures
written by ``scripts/fixtures/make_spectral_fixtures.py``). It follows FusionBench
(tanganke/fusion_bench @ 54c9e8c9: ``method/task_singular_vector/utils/TSVM_utils.py::
compute_and_sum_svd_mem_reduction`` for TSV-M, ``method/isotropic_merging/iso_utils.py::{iso_c,
iso_cts}`` for Iso-C / Iso-CTS; notes with line numbers in ``scripts/reference/spectral_fusionbench.md``)
with one deliberate difference, the drop rule below. It is importable and has a small CLI:

    python scripts/reference/reference_spectral.py --self-test
    python scripts/reference/reference_spectral.py \\
        --pretrained tests/fixtures/adamerging/pretrained \\
        --finetuned alpha=tests/fixtures/adamerging/finetuned/alpha ... \\
        --method tsv-m|iso-c|iso-cts [--alpha 1.0] [--qkv fused|split] [--common-fraction 0.8] \\
        [--float32] [--fusionbench] --out merged.safetensors

Needs torch and safetensors. Definitions (K fine-tuned models θ_k, task order as given; θ₀ the
pretrained model; every SVD thin, ``torch.linalg.svd(full_matrices=False)``, singular values
descending; float64 unless told otherwise):

* **Task vectors** τ_k = θ_k − θ₀, subtracted in the checkpoints' float32, then converted to the
  computation dtype (float64). Merged tensors: every floating tensor of the pretrained checkpoint,
  in its order.
* **Matrix units.** Every 2-D tensor is one unit with task matrices M_k (m×n), r = min(m, n). With
  ``qkv="fused"`` (the default) the three [d, d] ``vision_model.encoder.layers.{l}.self_attn.
  {q,k,v}_proj.weight`` of a block form ONE unit M = cat([q, k, v], 0) [3d, d] (open_clip's
  ``in_proj_weight``, the authors' layout); its merged [3d, d] update is split back into rows
  0..d → q, d..2d → k, 2d..3d → v. With ``qkv="split"`` each is its own unit (FusionBench's HF layout).
  Every other tensor (biases, layer norms, ``class_embedding``, the 4-D ``patch_embedding``) gets
  Δ = Σ_k τ_k / K.
* **Drop rule** (the one difference from FusionBench). A singular component with s_i ≤ tol is
  zero up to round-off, and its singular vectors are arbitrary (they depend on the SVD routine).
  Its DIRECTIONS are dropped from every stack and sum; its singular VALUE (≈ 0) still counts
  wherever a mean of singular values is taken. tol = max(m, n) · ε · ‖A‖_F, ε = the dtype's machine
  epsilon (2.220446049250313e-16 in float64), A = the matrix whose SVD it is, except for the
  residual SVDs of Iso-CTS, where A = that task's M_k. Component i is kept iff s_i > tol.
* **polar(X)** (X m×p, p ≤ m): u, _, vh = svd(X); polar(X) = u @ vh, the nearest matrix with
  orthonormal columns (= X (XᵀX)^(-1/2) when X has full column rank).
* **TSV-M**: k = int(r * (1.0 / K)). Per task, u, s, vh = svd(M_k); its first k components, those
  kept. X = [kept u's of every task, task order] (m×p), Y = [their v's] (n×p), S = their singular
  values. Δ = polar(X) @ diag(S) @ polar(Y)ᵀ (0 when p = 0).
* **Iso-C**: W = Σ_k M_k; u, s, vh = svd(W); σ̄ = mean of all r singular values (dropped included);
  Δ = σ̄ · Σ_{i kept} u_i v_iᵀ (no polar step; 0 when W = 0).
* **Iso-CTS** (common fraction f, default 0.8): W = Σ_k M_k; c0 = int(r * f);
  ts = round((r − c0) / K) * K with Python's round (ties to even); c = r − ts; n = int((r − c) / K).
  u, s, vh = svd(W); Uc, Vc = the kept ones among its first c components. Per task:
  R_k = M_k − Uc @ Ucᵀ @ M_k (output side only); ur, sr, vhr = svd(R_k); its first n components,
  those kept (tol from M_k). U = [task u's (task order)..., Uc] (m×p), V = [task v's..., Vc] (n×p).
  S̄ = (Σ_k Σ_{i<n} sr_{k,i} + Σ_{i<c} s_i) / r (all of them, dropped included: the mean of
  FusionBench's length-r S). Δ = S̄ · polar(U) @ polar(V)ᵀ (0 when p = 0).
* **Merge**: θ = θ₀ + α · Δ for every merged tensor (α scales the non-2-D means too, as in
  FusionBench), computed in the computation dtype (θ₀ converted to it); the CLI stores float32.

Where this differs from FusionBench, and why:

* The drop rule. FusionBench keeps every component: in TSV-M a round-off component's arbitrary
  u/v enter the polar factors of the stacks and so rotate every other task's directions (its s ≈ 0
  only removes its own term); in Iso-C / Iso-CTS it is weighted by the mean singular value like
  any other. On a rank-deficient task matrix (LoRA-like, or a tensor a fine-tune left untouched but
  for a few rows) FusionBench's output therefore depends on the SVD routine (LAPACK vs cuSOLVER,
  the matrix's orientation). With the rule the output is a function of the matrices alone; where
  nothing is dropped (every s_i > tol, the case of full fine-tunes) both are the same up to
  round-off (checked by ``--self-test`` against the literal ports ``fusionbench_*`` below).
* FusionBench pads its stacks to r columns with zeros (TSV-M when K does not divide r) and takes
  the polar factor of the padded matrix; the zero columns only meet zero singular values, so the
  kept-only stack here gives the same Δ.
* The fused q/k/v layout is the authors' (open_clip); FusionBench's HF models only have the split
  one. ``visual_projection.weight`` (adamerge's fine-tunes carry their own) is a 2-D unit like any
  other; FusionBench's ``CLIPVisionModel``s have none.
* Non-2-D tensors: Σ τ_k / K here, FusionBench's running mean m += (τ_k − m)/(k+1) (same value up to
  round-off). Iso-C's sum: Σ τ_k here, FusionBench's (Σ τ_k / K)·K.
* Dtype: float64 here (FusionBench runs the checkpoints' float32, on the GPU when there is one).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.dont_write_bytecode = True

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

Tensors = Dict[str, torch.Tensor]

__all__ = [
    "METHODS",
    "EPS64",
    "tsv_rank",
    "iso_cts_ranks",
    "tolerance",
    "polar",
    "Stats",
    "tsv_m",
    "iso_c",
    "iso_cts",
    "fusionbench_tsv_m",
    "fusionbench_iso_c",
    "fusionbench_iso_cts",
    "plan_units",
    "task_vectors",
    "merge",
    "load_checkpoint",
]

METHODS = ("tsv-m", "iso-c", "iso-cts")
EPS64 = 2.220446049250313e-16  # torch.finfo(torch.float64).eps
QKV = re.compile(r"^(vision_model\.encoder\.layers\.\d+\.self_attn\.)([qkv])_proj\.weight$")


# --------------------------------------------------------------------------- ranks, tolerance, polar


def tsv_rank(r: int, k_tasks: int) -> int:
    """TSV-M's per-task rank: int(r * (1.0 / K)) (FusionBench's exact float expression)."""
    return int(r * (1.0 / k_tasks))


def iso_cts_ranks(r: int, k_tasks: int, fraction: float) -> Tuple[int, int]:
    """Iso-CTS's (common rank c, per-task rank n); Python's round, ties to even."""
    c0 = int(r * fraction)
    ts_total = round((r - c0) / k_tasks) * k_tasks
    c = r - ts_total
    if c < 0:
        raise ValueError(f"Iso-CTS: r = {r}, K = {k_tasks}, fraction {fraction} give a negative common rank {c}")
    return c, int((r - c) / k_tasks)


def tolerance(a: torch.Tensor, eps: Optional[float] = None) -> float:
    """max(m, n) · ε · ‖a‖_F (ε = the dtype's machine epsilon unless given)."""
    if eps is None:
        eps = torch.finfo(a.dtype).eps
    return max(a.shape) * eps * float(torch.linalg.vector_norm(a))


def _svd(a: torch.Tensor):
    return torch.linalg.svd(a, full_matrices=False)


def polar(x: torch.Tensor) -> torch.Tensor:
    """u @ vh of the thin SVD of x (m×p, p ≤ m): the orthonormal-column polar factor."""
    u, _, vh = _svd(x)
    return u @ vh


class Stats:
    """Drop decisions of one unit: counts and the margins s/tol on both sides of the threshold."""

    def __init__(self) -> None:
        self.dropped: Dict[str, int] = {}
        self.considered: Dict[str, int] = {}
        self.max_dropped = 0.0  # largest s/tol among dropped components (< 1 … well below)
        self.min_kept = float("inf")  # smallest s/tol among kept ones (> 1 … well above)
        self.min_gap = float("inf")  # smallest (s_{k-1} − s_k) / s_{k-1} at a truncation k with s_{k-1} kept
        self.min_stack = float("inf")  # smallest σ_min/σ_max of a stack whose polar factor is taken

    def gap(self, s: torch.Tensor, k: int, tol: float) -> None:
        """Conditioning only: how distinct the last kept singular value is from the first one cut."""
        if 0 < k < s.numel() and float(s[k - 1]) > tol:
            self.min_gap = min(self.min_gap, float((s[k - 1] - s[k]) / s[k - 1]))

    def stack(self, x: torch.Tensor) -> None:
        """Conditioning only: the polar factor of x is unique and stable when this is not small."""
        if x.shape[1]:
            sv = torch.linalg.svdvals(x)
            self.min_stack = min(self.min_stack, float(sv[-1] / sv[0]))

    def keep(self, where: str, s: torch.Tensor, tol: float) -> torch.Tensor:
        keep = s > tol
        self.considered[where] = self.considered.get(where, 0) + int(s.numel())
        self.dropped[where] = self.dropped.get(where, 0) + int((~keep).sum())
        if tol > 0 and s.numel():
            ratio = s.double() / tol
            if bool((~keep).any()):
                self.max_dropped = max(self.max_dropped, float(ratio[~keep].max()))
            if bool(keep.any()):
                self.min_kept = min(self.min_kept, float(ratio[keep].min()))
        return keep

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())


# --------------------------------------------------------------------------- the three merges (ours)


def _sum(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    w = mats[0].clone()
    for m in mats[1:]:
        w = w + m
    return w


def _check(mats: Sequence[torch.Tensor]) -> Tuple[int, int, int]:
    if not mats:
        raise ValueError("no task matrices")
    shape = mats[0].shape
    if len(shape) != 2 or any(m.shape != shape for m in mats):
        raise ValueError(f"task matrices must be 2-D and of one shape, got {[tuple(m.shape) for m in mats]}")
    m, n = shape
    return m, n, min(m, n)


def tsv_m(mats: Sequence[torch.Tensor], eps: Optional[float] = None, stats: Optional[Stats] = None) -> torch.Tensor:
    """TSV-M with the drop rule: polar(X) diag(S) polar(Y)ᵀ of every task's kept top-k components."""
    m, n, r = _check(mats)
    stats = stats if stats is not None else Stats()
    k = tsv_rank(r, len(mats))
    xs, ys, ss = [], [], []
    for i, a in enumerate(mats):
        u, s, vh = _svd(a)
        tol = tolerance(a, eps)
        keep = stats.keep(f"task{i}", s[:k], tol)
        stats.gap(s, k, tol)
        xs.append(u[:, :k][:, keep])
        ys.append(vh[:k][keep].transpose(0, 1))
        ss.append(s[:k][keep])
    x, y, s = torch.cat(xs, 1), torch.cat(ys, 1), torch.cat(ss)
    if s.numel() == 0:
        return torch.zeros_like(mats[0])
    stats.stack(x)
    stats.stack(y)
    return (polar(x) * s) @ polar(y).transpose(0, 1)


def iso_c(mats: Sequence[torch.Tensor], eps: Optional[float] = None, stats: Optional[Stats] = None) -> torch.Tensor:
    """Iso-C with the drop rule: σ̄ · Σ_{kept} u_i v_iᵀ of W = Σ M_k, σ̄ = mean of all r values."""
    _, _, r = _check(mats)
    stats = stats if stats is not None else Stats()
    w = _sum(mats)
    u, s, vh = _svd(w)
    keep = stats.keep("sum", s, tolerance(w, eps))
    sbar = s.sum() / r
    return sbar * (u[:, keep] @ vh[keep])


def iso_cts(mats: Sequence[torch.Tensor], fraction: float = 0.8, eps: Optional[float] = None,
            stats: Optional[Stats] = None, ranks: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Iso-CTS with the drop rule: S̄ · polar([task residual u's, Uc]) polar([v's, Vc])ᵀ.

    ``ranks`` = (c, n) overrides ``iso_cts_ranks`` (only to show what another rounding would give)."""
    _, _, r = _check(mats)
    stats = stats if stats is not None else Stats()
    k_tasks = len(mats)
    c, n = iso_cts_ranks(r, k_tasks, fraction) if ranks is None else ranks
    w = _sum(mats)
    u, s, vh = _svd(w)
    tol_w = tolerance(w, eps)
    keep_c = stats.keep("common", s[:c], tol_w)
    stats.gap(s, c, tol_w)
    uc, vc = u[:, :c][:, keep_c], vh[:c][keep_c].transpose(0, 1)
    total = s[:c].sum()
    us, vs = [], []
    for i, a in enumerate(mats):
        res = a - uc @ uc.transpose(0, 1) @ a
        ur, sr, vhr = _svd(res)
        tol = tolerance(a, eps)
        keep = stats.keep(f"task{i}", sr[:n], tol)
        stats.gap(sr, n, tol)
        us.append(ur[:, :n][:, keep])
        vs.append(vhr[:n][keep].transpose(0, 1))
        total = total + sr[:n].sum()
    big_u, big_v = torch.cat(us + [uc], 1), torch.cat(vs + [vc], 1)
    if big_u.shape[1] == 0:
        return torch.zeros_like(mats[0])
    stats.stack(big_u)
    stats.stack(big_v)
    sbar = total / r
    return sbar * (polar(big_u) @ polar(big_v).transpose(0, 1))


# --------------------------------------------------------------------------- FusionBench, literal ports (self-test only)


def fusionbench_tsv_m(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """compute_and_sum_svd_mem_reduction for one 2-D key (TSVM_utils.py l.314-428): padded stacks, no drop rule."""
    sv_reduction = 1 / len(mats)
    for i, vec in enumerate(mats):
        u, s, vh = torch.linalg.svd(vec, full_matrices=False)
        if i == 0:
            sum_u, sum_s, sum_vh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
        k = int(s.shape[0] * sv_reduction)
        sum_u[:, i * k:(i + 1) * k] = u[:, :k]
        sum_s[i * k:(i + 1) * k] = s[:k]
        sum_vh[i * k:(i + 1) * k, :] = vh[:k, :]
    u_u, _, vh_u = torch.linalg.svd(sum_u, full_matrices=False)
    u_vh, _, vh_vh = torch.linalg.svd(sum_vh, full_matrices=False)
    return torch.linalg.multi_dot((u_u, vh_u, torch.diag(sum_s), u_vh, vh_vh))


def fusionbench_iso_c(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """iso_c for one 2-D key (iso_utils.py l.10-46): flat spectrum over all r singular values of the sum."""
    new = sum(mats) / len(mats)
    new = new * len(mats)
    u, s, v = torch.linalg.svd(new, full_matrices=False)
    s_mean = torch.ones_like(s) * s.mean()
    return torch.linalg.multi_dot((u, torch.diag(s_mean), v))


def fusionbench_iso_cts(mats: Sequence[torch.Tensor], fraction: float = 0.8) -> torch.Tensor:
    """iso_cts for one 2-D key (iso_utils.py l.49-162): common block last, padded to r, no drop rule."""
    shape_, k_tasks = mats[0].shape, len(mats)
    combined_w = sum(mats)
    common = int(min(shape_) * fraction)
    ts_total = round((min(shape_) - common) / k_tasks) * k_tasks
    common = min(shape_) - ts_total
    u, s, v = torch.linalg.svd(combined_w, full_matrices=False)
    cu, cs, cv = u[:, :common], s[:common], v[:common, :]
    n = int((min(shape_) - common) / k_tasks)
    for i, w in enumerate(mats):
        w_ts = w - cu @ cu.T @ w
        u_ts, s_ts, v_ts = torch.linalg.svd(w_ts, full_matrices=False)
        if i == 0:
            su, ss, sv = torch.zeros_like(u_ts), torch.zeros_like(s_ts), torch.zeros_like(v_ts)
        su[:, i * n:(i + 1) * n] = u_ts[:, :n]
        ss[i * n:(i + 1) * n] = s_ts[:n]
        sv[i * n:(i + 1) * n, :] = v_ts[:n, :]
    su[:, k_tasks * n:k_tasks * n + common] = cu
    ss[k_tasks * n:k_tasks * n + common] = cs
    sv[k_tasks * n:k_tasks * n + common, :] = cv
    uu, _, vu = torch.linalg.svd(su, full_matrices=False)
    uv, _, vv = torch.linalg.svd(sv, full_matrices=False)
    su, sv = uu @ vu, uv @ vv
    ss = torch.ones_like(ss) * ss.mean()
    return torch.linalg.multi_dot((su, torch.diag(ss), sv))


# --------------------------------------------------------------------------- whole checkpoints


def load_checkpoint(path) -> Tensors:
    """``path``/model.safetensors (or ``path`` itself when it is a file), in the file's tensor order."""
    p = Path(path)
    return load_file(str(p / "model.safetensors" if p.is_dir() else p))


def plan_units(shapes: Dict[str, Sequence[int]], qkv: str = "fused") -> Tuple[List[Tuple[str, List[str]]], List[str]]:
    """(2-D units as (label, member names), names averaged), in the order of ``shapes``.

    A fused unit's label is its block's ``…self_attn.{q,k,v}_proj.weight``; it stands where its first
    member stands."""
    if qkv not in ("fused", "split"):
        raise ValueError(f"qkv must be fused or split, not {qkv!r}")
    units, means, seen = [], [], set()
    for name, shape in shapes.items():
        if len(shape) != 2:
            means.append(name)
            continue
        mt = QKV.match(name)
        if qkv == "split" or mt is None:
            units.append((name, [name]))
            continue
        prefix = mt.group(1)
        if prefix in seen:
            continue
        members = [f"{prefix}{p}_proj.weight" for p in "qkv"]
        if any(m not in shapes for m in members):
            raise KeyError(f"fused q/k/v: {prefix} lacks one of {members}")
        if len({tuple(shapes[m]) for m in members}) != 1:
            raise ValueError(f"fused q/k/v: {prefix} q/k/v shapes differ")
        seen.add(prefix)
        units.append((f"{prefix}{{q,k,v}}_proj.weight", members))
    return units, means


def task_vectors(theta0: Tensors, thetas: Sequence[Tensors], names: Sequence[str], dtype: torch.dtype) -> List[Tensors]:
    """τ_k = θ_k − θ₀ subtracted in the checkpoints' dtype (float32), then converted to ``dtype``."""
    out = []
    for th in thetas:
        tv = {}
        for n in names:
            if th[n].shape != theta0[n].shape or th[n].dtype != theta0[n].dtype:
                raise ValueError(f"{n}: shape/dtype {tuple(th[n].shape)} {th[n].dtype} vs pretrained "
                                 f"{tuple(theta0[n].shape)} {theta0[n].dtype}")
            tv[n] = (th[n] - theta0[n]).to(dtype)
        out.append(tv)
    return out


def _unit_merge(method: str, mats: List[torch.Tensor], fraction: Optional[float], eps: Optional[float],
                stats: Stats, impl: str) -> torch.Tensor:
    if impl == "ours":
        if method == "tsv-m":
            return tsv_m(mats, eps, stats)
        if method == "iso-c":
            return iso_c(mats, eps, stats)
        return iso_cts(mats, 0.8 if fraction is None else fraction, eps, stats)
    if impl == "fusionbench":
        if method == "tsv-m":
            return fusionbench_tsv_m(mats)
        if method == "iso-c":
            return fusionbench_iso_c(mats)
        return fusionbench_iso_cts(mats, 0.8 if fraction is None else fraction)
    raise ValueError(f"impl must be ours or fusionbench, not {impl!r}")


def merge(theta0: Tensors, thetas: Sequence[Tensors], method: str, alpha: float = 1.0, qkv: str = "fused",
          common_fraction: Optional[float] = None, dtype: torch.dtype = torch.float64, impl: str = "ours",
          eps: Optional[float] = None, report: Optional[dict] = None) -> Tensors:
    """θ = θ₀ + α·Δ for every floating tensor of θ₀, in ``dtype`` (see the module docstring).

    ``impl="fusionbench"`` uses the literal ports (no drop rule; running mean for non-2-D tensors).
    ``report``, if given, receives per unit label: {"members", "shape", "r", "ranks", "stats", "delta"}."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if not thetas:
        raise ValueError("no fine-tuned models")
    names = [n for n, v in theta0.items() if v.is_floating_point()]
    units, means = plan_units({n: tuple(theta0[n].shape) for n in names}, qkv)
    tvs = task_vectors(theta0, thetas, names, dtype)
    k_tasks = len(tvs)
    delta: Tensors = {}
    for n in means:
        if impl == "fusionbench":
            acc = tvs[0][n].clone()
            for i, tv in enumerate(tvs[1:], start=1):
                acc += (tv[n] - acc) / (i + 1)
            delta[n] = acc
        else:
            delta[n] = _sum([tv[n] for tv in tvs]) / k_tasks
    for label, members in units:
        mats = [torch.cat([tv[m] for m in members], 0) for tv in tvs]
        stats = Stats()
        d = _unit_merge(method, mats, common_fraction, eps, stats, impl)
        rows = theta0[members[0]].shape[0]
        for j, m in enumerate(members):
            delta[m] = d[j * rows:(j + 1) * rows]
        if report is not None:
            r = min(mats[0].shape)
            ranks = {"tsv-m": lambda: {"k": tsv_rank(r, k_tasks)}, "iso-c": lambda: {},
                     "iso-cts": lambda: dict(zip("cn", iso_cts_ranks(r, k_tasks, 0.8 if common_fraction is None
                                                                    else common_fraction)))}[method]()
            report[label] = {"members": members, "shape": tuple(mats[0].shape), "r": r, "ranks": ranks,
                             "stats": stats, "delta": d}
    return {n: theta0[n].to(dtype) + alpha * delta[n] for n in names}


# --------------------------------------------------------------------------- self-test


def self_test(repo: Path) -> None:
    dt = torch.float64
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dt)

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))

    def close(a, b, tol, what):
        err = rel(a, b)
        if not err <= tol:
            raise AssertionError(f"{what}: max rel err {err:.3e} > {tol:.1e}")
        print(f"ok  {what}: max rel err {err:.1e}")

    def orth(m):
        q, _ = torch.linalg.qr(randn(m, m))
        return q

    # ranks against the tables of spectral_fusionbench.md
    assert [tsv_rank(r, k) for r in (768, 1024, 50, 197, 257) for k in (8, 14, 20)] == \
        [96, 54, 38, 128, 73, 51, 6, 3, 2, 24, 14, 9, 32, 18, 12]
    want = [(616, 19), (614, 11), (608, 8), (816, 26), (814, 15), (824, 10), (42, 1), (36, 1), (50, 0),
            (157, 5), (155, 3), (157, 2), (209, 6), (201, 4), (197, 3)]
    assert [iso_cts_ranks(r, k, 0.8) for r in (768, 1024, 50, 197, 257) for k in (8, 14, 20)] == want
    assert iso_cts_ranks(5, 2, 0.8) == (5, 0)  # (5 - 4)/2 = 0.5 rounds to 0 (ties to even)
    assert iso_cts_ranks(32, 2, 0.8) == (24, 4)  # 3.5 rounds to 4
    print("ok  TSV-M k and Iso-CTS (c, n) tables of spectral_fusionbench.md (ties to even)")

    # polar
    x = randn(9, 4)
    p = polar(x)
    close(p.T @ p, torch.eye(4, dtype=dt), 1e-14, "polar: orthonormal columns")
    ev, q = torch.linalg.eigh(x.T @ x)
    close(p, x @ q @ torch.diag(ev ** -0.5) @ q.T, 1e-13, "polar = X (XᵀX)^(-1/2)")

    # ours = FusionBench's literal code on full-rank inputs (nothing dropped)
    for shape in ((30, 10), (10, 25), (13, 13), (5, 32), (96, 32)):
        for k_tasks in (3, 4):
            mats = [randn(*shape) * (1 + i) for i in range(k_tasks)]
            for method, ours, fb in (("tsv-m", tsv_m, fusionbench_tsv_m), ("iso-c", iso_c, fusionbench_iso_c),
                                     ("iso-cts f=0.8", lambda m, e=None, s=None: iso_cts(m, 0.8, e, s),
                                      lambda m: fusionbench_iso_cts(m, 0.8)),
                                     ("iso-cts f=0.5", lambda m, e=None, s=None: iso_cts(m, 0.5, e, s),
                                      lambda m: fusionbench_iso_cts(m, 0.5))):
                st = Stats()
                a = ours(mats, None, st)
                assert st.total_dropped == 0, (shape, k_tasks, method, st.dropped)
                err = rel(a, fb(mats))
                assert err <= 1e-12, f"{method} {shape} K={k_tasks}: ours vs FusionBench {err:.2e}"
        print(f"ok  {shape}, K = 3 and 4: ours = FusionBench's literal code for the three merges (≤ 1e-12), nothing dropped")

    # rank-deficient inputs: ours is equivariant (Q1 M Q2ᵀ ↦ Q1 Δ Q2ᵀ, so it does not depend on the SVD
    # routine's arbitrary null-space vectors); FusionBench's literal code is not, and differs from ours
    for shape in ((30, 10), (12, 12)):
        m, n = shape
        q1, q2 = orth(m), orth(n)
        mats = [randn(*shape), randn(m, 1) @ randn(1, n), randn(m, 2) @ randn(2, n), randn(*shape)]
        rot = [q1 @ a @ q2.T for a in mats]
        # Iso-CTS at f = 0.2 so that n = 2 (the rank-1 task's second residual component is round-off)
        for method, ours, fb in (("tsv-m", lambda ms, st=None: tsv_m(ms, stats=st), fusionbench_tsv_m),
                                 ("iso-cts f=0.2", lambda ms, st=None: iso_cts(ms, 0.2, stats=st),
                                  lambda ms: fusionbench_iso_cts(ms, 0.2))):
            st = Stats()
            a = ours(mats, st)
            assert st.total_dropped > 0 and st.max_dropped < 0.5 and st.min_kept > 1e6, (method, vars(st))
            close(ours(rot), q1 @ a @ q2.T, 1e-12, f"{method} {shape}, two rank-deficient tasks: ours rotation-equivariant "
                  f"(dropped {st.dropped}, s/tol: dropped ≤ {st.max_dropped:.1e}, kept ≥ {st.min_kept:.1e})")
            d_fb = rel(fb(rot), q1 @ fb(mats) @ q2.T)
            d_ours = rel(fb(mats), a)
            assert d_fb > 1e-6 and d_ours > 1e-6, (d_fb, d_ours)
            print(f"ok  {method} {shape}: FusionBench's literal code is not (rel {d_fb:.1e}); it differs from ours by {d_ours:.1e}")
        low = [randn(m, 2) @ randn(2, n), randn(m, 1) @ randn(1, n)]  # sum of rank 3
        st = Stats()
        a = iso_c(low, stats=st)
        assert st.dropped["sum"] == min(shape) - 3
        close(iso_c([q1 @ b @ q2.T for b in low]), q1 @ a @ q2.T, 1e-12, f"iso-c {shape}, rank-3 sum: ours equivariant")
        u, s, vh = torch.linalg.svd(low[0] + low[1])
        close(a, s.sum() / min(shape) * u[:, :3] @ vh[:3], 1e-13, f"iso-c {shape}: σ̄ over all r, 3 directions kept")
        print(f"ok  iso-c {shape}: FusionBench's literal code differs from ours by {rel(fusionbench_iso_c(low), a):.1e}")

    # K = 1: TSV-M gives the task matrix back (rank-deficient too); Iso-CTS = Iso-C
    for a in (randn(20, 8), randn(20, 1) @ randn(1, 8), randn(7, 3) @ randn(3, 15)):
        close(tsv_m([a]), a, 1e-13, f"TSV-M, K = 1, rank {int(torch.linalg.matrix_rank(a))} {tuple(a.shape)}: Δ = M")
        close(iso_cts([a]), iso_c([a]), 1e-13, f"Iso-CTS = Iso-C at K = 1, rank {int(torch.linalg.matrix_rank(a))}")
    # all-zero inputs
    z = [torch.zeros(6, 4, dtype=dt)] * 2
    for f in (tsv_m, iso_c, iso_cts):
        assert torch.equal(f(z), torch.zeros(6, 4, dtype=dt))
    print("ok  zero task matrices give Δ = 0")

    # the tiny fixture models: units, fused q/k/v = the stacked merge, K = 1 TSV-M = the fine-tune
    fx = repo / "tests" / "fixtures" / "adamerging"
    theta0 = load_checkpoint(fx / "pretrained")
    thetas = [load_checkpoint(fx / "finetuned" / t) for t in ("alpha", "beta", "gamma")]
    fused, means = plan_units({n: tuple(v.shape) for n, v in theta0.items()}, "fused")
    split, _ = plan_units({n: tuple(v.shape) for n, v in theta0.items()}, "split")
    assert len(fused) == 10 and len(split) == 14 and len(means) == 26, (len(fused), len(split), len(means))
    print(f"ok  tiny model: {len(fused)} fused units, {len(split)} split, {len(means)} averaged tensors")
    rep: dict = {}
    out = merge(theta0, thetas, "iso-cts", alpha=1.5, qkv="fused", report=rep)
    pre = "vision_model.encoder.layers.1.self_attn."
    mats = [torch.cat([(t[pre + f"{p}_proj.weight"] - theta0[pre + f"{p}_proj.weight"]).double() for p in "qkv"])
            for t in thetas]
    d = iso_cts(mats)
    for j, p in enumerate("qkv"):
        name = pre + f"{p}_proj.weight"
        close(out[name], theta0[name].double() + 1.5 * d[32 * j:32 * (j + 1)], 1e-15, f"fused unit, {p} rows")
    b = "vision_model.encoder.layers.0.mlp.fc1.bias"
    close(out[b], theta0[b].double() + 1.5 * sum((t[b] - theta0[b]).double() for t in thetas) / 3, 1e-15,
          "non-2-D tensor: θ₀ + α · mean τ")
    one = merge(theta0, thetas[:1], "tsv-m")
    close(torch.cat([one[n].reshape(-1) for n in one]),
          torch.cat([(theta0[n].double() + (thetas[0][n] - theta0[n]).double()).reshape(-1) for n in one]), 1e-12,
          "tiny model, TSV-M of one task = θ₀ + τ")
    print("self-test passed")


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self-test", action="store_true", help="run the built-in checks and exit")
    ap.add_argument("--pretrained", type=Path, help="directory with model.safetensors (or the file)")
    ap.add_argument("--finetuned", action="append", default=[], help="NAME=DIR (task order = argument order)")
    ap.add_argument("--method", choices=METHODS)
    ap.add_argument("--alpha", type=float, default=1.0, help="θ = θ₀ + α·Δ (default 1)")
    ap.add_argument("--qkv", choices=("fused", "split"), default="fused")
    ap.add_argument("--common-fraction", type=float, default=None, help="Iso-CTS only (default 0.8)")
    ap.add_argument("--float32", action="store_true", help="compute in float32 (default float64; ε follows)")
    ap.add_argument("--fusionbench", action="store_true", help="FusionBench's literal code (no drop rule)")
    ap.add_argument("--out", type=Path, default=None, help="write the merged tensors (float32 safetensors) here")
    a = ap.parse_args(argv)

    if a.self_test:
        self_test(Path(__file__).resolve().parents[2])
        return
    if a.pretrained is None or not a.finetuned or a.method is None:
        ap.error("--pretrained, --finetuned and --method are required (or --self-test)")
    if a.common_fraction is not None and a.method != "iso-cts":
        ap.error("--common-fraction is for iso-cts only")
    theta0 = load_checkpoint(a.pretrained)
    names, thetas = [], []
    for spec in a.finetuned:
        name, _, d = spec.partition("=")
        if not d:
            ap.error(f"--finetuned {spec!r}: expected NAME=DIR")
        names.append(name)
        thetas.append(load_checkpoint(Path(d)))
    rep: dict = {}
    merged = merge(theta0, thetas, a.method, a.alpha, a.qkv, a.common_fraction,
                   torch.float32 if a.float32 else torch.float64, "fusionbench" if a.fusionbench else "ours", report=rep)
    print(f"{a.method}, tasks {names}, α {a.alpha}, qkv {a.qkv}: {len(rep)} matrix units, "
          f"{len(merged) - sum(len(u['members']) for u in rep.values())} averaged tensors")
    for label, u in rep.items():
        st = u["stats"]
        dropped = {(names[int(w[4:])] if w.startswith("task") else w): d for w, d in st.dropped.items() if d}
        extra = f", dropped {dropped}" if dropped else ""
        print(f"  {label} {list(u['shape'])}: r {u['r']} {u['ranks']}{extra}")
    if a.out:
        meta = {"method": a.method, "tasks": ",".join(names), "alpha": repr(a.alpha), "qkv": a.qkv,
                "common_fraction": repr(a.common_fraction), "computed_in": "float32" if a.float32 else "float64",
                "impl": "fusionbench" if a.fusionbench else "reference_spectral.py"}
        save_file({n: v.to(torch.float32).contiguous() for n, v in merged.items()}, str(a.out),
                  metadata={"merge": json.dumps(meta, sort_keys=True)})
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
