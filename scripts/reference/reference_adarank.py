"""Independent PyTorch reference of AdaRank (Lee et al., arXiv 2503.22178; code david3684/AdaRank).

AdaRank learns, by AdaMerging's test-time entropy minimisation, a mask over the singular
components of every task vector's matrices together with layer-wise coefficients λ. This module is
the reference the Rust AdaRank is checked against (through the fixtures written by
``scripts/fixtures/make_adarank_fixtures.py``). It reuses ``reference_adamerging`` (checkpoints,
merge scope, "paper" units, task vectors, heads, batches, the HF model) and ``reference_spectral``
(tolerance, TSV-M rank, polar factor). The merge, the masks and every gradient are plain PyTorch
autograd: loss -> ``functional_call`` of ``CLIPVisionModelWithProjection`` -> merged weights ->
(λ, mask logits). No hand-written chain rule. Importable, with a small CLI:

    python scripts/reference/reference_adarank.py \\
        --pretrained tests/fixtures/adamerging/pretrained \\
        --finetuned alpha=tests/fixtures/adamerging/finetuned/alpha ... \\
        --heads tests/fixtures/adamerging/heads.safetensors \\
        --batches tests/fixtures/adamerging/batches.safetensors \\
        [--base ta|tsv-m] [--decompose attn-mlp|matrices] [--qkv fused|split] [--rank 1.0] \\
        [--rest drop|keep] [--mask hard|soft] [--temperature 10] [--mask-init 0.1] [--init 0.3] \\
        [--clamp] [--steps 20] [--lr 1e-2] [--out result.json]

Definitions (K tasks in the given order; float32 unless ``dtype`` says otherwise):

* **Task vectors** τ_k = θ_k − θ₀ in float32 over reference_adamerging's merge scope
  (``vision_model.*``, ``visual_projection.*``).
* **Matrix units** (what is decomposed), option ``decompose``:
  ``attn-mlp`` (AdaRank's): per encoder layer ``mlp.fc1.weight``, ``mlp.fc2.weight``,
  ``self_attn.out_proj.weight`` and the q/k/v weights (never biases, layer norms, embeddings,
  projection); ``matrices`` (TSV-M's): every 2-D tensor of the scope (so also
  ``position_embedding.weight`` and ``visual_projection.weight``; the 4-D patch embedding is not
  a matrix). Option ``qkv``: ``fused`` makes the q/k/v weights of a layer ONE unit named
  ``vision_model.encoder.layers.N.self_attn.in_proj.weight`` whose matrix is cat([q, k, v], 0)
  ([3d, d], q rows first); ``split`` makes each its own unit. Every other unit is named after its
  tensor. Units are listed in the file order of their first member.
* **Decomposition** of unit l, task k, in float64: u, s, vh = torch.linalg.svd(τ_{k,l}.double(),
  full_matrices=False), r = min(m, n), tol = max(m, n) · 2.220446049250313e-16 · ‖τ_{k,l}‖_F.
  - base ``ta``: ρ = max(1, int(rank · r)); component i (i < ρ) is kept iff s_i > tol; kept
    component i of task k is (u_i, s_i, v_i) of τ_k's own SVD.
  - base ``tsv-m``: ρ = int(r · (1.0 / K)) (``rank`` is ignored); the same tolerance per task;
    X = [kept u's of task 1, …, task K] (columns, task order), Y likewise with the v's;
    component (k, i) = (column of polar(X), s_{k,i}, column of polar(Y)), polar = u @ vh of the
    thin SVD (reference_spectral.polar).
  - U (m × ρ_k), s (ρ_k), V (n × ρ_k) are then stored as float32.
  - ``rest`` (ta only): ``drop`` (default) — τ_{k,l} on a decomposed unit is replaced entirely by
    its masked components; ``keep`` — rest_{k,l} = τ_{k,l} − Σ_{i kept} s_i u_i v_iᵀ (float64,
    stored float32) is added with weight λ and no mask.
* **Coefficients**: λ [K, L] over reference_adamerging's "paper" units (granularity ``layer``;
  ``task``: λ [K, 1]), initialised to ``init`` (ta 0.3, tsv-m 1.0 by default); c = clamp(λ, 0, 1)
  when ``clamp`` (torch.clamp, as reference_adamerging) else c = λ. One mask logit m per kept
  component (per unit, task, component), initialised to ``mask_init``; σ = sigmoid(m / T),
  T = ``temperature``. ``hard`` (AdaRank's straight-through): ĉ = σ + ((σ > 0.5).float() − σ).detach()
  (value exactly 0 or 1, gradient that of σ); ``soft``: ĉ = σ.
* **Merged weights** W_t (dtype of the computation): for t a row block of decomposed unit l (the
  whole unit, or q / k / v of a fused one), with col(t) its own paper unit,
      W_t = θ₀_t + Σ_k c[k, col(t)] · ( (U_{k,l}[rows of t] * (ĉ_{k,l} * s_{k,l})) @ V_{k,l}ᵀ
                                        [+ rest_{k,l}[rows of t] when rest = keep] );
  any other tensor: W_t = θ₀_t + Σ_k c[k, col(t)] · τ_{k,t} (base ta) or
  θ₀_t + Σ_k c[k, col(t)] · (τ_{k,t} / K) (base tsv-m, so that λ = 1 with every mask on is
  TSV-M at α = 1). Sums run in task order starting from θ₀.
* **Loss** (AdaMerging's): Σ_k Σ_b mean over the batch of the entropy of
  softmax(normalize(image_embeds) @ head_kᵀ), on the step's batches of each task.
* **Optimiser**: one torch.optim.Adam over [λ, every mask logit] (lr, betas (0.9, 0.999),
  eps 1e-8, no weight decay); one backward of the summed loss per step.

Notes: the hard forward only depends on the sign of σ − 0.5 in the computation dtype; in float32
sigmoid(x) rounds to exactly 0.5 for |x| ≲ 1.2e-7, so logits closer to 0 than ~1.2e-7·T are
ambiguous between implementations. AdaRank's own code writes the straight-through as
σ·s + ((1[σ > 0.5] − σ)·s).detach() (same value up to rounding, same gradient).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_adamerging, reference_spectral

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.func import functional_call  # noqa: E402

import reference_adamerging as ra  # noqa: E402
import reference_spectral as rs  # noqa: E402

Tensors = Dict[str, torch.Tensor]

__all__ = ["Config", "matrix_units", "Component", "MatrixUnit", "decompose", "entropy_loss", "AdaRank",
           "closest_to_zero", "flips"]

ATTN_MLP = re.compile(r"^vision_model\.encoder\.layers\.\d+\.(mlp\.fc[12]|self_attn\.(out|q|k|v)_proj)\.weight$")
QKV_W = re.compile(r"^(vision_model\.encoder\.layers\.\d+\.self_attn\.)([qkv])_proj\.weight$")


@dataclass(frozen=True)
class Config:
    """Every option of the definition (see the module docstring); ``init`` None = the base's default."""

    base: str = "ta"  # ta | tsv-m
    decompose: str = "attn-mlp"  # attn-mlp | matrices
    qkv: str = "fused"  # fused | split
    rank: float = 1.0  # ta only: fraction of r kept before the tolerance
    rest: str = "drop"  # drop | keep (ta only)
    mask: str = "hard"  # hard | soft
    temperature: float = 10.0
    mask_init: float = 0.1
    init: Optional[float] = None  # ta 0.3, tsv-m 1.0
    clamp: bool = False
    granularity: str = "layer"  # layer | task
    lr: float = 1e-2
    steps: int = 20
    batches_per_task: int = 1

    def __post_init__(self):
        for field, allowed in (("base", ("ta", "tsv-m")), ("decompose", ("attn-mlp", "matrices")),
                               ("qkv", ("fused", "split")), ("rest", ("drop", "keep")), ("mask", ("hard", "soft")),
                               ("granularity", ("layer", "task"))):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, not {getattr(self, field)!r}")
        if self.base == "tsv-m" and self.rest != "drop":
            raise ValueError("rest = keep is for base ta only")
        if not 0.0 < self.rank <= 1.0:
            raise ValueError(f"rank must be in (0, 1], not {self.rank}")

    @property
    def lambda_init(self) -> float:
        return self.init if self.init is not None else (0.3 if self.base == "ta" else 1.0)

    def as_json(self) -> dict:
        d = asdict(self)
        d["init"] = self.lambda_init
        return d


