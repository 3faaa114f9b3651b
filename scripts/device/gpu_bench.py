#!/usr/bin/env python3
"""GPU benchmark of one layer-wise AdaMerging step: `adamerge --device wgpu learn` vs PyTorch CUDA.

    python3 scripts/device/gpu_bench.py [--vit-b32] [--k 8] [--steps 20] [--bin .devbench/adamerge]
                                        [--work DIR] [--out-dir DIR] [--budget 540]
                                        [--hidden H --layers L --heads A --intermediate M
                                         --image-size S --patch-size P --projection D]

Normally started by `scripts/device/gpu_bench.sh` (which also unpacks the carried Vulkan loader),
on the lent GPU machine; see that file's header for the exact device `run` call.

Inputs: `scripts/bench/bench_learn.py`'s generator (its `--generate-child`, so the same seeded
recipe): a random CLIPVisionModelWithProjection (`--vit-b32`: hidden 768, 12 layers, 12 heads, MLP
3072, image 224, patch 32, projection 512), K fine-tunes θ₀ + noise, per task an ImageFolder of
`--classes` × `--per-class` random PNGs (default 4 × 4 = 16, one batch) and a head.

Both tools run the same step: layer-wise λ (init 0.3, clamped), batch 16, one batch per task per
step, summed mean-entropy loss, Adam lr 1e-3; each step includes reading + decoding + preprocessing
the step's PNGs on the CPU.

* ours: `adamerge --threads T --device wgpu learn ... --tau-dtype D` (bench_learn.ours_cmd), once
  per D of `--ours-tau-dtypes` (default f32, then f16: the task vectors held in half); seconds per
  step = the `seconds` of RUN/log.jsonl's step events.
* PyTorch: a child (`--torch-child`) that builds `scripts/reference/reference_adamerging.py`'s
  `AdaMerging`, moves the model, θ₀, task vectors and heads to `cuda` (falls back to the CPU, and
  says so, where torch sees no GPU), and times sampling + PIL preprocessing + `loss` + `backward` +
  `Adam.step`, with `torch.cuda.synchronize()` before each step's clock stops. TF32 is off (fp32
  matmuls and convolutions, like ours).

Seconds per step: the median of the steps after the first (warm-up excluded). Peak GPU memory: for
both, the peak of `nvidia-smi --query-gpu=memory.used` sampled every 50 ms during the run, minus
the reading just before it started (whole device; nothing else runs there); for PyTorch also
`torch.cuda.max_memory_allocated` / `max_memory_reserved` (after the inputs are loaded: peak of the
steps). Without nvidia-smi (lavapipe here) those columns read "n/a".

A run that outlasts its share of `--budget` is stopped; ours' steps done so far (log.jsonl is
written per step) still count, and the table says how many. Writes gpu_bench.md and gpu_bench.json
(and ours' / PyTorch's stderr) to `--out-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "bench"), str(HERE.parent / "reference")]

import bench_learn as bl  # noqa: E402  (imports no torch at module level)
from common import REPO, VIT_B32, ProcSampler, clip_vision_config, cpuinfo_field  # noqa: E402

MIB = 2**20
TINY = dict(hidden=64, layers=2, heads=2, intermediate=256, image_size=32, patch_size=8, projection=32)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- GPU memory sampling


def nvidia_smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def gpu_used_mib() -> float | None:
    s = nvidia_smi("--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0")
    try:
        return float(s.splitlines()[0]) if s else None
    except ValueError:
        return None


class GpuSampler(threading.Thread):
    """Peak of nvidia-smi's memory.used (MiB, GPU 0), from one `nvidia-smi -lms 50` process."""

    def __init__(self, interval_ms: int = 50):
        super().__init__(daemon=True)
        self.peak: float | None = None
        self.samples = 0
        self.proc = None
        exe = shutil.which("nvidia-smi")
        if exe:
            self.proc = subprocess.Popen([exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0",
                                          "-lms", str(interval_ms)], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)

    def run(self) -> None:
        if not self.proc:
            return
        for line in self.proc.stdout:
            try:
                v = float(line.strip())
            except ValueError:
                continue
            self.samples += 1
            self.peak = v if self.peak is None else max(self.peak, v)

    def finish(self) -> float | None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.join(timeout=10)
        return self.peak


