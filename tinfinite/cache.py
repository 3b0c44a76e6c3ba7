"""The Λ cache: a preallocated ring of keys and values, and LM-Infinite attention over it.

One object owns the whole mechanism: where each token's key and value live, at which distance
a query sees them (RoPE), which ones it sees (the Λ mask of attention.py) and the one SDPA
call per layer. The model hands it un-rotated q, k, v and gets the attention output back:

    cache.begin(T)                      # once per forward call: slots and mask for T tokens
    y = cache.attend(layer, q, k, v)    # in every layer

Slots, per layer and key head (B = 1: an engine serves one text at a time):

    slot:  0 .. ring-1                  | ring .. ring+n_global-1  | extra slots     | spare
           the ring: the token fed n-th | the starting tokens:     | for extensions  | (< 4)
           lives in slot n % ring,      | their values, and zero   | (topk.py)       |
           overwriting n - ring         | keys (scores: the mask)  |                 |

The spare slots, zero and always masked, round the count up to a multiple of KV_PARTS, so
that a decode step can attend to them in equal runs (attention.sdpa_in_parts).

Every ring slot remembers the absolute position it holds (-1 = empty); masks are built from
those positions, never from slot numbers, so nothing breaks when the ring wraps. The ring
has n_local + max_chunk - 1 slots: a chunk of T tokens is written *before* it attends (no
concatenation), and the extra slots keep the keys its first queries still see.

How one SDPA call scores both kinds of keys. RoPE is relative,

    <rot(q, i), rot(k, j)> = <rot(q, i - j), k>,

so ring keys, stored rotated at their true positions, are scored at their true distance
i - j by a query rotated at i: the mask adds 0 inside each row's window and -inf outside.
A starting token out of the window must be scored at the ceiling whatever i is,

    <rot(q_i, n_local), k_g> = <q_i, rot(k_g, -n_local)>,

so its key is stored turned back by the ceiling, once, and the un-rotated query scores it:
one small (rows x n_global) product per layer, written into the mask's starting-token
columns, whose keys are zero (q . 0 = 0, so the mask alone is the score). One softmax thus
covers window and starting tokens, as the rule says. A starting token still inside a row's
window is an ordinary ring key for that row, and its starting-token column is -inf there.
(Other rules turn each starting token back by a distance inside the window:
start_distance_rule.)

Until some query is n_local tokens past the first one, no key has left any window: a call is
then exactly vanilla causal attention over the filled ring, with one mask for every head; the
first call, whose keys are its own tokens, needs none (the kernel's causal flag: call_limit).

Memory is reserved once, with torch.empty: pages become resident only as slots are written,
so a short prompt does not pay for the whole window. A slot is never read before it is
written, except by the masked keys of a call past the window; those are zeroed before the
first such call (a masked key must still be finite: 0 * NaN = NaN).
"""
import math

import torch

from tinfinite import rope
from tinfinite.attention import KV_PARTS, additive, beyond_window, fold, lambda_mask, sdpa
from tinfinite.config import ModelConfig


def first_call_tokens(cfg: ModelConfig, n_local: int, max_chunk: int) -> int:
    """How many tokens the first call into an empty cache may take (LambdaCache.call_limit)."""
    return max(max_chunk, min(n_local, cfg.max_position_embeddings))


