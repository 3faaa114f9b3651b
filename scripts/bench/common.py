"""Helpers shared by the benchmarks in this folder (bench_merge.py, bench_vision.py, bench_learn.py).

Not a script. Each benchmark puts its own folder first on `sys.path` and does `import common`;
the benchmarks no longer import each other. Standard library only at import time (numpy and
safetensors are imported inside `machine_info`), so a benchmark's parent process stays small.

* paths: `REPO`, `DEFAULT_BIN`, `rerun_prefix`;
* model shapes: `clip_vision_config` (the `CLIPVisionConfig` fields every benchmark writes),
  `VIT_B32` (openai/clip-vit-base-patch32's vision tower, spelled here only), `vision_tower_shapes`,
  `num_params`;
* caching of generated inputs: `cache_dir` (`${ADAMERGE_CACHE:-~/.cache/adamerge}/NAME`),
  `read_manifest` / `write_manifest` (atomic), `staging` / `publish` (write aside, then rename),
  `lock_inputs` (one benchmark at a time per input set);
* peak memory and time of a child process: `run_child` (wall, CPU, contention, `ru_maxrss` from
  `os.wait4`, RssAnon / RssFile sampled from /proc), `measured_run` (the same under GNU time, whose
  `%M` is the command's own peak RSS), `rss_mib` (this process's VmRSS);
* the machine and the binary: `cpu_busy`, `machine_info`, `package_versions`, `snapshot_binary`,
  `binary_staleness`;
* report: `GIB`, `MIB`, `fmt_ratio`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "adamerge"

GIB = 2**30
MIB = 2**20


def rerun_prefix(script: str) -> list[str]:
    """`python3 scripts/bench/NAME.py` (repo-relative) for a report's Rerun line."""
    return ["python3", Path(script).resolve().relative_to(REPO).as_posix()]


# --------------------------------------------------------------------------- model shapes


def clip_vision_config(hidden: int, intermediate: int, layers: int, heads: int, image: int, patch: int,
                       projection: int) -> dict:
    """The `CLIPVisionConfig` fields the benchmarks set (3 channels, quick_gelu, eps 1e-5)."""
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_channels": 3,
        "image_size": image,
        "patch_size": patch,
        "projection_dim": projection,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-05,
    }


# openai/clip-vit-base-patch32's vision tower: hidden 768, MLP 3072, 12 layers, 12 heads, image 224,
# patch 32, projection 512.
VIT_B32 = clip_vision_config(hidden=768, intermediate=3072, layers=12, heads=12, image=224, patch=32,
                             projection=512)


