#!/usr/bin/env python3
"""Benchmark `adamerge merge --method tsv-m|iso-c|iso-cts` against FusionBench's code in PyTorch.

    python3 scripts/bench/bench_spectral.py [--methods tsv-m,iso-c,iso-cts] [--qkv split|fused|split,fused]
                                            [--tasks 8] [--alpha 1] [--threads 2] [--json FILE]

Inputs: bench_regmean.py's checkpoints (imported, not duplicated; no images), in its cache
`${ADAMERGE_CACHE:-~/.cache/adamerge}/bench-regmean-vitb32`: a ViT-B/32-shaped
`CLIPVisionModelWithProjection` with transformers' random initialisation (87.85 M float32
parameters) and 8 "fine-tunes" theta_k = theta_0 + 0.001 N(0, 1) (full rank: nothing is round-off).
`--tasks T` takes the first T of them.

Both sides run the whole merge as a user would, in one process each, with `--threads` threads:

* ours: `adamerge --threads T merge --method M --qkv Q --alpha A --pretrained DIR --finetuned t0=DIR ...
  --out DIR` (load, task vectors, SVDs in float64 with faer, theta_0 + alpha Delta, write); its phases
  come from its `load X.XXs, merge Y.YYs, write Z.ZZs` line.
* PyTorch: a child (this script with `--torch-child`) that loads the 9 checkpoints with safetensors
  (float32), computes the task vectors in float32 (and frees the fine-tunes), and runs FusionBench's
  literal algorithm in float32 on the CPU: `scripts/reference/reference_spectral.py`'s `plan_units`
  (the same matrix units as ours: with `--qkv split`, FusionBench's Hugging Face layout, q, k and v
  are each a unit) and its ports `fusionbench_tsv_m` / `fusionbench_iso_c` / `fusionbench_iso_cts`
  (Iso-CTS common fraction 0.8) per unit, `torch.linalg.svd` (LAPACK), no drop rule; every other
  tensor gets FusionBench's running mean of the task vectors; theta = theta_0 + alpha Delta; saves
  with safetensors. It times its own phases: load, task vectors, SVDs (the per-unit merges), apply
  (theta_0 + alpha Delta, the means included), write.

Matrix units: every 2-D tensor, i.e. per block q, k, v, out_proj, fc1, fc2, plus the position
embedding (FusionBench's 73 for B/32) and `visual_projection` (74; FusionBench's `CLIPVisionModel`
has none); with `--qkv fused` a block's q, k, v form one [2304, 768] unit (50 units).

Reading the ratios: "ours / PyTorch time" > 1 means ours is slower. The two sides do not do the same
arithmetic: ours computes every SVD and polar factor in float64 (faer), PyTorch in float32 (LAPACK
through torch), so ours does the same decompositions at twice the precision, with roughly twice the
memory traffic and slower vector arithmetic per flop; ours also applies its drop rule (a no-op on these
full-rank inputs). The "merge" columns compare the part between load and write (ours' merge phase;
PyTorch's task vectors + SVDs + apply); the totals add process start, imports, load and write. Peak
RSS is measured with GNU time's `%M` (see common.measured_run). The merged tensors are compared as in
bench_regmean.py (largest |ours - torch| / largest |torch| per tensor; worst over the 2-D tensors and
over all); since theta_0 dominates theta, the last column divides by largest |torch - theta_0| instead
(the agreement of the update Delta itself, 2-D tensors, which the theta columns dilute).

Run it on an idle machine and read the contention line: PyTorch's MKL/OpenMP threads spin-wait, so
a core taken by another process slows its SVDs by orders of magnitude (seen on 2 busy cores, 2
threads: 13.6 s for one 768x768 float32 SVD that takes 0.22 s on one thread).
Needs torch, safetensors and numpy (scripts/requirements.txt; transformers only to generate inputs).
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
sys.path[:0] = [str(HERE), str(HERE.parent / "reference")]  # common, bench_regmean, reference_spectral

import bench_regmean as br  # noqa: E402  (its inputs and cache; importing it runs nothing)
from common import (  # noqa: E402
    DEFAULT_BIN, MIB, cache_dir, cpu_busy, fmt_ratio, have_gnu_time, lock_inputs, machine_info, measured_run,
    package_versions, rerun_prefix, run_torch_child, snapshot_binary,
)

CACHE = "bench-regmean-vitb32"  # shared with bench_regmean.py
METHODS = ("tsv-m", "iso-c", "iso-cts")
COMMON_FRACTION = 0.8  # Iso-CTS, both sides' default


def finetuned(cache: Path, tasks: int) -> list[tuple[str, Path]]:
    """(name, checkpoint dir) of the first `tasks` fine-tunes (bench_regmean.py's task names)."""
    return [(f"t{k}", cache / f"ft{k}") for k in range(tasks)]


# --------------------------------------------------------------------------- PyTorch child


def torch_child(spec: dict) -> None:
    t0 = time.perf_counter()
    import torch
    from safetensors.torch import save_file

    import reference_spectral as rs

    torch.set_num_threads(spec["threads"])
    fn = {"tsv-m": rs.fusionbench_tsv_m, "iso-c": rs.fusionbench_iso_c,
          "iso-cts": lambda mats: rs.fusionbench_iso_cts(mats, COMMON_FRACTION)}[spec["method"]]
    t_import = time.perf_counter()
    theta0 = rs.load_checkpoint(spec["pretrained"])
    thetas = [rs.load_checkpoint(d) for _, d in spec["finetuned"]]
    t_load = time.perf_counter()
    with torch.no_grad():
        names = [n for n, v in theta0.items() if v.is_floating_point()]
        units, means = rs.plan_units({n: tuple(theta0[n].shape) for n in names}, spec["qkv"])
        tvs = rs.task_vectors(theta0, thetas, names, torch.float32)
        del thetas
        t_tv = time.perf_counter()
        delta = {}
        for label, members in units:
            d = fn([torch.cat([tv[m] for m in members], 0) for tv in tvs])
            rows = theta0[members[0]].shape[0]
            for j, m in enumerate(members):
                delta[m] = d[j * rows:(j + 1) * rows]
        t_svd = time.perf_counter()
        for n in means:  # FusionBench's running mean
            acc = tvs[0][n].clone()
            for i, tv in enumerate(tvs[1:], start=1):
                acc += (tv[n] - acc) / (i + 1)
            delta[n] = acc
        merged = {n: (theta0[n] + spec["alpha"] * delta[n]).contiguous() for n in names}
        t_apply = time.perf_counter()
    save_file(merged, spec["out"], metadata={"format": "pt"})
    t_write = time.perf_counter()
    print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import, "tv_s": t_tv - t_load,
                      "svd_s": t_svd - t_tv, "apply_s": t_apply - t_svd, "merge_s": t_apply - t_load,
                      "write_s": t_write - t_apply, "units": len(units), "means": len(means)}))


