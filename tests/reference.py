"""A naive float64 Llama with LM-Infinite attention, written from the rule, not from the engine.

Explicit loops over queries, the visibility rule of docs/design.md §2 spelled out per key, RoPE as
rotations of (x[k], x[k + hd/2]) pairs at float64 angles. Slow and obviously right.
"""
import math

import torch


def rope_rotate(x: torch.Tensor, dist: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate each row x[r] (R, hd) by the angle dist[r] * inv_freq (rotate-half pairs)."""
    half = x.shape[-1] // 2
    a = dist.double()[:, None] * inv_freq[None, :]             # (R, hd/2)
    x1, x2 = x[:, :half], x[:, half:]
    return torch.cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()], dim=-1)


def visible(i: int, j: int, n_global: int, n_local: int) -> bool:
    d = i - j
    return 0 <= d < n_local or (0 <= d and j < n_global)


def reference_logits(state: dict, cfg: dict, ids: list[int], n_global: int, n_local: int,
                     ceiling: int, inv_freq: torch.Tensor, top_k: int = 0, from_layer: int = 0,
                     last_rows: set[int] = frozenset(), start_distance=None,
                     block: int = 0) -> torch.Tensor:
    """(T, vocab) float64 logits of every position of ids, under the Λ rule.

    Top-k middle attention: in layers >= from_layer, each query i in last_rows (the last row of
    each forward call) also attends, per head, to the top_k middle keys n_global <= j <=
    i - n_local with the highest score at distance n_local // 2, scored at that distance.

    With block > 0 the picks come from fewer candidates: the middle's whole blocks of `block`
    tokens (j // block the same) are scored by the mean of their tokens' scores, and only the
    tokens of the 2 * top_k best blocks, and the middle tokens in no whole block, compete
    (all of the middle while there are at most 2 * top_k whole blocks).

    start_distance(g): the distance a starting token g beyond the window is seen at, instead of
    the ceiling (the "spread" variant)."""
    W = {k: v.double() for k, v in state.items()}
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg["hidden_size"]
    hd = cfg.get("head_dim") or D // H
    eps = cfg["rms_norm_eps"]
    T = len(ids)

    def norm(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    x = W["model.embed_tokens.weight"][ids]                    # (T, D)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = norm(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(T, H, hd)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(T, Hkv, hd)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(T, Hkv, hd)
        out = torch.zeros(T, H, hd, dtype=torch.float64)
        for head in range(H):
            kv = head // (H // Hkv)                            # grouped-query sharing
            for i in range(T):
                js = [j for j in range(i + 1) if visible(i, j, n_global, n_local)]
                dist = [min(i - j, ceiling) if start_distance is None or i - j < n_local
                        else start_distance(j) for j in js]
                middle = list(range(n_global, i - n_local + 1))
                if top_k and layer >= from_layer and i in last_rows and middle:
                    at = torch.tensor([n_local // 2] * len(middle))
                    qm = rope_rotate(q[i, head].expand(len(middle), hd), at, inv_freq)
                    s = (qm * k[middle, kv]).sum(-1)                     # by token
                    blocks = [b for b in range(middle[-1] // block + 1) if b * block >= n_global and
                              (b + 1) * block <= middle[-1] + 1] if block else []
                    if len(blocks) > 2 * top_k:
                        of = {j: i for i, j in enumerate(middle)}
                        mean = torch.stack([s[[of[j] for j in range(b * block, (b + 1) * block)]].mean()
                                            for b in blocks])
                        chosen = {blocks[b] for b in mean.topk(2 * top_k).indices.tolist()}
                        keep = [i for i, j in enumerate(middle) if j // block in chosen or
                                j // block not in blocks]
                        s, middle = s[keep], [middle[i] for i in keep]
                    best = s.topk(min(top_k, len(middle))).indices
                    js += [middle[b] for b in best.tolist()]
                    dist += [n_local // 2] * len(best)
                dist = torch.tensor(dist)
                # score(i, j) = <rot(q_i, min(d, ceiling)), k_j>, k_j un-rotated
                qr = rope_rotate(q[i, head].expand(len(js), hd), dist, inv_freq)
                scores = (qr * k[js, kv]).sum(-1) / math.sqrt(hd)
                out[i, head] = torch.softmax(scores, 0) @ v[js, kv]
        x = x + out.reshape(T, H * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = norm(x, W[p + "post_attention_layernorm.weight"])
        gate = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + ((gate * torch.sigmoid(gate)) * (h @ W[p + "mlp.up_proj.weight"].T)) \
            @ W[p + "mlp.down_proj.weight"].T
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return norm(x, W["model.norm.weight"]) @ head.T
