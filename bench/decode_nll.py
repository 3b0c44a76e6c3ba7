"""Perplexity through decode steps: a text fed one token at a time, eager against --compile.

    python bench/decode_nll.py --text book.txt [--dtype bfloat16|int8] [--prompt 512] [--tokens 400]

`perplexity` streams a text in prefill chunks, which --compile leaves eager; this feeds the
text after a --prompt-token prefill one token per call (Engine._decode, the step --compile
compiles) and reports the perplexity of those --tokens tokens, eagerly and compiled, in one
process each (one JSON line each). Same text, same tokens: the two should agree to rounding.
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(a) -> dict:
    from tinfinite.engine import Engine
    quantize = a.dtype if a.dtype in ("int8", "int4") else None
    engine = Engine.load(a.model, dtype="bfloat16" if quantize else a.dtype, quantize=quantize,
                         compile=a.mode == "compiled")
    text = Path(a.text).read_text(encoding="utf-8")[:40 * (a.prompt + a.tokens)]
    ids = engine.tokenizer.encode(text)[:a.prompt + a.tokens + 1]
    t0 = time.perf_counter()
    logits, nll = engine.prefill(ids[:a.prompt]), 0.0
    for i in range(a.prompt, a.prompt + a.tokens):
        nll -= torch.log_softmax(logits.float(), -1)[ids[i]].item()
        logits = engine._decode(ids[i])
    return {"mode": a.mode, "dtype": a.dtype, "prompt": a.prompt, "tokens": a.tokens,
            "ppl": round(math.exp(nll / a.tokens), 4), "seconds": round(time.perf_counter() - t0, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True)
    p.add_argument("--model", default=str(ROOT / "weights/SmolLM2-135M-Instruct"))
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16, int8 or int4")
    p.add_argument("--prompt", type=int, default=512, help="tokens prefilled first")
    p.add_argument("--tokens", type=int, default=400, help="tokens then fed one at a time")
    p.add_argument("--mode", choices=("both", "eager", "compiled"), default="both",
                   help="both (default): an eager process, then a compiled one")
    a = p.parse_args()
    if a.mode != "both":
        print(json.dumps(run(a)), flush=True)
        return
    for mode in ("eager", "compiled"):  # each in a process of its own
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], check=True)


if __name__ == "__main__":
    main()
