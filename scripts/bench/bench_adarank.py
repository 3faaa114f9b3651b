#!/usr/bin/env python3
"""Benchmark AdaRank against layer-wise AdaMerging (seconds per step, setup, memory), both `adamerge learn`.

    python3 scripts/bench/bench_adarank.py [--k 8] [--steps 10] [--threads 2] [--bin PATH]
                                           [--variants ta,hard tsv-m,hard ...]
                                           [--vit-b32 | --hidden 128 --layers 4 --heads 4 --intermediate 512
                                            --image-size 32 --patch-size 8 --projection 64]
                                           [--classes 4 --per-class 16] [--work DIR] [--json FILE]

    # the ViT-B/32 shape, on bench_learn.py's ViT-B/32 inputs (BENCHMARKS.md; 3.2 GB under --work):
    python3 scripts/bench/bench_adarank.py --vit-b32 --k 8 --steps 10 --threads 2 --work /tmp/bl-b32

Inputs: exactly bench_learn.py's (this script imports it and calls its generator, in a child so
that torch is never imported here): a random `CLIPVisionModelWithProjection` θ₀ (`pretrained/`),
K fine-tunes θ_k = θ₀ + seeded noise (`ft0/` …), per task an ImageFolder of `--classes` ×
`--per-class` random PNGs and a `head.safetensors`; generated into a temporary directory, or into
`--work DIR`, where they are kept and reused while their manifest matches (bench_learn.py's
manifest, so a `--work` directory of bench_learn.py with at least K fine-tunes of the same shape
is reused as is). Shape: bench_learn.py's defaults (hidden 128, 4 layers, 4 heads, MLP 512, image
32, patch 8, projection 64; 4 classes × 16 images), or with `--vit-b32` the ViT-B/32 shape as
BENCHMARKS.md ran bench_learn.py: hidden 768, 12 layers, 12 heads, MLP 3072, image 224, patch 32,
projection 512, 4 classes × 4 images per task (so every batch of 16 reads all of a task's
images). Any shape option given explicitly overrides the preset.

Runs, one after another, each a child process under GNU time, on the same K tasks and the same
copy of the binary, `--threads T` (default 2), batch 16, one batch per task per step, Adam lr
1e-3, `--steps N` (default 10), seed 0 (so every run draws the same batches):

* AdaMerging: `adamerge --threads T --device cpu learn --method adamerging --granularity layer
  --pretrained … --task NAME,checkpoint=…,data=…,head=… … --steps N --batch-size 16
  --batches-per-task 1 --lr 0.001 --init 0.3 --out RUN --no-merged --eval-limit 16`
  (bench_learn.py's `ours_cmd`, with `--method adamerging` spelled out);
* AdaRank, once per `--variants` entry `BASE,MASK[,OPTION=VALUE…]` (default `ta,hard` and
  `tsv-m,hard`): the same command with `--method adarank --base BASE --mask MASK [--OPTION VALUE …]`
  and without `--init`, so λ starts at adarank's own default (0.3 with base ta, 1 with tsv-m).
  OPTION is one of rank, decompose, qkv, rest, temperature, mask-init, init, layering, e.g.
  `ta,soft,rank=0.5`.

Measured per run:

* s/step: the median of the `seconds` of the `step` events of RUN/log.jsonl, the first step left
  out (adamerge times each step around sampling + decoding the step's PNGs, the merge, the forward
  and backward, and the Adam step; not the resume checkpoint and log line written after it).
* before step 1: log.jsonl carries no timestamps and stdout only the loop's total ("learned … in
  X s"), so this script watches RUN/log.jsonl while the child runs (a thread polling its size
  every 5 ms) and notes when each line appears. Time before the first step = (when step 1's line
  appeared − when the child was started) − step 1's `seconds`, i.e. process start, loading the
  checkpoints, images and heads, building the task vectors (AdaRank: its SVDs), the initial merge
  and the step-0 evaluation (K × 16 images, the same forward for every method). Its excess over
  AdaMerging's is therefore the cost of AdaRank's decomposition. Resolution: the poll interval
  (5 ms). Where no line was caught (it should not happen) it falls back to wall − ("learned in"
  of stdout) − the time after the last line.
* peak RSS: GNU time's %M (the child's own ru_maxrss), as bench_learn.py.
* λ and mask logits: from RUN/lambda.json: λ = the number of entries of its `lambda` rows
  (K × layer units); mask logits = Σ over `components` (one per decomposed matrix) and tasks of
  len(`logits`) (0 for AdaMerging).

Check: with base ta, hard masks (all components on at the start), rank 1 and the default λ init
0.3, AdaRank's first merge is AdaMerging's (τ = U S Vᵀ), so their first-step losses must agree up
to the SVD's round-off; the report prints |Δ|.

Uses a copy of the adamerge binary taken at start (a concurrent build cannot swap it mid-run) and
never builds it; fails at once when it is missing. Needs numpy and safetensors here, and torch,
transformers (5.x) and Pillow only to generate the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_learn  # noqa: E402  (its inputs, command line and medians)
from common import (  # noqa: E402
    DEFAULT_BIN, GIB, GNU_TIME, VIT_B32, binary_staleness, clip_vision_config, cpu_busy, cpuinfo_field, fmt_ratio,
    have_gnu_time, lock_inputs, machine_info, measured_run, read_manifest, rerun_prefix, snapshot_binary,
)

# bench_learn.py's defaults, and the ViT-B/32 preset as BENCHMARKS.md ran bench_learn.py.
SHAPE_DEFAULTS = {"hidden": 128, "layers": 4, "heads": 4, "intermediate": 512, "image_size": 32, "patch_size": 8,
                  "projection": 64, "classes": 4, "per_class": 16}
VIT_B32_PRESET = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "image_size": 224,
                  "patch_size": 32, "projection": 512, "classes": 4, "per_class": 4}
VARIANT_OPTIONS = ("rank", "decompose", "qkv", "rest", "temperature", "mask-init", "init", "layering")
POLL_S = 0.005


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- variants


def parse_variant(text: str) -> dict:
    """`BASE,MASK[,OPTION=VALUE…]` → {"base", "mask", "options": [(option, value)…]}."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"{text!r}: expected BASE,MASK[,OPTION=VALUE…] (e.g. ta,hard)")
    opts = []
    for p in parts[2:]:
        key, eq, value = p.partition("=")
        if not eq or key not in VARIANT_OPTIONS or not value:
            raise ValueError(f"{text!r}: {p!r} is not OPTION=VALUE with OPTION one of {', '.join(VARIANT_OPTIONS)}")
        opts.append((key, value))
    return {"base": parts[0], "mask": parts[1], "options": opts}


