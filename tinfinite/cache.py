"""The KV cache: one buffer per layer, reserved once and written in place.

Slot layout (DESIGN.md §3), per layer, S = ring + n_global * max_chunk slots:

    slot:  0 .. ring-1                         | ring .. S-1
           the ring: the token at position p   | starting-token copies: for each query row t
           lives in slot p % ring, overwriting | of the current call, n_global keys rotated
           p - ring                            | so that row t sees them at the ceiling

Ring slots remember the absolute position they hold (-1 = empty); masks are built from those
positions, never from slot numbers, so nothing breaks when the ring wraps.

The ring has n_local + max_chunk - 1 slots rather than n_local: a chunk of T tokens is written
*before* it attends (so the call needs no concatenation), and the extra slots keep the keys
that the chunk's first queries still see. Decoding (T = 1) needs exactly n_local.

Starting tokens. Query i must see starting token g beyond its window at distance `ceiling`:
<rot(q, i), rot(k_g, i - ceiling)> = <rot(q, ceiling), k_g> (RoPE is relative). So the first
n_global keys are also kept un-rotated (`k_start`), and each call writes, for each of its T
rows, a copy rotated at i_t - ceiling into the copy area, which only row t may see (values are
copied as they are). Memory: n_global * max_chunk extra slots. (Smaller calls would need
fewer copies, but every call reads all the weights: calls of max_chunk // n_global tokens
halved prefill speed at 16K tokens here.)

Memory is reserved once, with torch.empty: pages become resident only as slots are written,
so a short prompt does not pay for the whole window. A slot is never read before it is written,
except by the masked keys of a call that sees the whole ring; those, and the copies, are zeroed
once when the first such call comes (a masked key must still be finite: 0 * NaN = NaN).

`--attention full` is the same cache with no window and no starting tokens: its ring starts
small and doubles when full (the growing cache of a vanilla engine, the paper's baseline).
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
        assert not (self.grows and n_global), "full attention has no starting tokens"
        self.max_chunk = max_chunk
        ring = 2 * max_chunk if self.grows else self.n_local + max_chunk - 1
        shape = (n_layers, batch, n_kv_heads, ring + n_global * max_chunk, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self._cleared = False   # unwritten ring slots and the copy area zeroed (see above)
        starts = (n_layers, batch, n_kv_heads, n_global, head_dim)
        self.k_start = torch.zeros(starts, dtype=dtype, device=device)  # starting keys, un-rotated
        self.v_start = torch.zeros(starts, dtype=dtype, device=device)
        self.pos = torch.full((ring,), -1, dtype=torch.int64, device=device)  # per ring slot
        self.next_pos = 0       # position of the next token to be written
        self.offset = 0         # added to every position (tests shift it by 10^9)
        self._ring_slots = self._starts = None
        self._make_views()

    def _make_views(self):
        # Per-layer views, made once: the per-token path then only indexes and narrows.
        L, B, Hkv, _, hd = self.k.shape
        R, G, C = self.ring, self.n_global, self.max_chunk
        self.k_layer = [self.k[i] for i in range(L)]                               # (B, Hkv, S, hd)
        self.v_layer = [self.v[i] for i in range(L)]
        self.k_copies = [self.k[i, :, :, R:].view(B, Hkv, C, G, hd) for i in range(L)]
        self.v_copies = [self.v[i, :, :, R:].view(B, Hkv, C, G, hd) for i in range(L)]

    @property
    def ring(self) -> int:
        return self.pos.numel()

    @property
    def n_starts(self) -> int:
        """How many starting tokens have been seen so far."""
        return min(self.next_pos, self.n_global)

    def reset(self, offset: int = 0):
        """Forget every token; the buffers are kept."""
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
        self._ring_slots = idx % self.ring
        self.pos[self._ring_slots] = positions
        starts = min(n + T, self.n_global) - n  # this chunk's tokens that are starting tokens
        self._starts = (n, n + starts) if starts > 0 else None
        self.next_pos = n + T
        return positions

    def write(self, layer: int, k_rot: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor):
        """Store the claimed tokens of one layer in place.

        k_rot: (B, Hkv, T, hd) keys rotated at their positions; k_raw: the same, un-rotated;
        v: (B, Hkv, T, hd).
        """
        self.k_layer[layer].index_copy_(2, self._ring_slots, k_rot)
        self.v_layer[layer].index_copy_(2, self._ring_slots, v)
        if self._starts is not None:
            a, b = self._starts
            self.k_start[layer, :, :, a:b] = k_raw[:, :, :b - a]
            self.v_start[layer, :, :, a:b] = v[:, :, :b - a]

    def write_copies(self, layer: int, k: torch.Tensor):
        """k: (B, Hkv, T, n_starts, hd), row t's starting keys rotated at i_t - ceiling."""
        T, G = k.shape[2], k.shape[3]
        self.k_copies[layer][:, :, :T, :G] = k
        self.v_copies[layer][:, :, :T, :G] = self.v_start[layer, :, :, None, :G]  # same per row

    def clear_unwritten(self):
        """Before the first call that reads the whole ring: zero what was never written."""
        if not self._cleared:
            for t in (self.k, self.v):
                t[:, :, :, min(self.next_pos, self.ring):].zero_()  # ring tail and copy area
            self._cleared = True

    def visible(self, layer: int, T: int, far: bool):
        """Key and value views (B, Hkv, S, hd) for a call of T rows; no copies.

        far=False (no query is n_local past a starting token yet): the filled ring, exactly a
        vanilla cache. far=True: the whole ring, then the T rows' starting-token copies.
        """
        n = self.ring + T * self.n_global if far else min(self.next_pos, self.ring)
        return self.k_layer[layer][:, :, :n], self.v_layer[layer][:, :, :n]

    def ring_positions(self, far: bool) -> torch.Tensor:
        """(S_ring,) positions of the ring slots that visible() returns."""
        return self.pos if far else self.pos[:min(self.next_pos, self.ring)]

    def _grow(self, needed: int):
        ring = self.ring
        while ring < needed:
            ring *= 2
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:3], ring, old.shape[4])  # full attention: no copies
            new[:, :, :, :old.shape[3]] = old
            setattr(self, name, new)
        pos = self.pos.new_full((ring,), -1)
        pos[:self.pos.numel()] = self.pos
        self.pos = pos
        self._make_views()
