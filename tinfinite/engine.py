"""The Python API: load a model folder once, then generate, stream and score text.

    from tinfinite.engine import Engine
    llm = Engine.load("weights/SmolLM2-135M-Instruct")
    for piece in llm.generate("What is the capital of France?", chat=True):
        print(piece, end="", flush=True)
    print(llm.score("The sky is blue.").ppl)

The engine knows token ids; the tokenizer knows text. Every call streams its input through
the same preallocated cache in chunks, so memory does not depend on the input's length.
"""
import copy
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from tinfinite import memory, settings
from tinfinite.cache import FullCache, LambdaCache
from tinfinite.checkpoint import load_model
from tinfinite.compiled import check_can_compile, compile_network
from tinfinite.config import load_config
from tinfinite.errors import UserError
from tinfinite.model import Llama
from tinfinite.packed import PackedLinear, pack
from tinfinite.quantize import quantize_int4, quantize_int8
from tinfinite.sampling import sample
from tinfinite.threads import ThreadChoice
from tinfinite.tokenizer import TextStream, Tokenizer
from tinfinite.topk import TopKCache



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


def resolve_device(device: str | torch.device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise UserError(f"device={settings.shown(device)}: must be a string such as 'cpu'",
                        "device")
    device = str(device)
    name = device.split(":")[0]
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device!r}: no CUDA device is available here; use device='cpu'",
                        "device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={device!r}: no Apple MPS device is available here; "
                        f"use device='cpu'", "device")
    if name not in settings.DEVICES:
        raise UserError(f"device={device!r}: unknown device; use cpu, cuda or mps", "device")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"device={device!r}: not a device name; use cpu, cuda, cuda:N or mps",
                        "device") from None


def resolve_dtype(dtype: str, checkpoint_dtype: str, device: torch.device) -> str:
    """dtype, with "auto" made the checkpoint's dtype where the device runs it natively, else
    float32 (settings.auto_dtype)."""
    settings.choice("dtype", dtype, settings.DTYPES)
    return settings.auto_dtype(checkpoint_dtype, device) if dtype == "auto" else dtype


