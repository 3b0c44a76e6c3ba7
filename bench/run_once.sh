# Sourced by the measurement scripts: run NAME COMMAND ARGS... =
# `python main.py COMMAND $COMMON ARGS --json` (an ARG given again overrides $COMMON's)
# into $OUT/NAME.json, once. A run is skipped when its JSON exists (a stopped script resumes)
# or when another instance of the script has claimed it (NAME.tmp exists), so two instances,
# one per core with OMP_NUM_THREADS=1, share the list.
run() {
    local name=$1; shift
    [ -s "$OUT/$name.json" ] || [ -e "$OUT/$name.tmp" ] && return
    : > "$OUT/$name.tmp"
    local command=$1; shift
    echo "== $name: python main.py $command $COMMON $* --json" >&2
    if python main.py "$command" $COMMON "$@" --json > "$OUT/$name.tmp"; then
        mv "$OUT/$name.tmp" "$OUT/$name.json"
    else
        echo "== $name failed" >&2; rm -f "$OUT/$name.tmp"
    fi
}
