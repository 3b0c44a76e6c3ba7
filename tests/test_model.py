"""The engine computes exactly the LM-Infinite rule of docs/design.md §2, however it is fed.

Every check compares against tests/reference.py, a naive float64 implementation written from
the rule, or against the engine itself fed differently (streaming vs one pass, shifted
positions). Models are tiny and random, written to safetensors and loaded for real.
"""
import random

import pytest
import torch

from tests.reference import reference_logits
from tests.tiny import make_tiny_model, tiny_config
from tinfinite.attention import KV_PARTS, additive, lambda_mask
from tinfinite.cache import FullCache, LambdaCache, first_call_tokens
from tinfinite.checkpoint import load_model
from tinfinite.rope import inverse_frequencies
from tinfinite.topk import TopKCache

UNBOUNDED = 10 ** 9


def call_ends(n_ids: int, first: int, chunk: int) -> list[int]:
    """Where each call ends when n_ids tokens are fed `first` into the empty cache, then
    `chunk` at a time."""
    ends = [min(first, n_ids)]
    while ends[-1] < n_ids:
        ends.append(min(ends[-1] + chunk, n_ids))
    return ends


def run(model, ids, *, n_global, n_local, chunk, offset=0, dtype=None, dirty=False, top_k=0,
        from_layer=4, start_distances="ceiling", block=0, window_first=True):
    """Feed ids through a fresh cache as Engine.prefill does, the first call as many tokens as
    the cache takes (up to the window), then chunks; return (T, vocab) logits of every
    position. window_first=False: chunks from the first token on.

    dirty: fill the memory the cache reserves with torch.empty (the ring, every token's keys
    for top-k) with NaN first, as uninitialised memory may be."""
    where = dict(max_chunk=chunk, dtype=dtype or model.embed_tokens.weight.dtype)
    if n_local is None:
        cache = FullCache(model.cfg, **where)
    elif top_k:
        cache = TopKCache(model.cfg, top_k=top_k, from_layer=from_layer, n_global=n_global,
                          n_local=n_local, start_distances=start_distances, block=block, **where)
    else:
        cache = LambdaCache(model.cfg, n_global=n_global, n_local=n_local,
                            start_distances=start_distances, **where)
    if dirty:
        for t in (cache.keys, cache.values):
            t[:, :, :, :cache.ring].fill_(float("nan"))
        for t in (getattr(cache, "every_key", None), getattr(cache, "every_value", None)):
            if t is not None:
                t.fill_(float("nan"))
    cache.reset(first_position=offset)
    x = torch.tensor([ids])
    ends = call_ends(len(ids), cache.call_limit() if window_first else chunk, chunk)
    out = [model(x[:, s:e], cache, last_only=False) for s, e in zip([0] + ends, ends)]
    return torch.cat(out, dim=1)[0]


def last_rows(model, ids, n_local, chunk, window_first=True) -> set[int]:
    """The last row of each call, as run() feeds ids (the rows top-k picks keys for)."""
    first = first_call_tokens(model.cfg, n_local, chunk) if window_first else chunk
    return {e - 1 for e in call_ends(len(ids), first, chunk)}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_vanilla_logits_equal_float64_reference(tmp_path, tied, n_kv_heads):
    over = dict(tie_word_embeddings=tied, num_key_value_heads=n_kv_heads)
    state = make_tiny_model(tmp_path, **over)
    model = load_model(tmp_path)  # float32, as users run it
    ids = list(range(3, 40))
    got = run(model, ids, n_global=10, n_local=64, chunk=16)
    want = reference_logits(state, tiny_config(**over), ids, 0, UNBOUNDED, UNBOUNDED,
                            inverse_frequencies(model.cfg))
    assert torch.allclose(got.double(), want, atol=2e-4, rtol=1e-4), (got - want).abs().max()


