"""Loading and decoding at real model sizes: tinfinite against transformers (run by hand).

    python bench/make_random_llama.py --shape llama-3.2-1b
    python bench/size_bench.py --model weights/random-llama-3.2-1b
    python bench/size_bench.py --model weights/random-llama-3-8b --contexts 256,16384

Every case runs in a fresh process (so its peak memory is its own), one after the other:

- load: tinfinite's Engine.load in bfloat16, and with --quantize int8: wall time, peak
  resident memory (VmHWM, the process's own high-water mark), what imports alone took, and
  the checkpoint's bytes (target: peak <= 1.25 x checkpoint + 0.6 GB);
- decode: for each --contexts N, ms per decode step after N tokens of context, tinfinite
  (bfloat16, and int8 weights) and transformers (bfloat16, its default attention) on the same
  folder, fed the same token ids.

Context. A context of at most --prefill-max tokens (2048) is a real prefill of the prompt's
ids, in both engines. A longer one is filled synthetically, and each line says so
(`fill: synthetic`): prefilling 16K tokens of an 8B model on 2 cores would take hours, and a
decode step costs the same whatever the cache holds. tinfinite: random keys and values
written into the ring through the cache's own begin()/store(), as if N tokens at positions
0..N-1 had been fed (fill_tinfinite below, bench only); transformers: a DynamicCache of random
keys and values of length N. The decoded tokens are then noise, the same for neither engine.

Each decode line has the bandwidth share: the bytes a step must read (the weights as stored
+ the visible K/V; bench/bandwidth.py) over the read bandwidth measured at the start of the
run, divided by the measured time per step (1.0 = at the memory limit).

Output: JSON lines, also written to bench/results/size-<date>.jsonl (or --out). --device cuda
runs everything on a GPU (peak memory then also torch.cuda.max_memory_allocated, bandwidth
from a 4 GiB device read).
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bandwidth import full_cache_step_bytes, tinfinite_step_bytes  # noqa: E402
from cases import run_case_process  # noqa: E402

TEXT = " ".join(f"Line {i}: a quick brown fox jumps over {i % 7} lazy dogs." for i in range(400))
IMPLS = ("tinfinite", "tinfinite-int8", "hf")


def vm(key: str) -> float:
    """VmRSS / VmHWM of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def checkpoint_bytes(folder: str) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# Cases, each in its own process.
# ---------------------------------------------------------------------------------------------

def case_bandwidth(case: dict) -> dict:
    if case["device"] == "cpu":
        from bandwidth import read_bandwidth
        return read_bandwidth(case["gib"], 7)
    import torch
    t = torch.ones(int(case["gib"] * 2**28), dtype=torch.float32, device=case["device"])
    t.sum()
    seconds = []
    for _ in range(7):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        t.sum()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return {"bandwidth_gb_s": round(t.nbytes / statistics.median(seconds) / 1e9, 1)}


