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
import torch

from tinfinite import rope
from tinfinite.attention import fold, scores
from tinfinite.cache import LambdaCache, grown
from tinfinite.config import ModelConfig


def top_k_middle(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, k: int):
    """Each query head's k best middle keys: their scores (B, Hkv, group, k') and values
    (B, Hkv, group, k', hd), k' = min(k, M).

    q: (B, Hkv, group, hd) the call's last row, folded, un-rotated; keys, values:
    (B, Hkv, M, hd) the middle keys turned back by n_local / 2, and their values."""
    s = scores(q, keys)                                                 # (B, Hkv, group, M)
    top, idx = s.topk(min(k, s.shape[-1]), dim=-1)                      # (B, Hkv, group, k')
    B, Hkv, group, kk = idx.shape
    flat = idx.reshape(B, Hkv, group * kk, 1).expand(-1, -1, -1, values.shape[-1])
    return top, values.gather(2, flat).view(B, Hkv, group, kk, -1)


class TopKCache(LambdaCache):
    """The Λ cache plus, for the last row of each call, the top_k best middle keys per head."""

    def __init__(self, cfg: ModelConfig, *, top_k: int, from_layer: int, n_global: int,
                 n_local: int, max_chunk: int, dtype=torch.float32, device="cpu",
                 start_distances: str = "ceiling"):
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

    def begin(self, T: int) -> torch.Tensor:
        if self.n_seen + T > self.every_key.shape[3]:
            self.every_key = grown(self.every_key, self.n_seen + T)
            self.every_value = grown(self.every_value, self.n_seen + T)
        positions = super().begin(T)
        # The last row (token n_seen - 1) has middle tokens n_global .. n_seen - 1 - n_local.
        self.middle_end = self.n_seen - self.n_local
        return positions

    def store(self, layer: int, k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor):
        super().store(layer, k, k_rot, v)
        self.every_key[layer, :, :, self.call_start:self.n_seen] = rope.rotate(
            k, self.cos_middle, self.sin_middle)
        self.every_value[layer, :, :, self.call_start:self.n_seen] = v

    def layer_mask(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        mask = super().layer_mask(layer, q)
        if layer < self.from_layer or self.middle_end <= self.n_global:
            return mask
        # The last row's picks, at n_local / 2, each head in its own block of top_k slots.
        middle = slice(self.n_global, self.middle_end)
        top, values = top_k_middle(fold(q[:, :, -1:], self.n_kv_heads), self.every_key[layer, :, :, middle],
                                   self.every_value[layer, :, :, middle], self.top_k)
        start = self.ring + self.n_global
        picks = self.values[layer, :, :, start:].unflatten(2, (self.group, self.top_k))
        picks[:, :, :, :top.shape[-1]] = values
        T = q.shape[2]
        blocks = self.mask[..., start:].unflatten(2, (self.group, T)).unflatten(-1, (self.group, self.top_k))
        for g in range(self.group):  # row (head g, last t) sees block g only
            blocks[:, :, g, -1, g, :top.shape[-1]] = top[:, :, g]
        return self.mask
