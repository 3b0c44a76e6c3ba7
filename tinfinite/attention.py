"""LM-Infinite attention: the Λ-shaped mask and its distance ceiling, in one SDPA call.

The rule (Han et al. 2023, §4; DESIGN.md §2). Query at position i, key at j <= i, d = i - j:

    key j visible to query i   iff   0 <= d < n_local   or   j < n_global
    score(i, j) = <rot(q_i, min(d, ceiling)), k_j> / sqrt(head_dim)

with ceiling = n_local, as in the paper (both are the pre-training length L): window keys are
at their true distance, and a starting token out of the window is seen at exactly n_local.

It answers the paper's three failure factors of long inputs: the window keeps the number of
attended tokens bounded (factor 2, attention entropy), the starting tokens stay visible
(factor 3, they anchor attention), and no distance exceeds the ceiling (factor 1, unseen
distances). For n_g = 2, n_l = 4 (g = starting token seen at the ceiling, x = window):

    q\\k  0 1 2 3 4 5 6 7
     0   x
     1   x x
     2   x x x
     3   x x x x
     4   g x x x x
     5   g g x x x x
     6   g g . x x x x
     7   g g . . x x x x

The widened-head trick: a query must score window keys at true distance and starting tokens
at the ceiling, i.e. with two different rotations of itself. Concatenating both rotations
along the head dimension does it in one call, because the cache stores every key with the
other half zeroed (cache.py):

    q' = [ rot(q, i) | rot(q, ceiling) ]        (T, 2 * head_dim)
    ring key      [ rot(k, j) | 0 ]   ->  <rot(q, i), rot(k, j)> = RoPE at distance i - j
    global copy   [ 0 | rot(k, 0) ]   ->  <rot(q, ceiling), k>   = RoPE at distance ceiling

The scale stays 1/sqrt(head_dim): the zero halves add nothing to any score.
"""
import math

import torch
import torch.nn.functional as F


def lambda_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, n_global_slots: int,
                n_local: int) -> torch.Tensor:
    """(T, S) bool, True = may attend. Built from absolute positions (-1 = empty slot).

    q_pos: (T,) query positions. k_pos: (S,) positions held by the key slots, whose first
    n_global_slots are the starting tokens' ceiling copies, seen only once out of the window.
    """
    d = q_pos[:, None] - k_pos[None, :]                            # (T, S) distances
    in_window = (d >= 0) & (d < n_local)
    beyond = d >= n_local
    is_global = torch.arange(k_pos.numel(), device=k_pos.device) < n_global_slots
    return (k_pos >= 0) & torch.where(is_global, beyond, in_window)


def attend(q_rot: torch.Tensor, q_ceil: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor,
           mask: torch.Tensor) -> torch.Tensor:
    """One scaled_dot_product_attention call over the visible cache slots.

    q_rot: (B, H, T, hd) queries rotated at their positions; q_ceil: the same rotated at the
    ceiling, or None when no starting token is out of the window (k then is hd wide).
    k: (B, n_kv, S, hd or 2*hd), v: (B, n_kv, S, hd), mask: (T, S), additive (0 or -inf)
    or boolean. Returns (B, H, T, hd).
    """
    hd = q_rot.shape[-1]
    q = q_rot if q_ceil is None else torch.cat([q_rot, q_ceil], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1 / math.sqrt(hd),
                                          enable_gqa=q.shape[1] != k.shape[1])
