#!/usr/bin/env bash
# Runs every Fuzz target in the tree, one after another, for FUZZTIME each
# (default 30s), and prints each target's executions. Targets are found by
# grepping the test files, so a new one is picked up without listing it.
#
#   scripts/fuzz.sh [PATTERN]   only targets whose name matches PATTERN (grep -E)
#
# A crasher stops the run with go test's report; the input is then in the
# package's testdata/fuzz/<Target>/, a seed that plain `go test` replays.
# A failure that wrote no such input and says "context deadline exceeded"
# is Go's own race at the end of -fuzztime (go.dev/issue/75804, fixed in
# Go 1.27), not a finding: it is reported and the run goes on.
#
# Executions per second per target, one worker (-parallel=1, minimization
# capped at one execution), 20 s each on this project's 2 shared cores,
# after the targets kept their device, sockets and scratch directories
# per fuzzing process (before that in brackets): vsock FuzzTxPackets 2.6 k
# (0.26 k), image FuzzUnpackLayer 3.2 k (0.67 k), FuzzUnpackManifest 2.6 k
# (0.31 k), api FuzzBodies 5.3 k (1.9 k), FuzzConfigFile 5.6 k (0.70 k),
# net FuzzTxHeader 5.1 k (1.2 k), blk FuzzRequest 22 k (5.6 k). So 10 M
# executions take from 8 minutes (blk) to about an hour (vsock, image) per
# core, plus minimization of new inputs (FUZZMINIMIZETIME each).
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-30s}
# Minimizing a new interesting input runs the target too, but go test
# doesn't count those executions, and the default (60s) can take up a
# short run.
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-5s}
filter=${1:-.}

# One "package-dir target" line per `func FuzzX(f *testing.F)`.
list_targets() {
	grep -rHoE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . |
		sed -E 's|^\./(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*)\(.*$|\1 \2|; s|^\./[^/]*:func (Fuzz[A-Za-z0-9_]*)\(.*$|. \1|' |
		sort
}

# corpus_size counts the inputs in a target's testdata corpus.
corpus_size() {
	if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi
}

mapfile -t targets < <(list_targets | awk -v re="$filter" '$2 ~ re')
if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no Fuzz target matches $filter" >&2
	exit 1
fi
echo "fuzz: ${#targets[@]} targets, $FUZZTIME each"

summary=()
for t in "${targets[@]}"; do
	dir=${t% *} name=${t#* }
	echo "=== $name (./$dir)"
	log=$(mktemp)
	status=0
	corpus="./$dir/testdata/fuzz/$name"
	before=$(corpus_size "$corpus")
	$GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" "./$dir" 2>&1 | tee "$log" || status=$?
	# The last progress line has the total: "fuzz: elapsed: 30s, execs: 123 (4/sec), ...".
	execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
	note=""
	if [ "$status" -ne 0 ] && [ "$(corpus_size "$corpus")" -eq "$before" ] &&
		grep -q '^    context deadline exceeded$' "$log"; then
		status=0 note=" (Go's end-of-fuzztime race, no input written: go.dev/issue/75804)"
	fi
	rm -f "$log"
	summary+=("$(printf '%-32s %-28s %12s execs%s' "$name" "./$dir" "${execs:-?}" "$note")")
	if [ "$status" -ne 0 ]; then
		printf '%s\n' "${summary[@]}"
		echo "fuzz: $name failed" >&2
		exit "$status"
	fi
done
echo "=== executions per target ($FUZZTIME each)"
printf '%s\n' "${summary[@]}"