def slot_count(ring: int, n_global: int, extra_slots: int) -> int:
    """Slots per layer and key head: ring, starting tokens, extras, and spare slots up to the
    next multiple of KV_PARTS."""
    return -(-(ring + n_global + extra_slots) // KV_PARTS) * KV_PARTS


def start_distance_rule(rule: str | int, n_global: int, n_local: int,
                        trained: int) -> torch.Tensor:
    """(n_global,) the distance a query sees each starting token g at, once g is beyond its
    window; trained: the length the model was trained on (max_position_embeddings).

    "ceiling" is the paper's rule: every one at n_local, with the default window one past the
    trained range. "capped" (tinfinite's default): at the ceiling, but no farther than half
    the trained length, out of the far end of the range that training rarely filled; so with
    the default window at trained // 2, with a window of at most that, at the ceiling.
    "spread": in their order, where they would stand just before the window, token g at
    n_local - 1 - g (at least 0). An integer N: every one at min(N, n_local). Why the default
    is not the paper's: docs/decisions.md, "Where the starting tokens are seen"."""
    if rule == "ceiling":
        return torch.full((n_global,), n_local)
    if rule == "capped":
        return torch.full((n_global,), min(n_local, trained // 2))
    if rule == "spread":
        return (n_local - 1 - torch.arange(n_global)).clamp(min=0)
    return torch.full((n_global,), min(rule, n_local))


class LambdaCache:
    """The ring cache of one model and LM-Infinite attention over it.

    n_global: starting tokens kept for ever; n_local: the window (and the ceiling);
    max_chunk: the most tokens one forward call may feed; start_distances: where a query sees
    the starting tokens beyond its window (start_distance_rule; the paper's rule unless told,
    and the engine always tells it: settings.START_DISTANCE)."""

    def __init__(self, cfg: ModelConfig, *, n_global: int, n_local: int, max_chunk: int,
                 dtype=torch.float32, device="cpu", start_distances: str | int = "ceiling",
                 extra_slots: int = 0):
        self.n_global, self.n_local, self.max_chunk = n_global, n_local, max_chunk
        self.n_kv_heads, self.group = cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads
        self.dtype, self.device = dtype, torch.device(device)
        # float64 on the CPU: positions up to 2^40 keep their angles exact (rope.py)
        self.inv_freq = rope.inverse_frequencies(cfg)
        self.ring = self.ring_slots()
        self.first_call = first_call_tokens(cfg, n_local, max_chunk)
        S = slot_count(self.ring, n_global, extra_slots)
        shape = (cfg.n_layers, 1, cfg.n_kv_heads, S, cfg.head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)      # ring keys: rotated
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.keys[:, :, :, self.ring:].zero_()     # starting tokens, extras, spare: zero keys
        self.values[:, :, :, self.ring:].zero_()
        # A decode step past the window attends in KV_PARTS runs on the CPU (sdpa_in_parts),
        # where each run surely holds a slot the row sees: the row sees its n_local window
        # slots, so at most S - n_local are hidden from it, and a longer run holds a visible
        # one. (A tiny window in many slots: one run.)
        self.kv_parts = KV_PARTS if self.device.type == "cpu" and S // KV_PARTS > S - n_local else 1
        # The starting tokens' keys, turned back by their distance, rot(k_g, -d_g), stored as
        # the matrix their scores need, (hd, G) per head, times SDPA's 1/sqrt(hd), and in at
        # least float32: a decode step's product is 3 x 64 per head, and in bfloat16 the CPU
        # matmul's setup costs more than the work (docs/decisions.md, "tiny score products").
        self.score_dtype = torch.promote_types(dtype, torch.float32)
        self.start_keys = torch.zeros((cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, n_global),
                                      dtype=self.score_dtype, device=device)
        self.pos = torch.full((self.ring,), -1, dtype=torch.int64, device=device)  # per ring slot
        self._zeroed = False  # unwritten ring slots zeroed (see above)
        distances = start_distance_rule(start_distances, n_global, n_local,
                                        cfg.max_position_embeddings)         # (G,)
        self.cos_back, self.sin_back = self.turn_back(distances)                 # (G, hd)
        self.reset()

    def ring_slots(self) -> int:
        return self.n_local + self.max_chunk - 1

    def call_limit(self) -> int:
        """The most tokens the next call may take: max_chunk, and into an empty cache the
        whole window (at most the trained length). Those tokens fill slots 0 .. T-1 of a ring
        at least n_local long, and inside the window the rule is causal attention over them:
        one call with the kernel's causal flag and no mask, as a vanilla engine prefills
        (docs/decisions.md, "A prompt's first call: the whole window")."""
        return self.first_call if self.n_seen == 0 else self.max_chunk

    def turn_back(self, distances: torch.Tensor):
        """cos, sin (N, hd) of rotations by -distances (N,): the rotations by distances,
        inverted (the same cosines, the sines negated), so that rope.rotate turns keys back."""
        cos, sin = rope.cos_sin(distances, self.inv_freq, self.dtype, self.device)
        return cos, -sin

    @torch.inference_mode()  # a grown ring (FullCache) was made in inference mode
    def reset(self, first_position: int = 0):
        """Forget every token (the buffers stay). The next token gets position first_position:
        only distances matter, so any start gives the same output (the tests use 2^40)."""
        self.pos.fill_(-1)
        self.n_seen = 0          # tokens fed since the reset
        self.first = first_position
        self.decoding = False    # self.mask is a decode step's past the window (call_mask)

    def begin(self, T: int) -> torch.Tensor:
        """Take slots for the next T tokens and make this call's RoPE tables and mask.

        Returns their absolute positions (T,). Every layer then calls attend()."""
        assert 0 < T <= self.call_limit(), f"call of {T} tokens, at most {self.call_limit()} here"
        n = self.n_seen
        positions = torch.arange(n + self.first, n + self.first + T)  # on the CPU, for RoPE
        self.slots = torch.arange(n, n + T, device=self.device) % self.ring
        self.pos[self.slots] = here = positions.to(self.device)
        self.call_start = n
        self.new_starts = min(n + T, self.n_global) - n  # this call's tokens that start the text
        self.n_seen = n + T
        self.cos, self.sin = rope.cos_sin(positions, self.inv_freq, self.dtype, self.device)  # (T, hd)
        self.inside_window = n + T - 1 < self.n_local
        self.causal = self.inside_window and n == 0  # the call's own tokens are all its keys
        self.decoding = self.decoding and T == 1 and not self.inside_window
        self.mask = self.call_mask(here)
        return positions

    def call_mask(self, positions: torch.Tensor) -> torch.Tensor | None:
        """This call's additive mask: (T, filled ring) inside the window, the same for every
        head (None for one token, which sees every key, and for a causal call); else
        (1, Hkv, group*T, all slots), rows in fold() order, the starting-token columns to be
        filled by each layer (layer_mask)."""
        T = len(positions)
        if self.inside_window:
            if T == 1 or self.causal:
                return None
            return additive(lambda_mask(positions, self.pos[:self.n_seen], self.n_local),
                            self.dtype)                                      # (T, R)
        g = torch.arange(self.n_global, device=self.device)
        start_pos = torch.where(g < self.n_seen, g + self.first, -1)      # -1: not seen yet
        self.start_bias = additive(beyond_window(positions, start_pos, self.n_local),
                                   self.score_dtype).repeat(self.group, 1)  # (group*T, G)
        if T == 1 and self.decoding:
            # One more decode step: the window moved by one token, so only two ring columns
            # change: the token n_local back leaves it, the new one enters (same slot when
            # the ring is exactly n_local long: enter last).
            n = self.n_seen - 1                                            # the new token
            self.mask[..., (n - self.n_local) % self.ring] = float("-inf")
            self.mask[..., n % self.ring] = 0
            return self.mask
        if not self._zeroed:
            self.keys[:, :, :, self.n_seen:self.ring].zero_()
            self.values[:, :, :, self.n_seen:self.ring].zero_()
            self._zeroed = True
        ring = additive(lambda_mask(positions, self.pos, self.n_local), self.dtype)
        mask = torch.full((1, self.n_kv_heads, self.group * T, self.keys.shape[3]),
                          float("-inf"), dtype=self.dtype, device=self.device)
        mask[..., :self.ring] = ring.repeat(self.group, 1)
        self.decoding = T == 1
        return mask

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this call's keys and values in the layer's slots, then attend.

        q: (B, H, T, hd), k, v: (B, Hkv, T, hd), q and k un-rotated, in the model's dtype.
        Returns (B, H, T, hd) in that dtype. Attention runs in the cache's dtype, which may be
        wider (settings.KV_DTYPE): the call's T rows are turned into it, and back."""
        model_dtype = q.dtype
        q, k, v = q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)    # no-ops if the same
        q_rot = rope.rotate(q, self.cos, self.sin)                         # at true positions
        k_rot = rope.rotate(k, self.cos, self.sin)
        self.store(layer, k, k_rot, v)
        if self.inside_window:
            n = self.n_seen
            y = sdpa(q_rot, self.keys[layer, :, :, :n], self.values[layer, :, :, :n], self.mask,
                     causal=self.causal)
        else:
            parts = self.kv_parts if q.shape[2] == 1 else 1  # a prefill chunk has rows enough
            y = sdpa(q_rot, self.keys[layer], self.values[layer], self.layer_mask(layer, q), parts)
        return y.to(model_dtype)

    def store(self, layer: int, k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor):
        """Write the call's tokens into the ring; the first n_global of the text also into the
        starting-token slots (the key turned back by the ceiling, the value)."""
        write(self.keys, layer, self.slots, k_rot)
        write(self.values, layer, self.slots, v)
        if self.new_starts > 0:
            a, b = self.call_start, self.call_start + self.new_starts
            turned = rope.rotate(k[0, :, :self.new_starts], self.cos_back[a:b], self.sin_back[a:b])
            self.start_keys[layer, :, :, a:b] = turned.transpose(1, 2) / math.sqrt(k.shape[-1])
            self.values[layer, :, :, self.ring + a:self.ring + b] = v[:, :, :self.new_starts]

    def layer_mask(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """The call's mask with this layer's starting-token scores, <q, rot(k_g, -d_g)>
        (+ -inf where g is still in the row's window). q un-rotated."""
        R, G = self.ring, self.n_global
        if G:
            q = fold(q, self.n_kv_heads)[0].to(self.score_dtype)           # (Hkv, rows, hd)
            self.mask[0, :, :, R:R + G] = torch.baddbmm(self.start_bias, q, self.start_keys[layer])
        return self.mask


def write(ring: torch.Tensor, layer: int, slots: torch.Tensor, src: torch.Tensor):
    """ring[layer, :, :, slots] = src, in place: ring (L, 1, Hkv, slots, hd), src (1, Hkv, T, hd)."""
    if torch.compiler.is_compiling():
        # Traced by --compile (compiled.py), a write through one layer's view is functionalised
        # into a copy of the whole buffer per layer and step; one index_put_ on the whole
        # buffer is an in-place write of the graph's input, which inductor keeps in place.
        heads = torch.arange(ring.shape[2], device=ring.device)[:, None]       # (Hkv, 1)
        ring.index_put_((torch.tensor(layer, device=ring.device), torch.tensor(0, device=ring.device),
                         heads, slots[None, :]), src[0])
    else:
        ring[layer].index_copy_(2, slots, src)


class FullCache(LambdaCache):
    """Vanilla causal attention (`--attention full`, the paper's baseline): no window, no
    starting tokens, and a ring that doubles when full: the growing cache of a vanilla engine."""

    NO_LIMIT = 1 << 62

    def __init__(self, cfg: ModelConfig, *, max_chunk: int, dtype=torch.float32, device="cpu"):
        super().__init__(cfg, n_global=0, n_local=self.NO_LIMIT, max_chunk=max_chunk,
                         dtype=dtype, device=device)

    def ring_slots(self) -> int:
        return 2 * self.max_chunk  # to start with

    def begin(self, T: int) -> torch.Tensor:
        if self.n_seen + T > self.ring:
            self.keys, self.values = grown(self.keys, self.n_seen + T), grown(self.values, self.n_seen + T)
            pos = self.pos.new_full((self.keys.shape[3],), -1)
            pos[:self.ring] = self.pos
            self.pos, self.ring = pos, len(pos)
        return super().begin(T)


def grown(t: torch.Tensor, needed: int, empty=None) -> torch.Tensor:
    """t (L, B, H, N, hd) copied into a buffer of at least `needed` slots (doubling), made by
    empty(shape) (default: in t's memory)."""
    n = t.shape[3]
    while n < needed:
        n *= 2
    shape = (*t.shape[:3], n, t.shape[4])
    new = empty(shape) if empty else t.new_empty(shape)
    new[:, :, :, :t.shape[3]] = t
    return new
