"""examples/ run as a user runs them (tiny model, real processes), and the API they stand on:
a conversation continued with resume=True is the same computation as reading it all at once,
in the same cache memory however long it grows."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import CORPUS, tiny_llama
from tinfinite.engine import Engine

REPO = Path(__file__).resolve().parents[1]
# The examples import tinfinite as a user's script does: installed (`pip install -e .`), or
# here from the checkout on PYTHONPATH.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tiny_llama(tmp_path_factory.mktemp("chatty"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHATML}))
    return folder


def example(name, *args, stdin=""):
    r = subprocess.run([sys.executable, str(REPO / "examples" / name), *map(str, args)],
                       input=stdin, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout, r.stderr


def test_resume_is_the_same_as_reading_everything_at_once(model):
    """Greedy turns fed with resume=True give the tokens a fresh read of the whole
    conversation gives, well past the window, and the cache is never reallocated."""
    llm = Engine.load(model, n_local=24, chunk_size=8)
    fresh = Engine.load(model, n_local=24, chunk_size=8)
    k = llm.cache.keys
    history = []
    for turn in range(6):
        said = llm.tokenizer.encode(f" turn {turn}: " + CORPUS[turn], add_bos=turn == 0)
        reply = list(llm.generate_ids(said, resume=turn > 0, max_new_tokens=5, ignore_eos=True))
        assert reply == list(fresh.generate_ids(history + said, max_new_tokens=5,
                                                ignore_eos=True))
        history += said + reply
    assert llm.cache.n_seen > 3 * 24 and llm.cache.keys is k
    more = llm.tokenizer.encode(" and", add_bos=False)
    resumed = llm.prefill(more, resume=True)    # the last reply token, still unfed, goes first
    assert llm.cache.n_seen == len(history) + len(more)
    assert torch.allclose(resumed, fresh.prefill(history + more), atol=1e-5)


def test_chat_example_keeps_one_growing_conversation(model):
    out, err = example("chat.py", "--model", model, "--dtype", "float32", "--max-new-tokens", 4,
                       stdin="hello there\nand again\nonce more\n")
    assert out.count("> ") == 4  # three turns, then the prompt that met end of input
    counts = [int(line.split()[0][1:]) for line in err.splitlines() if "tokens so far" in line]
    assert len(counts) == 3 and counts[0] < counts[1] < counts[2]
    news = [int(line.split("this turn: ")[1].split()[0]) for line in err.splitlines()
            if "this turn" in line]
    assert news[1] < counts[1] - counts[0] + 2  # only the new turn is read, not the history


def test_long_document_example_streams_a_file(model, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("\n".join(CORPUS * 8), encoding="utf-8")
    out, err = example("long_document.py", book, "What does the fox do?", "--model", model,
                       "--dtype", "float32", "--max-new-tokens", 5, "--top-k-middle", 2)
    tokens = int(err.split("[read ")[1].split()[0])
    assert tokens > 64 and "the last 64" in err and "plus 2 middle tokens" in err
    r = subprocess.run([sys.executable, str(REPO / "examples" / "long_document.py"),
                        str(tmp_path / "missing.txt"), "q", "--model", str(model)],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode != 0 and "missing.txt" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("attention", ["full", "lambda", "window"])
def test_an_engine_serves_call_after_call(model, attention):
    """The cache is reused by every call, also after full attention's ring has grown."""
    llm = Engine.load(model, attention=attention, chunk_size=8)
    long = " ".join(CORPUS)  # > 2 chunks: full attention's ring doubles
    first = "".join(llm.generate(long, max_new_tokens=4, ignore_eos=True))
    assert llm.score(long).tokens > 16
    assert "".join(llm.generate(long, max_new_tokens=4, ignore_eos=True)) == first
