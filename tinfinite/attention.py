"""LM-Infinite attention: the Λ-shaped mask and its distance ceiling, in one SDPA call.

The rule (Han et al. 2023, §4; DESIGN.md §2). Query at position i, key at j <= i, d = i - j:

    key j visible to query i   iff   0 <= d < n_local   or   j < n_global
    score(i, j) = <rot(q_i, min(d, ceiling)), k_j> / sqrt(head_dim)

with ceiling = n_local, as in the paper (both are the pre-training length L): window keys are
at their true distance, and a starting token out of the window is seen at exactly n_local.

It answers the paper's three failure factors of long inputs: no distance exceeds the ceiling
(factor 1, unseen distances), the window bounds how many tokens a query attends to (factor 2,
attention entropy), and the starting tokens stay visible (factor 3, they anchor attention).
For n_global = 2, n_local = 4 (x = window key, g = starting token seen at the ceiling):

    q\\k  0 1 2 3 4 5 6 7
     0   x
     1   x x
     2   x x x
     3   x x x x
     4   g x x x x
     5   g g x x x x
     6   g g . x x x x
     7   g g . . x x x x

How one call does it: the keys are [ring | starting-token copies] (cache.py). Ring keys are
stored rotated at their true positions, so <rot(q, i), rot(k, j)> is RoPE at distance i - j.
Row t of the call gets its own copies of the starting keys, rotated at i_t - ceiling, so
<rot(q, i_t), rot(k_g, i_t - ceiling)> = <rot(q, ceiling), k_g>: the ceiling, exactly. The mask
lets each row see the window part of the ring and, once they are beyond its window, its own
copies only:

    keys:        ring (R slots)         | copies of row 0 | copies of row 1 | ...
    row 0 sees   0 <= i_0 - pos < n_l   | g: i_0 - g >= n_l |       -         |
    row 1 sees   0 <= i_1 - pos < n_l   |        -        | g: i_1 - g >= n_l |
"""
import torch
import torch.nn.functional as F


def lambda_mask(q_pos: torch.Tensor, ring_pos: torch.Tensor, start_pos: torch.Tensor | None,
                n_local: int) -> torch.Tensor:
    """(T, R [+ T * G]) bool, True = may attend. Built from absolute positions only.

    q_pos: (T,) query positions; ring_pos: (R,) positions held by the ring slots (-1 = empty);
    start_pos: (G,) positions of the starting tokens (-1 = not seen yet), whose per-row copies
    follow the ring (None: no copies in this call).
    """
    d = q_pos[:, None] - ring_pos[None, :]                              # (T, R)
    mask = (ring_pos >= 0) & (d >= 0) & (d < n_local)
    if start_pos is None:
        return mask
    T, G = q_pos.numel(), start_pos.numel()
    beyond = (start_pos >= 0) & (q_pos[:, None] - start_pos[None, :] >= n_local)  # (T, G)
    own = torch.eye(T, dtype=torch.bool, device=q_pos.device)           # row t sees copies t
    copies = own[:, :, None] & beyond[:, None, :]                       # (T, T, G)
    return torch.cat([mask, copies.reshape(T, T * G)], dim=1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One scaled_dot_product_attention call over the visible cache slots.

    q: (B, H, T, hd) rotated queries; k, v: (B, Hkv, S, hd); mask: (group * T, S) additive
    (0 / -inf), the (T, S) mask repeated for each of the group = H / Hkv query heads that share
    a key head (fold_mask). Returns (B, H, T, hd).

    Grouped-query attention is folded: the group's query heads become extra query rows of
    their shared key head, so every key and value is read from memory once per layer, not
    once per query head (decoding is bound by exactly that traffic).
    """
    B, H, T, hd = q.shape
    Hkv = k.shape[1]
    y = F.scaled_dot_product_attention(q.reshape(B, Hkv, H // Hkv * T, hd), k, v, attn_mask=mask)
    return y.view(B, H, T, hd)                                # rows were (head in group, t)


def fold_mask(visible: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
    """(T, S) bool -> (group * T, S) additive mask, in the order attend() folds query rows."""
    additive = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return additive.masked_fill_(~visible, float("-inf")).repeat(group, 1)
