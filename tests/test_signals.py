"""How a run ends when it is stopped from outside: SIGTERM, and a stdout that is full.

Real processes (`python main.py` on a tiny random model), since signals and file descriptors
are what is tested. Each ends like Ctrl-C (tests/test_cli.py): the text so far, one line on
stderr, no traceback, the conventional exit code.
"""
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import tiny_llama

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


def main_py(model, *flags) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), "--model", str(model),
            "--prompt-text", "The quick brown fox", *map(str, flags)]


def test_sigterm_keeps_the_text_so_far(model):
    proc = subprocess.Popen(main_py(model, "--ignore-eos", "--max-new-tokens", 100000),
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no output within 60 s"
        time.sleep(0.2)  # a few more tokens
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 143, err
    assert err == "tinfinite: terminated\n"
    assert len(out) > 1 and out.endswith(b"\n")


def test_full_stdout_is_one_error_line(model):
    with open("/dev/full", "w") as full:
        done = subprocess.run(main_py(model, "--max-new-tokens", 5), cwd=REPO, env=ENV,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "tinfinite: error: cannot write the output (No space left on device)\n"


def test_full_stdout_after_perplexity(model, tmp_path):
    """Perplexity prints its result once, at the end: the flush at exit must not fail there."""
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 4)
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, str(REPO / "main.py"), "perplexity", "--model",
                               str(model), "--file", str(tmp_path / "t.txt")], cwd=REPO, env=ENV,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "tinfinite: error: cannot write the output (No space left on device)\n"
