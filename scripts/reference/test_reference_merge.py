"""Self-test of scripts/reference/reference_merge.py (numpy + safetensors only, no torch).

    python scripts/reference/test_reference_merge.py

1. Hand-computed cases.
2. A second, deliberately naive implementation (plain Python loops over scalars,
   trim threshold by sorting) must agree bit for bit with the vectorised one
   on random data with exact ties/cancellations.
3. The committed fixtures in tests/fixtures/merge/a and b are recomputed from
   their inputs and must equal the stored expected files bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_merge as rm  # noqa: E402

F32 = np.float32
FIX = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "merge"


def naive_ties(base, taus, k, lam, agg, scope):
    names = sorted(base)
    K = len(taus)
    flat = {n: [[F32(x) for x in t[n].ravel()] for t in taus] for n in names}
    groups = [names] if scope == "global" else [[n] for n in names]
    trimmed = {n: [None] * K for n in names}
    gamma = {}
    for g in groups:
        for i in range(K):
            allv = sorted(abs(float(x)) for n in g for x in flat[n][i])
            d = len(allv)
            r = d - int(d * k)
            thr = None if r == 0 else allv[r - 1]
            for n in g:
                trimmed[n][i] = [x if thr is None or abs(float(x)) >= thr else F32(0) for x in flat[n][i]]
        s_sign = 0.0
        for n in g:
            gs = []
            for j in range(len(flat[n][0])):
                acc = F32(0)
                for i in range(K):
                    acc = F32(acc + trimmed[n][i][j])
                gs.append(0.0 if acc == 0 else (1.0 if acc > 0 else -1.0))
            gamma[n] = gs
            s_sign += sum(gs)
        maj = 0.0 if s_sign == 0 else (1.0 if s_sign > 0 else -1.0)
        for n in g:
            gamma[n] = [maj if v == 0 else v for v in gamma[n]]
    out = {}
    for n in names:
        vals = []
        for j in range(len(flat[n][0])):
            num, cnt = F32(0), F32(0)
            for i in range(K):
                x = trimmed[n][i][j]
                sx = 0.0 if x == 0 else (1.0 if x > 0 else -1.0)
                if x != 0 and sx == gamma[n][j]:
                    num = F32(num + x)
                    cnt = F32(cnt + F32(1))
            tm = F32(num / max(cnt, F32(1))) if agg == "mean" else num
            vals.append(F32(base[n].ravel()[j] + F32(F32(lam) * tm)))
        out[n] = np.array(vals, np.float32).reshape(base[n].shape)
    return out


def check_equal(a, b, what):
    assert set(a) == set(b), what
    for n in a:
        if not np.array_equal(a[n], b[n]):
            d = np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)).max()
            raise AssertionError(f"{what}: {n} differs (max {d})")


def test_hand():
    b = {"w": np.zeros(4, np.float32)}
    t1 = {"w": np.array([1.0, -2.0, 0.5, 3.0], np.float32)}
    t2 = {"w": np.array([-1.0, -1.0, 0.25, -4.0], np.float32)}
    # k = 1: sums [0, -3, .75, -1] -> gamma [maj, -1, 1, -1]; maj = sign(-1+1-1) = -1
    got = rm.ties(b, [t1, t2], k=1.0, lam=1.0)["w"]
    assert np.array_equal(got, np.array([-1.0, -1.5, 0.375, -4.0], np.float32)), got
    got = rm.ties(b, [t1, t2], k=1.0, lam=0.5, agg="sum")["w"]
    assert np.array_equal(got, np.array([-0.5, -1.5, 0.375, -2.0], np.float32)), got
    # k = 0.5: d = 4, r = 2, thresholds |t1| -> 1, |t2| -> 1 (ties kept: |x| >= thr)
    tr = rm.ties_trim([t1, t2], 0.5)
    assert np.array_equal(tr[0]["w"], np.array([1.0, -2.0, 0.0, 3.0], np.float32))
    assert np.array_equal(tr[1]["w"], np.array([-1.0, -1.0, 0.0, -4.0], np.float32))
    # k = 0 keeps only entries equal to the max magnitude (r = d)
    assert np.array_equal(rm.ties_trim([t1], 0.0)[0]["w"], np.array([0, 0, 0, 3.0], np.float32))
    wa = rm.weight_average(b, [t1, t2])["w"]
    assert np.array_equal(wa, np.array([0.0, -1.5, 0.375, -0.5], np.float32))
    ta = rm.task_arithmetic(b, [t1, t2], 0.5)["w"]
    assert np.array_equal(ta, np.array([0.0, -1.5, 0.375, -0.5], np.float32))
    m = [{"w": np.array([1, 0, 1, 0], np.uint8)}, {"w": np.array([0, 1, 1, 1], np.uint8)}]
    d = rm.dare_apply([t1, t2], m, 0.5)
    assert np.array_equal(d[0]["w"], np.array([2.0, 0.0, 1.0, 0.0], np.float32))
    assert np.array_equal(d[1]["w"], np.array([0.0, -2.0, 0.5, -8.0], np.float32))


def test_naive_random():
    rng = np.random.default_rng(7)
    shapes = {"a": (5, 3), "b": (7,), "c": (2, 2, 2), "d": (1,)}
    base = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    taus = [{n: (rng.standard_normal(s) * 0.1).astype(np.float32) for n, s in shapes.items()} for _ in range(3)]
    for n in shapes:  # exact cancellations, zeros and magnitude ties
        m = rng.random(shapes[n]) < 0.3
        taus[1][n] = np.where(m, -taus[0][n], taus[1][n]).astype(np.float32)
        taus[2][n] = np.where(m | (rng.random(shapes[n]) < 0.2), F32(0), taus[2][n]).astype(np.float32)
    taus[0]["b"][:3] = F32(0.05)
    for k in (0.0, 0.2, 0.5, 1.0):
        for agg in ("mean", "sum"):
            for scope in ("global", "per_tensor"):
                want = naive_ties(base, taus, k, 0.7, agg, scope)
                got = rm.ties(base, taus, k=k, lam=0.7, agg=agg, scope=scope)
                check_equal(got, want, f"ties k={k} {agg} {scope}")


def load_np(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def load_any_f32(path: Path):
    """Read safetensors (any float dtype incl. bf16) as float32 numpy, no torch."""
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        buf = data[a:b]
        if v["dtype"] == "F32":
            x = np.frombuffer(buf, "<f4")
        elif v["dtype"] == "F16":
            x = np.frombuffer(buf, "<f2").astype(np.float32)
        elif v["dtype"] == "BF16":
            x = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            continue
        out[k] = x.reshape(v["shape"]).astype(np.float32)
    return out


def test_fixtures_a():
    a = FIX / "a"
    cases = json.loads((a / "cases.json").read_text())
    base_all = load_np(a / "pretrained" / "model.safetensors")
    names = sorted(load_np(a / cases[0]["file"]))
    base = {n: base_all[n] for n in names}
    fts = [{n: load_np(a / t / "model.safetensors")[n] for n in names} for t in cases[0]["tasks"]]
    taus = rm.task_vectors(base, fts)
    mfile = load_np(a / "dare_masks.safetensors")
    masks = [{n: mfile[f"{t}/{n}"] for n in names} for t in cases[0]["tasks"]]
    for c in cases:
        p = c["params"]
        if c["method"] == "weight_average":
            got = rm.weight_average(base, fts)
        elif c["method"] == "task_arithmetic":
            got = rm.task_arithmetic(base, taus, p["lambda"])
        elif c["method"] == "ties":
            got = rm.ties(base, taus, k=p["k"], lam=p["lambda"], agg=p["agg"], scope=p["scope"])
        elif c["method"] == "dare":
            kw = {"lam": p["lambda"]}
            if p["then"] == "ties":
                kw.update(k=p["k"], agg=p["agg"], scope=p["scope"])
            got = rm.dare(base, taus, masks, p["p"], then=p["then"], **kw)
        else:
            raise AssertionError(c["method"])
        check_equal(got, load_np(a / c["file"]), c["file"])
        if c["method"] == "ties" and p["k"] < 1.0 and p["agg"] == "mean":
            check_equal(got, naive_ties(base, taus, p["k"], p["lambda"], p["agg"], p["scope"]), "naive " + c["file"])


def test_fixtures_b():
    b = FIX / "b"
    pre = {}
    for shard in sorted(set(json.loads((b / "pretrained" / "model.safetensors.index.json").read_text())["weight_map"].values())):
        pre.update(load_any_f32(b / "pretrained" / shard))
    exp = load_np(b / "expected" / "task_arithmetic_l0.3.safetensors")
    carried = json.loads((b / "expected" / "carried.json").read_text())
    names = sorted(exp)
    assert names == carried["merged"] and not set(names) & set(carried["carried"])
    base = {n: pre[n] for n in names}
    tasks = json.loads((b / "cases.json").read_text())[0]["tasks"]
    fts = [{n: load_any_f32(b / t / "model.safetensors")[n] for n in names} for t in tasks]
    check_equal(rm.task_arithmetic(base, rm.task_vectors(base, fts), 0.3), exp, "b task_arithmetic")
    unpref = load_any_f32(b / "ft_f32_unprefixed" / "model.safetensors")
    check_equal({"vision_model." + k: v for k, v in unpref.items()}, fts[0], "ft_f32_unprefixed")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    test_hand()
    test_naive_random()
    if FIX.exists():
        test_fixtures_a()
        test_fixtures_b()
    print("reference_merge: all checks passed")
