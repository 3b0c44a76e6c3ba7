"""Why Λ misses a 16K passkey whose key is inside the window, when truncation finds it.

    python bench/passkey_inside.py [--trials 8] [--seed 11] > bench/results/pk16in_why.json

The questions of bench/passkey_grid.sh's "inside" band (16K tokens, keys 1.9K-6.5K back).
The query sees the same window of the last n_local tokens in both modes; they differ in two
ways: Λ also sees the starting tokens (at the ceiling distance), and Λ's window tokens were
themselves computed from the text before them (their starting tokens and their own windows),
where a truncated prompt's first tokens saw nothing before them. Each question is asked as:

- stream: the whole prompt under Λ (tinfinite's default);
- start+window: a fresh prompt of the starting tokens and the last n_local tokens, under Λ:
  the starting tokens as in stream, the history not;
- window: the last n_local tokens alone (truncation): neither.

For each: the greedy answer (16 new tokens, so an answer after a restated question counts),
and the key's log-probability right after the question, teacher-forced (a graded measure
that 8 questions of right/wrong cannot give).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tinfinite.engine import Engine  # noqa: E402
from tinfinite.evaluate import (KEY_LINE, common_prefix, first_integer,  # noqa: E402
                                passkey_prompt, passkey_trials)
from tinfinite.fetch import ensure_default_model  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--trials", type=int, default=8)
p.add_argument("--seed", type=int, default=11)
p.add_argument("--min-depth", type=float, default=0.57)
p.add_argument("--max-depth", type=float, default=0.94)
p.add_argument("--length", type=int, default=16384)
p.add_argument("--new-tokens", type=int, default=16)
p.add_argument("--dtype", default="bfloat16")
p.add_argument("--ways", default="stream,start+window,window",
               help="which of the ways above, comma-separated")
p.add_argument("--start-distances", default="ceiling",
               help="where the starting tokens beyond the window are seen (the engine's "
                    "--start-distances: capped, ceiling, spread or a distance N); default: "
                    "the paper's ceiling, the rule this diagnostic is about")
a = p.parse_args()
WAYS = a.ways.split(",")
rule = int(a.start_distances) if a.start_distances.isdigit() else a.start_distances
e = Engine.load(ensure_default_model(), dtype=a.dtype, start_distances=rule)
n, g = e.n_local, e.n_global


def answer(last: int, key: int) -> dict:
    """Ask with the cache holding the prompt but its last token `last`: the greedy answer, and
    the key's log-probability teacher-forced after the prompt."""
    state = e.snapshot()
    out = e.tokenizer.decode(list(e.generate_ids([last], max_new_tokens=a.new_tokens,
                                                 resume=True)))
    e.restore(state)
    key_ids = e.tokenizer.encode(f" {key}")
    with torch.inference_mode():
        logits = e.model(torch.tensor([[last] + key_ids[:-1]]), e.cache, last_only=False)[0]
    nll = F.cross_entropy(logits.float(), torch.tensor(key_ids), reduction="sum").item()
    return {"key_logprob": -nll, "generated": out, "correct": first_integer(out) == key}


rows, held, state = [], None, None
for length, depth, key in sorted(passkey_trials([a.length], a.trials, a.seed,
                                                (a.min_depth, a.max_depth)), key=lambda t: t[1]):
    prompt = passkey_prompt(e.tokenizer, length, depth, key).text
    ids = e.tokenizer.encode(prompt)
    split = common_prefix(ids, e.tokenizer.encode(prompt[:prompt.index(KEY_LINE[:15])]))
    row = {"key": key, "depth": round(depth, 4), "tokens": len(ids),
           "key_distance": len(ids) - split}
    if "stream" in WAYS:  # the filler before the key is shared with the previous question
        if held is not None and ids[:len(held)] == held:
            e.restore(state)
            if split > len(held):  # two keys at the same depth share all of it
                e.prefill(ids[len(held):split], resume=True)
        else:
            e.prefill(ids[:split])
        held, state = ids[:split], e.snapshot()
        e.prefill(ids[split:-1], resume=True)
        row["stream"] = answer(ids[-1], key)
    for name, part in (("start+window", ids[:g] + ids[-n:-1]), ("window", ids[-n:-1])):
        if name in WAYS:
            e.prefill(part)
            row[name] = answer(ids[-1], key)
    for name in WAYS:
        print(f"{key} {name}: {row[name]}", file=sys.stderr, flush=True)
    rows.append(row)

summary = {name: {"correct": sum(r[name]["correct"] for r in rows),
                  "median_key_logprob": sorted(r[name]["key_logprob"] for r in rows)[len(rows) // 2]}
           for name in WAYS}
print(json.dumps({"n_local": n, "n_global": g, "length": a.length, "seed": a.seed,
                  "start_distances": e.start_distances,
                  "summary": summary, "trials": rows}, indent=1))
