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


def test_int8_and_bfloat16_still_answer_france(folder):
    for options in (dict(quantize="int8"), dict(dtype="bfloat16"), dict(dtype="bfloat16", quantize="int8")):
        assert greedy(Engine.load(folder, **options), "What is the capital of France?", 30,
                      chat=True) == "The capital of France is Paris.", options