def case_load(case: dict) -> dict:
    import torch

    from tinfinite.engine import Engine
    base = vm("VmRSS")
    t0 = time.perf_counter()
    engine = Engine.load(case["model"], dtype="bfloat16", device=case["device"],
                         quantize=case.get("quantize"))
    seconds = time.perf_counter() - t0
    ckpt = checkpoint_bytes(case["model"])
    out = {"load_seconds": round(seconds, 1), "rss_after_imports_mb": round(base),
           "peak_rss_mb": round(vm("VmHWM")), "rss_after_load_mb": round(vm("VmRSS")),
           "checkpoint_mb": round(ckpt / 2**20), "threads": torch.get_num_threads(),
           "dtype_loaded": engine.dtype}
    if case["device"] == "cpu":
        target = 1.25 * ckpt / 2**20 + 0.6e9 / 2**20
        out.update(target_peak_mb=round(target), target_met=out["peak_rss_mb"] <= target)
    else:
        out["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def fill_tinfinite(engine, n: int, seed: int = 0):
    """Bench only: the engine's cache as if n tokens (positions 0..n-1) had been fed, with
    random keys and values, written through the cache's own begin()/store() chunk by chunk,
    without running the model. Decoding after it costs what it costs after a real prefill."""
    import torch
    cache, cfg = engine.cache, engine.model.cfg
    cache.reset()
    T = cache.max_chunk
    g = torch.Generator(device=cache.device).manual_seed(seed)
    k, v = (torch.randn(1, cfg.n_kv_heads, T, cfg.head_dim, generator=g, device=cache.device)
            .to(cache.dtype) for _ in range(2))
    with torch.inference_mode():
        for s in range(0, n, T):
            t = min(T, n - s)
            cache.begin(t)
            for layer in range(cfg.n_layers):
                cache.store(layer, k[:, :, :t], k[:, :, :t], v[:, :, :t])


def decode_tinfinite(case: dict, ids: list[int]):
    """(run(context, synthetic, new_tokens) -> step seconds, param bytes, step bytes(context),
    info), after loading."""
    from tinfinite.engine import Engine
    engine = Engine.load(case["model"], dtype="bfloat16", device=case["device"],
                         quantize="int8" if case["impl"] == "tinfinite-int8" else None)
    model = engine.model
    params = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if model.lm_head is not None:  # its own head: a step reads one row of the embedding table
        params -= model.embed_tokens.weight.numel() * model.embed_tokens.weight.element_size()

    def run(context: int, synthetic: bool, new_tokens: int) -> list[float]:
        if synthetic:
            fill_tinfinite(engine, context)
            gen = engine.generate_ids([ids[-1]], max_new_tokens=new_tokens, ignore_eos=True,
                                      resume=True)
        else:
            gen = engine.generate_ids(ids[:context], max_new_tokens=new_tokens, ignore_eos=True)
        next(gen)  # after the prefill (or, synthetic: one step)
        gaps, t0 = [], time.perf_counter()
        for _ in gen:
            gaps.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
        return gaps

    def step_bytes(context: int) -> int:
        return tinfinite_step_bytes(params, model.cfg, context, engine.n_global, engine.n_local,
                                    engine.kv_dtype.itemsize, engine.chunk_size)

    return run, params, step_bytes, {"n_local": engine.n_local, "n_global": engine.n_global}


def decode_hf(case: dict, ids: list[int]):
    import torch
    import transformers

    from tinfinite.config import load_config
    model = transformers.AutoModelForCausalLM.from_pretrained(case["model"], dtype=torch.bfloat16)
    model = model.to(case["device"]).eval()
    cfg = load_config(case["model"])
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    dev = case["device"]

    @torch.inference_mode()
    def run(context: int, synthetic: bool, new_tokens: int) -> list[float]:
        if synthetic:  # random keys and values of `context` positions, in every layer
            cache = transformers.DynamicCache(config=model.config)
            g = torch.Generator(device=dev).manual_seed(0)
            for layer in range(cfg.n_layers):
                k, v = (torch.randn(1, cfg.n_kv_heads, context, cfg.head_dim, generator=g,
                                    device=dev, dtype=torch.bfloat16) for _ in range(2))
                cache.update(k, v, layer)
            token = ids[-1]
        else:
            out = model(torch.tensor([ids[:context]], device=dev), use_cache=True,
                        logits_to_keep=1)
            cache, token = out.past_key_values, int(out.logits[0, -1].argmax())
        gaps = []
        for _ in range(new_tokens - 1):
            t0 = time.perf_counter()
            out = model(torch.tensor([[token]], device=dev), past_key_values=cache, use_cache=True)
            token = int(out.logits[0, -1].argmax())
            gaps.append(time.perf_counter() - t0)
        return gaps

    def step_bytes(context: int) -> int:
        return full_cache_step_bytes(params, cfg, context, 2)

    return run, params, step_bytes, {"transformers": transformers.__version__,
                                     "attn_implementation": model.config._attn_implementation}


def case_decode(case: dict) -> dict:
    import torch

    from tinfinite.tokenizer import Tokenizer
    ids = Tokenizer.from_folder(case["model"]).encode(TEXT)
    ids = (ids * (case["prefill_max"] // len(ids) + 1))[:case["prefill_max"]]
    make = decode_hf if case["impl"] == "hf" else decode_tinfinite
    t0 = time.perf_counter()
    run, params, step_bytes, info = make(case, ids)
    out = {"load_seconds": round(time.perf_counter() - t0, 1), "param_bytes": params, **info,
           "contexts": []}
    for context in case["contexts"]:
        synthetic = context > case["prefill_max"]
        gaps = run(context, synthetic, case["new_tokens"])[case["warmup"]:]
        ms = 1000 * statistics.fmean(gaps)
        limit_ms = 1000 * step_bytes(context) / (case["bandwidth_gb_s"] * 1e9)
        out["contexts"].append({
            "context_tokens": context, "fill": "synthetic" if synthetic else "prefill",
            "decode_ms_per_token": round(ms, 2),
            "decode_ms_median": round(1000 * statistics.median(gaps), 2),
            "decode_steps": len(gaps), "bytes_per_decode_step": step_bytes(context),
            "limit_ms_per_token": round(limit_ms, 2),
            "bandwidth_share": round(limit_ms / ms, 3)})
    out["peak_rss_mb"] = round(vm("VmHWM"))
    if case["device"] != "cpu":
        out["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


CASES = {"bandwidth": case_bandwidth, "load": case_load, "decode": case_decode}


# ---------------------------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    csv = lambda kind: lambda s: [kind(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--model", help="HF Llama folder (bench/make_random_llama.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--contexts", type=csv(int), default=[256, 16384])
    p.add_argument("--impls", type=csv(str), default=list(IMPLS))
    p.add_argument("--loads", type=csv(str), default=["bfloat16", "int8"],
                   help="load cases: bfloat16, int8 (empty: none)")
    p.add_argument("--new-tokens", type=int, default=8, help="decode steps per context")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the mean")
    p.add_argument("--prefill-max", type=int, default=2048,
                   help="longer contexts are filled synthetically")
    p.add_argument("--case-timeout", type=float, default=3600.0)
    p.add_argument("--bandwidth-gib", type=float, default=None,
                   help="size of the bandwidth probe's read (cpu: 2 GiB, cuda: 4 GiB)")
    p.add_argument("--out", help="JSON lines file (default: bench/results/size-<date>.jsonl)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.case:
        case = json.loads(a.case)
        print(json.dumps(CASES[case["case"]](case)), flush=True)
        return
    if not a.model:
        p.error("--model DIR is required (make one with bench/make_random_llama.py)")
    if bad := [i for i in a.impls if i not in IMPLS]:
        p.error(f"--impls: unknown {bad}; choose from {', '.join(IMPLS)}")
    if a.new_tokens - a.warmup < 2:
        p.error("need --new-tokens >= --warmup + 2")
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / time.strftime("size-%Y-%m-%d.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch
    with open(out, "a") as log:
        def emit(line):
            print(json.dumps(line), flush=True)
            log.write(json.dumps(line) + "\n")
            log.flush()

        base = {"model": str(a.model), "device": a.device}
        gib = a.bandwidth_gib or (2.0 if a.device == "cpu" else 4.0)
        bw = run_case_process(__file__, {"case": "bandwidth", "device": a.device, "gib": gib},
                              a.case_timeout)
        emit({"machine_limit": True, **base, **bw, "torch": torch.__version__,
              "cpus": os.cpu_count(), "checkpoint_mb": round(checkpoint_bytes(a.model) / 2**20),
              "note": f"contexts > {a.prefill_max} tokens: synthetic cache fill (random K/V), "
                      f"see the docstring"})
        for load in a.loads:
            q = "int8" if load == "int8" else None
            emit({"case": "load", "impl": "tinfinite", "dtype": "bfloat16", "quantize": q, **base,
                  **run_case_process(__file__, {"case": "load", "model": a.model,
                                                "device": a.device, "quantize": q},
                                     a.case_timeout)})
        results = {}
        for impl in a.impls:
            r = run_case_process(__file__, {
                "case": "decode", "impl": impl, "model": a.model, "device": a.device,
                "contexts": a.contexts, "new_tokens": a.new_tokens, "warmup": a.warmup,
                "prefill_max": a.prefill_max,
                "bandwidth_gb_s": bw.get("bandwidth_gb_s", float("nan"))}, a.case_timeout)
            contexts = r.pop("contexts", [])
            emit({"case": "decode", "impl": impl, "dtype": "bfloat16", **base, **r})
            for c in contexts:
                emit({"case": "decode_step", "impl": impl, **base, **c})
                results[(impl, c["context_tokens"])] = c["decode_ms_per_token"]
        for ctx in a.contexts:
            ours, hf = results.get(("tinfinite", ctx)), results.get(("hf", ctx))
            if ours and hf:
                emit({"summary": True, "context_tokens": ctx, **base,
                      "tinfinite_ms": ours, "hf_ms": hf, "speed_vs_hf": round(hf / ours, 2)})


if __name__ == "__main__":
    main()