def variant_label(v: dict) -> str:
    extra = "".join(f",{k}={x}" for k, x in v["options"])
    return f"adarank({v['base']},{v['mask']}{extra})"


def learn_cmd(binary: Path, args, work: Path, out: Path, variant: dict | None) -> list[str]:
    """bench_learn.py's ours_cmd with the method spelled out; AdaRank's without --init."""
    cmd = bench_learn.ours_cmd(binary, args, work, args.k, args.steps, out, per_task=False)
    i = cmd.index("learn") + 1
    if variant is None:
        return cmd[:i] + ["--method", "adamerging"] + cmd[i:]
    j = cmd.index("--init")
    cmd = cmd[:j] + cmd[j + 2:]
    extra = ["--method", "adarank", "--base", variant["base"], "--mask", variant["mask"]]
    for key, value in variant["options"]:
        extra += [f"--{key}", value]
    return cmd[:i] + extra + cmd[i:]


# --------------------------------------------------------------------------- one run


class LogWatcher(threading.Thread):
    """Polls a JSON-lines file and notes when (perf_counter) each complete line appeared."""

    def __init__(self, path: Path, interval: float = POLL_S):
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.seen: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self._pos, self._partial = 0, b""

    def poll(self) -> None:
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return
        if size < self._pos:  # the log was started anew (step 0 truncates it)
            self._pos, self._partial, self.seen = 0, b"", []
        if size == self._pos:
            return
        now = time.perf_counter()
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read(size - self._pos)
        self._pos += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        self.seen += [(now, ln.decode()) for ln in lines if ln.strip()]

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            time.sleep(self.interval)
        self.poll()


