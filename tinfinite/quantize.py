"""Opt-in int8 weight-only quantisation (`--quantize int8`).

Decoding reads every weight once per token, so it is bound by memory traffic (docs/design.md §6):
int8 weights are half the bytes of bfloat16 and a quarter of float32. Each output row gets
one scale, max|row| / 127 (symmetric, per channel), and `torch.ops.aten._weight_int8pack_mm`
multiplies without ever materialising float weights. Its input goes in as bfloat16, whatever
the model's dtype: on CPUs that is the fast kernel. Embedding lookups stay exact; a tied LM
head gets its own int8 copy.

That kernel is a matrix-vector product at heart: a prefill chunk of many rows runs faster as
one GEMM on the weight dequantised to bfloat16, so calls of more than GEMM_ROWS rows do that
(figures: docs/decisions.md, "int8").
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from tinfinite.errors import UserError

GEMM_ROWS = 32
QUANTIZE_ELEMENTS = 1 << 22  # quantised at a time, in whole rows: a 16 MB float32 block


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
