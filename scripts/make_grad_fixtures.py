"""Writes tests/fixtures/clip/grads.safetensors: PyTorch gradients of the suite's training losses.

    python scripts/make_grad_fixtures.py

The model is the quick_gelu fixture of `scripts/make_clip_fixtures.py` (a tiny random
`CLIPModel`; only its vision tower and visual projection are used) and the pixels are that
fixture's `pixel_values` [4, 3, 32, 32]. Two losses, exactly as `src/suite/train.rs` defines them:

* `head`: fine-tuning, mean cross-entropy of `normalize(image_embeds) @ head.T` against `labels`,
  with a fixed random head [3, 16];
* `pretrain`: pretraining, the sum over two probes of the mean cross-entropy of
  `Linear(10 * normalize(image_embeds))` against their labels; the probes are named for the
  factors `frequency` (5 classes) and `frame` (6) and stored [in, out] as `src/suite/train.rs`
  keeps them.

It also holds five Adam steps of the head loss (`adam.losses`, `adam.<tensor>` after them).
For each loss the file holds `grad.<loss>.<tensor>` for every tensor of the vision tower and the
projection (and the probes), so the Rust test compares every gradient, tensor by tensor.
"""

from __future__ import annotations

import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "clip"


def main() -> None:
    torch.manual_seed(11)
    model = CLIPModel.from_pretrained(FIX / "quick_gelu").float().eval()
    vision = model.vision_model
    proj = model.visual_projection
    pixels = load_file(FIX / "quick_gelu" / "expected.safetensors")["pixel_values"].double()
    model = model.double()
    params = {f"vision_model.{n}": p for n, p in vision.named_parameters()}
    params["visual_projection.weight"] = proj.weight
    p_dim = proj.weight.shape[0]

    def embeds() -> torch.Tensor:
        pooled = vision(pixel_values=pixels).pooler_output
        return F.normalize(proj(pooled), dim=-1)

    out = {"pixel_values": pixels.float()}
    head = torch.randn(3, p_dim, dtype=torch.float64) * 4.0
    labels = torch.tensor([0, 2, 1, 2])
    out["head"] = head.float()
    out["labels"] = labels

    model.zero_grad()
    loss = F.cross_entropy(embeds() @ head.T, labels)
    loss.backward()
    out["loss.head"] = loss.detach().float().reshape(1)
    for n, p in params.items():
        out[f"grad.head.{n}"] = p.grad.detach().float().contiguous()

    probes = []
    for c in (5, 6):
        w = (torch.rand(p_dim, c, dtype=torch.float64) * 2 - 1) / p_dim**0.5
        b = (torch.rand(c, dtype=torch.float64) * 2 - 1) / p_dim**0.5
        probes.append((w.requires_grad_(), b.requires_grad_()))
    probe_labels = [torch.tensor([4, 0, 1, 3]), torch.tensor([5, 2, 0, 1])]
    model.zero_grad()
    e = embeds() * 10.0
    loss = sum(F.cross_entropy(e @ w + b, y) for (w, b), y in zip(probes, probe_labels))
    loss.backward()
    out["loss.pretrain"] = loss.detach().float().reshape(1)
    for f, (w, b), y in zip(("frequency", "frame"), probes, probe_labels):
        out[f"probe.{f}.weight"] = w.detach().float().contiguous()
        out[f"probe.{f}.bias"] = b.detach().float()
        out[f"labels.{f}"] = y
        out[f"grad.pretrain.probe.{f}.weight"] = w.grad.float().contiguous()
        out[f"grad.pretrain.probe.{f}.bias"] = b.grad.float()
    for n, p in params.items():
        out[f"grad.pretrain.{n}"] = p.grad.detach().float().contiguous()

    # Five full-batch Adam steps of the head loss (lr 1e-2, PyTorch's defaults otherwise), as
    # `WeightsAdam` takes them: the losses before each step and every tensor after the last.
    opt = torch.optim.Adam(list(params.values()), lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(embeds() @ head.T, labels)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    out["adam.losses"] = torch.tensor(losses)
    for n, p in params.items():
        out[f"adam.{n}"] = p.detach().float().contiguous()

    save_file(out, FIX / "grads.safetensors")
    print(f"wrote {FIX / 'grads.safetensors'}: {len(out)} tensors")


if __name__ == "__main__":
    main()
