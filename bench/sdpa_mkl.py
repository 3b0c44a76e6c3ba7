"""Why a decode step's attention is slow on an AMD CPU: the GEMMs of torch's CPU flash kernel.

    python bench/sdpa_mkl.py                     # a decode step's 30 SDPA calls, as they run
    python bench/sdpa_mkl.py --intel-path        # and again with MKL made to take its Intel path
    python bench/sdpa_mkl.py --intel-path --rows 768 --keys 4096 --repeats 5   # prefill chunks

torch's CPU flash-attention kernel walks the keys in blocks of 512 and computes each block's
scores and weighted values with two small GEMMs (3 query rows x 512 keys x 64), which torch
hands to MKL (`cblas_gemm_bf16bf16f32` for bfloat16, sgemm for float32). MKL picks its code
by CPU vendor: on a non-Intel CPU it takes a generic path, whatever instructions the CPU has.
`--intel-path` measures what that costs: it builds a one-line library whose
`mkl_serv_intel_cpu_true` (MKL's internal vendor check) always says yes, and runs the same
calls again in a process that preloads it. That is an experiment, not something tinfinite
does: the symbol is MKL's internal one (docs/decisions.md, "Decode attention on an AMD CPU").

One step = 30 calls, one per layer of the default model: q (1, 3, rows, 64) as cache.py folds
it (3 rows for a decode step, 768 for a 256-token prefill chunk), k and v (1, 3, keys, 64)
distinct per layer (so they come from memory, as in the engine), with an additive mask past
the window and in every chunk. Medians of --repeats steps, milliseconds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64
SHIM = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"


def step_ms(keys: int, rows: int, dtype: torch.dtype, masked: bool, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(LAYERS, 1, KV_HEADS, keys, HEAD_DIM, generator=g).to(dtype) for _ in "kv")
    q = torch.randn(1, KV_HEADS, rows, HEAD_DIM, generator=g).to(dtype)
    mask = None
    if masked:  # what a call past the window sees: some ring slots out of the window
        mask = torch.zeros(1, KV_HEADS, rows, keys, dtype=dtype)
        mask[..., 100:355] = float("-inf")

    def step():
        for layer in range(LAYERS):
            F.scaled_dot_product_attention(q, k[layer], v[layer], attn_mask=mask)
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(a, path: str) -> list[dict]:
    results = []
    for n_rows in a.rows:
        for keys in a.keys:
            for name in a.dtypes:
                masked = n_rows > 3 or keys > a.window  # a prefill chunk is causal: masked
                ms = step_ms(keys, n_rows, getattr(torch, name), masked, a.repeats)
                results.append({"mkl_path": path, "rows": n_rows, "keys": keys, "dtype": name,
                                "mask": masked, "step_ms": round(ms, 2),
                                "threads": torch.get_num_threads()})
    return results


def with_intel_path(argv: list[str]) -> list[dict]:
    """The same measurement in a child process that preloads the vendor-check override."""
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp) / "shim.c", Path(tmp) / "libshim.so"
        src.write_text(SHIM)
        subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o", str(lib), str(src)],
                       check=True)
        env = {**os.environ, "LD_PRELOAD": str(lib)}
        out = subprocess.run([sys.executable, __file__, *argv, "--as-intel"], env=env,
                             check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=lambda s: [int(x) for x in s.split(",")],
                   default=[256, 4096, 8192 + 255 + 64], help="keys per call, comma separated")
    p.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[3],
                   help="query rows per key head, comma separated (3: decode; 768: a chunk)")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["bfloat16", "float32"])
    p.add_argument("--window", type=int, default=8192, help="more keys than this: masked call")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--intel-path", action="store_true",
                   help="also measure with MKL's vendor check overridden (needs a C compiler)")
    p.add_argument("--json", action="store_true", help="one JSON line per measurement")
    p.add_argument("--as-intel", action="store_true", help=argparse.SUPPRESS)  # the child
    a = p.parse_args()
    if a.as_intel:
        for row in measure(a, "intel"):
            print(json.dumps(row), flush=True)
        return
    rows = measure(a, "as shipped")
    if a.intel_path:
        argv = [x for x in sys.argv[1:] if x not in ("--intel-path", "--json")]
        rows += with_intel_path(argv)
    for row in rows:
        print(json.dumps(row) if a.json else
              f"{row['mkl_path']:10} {row['rows']:4} rows {row['keys']:6} keys {row['dtype']:8} "
              f"{'mask' if row['mask'] else 'none':4}  {row['step_ms']:7.2f} ms a step", flush=True)


if __name__ == "__main__":
    main()