def run_torch(python: str, args, cache: Path, method: str, qkv: str, out: Path, logdir: Path) -> dict:
    spec = {"pretrained": str(cache / "pretrained"), "method": method, "qkv": qkv, "alpha": args.alpha,
            "threads": args.threads, "out": str(out),
            "finetuned": [(t, str(c)) for t, c in finetuned(cache, args.tasks)]}
    return run_torch_child(python, Path(__file__).resolve(), spec, args.threads, logdir, f"torch-{method}-{qkv}")


# --------------------------------------------------------------------------- ours


def run_ours(binary: str, args, cache: Path, method: str, qkv: str, out: Path, logdir: Path) -> dict:
    cmd = [binary, "--threads", str(args.threads), "merge", "--method", method, "--qkv", qkv,
           "--alpha", repr(args.alpha), "--pretrained", str(cache / "pretrained"), "--out", str(out)]
    for t, ckpt in finetuned(cache, args.tasks):
        cmd += ["--finetuned", f"{t}={ckpt}"]
    r = measured_run(cmd, dict(os.environ), logdir, f"ours-{method}-{qkv}", have_gnu_time())
    m = re.search(r"load ([\d.]+)s, merge ([\d.]+)s, write ([\d.]+)s", r["stdout"])
    if not m:
        raise RuntimeError(f"no `load .. merge .. write ..` line in ours' stdout:\n{r['stdout'][-2000:]}")
    r["phases"] = {"load_s": float(m[1]), "merge_s": float(m[2]), "write_s": float(m[3])}
    return r


