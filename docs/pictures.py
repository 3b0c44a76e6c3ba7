"""Draw the Λ mask and the distances it uses, from the engine's own mask builders.

    python docs/pictures.py                     # ASCII in the terminal
    python docs/pictures.py --png docs/         # also lambda_mask.png and distance.png

Nothing here is drawn by hand: visibility comes from tinfinite.attention.lambda_mask (window
keys) and beyond_window (starting tokens seen at the ceiling), exactly as the cache calls
them, laid out over absolute key positions instead of cache slots.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tinfinite.attention import beyond_window, lambda_mask  # noqa: E402


def kinds(n: int, n_global: int, n_local: int) -> torch.Tensor:
    """(n, n) int: 0 = not attended, 1 = window key (true distance), 2 = starting token seen at
    the ceiling. Row = query position, column = key position."""
    pos = torch.arange(n)
    window = lambda_mask(pos, pos, n_local)                             # ring keys = all keys
    far = beyond_window(pos, torch.arange(min(n_global, n)), n_local)  # (n, G)
    out = window.long()
    out[:, :far.shape[1]][far] = 2
    return out


def distances(n: int, n_global: int, n_local: int) -> torch.Tensor:
    """(n, n) float: the relative distance RoPE sees, min(i - j, ceiling); NaN = masked."""
    k = kinds(n, n_global, n_local)
    pos = torch.arange(n)
    d = (pos[:, None] - pos[None, :]).clamp(max=n_local).float()  # the ceiling is n_local
    return torch.where(k > 0, d, float("nan"))


def ascii_mask(n: int, n_global: int, n_local: int) -> str:
    k = kinds(n, n_global, n_local)
    head = "q\\k " + " ".join(f"{j % 10}" for j in range(n))
    rows = [f"{i:>3} " + " ".join(".xg"[v] if j <= i else " " for j, v in enumerate(r.tolist()))
            for i, r in enumerate(k)]
    return "\n".join([head] + rows)


def ascii_distances(n: int, n_global: int, n_local: int) -> str:
    d = distances(n, n_global, n_local)
    rows = [f"{i:>3} " + " ".join(" ." if x != x else f"{int(x):>2}" for x in r[:i + 1].tolist())
            for i, r in enumerate(d)]
    return "\n".join(rows)


def save_pngs(folder: Path, n: int, n_global: int, n_local: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(kinds(n, n_global, n_local), cmap=ListedColormap(["white", "#4c72b0", "#dd8452"]),
              vmin=0, vmax=2)
    ax.set(title=f"Λ mask: n_global={n_global}, n_local={n_local}\nblue: window, "
                 f"orange: starting tokens at the ceiling", xlabel="key position j",
           ylabel="query position i")
    fig.tight_layout()
    fig.savefig(folder / "lambda_mask.png", dpi=100)
    fig, ax = plt.subplots(figsize=(5.6, 5))
    im = ax.imshow(distances(n, n_global, n_local), cmap="viridis")
    fig.colorbar(im, ax=ax, label="distance RoPE sees, min(i - j, n_local)")
    ax.set(title="Effective distance (blank: masked)", xlabel="key position j",
           ylabel="query position i")
    fig.tight_layout()
    fig.savefig(folder / "distance.png", dpi=100)
    plt.close("all")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="positions to draw (16)")
    p.add_argument("--n-global", type=int, default=2)
    p.add_argument("--n-local", type=int, default=6)
    p.add_argument("--png", type=Path, help="folder for lambda_mask.png and distance.png")
    a = p.parse_args(argv)
    print(f"Λ mask, n_global={a.n_global}, n_local={a.n_local} "
          f"(x = window key, g = starting token at the ceiling, . = masked)")
    print(ascii_mask(a.n, a.n_global, a.n_local))
    print("\ndistance RoPE sees (. = masked)")
    print(ascii_distances(a.n, a.n_global, a.n_local))
    if a.png:
        save_pngs(a.png, a.n, a.n_global, a.n_local)


if __name__ == "__main__":
    main()
