"""Top-k middle attention: the paper's opt-in retrieval variant, as an extension of the Λ cache.

LM-Infinite (§5.2) lets the *last* query row of each forward call also attend, in layers
>= from_layer, to the k best "middle" keys of each head: the tokens that are neither starting
tokens nor in the window, n_global <= j <= i - n_local. They are scored, and seen, at the
fixed distance n_local / 2. Choosing them needs every middle key, so this cache keeps every
token's key (turned back by n_local / 2, as the ceiling's starting keys are: cache.py) and
value, in a buffer that doubles as it fills: memory grows with the input (2 x layers x
kv_heads x head_dim x dtype bytes per token). Opt-in, never the default.

Scoring every middle key costs time that grows with the input too. With block > 0 (after
InfLLM, Xiao et al. 2024) the middle is cut into blocks of `block` tokens, each represented by
the mean of its keys; a query head scores the representatives, then only the tokens of its
BLOCKS_PER_PICK x k best blocks (and the few middle tokens in no whole block) compete.
With offload (a folder), every token's keys and values live in a file there, memory-mapped:
RAM keeps the window and the block keys, and the OS pages in what a step reads (with blocks,
a few blocks per head), so an input larger than RAM fits.

The picks reach SDPA the way the starting tokens do (cache.py): extra slots hold their values
and zero keys, and their scores go into the mask, each query head's picks in its own block of
`top_k` columns, visible to that head's last row only.
"""
import math
import os
import tempfile

import torch

from tinfinite import rope
from tinfinite.attention import fold, scores
from tinfinite.cache import LambdaCache, grown
from tinfinite.config import ModelConfig

# With blocks, each query head looks inside its BLOCKS_PER_PICK * top_k best blocks.
BLOCKS_PER_PICK = 2


def rows(t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Gather tokens' rows per key head: t (1, Hkv, N, hd), tokens (1, Hkv, ...) token numbers
    -> (1, Hkv, ..., hd). One index_select of whole rows over the flattened heads (gather would
    index every element of them)."""
    Hkv, N = t.shape[1], t.shape[2]
    head = torch.arange(Hkv, device=tokens.device).view(1, Hkv, *[1] * (tokens.dim() - 2))
    flat = (tokens + head * N).flatten()
    return t.reshape(Hkv * N, -1).index_select(0, flat).view(*tokens.shape, -1)


class TopKCache(LambdaCache):
    """The Λ cache plus, for the last row of each call, the top_k best middle keys per head."""

    def __init__(self, cfg: ModelConfig, *, top_k: int, from_layer: int, n_global: int,
                 n_local: int, max_chunk: int, dtype=torch.float32, device="cpu",
                 start_distances: str | int = "ceiling", block: int = 0, offload: str | None = None):
        group = cfg.n_heads // cfg.n_kv_heads
        super().__init__(cfg, n_global=n_global, n_local=n_local, max_chunk=max_chunk,
                         dtype=dtype, device=device, start_distances=start_distances,
                         extra_slots=group * top_k)
        self.top_k, self.from_layer, self.block, self.offload = top_k, from_layer, block, offload
        # Every token's key turned back by n_local / 2, and value: (L, B, Hkv, capacity, hd),
        # doubling; with blocks, each whole block's mean key: (L, B, Hkv, blocks, hd).
        shape = (cfg.n_layers, 1, cfg.n_kv_heads, 2 * max_chunk, cfg.head_dim)
        self.every_key, self.every_value = self.every_buffer(shape), self.every_buffer(shape)
        self.block_keys = torch.empty(shape[:3] + (1, shape[4]), dtype=dtype, device=device)
        self.cos_middle, self.sin_middle = self.turn_back(torch.tensor([n_local // 2]))

    def begin(self, T: int) -> torch.Tensor:
        if self.n_seen + T > self.every_key.shape[3]:
            self.every_key = grown(self.every_key, self.n_seen + T, self.every_buffer)
            self.every_value = grown(self.every_value, self.n_seen + T, self.every_buffer)
        if self.block and (self.n_seen + T) // self.block > self.block_keys.shape[3]:
            self.block_keys = grown(self.block_keys, (self.n_seen + T) // self.block)
        positions = super().begin(T)
        # The last row (token n_seen - 1) has middle tokens n_global .. n_seen - 1 - n_local.
        self.middle_end = self.n_seen - self.n_local
        return positions

    def every_buffer(self, shape: tuple) -> torch.Tensor:
        """An empty buffer for every token's keys or values: in RAM, or with offload in a new
        file in that folder, memory-mapped. The file is removed at once: the mapping keeps its
        space until the buffer is freed, and nothing is left behind if the process dies."""
        if not self.offload:
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        fd, path = tempfile.mkstemp(prefix="tinfinite-topk-", dir=self.offload)
        os.close(fd)
        try:
            return torch.from_file(path, shared=True, size=math.prod(shape),
                                   dtype=self.dtype).view(shape)
        finally:
            os.unlink(path)

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
        top, tokens = self.picks(layer, fold(q[:, :, -1:], self.n_kv_heads))
        start, k = self.ring + self.n_global, top.shape[-1]
        end = start + self.group * self.top_k                                # (then spare slots)
        slots = self.values[layer, :, :, start:end].unflatten(2, (self.group, self.top_k))
        slots[:, :, :, :k] = rows(self.every_value[layer], tokens)
        T = q.shape[2]
        blocks = self.mask[..., start:end].unflatten(2, (self.group, T)).unflatten(-1, (self.group, self.top_k))
        for g in range(self.group):  # row (head g, last t) sees block g only
            blocks[:, :, g, -1, g, :k] = top[:, :, g]
        return self.mask

    def picks(self, layer: int, q: torch.Tensor):
        """Each query head's top_k middle tokens for the last row: their scores and token
        numbers, (B, Hkv, group, k'), k' <= top_k. q: (B, Hkv, group, hd), un-rotated."""
        G, E, n = self.n_global, self.middle_end, self.block
        first, last = (-(-G // n), E // n) if n else (0, 0)                 # whole blocks
        if last - first <= BLOCKS_PER_PICK * self.top_k:                    # (always: no blocks)
            s = scores(q, self.every_key[layer, :, :, G:E])                 # (B, Hkv, group, M)
            top, idx = s.topk(min(self.top_k, E - G), dim=-1)
            return top, idx + G
        best = scores(q, self.block_keys[layer, :, :, first:last]).topk(
            BLOCKS_PER_PICK * self.top_k, dim=-1).indices + first           # (B, Hkv, group, nb)
        tokens = (best[..., None] * n + torch.arange(n, device=best.device)).flatten(-2)
        ends = torch.cat([torch.arange(G, first * n), torch.arange(last * n, E)]).to(best.device)
        tokens = torch.cat([tokens, ends.expand(*tokens.shape[:-1], -1)], dim=-1)  # (.., C)
        keys = rows(self.every_key[layer], tokens)                          # (B, Hkv, group, C, hd)
        s = (keys @ q[..., None]).squeeze(-1) / math.sqrt(q.shape[-1])      # (B, Hkv, group, C)
        top, idx = s.topk(self.top_k, dim=-1)
        return top, tokens.gather(-1, idx)