def vision_tower_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Float tensors of a `CLIPVisionModelWithProjection` with config `c` (Hugging Face names).

    (The integer `vision_model.embeddings.position_ids` buffer is non-persistent in current
    transformers and is not written.)
    """
    h, inter, p = c["hidden_size"], c["intermediate_size"], c["patch_size"]
    positions = (c["image_size"] // p) ** 2 + 1  # patches + class token (ViT-B/32: 7*7 + 1 = 50)
    s: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (h,),
        "vision_model.embeddings.patch_embedding.weight": (h, c["num_channels"], p, p),
        "vision_model.embeddings.position_embedding.weight": (positions, h),
        "vision_model.pre_layrnorm.weight": (h,),  # sic: Hugging Face's spelling
        "vision_model.pre_layrnorm.bias": (h,),
    }
    for i in range(c["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s[pre + f"self_attn.{proj}.weight"] = (h, h)
            s[pre + f"self_attn.{proj}.bias"] = (h,)
        s[pre + "layer_norm1.weight"] = (h,)
        s[pre + "layer_norm1.bias"] = (h,)
        s[pre + "mlp.fc1.weight"] = (inter, h)
        s[pre + "mlp.fc1.bias"] = (inter,)
        s[pre + "mlp.fc2.weight"] = (h, inter)
        s[pre + "mlp.fc2.bias"] = (h,)
        s[pre + "layer_norm2.weight"] = (h,)
        s[pre + "layer_norm2.bias"] = (h,)
    s["vision_model.post_layernorm.weight"] = (h,)
    s["vision_model.post_layernorm.bias"] = (h,)
    s["visual_projection.weight"] = (c["projection_dim"], h)
    return s


def num_params(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(v) for v in shapes.values())


# --------------------------------------------------------------------------- caching


def cache_dir(name: str) -> Path:
    """`${ADAMERGE_CACHE:-~/.cache/adamerge}/NAME`, where a benchmark keeps its generated inputs."""
    root = os.environ.get("ADAMERGE_CACHE") or str(Path.home() / ".cache" / "adamerge")
    return Path(root) / name


def read_manifest(d: Path) -> dict:
    """d/manifest.json, or {} when it is missing or unreadable."""
    try:
        return json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def write_manifest(d: Path, m: dict) -> None:
    """Writes d/manifest.json aside, then renames it over the old one."""
    tmp = d / f".manifest.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps(m, indent=2) + "\n")
    os.replace(tmp, d / "manifest.json")


def staging(parent: Path, name: str) -> Path:
    """A fresh (removed, not created) `.NAME.partial-PID` in parent, to write NAME into."""
    tmp = parent / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish(tmp: Path, final: Path) -> None:
    """Moves a finished staging file or directory to its place, replacing what was there."""
    if tmp.is_dir():
        shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def lock_inputs(cache: Path, who: str):
    """One benchmark at a time per input set: a second run waits instead of contending.

    Returns the open lock file; the lock holds until it is closed or the process exits."""
    import fcntl

    f = open(cache / ".bench.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another {who} run holds the lock; waiting ...", file=sys.stderr, flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


# --------------------------------------------------------------------------- measuring


class ProcSampler(threading.Thread):
    """Samples /proc/PID/status for peak RssAnon / RssFile (kB) while the child runs."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.anon = self.file = self.total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self.stop.is_set():
            try:
                with open(path) as f:
                    txt = f.read()
            except OSError:
                return
            vals = dict(re.findall(r"^(RssAnon|RssFile|VmRSS):\s+(\d+) kB", txt, re.M))
            if "VmRSS" not in vals:  # zombie: exited, not reaped yet
                return
            a, fl, tot = int(vals.get("RssAnon", 0)), int(vals.get("RssFile", 0)), int(vals["VmRSS"])
            self.anon, self.file = max(self.anon, a), max(self.file, fl)
            self.total = max(self.total, tot)
            self.stop.wait(self.interval)


def busy_cpu_seconds() -> float | None:
    """CPU seconds spent non-idle by the whole machine since boot (from /proc/stat)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    except (OSError, ValueError, IndexError):
        return None
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], env: dict, logdir: Path, tag: str) -> dict:
    """Runs cmd to completion (stdout/stderr to logdir/TAG.out/.err) and measures it.

    Started with `subprocess.Popen` and reaped with `os.wait4`, which gives its peak RSS
    (`ru_maxrss`, KiB on Linux); /proc/PID/status is sampled to split the peak into anonymous and
    file-backed (mmap) memory. Note: Linux carries the forked copy's pre-exec high-water mark over
    exec, so `maxrss` starts at this process's RSS; `measured_run` avoids that with GNU time.
    """
    out_f, err_f = logdir / f"{tag}.out", logdir / f"{tag}.err"
    with open(out_f, "w") as so, open(err_f, "w") as se:
        busy0 = busy_cpu_seconds()
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=so, stderr=se, env=env)
        sampler = ProcSampler(p.pid)
        sampler.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        busy1 = busy_cpu_seconds()
        p.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
    sampler.stop.set()
    sampler.join()
    stdout, stderr = out_f.read_text(), err_f.read_text()
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return {
        "wall": wall,
        "maxrss": ru.ru_maxrss * 1024,  # KiB -> bytes
        "anon": sampler.anon * 1024,
        "file": sampler.file * 1024,
        "user": ru.ru_utime,
        "sys": ru.ru_stime,
        # Share of the machine's CPU time during the run used by anything but the child (this
        # script's sampler included, a few %): > ~10 % means other work competed for the cores.
        "foreign_share": None if busy0 is None or busy1 is None else
        max(0.0, (busy1 - busy0) - ru.ru_utime - ru.ru_stime) / (wall * (os.cpu_count() or 1)),
        "stdout": stdout,
    }


GNU_TIME = "/usr/bin/time"


def have_gnu_time() -> bool:
    try:
        r = subprocess.run([GNU_TIME, "-f", "%M", "-o", os.devnull, "true"], capture_output=True, timeout=30)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def measured_run(cmd: list[str], env: dict, logdir: Path, tag: str, use_time: bool) -> dict:
    """run_child (wall, CPU, contention), with the peak RSS of the command itself.

    ru_maxrss from os.wait4 of a child of *this* process starts at this process's RSS (Linux carries
    the pre-exec high-water mark of the forked copy over exec), so the command runs under GNU time,
    a small C program, whose `%M` is its own child's ru_maxrss; `maxrss_wait4` keeps the other value.
    """
    if not use_time:
        r = run_child(cmd, env, logdir, tag)
        r["maxrss_wait4"] = r["maxrss"]
        return r
    f = logdir / f"{tag}.maxrss"
    r = run_child([GNU_TIME, "-f", "%M", "-o", str(f), *cmd], env, logdir, tag)
    r["maxrss_wait4"] = r["maxrss"]
    r["maxrss"] = int(f.read_text().split()[-1]) * 1024  # KiB -> bytes
    return r


def rss_mib() -> float | None:
    """This process's resident set size now (VmRSS of /proc/self/status), in MiB."""
    try:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m[1]) / 1024 if m else None


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all cores busy over `seconds` (from /proc/stat), before we start anything."""
    def snap():
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(f), f[3] + (f[4] if len(f) > 4 else 0)
    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


# --------------------------------------------------------------------------- machine, binary


def cpuinfo_field(name: str) -> str | None:
    """The first `name : value` of /proc/cpuinfo (e.g. "model name", "flags"), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict:
    import numpy as np
    import safetensors

    cpu = cpuinfo_field("model name") or platform.processor() or "unknown"
    mem = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem = int(m[1]) * 1024 if m else None
    except OSError:
        pass

    return {"cpu": cpu, "cores": os.cpu_count(), "mem_bytes": mem, "kernel": platform.release(),
            "python": platform.python_version(), "numpy": np.__version__,
            "safetensors": safetensors.__version__}


