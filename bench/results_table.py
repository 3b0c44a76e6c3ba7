"""Markdown tables for docs/results.md's length-generalisation results, from bench/results/*.json.

    python bench/results_table.py bench/results

Reads what bench/length_runs.sh and bench/in_window.py wrote; prints the tables that
docs/results.md ("Length generalisation, measured") holds (a missing result prints as
"not run"). Nothing is typed by hand.
"""
import json
import math
import sys
from pathlib import Path

R = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")


def load(name):
    f = R / f"{name}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def upto(r, n):
    """Cumulative perplexity of positions [1, n), or None if the run stopped earlier."""
    b = [x for x in r["buckets"] if x["end"] <= n] if r else []
    if not b or b[-1]["end"] != n:
        return None
    return math.exp(sum(x["nll"] for x in b) / sum(x["tokens"] for x in b))


def span(r, lo, hi):
    """Perplexity of positions [lo, hi)."""
    b = [x for x in r["buckets"] if lo <= x["start"] and x["end"] <= hi] if r else []
    if not b or b[-1]["end"] != hi:
        return None
    return math.exp(sum(x["nll"] for x in b) / sum(x["tokens"] for x in b))


def fmt(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


def perplexity_table():
    modes = [("ppl_lambda", "lambda (LM-Infinite)"), ("ppl_window", "window (no starting tokens)"),
             ("ppl_full", "full (vanilla)"), ("ppl_restart", "in-window reference (restart every 8K)")]
    runs = {name: load(name) for name, _ in modes}
    points = [2048, 4096, 8192, 16384, 32768, 65536]
    print("| attention | " + " | ".join(f"{n // 1024}K" for n in points) +
          " | 8K-64K only |")
    print("| --- | " + " | ".join("---:" for _ in points) + " | ---: |")
    for name, label in modes:
        r = runs[name]
        cells = [fmt(upto(r, n)) for n in points]
        print(f"| {label} | " + " | ".join(cells) + f" | {fmt(span(r, 8192, 65536))} |")
    print()
    print("Per 8K span (perplexity of the positions in it):")
    print()
    spans = [(s, s + 8192) for s in range(0, 65536, 8192)]
    print("| attention | " + " | ".join(f"{a // 1024}-{b // 1024}K" for a, b in spans) + " |")
    print("| --- | " + " | ".join("---:" for _ in spans) + " |")
    for name, label in modes:
        print(f"| {label} | " + " | ".join(fmt(span(runs[name], a, b)) for a, b in spans) + " |")


def trials_of(*names):
    """Every trial of the named passkey results that exist."""
    return [t for name in names if load(name) for t in load(name)["trials"]]


def passkey_row(label, trials, lengths):
    cells = []
    for n in lengths:
        at = [t for t in trials if t["length"] == n]
        if not at:
            cells.append("—")
            continue
        ok = sum(t["correct"] for t in at)
        beyond = sum(not t["key_in_window"] for t in at)
        cells.append(f"{ok}/{len(at)}" + (f" ({beyond} beyond window)" if beyond else ""))
    print(f"| {label} | " + " | ".join(cells) + " |")


def passkey_tables():
    print("4K-token prompts, `--n-local 1024` (keys mostly beyond the window), `--seed 1`:")
    print()
    print("| setting | 4K |\n| --- | ---: |")
    for name, label in (("pk4k_full", "full"), ("pk4k_truncate", "truncated to the window"),
                        ("pk4k_lambda", "lambda"), ("pk4k_topk", "lambda + top-k 5"),
                        ("pk4k_topk16", "lambda + top-k 16"),
                        ("pk4k_topk5_l0", "lambda + top-k 5 from layer 0")):
        passkey_row(label, trials_of(name), [4096])
    print()
    lengths = [2048, 4096, 8192, 16384, 32768, 65536]
    print("Default 8K window, `--seed 2` (2K-8K: inside the window, where every mode is the "
          "same computation: one run, `pk_short`, fills those columns) and `--seed 4` (64K):")
    print()
    print("| setting | " + " | ".join(f"{n // 1024}K" for n in lengths) + " |")
    print("| --- | " + " | ".join("---:" for _ in lengths) + " |")
    for mode, label in (("full", "full"), ("truncate", "truncated to the window"),
                        ("lambda", "lambda"), ("topk", "lambda + top-k 5")):
        passkey_row(label, trials_of("pk_short", f"pk_{mode}", f"pk64_{mode}"), lengths)


def n_global_table():
    print("| n_global | ppl 0-16K | ppl 8K-16K (beyond the window) | passkey 16K, key 5.2K-5.8K "
          "back | passkey 16K, key 0.75K-0.95K back |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for g in (1, 10, 64, 256):
        r = load("ppl_lambda") if g == 10 else load(f"pplg_{g}")
        print(f"| {g} | {fmt(upto(r, 16384))} | {fmt(span(r, 8192, 16384))} | "
              f"{score(f'pkg_{g}')} | {score(f'pkn_{g}')} |")
    w = load("ppl_window")
    print(f"| 0 (window) | {fmt(upto(w, 16384))} | {fmt(span(w, 8192, 16384))} | "
          f"truncated: {score('pkg_truncate')} | truncated: {score('pkn_truncate')} |")


def score(name):
    r = load(name)
    return "—" if not r else f"{sum(t['correct'] for t in r['trials'])}/{len(r['trials'])}"


MILLION_RUNS = [("8K", "the default 8K window", "ppl_1m", "ppl_16k"),    # bench/default_runs.sh
                ("2K", "a 2K window", "ppl_1m_w2k", "ppl_16k_w2k")]          # bench/length_runs.sh


def million_table():
    """1M tokens of two books streamed through a window: perplexity per 64K bucket, a row per
    window, and each run's time and peak memory against its 16K run's."""
    runs = [(short, w, load(big), load(small)) for short, w, big, small in MILLION_RUNS
            if load(big)]
    if not runs:
        print("1M-token runs: not run")
        return
    buckets = runs[0][2]["buckets"]
    for half in (slice(0, len(buckets) // 2), slice(len(buckets) // 2, None)):
        print("| window | " + " | ".join(f"{x['start'] // 1024}K-{x['end'] // 1024}K"
                                          for x in buckets[half]) + " |")
        print("| --- | " + " | ".join("---:" for _ in buckets[half]) + " |")
        for short, _, big, _ in runs:
            print(f"| {short} | " +
                  " | ".join(f"{x['ppl']:.1f}" for x in big["buckets"][half]) + " |")
        print()
    for _, window, big, small in runs:
        print(f"- Through {window}: {big['tokens']:,} tokens in {big['seconds'] / 60:.0f} min "
              f"({big['tokens_per_second']:.0f} tok/s), perplexity {big['ppl']:.2f}, peak RSS "
              f"{big['peak_rss_mb']:.0f} MB; the same run to 16K tokens: peak RSS "
              f"{small['peak_rss_mb'] if small else float('nan'):.0f} MB.")


START_DISTANCE_RUNS = [("ceiling", "at the ceiling, 8192 (the paper)"),
                       ("spread", "spread, n_local - 1 - g"),
                       ("4096", "all at 4096: capped (the default)"),
                       ("2048", "all at 2048"), ("1024", "all at 1024"), ("256", "all at 256"),
                       ("truncate", "truncated to the window")]


def start_distances_table():
    """The sd_* runs: where the starting tokens beyond the window are seen, against
    truncation (bench/length_runs.sh, bench/start_distance_runs.sh)."""
    base = span(load("sd_ppl_ceiling"), 8192, 65536)
    print("| starting tokens beyond the window | ppl 8K-64K | vs the ceiling | passkey 16K, keys "
          "1.9K-6.5K back | keys found (tokens back) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for mode, label in START_DISTANCE_RUNS:
        ppl, pk = load(f"sd_ppl_{mode}"), load(f"sd_pk16_{mode}")
        if not (ppl or pk):
            continue
        found = sorted(t["key_distance"] for t in pk["trials"] if t["correct"]) if pk else []
        change = f"{span(ppl, 8192, 65536) / base - 1:+.2%}" if ppl else "—"
        print(f"| {label} | {fmt(span(ppl, 8192, 65536), 3)} | {change} | "
              f"{score(f'sd_pk16_{mode}')} | {', '.join(map(str, found)) or '—'} |")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate k/n (sensible for small n and k = 0 or n)."""
    if not n:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, mid - half), min(1.0, mid + half)


# bench/passkey_grid.sh: (label, result name without its band prefix); bands: keys inside the
# window (pk16in_*, seed 11; the ceiling and truncation runs are the sd_pk16_* ones, same
# questions) and beyond it (pk16out_*, seed 12).
GRID = [("the paper: 10 starting tokens, ceiling", "g10"),
        ("64, capped (the default)", "capped"), ("64, capped + top-k 5", "capped_top5"),
        ("64, capped + top-k 16", "capped_top16"),
        ("64, capped + top-k 5, blocks of 64", "capped_top5b64"),
        ("64, ceiling (the default before)", "g64"), ("64, ceiling + top-k 5", "top5"),
        ("64, ceiling + top-k 5, blocks of 64", "top5b64"), ("64, ceiling + top-k 16", "top16"),
        ("the paper + top-k 5", "g10top5"), ("the paper + top-k 16", "g10top16"),
        ("64, spread", "spread"), ("truncated to the window", "truncate"),
        ("full attention", "full")]
SAME_QUESTIONS = {"pk16in_g64": "sd_pk16_ceiling", "pk16in_spread": "sd_pk16_spread",
                  "pk16in_truncate": "sd_pk16_truncate", "pk16in_capped": "sd_pk16_4096"}


def grid_run(band: str, mode: str):
    name = f"pk16{band}_{mode}"
    return load(name) or load(SAME_QUESTIONS.get(name, name))


def passkey_grid():
    """[(label, band, found, asked, distances found)] of every grid run that exists."""
    rows = []
    for label, mode in GRID:
        for band in ("in", "out"):
            r = grid_run(band, mode)
            if r:
                ok = sorted(t["key_distance"] for t in r["trials"] if t["correct"])
                rows.append((label, band, len(ok), len(r["trials"]), ok))
    return rows


def passkey_grid_table():
    print("| mode | keys 1.9K-6.5K back (inside the window) | keys 9.0K-14.9K back (beyond it) "
          "| keys found (tokens back) |")
    print("| --- | ---: | ---: | --- |")
    rows = passkey_grid()
    for label, _ in GRID:
        cells, found = [], []
        for band in ("in", "out"):
            hit = [r for r in rows if r[0] == label and r[1] == band]
            if hit:
                _, _, k, n, ok = hit[0]
                lo, hi = wilson(k, n)
                cells.append(f"{k}/{n} ({lo:.0%}-{hi:.0%})")
                found += ok
            else:
                cells.append("not run" if (band, label) != ("out", "truncated to the window")
                             else "0 (cannot see them)")
        if any(c[0].isdigit() and "/" in c for c in cells):
            print(f"| {label} | {cells[0]} | {cells[1]} | "
                  f"{', '.join(map(str, sorted(found))) or '—'} |")


# Longer prompts (bench/start_distance_runs.sh, bench/passkey_grid.sh, bench/default_runs.sh):
# bands (result-name prefix, seed) and modes (label, result name without its band prefix).
LONG_BANDS = [("pk32in", 14), ("pk32out", 13), ("pk64in", 15), ("pk64out", 16)]
LONG_MODES = [("64, capped (the default)", "capped"), ("64, capped + top-k 5", "capped_top5"),
              ("64, capped + top-k 16", "capped_top16"),
              ("64, ceiling (the paper's rule)", "ceiling"),
              ("64, ceiling + top-k 5, blocks of 64", "top5b64"),
              ("the paper: 10 starting tokens, ceiling, + top-k 5", "g10top5"),
              ("truncated to the window", "truncate")]


def long_grid():
    """{(band, mode): (found, asked)} of every 32K/64K run that exists, and the band headers:
    {band: "32K, keys 3.0K-6.0K back (inside the window, `--seed 14`)"}."""
    runs = {(band, mode): load(f"{band}_{mode}") for band, _ in LONG_BANDS for _, mode in LONG_MODES}
    heads = {}
    for band, seed in LONG_BANDS:
        far = sorted(t["key_distance"] for (b, _), r in runs.items() if r and b == band
                     for t in r["trials"])
        where = "inside the window" if band.endswith("in") else "beyond it"
        heads[band] = (f"{band[2:4]}K, keys {far[0] / 1000:.1f}K-{far[-1] / 1000:.1f}K back "
                       f"({where}, `--seed {seed}`)" if far else f"{band[2:4]}K: not run")
    found = {key: (sum(t["correct"] for t in r["trials"]), len(r["trials"]))
             for key, r in runs.items() if r}
    return found, heads


def long_table():
    """Passkey at 32K and 64K by mode: a column per band, the key distances in its header."""
    found, heads = long_grid()
    bands = [band for band, _ in LONG_BANDS if any(b == band for b, _ in found)]
    print("| mode | " + " | ".join(heads[band] for band in bands) + " |")
    print("| --- |" + " ---: |" * len(bands))
    for label, mode in LONG_MODES:
        cells = []
        for band in bands:
            if (band, mode) in found:
                k, n = found[band, mode]
                lo, hi = wilson(k, n)
                cells.append(f"{k}/{n} ({lo:.0%}-{hi:.0%})")
            else:
                cells.append("cannot" if mode == "truncate" and band.endswith("out")
                             else "not run")
        if any("/" in c for c in cells):
            print(f"| {label} | " + " | ".join(cells) + " |")


def blocks_table():
    """Block-level against token-level top-k where top-k retrieves: 4K tokens, 1K window."""
    print("| setting | keys found | 95% interval | beyond the window | keys missed (tokens back) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, label in (("pk4k16_g64", "Λ (64 starting tokens)"),
                        ("pk4k16_top5", "+ top-k 5, every middle token"),
                        ("pk4k16_top5b64", "+ top-k 5, blocks of 64"),
                        ("pk4k16_top5b16", "+ top-k 5, blocks of 16")):
        r = load(name)
        if not r:
            continue
        t = r["trials"]
        k, n = sum(x["correct"] for x in t), len(t)
        lo, hi = wilson(k, n)
        far = [x for x in t if not x["key_in_window"]]
        missed = sorted(x["key_distance"] for x in t if not x["correct"])
        print(f"| {label} | {k}/{n} | {lo:.0%}-{hi:.0%} | "
              f"{sum(x['correct'] for x in far)}/{len(far)} | "
              f"{', '.join(map(str, missed)) or '—'} |")


def topk_scale_table():
    """bench/topk_scale.py's JSON lines: step time and memory of top-k as the input grows."""
    rows = [json.loads(x) for f in sorted(R.glob("topk-scale-*.jsonl"))
            for x in f.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "skipped" not in r]
    print("| tokens | setting | ms per decode step | resident (anonymous) MB | top-k keys and "
          "values |")
    print("| ---: | --- | ---: | ---: | --- |")
    for r in rows:
        what = ("plain Λ" if not r["top_k_middle"] else
                f"top-k 5, {'blocks of ' + str(r['top_k_block']) if r['top_k_block'] else 'every token'}"
                + (", offloaded" if r.get("offload") else ""))
        where = "—" if not r["top_k_middle"] else \
            f"{r['topk_buffers_mb'] / 1024:.1f} GB {'on disk' if r.get('offload') else 'in RAM'}"
        print(f"| {r['tokens']:,} | {what} | {r['step_ms']:.0f} | {r['rss_anon_mb']:,} | {where} |")


if __name__ == "__main__":
    for title, table in (("Perplexity", perplexity_table), ("Passkey", passkey_tables),
                         ("Starting tokens", n_global_table), ("1M tokens", million_table),
                         ("Start distances", start_distances_table),
                         ("Passkey by mode, 16K", passkey_grid_table),
                         ("Passkey by mode, 32K and 64K", long_table),
                         ("Top-k by blocks, 4K", blocks_table),
                         ("Top-k at scale", topk_scale_table)):
        print(f"### {title}\n")
        table()
        print()
