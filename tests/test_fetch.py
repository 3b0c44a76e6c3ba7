"""The default-model fetch with several processes at once, and after one was killed.

Real processes, each running FETCH: ensure_default_model() into a temporary weights folder
($TINFINITE_WEIGHTS), converting the tiny synthetic GGUF of tests/test_weights.py instead of
downloading. A fetch pauses where the test needs it to (after "fetching", or inside the
conversion) until the test creates a file named "go", so nothing depends on timing.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_weights import tiny_gguf  # noqa: F401 (a fixture)
from tinfinite.fetch import MODEL_NAME, is_complete

REPO = Path(__file__).resolve().parent.parent

FETCH = """
import shutil, sys, time
from pathlib import Path
from tinfinite import fetch, gguf_to_hf

gguf, go, pause_in = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def wait_for_go():
    while not go.exists():
        time.sleep(0.02)

def find_gguf(scratch):
    copy = Path(shutil.copy(gguf, scratch))
    if pause_in == "download":
        wait_for_go()
    return copy

write_folder = gguf_to_hf._write_folder
def slow_write_folder(reader, out):
    (out / "config.json").write_text("{}")  # a partial conversion
    print("tinfinite: test: converting", file=sys.stderr, flush=True)
    wait_for_go()
    write_folder(reader, out)

if pause_in == "convert":
    gguf_to_hf._write_folder = slow_write_folder
print(fetch.ensure_default_model(find_gguf=find_gguf))
"""


def start(weights: Path, gguf: Path, pause_in: str, name: str) -> subprocess.Popen:
    env = {**os.environ, "TINFINITE_WEIGHTS": str(weights), "OMP_NUM_THREADS": "1"}
    err = open(weights.parent / f"{name}.err", "w")
    return subprocess.Popen([sys.executable, "-c", FETCH, str(gguf), str(weights.parent / "go"),
                             pause_in], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                            text=True)


def stderr_of(weights: Path, name: str) -> str:
    return (weights.parent / f"{name}.err").read_text()


def wait_until(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    return out


@pytest.fixture
def weights(tmp_path) -> Path:
    return tmp_path / "weights"


@pytest.mark.parametrize("second_starts", ["at once", "while the first fetches"])
def test_concurrent_fetches_both_get_the_folder(tiny_gguf, weights, second_starts):  # noqa: F811
    gguf = tiny_gguf[0]
    first = start(weights, gguf, "download", "first")
    if second_starts == "while the first fetches":
        wait_until(lambda: "fetching" in stderr_of(weights, "first"), "the first to fetch")
    second = start(weights, gguf, "download", "second")
    # Both are running: one fetches (and pauses), the other waits on the lock.
    both = lambda: stderr_of(weights, "first") + stderr_of(weights, "second")  # noqa: E731
    wait_until(lambda: "fetching" in both() and "waiting" in both(), "one fetch, one wait")
    (weights.parent / "go").touch()
    folder = weights / MODEL_NAME
    assert finish(first) == finish(second) == f"{folder}\n"
    assert both().count("converting") == 1  # the waiter used the first's folder
    assert is_complete(folder)
    assert sorted(p.name for p in weights.iterdir()) == [".fetch.lock", MODEL_NAME]


def test_a_killed_fetch_is_cleaned_up_by_the_next(tiny_gguf, weights):  # noqa: F811
    gguf = tiny_gguf[0]
    killed = start(weights, gguf, "convert", "killed")
    wait_until(lambda: "test: converting" in stderr_of(weights, "killed"), "the conversion")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    left = sorted(p.name for p in weights.iterdir())
    assert [n.split("-")[0] for n in left] == [".SmolLM2", ".fetch.lock", ".tinfinite"], left
    assert not (weights / MODEL_NAME).exists()

    (weights.parent / "go").touch()
    assert finish(start(weights, gguf, "none", "next")) == f"{weights / MODEL_NAME}\n"
    assert "waiting" not in stderr_of(weights, "next")  # the dead process holds no lock
    assert sorted(p.name for p in weights.iterdir()) == [".fetch.lock", MODEL_NAME]
    assert is_complete(weights / MODEL_NAME)
