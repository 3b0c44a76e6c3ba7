"""Every default and every rule for the engine's settings, in one place.

The Python API (engine.py) checks its arguments with these rules, and the command line
(cli.py) takes its defaults and choices from here, so `Engine.load(folder).generate(text)` and
`tinfinite --model folder --prompt-text text` run the same thing (tests/test_api.py checks it).
A bad value raises UserError naming the parameter as Python spells it,

    n_global=-3: must be an integer >= 0

and the command line names its flag instead (`--n-global -3: ...`; cli.flag_message).
"""
import math
import os
from numbers import Integral, Real

import torch

from tinfinite.errors import UserError

# --- how it attends (Engine) -------------------------------------------------------------

# lambda: LM-Infinite; full: vanilla causal attention (growing cache); window: a plain sliding
# window without starting tokens (the paper's failing baseline, factor 3).
ATTENTIONS = ("lambda", "full", "window")
ATTENTION = "lambda"
# Starting tokens (lambda only). The paper uses 10 (§4); 64 keeps a long prompt's whole task
# instruction in view, at no cost to perplexity (measurements: docs/decisions.md).
N_GLOBAL = 64
# The window: None = the model's max_position_embeddings, the paper's L_pretrain (§4).
N_LOCAL = None
# Prefill chunk: longer is barely faster, while the per-head mask past the window and the
# ring grow with it (measurements: docs/decisions.md).
CHUNK_SIZE = 256
# Top-k middle attention, the paper's retrieval variant (§5.2): off; when on, used from this
# layer (from 0) up.
TOP_K_MIDDLE = 0
TOP_K_FROM_LAYER = 4
TOP_K_BLOCK = 0     # top-k middle: 0 = score every middle token, N = blocks of N (topk.py)
# Where a query sees the starting tokens beyond its window (cache.start_distance_rule): one
# of these rules, or an integer distance. "capped", not the paper's ceiling: retrieval inside
# the default window needs it, perplexity does not mind (docs/decisions.md).
START_DISTANCES = ("capped", "ceiling", "spread")
START_DISTANCE = "capped"

# The dtype of the KV cache, in which attention runs. auto: float32 on the CPU, where torch's
# flash kernel runs a decode step's calls faster in float32 than in bfloat16, for twice the
# cache's memory (docs/decisions.md, "The KV cache in float32 on the CPU"); the model's dtype
# elsewhere.
KV_DTYPES = ("auto", "float32", "bfloat16", "float16")
KV_DTYPE = "auto"

# --- where and how it runs (Engine.load) ---------------------------------------------------

# auto: the checkpoint's own dtype where the device runs it natively, else float32 (auto_dtype).
DTYPES = ("auto", "float32", "bfloat16", "float16")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE = "auto"
DEVICES = ("cpu", "cuda", "mps")
DEVICE = "cpu"
QUANTIZE = (None, "int8", "int4")
# Compute threads: None = the cores other processes leave free while the model loads (threads.py).
THREADS = None
# Decode steps through torch.compile (compiled.py): opt-in, as each graph compiles for a minute.
COMPILE = False

# --- what a call makes (generate, generate_ids) --------------------------------------------

MAX_NEW_TOKENS = 256
TEMPERATURE = 0.0   # 0 = greedy
TOP_K = 0           # 0 = no limit
TOP_P = 1.0         # 1 = no limit
SEED = None         # None = a fresh random seed per call

# A passkey prompt longer than this (16M tokens) is a typo: a day of prefill on a CPU.
MAX_PASSKEY_LENGTH = 2**24


# --- the rules -----------------------------------------------------------------------------

def shown(value) -> str:
    """A value as the message shows it: repr, a long string cut to its start."""
    if isinstance(value, str) and len(value) > 40:
        value = value[:37] + "..."
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(name: str, value, least: int = 0, none_ok: bool = False):
    """An int >= least (None too when none_ok); a bool is refused (True is an int in Python)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise UserError(f"{name}={shown(value)}: must be an integer >= {least}", name)
    return int(value)


def start_distances(value) -> str | int:
    """One of START_DISTANCES, or an integer distance >= 1."""
    if value in START_DISTANCES or (isinstance(value, Integral) and not isinstance(value, bool)
                                    and value >= 1):
        return value if isinstance(value, str) else int(value)
    raise UserError(f"start_distances={shown(value)}: choose one of "
                    f"{', '.join(START_DISTANCES)}, or an integer distance >= 1",
                    "start_distances")


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{name}={shown(value)}: must be True or False", name)
    return value


def string(name: str, value, none_ok: bool = False):
    if value is None and none_ok:
        return None
    if not isinstance(value, str):
        raise UserError(f"{name}={shown(value)}: must be a string", name)
    return value


def writable_folder(name: str, value) -> str | None:
    """None, or the path of an existing folder this process may write into."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise UserError(f"{name}={shown(value)}: must be a folder path", name)
    if not os.path.isdir(value) or not os.access(value, os.W_OK | os.X_OK):
        raise UserError(f"{name}={shown(str(value))}: not a folder this process can write "
                        f"into", name)
    return str(value)


