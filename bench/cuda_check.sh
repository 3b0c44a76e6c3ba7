#!/usr/bin/env bash
# The GPU path end to end, on a machine with CUDA (run by hand; nothing here runs in the tests).
#
#   bench/cuda_check.sh [STAGE...] [-- TEXT...]
#
# Stages, in this order when none is named (results under bench/results/cuda-<date>/):
#   checks    bench/cuda_check.py: the engine on cuda equals the CPU engine (tiny random model:
#             logits, streaming = one pass, perplexity, greedy, sampling, bfloat16, int8,
#             full/window/top-k attention, no float64 on the device)                 ~1 min
#   sdpa      bench/sdpa_backends.py on cuda: each SDPA backend per call shape of the default
#             model (decode and prefill, in and past the window), bfloat16            ~1 min
#   decode    bench/cuda_decode.py: the engine's decode and prefill on cuda, with the backends
#             attention.py names and with every backend allowed (the default model's shape,
#             random weights: weights/random-smollm2-135m, made here)                 ~1 min
#   models    bench/make_random_llama.py: the Llama-3.2-1B and Llama-3-8B shaped folders under
#             weights/ (skipped when there), with the tokenizer of $TOKENIZER (default
#             weights/SmolLM2-135M-Instruct: its tokenizer.json, tokenizer_config.json and
#             config.json are enough, 3.5 MB)                               ~2 min, 17 GB disk
#   oracle    bench/oracle_size.py on cuda: the 1B's float32 logits against transformers    ~1 min
#   size-1b   bench/size_bench.py on cuda, 1B: load, decode at 256, 16K and 128K tokens
#             (synthetic caches past 2K: see its docstring), tinfinite vs transformers   ~3 min
#   size-8b   the same for the 8B                                                      ~8 min
#   ppl       16K, then 1M tokens of streaming perplexity in bfloat16 from the TEXT files
#             (concatenated; without any, a generated text), with peak RSS and device memory.
#             The model: $PPL_MODEL, else the default model if its weights are in weights/,
#             else its shape with random weights (the speed and memory, not the ppl) ~3 min
#
# Needs torch with CUDA, safetensors, tokenizers, jinja2, tqdm, and transformers for oracle and
# the transformers side of size-* (pip install -r requirements.txt -r requirements-oracle.txt).
# No network is needed: the random folders are made here.
set -euo pipefail
cd "$(dirname "$0")/.."

stages=()
texts=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; texts=("$@"); break; fi
    stages+=("$1"); shift
done
[ ${#stages[@]} -gt 0 ] || stages=(checks sdpa decode models oracle size-1b size-8b ppl)

out="bench/results/cuda-$(date +%Y-%m-%d)"
mkdir -p "$out"
one_b=weights/random-llama-3.2-1b
eight_b=weights/random-llama-3-8b
default=weights/SmolLM2-135M-Instruct
small=weights/random-smollm2-135m
tokenizer=${TOKENIZER:-$default}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

make_small() {  # the default model's shape with random weights, once
    [ -f "$small/model.safetensors.index.json" ] ||
        python bench/make_random_llama.py --shape smollm2-135m --out "$small" \
            --tokenizer-from "$tokenizer"
}

for stage in "${stages[@]}"; do
    echo "== $stage" >&2
    case "$stage" in
    checks)
        python bench/cuda_check.py --device cuda --out "$out/checks.jsonl" || status=1 ;;
    sdpa)
        python bench/sdpa_backends.py --device cuda --json | tee -a "$out/sdpa-backends.jsonl" ;;
    decode)
        make_small
        python bench/cuda_decode.py --model "$small" | tee -a "$out/decode.jsonl" ;;
    models)
        [ -f "$one_b/model.safetensors.index.json" ] ||
            python bench/make_random_llama.py --shape llama-3.2-1b --out "$one_b" \
                --tokenizer-from "$tokenizer"
        [ -f "$eight_b/model.safetensors.index.json" ] ||
            python bench/make_random_llama.py --shape llama-3-8b --out "$eight_b" \
                --tokenizer-from "$tokenizer" ;;
    oracle)
        python bench/oracle_size.py --model "$one_b" --device cuda | tee -a "$out/oracle.jsonl" ;;
    size-1b)
        python bench/size_bench.py --model "$one_b" --device cuda --contexts 256,16384,131072 \
            --out "$out/size.jsonl" ;;
    size-8b)
        python bench/size_bench.py --model "$eight_b" --device cuda --contexts 256,16384,131072 \
            --out "$out/size.jsonl" ;;
    ppl)
        if [ ${#texts[@]} -eq 0 ]; then  # ~1.2M tokens of a plain pattern
            python -c "import sys; sys.stdout.write(' '.join(f'Line {i}: a quick brown fox \
jumps over {i % 7} lazy dogs.' for i in range(100000)))" > "$out/text.txt"
            texts=("$out/text.txt")
        fi
        if [ -n "${PPL_MODEL:-}" ]; then model=$PPL_MODEL
        elif [ -f "$default/model.safetensors" ]; then model=$default
        else model=$small; make_small  # random weights: the speed and memory, not the ppl
        fi
        for n in 16384 1048576; do  # the same run short and long: the peaks must match
            python main.py perplexity --model "$model" --device cuda --dtype bfloat16 \
                --file "${texts[@]}" --max-tokens $n --report-every 131072 --json \
                > "$out/perplexity-$n.json"
            python -c "import json, sys; r = json.load(open(sys.argv[1])); \
print(json.dumps({k: r.get(k) for k in ('tokens', 'ppl', 'tokens_per_second', 'n_local', \
'peak_rss_mb', 'peak_device_mb')}))" "$out/perplexity-$n.json"
        done ;;
    *)
        echo "unknown stage $stage (checks, sdpa, decode, models, oracle, size-1b, size-8b, ppl)" >&2
        exit 2 ;;
    esac
done
echo "results: $out" >&2
exit $status
