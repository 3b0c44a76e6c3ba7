"""The real default model, SmolLM2-135M-Instruct (docs/design.md §5), fetched and converted once.

Golden greedy texts pin the whole path: GGUF conversion, tokenizer, chat template, the
network and LM-Infinite attention beyond the window. If one changes, find out why before
re-pinning it.
"""
import pytest
import torch

from tinfinite.engine import Engine
from tinfinite.fetch import ensure_default_model

STORY = " ".join(f"Day {i}: the farmer counted {i * 7 % 13} sheep in the north field."
                 for i in range(1, 60))  # 948 tokens


@pytest.fixture(scope="module")
def folder():
    return ensure_default_model()


@pytest.fixture(scope="module")
def engine(folder):
    return Engine.load(folder)


def greedy(engine, prompt, n, **kw):
    return "".join(engine.generate(prompt, max_new_tokens=n, temperature=0, **kw))


def test_chat_answer_to_france(engine):
    assert greedy(engine, "What is the capital of France?", 30, chat=True) == \
        "The capital of France is Paris."


def test_golden_greedy_continuation(engine):
    assert greedy(engine, "The three primary colors are", 24) == (
        " the primary colors of the RGB color model: red, blue, and green. These colors are "
        "fundamental to the RGB color")


def test_golden_continuation_far_beyond_a_small_window(folder):
    """948 tokens through a 128-token window and the paper's 10 starting tokens: the ring wraps
    7 times, starting tokens far."""
    small = Engine.load(folder, n_local=128, n_global=10, chunk_size=64)
    assert len(small.tokenizer.encode(STORY)) == 948
    assert greedy(small, STORY, 24) == (
        " Day 60: the farmer counted 11 sheep in the north field.\n\nThe total number of sheep")


def test_within_the_window_lambda_is_exactly_vanilla(folder, engine):
    full = Engine.load(folder, attention="full")
    ids = engine.tokenizer.encode(STORY)[:300]
    engine.prefill(ids)
    lam = engine.model(engine._tensor([42]), engine.cache)
    full.prefill(ids)
    vanilla = full.model(full._tensor([42]), full.cache)
    assert torch.equal(lam, vanilla)


def test_int8_int4_and_bfloat16_still_answer_france(folder):
    for options in (dict(quantize="int8"), dict(dtype="bfloat16"), dict(dtype="bfloat16", quantize="int8"),
                    dict(quantize="int4")):
        assert greedy(Engine.load(folder, **options), "What is the capital of France?", 30,
                      chat=True) == "The capital of France is Paris.", options


def test_int4_holds_the_default_models_own_4bit_weights(folder):
    """The default model's layers come as GGUF Q4_1 (4-bit codes, a scale and a minimum per 32
    weights), the scheme int4 quantises with: re-quantising gives them back to the bfloat16
    rounding of the scales, a hundredth of a step on average. Weights on no 4-bit grid (the
    table, Q8_0 in the file) move by a quarter of a step on average, as 4-bit rounding does."""
    from tinfinite.checkpoint import load_model
    from tinfinite.quantize import Int4Linear
    model = load_model(folder)

    def error(w):  # |requantised - w| / the group's step, each weight
        w = w.detach()
        back = Int4Linear(w).dequantised(0, len(w))[:len(w)].float().view(len(w), -1, 32)
        groups = w.view(len(w), -1, 32)
        step = (groups.amax(2) - groups.amin(2)) / 15
        return (back - groups).abs() / step[..., None].clamp(min=1e-12)
    for w in (model.layers[3].mlp.down_proj.weight, model.layers[10].self_attn.qkv_proj.weight):
        assert error(w).mean() < 0.03 and error(w).max() < 0.2
    assert error(model.embed_tokens.weight[:2048]).mean() > 0.2
