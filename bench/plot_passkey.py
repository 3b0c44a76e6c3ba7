"""Passkey accuracy by mode, with 95% intervals: at 16K tokens (keys inside and beyond the
window), and at 32K and 64K.

    python bench/plot_passkey.py bench/results docs/passkey.png

Reads the results through results_table.py (the same numbers as the tables in
docs/results.md). Needs matplotlib (requirements-bench.txt).
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from results_table import (GRID, LONG_BANDS, LONG_MODES, long_grid,  # noqa: E402  (reads sys.argv[1])
                           passkey_grid, wilson)

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def panel(ax, labels: list[str], series: list[tuple[str, dict]], title: str):
    """One row per label, one dot per series (name, {label: (found, asked)}) with its interval."""
    for i, (name, found) in enumerate(series):
        color, first = COLORS[i], True
        for j, label in enumerate(labels):
            if label not in found:
                continue
            k, n = found[label]
            lo, hi = wilson(k, n)
            y = j + (i - (len(series) - 1) / 2) * 0.7 / len(series)
            ax.errorbar(k / n, y, xerr=[[k / n - lo], [hi - k / n]], fmt="o", color=color,
                        capsize=3, label=name if first else None)
            ax.annotate(f"{k}/{n}", (k / n, y), textcoords="offset points", xytext=(6, 1),
                        fontsize=7, color=color)
            first = False
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.1)
    ax.set_title(title, fontsize=9, pad=10 + 12 * ((len(series) + 1) // 2))  # above the legend
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7, frameon=False)
    ax.grid(axis="x", alpha=0.3)


def main():
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/passkey.png"
    rows = passkey_grid()
    short = {band: {label: (k, n) for label, b, k, n, _ in rows if b == band}
             for band in ("in", "out")}
    labels16 = [label for label, _ in GRID if any(r[0] == label for r in rows)]
    found, heads = long_grid()
    by_label = dict((mode, label) for label, mode in LONG_MODES)
    long_series = [(heads[band].split(" (")[0] + (" (inside)" if band.endswith("in") else " (beyond)"),
                    {by_label[m]: kn for (b, m), kn in found.items() if b == band})
                   for band, _ in LONG_BANDS if any(b == band for b, _ in found)]
    labels_long = [label for label, mode in LONG_MODES if any(m == mode for _, m in found)]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 0.5 * (len(labels16) + len(labels_long)) + 3),
        height_ratios=[len(labels16) + 1, len(labels_long) + 1])
    panel(top, labels16, [("keys 1.9K-6.5K back (inside the 8K window)", short["in"]),
                          ("keys 9.0K-14.9K back (beyond it)", short["out"])],
          "16K-token prompts")
    panel(bottom, labels_long, long_series, "32K- and 64K-token prompts")
    bottom.set_xlabel("keys found (95% Wilson interval); SmolLM2-135M, bfloat16, 8 questions each")
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
