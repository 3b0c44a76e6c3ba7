"""The Llama network: embeddings, N x (RMSNorm -> attention -> RMSNorm -> SwiGLU MLP), head.

Parameter names follow the Hugging Face checkpoint minus its "model." prefix, except that
q/k/v and gate/up are fused into one matrix each (fewer, larger matmuls per token); the
loader's name table (checkpoint.py) says which rows each checkpoint tensor fills.
Shapes: B batch, T tokens in this call, D = dim, H query heads, Hkv key/value heads,
hd = head_dim. Positions, RoPE and the Λ mask belong to the cache (cache.py).
"""
import torch
import torch.nn.functional as F
from torch import nn

from tinfinite.cache import LambdaCache
from tinfinite.config import ModelConfig


class Linear(nn.Linear):
    """A matmul weight (out, in), no bias. Engine.load swaps it for a PackedLinear (packed.py)
    on an x86-64 CPU in float32/bfloat16, or for an Int8Linear or Int4Linear (quantize.py)
    with --quantize int8 or int4."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__(n_in, n_out, bias=False)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalised in at least float32 and rounded before the weight, as the reference does
        # (x * rsqrt(mean(x^2) + eps), one fused op instead of five).
        h = F.rms_norm(x.to(torch.promote_types(x.dtype, torch.float32)), x.shape[-1:], eps=self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.H, self.Hkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # q, k and v in one matmul: rows [q (H*hd) | k (Hkv*hd) | v (Hkv*hd)], fused at load
        self.qkv_proj = Linear(cfg.dim, (self.H + 2 * self.Hkv) * self.hd)
        self.o_proj = Linear(self.H * self.hd, cfg.dim)

    def forward(self, x, layer: int, cache: LambdaCache):
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, self.H + 2 * self.Hkv, self.hd).transpose(1, 2)
        q, k, v = qkv.split([self.H, self.Hkv, self.Hkv], dim=1)  # (B, heads, T, hd)
        y = cache.attend(layer, q, k, v)  # RoPE, the ring and the Λ mask: cache.py
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # gate and up in one matmul: rows [gate (hidden) | up (hidden)], fused at load
        self.gate_up_proj = Linear(cfg.dim, 2 * cfg.hidden_dim)
        self.down_proj = Linear(cfg.hidden_dim, cfg.dim)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, layer, cache):
        x = x + self.self_attn(self.input_layernorm(x), layer, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # Given an empty table, nn.Embedding skips its random init (the checkpoint fills it;
        # normal_ on the meta device would import sympy: +73 MB resident for good).
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim,
                                         _weight=torch.empty(cfg.vocab_size, cfg.dim))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Tied embeddings (no lm_head in the checkpoint): the head reads the embedding matrix.
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.dim, cfg.vocab_size)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: (..., D) -> (..., vocab) logits."""
        h = self.norm(h)
        return F.linear(h, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)

    def replace_matmuls(self, make, make_head=None) -> "Llama":
        """Swap every matmul (attention, MLP, LM head) for make(weight), in place (packed.py,
        quantize.py); the head for make_head(weight) if given. A tied head gets its own module;
        the embedding table stays for lookups."""
        for block in self.layers:
            for parent, name in ((block.self_attn, "qkv_proj"), (block.self_attn, "o_proj"),
                                 (block.mlp, "gate_up_proj"), (block.mlp, "down_proj")):
                setattr(parent, name, make(getattr(parent, name).weight))
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        self.lm_head = (make_head or make)(head)
        return self

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: LambdaCache, last_only: bool = True) -> torch.Tensor:
        """Run a chunk of tokens (B, T) through the network, appending them to the cache.

        Returns logits (B, vocab) of the last position, or (B, T, vocab) with last_only=False.
        """
        cache.begin(ids.shape[1])
        return self.network(ids, cache, last_only)

    def network(self, ids: torch.Tensor, cache: LambdaCache, last_only: bool = True) -> torch.Tensor:
        """forward() after cache.begin(): tensors only, which is what --compile compiles
        (compiled.py)."""
        x = self.embed_tokens(ids)                                             # (B, T, D)
        for i, block in enumerate(self.layers):
            x = block(x, i, cache)
        return self.head(x[:, -1] if last_only else x)
