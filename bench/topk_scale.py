"""What top-k middle attention costs as the input grows: memory and time per decode step.

    python bench/topk_scale.py --tokens 16384 65536 262144 --blocks 0 64 --json \\
        > bench/results/topk-scale-$(date +%F).jsonl
    python bench/topk_scale.py --tokens 1000000 --blocks 64 0 --offload /var/tmp --no-plain \\
        --steps 3 --json >> bench/results/topk-scale-$(date +%F).jsonl

For each length N and --top-k-block setting (0 = score every middle token), in a fresh
process: the default model in bfloat16 with --top-k-middle 5 and the default 8K window, its
cache filled as if N tokens had been read (random keys and values through the cache's own
store(), size_bench.fill_tinfinite: a step costs what it costs after a real prefill), then
--steps decode steps timed. Reports the median step, the resident memory after the fill, and
the top-k buffers' bytes. The plain Λ engine's step is measured the same way as the baseline.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from cases import run_case_process  # noqa: E402
from size_bench import fill_tinfinite, vm  # noqa: E402


def case(spec: dict) -> dict:
    from tinfinite.engine import Engine
    top_k = 5 if spec["block"] is not None else 0
    engine = Engine.load(spec["model"], dtype="bfloat16", top_k_middle=top_k,
                         top_k_block=spec["block"] or 0,
                         top_k_offload=spec["offload"] if top_k else None)
    t0 = time.perf_counter()
    fill_tinfinite(engine, spec["tokens"])
    fill_s = time.perf_counter() - t0
    rss, anon, file = vm("VmRSS"), vm("RssAnon"), vm("RssFile")
    cache = engine.cache
    topk_bytes = sum(t.numel() * t.element_size() for t in
                     (getattr(cache, n, None) for n in ("every_key", "every_value", "block_keys"))
                     if t is not None)
    gen = engine.generate_ids([1000], max_new_tokens=spec["steps"] + 1, ignore_eos=True,
                              resume=True)
    next(gen)
    gaps, t0 = [], time.perf_counter()
    for _ in gen:
        gaps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return {"tokens": spec["tokens"], "top_k_middle": top_k, "top_k_block": spec["block"],
            "offload": bool(spec["offload"] and top_k), "fill_s": round(fill_s, 1),
            "step_ms": round(statistics.median(gaps) * 1e3, 2), "rss_mb": round(rss),
            "rss_anon_mb": round(anon), "rss_file_mb": round(file),
            "peak_rss_mb": round(vm("VmHWM")), "topk_buffers_mb": round(topk_bytes / 2**20)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "weights/SmolLM2-135M-Instruct"))
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 64],
                   help="--top-k-block settings to measure (0: every middle token)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--offload", metavar="DIR", help="top-k with --top-k-offload DIR")
    p.add_argument("--no-plain", action="store_true", help="skip the plain Λ baseline")
    p.add_argument("--json", action="store_true")
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process (cases.py)
    a = p.parse_args()
    if a.case:
        print(json.dumps(case(json.loads(a.case))))
        return
    for n in a.tokens:
        for block in [*([] if a.no_plain else [None]), *a.blocks]:  # None: plain Λ
            spec = {"model": a.model, "tokens": n, "block": block, "steps": a.steps,
                    "offload": a.offload}
            row = run_case_process(__file__, spec, timeout=3600)
            if "skipped" in row:
                print(json.dumps({**spec, **row}) if a.json else f"{spec}: {row['skipped']}")
                continue
            print(json.dumps(row) if a.json else
                  f"{n:>8} tokens  {'plain' if block is None else f'top-5, block {block}':>16}: "
                  f"{row['step_ms']:8.1f} ms/step  RSS {row['rss_mb']:6} MB (anon "
                  f"{row['rss_anon_mb']}, file {row['rss_file_mb']})  top-k buffers "
                  f"{row['topk_buffers_mb']} MB{' offloaded' if row['offload'] else ''}",
                  flush=True)


if __name__ == "__main__":
    main()