# --------------------------------------------------------------------------- units and decomposition


def matrix_units(order: Sequence[str], shapes: Dict[str, Tuple[int, ...]], decompose_: str, qkv: str):
    """[(unit name, [member tensor names])] of the decomposed units, in file order of the first member."""
    units: Dict[str, List[str]] = {}
    for n in order:
        if len(shapes[n]) != 2 or (decompose_ == "attn-mlp" and not ATTN_MLP.match(n)):
            continue
        m = QKV_W.match(n)
        name = f"{m.group(1)}in_proj.weight" if (m and qkv == "fused") else n
        units.setdefault(name, []).append(n)
    out = []
    for name, members in units.items():
        if name.endswith(".in_proj.weight"):
            prefix = name[: -len("in_proj.weight")]
            members = [f"{prefix}{p}_proj.weight" for p in "qkv"]
            if any(x not in shapes for x in members) or len({tuple(shapes[x]) for x in members}) != 1:
                raise ValueError(f"fused q/k/v: {prefix} lacks q, k or v, or their shapes differ")
        out.append((name, members))
    return out


@dataclass
class Component:
    """Kept components of one task on one unit (float32): U [m, p], s [p], V [n, p]; rest [m, n] or None."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    rest: Optional[torch.Tensor]


@dataclass
class MatrixUnit:
    name: str
    members: List[str]
    shape: Tuple[int, int]
    rho: int  # components considered per task before the tolerance
    tasks: List[Component]

    def rows(self, j: int) -> slice:
        """Rows of member j in the unit's matrix."""
        h = self.shape[0] // len(self.members)
        return slice(j * h, (j + 1) * h)


