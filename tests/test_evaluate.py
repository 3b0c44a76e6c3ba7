"""Length-generalisation tools (tinfinite/evaluate.py, `main.py perplexity` and `passkey`).

Bucket arithmetic against sums done by hand, the passkey prompt and scorer against the
paper's recipe, and both commands end to end on a tiny random model. The one check that
needs a model that can read is on the real default model: top-k middle attention retrieves
a key that plain Λ attention has lost.
"""
import json
import math
import random

import pytest
import torch

from tinfinite import cli as main
from tests.tiny import CORPUS, tiny_llama
from tinfinite.engine import Engine
from tinfinite.evaluate import (FILLER, KEY_LINE, QUESTION, TASK, Buckets, first_integer,
                                passkey_prompt, passkey_trials, perplexity_by_position,
                                run_passkey, run_passkeys, summarise)
from tinfinite.fetch import ensure_default_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


def test_buckets_sum_positions_by_hand():
    """Position p holds the NLL of ids[p]; bucket [s, s+size) sums positions s..s+size-1."""
    rng = random.Random(0)
    nlls = torch.tensor([rng.random() for _ in range(1, 100)], dtype=torch.float64)  # p = 1..99
    buckets = Buckets(size=16)
    completed, i = [], 0
    while i < len(nlls):                         # fed in ragged chunks, as the engine does
        n = rng.randint(1, 40)
        completed += buckets.add(nlls[i:i + n])
        i += n
    got = buckets.all()
    assert [(b.start, b.end) for b in got] == [(s, s + 16) for s in range(0, 100, 16)]
    assert completed == got[:-1]                 # [96, 112) is still open after position 99
    for b in got:
        lo, hi = max(b.start, 1), min(b.end, 100)
        assert b.tokens == hi - lo
        assert b.nll == pytest.approx(nlls[lo - 1:hi - 1].sum().item())
    assert got[0].tokens == 15                   # position 0 (the first token) is not predicted
    assert buckets.total.tokens == 99
    assert buckets.total.ppl == pytest.approx(math.exp(nlls.mean().item()))
    cumulative = buckets.upto(got[2])
    assert (cumulative.end, cumulative.tokens) == (48, 47)
    assert cumulative.nll == pytest.approx(nlls[:47].sum().item())


def test_perplexity_by_position_adds_up_to_the_whole(tiny):
    engine = Engine.load(tiny, n_local=16, chunk_size=7)  # window and chunks cut across buckets
    ids = engine.tokenizer.encode(" ".join(CORPUS))
    seen = []
    buckets = perplexity_by_position(engine, ids, 10, on_bucket=lambda b, _: seen.append(b),
                                     progress=lambda done, total: seen.append((done, total)))
    whole = engine.perplexity(ids)
    assert buckets.total.tokens == whole.tokens == len(ids) - 1
    assert buckets.total.nll == pytest.approx(whole.nll, rel=1e-9)
    assert seen[-1] == (len(ids) - 1, len(ids) - 1)  # progress ends at 100%
    assert [b for b in seen if not isinstance(b, tuple)] == buckets.done


def test_passkey_prompt_follows_the_paper():
    tok = Engine.load(ensure_default_model()).tokenizer
    for length, depth in ((512, 0.0), (2048, 0.5), (2048, 1.0), (4096, 0.3)):
        p = passkey_prompt(tok, length, depth, 31415)
        n = len(tok.encode(p.text))
        per_filler = len(tok.encode(" " + FILLER))
        assert length - 2 * per_filler < n <= length, (length, n)
        assert p.text.startswith(TASK) and p.text.endswith(QUESTION)
        assert p.text.count(KEY_LINE.format(key=31415)) == 1
        before = p.text.split(KEY_LINE.format(key=31415))[0].count(FILLER)
        total = p.text.count(FILLER)
        assert before == round(depth * total), (length, depth)


def test_answers_are_scored_on_the_first_integer():
    assert first_integer(" 31415. Remember it.") == 31415
    assert first_integer(" the key 271 and then 31415") == 271
    assert first_integer(" not a number") is None
    results = [{"length": 100, "depth": 0.1, "correct": True},
               {"length": 100, "depth": 0.9, "correct": False},
               {"length": 200, "depth": 0.5, "correct": True}]
    s = summarise(results)
    assert s["accuracy"] == {"100": 0.5, "200": 1.0}
    assert s["accuracy_by_depth"]["100"] == {"0.0-0.2": 1.0, "0.8-1.0": 0.0}


def test_every_mode_gets_the_same_questions():
    a = passkey_trials([1000, 2000], 3, seed=7)
    assert a == passkey_trials([1000, 2000], 3, seed=7)
    assert a != passkey_trials([1000, 2000], 3, seed=8)
    assert [n for n, _, _ in a] == [1000] * 3 + [2000] * 3
    inside = passkey_trials([1000], 20, seed=7, depths=(0.6, 0.9))
    assert all(0.6 <= d <= 0.9 and 10000 <= k <= 99999 for _, d, k in inside)


@pytest.mark.parametrize("options", [dict(n_local=32, n_global=4), dict(n_local=32, top_k_middle=2),
                                     dict(attention="full")])
