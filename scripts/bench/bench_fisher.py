#!/usr/bin/env python3
"""Benchmark `adamerge merge --method fisher` against the same estimator and merge in PyTorch.

    python3 scripts/bench/bench_fisher.py [--images 256] [--estimators batch,exact] [--exact-images 32]
                                          [--threads 2] [--json FILE]

Inputs: bench_regmean.py's (imported, not duplicated), in its cache
`${ADAMERGE_CACHE:-~/.cache/adamerge}/bench-regmean-vitb32`: a ViT-B/32-shaped
`CLIPVisionModelWithProjection` with transformers' random initialisation, 8 "fine-tunes"
theta_k = theta_0 + 0.001 N(0, 1), per task a folder of random 64x64 PNGs (`images-N`; the first M
images of `images-N` are those of `images-M`). Added here, in the same cache: `heads/t<k>.safetensors`,
one float32 tensor `weight` [10, 512] per task (random unit rows x 100, seeded: the logit scale is in
the head), since the random checkpoints are vision-only.

Both sides run the whole merge as a user would, in one process each, with `--threads` threads:

* ours: `adamerge --threads T merge --method fisher --fisher-estimator E --images N --batch-size 32
  --pretrained DIR --task NAME,checkpoint=DIR,data=DIR,head=FILE ... --out DIR` (load, decode + CLIP
  preprocessing, Fishers, merge, write); its phases come from its `load X.XXs, merge Y.YYs, write
  Z.ZZs` line.
* PyTorch: a child (this script with `--torch-child`) that loads the 9 checkpoints with transformers
  (float32, sdpa), decodes and preprocesses the PNGs with PIL and the PIL-backend CLIPImageProcessor,
  runs `scripts/reference/reference_fisher.py` per task (`fisher_batch` on batches of 32, as
  FusionBench; or `fisher_exact`, one forward + backward per image, or with `--torch-exact vmap`
  `fisher_exact_vmap`, torch.func's per-sample gradients 8 images at a time; uniforms from
  `numpy.random.default_rng([seed, k])`), merges with `fisher_merge` (FusionBench's formula:
  uniform scaling, normalised by the global Fisher norms, eps 1e-6; every tensor, the projection
  included) and saves with safetensors. It times its own phases.

The batch estimator reads every image of `images-<--images>` (ours draws all of a folder when it
asks for as many as there are, in folder order, so both see the same batches of 32); the exact one
reads `images-<--exact-images>` (default 32; PyTorch's reference runs a backward per image, ours
batches them: per-image gradients from one backward per batch). Peak RSS is measured with GNU
time's `%M` (see common.measured_run). For the batch estimator the merged tensors of both are
compared (largest |ours - torch| / largest |torch| per tensor; both compute in float32, so this is
the float32 agreement of two implementations, not an accuracy); the exact estimator's labels are
drawn by each side's own generator, so its merges are not compared. Needs torch, transformers,
safetensors, numpy and Pillow (scripts/requirements.txt).
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
sys.path[:0] = [str(HERE), str(HERE.parent / "reference")]  # common, bench_regmean, reference_fisher

import bench_regmean as br  # noqa: E402  (its inputs and cache; importing it runs nothing)
from common import (  # noqa: E402
    DEFAULT_BIN, MIB, VIT_B32, cache_dir, cpu_busy, fmt_ratio, have_gnu_time, lock_inputs, machine_info,
    measured_run, package_versions, publish, rerun_prefix, run_torch_child, snapshot_binary, staging,
)

CACHE = "bench-regmean-vitb32"  # shared with bench_regmean.py
NUM_CLASSES = 10
HEAD_SCALE = 100.0
UNIFORM_SEED = 0  # PyTorch child's exact-estimator draws: default_rng([UNIFORM_SEED, k])


# --------------------------------------------------------------------------- inputs


def make_heads(cache: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    tmp = staging(cache, "heads")
    tmp.mkdir()
    for k in range(br.NUM_TASKS):
        rng = np.random.default_rng([br.SEED, 200 + k])
        w = rng.standard_normal((NUM_CLASSES, VIT_B32["projection_dim"]))
        w = w / np.linalg.norm(w, axis=1, keepdims=True) * HEAD_SCALE
        save_file({"weight": w.astype(np.float32)}, str(tmp / f"t{k}.safetensors"), metadata={"format": "pt"})
    (tmp / ".complete").write_text("")
    publish(tmp, cache / "heads")


def ensure_inputs(cache: Path, sizes: list[int]) -> None:
    for n in sorted(set(sizes)):
        br.ensure_inputs(cache, n)
    if not br.done(cache / "heads"):
        t = time.perf_counter()
        print(f"inputs: generating {cache / 'heads'}", file=sys.stderr, flush=True)
        make_heads(cache)
        print(f"  done ({time.perf_counter() - t:.1f}s)", file=sys.stderr, flush=True)


def task_dirs(cache: Path, n: int, tasks: int = br.NUM_TASKS) -> list[tuple[str, Path, Path, Path]]:
    """(name, checkpoint, image folder of images-n, head file) per task."""
    return [(t, c, i, cache / "heads" / f"{t}.safetensors") for t, c, i in br.task_dirs(cache, n)[:tasks]]


# --------------------------------------------------------------------------- PyTorch child


def torch_child(spec: dict) -> None:
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoImageProcessor

    import reference_fisher as rf

    torch.set_num_threads(spec["threads"])
    t_import = time.perf_counter()
    pre = rf.load_model(spec["pretrained"], torch.float32)
    fts = [rf.load_model(d, torch.float32) for _, d, _, _ in spec["tasks"]]
    heads = [load_file(h)["weight"] for _, _, _, h in spec["tasks"]]
    t_load = time.perf_counter()
    proc = AutoImageProcessor.from_pretrained(spec["pretrained"], use_fast=False)
    pixels = []
    for _, _, images, _ in spec["tasks"]:
        files = sorted(Path(images).rglob("*.png"))[: spec["images"]]
        pixels.append(proc(images=[Image.open(f) for f in files], return_tensors="pt")["pixel_values"])
    t_decode = time.perf_counter()
    fishers = []
    for k, (model, head, pix) in enumerate(zip(fts, heads, pixels)):
        if spec["estimator"] == "batch":
            fishers.append(rf.fisher_batch(model, head, rf.batches_of(pix, spec["batch"])))
        else:
            u = np.random.default_rng([spec["seed"], k]).random(pix.shape[0])
            if spec["torch_exact"] == "vmap":
                fishers.append(rf.fisher_exact_vmap(model, head, pix, u.tolist(), chunk_size=8))
            else:
                fishers.append(rf.fisher_exact(model, head, pix, u.tolist()))
    t_fisher = time.perf_counter()
    with torch.no_grad():
        merged = rf.model_state(pre)  # the container; every tensor is replaced
        merged.update(rf.fisher_merge([m.state_dict() for m in fts], fishers))
    t_merge = time.perf_counter()
    save_file({k: v.contiguous() for k, v in merged.items()}, spec["out"])
    t_write = time.perf_counter()
    n_img = sum(p.shape[0] for p in pixels)
    print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import, "decode_s": t_decode - t_load,
                      "fisher_s": t_fisher - t_decode, "merge_s": t_merge - t_fisher, "write_s": t_write - t_merge,
                      "images": n_img, "fisher_per_image_ms": 1e3 * (t_fisher - t_decode) / n_img}))


def spec_for(args, cache: Path, estimator: str, out: Path) -> dict:
    n = args.images if estimator == "batch" else args.exact_images
    return {"pretrained": str(cache / "pretrained"), "estimator": estimator, "batch": 32, "images": n,
            "seed": UNIFORM_SEED, "threads": args.threads, "out": str(out), "torch_exact": args.torch_exact,
            "tasks": [(t, str(c), str(i), str(h)) for t, c, i, h in task_dirs(cache, n, args.tasks)]}


def run_torch(python: str, args, cache: Path, estimator: str, out: Path, logdir: Path) -> dict:
    spec = spec_for(args, cache, estimator, out)
    return run_torch_child(python, Path(__file__).resolve(), spec, args.threads, logdir, f"torch-{estimator}")


# --------------------------------------------------------------------------- ours


def run_ours(binary: str, args, cache: Path, estimator: str, out: Path, logdir: Path) -> dict:
    n = args.images if estimator == "batch" else args.exact_images
    cmd = [binary, "--threads", str(args.threads), "merge", "--method", "fisher", "--fisher-estimator", estimator,
           "--images", str(n), "--batch-size", "32", "--pretrained", str(cache / "pretrained"), "--out", str(out)]
    for t, ckpt, images, head in task_dirs(cache, n, args.tasks):
        cmd += ["--task", f"{t},checkpoint={ckpt},data={images},head={head}"]
    r = measured_run(cmd, dict(os.environ), logdir, f"ours-{estimator}", have_gnu_time())
    m = re.search(r"load ([\d.]+)s, merge ([\d.]+)s, write ([\d.]+)s", r["stdout"])
    r["phases"] = {"load_s": float(m[1]), "merge_s": float(m[2]), "write_s": float(m[3])} if m else {}
    if m:
        r["phases"]["merge_per_image_ms"] = 1e3 * float(m[2]) / (n * args.tasks)
    return r


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256, help="images per task, batch estimator (FusionBench's 256)")
    ap.add_argument("--exact-images", type=int, default=32, help="images per task, exact estimator (a backward each)")
    ap.add_argument("--estimators", default="batch,exact")
    ap.add_argument("--torch-exact", choices=["loop", "vmap"], default="loop",
                    help="PyTorch's exact estimator: a backward per image (loop), or torch.func's vmap of grad, "
                         "8 images at a time")
    ap.add_argument("--tasks", type=int, default=br.NUM_TASKS, help=f"first T of the {br.NUM_TASKS} tasks")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--bin", default=str(DEFAULT_BIN))
    ap.add_argument("--python", default=sys.executable, help="the Python with torch for the reference")
    ap.add_argument("--torch-only", action="store_true", help="run only the PyTorch side (no binary needed)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--torch-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        torch_child(json.loads(args.torch_child))
        return
    estimators = args.estimators.split(",")
    if not set(estimators) <= {"batch", "exact"} or not 1 <= args.tasks <= br.NUM_TASKS:
        ap.error("--estimators takes batch and/or exact; --tasks 1..8")

    cache = cache_dir(CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    _lock = lock_inputs(cache, "bench_regmean / bench_fisher")
    ensure_inputs(cache, [args.images if e == "batch" else args.exact_images for e in estimators])
    busy = cpu_busy()
    work = Path(tempfile.mkdtemp(prefix="bench-fisher-"))
    binary = work / "adamerge"
    bin_info = None if args.torch_only else snapshot_binary(Path(args.bin), 1800, binary)
    rows = []
    try:
        for est in estimators:
            ours_out, torch_out = work / f"ours-{est}", work / f"torch-{est}.safetensors"
            o = None
            if not args.torch_only:
                print(f"{est}: ours ...", file=sys.stderr, flush=True)
                o = run_ours(str(binary), args, cache, est, ours_out, work)
            print(f"{est}: PyTorch ...", file=sys.stderr, flush=True)
            t = run_torch(args.python, args, cache, est, torch_out, work)
            worst = br.compare(ours_out, torch_out) if o is not None and est == "batch" else None
            rows.append({"estimator": est, "images": args.images if est == "batch" else args.exact_images,
                         "ours": o, "torch": t, "worst": worst})
            shutil.rmtree(ours_out, ignore_errors=True)
            torch_out.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    info = machine_info()
    versions = package_versions()
    ours_v = "not run" if bin_info is None else f"{bin_info['version']} ({bin_info['mtime']})"
    print(f"\nMachine: {info['cpu']}, {info['cores']} cores; {args.threads} threads each; busy at start "
          f"{busy:.0%}; torch {versions['torch']}, transformers {versions['transformers']}; adamerge {ours_v}")
    print(f"ViT-B/32 shape, {args.tasks} tasks, {NUM_CLASSES}-class heads, batch 32, normalised, eps 1e-6\n")
    print(f"    {' '.join(rerun_prefix(__file__))} --images {args.images} --exact-images {args.exact_images} "
          f"--estimators {args.estimators} --torch-exact {args.torch_exact} --threads {args.threads}\n")
    print("| estimator | images/task | ours s | PyTorch s | ours / PyTorch time | ours ms/image | PyTorch ms/image "
          "| ours peak RSS MiB | PyTorch peak RSS MiB | ours / PyTorch RSS | worst rel. diff, encoder linear "
          "| worst rel. diff, all |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        o, t, w = r["ours"], r["torch"], r["worst"]
        tp = t["phases"]
        # per image: ours' merge phase (decode + Fishers + merge) vs PyTorch's decode + Fishers + merge
        t_ms = 1e3 * (tp["decode_s"] + tp["fisher_s"] + tp["merge_s"]) / tp["images"]
        if o is None:
            cells = ["—", f"{t['wall']:.1f}", "—", "—", f"{t_ms:.0f}", "—", f"{t['maxrss'] / MIB:.0f}", "—"]
        else:
            o_ms = o["phases"].get("merge_per_image_ms")
            cells = [f"{o['wall']:.1f}", f"{t['wall']:.1f}", fmt_ratio(o["wall"] / t["wall"]),
                     "—" if o_ms is None else f"{o_ms:.0f}", f"{t_ms:.0f}", f"{o['maxrss'] / MIB:.0f}",
                     f"{t['maxrss'] / MIB:.0f}", fmt_ratio(o["maxrss"] / t["maxrss"])]
        diffs = ["—", "—"] if w is None else [f"{w['encoder_linear'][0]:.1e}",
                                              f"{w['all'][0]:.1e} ({w['all'][1]})"]
        print(f"| {r['estimator']} | {r['images']} | " + " | ".join(cells + diffs) + " |")
    print("\nOther processes' share of the CPU during each run (> ~0.1: contended): " + ", ".join(
        f"{r['estimator']} " + ("" if r["ours"] is None else f"ours {r['ours']['foreign_share']:.2f}, ")
        + f"PyTorch {r['torch']['foreign_share']:.2f}" for r in rows))
    print("\nPhases (s; per image: ours' merge phase, PyTorch's decode + Fishers + merge, over all tasks' images):")
    for r in rows:
        ours_p = "not run" if r["ours"] is None else r["ours"]["phases"]
        print(f"- {r['estimator']}: ours {ours_p}; PyTorch "
              f"{ {k: round(v, 2) for k, v in r['torch']['phases'].items()} }")
    if args.json:
        out = [{k: v for k, v in r.items() if k not in ("ours", "torch")} |
               {side: None if r[side] is None else {k: v for k, v in r[side].items() if k != "stdout"}
                for side in ("ours", "torch")}
               for r in rows]
        Path(args.json).write_text(json.dumps({"machine": info, "versions": versions, "rows": out}, indent=2))


if __name__ == "__main__":
    main()