def choice(name: str, value, choices: tuple):
    if value not in choices:
        names = ", ".join("None" if c is None else c for c in choices)
        raise UserError(f"{name}={shown(value)}: choose one of {names}", name)
    return value


def sampling(max_new_tokens, temperature, top_k, top_p, seed) -> dict:
    """The sampling arguments of generate() and generate_ids(), checked and normalised."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or \
            not 0 <= temperature < math.inf:
        raise UserError(f"temperature={shown(temperature)}: must be a finite number >= 0 "
                        f"(0 = greedy)", "temperature")
    if isinstance(top_p, bool) or not isinstance(top_p, Real) or not 0 < top_p <= 1:
        raise UserError(f"top_p={shown(top_p)}: must be a number in (0, 1] (1 = no limit)",
                        "top_p")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral)
                             or not -2**63 <= seed < 2**64):
        raise UserError(f"seed={shown(seed)}: must be None or an integer that fits in 64 bits",
                        "seed")
    return dict(max_new_tokens=integer("max_new_tokens", max_new_tokens),
                temperature=float(temperature), top_k=integer("top_k", top_k),
                top_p=float(top_p), seed=None if seed is None else int(seed))


def chat_and_system(chat, system):
    """chat: a bool; system: None or a string, and only with chat=True."""
    boolean("chat", chat)
    string("system", system, none_ok=True)
    if system and not chat:
        raise UserError("system needs chat=True", "system")


def stop_strings(stop) -> list[str]:
    """stop: one string, or an iterable of strings; empty strings are dropped."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    try:
        stops = list(stop)
    except TypeError:
        raise UserError(f"stop={shown(stop)}: must be a string or a list of strings",
                        "stop") from None
    for i, s in enumerate(stops):
        if not isinstance(s, str):
            raise UserError(f"stop: item {i} is {shown(s)}, not a string", "stop")
    return [s for s in stops if s]


def token_ids(ids, vocab_size: int) -> list[int]:
    """ids: a sequence of ints in 0..vocab_size-1 (a list, tuple, range, 1-d tensor or array)."""
    if hasattr(ids, "tolist") and not isinstance(ids, (str, bytes)):
        ids = ids.tolist()  # torch or numpy
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, range)):
        raise UserError(f"ids={shown(ids)}: must be a sequence of token ids (ints); for text, "
                        f"use generate() or score()", "ids")
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, Integral):
            raise UserError(f"ids: item {i} is {shown(t)}, not a token id (an int)", "ids")
        if not 0 <= t < vocab_size:
            raise UserError(f"ids: token {t} is outside the vocabulary (0..{vocab_size - 1})",
                            "ids")
    return [int(t) for t in ids]


# --- dtype auto ----------------------------------------------------------------------------

def runs_natively(dtype: str, device: torch.device) -> bool:
    """Does this device compute in this dtype natively (rather than emulate it, slowly)?"""
    if dtype == "float32":
        return True
    if device.type == "mps":
        return dtype in ("bfloat16", "float16")
    if device.type == "cuda":
        return dtype == "float16" or torch.cuda.is_bf16_supported()
    if device.type == "cpu" and dtype == "bfloat16":  # oneDNN's bf16 kernels (e.g. AVX-512)
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False  # float16 on a CPU: emulated


def auto_kv_dtype(model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """kv_dtype "auto" (KV_DTYPE): float32 on the CPU, the model's dtype elsewhere."""
    return torch.float32 if device.type == "cpu" else model_dtype


def auto_dtype(checkpoint_dtype: str, device: torch.device) -> str:
    """dtype "auto": the checkpoint's own dtype (config.json's torch_dtype) where the device
    runs it natively, so nothing is rounded or emulated; else float32."""
    name = str(checkpoint_dtype).removeprefix("torch.")
    return name if name in DTYPES[1:] and runs_natively(name, device) else "float32"
