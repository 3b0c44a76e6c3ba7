"""The KV cache: one preallocated buffer per layer, written in place, never grown.

Slot layout (DESIGN.md §3), S = n_global + ring slots:

    slot:  0 .. n_global-1        | n_global .. S-1
           the first n_global     | a ring: the token at position p lives in
           tokens, kept for ever  | slot n_global + p % ring, overwriting p - ring

Each slot remembers the absolute position it holds (-1 = empty); masks are built from those
positions, never from slot numbers, so nothing breaks when the ring wraps.

The ring has n_local + max_chunk - 1 slots rather than n_local: a chunk of T tokens is written
*before* it attends (so the call needs no concatenation), and the extra slots keep the keys
that the chunk's first queries still see. Decoding (T = 1) needs exactly n_local.

Keys are stored pre-rotated and widened to 2 * head_dim so that one SDPA call can score a
starting token at the distance ceiling (attention.py explains the trick):

    ring slot:    [ rot(k, p) | 0        ]     seen at its true distance
    global slot:  [ 0         | rot(k, 0) ]    seen at the ceiling, once out of the window

With n_global = 0 there is no ceiling half and keys are head_dim wide.

`--attention full` is the same cache with an unbounded window: its ring starts small and
doubles when full (the growing cache of a vanilla engine, the paper's baseline).
"""
import torch

NO_LIMIT = 1 << 62  # the window of full attention


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, *, n_global: int,
                 n_local: int | None, max_chunk: int, dtype=torch.float32, device="cpu",
                 batch: int = 1):
        self.n_global = n_global
        self.n_local = NO_LIMIT if n_local is None else n_local
        self.grows = n_local is None
        self.max_chunk = max_chunk
        self.head_dim = head_dim
        self.widened = n_global > 0
        ring = 2 * max_chunk if self.grows else self.n_local + max_chunk - 1
        S = n_global + ring
        kw = 2 * head_dim if self.widened else head_dim
        self.k = torch.zeros(n_layers, batch, n_kv_heads, S, kw, dtype=dtype, device=device)
        self.v = torch.zeros(n_layers, batch, n_kv_heads, S, head_dim, dtype=dtype, device=device)
        self.pos = torch.full((S,), -1, dtype=torch.int64, device=device)  # absolute position per slot
        self.next_pos = 0       # position of the next token to be written
        self.offset = 0         # added to every position (tests shift it by 10^9)
        self._ring_slots = self._global_slots = None
        self._make_views()

    def _make_views(self):
        # Per-layer views, made once: the per-token path then only indexes and narrows.
        hd, L = self.head_dim, self.k.shape[0]
        self.k_near = [self.k[i, ..., :hd] for i in range(L)]  # (B, n_kv, S, hd) true distance
        self.k_far = [self.k[i, ..., hd:] for i in range(L)]   # (B, n_kv, S, hd) ceiling half
        self.k_all = [self.k[i] for i in range(L)]             # (B, n_kv, S, kw)
        self.v_all = [self.v[i] for i in range(L)]             # (B, n_kv, S, hd)

    @property
    def ring(self) -> int:
        return self.pos.numel() - self.n_global

    def reset(self, offset: int = 0):
        """Forget every token; the buffers are kept (their zero halves stay zero)."""
        self.pos.fill_(-1)
        self.next_pos, self.offset = 0, offset

    def claim(self, T: int) -> torch.Tensor:
        """Take slots for the next T tokens; return their absolute positions (T,) int64.

        Updates the position table once for all layers; each layer then calls write().
        """
        assert 0 < T <= self.max_chunk, f"chunk of {T} tokens, cache made for {self.max_chunk}"
        n = self.next_pos
        if self.grows and n + T > self.ring:
            self._grow(n + T)
        idx = torch.arange(n, n + T, device=self.pos.device)
        positions = idx + self.offset
        self._ring_slots = self.n_global + idx % self.ring
        self.pos[self._ring_slots] = positions
        g = idx[idx < self.n_global]  # the first n_global tokens also get a permanent slot
        self._global_slots = g if g.numel() else None
        if self._global_slots is not None:
            self.pos[g] = g + self.offset
        self.next_pos = n + T
        return positions

    def write(self, layer: int, k_rot: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor):
        """Store the claimed tokens of one layer in place.

        k_rot: (B, n_kv, T, hd) keys rotated at their positions; k_raw: the same keys rotated
        at position 0 (i.e. not rotated); v: (B, n_kv, T, hd).
        """
        ring, g = self._ring_slots, self._global_slots
        self.k_near[layer].index_copy_(2, ring, k_rot)
        self.v_all[layer].index_copy_(2, ring, v)
        if g is not None:
            n = g.numel()  # the first n tokens of this chunk are starting tokens
            self.k_far[layer].index_copy_(2, g, k_raw[:, :, :n])
            self.v_all[layer].index_copy_(2, g, v[:, :, :n])

    def visible(self, layer: int, far: bool):
        """Key and value views (B, n_kv, S, ...) over the filled slots; no copies.

        far=False (no query is n_local past a starting token yet): only the ring, and only the
        true-distance half of the keys, exactly a vanilla cache. far=True: everything.
        """
        start, used = self._span(far)
        k = self.k_all[layer] if far else self.k_near[layer]
        return k[:, :, start:used], self.v_all[layer][:, :, start:used]

    def visible_positions(self, far: bool) -> torch.Tensor:
        """(S,) positions of the slots visible() returns."""
        start, used = self._span(far)
        return self.pos[start:used]

    def _span(self, far: bool):
        return (0 if far else self.n_global), self.n_global + min(self.next_pos, self.ring)

    def _grow(self, needed: int):
        ring = self.ring
        while ring < needed:
            ring *= 2
        S = self.n_global + ring
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:3], S, old.shape[4])
            new[:, :, :, :old.shape[3]] = old
            setattr(self, name, new)
        pos = self.pos.new_full((S,), -1)
        pos[:self.pos.numel()] = self.pos
        self.pos = pos
        self._make_views()
