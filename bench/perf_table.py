"""docs/results.md's performance tables, from the JSON lines bench/bench.py printed.

    python bench/perf_table.py bench/results/perf-*.jsonl     # docs/results.md, "Performance"

Reads the `"summary": true` lines (medians over a context's rounds) and the machine limit;
prints the measured table, then the ratios the targets are stated in, each from one run.
Nothing is typed by hand.
"""
import json
import sys

NAMES = {"tinfinite": "tinfinite", "hf": "HF", "llamacpp": "llama.cpp"}
DTYPES = {"int8": "int8 weights"}


def read(paths):
    rows, machines = [], []
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            if r.get("summary"):
                rows.append(r)
            elif r.get("machine_limit") or r.get("machine_limit_end"):
                machines.append(r["bandwidth_gb_s"])
    return rows, machines


def measured(rows):
    print("| context | impl | dtype | prefill tok/s | decode ms/token | peak RSS MB | limit |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: (r["context_tokens"], r["impl"] != "tinfinite",
                                         r["impl"], r["dtype"])):
        context = f"{r['context_tokens']:,}"
        if r.get("prefill_tokens", r["context_tokens"]) != r["context_tokens"]:
            context += f" (prefill timed on {r['prefill_tokens']:,})"
        print(f"| {context} | {NAMES[r['impl']]} | {DTYPES.get(r['dtype'], r['dtype'])} | "
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
        hf, cpp = by.get(("hf", dtype, n)), by.get(("llamacpp", "q4_1", n))
        if not hf and not cpp:
            continue  # tinfinite alone (128K, 1M)
        cells = ["—"] * 3
        if hf:
            cells = [f"{hf['decode_ms_per_token'] / r['decode_ms_per_token']:.2f}x",
                     f"{r['prefill_tokens_per_s'] / hf['prefill_tokens_per_s']:.2f}x",
                     f"{r['peak_rss_mb'] / hf['peak_rss_mb']:.2f}"]
        vs_cpp = f"{r['decode_ms_per_token'] / cpp['decode_ms_per_token']:.2f}" if cpp else "—"
        print(f"| {n:,} | {DTYPES.get(dtype, dtype)} | {' | '.join(cells)} | {vs_cpp} |")


def main():
    rows, machines = read(sys.argv[1:])
    if not rows:
        sys.exit("no summary lines in the given files")
    if machines:
        print(f"Read bandwidth measured during these runs: {min(machines):.1f}-"
              f"{max(machines):.1f} GB/s.\n")
    measured(rows)
    print()
    ratios(rows)


if __name__ == "__main__":
    main()
