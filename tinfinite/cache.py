"""The KV cache: one buffer per layer, reserved once and written in place.

Slot layout (DESIGN.md §3), per layer and key head, S = ring + n_global + group * top_k slots:

    slot:  0 .. ring-1                  | ring .. +n_global        | then group * top_k
           the ring: the token at       | the starting tokens'     | top-k middle picks of the
           position p lives in slot     | values; their keys are   | call's last row, one block
           p % ring, overwriting p-ring | zero (scores: the mask)  | per query head (opt-in)

Ring slots remember the absolute position they hold (-1 = empty); masks are built from those
positions, never from slot numbers, so nothing breaks when the ring wraps.

The ring has n_local + max_chunk - 1 slots rather than n_local: a chunk of T tokens is written
*before* it attends (so the call needs no concatenation), and the extra slots keep the keys
that the chunk's first queries still see. Decoding (T = 1) needs exactly n_local.

Starting tokens and picks are attended at a distance that depends on the query, not on where
the key stands (the ceiling; n_local / 2 for picks), so their keys cannot be stored rotated once.
Their scores are computed per call from un-rotated keys (`k_start`, `k_all`) and reach SDPA
through the additive mask (attention.py); the slots hold their values and zero keys.

Memory is reserved once, with torch.empty: pages become resident only as slots are written,
so a short prompt does not pay for the whole window. A slot is never read before it is written,
except by the masked keys of a call that sees the whole ring; those are zeroed once when the
first such call comes (a masked key must still be finite: 0 * NaN = NaN).

`--attention full` is the same cache with no window and no starting tokens: its ring starts
small and doubles when full (the growing cache of a vanilla engine, the paper's baseline).
Top-k middle attention (opt-in) keeps every token's un-rotated key and value (`k_all`, `v_all`),
which grow with the input the same way: that is its memory cost.
"""
import torch

NO_LIMIT = 1 << 62  # the window of full attention


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, *, n_global: int,
                 n_local: int | None, max_chunk: int, top_k: int = 0, top_k_from_layer: int = 4,
                 group: int = 1, dtype=torch.float32, device="cpu", batch: int = 1):
        self.n_global = n_global
        self.n_local = NO_LIMIT if n_local is None else n_local
        self.grows = n_local is None
        assert not (self.grows and (n_global or top_k)), "full attention sees every token"
        self.max_chunk = max_chunk
        self.top_k, self.top_k_from_layer, self.group = top_k, top_k_from_layer, group
        ring = 2 * max_chunk if self.grows else self.n_local + max_chunk - 1
        extra = n_global + group * top_k
        shape = (n_layers, batch, n_kv_heads, ring + extra, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.k[:, :, :, ring:].zero_()  # starting tokens and picks: zero keys, values set later
        self.v[:, :, :, ring:].zero_()
        self._cleared = False           # unwritten ring slots zeroed (see above)
        starts = (n_layers, batch, n_kv_heads, n_global, head_dim)
        self.k_start = torch.zeros(starts, dtype=dtype, device=device)  # starting keys, un-rotated
        # Every token's un-rotated key and value, for top-k middle attention only.
        self.k_all = self.v_all = None
        if top_k:
            self.k_all = torch.empty((n_layers, batch, n_kv_heads, 2 * max_chunk, head_dim),
                                     dtype=dtype, device=device)
            self.v_all = torch.empty_like(self.k_all)
        self.pos = torch.full((ring,), -1, dtype=torch.int64, device=device)  # per ring slot
        self.next_pos = 0       # position of the next token to be written (before the offset)
        self.offset = 0         # added to every position (tests shift it by 10^9)
        self._ring_slots = self._starts = None
        self.rotations = {}     # distance -> RoPE cos, sin: fixed-distance tables (attention.py)

    @property
    def ring(self) -> int:
        return self.pos.numel()

    @property
    def n_starts(self) -> int:
        """How many starting tokens have been seen so far."""
        return min(self.next_pos, self.n_global)

    @torch.inference_mode()  # a grown ring was made under inference mode (in forward)
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
            self._grow_ring(n + T)
        if self.k_all is not None and n + T > self.k_all.shape[3]:
            self.k_all, self.v_all = _grown(self.k_all, n + T), _grown(self.v_all, n + T)
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
        self.k[layer].index_copy_(2, self._ring_slots, k_rot)
        self.v[layer].index_copy_(2, self._ring_slots, v)
        if self._starts is not None:
            a, b = self._starts
            self.k_start[layer, :, :, a:b] = k_raw[:, :, :b - a]
            self.v[layer, :, :, self.ring + a:self.ring + b] = v[:, :, :b - a]
        if self.k_all is not None:
            n, T = self.next_pos, v.shape[2]
            self.k_all[layer, :, :, n - T:n] = k_raw
            self.v_all[layer, :, :, n - T:n] = v

    def write_picks(self, layer: int, v: torch.Tensor):
        """v: (B, Hkv, group, k, hd), the values of each query head's top-k middle picks."""
        k = v.shape[3]
        start = self.ring + self.n_global
        picks = self.v[layer, :, :, start:].unflatten(2, (self.group, self.top_k))
        picks[:, :, :, :k] = v

    def middle(self, layer: int, last: int):
        """Un-rotated keys and values (B, Hkv, M, hd) of the middle tokens of the query at
        position `last` (offset included): n_global <= j <= last - n_local."""
        end = last - self.offset - self.n_local + 1
        return (self.k_all[layer, :, :, self.n_global:end],
                self.v_all[layer, :, :, self.n_global:end])

    def clear_unwritten(self):
        """Before the first call that reads the whole ring: zero what was never written."""
        if not self._cleared:
            self.k[:, :, :, self.next_pos:self.ring].zero_()
            self.v[:, :, :, self.next_pos:self.ring].zero_()
            self._cleared = True

    def visible(self, layer: int, wide: bool, picks: bool):
        """Key and value views (B, Hkv, S, hd) of the slots a call attends over.

        wide=False (no query is n_local past token 0 yet): the filled ring, exactly a vanilla
        cache. wide=True: the whole ring, the starting tokens, and the picks if `picks`.
        """
        n = min(self.next_pos, self.ring)
        if wide:
            n = self.ring + self.n_global + (self.group * self.top_k if picks else 0)
        return self.k[layer, :, :, :n], self.v[layer, :, :, :n]

    def ring_positions(self, wide: bool) -> torch.Tensor:
        """(S_ring,) positions of the ring slots that visible() returns."""
        return self.pos if wide else self.pos[:min(self.next_pos, self.ring)]

    def _grow_ring(self, needed: int):
        ring = self.ring
        while ring < needed:
            ring *= 2
        self.k, self.v = _grown(self.k, ring), _grown(self.v, ring)  # full attention: no extras
        pos = self.pos.new_full((ring,), -1)
        pos[:self.pos.numel()] = self.pos
        self.pos = pos


def _grown(t: torch.Tensor, needed: int) -> torch.Tensor:
    """t (L, B, H, N, hd) copied into a buffer of at least `needed` slots (doubling)."""
    n = t.shape[3]
    while n < needed:
        n *= 2
    new = t.new_empty(*t.shape[:3], n, t.shape[4])
    new[:, :, :, :t.shape[3]] = t
    return new