def run_measured(cmd: list[str], env: dict, logdir: Path, tag: str, timeout: float) -> dict:
    """Runs cmd (stdout/stderr to logdir/TAG.out/.err) with a timeout, sampling VmRSS and GPU memory."""
    idle = gpu_used_mib()
    out_f, err_f = logdir / f"{tag}.out", logdir / f"{tag}.err"
    gs = GpuSampler()
    gs.start()
    t = time.perf_counter()
    with open(out_f, "w") as so, open(err_f, "w") as se:
        p = subprocess.Popen(cmd, stdout=so, stderr=se, env=env, start_new_session=True)
        ps = ProcSampler(p.pid, 0.05)
        ps.start()
        timed_out = False
        try:
            p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            log(f"  {tag}: stopped after {timeout:.0f}s (its share of --budget)")
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    wall = time.perf_counter() - t
    ps.stop.set()
    ps.join()
    peak = gs.finish()
    return {"wall": wall, "rc": p.returncode, "timed_out": timed_out, "peak_rss_mib": ps.total / 1024,
            "gpu_idle_mib": idle, "gpu_peak_mib": peak,
            "gpu_peak_minus_idle_mib": None if peak is None or idle is None else peak - idle,
            "gpu_samples": gs.samples, "stdout": out_f.read_text(errors="replace"),
            "stderr_path": str(err_f)}


# --------------------------------------------------------------------------- PyTorch child


