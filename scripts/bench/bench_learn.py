#!/usr/bin/env python3
"""Benchmark AdaMerging (seconds per step, memory): `adamerge learn` against PyTorch autograd.

    python3 scripts/bench/bench_learn.py [--ks 2,4,8] [--steps 20] [--threads 2] [--bin PATH]
                                         [--hidden 128 --layers 4 --heads 4 --intermediate 512
                                          --image-size 32 --patch-size 8 --projection 64]
                                         [--per-task] [--work DIR] [--json FILE]

Inputs (seeded; generated into a temporary directory, or into `--work DIR` where they are kept
and reused while their manifest matches the options and this script's recipe):

* `pretrained/`: a random `CLIPVisionModelWithProjection` (default hidden 128, 4 layers, 4 heads,
  MLP 512, image 32, patch 8, projection 64, quick_gelu; transformers' own initialisation) written
  with `save_pretrained(safe_serialization=True)`, plus a `preprocessor_config.json` (the
  PIL-backend CLIPImageProcessor for that image size; both tools read it);
* `ft0/` … `ft{K-1}/`: θ_k = θ₀ + seeded Gaussian noise, std 5 % of each tensor's std (at least
  1e-3), also written with `save_pretrained`;
* `task0/` …: per task an ImageFolder `images/` of `--classes` × `--per-class` random RGB PNGs
  (default 4 × 16, uniform noise, image-size²) and `head.safetensors`, one tensor `weight`
  [classes, projection] float32 (random unit rows × 10).

For each K, the pretrained + first K fine-tuned checkpoints, layer-wise λ (paper units, init 0.3,
clamped to [0, 1] in the forward), Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8), batch size 16,
one batch per task per step, summed mean-entropy loss, on the CPU with T threads (default 2):

* ours: `adamerge --threads T learn --granularity layer --pretrained … --task NAME,checkpoint=…,
  data=…,head=… … --steps N --batch-size 16 --out RUN --no-merged --eval-limit 16`. Seconds per
  step: the median of the `seconds` of the `step` events of RUN/log.jsonl, the first step left
  out (each covers reading + decoding + preprocessing the step's PNGs, the merge, the forward and
  backward of all K tasks' batches together, and the Adam step; not the per-step checkpoint/log
  writes between steps). `--per-task` adds a run with `--tasks-per-forward 1` (one forward and
  backward per task, the least memory) in its own columns.
* PyTorch: a child process (this script with `--torch-child`; torch.set_num_threads(T),
  OMP/MKL_NUM_THREADS=T) that builds `scripts/reference/reference_adamerging.py`'s `AdaMerging` over the
  same directories and runs its `loss` (merge via torch.func.functional_call of the HF model,
  entropy) + one `backward` + one `torch.optim.Adam` step per step, exactly as its `learn` does.
  Each step also samples 16 distinct images per task (seeded, numpy) and opens + preprocesses
  them with PIL and the PIL-backend CLIPImageProcessor (`use_fast=False`) inside the timed step,
  since ours decodes and preprocesses inside its step too. Same median rule.

Memory: every run is a child process started under GNU time (`/usr/bin/time -f %M`), whose %M is
that process's own peak RSS (its ru_maxrss: the kernel's high-water mark, what `time -v` prints as
"Maximum resident set size"). Not os.wait4 of a direct child: Linux carries the forked copy's
pre-exec high-water mark over exec, so a direct child's ru_maxrss starts at this script's RSS
(without GNU time it falls back to that, and says so). This script never imports torch itself (the
inputs are generated in a child) so its RSS stays small either way. "growth" = peak RSS of the
N-step run − peak RSS of the same command with `--steps 1`: memory that accumulates over steps.

Check: with `--classes` × `--per-class` = 16, every step reads all of each task's images on both
sides, so the per-step losses must agree (they do to ~1e-7); the report then prints the max |Δ|.

Uses a copy of the adamerge binary taken at start (a concurrent build cannot swap it mid-run) and
never builds it. Needs torch, transformers (5.x), Pillow, numpy and safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "reference")]  # common, reference_adamerging

from common import (  # noqa: E402
    DEFAULT_BIN, GNU_TIME, MIB, binary_staleness, clip_vision_config, cpu_busy, fmt_ratio, have_gnu_time,
    machine_info, measured_run, package_versions, publish, read_manifest, rerun_prefix, rss_mib,
    snapshot_binary, staging, write_manifest,
)

RECIPE = 1  # bump when the generated inputs change
SEED = 20242
FT_REL_STD = 0.05  # fine-tune noise std / tensor std
FT_MIN_STD = 1e-3
HEAD_SCALE = 10.0
BATCH = 16
BATCHES_PER_TASK = 1
LR = 1e-3
INIT = 0.3
EVAL_LIMIT = 16


def vision_config(args) -> dict:
    return clip_vision_config(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                              heads=args.heads, image=args.image_size, patch=args.patch_size,
                              projection=args.projection)


# --------------------------------------------------------------------------- inputs


def task_name(i: int) -> str:
    return f"task{i}"


def wanted_manifest(vision: dict, kmax: int, classes: int, per_class: int) -> dict:
    return {"recipe": RECIPE, "seed": SEED, "vision": vision, "finetuned": kmax, "classes": classes,
            "per_class": per_class}


def inputs_ok(work: Path, want: dict) -> bool:
    have = read_manifest(work)
    if not have:
        return False
    if any(have.get(k) != v for k, v in want.items() if k != "finetuned"):
        return False
    return have.get("finetuned", 0) >= want["finetuned"]


def generate_inputs(work: Path, vision: dict, kmax: int, classes: int, per_class: int) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.numpy import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    work.mkdir(parents=True, exist_ok=True)
    (work / "manifest.json").unlink(missing_ok=True)
    size = vision["image_size"]
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 do_convert_rgb=True)

    def save(model, name: str) -> None:
        final, tmp = work / name, staging(work, name)
        model.save_pretrained(str(tmp), safe_serialization=True)
        proc.save_pretrained(str(tmp))
        publish(tmp, final)

    cfg = CLIPVisionConfig(**vision)
    torch.manual_seed(SEED)
    model = CLIPVisionModelWithProjection(cfg).to(torch.float32).eval()
    save(model, "pretrained")
    base = {n: p.detach().clone() for n, p in model.state_dict().items()}
    for k in range(kmax):
        g = torch.Generator().manual_seed(SEED + 1 + k)
        with torch.no_grad():
            for n, p in model.state_dict().items():
                if not p.is_floating_point():
                    continue
                b = base[n]
                std = max(float(b.std()) if b.numel() > 1 else 0.0, 0.0) * FT_REL_STD
                std = max(std, FT_MIN_STD)
                p.copy_(b + torch.randn(b.shape, generator=g, dtype=b.dtype) * std)
        save(model, f"ft{k}")

    for k in range(kmax):
        name = task_name(k)
        final, tmp = work / name, staging(work, name)
        rng = np.random.default_rng([SEED, 100 + k])
        for c in range(classes):
            d = tmp / "images" / f"class{c:02d}"
            d.mkdir(parents=True)
            for j in range(per_class):
                a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(a, "RGB").save(d / f"img{j:04d}.png")
        w = rng.standard_normal((classes, vision["projection_dim"])).astype(np.float32)
        w *= np.float32(HEAD_SCALE) / np.linalg.norm(w, axis=1, keepdims=True).astype(np.float32)
        save_file({"weight": w}, str(tmp / "head.safetensors"))
        publish(tmp, final)

    m = wanted_manifest(vision, kmax, classes, per_class)
    m["params"] = sum(int(v.numel()) for v in base.values() if v.is_floating_point())
    write_manifest(work, m)


def image_paths(root: Path) -> list[str]:
    """Image files under root (class folders), sorted by class folder then file name."""
    out = []
    for c in sorted(d for d in root.iterdir() if d.is_dir()):
        out += [str(f) for f in sorted(c.iterdir()) if f.suffix.lower() in (".png", ".jpg", ".jpeg")]
    return out


# --------------------------------------------------------------------------- PyTorch child


def torch_child(spec: dict) -> None:
    """Runs in a fresh interpreter; prints one JSON line with its per-step timings."""
    import numpy as np
    import torch

    T = spec["threads"]
    torch.set_num_threads(T)
    import reference_adamerging as ra
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    torch.manual_seed(0)
    t0 = time.perf_counter()
    heads = [load_file(h)["weight"] for h in spec["heads"]]
    am = ra.AdaMerging(Path(spec["pretrained"]), [Path(d) for d in spec["finetuned"]], heads)
    proc = AutoImageProcessor.from_pretrained(spec["pretrained"], use_fast=False)
    assert getattr(proc, "backend", "pil") == "pil", type(proc)
    sets = [image_paths(Path(d)) for d in spec["data"]]
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mib()

    K, B = len(sets), spec["batch"]
    rng = np.random.default_rng([SEED, 7])

    def sample(n: int) -> list[int]:  # B distinct images (all, reshuffled, when fewer), like ours
        out: list[int] = []
        while len(out) < B:
            out += rng.permutation(n)[: min(n, B - len(out))].tolist()
        return out

    def load_batches():
        batches = []
        for paths in sets:
            imgs = [Image.open(paths[i]) for i in sample(len(paths))]
            pv = proc(images=imgs, return_tensors="pt")["pixel_values"]
            for im in imgs:
                im.close()
            batches.append([pv])
        return batches

    # The loop of ra.AdaMerging.learn, with a timer around each step.
    lam = torch.nn.Parameter(torch.full((K, am.num_units), spec["init"], dtype=torch.float32))
    opt = torch.optim.Adam([lam], lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    seconds, losses, pre_s = [], [], []
    for _ in range(spec["steps"]):
        t = time.perf_counter()
        batches = load_batches()
        t_pre = time.perf_counter() - t
        opt.zero_grad()
        loss = am.loss(lam, True, batches)
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - t)
        pre_s.append(t_pre)
        losses.append(float(loss.detach()))
        del batches, loss
    print(json.dumps({"threads": torch.get_num_threads(), "units": am.num_units, "load_s": load_s,
                      "rss_loaded_mib": rss_loaded, "rss_end_mib": rss_mib(), "seconds": seconds,
                      "preprocess_seconds": pre_s, "losses": losses,
                      "attn": getattr(am.model.config, "_attn_implementation", None)}), flush=True)


def run_torch(args, work: Path, k: int, steps: int, logdir: Path, tag: str) -> dict:
    spec = {"threads": args.threads, "batch": BATCH, "steps": steps, "lr": LR, "init": INIT,
            "pretrained": str(work / "pretrained"), "finetuned": [str(work / f"ft{i}") for i in range(k)],
            "data": [str(work / task_name(i) / "images") for i in range(k)],
            "heads": [str(work / task_name(i) / "head.safetensors") for i in range(k)]}
    env = dict(os.environ)
    t = str(args.threads)
    env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, PYTHONDONTWRITEBYTECODE="1",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-child", json.dumps(spec)]
    r = measured_run(cmd, env, logdir, tag, args.use_time)
    r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
    return r


# --------------------------------------------------------------------------- adamerge


def ours_cmd(binary: Path, args, work: Path, k: int, steps: int, out: Path, per_task: bool) -> list[str]:
    cmd = [str(binary), "--threads", str(args.threads), "--device", args.device, "learn",
           "--granularity", "layer", "--pretrained", str(work / "pretrained")]
    for i in range(k):
        d = work / task_name(i)
        cmd += ["--task", f"{task_name(i)},checkpoint={work / f'ft{i}'},data={d / 'images'},"
                          f"head={d / 'head.safetensors'}"]
    return cmd + ["--steps", str(steps), "--batch-size", str(BATCH), "--batches-per-task", str(BATCHES_PER_TASK),
                  "--lr", str(LR), "--init", str(INIT), "--out", str(out), "--no-merged",
                  "--eval-limit", str(EVAL_LIMIT)] + (["--tasks-per-forward", "1"] if per_task else [])


def run_ours(binary: Path, args, work: Path, k: int, steps: int, logdir: Path, tag: str,
             per_task: bool = False) -> dict:
    out = logdir / f"{tag}-run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = ours_cmd(binary, args, work, k, steps, out, per_task)
    r = measured_run(cmd, dict(os.environ), logdir, tag, args.use_time)
    r.pop("stdout", None)
    events = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    st = [e for e in events if e.get("event") == "step"]
    if len(st) != steps:
        raise RuntimeError(f"{out / 'log.jsonl'}: {len(st)} step events, expected {steps}")
    r.update(seconds=[e["seconds"] for e in st], losses=[e["loss"] for e in st], cmd=cmd)
    try:
        lam = json.loads((out / "lambda.json").read_text())
        r["lambda_shape"] = lam_shape(lam)
    except (OSError, ValueError):
        r["lambda_shape"] = None
    shutil.rmtree(out, ignore_errors=True)
    return r


def lam_shape(doc) -> list[int] | None:
    """[K, L] of a lambda.json (its `lambda` entry, a list of rows), when it has that layout."""
    v = doc.get("lambda") if isinstance(doc, dict) else None
    if isinstance(v, list) and v and isinstance(v[0], list):
        return [len(v), len(v[0])]
    if isinstance(doc, dict) and isinstance(doc.get("shape"), list):
        return doc["shape"]
    return None


# --------------------------------------------------------------------------- report


def median_after_first(xs: list[float]) -> float:
    return statistics.median(xs[1:] if len(xs) > 1 else xs)


def fmt_s(x: float) -> str:
    return f"{x:.4f}" if x < 1 else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="2,4,8", help="comma-separated numbers of tasks K (default 2,4,8)")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps per measured run (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both tools (default 2)")
    ap.add_argument("--device", default="cpu", help="adamerge backend: cpu (= flex) or ndarray")
    ap.add_argument("--bin", "--binary", dest="bin", default=str(DEFAULT_BIN))
    ap.add_argument("--wait-bin", type=float, default=0, help="seconds to wait for a missing binary")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4, help="attention heads")
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--projection", type=int, default=64, help="projection_dim")
    ap.add_argument("--classes", type=int, default=4, help="classes per task")
    ap.add_argument("--per-class", type=int, default=16, help="images per class")
    ap.add_argument("--no-growth", action="store_true", help="skip the --steps 1 runs (no growth column)")
    ap.add_argument("--per-task", action="store_true",
                    help="also run ours with --tasks-per-forward 1 (one task's forward and backward at a time)")
    ap.add_argument("--work", default=None, help="keep (and reuse) the inputs here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON to FILE")
    ap.add_argument("--torch-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--generate-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.torch_child is not None:
        torch_child(json.loads(args.torch_child))
        return
    if args.generate_child is not None:
        g = json.loads(args.generate_child)
        generate_inputs(Path(g["work"]), g["vision"], g["kmax"], g["classes"], g["per_class"])
        return

    try:
        ks = [int(x) for x in args.ks.split(",") if x.strip()]
    except ValueError:
        ap.error("--ks: comma-separated integers")
    if not ks or min(ks) < 1:
        ap.error("--ks: values ≥ 1")
    if args.steps < 2:
        ap.error("--steps must be ≥ 2 (the first step is left out of the median)")
    if args.threads < 1 or args.classes < 1 or args.per_class < 1:
        ap.error("--threads, --classes, --per-class must be ≥ 1")
    if args.hidden % args.heads or args.image_size % args.patch_size:
        ap.error("--hidden must be a multiple of --heads and --image-size of --patch-size")
    kmax = max(ks)
    vision = vision_config(args)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tmp_root = Path(tempfile.mkdtemp(prefix="bench-learn-"))
    results = []
    try:
        work = Path(args.work) if args.work else tmp_root / "inputs"
        want = wanted_manifest(vision, kmax, args.classes, args.per_class)
        if inputs_ok(work, want):
            log(f"inputs: reusing {work}")
        else:
            t = time.perf_counter()
            log(f"inputs: generating θ₀ + {kmax} fine-tuned checkpoints and {kmax} tasks into {work}")
            # In a child: torch/transformers must not be imported here (see measured_run).
            spec = {"work": str(work), "vision": vision, "kmax": kmax, "classes": args.classes,
                    "per_class": args.per_class}
            env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1",
                       HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--generate-child", json.dumps(spec)],
                           env=env, check=True)
            log(f"  done ({time.perf_counter() - t:.1f}s)")
        manifest = read_manifest(work)
        params = manifest.get("params")
        ckpt_bytes = (work / "pretrained" / "model.safetensors").stat().st_size

        machine = machine_info()
        versions = package_versions()
        stale = binary_staleness(Path(args.bin))
        args.use_time = have_gnu_time()
        if not args.use_time:
            log(f"warning: no GNU time at {GNU_TIME}; peak RSS from os.wait4 includes this script's RSS")
        busy = cpu_busy()
        binary = tmp_root / "adamerge"
        bininfo = snapshot_binary(Path(args.bin), args.wait_bin, binary)
        logdir = tmp_root / "logs"
        logdir.mkdir()
        load_start = os.getloadavg()
        t_all = time.perf_counter()
        for k in ks:
            e = {"K": k}
            plan = [("ours", args.steps), ("torch", args.steps)]
            if args.per_task:
                plan.append(("ours_per_task", args.steps))
            if not args.no_growth:
                plan += [("ours", 1), ("torch", 1)]
            for tool, steps in plan:
                tag = f"K{k}-{tool}-{steps}"
                if tool.startswith("ours"):
                    r = run_ours(binary, args, work, k, steps, logdir, tag, per_task=tool == "ours_per_task")
                else:
                    r = run_torch(args, work, k, steps, logdir, tag)
                e[f"{tool}_{'n' if steps == args.steps else '1'}"] = r
                log(f"  K={k} {tool} --steps {steps}: wall {r['wall']:.2f}s, "
                    f"{'median' if steps > 1 else 'one'} step {median_after_first(r['seconds']):.4f}s, "
                    f"peak RSS {r['maxrss'] / MIB:.0f} MiB, other load {100 * (r['foreign_share'] or 0):.0f}%")
            results.append(e)
        total_s = time.perf_counter() - t_all
        load_end = os.getloadavg()
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    rows = []
    for e in results:
        o, t = e["ours_n"], e["torch_n"]
        so, st = median_after_first(o["seconds"]), median_after_first(t["seconds"])
        row = {
            "K": e["K"], "ours_s_per_step": so, "torch_s_per_step": st, "ratio_time": so / st,
            "ours_peak_rss_mib": o["maxrss"] / MIB, "torch_peak_rss_mib": t["maxrss"] / MIB,
            "ratio_rss": o["maxrss"] / t["maxrss"],
            "ours_growth_mib": None, "torch_growth_mib": None,
            "ours_step_seconds": o["seconds"], "torch_step_seconds": t["seconds"],
            "torch_preprocess_seconds_median": median_after_first(t["preprocess_seconds"]),
            "ours_losses": o["losses"], "torch_losses": t["losses"],
            "ours_wall_s": o["wall"], "torch_wall_s": t["wall"],
            "torch_rss_loaded_mib": t["rss_loaded_mib"],
            "units": t["units"], "ours_lambda_shape": o.get("lambda_shape"),
            "foreign_cpu_share": {"ours": o["foreign_share"], "torch": t["foreign_share"]},
        }
        if "ours_per_task_n" in e:
            p = e["ours_per_task_n"]
            row["ours_per_task_s_per_step"] = median_after_first(p["seconds"])
            row["ours_per_task_peak_rss_mib"] = p["maxrss"] / MIB
            row["ours_per_task_losses"] = p["losses"]
        if "ours_1" in e:
            row["ours_growth_mib"] = (o["maxrss"] - e["ours_1"]["maxrss"]) / MIB
            row["torch_growth_mib"] = (t["maxrss"] - e["torch_1"]["maxrss"]) / MIB
            row["ours_peak_rss_1step_mib"] = e["ours_1"]["maxrss"] / MIB
            row["torch_peak_rss_1step_mib"] = e["torch_1"]["maxrss"] / MIB
        rows.append(row)

    # ---- report
    cmd = [*rerun_prefix(__file__), "--ks", ",".join(map(str, ks)), "--steps", str(args.steps),
           "--threads", str(args.threads)]
    for name in ("hidden", "layers", "heads", "intermediate", "image_size", "patch_size", "projection", "classes",
                 "per_class"):
        if getattr(args, name) != ap.get_default(name):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.device != "cpu":
        cmd += ["--device", args.device]
    if args.bin != str(DEFAULT_BIN):
        cmd += ["--bin", args.bin]
    if args.no_growth:
        cmd += ["--no-growth"]
    if args.per_task:
        cmd += ["--per-task"]
    rerun = shlex.join(cmd)

    v = vision
    mem = f"{machine['mem_bytes'] / 2**30:.1f} GiB" if machine["mem_bytes"] else "?"
    print("## AdaMerging seconds per step and memory: adamerge learn vs PyTorch — random CLIP ViT, CPU\n")
    print(f"Machine: {machine['cpu']}, {machine['cores']} cores, {mem} RAM; Linux {machine['kernel']}; "
          f"Python {machine['python']}, torch {versions['torch']}, transformers {versions['transformers']}, "
          f"Pillow {versions['Pillow']}, numpy {versions['numpy']}, safetensors {versions['safetensors']}.")
    print(f"Binary: {bininfo['path']} ({bininfo['version']}, built {bininfo['mtime']}, sha256 {bininfo['sha256']}…).")
    if stale:
        print(f"**Warning: {'; '.join(stale)}. It was not rebuilt here, so these numbers may not reflect "
              "the checkout.**")
    units = rows[0]["units"] if rows else "?"
    print(f"Model: CLIPVisionModelWithProjection, hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, "
          f"{v['num_attention_heads']} heads, MLP {v['intermediate_size']}, image {v['image_size']}, "
          f"patch {v['patch_size']}, projection {v['projection_dim']}, quick_gelu; "
          f"{params:,} float32 parameters ({ckpt_bytes / MIB:.2f} MiB per model.safetensors); "
          f"layer-wise λ over {units} paper units per task.")
    print(f"Threads T = {args.threads} for both (adamerge --threads {args.threads} --device {args.device}; "
          f"torch.set_num_threads({args.threads}) → {results[0]['torch_n']['threads'] if results else '?'}, "
          f"OMP/MKL_NUM_THREADS={args.threads}). {args.steps} steps per run; batch {BATCH}, "
          f"{BATCHES_PER_TASK} batch per task per step, from {args.classes} × {args.per_class} random "
          f"{v['image_size']}×{v['image_size']} PNGs per task; Adam lr {LR}, λ init {INIT}, clamped.")
    busy_txt = "?" if busy is None else f"{100 * busy:.0f}%"
    print(f"Load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; CPU {busy_txt} busy in the "
          f"second before the first run; {total_s:.0f}s in all.\n")
    if busy is not None and busy > 0.25:
        print(f"**Warning: the machine was already {busy_txt} busy before the benchmark started; other work "
              "competes for the cores and the timings are noisy.**\n")

    head = ["K", "ours s/step", "PyTorch s/step", "ours/PyTorch time", "ours peak RSS MiB",
            "PyTorch peak RSS MiB", "ours/PyTorch RSS", "ours growth MiB", "PyTorch growth MiB"]
    if args.per_task:
        head += ["ours, one task per forward: s/step", "its time / PyTorch", "its peak RSS MiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["--:"] * len(head)) + "|")
    for r in rows:
        g = lambda x: "—" if x is None else f"{x:.1f}"  # noqa: E731
        cells = [
            str(r["K"]), fmt_s(r["ours_s_per_step"]), fmt_s(r["torch_s_per_step"]), fmt_ratio(r["ratio_time"]),
            f"{r['ours_peak_rss_mib']:.0f}", f"{r['torch_peak_rss_mib']:.0f}", fmt_ratio(r["ratio_rss"]),
            g(r["ours_growth_mib"]), g(r["torch_growth_mib"]),
        ]
        if args.per_task:
            cells += [fmt_s(r["ours_per_task_s_per_step"]),
                      fmt_ratio(r["ours_per_task_s_per_step"] / r["torch_s_per_step"]),
                      f"{r['ours_per_task_peak_rss_mib']:.0f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("Notes:")
    print(f"- s/step: median of the per-step wall times of one {args.steps}-step run, the first step left out. "
          "Ours: the `seconds` of log.jsonl's step events; PyTorch: timed around sampling + PIL open + "
          "CLIPImageProcessor (PIL backend, single-threaded) + reference_adamerging's merge/loss + backward + "
          "Adam step. ours/PyTorch time < 1 means adamerge is faster.")
    pre = ", ".join(f"K={r['K']} {fmt_s(r['torch_preprocess_seconds_median'])}s" for r in rows)
    print(f"- Of PyTorch's step, opening + preprocessing the K × {BATCH} images took (median): {pre}.")
    how = ("GNU time's %M (the process's own ru_maxrss)" if args.use_time else
           "ru_maxrss from os.wait4 (GNU time missing: includes this script's RSS at fork)")
    print(f"- peak RSS: {how}, of the whole process. The PyTorch one includes the interpreter and the "
          "torch/transformers imports; its RSS once loaded, before the first step: "
          + ", ".join(f"K={r['K']} {r['torch_rss_loaded_mib']:.0f} MiB" for r in rows)
          + f". Ours also scores the start and the end on {EVAL_LIMIT} images per task "
          f"(--eval-limit {EVAL_LIMIT}) and writes its resume checkpoint after every step.")
    if not args.no_growth:
        print(f"- growth: peak RSS of the {args.steps}-step run − peak RSS of the same command with --steps 1, "
              "i.e. memory that accumulates over the later steps (≈ 0 when nothing leaks or is cached). The "
              "1-step run already holds the loaded inputs and one step's graph, so those are not in it.")
    mism = [r["K"] for r in rows if r["ours_lambda_shape"] and r["ours_lambda_shape"] != [r["K"], r["units"]]]
    if mism:
        print(f"- **λ shape differs** (ours lambda.json vs PyTorch [K, units]) for K = {mism}.")
    if args.classes * args.per_class == BATCH:
        # Every step reads all of each task's images on both sides (in another order): same losses.
        d = max(abs(a - b) for r in rows for a, b in zip(r["ours_losses"], r["torch_losses"]))
        print(f"- Check: each task has exactly {BATCH} images, so both tools read the same batches; the per-step "
              f"losses of ours and PyTorch differ by at most {d:.3g} over all {args.steps} steps and every K.")
    else:
        print("- First-step loss (summed entropy; the tools draw different random images, so close, not equal; "
              f"run with --classes × --per-class = {BATCH} for an exact check): "
              + "; ".join(f"K={r['K']} ours {r['ours_losses'][0]:.4f}, PyTorch {r['torch_losses'][0]:.4f}"
                          for r in rows) + ".")
    noisy = [f"K={r['K']} {tool} ({100 * s:.0f}%)" for r in rows for tool, s in r["foreign_cpu_share"].items()
             if s is not None and s > 0.10]
    if noisy:
        print(f"- **Contention:** other processes used > 10 % of the machine's CPU time during: {', '.join(noisy)}; "
              "those rows are unreliable.")
    else:
        print("- Other processes used ≤ 10 % of the machine's CPU time during every measured run.")
    print(f"\nRerun: `{rerun}`")

    if args.json:
        doc = {"machine": machine, "versions": versions, "binary": bininfo, "binary_warnings": stale,
               "inputs": {"recipe": RECIPE, "seed": SEED, "vision": vision, "params": params,
                          "ckpt_bytes": ckpt_bytes, "classes": args.classes, "per_class": args.per_class},
               "threads": args.threads, "steps": args.steps, "batch": BATCH, "loadavg": [load_start, load_end],
               "cpu_busy_before": busy, "total_s": total_s, "command": rerun, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
