"""The engine on a GPU equals the engine on the CPU: the key checks of the test suite, on CUDA.

    python bench/cuda_check.py [--device cuda] [--out FILE]      # bench/cuda_check.sh runs it

The project's tests run on the CPU (no test is skipped by default), so this script is how a
machine with a GPU is checked. On a tiny random Llama (tests/tiny.py; a 16-token window,
4 starting tokens, 8-token chunks, 80 tokens: the ring wraps, starting tokens leave the
window) it compares the engine on --device against the CPU engine in float32:

    logits           every position's logits, chunk by chunk            rel. diff <= 1e-4
    streaming        chunks of 8 = one token at a time, on the device   rel. diff <= 1e-4
    perplexity       NLL of the whole text                             rel. diff <= 1e-5
    greedy           20 greedy tokens                                  the same tokens
    sampling         temperature 0.8, seed 1: valid ids, the same twice on the device
    bfloat16         bfloat16 on the device vs float32 on the CPU      rel. diff <= 0.15
                     (the CPU's own bfloat16: 0.075 on this random model)
    int8             --quantize int8, device vs CPU                    rel. diff <= 0.05
    full, window     the other attentions                              rel. diff <= 1e-4
    top_k_middle     the retrieval variant (k=3)                       rel. diff <= 1e-4
    no_float64       no operator of a generation makes a float64 tensor on the device

(rel. diff: the largest absolute difference over the largest absolute CPU value.) One JSON
line per check, `ok` true or false; exit status 1 if any check fails. `--device cpu` runs
the same comparisons CPU against CPU (a smoke test of this script).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.tiny import tiny_llama  # noqa: E402
from tinfinite.engine import Engine  # noqa: E402

WINDOW = dict(n_local=16, n_global=4, chunk_size=8)
N_TOKENS = 80


def logits(engine: Engine, ids: list[int]) -> torch.Tensor:
    """Every position's logits (T, vocab), float32 on the CPU, chunk by chunk."""
    cache = engine.cache
    cache.reset()
    T = engine.chunk_size
    with torch.inference_mode():
        return torch.cat([engine.model(engine._tensor(ids[s:s + T]), cache, last_only=False)[0]
                          for s in range(0, len(ids), T)]).float().cpu()


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


class Float64Watch(TorchDispatchMode):
    """Records every operator whose output is a float64 tensor off the CPU."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type != "cpu":
                self.seen.append(str(func))
        return out


def checks(folder: Path, device: str) -> dict:
    """name -> a function returning (value, limit); each loads what it needs."""
    def load(where, dtype="float32", **kw):
        return Engine.load(folder, dtype=dtype, device=where, **{**WINDOW, **kw})

    cpu, dev = load("cpu"), load(device)
    ids = [(7 * i + 3) % (cpu.model.cfg.vocab_size - 2) + 2 for i in range(N_TOKENS)]
    want = logits(cpu, ids)

    def greedy():
        runs = [list(e.generate_ids(ids[:30], max_new_tokens=20, ignore_eos=True))
                for e in (cpu, dev)]
        return float(runs[0] != runs[1]), 0.0

    def sampling():
        runs = [list(dev.generate_ids(ids[:30], max_new_tokens=20, ignore_eos=True,
                                      temperature=0.8, seed=1)) for _ in range(2)]
        valid = all(0 <= t < dev.model.cfg.vocab_size for t in runs[0])
        return float(runs[0] != runs[1] or not valid), 0.0

    def same(limit, **kw):
        return lambda: (rel(logits(load(device, **kw), ids), logits(load("cpu", **kw), ids)),
                        limit)

    def no_float64():
        watch = Float64Watch()
        with watch:
            list(dev.generate_ids(ids, max_new_tokens=4, ignore_eos=True, temperature=0.8,
                                  seed=1))
            dev.perplexity(ids[:40])
        return float(len(watch.seen)), 0.0

    return {
        "logits": lambda: (rel(logits(dev, ids), want), 1e-4),
        "streaming": lambda: (rel(logits(load(device, chunk_size=1), ids), logits(dev, ids)),
                              1e-4),
        "perplexity": lambda: (abs(dev.perplexity(ids).nll - cpu.perplexity(ids).nll)
                               / abs(cpu.perplexity(ids).nll), 1e-5),
        "greedy": greedy,
        "sampling": sampling,
        "bfloat16": lambda: (rel(logits(load(device, "bfloat16"), ids), want), 0.15),
        "int8": same(0.05, quantize="int8"),
        "full": same(1e-4, attention="full", n_global=0, n_local=None),
        "window": same(1e-4, attention="window", n_global=0),
        "top_k_middle": same(1e-4, top_k_middle=3, top_k_from_layer=0),
        "no_float64": no_float64,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", help="also append the JSON lines to this file")
    a = p.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_llama(Path(tmp), max_position_embeddings=64)
        log = open(a.out, "a") if a.out else None
        for name, check in checks(folder, a.device).items():
            try:
                value, limit = check()
                line = {"check": name, "device": a.device, "value": value, "limit": limit,
                        "ok": value <= limit}
            except Exception as e:  # noqa: BLE001 - a crash is this check's result
                line = {"check": name, "device": a.device, "ok": False,
                        "error": f"{type(e).__name__}: {e}"[:500]}
            failed += not line["ok"]
            print(json.dumps(line), flush=True)
            if log:
                log.write(json.dumps(line) + "\n")
        if log:
            log.close()
    print(json.dumps({"checks_failed": failed, "device": a.device,
                      "name": torch.cuda.get_device_name() if a.device.startswith("cuda") else
                      "cpu", "torch": torch.__version__}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
