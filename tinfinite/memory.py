"""Will a run fit in memory? Checked before it allocates, so a run too big for the machine
stops with a one-line message rather than swapping or being killed half way.

What a run allocates up front or grows to, besides the weights (batch 1; "slot" = one token's
key and value in every layer, 2 x layers x kv_heads x head_dim x itemsize bytes):

    cache    the ring (n_local + chunk_size - 1 slots), the starting tokens (n_global slots and
             their turned-back keys), the top-k picks (group x top_k_middle slots) and < 4
             spare slots (cache.slot_count)
    mask     the per-head mask of a chunk past the window, kv_heads x (group x chunk_size) x
             (all those slots) in the cache's dtype (kv_dtype; cache.py)
    logits   a chunk's (chunk_size, vocab) logits in float32, and the float32 copy that
             cross-entropy takes (Engine.token_nlls)
    activations  of the first call into an empty cache, which takes up to the whole window
             (cache.first_call_tokens): per token ~(4 x hidden_dim + 8 x dim) values in the
             model's dtype, an upper bound of what was measured (docs/decisions.md)
    grows    top_k_middle keeps every token's slot, in a buffer that doubles (2 x chunk_size
             slots first); attention="full" grows its ring the same way, and its one mask
             with it. While a buffer doubles, the old half is still there. top_k_block adds
             one mean key per block (top-k block keys); with top_k_offload the every-token
             keys and values are on disk (check_disk), the block keys stay in memory.

The growing buffers are counted for the input's length when a call knows it (prefill,
perplexity); a decode step's one token is not checked.
"""
import ctypes
import shutil
from pathlib import Path

import torch

from tinfinite.cache import first_call_tokens, slot_count
from tinfinite.config import ModelConfig
from tinfinite.errors import UserError
from tinfinite.settings import shown

# Which settings make each item big: a refusal names those of the largest item (top_k_middle
# only when it is on).
CAUSES = {"cache": ("n_local", "n_global", "chunk_size", "top_k_middle"),
          "mask": ("n_local", "chunk_size", "top_k_middle"), "logits": ("chunk_size",),
          "activations": ("n_local", "chunk_size"),
          "top-k keys/values": ("top_k_middle",), "top-k block keys": ("top_k_middle",)}