def run_learn(binary: Path, args, work: Path, logdir: Path, tag: str, variant: dict | None) -> dict:
    out = logdir / f"{tag}-run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = learn_cmd(binary, args, work, out, variant)
    watcher = LogWatcher(out / "log.jsonl")
    watcher.start()
    t0 = time.perf_counter()
    try:
        r = measured_run(cmd, dict(os.environ), logdir, tag, args.use_time)
    finally:
        watcher.stop.set()
        watcher.join()
    stdout = r.pop("stdout", "")
    events = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    steps = [e for e in events if e.get("event") == "step"]
    if len(steps) != args.steps:
        raise RuntimeError(f"{out / 'log.jsonl'}: {len(steps)} step events, expected {args.steps}")
    # "learned METHOD in Xs on BACKEND" (AdaRank: "in Xs (after Ys of SVDs) on").
    m = re.search(r"^learned (.+) in ([0-9.]+)s(?: \(after ([0-9.]+)s of SVDs\))? on ", stdout, re.M)
    learned_s = float(m[2]) if m else None
    svd_s = float(m[3]) if m and m[3] else None
    arrivals = [(t - t0, json.loads(ln)) for t, ln in watcher.seen]
    step_at = {e["step"]: t for t, e in arrivals if e.get("event") == "step"}
    eval_at = {e["step"]: t for t, e in arrivals if e.get("event") == "eval"}
    if 1 in step_at:
        before, how = step_at[1] - steps[0]["seconds"], "log"
    else:  # fallback: wall − the loop (stdout) − what followed the last line
        tail = r["wall"] - max((t for t, _ in arrivals), default=r["wall"])
        before, how = (r["wall"] - learned_s - tail, "wall") if learned_s is not None else (None, "none")
    # Between steps (checkpoint + log line + the next sampling's set-up outside the timer).
    gaps = [step_at[s + 1] - step_at[s] - steps[s]["seconds"] for s in range(1, args.steps)
            if s in step_at and s + 1 in step_at]
    lam = json.loads((out / "lambda.json").read_text())
    lam_rows = lam.get("lambda") or []
    comps = lam.get("components") or []
    r.update(
        cmd=cmd, method=(m[1] if m else lam.get("method")), lambda_method=lam.get("method"),
        seconds=[e["seconds"] for e in steps], losses=[e["loss"] for e in steps], learned_s=learned_s,
        svd_s=svd_s, before_first_step_s=before, before_how=how, eval0_at_s=eval_at.get(0),
        last_line_at_s=max((t for t, _ in arrivals), default=None), between_steps_s=gaps,
        lambda_count=sum(len(row) for row in lam_rows), lambda_shape=[len(lam_rows), len(lam_rows[0]) if lam_rows else 0],
        matrices=len(comps), mask_logits=sum(len(lg) for c in comps for lg in c.get("logits", [])),
        config=lam.get("config"),
    )
    shutil.rmtree(out, ignore_errors=True)
    return r


# --------------------------------------------------------------------------- report


def cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags") or "").split())


