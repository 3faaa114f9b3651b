"""Write the AdaMerging fixtures under tests/fixtures/adamerging/.

    python scripts/make_adamerging_fixtures.py [--out tests/fixtures/adamerging] [--no-checks]

Needs torch, safetensors and transformers (5.x). Everything is seeded; see
tests/fixtures/adamerging/README.md for what each file holds. The expected
values come from ``scripts/reference_adamerging.py`` (plain PyTorch autograd
through ``torch.func.functional_call`` of ``CLIPVisionModelWithProjection``).

What it does:
1. Builds a tiny random CLIPVisionModelWithProjection (theta_0; LayerNorm and
   bias tensors get small random values so they are not constant), saves it,
   and three fine-tunes alpha / beta / gamma = theta_0 + seeded Gaussian noise
   with std 6 / 8 / 10 % of each tensor's std.
2. Writes per-task heads (random unit rows times 20) and input batches.
3. Runs the four AdaMerging cases for 20 Adam steps and writes expected.json,
   plus a float64 autograd gradient at case layer_wise's initial lambda.
4. Self-checks (unless --no-checks): float64 autograd vs central finite
   differences, bit-identical rerun, how far lambda moved, clamp crossings,
   and float32 vs float64 trajectories.

Note: the random init comes from torch; another torch / transformers version
may change bits of the files (they stay self-consistent).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_adamerging as ra  # noqa: E402

import safetensors  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import transformers  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

SEED = 20240507
TASKS = ["alpha", "beta", "gamma"]
CLASSES = {"alpha": 3, "beta": 4, "gamma": 5}
FT_FRACTION = {"alpha": 0.06, "beta": 0.08, "gamma": 0.10}  # perturbation std / tensor std
HEAD_SCALE = 20.0
STEPS = 20
NB = 2  # batches stored per step
B = 4  # images per batch
LR = 1e-2
TIES_K = 0.2
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=8,
    patch_size=4,
    num_channels=3,
    projection_dim=16,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
# (name, granularity, clamp, ties_k, batches_per_task, init)
CASES = [
    ("task_wise", "task", True, None, 1, "const"),
    ("layer_wise", "layer", True, None, 1, "uniform_edges"),
    ("layer_wise_pp", "layer", True, TIES_K, 1, "const"),
    ("layer_wise_two_batches_noclamp", "layer", False, None, 2, "const"),
]
EDGE_ENTRIES = 8  # entries of layer_wise's init set to 0.999 / 0.001


def gen(offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


# --------------------------------------------------------------------------- models


def make_models(out: Path) -> list[str]:
    torch.manual_seed(SEED)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)).to(torch.float32)
    g = gen(1)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if not v.is_floating_point():
            continue
        if "layer_norm" in k or "layrnorm" in k or "layernorm" in k:
            if k.endswith(".weight"):
                sd[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
            else:
                sd[k] = 0.05 * torch.randn(v.shape, generator=g)
        elif k.endswith(".bias"):
            sd[k] = 0.05 * torch.randn(v.shape, generator=g)
    model.load_state_dict(sd)
    model.save_pretrained(out / "pretrained", safe_serialization=True)
    names = ra.safetensors_order(out / "pretrained" / "model.safetensors")
    raw_names = list(load_file(str(out / "pretrained" / "model.safetensors")))
    base, _ = ra.load_checkpoint(out / "pretrained")
    for i, t in enumerate(TASKS):
        g = gen(10 + i)
        ft = {}
        for k in sorted(sd):
            v = sd[k]
            if k in base:
                noise = torch.randn(v.shape, generator=g)
                ft[k] = v + FT_FRACTION[t] * float(v.std()) * noise
            else:
                ft[k] = v
        model.load_state_dict(ft)
        model.save_pretrained(out / "finetuned" / t, safe_serialization=True)
    model.load_state_dict(sd)
    return raw_names


def make_heads_and_batches(out: Path) -> None:
    g = gen(2)
    heads = {}
    for t in TASKS:
        w = torch.randn(CLASSES[t], VISION["projection_dim"], generator=g)
        heads[t] = (HEAD_SCALE * w / w.norm(dim=-1, keepdim=True)).contiguous()
    save_file(heads, str(out / "heads.safetensors"))
    g = gen(3)
    c, s = VISION["num_channels"], VISION["image_size"]
    batches = {t: torch.randn(STEPS, NB, B, c, s, s, generator=g) for t in TASKS}
    save_file(batches, str(out / "batches.safetensors"))


# --------------------------------------------------------------------------- cases


class Fixture:
    def __init__(self, out: Path):
        self.out = out
        self.pretrained = out / "pretrained"
        self.finetuned = [out / "finetuned" / t for t in TASKS]
        hf = load_file(str(out / "heads.safetensors"))
        self.heads = [hf[t] for t in TASKS]
        self.batches = load_file(str(out / "batches.safetensors"))
        self._models = {}

    def model(self, ties_k, dtype=torch.float32) -> ra.AdaMerging:
        key = (ties_k, dtype)
        if key not in self._models:
            self._models[key] = ra.AdaMerging(self.pretrained, self.finetuned, self.heads, ties_k=ties_k, dtype=dtype)
        return self._models[key]

    def step_batches(self, bpt):
        return ra.step_batches_from(self.batches, TASKS, bpt)

    def run(self, case, lam0, dtype=torch.float32):
        name, gran, clamp, ties_k, bpt, _ = case
        return self.model(ties_k, dtype).learn(lam0, clamp, self.step_batches(bpt), LR, STEPS)


def layer_wise_init(fx: Fixture) -> torch.Tensor:
    """Uniform [0.05, 0.95]; EDGE_ENTRIES entries at 0.999 / 0.001, the value picked so that the
    first Adam step (which moves every entry by ~lr against its gradient sign) pushes it out of [0, 1]."""
    am = fx.model(None)
    k, l = am.num_tasks, am.num_units
    lam = 0.05 + 0.9 * torch.rand(k, l, generator=gen(4))
    idx = torch.randperm(k * l, generator=gen(5))[:EDGE_ENTRIES].tolist()
    for j, i in enumerate(idx):
        lam.view(-1)[i] = 0.999 if j % 2 == 0 else 0.001
    for _ in range(3):
        _, g = am.gradient(lam, True, fx.step_batches(1)(0))
        changed = False
        for i in idx:
            want = 0.999 if g.view(-1)[i] < 0 else 0.001
            if float(lam.view(-1)[i]) != float(torch.tensor(want, dtype=torch.float32)):
                lam.view(-1)[i] = want
                changed = True
        if not changed:
            break
    return lam.to(torch.float32)


def init_for(fx: Fixture, case) -> torch.Tensor:
    name, gran, _, ties_k, _, init = case
    am = fx.model(ties_k)
    cols = 1 if gran == "task" else am.num_units
    if init == "const":
        return torch.full((am.num_tasks, cols), 0.3, dtype=torch.float32)
    return layer_wise_init(fx)


def ties_checks(am: ra.AdaMerging) -> dict:
    out = {}
    for t, tau in zip(TASKS, am.taus32):
        l1 = sum(float(v.to(torch.float64).abs().sum()) for v in tau.values())
        nnz = sum(int((v != 0).sum()) for v in tau.values())
        numel = sum(v.numel() for v in tau.values())
        out[t] = {"l1": l1, "nonzeros": nnz, "numel": numel}
    return out


def gradient_check(fx: Fixture, lam0: torch.Tensor, fd: bool):
    """float64 autograd gradient at lam0 on step 0 (clamp on, 1 batch per task); optionally vs central FD.

    Returns (json entry, max|fd - grad| / max|grad| or nan)."""
    am = fx.model(None, torch.float64)
    batches = fx.step_batches(1)(0)
    loss, g = am.gradient(lam0.to(torch.float64), True, batches)
    res = {
        "case": "layer_wise",
        "step": 0,
        "dtype": "float64",
        "clamp": True,
        "batches_per_task": 1,
        "lambda": lam0.tolist(),
        "loss": loss,
        "grad": g.tolist(),
    }
    rel = float("nan")
    if fd:
        eps = 1e-5
        lam = lam0.to(torch.float64)
        fdg = torch.zeros_like(lam)
        with torch.no_grad():
            for i in range(lam.numel()):
                lp, lm = lam.clone(), lam.clone()
                lp.view(-1)[i] += eps
                lm.view(-1)[i] -= eps
                fdg.view(-1)[i] = (am.loss(lp, True, batches) - am.loss(lm, True, batches)) / (2 * eps)
        err = (fdg - g).abs()
        rel = float(err.max() / g.abs().max())
        big = g.abs() > 1e-3 * g.abs().max()
        per_entry = float((err[big] / g.abs()[big]).max())
        print(
            f"[check i] float64 autograd vs central FD (eps {eps}): max|diff| {float(err.max()):.3e}, "
            f"max|diff|/max|grad| {rel:.3e}, worst per-entry rel (|g|>1e-3 max) {per_entry:.3e}, "
            f"|grad| min {float(g.abs().min()):.3e} max {float(g.abs().max()):.3e}"
        )
        assert rel <= 1e-6, rel
    return res, rel


# --------------------------------------------------------------------------- README


README = """# AdaMerging fixtures