def test_lambda_attention_equals_rule_for_random_settings(tmp_path):
    """Random windows, starting tokens and chunks; the ring wraps many times.

    The ceiling is the window (n_local), as in the paper."""
    rng = random.Random(0)
    for trial in range(12):
        over = dict(num_key_value_heads=rng.choice([1, 2, 4]), tie_word_embeddings=trial % 2 == 0)
        folder = tmp_path / str(trial)
        state = make_tiny_model(folder, seed=trial, **over)
        model = load_model(folder, dtype=torch.float64)
        n_global, n_local = rng.randint(0, 5), rng.randint(1, 12)
        if trial == 0:
            n_global, n_local = 5, 1  # far before all starting tokens have arrived
        chunk = rng.randint(1, 9)
        ids = [rng.randrange(96) for _ in range(rng.randint(30, 60))]
        window_first = trial % 3 != 0  # else chunks inside the window too, each with its mask
        got = run(model, ids, n_global=n_global, n_local=n_local, chunk=chunk,
                  window_first=window_first)
        want = reference_logits(state, tiny_config(**over), ids, n_global, n_local, n_local,
                                inverse_frequencies(model.cfg))
        setting = dict(n_global=n_global, n_local=n_local, chunk=chunk, T=len(ids),
                       window_first=window_first)
        assert torch.allclose(got, want, atol=1e-9, rtol=0), (setting, (got - want).abs().max())


def test_decode_steps_update_the_mask_in_place(tmp_path):
    """Past the window, a decode step moves its mask by two columns in place, never rebuilding
    it; chunks and steps in any order still compute the rule."""
    state = make_tiny_model(tmp_path)
    model = load_model(tmp_path, dtype=torch.float64)
    rng = random.Random(5)
    for n_global, n_local, max_chunk in [(3, 10, 6), (2, 7, 1), (0, 5, 4)]:
        cache = LambdaCache(model.cfg, n_global=n_global, n_local=n_local, max_chunk=max_chunk,
                            dtype=torch.float64)
        ids = [rng.randrange(96) for _ in range(70)]
        got, s, previous = [], 0, None
        while s < len(ids):
            T = rng.choice([1, 1, 1, max_chunk])
            x = torch.tensor([ids[s:s + T]])
            got.append(model(x, cache, last_only=False))
            s += x.shape[1]
            if x.shape[1] == 1 and not cache.inside_window:
                here = cache.pos[(cache.n_seen - 1) % cache.ring]
                ring = additive(lambda_mask(here[None], cache.pos, n_local), torch.float64)
                rows = cache.mask[0, :, :, :cache.ring]                   # (Hkv, group, ring)
                assert torch.equal(rows, ring.expand_as(rows))
                if previous is not None:
                    assert cache.mask.data_ptr() == previous  # the same buffer, updated
                previous = cache.mask.data_ptr()
            else:
                previous = None
        want = reference_logits(state, tiny_config(), ids, n_global, n_local, n_local,
                                inverse_frequencies(model.cfg))
        assert torch.allclose(torch.cat(got, dim=1)[0], want, atol=1e-9, rtol=0)


def decode_all(model, cache, ids) -> torch.Tensor:
    """(T, vocab) logits of ids fed one token per call through cache."""
    cache.reset()
    return torch.cat([model(torch.tensor([[i]]), cache, last_only=False) for i in ids], dim=1)[0]


def test_decode_steps_past_the_window_attend_in_parts_exactly(tmp_path):
    """On the CPU a decode step past the window attends to its slots in KV_PARTS runs, combined
    by their log-sum-exps: the rule still, as the ring wraps, with and without top-k picks."""
    state = make_tiny_model(tmp_path)
    model = load_model(tmp_path, dtype=torch.float64)
    inv_freq = inverse_frequencies(model.cfg)
    rng = random.Random(7)
    ids = [rng.randrange(96) for _ in range(100)]
    where = dict(n_global=3, n_local=40, max_chunk=1, dtype=torch.float64)
    plain, top_k = LambdaCache(model.cfg, **where), TopKCache(model.cfg, top_k=2, from_layer=0, **where)
    assert plain.kv_parts == top_k.kv_parts == KV_PARTS > 1
    want = reference_logits(state, tiny_config(), ids, 3, 40, 40, inv_freq)
    assert torch.allclose(decode_all(model, plain, ids), want, atol=1e-9, rtol=0)
    want = reference_logits(state, tiny_config(), ids, 3, 40, 40, inv_freq, 2, 0, set(range(100)))
    assert torch.allclose(decode_all(model, top_k, ids), want, atol=1e-9, rtol=0)


