#!/usr/bin/env bash
# Passkey at 16K tokens with the default 8K window, by mode and key distance (issue 16), in
# order of importance; docs/results.md's "Passkey by mode" table. Every mode is asked the same
# 8 questions per band (same seed): keys inside the window (1K-7K tokens back, seed 11, the
# questions of the start-distance runs in length_runs.sh) and beyond it (9K-16K back, seed 12).
# Trials share the filler before their keys (evaluate.run_passkeys). Truncation cannot see a
# key beyond the window, so it runs inside only. ~3.5 core-hours here; two instances split it:
#   OMP_NUM_THREADS=1 bench/passkey_grid.sh & OMP_NUM_THREADS=1 bench/passkey_grid.sh &
set -u
OUT=$(dirname "$0")/results
# The paper's start distances, the default when these runs were made (now "capped":
# bench/start_distance_runs.sh), so that a rerun measures what the results say.
COMMON="--dtype bfloat16 --start-distances ceiling"
. "$(dirname "$0")/run_once.sh"   # run NAME ARGS...

IN="passkey --lengths 16384 --trials 8 --seed 11 --min-depth 0.57 --max-depth 0.94"
OUTSIDE="passkey --lengths 16384 --trials 8 --seed 12 --min-depth 0.03 --max-depth 0.45"
PAPER="--n-global 10"   # the paper's setting; tinfinite's default is 64 starting tokens

run pk16out_top5 $OUTSIDE --top-k-middle 5
run pk16out_g64 $OUTSIDE
run pk16out_top5b64 $OUTSIDE --top-k-middle 5 --top-k-block 64
run pk16in_top5 $IN --top-k-middle 5
run pk16in_g10 $IN $PAPER
run pk16in_top5b64 $IN --top-k-middle 5 --top-k-block 64
run pk16in_top16 $IN --top-k-middle 16
run pk16out_top16 $OUTSIDE --top-k-middle 16
run pk16out_g10 $OUTSIDE $PAPER
run pk16in_full $IN --attention full
run pk16out_full $OUTSIDE --attention full
run pk16in_g10top5 $IN $PAPER --top-k-middle 5
run pk16out_g10top5 $OUTSIDE $PAPER --top-k-middle 5
run pk16in_g10top16 $IN $PAPER --top-k-middle 16
run pk16out_g10top16 $OUTSIDE $PAPER --top-k-middle 16

# Block-level top-k against token-level where top-k is known to retrieve: 4K tokens, a 1K
# window, keys beyond it, 16 questions.
P4="passkey --lengths 4096 --trials 16 --seed 1 --n-local 1024"
run pk4k16_top5 $P4 --top-k-middle 5
run pk4k16_top5b64 $P4 --top-k-middle 5 --top-k-block 64
run pk4k16_top5b16 $P4 --top-k-middle 5 --top-k-block 16
run pk4k16_g64 $P4

# 32K, keys beyond the window (9.6K-31.7K back): does top-k still reach them?
OUT32="passkey --lengths 32768 --trials 8 --seed 13 --min-depth 0.03 --max-depth 0.70"
run pk32out_top5b64 $OUT32 --top-k-middle 5 --top-k-block 64
run pk32out_g64 $OUT32
