"""Decode speed on a busy machine: tinfinite's thread settings under three loads (run by hand).

    python bench/busy.py                                  # ~15 min on 2 cores
    python bench/busy.py --candidates auto,torch-default --dtypes bfloat16 --repeats 1

For every candidate setting, dtype and load, fresh worker processes load the default model
(or --model), prefill the same --prompt-tokens token ids and time a greedy decode of
--new-tokens tokens (EOS ignored; at most --max-seconds of decoding). The loads:

    quiet   one worker alone
    busy    one worker, while another process keeps one core busy (a plain Python loop,
            started a second before the worker, so it runs while the model loads)
    pair    two workers started together, as two `tinfinite` commands would be; each loads,
            waits until both are loaded, then both decode at once (each reports its own speed)

Candidates (threads = what Engine.load gets; environment set before torch is imported):

    auto            threads=None: tinfinite's default (tinfinite/threads.py)
    torch-default   threads = torch's own default (a thread per core): what ran before the
                    auto choice existed
    one             threads=1
    passive         torch's default threads, OMP_WAIT_POLICY=PASSIVE (threads sleep, not spin)
    auto-passive    auto, and OMP_WAIT_POLICY=PASSIVE
    spin-short      torch's default threads, GOMP_SPINCOUNT=10000 (spin briefly, then sleep)

torch.set_num_interop_threads is not a candidate: tinfinite never runs inter-op parallel work,
so that pool is never started. If llama_cpp is importable (pip install -r
requirements-bench.txt), llama.cpp runs under the same loads on the default model's GGUF:
`llamacpp-default` (the binding's own n_threads) and `llamacpp-all` (a thread per CPU);
otherwise one line says it was skipped.

The workers drop OMP_NUM_THREADS from their environment (it would cap every candidate), and
the machine must otherwise be quiet: each line carries `background_cores`, the cores other
processes used in the half second before the case started.

Output: one JSON line per worker, then one `summary` line per (impl, candidate, dtype) with
median decode tokens/s per load and the ratios busy/quiet and pair/solo (the slower of the
pair; solo = the same candidate quiet), and `targets` for the default (busy >= 0.40 and
pair >= 0.35 of quiet). All lines go to bench/results/threads-<date>.jsonl (or --out).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CANDIDATES = {
    "auto": (None, {}),
    "torch-default": ("torch", {}),
    "one": (1, {}),
    "passive": ("torch", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "auto-passive": (None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "spin-short": ("torch", {"GOMP_SPINCOUNT": "10000"}),
}
LLAMACPP = {"llamacpp-default": None, "llamacpp-all": "all"}
LOADS = ("quiet", "busy", "pair")
TARGETS = {"busy": 0.40, "pair": 0.35}  # of the same setting's quiet speed, for the default
TEXT = " ".join(f"Line {i}: a quick brown fox jumps over {i % 7} lazy dogs." for i in range(400))


# ---------------------------------------------------------------------------------------------
# A worker: load, say "ready", wait for "go", prefill + decode, print one JSON line.
# ---------------------------------------------------------------------------------------------

def worker(case: dict) -> dict:
    t0 = time.perf_counter()
    if case["impl"] == "llamacpp":
        step, prefill, threads = llamacpp_steps(case)
    else:
        step, prefill, threads = tinfinite_steps(case)
    load_s = time.perf_counter() - t0
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()                                   # "go"
    start = time.time()
    token = prefill(case["ids"])
    stamps = [time.perf_counter()]
    for _ in range(case["new_tokens"] - 1):
        token = step(token)
        stamps.append(time.perf_counter())
        if stamps[-1] - stamps[0] > case["max_seconds"]:
            break
    steps = len(stamps) - 1
    return {"threads": threads, "load_seconds": round(load_s, 2),
            "decode_steps": steps,
            "decode_tokens_per_s": round(steps / (stamps[-1] - stamps[0]), 2) if steps else None,
            "decode_start": round(start, 2), "decode_end": round(time.time(), 2)}


def tinfinite_steps(case: dict):
    import torch

    from tinfinite.engine import Engine
    from tinfinite.threads import TORCH_DEFAULT

    threads = TORCH_DEFAULT if case["threads"] == "torch" else case["threads"]
    engine = Engine.load(case["model"], dtype=case["dtype"], threads=threads)

    def prefill(ids):
        return int(engine.prefill(ids).argmax())

    def step(token):
        return int(engine.prefill([token], resume=True).argmax())

    return step, prefill, torch.get_num_threads()


def llamacpp_steps(case: dict):
    import llama_cpp
    import numpy as np

    kw = {} if case["threads"] is None else {"n_threads": len(os.sched_getaffinity(0)),
                                             "n_threads_batch": len(os.sched_getaffinity(0))}
    llm = llama_cpp.Llama(model_path=case["gguf"], n_ctx=len(case["ids"]) + case["new_tokens"]
                          + 16, logits_all=False, verbose=False, **kw)
    n_vocab = llm.n_vocab()

    def argmax():
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                         shape=(n_vocab,)).argmax())

    def prefill(ids):
        llm.reset()
        llm.eval(ids)
        return argmax()

    def step(token):
        llm.eval([token])
        return argmax()

    return step, prefill, getattr(llm, "n_threads", None)


# ---------------------------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------------------------

def background_cores(seconds: float = 0.5) -> float | None:
    """Cores other processes used over `seconds` (this one sleeps meanwhile)."""
    from tinfinite.threads import busy_ticks, our_cpus
    cpus = our_cpus()
    try:
        a = busy_ticks(Path("/proc/stat").read_text(), cpus)
        time.sleep(seconds)
        b = busy_ticks(Path("/proc/stat").read_text(), cpus)
    except OSError:
        return None
    return None if a is None or b is None else round((b - a) / os.sysconf("SC_CLK_TCK") / seconds, 2)


def worker_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


def run_load(load: str, case: dict, env: dict, timeout: float) -> list[dict]:
    """One case under one load: its worker(s)' result lines."""
    hog = None
    if load == "busy":
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    cmd = [sys.executable, __file__, "--worker", json.dumps(case)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2 if load == "pair" else 1)]
    try:
        ready = [p.stdout.readline().startswith('{"ready"') for p in procs]
        for p in procs:                                   # both go at once
            if p.poll() is None:
                p.stdin.write("go\n")
                p.stdin.flush()
        out = []
        for p, ok in zip(procs, ready):
            try:
                stdout, stderr = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out.append({"skipped": f"timed out after {timeout:.0f} s"})
                continue
            lines = [s for s in stdout.splitlines() if s.startswith("{")]
            if not ok or p.returncode or not lines:
                tail = (stderr.strip().splitlines() or ["no output"])[-1]
                out.append({"skipped": f"failed (exit {p.returncode}): {tail}"})
            else:
                out.append(json.loads(lines[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if hog:
            hog.kill()
            hog.wait()


def summarise(lines: list[dict]) -> list[dict]:
    groups: dict[tuple, dict] = {}
    for r in lines:
        if "decode_tokens_per_s" not in r or r["decode_tokens_per_s"] is None:
            continue
        g = groups.setdefault((r["impl"], r["candidate"], r["dtype"]), {})
        if r["load"] == "pair":  # the slower of the two workers of one pair
            g.setdefault("pair_runs", {}).setdefault(r["repeat"], []).append(
                r["decode_tokens_per_s"])
        else:
            g.setdefault(r["load"], []).append(r["decode_tokens_per_s"])
        g.setdefault("threads_" + r["load"], set()).add(r["threads"])
    out = []
    for (impl, candidate, dtype), g in groups.items():
        s = {"summary": True, "impl": impl, "candidate": candidate, "dtype": dtype}
        pairs = [v for v in g.get("pair_runs", {}).values() if len(v) == 2]
        tps = {"quiet": g.get("quiet"), "busy": g.get("busy"),
               "pair": [min(v) for v in pairs] or None}
        for load, values in tps.items():
            s[f"{load}_tokens_per_s"] = round(statistics.median(values), 2) if values else None
            s[f"{load}_threads"] = sorted(g.get("threads_" + load, []), key=str)
        if pairs:
            s["pair_each_tokens_per_s"] = pairs
        quiet = s["quiet_tokens_per_s"]
        for load in ("busy", "pair"):
            if quiet and s[f"{load}_tokens_per_s"]:
                s[f"{load}_over_quiet"] = round(s[f"{load}_tokens_per_s"] / quiet, 3)
        if candidate == "auto":
            s["targets"] = {load: {"want": want, "met": s.get(f"{load}_over_quiet", 0) >= want}
                            for load, want in TARGETS.items()}
        out.append(s)
    return out


def out_path(given: str | None) -> Path:
    if given:
        return Path(given)
    path = ROOT / "bench" / "results" / time.strftime("threads-%Y-%m-%d.jsonl")
    return path.with_name(time.strftime("threads-%Y-%m-%d-%H%M%S.jsonl")) if path.exists() else path


def drive(a) -> None:
    from tinfinite.fetch import ensure_default_model
    from tinfinite.tokenizer import Tokenizer

    model = str(a.model or ensure_default_model())
    ids = Tokenizer.from_folder(model).encode(TEXT)[:a.prompt_tokens]
    plan = [("tinfinite", c, d) for c in a.candidates for d in a.dtypes
            if "tinfinite" in a.impls]
    gguf, skipped = None, None
    if "llamacpp" in a.impls:
        import importlib.util
        if importlib.util.find_spec("llama_cpp") is None:
            skipped = "llama_cpp is not installed (pip install -r requirements-bench.txt)"
        else:
            sys.path.insert(0, str(ROOT / "bench"))
            from bench import find_gguf
            gguf = find_gguf(a.gguf)
            skipped = None if gguf else "no GGUF (give --gguf)"
        if not skipped:
            plan += [("llamacpp", c, "q4_1") for c in LLAMACPP]
    path = out_path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    import torch
    with open(path, "w") as log:
        def emit(line):
            print(json.dumps(line), flush=True)
            log.write(json.dumps(line) + "\n")
            log.flush()

        emit({"machine": True, "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
              "torch": torch.__version__, "model": model, "prompt_tokens": len(ids),
              "new_tokens": a.new_tokens, "omp_num_threads_in_shell":
              os.environ.get("OMP_NUM_THREADS"), "worker_env": a.worker_env, "log": str(path)})
        if skipped:
            emit({"impl": "llamacpp", "skipped": skipped})
        for r in range(a.repeats):
            for load in a.loads:
                # Alternate the order of the settings from round to round.
                for impl, candidate, dtype in (plan if r % 2 == 0 else plan[::-1]):
                    if impl == "llamacpp":
                        threads, extra = LLAMACPP[candidate], {}
                    else:
                        threads, extra = CANDIDATES[candidate]
                    case = {"impl": impl, "model": model, "gguf": gguf, "dtype": dtype,
                            "threads": threads, "ids": ids, "new_tokens": a.new_tokens,
                            "max_seconds": a.max_seconds}
                    head = {"impl": impl, "candidate": candidate, "dtype": dtype, "load": load,
                            "repeat": r, "env": extra, "background_cores": background_cores()}
                    env = worker_env({**extra, **dict(kv.split("=", 1) for kv in a.worker_env)})
                    results = run_load(load, case, env, a.case_timeout)
                    for i, res in enumerate(results):
                        line = {**head, "worker": i, **res}
                        emit(line)
                        lines.append(line)
        for s in summarise(lines):
            emit(s)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--model", help="HF folder (default: the default model)")
    p.add_argument("--gguf", help="GGUF for llama.cpp (default: the default model's)")
    p.add_argument("--candidates", type=csv, default=list(CANDIDATES))
    p.add_argument("--dtypes", type=csv, default=["bfloat16", "float32"])
    p.add_argument("--loads", type=csv, default=list(LOADS))
    p.add_argument("--impls", type=csv, default=["tinfinite", "llamacpp"])
    p.add_argument("--repeats", type=int, default=2, help="rounds (the order alternates)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="stop a worker's decode after this long (a bad setting can run at "
                        "1 token/s)")
    p.add_argument("--case-timeout", type=float, default=600.0)
    p.add_argument("--out", help="JSON lines file (default: bench/results/threads-<date>.jsonl)")
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                   help="also set this in every worker's environment (repeatable; e.g. "
                        "OMP_NUM_THREADS=1 for a smoke test on a shared machine)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))), flush=True)
        return
    if bad := [c for c in a.candidates if c not in CANDIDATES]:
        p.error(f"--candidates: unknown {bad}; choose from {', '.join(CANDIDATES)}")
    if bad := [x for x in a.loads if x not in LOADS]:
        p.error(f"--loads: unknown {bad}; choose from {', '.join(LOADS)}")
    if a.new_tokens < 2 or a.repeats < 1 or a.prompt_tokens < 1:
        p.error("need --new-tokens >= 2, --repeats >= 1, --prompt-tokens >= 1")
    drive(a)


if __name__ == "__main__":
    main()
