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

# Top-k's middle picks are seen at n_local / 2 (topk.py): do nearer starting tokens cost
# top-k its retrieval? Where top-k retrieves reliably: 4K tokens, a 1K window, the 16
# questions of passkey_grid.sh's pk4k16_* (the ceiling, 1024 here: 16/16). ("half" was a
# rule while this was measured: n_local / 2, 512 here.)
P4="passkey --lengths 4096 --trials 16 --seed 1 --n-local 1024"
run pk4k16_top5_half $P4 --top-k-middle 5 --start-distances 512
run pk4k16_top5_256 $P4 --top-k-middle 5 --start-distances 256

# The default that came of it, capped (4096 here), with top-k, keys beyond the window.
run pk16out_capped_top5 $OUTSIDE --start-distances capped --top-k-middle 5
run pk16out_capped_top16 $OUTSIDE --start-distances capped --top-k-middle 16
run sd_pk16_2048 $IN --start-distances 2048
run sd_ppl_2048 $PPL --start-distances 2048

# 32K, keys 3.0K-6.0K back (inside the window): the default against the paper's ceiling and
# truncation, the same 8 questions.
IN32="passkey --lengths 32768 --trials 8 --seed 14 --min-depth 0.80 --max-depth 0.965"
run pk32in_capped $IN32 --start-distances capped
run pk32in_ceiling $IN32 --start-distances ceiling
run pk32in_truncate $IN32 --truncate
# The default with top-k, keys inside the window.
run pk16in_capped_top5 $IN --start-distances capped --top-k-middle 5
