"""Summarises built suites over seeds: what `suite.json` measured, mean ± std per method and the
gap of each merge over Task Arithmetic 0.3 (the numbers the README and issue 6 quote).

    for s in 0 1 2; do adamerge suite build --seed $s; done
    python3 scripts/checks/suite_seeds.py $(for s in 0 1 2; do adamerge suite path --seed $s; done)

Standard library only.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", metavar="DIR", help="built suite directories (each with a suite.json)")
    infos = [json.loads((Path(d) / "suite.json").read_text()) for d in ap.parse_args().dirs]
    if not infos:
        sys.exit(__doc__)
    rows: dict[str, list[float]] = {}
    per_task: dict[str, list[list[float]]] = {}
    for info in infos:
        tasks = info["tasks"]
        rows.setdefault("pretrained", []).append(info["pretrained_average"])
        rows.setdefault("individual", []).append(info["individual_average"])
        per_task.setdefault("individual", []).append([t["individual_accuracy"] for t in tasks])
        for m in info["methods"]:
            rows.setdefault(m["method"], []).append(m["average"])
    ta = rows["task-arithmetic(lambda=0.3)"]
    seeds = [i["seed"] for i in infos]
    print(f"seeds {seeds}; accuracy % averaged over the 8 tasks; gap = method − TA 0.3, per seed\n")
    print("| method | avg (mean ± std) | per seed | gap vs TA 0.3 (mean ± std) |")
    print("|---|--:|--:|--:|")
    for name, v in rows.items():
        gaps = [100 * (a - b) for a, b in zip(v, ta)]
        sd = statistics.stdev if len(v) > 1 else (lambda _: 0.0)
        print(
            f"| {name} | {100 * statistics.mean(v):.1f} ± {100 * sd(v):.1f} | "
            + " / ".join(f"{100 * x:.1f}" for x in v)
            + f" | {statistics.mean(gaps):+.1f} ± {sd(gaps):.1f} |"
        )
    ratios = [t["task_vector_ratio"] for i in infos for t in i["tasks"]]
    worst = min(min(r) for r in per_task["individual"])
    print(f"\n‖τ‖/‖θ₀‖ from {min(ratios):.3f} to {max(ratios):.3f}; lowest individual task accuracy {100 * worst:.1f} %")
    secs = [sum(i["seconds"].values()) for i in infos]
    print("build seconds per stage (seed " + str(seeds[0]) + "): " + ", ".join(f"{k} {v:.0f}" for k, v in infos[0]["seconds"].items()))
    print("total build seconds per seed: " + " / ".join(f"{s:.0f}" for s in secs))


if __name__ == "__main__":
    main()