Tiny, deterministic inputs and expected results for AdaMerging / AdaMerging++ (Yang et al.,
ICLR 2024). Generated by

    python scripts/make_adamerging_fixtures.py        # needs torch safetensors transformers

(generated with torch {torch}, transformers {transformers}, safetensors {safetensors}; another
torch/transformers version may change the random init and so every file — regenerate all of
them together). Expected values come from `scripts/reference_adamerging.py`: plain PyTorch
autograd (loss → `torch.func.functional_call(CLIPVisionModelWithProjection, merged, (pixels,))`
→ merged weights → clamp → λ), transformers' "sdpa" attention, float32 (the "eager" one takes
its softmax in float32 even for float64 models). In `layer_wise_pp` an entry whose processed
τ_k is all zero on its unit has gradient exactly 0 and never moves ({frozen_pp} of {nlam} entries here).

| path | what |
|---|---|
| `pretrained/` | θ₀: tiny random `CLIPVisionModelWithProjection` (`config.json` + `model.safetensors`, float32, {ntensors} tensors, {nparams} parameters): hidden 32, intermediate 64, 2 layers, 2 heads, image 8, patch 4, 3 channels, projection 16, quick_gelu, layer_norm_eps 1e-5. LayerNorm weights 1 + N(0, 0.1²), LayerNorm and linear biases N(0, 0.05²) (so no tensor is constant) |
| `finetuned/alpha` `beta` `gamma` | θ_k = θ₀ + ε·std(θ₀ tensor)·N(0, 1) per tensor, ε = 0.06 / 0.08 / 0.10, saved the same way |
| `heads.safetensors` | `alpha` [3, 16], `beta` [4, 16], `gamma` [5, 16]: random unit rows × 20 (already scaled) |
| `batches.safetensors` | `alpha` `beta` `gamma`, each [20, 2, 4, 3, 8, 8] = (step, batch within step, image, C, H, W), N(0, 1) float32; step s uses `batches[task][s, b]` for b < batches_per_task |
| `expected.json` | the cases, see below |

