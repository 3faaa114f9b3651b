#!/usr/bin/env python3
"""Two adamerge binaries on the same command, alternated: which is faster, beyond the spread.

    python3 scripts/bench/ab_binaries.py --a OLD --b NEW [--repeats 3] [--same-output] -- ARGS...

On a shared 2-core VM a ratio against PyTorch moves by ±20 % between runs, more than a change
worth keeping; alternating two binaries back to back (a, b, a, b, ...) on one command gives both
the same machine, so their ranges can be compared. `{out}` in ARGS becomes a fresh empty
directory per run (under a temporary folder removed at the end). With `--same-output`, every
`.safetensors` file the runs write must be byte-identical across all runs of both binaries:
the check that a speed change kept the bits.

Prints a Markdown table: wall seconds and peak RSS per run, each binary's range and median, and
the ratio of the medians (b / a). Binaries are copied at start, so a rebuild cannot change them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from common import cpu_busy, cpuinfo_field, snapshot_binary  # noqa: E402


def run_once(binary: Path, args: list[str], out: Path, log: Path) -> dict:
    """One run: wall seconds, peak RSS of the child (MiB), the digests of what it wrote. Its
    stderr goes to `log` (a pipe read only after the wait would block a chatty child)."""
    cmd = [str(binary)] + [a.replace("{out}", str(out)) for a in args]
    with log.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_bytes()[-2000:].decode(errors="replace")
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{tail}")
    digests = {}
    if out.exists():
        for f in sorted(out.rglob("*.safetensors")):
            digests[str(f.relative_to(out))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024, "digests": digests}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="the binary before")
    ap.add_argument("--b", required=True, help="the binary after")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each, alternated (default 3)")
    ap.add_argument("--same-output", action="store_true",
                    help="fail unless every run writes byte-identical .safetensors files")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then adamerge's arguments")
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    if not args:
        ap.error("give adamerge's arguments after --")
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")

    with tempfile.TemporaryDirectory(prefix="ab-binaries-") as tmp:
        tmp = Path(tmp)
        bins = {}
        for tag, path in (("a", a.a), ("b", a.b)):
            dest = tmp / f"adamerge-{tag}"
            info = snapshot_binary(Path(path), 0, dest)
            bins[tag] = (dest, info)
        busy = cpu_busy()
        runs: dict[str, list[dict]] = {"a": [], "b": []}
        for i in range(a.repeats):
            for tag in ("a", "b"):
                out = tmp / f"out-{tag}-{i}"
                r = run_once(bins[tag][0], args, out, tmp / f"stderr-{tag}-{i}.log")
                runs[tag].append(r)
                print(f"  {tag} run {i + 1}: {r['wall_s']:.2f} s, {r['rss_mib']:.0f} MiB", file=sys.stderr, flush=True)

    busy_s = f"{busy:.0%}" if busy is not None else "unknown"
    print(f"CPU: {cpuinfo_field('model name') or 'unknown'}, {os.cpu_count()} cores; "
          f"busy before the first run: {busy_s}")
    for tag in ("a", "b"):
        info = bins[tag][1]
        print(f"- {tag}: {info['path']} ({info['version']}, built {info['mtime']}, sha256 {info['sha256']}…)")
    print(f"- command: adamerge {' '.join(args)}")
    print()
    print("| binary | " + " | ".join(f"run {i + 1} s" for i in range(a.repeats)) + " | median s | peak RSS MiB |")
    print("|---|" + "--:|" * (a.repeats + 2))
    med = {}
    for tag in ("a", "b"):
        walls = [r["wall_s"] for r in runs[tag]]
        med[tag] = statistics.median(walls)
        rss = max(r["rss_mib"] for r in runs[tag])
        print(f"| {tag} | " + " | ".join(f"{w:.2f}" for w in walls) + f" | {med[tag]:.2f} | {rss:.0f} |")
    print()
    ranges_apart = max(r["wall_s"] for r in runs["b"]) < min(r["wall_s"] for r in runs["a"]) or \
        max(r["wall_s"] for r in runs["a"]) < min(r["wall_s"] for r in runs["b"])
    print(f"b / a (medians): {med['b'] / med['a']:.3f}; the two ranges "
          f"{'do not overlap' if ranges_apart else 'overlap (within the spread)'}.")

    if a.same_output:
        all_runs = runs["a"] + runs["b"]
        first = all_runs[0]["digests"]
        if not first:
            raise SystemExit("--same-output: the runs wrote no .safetensors file under {out}")
        differ = [i for i, r in enumerate(all_runs) if r["digests"] != first]
        if differ:
            raise SystemExit(f"--same-output: runs {differ} wrote different bytes than the first")
        print(f"Outputs: all {len(all_runs)} runs wrote the same bytes ({len(first)} .safetensors files).")


if __name__ == "__main__":
    main()