class Engine:
    """A loaded model, its tokenizer and one preallocated cache (Engine.load makes one).

    attention: "lambda" (LM-Infinite, default), "full" (vanilla, growing cache) or "window"
    (sliding window, no starting tokens). n_local: the window (default: the model's
    max_position_embeddings); n_global: starting tokens (lambda only, default 64);
    chunk_size: prefill chunk; top_k_middle, top_k_from_layer: the opt-in retrieval variant
    (memory grows with the input), top_k_block: choose its picks by blocks of that many
    tokens (faster on long inputs; topk.py), top_k_offload: a folder where the growing keys
    and values live, memory-mapped, instead of RAM; start_distances: "capped" (default),
    "ceiling" (the paper), "spread" or a distance N, where a query sees the starting tokens
    beyond its window (cache.start_distance_rule).
    Defaults: settings.py. A bad argument, here or in any call, raises UserError with a
    one-line message naming the parameter; so does a run that would not fit in memory, before
    it allocates (memory.py).

    Safe to share between threads: calls take turns. A call holds the engine until it
    returns; a generator (generate, generate_ids, token_nlls) from its first next() until
    it is exhausted, closed or garbage-collected, so another thread's call waits for it.
    A generator belongs to the thread that started it: calling the engine again from that
    thread before it is finished would wait for ever, so it raises UserError instead.
    `stats` describes the last generate() call of any thread.
    """

    def __init__(self, model: Llama, tokenizer: Tokenizer, *, n_global: int | None = None,
                 n_local: int | None = settings.N_LOCAL, attention: str = settings.ATTENTION,
                 chunk_size: int = settings.CHUNK_SIZE,
                 top_k_middle: int = settings.TOP_K_MIDDLE,
                 top_k_from_layer: int = settings.TOP_K_FROM_LAYER,
                 top_k_block: int = settings.TOP_K_BLOCK,
                 top_k_offload: str | None = None,
                 start_distances: str | int = settings.START_DISTANCE,
                 kv_dtype: str = settings.KV_DTYPE, compile: bool = settings.COMPILE):
        settings.choice("attention", attention, settings.ATTENTIONS)
        settings.choice("kv_dtype", kv_dtype, settings.KV_DTYPES)
        compile = settings.boolean("compile", compile)
        start_distances = settings.start_distances(start_distances)
        n_global = settings.integer("n_global", n_global, 0, none_ok=True)
        n_local = settings.integer("n_local", n_local, 1, none_ok=True)
        chunk_size = settings.integer("chunk_size", chunk_size, 1)
        top_k_middle = settings.integer("top_k_middle", top_k_middle)
        top_k_from_layer = settings.integer("top_k_from_layer", top_k_from_layer)
        top_k_block = settings.integer("top_k_block", top_k_block)
        top_k_offload = settings.writable_folder("top_k_offload", top_k_offload)
        for name, value in (("top_k_block", top_k_block), ("top_k_offload", top_k_offload)):
            if value and not top_k_middle:
                raise UserError(f"{name}={settings.shown(value)}: applies to top_k_middle's "
                                f"picks; set top_k_middle too", name)
        if top_k_offload and model.embed_tokens.weight.device.type != "cpu":
            raise UserError(f"top_k_offload={top_k_offload!r}: maps files into CPU memory; "
                            f"use device='cpu'", "top_k_offload")
        if attention != "lambda" and n_global:
            raise UserError(f"n_global={n_global}: attention={attention!r} has no starting "
                            f"tokens", "n_global")
        if attention == "full" and (n_local or top_k_middle):
            raise UserError("attention='full' sees every token: it takes no n_local or "
                            "top_k_middle", "attention")
        if compile and (attention == "full" or top_k_middle):
            raise UserError("compile=True: compiles the window cache only; use "
                            "attention='full' or top_k_middle without compile=True", "compile")
        if compile:
            check_can_compile(model.embed_tokens.weight.device)
            if any(isinstance(m, PackedLinear) for m in model.modules()):
                raise UserError("compile=True: the model's weights are packed for oneDNN and "
                                "cannot be compiled; load it with Engine.load(compile=True)",
                                "compile")
        self.model, self.tokenizer = model, tokenizer
        # Decode steps through torch.compile (compiled.py), or None: eagerly, as everything else.
        self._compiled = compile_network(model) if compile else None
        self.attention = attention
        # LM-Infinite's window (§4): the pre-training length. Starting tokens: settings.N_GLOBAL.
        self.n_local = n_local or model.cfg.max_position_embeddings
        self.n_global = (settings.N_GLOBAL if n_global is None else n_global) \
            if attention == "lambda" else 0
        self.chunk_size = chunk_size
        # Opt-in retrieval variant (docs/design.md §2): keeps every token's key and value.
        self.top_k_middle, self.top_k_from_layer = top_k_middle, top_k_from_layer
        self.top_k_block, self.top_k_offload = top_k_block, top_k_offload
        self.start_distances = start_distances
        w = model.embed_tokens.weight
        # The cache's keys and values, and the attention over them (settings.KV_DTYPE).
        self.kv_dtype = settings.auto_kv_dtype(w.dtype, w.device) if kv_dtype == "auto" \
            else settings.TORCH_DTYPES[kv_dtype]
        self.stats = Stats()
        self._cache: LambdaCache | None = None
        self._unfed: int | None = None  # the last generated token, if it is not in the cache
        self._lock = threading.Lock()    # calls take turns (see above)
        self._holder: int | None = None  # the thread whose call holds it
        need = self._check_memory()
        if w.device.type == "cpu":  # what a call allocates and frees again stays in the heap
            memory.keep_freed(need["activations"] + need["mask"] + need["logits"])

    @classmethod
    def load(cls, model_dir: str | Path, *, dtype: str = settings.DTYPE,
             device: str = settings.DEVICE, quantize: str | None = None,
             threads: int | None = settings.THREADS, compile: bool = settings.COMPILE,
             **options) -> "Engine":
        """Load a Hugging Face Llama folder. options: n_global, n_local, attention, chunk_size,
        top_k_middle, top_k_from_layer, top_k_block, top_k_offload, start_distances, kv_dtype
        (see Engine).

        dtype: "auto" (default) is the checkpoint's own dtype (config.json's torch_dtype)
        where the device computes in it natively, else float32: bfloat16 on a CPU with
        oneDNN's bf16 kernels, on CUDA with bf16 support, on mps; float16 on cuda and mps
        only. engine.dtype says what was chosen.
        quantize="int8" or "int4": weight-only quantised matmuls (quantize.py), opt-in; int4
        on the CPU only.
        threads: torch's compute threads, set for the whole process; None (default): the
        cores other processes leave free while the model loads (threads.py).
        compile=True: decode steps through torch.compile, CPU only (compiled.py): faster
        steps after about a minute of compiling at the first step inside the window and
        again at the first past it; the weights stay plain (not packed) for it."""
        if not isinstance(model_dir, (str, os.PathLike)):
            raise UserError(f"model_dir={settings.shown(model_dir)}: must be a folder path "
                            f"(str or Path)", "model_dir")
        folder = Path(model_dir)
        if not folder.is_dir():
            raise UserError(f"model_dir={str(model_dir)!r}: " + (
                "is a file; give the model's folder (with config.json)" if folder.is_file() else
                "model folder not found; give a Hugging Face Llama folder (config.json, "
                "*.safetensors, tokenizer)"), "model_dir")
        settings.choice("quantize", quantize, settings.QUANTIZE)
        compile = settings.boolean("compile", compile)
        dev = resolve_device(device)
        if compile:
            check_can_compile(dev)
        cfg = load_config(model_dir)
        dtype = resolve_dtype(dtype, cfg.torch_dtype, dev)
        # The tokenizer first: a folder whose tokenizer does not fit fails before the weights load.
        tokenizer = Tokenizer.from_folder(model_dir, vocab_size=cfg.vocab_size)
        compute = ThreadChoice(threads)  # auto: watches the machine's load while we load
        model = load_model(model_dir, settings.TORCH_DTYPES[dtype], dev)
        compute.apply()
        # pack: CPU matmuls in oneDNN's layout (packed.py); compiling freezes plain weights
        # into its own layout instead
        make = {"int8": quantize_int8, "int4": quantize_int4,
                None: (lambda m: m) if compile else pack}[quantize]
        model = make(model)
        memory.release_freed()  # the weights that make() replaced
        return cls(model, tokenizer, compile=compile, **options)

    @property
    def dtype(self) -> str:
        """The dtype the model computes in: "float32", "bfloat16" or "float16"."""
        return str(self.model.embed_tokens.weight.dtype).removeprefix("torch.")

    @property
    def cache(self) -> LambdaCache:
        """The preallocated cache, made on first use and reused by every call."""
        if self._cache is None:
            cfg, w = self.model.cfg, self.model.embed_tokens.weight
            where = dict(max_chunk=self.chunk_size, dtype=self.kv_dtype, device=w.device)
            if self.attention == "full":
                self._cache = FullCache(cfg, **where)
                return self._cache
            window = dict(n_global=self.n_global, n_local=self.n_local,
                          start_distances=self.start_distances, **where)
            self._cache = TopKCache(cfg, top_k=self.top_k_middle, from_layer=self.top_k_from_layer,
                                    block=self.top_k_block, offload=self.top_k_offload,
                                    **window) \
                if self.top_k_middle else LambdaCache(cfg, **window)
        return self._cache

    def _tensor(self, ids) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long,
                            device=self.model.embed_tokens.weight.device)

    # --- calls take turns ------------------------------------------------------------------

    @contextmanager
    def _turn(self):
        """Hold the engine for one call; another thread's call waits until it is released."""
        self._not_busy_here()
        with self._lock:
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None

    def _not_busy_here(self):
        """Waiting for the lock that this very thread holds would wait for ever."""
        if self._holder == threading.get_ident():
            raise UserError("the engine is busy with an unfinished generate() in this thread; "
                            "finish or close it first")

    def _serialised(self, steps: Iterator) -> Iterator:
        """Run a generator holding the engine, from its first next() until it is exhausted or
        closed (garbage collection closes it too: the `with` releases the lock either way)."""
        with self._turn():
            yield from steps

    def _check_memory(self, tokens: int = 0):
        """Refuse, before allocating, a run of `tokens` tokens (0: not known) that cannot fit;
        return what it needs (memory.run_bytes)."""
        w = self.model.embed_tokens.weight
        need = memory.run_bytes(self.model.cfg, attention=self.attention, n_local=self.n_local,
                                n_global=self.n_global, chunk_size=self.chunk_size,
                                top_k_middle=self.top_k_middle, itemsize=self.kv_dtype.itemsize,
                                tokens=tokens, top_k_block=self.top_k_block,
                                model_itemsize=self.model.embed_tokens.weight.element_size())
        used = dict(attention=self.attention, n_local=self.n_local, n_global=self.n_global,
                    chunk_size=self.chunk_size, top_k_middle=self.top_k_middle, dtype=self.dtype)
        if self.top_k_offload:  # the growing keys and values go to disk, not RAM
            memory.check_disk(need.pop("top-k keys/values"),
                              memory.held_bytes(self._cache, on_disk=True), self.top_k_offload,
                              tokens)
        memory.check(need, memory.held_bytes(self._cache), w.device, used, tokens)
        return need

    # --- the calls -----------------------------------------------------------------------------

    def prefill(self, ids: Sequence[int], resume: bool = False) -> torch.Tensor:
        """Stream ids through the cache, chunk by chunk; return the last position's logits.

        A fresh cache, or with resume=True after everything the cache already holds (and the
        last generated token, if it was not fed yet)."""
        ids = settings.token_ids(ids, self.model.cfg.vocab_size)
        resume = settings.boolean("resume", resume)
        with self._turn():
            return self._prefill(ids, resume)

    def _prefill(self, ids: list[int], resume: bool) -> torch.Tensor:
        if resume and self._unfed is not None:
            ids = [self._unfed] + ids
        if not ids:
            raise UserError("ids=[]: the prompt is empty; give some text", "ids")
        held = self._cache.n_seen if resume and self._cache is not None else 0
        self._check_memory(held + len(ids))
        if not resume:
            self.cache.reset()
        self._unfed = None
        s = 0
        while s < len(ids):  # chunk_size tokens a call, into an empty cache up to the window
            T = self.cache.call_limit()
            logits = self.model(self._tensor(ids[s:s + T]), self.cache)
            s += T
        return logits[0]                                                   # (vocab,)

    def snapshot(self) -> object:
        """A copy of everything the cache holds now; restore() returns the engine to it, as
        often as wanted. One text read once, then continued several ways (evaluate.py's
        passkey trials share their filler this way); costs one copy of the cache, in memory
        (an offloaded top-k store too)."""
        with self._turn():
            return copy.deepcopy((self._cache, self._unfed))

    def restore(self, state: object):
        """Go back to a snapshot() of this engine: the next call with resume=True goes on
        from there. The snapshot stays valid."""
        with self._turn():
            self._cache, self._unfed = copy.deepcopy(state)

    def generate_ids(self, ids: Sequence[int], *, max_new_tokens: int = settings.MAX_NEW_TOKENS,
                     temperature: float = settings.TEMPERATURE, top_k: int = settings.TOP_K,
                     top_p: float = settings.TOP_P, seed: int | None = settings.SEED,
                     ignore_eos: bool = False, resume: bool = False) -> Iterator[int]:
        """Yield new token ids after the prompt ids, until EOS or max_new_tokens.

        resume=True continues the previous call's context instead of starting afresh (an
        endless conversation: nothing is re-read, the cache simply goes on)."""
        ids = settings.token_ids(ids, self.model.cfg.vocab_size)
        options = settings.sampling(max_new_tokens, temperature, top_k, top_p, seed)
        options.update(ignore_eos=settings.boolean("ignore_eos", ignore_eos),
                       resume=settings.boolean("resume", resume))
        self._not_busy_here()
        return self._serialised(self._generate_ids(ids, **options))

    def _generate_ids(self, ids: list[int], *, max_new_tokens: int, temperature: float,
                      top_k: int, top_p: float, seed: int | None, ignore_eos: bool,
                      resume: bool) -> Iterator[int]:
        gen = torch.Generator().manual_seed(seed if seed is not None else
                                            torch.seed() % (1 << 63))
        eos = set() if ignore_eos else set(self.tokenizer.eos_ids if self.tokenizer else [])
        self.stats = stats = Stats(prompt_tokens=len(ids))
        t0 = time.perf_counter()
        logits = self._prefill(ids, resume)
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
                logits = self._decode(token)
                self._unfed = None
        stats.decode_seconds = time.perf_counter() - t0

    def _decode(self, token: int) -> torch.Tensor:
        """Feed one generated token; return the logits after it (vocab,)."""
        x = self._tensor([token])
        if self._compiled is None:
            return self.model(x, self.cache)[0]
        with torch.inference_mode():
            self.cache.begin(1)
            # a starting token's step writes slices of the cache: eagerly (compiled.py)
            network = self._compiled if self.cache.new_starts <= 0 else self.model.network
            return network(x, self.cache)[0]

    def prompt_ids(self, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
        """The token ids of prompt, wrapped in the model's chat template with chat=True."""
        settings.string("prompt", prompt)
        settings.chat_and_system(chat, system)
        self._check_chat_template(chat)
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": prompt}]
            return self.tokenizer.encode(self.tokenizer.chat_prompt(messages), add_bos=False)
        return self.tokenizer.encode(prompt)

    def _check_chat_template(self, chat: bool):
        if chat and not self.tokenizer.has_chat_template:
            raise UserError(f"chat=True: the model in {self.tokenizer.folder} has no chat template "
                            f"(no chat_template.jinja or tokenizer_config.json chat_template); "
                            f"drop chat=True", "chat")

    def generate(self, prompt: str, *, chat: bool = False, system: str | None = None,
                 stop: str | Iterable[str] = (), resume: bool = False,
                 max_new_tokens: int = settings.MAX_NEW_TOKENS,
                 temperature: float = settings.TEMPERATURE, top_k: int = settings.TOP_K,
                 top_p: float = settings.TOP_P, seed: int | None = settings.SEED,
                 ignore_eos: bool = False) -> Iterator[str]:
        """Yield the continuation of prompt as text pieces, as they are made.

        Stops at EOS, after max_new_tokens, or before the first of the `stop` strings (one
        string, or a list of them). resume=True: prompt continues the text of the previous
        calls (their prompts and replies stay in the cache; no BOS, no chat wrapping), as in
        examples/chat.py. Sampling: temperature 0 is greedy; top_k 0 and top_p 1 are no limit.
        """
        settings.string("prompt", prompt)
        settings.chat_and_system(chat, system)
        self._check_chat_template(chat)
        stops = settings.stop_strings(stop)
        options = settings.sampling(max_new_tokens, temperature, top_k, top_p, seed)
        options.update(ignore_eos=settings.boolean("ignore_eos", ignore_eos),
                       resume=settings.boolean("resume", resume))
        self._not_busy_here()
        return self._serialised(self._generate(prompt, chat, system, stops, options))

    def _generate(self, prompt: str, chat: bool, system: str | None, stops: list[str],
                  options: dict) -> Iterator[str]:
        text = TextStream(self.tokenizer, stops)
        try:
            ids = self.tokenizer.encode(prompt, add_bos=False) if options["resume"] else \
                self.prompt_ids(prompt, chat, system)
            for token in self._generate_ids(ids, **options):
                piece = text.push(token)
                if piece:
                    yield piece
                if text.stopped:
                    return
        except KeyboardInterrupt:
            yield text.flush()  # Ctrl-C: hand over all text made so far, then stop
            raise
        yield text.flush()

    def token_nlls(self, ids: Sequence[int]) -> Iterator[torch.Tensor]:
        """Per-token NLL (float64, CPU) of ids[1:] given what precedes each, chunk by chunk.

        Never holds more than (chunk_size, vocab) logits: each chunk's rows predict the
        next chunk's first token too.
        """
        ids = settings.token_ids(ids, self.model.cfg.vocab_size)
        self._not_busy_here()
        return self._serialised(self._token_nlls(ids))

    @torch.inference_mode()
    def _token_nlls(self, ids: list[int]) -> Iterator[torch.Tensor]:
        self._check_memory(len(ids))
        self.cache.reset()
        T = self.chunk_size
        for s in range(0, len(ids) - 1, T):
            logits = self.model(self._tensor(ids[s:s + T]), self.cache, last_only=False)[0]
            check_finite(logits)
            targets = torch.tensor(ids[s + 1:s + T + 1], device=logits.device)  # (<= T,)
            yield F.cross_entropy(logits[:len(targets)].float(), targets,
                                  reduction="none").cpu().double()  # float64 never on a device

    def perplexity(self, ids: Sequence[int]) -> Score:
        """NLL of ids[1:] given what precedes each, streamed chunk by chunk."""
        ids = settings.token_ids(ids, self.model.cfg.vocab_size)
        with self._turn():
            nll = sum(chunk.sum().item() for chunk in self._token_nlls(ids))
        return Score(tokens=max(len(ids) - 1, 0), nll=nll)

    def score(self, text: str) -> Score:
        """Perplexity of text (with the tokenizer's BOS, if it adds one)."""
        return self.perplexity(self.tokenizer.encode(settings.string("text", text)))


def check_finite(logits: torch.Tensor):
    """float16 can overflow inside the network; never turn NaN/inf into text."""
    if not torch.isfinite(logits).all():
        raise UserError(f"the model produced NaN/inf logits ({logits.dtype} overflow?); "
                        f"use dtype='bfloat16' or dtype='float32'", "dtype")

