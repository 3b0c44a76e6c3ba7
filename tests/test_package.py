"""The package as a user installs it: build the wheel, install it into a fresh virtual
environment, and use it from another folder, through the Python API and the `tinfinite`
console script. Offline: the build and the install read only local files, and the new
environment borrows this one's torch & co through a .pth file instead of downloading them."""
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import tiny_llama

REPO = Path(__file__).resolve().parents[1]


def run(*cmd, cwd, env=None, timeout=120):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A new venv with the built wheel installed; bin/ holds its python and `tinfinite`."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "tinfinite", src / "tinfinite",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist",
        src, cwd=tmp)
    wheel, = (tmp / "dist").glob("tinfinite-*.whl")
    env = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", env, cwd=tmp)
    run(*pip, "--python", env / "bin" / "python", "install", "--no-deps", "--no-index", wheel,
        cwd=tmp)
    # torch, tokenizers, ... come from this environment, after the venv's own packages
    purelib, = Path(env, "lib").glob("python3*/site-packages")
    (purelib / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env


def user_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TINFINITE_WEIGHTS")}
    return {**env, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp / "cache")}


def test_the_installed_package_runs_from_any_folder(venv, tmp_path):
    model = tiny_llama(tmp_path / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import tinfinite, tinfinite.fetch as f\n"
            "from tinfinite import Engine\n"
            "print(tinfinite.__file__)\n"
            "print(f.default_model_dir())\n"
            f"llm = Engine.load({str(model)!r})\n"
            "print(len(list(llm.generate_ids(llm.tokenizer.encode('The fox'), max_new_tokens=3,"
            " ignore_eos=True))))\n")
    out = run(venv / "bin" / "python", "-c", code, cwd=elsewhere,
              env=user_env(tmp_path)).splitlines()
    assert Path(out[0]).is_relative_to(venv)        # the installed copy, not the checkout
    # no checkout around an installed package: the default model goes to the user's cache
    assert Path(out[1]) == tmp_path / "cache" / "tinfinite" / "SmolLM2-135M-Instruct"
    assert out[2] == "3"
    env = {**user_env(tmp_path), "TINFINITE_WEIGHTS": str(tmp_path / "w")}
    out = run(venv / "bin" / "python", "-c",
              "from tinfinite.fetch import default_model_dir; print(default_model_dir())",
              cwd=elsewhere, env=env)
    assert Path(out.strip()) == tmp_path / "w" / "SmolLM2-135M-Instruct"


def test_the_console_script_is_the_command_line(venv, tmp_path):
    tinfinite = venv / "bin" / "tinfinite"
    env = user_env(tmp_path)
    assert run(tinfinite, "--help", cwd=tmp_path, env=env).startswith("usage: tinfinite ")
    assert "usage: tinfinite serve" in run(tinfinite, "serve", "--help", cwd=tmp_path, env=env)
    model = tiny_llama(tmp_path / "tiny")
    r = subprocess.run([str(tinfinite), "--model", str(model), "--prompt-text", "hi",
                        "--max-new-tokens", "2", "--ignore-eos"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "decode 2 tokens" in r.stderr
    r = subprocess.run([str(tinfinite), "--model", str(tmp_path / "nothing"), "--prompt-text",
                        "hi"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("tinfinite: error:")
