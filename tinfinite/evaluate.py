"""Length generalisation, measured: perplexity by position, and passkey retrieval.

Perplexity is streamed (engine.token_nlls) and summed into fixed-size buckets of positions,
so a 1M-token run keeps a few numbers per bucket, never a number per token. The passkey task
is the one of the paper (Han et al. 2023, §5.2, after Mohtashami & Jaggi 2023): a key hidden
at some depth of a long, dull filler text, asked for at the end.
"""
import math
import random
import re
from dataclasses import dataclass, field

import torch

# ---------------------------------------------------------------- perplexity by position


@dataclass
class Bucket:
    """Predicted tokens at stream positions [start, end) (position p = ids[p] given ids[:p])."""
    start: int
    end: int
    tokens: int = 0
    nll: float = 0.0

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "tokens": self.tokens, "nll": self.nll,
                "ppl": self.ppl}


@dataclass
class Buckets:
    """Running per-bucket and cumulative NLL of a stream of per-token NLLs."""
    size: int
    done: list[Bucket] = field(default_factory=list)  # full buckets, in order
    current: Bucket | None = None
    position: int = 1                                   # the next NLL predicts ids[position]

    def add(self, nlls: torch.Tensor) -> list[Bucket]:
        """Add the NLLs of the next len(nlls) positions; return the buckets this completed."""
        completed, i = [], 0
        while i < len(nlls):
            if self.current is None:
                start = self.position // self.size * self.size
                self.current = Bucket(start, start + self.size)
            n = min(len(nlls) - i, self.current.end - self.position)
            self.current.tokens += n
            self.current.nll += nlls[i:i + n].sum().item()
            self.position += n
            i += n
            if self.position == self.current.end:
                completed.append(self.current)
                self.done.append(self.current)
                self.current = None
        return completed

    def all(self) -> list[Bucket]:
        """Every bucket so far, the last one possibly partial."""
        return self.done + ([self.current] if self.current else [])

    @property
    def total(self) -> Bucket:
        """All positions so far, as one bucket."""
        return _sum(self.all(), self.position)

    def upto(self, bucket: Bucket) -> Bucket:
        """Cumulative: all positions up to the end of a completed bucket, as one bucket."""
        return _sum(self.done[:self.done.index(bucket) + 1], bucket.end)


def _sum(buckets: list[Bucket], end: int) -> Bucket:
    return Bucket(1, end, sum(b.tokens for b in buckets), sum(b.nll for b in buckets))


def perplexity_by_position(engine, ids: list[int], every: int, on_bucket=None,
                           progress=None) -> Buckets:
    """Stream ids through the engine; call on_bucket(bucket, buckets) as each bucket fills and
    progress(tokens done, tokens total) after each chunk."""
    buckets = Buckets(every)
    for nlls in engine.token_nlls(ids):
        for b in buckets.add(nlls):
            if on_bucket:
                on_bucket(b, buckets)
        if progress:
            progress(buckets.position - 1, len(ids) - 1)
    return buckets


# ---------------------------------------------------------------- passkey retrieval

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize them. I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


@dataclass
class PasskeyPrompt:
    text: str
    key: int
    depth: float         # where the key line sits, as a fraction of the filler (0 = start)


def passkey_prompt(tokenizer, length: int, depth: float, key: int) -> PasskeyPrompt:
    """The paper's prompt, with as many filler sentences as fit in `length` tokens.

    TASK, then fillers with the key line after round(depth * n) of the n fillers, then QUESTION.
    """
    def count(text):
        return len(tokenizer.encode(text))
    fixed = count(" ".join([TASK, KEY_LINE.format(key=key), QUESTION]))
    per_filler = count(" ".join([FILLER] * 64)) / 64
    n = max(0, int((length - fixed) / per_filler))
    while n and count(_passkey_text(n, round(depth * n), key)) > length:
        n -= 1  # the estimate can be a filler or two over
    return PasskeyPrompt(_passkey_text(n, round(depth * n), key), key, depth)


def _passkey_text(n_filler: int, at: int, key: int) -> str:
    parts = [TASK] + [FILLER] * at + [KEY_LINE.format(key=key)] + \
        [FILLER] * (n_filler - at) + [QUESTION]
    return " ".join(parts)


