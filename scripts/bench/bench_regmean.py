#!/usr/bin/env python3
"""Benchmark `adamerge merge --method regmean|regmean++` against the same algorithm in PyTorch.

    python3 scripts/bench/bench_regmean.py [--images 256] [--methods regmean,regmean++]
                                           [--threads 2] [--json FILE]

Inputs (generated once, seeded, under `${ADAMERGE_CACHE:-~/.cache/adamerge}/bench-regmean-vitb32`):
a ViT-B/32-shaped `CLIPVisionModelWithProjection` with transformers' random initialisation
(openai/clip-vit-base-patch32's vision config, 87.85 M float32 parameters) and its PIL-backend
`preprocessor_config.json`; 8 "fine-tunes" theta_k = theta_0 + 0.001 N(0, 1); per task a folder
of exactly `--images` random 64x64 PNGs (so both sides read the same images: ours draws all of a
folder when it asks for as many as there are).

Both sides run the whole merge as a user would, in one process each, with `--threads` threads:

* ours: `adamerge --threads T merge --method M --alpha A --images N --batch-size 32 --task ...`
  (load, decode + CLIP preprocessing, Grams, f64 solves, write); its phases come from its
  `load X.XXs, merge Y.YYs, write Z.ZZs` line.
* PyTorch: a child (this script with `--torch-child`) that loads the 9 checkpoints with
  transformers (float32, sdpa), decodes and preprocesses the PNGs with PIL and the PIL-backend
  CLIPImageProcessor, runs `scripts/reference/reference_regmean.py` (`regmean_models` /
  `regmean_plusplus_models`, structured as FusionBench: forward hooks on every nn.Linear, so q, k
  and v each take their own Gram; the projection merged too, as ours does when every fine-tune has
  one) with FusionBench's solve (`torch.linalg.solve`, no eigenvalue check), and saves with
  safetensors. It times its own phases.

Peak RSS is measured with GNU time's `%M` (see common.measured_run). The merged tensors of both
are compared (largest |ours - torch| / largest |torch| per tensor; both compute in float32, so
this is the float32 agreement of two implementations, not an accuracy). Needs torch,
transformers, safetensors, numpy and Pillow (scripts/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "reference")]  # common, reference_regmean

from common import (  # noqa: E402
    DEFAULT_BIN, MIB, VIT_B32, cache_dir, cpu_busy, fmt_ratio, have_gnu_time, lock_inputs, machine_info,
    measured_run, package_versions, publish, rerun_prefix, run_torch_child, snapshot_binary, staging,
)

SEED = 20250
NUM_TASKS = 8
STD_TAU = 0.001
IMAGE_SIZE = 224
SOURCE_SIZE = 64


# --------------------------------------------------------------------------- inputs


def done(p: Path) -> bool:
    return (p / ".complete").is_file()


def make_pretrained(cache: Path) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(SEED)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_B32)).to(torch.float32).eval()
    tmp = staging(cache, "pretrained")
    model.save_pretrained(str(tmp))
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                          do_convert_rgb=True).save_pretrained(str(tmp))
    (tmp / ".complete").write_text("")
    publish(tmp, cache / "pretrained")


def make_finetuned(cache: Path, k: int) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    base = load_file(str(cache / "pretrained" / "model.safetensors"))
    rng = np.random.default_rng([SEED, k + 1])
    ft = {}
    for name in sorted(base):
        a = base[name]
        if np.issubdtype(a.dtype, np.floating):
            a = a + rng.standard_normal(a.shape, dtype=np.float32) * np.float32(STD_TAU)
        ft[name] = a
    tmp = staging(cache, f"ft{k}")
    tmp.mkdir()
    save_file(ft, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(cache / "pretrained" / "config.json", tmp / "config.json")
    (tmp / ".complete").write_text("")
    publish(tmp, cache / f"ft{k}")


def make_images(cache: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    name = f"images-{n}"
    tmp = staging(cache, name)
    for k in range(NUM_TASKS):
        d = tmp / f"t{k}" / "class0"
        d.mkdir(parents=True)
        rng = np.random.default_rng([SEED, 100 + k])
        for i in range(n):
            a = rng.integers(0, 256, (SOURCE_SIZE, SOURCE_SIZE, 3), dtype=np.uint8)
            Image.fromarray(a, "RGB").save(d / f"img{i:04d}.png")
    (tmp / ".complete").write_text("")
    publish(tmp, cache / name)


def ensure_checkpoints(cache: Path, tasks: int = NUM_TASKS) -> None:
    """The pretrained model and the first `tasks` fine-tunes (no images; bench_spectral.py's inputs)."""
    todo = [("pretrained", lambda: make_pretrained(cache))]
    todo += [(f"ft{k}", lambda k=k: make_finetuned(cache, k)) for k in range(tasks)]
    _make_missing(cache, todo)


def ensure_inputs(cache: Path, n: int) -> None:
    ensure_checkpoints(cache)
    _make_missing(cache, [(f"images-{n}", lambda: make_images(cache, n))])


def _make_missing(cache: Path, todo) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for name, make in todo:
        if not done(cache / name):
            t = time.perf_counter()
            print(f"inputs: generating {cache / name}", file=sys.stderr, flush=True)
            make()
            print(f"  done ({time.perf_counter() - t:.1f}s)", file=sys.stderr, flush=True)


def task_dirs(cache: Path, n: int) -> list[tuple[str, Path, Path]]:
    return [(f"t{k}", cache / f"ft{k}", cache / f"images-{n}" / f"t{k}") for k in range(NUM_TASKS)]


# --------------------------------------------------------------------------- PyTorch child


def torch_child(spec: dict) -> None:
    t0 = time.perf_counter()
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoImageProcessor

    import reference_regmean as rr

    torch.set_num_threads(spec["threads"])

    def fusionbench_solve(weights, grams, alpha, name=""):
        # FusionBench's solve (no positive-definiteness check): W = ((sum G~)^-1 sum G~ W^T)^T.
        gts = [rr.reduce_non_diagonal(g, alpha) for g in grams]
        a = sum(gts[1:], gts[0].clone())
        b = sum((g @ w.T for g, w in zip(gts[1:], weights[1:])), gts[0] @ weights[0].T)
        return torch.linalg.solve(a, b).T.contiguous()

    rr.regmean_weight = fusionbench_solve
    t_import = time.perf_counter()
    pre = rr.load_model(spec["pretrained"], torch.float32)
    fts = [rr.load_model(d, torch.float32) for _, d, _ in spec["tasks"]]
    t_load = time.perf_counter()
    proc = AutoImageProcessor.from_pretrained(spec["pretrained"], use_fast=False)
    pixels = []
    for _, _, images in spec["tasks"]:
        files = sorted(Path(images).rglob("*.png"))
        pixels.append(proc(images=[Image.open(f) for f in files], return_tensors="pt")["pixel_values"])
    t_decode = time.perf_counter()
    fn = rr.regmean_plusplus_models if spec["method"] == "regmean++" else rr.regmean_models
    merged = fn(pre, fts, pixels, spec["alpha"], spec["batch"], None, merge_projection=True)
    t_merge = time.perf_counter()
    save_file({k: v.contiguous() for k, v in merged.items()}, spec["out"])
    t_write = time.perf_counter()
    print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import, "decode_s": t_decode - t_load,
                      "merge_s": t_merge - t_decode, "write_s": t_write - t_merge}))


