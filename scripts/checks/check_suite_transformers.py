"""Checks a built suite with Hugging Face `transformers`, independently of adamerge.

    python scripts/checks/check_suite_transformers.py "$(adamerge suite path --size tiny)"

For the pretrained model and every fine-tuned one it checks that
`CLIPVisionModelWithProjection.from_pretrained` loads the directory with no missing or unexpected
tensor, and that `CLIPImageProcessor` reads its preprocessor config. It then scores every model
on its task's test PNGs with the saved head (logits = normalize(image_embeds) @ head.T) and
compares the result with the accuracy that adamerge wrote into suite.json. It exits non-zero on
any difference larger than one image, and with 77 (skipped) where torch or transformers is missing.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

try:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
except ImportError as e:  # 77: "skipped", as test harnesses read it
    print(f"skipped: {e}", file=sys.stderr)
    sys.exit(77)


def load(model_dir: pathlib.Path):
    model, info = CLIPVisionModelWithProjection.from_pretrained(model_dir, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "mismatched_keys" or (k == "mismatched_keys" and v)}
    if bad:
        sys.exit(f"{model_dir}: loading info {bad}")
    return model.eval(), CLIPImageProcessor.from_pretrained(model_dir)


def accuracy(model, processor, head: torch.Tensor, test_dir: pathlib.Path) -> tuple[float, int]:
    classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    paths, labels = [], []
    for c, name in enumerate(classes):
        for p in sorted((test_dir / name).glob("*.png")):
            paths.append(p)
            labels.append(c)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(paths), 256):
            images = [Image.open(p).convert("RGB") for p in paths[i : i + 256]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            emb = torch.nn.functional.normalize(model(pixel_values=pixels).image_embeds, dim=-1)
            pred = (emb @ head.T).argmax(-1).numpy()
            correct += int((pred == np.array(labels[i : i + 256])).sum())
    return correct / len(paths), len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", type=pathlib.Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    info = json.loads((a.suite / "suite.json").read_text())
    pre_model, pre_proc = load(a.suite / "models" / "pretrained")
    worst = 0
    print("| task | pretrained (ours / transformers) | individual (ours / transformers) |")
    print("|---|--:|--:|")
    for task in info["tasks"]:
        name = task["name"]
        head = load_file(a.suite / "heads" / f"{name}.safetensors")["weight"]
        test = a.suite / "data" / name / "test"
        model, proc = load(a.suite / "models" / name)
        acc_pre, n = accuracy(pre_model, pre_proc, head, test)
        acc_ind, _ = accuracy(model, proc, head, test)
        diff = max(abs(acc_pre - task["pretrained_accuracy"]), abs(acc_ind - task["individual_accuracy"]))
        worst = max(worst, round(diff * n))
        print(
            f"| {name} | {100 * task['pretrained_accuracy']:.2f} / {100 * acc_pre:.2f} "
            f"| {100 * task['individual_accuracy']:.2f} / {100 * acc_ind:.2f} |"
        )
    print(f"largest difference: {worst} image(s)")
    if worst > 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