def test_decode_steps_attend_in_one_run_where_a_run_could_see_nothing(tmp_path):
    """A window of 4 among 16 slots: a quarter of them could all be hidden from a row, whose
    run would then count with log-sum-exp 0 (the kernel's, for nothing seen). Such a cache
    attends in one run, and cut into parts it would compute something else."""
    state = make_tiny_model(tmp_path)
    model = load_model(tmp_path, dtype=torch.float64)
    rng = random.Random(8)
    ids = [rng.randrange(96) for _ in range(40)]
    cache = LambdaCache(model.cfg, n_global=5, n_local=4, max_chunk=6, dtype=torch.float64)
    assert cache.keys.shape[3] == 16 and cache.kv_parts == 1
    want = reference_logits(state, tiny_config(), ids, 5, 4, 4, inverse_frequencies(model.cfg))
    assert torch.allclose(decode_all(model, cache, ids), want, atol=1e-9, rtol=0)
    cache.kv_parts = KV_PARTS
    assert not torch.allclose(decode_all(model, cache, ids), want, atol=1e-3)


def test_top_k_middle_attention_equals_rule(tmp_path):
    """The last row of each call also sees, per head, its top-k middle keys at n_local / 2."""
    rng = random.Random(1)
    for trial in range(8):
        over = dict(num_key_value_heads=rng.choice([1, 2, 4]))
        folder = tmp_path / str(trial)
        state = make_tiny_model(folder, seed=trial, **over)
        model = load_model(folder, dtype=torch.float64)
        n_global, n_local, chunk = rng.randint(0, 4), rng.randint(2, 10), rng.randint(1, 6)
        top_k, from_layer = rng.randint(1, 6), rng.randint(0, 1)
        ids = [rng.randrange(96) for _ in range(rng.randint(30, 50))]
        got = run(model, ids, n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k,
                  from_layer=from_layer)
        want = reference_logits(state, tiny_config(**over), ids, n_global, n_local, n_local,
                                inverse_frequencies(model.cfg), top_k, from_layer,
                                last_rows(model, ids, n_local, chunk))
        plain = reference_logits(state, tiny_config(**over), ids, n_global, n_local, n_local,
                                 inverse_frequencies(model.cfg))
        setting = dict(n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k, T=len(ids))
        assert torch.allclose(got, want, atol=1e-9, rtol=0), (setting, (got - want).abs().max())
        assert not torch.allclose(got, plain, atol=1e-3), setting  # the picks do change rows


def test_top_k_by_blocks_equals_its_rule(tmp_path):
    """With blocks, the picks come from the tokens of each head's best blocks (by mean key) and
    the middle tokens in no whole block; still the one rule, exactly."""
    rng = random.Random(3)
    differs = 0
    for trial in range(6):
        over = dict(num_key_value_heads=rng.choice([1, 2]))
        folder = tmp_path / str(trial)
        state = make_tiny_model(folder, seed=trial, **over)
        model = load_model(folder, dtype=torch.float64)
        n_global, n_local, chunk = rng.randint(0, 3), rng.randint(2, 5), rng.randint(1, 5)
        top_k, block = rng.randint(1, 2), rng.randint(2, 4)
        ids = [rng.randrange(96) for _ in range(rng.randint(40, 55))]
        got = run(model, ids, n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k,
                  from_layer=0, block=block)
        args = (state, tiny_config(**over), ids, n_global, n_local, n_local,
                inverse_frequencies(model.cfg), top_k, 0, last_rows(model, ids, n_local, chunk))
        want = reference_logits(*args, block=block)
        setting = dict(n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k, block=block)
        assert torch.allclose(got, want, atol=1e-9, rtol=0), (setting, (got - want).abs().max())
        differs += not torch.allclose(got, reference_logits(*args), atol=1e-6)
    assert differs  # blocks do drop picks that token-level selection makes