def decompose(cfg: Config, name: str, members: List[str], taus32: Sequence[Tensors]) -> MatrixUnit:
    """The float64 decomposition of one unit (module docstring), stored as float32."""
    mats = [torch.cat([tau[x] for x in members], 0).double() for tau in taus32]
    m, n = mats[0].shape
    r = min(m, n)
    rho = max(1, int(cfg.rank * r)) if cfg.base == "ta" else rs.tsv_rank(r, len(mats))
    kept = []  # per task (u, s, v) in float64, kept components only
    for a in mats:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        keep = s[:rho] > rs.tolerance(a, rs.EPS64)
        kept.append((u[:, :rho][:, keep], s[:rho][keep], vh[:rho][keep].T))
    if cfg.base == "tsv-m":
        counts = [s.numel() for _, s, _ in kept]
        if sum(counts):
            px = rs.polar(torch.cat([u for u, _, _ in kept], 1)).split(counts, 1)
            py = rs.polar(torch.cat([v for _, _, v in kept], 1)).split(counts, 1)
            kept = [(px[i], s, py[i]) for i, (_, s, _) in enumerate(kept)]
    comps = []
    for a, (u, s, v) in zip(mats, kept):
        rest = (a - (u * s) @ v.T).float() if cfg.rest == "keep" else None
        comps.append(Component(u.float().contiguous(), s.float(), v.float().contiguous(), rest))
    return MatrixUnit(name, list(members), (m, n), rho, comps)


# --------------------------------------------------------------------------- loss