def package_versions(pkgs=("torch", "transformers", "Pillow", "numpy", "safetensors")) -> dict[str, str]:
    """Installed version of each distribution, "?" where it is missing (read without importing it)."""
    versions = {}
    for pkg in pkgs:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "?"
    return versions


def snapshot_binary(path: Path, wait_s: float, dest: Path) -> dict:
    """Copies the binary (once it exists and runs) so a rebuild cannot change it mid-run."""
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        if path.is_file() and os.access(path, os.X_OK):
            st = path.stat()
            if time.time() - st.st_mtime > 5:  # not being written right now
                shutil.copy2(path, dest)
                ok = subprocess.run([str(dest), "--version"], capture_output=True, text=True)
                if ok.returncode == 0 and path.stat().st_mtime == st.st_mtime:
                    h = hashlib.sha256(dest.read_bytes()).hexdigest()
                    return {"path": str(path), "version": ok.stdout.strip(), "sha256": h[:16],
                            "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))}
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} not available after {wait_s:.0f}s (build it with cargo build --release)")
        if not announced:
            print(f"waiting for {path} ...", file=sys.stderr, flush=True)
            announced = True
        time.sleep(10)


def binary_staleness(bin_path: Path) -> list[str]:
    """Reasons the binary may not reflect the checkout (it is not rebuilt here)."""
    notes = []
    try:
        mtime = bin_path.stat().st_mtime
    except OSError:
        return [f"{bin_path} is missing"]
    try:
        ct = int(subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True,
                                text=True, check=True).stdout.strip())
        head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h"], capture_output=True,
                              text=True, check=True).stdout.strip()
        if mtime < ct:
            notes.append(f"the binary ({time.strftime('%H:%M:%S', time.localtime(mtime))}) is older than the "
                         f"newest commit {head} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ct))})")
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml",
                                "Cargo.lock"], capture_output=True, text=True, check=True).stdout.split("\n")
        newer = [ln[3:] for ln in dirty if ln.strip() and (REPO / ln[3:]).exists()
                 and (REPO / ln[3:]).stat().st_mtime > mtime]
        if newer:
            notes.append(f"uncommitted changes newer than the binary: {', '.join(newer)}")
    except (OSError, ValueError, subprocess.CalledProcessError):
        notes.append("could not compare the binary with git")
    return notes


# --------------------------------------------------------------------------- report


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def run_torch_child(python: str, script: Path, spec: dict, threads: int, logdir: Path, tag: str) -> dict:
    """`script --torch-child SPEC` under `python` with `threads` OpenMP threads, measured
    (measured_run); its last stdout line, a JSON object of its own phase times, becomes "phases"."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [python, str(script), "--torch-child", json.dumps(spec)]
    r = measured_run(cmd, env, logdir, tag, have_gnu_time())
    r["phases"] = json.loads(r["stdout"].strip().splitlines()[-1])
    return r
