"""The Python API: load a model folder once, then generate, stream and score text.

    from tinfinite.engine import Engine
    llm = Engine.load("weights/SmolLM2-135M-Instruct")
    for piece in llm.generate("What is the capital of France?", chat=True):
        print(piece, end="", flush=True)
    print(llm.score("The sky is blue.").ppl)

The engine knows token ids; the tokenizer knows text. Every call streams its input through
the same preallocated cache in chunks, so memory does not depend on the input's length.
"""
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from tinfinite.cache import FullCache, LambdaCache
from tinfinite.checkpoint import load_model
from tinfinite.errors import UserError
from tinfinite.model import Llama
from tinfinite.packed import pack
from tinfinite.quantize import quantize_int8
from tinfinite.sampling import sample
from tinfinite.tokenizer import StreamDecoder, Tokenizer
from tinfinite.topk import TopKCache

# Starting tokens. The paper uses 10 (§4). Measured on the default model (README, "Starting
# tokens: how many?"): perplexity is the same for 1-256, but a 16K passkey prompt was
# answered with 64 (the whole task instruction kept) and not with 10. 64 slots cost nothing.
N_GLOBAL = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# lambda: LM-Infinite; full: vanilla causal attention (growing cache); window: a plain sliding
# window without starting tokens (the paper's failing baseline, factor 3).
ATTENTION = ("lambda", "full", "window")
# Prefill chunk. 512 was measured 4-5% faster than 256 in bfloat16 (in the window 326 -> 338-343
# tok/s, past it 177-184 -> 191-193) but doubles a wide call's per-head mask (39 -> 81 MB) and
# adds 256 masked ring slots that every decode step past the window reads. 256 it is.
CHUNK_SIZE = 256


@dataclass
class Stats:
    """Timings of the last generate() call."""
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    new_tokens: int = 0
    decode_seconds: float = 0.0

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / max(self.prefill_seconds, 1e-9)

    @property
    def decode_tps(self) -> float:
        return self.new_tokens / max(self.decode_seconds, 1e-9)


@dataclass
class Score:
    """Negative log-likelihood of `tokens` predicted tokens (natural log, summed)."""
    tokens: int
    nll: float

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")


def resolve_device(device: str) -> torch.device:
    name = str(device).split(":")[0]
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: no Apple MPS device is available here; use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device}: unknown device; use cpu, cuda or mps")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device name; use cpu, cuda, cuda:N or mps") from None