def entropy_loss(model, params: Tensors, heads: Sequence[torch.Tensor], batches, dtype: torch.dtype) -> torch.Tensor:
    """AdaMerging's loss: Σ_k Σ_b mean-over-batch entropy of softmax(normalize(image_embeds) @ head_kᵀ)."""
    total = torch.zeros((), dtype=dtype)
    for k, task_batches in enumerate(batches):
        for pixels in task_batches:
            emb = functional_call(model, params, (pixels.to(dtype),)).image_embeds
            logits = F.normalize(emb, dim=-1) @ heads[k].T
            ent = -(F.softmax(logits, dim=-1) * F.log_softmax(logits, dim=-1)).sum(dim=-1)
            total = total + ent.mean()
    return total


# --------------------------------------------------------------------------- AdaRank


class AdaRank:
    """AdaRank over an ``reference_adamerging.AdaMerging`` (model, θ₀, τ, units, heads; its dtype)."""

    def __init__(self, am: ra.AdaMerging, cfg: Config):
        self.am, self.cfg, self.dtype = am, cfg, am.dtype
        shapes = {n: tuple(v.shape) for n, v in am.taus32[0].items()}
        self.units = [decompose(cfg, name, members, am.taus32)
                      for name, members in matrix_units(am.order, shapes, cfg.decompose, cfg.qkv)]
        self.where = {x: (i, j) for i, u in enumerate(self.units) for j, x in enumerate(u.members)}
        k = am.num_tasks
        dt = self.dtype
        self._u = [[c.u.to(dt) for c in u.tasks] for u in self.units]
        self._s = [[c.s.to(dt) for c in u.tasks] for u in self.units]
        self._v = [[c.v.to(dt) for c in u.tasks] for u in self.units]
        self._rest = [[None if c.rest is None else c.rest.to(dt) for c in u.tasks] for u in self.units]
        self._plain = [{n: (t if cfg.base == "ta" else t / k) for n, t in tau.items()} for tau in am.taus]

    @property
    def num_lambda_cols(self) -> int:
        return 1 if self.cfg.granularity == "task" else self.am.num_units

    def initial(self) -> Tuple[torch.Tensor, List[List[torch.Tensor]]]:
        """(λ [K, L] float32, logits[unit][task] float32 [kept])."""
        lam = torch.full((self.am.num_tasks, self.num_lambda_cols), self.cfg.lambda_init, dtype=torch.float32)
        logits = [[torch.full((c.s.numel(),), self.cfg.mask_init, dtype=torch.float32) for c in u.tasks]
                  for u in self.units]
        return lam, logits

    def mask(self, logit: torch.Tensor) -> torch.Tensor:
        """ĉ of the module docstring (hard: straight-through, value 0/1; soft: the sigmoid)."""
        sig = torch.sigmoid(logit / self.cfg.temperature)
        if self.cfg.mask == "soft":
            return sig
        return sig + ((sig > 0.5).to(sig.dtype) - sig).detach()

    def merged_params(self, lam: torch.Tensor, logits) -> Tensors:
        """W_t for every tensor of the scope, in file order (module docstring)."""
        am = self.am
        c = torch.clamp(lam, 0.0, 1.0) if self.cfg.clamp else lam
        masks = [[self.mask(m) for m in lu] for lu in logits]
        out = {}
        for n in am.order:
            col = am.unit_index[n] if c.shape[1] > 1 else 0
            w = am.base[n]
            if n in self.where:
                i, j = self.where[n]
                rows = self.units[i].rows(j)
                for k in range(am.num_tasks):
                    comp = (self._u[i][k][rows] * (masks[i][k] * self._s[i][k])) @ self._v[i][k].T
                    if self._rest[i][k] is not None:
                        comp = comp + self._rest[i][k][rows]
                    w = w + c[k, col] * comp
            else:
                for k in range(am.num_tasks):
                    w = w + c[k, col] * self._plain[k][n]
            out[n] = w
        return out

    def loss(self, lam: torch.Tensor, logits, batches) -> torch.Tensor:
        return entropy_loss(self.am.model, self.merged_params(lam, logits), self.am.heads, batches, self.dtype)

    def gradient(self, lam: torch.Tensor, logits, batches):
        """(loss, ∂loss/∂λ, ∂loss/∂logits [unit][task]) by autograd at the given values (cast to the dtype)."""
        lam = lam.detach().to(self.dtype).requires_grad_(True)
        logits = [[m.detach().to(self.dtype).requires_grad_(True) for m in lu] for lu in logits]
        loss = self.loss(lam, logits, batches)
        flat = [m for lu in logits for m in lu]
        grads = torch.autograd.grad(loss, [lam] + flat)
        it = iter(grads[1:])
        return float(loss.detach()), grads[0], [[next(it) for _ in lu] for lu in logits]

    def weight_gradient(self, lam: torch.Tensor, logits, batches) -> Tensors:
        """G_t = ∂loss/∂W_t at the merged weights of (λ, logits) (for the straight-through check)."""
        with torch.no_grad():
            params = self.merged_params(lam.to(self.dtype), [[m.to(self.dtype) for m in lu] for lu in logits])
        params = {n: w.detach().requires_grad_(True) for n, w in params.items()}
        loss = entropy_loss(self.am.model, params, self.am.heads, batches, self.dtype)
        names = list(params)
        return dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))

    def learn(self, step_batches, lam0: Optional[torch.Tensor] = None, logits0=None) -> dict:
        """``cfg.steps`` Adam steps; ``step_batches(s)`` -> per-task list of batches of step s.

        Returns the losses, λ and logits after the last step, the step-0 gradients, and
        ``logit_history`` [steps + 1, N]: every logit (flattened unit, task, component) in state s
        (s = after s updates; state 0 = the initial values)."""
        cfg = self.cfg
        init_lam, init_logits = self.initial()
        lam0 = init_lam if lam0 is None else lam0
        logits0 = init_logits if logits0 is None else logits0
        lam = torch.nn.Parameter(lam0.detach().clone().to(self.dtype))
        logits = [[torch.nn.Parameter(m.detach().clone().to(self.dtype)) for m in lu] for lu in logits0]
        flat = [m for lu in logits for m in lu]
        opt = torch.optim.Adam([lam] + flat, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
        losses, history = [], [torch.cat([m.detach() for m in flat])]
        grad_lam0 = grad_logits0 = None
        for s in range(cfg.steps):
            opt.zero_grad()
            loss = self.loss(lam, logits, step_batches(s))
            loss.backward()
            losses.append(float(loss.detach()))
            if s == 0:
                grad_lam0 = lam.grad.detach().clone()
                grad_logits0 = [[m.grad.detach().clone() for m in lu] for lu in logits]
            opt.step()
            history.append(torch.cat([m.detach() for m in flat]))
        return {
            "losses": losses,
            "lambda_final": lam.detach().clone(),
            "logits_final": [[m.detach().clone() for m in lu] for lu in logits],
            "grad_lambda0": grad_lam0,
            "grad_logits0": grad_logits0,
            "logit_history": torch.stack(history),
        }

    def locate(self, index: int) -> Tuple[str, int, int]:
        """(unit name, task, component) of a flat logit index (order of ``logit_history``)."""
        for u in self.units:
            for k, c in enumerate(u.tasks):
                if index < c.s.numel():
                    return u.name, k, index
                index -= c.s.numel()
        raise IndexError(index)

    def hard_states(self, history: torch.Tensor) -> torch.Tensor:
        """Which components the hard forward keeps in each state: σ(m / T) > 0.5 in the history's dtype."""
        return torch.sigmoid(history / self.cfg.temperature) > 0.5


def closest_to_zero(history: torch.Tensor) -> Tuple[float, int, int]:
    """(min |m|, state, flat index) over every logit and state of a ``logit_history``."""
    a = history.abs()
    i = int(a.argmin())
    return float(a.view(-1)[i]), i // a.shape[1], i % a.shape[1]


def flips(states: torch.Tensor) -> Dict[str, int]:
    """Hard-mask flips of a run (``states`` [steps + 1, N] of ``hard_states``): entries whose final state
    differs from the initial one, entries that differ in some state, state changes between consecutive
    states (summed over entries), number of entries, entries on at the end."""
    return {
        "final_differs": int((states[-1] != states[0]).sum()),
        "ever_differs": int((states != states[0]).any(0).sum()),
        "changes": int((states[1:] != states[:-1]).sum()),
        "total": int(states.shape[1]),
        "on_final": int(states[-1].sum()),
    }


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", type=Path, required=True)
    ap.add_argument("--finetuned", action="append", required=True, help="NAME=DIR (task order = argument order)")
    ap.add_argument("--heads", type=Path, required=True, help="safetensors, one [C, P] tensor per task name")
    ap.add_argument("--batches", type=Path, required=True, help="safetensors, one [S, NB, B, C, H, W] tensor per task")
    d = Config()
    ap.add_argument("--base", choices=["ta", "tsv-m"], default=d.base)
    ap.add_argument("--decompose", choices=["attn-mlp", "matrices"], default=d.decompose)
    ap.add_argument("--qkv", choices=["fused", "split"], default=d.qkv)
    ap.add_argument("--rank", type=float, default=d.rank)
    ap.add_argument("--rest", choices=["drop", "keep"], default=d.rest)
    ap.add_argument("--mask", choices=["hard", "soft"], default=d.mask)
    ap.add_argument("--temperature", type=float, default=d.temperature)
    ap.add_argument("--mask-init", type=float, default=d.mask_init)
    ap.add_argument("--init", type=float, default=None, help="λ init (default ta 0.3, tsv-m 1.0)")
    ap.add_argument("--clamp", action="store_true")
    ap.add_argument("--granularity", choices=["layer", "task"], default=d.granularity)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batches-per-task", type=int, default=d.batches_per_task)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write config, losses, λ and logits JSON here")
    a = ap.parse_args(argv)

    torch.set_num_threads(1)
    cfg = Config(a.base, a.decompose, a.qkv, a.rank, a.rest, a.mask, a.temperature, a.mask_init, a.init, a.clamp,
                 a.granularity, a.lr, a.steps, a.batches_per_task)
    tasks, dirs = [], []
    for spec in a.finetuned:
        name, _, path = spec.partition("=")
        tasks.append(name)
        dirs.append(Path(path))
    head_file, batch_file = load_file(str(a.heads)), load_file(str(a.batches))
    am = ra.AdaMerging(a.pretrained, dirs, [head_file[t] for t in tasks],
                       dtype=torch.float64 if a.float64 else torch.float32)
    ar = AdaRank(am, cfg)
    res = ar.learn(ra.step_batches_from(batch_file, tasks, cfg.batches_per_task))
    for u in ar.units:
        print(f"unit {u.name} {list(u.shape)}: rho {u.rho}, kept {[c.s.numel() for c in u.tasks]}")
    for s, l in enumerate(res["losses"]):
        print(f"step {s:3d} loss {l:.6f}")
    lam0, _ = ar.initial()
    mn, state, idx = closest_to_zero(res["logit_history"])
    print(f"max |λ_final − λ_init| = {float((res['lambda_final'] - lam0.to(am.dtype)).abs().max()):.6f}; "
          f"min |logit| over the run {mn:.3e} (state {state}, {ar.locate(idx)}); "
          f"flips {flips(ar.hard_states(res['logit_history']))}")
    if a.out:
        a.out.write_text(json.dumps({
            "config": cfg.as_json(),
            "tasks": tasks,
            "lambda_units": [{"name": u, "tensors": ts} for u, ts in am.units],
            "losses": res["losses"],
            "lambda_final": res["lambda_final"].tolist(),
            "mask_final": {u.name: [m.tolist() for m in lu] for u, lu in zip(ar.units, res["logits_final"])},
        }, indent=1))


if __name__ == "__main__":
    main()
