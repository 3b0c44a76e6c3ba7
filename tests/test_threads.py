"""Compute threads (threads.py): an explicit count is what torch runs with; the auto choice
takes the cores other processes leave free; bad values are refused in one line."""
import pytest
import torch

from tests.tiny import tiny_llama
from tinfinite import threads
from tinfinite.cli import main
from tinfinite.engine import Engine
from tinfinite.errors import UserError
from tinfinite.threads import ThreadChoice, busy_ticks, choose_threads, others_busy


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


def test_auto_choice_is_the_free_cores():
    assert choose_threads(2, 0.0, most=2) == 2            # quiet
    assert choose_threads(2, 1.0, most=2) == 1            # one core busy
    assert choose_threads(2, 2.0, most=2) == 1            # never fewer than 1
    assert choose_threads(2, 7.5, most=2) == 1
    assert choose_threads(2, 0.3, most=2) == 2            # background noise is not a core
    assert choose_threads(2, 0.5, most=2) == 1            # half a core is
    assert choose_threads(16, 3.4, most=16) == 13
    assert choose_threads(16, 0.0, most=8) == 8           # at most torch's default
    assert choose_threads(4, None, most=4) == 4           # load unknown: all of them
    assert choose_threads(4, 0.0, most=1) == 1


def test_load_reading_from_proc_stat():
    stat = ("cpu  500 0 100 900 10 0 0 0 0 0\n"
            "cpu0 200 5 50 400 5 1 2 3 0 0\n"             # busy: all but idle and iowait
            "cpu1 300 0 50 500 5 0 0 0 0 0\n"
            "intr 1 2 3\n\nctxt 99\n")
    assert busy_ticks(stat, [0]) == 200 + 5 + 50 + 1 + 2 + 3
    assert busy_ticks(stat, [0, 1]) == 261 + 350
    assert busy_ticks(stat, [0, 2]) is None                # a CPU it does not list
    # 2 s, 300 busy ticks at 100 Hz = 3 CPU-seconds; 1 of them ours: 1 core of others
    assert others_busy(300, 1.0, 2.0, 100) == pytest.approx(1.0)
    assert others_busy(50, 1.0, 2.0, 100) == 0.0           # never below 0


def test_auto_applies_the_choice(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "TORCH_DEFAULT", 2)
    monkeypatch.setattr(threads, "our_cpus", lambda: [0, 1])
    for busy, want in ((1.0, 1), (0.0, 2), (None, 2)):
        choice = ThreadChoice(None)
        monkeypatch.setattr(choice, "busy", lambda: busy)
        torch.set_num_threads(3)
        assert choice.apply() == want and torch.get_num_threads() == want


def test_engine_runs_with_the_threads_asked(model, restore_threads):
    for n in (2, 1):
        torch.set_num_threads(3)
        engine = Engine.load(model, threads=n)
        list(engine.generate_ids([3, 4, 5], max_new_tokens=2))
        assert torch.get_num_threads() == n


@pytest.mark.parametrize("bad", [0, -1, "x", True, 1.5])
def test_bad_threads_are_refused(model, bad):
    with pytest.raises(UserError, match="threads") as e:
        Engine.load(model, threads=bad)
    assert "\n" not in str(e.value)


def test_cli_threads_flag(model, capsys, restore_threads):
    torch.set_num_threads(3)
    assert main(["--model", str(model), "--prompt-text", "fox", "--max-new-tokens", "2",
                 "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    capsys.readouterr()
    assert main(["--model", str(model), "--prompt-text", "fox", "--threads", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "threads" in err and "\n" not in err
    with pytest.raises(SystemExit):                       # not a number: argparse's usage error
        main(["--model", str(model), "--prompt-text", "fox", "--threads", "x"])
    assert "--threads" in capsys.readouterr().err
    for command in ("perplexity", "passkey"):             # every command takes it
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--threads" in capsys.readouterr().out
