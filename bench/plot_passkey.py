"""Passkey accuracy by mode at 16K tokens, with 95% intervals, keys inside and beyond the window.

    python bench/plot_passkey.py bench/results docs/passkey.png

Reads bench/passkey_grid.sh's results through results_table.py (the same numbers as the
table in docs/results.md). Needs matplotlib (requirements-bench.txt).
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from results_table import GRID, passkey_grid, wilson  # noqa: E402  (reads sys.argv[1])

BANDS = {"in": ("keys 1.9K-6.5K back (inside the 8K window)", "#4c72b0"),
         "out": ("keys 9.0K-14.9K back (beyond it)", "#dd8452")}


def main():
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/passkey.png"
    rows = passkey_grid()
    labels = [label for label, _ in GRID if any(r[0] == label for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(labels) + 1.5))
    for i, band in enumerate(("in", "out")):
        name, color = BANDS[band]
        for j, label in enumerate(labels):
            hit = [r for r in rows if r[0] == label and r[1] == band]
            if not hit:
                continue
            _, _, k, n, _ = hit[0]
            lo, hi = wilson(k, n)
            y = j + (i - 0.5) * 0.35
            ax.errorbar(k / n, y, xerr=[[k / n - lo], [hi - k / n]], fmt="o", color=color,
                        capsize=3, label=name if j == min(
                            jj for jj, lb in enumerate(labels)
                            if any(r[0] == lb and r[1] == band for r in rows)) else None)
            ax.annotate(f"{k}/{n}", (k / n, y), textcoords="offset points", xytext=(6, 3),
                        fontsize=8, color=color)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.08)
    ax.set_xlabel("keys found (95% Wilson interval); 16K-token prompts, SmolLM2-135M, bfloat16")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
