"""Random stand-ins for the paper's checkpoints and data, with the real names and shapes, so
`experiments/paper-vit-b32.toml` / `paper-vit-l14.toml` can run end to end where the public
files are not at hand. Their accuracy means nothing: the weights are random.

Writes, under OUT (default $ADAMERGE_CACHE or ~/.cache/adamerge, then paper-random/<arch>):

    models/clip-vit-base-patch32/            CLIPModel: config.json, model.safetensors (the
                                             names and shapes of openai/clip-vit-base-patch32),
                                             preprocessor_config.json, the tokenizer files
    models/clip-vit-base-patch32_<task>/     CLIPVisionModel (vision_model.* only, as the public
                                             fine-tunes are): pretrained + small noise
    data/<task>/test/                        the 8 tasks' test splits in both layouts the
                                             experiment files read: Hugging Face Parquet shards
                                             (sun397, cars, resisc45, gtsrb; class names in the
                                             `huggingface` metadata) and ImageFolder PNGs
                                             (eurosat, svhn, mnist, dtd; every class folder)

The tokenizer is the small CLIP tokenizer of tests/fixtures/clip/quick_gelu (vocab 614), so the
text config names its special tokens; the embedding table keeps the real 49408 rows.

    pip install numpy safetensors pyarrow pillow
    python scripts/data/make_paper_checkpoints.py --arch vit-b32
    ADAMERGE_MODELS=OUT/models ADAMERGE_DATA=OUT/data \\
        adamerge run experiments/paper-vit-b32.toml --limit 4 --steps 2
"""

import argparse
import io
import json
import os
import pathlib
import shutil
import tomllib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from safetensors.numpy import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASKS = ["sun397", "cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
PARQUET_TASKS = {"sun397", "cars", "resisc45", "gtsrb"}
TOKENIZER = ROOT / "tests" / "fixtures" / "clip" / "quick_gelu"

ARCHS = {
    "vit-b32": dict(
        name="clip-vit-base-patch32",
        projection=512,
        vision=dict(hidden=768, layers=12, heads=12, mlp=3072, patch=32, image=224),
        text=dict(hidden=512, layers=12, heads=8, mlp=2048),
    ),
    "vit-l14": dict(
        name="clip-vit-large-patch14",
        projection=768,
        vision=dict(hidden=1024, layers=24, heads=16, mlp=4096, patch=14, image=224),
        text=dict(hidden=768, layers=12, heads=12, mlp=3072),
    ),
}
VOCAB, CONTEXT = 49408, 77
BOS, EOS = 612, 613  # the fixture tokenizer's <|startoftext|> and <|endoftext|>


def encoder(prefix, d, layers, mlp, rng, out):
    for i in range(layers):
        p = f"{prefix}.encoder.layers.{i}"
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            out[f"{p}.self_attn.{proj}.weight"] = normal(rng, (d, d), d**-0.5)
            out[f"{p}.self_attn.{proj}.bias"] = np.zeros(d, np.float32)
        out[f"{p}.mlp.fc1.weight"] = normal(rng, (mlp, d), d**-0.5)
        out[f"{p}.mlp.fc1.bias"] = np.zeros(mlp, np.float32)
        out[f"{p}.mlp.fc2.weight"] = normal(rng, (d, mlp), mlp**-0.5)
        out[f"{p}.mlp.fc2.bias"] = np.zeros(d, np.float32)
        for ln in ["layer_norm1", "layer_norm2"]:
            out[f"{p}.{ln}.weight"] = np.ones(d, np.float32)
            out[f"{p}.{ln}.bias"] = np.zeros(d, np.float32)


def normal(rng, shape, std):
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)