Tensor names in `model.safetensors` (header order = data order = alphabetical, as
`safetensors` writes them): {prefix_note}

## Formulas

- Merge scope: every tensor `vision_model.*` and `visual_projection.*` (all {ntensors}; no
  `position_ids` buffer is saved by transformers 5). τ_k = θ_k − θ₀ in float32.
- Units ("paper" layering, L = {nunits}): one per tensor, except per encoder layer
  `self_attn.{{q,k,v}}_proj.weight` → one unit `self_attn.in_proj.weight` and the three biases →
  `self_attn.in_proj.bias`. Units are listed in order of the first appearance of any of their
  tensors in the file (in_proj units list their tensors q, k, v).
- λ: [K, 1] (granularity `task`, one value per task for every unit) or [K, L] (`layer`).
  c = clamp(λ, 0, 1) (torch.clamp; its gradient passes for 0 ≤ λ ≤ 1 inclusive, 0 outside) when
  `clamp`, else c = λ. W_t = θ₀_t + Σ_k c[k, unit(t)]·τ_k,t (pretrained coefficient 1).
- logits = normalize(image_embeds) @ W_headᵀ; entropy H = −Σ_c softmax·log_softmax.
- Loss of step s = Σ_k Σ_{{b < batches_per_task}} mean over the 4 images of H, on
  `batches[task_k][s, b]`. One backward on the summed loss, then one
  `torch.optim.Adam([λ], lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)` step. `losses[s]` is
  the loss at λ before step s's update; `lambda_final` is λ after 20 steps.
