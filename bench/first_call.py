"""Prefill inside the window: a prompt's first call over the whole window (causal, no mask,
as shipped since 2026-12-07), against chunks from the first token on (each with its mask, as
before), against transformers, in one process.

    python bench/first_call.py --text book.txt                       # 4K and 8K tokens
    python bench/first_call.py --text book.txt --contexts 2048 --rounds 9

The three prefills of the same prompt alternate, one each per round, so that a machine's
drift hits them alike; one torch process holds both engines and the transformers model.
Prints a JSON line per context: the median seconds and tokens/s of each, the rounds' times,
and the largest logit difference between the two tinfinite ways (bfloat16 rounding only).
Needs transformers (requirements-bench.txt).
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from kv_parts import cpu_name
from tinfinite.engine import Engine
from tinfinite.fetch import ensure_default_model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True, help="a long plain-text file")
    p.add_argument("--model")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--contexts", default="4096,8192")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    from transformers import AutoModelForCausalLM

    path = a.model or ensure_default_model()
    window = Engine.load(path, dtype=a.dtype)
    chunks = Engine.load(path, dtype=a.dtype)
    chunks.cache.first_call = chunks.chunk_size     # chunks from the first token, as before
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, a.dtype),
                                              attn_implementation="sdpa").eval()
    ids_all = window.tokenizer.encode_long(Path(a.text).read_text(encoding="utf-8"))

    def transformers_prefill(ids):
        with torch.inference_mode():  # the last position through the head, as bench.py does
            hf(torch.tensor([ids]), use_cache=True, logits_to_keep=1)

    for n in map(int, a.contexts.split(",")):
        ids = ids_all[:n]
        diff = (window.prefill(ids).float() - chunks.prefill(ids).float()).abs().max().item()
        ways = {"first_call_window": window.prefill, "chunks": chunks.prefill,
                "transformers": transformers_prefill}
        times = {name: [] for name in ways}
        for _ in range(a.rounds):
            for name, prefill in ways.items():
                t0 = time.perf_counter()
                prefill(ids)
                times[name].append(time.perf_counter() - t0)
        median = {name: statistics.median(t) for name, t in times.items()}
        print(json.dumps({
            "context_tokens": n, "dtype": a.dtype, "rounds": a.rounds, "cpu": cpu_name(),
            "threads": torch.get_num_threads(), "max_logit_diff": diff,
            **{f"{name}_s": round(s, 3) for name, s in median.items()},
            **{f"{name}_tokens_per_s": round(n / s, 1) for name, s in median.items()},
            "times_s": {name: [round(x, 3) for x in t] for name, t in times.items()}}), flush=True)


if __name__ == "__main__":
    main()