def torch_child(spec: dict) -> None:
    """Runs in a fresh interpreter; prints one JSON line (per-step seconds, losses, CUDA memory)."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    want = spec["device"]
    fallback = None
    if want in ("auto", "cuda") and not torch.cuda.is_available():
        fallback = "torch.cuda.is_available() is False: PyTorch ran on the CPU"
        want = "cpu"
    dev = torch.device("cuda" if want == "auto" else want)
    cuda = dev.type == "cuda"

    import reference_adamerging as ra
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    torch.manual_seed(0)
    t0 = time.perf_counter()
    heads = [load_file(h)["weight"] for h in spec["heads"]]
    am = ra.AdaMerging(Path(spec["pretrained"]), [Path(d) for d in spec["finetuned"]], heads)
    am.model = am.model.to(dev)
    am.base = {n: v.to(dev) for n, v in am.base.items()}
    am.taus = [{n: v.to(dev) for n, v in t.items()} for t in am.taus]
    am.taus32 = None  # the CPU copies are not used by loss()
    am.heads = [h.to(dev) for h in am.heads]
    proc = AutoImageProcessor.from_pretrained(spec["pretrained"], use_fast=False)
    sets = [bl.image_paths(Path(d)) for d in spec["data"]]
    if cuda:
        torch.cuda.synchronize()
        loaded_alloc = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    load_s = time.perf_counter() - t0

    K, B = len(sets), spec["batch"]
    rng = np.random.default_rng([bl.SEED, 7])

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
            batches.append([pv.to(dev)])
        return batches

    lam = torch.nn.Parameter(torch.full((K, am.num_units), spec["init"], dtype=torch.float32, device=dev))
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
        lv = float(loss.detach())
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t)
        pre_s.append(t_pre)
        losses.append(lv)
        del batches, loss
    doc = {"device": str(dev), "fallback": fallback, "threads": torch.get_num_threads(), "units": am.num_units,
           "load_s": load_s, "seconds": seconds, "preprocess_seconds": pre_s, "losses": losses,
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu_name": torch.cuda.get_device_name(0) if cuda else None}
    if cuda:
        doc.update(loaded_alloc_mib=loaded_alloc / MIB, max_alloc_mib=torch.cuda.max_memory_allocated() / MIB,
                   max_reserved_mib=torch.cuda.max_memory_reserved() / MIB)
    print(json.dumps(doc), flush=True)


# --------------------------------------------------------------------------- runs


def generate(work: Path, vision: dict, k: int, classes: int, per_class: int, python: str) -> float:
    want = bl.wanted_manifest(vision, k, classes, per_class)
    if bl.inputs_ok(work, want):
        log(f"inputs: reusing {work}")
        return 0.0
    t = time.perf_counter()
    log(f"inputs: generating θ₀ + {k} fine-tunes and {k} tasks of {classes}×{per_class} PNGs into {work}")
    spec = {"work": str(work), "vision": vision, "kmax": k, "classes": classes, "per_class": per_class}
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_OFFLINE="1",
               PYTHONDONTWRITEBYTECODE="1", CUDA_VISIBLE_DEVICES="")  # generation never needs the GPU
    subprocess.run([python, str(Path(bl.__file__).resolve()), "--generate-child", json.dumps(spec)], env=env,
                   check=True)
    s = time.perf_counter() - t
    log(f"  done ({s:.1f}s)")
    return s


def run_torch(args, work: Path, logdir: Path, timeout: float) -> dict:
    spec = {"threads": args.threads, "batch": bl.BATCH, "steps": args.steps, "lr": bl.LR, "init": bl.INIT,
            "device": args.torch_device, "pretrained": str(work / "pretrained"),
            "finetuned": [str(work / f"ft{i}") for i in range(args.k)],
            "data": [str(work / bl.task_name(i) / "images") for i in range(args.k)],
            "heads": [str(work / bl.task_name(i) / "head.safetensors") for i in range(args.k)]}
    t = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, PYTHONDONTWRITEBYTECODE="1",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [args.python, str(Path(__file__).resolve()), "--torch-child", json.dumps(spec)]
    r = run_measured(cmd, env, logdir, "torch", timeout)
    lines = [ln for ln in r.pop("stdout").strip().splitlines() if ln.startswith("{")]
    if r["rc"] != 0 or not lines:
        r["error"] = f"exit {r['rc']}" + (" (timed out)" if r["timed_out"] else "")
        r["seconds"], r["losses"] = [], []
        return r
    r.update(json.loads(lines[-1]))
    return r


def run_ours(args, work: Path, logdir: Path, tau_dtype: str, timeout: float) -> dict:
    tag = f"ours-{tau_dtype}"
    out = logdir / f"{tag}-run"
    shutil.rmtree(out, ignore_errors=True)
    ns = SimpleNamespace(threads=args.threads, device=args.ours_device)
    cmd = bl.ours_cmd(Path(args.bin).resolve(), ns, work, args.k, args.steps, out, False)
    cmd += ["--tau-dtype", tau_dtype]
    if args.tasks_per_forward:
        cmd += ["--tasks-per-forward", str(args.tasks_per_forward)]
    r = run_measured(cmd, dict(os.environ), logdir, tag, timeout)
    r.pop("stdout", None)
    r["cmd"] = cmd
    events = []
    try:
        events = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]
    except (OSError, ValueError) as e:
        r["log_error"] = str(e)
    st = [e for e in events if e.get("event") == "step"]
    r["seconds"] = [e["seconds"] for e in st]
    r["losses"] = [e["loss"] for e in st]
    r["events"] = sorted({e.get("event") for e in events if e.get("event")})
    if r["rc"] != 0 and not r["timed_out"]:
        r["error"] = f"exit {r['rc']}"
    elif r["timed_out"]:
        r["error"] = f"stopped after {len(st)} of {args.steps} steps"
    shutil.rmtree(out, ignore_errors=True)
    return r


# --------------------------------------------------------------------------- report


def med(xs: list[float]) -> float | None:
    if not xs:
        return None
    return statistics.median(xs[1:] if len(xs) > 1 else xs)


def f_s(x) -> str:
    return "—" if x is None else (f"{x:.4f}" if x < 1 else f"{x:.3f}")


def f_m(x) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def machine_lines() -> dict:
    gpu = nvidia_smi("--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader")
    cpu = cpuinfo_field("model name") or platform.processor() or "?"
    return {"gpu": gpu, "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
            "vk_driver_files": os.environ.get("VK_DRIVER_FILES") or os.environ.get("VK_ICD_FILENAMES")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=8, help="tasks K (default 8)")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps per run (default 20; ≥ 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads, both tools (all)")
    ap.add_argument("--bin", default=str(REPO / ".devbench" / "adamerge"), help="the wgpu build of adamerge")
    ap.add_argument("--ours-device", default="wgpu", help="adamerge --device (default wgpu)")
    ap.add_argument("--torch-device", default="auto", help="auto (cuda, else cpu), cuda or cpu")
    ap.add_argument("--tasks-per-forward", type=int, default=None, help="pass through to adamerge learn")
    ap.add_argument("--ours-tau-dtypes", default="f32,f16",
                    help="one run of ours per --tau-dtype, in order (default f32,f16: task vectors in half)")
    ap.add_argument("--python", default=sys.executable, help="interpreter with torch (default: this one)")
    ap.add_argument("--vit-b32", action="store_true", help="ViT-B/32 shape (else --tiny or the shape options)")
    for name, v in TINY.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"(tiny default {v})")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=4, help="images per class (4 × 4 = one batch of 16)")
    ap.add_argument("--work", default="/tmp/gpu-bench-inputs", help="generated inputs (reused when they match)")
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or "/tmp/gpu-bench-out")
    ap.add_argument("--budget", type=float, default=540, help="seconds for the whole script, generation included")
    ap.add_argument("--torch-share", type=float, default=0.3,
                    help="most of the time left after generation that PyTorch may use (default 0.3)")
    ap.add_argument("--torch-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child is not None:
        torch_child(json.loads(args.torch_child))
        return
    t_start = time.perf_counter()
    if args.steps < 2:
        ap.error("--steps must be ≥ 2")
    base = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "image_size": 224, "patch_size": 32,
            "projection": 512} if args.vit_b32 else dict(TINY)
    shape = {n: (getattr(args, n) if getattr(args, n) is not None else v) for n, v in base.items()}
    vision = clip_vision_config(hidden=shape["hidden"], intermediate=shape["intermediate"], layers=shape["layers"],
                                heads=shape["heads"], image=shape["image_size"], patch=shape["patch_size"],
                                projection=shape["projection"])
    if args.vit_b32 and vision != VIT_B32:
        log("note: --vit-b32 with shape overrides")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logdir = Path(args.work).parent / (Path(args.work).name + "-logs")
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    binary = Path(args.bin)
    ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    if ver.returncode != 0:
        raise SystemExit(f"{binary} --version failed: {ver.stderr.strip()}")

    machine = machine_lines()
    log(f"GPU: {machine['gpu'] or 'none (no nvidia-smi)'}; CPU: {machine['cpu']} × {machine['cores']}")
    gen_s = generate(Path(args.work), vision, args.k, args.classes, args.per_class, args.python)
    work = Path(args.work)
    manifest = bl.read_manifest(work)

    def left() -> float:
        return args.budget - (time.perf_counter() - t_start)

    t_budget = max(30.0, left() * args.torch_share)
    log(f"PyTorch ({args.torch_device}): {args.steps} steps, at most {t_budget:.0f}s")
    tr = run_torch(args, work, logdir, t_budget)
    log(f"  wall {tr['wall']:.1f}s, device {tr.get('device')}, median step {f_s(med(tr['seconds']))}s"
        + (f", ERROR {tr['error']}" if tr.get("error") else ""))
    dtypes = args.ours_tau_dtypes.split(",")
    ours = {}
    for i, dtype in enumerate(dtypes):
        o_budget = max(30.0, (left() - 10) / (len(dtypes) - i))
        log(f"ours (--device {args.ours_device} --tau-dtype {dtype}): {args.steps} steps, at most {o_budget:.0f}s")
        r = run_ours(args, work, logdir, dtype, o_budget)
        log(f"  wall {r['wall']:.1f}s, {len(r['seconds'])} steps, median step {f_s(med(r['seconds']))}s"
            + (f", ERROR {r['error']}" if r.get("error") else ""))
        ours[dtype] = r
    orr = ours[dtypes[0]]
    for tag, r in [(f"ours-{d}", r) for d, r in ours.items()] + [("torch", tr)]:
        shutil.copy(r["stderr_path"], out_dir / f"{tag}.err")

    # ---- table
    so, st = med(orr["seconds"]), med(tr["seconds"])
    fb = tr.get("fallback")
    tdev = tr.get("device") or args.torch_device
    rows = [(f"adamerge (burn), τ in {d}", args.ours_device, r) for d, r in ours.items()]
    rows.append(("PyTorch reference", tdev + (" (fallback: no CUDA)" if fb else ""), tr))
    head = ["tool", "device", "s/step (median, steps 2..N)", "min s/step", "steps done", "first step s",
            "wall s (load + steps + eval)", "peak GPU MiB (nvidia-smi − idle)", "torch max alloc / reserved MiB",
            "peak RSS MiB", "last loss"]
    md = []
    v = vision
    md.append(f"## AdaMerging step: adamerge ({args.ours_device}) vs PyTorch ({tdev})\n")
    md.append(f"GPU: {machine['gpu'] or 'none (no nvidia-smi)'}; CPU: {machine['cpu']}, {machine['cores']} cores; "
              f"Linux {machine['kernel']}; Python {machine['python']}, torch {tr.get('torch', '?')} "
              f"(CUDA {tr.get('cuda')}); {ver.stdout.strip()} ({args.bin}); VK_DRIVER_FILES="
              f"{machine['vk_driver_files'] or '(unset)'}.")
    md.append(f"Model: random CLIPVisionModelWithProjection, hidden {v['hidden_size']}, {v['num_hidden_layers']} "
              f"layers, {v['num_attention_heads']} heads, MLP {v['intermediate_size']}, image {v['image_size']}, "
              f"patch {v['patch_size']}, projection {v['projection_dim']} ({manifest.get('params', 0):,} float32 "
              f"parameters); K = {args.k} tasks × {args.classes * args.per_class} images; batch {bl.BATCH}, one "
              f"batch per task per step; layer-wise λ ({tr.get('units', '?')} units per task), Adam lr {bl.LR}; "
              f"{args.steps} steps per run; threads {args.threads}. Inputs generated in {gen_s:.0f}s.\n")
    if fb:
        md.append(f"**{fb}** — a local stand-in, not a GPU measurement.\n")
    md.append("| " + " | ".join(head) + " |")
    md.append("|" + "|".join([":--", ":--"] + ["--:"] * (len(head) - 2)) + "|")
    for name, d, r in rows:
        ta = (f"{r['max_alloc_mib']:.0f} / {r['max_reserved_mib']:.0f}" if r.get("max_alloc_mib") is not None
              else "—" if r is not tr else "n/a")
        steps_done = f"{len(r['seconds'])}/{args.steps}" + (f" ({r['error']})" if r.get("error") else "")
        md.append("| " + " | ".join([
            name, d, f_s(med(r["seconds"])), f_s(min(r["seconds"][1:] or r["seconds"]) if r["seconds"] else None),
            steps_done, f_s(r["seconds"][0] if r["seconds"] else None), f"{r['wall']:.1f}",
            f_m(r["gpu_peak_minus_idle_mib"]), ta, f"{r['peak_rss_mib']:.0f}",
            f"{r['losses'][-1]:.5f}" if r["losses"] else "—"]) + " |")
    md.append("")
    if so and st:
        md.append(f"- ours ({dtypes[0]}) / PyTorch time per step: **{so / st:.2f}×** (< 1: adamerge faster).")
    for d, r in list(ours.items())[1:]:
        sd, g0, gd = med(r["seconds"]), orr["gpu_peak_minus_idle_mib"], r["gpu_peak_minus_idle_mib"]
        md.append(f"- τ in {d} against {dtypes[0]}: " + (f"{sd / so:.2f}× the time per step" if sd and so else "—")
                  + (f", {gd / g0:.2f}× the peak GPU memory ({g0 - gd:.0f} MiB less; the {args.k} task vectors "
                     f"take {args.k * manifest.get('params', 0) * 2 / 2**20:.0f} MiB in half)" if g0 and gd else "")
                  + ".")
    if tr.get("preprocess_seconds"):
        md.append(f"- Of PyTorch's step, sampling + PIL open + CLIPImageProcessor of the {args.k} × {bl.BATCH} "
                  f"images took {f_s(med(tr['preprocess_seconds']))}s (median); PyTorch loaded its inputs in "
                  f"{tr['load_s']:.1f}s" + (f" and held {tr['loaded_alloc_mib']:.0f} MiB on the GPU before the "
                                            "first step" if tr.get("loaded_alloc_mib") is not None else "") + ".")
    n = min(len(orr["losses"]), len(tr["losses"]))
    if n and args.classes * args.per_class == bl.BATCH:
        dl = max(abs(a - b) for a, b in zip(orr["losses"][:n], tr["losses"][:n]))
        md.append(f"- Check: each task has exactly {bl.BATCH} images, so both read the same batches; per-step "
                  f"losses differ by at most {dl:.3g} over {n} steps (first: ours {orr['losses'][0]:.6f}, "
                  f"PyTorch {tr['losses'][0]:.6f}).")
    md.append("- peak GPU MiB: peak of `nvidia-smi --query-gpu=memory.used` (every 50 ms) during the run minus the "
              "reading just before it (CUDA context / Vulkan device included); n/a without nvidia-smi. torch max "
              "alloc / reserved: torch.cuda.max_memory_allocated / max_memory_reserved over the steps (the inputs "
              "already loaded). peak RSS: sampled VmRSS of the process (host memory).")
    md.append(f"- Total {time.perf_counter() - t_start:.0f}s of a {args.budget:.0f}s budget.")
    text = "\n".join(md) + "\n"
    print(text, flush=True)
    (out_dir / "gpu_bench.md").write_text(text)
    doc = {"machine": machine, "vision": vision, "params": manifest.get("params"), "k": args.k,
           "images_per_task": args.classes * args.per_class, "steps": args.steps, "threads": args.threads,
           "generate_s": gen_s, "adamerge_version": ver.stdout.strip(),
           "ours": {d: {k: v for k, v in r.items() if k != "stderr_path"} for d, r in ours.items()},
           "torch": {k: v for k, v in tr.items() if k != "stderr_path"},
           "ours_s_per_step": so, "torch_s_per_step": st, "ratio": so / st if so and st else None}
    (out_dir / "gpu_bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    main()
