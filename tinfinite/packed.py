"""CPU matmuls on prepacked weights: every Linear through oneDNN, its weight reordered once.

Decoding multiplies each weight by one row, so it should run at memory speed (docs/design.md §6).
A plain (out, in) weight does not get there on x86-64 CPUs: oneDNN's linear on a weight
reordered once, at load, into its own blocked layout reads memory several times faster, and
gives the same results to float rounding (figures: docs/decisions.md, "Weights prepacked").

The packed layout is opaque (a `torch._mkldnn` tensor): such a module only computes. A tied
LM head gets its own packed copy, as `--quantize int8` does (the embedding table stays plain
for lookups): one more copy of that matrix in memory, for the single largest matmul of a step.
Other devices, other CPUs (not x86-64, or no native bfloat16) and dtypes keep the plain Linear.
"""
import functools
import platform

import torch
from torch import nn

PACKED_DTYPES = (torch.float32, torch.bfloat16)  # not float16: oneDNN refused it on our CPU


def can_pack(weight: torch.Tensor) -> bool:
    """Is there a oneDNN linear for this weight here: an x86-64 CPU (where it was measured),
    float32 or bfloat16 (bfloat16 only where oneDNN has native support, e.g. AVX-512)?"""
    return (weight.device.type == "cpu" and weight.dtype in PACKED_DTYPES
            and platform.machine().lower() in ("x86_64", "amd64") and _runs(weight.dtype))


@functools.cache
def _runs(dtype: torch.dtype) -> bool:
    """Probe once: does this torch build and CPU pack and multiply a weight of this dtype?"""
    try:
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        PackedLinear(torch.zeros(8, 8, dtype=dtype))(torch.zeros(1, 8, dtype=dtype))
        return True
    except (AttributeError, NotImplementedError, RuntimeError):  # no oneDNN or no such op here
        return False


class PackedLinear(nn.Module):
    """y = x @ weight.T, the weight (out, in) held in oneDNN's layout."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight.detach(),
                                                                               None))

    def forward(self, x):                                      # (..., in) -> (..., out)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")


@torch.inference_mode()
def pack(model: nn.Module) -> nn.Module:
    """Replace the model's matmul weights (attention, MLP, LM head) by packed ones, in place,
    where can_pack; otherwise return the model unchanged."""
    if not can_pack(model.embed_tokens.weight):
        return model
    return model.replace_matmuls(PackedLinear)