def first_integer(text: str) -> int | None:
    """The answer: the first integer in the generated text (None if there is none)."""
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def passkey_trials(lengths: list[int], trials: int, seed: int, depths=(0.0, 1.0)):
    """[(length, depth, key)] for every trial: depths uniform in [depths], 5-digit keys.

    A function of the arguments alone, so every attention mode is asked the same questions."""
    rng = random.Random(seed)
    lo, hi = depths
    return [(n, lo + (hi - lo) * rng.random(), rng.randint(10000, 99999))
            for n in lengths for _ in range(trials)]


def run_passkey(engine, length: int, depth: float, key: int, truncate: bool = False,
                max_new_tokens: int = 8) -> dict:
    """Ask one passkey question greedily; the result as a JSON-ready dict.

    truncate: the baseline of the paper's Table 3, a vanilla model that sees only the last
    n_local tokens of the prompt.
    """
    return run_passkeys(engine, [(length, depth, key)], truncate, max_new_tokens)[0]


def run_passkeys(engine, trials: list[tuple], truncate: bool = False, max_new_tokens: int = 8,
                 on_result=None) -> list[dict]:
    """Ask every (length, depth, key) trial; the results in the trials' order, on_result(r)
    as each comes.

    The prompts share their filler up to the key line, so the trials run in order of depth
    and the shared part is read once: the cache is snapshotted where each trial's key line
    starts, the trial continues from there, and the next one goes on from the snapshot.
    Streaming a text in pieces computes what one pass does (tests/test_model.py), so this
    changes the cost, not the answers. (truncate reads each prompt's tail alone.)"""
    asked = []
    for i, (length, depth, key) in enumerate(trials):
        prompt = passkey_prompt(engine.tokenizer, length, depth, key)
        ids = engine.tokenizer.encode(prompt.text)
        before = engine.tokenizer.encode(prompt.text[:prompt.text.index(KEY_LINE[:15])])
        split = common_prefix(ids, before)       # the ids before the key line's first token
        asked.append((split, i, length, depth, key, ids))
    results: list[dict | None] = [None] * len(trials)
    state, held = None, []   # a snapshot of the cache after reading the ids `held`
    for split, i, length, depth, key, ids in sorted(asked):
        distance = len(ids) - split   # tokens from the key line to the end of the prompt
        if truncate:
            ids, split = ids[-engine.n_local:], 0
        prefix = ids[:split]
        if state is not None and split and prefix[:len(held)] == held:
            engine.restore(state)
            if len(prefix) > len(held):
                engine.prefill(prefix[len(held):], resume=True)
        elif split:
            engine.prefill(prefix)
        if split:
            state, held = engine.snapshot(), prefix
        out = list(engine.generate_ids(ids[split:], max_new_tokens=max_new_tokens,
                                       resume=split > 0))
        text = engine.tokenizer.decode(out)
        answer = first_integer(text)
        results[i] = {"length": length, "tokens": len(ids), "depth": round(depth, 4),
                      "key": key, "answer": answer, "correct": answer == key,
                      "generated": text, "key_distance": distance,
                      "key_in_window": distance <= engine.n_local}
        if on_result:
            on_result(results[i])
    return results


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def depth_bin(depth: float, bins: int = 5) -> str:
    """'0.0-0.2' style label of the depth bin a trial falls in."""
    i = min(int(depth * bins), bins - 1)
    return f"{i / bins:.1f}-{(i + 1) / bins:.1f}"


def summarise(results: list[dict]) -> dict:
    """Accuracy per length, and per length and depth bin."""
    acc, by_depth = {}, {}
    for r in results:
        n = str(r["length"])
        acc.setdefault(n, []).append(r["correct"])
        by_depth.setdefault(n, {}).setdefault(depth_bin(r["depth"]), []).append(r["correct"])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"accuracy": {n: mean(v) for n, v in acc.items()},
            "accuracy_by_depth": {n: {b: mean(v) for b, v in sorted(d.items())}
                                  for n, d in by_depth.items()}}
