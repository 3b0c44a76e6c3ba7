"""Why a 16K passkey prompt fails under Λ attention when its key is inside the window.

    python bench/passkey_ceiling.py [--seed 2]

Asks the same question (bench/length_runs.sh's pk_lambda, seed 2) three ways, greedy:
the last 8192 tokens alone (the truncation baseline); the 10 starting tokens + the last 8192
(the starting tokens beyond the window, so all ten are seen at the ceiling, distance 8192,
as LM-Infinite's rule says); the 10 starting tokens + the last 8182 (all within the window,
so the starting tokens sit at their true distances 8182-8191).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tinfinite.engine import Engine  # noqa: E402
from tinfinite.evaluate import first_integer, passkey_prompt, passkey_trials  # noqa: E402
from tinfinite.fetch import ensure_default_model  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--seed", type=int, default=2)
p.add_argument("--dtype", default="bfloat16")
a = p.parse_args()
e = Engine.load(ensure_default_model(), dtype=a.dtype)
length, depth, key = passkey_trials([16384], 1, a.seed)[0]
ids = e.tokenizer.encode(passkey_prompt(e.tokenizer, length, depth, key).text)
for label, prompt in (("last 8192 (truncation)", ids[-8192:]),
                      ("10 starting + last 8192 (starting tokens at the ceiling)",
                       ids[:10] + ids[-8192:]),
                      ("10 starting + last 8182 (starting tokens at true distances)",
                       ids[:10] + ids[-8182:])):
    out = e.tokenizer.decode(list(e.generate_ids(prompt, max_new_tokens=8)))
    print(f"{label}: {out!r} {'ok' if first_integer(out) == key else 'WRONG'}")
