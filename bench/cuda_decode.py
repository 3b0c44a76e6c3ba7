"""The engine on CUDA with the SDPA backends attention.py names, and with every backend allowed.

    python bench/cuda_decode.py --model weights/random-smollm2-135m    # bench/cuda_check.sh decode

torch's own choice of SDPA backend on CUDA costs ~40 ms per call whose key count is new
(bench/sdpa_backends.py, "growing" rows), and inside the window every decode step's is. This
measures what that does to the engine: decode ms/step (median of 35 steps after 5) inside a
2K window (a 300-token prompt) and past it (3,000 tokens), and prefill tok/s of 1,792 tokens
(inside) and 6,144 (past), bfloat16; first with attention.CUDA_BACKENDS as it is, then with
every backend allowed in every call. A warm-up round runs first and is printed too. The
weights can be random (bench/make_random_llama.py): speed does not depend on them.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinfinite import attention  # noqa: E402
from tinfinite.engine import Engine  # noqa: E402

N_LOCAL = 2048


def measure(engine: Engine, label: str):
    ids = [(7 * i + 3) % 49000 + 2 for i in range(1000)]
    for prompt in (ids[:300], ids * 3):
        times = []
        t = time.perf_counter()
        for _ in engine.generate_ids(prompt, max_new_tokens=40, ignore_eos=True):
            torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - t)
            t = now
        print(json.dumps({"backends": label, "prompt_tokens": len(prompt),
                          "inside_window": len(prompt) + 40 < N_LOCAL,
                          "decode_ms_median": round(statistics.median(times[5:]) * 1e3, 2)}),
              flush=True)
    for n in (1792, 6144):
        engine.cache.reset()
        torch.cuda.synchronize()
        t = time.perf_counter()
        engine.prefill((ids * 7)[:n])
        torch.cuda.synchronize()
        print(json.dumps({"backends": label, "prefill_tokens": n,
                          "inside_window": n < N_LOCAL,
                          "prefill_tok_s": round(n / (time.perf_counter() - t))}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    a = p.parse_args()
    engine = Engine.load(a.model, dtype="bfloat16", device="cuda", n_local=N_LOCAL)
    measure(engine, "warm-up")
    measure(engine, "named (attention.CUDA_BACKENDS)")
    every = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
             SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    attention.CUDA_BACKENDS = {False: every, True: every}
    measure(engine, "every backend allowed")


if __name__ == "__main__":
    main()
