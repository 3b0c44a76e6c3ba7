"""`--compile`: decode steps through torch.compile, on the CPU (opt-in).

An eager decode step of the default model is ~600 small operators around 121 matmuls, and
the matmuls read their weights at ~20 GB/s through oneDNN (packed.py). torch.compile's
inductor fuses the small operators into a few generated C++ loops; with the weights frozen
into the compiled code ("freezing") and max-autotune choosing, for each matmul shape, between
oneDNN and inductor's own C++ micro-GEMMs, the matmuls run faster too. The price is compiling
at first use: about a minute per graph on a 2-core machine, a C++ compiler, and a few hundred
MB of torch's on-disk cache, which makes the next process's compile shorter. Figures:
docs/decisions.md, "Compiled decode steps".

What is compiled: Llama.network, the network after cache.begin(), for calls of one token,
with dynamic shapes (inside the window the key count grows by one per step). Dynamo makes
one graph inside the window and one past it. The cache's ring writes are one index_put_ on
the whole buffer (cache.write), which inductor keeps in place; the one SDPA call per layer
stays aten's.
What runs eagerly: prefill chunks, and the steps that store a starting token (the first
n_global tokens of a text; their slice writes would each copy a whole buffer when traced).
"""
import os
import shutil

import torch

from tinfinite.errors import UserError

# Inductor settings for the decode graphs: the weights as constants ("freezing"), and for each
# matmul the faster of oneDNN and inductor's C++ GEMMs. Freezing is read from inductor's
# global config, not from torch.compile's `options`, so compile_network sets it for the
# process (docs/decisions.md, "Compiled decode steps").
OPTIONS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def check_can_compile(device: torch.device):
    """Refuse, before anything loads, what cannot be compiled here."""
    if device.type != "cpu":
        raise UserError(f"compile=True: compiles decode steps for the CPU; for "
                        f"device={str(device)!r} leave out compile=True", "compile")
    cxx = os.environ.get("CXX", "g++")  # the compiler inductor calls
    if not shutil.which(cxx):
        raise UserError(f"compile=True: needs a C++ compiler ({cxx!r} not found; install "
                        f"g++ or set CXX), or leave out compile=True", "compile")


def compile_network(model: torch.nn.Module):
    """model.network compiled for decode steps; compiles lazily, at its first call."""
    from torch._inductor import config
    config.freezing = True
    return torch.compile(model.network, dynamic=True,
                         options={**OPTIONS, "guard_filter_fn": identity_guards_only})


def identity_guards_only(guards) -> list[bool]:
    """Which of dynamo's guards a compiled step checks: of the ~3,000 on the model (its modules'
    attributes, hooks and types), only the identity of its weights; all the others (the cache,
    the arguments, torch's state). Checking them all took 0.63 ms a step, these 0.37 ms. A loaded
    model never changes, but another model in the same process must not run this model's
    graph, whose weights freezing made constants: their identities tell the two apart."""
    return [not g.name.startswith("self") or g.guard_type == "ID_MATCH" for g in guards]