def test_offloaded_top_k_computes_the_same_and_leaves_no_file(tmp_path):
    """Keys and values memory-mapped from a file compute what RAM does; the file is gone the
    moment it is mapped."""
    make_tiny_model(tmp_path / "model")
    model = load_model(tmp_path / "model")
    ids = [random.Random(4).randrange(96) for _ in range(90)]  # the buffers grow 4 times
    (tmp_path / "kv").mkdir()
    where = dict(top_k=2, from_layer=0, n_global=2, n_local=8, max_chunk=5, block=3)
    in_ram = TopKCache(model.cfg, **where)
    on_disk = TopKCache(model.cfg, offload=str(tmp_path / "kv"), **where)
    for cache in (in_ram, on_disk):
        cache.reset()
    x = torch.tensor([ids])
    for s in range(0, len(ids), 5):
        a = model(x[:, s:s + 5], in_ram, last_only=False)
        b = model(x[:, s:s + 5], on_disk, last_only=False)
        assert torch.equal(a, b)
    assert on_disk.every_key.shape[3] >= 90 and list((tmp_path / "kv").iterdir()) == []
    assert on_disk.every_key.untyped_storage().filename is not None


def test_starting_tokens_inside_the_range_equal_their_rule(tmp_path):
    """start_distances="spread": a starting token g beyond the window is seen at distance
    n_local - 1 - g (at least 0), inside the trained range, instead of at the ceiling;
    "capped": every one at half the trained length, when the window is longer; an integer
    N < n_local: every one at distance N."""
    rng = random.Random(5)
    for trial in range(9):
        # trained length 12, windows of 7-12: past half of it, so capped's cap applies
        over = dict(num_key_value_heads=rng.choice([1, 2, 4]), max_position_embeddings=12)
        folder = tmp_path / str(trial)
        state = make_tiny_model(folder, seed=trial, **over)
        model = load_model(folder, dtype=torch.float64)
        n_global, n_local, chunk = rng.randint(1, 5), rng.randint(7, 12), rng.randint(1, 9)
        top_k = rng.choice([0, 3])
        rule = ("spread", "capped", rng.randint(1, n_local - 1))[trial % 3]
        trained = 12
        distance = {"spread": lambda g: max(n_local - 1 - g, 0),
                    "capped": lambda g: trained // 2}.get(rule, lambda g: rule)
        ids = [rng.randrange(96) for _ in range(rng.randint(30, 50))]
        got = run(model, ids, n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k,
                  from_layer=0, start_distances=rule)
        want = reference_logits(state, tiny_config(**over), ids, n_global, n_local, n_local,
                                inverse_frequencies(model.cfg), top_k, 0,
                                last_rows(model, ids, n_local, chunk), start_distance=distance)
        setting = dict(rule=rule, n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k)
        assert torch.allclose(got, want, atol=1e-9, rtol=0), (setting, (got - want).abs().max())
        ceiling = run(model, ids, n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k,
                      from_layer=0)
        assert not torch.allclose(got, ceiling, atol=1e-6), setting  # it is another rule


def test_reserved_but_unwritten_cache_memory_is_never_used(tmp_path):
    """The cache reserves its memory with torch.empty; garbage there must never reach a score."""
    make_tiny_model(tmp_path)
    model = load_model(tmp_path)
    ids = [random.Random(4).randrange(96) for _ in range(90)]
    for n_global, n_local, chunk, top_k in ((3, 16, 8, 0), (2, 5, 7, 0), (0, 16, 8, 0),
                                            (0, None, 8, 0), (2, 5, 7, 3)):
        clean = run(model, ids, n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k)
        dirty = run(model, ids, n_global=n_global, n_local=n_local, chunk=chunk, top_k=top_k,
                    dirty=True)
        assert torch.equal(clean, dirty), (n_global, n_local, chunk, top_k)


def test_full_attention_equals_rule_without_window(tmp_path):
    state = make_tiny_model(tmp_path)
    model = load_model(tmp_path, dtype=torch.float64)
    ids = [random.Random(1).randrange(96) for _ in range(70)]
    got = run(model, ids, n_global=0, n_local=None, chunk=6)  # the growing cache, doubled 4 times
    want = reference_logits(state, tiny_config(), ids, 0, UNBOUNDED, UNBOUNDED, inverse_frequencies(model.cfg))
    assert torch.allclose(got, want, atol=1e-9, rtol=0)


def token_logprobs(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(logits[:-1].float(), -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_streaming_equals_one_pass(tmp_path):
    """3,000 tokens through a 100-token window: chunk size changes nothing."""
    make_tiny_model(tmp_path, max_position_embeddings=100)
    model = load_model(tmp_path)
    ids = [random.Random(2).randrange(96) for _ in range(3000)]
    one_pass = token_logprobs(run(model, ids, n_global=4, n_local=100, chunk=3000), ids)
    for chunk in (1, 7, 64, 500):
        streamed = token_logprobs(run(model, ids, n_global=4, n_local=100, chunk=chunk), ids)
        assert torch.allclose(streamed, one_pass, atol=1e-4, rtol=0), (chunk, (streamed - one_pass).abs().max())


@pytest.mark.parametrize("offset", [10 ** 9, 2 ** 40])
def test_shifted_positions_give_the_same_logits(tmp_path, offset):
    make_tiny_model(tmp_path)
    model = load_model(tmp_path)
    ids = [random.Random(3).randrange(96) for _ in range(80)]
    base = run(model, ids, n_global=3, n_local=16, chunk=8)
    shifted = run(model, ids, n_global=3, n_local=16, chunk=8, offset=offset)
    assert torch.allclose(base, shifted, atol=1e-4, rtol=0), (base - shifted).abs().max()


def test_lambda_within_window_is_exactly_vanilla(tmp_path):
    make_tiny_model(tmp_path)
    model = load_model(tmp_path)
    ids = list(range(50))
    lam = run(model, ids, n_global=10, n_local=64, chunk=7)
    full = run(model, ids, n_global=0, n_local=None, chunk=7)
    assert torch.equal(lam, full)


def test_sharded_checkpoint_loads_the_same_weights(tmp_path):
    make_tiny_model(tmp_path / "one")
    make_tiny_model(tmp_path / "three", shards=3)
    one, three = load_model(tmp_path / "one"), load_model(tmp_path / "three")
    for (name, a), (_, b) in zip(one.state_dict().items(), three.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_load(tmp_path, stored):
    state = make_tiny_model(tmp_path, dtype=stored)
    model = load_model(tmp_path, dtype=torch.float32)
    want = state["model.layers.1.mlp.down_proj.weight"].to(stored).float()
    assert torch.equal(model.layers[1].mlp.down_proj.weight, want)


def test_cache_memory_does_not_grow_with_input(tmp_path):
    make_tiny_model(tmp_path)
    model = load_model(tmp_path)
    cfg = model.cfg
    cache = LambdaCache(cfg, n_global=2, n_local=8, max_chunk=4)
    buffers = (cache.keys.data_ptr(), cache.values.data_ptr(), cache.pos.data_ptr(), cache.keys.shape)
    for s in range(0, 400, 4):
        model(torch.tensor([[s % 96] * 4]), cache)
    assert (cache.keys.data_ptr(), cache.values.data_ptr(), cache.pos.data_ptr(), cache.keys.shape) == buffers
    assert sorted(cache.pos.tolist()) == list(range(400 - cache.ring, 400))