def fmt_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.4f}" if x < 1 else f"{x:.3f}" if x < 100 else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=8, help="number of tasks K (default 8)")
    ap.add_argument("--steps", type=int, default=10, help="Adam steps per run (default 10; ≥ 2)")
    ap.add_argument("--threads", type=int, default=2, help="adamerge --threads (default 2)")
    ap.add_argument("--device", default="cpu", help="adamerge backend: cpu (= flex) or ndarray")
    ap.add_argument("--variants", nargs="+", default=["ta,hard", "tsv-m,hard"], metavar="BASE,MASK[,OPT=V]",
                    help="AdaRank variants, space-separated (default: ta,hard tsv-m,hard)")
    ap.add_argument("--bin", "--binary", dest="bin", default=str(DEFAULT_BIN))
    ap.add_argument("--wait-bin", type=float, default=0, help="seconds to wait for a missing binary")
    ap.add_argument("--vit-b32", action="store_true",
                    help="the ViT-B/32 shape, 4 classes × 4 images per task (BENCHMARKS.md's bench_learn run)")
    for name, help_ in (("hidden", None), ("layers", None), ("heads", "attention heads"), ("intermediate", None),
                        ("image-size", None), ("patch-size", None), ("projection", "projection_dim"),
                        ("classes", "classes per task"), ("per-class", "images per class")):
        d = SHAPE_DEFAULTS[name.replace("-", "_")]
        ap.add_argument(f"--{name}", type=int, default=None,
                        help=f"{help_ + '; ' if help_ else ''}default {d}, {VIT_B32_PRESET[name.replace('-', '_')]} "
                             "with --vit-b32")
    ap.add_argument("--work", default=None, help="keep (and reuse) the inputs here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON to FILE")
    args = ap.parse_args()

    preset = VIT_B32_PRESET if args.vit_b32 else SHAPE_DEFAULTS
    explicit = {k for k in SHAPE_DEFAULTS if getattr(args, k) is not None}
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ValueError as e:
        ap.error(f"--variants: {e}")
    if args.k < 1 or args.threads < 1 or args.classes < 1 or args.per_class < 1:
        ap.error("--k, --threads, --classes, --per-class must be ≥ 1")
    if args.steps < 2:
        ap.error("--steps must be ≥ 2 (the first step is left out of the median)")
    if args.hidden % args.heads or args.image_size % args.patch_size:
        ap.error("--hidden must be a multiple of --heads and --image-size of --patch-size")
    vision = bench_learn.vision_config(args)
    if args.vit_b32 and not explicit & {"hidden", "layers", "heads", "intermediate", "image_size", "patch_size",
                                        "projection"}:
        assert vision == VIT_B32, "the --vit-b32 preset drifted from common.VIT_B32"

    # The binary first: fail before generating anything.
    bin_path = Path(args.bin)
    if args.wait_bin <= 0 and not (bin_path.is_file() and os.access(bin_path, os.X_OK)):
        sys.exit(f"error: no adamerge binary at {bin_path} (build it with `cargo build --release`, or pass "
                 "--bin PATH; this script never builds it)")

    tmp_root = Path(tempfile.mkdtemp(prefix="bench-adarank-"))
    runs: list[tuple[str, dict | None, dict]] = []
    try:
        binary = tmp_root / "adamerge"
        bininfo = snapshot_binary(bin_path, args.wait_bin, binary)
        stale = binary_staleness(bin_path)

        work = Path(args.work) if args.work else tmp_root / "inputs"
        work.mkdir(parents=True, exist_ok=True)
        _lock = lock_inputs(work, "bench_adarank.py")  # noqa: F841  (held until exit)
        want = bench_learn.wanted_manifest(vision, args.k, args.classes, args.per_class)
        if bench_learn.inputs_ok(work, want):
            log(f"inputs: reusing {work}")
        else:
            t = time.perf_counter()
            log(f"inputs: generating θ₀ + {args.k} fine-tuned checkpoints and {args.k} tasks into {work} "
                "(bench_learn.py's generator)")
            spec = {"work": str(work), "vision": vision, "kmax": args.k, "classes": args.classes,
                    "per_class": args.per_class}
            env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1",
                       HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
            subprocess.run([sys.executable, bench_learn.__file__, "--generate-child", json.dumps(spec)],
                           env=env, check=True)
            log(f"  done ({time.perf_counter() - t:.1f}s)")
        manifest = read_manifest(work)
        params = manifest.get("params")

        machine = machine_info()
        flags = cpu_flags()
        args.use_time = have_gnu_time()
        if not args.use_time:
            log(f"warning: no GNU time at {GNU_TIME}; peak RSS from os.wait4 includes this script's RSS")
        busy = cpu_busy()
        logdir = tmp_root / "logs"
        logdir.mkdir()
        load_start = os.getloadavg()
        t_all = time.perf_counter()
        plan = [("adamerging", None)] + [(variant_label(v), v) for v in variants]
        for n, (label, v) in enumerate(plan):
            try:
                r = run_learn(binary, args, work, logdir, f"run{n}", v)
            except RuntimeError as e:  # adamerge failed (its command and output tail are in the message)
                sys.exit(f"error: the {label} run failed: {e}")
            log(f"  {label}: wall {r['wall']:.2f}s, before step 1 {fmt_s(r['before_first_step_s'])}s, "
                f"median step {bench_learn.median_after_first(r['seconds']):.4f}s, peak RSS "
                f"{r['maxrss'] / GIB:.3f} GiB, other load {100 * (r['foreign_share'] or 0):.0f}%")
            runs.append((label, v, r))
        total_s = time.perf_counter() - t_all
        load_end = os.getloadavg()
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    base = runs[0][2]
    base_s = bench_learn.median_after_first(base["seconds"])
    rows = []
    for label, v, r in runs:
        s = bench_learn.median_after_first(r["seconds"])
        rows.append({
            "method": label, "variant": v, "s_per_step": s, "ratio_time": s / base_s,
            "before_first_step_s": r["before_first_step_s"], "before_first_step_from": r["before_how"],
            "before_first_step_minus_adamerging_s": (None if r["before_first_step_s"] is None
                                                     or base["before_first_step_s"] is None
                                                     else r["before_first_step_s"] - base["before_first_step_s"]),
            "eval0_logged_at_s": r["eval0_at_s"], "learned_s_stdout": r["learned_s"], "wall_s": r["wall"],
            "svd_s_stdout": r["svd_s"],
            "peak_rss_gib": r["maxrss"] / GIB, "ratio_rss": r["maxrss"] / base["maxrss"],
            "lambda_count": r["lambda_count"], "lambda_shape": r["lambda_shape"], "matrices": r["matrices"],
            "mask_logits": r["mask_logits"], "between_steps_median_s": (statistics.median(r["between_steps_s"])
                                                                        if r["between_steps_s"] else None),
            "step_seconds": r["seconds"], "losses": r["losses"], "method_logged": r["lambda_method"],
            "foreign_cpu_share": r["foreign_share"], "user_s": r["user"], "sys_s": r["sys"],
            "config": r["config"], "cmd": shlex.join(r["cmd"]),
        })

    # ---- report
    cmd = [*rerun_prefix(__file__), "--k", str(args.k), "--steps", str(args.steps), "--threads", str(args.threads)]
    if args.vit_b32:
        cmd.append("--vit-b32")
    for name in SHAPE_DEFAULTS:
        if getattr(args, name) != preset[name]:
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.variants != ap.get_default("variants"):
        cmd += ["--variants", *args.variants]
    if args.device != "cpu":
        cmd += ["--device", args.device]
    if args.bin != str(DEFAULT_BIN):
        cmd += ["--bin", args.bin]
    if args.work:
        cmd += ["--work", args.work]
    rerun = shlex.join(cmd)

    v = vision
    avx = "avx512f" in flags
    mem = f"{machine['mem_bytes'] / GIB:.1f} GiB" if machine["mem_bytes"] else "?"
    print("## AdaRank vs layer-wise AdaMerging: `adamerge learn` seconds per step, set-up and memory — "
          "random CLIP ViT, CPU\n")
    print(f"Machine: {machine['cpu']} ({'with' if avx else 'no'} avx512f), {machine['cores']} cores, {mem} RAM; "
          f"Linux {machine['kernel']}. adamerge --threads {args.threads} --device {args.device}.")
    print(f"Binary: {bininfo['path']} ({bininfo['version']}, built {bininfo['mtime']}, sha256 {bininfo['sha256']}…).")
    if stale:
        print(f"**Warning: {'; '.join(stale)}. It was not rebuilt here, so these numbers may not reflect "
              "the checkout.**")
    print(f"Model: CLIPVisionModelWithProjection, hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, "
          f"{v['num_attention_heads']} heads, MLP {v['intermediate_size']}, image {v['image_size']}, "
          f"patch {v['patch_size']}, projection {v['projection_dim']}; {params:,} float32 parameters "
          f"(bench_learn.py's inputs, {'reused from' if args.work else 'generated into a temporary'} "
          f"{args.work or 'directory'}). K = {args.k} tasks, {args.classes} × {args.per_class} random "
          f"{v['image_size']}×{v['image_size']} PNGs each; batch {bench_learn.BATCH}, "
          f"{bench_learn.BATCHES_PER_TASK} batch per task per step, {args.steps} steps per run, Adam lr "
          f"{bench_learn.LR}, seed 0 (the same batches in every run), --eval-limit {bench_learn.EVAL_LIMIT}.")
    busy_txt = "?" if busy is None else f"{100 * busy:.0f}%"
    print(f"Load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; CPU {busy_txt} busy in the "
          f"second before the first run; {total_s:.0f}s in all.\n")
    if busy is not None and busy > 0.25:
        print(f"**Warning: the machine was already {busy_txt} busy before the benchmark started; other work "
              "competes for the cores and the timings are noisy.**\n")

    head = ["method", "s/step", "/ AdaMerging", "before step 1 s", "its excess over AdaMerging's s",
            "peak RSS GiB", "/ AdaMerging", "λ", "mask logits"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "|".join(["--:"] * (len(head) - 1)) + "|")
    for r in rows:
        extra = r["before_first_step_minus_adamerging_s"]
        cells = [r["method"], fmt_s(r["s_per_step"]), fmt_ratio(r["ratio_time"]),
                 fmt_s(r["before_first_step_s"]) + ("" if r["before_first_step_from"] == "log" else " (wall)"),
                 "—" if r is rows[0] or extra is None else f"{extra:+.3f}",
                 f"{r['peak_rss_gib']:.3f}", fmt_ratio(r["ratio_rss"]), f"{r['lambda_count']:,}",
                 f"{r['mask_logits']:,}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("Notes:")
    print(f"- s/step: median of the `seconds` of log.jsonl's step events over steps 2–{args.steps} of one run "
          "(each: sampling + decoding the PNGs, merge, forward + backward of all K batches, Adam). "
          "/ AdaMerging > 1 means slower than layer-wise AdaMerging.")
    print("- before step 1: when step 1's log line appeared (log.jsonl polled every "
          f"{POLL_S * 1000:.0f} ms) − step 1's `seconds`, from the child's start: loading, the task vectors "
          "(AdaRank: the SVDs), the initial merge and the step-0 evaluation (the same for every method). "
          "\"over AdaMerging\" is the excess over AdaMerging's, i.e. AdaRank's decomposition. "
          "The step-0 evaluation line appeared at: "
          + "; ".join(f"{r['method']} {fmt_s(r['eval0_logged_at_s'])} s" for r in rows) + ".")
    print("- Between steps (not in s/step: the resume checkpoint, the log line; from the lines' arrival times, so "
          f"± {POLL_S * 1000:.0f} ms), median: "
          + "; ".join(f"{r['method']} {fmt_s(r['between_steps_median_s'])} s" for r in rows)
          + ". Loop time printed by adamerge (\"learned … in\", 0.1 s resolution, steps + final evaluation + "
          "checkpoints) vs wall: " + "; ".join(f"{r['method']} {r['learned_s_stdout']} / {r['wall_s']:.2f} s"
                                              for r in rows) + ".")
    print("- SVD time printed by adamerge (\"after … of SVDs\"): "
          + "; ".join(f"{r['method']} {r['svd_s_stdout']} s" for r in rows if r["svd_s_stdout"] is not None) + ".")
    how = ("GNU time's %M (the process's own ru_maxrss)" if args.use_time else
           "ru_maxrss from os.wait4 (GNU time missing: includes this script's RSS at fork)")
    print(f"- peak RSS: {how}. λ: entries of lambda.json's `lambda` (K × layer units); mask logits: "
          "Σ over its `components` (one per decomposed matrix) and tasks of len(`logits`); decomposed matrices: "
          + "; ".join(f"{r['method']} {r['matrices']}" for r in rows[1:]) + ".")
    print("- First-step loss (summed entropy, same batches everywhere): "
          + "; ".join(f"{r['method']} {r['losses'][0]:.6f}" for r in rows) + ".")
    same = [r for r in rows[1:] if r["variant"] and r["variant"]["base"] == "ta" and r["variant"]["mask"] == "hard"
            and not r["variant"]["options"]]
    for r in same:
        d = abs(r["losses"][0] - rows[0]["losses"][0])
        print(f"- Check: {r['method']} starts from AdaMerging's merge (hard masks all on, rank 1, λ 0.3), "
              f"first-step losses differ by {d:.3g}" + (" — **more than round-off**." if d > 1e-3 else "."))
    noisy = [f"{r['method']} ({100 * r['foreign_cpu_share']:.0f}%)" for r in rows
             if r["foreign_cpu_share"] is not None and r["foreign_cpu_share"] > 0.10]
    if noisy:
        print(f"- **Contention:** other processes used > 10 % of the machine's CPU time during: {', '.join(noisy)}; "
              "those rows are unreliable.")
    else:
        print("- Other processes used ≤ 10 % of the machine's CPU time during every run.")
    print("\nCommands (RUN = a temporary folder, removed afterwards):\n")
    for r in rows:
        print(f"    {r['cmd']}")
    print(f"\nRerun: `{rerun}`")

    if args.json:
        doc = {"machine": {**machine, "avx512f": avx}, "binary": bininfo, "binary_warnings": stale,
               "inputs": {"recipe": bench_learn.RECIPE, "seed": bench_learn.SEED, "vision": vision, "params": params,
                          "k": args.k, "classes": args.classes, "per_class": args.per_class, "work": args.work},
               "threads": args.threads, "device": args.device, "steps": args.steps, "batch": bench_learn.BATCH,
               "loadavg": [load_start, load_end], "cpu_busy_before": busy, "total_s": total_s, "command": rerun,
               "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
