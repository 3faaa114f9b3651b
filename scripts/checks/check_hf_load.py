"""Check that a (merged) checkpoint directory loads in transformers, unchanged.

    python scripts/checks/check_hf_load.py MERGED_DIR [--class auto|CLIPModel|CLIPVisionModel|CLIPVisionModelWithProjection]
                                                     [--allow-unused]

Loads MERGED_DIR with `<class>.from_pretrained` (auto: the first entry of
config.json "architectures"), keeping the stored dtype, and checks that every
tensor of the model's state_dict is bit-identical to the tensor of the same
name in the safetensors file(s) (single file or sharded index), that nothing
was missing (randomly initialised), and that every value is finite.
File tensors the model does not use are a failure (unless --allow-unused),
except integer `position_ids` buffers, which transformers ignores.

Prints one summary line starting with OK / FAIL / SKIP.
Exit codes: 0 ok, 1 check failed, 2 usage error, 77 skipped (torch or
transformers not importable; the usual "skipped" code of test harnesses).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True

SKIP = 77


def read_files(path: Path):
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out = {}
        for s in shards:
            out.update(load_file(str(path / s)))
        return out, len(shards)
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    return load_file(str(single)), 1


def main() -> int:
    ap = argparse.ArgumentParser(description="check that a checkpoint loads in transformers unchanged")
    ap.add_argument("dir")
    ap.add_argument(
        "--class",
        dest="cls",
        default="auto",
        choices=["auto", "CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection"],
    )
    ap.add_argument("--allow-unused", action="store_true", help="file tensors the model ignores are ok")
    args = ap.parse_args()

    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"SKIP: transformers not installed ({e})")
        return SKIP

    path = Path(args.dir)
    if not (path / "config.json").exists():
        print(f"FAIL: {path}: no config.json")
        return 1
    cls_name = args.cls
    if cls_name == "auto":
        archs = json.loads((path / "config.json").read_text()).get("architectures") or []
        if not archs:
            print(f"FAIL: {path}/config.json has no architectures; pass --class")
            return 1
        cls_name = archs[0]
    cls = getattr(transformers, cls_name, None)
    if cls is None:
        print(f"FAIL: transformers {transformers.__version__} has no class {cls_name}")
        return 1

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = {"dtype": "auto"} if major >= 5 else {"torch_dtype": "auto"}
    try:
        files, n_shards = read_files(path)
        model, info = cls.from_pretrained(str(path), output_loading_info=True, **dtype_kw)
    except Exception as e:  # noqa: BLE001 - report any load failure as FAIL
        print(f"FAIL: {cls_name}.from_pretrained({path}): {type(e).__name__}: {e}")
        return 1

    problems = []
    for key in ("missing_keys", "mismatched_keys", "error_msgs"):
        if info.get(key):
            problems.append(f"{key}={sorted(map(str, info[key]))[:5]}")

    # transformers 5 CLIPVisionModel (CLIPTextModel) has no `vision_model.` (`text_model.`)
    # module level: its state_dict names lack the prefix the file usually has (transformers 4
    # layout, public checkpoints). Map model name -> file name with one prefix for all names.
    sd_names = list(model.state_dict())
    prefix = ""
    for p in ("vision_model.", "text_model.", f"{getattr(model, 'base_model_prefix', '')}."):
        if sum(n in files for n in sd_names) < sum(p + n in files for n in sd_names):
            prefix = p
            break
    sd = model.state_dict()
    used = set()
    n_equal = 0
    dtypes = set()
    casts = set()
    for name, t in sd.items():
        fname = prefix + name if prefix + name in files else None
        if fname is None:
            problems.append(f"{name}: in the model, not in the file(s)")
            continue
        used.add(fname)
        ft = files[fname]
        dtypes.add(str(ft.dtype).replace("torch.", ""))
        t = t.detach().cpu()
        if tuple(ft.shape) != tuple(t.shape):
            problems.append(f"{name}: shape {tuple(t.shape)} != file {tuple(ft.shape)}")
            continue
        if ft.is_floating_point() and not torch.isfinite(ft).all():
            problems.append(f"{name}: non-finite values in the file")
            continue
        if t.dtype != ft.dtype:
            # e.g. config.json says float32 but the file stores float16: equal if the
            # loaded values are exactly the stored ones cast (losslessly) to t.dtype
            casts.add(f"{str(ft.dtype).replace('torch.', '')}->{str(t.dtype).replace('torch.', '')}")
            ft = ft.to(t.dtype)
        if not torch.equal(t, ft):
            diff = (t.double() - ft.double()).abs().max().item()
            problems.append(f"{name}: values differ from the file (max abs diff {diff:.3g})")
        else:
            n_equal += 1

    unused = sorted(set(files) - used)
    ignored = [n for n in unused if n.endswith("position_ids") and not files[n].is_floating_point()]
    other = [n for n in unused if n not in ignored]
    if other and not args.allow_unused:
        problems.append(f"{len(other)} file tensors unused by {cls_name}: {other[:5]}")

    where = f"{cls_name} from {path} ({'names prefixed ' + repr(prefix) + ', ' if prefix else ''}{n_shards} shard{'s' if n_shards != 1 else ''}, file dtypes {sorted(dtypes)})"
    extra = ""
    if casts:
        extra += f"; loaded dtype differs from the stored one (config dtype?): {sorted(casts)}"
    if ignored:
        extra += f"; ignored buffers {ignored}"
    if other and args.allow_unused:
        extra += f"; {len(other)} unused file tensors allowed"
    if problems:
        print(f"FAIL: {where}: {len(problems)} problem(s): " + " | ".join(problems[:8]) + extra)
        return 1
    print(f"OK: {where}: {n_equal}/{len(sd)} state_dict tensors equal to the file{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
