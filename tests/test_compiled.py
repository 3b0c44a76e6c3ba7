"""compile=True (`--compile`, compiled.py): decode steps through torch.compile give the eager
engine's tokens and logits, through every kind of step: the starting tokens' (eager), inside
the window, and past it (the ring wrapping); and what it cannot compile is refused at the call.
Tiny random model (tests/tiny.py), float32, a 12-token window."""
import os
import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from tests.tiny import tiny_llama
from tinfinite.engine import Engine
from tinfinite.errors import UserError

OPTIONS = dict(n_local=12, n_global=2, chunk_size=4, dtype="float32")
needs_cxx = pytest.mark.skipif(not shutil.which(os.environ.get("CXX", "g++")),
                               reason="no C++ compiler here: compile=True is refused (tested below)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


def decoded(engine: Engine, prompt: list[int], steps: int):
    """The logits of each decode step after prompt, feeding back the greedy token."""
    logits, out = engine.prefill(prompt), []
    for _ in range(steps):
        token = int(logits.argmax())
        logits = engine._decode(token)
        out.append(logits)
    return torch.stack(out)


@needs_cxx
def test_compiled_steps_give_the_eager_logits(folder):
    eager = Engine.load(folder, **OPTIONS)
    compiled = Engine.load(folder, compile=True, **OPTIONS)
    # 1 prompt token: steps 1 and 2 store starting tokens (eager), then 9 steps inside the
    # 12-token window, then past it, wrapping the 15-slot ring more than once
    prompt, steps = [5], 40
    want = decoded(eager, prompt, steps)
    counters.clear()
    got = decoded(compiled, prompt, steps)
    # really compiled: one graph inside the window, one past it (each is a minute of compiling
    # on the default model, so a third would be a bug too)
    assert counters["stats"]["unique_graphs"] == 2
    assert (got.argmax(-1) == want.argmax(-1)).all()
    # float32 through fused loops and other GEMMs: rounding only; a wrong key or mask would
    # move logits by O(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and the same again on the same compiled graphs, from a fresh cache
    torch.testing.assert_close(decoded(compiled, [7, 8, 9], 20), decoded(eager, [7, 8, 9], 20),
                               rtol=1e-4, atol=1e-4)


@needs_cxx
def test_each_model_runs_its_own_compiled_steps(folder, tmp_path):
    # the compiled graphs hold a model's weights as constants, and dynamo keeps them per
    # function, not per model: a second model of the same shapes must not run the first's
    other = tiny_llama(tmp_path / "other", seed=2)
    first, second = (Engine.load(f, compile=True, **OPTIONS) for f in (folder, other))
    for engine, f in ((first, folder), (second, other), (first, folder)):
        torch.testing.assert_close(decoded(engine, [5], 16),
                                   decoded(Engine.load(f, **OPTIONS), [5], 16),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("options, message", [
    (dict(attention="full"), "compile=True: compiles the window cache only"),
    (dict(top_k_middle=2), "compile=True: compiles the window cache only"),
    (dict(compile="yes"), "compile='yes': must be True or False"),
])
@needs_cxx  # the compiler is checked first
def test_compile_refuses_what_it_cannot_compile(folder, options, message):
    with pytest.raises(UserError) as e:
        Engine.load(folder, **{"compile": True, **options})
    assert str(e.value).startswith(message), str(e.value)
    assert e.value.param == "compile"


@needs_cxx
def test_the_command_line_says_its_flags(folder, capsys):
    from tinfinite import cli
    assert cli.main(["--model", str(folder), "--prompt-text", "hi", "--compile",
                     "--attention", "full"]) == 1
    assert capsys.readouterr().err == (
        "tinfinite: error: --compile: compiles the window cache only; use --attention full "
        "or --top-k-middle without --compile\n")


def test_compile_needs_a_cpp_compiler(folder, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(UserError, match="needs a C\\+\\+ compiler .'no-such-compiler' not found"):
        Engine.load(folder, compile=True)
