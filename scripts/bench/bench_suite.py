#!/usr/bin/env python3
"""Benchmark the built-in suite's training: `adamerge suite build` against the PyTorch prototype
of the same recipe (`scripts/suite_prototype/prototype.py`), same machine, same thread count.

    python3 scripts/bench/bench_suite.py [--seed 0] [--threads 2] [--bin PATH]

Equal work on both sides: 8 tasks × 2000 training images of 32×32, the same ViT (width 64,
6 layers, 4 heads, patch 8, projection 64), pretraining 8 epochs over the 16,000 images in
batches of 64 (2000 Adam steps), fine-tuning 3 epochs per task in batches of 64 (8 × 93 steps).
The learning rates differ (the prototype's fine-tuning rate is older); they do not change the
work. Each side reports its own stage times (ours: `suite.json`'s `seconds`; the prototype: its
`--json` `times`), so loading and the stages that differ (image generation, heads, evaluation,
merges) are left out of the comparison. The prototype runs with `--am layer:1:1e-2` (one
AdaMerging step, the least it takes) and `--threads T` (torch.set_num_threads).

Uses a copy of the adamerge binary taken at start and never builds it. Needs torch and numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from common import DEFAULT_BIN, cpu_busy, fmt_ratio, machine_info, rerun_prefix, snapshot_binary  # noqa: E402

PROTOTYPE = HERE.parent / "suite_prototype" / "prototype.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default=str(DEFAULT_BIN))
    ap.add_argument("--json", default=None, help="also write the rows as JSON to FILE")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    try:
        binary = tmp / "adamerge"
        info = snapshot_binary(Path(args.bin), 0, binary)
        busy = cpu_busy()
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   ADAMERGE_CACHE=str(tmp / "cache"))

        t = time.perf_counter()
        subprocess.run([str(binary), "--threads", str(args.threads), "suite", "build", "--seed", str(args.seed),
                        "--out", str(tmp / "ours")], env=env, check=True, stdout=subprocess.DEVNULL)
        ours_wall = time.perf_counter() - t
        ours = json.loads((tmp / "ours" / "suite.json").read_text())["seconds"]

        t = time.perf_counter()
        subprocess.run([sys.executable, str(PROTOTYPE), "--seed", str(args.seed), "--threads", str(args.threads),
                        "--am", "layer:1:1e-2", "--json", str(tmp / "proto.json")], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        proto_wall = time.perf_counter() - t
        proto = json.loads((tmp / "proto.json").read_text())["times"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for stage in ("pretrain", "finetune"):
        rows.append({"stage": stage, "torch_s": proto[stage], "ours_s": ours[stage],
                     "ratio": ours[stage] / proto[stage]})
    both = {"stage": "pretrain + finetune", "torch_s": sum(r["torch_s"] for r in rows),
            "ours_s": sum(r["ours_s"] for r in rows)}
    both["ratio"] = both["ours_s"] / both["torch_s"]
    rows.append(both)

    m = machine_info()
    cmd = [*rerun_prefix(__file__), "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.bin != str(DEFAULT_BIN):
        cmd += ["--bin", args.bin]
    print("## Suite training: adamerge suite build vs the PyTorch prototype\n")
    print(f"Machine: {m['cpu']}, {m['cores']} cores; threads {args.threads} on both; seed {args.seed}; "
          f"binary {info['path']} (sha256 {info['sha256']}…); CPU "
          f"{'?' if busy is None else f'{100 * busy:.0f}%'} busy before the start.\n")
    print("| stage | PyTorch s | adamerge s | adamerge / PyTorch |")
    print("|---|--:|--:|--:|")
    for r in rows:
        print(f"| {r['stage']} | {r['torch_s']:.1f} | {r['ours_s']:.1f} | {fmt_ratio(r['ratio'])} |")
    print(f"\nWhole processes: adamerge {ours_wall:.0f} s (all stages), prototype {proto_wall:.0f} s.")
    print(f"\nRerun: `{shlex.join(cmd)}`")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "binary": info, "threads": args.threads,
                                               "seed": args.seed, "rows": rows, "ours_seconds": ours,
                                               "torch_times": proto}, indent=2) + "\n")


if __name__ == "__main__":
    main()
