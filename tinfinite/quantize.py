"""Opt-in weight-only quantisation: `--quantize int8`, or `--quantize int4`.

Decoding reads every weight once per token, so it is bound by memory traffic (docs/design.md §6):
int8 weights are half the bytes of bfloat16 and a quarter of float32. Each output row gets
one scale, max|row| / 127 (symmetric, per channel), and `torch.ops.aten._weight_int8pack_mm`
multiplies without ever materialising float weights. Its input goes in as bfloat16, whatever
the model's dtype: on CPUs that is the fast kernel. Embedding lookups stay exact; a tied LM
head gets its own int8 copy.

That kernel is a matrix-vector product at heart: a prefill chunk of many rows runs faster as
one GEMM on the weight dequantised to bfloat16, so calls of more than GEMM_ROWS rows do that
(figures: docs/decisions.md, "int8").

int4 halves the bytes again: each group of 32 weights along a row gets a scale and a zero,
w = (q - 8) * scale + zero with q in 0..15, the minimum-to-maximum range of GGUF's Q4_1 (the
default model comes as Q4_1, so for it these are its own weights, to bfloat16 rounding of the
scales). `torch.ops.aten._weight_int4pack_mm_for_cpu` multiplies a row in that layout; it
exists on CPUs only. Its layout is the one the kernel reads, and chunks of many rows go
through a bfloat16 GEMM again, dequantised from it (Int4Linear.dequantised). The LM head
stays int8 (quantize_int4).
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from tinfinite.errors import UserError

GEMM_ROWS = 32
QUANTIZE_ELEMENTS = 1 << 22  # quantised at a time, in whole rows: a 16 MB float32 block
GROUP = 32          # int4: weights per scale and zero, along a row (as GGUF's Q4 blocks)
INT4_GEMM_ROWS = 8  # int4: calls of more rows dequantise and run one GEMM
PACK_ROWS = 64      # the int4 kernel's layout packs output rows in blocks of 64


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach()                                            # (out, in)
        q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
        scale = torch.empty(len(w), dtype=torch.bfloat16, device=w.device)
        step = max(1, QUANTIZE_ELEMENTS // w.shape[1])
        for a in range(0, len(w), step):  # in blocks: no other copy of a whole matrix, ever
            rows = w[a:a + step].to(torch.float32, copy=True)  # divided in place below
            # per output row, in bfloat16 as the kernel reads it
            scale[a:a + step] = (torch.linalg.vector_norm(rows, float("inf"), dim=1)
                                 .clamp_(min=1e-12) / 127).to(torch.bfloat16)
            q[a:a + step] = rows.div_(scale[a:a + step].float()[:, None]).round_().clamp_(-127, 127)
        self.register_buffer("weight", q)                              # (out, in)
        self.register_buffer("scale", scale)                           # (out,)

    def forward(self, x):
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if rows.shape[0] > GEMM_ROWS or not has_int8_kernel(x.device.type):
            # Dequantised a block of weight rows at a time: never a bfloat16 copy of a whole
            # matrix (the LM head's would be 57 MB for the default model).
            step = max(1, QUANTIZE_ELEMENTS // self.weight.shape[1])
            y = torch.cat([F.linear(rows, self.weight[a:a + step] * self.scale[a:a + step, None])
                           for a in range(0, len(self.weight), step)], dim=-1)
        else:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale)
        return y.view(*shape[:-1], -1).to(x.dtype)


class Int4Linear(nn.Module):
    """y = x @ weight.T with weight (out, in) as 4-bit codes in the kernel's layout, out padded
    to whole blocks of PACK_ROWS rows (the padding's products are cut off)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach()                                            # (out, in)
        out, K = w.shape
        if K % GROUP:
            raise UserError(f"--quantize int4: a weight has {K} columns, not a multiple of "
                            f"{GROUP}; use --quantize int8")
        N = -(-out // PACK_ROWS) * PACK_ROWS          # padded with zero rows to whole blocks
        self.out_features = out
        packed = torch.empty(N, K // 2, dtype=torch.uint8)
        scale_zero = torch.zeros(K // GROUP, N, 2, dtype=torch.bfloat16)
        step = max(1, QUANTIZE_ELEMENTS // K // PACK_ROWS) * PACK_ROWS
        for a in range(0, N, step):  # in blocks of whole kernel blocks: never a full int32 copy
            rows = torch.zeros(min(step, N - a), K)                 # padding rows stay 0
            real = w[a:a + step]
            rows[:len(real)] = real
            groups = rows.view(len(rows), K // GROUP, GROUP)
            low, high = groups.amin(dim=2), groups.amax(dim=2)        # (rows, K/GROUP)
            scale = ((high - low) / 15).clamp_(min=1e-12).bfloat16()
            zero = (low + 8 * scale.float()).bfloat16()              # the value of q = 8
            q = ((groups - zero.float()[..., None]) / scale.float()[..., None] + 8)
            q = q.round_().clamp_(0, 15).view(len(rows), K).to(torch.int32)
            packed[a:a + len(rows)] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
            scale_zero[:, a:a + len(rows)] = torch.stack([scale, zero], dim=-1).transpose(0, 1)
        self.register_buffer("weight", packed)                         # (N, K/2), kernel layout
        self.register_buffer("scale_zero", scale_zero)                 # (K/GROUP, N, 2)

    def forward(self, x):
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if rows.shape[0] > INT4_GEMM_ROWS:
            step = max(1, QUANTIZE_ELEMENTS // shape[-1] // PACK_ROWS) * PACK_ROWS
            y = torch.cat([F.linear(rows, self.dequantised(a, a + step))
                           for a in range(0, len(self.weight), step)], dim=-1)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.weight, GROUP,
                                                           self.scale_zero)
        return y[:, :self.out_features].view(*shape[:-1], -1).to(x.dtype)

    def dequantised(self, a: int, b: int) -> torch.Tensor:
        """Weight rows [a, b) in bfloat16, (b - a, in); a and b whole blocks of PACK_ROWS.

        The kernel's layout, per block of 64 rows: for each column k, 32 bytes, byte j
        holding row j's code in its low half and row j + 32's in its high half.
        (tests/test_quantize.py checks this against the kernel itself.)"""
        p = self.weight[a:b]
        n, K = len(p), p.shape[1] * 2
        p = p.reshape(n // PACK_ROWS, K, PACK_ROWS // 2)
        q = torch.cat([p & 15, p >> 4], dim=2).transpose(1, 2).reshape(n, K // GROUP, GROUP)
        scale, zero = self.scale_zero[:, a:b].transpose(0, 1).unbind(-1)  # (n, K/GROUP) each
        w = (q.to(torch.bfloat16) - 8) * scale[..., None] + zero[..., None]
        return w.view(n, K)


@functools.cache
def has_int8_kernel(device_type: str) -> bool:
    """Probe once per device type: does this torch build have _weight_int8pack_mm there?
    (CPU and mps do; CUDA only in recent builds.) Without it, every call dequantises."""
    try:
        torch.ops.aten._weight_int8pack_mm(
            torch.zeros(1, 8, dtype=torch.bfloat16, device=device_type),
            torch.zeros(8, 8, dtype=torch.int8, device=device_type),
            torch.ones(8, dtype=torch.bfloat16, device=device_type))
        return True
    except (NotImplementedError, RuntimeError):
        return False


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace the model's matmul weights (attention, MLP, LM head) by int8, in place."""
    if model.embed_tokens.weight.dtype == torch.float16:
        raise UserError("--quantize int8 runs with --dtype float32 or bfloat16, not float16")
    return model.replace_matmuls(Int8Linear)


def quantize_int4(model: nn.Module) -> nn.Module:
    """Replace the model's attention and MLP weights by int4 and its LM head by int8, in place.

    The head stays at 8 bits as in llama.cpp's 4-bit files (the default model's own keeps its
    head, the tied embedding table, in Q8_0): 4 bits there changed the default model's answers
    (docs/decisions.md, "int4")."""
    if model.embed_tokens.weight.device.type != "cpu":
        raise UserError("--quantize int4 runs on the CPU (its kernel is a CPU kernel); "
                        "use --quantize int8 on other devices")
    if model.embed_tokens.weight.dtype == torch.float16:
        raise UserError("--quantize int4 runs with --dtype float32 or bfloat16, not float16")
    return model.replace_matmuls(Int4Linear, make_head=Int8Linear)
