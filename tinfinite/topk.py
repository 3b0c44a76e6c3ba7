"""Top-k middle attention: the paper's opt-in retrieval variant, as an extension of the Λ cache.

LM-Infinite (§5.2) lets the *last* query row of each forward call also attend, in layers
>= from_layer, to the k best "middle" keys of each head: the tokens that are neither starting
tokens nor in the window, n_global <= j <= i - n_local. They are scored, and seen, at the
fixed distance n_local / 2. Choosing them needs every middle key, so this cache keeps every
token's key (turned back by n_local / 2, as the ceiling's starting keys are: cache.py) and
value, in a buffer that doubles as it fills: memory grows with the input (2 x layers x kv_heads x head_dim x dtype bytes per token). Opt-in, never the default.

The picks reach SDPA the way the starting tokens do (cache.py): extra slots hold their values
and zero keys, and their scores go into the mask, each query head's picks in its own block of
`top_k` columns, visible to that head's last row only.
"""
import math

import torch

from tinfinite import rope
from tinfinite.attention import fold, scores
from tinfinite.cache import LambdaCache, grown
from tinfinite.config import ModelConfig


def top_k_middle(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, k: int):
    """Each query head's k best middle keys: their scores (B, Hkv, group, k') and values
    (B, Hkv, group, k', hd), k' = min(k, M).

    q: (B, Hkv, group, hd) the call's last row, folded, un-rotated; keys, values:
    (B, Hkv, M, hd) the middle keys turned back by n_local / 2, and their values, or
    (B, Hkv, group, M, hd): candidates of each query head's own (blocks, below)."""
    if keys.dim() == 4:
        s = scores(q, keys)                                             # (B, Hkv, group, M)
        values = values[:, :, None]                                     # shared by the group
    else:
        s = (q[..., None, :] @ keys.transpose(-1, -2)).squeeze(-2) / math.sqrt(q.shape[-1])
    top, idx = s.topk(min(k, s.shape[-1]), dim=-1)                      # (B, Hkv, group, k')
    idx = idx[..., None].expand(*idx.shape, values.shape[-1])
    return top, values.expand(*s.shape, -1).gather(3, idx)


def best_blocks(q: torch.Tensor, block_keys: torch.Tensor, n: int) -> torch.Tensor:
    """Each query head's n best blocks by their representative (mean) key: (B, Hkv, group, n')
    block numbers, n' = min(n, blocks). q: (B, Hkv, group, hd); block_keys: (B, Hkv, N, hd)."""
    s = scores(q, block_keys)                                           # (B, Hkv, group, N)
    return s.topk(min(n, s.shape[-1]), dim=-1).indices


# With blocks, a query looks inside this many best blocks per pick (2 x top_k blocks).
BLOCKS_PER_PICK = 2


