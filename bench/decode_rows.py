"""A decode step's attention on the CPU: the query heads folded into rows of their key head
(attention.sdpa since 2026-12-07), or passed as they are with enable_gqa (before).

    python bench/decode_rows.py                       # default model, bfloat16, 256 to 16K
    python bench/decode_rows.py --contexts 4096,16384 --steps 80

For each context the cache is filled synthetically (size_bench.fill_tinfinite), then eager
decode steps alternate between the two ways, one step each, in one process, so that a
machine's drift hits both alike (compiled steps are specialised on the code they traced, and
bench.py measures the engine as shipped). Past the window both attend in the cache's
kv_parts runs. Prints a JSON line per context: the medians of --steps steps of each, in ms.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import tinfinite.cache
from kv_parts import cpu_name
from size_bench import fill_tinfinite
from tinfinite.attention import sdpa, sdpa_in_parts
from tinfinite.engine import Engine


def per_query_head(q, k, v, mask, parts=1):
    """attention.sdpa as it was for a decode step on the CPU: q (B, H, 1, hd) as it is."""
    B, H, T, hd = q.shape
    if T > 1:
        return sdpa(q, k, v, mask, parts)
    if mask is not None and mask.dim() == 4:
        mask = mask.view(B, H, T, mask.shape[-1])
    if parts > 1:
        return sdpa_in_parts(q, k, v, mask, parts)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="weights/SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--contexts", default="256,4096,9000,16384")
    p.add_argument("--steps", type=int, default=60, help="steps of each way per context")
    a = p.parse_args()
    engine = Engine.load(a.model, dtype=a.dtype)
    cache, x = engine.cache, torch.tensor([[1000]])
    ways = {"folded": sdpa, "per_query_head": per_query_head}
    for context in map(int, a.contexts.split(",")):
        fill_tinfinite(engine, context)
        times = {name: [] for name in ways}
        with torch.inference_mode():
            for i in range(2 * (a.steps + 3)):
                name = list(ways)[i % 2]
                tinfinite.cache.sdpa = ways[name]  # what cache.attend calls
                t0 = time.perf_counter()
                engine.model(x, cache)
                if i >= 6:  # 3 warm-up steps of each
                    times[name].append(time.perf_counter() - t0)
        tinfinite.cache.sdpa = sdpa
        print(json.dumps({"context": context, "dtype": a.dtype,
                          "kv_dtype": str(cache.dtype).removeprefix("torch."), "steps": a.steps,
                          "threads": torch.get_num_threads(), "cpu": cpu_name()}
                         | {f"ms_{name}": round(statistics.median(t) * 1e3, 2)
                            for name, t in times.items()}), flush=True)


if __name__ == "__main__":
    main()
