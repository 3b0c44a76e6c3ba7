#!/usr/bin/env bash
# Starting tokens at the ceiling (the paper) or spread inside the trained range
# (--start-distances): the runs that decide the default. Each writes one JSON file into
# bench/results/ and is skipped when it exists. Accuracy and perplexity do not depend on the
# machine's load, so these may run beside other work (one thread each). Usage:
#   bench/start_distances.sh path/to/les_miserables.txt
set -u
BOOK=${1:?give a long public-domain book, e.g. les_miserables.txt}
OUT=$(dirname "$0")/results
COMMON="--dtype bfloat16"

run() {  # run NAME ARGS...: main.py ARGS --json > results/NAME.json, once
    local name=$1; shift
    [ -s "$OUT/$name.json" ] && return
    echo "== $name: python main.py $* $COMMON --json" >&2
    if python main.py "$@" $COMMON --json > "$OUT/$name.tmp"; then
        mv "$OUT/$name.tmp" "$OUT/$name.json"
    else
        echo "== $name failed" >&2; rm -f "$OUT/$name.tmp"
    fi
}

# 16K-token passkey prompts, keys 1K-7K tokens back (inside the default 8K window), the
# same 8 questions in every mode.
P16="passkey --lengths 16384 --trials 8 --seed 11 --min-depth 0.57 --max-depth 0.94"
run sd_pk16_ceiling $P16 --start-distances ceiling
run sd_pk16_spread $P16 --start-distances spread
run sd_pk16_truncate $P16 --truncate
# Perplexity over 8K-64K of the book, 8K buckets.
PPL="perplexity --file $BOOK --max-tokens 65536 --report-every 8192"
run sd_ppl_ceiling $PPL --start-distances ceiling
run sd_ppl_spread $PPL --start-distances spread
