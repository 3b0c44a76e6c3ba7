"""int8 and int4 weight-only modes: each matmul equals the float matmul with dequantised
weights."""
import itertools

import torch

from tests.tiny import make_tiny_model
from tinfinite.checkpoint import load_model
from tinfinite.quantize import Int4Linear, Int8Linear, quantize_int4, quantize_int8


def test_int8_linear_is_the_dequantised_matmul():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(48, 32, generator=g), torch.randn(5, 32, generator=g)
    q = Int8Linear(w)
    dequantised = q.weight.float() * q.scale[:, None]
    step = q.scale.float()[:, None]
    assert ((dequantised - w).abs() <= step / 2 * 1.01 + 1e-6).all()  # within half a step
    want = x.bfloat16().float() @ dequantised.T           # the input goes in as bfloat16
    assert torch.allclose(q(x), want, atol=1e-2, rtol=1e-2)
    many = torch.randn(100, 32, generator=g)              # a prefill chunk: dequantised GEMM
    want = many.bfloat16().float() @ dequantised.T
    assert (q(many) - want).abs().max() < 0.01 * want.abs().max()  # bfloat16 rounding, no more


def test_int4_linear_is_the_dequantised_matmul():
    """Codes within half a step of each weight, per group of 32; the kernel (one row) and the
    GEMM on dequantised rows (a chunk) compute the same product, so dequantised() reads the
    kernel's layout right. 100 output rows: padded to two blocks of 64 and cut back."""
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(100, 96, generator=g), torch.randn(1, 96, generator=g)
    q = Int4Linear(w)
    dequantised = q.dequantised(0, len(q.weight))[:100].float()
    step = (w.view(100, 3, 32).amax(2) - w.view(100, 3, 32).amin(2)) / 15
    error = (dequantised - w).view(100, 3, 32).abs()
    assert (error <= step[..., None] / 2 + w.view(100, 3, 32).abs() * 2**-6).all()  # + bf16
    want = x.bfloat16().float() @ dequantised.T            # the input goes in as bfloat16
    assert q(x).shape == (1, 100)
    assert (q(x) - want).abs().max() < 0.01 * want.abs().max()
    many = torch.randn(3, 50, 96, generator=g)             # a prefill chunk: dequantised GEMM
    want = many.bfloat16().float() @ dequantised.T
    assert q(many).shape == (3, 50, 100)
    assert (q(many) - want).abs().max() < 0.01 * want.abs().max()


def run(model, ids):
    from tests.test_model import run as run_chunks
    return run_chunks(model, ids[0].tolist(), n_global=2, n_local=16, chunk=8)


def int8_weight(m):
    return m.weight.float() * m.scale[:, None]


def int4_weight(m):
    return m.dequantised(0, len(m.weight))[:m.out_features].float()


def test_quantized_model_is_the_model_with_dequantised_weights(tmp_path):
    """Every matmul (attention, MLP, head; tied or not) goes through int8, or int4 with an int8
    head; nothing else does."""
    for (quantize, kind, weight), tied in itertools.product(
            ((quantize_int8, Int8Linear, int8_weight), (quantize_int4, Int4Linear, int4_weight)),
            (False, True)):
        make_tiny_model(tmp_path / str(tied), tie_word_embeddings=tied)
        q = quantize(load_model(tmp_path / str(tied)))
        assert sum(isinstance(m, kind) for m in q.layers.modules()) == 4 * q.cfg.n_layers
        assert isinstance(q.lm_head, Int8Linear)
        ref = load_model(tmp_path / str(tied))
        for block, qblock in zip(ref.layers, q.layers):
            for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
                block.get_submodule(name).weight.data = weight(qblock.get_submodule(name))
        head = torch.nn.Linear(1, 1, bias=False)
        head.weight.data = int8_weight(q.lm_head)
        ref.lm_head = head                      # the embedding lookup itself stays exact
        ids = torch.arange(40)[None] % 96
        got, want = run(q, ids), run(ref, ids)
        # bfloat16 inputs to each matmul: a few % on a random net; a wrong matmul is O(100%)
        assert (got - want).abs().max() < 0.05 * want.abs().max()
