# Shared by .ci/run and .ci/sanitizers (sourced, not run).

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

# Runs a `cargo test`-style command, its output shown as it comes, and fails unless it ran
# at least one test: a filter that matches nothing, a cfg that compiles the tests out or a
# renamed module all give a green `test result: ok. 0 passed` that would pass unseen.
# libtest prints one such line per test binary (doc tests included) on stdout; the passed
# counts are summed. A failing command fails the step with its own status.
run_counted() {
    local log passed status=0
    log=$(mktemp)
    "$@" | tee "$log" || status=$?
    if [ "$status" -ne 0 ]; then
        rm -f "$log"
        return "$status"
    fi
    passed=$(awk '$1 == "test" && $2 == "result:" && $5 == "passed;" { n += $4 } END { print n + 0 }' "$log")
    rm -f "$log"
    if [ "$passed" -eq 0 ]; then
        echo "error: no test ran: $*" >&2
        return 1
    fi
    echo "run_counted: ${passed} tests passed"
}

# Removes a target directory a finished step no longer needs, after printing its size, so
# the disk holds one step's build at a time rather than all of them.
drop_target() {
    if [ -d "$1" ]; then
        du -sh "$1"
        rm -rf "$1"
    fi
}
