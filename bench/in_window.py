"""The in-window reference for perplexity by position: the same tokens, scored by the model as
it was trained, i.e. with the context restarted every `window` tokens (never out of its
training length, but with less context on average: window / 2).

    python bench/in_window.py FILE --max-tokens 65536 --window 8192 --bucket 2048 > out.json

Prints one JSON object shaped like `main.py perplexity --json`, so bench/plot_length.py
and the docs/results.md table read it the same way.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tinfinite.engine import Engine  # noqa: E402
from tinfinite.evaluate import Buckets  # noqa: E402
from tinfinite.fetch import ensure_default_model  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("file", nargs="+")
p.add_argument("--model")
p.add_argument("--dtype", default="bfloat16")
p.add_argument("--max-tokens", type=int, default=65536)
p.add_argument("--window", type=int, default=8192)
p.add_argument("--bucket", type=int, default=2048)
a = p.parse_args()

engine = Engine.load(a.model or ensure_default_model(), dtype=a.dtype, attention="full")
text = "".join(Path(f).read_text(encoding="utf-8") for f in a.file)
ids = engine.tokenizer.encode_long(text, a.max_tokens)
buckets, t0 = Buckets(a.bucket), time.perf_counter()
for s in range(0, len(ids) - 1, a.window):
    # A fresh context from ids[s - 1]: it scores positions s .. s + window - 1 (from 1 in the
    # first segment), so every position is scored once, in order.
    seg = ids[max(s - 1, 0):s + a.window]
    for nlls in engine.token_nlls(seg):
        buckets.add(nlls)
total = buckets.total
print(json.dumps({"tokens": total.tokens, "nll": total.nll, "ppl": total.ppl,
                  "attention": f"full, restarted every {a.window}", "dtype": a.dtype,
                  "seconds": round(time.perf_counter() - t0, 2),
                  "buckets": [b.as_dict() for b in buckets.all()]}))
