"""Which scaled_dot_product_attention backend is fastest for each call shape tinfinite makes.

    python bench/sdpa_backends.py                 # the default model's shapes, bfloat16
    python bench/sdpa_backends.py --json > bench/results/sdpa-backends.jsonl

One call = one layer's attention: q (1, Hkv, rows, hd) folded as cache.py folds it, k and v
(1, Hkv, keys, hd), with the mask tinfinite passes for that shape (None where every key is
visible). Each backend that accepts the call is timed (median of --repeats after warm-up);
torch's own choice ("auto") too. The result is written down in docs/decisions.md.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"auto": None, "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}

# (name, query rows per key head, keys, mask, growth): group 3 of the default model (9 heads,
# 3 kv). growth: keys added from one call to the next, as in a run of such calls: inside the
# window every decode step attends over one key more, every prefill chunk over 256 more; past
# it every call has the same shape (all slots, the mask saying which are in the window). It
# matters where a backend prepares per shape (cuDNN on CUDA).
SHAPES = [
    ("decode, 256 in the window", 3, 256, None, 0),
    ("decode, 4K in the window", 3, 4096, None, 0),
    ("decode in the window, growing", 3, 4096, None, 1),
    ("decode past the window", 3, 8192 + 255 + 64, "additive", 0),
    ("prefill chunk in the window", 768, 4096, "additive", 0),
    ("prefill chunk in the window, growing", 768, 4096, "additive", 256),
    ("prefill chunk past the window", 768, 8192 + 255 + 64, "additive", 0),
]


def time_call(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON line per shape and backend")
    a = p.parse_args()
    dtype, dev = getattr(torch, a.dtype), torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    for name, rows, keys, kind, growth in SHAPES:
        repeats = a.repeats if rows < 100 else max(5, a.repeats // 10)
        most = keys + growth * (repeats + 3)  # warm-up calls grow too
        q, k, v = (torch.randn(1, a.kv_heads, n, a.head_dim, generator=g).to(dtype).to(dev)
                   for n in (rows, most, most))
        mask = None
        if kind:  # what the ring's mask looks like: some keys out of each row's window
            mask = torch.zeros(1, a.kv_heads, rows, most, dtype=dtype, device=dev)
            mask[..., keys // 2: keys // 2 + 255] = float("-inf")
        for backend, which in BACKENDS.items():
            calls = iter(range(keys, most + 1, growth) if growth else [])

            def call():
                n = next(calls, keys)
                with sdpa_kernel(which) if which else torch.inference_mode():
                    F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n],
                                                   attn_mask=None if mask is None else
                                                   mask[..., :n])
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            try:
                ms = time_call(call, repeats) * 1e3
            except RuntimeError:
                continue  # this backend does not take this call here
            row = {"shape": name, "rows": rows, "keys": keys, "growth": growth,
                   "mask": kind or "none",
                   "backend": backend, "ms": round(ms, 4), "dtype": a.dtype, "device": a.device,
                   "threads": torch.get_num_threads()}
            print(json.dumps(row) if a.json else
                  f"{name:32} {backend:9} {ms:8.3f} ms", flush=True)


if __name__ == "__main__":
    main()