- AdaMerging++ (`ties_k` not null): each τ_k is first TIES-processed: trim over the whole
  flattened task vector (d = numel, threshold = the (d − ⌊d·k⌋)-th smallest |x|, keep
  |x| ≥ threshold) → τ̂_k; γ = sign(Σ_k τ̂_k), exact zeros take sign(Σ γ) over all entries (0 if
  that is 0); keep τ̂_k where τ̂_k·γ > 0. These per-task vectors replace τ_k above.
  `ties_checks[task]` = {{`l1`: float64 Σ|x|, `nonzeros`, `numel`}} of each processed vector.

## `expected.json`

```
{{
  "torch": str, "transformers": str,
  "tasks": ["alpha", "beta", "gamma"],
  "cases": [
    {{ "name": str, "granularity": "task"|"layer", "clamp": bool, "ties_k": null|number,
      "batches_per_task": int, "lr": number, "steps": 20, "tasks": [...],
      "units": [{{"name": str, "tensors": [str, ...]}}, ...],          // L = {nunits}
      "lambda_init": [[...]], "lambda_final": [[...]],              // K × L, or K × 1 for "task"
      "losses": [20 numbers],
      "ties_checks": {{task: {{"l1", "nonzeros", "numel"}}}}           // layer_wise_pp only
    }}, ...
  ],
  "gradient_check": {{ "case": "layer_wise", "step": 0, "dtype": "float64", "clamp": true,
      "batches_per_task": 1, "lambda": K × L, "loss": number, "grad": K × L }}
}}
```

λ values are the exact float32 values written as doubles. `gradient_check` is ∂loss/∂λ by
PyTorch autograd with model, task vectors, heads and pixels cast to float64 (computed from the
float32 τ), at `layer_wise`'s initial λ on step 0's batches.

Cases (K = 3, L = {nunits}, lr 1e-2, 20 steps):

| case | granularity | clamp | ties_k | batches/task | λ init | max abs(λ_final − λ_init) |
|---|---|---|---|---|---|---|
{case_rows}