def run_torch(python: str, args, cache: Path, method: str, out: Path, logdir: Path) -> dict:
    spec = {"pretrained": str(cache / "pretrained"), "method": method, "alpha": args.alpha, "batch": 32,
            "threads": args.threads, "out": str(out),
            "tasks": [(t, str(c), str(i)) for t, c, i in task_dirs(cache, args.images)]}
    return run_torch_child(python, Path(__file__).resolve(), spec, args.threads, logdir, f"torch-{method}")


# --------------------------------------------------------------------------- ours


def run_ours(binary: str, args, cache: Path, method: str, out: Path, logdir: Path) -> dict:
    cmd = [binary, "--threads", str(args.threads), "merge", "--method", method, "--alpha", str(args.alpha),
           "--images", str(args.images), "--batch-size", "32", "--pretrained", str(cache / "pretrained"),
           "--out", str(out)]
    for t, ckpt, images in task_dirs(cache, args.images):
        cmd += ["--task", f"{t},checkpoint={ckpt},data={images}"]
    r = measured_run(cmd, dict(os.environ), logdir, f"ours-{method}", have_gnu_time())
    m = re.search(r"load ([\d.]+)s, merge ([\d.]+)s, write ([\d.]+)s", r["stdout"])
    r["phases"] = {"load_s": float(m[1]), "merge_s": float(m[2]), "write_s": float(m[3])} if m else {}
    return r


def compare(ours: Path, ref: Path) -> dict:
    """Largest |ours - torch| / largest |torch| per tensor: the worst over the encoder's linear
    weights (Grams of 12,800 token rows per task) and over every merged tensor (the projection's
    Gram has only 256 pooled rows per task, and a random model's pooled outputs are nearly
    collinear, so float32 solves of it disagree most)."""
    worst = {"all": (0.0, ""), "encoder_linear": (0.0, "")}
    for name, d in rel_diffs(ours, ref).items():
        worst["all"] = max(worst["all"], (d["rel"], name))
        if ENCODER_LINEAR.search(name):
            worst["encoder_linear"] = max(worst["encoder_linear"], (d["rel"], name))
    return worst


