"""LM-Infinite's attention rule: which keys a query sees, at what distance, in one SDPA call.

The rule (Han et al. 2023, "LM-Infinite", https://arxiv.org/abs/2308.16137, §4). Query at
position i, key at j <= i, distance d = i - j:

    key j visible to query i   iff   0 <= d < n_local   or   j < n_global
    score(i, j) = <rot(q_i, min(d, ceiling)), k_j> / sqrt(head_dim)

with ceiling = n_local, as in the paper (both are the pre-training length L): window keys are
at their true distance, and a starting token out of the window is seen at exactly n_local.
(tinfinite's default sees it at most L / 2 away: cache.start_distance_rule says why.)

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

This file holds the rule as functions of positions; cache.py applies it to the slots of the
ring cache, one layer at a time. SDPA computes softmax(q k^T / sqrt(hd) + mask) v, and an
additive mask may hold any number, not only 0 and -inf: that is how one call scores window
keys at their true distance and starting tokens at the ceiling (see cache.py).
"""
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

def lambda_mask(q_pos: torch.Tensor, key_pos: torch.Tensor, n_local: int) -> torch.Tensor:
    """(T, K) bool, True = key k is in query t's window. From absolute positions only.

    q_pos: (T,) query positions; key_pos: (K,) positions of the keys (-1 = an empty slot).
    Compared without the (T, K) distances: as int64 they are 8x the mask's bytes, allocated
    and filled for every prefill chunk."""
    q, k = q_pos[:, None], key_pos[None, :]
    return (key_pos >= 0) & (k <= q) & (k > q - n_local)                 # 0 <= q - k < n_local


def beyond_window(q_pos: torch.Tensor, start_pos: torch.Tensor, n_local: int) -> torch.Tensor:
    """(T, G) bool, True = starting token g is out of query t's window, so the query sees it
    at the ceiling (inside the window it is an ordinary window key).

    start_pos: (G,) positions of the starting tokens (-1 = not seen yet)."""
    return (start_pos >= 0) & (q_pos[:, None] - start_pos[None, :] >= n_local)


def additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool -> additive mask of the same shape: 0 where visible, -inf elsewhere."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
        ~visible, float("-inf"))


