"""The machine limit for decoding: memory read bandwidth, and the bytes one decode step reads.

Decoding one token is memory-bandwidth bound (docs/design.md §6): it reads every weight once and
the K/V of every visible position. So the fastest a decode step can be on this machine is

    limit_seconds = bytes_per_decode_step / read_bandwidth

and `limit_fraction = limit_seconds / measured_seconds_per_token` says how close an engine
gets (1.0 = at the limit). Run alone to print the bandwidth as one JSON line:

    python bench/bandwidth.py [--gib 2] [--repeats 7] [--threads N]
"""
import argparse
import json
import os
import statistics
import time


def read_bandwidth(gib: float = 2.0, repeats: int = 7, threads: int | None = None) -> dict:
    """Median GB/s (10^9 bytes/s) of summing a large float32 tensor: a pure streaming read.

    The tensor is far larger than any CPU cache, and a sum does ~1 add per 4 bytes read, well
    below what even one core can compute, so the time is the time to read it from memory.
    """
    import torch  # here, not at the top: bench.py's llama.cpp cases must not pay its memory

    if threads:
        torch.set_num_threads(threads)
    n = int(gib * 2**30) // 4
    t = torch.ones(n, dtype=torch.float32)  # written once: every page is really allocated
    t.sum()                                 # warm-up
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        t.sum()
        seconds.append(time.perf_counter() - t0)
    bytes_read = t.numel() * t.element_size()
    best, median = min(seconds), statistics.median(seconds)
    return {"bandwidth_gb_s": round(bytes_read / median / 1e9, 2),
            "bandwidth_best_gb_s": round(bytes_read / best / 1e9, 2),
            "bandwidth_bytes_read": bytes_read, "bandwidth_repeats": repeats,
            "threads": torch.get_num_threads()}


def kv_bytes(n_layers: int, n_kv_heads: int, slots: int, key_width: int, value_width: int,
             itemsize: float) -> int:
    """Bytes of K and V for `slots` positions in every layer and KV head."""
    return int(n_layers * n_kv_heads * slots * (key_width + value_width) * itemsize)


def tinfinite_step_bytes(param_bytes: int, cfg, context: int, n_global: int, n_local: int,
                         itemsize: int, chunk_size: int = 1) -> int:
    """Weights + the K/V one decode step reads after `context` tokens (tinfinite/cache.py).

    The call reads the filled ring, n_local + chunk_size - 1 slots at most (the extra slots
    are masked but still read), plus, once starting tokens have left the window, their
    n_global slots (values, and zero keys whose scores come through the mask) and the few
    spare ones. So the K/V read stops growing at the window.
    """
    from tinfinite.cache import slot_count
    ring = n_local + chunk_size - 1
    far = n_global > 0 and context > n_local
    slots = slot_count(ring, n_global, 0) if far else min(context, ring)
    return param_bytes + kv_bytes(cfg.n_layers, cfg.n_kv_heads, slots, cfg.head_dim,
                                  cfg.head_dim, itemsize)


def full_cache_step_bytes(param_bytes: int, cfg, context: int, itemsize: float) -> int:
    """Weights + the K/V of every past position (a vanilla cache: HF transformers, llama.cpp)."""
    return param_bytes + kv_bytes(cfg.n_layers, cfg.n_kv_heads, context, cfg.head_dim,
                                  cfg.head_dim, itemsize)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.0, help="size of the tensor read (GiB)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    import torch
    print(json.dumps({"machine_limit": True, **read_bandwidth(a.gib, a.repeats, a.threads),
                      "torch": torch.__version__}),
          flush=True)


if __name__ == "__main__":
    main()
