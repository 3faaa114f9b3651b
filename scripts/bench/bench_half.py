#!/usr/bin/env python3
"""Peak memory of task vectors held in f32 against bf16 / f16 (`--tau-dtype`), at ViT-L/14 shape.

    python3 scripts/bench/bench_half.py [--dtypes f32,bf16,f16] [--learn-dtypes f32,bf16]
                                        [--steps 3] [--threads 2] [--bin PATH] [--json FILE]

Inputs (numpy, seeded; generated once into `${ADAMERGE_CACHE:-~/.cache/adamerge}/bench-half-vitl14`,
≈ 11 GB, and reused while their manifest matches this script's recipe): a
`CLIPVisionModelWithProjection` with the names and shapes of openai/clip-vit-large-patch14's vision
tower (303.2 M float32 parameters), θ₀ ~ N(0, 0.02), 8 fine-tunes θ_k = θ₀ + N(0, 0.001); per task
an ImageFolder of 2 classes × 4 random 64×64 PNGs and a head [2, 768] (random unit rows × 10).

Runs, each a child process under GNU time (its own peak RSS, `%M`, mapped checkpoint pages
included):

* `merge --method task-arithmetic --lambda 0.3 --tau-dtype D` of the 8 fine-tunes, per D of `--dtypes`;
* `learn` (layer-wise AdaMerging, 8 tasks × 4 images per step, `--steps` steps, scored on 4
  images per task before and after, no merged checkpoint) per D of `--learn-dtypes`: peak RSS and
  seconds per step (median of the steps' `seconds`, the first left out).

"τ held" is what the task vectors themselves take in D (8 × parameters × bytes): the peak RSS of a
half run should sit about half of the f32 τ below the f32 run's; if the loader made f32 copies
first, it would not. The λ learned in D is compared with the f32 run's (largest |Δλ|: on random
weights the gradients are tiny, and Adam's first steps move each λ by about lr whatever the
gradient's size, so a sign flipped by rounding shows as up to 2 lr per step). Uses a copy
of the adamerge binary taken at start; never builds it. Needs numpy, safetensors and Pillow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    DEFAULT_BIN, GIB, cache_dir, clip_vision_config, cpu_busy, have_gnu_time, lock_inputs,
    machine_info, measured_run, num_params, publish, read_manifest, rerun_prefix, snapshot_binary,
    staging, vision_tower_shapes, write_manifest,
)

RECIPE = 1
SEED = 26
TASKS = 8
CLASSES, PER_CLASS, SOURCE = 2, 4, 64
VIT_L14 = clip_vision_config(hidden=1024, intermediate=4096, layers=24, heads=16, image=224, patch=14,
                             projection=768)
CONFIG = {
    "architectures": ["CLIPVisionModelWithProjection"],
    "model_type": "clip_vision_model",
    **VIT_L14,
    "torch_dtype": "float32",
}
BYTES = {"f32": 4, "bf16": 2, "f16": 2}


def generate(cache: Path) -> None:
    """θ₀, 8 fine-tunes, images and heads; one checkpoint in memory at a time (besides θ₀)."""
    from PIL import Image
    from safetensors.numpy import save_file

    shapes = vision_tower_shapes(VIT_L14)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "manifest.json").unlink(missing_ok=True)
    t0 = time.perf_counter()

    def write(name: str, tensors: dict) -> None:
        tmp = staging(cache, name)
        tmp.mkdir()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
        publish(tmp, cache / name)
        print(f"  {name} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)

    rng = np.random.default_rng([SEED, 0])
    base = {n: rng.standard_normal(s, dtype=np.float32) * np.float32(0.02) for n, s in shapes.items()}
    write("pretrained", base)
    for k in range(TASKS):
        rng = np.random.default_rng([SEED, k + 1])
        write(f"ft{k}", {n: base[n] + rng.standard_normal(s, dtype=np.float32) * np.float32(0.001)
                         for n, s in shapes.items()})
    for k in range(TASKS):
        rng = np.random.default_rng([SEED, 100 + k])
        tmp = staging(cache, f"task{k}")
        for c in range(CLASSES):
            d = tmp / "images" / f"class{c}"
            d.mkdir(parents=True)
            for i in range(PER_CLASS):
                a = rng.integers(0, 256, (SOURCE, SOURCE, 3), dtype=np.uint8)
                Image.fromarray(a, "RGB").save(d / f"{i}.png")
        head = rng.standard_normal((CLASSES, VIT_L14["projection_dim"]), dtype=np.float32)
        head *= np.float32(10.0) / np.linalg.norm(head, axis=1, keepdims=True)
        save_file({"weight": head}, str(tmp / "head.safetensors"))
        publish(tmp, cache / f"task{k}")
    write_manifest(cache, {"recipe": RECIPE, "seed": SEED, "params": num_params(shapes)})


def ensure_inputs(cache: Path) -> None:
    m = read_manifest(cache)
    if m.get("recipe") != RECIPE or m.get("seed") != SEED:
        print(f"inputs: generating {cache} (≈ 11 GB)", file=sys.stderr, flush=True)
        generate(cache)


def merge_cmd(binary: str, threads: int, cache: Path, dtype: str, out: Path) -> list[str]:
    cmd = [binary, "--threads", str(threads), "merge", "--method", "task-arithmetic", "--lambda", "0.3",
           "--tau-dtype", dtype, "--pretrained", str(cache / "pretrained"), "--out", str(out)]
    for k in range(TASKS):
        cmd += ["--finetuned", f"t{k}={cache / f'ft{k}'}"]
    return cmd


def learn_cmd(binary: str, threads: int, cache: Path, dtype: str, steps: int, out: Path) -> list[str]:
    cmd = [binary, "--threads", str(threads), "learn", "--granularity", "layer", "--tau-dtype", dtype,
           "--pretrained", str(cache / "pretrained"), "--steps", str(steps), "--batch-size",
           str(CLASSES * PER_CLASS // 2), "--eval-limit", str(CLASSES * PER_CLASS // 2), "--no-merged",
           "--out", str(out)]
    for k in range(TASKS):
        t = cache / f"task{k}"
        cmd += ["--task", f"t{k},checkpoint={cache / f'ft{k}'},data={t / 'images'},head={t / 'head.safetensors'}"]
    return cmd


def step_seconds(run: Path) -> float | None:
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    secs = [e["seconds"] for e in steps if e.get("event") == "step"][1:]
    return statistics.median(secs) if secs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="f32,bf16,f16")
    ap.add_argument("--learn-dtypes", default="f32,bf16")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cache = cache_dir("bench-half-vitl14")
    cache.mkdir(parents=True, exist_ok=True)
    _lock = lock_inputs(cache, "bench_half")
    ensure_inputs(cache)
    params = read_manifest(cache)["params"]
    use_time = have_gnu_time()
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-half-") as tmp:
        tmp = Path(tmp)
        binary = tmp / "adamerge"
        info = snapshot_binary(args.bin, 600, binary)
        busy = cpu_busy()
        lambdas = {}
        plan = [("merge", d) for d in args.dtypes.split(",")] + [("learn", d) for d in args.learn_dtypes.split(",")]
        for job, dtype in plan:
            out = tmp / f"{job}-{dtype}"
            print(f"{job} {dtype} ...", file=sys.stderr, flush=True)
            cmd = (merge_cmd(str(binary), args.threads, cache, dtype, out) if job == "merge"
                   else learn_cmd(str(binary), args.threads, cache, dtype, args.steps, out))
            r = measured_run(cmd, env, tmp, f"{job}-{dtype}", use_time)
            row = {"job": job, "dtype": dtype, "tau_gib": TASKS * params * BYTES[dtype] / GIB,
                   "peak_gib": r["maxrss"] / GIB, "wall": r["wall"],
                   "foreign_share": r["foreign_share"]}
            if job == "learn":
                row["step_s"] = step_seconds(out)
                lam = json.loads((out / "lambda.json").read_text())["lambda"]
                lambdas[dtype] = np.array(lam, dtype=np.float64)
            rows.append(row)
            shutil.rmtree(out, ignore_errors=True)
    for row in rows:
        ref = next(r for r in rows if r["job"] == row["job"] and r["dtype"] == "f32")
        row["peak_vs_f32"] = row["peak_gib"] / ref["peak_gib"]
        row["saved_gib"] = ref["peak_gib"] - row["peak_gib"]
        if row["job"] == "learn" and "f32" in lambdas:
            row["max_dlambda"] = float(np.abs(lambdas[row["dtype"]] - lambdas["f32"]).max())
    report = {"machine": machine_info(), "binary": info, "cpu_busy_before": busy, "params": params,
              "rows": rows, "rerun": " ".join(rerun_prefix(__file__) + sys.argv[1:])}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nViT-L/14 vision tower, {params / 1e6:.1f} M parameters, {TASKS} tasks, {args.threads} threads; "
          f"{report['machine'].get('cpu', '?')}\n")
    print("| run | τ dtype | τ held GiB | peak RSS GiB | vs f32 | saved GiB | s (merge) / s per step (learn) | max abs Δλ vs f32 |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        secs = r.get("step_s") if r["job"] == "learn" else r["wall"]
        dl = r.get("max_dlambda")
        print(f"| {r['job']} | {r['dtype']} | {r['tau_gib']:.2f} | {r['peak_gib']:.2f} | "
              f"{r['peak_vs_f32']:.2f}× | {r['saved_gib']:.2f} | {secs:.1f} | {'' if dl is None else f'{dl:.1e}'} |")
    print(f"\nRerun: {report['rerun']}")


if __name__ == "__main__":
    main()
