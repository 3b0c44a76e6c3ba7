"""Perplexity against position for lambda, window and full attention, like the paper's Fig. 1.

    python bench/plot_length.py bench/results docs/perplexity.png

Reads the `perplexity --json` results that bench/length_runs.sh writes (ppl_lambda.json,
ppl_window.json, ppl_full.json, and ppl_1m_w2k.json if present) and plots each bucket's
perplexity at the bucket's end position. Needs matplotlib (requirements-bench.txt).
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = [("ppl_full.json", "full attention (vanilla)", "#c44e52", "-"),
          ("ppl_window.json", "sliding window, no starting tokens", "#8172b2", "-"),
          ("ppl_restart.json", "in-window reference (context restarted every 8K)", "grey", ":"),
          ("ppl_lambda.json", "LM-Infinite (Λ), 8K window", "#4c72b0", "-")]


def load(path: Path):
    r = json.loads(path.read_text())
    b = [x for x in r["buckets"] if x["tokens"]]
    return [x["end"] for x in b], [x["ppl"] for x in b], r


def kilo(ax):
    """Ticks at powers of two, labelled 2K, 4K, ..., 1M."""
    lo, hi = ax.get_xlim()
    ticks = [2 ** i for i in range(11, 21) if lo <= 2 ** i <= hi * 1.01]
    ax.set_xticks(ticks, [f"{t // 2**20}M" if t >= 2**20 else f"{t // 1024}K" for t in ticks])
    ax.minorticks_off()


def main(results: str, out: str):
    folder = Path(results)
    panels = 2 if (folder / "ppl_1m_w2k.json").is_file() else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    for name, label, color, style in CURVES:
        if (folder / name).is_file():
            x, y, r = load(folder / name)
            ax.plot(x, y, marker=".", label=label, color=color, ls=style)
    ax.axvline(8192, color="grey", ls="--", lw=1)
    ax.text(8192, ax.get_ylim()[0] * 1.05, " trained length (8K)", va="bottom", fontsize=8,
            color="grey")
    ax.set(xscale="log", yscale="log", xlabel="position (tokens)",
           ylabel="perplexity of the 2K tokens ending here",
           title="SmolLM2-135M-Instruct on Les Misérables")
    kilo(ax)
    ax.legend(fontsize=8, loc="upper left")
    if panels == 2:
        ax = axes[0][1]
        x, y, r = load(folder / "ppl_1m_w2k.json")
        ax.plot(x, y, marker=".", color="#4c72b0")
        ax.set_ylim(0, max(y) * 1.2)  # linear from 0: flat means flat
        ax.set(xscale="log", xlabel="position (tokens)",
               ylabel=f"perplexity of the {x[0] // 1024}K tokens ending here",
               title=f"Λ, 2K window: {r['tokens']:,} tokens, peak RSS {r['peak_rss_mb']:.0f} MB")
        kilo(ax)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
