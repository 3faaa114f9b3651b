"""Write the CLIP model / tokenizer / preprocessing fixtures under tests/fixtures/clip/.

    python scripts/make_clip_fixtures.py [--out tests/fixtures/clip]

Needs numpy, safetensors, torch, transformers (5.x), tokenizers and Pillow.
Everything is seeded; see tests/fixtures/clip/README.md for what each file holds.

What it does:
1. Trains a tiny CLIP-format BPE (vocab.json + merges.txt exactly as
   openai/clip-vit-base-patch32 lays them out: 256 byte symbols, the same 256
   with "</w>", one token per merge, then <|startoftext|> and <|endoftext|>) on
   the head class names / templates plus some English text, loads it with
   transformers' CLIPTokenizer and saves it with save_pretrained (tokenizer.json
   with CLIP's normalizer / pre-tokenizer / BPE / RobertaProcessing).
2. Builds two tiny random CLIPModels (same weights; hidden_act quick_gelu and
   gelu), perturbs LayerNorm and bias tensors, saves them with
   save_pretrained, reloads them and writes the expected forward outputs,
   tokenizations and zero-shot heads (eager attention, float32).
3. Writes small seeded images (PNG RGB / RGBA / L, JPEG) and the pixel values
   that the PIL-backend CLIPImageProcessor (the old "slow" processor) makes.
4. Reloads everything and checks the expected outputs reproduce bit for bit,
   plus cross-checks documented in the README (hub-style tokenizer.json,
   raw `tokenizers` with explicit padding, both eos pooling rules, a numpy
   re-implementation of Pillow's bicubic resize, alpha compositing).

Note: the random init comes from torch; another torch / transformers /
Pillow version may change bits of the files (they stay self-consistent).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers  # noqa: E402

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

SEED = 20240601
CTX = 16  # text max_position_embeddings == tokenizer max_length
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# CLIP's pre-tokenizer split pattern, as transformers.convert_slow_tokenizer.CLIPConverter writes it
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MAX_MERGES = 300

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=16,
    num_channels=3,
)
TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=CTX,
    projection_dim=16,
)
PROJ = 16
ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # fixture dir -> hidden_act

HEADS = {
    "shapes": {
        "classnames": ["circle", "square", "triangle", "star"],
        "templates": ["a photo of a {}.", "a drawing of the {}!", "itap of a {}"],
    },
    "colours": {
        "classnames": ["red", "dark green", "Sky Blue"],
        "templates": ["a {} object.", "something coloured {}."],
    },
}

TEXTS = [
    "",
    "a photo of a cat.",
    "A PHOTO OF A Dog!!",
    "a zebra",  # "zebra" is not a word of the training corpus: split into sub-word pieces
    "there are 12 cats, 3 dogs and 2024 birds",
    "it's   a\tcat's\n toy",
    "cafe\u0301 na\u00efve",  # combining accent: NFC makes it "café"; non-ASCII bytes
    "a photo of a very small red circle next to a big blue square on the green grass today",
    "itap of a star",
    "?!...",
]

EXTRA_CORPUS = """
a photo of a cat. a photo of a dog. a photo of the small bird on a tree.
the quick brown fox jumps over the lazy dog. there are many cats and dogs in the photo.
a good photo of a big object. a bad drawing of a small thing. a close-up photo of the animal.
it's a toy. the cat's toy is red. we're here and you've seen it, i'm sure they'll come; he'd go.
one two three four five six seven eight nine ten. 0 1 2 3 4 5 6 7 8 9
colours: red, green, blue, yellow, black, white, dark, light, sky, grass, sea.
shapes: circle, square, triangle, star, line, point, box.
itap of my photo. a cropped photo of the object! a bright photo, a dark photo?
""".strip()

IMAGES = [
    # file name, (width, height), kind
    ("rgb_37x23.png", (37, 23), "RGB"),
    ("rgb_23x37.png", (23, 37), "RGB"),
    ("rgb_50x50.png", (50, 50), "RGB"),
    ("rgb_19x64.png", (19, 64), "RGB"),
    ("rgb_64x19.png", (64, 19), "RGB"),
    ("rgba_33x33.png", (33, 33), "RGBA"),
    ("gray_40x29.png", (40, 29), "L"),
    ("jpeg_97x71.jpg", (97, 71), "JPEG"),
]


# --------------------------------------------------------------------------------------
# tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's / GPT-2's byte -> printable unicode table (same order as CLIP's vocab)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_normalizer():
    return normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )


def clip_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def training_corpus() -> list[str]:
    lines = []
    for spec in HEADS.values():
        for c in spec["classnames"]:
            lines.append(c)
            for t in spec["templates"]:
                lines.append(t.format(c))
    lines.extend(EXTRA_CORPUS.splitlines())
    for t in TEXTS:
        if "zebra" not in t:  # keep one word out of the vocabulary on purpose
            lines.append(t)
    return lines


def train_bpe(lines: list[str], max_merges: int) -> list[tuple[str, str]]:
    """Plain greedy BPE with CLIP's "</w>" end-of-word suffix (deterministic tie-break)."""
    norm, pre = clip_normalizer(), clip_pre_tokenizer()
    words: Counter[str] = Counter()
    for line in lines:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            words[w] += 1
    assert "zebra" not in words
    seqs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        a, b = best
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = tuple(out)
    return merges


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Vocabulary in the order of openai/CLIP's SimpleTokenizer / the hub vocab.json."""
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    seen = set(vocab)
    for a, b in merges:
        if a + b not in seen:  # a merge result can repeat in principle; keep the first id
            vocab.append(a + b)
            seen.add(a + b)
    vocab.extend([BOS, EOS])
    return {t: i for i, t in enumerate(vocab)}


