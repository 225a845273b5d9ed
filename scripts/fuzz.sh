#!/usr/bin/env bash
# Runs every Fuzz target in the tree, one after another, for FUZZTIME each
# (default 30s), and prints each target's executions. Targets are found by
# grepping the test files, so a new one is picked up without listing it.
#
#   scripts/fuzz.sh [PATTERN]   only targets whose name matches PATTERN (grep -E)
#
# A crasher stops the run with go test's report; the input is then in the
# package's testdata/fuzz/<Target>/, a seed that plain `go test` replays.
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
	$GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" "./$dir" 2>&1 | tee "$log" || status=$?
	# The last progress line has the total: "fuzz: elapsed: 30s, execs: 123 (4/sec), ...".
	execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
	rm -f "$log"
	summary+=("$(printf '%-32s %-28s %12s execs' "$name" "./$dir" "${execs:-?}")")
	if [ "$status" -ne 0 ]; then
		printf '%s\n' "${summary[@]}"
		echo "fuzz: $name failed" >&2
		exit "$status"
	fi
done
echo "=== executions per target ($FUZZTIME each)"
printf '%s\n' "${summary[@]}"
