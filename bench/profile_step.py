"""Where one decode step or one prefill chunk of tinfinite spends its time (torch.profiler).

    python bench/profile_step.py --context 256                   # a decode step, short context
    python bench/profile_step.py --context 9000                  # past the window: full ring
    python bench/profile_step.py --context 9000 --chunk          # one 256-token prefill chunk
    python bench/profile_step.py --context 256 --no-pack         # plain weights (packed.py off)
    python bench/profile_step.py --context 16384 --synthetic     # 16K, the cache filled without
                                                                 # running the model (size_bench)
    python bench/profile_step.py --context 256 --synthetic --compile  # a decode step through
                                                                 # --compile (compiles first)

Prints the median time of --steps runs without the profiler, then the operators by self CPU
time over --profile-steps profiled runs. Each run goes on where the cache is (the context grows
by a token or a chunk per run). Tokens are synthetic: their values do not change the cost.
"""
import argparse
import statistics
import time

import torch
from torch.profiler import profile

from tinfinite import packed
from tinfinite.engine import Engine


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="weights/SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="bfloat16",
                   help="float32, bfloat16, int8 or int4 (bfloat16 + --quantize int8/int4)")
    p.add_argument("--context", type=int, default=256, help="tokens in the cache before the step")
    p.add_argument("--chunk", action="store_true", help="profile a prefill chunk, not a decode step")
    p.add_argument("--no-pack", action="store_true", help="keep plain weights (no oneDNN packing)")
    p.add_argument("--synthetic", action="store_true",
                   help="fill the cache with random keys and values instead of a prefill")
    p.add_argument("--compile", action="store_true",
                   help="decode steps through --compile (compiled.py); compiles during warm-up")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--rows", type=int, default=20, help="operators to list")
    a = p.parse_args()
    if a.no_pack:
        packed.can_pack = lambda weight: False
    quantized = a.dtype in ("int8", "int4")
    if a.compile and a.chunk:
        p.error("--compile compiles decode steps; prefill chunks run eagerly")
    engine = Engine.load(a.model, dtype="bfloat16" if quantized else a.dtype,
                         quantize=a.dtype if quantized else None, compile=a.compile)
    ids = [1000 + (i * 7919) % 40000 for i in range(a.context)]  # any ids will do
    if a.synthetic:
        from size_bench import fill_tinfinite
        fill_tinfinite(engine, a.context)
    else:
        engine.prefill(ids)
    T = engine.chunk_size if a.chunk else 1
    x = torch.tensor([ids[:T]])

    def step():  # goes on from where the cache is: the window stays full
        if a.compile:
            engine._decode(ids[0])  # the engine's decode step, compiled
        else:
            engine.model(x, engine.cache)

    for _ in range(3):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    what = f"{'prefill chunk of ' + str(T) if a.chunk else 'decode step'}"
    how = ", plain weights" if a.no_pack else ", compiled" if a.compile else ""
    print(f"{a.dtype}, {what} after {a.context} tokens{how}: "
          f"median {statistics.median(times) * 1e3:.1f} ms ({a.steps} runs)")
    with profile() as prof:
        for _ in range(a.profile_steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
