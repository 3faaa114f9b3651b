"""Independent numpy reference of the fixed merge methods of docs/design.md section 3.

This module is the reference the Rust merges are checked against (through the
fixtures written by ``scripts/fixtures/make_merge_fixtures.py``). It depends on numpy
only; run as a script it only checks itself on a hand-computed case:

    python scripts/reference/reference_merge.py

Conventions shared by every function:

* A checkpoint is a ``dict`` mapping tensor name -> ``np.ndarray`` of dtype
  ``float32``; only the *merged* tensors are passed in (no carried tensors).
* A task vector ``tau_k = theta_k - theta_0`` is computed in float32, element
  by element, from the stored values (``task_vectors``).
* All arithmetic is float32, like the Rust side. Scalars (lambda, 1/K,
  1/(1-p)) are converted to ``np.float32`` before they touch a tensor.
* Sums over tasks are sequential in task order: ``((tau_1 + tau_2) + tau_3)``.
  (For the fixtures the order only changes float32 rounding, far below 1e-6,
  except that an exact zero of the elect step must be produced by the same
  values: ``a + (-a) + 0 == 0`` holds in any order.)
* TIES "global" scope: the trim threshold is computed over the concatenation
  of all merged tensors of one task. The concatenation order used here is the
  sorted tensor names, but the result does not depend on it: the threshold
  (an order statistic of |x|) and the majority sign (a sum of +-1/0 values,
  exact in any order) are both order-independent.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Sequence

import numpy as np

Tensors = Dict[str, np.ndarray]

__all__ = [
    "task_vectors",
    "weight_average",
    "task_arithmetic",
    "ties",
    "ties_trim",
    "dare_apply",
    "dare",
]


def _f32(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.float32:
        raise TypeError(f"expected float32, got {a.dtype}")
    return a


def _check_same_keys(base: Tensors, others: Sequence[Tensors]) -> None:
    for i, o in enumerate(others):
        if set(o) != set(base):
            missing = sorted(set(base) - set(o))
            extra = sorted(set(o) - set(base))
            raise KeyError(f"checkpoint {i}: missing {missing[:5]}, extra {extra[:5]}")
        for n in base:
            if o[n].shape != base[n].shape:
                raise ValueError(f"checkpoint {i}: {n} shape {o[n].shape} != {base[n].shape}")


def _sum_tasks(taus: Sequence[Tensors], name: str) -> np.ndarray:
    """Sequential float32 sum over tasks, in task order."""
    acc = np.zeros_like(_f32(taus[0][name]))
    for t in taus:
        acc = acc + _f32(t[name])
    return acc


def task_vectors(base: Tensors, finetuned: Sequence[Tensors]) -> List[Tensors]:
    """tau_k = theta_k - theta_0, in float32."""
    _check_same_keys(base, finetuned)
    return [{n: (_f32(ft[n]) - _f32(base[n])) for n in base} for ft in finetuned]


def weight_average(base: Tensors, finetuned_list: Sequence[Tensors]) -> Tensors:
    """theta = theta_0 + (1/K) sum_k tau_k   (== (1/K) sum_k theta_k in exact arithmetic).

    float32: tau_k = theta_k - theta_0; s = ((tau_1 + tau_2) + ...); mean = s / float32(K);
    theta = theta_0 + mean.
    """
    taus = task_vectors(base, finetuned_list)
    k = np.float32(len(taus))
    return {n: _f32(base[n]) + _sum_tasks(taus, n) / k for n in base}


def task_arithmetic(base: Tensors, taus: Sequence[Tensors], lam: float) -> Tensors:
    """theta = theta_0 + lam * (sum_k tau_k), float32, sum first then scale."""
    _check_same_keys(base, taus)
    lam32 = np.float32(lam)
    return {n: _f32(base[n]) + lam32 * _sum_tasks(taus, n) for n in base}


# --------------------------------------------------------------------------- TIES


def _trim_threshold(abs_values: np.ndarray, k: float):
    """Threshold for keeping the top-k fraction; None means keep everything.

    d = number of entries, r = d - floor(d*k) (d*k in float64), threshold =
    r-th smallest |x| (1-indexed). r == 0 (k == 1) keeps everything.
    """
    d = abs_values.size
    r = d - int(d * float(k))
    if r <= 0:
        return None
    return np.partition(abs_values, r - 1)[r - 1]


def ties_trim(taus: Sequence[Tensors], k: float, scope: str = "global") -> List[Tensors]:
    """Per task: keep entries with |x| >= threshold, zero the rest (returns tau_hat_k)."""
    if scope not in ("global", "per_tensor"):
        raise ValueError(f"scope must be 'global' or 'per_tensor', got {scope!r}")
    names = sorted(taus[0])
    out: List[Tensors] = []
    for tau in taus:
        if scope == "global":
            flat = np.concatenate([np.abs(_f32(tau[n])).ravel() for n in names])
            thr = _trim_threshold(flat, k)
            thrs = {n: thr for n in names}
        else:
            thrs = {n: _trim_threshold(np.abs(_f32(tau[n])).ravel(), k) for n in names}
        trimmed = {}
        for n in names:
            x = _f32(tau[n])
            if thrs[n] is None:
                trimmed[n] = x.copy()
            else:
                trimmed[n] = np.where(np.abs(x) >= thrs[n], x, np.float32(0)).astype(np.float32)
        out.append(trimmed)
    return out


def _elect(trimmed: Sequence[Tensors], scope: str) -> Tensors:
    """gamma = sign(sum_k tau_hat_k); exact zeros take the majority sign sign(sum gamma).

    The majority is over the whole task vector (scope "global") or per tensor
    (scope "per_tensor"). If the majority itself is 0 those entries keep
    gamma = 0, and then no task agrees there (merged value 0), as in the TIES
    reference code.
    """
    names = sorted(trimmed[0])
    gamma = {n: np.sign(_sum_tasks(trimmed, n)).astype(np.float32) for n in names}
    if scope == "global":
        total = sum(float(gamma[n].sum(dtype=np.float64)) for n in names)
        maj = {n: np.float32(np.sign(total)) for n in names}
    else:
        maj = {n: np.float32(np.sign(gamma[n].sum(dtype=np.float64))) for n in names}
    return {n: np.where(gamma[n] == 0, maj[n], gamma[n]).astype(np.float32) for n in names}


def ties_merge_vector(trimmed: Sequence[Tensors], agg: str = "mean", scope: str = "global") -> Tensors:
    """Elect + disjoint merge of already-trimmed task vectors -> tau_m."""
    if agg not in ("mean", "sum"):
        raise ValueError(f"agg must be 'mean' or 'sum', got {agg!r}")
    gamma = _elect(trimmed, scope)
    tau_m = {}
    for n in gamma:
        num = np.zeros_like(gamma[n])
        cnt = np.zeros_like(gamma[n])
        for t in trimmed:
            x = t[n]
            agree = (x != 0) & (np.sign(x) == gamma[n])
            num = num + np.where(agree, x, np.float32(0)).astype(np.float32)
            cnt = cnt + agree.astype(np.float32)
        if agg == "mean":
            tau_m[n] = (num / np.maximum(cnt, np.float32(1))).astype(np.float32)
        else:
            tau_m[n] = num
    return tau_m


def ties(
    base: Tensors,
    taus: Sequence[Tensors],
    k: float = 0.2,
    lam: float = 1.0,
    agg: str = "mean",
    scope: str = "global",
) -> Tensors:
    """TIES-Merging: trim (top-k per task), elect (sign of sum), disjoint mean/sum.

    theta = theta_0 + lam * tau_m  (float32).
    """
    _check_same_keys(base, taus)
    trimmed = ties_trim(taus, k, scope)
    tau_m = ties_merge_vector(trimmed, agg, scope)
    lam32 = np.float32(lam)
    return {n: _f32(base[n]) + lam32 * tau_m[n] for n in base}


# --------------------------------------------------------------------------- DARE


def dare_apply(taus: Sequence[Tensors], masks: Sequence[Dict[str, np.ndarray]], p: float) -> List[Tensors]:
    """tau~_k = (tau_k * m_k) * float32(1/(1-p)).

    Formula fixed to match the Rust side exactly: the mask (0/1, any dtype) is
    converted to float32, multiplied into tau, and the product is multiplied by
    the float32 scalar np.float32(1.0 / (1.0 - p)) (the reciprocal computed in
    float64, then rounded once to float32). Not tau * m / float32(1-p).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    scale = np.float32(1.0 / (1.0 - p))
    out = []
    for tau, m in zip(taus, masks, strict=True):
        out.append({n: (_f32(tau[n]) * np.asarray(m[n]).astype(np.float32)) * scale for n in tau})
    return out


