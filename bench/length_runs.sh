#!/usr/bin/env bash
# The measurements behind docs/results.md's "Length generalisation" results (issue 3), in order of
# importance. Each writes one JSON file into bench/results/ and is skipped when that file
# exists, so a stopped run resumes. ~2 hours on a 2-core CPU. Lambda runs pin --n-global 10,
# the default when they were made (the n-global sweep below made the default 64). Usage:
#   bench/length_runs.sh path/to/texts        (the folder holding les_miserables.txt etc.)
set -u
TEXTS=${1:?give the folder of long texts, e.g. a folder of Project Gutenberg books}
OUT=$(dirname "$0")/results
BOOK="$TEXTS/les_miserables.txt"
# The paper's start distances, the default when these runs were made (now "capped":
# bench/start_distance_runs.sh), so that a rerun measures what the results say.
COMMON="--dtype bfloat16 --start-distances ceiling"

. "$(dirname "$0")/run_once.sh"   # run NAME ARGS...

# Perplexity by position on one book, 2K buckets: lambda and window to 64K, full to 32K.
run ppl_lambda perplexity --file "$BOOK" --max-tokens 65536 --report-every 2048 --n-global 10
run ppl_window perplexity --file "$BOOK" --max-tokens 65536 --report-every 2048 --attention window
run ppl_full perplexity --file "$BOOK" --max-tokens 32768 --report-every 2048 --attention full
# The in-window reference: the same tokens, the context restarted every 8K (as in training).
if [ ! -s "$OUT/ppl_restart.json" ] && python bench/in_window.py "$BOOK" --max-tokens 65536 \
        > "$OUT/ppl_restart.tmp"; then
    mv "$OUT/ppl_restart.tmp" "$OUT/ppl_restart.json"
fi

# Passkey beyond the window at 4K tokens with a 1K window: the same questions in every mode.
P4="passkey --lengths 4096 --trials 6 --seed 1 --n-local 1024"
run pk4k_lambda $P4 --n-global 10
run pk4k_topk $P4 --top-k-middle 5 --n-global 10
run pk4k_truncate $P4 --truncate --n-global 10
run pk4k_full passkey --lengths 4096 --trials 6 --seed 1 --attention full

# The starting-token budget: a 16K prompt whose key lies inside the window.
for g in 1 10 64 256; do
    run pkg_$g passkey --lengths 16384 --trials 2 --seed 3 --min-depth 0.6 --max-depth 0.95 --n-global $g
done
run pkg_truncate passkey --lengths 16384 --trials 2 --seed 3 --min-depth 0.6 --max-depth 0.95 --truncate --n-global 10
for g in 1 64 256; do
    run pplg_$g perplexity --file "$BOOK" --max-tokens 16384 --report-every 2048 --n-global $g
done

# 1M tokens (two books) through a 2K window, and 16K the same way: peak memory must match.
BOOKS="$TEXTS/les_miserables.txt $TEXTS/anna_karenina.txt"
run ppl_1m_w2k perplexity --file $BOOKS --max-tokens 1048576 --report-every 65536 --n-local 2048 --n-global 10
run ppl_16k_w2k perplexity --file $BOOKS --max-tokens 16384 --report-every 2048 --n-local 2048 --n-global 10

# Passkey at 16K and 32K with the default (8K) window.
run pk_lambda passkey --lengths 16384 32768 --trials 1 --seed 2 --n-global 10
run pk_topk passkey --lengths 16384 32768 --trials 1 --seed 2 --top-k-middle 5 --n-global 10
run pk_truncate passkey --lengths 16384 32768 --trials 1 --seed 2 --truncate --n-global 10

# Within the window every mode is the same computation (tests prove it): one run covers them.
run pk_short passkey --lengths 2048 4096 8192 --trials 3 --seed 2 --n-global 10
run pk_full passkey --lengths 16384 --trials 1 --seed 2 --attention full

# The starting-token budget again, with the key close to the question (500-1,600 tokens
# back): the 135M model finds no key 5K tokens back, whatever the setting (pkg_* above).
for g in 10 64; do
    run pkn_$g passkey --lengths 16384 --trials 2 --seed 5 --min-depth 0.9 --max-depth 0.97 --n-global $g
done
run pkn_truncate passkey --lengths 16384 --trials 2 --seed 5 --min-depth 0.9 --max-depth 0.97 --truncate --n-global 10

# Top-k variants at 4K: more picks, picks from every layer.
run pk4k_topk16 $P4 --top-k-middle 16 --n-global 10
run pk4k_topk5_l0 $P4 --top-k-middle 5 --top-k-from-layer 0 --n-global 10

# 64K (one trial each; last, as the longest).
run pk64_topk passkey --lengths 65536 --trials 1 --seed 4 --top-k-middle 5 --n-global 10
run pk64_lambda passkey --lengths 65536 --trials 1 --seed 4 --n-global 10

# Starting tokens at the ceiling (the paper) or spread inside the trained range
# (--start-distances), with the defaults otherwise (64 starting tokens): the runs that decide
# the default. 16K-token passkey prompts, keys 1K-7K tokens back (inside the 8K window), the
# same 8 questions in every mode; then perplexity to 64K, 8K buckets.
P16="passkey --lengths 16384 --trials 8 --seed 11 --min-depth 0.57 --max-depth 0.94"
run sd_pk16_ceiling $P16 --start-distances ceiling
run sd_pk16_spread $P16 --start-distances spread
run sd_pk16_truncate $P16 --truncate
PPL="perplexity --file $BOOK --max-tokens 65536 --report-every 8192"
run sd_ppl_ceiling $PPL --start-distances ceiling
run sd_ppl_spread $PPL --start-distances spread
