"""Write the merge fixtures under tests/fixtures/merge/ (deterministic, small).

    python scripts/make_merge_fixtures.py [--out tests/fixtures/merge]

Needs numpy, safetensors, torch and transformers. The expected outputs come
from scripts/reference_merge.py (numpy only). See tests/fixtures/merge/README.md.

Set A (a/): tiny CLIPVisionModelWithProjection, pretrained + 3 float32
fine-tuned copies, DARE masks, expected merges of every fixed method.
Set B (b/): layouts: a sharded full CLIPModel with an extra int64
position_ids buffer, CLIPVisionModel fine-tunes stored in f32 / f16 / bf16,
expected task arithmetic and the list of carried tensors.

Note: the random init comes from torch; regenerating with another torch /
transformers version may change the bits of every file (the fixtures are
self-consistent either way).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_merge as rm  # noqa: E402

import torch  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from safetensors.torch import load_file as pt_load_file  # noqa: E402
from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

REPO = Path(__file__).resolve().parent.parent

VISION = dict(
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=8,
    patch_size=4,
    projection_dim=4,
    hidden_act="quick_gelu",
)
TEXT = dict(
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=50,
    max_position_embeddings=16,
    projection_dim=4,
)

TASKS_A = ["task1", "task2", "task3"]
TASKS_B = ["ft_f32", "ft_f16", "ft_bf16"]
DTYPES_B = {"ft_f32": torch.float32, "ft_f16": torch.float16, "ft_bf16": torch.bfloat16}


# --------------------------------------------------------------------------- helpers


def save_pretrained(model, path: Path, **kw) -> None:
    if path.exists():
        shutil.rmtree(path)
    params = inspect.signature(model.save_pretrained).parameters
    if "safe_serialization" in params:  # transformers < 5; v5 always writes safetensors
        kw["safe_serialization"] = True
    model.save_pretrained(str(path), **kw)


def read_dir_torch(path: Path) -> dict:
    """All tensors of a HF directory (single file or sharded), as torch tensors."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        out = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out.update(pt_load_file(str(path / shard)))
        return out
    return pt_load_file(str(path / "model.safetensors"))