def test_passkey_trials_share_their_filler_and_give_the_same_answers(tiny, options):
    """Trials read the filler before their key once between them (snapshots of the cache),
    and answer what each asked alone answers."""
    engine = Engine.load(tiny, chunk_size=8, **options)
    fed = []
    forward = engine.model.forward
    engine.model.forward = lambda ids, *a, **k: fed.append(ids.shape[1]) or forward(ids, *a, **k)
    trials = passkey_trials([120, 90], 3, seed=4)
    together = run_passkeys(engine, trials)
    shared = sum(fed)
    alone = []
    for t in trials:
        alone += run_passkeys(engine, [t])
    assert together == alone
    assert [(r["length"], r["key"]) for r in together] == [(n, k) for n, _, k in trials]
    each = sum(fed) - shared
    longest_prefix = max(r["tokens"] - r["key_distance"] for r in together)
    assert shared <= each - longest_prefix  # at least the deepest key's prefix saved


def test_top_k_middle_finds_a_key_beyond_the_window():
    """The same 600-token question: the key is 538 tokens back, out of a 256-token window.

    Plain Λ attention cannot see it; top-k middle attention can, as can full attention."""
    folder = ensure_default_model()
    depth, key = 0.04, 77013
    lost = run_passkey(Engine.load(folder, n_local=256, n_global=10), 600, depth, key)
    assert lost["key_distance"] > 256 and not lost["key_in_window"]
    assert not lost["correct"], lost
    found = run_passkey(Engine.load(folder, n_local=256, n_global=10, top_k_middle=5), 600, depth,
                        key)
    assert found["correct"], found
    assert run_passkey(Engine.load(folder, attention="full"), 600, depth, key)["correct"]


def test_perplexity_command_reports_buckets(capsys, tiny, tmp_path):
    (tmp_path / "a.txt").write_text(" ".join(CORPUS[:10]), encoding="utf-8")
    (tmp_path / "b.txt").write_text(" ".join(CORPUS[10:]), encoding="utf-8")
    argv = ["perplexity", "--model", str(tiny), "--file", str(tmp_path / "a.txt"),
            str(tmp_path / "b.txt"), "--report-every", "50", "--chunk-size", "16",
            "--n-local", "32"]
    assert main.main(argv + ["--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    buckets = result["buckets"]
    assert [b["start"] for b in buckets] == list(range(0, 50 * len(buckets), 50))
    assert sum(b["tokens"] for b in buckets) == result["tokens"]
    assert sum(b["nll"] for b in buckets) == pytest.approx(result["nll"])
    assert err.count("|  [") == len(buckets) - 1          # a report per completed bucket
    assert result["peak_rss_mb"] > 0 and result["attention"] == "lambda"
    assert main.main(argv) == 0                            # text mode: the reports on stdout
    out, _ = capsys.readouterr()
    assert out.count("|  [") == len(buckets) - 1 and out.splitlines()[-1].startswith("tokens")


@pytest.mark.parametrize("flags", [["--attention", "window"], ["--attention", "full"],
                                   ["--top-k-middle", "3", "--top-k-from-layer", "0"]])
def test_attention_modes_differ_beyond_the_window(capsys, tiny, tmp_path, flags):
    (tmp_path / "t.txt").write_text(" ".join(CORPUS), encoding="utf-8")
    base = ["perplexity", "--model", str(tiny), "--file", str(tmp_path / "t.txt"), "--json",
            "--chunk-size", "8"]
    window = [] if "full" in flags else ["--n-local", "16"]
    assert main.main(base + window) == 0
    lam = json.loads(capsys.readouterr()[0])
    assert main.main(base + window + flags) == 0
    other = json.loads(capsys.readouterr()[0])
    assert other["tokens"] == lam["tokens"] and other["nll"] != pytest.approx(lam["nll"])


def test_passkey_command_json(capsys, tiny):
    argv = ["passkey", "--model", str(tiny), "--lengths", "100", "150", "--trials", "2",
            "--seed", "3", "--n-local", "32", "--top-k-middle", "2", "--json"]
    assert main.main(argv) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert set(result["accuracy"]) == {"100", "150"}
    assert len(result["trials"]) == 4 and err.count("length") == 4
    assert [(t["length"], t["depth"], t["key"]) for t in result["trials"]] == \
        [(n, round(d, 4), k) for n, d, k in passkey_trials([100, 150], 2, 3)]
    assert result["top_k_middle"] == 2 and result["n_global"] == 64


@pytest.mark.parametrize("argv, message", [
    (["passkey", "--trials", "0"], "--trials 0"),
    (["passkey", "--lengths", "10"], "--lengths 10"),
    (["passkey", "--min-depth", "0.8", "--max-depth", "0.2"], "--min-depth"),
    (["perplexity", "--file", "x", "--report-every", "0"], "--report-every 0"),
    (["passkey", "--attention", "window", "--n-global", "4"], "no starting tokens"),
    (["passkey", "--attention", "full", "--top-k-middle", "4"], "--attention full"),
    (["passkey", "--top-k-middle", "-1"], "--top-k-middle -1"),
])
def test_bad_evaluation_flags(capsys, tiny, argv, message):
    assert main.main(argv[:1] + ["--model", str(tiny)] + argv[1:]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_progress_bar_on_a_terminal_leaves_the_reports_whole(tiny, tmp_path, capsys,
                                                             monkeypatch):
    """On a terminal, perplexity draws a tqdm bar on stderr; bucket reports print above it."""
    (tmp_path / "a.txt").write_text(" ".join(CORPUS), encoding="utf-8")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert main.main(["perplexity", "--model", str(tiny), "--file", str(tmp_path / "a.txt"),
                      "--report-every", "16", "--chunk-size", "8"]) == 0
    out, err = capsys.readouterr()
    reports = [line for line in out.splitlines() if line.startswith("tokens ")]
    assert len(reports) >= 3 and all("|  [" in line for line in reports[:-1])
    assert "100%" in err and "tok/s" in err
