"""tinfinite's logits against transformers' at a real model size, in float32 (run by hand).

    python bench/make_random_llama.py --shape llama-3.2-1b
    python bench/oracle_size.py --model weights/random-llama-3.2-1b [--tokens 500]

The same as bench/oracle_transformers.py, for a folder of any size (e.g. the Llama-3.2-1B
shapes of bench/make_random_llama.py: 16 layers, grouped-query attention 32/8, head_dim 64,
tied embeddings, RoPE llama3 scaling, theta 500000): one prompt of --tokens token ids inside
the window (where LM-Infinite equals vanilla attention), every position's logits from both
engines in float32, one after the other (transformers first, then freed), compared. Prints
one JSON line: the largest absolute logit difference, the logit scale, greedy agreement,
and `equal` (difference <= 1e-4 of the logit scale). transformers is imported here only.
"""
import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinfinite.engine import Engine  # noqa: E402
from tinfinite.tokenizer import Tokenizer  # noqa: E402

TEXT = " ".join(f"Line {i}: a quick brown fox jumps over {i % 7} lazy dogs." for i in range(400))
TOLERANCE = 1e-4  # of the logit scale: float32 rounding of two orders of summation


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--chunk", type=int, default=128, help="tinfinite's prefill chunk")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    import transformers

    ids = Tokenizer.from_folder(a.model).encode(TEXT)[:a.tokens]
    hf = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    hf = hf.to(a.device).eval()
    with torch.inference_mode():
        want = hf(torch.tensor([ids], device=a.device)).logits[0].float().cpu()  # (T, vocab)
    del hf
    gc.collect()

    ours = Engine.load(a.model, dtype="float32", device=a.device, chunk_size=a.chunk)
    assert len(ids) <= ours.n_local, "the prompt must fit in the window"
    cache = ours.cache
    cache.reset()
    with torch.inference_mode():
        got = torch.cat([ours.model(ours._tensor(ids[s:s + a.chunk]), cache, last_only=False)[0]
                         for s in range(0, len(ids), a.chunk)]).float().cpu()
    diff = (got - want).abs().max().item()
    scale = want.abs().max().item()
    print(json.dumps({"oracle": "transformers " + transformers.__version__, "model": a.model,
                      "device": a.device, "dtype": "float32", "tokens": len(ids),
                      "max_abs_diff": diff, "logit_scale": round(scale, 3),
                      "greedy_agreement": (got.argmax(-1) == want.argmax(-1)).float().mean().item(),
                      "equal": diff <= TOLERANCE * scale}))


if __name__ == "__main__":
    main()