def run_bytes(cfg: ModelConfig, *, attention: str, n_local: int, n_global: int,
              chunk_size: int, top_k_middle: int, itemsize: int, tokens: int = 0,
              top_k_block: int = 0, model_itemsize: int = 4) -> dict:
    """Bytes of each item above (name -> bytes) for a run of `tokens` tokens (0: not known).
    itemsize: of the cache's dtype; model_itemsize: of the model's."""
    L, Hkv, hd, group = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    slot = 2 * L * Hkv * hd * itemsize
    first = first_call_tokens(cfg, cfg.max_position_embeddings if attention == "full" else n_local,
                              chunk_size)
    activations = min(tokens or first, first) * (4 * cfg.hidden_dim + 8 * cfg.dim) * model_itemsize
    if attention == "full":
        ring = doubled(2 * chunk_size, tokens)
        return {"cache": slot * ring + copied(slot, 2 * chunk_size, ring) + 8 * ring,
                "mask": group * chunk_size * ring * itemsize,
                "logits": 2 * chunk_size * cfg.vocab_size * 4, "activations": activations}
    ring = n_local + chunk_size - 1
    slots = slot_count(ring, n_global, group * top_k_middle)
    need = {"cache": slot * slots + L * Hkv * n_global * hd * itemsize + 8 * ring,
            "mask": Hkv * group * chunk_size * slots * itemsize,
            "logits": 2 * chunk_size * cfg.vocab_size * 4, "activations": activations}
    if top_k_middle:
        every = doubled(2 * chunk_size, tokens)
        need["top-k keys/values"] = slot * every + copied(slot, 2 * chunk_size, every)
        if top_k_block:
            blocks = doubled(1, tokens // top_k_block)  # as TopKCache.begin grows them
            need["top-k block keys"] = slot // 2 * blocks + copied(slot // 2, 1, blocks)
    return need


def doubled(first: int, tokens: int) -> int:
    """Slots of a buffer that starts at `first` and doubles until `tokens` fit."""
    n = first
    while n < tokens:
        n *= 2
    return n


def copied(slot: int, first: int, final: int) -> int:
    """The old half, alive while a grown buffer is copied into its double."""
    return slot * final // 2 if final > first else 0


def check(need: dict, held: int, device: torch.device, settings: dict, tokens: int = 0):
    """Refuse a run whose items `need` do not fit in what is free plus what this engine
    already `held` (its cache, reused or replaced). settings: the engine's, by name."""
    have = available_bytes(device)
    total = sum(need.values())
    if have is None or total <= have + held:
        return
    biggest = max(need, key=need.get)
    causes = [c for c in CAUSES[biggest] if c != "top_k_middle" or settings[c]]
    if settings["attention"] == "full":
        causes = ["attention", "chunk_size"]
    named = ", ".join(f"{name}={shown(settings[name])}" for name in causes)
    if tokens and (biggest == "top-k keys/values" or settings["attention"] == "full"):
        named += f" for {tokens} tokens"
    items = ", ".join(f"{name} {gib(n)}" for name, n in need.items())
    advice = "a smaller n_local, chunk_size or top_k_middle"
    if settings["attention"] == "full":
        advice = "a smaller chunk_size or input, or attention='lambda' (constant memory)"
    if settings["dtype"] == "float32":
        advice += ", or dtype='bfloat16'"
    raise UserError(f"{named}: the run needs {gib(total)} ({items}) but only {gib(have + held)} "
                    f"is free; use {advice}", causes[0])


def check_disk(need: int, held: int, folder: str, tokens: int):
    """Refuse a top-k run whose offloaded keys and values (`need` bytes) would not fit in
    the free space of `folder` plus what the engine's files there already `held`."""
    free = shutil.disk_usage(folder).free + held
    if need > free:
        raise UserError(f"top_k_offload={folder!r}: {tokens} tokens need {gib(need)} of keys "
                        f"and values there, but only {gib(free)} is free", "top_k_offload")


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


def held_bytes(cache, on_disk: bool = False) -> int:
    """Bytes of the tensors a cache object holds in memory (None: nothing yet); on_disk: of
    those it keeps in files instead (top-k offload)."""
    if cache is None:
        return 0
    offloaded = ("every_key", "every_value") if getattr(cache, "offload", None) else ()
    return sum(t.numel() * t.element_size() for name, t in vars(cache).items()
               if isinstance(t, torch.Tensor) and (name in offloaded) == on_disk)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on the device: CUDA's free memory, else the system's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # unknown (macOS, Windows): let the allocator speak


# glibc's mallopt parameters (malloc.h), and the largest mmap threshold it accepts on 64 bits
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20
_kept = 0  # the trim threshold set so far, in this process


def keep_freed(nbytes: int):
    """Let the C library keep up to nbytes of freed heap for reuse, where it is glibc.

    Why: glibc hands the top of its heap back to the system whenever more than its trim
    threshold lies free there (a few MB, raised only as it sees big blocks freed). Each layer
    of a long call frees its activations, tens of MB, and the next layer then faults the same
    pages in again, zeroed, as often as earlier allocations happen to leave the top free
    (docs/decisions.md, "Freed activations stay in the heap"). Kept, the heap reuses them.

    Setting the trim threshold also stops glibc's own rule that raises its mmap threshold,
    so that is set too, to the most glibc accepts: blocks up to 32 MB come from the heap,
    larger ones are mapped for themselves (as they were). For the whole process, and only
    ever raised: the largest engine made decides. Elsewhere (macOS, musl) nothing happens."""
    global _kept
    if nbytes <= _kept:
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, min(nbytes, 2**31 - 1))  # an int in C
        _kept = nbytes
    except (OSError, AttributeError):  # no such C library function here
        pass


def release_freed():
    """Hand the memory freed so far back to the operating system, where the C library can.

    glibc keeps the blocks of its heap that a process frees, for reuse, and they still count
    as resident. Loading frees a lot that way: every weight is read, converted, and then
    replaced by its packed or quantised form; after a quantised load those blocks outweighed
    the weights (docs/decisions.md, "Memory freed at load is given back"). malloc_trim(0)
    returns them; elsewhere (macOS, musl) this does nothing."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # no such C library function here
        pass
