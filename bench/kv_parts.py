"""A decode step past the window, its slots attended in one run or in KV_PARTS runs (CPU).

    python bench/kv_parts.py                        # default model, bfloat16, 9K and 16K
    python bench/kv_parts.py --contexts 4096,9000 --steps 60
    python bench/kv_parts.py --kv-dtype bfloat16        # the cache in the model's bfloat16

For each context the cache is filled synthetically (size_bench.fill_tinfinite), then decode
steps alternate between cache.kv_parts = 1 and KV_PARTS, one step each, in one process, so a
machine's drift over the run hits both alike. Prints a JSON line per context: the medians of
--steps steps of each, in ms. Eager steps only: a compiled step is specialised on kv_parts,
and bench.py measures the engine as shipped. (At a context inside the window the steps attend
without a mask in one run whatever kv_parts says: both columns then time the same thing.)
"""
import argparse
import json
import os
import statistics
import time

import torch

from size_bench import fill_tinfinite
from tinfinite.attention import KV_PARTS
from tinfinite.engine import Engine


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="weights/SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--kv-dtype", default="auto", help="the engine's kv_dtype (auto: float32 on the CPU)")
    p.add_argument("--contexts", default="9000,16384")
    p.add_argument("--steps", type=int, default=60, help="steps of each setting per context")
    a = p.parse_args()
    engine = Engine.load(a.model, dtype=a.dtype, kv_dtype=a.kv_dtype)
    cache, x = engine.cache, torch.tensor([[1000]])
    for context in map(int, a.contexts.split(",")):
        fill_tinfinite(engine, context)
        times = {1: [], KV_PARTS: []}
        with torch.inference_mode():
            for i in range(2 * (a.steps + 3)):
                cache.kv_parts = 1 if i % 2 == 0 else KV_PARTS
                t0 = time.perf_counter()
                engine.model(x, cache)
                if i >= 6:  # 3 warm-up steps of each
                    times[cache.kv_parts].append(time.perf_counter() - t0)
        print(json.dumps({"context": context, "dtype": a.dtype,
                          "kv_dtype": str(cache.dtype).removeprefix("torch."), "steps": a.steps,
                          "threads": torch.get_num_threads(), "cpu": cpu_name(),
                          "ms_one_run": round(statistics.median(times[1]) * 1e3, 2),
                          f"ms_{KV_PARTS}_runs": round(statistics.median(times[KV_PARTS]) * 1e3, 2)}),
              flush=True)


def cpu_name() -> str:
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
