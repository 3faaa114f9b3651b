#!/usr/bin/env python3
"""Benchmark `adamerge merge` against numpy doing the same merge (docs/design.md §3, §9).

    python3 scripts/bench/bench_merge.py [--tasks 2,4,8] [--methods task-arithmetic,ties]
                                         [--threads T] [--repeats 2] [--json FILE]

Inputs: a synthetic ViT-B/32-sized `CLIPVisionModelWithProjection` set (the exact Hugging
Face tensor names and shapes of openai/clip-vit-base-patch32's vision tower, 87.85 M float32
parameters, written by hand, no download): a pretrained checkpoint theta_0 ~ N(0, 0.02) and 8
fine-tuned ones theta_k = theta_0 + tau_k, tau_k ~ N(0, 0.001), seeded. They are generated once
(one checkpoint at a time) into `${ADAMERGE_CACHE:-~/.cache/adamerge}/bench-merge-vitb32` and
reused while their manifest matches this script's recipe.

For each method and K, two tools merge the pretrained + first K fine-tuned checkpoints:

* numpy: a child Python process (this script with `--numpy-child`) loads every checkpoint with
  `safetensors.numpy.load_file`, builds tau_k = theta_k - theta_0 (freeing theta_k as it goes),
  runs scripts/reference/reference_merge.py (float32) and saves with `safetensors.numpy.save_file`; it
  times its own phases.
* ours: `adamerge --threads T merge ...`; its phases come from the line
  `load X.XXs, merge Y.YYs, write Z.ZZs on <backend>` (its `load` includes the subtraction).

Each child is started with `subprocess.Popen` and reaped with `os.wait4`, which gives its peak
RSS (`ru_maxrss`, KiB on Linux); /proc/PID/status is also sampled to split the peak into
anonymous and file-backed (mmap) memory. Each tool runs `--repeats` times (default 2,
interleaved numpy, ours, numpy, ours) and the faster run is kept: the first warms the page
cache. Merged outputs go to temporary directories that are removed afterwards (after an
optional element-wise comparison of ours against numpy); the cached inputs are kept.

Needs numpy and safetensors only. Uses a snapshot (copy) of the adamerge binary taken at
start, so a concurrent `cargo build` cannot swap it mid-run; waits for the binary if missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "reference")]  # common, reference_merge

from common import (  # noqa: E402
    DEFAULT_BIN, GIB, VIT_B32, cache_dir, cpu_busy, fmt_ratio, lock_inputs, machine_info, num_params, publish,
    read_manifest, rerun_prefix, run_child, snapshot_binary, staging, vision_tower_shapes, write_manifest,
)

RECIPE = 1  # bump when the generated inputs change
SEED = 20240
NUM_FINETUNED = 8
STD_BASE = 0.02
STD_TAU = 0.001

VISION_CONFIG = {  # the config.json of every generated checkpoint
    "architectures": ["CLIPVisionModelWithProjection"],
    "model_type": "clip_vision_model",
    **VIT_B32,
    "attention_dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "torch_dtype": "float32",
}

LAMBDA_TA = 0.3
TIES_K = 0.2
TIES_LAMBDA = 1.0


# --------------------------------------------------------------------------- inputs


def ckpt_names() -> list[str]:
    return ["pretrained"] + [f"ft{i}" for i in range(NUM_FINETUNED)]


def expected_manifest_head(shapes) -> dict:
    return {
        "recipe": RECIPE,
        "seed": SEED,
        "std_base": STD_BASE,
        "std_tau": STD_TAU,
        "num_finetuned": NUM_FINETUNED,
        "params": num_params(shapes),
        "tensors": len(shapes),
    }


def inputs_complete(cache: Path, shapes) -> bool:
    m = read_manifest(cache)
    if not m:
        return False
    head = expected_manifest_head(shapes)
    if any(m.get(k) != v for k, v in head.items()):
        return False
    for name in ckpt_names():
        for fname, size in m.get("files", {}).get(name, {}).items():
            f = cache / name / fname
            if not f.is_file() or f.stat().st_size != size:
                return False
        if not (cache / name / "model.safetensors").is_file():
            return False
    return True


def generate_inputs(cache: Path, shapes) -> None:
    """Writes pretrained + ft0..ft7; holds theta_0 and one fine-tuned checkpoint at a time."""
    from safetensors.numpy import save_file

    cache.mkdir(parents=True, exist_ok=True)
    (cache / "manifest.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    files: dict[str, dict[str, int]] = {}
    cfg = json.dumps(VISION_CONFIG, indent=2) + "\n"

    def write(name: str, tensors: dict) -> None:
        final = cache / name
        tmp = staging(cache, name)
        tmp.mkdir()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(cfg)
        publish(tmp, final)
        files[name] = {f.name: f.stat().st_size for f in final.iterdir()}

    rng = np.random.default_rng([SEED, 0])
    base = {}
    for n, shp in shapes.items():
        a = rng.standard_normal(shp, dtype=np.float32)
        a *= np.float32(STD_BASE)
        base[n] = a
    write("pretrained", base)
    print(f"  generated pretrained ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    for k in range(NUM_FINETUNED):
        rng = np.random.default_rng([SEED, k + 1])
        ft = {}
        for n, shp in shapes.items():
            a = rng.standard_normal(shp, dtype=np.float32)
            a *= np.float32(STD_TAU)
            a += base[n]
            ft[n] = a
        write(f"ft{k}", ft)
        del ft
        print(f"  generated ft{k} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    manifest = expected_manifest_head(shapes)
    manifest["files"] = files
    manifest["generated_by"] = "scripts/bench/bench_merge.py"
    write_manifest(cache, manifest)


# --------------------------------------------------------------------------- numpy child


def is_merged(name: str, arr: np.ndarray) -> bool:
    """docs/design.md §5: float tensors under vision_model. plus visual_projection.weight."""
    floating = np.issubdtype(arr.dtype, np.floating)
    return floating and (name.startswith("vision_model.") or name == "visual_projection.weight")


def numpy_child(spec: dict) -> None:
    import reference_merge as rm
    from safetensors.numpy import load_file, save_file

    t = time.perf_counter()
    pre = Path(spec["pretrained"])
    full_base = load_file(str(pre / "model.safetensors"))
    fts = [load_file(str(Path(d) / "model.safetensors")) for d in spec["finetuned"]]
    t_load = time.perf_counter() - t

    t = time.perf_counter()
    base = {n: a for n, a in full_base.items() if is_merged(n, a)}
    carried = {n: a for n, a in full_base.items() if n not in base}
    taus = []
    for i in range(len(fts)):
        ft = {n: fts[i][n] for n in base}
        taus.append(rm.task_vectors(base, [ft])[0])
        fts[i] = None  # free theta_k once tau_k exists
        del ft
    t_taus = time.perf_counter() - t

    t = time.perf_counter()
    if spec["method"] == "task-arithmetic":
        merged = rm.task_arithmetic(base, taus, spec["lambda"])
    elif spec["method"] == "ties":
        merged = rm.ties(base, taus, k=spec["k"], lam=spec["lambda"], agg="mean", scope="global")
    else:
        raise SystemExit(f"unknown method {spec['method']}")
    t_merge = time.perf_counter() - t
    del taus

    t = time.perf_counter()
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    merged.update(carried)
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(pre / "config.json", out / "config.json")
    t_save = time.perf_counter() - t
    n = sum(int(a.size) for n_, a in merged.items() if n_ in base)
    print(json.dumps({"load": t_load, "taus": t_taus, "merge": t_merge, "save": t_save, "params": n}))


# --------------------------------------------------------------------------- measuring


def run_numpy(args, cache: Path, method: str, k: int, out: Path, logdir: Path, tag: str) -> dict:
    spec = {
        "method": method,
        "pretrained": str(cache / "pretrained"),
        "finetuned": [str(cache / f"ft{i}") for i in range(k)],
        "lambda": LAMBDA_TA if method == "task-arithmetic" else TIES_LAMBDA,
        "k": TIES_K,
        "out": str(out),
    }
    env = dict(os.environ)
    t = str(args.threads)
    env.update(OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--numpy-child", json.dumps(spec)]
    r = run_child(cmd, env, logdir, tag)
    phases = json.loads(r["stdout"].strip().splitlines()[-1])
    r.update(load=phases["load"] + phases["taus"], merge=phases["merge"], write=phases["save"],
             load_io=phases["load"], taus=phases["taus"], params=phases["params"])
    return r


def ours_cmd(binary: str, args, cache: Path, method: str, k: int, out: Path) -> list[str]:
    cmd = [binary, "--threads", str(args.threads), "--device", args.device, "merge", "--method", method,
           "--pretrained", str(cache / "pretrained")]
    for i in range(k):
        cmd += ["--finetuned", f"ft{i}={cache / f'ft{i}'}"]
    if method == "task-arithmetic":
        cmd += ["--lambda", str(LAMBDA_TA)]
    else:
        cmd += ["--k", str(TIES_K), "--lambda", str(TIES_LAMBDA)]
    return cmd + ["--out", str(out), "--force"]


def run_ours(binary: str, args, cache: Path, method: str, k: int, out: Path, logdir: Path, tag: str) -> dict:
    r = run_child(ours_cmd(binary, args, cache, method, k, out), dict(os.environ), logdir, tag)
    m = re.search(r"load ([\d.]+)s, merge ([\d.]+)s, write ([\d.]+)s on (\S+)", r["stdout"])
    if not m:
        raise RuntimeError(f"no timing line in adamerge output:\n{r['stdout']}")
    p = re.search(r"\((\d+) parameters\)", r["stdout"])
    r.update(load=float(m[1]), merge=float(m[2]), write=float(m[3]), backend=m[4],
             params=int(p[1]) if p else None)
    return r


def compare_outputs(ours: Path, ref: Path) -> dict:
    """Max |ours - numpy| over every tensor, and the count of entries differing."""
    from safetensors import safe_open

    worst, worst_name, ndiff, total = 0.0, "", 0, 0
    with safe_open(str(ours / "model.safetensors"), "np") as a, \
            safe_open(str(ref / "model.safetensors"), "np") as b:
        ka, kb = set(a.keys()), set(b.keys())
        if ka != kb:
            return {"same_keys": False, "only_ours": sorted(ka - kb)[:5], "only_numpy": sorted(kb - ka)[:5]}
        for n in sorted(ka):
            x, y = a.get_tensor(n), b.get_tensor(n)
            if x.shape != y.shape or x.dtype != y.dtype:
                return {"same_keys": True, "mismatch": n, "ours": [str(x.dtype), x.shape], "numpy": [str(y.dtype), y.shape]}
            d = np.abs(x.astype(np.float64) - y.astype(np.float64))
            ndiff += int(np.count_nonzero(d))
            total += d.size
            m = float(d.max()) if d.size else 0.0
            if m > worst:
                worst, worst_name = m, n
    return {"same_keys": True, "max_abs_diff": worst, "worst_tensor": worst_name,
            "entries_differing": ndiff, "entries": total}


# --------------------------------------------------------------------------- report

def build_rows(results: list[dict], ckpt_bytes: int, params: int) -> list[dict]:
    rows = []
    for r in results:
        best = {}
        for tool in ("numpy", "ours"):
            runs = r[tool]
            b = min(runs, key=lambda x: x["wall"])
            best[tool] = b
        for tool in ("numpy", "ours"):
            b = best[tool]
            row = {
                "method": r["method"], "K": r["K"], "tool": tool if tool == "numpy" else f"adamerge ({b.get('backend', '?')})",
                "wall_s": b["wall"], "load_s": b["load"], "merge_s": b["merge"], "write_s": b["write"],
                "throughput_mparams_s": params * r["K"] / b["merge"] / 1e6 if b["merge"] > 0 else None,
                "peak_rss_gib": b["maxrss"] / GIB,
                "peak_rss_over_ckpt": b["maxrss"] / ckpt_bytes,
                "target_rss_over_ckpt": r["K"] + 2,
                "peak_anon_gib_sampled": b["anon"] / GIB,
                "peak_file_gib_sampled": b["file"] / GIB,
                "cpu_user_s": b["user"], "cpu_sys_s": b["sys"], "foreign_cpu_share": b["foreign_share"],
                "walls_all_runs_s": [x["wall"] for x in r[tool]],
            }
            if tool == "numpy":
                row.update(numpy_read_s=b["load_io"], numpy_taus_s=b["taus"])
            if tool == "ours":
                n = best["numpy"]
                row.update(ratio_wall=b["wall"] / n["wall"],
                           ratio_merge=b["merge"] / n["merge"] if n["merge"] > 0 else None,
                           ratio_rss=b["maxrss"] / n["maxrss"])
            if r.get("check") and tool == "ours":
                row["check_vs_numpy"] = r["check"]
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ["method", "K", "tool", "wall s", "load+τ s", "merge s", "write s",
            "merge M params/s", "peak RSS GiB", "peak RSS / ckpt (≤ K+2)", "anon / file GiB",
            "ours/numpy wall", "ours/numpy merge", "ours/numpy RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["--:"] * (len(head) - 3)) + "|"]
    for r in rows:
        ok = "✓" if r["peak_rss_over_ckpt"] <= r["target_rss_over_ckpt"] else "✗"
        cells = [
            r["method"], str(r["K"]), r["tool"], f"{r['wall_s']:.2f}", f"{r['load_s']:.2f}",
            f"{r['merge_s']:.2f}", f"{r['write_s']:.2f}",
            "—" if r["throughput_mparams_s"] is None else f"{r['throughput_mparams_s']:.0f}",
            f"{r['peak_rss_gib']:.2f}", f"{r['peak_rss_over_ckpt']:.2f} {ok} (≤ {r['target_rss_over_ckpt']})",
            f"{r['peak_anon_gib_sampled']:.2f} / {r['peak_file_gib_sampled']:.2f}",
            fmt_ratio(r.get("ratio_wall")), fmt_ratio(r.get("ratio_merge")), fmt_ratio(r.get("ratio_rss")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="8", help="comma-separated K values (≤ 8), default 8")
    ap.add_argument("--methods", default="task-arithmetic,ties")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu", help="adamerge backend: cpu (= flex) or ndarray")
    ap.add_argument("--repeats", type=int, default=2, help="runs per tool; the fastest is kept")
    ap.add_argument("--bin", default=str(DEFAULT_BIN))
    ap.add_argument("--wait-bin", type=float, default=1800, help="seconds to wait for a missing binary")
    ap.add_argument("--cache", default=None, help="input directory (default $ADAMERGE_CACHE/bench-merge-vitb32)")
    ap.add_argument("--tmp", default=None, help="where temporary outputs go (default: system temp dir)")
    ap.add_argument("--no-check", action="store_true", help="skip comparing ours against numpy")
    ap.add_argument("--json", default=None, help="also write the rows as JSON to FILE")
    ap.add_argument("--numpy-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.numpy_child is not None:
        numpy_child(json.loads(args.numpy_child))
        return

    ks = [int(x) for x in args.tasks.split(",") if x.strip()]
    if not ks or any(k < 1 or k > NUM_FINETUNED for k in ks):
        ap.error(f"--tasks: values in 1..{NUM_FINETUNED}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in ("task-arithmetic", "ties"):
            ap.error(f"--methods: unknown {m!r} (task-arithmetic, ties)")

    cache = Path(args.cache) if args.cache else cache_dir("bench-merge-vitb32")
    shapes = vision_tower_shapes(VISION_CONFIG)
    params = num_params(shapes)
    if inputs_complete(cache, shapes):
        print(f"inputs: reusing {cache}", file=sys.stderr, flush=True)
    else:
        print(f"inputs: generating {params / 1e6:.2f} M params × {1 + NUM_FINETUNED} checkpoints into {cache}",
              file=sys.stderr, flush=True)
        generate_inputs(cache, shapes)
    ckpt_bytes = (cache / "pretrained" / "model.safetensors").stat().st_size
    _lock = lock_inputs(cache, "bench_merge.py")  # held until exit
    busy = cpu_busy()

    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.tmp))
    results = []
    try:
        binary = work / "adamerge"
        bininfo = snapshot_binary(Path(args.bin), args.wait_bin, binary)
        load_start = os.getloadavg()
        t_start = time.perf_counter()
        for method in methods:
            for k in ks:
                entry = {"method": method, "K": k, "numpy": [], "ours": []}
                outs = {"numpy": work / "out-numpy", "ours": work / "out-ours"}
                for rep in range(args.repeats):
                    for tool in ("numpy", "ours"):
                        shutil.rmtree(outs[tool], ignore_errors=True)
                        tag = f"{method}-K{k}-{tool}-{rep}"
                        if tool == "numpy":
                            r = run_numpy(args, cache, method, k, outs[tool], work, tag)
                        else:
                            r = run_ours(str(binary), args, cache, method, k, outs[tool], work, tag)
                        r.pop("stdout", None)
                        entry[tool].append(r)
                        print(f"  {method} K={k} {tool} run {rep + 1}: wall {r['wall']:.2f}s, merge {r['merge']:.2f}s, "
                              f"peak RSS {r['maxrss'] / GIB:.2f} GiB, other load {100 * (r['foreign_share'] or 0):.0f}%",
                              file=sys.stderr, flush=True)
                if not args.no_check:
                    entry["check"] = compare_outputs(outs["ours"], outs["numpy"])
                    print(f"  check: {entry['check']}", file=sys.stderr, flush=True)
                for d in outs.values():
                    shutil.rmtree(d, ignore_errors=True)
                results.append(entry)
        total_s = time.perf_counter() - t_start
        load_end = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = build_rows(results, ckpt_bytes, params)
    cmd = [*rerun_prefix(__file__), "--tasks", ",".join(map(str, ks)), "--methods", ",".join(methods),
           "--threads", str(args.threads), "--device", args.device, "--repeats", str(args.repeats)]
    if args.cache:
        cmd += ["--cache", args.cache]
    if args.bin != str(DEFAULT_BIN):
        cmd += ["--bin", args.bin]
    if args.no_check:
        cmd += ["--no-check"]
    rerun = shlex.join(cmd)
    if not args.cache and os.environ.get("ADAMERGE_CACHE"):
        rerun = f"ADAMERGE_CACHE={shlex.quote(os.environ['ADAMERGE_CACHE'])} " + rerun

    mem = f"{machine['mem_bytes'] / GIB:.1f} GiB" if machine["mem_bytes"] else "?"
    print(f"## adamerge merge vs numpy — synthetic ViT-B/32 vision tower\n")
    print(f"Machine: {machine['cpu']}, {machine['cores']} cores, {mem} RAM; Linux {machine['kernel']}; "
          f"Python {machine['python']}, numpy {machine['numpy']}, safetensors {machine['safetensors']}.")
    print(f"Binary: {bininfo['path']} ({bininfo['version']}, built {bininfo['mtime']}, sha256 {bininfo['sha256']}…).")
    print(f"Inputs: {cache} — {len(shapes)} float32 tensors, {params:,} parameters per checkpoint, "
          f"{ckpt_bytes / 2**20:.1f} MiB per model.safetensors (the 'ckpt' unit below).")
    print(f"Threads: {args.threads} for both (adamerge --threads {args.threads}; numpy child with "
          f"OMP_NUM_THREADS=OPENBLAS_NUM_THREADS={args.threads}).")
    busy_txt = "?" if busy is None else f"{100 * busy:.0f}%"
    print(f"Load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; CPU {busy_txt} busy in the "
          f"second before the first run; {total_s:.0f}s in all.\n")
    if busy is not None and busy > 0.25:
        print(f"**Warning: the machine was already {busy_txt} busy before the benchmark started; "
              "other work competes for the cores and the timings are noisy.**\n")
    print(markdown(rows))
    print()
    print("Notes:")
    print(f"- Task Arithmetic λ = {LAMBDA_TA}; TIES k = {TIES_K}, λ = {TIES_LAMBDA}, mean, global trim "
          "(one threshold over the whole flattened task vector).")
    print(f"- Each tool ran {args.repeats}× (interleaved numpy, ours, ...); the fastest wall time is shown. "
          "The first run warms the page cache, so the rows are warm-cache numbers.")
    print("- wall: process start to exit (interpreter/numpy import included for numpy). load+τ: reading every "
          "checkpoint and building τ_k = θ_k − θ₀ (adamerge does the subtraction while loading; numpy's "
          "load_file and its τ loop are summed). merge: the method itself, τ already built. write: saving "
          "the merged model.safetensors.")
    print("- merge M params/s = merged parameters × K / merge seconds.")
    print("- peak RSS: ru_maxrss of the child from os.wait4 (anonymous + file-backed pages, so memory-mapped "
          "checkpoint pages count). anon / file: peaks of RssAnon / RssFile sampled from /proc every 20 ms "
          "(each its own peak; short spikes can be missed). Target: peak RSS ≤ (K + 2) × ckpt.")
    print("- numpy's element-wise ops are single-threaded whatever OMP/OPENBLAS_NUM_THREADS say; np.partition "
          "(TIES trim threshold) is single-threaded too. The numpy child frees θ_k as soon as τ_k is built, "
          "and otherwise runs scripts/reference/reference_merge.py unchanged (which keeps the K trimmed copies of τ).")
    noisy = [f"{r['method']} K={r['K']} {r['tool']} ({100 * r['foreign_cpu_share']:.0f}%)" for r in rows
             if r.get("foreign_cpu_share") is not None and r["foreign_cpu_share"] > 0.10]
    if noisy:
        print(f"- **Contention:** other processes used > 10 % of the machine's CPU time during: {', '.join(noisy)}; "
              "those rows are unreliable.")
    else:
        print("- Other processes used ≤ 10 % of the machine's CPU time during every kept run.")
    for r in results:
        c = r.get("check")
        if c:
            if c.get("same_keys") and "max_abs_diff" in c:
                print(f"- check {r['method']} K={r['K']}: ours vs numpy max |Δ| = {c['max_abs_diff']:.3g}"
                      f"{' (' + c['worst_tensor'] + ')' if c['max_abs_diff'] > 0 else ''}, "
                      f"{c['entries_differing']:,} of {c['entries']:,} entries differ.")
            else:
                print(f"- check {r['method']} K={r['K']}: OUTPUTS DIFFER IN LAYOUT: {c}")
    print(f"\nRerun: `{rerun}`")

    if args.json:
        doc = {"machine": machine, "binary": bininfo, "inputs": {"dir": str(cache), "params": params,
               "ckpt_bytes": ckpt_bytes, "tensors": len(shapes), "seed": SEED, "recipe": RECIPE},
               "threads": args.threads, "repeats": args.repeats, "loadavg": [load_start, load_end],
               "cpu_busy_before": busy,
               "total_s": total_s, "command": rerun, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