def compare(ours: Path, ref: Path, base: Path) -> dict:
    """bench_regmean's per-tensor largest |ours - torch| / largest |torch|, worst over the 2-D tensors
    and over all; and over largest |torch - theta_0| (the update), worst over the 2-D tensors."""
    worst = {"2d": (0.0, ""), "all": (0.0, ""), "delta_2d": (0.0, "")}
    for name, d in br.rel_diffs(ours, ref, base).items():
        worst["all"] = max(worst["all"], (d["rel"], name))
        if d["ndim"] == 2:
            worst["2d"] = max(worst["2d"], (d["rel"], name))
            worst["delta_2d"] = max(worst["delta_2d"], (d["rel_delta"], name))
    return worst


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--qkv", default="split", help="split (FusionBench's HF layout), fused, or both: split,fused")
    ap.add_argument("--tasks", type=int, default=br.NUM_TASKS, help=f"first T of the {br.NUM_TASKS} fine-tunes")
    ap.add_argument("--alpha", type=float, default=1.0, help="theta_0 + alpha Delta (FusionBench's default 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--bin", default=str(DEFAULT_BIN))
    ap.add_argument("--python", default=sys.executable, help="the Python with torch for the reference")
    ap.add_argument("--json", default=None)
    ap.add_argument("--torch-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        torch_child(json.loads(args.torch_child))
        return
    methods, qkvs = args.methods.split(","), args.qkv.split(",")
    if not set(methods) <= set(METHODS) or not set(qkvs) <= {"split", "fused"} \
            or not 1 <= args.tasks <= br.NUM_TASKS:
        ap.error(f"--methods takes {', '.join(METHODS)}; --qkv split and/or fused; --tasks 1..{br.NUM_TASKS}")

    cache = cache_dir(CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    _lock = lock_inputs(cache, "bench_regmean / bench_fisher / bench_spectral")
    br.ensure_checkpoints(cache, args.tasks)
    busy = cpu_busy()
    work = Path(tempfile.mkdtemp(prefix="bench-spectral-"))
    binary = work / "adamerge"
    bin_info = snapshot_binary(Path(args.bin), 1800, binary)
    base = cache / "pretrained" / "model.safetensors"
    rows = []
    try:
        for method in methods:
            for qkv in qkvs:
                tag = f"{method}-{qkv}"
                ours_out, torch_out = work / f"ours-{tag}", work / f"torch-{tag}.safetensors"
                print(f"{method}, qkv {qkv}: ours ...", file=sys.stderr, flush=True)
                o = run_ours(str(binary), args, cache, method, qkv, ours_out, work)
                print(f"{method}, qkv {qkv}: PyTorch ...", file=sys.stderr, flush=True)
                t = run_torch(args.python, args, cache, method, qkv, torch_out, work)
                rows.append({"method": method, "qkv": qkv, "ours": o, "torch": t,
                             "worst": compare(ours_out, torch_out, base)})
                shutil.rmtree(ours_out, ignore_errors=True)
                torch_out.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def share(run: dict) -> str:
        return "?" if run["foreign_share"] is None else f"{run['foreign_share']:.2f}"

    info = machine_info()
    versions = package_versions()
    print(f"\nMachine: {info['cpu']}, {info['cores']} cores; {args.threads} threads each; busy at start "
          f"{'?' if busy is None else f'{busy:.0%}'}; torch {versions['torch']}; adamerge {bin_info['version']} ({bin_info['mtime']})")
    print(f"ViT-B/32 shape, {args.tasks} tasks, alpha {args.alpha}, Iso-CTS common fraction {COMMON_FRACTION}; "
          f"ours float64 (faer), PyTorch float32 (torch.linalg.svd, FusionBench's code)\n")
    print(f"    {' '.join(rerun_prefix(__file__))} --methods {args.methods} --qkv {args.qkv} --tasks {args.tasks} "
          f"--alpha {args.alpha} --threads {args.threads}\n")
    print("| method | qkv | units | ours s | ours merge s | PyTorch s | PyTorch merge s (SVDs) | ours / PyTorch time "
          "| ours / PyTorch merge | ours peak RSS MiB | PyTorch peak RSS MiB | ours / PyTorch RSS "
          "| worst rel. diff, 2-D | worst rel. diff, all | worst rel. diff of Δ, 2-D |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        o, t, w = r["ours"], r["torch"], r["worst"]
        op, tp = o["phases"], t["phases"]
        print(f"| {r['method']} | {r['qkv']} | {tp['units']} | {o['wall']:.1f} | {op['merge_s']:.1f} | "
              f"{t['wall']:.1f} | {tp['merge_s']:.1f} ({tp['svd_s']:.1f}) | {fmt_ratio(o['wall'] / t['wall'])} | "
              f"{fmt_ratio(op['merge_s'] / tp['merge_s'])} | {o['maxrss'] / MIB:.0f} | {t['maxrss'] / MIB:.0f} | "
              f"{fmt_ratio(o['maxrss'] / t['maxrss'])} | {w['2d'][0]:.1e} | {w['all'][0]:.1e} ({w['all'][1]}) | "
              f"{w['delta_2d'][0]:.1e} ({w['delta_2d'][1]}) |")
    print("\nOther processes' share of the CPU during each run (> ~0.1: contended): " + ", ".join(
        f"{r['method']}/{r['qkv']} ours {share(r['ours'])}, PyTorch {share(r['torch'])}" for r in rows))
    if (busy or 0) > 0.1 or any((r[side]["foreign_share"] or 0) > 0.1 for r in rows for side in ("ours", "torch")):
        print("\nWARNING: other processes used the CPUs (busy at start or share above > 0.1): the times, "
              "PyTorch's above all, are not representative")
    print("\nPhases (s):")
    for r in rows:
        print(f"- {r['method']}, {r['qkv']}: ours {r['ours']['phases']}; PyTorch "
              f"{ {k: round(v, 2) for k, v in r['torch']['phases'].items()} }")
    if args.json:
        out = [{k: v for k, v in r.items() if k not in ("ours", "torch")} |
               {side: {k: v for k, v in r[side].items() if k != "stdout"} for side in ("ours", "torch")}
               for r in rows]
        Path(args.json).write_text(json.dumps({"machine": info, "versions": versions, "binary": bin_info,
                                               "args": {k: v for k, v in vars(args).items() if k != "torch_child"},
                                               "rows": out}, indent=2))


if __name__ == "__main__":
    main()