class TopKCache(LambdaCache):
    """The Λ cache plus, for the last row of each call, the top_k best middle keys per head."""

    def __init__(self, cfg: ModelConfig, *, top_k: int, from_layer: int, n_global: int,
                 n_local: int, max_chunk: int, dtype=torch.float32, device="cpu",
                 start_distances: str = "ceiling", block: int = 0):
        group = cfg.n_heads // cfg.n_kv_heads
        super().__init__(cfg, n_global=n_global, n_local=n_local, max_chunk=max_chunk,
                         dtype=dtype, device=device, start_distances=start_distances,
                         extra_slots=group * top_k)
        self.top_k, self.from_layer = top_k, from_layer
        # Every token's key turned back by n_local / 2, and value: (L, B, Hkv, capacity, hd),
        # doubling.
        self.every_key = torch.empty((cfg.n_layers, 1, cfg.n_kv_heads, 2 * max_chunk, cfg.head_dim),
                                     dtype=dtype, device=device)
        self.every_value = torch.empty_like(self.every_key)
        self.cos_middle, self.sin_middle = self.turn_back(torch.tensor([n_local // 2]))
        # block > 0: the middle is also cut into blocks of `block` tokens, each represented by
        # its mean key (L, B, Hkv, blocks, hd); a query scores those, then only the tokens of
        # its BLOCKS_PER_PICK * top_k best blocks (best_blocks above).
        self.block = block
        self.block_keys = torch.empty((cfg.n_layers, 1, cfg.n_kv_heads, 1, cfg.head_dim),
                                      dtype=dtype, device=device)

    def begin(self, T: int) -> torch.Tensor:
        if self.n_seen + T > self.every_key.shape[3]:
            self.every_key = grown(self.every_key, self.n_seen + T)
            self.every_value = grown(self.every_value, self.n_seen + T)
        if self.block and (self.n_seen + T) // self.block >= self.block_keys.shape[3]:
            self.block_keys = grown(self.block_keys, (self.n_seen + T) // self.block + 1)
        positions = super().begin(T)
        # The last row (token n_seen - 1) has middle tokens n_global .. n_seen - 1 - n_local.
        self.middle_end = self.n_seen - self.n_local
        return positions

    def store(self, layer: int, k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor):
        super().store(layer, k, k_rot, v)
        self.every_key[layer, :, :, self.call_start:self.n_seen] = rope.rotate(
            k, self.cos_middle, self.sin_middle)
        self.every_value[layer, :, :, self.call_start:self.n_seen] = v
        if self.block:  # the blocks this call completed get their mean key
            a, b = self.call_start // self.block, self.n_seen // self.block
            if b > a:
                keys = self.every_key[layer, :, :, a * self.block:b * self.block]
                self.block_keys[layer, :, :, a:b] = keys.unflatten(2, (b - a, self.block)).mean(3)

    def layer_mask(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        mask = super().layer_mask(layer, q)
        if layer < self.from_layer or self.middle_end <= self.n_global:
            return mask
        # The last row's picks, at n_local / 2, each head in its own block of top_k slots.
        top, values = top_k_middle(fold(q[:, :, -1:], self.n_kv_heads),
                                   *self.candidates(layer, q), self.top_k)
        start = self.ring + self.n_global
        picks = self.values[layer, :, :, start:].unflatten(2, (self.group, self.top_k))
        picks[:, :, :, :top.shape[-1]] = values
        T = q.shape[2]
        blocks = self.mask[..., start:].unflatten(2, (self.group, T)).unflatten(-1, (self.group, self.top_k))
        for g in range(self.group):  # row (head g, last t) sees block g only
            blocks[:, :, g, -1, g, :top.shape[-1]] = top[:, :, g]
        return self.mask

    def candidates(self, layer: int, q: torch.Tensor):
        """The middle keys and values the last row chooses from: all of them, (B, Hkv, M, hd);
        with blocks, each query head's own, (B, Hkv, group, C, hd): the tokens of its best
        blocks, plus the few middle tokens in no whole block (at either end)."""
        G, E, n = self.n_global, self.middle_end, self.block
        first, last = -(-G // n) if n else 0, E // n if n else 0          # whole blocks
        if not n or (last - first) <= BLOCKS_PER_PICK * self.top_k:
            middle = slice(G, E)
            return self.every_key[layer, :, :, middle], self.every_value[layer, :, :, middle]
        best = best_blocks(fold(q[:, :, -1:], self.n_kv_heads),
                           self.block_keys[layer, :, :, first:last], BLOCKS_PER_PICK * self.top_k)
        tokens = ((best + first)[..., None] * n + torch.arange(n, device=best.device)).flatten(-2)
        ends = torch.cat([torch.arange(G, first * n), torch.arange(last * n, E)]).to(best.device)
        idx = torch.cat([tokens, ends.expand(*tokens.shape[:-1], -1)], dim=-1)  # (B, Hkv, group, C)

        def take(t):  # t (B, Hkv, N, hd) -> (B, Hkv, group, C, hd)
            flat = idx.flatten(2)[..., None].expand(-1, -1, -1, t.shape[-1])
            return t.gather(2, flat).unflatten(2, idx.shape[2:])
        return take(self.every_key[layer]), take(self.every_value[layer])
