"""Writes the small Parquet fixtures of tests/parquet.rs into tests/fixtures/parquet/.

The `hf/` shards are written by Hugging Face `datasets` itself (an `Image()` column stored as
struct<bytes, path> and a `ClassLabel` whose names live in the file's `huggingface` metadata),
the layout of the public copies of the paper's eight datasets on the hub (e.g. tanganke/eurosat,
`data/test-*.parquet`). `plain.parquet` is a bare pyarrow table (binary `img`, int8 `labels`, no
metadata); `bad/` holds files that must fail with a clear error. `expected.json` gives every
row's label and decoded RGB pixels as PIL reads them, to compare with the Rust reader.

    pip install pyarrow datasets pillow numpy
    python scripts/make_parquet_fixtures.py
"""

import io
import json
import pathlib
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "parquet"
CLASSES = ["annual crop", "forest", "sea or lake"]


def image(rng, i):
    """A small image with varied sizes and modes; every fifth is a JPEG."""
    h, w = 6 + i % 3, 7 + i % 4
    if i % 7 == 3:
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
        img = Image.fromarray(arr, "L")
    else:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if i % 5 == 4 else "PNG", quality=95)
    data = buf.getvalue()
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return data, rgb


def row(label, rgb, i):
    return {"label": label, "jpeg": i % 5 == 4, "shape": list(rgb.shape), "rgb": rgb.flatten().tolist()}


def write_hf(rng):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HfImage

    expected = []
    features = Features({"image": HfImage(), "label": ClassLabel(names=CLASSES)})
    shards = [11, 7]
    i = 0
    (OUT / "hf").mkdir(parents=True)
    for s, n in enumerate(shards):
        images, labels = [], []
        for _ in range(n):
            data, rgb = image(rng, i)
            label = int(rng.integers(0, len(CLASSES)))
            images.append({"bytes": data, "path": f"img{i}.png"})
            labels.append(label)
            expected.append(row(label, rgb, i))
            i += 1
        ds = Dataset.from_dict({"image": images, "label": labels}, features=features)
        # batch_size sets the row-group size, so the reader crosses row groups.
        ds.to_parquet(OUT / "hf" / f"test-{s:05d}-of-{len(shards):05d}.parquet", batch_size=4)
    return expected


def write_plain(rng):
    expected, images, labels = [], [], []
    for i in range(6):
        data, rgb = image(rng, 100 + i)
        label = i % 2
        images.append(data)
        labels.append(label)
        expected.append(row(label, rgb, 100 + i))
    table = pa.table({"img": pa.array(images, pa.binary()), "labels": pa.array(labels, pa.int8())})
    pq.write_table(table, OUT / "plain.parquet", row_group_size=4)
    return expected


def write_bad(rng):
    (OUT / "bad").mkdir()
    data, _ = image(rng, 0)
    pq.write_table(pa.table({"image": pa.array([data], pa.binary())}), OUT / "bad" / "no_label.parquet")
    pq.write_table(
        pa.table({"image": pa.array([data, None, data], pa.binary()), "label": pa.array([0, 1, 0])}),
        OUT / "bad" / "null_image.parquet",
    )
    pq.write_table(
        pa.table({"image": pa.array([data, data], pa.binary()), "label": pa.array([0, -1])}),
        OUT / "bad" / "negative_label.parquet",
    )
    pq.write_table(
        pa.table({"image": pa.array([b"not an image"], pa.binary()), "label": pa.array([0])}),
        OUT / "bad" / "corrupt_image.parquet",
    )


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    rng = np.random.default_rng(7)
    expected = {"classes": CLASSES, "hf": write_hf(rng), "plain": write_plain(rng)}
    write_bad(rng)
    (OUT / "expected.json").write_text(json.dumps(expected) + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size} bytes)")


if __name__ == "__main__":
    main()