def fold(q: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """(B, H, T, hd) -> (B, Hkv, group * T, hd): the query heads that share a key head become
    extra query rows of it, in the order (head in group, t).

    Grouped-query attention folded this way reads every key and value from memory once per
    layer, not once per query head (decoding is bound by exactly that traffic)."""
    B, H, T, hd = q.shape
    return q.reshape(B, n_kv_heads, H // n_kv_heads * T, hd)


def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q (B, Hkv, rows, hd) . k (B, Hkv, N, hd) / sqrt(hd) -> (B, Hkv, rows, N), as SDPA scales.

    Computed as (k q^T)^T: k is often a slice of a bigger buffer (topk.py), which the CPU
    matmul reads in place as its left operand but copies first as a transposed right one."""
    return (k @ q.transpose(-1, -2)).transpose(-1, -2) / math.sqrt(q.shape[-1])


# The SDPA backends a call on CUDA may use, by whether it has a mask. torch's own choice there
# (cuDNN and flash both allowed) costs ~40 ms per call whenever the key count is new, and
# inside the window every call's is: a decode step attends over one key more than the last,
# a prefill chunk over 256 more. Each backend named alone costs no such thing; flash is the
# fastest call without a mask, cuDNN with one (bench/sdpa_backends.py; docs/decisions.md,
# "The SDPA backend"). On the CPU torch's own choice is the fastest for every call shape, and
# no backend is named.
CUDA_BACKENDS = {
    False: [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    True: [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
}


# How many runs a decode step past the window cuts its slots into on the CPU (sdpa_in_parts).
KV_PARTS = 4


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
         parts: int = 1, causal: bool = False) -> torch.Tensor:
    """The one scaled_dot_product_attention call of a layer.

    q: (B, H, T, hd) rotated queries; k, v: (B, Hkv, S, hd) the slots attended over; mask:
    additive, (T, S) the same for every head, or (B, Hkv, group * T, S) with rows in the order
    of fold(), or None (every key visible to every row). parts > 1 (CPU, B = 1, T = 1, a 4-D
    mask): the slots attended in that many runs, as sdpa_in_parts says. causal (mask None,
    S = T: the call's own tokens are all its keys): row t sees keys 0..t, through the
    kernel's causal flag, which needs no mask and skips the blocks above the diagonal.
    Returns (B, H, T, hd)."""
    B, H, T, hd = q.shape
    if causal:
        # The flag aligns the triangle to the top left, so it is this rule only when the keys
        # are the queries' own tokens; folded rows would break it (row t of the second head
        # of a group would see t + T keys), so the heads stay as they are (enable_gqa).
        assert mask is None and k.shape[2] == T, "a causal call attends to its own tokens only"
        with sdpa_kernel(CUDA_BACKENDS[False]) if q.device.type == "cuda" else nullcontext():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if q.device.type == "cuda":
        if mask is not None and mask.dim() == 2:
            mask = mask.repeat(H // k.shape[1], 1)                         # (group * T, S)
        with sdpa_kernel(CUDA_BACKENDS[mask is not None]):
            y = F.scaled_dot_product_attention(fold(q, k.shape[1]), k, v, attn_mask=mask)
        return y.reshape(B, H, T, hd)  # CUDA kernels may return y not contiguous
    if T == 1:
        # A decode step on the CPU: the query heads of a key head as its rows (fold), so that
        # the flash kernel's work item, one per head and query block, reads each key head once
        # for its whole group, in 3-row matmuls, not once per query head in 1-row ones
        # (docs/decisions.md, "Decode steps on the CPU: folded rows").
        qf = fold(q, k.shape[1])                                          # (B, Hkv, group, hd)
        if parts > 1:
            return sdpa_in_parts(qf, k, v, mask, parts).view(B, H, T, hd)
        return F.scaled_dot_product_attention(qf, k, v, attn_mask=mask).view(B, H, T, hd)
    # A prefill chunk on the CPU: the flash kernel takes the query heads as they are and reads
    # each key head for its group itself (enable_gqa), one work item per query head and query
    # block, and the (T, S) mask of a chunk inside the window serves every head as it is
    # (docs/decisions.md, "Grouped-query heads on the CPU"). A mask in fold() order is the
    # same memory as one per query head.
    if mask is not None and mask.dim() == 4:
        mask = mask.view(B, H, T, mask.shape[-1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def sdpa_in_parts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                  parts: int) -> torch.Tensor:
    """The same attention as one call, over the S slots cut into `parts` equal runs: one CPU
    flash-kernel call with the runs as its batch, each run's output weighed by its share of
    the softmax, exp(its log-sum-exp) / the sum of them (split-K, as flash-decoding does).

    q: (1, Hq, T, hd), Hq a multiple of Hkv (a decode step's folded rows: Hq = Hkv); k, v:
    (1, Hkv, S, hd), S a multiple of parts; mask: (1, Hq, T, S), and every run must hold a
    slot each row sees: for a row that sees nothing in a run the kernel returns log-sum-exp 0,
    not -inf, which would weigh in that run's (meaningless) output.

    Why: the kernel gives each head and query block to one thread; for a decode step that is
    3 work items (the folded key heads) for 2 threads, and in 4 runs 12 (docs/decisions.md,
    "Decode steps attend in parts")."""
    _, Hq, T, hd = q.shape
    n = k.shape[2] // parts                                             # slots per run
    k_runs = k[0].unflatten(1, (parts, n)).transpose(0, 1)              # (parts, Hkv, n, hd)
    v_runs = v[0].unflatten(1, (parts, n)).transpose(0, 1)
    mask_runs = mask[0].unflatten(2, (parts, n)).permute(2, 0, 1, 3)     # (parts, Hq, T, n)
    y, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.expand(parts, Hq, T, hd), k_runs, v_runs, attn_mask=mask_runs)  # (parts, Hq, T, hd)
    share = torch.softmax(lse, dim=0).unsqueeze(-1)                      # (parts, Hq, T, 1)
    return (y * share).sum(0, keepdim=True).to(q.dtype)                 # combined in float32
