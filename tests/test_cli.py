"""The command line's happy paths, on a tiny random Llama with a tiny byte-level BPE tokenizer.

main.main(argv) runs in-process (fast); only Ctrl-C needs a real process to signal. The model
is random, so its text is noise: tests compare runs with each other, never with fixed text.
"""
import json
import math
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinfinite import cli as main
from tests.tiny import CORPUS, tiny_llama
from tinfinite.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
PROMPT = "The quick brown fox"
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


def run(capsys, *argv) -> tuple[str, str]:
    """(stdout, stderr) of a successful in-process run."""
    rc = main.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Traceback" not in err
    return out, err


def generate(capsys, model, *flags) -> str:
    out, err = run(capsys, "--model", model, *flags)
    assert out.endswith("\n")  # the CLI ends the text with one newline
    return out[:-1]


def perplexity(capsys, model, *flags) -> dict:
    out, _ = run(capsys, "perplexity", "--model", model, *flags, "--json")
    return json.loads(out)


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "python main.py --prompt-text" in out
    assert "python main.py perplexity --file" in out


def test_greedy_is_the_same_run_to_run(capsys, model):
    flags = ("--prompt-text", PROMPT, "--max-new-tokens", 24, "--ignore-eos")
    first = generate(capsys, model, *flags)
    assert first and first == generate(capsys, model, *flags)


def test_seed_fixes_sampled_text(capsys, model):
    flags = ("--prompt-text", PROMPT, "--max-new-tokens", 40, "--ignore-eos", "--temperature", 0.8)
    a = generate(capsys, model, *flags, "--seed", 7)
    assert a == generate(capsys, model, *flags, "--seed", 7)
    assert a != generate(capsys, model, *flags, "--seed", 8)
    assert a != generate(capsys, model, "--prompt-text", PROMPT, "--max-new-tokens", 40,
                         "--ignore-eos")  # sampling is not greedy


def test_prompt_file_equals_prompt_text(capsys, model, tmp_path):
    (tmp_path / "p.txt").write_text(PROMPT, encoding="utf-8")
    flags = ("--max-new-tokens", 16, "--ignore-eos")
    assert generate(capsys, model, "--prompt", tmp_path / "p.txt", *flags) == \
        generate(capsys, model, "--prompt-text", PROMPT, *flags)


def test_max_new_tokens_counts_tokens_and_zero_prints_nothing(capsys, model):
    assert generate(capsys, model, "--prompt-text", PROMPT, "--max-new-tokens", 0) == ""
    _, err = run(capsys, "--model", model, "--prompt-text", PROMPT, "--max-new-tokens", 5,
                 "--ignore-eos")
    assert "decode 5 tokens" in err


def test_stop_cuts_before_the_stop_text(capsys, model):
    flags = ("--prompt-text", PROMPT, "--max-new-tokens", 40, "--ignore-eos")
    full = generate(capsys, model, *flags)
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = generate(capsys, model, *flags, "--stop", stop)
    assert cut == full[:full.find(stop)]
    assert len(cut) < len(full)


def test_perplexity_text_and_json_agree(capsys, model, tmp_path):
    text = " ".join(CORPUS)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    ids = Tokenizer.from_folder(model).encode(text)
    result = perplexity(capsys, model, "--file", tmp_path / "t.txt", "--chunk-size", 16)
    assert result["tokens"] == len(ids) - 1
    assert result["nll"] > 0
    assert result["ppl"] == pytest.approx(math.exp(result["nll"] / result["tokens"]))
    assert result["n_local"] == 64 and result["n_global"] == 64  # tiny config's length; default
    out, _ = run(capsys, "perplexity", "--model", model, "--file", tmp_path / "t.txt",
                 "--chunk-size", 16)
    assert out.startswith(f"tokens {result['tokens']}  nll {result['nll']:.2f}  "
                          f"ppl {result['ppl']:.4f}")
    capped = perplexity(capsys, model, "--file", tmp_path / "t.txt", "--max-tokens", 20)
    assert capped["tokens"] == 19


