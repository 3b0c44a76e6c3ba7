"""int8 weight-only mode: each matmul equals the float matmul with dequantised weights."""
import torch

from tests.tiny import make_tiny_model
from tinfinite.checkpoint import load_model
from tinfinite.quantize import Int8Linear, quantize_int8


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


def run(model, ids):
    from tests.test_model import run as run_chunks
    return run_chunks(model, ids[0].tolist(), n_global=2, n_local=16, chunk=8)


def test_quantized_model_is_the_model_with_dequantised_weights(tmp_path):
    """Every matmul (attention, MLP, head; tied or not) goes through int8, nothing else does."""
    for tied in (False, True):
        make_tiny_model(tmp_path / str(tied), tie_word_embeddings=tied)
        q = quantize_int8(load_model(tmp_path / str(tied)))
        assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 4 * q.cfg.n_layers + 1
        ref = load_model(tmp_path / str(tied))
        for block, qblock in zip(ref.layers, q.layers):
            for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
                m = qblock.get_submodule(name)
                block.get_submodule(name).weight.data = m.weight.float() * m.scale[:, None]
        head = torch.nn.Linear(1, 1, bias=False)
        head.weight.data = q.lm_head.weight.float() * q.lm_head.scale[:, None]
        ref.lm_head = head                      # the embedding lookup itself stays exact
        ids = torch.arange(40)[None] % 96
        got, want = run(q, ids), run(ref, ids)
        # bfloat16 inputs to each matmul: a few % on a random net; a wrong matmul is O(100%)
        assert (got - want).abs().max() < 0.05 * want.abs().max()