class Engine:
    """A loaded model, its tokenizer and one preallocated cache (Engine.load makes one).

    attention: "lambda" (LM-Infinite, default), "full" (vanilla, growing cache) or "window"
    (sliding window, no starting tokens). n_local: the window (default: the model's
    max_position_embeddings); n_global: starting tokens (lambda only, default 64);
    chunk_size: prefill chunk; top_k_middle, top_k_from_layer: the opt-in retrieval variant
    (memory grows with the input). Bad values raise UserError with a one-line message.
    """

    def __init__(self, model: Llama, tokenizer: Tokenizer, *, n_global: int | None = None,
                 n_local: int | None = None, attention: str = "lambda",
                 chunk_size: int = CHUNK_SIZE, top_k_middle: int = 0, top_k_from_layer: int = 4):
        if attention not in ATTENTION:
            raise UserError(f"--attention {attention}: choose one of {', '.join(ATTENTION)}")
        for flag, value, least in (("--n-global", n_global, 0), ("--n-local", n_local, 1),
                                   ("--chunk-size", chunk_size, 1),
                                   ("--top-k-middle", top_k_middle, 0),
                                   ("--top-k-from-layer", top_k_from_layer, 0)):
            if value is not None and (not isinstance(value, int) or value < least):
                raise UserError(f"{flag} {value}: must be an integer >= {least}")
        if attention != "lambda" and n_global:
            raise UserError(f"--n-global: --attention {attention} has no starting tokens")
        if attention == "full" and (n_local or top_k_middle):
            raise UserError("--attention full sees every token: it takes no --n-local or "
                            "--top-k-middle")
        self.model, self.tokenizer = model, tokenizer
        self.attention = attention
        # LM-Infinite's window (§4): the pre-training length. Starting tokens: N_GLOBAL.
        self.n_local = n_local or model.cfg.max_position_embeddings
        self.n_global = (N_GLOBAL if n_global is None else n_global) if attention == "lambda" else 0
        self.chunk_size = chunk_size
        # Opt-in retrieval variant (DESIGN.md §2): keeps every token's key and value.
        self.top_k_middle, self.top_k_from_layer = top_k_middle, top_k_from_layer
        self.stats = Stats()
        self._cache: LambdaCache | None = None
        self._unfed: int | None = None  # the last generated token, if it is not in the cache

    @classmethod
    def load(cls, model_dir: str | Path, *, dtype: str = "float32", device: str = "cpu",
             quantize: str | None = None, **options) -> "Engine":
        """Load a Hugging Face Llama folder. options: n_global, n_local, attention, chunk_size,
        top_k_middle, top_k_from_layer (see Engine).

        quantize="int8": int8 weight-only matmuls (quantize.py), opt-in."""
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
        if quantize not in (None, "int8"):
            raise UserError(f"--quantize {quantize}: the only choice is int8")
        dev = resolve_device(device)
        model = load_model(model_dir, DTYPES[dtype], dev)
        model = quantize_int8(model) if quantize else pack(model)  # pack: CPU matmuls, packed.py
        tokenizer = Tokenizer.from_folder(model_dir)
        return cls(model, tokenizer, **options)

    @property
    def cache(self) -> LambdaCache:
        """The preallocated cache, made on first use and reused by every call."""
        if self._cache is None:
            cfg, w = self.model.cfg, self.model.embed_tokens.weight
            where = dict(max_chunk=self.chunk_size, dtype=w.dtype, device=w.device)
            if self.attention == "full":
                self._cache = FullCache(cfg, **where)
                return self._cache
            _check_memory(cache_bytes(cfg, self.n_global, self.n_local, self.chunk_size,
                                      w.element_size()), w.device,
                          f"--n-local {self.n_local}, --n-global {self.n_global}, "
                          f"--chunk-size {self.chunk_size}")
            window = dict(n_global=self.n_global, n_local=self.n_local, **where)
            self._cache = TopKCache(cfg, top_k=self.top_k_middle, from_layer=self.top_k_from_layer,
                                    **window) if self.top_k_middle else LambdaCache(cfg, **window)
        return self._cache

    def _tensor(self, ids) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long,
                            device=self.model.embed_tokens.weight.device)

    def prefill(self, ids: list[int], resume: bool = False) -> torch.Tensor:
        """Stream ids through the cache, chunk by chunk; return the last position's logits.

        A fresh cache, or with resume=True after everything the cache already holds (and the
        last generated token, if it was not fed yet)."""
        if resume and self._unfed is not None:
            ids = [self._unfed] + list(ids)
        if not ids:
            raise UserError("the prompt is empty; give some text")
        if not resume:
            self.cache.reset()
        self._unfed = None
        for s in range(0, len(ids), self.chunk_size):
            logits = self.model(self._tensor(ids[s:s + self.chunk_size]), self.cache)
        return logits[0]                                                   # (vocab,)

    def generate_ids(self, ids: list[int], *, max_new_tokens: int = 256, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     ignore_eos: bool = False, resume: bool = False) -> Iterator[int]:
        """Yield new token ids after the prompt ids, until EOS or max_new_tokens.

        resume=True continues the previous call's context instead of starting afresh (an
        endless conversation: nothing is re-read, the cache simply goes on)."""
        gen = torch.Generator().manual_seed(seed if seed is not None else
                                            torch.seed() % (1 << 63))
        eos = set() if ignore_eos else set(self.tokenizer.eos_ids if self.tokenizer else [])
        self.stats = stats = Stats(prompt_tokens=len(ids))
        t0 = time.perf_counter()
        logits = self.prefill(ids, resume)
        stats.prefill_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        for n in range(max_new_tokens):
            check_finite(logits)
            token = sample(logits, temperature, top_k, top_p, gen)
            if token in eos:
                break
            stats.new_tokens = n + 1
            stats.decode_seconds = time.perf_counter() - t0
            self._unfed = token  # in the text, not yet in the cache
            yield token
            if n + 1 < max_new_tokens:
                logits = self.model(self._tensor([token]), self.cache)[0]
                self._unfed = None
        stats.decode_seconds = time.perf_counter() - t0

    def prompt_ids(self, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": prompt}]
            return self.tokenizer.encode(self.tokenizer.chat_prompt(messages), add_bos=False)
        return self.tokenizer.encode(prompt)

    def generate(self, prompt: str, *, chat: bool = False, system: str | None = None,
                 stop: Iterable[str] = (), resume: bool = False, **sampling) -> Iterator[str]:
        """Yield the continuation of prompt as text pieces, as they are made.

        sampling: max_new_tokens, temperature, top_k, top_p, seed, ignore_eos.
        Stops at EOS, after max_new_tokens, or before the first of the `stop` strings.
        resume=True: prompt continues the text of the previous calls (their prompts and
        replies stay in the cache; no BOS, no chat wrapping), as in examples/chat.py.
        """
        stops = [s for s in stop if s]
        decoder = StreamDecoder(self.tokenizer)
        pending = ""  # text that might still turn out to be the start of a stop string
        try:
            ids = self.tokenizer.encode(prompt, add_bos=False) if resume else \
                self.prompt_ids(prompt, chat, system)
            for token in self.generate_ids(ids, resume=resume, **sampling):
                pending += decoder.push(token)
                cut = _find_stop(pending, stops)
                if cut is not None:
                    yield pending[:cut]
                    return
                keep = _stop_prefix_len(pending, stops)
                if len(pending) > keep:
                    yield pending[:len(pending) - keep]
                    pending = pending[len(pending) - keep:]
        except KeyboardInterrupt:
            yield pending + decoder.flush()  # Ctrl-C: hand over all text made so far, then stop
            raise
        pending += decoder.flush()
        cut = _find_stop(pending, stops)
        yield pending if cut is None else pending[:cut]

    @torch.inference_mode()
    def token_nlls(self, ids: Sequence[int]) -> Iterator[torch.Tensor]:
        """Per-token NLL (float64, CPU) of ids[1:] given what precedes each, chunk by chunk.

        Never holds more than (chunk_size, vocab) logits: each chunk's rows predict the
        next chunk's first token too.
        """
        self.cache.reset()
        T = self.chunk_size
        for s in range(0, len(ids) - 1, T):
            logits = self.model(self._tensor(ids[s:s + T]), self.cache, last_only=False)[0]
            check_finite(logits)
            targets = torch.tensor(list(ids[s + 1:s + T + 1]), device=logits.device)  # (<= T,)
            yield F.cross_entropy(logits[:len(targets)].float(), targets,
                                  reduction="none").double().cpu()

    def perplexity(self, ids: list[int]) -> Score:
        """NLL of ids[1:] given what precedes each, streamed chunk by chunk."""
        nll = sum(chunk.sum().item() for chunk in self.token_nlls(ids))
        return Score(tokens=max(len(ids) - 1, 0), nll=nll)

    def score(self, text: str) -> Score:
        """Perplexity of text (with the tokenizer's BOS, if it adds one)."""
        return self.perplexity(self.tokenizer.encode(text))


def cache_bytes(cfg, n_global: int, n_local: int, chunk_size: int, itemsize: int) -> int:
    """Bytes of the Λ cache (cache.py): K and V of the ring and the starting tokens."""
    slots = n_local + chunk_size - 1 + n_global
    return cfg.n_layers * cfg.n_kv_heads * slots * 2 * cfg.head_dim * itemsize


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # unknown (macOS, Windows): let the allocator speak


def _check_memory(need: int, device: torch.device, flags: str):
    have = _available_bytes(device)
    if have is not None and need > have:
        raise UserError(f"{flags}: the cache needs {need / 2**30:.1f} GiB but only "
                        f"{have / 2**30:.1f} GiB is free; use a smaller --n-local or "
                        f"--dtype bfloat16")


def check_finite(logits: torch.Tensor):
    """float16 can overflow inside the network; never turn NaN/inf into text."""
    if not torch.isfinite(logits).all():
        raise UserError(f"the model produced NaN/inf logits ({logits.dtype} overflow?); "
                        f"use --dtype bfloat16 or float32")


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest end of text that begins some stop string."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