def is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def perturb_degenerate(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give constant tensors (LayerNorm 1/0, zero biases) small random values so that
    theta_0 is non-degenerate (a bug that confuses theta_k and tau_k would otherwise
    go unnoticed on zero biases)."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.numel() > 1 and float(p.std()) == 0.0:
                p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def draw_tau(theta0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """tau = N(0,1) * 0.01 * (std(theta0) + 0.01), float32."""
    std = float(np.std(theta0.astype(np.float64))) if theta0.size > 1 else 0.0
    z = rng.standard_normal(theta0.shape)
    return (z * 0.01 * (std + 0.01)).astype(np.float32)


def make_finetuned_a(theta0: dict, names: list, rng: np.random.Generator, stats: dict) -> list:
    """Three float32 fine-tuned tensor dicts (merged names only).

    task2: ~5% of entries with tau_2 == -tau_1 exactly (after recomputing tau from the
    stored values); task3: ~3% of entries with tau_3 == 0 exactly, about half of them at
    the cancel positions of task 1/2, so sum_k tau_k is exactly 0 there even for k = 1.
    """
    ft = [{}, {}, {}]
    n_cancel = n_cancel_exact = n_zero = n_sum0 = n_total = 0
    for n in names:
        t0 = theta0[n]
        th1 = t0 + draw_tau(t0, rng)
        th2 = t0 + draw_tau(t0, rng)
        th3 = t0 + draw_tau(t0, rng)
        cancel = rng.random(t0.shape) < 0.05
        tau1 = th1 - t0  # as the consumer will recompute it, float32
        th2 = np.where(cancel, t0 - tau1, th2).astype(np.float32)
        exact = cancel & ((th2 - t0) == -tau1)
        zero3 = (rng.random(t0.shape) < 0.015) | (cancel & (rng.random(t0.shape) < 0.3))
        th3 = np.where(zero3, t0, th3).astype(np.float32)
        for k, th in enumerate((th1, th2, th3)):
            ft[k][n] = th
        n_cancel += int(cancel.sum())
        n_cancel_exact += int(exact.sum())
        n_zero += int(zero3.sum())
        s = ((th1 - t0) + (th2 - t0)) + (th3 - t0)
        n_sum0 += int((s == 0).sum())
        n_total += t0.size
    stats.update(
        entries=n_total,
        cancel_positions=n_cancel,
        cancel_exact=n_cancel_exact,
        tau3_zero=n_zero,
        sum_tau_exact_zero=n_sum0,
    )
    return ft


def write_ft_model(model, full_sd_np: dict, dtype: torch.dtype, path: Path, prefix: str = "") -> None:
    """Load full_sd_np (checkpoint names) into model, cast to dtype, save_pretrained, and
    check the stored values are exactly the intended ones rounded to dtype.

    prefix: what the file names have that the module's state_dict names lack
    (transformers 5 CLIPVisionModel has no `vision_model.` level in its modules)."""
    own = set(model.state_dict())
    sd = {}
    for k, v in full_sd_np.items():
        key = k if k in own else k[len(prefix):] if prefix and k.startswith(prefix) else k
        sd[key] = torch.from_numpy(np.ascontiguousarray(v))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model = model.to(dtype)
    save_pretrained(model, path)
    stored = read_dir_torch(path)
    want_names = set(full_sd_np)
    if set(stored) != want_names:  # allow the unprefixed v5-native layout, checked by caller
        stored = {prefix + k: v for k, v in stored.items()}
    assert set(stored) == want_names, sorted(set(stored) ^ want_names)
    for k, v in full_sd_np.items():
        want = torch.from_numpy(v).to(dtype)
        assert stored[k].dtype == dtype, (path, k, stored[k].dtype)
        assert torch.equal(stored[k], want), (path, k)


def write_expected(path: Path, tensors: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np_save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(tensors.items())},
        str(path),
        metadata={"format": "pt"},
    )


def fl(x) -> dict:
    return {k: v.float().numpy().astype(np.float32) for k, v in x.items()}


# --------------------------------------------------------------------------- set A


def build_a(out: Path) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(100)
    rng = np.random.default_rng(1234)
    cfg = CLIPVisionConfig(**VISION)
    base_model = CLIPVisionModelWithProjection(cfg)
    perturb_degenerate(base_model, gen)
    save_pretrained(base_model, out / "pretrained")

    theta0_all = np_load_file(str(out / "pretrained" / "model.safetensors"))
    names = sorted(
        n
        for n, v in theta0_all.items()
        if np.issubdtype(v.dtype, np.floating)
        and (n.startswith("vision_model.") or n == "visual_projection.weight")
    )
    assert all(theta0_all[n].dtype == np.float32 for n in names)
    theta0 = {n: theta0_all[n] for n in names}

    stats: dict = {}
    ft = make_finetuned_a(theta0, names, rng, stats)
    for task, th in zip(TASKS_A, ft):
        full = dict(theta0_all)
        full.update(th)
        write_ft_model(CLIPVisionModelWithProjection(cfg), full, torch.float32, out / task)

    # read back exactly what is stored and derive everything from it
    fts = [
        {n: np_load_file(str(out / t / "model.safetensors"))[n] for n in names} for t in TASKS_A
    ]
    taus = rm.task_vectors(theta0, fts)

    masks = [
        {n: (rng.random(theta0[n].shape) < 0.5).astype(np.uint8) for n in names} for _ in TASKS_A
    ]
    np_save_file(
        {f"{t}/{n}": m[n] for t, m in zip(TASKS_A, masks) for n in names},
        str(out / "dare_masks.safetensors"),
        metadata={"format": "pt"},
    )

    cases = []

    def add(file, method, params, result):
        write_expected(out / "expected" / file, result)
        cases.append(
            {
                "file": f"expected/{file}",
                "method": method,
                "params": params,
                "pretrained": "pretrained",
                "tasks": TASKS_A,
            }
        )

    add("weight_average.safetensors", "weight_average", {}, rm.weight_average(theta0, fts))
    for lam in (0.3, 1.0):
        add(
            f"task_arithmetic_l{lam}.safetensors",
            "task_arithmetic",
            {"lambda": lam},
            rm.task_arithmetic(theta0, taus, lam),
        )
    for k, lam, agg, scope in [
        (0.2, 1.0, "mean", "global"),
        (0.2, 0.3, "sum", "global"),
        (0.2, 1.0, "mean", "per_tensor"),
        (1.0, 1.0, "mean", "global"),
    ]:
        add(
            f"ties_k{k}_l{lam}_{agg}_{scope}.safetensors",
            "ties",
            {"k": k, "lambda": lam, "agg": agg, "scope": scope},
            rm.ties(theta0, taus, k=k, lam=lam, agg=agg, scope=scope),
        )
    add(
        "dare_p0.5_task_arithmetic_l0.3.safetensors",
        "dare",
        {"p": 0.5, "masks": "dare_masks.safetensors", "then": "task_arithmetic", "lambda": 0.3},
        rm.dare(theta0, taus, masks, 0.5, then="task_arithmetic", lam=0.3),
    )
    add(
        "dare_p0.5_ties_k0.2_l1.0_mean_global.safetensors",
        "dare",
        {
            "p": 0.5,
            "masks": "dare_masks.safetensors",
            "then": "ties",
            "k": 0.2,
            "lambda": 1.0,
            "agg": "mean",
            "scope": "global",
        },
        rm.dare(theta0, taus, masks, 0.5, then="ties", k=0.2, lam=1.0, agg="mean", scope="global"),
    )
    (out / "cases.json").write_text(json.dumps(cases, indent=2) + "\n")

    # how often the elect tie rule fires in the TIES cases (for the report)
    tie_stats = {}
    for k, scope in [(0.2, "global"), (1.0, "global"), (0.2, "per_tensor")]:
        tr = rm.ties_trim(taus, k, scope)
        tie_stats[f"k{k}_{scope}"] = int(
            sum(int((rm._sum_tasks(tr, n) == 0).sum()) for n in names)
            - sum(int(np.all([t[n] == 0 for t in tr], axis=0).sum()) for n in names)
        )
    stats["elect_exact_zero_sum_nonzero_entries"] = tie_stats
    stats["merged_tensors"] = len(names)
    return stats


# --------------------------------------------------------------------------- set B


def build_b(out: Path) -> dict:
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(101)
    rng = np.random.default_rng(5678)
    cfg = CLIPConfig(
        text_config=CLIPTextConfig(**TEXT).to_dict(),
        vision_config=CLIPVisionConfig(**VISION).to_dict(),
        projection_dim=4,
    )
    model = CLIPModel(cfg)
    perturb_degenerate(model, gen)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    pre = out / "pretrained"
    save_pretrained(model, pre, max_shard_size=int(total * 0.45))
    index_path = pre / "model.safetensors.index.json"
    assert index_path.exists(), "expected a sharded save"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert 2 <= len(shards) <= 3, shards

    # add an int64 position_ids buffer like older public checkpoints have
    pid_name = "vision_model.embeddings.position_ids"
    assert pid_name not in index["weight_map"]
    target = index["weight_map"]["vision_model.embeddings.position_embedding.weight"]
    shard = np_load_file(str(pre / target))
    shard[pid_name] = np.arange(5, dtype=np.int64).reshape(1, 5)
    np_save_file(shard, str(pre / target), metadata={"format": "pt"})
    index["weight_map"][pid_name] = target
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    if "total_size" in index.get("metadata", {}):
        index["metadata"]["total_size"] += 5 * 8
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    # transformers must still load it
    loaded, info = CLIPModel.from_pretrained(str(pre), output_loading_info=True)
    load_info = {k: sorted(v) if isinstance(v, (list, set)) else str(v) for k, v in info.items()}
    assert not info["missing_keys"], info

    pre_all = fl(read_dir_torch(pre))
    pre_raw = read_dir_torch(pre)
    names = sorted(
        n for n, v in pre_raw.items() if n.startswith("vision_model.") and is_float(v)
    )
    carried = sorted(n for n in pre_raw if n not in names)
    theta0 = {n: pre_all[n] for n in names}

    # The public fine-tunes were made as CLIPVisionModel.from_pretrained(<CLIPModel dir>),
    # trained, saved: transformers 5 then keeps the loaded `vision_model.*` names on save.
    ft_f32 = None
    for task in TASKS_B:
        th = {n: theta0[n] + draw_tau(theta0[n], rng) for n in names}
        if task == "ft_f32":
            ft_f32 = th
        src = CLIPVisionModel.from_pretrained(str(pre))
        write_ft_model(src, th, DTYPES_B[task], out / task, prefix="vision_model.")
        keys = set(read_dir_torch(out / task))
        assert keys == set(names), f"{task}: not in the public vision_model.* layout"
    # A CLIPVisionModel built from a config (not loaded) is saved by transformers 5 with
    # names WITHOUT the `vision_model.` prefix. Same values as ft_f32, native v5 layout.
    write_ft_model(
        CLIPVisionModel(CLIPVisionConfig(**VISION)),
        ft_f32,
        torch.float32,
        out / "ft_f32_unprefixed",
        prefix="vision_model.",
    )
    v5_keys = set(read_dir_torch(out / "ft_f32_unprefixed"))
    unprefixed_layout = all(not k.startswith("vision_model.") for k in v5_keys)
    reloaded = CLIPVisionModel.from_pretrained(str(out / "ft_f32_unprefixed"))
    same = all(
        torch.equal(v, torch.from_numpy(ft_f32["vision_model." + k]))
        for k, v in reloaded.state_dict().items()
    )
    assert same

    # expected: from the float32 upcasts of exactly the stored (rounded) values
    fts = [{n: fl(read_dir_torch(out / t))[n] for n in names} for t in TASKS_B]
    taus = rm.task_vectors(theta0, fts)
    write_expected(
        out / "expected" / "task_arithmetic_l0.3.safetensors", rm.task_arithmetic(theta0, taus, 0.3)
    )
    (out / "expected" / "carried.json").write_text(
        json.dumps({"carried": carried, "merged": names}, indent=2) + "\n"
    )
    (out / "cases.json").write_text(
        json.dumps(
            [
                {
                    "file": "expected/task_arithmetic_l0.3.safetensors",
                    "method": "task_arithmetic",
                    "params": {"lambda": 0.3},
                    "pretrained": "pretrained",
                    "tasks": TASKS_B,
                }
            ],
            indent=2,
        )
        + "\n"
    )
    return {
        "shards": shards,
        "merged_tensors": len(names),
        "carried_tensors": len(carried),
        "pretrained_tensors": len(pre_raw),
        "load_info": load_info,
        "ft_f32_unprefixed_has_no_prefix": unprefixed_layout,
    }


def main() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "merge"))
    args = ap.parse_args()
    out = Path(args.out)
    for sub in ("a", "b"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
        (out / sub).mkdir(parents=True)
    sa = build_a(out / "a")
    sb = build_b(out / "b")
    print(json.dumps({"a": sa, "b": sb}, indent=2))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total size: {size} bytes")
    assert size < 1_000_000


if __name__ == "__main__":
    main()
