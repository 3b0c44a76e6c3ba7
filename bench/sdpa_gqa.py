"""Grouped-query heads on the CPU: folded into rows of their key head, or passed as they are.

    python bench/sdpa_gqa.py                 # the default model's shapes, bfloat16
    python bench/sdpa_gqa.py --dtype float32 # as the cache is on the CPU (settings.KV_DTYPE)
    python bench/sdpa_gqa.py --json > bench/results/sdpa-gqa.jsonl

One "step" = the 30 layers' calls of the default model (9 query heads, 3 key heads, head dim
64), each layer with its own K and V so that no call finds the last one's keys in cache, as in
a real step. "folded": q (1, 3, 3*T, 64) with a mask in that row order, what attention.sdpa
does on the CPU for a decode step; "gqa": q (1, 9, T, 64) with enable_gqa=True and the same
mask viewed per query head, what it does for a prefill chunk. For decode steps also both in
KV_PARTS runs (attention.sdpa_in_parts), as a step attends past the window (folded rows
there). All give the same output (checked). The ways of a shape are
timed in turn, one step each, so that drift hits them alike; medians of --repeats, ms per
step. The result is written down in docs/decisions.md.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from tinfinite.attention import KV_PARTS, sdpa_in_parts

LAYERS, HEADS, KV_HEADS, HEAD_DIM = 30, 9, 3, 64
GROUP = HEADS // KV_HEADS

# (name, query positions T, keys, masked): decode steps and 256-token prefill chunks, inside
# the window (no mask for one row; the causal corner for a chunk) and past it (8K window +
# 255 chunk slots + 64 starting tokens + 1 spare slot, cache.slot_count; with a mask).
SHAPES = [
    ("decode, 256 keys", 1, 256, False),
    ("decode, 2K keys", 1, 2048, False),
    ("decode, 4K keys", 1, 4096, False),
    ("decode past the window", 1, 8192 + 255 + 64 + 1, True),
    ("chunk, 256 keys", 256, 256, False),
    ("chunk, 4K keys", 256, 4096, False),
    ("chunk past the window", 256, 8192 + 255 + 64 + 1, True),
]


def masks(T: int, S: int, masked: bool, dtype: torch.dtype):
    """(folded mask, per-head mask): the same additive mask in the two layouts."""
    if masked:  # some keys out of every row's window, as past the window
        folded = torch.zeros(1, KV_HEADS, GROUP * T, S, dtype=dtype)
        folded[..., S // 3: S // 3 + 255] = float("-inf")
        return folded, folded.view(1, HEADS, T, S)
    if T == 1:
        return None, None
    causal = torch.ones(T, S, dtype=torch.bool).triu(S - T + 1)
    per_head = torch.zeros(T, S, dtype=dtype).masked_fill_(causal, float("-inf"))
    return per_head.repeat(GROUP, 1), per_head


def medians_ms(ways: dict, repeats: int) -> dict:
    """{name: median ms} of the ways (name: function), called in turn, one call each."""
    times = {name: [] for name in ways}
    for fn in ways.values():
        fn()
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: round(statistics.median(t) * 1e3, 3) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", action="store_true", help="one JSON line per shape")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, T, S, masked in SHAPES:
            k, v = (torch.randn(LAYERS, 1, KV_HEADS, S, HEAD_DIM, generator=g).to(dtype)
                    for _ in range(2))
            q = torch.randn(1, HEADS, T, HEAD_DIM, generator=g).to(dtype)
            q_folded = q.reshape(1, KV_HEADS, GROUP * T, HEAD_DIM)
            m_folded, m_head = masks(T, S, masked, dtype)
            ways = {
                "folded": lambda layer: F.scaled_dot_product_attention(
                    q_folded, k[layer], v[layer], attn_mask=m_folded),
                "gqa": lambda layer: F.scaled_dot_product_attention(
                    q, k[layer], v[layer], attn_mask=m_head, enable_gqa=True)}
            if T == 1:
                none = torch.zeros(1, 1, 1, S, dtype=dtype)  # the runs' kernel wants a mask
                ways["folded_runs"] = lambda layer: sdpa_in_parts(
                    q_folded, k[layer], v[layer], none if m_folded is None else m_folded, KV_PARTS)
                ways["gqa_runs"] = lambda layer: sdpa_in_parts(
                    q, k[layer], v[layer], none if m_head is None else m_head, KV_PARTS)
            want = ways["gqa"](0).float()
            for way_name, way in ways.items():
                err = (way(0).reshape(want.shape).float() - want).abs().max().item()
                assert err < 2e-2, f"{name}: {way_name} and gqa disagree by {err}"

            def step(way):
                return lambda: [way(layer) for layer in range(LAYERS)]
            repeats = a.repeats if T == 1 else max(3, a.repeats // 3)
            row = {"shape": name, "T": T, "keys": S, "mask": masked, "dtype": a.dtype,
                   "threads": torch.get_num_threads()}
            row |= {f"{way_name}_ms": ms for way_name, ms in
                    medians_ms({n: step(w) for n, w in ways.items()}, repeats).items()}
            print(json.dumps(row) if a.json else f"{name:24} " + "  ".join(
                f"{key[:-3]} {ms:8.2f}" for key, ms in row.items() if key.endswith("_ms"))
                + " ms/step", flush=True)


if __name__ == "__main__":
    main()
