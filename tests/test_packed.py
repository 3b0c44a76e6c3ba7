"""Prepacked CPU weights (packed.py): the same network, every matmul through oneDNN's layout."""
import torch
from torch import nn

from tests.test_model import run
from tests.tiny import make_tiny_model, tiny_llama
from tinfinite.checkpoint import load_model
from tinfinite.engine import Engine
from tinfinite.model import Linear
from tinfinite.packed import PackedLinear, can_pack, pack


def packed_count(model: nn.Module) -> int:
    return sum(isinstance(m, PackedLinear) for m in model.modules())


def test_packed_linear_is_the_matmul():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=g)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        lin = PackedLinear(w.to(dtype))
        for x in (torch.randn(32, generator=g)[None], torch.randn(2, 7, 32, generator=g)):
            x = x.to(dtype)
            want = x.float() @ w.to(dtype).float().T
            got = lin(x)
            assert got.shape == want.shape and got.dtype == dtype
            assert (got.float() - want).abs().max() <= tol * want.abs().max()


def test_packed_model_gives_the_same_logits(tmp_path):
    """Prefill chunks and one-row decode steps, through the ring and the starting tokens, tied
    head or not: only float rounding may differ."""
    ids = (torch.arange(40)[None] * 7) % 96
    for tied in (False, True):
        make_tiny_model(tmp_path / str(tied), tie_word_embeddings=tied)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 0.03)):
            model = pack(load_model(tmp_path / str(tied), dtype))
            assert packed_count(model) == 4 * model.cfg.n_layers + 1  # every matmul + the head
            ref = load_model(tmp_path / str(tied), dtype)
            for chunk in (8, 1):  # 1: every token is a decode step (one row)
                got = run(model, ids[0].tolist(), n_global=2, n_local=16, chunk=chunk).float()
                want = run(ref, ids[0].tolist(), n_global=2, n_local=16, chunk=chunk).float()
                assert (got - want).abs().max() <= tol * want.abs().max(), (tied, dtype, chunk)


def test_engine_packs_where_it_can(tmp_path):
    tiny_llama(tmp_path)
    assert can_pack(torch.empty(1)) and can_pack(torch.empty(1, dtype=torch.bfloat16))
    assert packed_count(Engine.load(tmp_path, dtype="bfloat16").model) > 0
    half = Engine.load(tmp_path, dtype="float16").model           # no oneDNN path: unchanged
    assert packed_count(half) == 0
    assert isinstance(half.layers[0].mlp.down_proj, Linear) and isinstance(half.lm_head, Linear)
    int8 = Engine.load(tmp_path, dtype="float32", quantize="int8").model  # int8 has its own
    assert packed_count(int8) == 0