def clip_weights(arch, rng):
    v, t = arch["vision"], arch["text"]
    w = {}
    d, n = v["hidden"], (v["image"] // v["patch"]) ** 2 + 1
    w["vision_model.embeddings.class_embedding"] = normal(rng, (d,), 0.02)
    w["vision_model.embeddings.patch_embedding.weight"] = normal(
        rng, (d, 3, v["patch"], v["patch"]), (3 * v["patch"] ** 2) ** -0.5
    )
    w["vision_model.embeddings.position_embedding.weight"] = normal(rng, (n, d), 0.02)
    for ln in ["pre_layrnorm", "post_layernorm"]:
        w[f"vision_model.{ln}.weight"] = np.ones(d, np.float32)
        w[f"vision_model.{ln}.bias"] = np.zeros(d, np.float32)
    encoder("vision_model", d, v["layers"], v["mlp"], rng, w)
    w["visual_projection.weight"] = normal(rng, (arch["projection"], d), d**-0.5)
    d = t["hidden"]
    w["text_model.embeddings.token_embedding.weight"] = normal(rng, (VOCAB, d), 0.02)
    w["text_model.embeddings.position_embedding.weight"] = normal(rng, (CONTEXT, d), 0.01)
    encoder("text_model", d, t["layers"], t["mlp"], rng, w)
    w["text_model.final_layer_norm.weight"] = np.ones(d, np.float32)
    w["text_model.final_layer_norm.bias"] = np.zeros(d, np.float32)
    w["text_projection.weight"] = normal(rng, (arch["projection"], d), d**-0.5)
    w["logit_scale"] = np.array(2.6592, np.float32)
    return w


def vision_config(arch, flat):
    v = arch["vision"]
    cfg = {
        "attention_dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": v["hidden"],
        "image_size": v["image"],
        "intermediate_size": v["mlp"],
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": v["heads"],
        "num_channels": 3,
        "num_hidden_layers": v["layers"],
        "patch_size": v["patch"],
        "projection_dim": arch["projection"],
    }
    if flat:
        return {"architectures": ["CLIPVisionModel"], "dtype": "float32", **cfg}
    return cfg


def clip_config(arch):
    t = arch["text"]
    return {
        "architectures": ["CLIPModel"],
        "dtype": "float32",
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": arch["projection"],
        "text_config": {
            "attention_dropout": 0.0,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
            "pad_token_id": EOS,
            "hidden_act": "quick_gelu",
            "hidden_size": t["hidden"],
            "intermediate_size": t["mlp"],
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": CONTEXT,
            "model_type": "clip_text_model",
            "num_attention_heads": t["heads"],
            "num_hidden_layers": t["layers"],
            "projection_dim": arch["projection"],
            "vocab_size": VOCAB,
        },
        "vision_config": vision_config(arch, False),
    }


def preprocessor(arch):
    size = arch["vision"]["image"]
    cfg = json.loads((TOKENIZER / "preprocessor_config.json").read_text())
    cfg["crop_size"] = {"height": size, "width": size}
    cfg["size"] = {"shortest_edge": size}
    return cfg


def write_model(path, config, weights, arch, tokenizer):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor(arch), indent=2) + "\n")
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer:
        for f in TOKENIZER.iterdir():
            if f.name not in {"config.json", "model.safetensors", "preprocessor_config.json"} and not f.name.startswith("expected"):
                shutil.copy(f, path / f.name)


def png(rng):
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_data(root, rng, images):
    for task in TASKS:
        spec = tomllib.loads((ROOT / "datasets" / f"{task}.toml").read_text())
        classes = spec["classnames"]
        test = root / task / "test"
        test.mkdir(parents=True)
        if task in PARQUET_TASKS:
            labels = [int(rng.integers(0, len(classes))) for _ in range(images)]
            table = pa.table(
                {
                    "image": pa.array(
                        [{"bytes": png(rng), "path": None} for _ in labels],
                        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                    ),
                    "label": pa.array(labels, pa.int64()),
                }
            )
            meta = {"info": {"features": {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}}}
            table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
            half = images // 2
            pq.write_table(table.slice(0, half), test / "test-00000-of-00002.parquet")
            pq.write_table(table.slice(half), test / "test-00001-of-00002.parquet")
        else:
            # An ImageFolder needs every class folder, so at least one image per class.
            folders = spec.get("folders") or classes
            for i in range(max(images, len(folders))):
                d = test / folders[i % len(folders)]
                d.mkdir(exist_ok=True)
                (d / f"{i:05d}.png").write_bytes(png(rng))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="vit-b32")
    ap.add_argument("--out", type=pathlib.Path)
    ap.add_argument("--images", type=int, default=16, help="test images per task (at least one per class in ImageFolder tasks)")
    ap.add_argument("--noise", type=float, default=1e-3, help="std of the fine-tuned copies' random task vectors")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    arch = ARCHS[args.arch]
    cache = pathlib.Path(os.environ.get("ADAMERGE_CACHE", pathlib.Path.home() / ".cache" / "adamerge"))
    out = args.out or cache / "paper-random" / args.arch
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    weights = clip_weights(arch, rng)
    write_model(tmp / "models" / arch["name"], clip_config(arch), weights, arch, True)
    vision = {k: v for k, v in weights.items() if k.startswith("vision_model.")}
    for task in TASKS:
        tuned = {k: (v + normal(rng, v.shape, args.noise)).astype(np.float32) for k, v in vision.items()}
        write_model(tmp / "models" / f"{arch['name']}_{task}", vision_config(arch, True), tuned, arch, False)
        print(f"wrote {arch['name']}_{task}", flush=True)
    write_data(tmp / "data", rng, args.images)
    # Written aside, then renamed: an interrupted run leaves no half set behind.
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(out)


if __name__ == "__main__":
    main()