`layer_wise`'s init is 0.05 + 0.9·U(0, 1) (seeded) with {edges} entries set to 0.999 or 0.001, the
value chosen so that the step-0 gradient pushes them out of [0, 1]; {clamped} entries leave [0, 1]
at some step (after which their gradient is exactly 0 and Adam's momentum carries them on).

Self-checks the generator ran: float64 autograd vs central finite differences (eps 1e-5) at
`gradient_check`'s λ: max abs difference / max abs(grad) = {fd_rel:.1e}; a second run gives
bit-identical λ; float32 vs float64 reruns of every case differ in λ_final by at most
{f64_diff:.1e}.
"""


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "adamerging")
    ap.add_argument("--no-checks", action="store_true", help="skip the finite-difference / rerun / float64 checks")
    a = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    out = a.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    raw_names = make_models(out)
    prefixed = all(n.startswith(("vision_model.", "visual_projection.")) for n in raw_names)
    print(f"pretrained: {len(raw_names)} tensors, all prefixed vision_model./visual_projection.: {prefixed}")
    make_heads_and_batches(out)

    fx = Fixture(out)
    checks = not a.no_checks
    cases_json, moved, clamped, f64_diff = [], {}, 0, 0.0
    lam_b = None
    for case in CASES:
        name, gran, clamp, ties_k, bpt, _ = case
        lam0 = init_for(fx, case)
        if name == "layer_wise":
            lam_b = lam0
        res = fx.run(case, lam0)
        am = fx.model(ties_k)
        entry = {
            "name": name,
            "granularity": gran,
            "clamp": clamp,
            "ties_k": ties_k,
            "batches_per_task": bpt,
            "lr": LR,
            "steps": STEPS,
            "tasks": TASKS,
            "units": [{"name": u, "tensors": ts} for u, ts in am.units],
            "lambda_init": lam0.tolist(),
            "lambda_final": res["lambda_final"].tolist(),
            "losses": res["losses"],
        }
        if ties_k is not None:
            entry["ties_checks"] = ties_checks(am)
            frozen_pp = int((res["lambda_final"] == lam0).sum())
            nlam = lam0.numel()
        cases_json.append(entry)
        moved[name] = float((res["lambda_final"] - lam0).abs().max())
        g0 = res["grads"][0].abs()
        print(
            f"[check iii] {name}: max|lambda_final - lambda_init| = {moved[name]:.4f}; "
            f"step-0 |grad| min {float(g0.min()):.2e} max {float(g0.max()):.2e}; "
            f"loss {res['losses'][0]:.5f} -> {res['losses'][-1]:.5f}"
        )
        if name == "layer_wise":
            hist = torch.stack(res["history"])
            out_of = ((hist < 0) | (hist > 1)).any(dim=0)
            clamped = int(out_of.sum())
            print(f"[check iv] layer_wise: {clamped} of {out_of.numel()} lambda entries leave [0, 1] at some step")
        if ties_k is not None:
            for t, d in entry["ties_checks"].items():
                print(f"  ties_checks {t}: l1 {d['l1']:.6f} nonzeros {d['nonzeros']} / {d['numel']}")
        if checks:
            res2 = fx.run(case, lam0)
            same = torch.equal(res2["lambda_final"], res["lambda_final"]) and res2["losses"] == res["losses"]
            print(f"[check ii] {name}: rerun bit-identical: {same}")
            assert same
            r64 = fx.run(case, lam0, torch.float64)
            d = float((r64["lambda_final"] - res["lambda_final"].to(torch.float64)).abs().max())
            f64_diff = max(f64_diff, d)
            print(f"[check v] {name}: max|lambda_final f32 - f64| = {d:.2e}")
        assert moved[name] >= 0.05, (name, moved[name])

    grad, fd_rel = gradient_check(fx, lam_b, checks)
    expected = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tasks": TASKS,
        "cases": cases_json,
        "gradient_check": grad,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")

    am = fx.model(None)
    rows = []
    for case, c in zip(CASES, cases_json):
        init = "0.3" if case[5] == "const" else "U[0.05, 0.95] + edges"
        rows.append(
            f"| `{c['name']}` | {c['granularity']} | {str(c['clamp']).lower()} | "
            f"{'null' if c['ties_k'] is None else c['ties_k']} | {c['batches_per_task']} | {init} | "
            f"{moved[c['name']]:.3f} |"
        )
    if prefixed:
        prefix_note = "all start with `vision_model.` or `visual_projection.` (transformers 5.23 keeps the prefix for `CLIPVisionModelWithProjection`)."
    else:
        prefix_note = "some are written WITHOUT the `vision_model.` prefix by this transformers version; read them as prefixed."
    nparams = sum(v.numel() for v in am.base.values())

    (out / "README.md").write_text(
        README.format(
            torch=torch.__version__,
            transformers=transformers.__version__,
            safetensors=safetensors.__version__,
            ntensors=len(raw_names),
            nparams=nparams,
            nunits=am.num_units,
            prefix_note=prefix_note,
            case_rows="\n".join(rows),
            edges=EDGE_ENTRIES,
            clamped=clamped,
            frozen_pp=frozen_pp,
            nlam=nlam,
            fd_rel=fd_rel,
            f64_diff=f64_diff,
        )
    )
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
