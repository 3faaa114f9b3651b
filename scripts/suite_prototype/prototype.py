"""Prototype (PyTorch) of the built-in small suite: 8 procedural 32x32 image tasks, a tiny CLIP-style ViT,
broad pretraining, fixed class-mean heads, gentle per-task fine-tuning, and the merges
(weight averaging, Task Arithmetic, TIES, task-wise and layer-wise AdaMerging).

    python scripts/suite_prototype/prototype.py --seed 0 [--layers 6 --width 64 --patch 8 ...] [--json out.json]

Deterministic from --seed (single thread CPU). See scripts/suite_prototype/NOTES.md for the recipe and results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

torch.set_num_threads(1)

# --------------------------------------------------------------------------- data

SHAPES = ["circle", "square", "triangle", "cross", "ring"]
# saturated hues for the shape (task "colour")
HUES = np.array(
    [
        [0.95, 0.10, 0.10],  # red
        [0.95, 0.55, 0.05],  # orange
        [0.95, 0.95, 0.10],  # yellow
        [0.15, 0.85, 0.15],  # green
        [0.10, 0.90, 0.90],  # cyan
        [0.15, 0.25, 0.95],  # blue
        [0.60, 0.15, 0.90],  # purple
        [0.95, 0.40, 0.75],  # pink
    ],
    dtype=np.float32,
)
# dull background tints (task "background")
BG = np.array(
    [
        [0.45, 0.25, 0.25],
        [0.25, 0.45, 0.25],
        [0.25, 0.25, 0.50],
        [0.45, 0.45, 0.20],
        [0.20, 0.42, 0.45],
        [0.42, 0.22, 0.45],
    ],
    dtype=np.float32,
)
SIZES = [4.0, 5.0, 6.0, 7.0, 8.0]  # shape "radius" in pixels
CENTRES = [8.0, 16.0, 24.0]  # 3x3 grid of shape centres
POS_JIT = 1.0
STRIPE_ANGLES = [0, 30, 60, 90, 120, 150]  # degrees
COUNTS = [1, 2, 3, 4, 5]  # number of dots (not a task by default: too hard for the tiny ViT)
PERIODS = [3.0, 4.0, 5.25, 7.0, 9.5]  # stripe period in pixels (task "frequency")
DOT_COLOURS = np.array(
    [[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32
)

CONTRASTS = [0.1, 0.3, 0.5, 0.7, 0.9]  # stripe amplitude (task "contrast")
LIGHTNESS = [0.3, 0.475, 0.65, 0.825, 1.0]  # multiplier of the shape colour (task "lightness")
# colour of a 2-px frame around the image (task "frame"; replaces the unlearnable "position" task)
FRAME = np.array(
    [
        [0.85, 0.85, 0.85],
        [0.10, 0.10, 0.10],
        [0.80, 0.45, 0.10],
        [0.10, 0.55, 0.55],
        [0.55, 0.15, 0.55],
        [0.55, 0.75, 0.20],
    ],
    dtype=np.float32,
)
FRAME_W = 2
DATA_VERSION = "v4frame"  # cache key: bump whenever the generator changes
GRAIN = [0.03]  # std of the per-pixel Gaussian noise (a task "grain" with [0, .04, .08, .12, .16] was tried: worse)

# task name -> (factor, number of classes)
# generative factors that are tasks or pretraining targets: (factor, number of values)
GEN_FACTORS = [
    ("colour", len(HUES)),
    ("frame", len(FRAME)),
    ("stripes", len(STRIPE_ANGLES)),
    ("frequency", len(PERIODS)),
    ("background", len(BG)),
    ("dotcolour", len(DOT_COLOURS)),
    ("contrast", len(CONTRASTS)),
    ("lightness", len(LIGHTNESS)),
]
# task name -> (factor it reads, number of classes, class of each factor value).  The *pair tasks re-group a
# factor crosswise (value v -> class v % m), so they conflict with the task that reads the factor in full.
TASK_DEFS = {f: (f, c, list(range(c))) for f, c in GEN_FACTORS}
TASK_DEFS["huepair"] = ("colour", 4, [v % 4 for v in range(len(HUES))])  # complementary hues: red+cyan, ...
TASK_DEFS["stripepair"] = ("stripes", 3, [v % 3 for v in range(len(STRIPE_ANGLES))])  # orthogonal orientations
TASK_DEFS["dotpair"] = ("dotcolour", 3, [v % 3 for v in range(len(DOT_COLOURS))])
TASK_DEFS["bgpair"] = ("background", 3, [v % 3 for v in range(len(BG))])
DEFAULT_TASKS = "colour,frame,stripes,frequency,background,bgpair,huepair,stripepair"
# (session-1 task set: "colour,position,stripes,frequency,background,dotcolour,contrast,lightness")
TASKS: list = []  # [(task name, number of classes)], set by set_tasks()


def set_tasks(spec: str):
    TASKS[:] = [(t, TASK_DEFS[t][1]) for t in spec.split(",")]


def task_labels(t: str, lab: dict) -> np.ndarray:
    f, _, m = TASK_DEFS[t]
    return np.asarray(m)[lab[f]]


set_tasks(DEFAULT_TASKS)
# factors drawn at random in every image but not asked about (position/shape/size/count: not learnable by the
# tiny patch-8 ViT at this budget; grain: a single noise level)
NUISANCE = [("position", len(CENTRES) ** 2), ("shape", len(SHAPES)), ("size", len(SIZES)), ("count", len(COUNTS)), ("grain", len(GRAIN))]

_YY, _XX = np.meshgrid(np.arange(32, dtype=np.float32) + 0.5, np.arange(32, dtype=np.float32) + 0.5, indexing="ij")


_FRAME_MASK = (np.minimum(_XX, 32 - _XX) < FRAME_W) | (np.minimum(_YY, 32 - _YY) < FRAME_W)


def shape_mask(kind: int, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = _XX - cx, _YY - cy
    if kind == 0:  # circle
        return dx * dx + dy * dy <= r * r
    if kind == 1:  # square (area ~ circle)
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.88 * r
    if kind == 2:  # triangle, apex up
        t = (dy + r) / (1.9 * r)
        return (dy >= -r) & (dy <= 0.9 * r) & (np.abs(dx) <= t * 1.1 * r)
    if kind == 3:  # cross
        w = 0.38 * r
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if kind == 4:  # ring
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    # diamond
    return np.abs(dx) + np.abs(dy) <= 1.25 * r


def generate(rng: np.random.Generator, n: int):
    """n images [n, 3, 32, 32] float32 in [0, 1] and all factor labels {factor: int64[n]}."""
    lab = {f: rng.integers(0, c, size=n) for f, c in GEN_FACTORS + NUISANCE}
    imgs = np.empty((n, 32, 32, 3), dtype=np.float32)
    for i in range(n):
        # background: tint x oriented stripes, random phase and period
        th = math.radians(STRIPE_ANGLES[lab["stripes"][i]] + rng.uniform(-5, 5))
        period = PERIODS[lab["frequency"][i]] * rng.uniform(0.95, 1.05)
        u = (_XX * math.cos(th) + _YY * math.sin(th)) * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi)
        stripe = 0.5 + 0.5 * np.sin(u)
        bg = BG[lab["background"][i]] * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
        amp = CONTRASTS[lab["contrast"][i]]
        img = bg[None, None, :] * (1.0 - amp + 2.0 * amp * stripe[..., None])
        # frame
        if FRAME_W > 0:
            img[_FRAME_MASK] = FRAME[lab["frame"][i]]
        # main shape
        pos = lab["position"][i]
        cx = CENTRES[pos % len(CENTRES)] + rng.uniform(-POS_JIT, POS_JIT)
        cy = CENTRES[pos // len(CENTRES)] + rng.uniform(-POS_JIT, POS_JIT)
        r = SIZES[lab["size"][i]] * rng.uniform(0.95, 1.05)
        m = shape_mask(int(lab["shape"][i]), cx, cy, r)
        col = np.clip((HUES[lab["colour"][i]] + rng.uniform(-0.05, 0.05, size=3)) * LIGHTNESS[lab["lightness"][i]], 0, 1)
        img[m] = col
        # dots (3x3), away from the shape's box when possible
        dcol = DOT_COLOURS[lab["dotcolour"][i]]
        placed = []
        for _ in range(COUNTS[lab["count"][i]]):
            for _try in range(30):
                x, y = int(rng.integers(0, 30)), int(rng.integers(0, 30))
                if abs(x + 1.5 - cx) < r + 2.5 and abs(y + 1.5 - cy) < r + 2.5:
                    continue
                if any(abs(x - px) < 5 and abs(y - py) < 5 for px, py in placed):
                    continue
                break
            placed.append((x, y))
            img[y : y + 3, x : x + 3] = dcol
        img += rng.normal(0, GRAIN[lab["grain"][i]], size=img.shape).astype(np.float32)
        imgs[i] = np.clip(img, 0, 1)
    return imgs.transpose(0, 3, 1, 2).copy(), lab


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


# --------------------------------------------------------------------------- model


def make_model(a):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=a.width,
        intermediate_size=4 * a.width,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        image_size=32,
        patch_size=a.patch,
        projection_dim=a.proj,
        hidden_act="quick_gelu",
        attn_implementation="sdpa",
    )
    return CLIPVisionModelWithProjection(cfg)


def embed(model, x, bs=256, params=None):
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            xb = normalize_pixels(x[i : i + bs])
            if params is None:
                e = model(pixel_values=xb).image_embeds
            else:
                e = functional_call(model, params, (xb,)).image_embeds
            outs.append(F.normalize(e, dim=-1))
    return torch.cat(outs)


def coarse(y: torch.Tensor, c: int, mode: str) -> tuple:
    if mode == "fine":
        return y, c
    if mode == "half":  # merge neighbouring classes pairwise
        return y // 2, (c + 1) // 2
    raise ValueError(mode)


def pretrain(model, x, labs, a, log):
    """Joint multi-factor classification: one linear head per factor on normalized image embeds."""
    heads = torch.nn.ModuleDict()
    targets = {}
    for f, c in GEN_FACTORS:
        if a.pre_factors != "all" and f not in a.pre_factors.split(","):
            continue
        y, cc = coarse(torch.as_tensor(labs[f]), c, a.pre_labels)
        targets[f] = y
        heads[f] = torch.nn.Linear(a.proj, cc)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=a.pre_lr, weight_decay=0.0)
    n = len(x)
    g = torch.Generator().manual_seed(a.seed * 7 + 1)
    steps = a.pre_epochs * (n // a.bs)
    s = 0
    model.train()
    for ep in range(a.pre_epochs):
        perm = torch.randperm(n, generator=g)
        tot, cnt = 0.0, 0
        for i in range(0, n - a.bs + 1, a.bs):
            lr = a.pre_lr * 0.5 * (1 + math.cos(math.pi * s / steps))
            for pg in opt.param_groups:
                pg["lr"] = lr
            idx = perm[i : i + a.bs]
            e = F.normalize(model(pixel_values=normalize_pixels(x[idx])).image_embeds, dim=-1) * a.pre_scale
            loss = sum(F.cross_entropy(heads[f](e), targets[f][idx]) for f in targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            cnt += len(idx)
            s += 1
        log(f"  pretrain epoch {ep} loss {tot / cnt:.4f}")
    model.eval()


def class_mean_heads(model, data, a):
    heads = []
    for f, c in TASKS:
        xtr, ytr = data[f]["train"]
        e = embed(model, xtr)
        y = torch.as_tensor(ytr)
        if a.head_shots > 0:
            w = torch.stack([e[y == k][: a.head_shots].mean(0) for k in range(c)])
        else:
            w = torch.stack([e[y == k].mean(0) for k in range(c)])
        heads.append(F.normalize(w, dim=-1) * a.head_scale)
    return heads


def finetune(model, head, x, y, a, seed):
    opt_cls = torch.optim.Adam if a.ft_opt == "adam" else torch.optim.SGD
    kw = {} if a.ft_opt == "adam" else {"momentum": 0.9}
    opt = opt_cls(model.parameters(), lr=a.ft_lr, **kw)
    n = len(x)
    y = torch.as_tensor(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    steps = a.ft_epochs * (n // a.bs)
    s = 0
    for ep in range(a.ft_epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - a.bs + 1, a.bs):
            if a.ft_cosine:
                for pg in opt.param_groups:
                    pg["lr"] = a.ft_lr * 0.5 * (1 + math.cos(math.pi * s / steps))
            idx = perm[i : i + a.bs]
            e = F.normalize(model(pixel_values=normalize_pixels(x[idx])).image_embeds, dim=-1)
            loss = F.cross_entropy(e @ head.T, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            s += 1
    model.eval()


# --------------------------------------------------------------------------- merging

QKV = re.compile(r"^(.*\.self_attn\.)(q|k|v)_proj\.(weight|bias)$")


def unit_of(name: str) -> str:
    m = QKV.match(name)
    return f"{m.group(1)}in_proj.{m.group(3)}" if m else name


def accuracy(model, params, heads, data, split="test"):
    accs = []
    for k, (f, _) in enumerate(TASKS):
        x, y = data[f][split]
        e = embed(model, x, params=params)
        pred = (e @ heads[k].T).argmax(-1)
        accs.append(float((pred == torch.as_tensor(y)).float().mean()) * 100)
    return accs


def ties_merge(base, taus, k=0.2, lam=1.0):
    names = list(base)
    kept = []
    for tau in taus:
        flat = torch.cat([tau[n].reshape(-1).abs() for n in names])
        d = flat.numel()
        r = d - int(d * k)
        thr = torch.kthvalue(flat, r).values
        kept.append({n: torch.where(tau[n].abs() >= thr, tau[n], torch.zeros_like(tau[n])) for n in names})
    out = {}
    for n in names:
        st = torch.stack([t[n] for t in kept])
        gamma = torch.sign(st.sum(0))
        agree = (st * gamma > 0).float()
        num = (st * agree).sum(0)
        den = agree.sum(0).clamp(min=1)
        out[n] = base[n] + lam * num / den
    return out


def adamerging(model, base, taus, heads, data, a, granularity, steps, lr, log):
    names = list(base)
    units = []
    for n in names:
        u = unit_of(n)
        if u not in units:
            units.append(u)
    uidx = {n: units.index(unit_of(n)) for n in names}
    K = len(taus)
    L = len(units) if granularity == "layer" else 1
    lam = torch.nn.Parameter(torch.full((K, L), a.am_init))
    opt = torch.optim.Adam([lam], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(a.seed * 101 + (1 if granularity == "layer" else 2))
    tests = [torch.as_tensor(data[f]["test"][0]) for f, _ in TASKS]
    stacked = {n: torch.stack([t[n] for t in taus]) for n in names}  # [K, ...]
    for p in model.parameters():
        p.requires_grad_(False)
    for s in range(steps):
        c = lam.clamp(0, 1)
        params = {}
        for n in names:
            col = c[:, uidx[n] if L > 1 else 0]
            params[n] = base[n] + torch.tensordot(col, stacked[n], dims=1)
        loss = 0.0
        for k in range(K):
            idx = torch.randint(0, len(tests[k]), (a.am_bs,), generator=g)
            e = F.normalize(functional_call(model, params, (normalize_pixels(tests[k][idx]),)).image_embeds, dim=-1)
            logits = e @ heads[k].T
            loss = loss + (-(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s % max(1, steps // 5) == 0 or s == steps - 1:
            log(f"    {granularity} step {s} entropy {float(loss.detach()):.4f}")
    c = lam.detach().clamp(0, 1)
    params = {n: base[n] + torch.tensordot(c[:, uidx[n] if L > 1 else 0], stacked[n], dims=1) for n in names}
    return params, c


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=2000, help="train images per task")
    ap.add_argument("--test", type=int, default=600, help="test images per task")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--proj", type=int, default=64)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--pre-epochs", type=int, default=8)
    ap.add_argument("--pre-lr", type=float, default=2e-3)
    ap.add_argument("--pre-scale", type=float, default=10.0)
    ap.add_argument("--pre-labels", default="fine", choices=["fine", "half"])
    ap.add_argument("--pre-factors", default="all")
    ap.add_argument("--head-scale", type=float, default=20.0)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--ft-lr", type=float, default=5e-4)
    ap.add_argument("--ft-opt", default="adam", choices=["adam", "sgd"])
    ap.add_argument("--ft-cosine", type=int, default=1)
    ap.add_argument("--am-init", type=float, default=0.3)
    ap.add_argument("--am-bs", type=int, default=16)
    ap.add_argument("--am", default="layer:500:1e-3,layer:100:1e-2,layer:200:1e-2,layer:300:1e-2,task:500:1e-3", help="GRAN:STEPS:LR,...")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: deterministic)")
    ap.add_argument("--cache", default=None, help="directory to cache the pretrained model (experiments only)")
    ap.add_argument("--head-shots", type=int, default=16, help="class means from this many train images per class (0: all)")
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma list of task names (see TASK_DEFS)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    set_tasks(a.tasks)

    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    T0 = time.time()
    times = {}

    def log(msg):
        print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)

    # ---- data
    t = time.time()
    data = {}
    for f, c in TASKS:
        xtr, ltr = generate(rng, a.train)
        xte, lte = generate(rng, a.test)
        data[f] = {"train": (torch.from_numpy(xtr), task_labels(f, ltr)), "test": (torch.from_numpy(xte), task_labels(f, lte)), "all_train": ltr}
    times["generate"] = time.time() - t
    log(f"generated {len(TASKS)} x ({a.train} train + {a.test} test) in {times['generate']:.1f}s")

    # ---- pretraining on the union of the train splits, all factor labels
    model = make_model(a)
    nparam = sum(p.numel() for p in model.parameters())
    log(f"model: width {a.width} layers {a.layers} patch {a.patch} proj {a.proj}: {nparam} parameters")
    xall = torch.cat([data[f]["train"][0] for f, _ in TASKS])
    labs = {g: np.concatenate([data[f]["all_train"][g] for f, _ in TASKS]) for g, _ in GEN_FACTORS}
    t = time.time()
    key = f"{DATA_VERSION}_s{a.seed}_w{a.width}_l{a.layers}_p{a.patch}_n{a.train}_e{a.pre_epochs}_lr{a.pre_lr}_{a.pre_labels}_{a.pre_factors}_sc{a.pre_scale}"
    if a.cache and os.path.exists(os.path.join(a.cache, key + ".pt")):
        model.load_state_dict(torch.load(os.path.join(a.cache, key + ".pt")))
        log("pretrained model loaded from cache")
    else:
        pretrain(model, xall, labs, a, log)
        if a.cache:
            os.makedirs(a.cache, exist_ok=True)
            torch.save(model.state_dict(), os.path.join(a.cache, key + ".pt"))
    times["pretrain"] = time.time() - t
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    heads = class_mean_heads(model, data, a)
    acc_pre = accuracy(model, None, heads, data)
    log(f"pretrained+heads: {np.mean(acc_pre):.1f}  {[round(v, 1) for v in acc_pre]}")

    # ---- fine-tuning
    t = time.time()
    taus, acc_ind, rel = [], [], []
    base_norm = math.sqrt(sum(float(v.pow(2).sum()) for v in base.values()))
    for k, (f, _) in enumerate(TASKS):
        model.load_state_dict(base, strict=False)
        finetune(model, heads[k], *data[f]["train"], a, seed=a.seed * 1000 + k)
        ft = {n: p.detach().clone() for n, p in model.named_parameters()}
        tau = {n: ft[n] - base[n] for n in base}
        taus.append(tau)
        rel.append(math.sqrt(sum(float(v.pow(2).sum()) for v in tau.values())) / base_norm)
        acc = accuracy(model, None, heads, data)
        acc_ind.append(acc[k])
        log(f"  finetuned {f}: own {acc[k]:.1f} (pre {acc_pre[k]:.1f})  |tau|/|theta0| {rel[-1]:.4f}")
    times["finetune"] = time.time() - t
    model.load_state_dict(base, strict=False)
    log(f"individual: {np.mean(acc_ind):.1f}")

    res = {"pretrained": acc_pre, "individual": acc_ind}
    K = len(taus)
    t = time.time()
    res["weight_avg"] = accuracy(model, {n: base[n] + sum(tt[n] for tt in taus) / K for n in base}, heads, data)
    res["ta_0.3"] = accuracy(model, {n: base[n] + 0.3 * sum(tt[n] for tt in taus) for n in base}, heads, data)
    res["ties"] = accuracy(model, ties_merge(base, taus), heads, data)
    times["fixed_merges"] = time.time() - t
    for m in ["weight_avg", "ta_0.3", "ties"]:
        log(f"{m}: {np.mean(res[m]):.1f}  {[round(v, 1) for v in res[m]]}")
    ta_grid = {}  # diagnostic only (not a reported method)
    for lam in [0.1, 0.2, 0.5, 0.7, 1.0]:
        ta_grid[lam] = accuracy(model, {n: base[n] + lam * sum(tt[n] for tt in taus) for n in base}, heads, data)
    log("TA lambda grid: " + ", ".join(f"{l}: {np.mean(v):.1f}" for l, v in ta_grid.items()))
    for spec in a.am.split(","):
        gran, steps, lr = spec.split(":")
        name = f"adamerging_{gran}_{steps}x{lr}"
        t = time.time()
        p, c = adamerging(model, base, taus, heads, data, a, gran, int(steps), float(lr), log)
        times[name] = time.time() - t
        res[name] = accuracy(model, p, heads, data)
        log(f"{name}: {np.mean(res[name]):.1f}  {[round(v, 1) for v in res[name]]}  mean lambda {float(c.mean()):.3f}  "
            f"gap over TA0.3 {np.mean(res[name]) - np.mean(res['ta_0.3']):+.2f}")
    times = {k: round(v, 1) for k, v in times.items()}
    log(f"times {times}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"args": vars(a), "tasks": [t for t, _ in TASKS], "params": nparam, "tau_rel": rel, "acc": res, "ta_grid": ta_grid, "times": times}, fh, indent=1)


if __name__ == "__main__":
    main()