def test_sharded_bf16_and_single_checkpoints_agree(capsys, model, tmp_path):
    (tmp_path / "t.txt").write_text(" ".join(CORPUS), encoding="utf-8")
    flags = ("--file", tmp_path / "t.txt")
    single = perplexity(capsys, model, *flags)["nll"]
    sharded = tiny_llama(tmp_path / "sharded", shards=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert perplexity(capsys, sharded, *flags)["nll"] == pytest.approx(single, rel=1e-5)
    bf16 = tiny_llama(tmp_path / "bf16", dtype=torch.bfloat16)
    nll = perplexity(capsys, bf16, *flags)["nll"]
    assert nll == pytest.approx(single, rel=0.05) and nll != single  # rounded weights
    assert perplexity(capsys, bf16, *flags, "--dtype", "bfloat16")["nll"] == \
        pytest.approx(single, rel=0.05)


def test_ctrl_c_keeps_the_text_so_far(model):
    """SIGINT mid-generation: exit 130, the text made so far on stdout, no traceback."""
    argv = [sys.executable, str(REPO / "main.py"), "--model", str(model), "--prompt-text", PROMPT,
            "--ignore-eos", "--max-new-tokens", "100000", "--threads", "1"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no output within 60 s"
        time.sleep(0.2)  # let it make a few more tokens
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    text = out.decode("utf-8")[:-1]  # the CLI's closing newline
    assert text
    # What was printed is the text of the first n tokens of the same greedy generation, made
    # here through the API on as many threads (another count sums in another order: a random
    # model's greedy text can then part at a near tie). If Ctrl-C came while a character was
    # still split across tokens, its bytes so far are printed as U+FFFD, as the text of those
    # n tokens has them.
    from tinfinite.engine import Engine
    engine = Engine.load(model, threads=1)
    ids, texts = [], []
    for token in engine.generate_ids(engine.prompt_ids(PROMPT), ignore_eos=True,
                                     max_new_tokens=100000):
        ids.append(token)
        texts.append(engine.tokenizer.decode(ids))
        if len(texts[-1]) > len(text) and not texts[-1].endswith("\ufffd"):
            break
    assert text in texts


def test_kv_dtype_sets_the_cache_and_the_json_says_which(capsys, model, tmp_path):
    (tmp_path / "t.txt").write_text(" ".join(CORPUS), encoding="utf-8")
    flags = ("--file", tmp_path / "t.txt", "--n-local", 16, "--chunk-size", 8)
    auto, half = perplexity(capsys, model, *flags), perplexity(capsys, model, *flags, "--kv-dtype", "float16")
    assert (auto["kv_dtype"], half["kv_dtype"]) == ("float32", "float16")
    assert auto["nll"] != half["nll"] and half["nll"] == pytest.approx(auto["nll"], rel=0.01)


def test_start_distances_take_a_rule_or_a_distance(capsys, model, tmp_path):
    """--start-distances: a rule's name or an integer; the JSON says which one ran, and a
    distance other than the ceiling scores differently past the window."""
    (tmp_path / "t.txt").write_text(" ".join(CORPUS), encoding="utf-8")
    flags = ("--file", tmp_path / "t.txt", "--n-local", 16, "--n-global", 2, "--chunk-size", 8)
    default = perplexity(capsys, model, *flags)
    near = perplexity(capsys, model, *flags, "--start-distances", 3)
    paper = perplexity(capsys, model, *flags, "--start-distances", "ceiling")
    assert (default["start_distances"], near["start_distances"]) == ("capped", 3)
    assert default["nll"] == paper["nll"] != near["nll"]  # a 16 window is under the cap (32)
    with pytest.raises(SystemExit) as e:
        run(capsys, "perplexity", "--model", model, *flags, "--start-distances", "0")
    assert e.value.code == 2
    assert "integer distance >= 1" in capsys.readouterr().err
