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

How one call does it. SDPA computes softmax(q k^T / sqrt(hd) + mask) v, and the mask may hold
any number, not only 0 and -inf. The keys are [ring | starting tokens | picks] (cache.py):

- ring keys are stored rotated at their true positions, so <rot(q, i), rot(k, j)> is RoPE at
  distance i - j; the mask is 0 inside each row's window and -inf outside (`lambda_mask`);
- a far starting token must be scored at the ceiling whatever the row, <rot(q_i, ceiling), k_g>:
  that is one small (rows x n_global) matmul per layer (`scores`), written into the mask's
  starting-token columns, whose keys are zero (q . 0 = 0, so the mask alone is the score);
- top-k middle attention (opt-in, the paper's retrieval variant, DESIGN.md §2) adds, for the
  last row of a call, the k best-scoring middle keys of each head the same way, scored at
  distance n_local / 2 (`top_k_middle`).

One softmax thus runs over window, starting tokens and picks together, as the rule says.
The price: those scores differ per head, so a wide call's mask is per head, (B, Hkv, group*T, S)
(39 MB in bfloat16 for a 256-token chunk and an 8K window), and they are rounded to the mask's
dtype (in bfloat16 that moved perplexity less than the per-row rotated key copies this
replaced: 24.509 vs 24.537 against float32's 24.505, 8K tokens of Moby-Dick, 1K window).
"""
import math

import torch
import torch.nn.functional as F

from tinfinite import rope
from tinfinite.cache import KVCache


def lambda_mask(q_pos: torch.Tensor, ring_pos: torch.Tensor, n_local: int) -> torch.Tensor:
    """(T, R) bool, True = the ring slot is in the query's window. From absolute positions only.

    q_pos: (T,) query positions; ring_pos: (R,) positions held by the ring slots (-1 = empty).
    """
    d = q_pos[:, None] - ring_pos[None, :]                              # (T, R)
    return (ring_pos >= 0) & (d >= 0) & (d < n_local)


def beyond_window(q_pos: torch.Tensor, start_pos: torch.Tensor, n_local: int) -> torch.Tensor:
    """(T, G) bool, True = starting token g is out of query t's window, so it is seen at the
    ceiling through the starting-token columns (inside the window it is an ordinary ring key)."""
    return (start_pos >= 0) & (q_pos[:, None] - start_pos[None, :] >= n_local)


def fold(q: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """(B, H, T, hd) -> (B, Hkv, group * T, hd): the query heads that share a key head become
    extra query rows of it, in the order (head in group, t)."""
    B, H, T, hd = q.shape
    return q.reshape(B, n_kv_heads, H // n_kv_heads * T, hd)


def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q (B, Hkv, rows, hd) . k (B, Hkv, N, hd) / sqrt(hd) -> (B, Hkv, rows, N), as SDPA scales.

    A decode step's starting-token scores are a tiny product (3 x 64 per head): in bfloat16 it
    took 0.39 ms on our CPU, in float32 0.05 ms, 30 times per token. Tiny products therefore go
    through float32 (and come back in q's dtype); larger ones stay in q's dtype."""
    scale = 1 / math.sqrt(q.shape[-1])
    if q.shape[-2] * k.shape[-2] <= 4096:
        wide = torch.promote_types(q.dtype, torch.float32)  # float64 stays float64
        return (q.to(wide) @ k.to(wide).transpose(-1, -2) * scale).to(q.dtype)
    return q @ k.transpose(-1, -2) * scale


def top_k_middle(q: torch.Tensor, k_mid: torch.Tensor, v_mid: torch.Tensor, k: int):
    """Each query head's k best middle keys: their scores (B, Hkv, group, k') and values
    (B, Hkv, group, k', hd), k' = min(k, M).

    q: (B, Hkv, group, hd) the call's last row, folded, rotated at n_local / 2 (the paper's
    fixed distance for middle tokens); k_mid, v_mid: (B, Hkv, M, hd) un-rotated middle keys.
    """
    s = scores(q, k_mid)                                                # (B, Hkv, group, M)
    top, idx = s.topk(min(k, s.shape[-1]), dim=-1)                      # (B, Hkv, group, k')
    B, Hkv, group, kk = idx.shape
    flat = idx.reshape(B, Hkv, group * kk, 1).expand(-1, -1, -1, v_mid.shape[-1])
    return top, v_mid.gather(2, flat).view(B, Hkv, group, kk, -1)


class Step:
    """What the layers of one forward call share: RoPE cos/sin of its positions and the mask
    (built once per call, from the cache's slot positions); layer_mask() adds each layer's
    scores of the keys seen at a fixed distance."""

    def __init__(self, cache: KVCache, positions: torch.Tensor, inv_freq, dtype, group: int):
        dev = cache.pos.device
        self.cos, self.sin = rope.cos_sin(positions.cpu(), inv_freq, dtype, dev)  # (T, hd)
        self.last = cache.next_pos - 1 + cache.offset                  # the last row's position
        # Wide: the last query is n_local or more past token 0, so some key has left its
        # window; the call then reads the whole ring and the keys seen at a fixed distance.
        self.wide = cache.next_pos - 1 >= cache.n_local
        self.n_middle = cache.next_pos - cache.n_local - cache.n_global if cache.top_k else 0
        ring = additive(lambda_mask(positions, cache.ring_positions(self.wide), cache.n_local),
                        dtype).repeat(group, 1)                        # (group*T, R), fold order
        if not self.wide:
            self.mask = ring  # the same for every head: broadcast
            return
        cache.clear_unwritten()
        # Per-head mask: [ring | starting tokens | picks]; the last two are filled per layer.
        B, Hkv = cache.k.shape[1:3]
        self.mask = torch.full((B, Hkv, *ring.shape[:1], cache.ring + cache.n_global +
                                group * cache.top_k), float("-inf"), dtype=dtype, device=dev)
        self.mask[..., :cache.ring] = ring
        g = torch.arange(cache.n_global, device=dev)
        starts = torch.where(g < cache.n_starts, g + cache.offset, -1)  # -1: not seen yet
        self.start_bias = additive(beyond_window(positions, starts, cache.n_local),
                                   dtype).repeat(group, 1)             # (group*T, G)
        # The ceiling is the window, as in the paper (§4: both are L_pretrain). A far starting
        # token then always sits at distance >= ceiling, so min(d, ceiling) = ceiling.
        self.cos_ceil, self.sin_ceil = _rotation(cache, cache.n_local, inv_freq, dtype)  # (1, hd)
        self.cos_mid, self.sin_mid = _rotation(cache, cache.n_local // 2, inv_freq, dtype)
        self._from_layer = cache.top_k_from_layer

    def picks(self, layer: int) -> bool:
        """Does the last row of this layer attend to top-k middle keys?"""
        return self.wide and self.n_middle > 0 and layer >= self._from_layer

    def layer_mask(self, layer: int, q: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The mask for one layer: in a wide call, with the scores of the keys seen at a fixed
        distance written into their columns. q: (B, H, T, hd) un-rotated queries."""
        if not self.wide:
            return self.mask
        T = q.shape[2]
        R, G, mask = cache.ring, cache.n_global, self.mask
        if G:  # far starting tokens, at the ceiling: <rot(q, ceiling), k_g>
            q_ceil = fold(rope.rotate(q, self.cos_ceil, self.sin_ceil), cache.k.shape[2])
            mask[..., R:R + G] = scores(q_ceil, cache.k_start[layer]) + self.start_bias
        if not self.picks(layer):
            return mask[..., :R + G]
        # The last row's top-k middle keys, at n_local / 2, each head in its own block.
        q_mid = fold(rope.rotate(q[:, :, -1:], self.cos_mid, self.sin_mid), cache.k.shape[2])
        top, values = top_k_middle(q_mid, *cache.middle(layer, self.last), cache.top_k)
        cache.write_picks(layer, values)
        per_head = mask[..., R + G:].unflatten(2, (-1, T)).unflatten(-1, (-1, cache.top_k))
        for g in range(per_head.shape[2]):  # row (head g, last t) sees block g only
            per_head[:, :, g, -1, g, :top.shape[-1]] = top[:, :, g]
        return mask


def _rotation(cache: KVCache, distance: int, inv_freq: torch.Tensor, dtype):
    """cos, sin (1, hd) of a fixed distance, made once per cache (every decode step needs them)."""
    if distance not in cache.rotations:
        cache.rotations[distance] = rope.cos_sin(torch.tensor([distance]), inv_freq, dtype,
                                                 cache.pos.device)
    return cache.rotations[distance]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One scaled_dot_product_attention call over the visible cache slots.

    q: (B, H, T, hd) rotated queries; k, v: (B, Hkv, S, hd); mask: additive, (group * T, S)
    or (B, Hkv, group * T, S), rows in the order of fold(). Returns (B, H, T, hd).

    Grouped-query attention is folded: the group's query heads become extra query rows of
    their shared key head, so every key and value is read from memory once per layer, not
    once per query head (decoding is bound by exactly that traffic).
    """
    B, H, T, hd = q.shape
    y = F.scaled_dot_product_attention(fold(q, k.shape[1]), k, v, attn_mask=mask)
    return y.view(B, H, T, hd)


def additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool -> additive mask of the same shape: 0 where visible, -inf elsewhere."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
        ~visible, float("-inf"))
