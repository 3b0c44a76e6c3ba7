"""Rotary position embedding (RoPE) in the rotate-half layout of Hugging Face Llama checkpoints.

RoPE is relative: <rot(q, i), rot(k, j)> = <rot(q, i - j), k> = <q, rot(k, j - i)>.
LM-Infinite relies on that twice: keys are rotated once, at their true position, when they
enter the cache; and a query sees a far starting token "as if" it stood `ceiling` tokens
away because that token's key is kept turned back by the ceiling (cache.py; docs/design.md §2).

Positions are exact int64. A float32 angle i * f loses all precision past ~2^24 tokens, and
a float64 one keeps only ~1e-4 rad at 2^40. RoPE only uses angle differences, so angles are
computed from a split i = hi * 2^20 + lo and reduced modulo 2π in float64: the angle between
any two positions less than 2^20 apart is then right to ~1e-10 rad, at any position up to 2^40
and beyond (tests/test_rope.py checks it against exact rational arithmetic).
"""
import math

import torch

from tinfinite.config import ModelConfig

TWO_PI = 2 * math.pi
SPLIT = 20  # positions are split into hi * 2^SPLIT + lo


def inverse_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """(head_dim/2,) float64 rotation speeds, with the checkpoint's RoPE scaling applied."""
    hd = cfg.head_dim
    # float32 as in the reference implementation, so our frequencies are exactly the trained ones
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device="cpu").float() / hd))
    inv_freq = inv_freq.double()
    s = cfg.rope_scaling
    if cfg.rope_type == "linear":
        inv_freq = inv_freq / s["factor"]
    elif cfg.rope_type == "llama3":
        inv_freq = _llama3_scaling(inv_freq, s)
    return inv_freq


def _llama3_scaling(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Llama 3.1: long wavelengths slowed down by `factor`, short ones kept, a smooth ramp between.
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s.get("original_max_position_embeddings", 8192)
    wavelen = TWO_PI / inv_freq
    smooth = ((old_len / wavelen - low) / (high - low)).clamp(0, 1)
    scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(wavelen > old_len / low, inv_freq / factor,
                       torch.where(wavelen < old_len / high, inv_freq, scaled))


def angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """(T,) int64 positions -> (T, head_dim/2) float64 angles in [0, 2π)."""
    hi = (positions >> SPLIT).double()[:, None]
    lo = (positions & ((1 << SPLIT) - 1)).double()[:, None]
    step = torch.remainder(inv_freq * 2.0 ** SPLIT, TWO_PI)  # angle of 2^SPLIT tokens, mod 2π
    return torch.remainder(torch.remainder(hi * step, TWO_PI) + lo * inv_freq, TWO_PI)


def cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype, device="cpu"):
    """(T,) positions -> cos, sin of shape (T, head_dim), laid out for rotate-half.

    Computed in float64 on the CPU (where positions and inv_freq live), rounded to dtype there,
    then moved: float64 never reaches a device (mps has none). The first half of sin is
    negated, which lets rotate() swap halves with one roll instead of a cat."""
    a = angles(positions.cpu(), inv_freq)               # (T, hd/2)
    cos, sin = a.cos(), a.sin()
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)  # (T, hd)
    return cos.to(dtype).to(device), sin.to(dtype).to(device)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, head_dim) by per-row angles given as cos, sin (T, head_dim).

    Rotate-half: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin], i.e. x * cos + [x2, x1] * ±sin."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)