def write_clip_vocab_files(d: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )


def build_tokenizer(src: Path) -> CLIPTokenizer:
    tok = CLIPTokenizer.from_pretrained(str(src), model_max_length=CTX)
    # keep tokenizer.json's "padding"/"truncation" null like the hub files: the caller sets them
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    return tok


def save_tokenizer(tok: CLIPTokenizer, d: Path, vocab, merges) -> None:
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    tok.save_pretrained(str(d))
    # transformers 5 writes only tokenizer.json + tokenizer_config.json; add the classic
    # CLIP files (the source of truth tokenizer.json was built from) and special_tokens_map.json
    write_clip_vocab_files(d, vocab, merges)
    (d / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
            },
            indent=2,
        )
        + "\n"
    )
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    assert tj["padding"] is None and tj["truncation"] is None, "tokenizer.json must not pin padding"


def tokenize(tok: CLIPTokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = tok(texts, padding="max_length", truncation=True, max_length=CTX, return_tensors="np")
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def hub_style_tokenizer(vocab, merges, eos_id, bos_id) -> Tokenizer:
    """The structure that transformers 4.x CLIPConverter wrote into the hub's tokenizer.json."""
    from transformers.convert_slow_tokenizer import CLIPConverter

    class Orig:  # the slow CLIPTokenizer is gone in transformers 5; give the converter its fields
        pass

    o = Orig()
    o.encoder = vocab
    o.bpe_ranks = {m: i for i, m in enumerate(merges)}
    o.unk_token, o.eos_token, o.bos_token = EOS, EOS, BOS
    o.eos_token_id, o.bos_token_id = eos_id, bos_id
    t = CLIPConverter(o).converted()
    from tokenizers import AddedToken

    t.add_special_tokens([AddedToken(BOS, normalized=False), AddedToken(EOS, normalized=False)])
    return t


def raw_encode(t: Tokenizer, texts: list[str], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """What a Rust `tokenizers` user does: explicit truncation + fixed padding with <|endoftext|>."""
    t.enable_truncation(max_length=CTX)
    t.enable_padding(length=CTX, pad_id=pad_id, pad_token=EOS)
    encs = t.encode_batch(texts)
    t.no_padding()
    t.no_truncation()
    return (
        np.array([e.ids for e in encs], dtype=np.int64),
        np.array([e.attention_mask for e in encs], dtype=np.int64),
    )


# --------------------------------------------------------------------------------------
# models


def make_config(act: str, vocab_size: int, bos: int, eos: int, pad: int) -> CLIPConfig:
    cfg = CLIPConfig(
        text_config=dict(
            TEXT, vocab_size=vocab_size, hidden_act=act, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad
        ),
        vision_config=dict(VISION, hidden_act=act),
        projection_dim=PROJ,
    )
    cfg._attn_implementation = "eager"
    return cfg


def perturb(model: CLIPModel, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.copy_(0.05 * torch.randn(mod.bias.shape, generator=g))
        # not the init value ln(1/0.07) = 2.6593, so a hard-coded constant shows up
        model.logit_scale.copy_(torch.tensor(2.4321))


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def eos_positions(input_ids: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    first_eos = (input_ids == eos_id).astype(np.int32).argmax(-1)
    legacy = input_ids.astype(np.int32).argmax(-1)  # transformers' rule when config eos_token_id == 2
    return first_eos, legacy


@torch.no_grad()
def expected_outputs(model: CLIPModel, tok: CLIPTokenizer, pixel_values: torch.Tensor) -> dict[str, np.ndarray]:
    model.eval()
    out: dict[str, np.ndarray] = {"pixel_values": pixel_values.numpy()}

    v = model.vision_model(pixel_values=pixel_values)
    image_embeds = model.visual_projection(v.pooler_output)
    out["vision_last_hidden_state"] = v.last_hidden_state.numpy()
    out["vision_pooled"] = v.pooler_output.numpy()
    out["image_embeds"] = image_embeds.numpy()

    ids, mask = tokenize(tok, TEXTS)
    t = model.text_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    out["input_ids"] = ids
    out["attention_mask"] = mask
    out["text_last_hidden_state"] = t.last_hidden_state.numpy()
    out["text_pooled"] = t.pooler_output.numpy()
    out["text_embeds"] = model.text_projection(t.pooler_output).numpy()
    out["logit_scale"] = model.logit_scale.detach().clone().numpy()

    # zero-shot heads (DESIGN.md §3)
    scale = model.logit_scale.exp()
    img_n = l2n(image_embeds)
    for task, spec in HEADS.items():
        texts = [tmpl.format(c) for c in spec["classnames"] for tmpl in spec["templates"]]
        hid, hmask = tokenize(tok, texts)
        te = model.get_text_features(input_ids=torch.from_numpy(hid), attention_mask=torch.from_numpy(hmask))
        te = te.pooler_output
        C, M = len(spec["classnames"]), len(spec["templates"])
        w = l2n(l2n(te).reshape(C, M, PROJ).mean(dim=1)) * scale
        out[f"head_input_ids.{task}"] = hid
        out[f"head.{task}"] = w.numpy()
        out[f"logits.{task}"] = (img_n @ w.T).numpy()
    return {k: np.array(v, order="C", copy=True) for k, v in out.items()}  # keeps 0-d arrays 0-d


# --------------------------------------------------------------------------------------
# images


def make_image(size: tuple[int, int], kind: str, rng: np.random.Generator) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for _ in range(4):
        fx, fy = rng.uniform(0.3, 1.6, size=2)
        ph = rng.uniform(0, 2 * np.pi)
        smooth = 127.5 + 95.0 * np.sin(2 * np.pi * (fx * x / w + fy * y / h) + ph)
        chans.append(np.clip(np.round(smooth + rng.normal(0, 18.0, size=(h, w))), 0, 255).astype(np.uint8))
    if kind == "L":
        return Image.fromarray(chans[0], "L")
    rgb = np.stack(chans[:3], -1)
    if kind == "RGBA":
        # alpha: a diagonal ramp through fully transparent .. fully opaque, plus noise
        ramp = (x / (w - 1) + y / (h - 1)) / 2 * 340 - 40 + rng.normal(0, 10.0, size=(h, w))
        alpha = np.clip(np.round(ramp), 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    return Image.fromarray(rgb, "RGB")


def write_images(d: Path) -> None:
    rng = np.random.default_rng(SEED + 7)
    d.mkdir(parents=True, exist_ok=True)
    for name, size, kind in IMAGES:
        im = make_image(size, kind, rng)
        if kind == "JPEG":
            im.save(d / name, format="JPEG", quality=95)
        else:
            im.save(d / name, format="PNG", optimize=False, compress_level=9)


def resize_target(h: int, w: int, shortest_edge: int) -> tuple[int, int]:
    """transformers.image_transforms.get_resize_output_image_size(default_to_square=False)."""
    short, long = (w, h) if w <= h else (h, w)
    # int() of a float64 quotient; equals (shortest_edge * long) // short for any sane size
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def pil_bicubic_u8(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Independent numpy re-implementation of Pillow's 8-bit BICUBIC resize (Resample.c)."""
    PB = 22  # PRECISION_BITS = 32 - 8 - 2

    def cubic(x):
        a = -0.5
        x = np.abs(x)
        return np.where(
            x < 1.0,
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
            np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
        )

    def coeffs(in_size, out_size):
        scale = in_size / out_size
        fscale = max(scale, 1.0)
        support = 2.0 * fscale
        rows = []
        for xx in range(out_size):
            center = (xx + 0.5) * scale
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), in_size) - xmin
            k = cubic((np.arange(xmax) + xmin - center + 0.5) / fscale)
            ww = k.sum()
            if ww != 0.0:
                k = k / ww
            ki = np.where(k < 0, (-0.5 + k * (1 << PB)), (0.5 + k * (1 << PB))).astype(np.int64)  # trunc
            rows.append((xmin, ki))
        return rows

    def apply(arr, rows, axis):  # arr: int64 [H, W, C]
        outs = []
        for xmin, ki in rows:
            sl = np.take(arr, np.arange(xmin, xmin + len(ki)), axis=axis)
            shape = [1, 1, 1]
            shape[axis] = len(ki)
            ss = (1 << (PB - 1)) + (sl * ki.reshape(shape)).sum(axis=axis)
            outs.append(np.clip(ss >> PB, 0, 255))
        return np.stack(outs, axis=axis)

    a = img.astype(np.int64)
    in_h, in_w = a.shape[:2]
    if out_w != in_w:
        a = apply(a, coeffs(in_w, out_w), axis=1)
    if out_h != in_h:
        a = apply(a, coeffs(in_h, out_h), axis=0)
    return a.astype(np.uint8)


def preprocess_fixture(img_dir: Path, proc_dir: Path) -> dict[str, np.ndarray]:
    proc = AutoImageProcessor.from_pretrained(str(proc_dir), backend="pil")
    assert isinstance(proc, CLIPImageProcessorPil) and proc.backend == "pil", type(proc)
    se = proc.size["shortest_edge"] if isinstance(proc.size, dict) else proc.size.shortest_edge
    ch = proc.crop_size["height"] if isinstance(proc.crop_size, dict) else proc.crop_size.height
    cw = proc.crop_size["width"] if isinstance(proc.crop_size, dict) else proc.crop_size.width
    out: dict[str, np.ndarray] = {}
    opened = []
    mean = np.array(proc.image_mean, dtype=np.float32)
    std = np.array(proc.image_std, dtype=np.float32)
    for name, _, kind in IMAGES:
        im = Image.open(img_dir / name)
        im.load()
        opened.append(im)
        pv = proc(images=im, return_tensors="np")["pixel_values"][0]
        assert pv.dtype == np.float32 and pv.shape == (3, ch, cw), (pv.dtype, pv.shape)
        out[f"pixel_values.{name}"] = pv

        # intermediate stages, so a Rust port can be checked piece by piece
        if "A" in im.getbands():
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            rgb = np.array(Image.alpha_composite(bg, im.convert("RGBA")).convert("RGB"))
            # integer formula of that composite, checked here: round((c*a + 255*(255-a)) / 255)
            arr = np.array(im).astype(np.int64)
            a_ = arr[..., 3:4]
            assert np.array_equal(rgb, ((arr[..., :3] * a_ + 255 * (255 - a_) + 127) // 255).astype(np.uint8))
            # what transformers 4.x did (drop alpha): kept for comparison only
            dropped = np.array(im.convert("RGB"))
            rh, rw = resize_target(*dropped.shape[:2], se)
            rs = pil_bicubic_u8(dropped, rh, rw)
            top, left = (rh - ch) // 2, (rw - cw) // 2
            x = (rs[top : top + ch, left : left + cw].astype(np.float64) * (1 / 255)).astype(np.float32)
            out[f"pixel_values_alpha_dropped.{name}"] = np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))
        else:
            rgb = np.array(im.convert("RGB"))
        out[f"decoded.{name}"] = rgb
        H, W = rgb.shape[:2]
        rh, rw = resize_target(H, W, se)
        resized = np.array(Image.fromarray(rgb).resize((rw, rh), resample=Image.Resampling.BICUBIC))
        assert np.array_equal(resized, pil_bicubic_u8(rgb, rh, rw)), f"numpy bicubic != PIL for {name}"
        out[f"resized.{name}"] = resized
        top, left = (rh - ch) // 2, (rw - cw) // 2
        crop = resized[top : top + ch, left : left + cw]
        x = (crop.astype(np.float64) * proc.rescale_factor).astype(np.float32)
        mine = ((x - mean) / std).transpose(2, 0, 1)
        assert np.array_equal(mine, pv), f"re-derived pixel values differ for {name}"
    # batched call == one at a time
    batch = proc(images=opened, return_tensors="np")["pixel_values"]
    for i, (name, _, _) in enumerate(IMAGES):
        assert np.array_equal(batch[i], out[f"pixel_values.{name}"])
    return {k: np.array(v, order="C", copy=True) for k, v in out.items()}  # keeps 0-d arrays 0-d


# --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "clip")
    args = ap.parse_args()
    out: Path = args.out
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    if out.exists():
        for p in out.iterdir():  # keep README.md
            if p.name != "README.md":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "texts.json").write_text(json.dumps(TEXTS, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "heads.json").write_text(json.dumps(HEADS, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # ---- tokenizer
    merges = train_bpe(training_corpus(), MAX_MERGES)
    vocab = clip_vocab(merges)
    src = out / "_tok_src"
    src.mkdir()
    write_clip_vocab_files(src, vocab, merges)
    tok = build_tokenizer(src)
    shutil.rmtree(src)
    bos_id, eos_id, pad_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    assert (bos_id, eos_id) == (vocab[BOS], vocab[EOS]) and pad_id == eos_id
    assert len(tok) == len(vocab) and eos_id == len(vocab) - 1
    print(f"tokenizer: {len(vocab)} tokens, {len(merges)} merges, bos {bos_id} eos/pad/unk {eos_id}")

    # ---- models
    gen = torch.Generator().manual_seed(SEED + 1)
    pixel_values = torch.randn((4, 3, VISION["image_size"], VISION["image_size"]), generator=gen)
    state = None
    outs = {}
    for dname, act in ACTS.items():
        d = out / dname
        cfg = make_config(act, len(vocab), bos_id, eos_id, pad_id)
        torch.manual_seed(SEED)
        model = CLIPModel(cfg).to(torch.float32)
        if state is None:
            perturb(model, SEED + 2)
            state = {k: v.clone() for k, v in model.state_dict().items()}
        else:  # both dirs carry the very same tensors; only hidden_act differs
            model.load_state_dict(state)
        model.eval()
        model.save_pretrained(str(d))
        save_tokenizer(tok, d, vocab, merges)
        CLIPImageProcessorPil(
            size={"shortest_edge": VISION["image_size"]},
            crop_size={"height": VISION["image_size"], "width": VISION["image_size"]},
            do_convert_rgb=True,
        ).save_pretrained(str(d))

        # expected outputs from what is on disk
        m = CLIPModel.from_pretrained(str(d), attn_implementation="eager", dtype=torch.float32).eval()
        t = CLIPTokenizer.from_pretrained(str(d))
        exp = expected_outputs(m, t, pixel_values)
        np_save_file(exp, str(d / "expected.safetensors"), metadata={"hidden_act": act})
        outs[dname] = (m, exp)

    # ---- images
    write_images(out / "images")
    pre = preprocess_fixture(out / "images", out / "quick_gelu")
    np_save_file(pre, str(out / "preprocessed.safetensors"))

    verify(out, vocab, merges, pixel_values, outs)
    print("ok")


def verify(out: Path, vocab, merges, pixel_values, outs) -> None:
    """Reload everything from disk and re-derive every expected tensor bit for bit."""
    eos_id = vocab[EOS]
    for dname, act in ACTS.items():
        d = out / dname
        exp = np_load_file(str(d / "expected.safetensors"))
        m = CLIPModel.from_pretrained(str(d), attn_implementation="eager", dtype=torch.float32).eval()
        assert m.config.text_config.hidden_act == act and m.config.vision_config.hidden_act == act
        assert m.config.text_config.eos_token_id == eos_id != 2
        t = CLIPTokenizer.from_pretrained(str(d))
        again = expected_outputs(m, t, pixel_values)
        assert set(again) == set(exp), set(again) ^ set(exp)
        for k in exp:
            assert exp[k].dtype == again[k].dtype and np.array_equal(exp[k], again[k]), f"{dname}/{k} differs"
        # the full CLIPModel forward agrees with the pieces
        with torch.no_grad():
            full = m(
                input_ids=torch.from_numpy(exp["input_ids"]),
                attention_mask=torch.from_numpy(exp["attention_mask"]),
                pixel_values=torch.from_numpy(exp["pixel_values"]),
            )
        np.testing.assert_allclose(full.image_embeds.numpy(), l2n(torch.from_numpy(exp["image_embeds"])).numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(full.text_embeds.numpy(), l2n(torch.from_numpy(exp["text_embeds"])).numpy(), rtol=0, atol=1e-6)

        # pooling: first <|endoftext|> == argmax(input_ids) here (eos is the largest id)
        first, legacy = eos_positions(exp["input_ids"], eos_id)
        assert np.array_equal(first, legacy)
        assert np.array_equal(first, exp["attention_mask"].sum(-1) - 1)
        lh = exp["text_last_hidden_state"]
        assert np.array_equal(exp["text_pooled"], lh[np.arange(len(first)), first])
        # padding mask does not change the real positions (causal mask), only the padded ones
        with torch.no_grad():
            nomask = m.text_model(input_ids=torch.from_numpy(exp["input_ids"])).last_hidden_state.numpy()
        real = exp["attention_mask"].astype(bool)
        d_real = np.abs(nomask - lh)[real].max()
        d_pad = np.abs(nomask - lh)[~real].max()
        print(f"{dname}: text hidden without attention_mask: max |diff| real {d_real:.3g}, padded {d_pad:.3g}")

        # tokenizer.json as the Rust `tokenizers` crate sees it (no transformers on top)
        raw = Tokenizer.from_file(str(d / "tokenizer.json"))
        ids, mask = raw_encode(raw, TEXTS, eos_id)
        assert np.array_equal(ids, exp["input_ids"]) and np.array_equal(mask, exp["attention_mask"])
        for task, spec in HEADS.items():
            texts = [tmpl.format(c) for c in spec["classnames"] for tmpl in spec["templates"]]
            ids, _ = raw_encode(raw, texts, eos_id)
            assert np.array_equal(ids, exp[f"head_input_ids.{task}"])
        # the hub's (transformers 4 CLIPConverter) structure gives the same ids
        hub = hub_style_tokenizer(vocab, merges, eos_id, vocab[BOS])
        ids, mask = raw_encode(hub, TEXTS, eos_id)
        assert np.array_equal(ids, exp["input_ids"]) and np.array_equal(mask, exp["attention_mask"])
        # vocab.json / merges.txt reproduce tokenizer.json's model
        tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
        assert tj["model"]["vocab"] == json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        assert [tuple(x) for x in tj["model"]["merges"]] == merges

    # how much the activation matters (same weights in both dirs)
    eq, eg = outs["quick_gelu"][1], outs["gelu"][1]
    for k in ("image_embeds", "text_embeds"):
        rel = np.abs(eq[k] - eg[k]).max() / np.abs(eq[k]).max()
        print(f"quick_gelu vs gelu {k}: max |diff| / max |x| = {rel:.3g}")
        assert rel > 1e-3

    # preprocessing, reloaded
    pre = np_load_file(str(out / "preprocessed.safetensors"))
    proc = AutoImageProcessor.from_pretrained(str(out / "quick_gelu"), use_fast=False)
    assert proc.backend == "pil"
    for name, _, _ in IMAGES:
        im = Image.open(out / "images" / name)
        pv = proc(images=im, return_tensors="np")["pixel_values"][0]
        assert np.array_equal(pv, pre[f"pixel_values.{name}"]), name
    print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {__import__('tokenizers').__version__}, Pillow {Image.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
