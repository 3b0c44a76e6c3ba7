#!/usr/bin/env bash
# Where a query sees the starting tokens beyond its window (--start-distances), measured for
# the default: the paper's ceiling (8192, one past the trained range) against one distance N
# inside it, near where the model saw its first tokens most in training. 16K passkey with the
# questions of bench/passkey_grid.sh (keys inside the window and beyond it), and perplexity to
# 64K on the book of bench/length_runs.sh (the default may change only within 0.5% of it).
# Two instances share the list (run_once.sh), one thread each:
#   OMP_NUM_THREADS=1 bench/start_distance_runs.sh TEXTS & OMP_NUM_THREADS=1 bench/start_distance_runs.sh TEXTS &
# TEXTS: the folder holding les_miserables.txt (README, "Set up").
set -u
TEXTS=${1:?give the folder of long texts, e.g. a folder of Project Gutenberg books}
OUT=$(dirname "$0")/results
COMMON="--dtype bfloat16"
. "$(dirname "$0")/run_once.sh"   # run NAME ARGS...
BOOK="$TEXTS/les_miserables.txt"

IN="passkey --lengths 16384 --trials 8 --seed 11 --min-depth 0.57 --max-depth 0.94"
OUTSIDE="passkey --lengths 16384 --trials 8 --seed 12 --min-depth 0.03 --max-depth 0.45"
PPL="perplexity --file $BOOK --max-tokens 65536 --report-every 8192"

run sd_pk16_1024 $IN --start-distances 1024
run sd_ppl_1024 $PPL --start-distances 1024
run sd_pk16_256 $IN --start-distances 256
run sd_ppl_256 $PPL --start-distances 256
run sd_pk16_4096 $IN --start-distances 4096
run sd_ppl_4096 $PPL --start-distances 4096
run pk16out_sd1024 $OUTSIDE --start-distances 1024
run pk16out_sd1024top5 $OUTSIDE --start-distances 1024 --top-k-middle 5
