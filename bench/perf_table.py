"""docs/results.md's performance tables, from the JSON lines the benchmarks printed.

    python bench/perf_table.py bench/results/perf-*.jsonl      # bench.py: "Performance"
    python bench/perf_table.py bench/results/threads-*.jsonl   # busy.py: "Busy machines"
    python bench/perf_table.py bench/results/size-*.jsonl      # size_bench.py: "Real sizes"

Reads the `"summary": true` lines (medians over a context's rounds, or over a setting's
repeats) and the machine limit; prints the measured table, then the ratios the targets are
stated in, each from one run. Nothing is typed by hand.
"""
import json
import sys
from pathlib import Path

NAMES = {"tinfinite": "tinfinite", "hf": "HF", "llamacpp": "llama.cpp"}
IMPL_NAMES = {**NAMES, "tinfinite-int8": "tinfinite int8", "tinfinite-int4": "tinfinite int4",
              "hf": "transformers"}
DTYPES = {"int8": "int8 weights", "int4": "int4 weights (int8 head)"}


def dtype_name(dtype: str) -> str:
    """bench.py's dtype entry as a table says it ("int8+compile": "int8 weights, compiled")."""
    base, compiled = dtype.removesuffix("+compile"), dtype.endswith("+compile")
    return DTYPES.get(base, base) + (", compiled" if compiled else "")


def read(paths):
    rows, machines = [], []
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            if r.get("summary") or r.get("case") in ("load", "decode", "decode_step"):
                rows.append(r)
            elif r.get("machine_limit") or r.get("machine_limit_end"):
                machines.append(r["bandwidth_gb_s"])
    return rows, machines


def threads(rows):
    """bench/busy.py: decode tokens/s per thread setting under each load, and the ratios."""
    print("| impl | setting | dtype | quiet tok/s | one core busy | two together (each) "
          "| busy / quiet | pair / quiet |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        def cell(load):
            n = r.get(f"{load}_threads")
            return f"{r[f'{load}_tokens_per_s']:.1f} ({'/'.join(map(str, n))} thr)" if n else \
                f"{r[f'{load}_tokens_per_s']:.1f}"
        print(f"| {NAMES[r['impl']]} | {r['candidate']} | {r['dtype']} | {cell('quiet')} | "
              f"{cell('busy')} | {cell('pair')} | {r['busy_over_quiet']:.2f} | "
              f"{r['pair_over_quiet']:.2f} |")


def measured(rows):
    print("| context | impl | dtype | prefill tok/s | decode ms/token | peak RSS MB | limit |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: (r["context_tokens"], r["impl"] != "tinfinite",
                                         r["impl"], r["dtype"])):
        context = f"{r['context_tokens']:,}"
        if r.get("prefill_tokens", r["context_tokens"]) != r["context_tokens"]:
            context += f" (prefill timed on {r['prefill_tokens']:,})"
        print(f"| {context} | {NAMES[r['impl']]} | {dtype_name(r['dtype'])} | "
              f"{r['prefill_tokens_per_s']:.0f} | {r['decode_ms_per_token']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['limit_fraction']:.2f} |")


def ratios(rows):
    by = {(r["impl"], r["dtype"], r["context_tokens"]): r for r in rows}
    print("| context | dtype | decode speed vs HF | prefill speed vs HF | peak RSS / HF's "
          "| decode ms / llama.cpp's |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for (impl, dtype, n), r in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if impl != "tinfinite":
            continue
        hf, cpp = by.get(("hf", dtype.removesuffix("+compile"), n)), by.get(("llamacpp", "q4_1", n))
        if not hf and not cpp:
            continue  # tinfinite alone (128K, 1M)
        cells = ["—"] * 3
        if hf:
            cells = [f"{hf['decode_ms_per_token'] / r['decode_ms_per_token']:.2f}x",
                     f"{r['prefill_tokens_per_s'] / hf['prefill_tokens_per_s']:.2f}x",
                     f"{r['peak_rss_mb'] / hf['peak_rss_mb']:.2f}"]
        vs_cpp = f"{r['decode_ms_per_token'] / cpp['decode_ms_per_token']:.2f}" if cpp else "—"
        print(f"| {n:,} | {dtype_name(dtype)} | {' | '.join(cells)} | {vs_cpp} |")


def sizes(rows):
    """bench/size_bench.py: loading (wall, peak RSS against the target) and decoding (ms/token,
    the bandwidth share, the speed against transformers) of real-size checkpoints."""
    name = lambda r: Path(r["model"]).name  # noqa: E731
    print("| model | load | seconds | peak RSS MB | checkpoint MB | target MB (1.25 x + 600) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r.get("case") == "load" and "peak_rss_mb" in r:
            print(f"| {name(r)} | {r['quantize'] or r['dtype']} | {r['load_seconds']:.1f} | "
                  f"{r['peak_rss_mb']} | {r['checkpoint_mb']} | {r.get('target_peak_mb', '—')} |")
    print()
    print("| model | context | impl | cache | decode ms/token | bandwidth limit ms | "
          "share of the limit |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    steps = [r for r in rows if r.get("case") == "decode_step"]
    for r in steps:
        print(f"| {name(r)} | {r['context_tokens']:,} | {IMPL_NAMES[r['impl']]} | {r['fill']} | "
              f"{r['decode_ms_per_token']:.1f} | {r['limit_ms_per_token']:.1f} | "
              f"{r['bandwidth_share']:.2f} |")
    print()
    print("| model | context | tinfinite vs transformers | tinfinite: this context / 256 |")
    print("| --- | ---: | ---: | ---: |")
    ms = {(name(r), r["impl"], r["context_tokens"]): r["decode_ms_per_token"] for r in steps}
    for (model, impl, n), ours in ms.items():
        hf = ms.get((model, "hf", n))
        if impl == "tinfinite" and hf:
            print(f"| {model} | {n:,} | {hf / ours:.2f}x | {ours / ms[(model, impl, 256)]:.2f} |")


def main():
    rows, machines = read(sys.argv[1:])
    if not rows:
        sys.exit("no summary lines in the given files")
    if machines:
        print(f"Read bandwidth measured during these runs: {min(machines):.1f}-"
              f"{max(machines):.1f} GB/s.\n")
    if any("candidate" in r for r in rows):
        threads([r for r in rows if "candidate" in r])
    elif any("case" in r for r in rows):
        sizes(rows)
    else:
        measured(rows)
        print()
        ratios(rows)


if __name__ == "__main__":
    main()