def dare(
    base: Tensors,
    taus: Sequence[Tensors],
    masks: Sequence[Dict[str, np.ndarray]],
    p: float = 0.5,
    then: str = "task_arithmetic",
    **kwargs,
) -> Tensors:
    """DARE with given masks, then task_arithmetic(lam=...) or ties(k=, lam=, agg=, scope=)."""
    rescaled = dare_apply(taus, masks, p)
    if then == "task_arithmetic":
        return task_arithmetic(base, rescaled, kwargs.get("lam", 0.3))
    if then == "ties":
        return ties(base, rescaled, **kwargs)
    raise ValueError(f"unknown base method {then!r}")


if __name__ == "__main__":  # tiny self-check on a hand-computed case
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    b = {"w": np.zeros(4, np.float32)}
    t1 = {"w": np.array([1.0, -2.0, 0.5, 3.0], np.float32)}
    t2 = {"w": np.array([-1.0, -1.0, 0.25, -4.0], np.float32)}
    # k=1: keep all. sums: [0, -3, .75, -1] -> gamma [?, -1, 1, -1], majority sign(-1)=-1 -> [-1,-1,1,-1]
    # mean over agreeing: [-1, -1.5, .375, -4]
    got = ties(b, [t1, t2], k=1.0, lam=1.0)["w"]
    assert np.array_equal(got, np.array([-1.0, -1.5, 0.375, -4.0], np.float32)), got
    # k=0.5 global over one tensor: d=4, r=2 -> threshold = 2nd smallest |x| = 1
    tr = ties_trim([t1], 0.5)[0]["w"]
    assert np.array_equal(tr, np.array([1.0, -2.0, 0.0, 3.0], np.float32)), tr
    print("reference_merge self-check ok")