ENCODER_LINEAR = re.compile(r"\.encoder\.layers\.\d+\.(self_attn\.\w+_proj|mlp\.fc\d)\.weight$")


def rel_diffs(ours: Path, ref: Path, base: Path | None = None) -> dict[str, dict]:
    """Per tensor of the vision model (and projection) in ref: {"ndim", "rel": largest |ours - torch|
    / largest |torch|}, plus, given the base checkpoint file, "rel_delta": the same over largest
    |torch - base| (the agreement of the update, which the base does not dilute)."""
    import numpy as np
    from safetensors.numpy import load_file

    a, b = load_file(str(ours / "model.safetensors")), load_file(str(ref))
    c = None if base is None else load_file(str(base))
    out = {}
    for name, want in b.items():
        if not (name.startswith("vision_model.") or name == "visual_projection.weight"):
            continue
        diff = np.abs(a[name].astype(np.float64) - want).max()
        d = {"ndim": want.ndim, "rel": float(diff / max(np.abs(want).max(), 1e-30))}
        if c is not None:
            d["rel_delta"] = float(diff / max(np.abs(want.astype(np.float64) - c[name]).max(), 1e-30))
        out[name] = d
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images per task (FusionBench's 256)")
    ap.add_argument("--methods", default="regmean,regmean++")
    ap.add_argument("--alpha", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--bin", default=str(DEFAULT_BIN))
    ap.add_argument("--python", default=sys.executable, help="the Python with torch for the reference")
    ap.add_argument("--json", default=None)
    ap.add_argument("--torch-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        torch_child(json.loads(args.torch_child))
        return

    cache = cache_dir("bench-regmean-vitb32")
    cache.mkdir(parents=True, exist_ok=True)
    _lock = lock_inputs(cache, "bench_regmean")
    ensure_inputs(cache, args.images)
    busy = cpu_busy()
    work = Path(tempfile.mkdtemp(prefix="bench-regmean-"))
    binary = work / "adamerge"
    bin_info = snapshot_binary(Path(args.bin), 1800, binary)
    rows = []
    try:
        for method in args.methods.split(","):
            ours_out, torch_out = work / f"ours-{method}", work / f"torch-{method}.safetensors"
            print(f"{method}: ours ...", file=sys.stderr, flush=True)
            o = run_ours(str(binary), args, cache, method, ours_out, work)
            print(f"{method}: PyTorch ...", file=sys.stderr, flush=True)
            t = run_torch(args.python, args, cache, method, torch_out, work)
            rows.append({"method": method, "ours": o, "torch": t, "worst": compare(ours_out, torch_out)})
            shutil.rmtree(ours_out, ignore_errors=True)
            torch_out.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    info = machine_info()
    versions = package_versions()
    print(f"\nMachine: {info['cpu']}, {info['cores']} cores; {args.threads} threads each; busy at start "
          f"{busy:.0%}; torch {versions['torch']}, transformers {versions['transformers']}; adamerge "
          f"{bin_info['version']} ({bin_info['mtime']})")
    print(f"ViT-B/32 shape, {NUM_TASKS} tasks x {args.images} images, batch 32, alpha {args.alpha}\n")
    print(f"    {' '.join(rerun_prefix(__file__))} --images {args.images} --threads {args.threads}\n")
    print("| method | ours s | PyTorch s | ours / PyTorch time | ours peak RSS MiB | PyTorch peak RSS MiB "
          "| ours / PyTorch RSS | worst rel. diff, encoder linear | worst rel. diff, all |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        o, t = r["ours"], r["torch"]
        print(f"| {r['method']} | {o['wall']:.1f} | {t['wall']:.1f} | {fmt_ratio(o['wall'] / t['wall'])} | "
              f"{o['maxrss'] / MIB:.0f} | {t['maxrss'] / MIB:.0f} | {fmt_ratio(o['maxrss'] / t['maxrss'])} | "
              f"{r['worst']['encoder_linear'][0]:.1e} | {r['worst']['all'][0]:.1e} ({r['worst']['all'][1]}) |")
    print("\nOther processes' share of the CPU during each run (> ~0.1: contended): " + ", ".join(
        f"{r['method']} ours {r['ours']['foreign_share']:.2f}, PyTorch {r['torch']['foreign_share']:.2f}" for r in rows))
    print("\nPhases (s):")
    for r in rows:
        print(f"- {r['method']}: ours {r['ours']['phases']}; PyTorch "
              f"{ {k: round(v, 2) for k, v in r['torch']['phases'].items()} }")
    if args.json:
        out = [{k: v for k, v in r.items() if k not in ("ours", "torch")} |
               {side: {k: v for k, v in r[side].items() if k != "stdout"} for side in ("ours", "torch")}
               for r in rows]
        Path(args.json).write_text(json.dumps({"machine": info, "versions": versions, "rows": out}, indent=2))


if __name__ == "__main__":
    main()
