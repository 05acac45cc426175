#!/usr/bin/env bash
# Runs the fuzz targets and reports what they did.
#
#   testdata/fuzz.sh            every target for FUZZTIME (default 1m), in turn
#   testdata/fuzz.sh FuzzScan   the targets whose names match, for FUZZTIME
#   testdata/fuzz.sh -cover     the committed corpora run as tests: statement
#                               coverage of each target's parser files
#   testdata/fuzz.sh -keep      commit to each package's testdata/fuzz the
#                               fewest inputs of Go's cache that cover what
#                               the whole cache covers of the parser files
#
# FUZZPARALLEL sets the workers per target (default: every CPU). Go's
# default minimization (-fuzzminimizetime 60s for every new input) would
# leave a few inputs a minute on these targets: it is off. New inputs land
# in Go's cache ($(go env GOCACHE)/fuzz), failures in the package's
# testdata/fuzz, as go test writes them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each target, its package, and the files of the parser it aims at.
targets="
FuzzOpen            ./qcow2                     open.go header.go extensions.go features.go limits.go
FuzzReadAt          ./qcow2                     read.go cluster.go compressed.go
FuzzCheck           ./qcow2                     check.go
FuzzChain           ./qcow2                     chain.go
FuzzSnapshotTable   ./qcow2                     snapshot.go
FuzzDeflateDecoder  ./qcow2/internal/decompress deflate.go
FuzzScan            ./qcow2/guest               partition.go lvm.go
FuzzIdentify        ./qcow2/guest               fs.go
FuzzLVMMetadata     ./qcow2/guest               config.go
FuzzLUKS            ./qcow2/encryption          luks.go
FuzzRemote          ./qcow2/remote              remote.go
FuzzWrites          ./qcow2/overlay             io.go tables.go refcount.go
"

mode=fuzz
match=.
case "${1:-}" in
-cover | -keep) mode=${1#-} ;;
"") ;;
*) match=$1 ;;
esac
[ -n "${2:-}" ] && match=$2

time=${FUZZTIME:-1m}
workers=${FUZZPARALLEL:-$(nproc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# covered prints the blocks of the parser files that a coverage profile
# shows run, with their statements: "file:range statements".
covered() {
	awk -v p="$2" 'NR > 1 && $1 ~ p && $3 > 0 { print $1, $2 }' "$1" | sort -u
}

# keep copies the inputs of Go's cache for target into the package's
# testdata/fuzz, runs each alone with coverage, and keeps the fewest that
# cover what they all cover beyond the seeds and the inputs already
# committed (greedily: the one adding most statements first).
keep() {
	local target=$1 pkg=$2 pattern=$3
	local dir corpus cache bin name
	dir=$(go list -f '{{.Dir}}' "$pkg")
	cache=$(go env GOCACHE)/fuzz/$(go list "$pkg")/$target
	corpus=$dir/testdata/fuzz/$target
	[ -d "$cache" ] || { echo "$target: nothing in $cache"; return; }
	bin=$tmp/$target.test
	go test -c -cover -o "$bin" "$pkg"
	mkdir -p "$corpus"
	(cd "$dir" && "$bin" -test.run "^$target\$" -test.coverprofile "$tmp/base.out" >/dev/null)
	covered "$tmp/base.out" "$pattern" >"$tmp/base"
	: >"$tmp/candidates"
	: >"$tmp/added"
	# One candidate in the corpus at a time: go test parses every file
	# of a target's corpus before it picks those -run names.
	for f in "$cache"/*; do
		name=$(basename "$f")
		[ -e "$corpus/$name" ] && continue
		cp "$f" "$corpus/$name"
		echo "$name" >>"$tmp/added"
		if (cd "$dir" && "$bin" -test.run "^$target/$name\$" -test.coverprofile "$tmp/one.out" >/dev/null 2>&1); then
			covered "$tmp/one.out" "$pattern" | sed "s|^|$name |" >>"$tmp/candidates"
		fi
		rm "$corpus/$name"
	done
	# Greedy set cover of the blocks the committed corpus leaves out.
	awk 'NR == FNR { have[$1] = 1; next }
		!($2 in have) { n[$1]++; blk[$1, n[$1]] = $2; left[$2] = $3 }
		END {
			for (;;) {
				best = ""; gain = 0
				for (i in n) {
					g = 0
					for (k = 1; k <= n[i]; k++) if (blk[i, k] in left) g += left[blk[i, k]]
					if (g > gain) { gain = g; best = i }
				}
				if (best == "") break
				print best
				for (k = 1; k <= n[best]; k++) delete left[blk[best, k]]
				delete n[best]
			}
		}' "$tmp/base" "$tmp/candidates" >"$tmp/chosen"
	while read -r name; do
		cp "$cache/$name" "$corpus/$name"
	done <"$tmp/chosen"
	echo "$target: kept $(wc -l <"$tmp/chosen") of $(wc -l <"$tmp/added") new inputs in Go's cache, in ${corpus#"$PWD"/}"
}

case $mode in
cover) printf '%-20s %8s  %s\n' target covered "of the parser's statements (files)" ;;
keep) ;;
*)
	printf '%-20s %8s %10s %9s %12s\n' target time execs execs/s "new inputs"
	;;
esac
while read -r target pkg files; do
	[ -n "$target" ] || continue
	[[ $target =~ $match ]] || continue
	# Profile lines: file:start.col,end.col statements count
	pattern=$(sed 's/[^ ]*/\/&:/g; s/ /|/g' <<<"$files")
	case $mode in
	cover)
		go test -count=1 -run "^$target\$" -coverprofile "$tmp/$target.out" "$pkg" >"$tmp/log" 2>&1 || { cat "$tmp/log"; exit 1; }
		pct=$(awk -v p="$pattern" 'NR > 1 && $1 ~ p { n += $2; if ($3 > 0) c += $2 } END { printf "%.1f%%", 100 * c / n }' "$tmp/$target.out")
		printf '%-20s %8s  %s\n' "$target" "$pct" "$files"
		continue
		;;
	keep)
		keep "$target" "$pkg" "$pattern"
		continue
		;;
	esac
	# A failing input lands in the package's testdata/fuzz/TARGET.
	found=$(go list -f '{{.Dir}}' "$pkg")/testdata/fuzz/$target
	before=$( (ls "$found" 2>/dev/null || true) | wc -l)
	note=
	if ! go test -run '^$' -fuzz "^$target\$" -fuzztime "$time" -fuzzminimizetime 0 -timeout 0 -parallel "$workers" "$pkg" >"$tmp/log" 2>&1; then
		# Go 1.26's coordinator can report its own -fuzztime deadline
		# as a failure (golang/go#75804, fixed in Go 1.27): that is the
		# end of the run, unless it wrote a failing input.
		if [ "$(ls "$found" 2>/dev/null | wc -l)" = "$before" ] && grep -q '^    context deadline exceeded$' "$tmp/log"; then
			note=" (ended by golang/go#75804's deadline race: no failing input)"
		else
			cat "$tmp/log"
			echo "FAIL: $target ($pkg)"
			exit 1
		fi
	fi
	# The last progress line: "fuzz: elapsed: 60s, execs: 123 (0/sec), new interesting: 4 (total: 9)"
	# (A short run may end while Go still gathers the cached corpus's
	# baseline coverage: then it reports no execs.)
	last=$(grep 'fuzz: elapsed:.*execs:' "$tmp/log" | tail -1 || true)
	last=${last:-"fuzz: elapsed: 0s, execs: 0 (0/sec), new interesting: 0 (total: 0)"}
	# elapsed is written as Go writes durations: 45s, 8m0s, 1h0m3s.
	secs=$(sed -E 's/.*elapsed: ([0-9hms]+),.*/\1/; s/h/*3600+/; s/m/*60+/; s/s//' <<<"$last")
	secs=$((secs))
	execs=$(sed -E 's/.*execs: ([0-9]+).*/\1/' <<<"$last")
	new=$(sed -E 's/.*new interesting: ([0-9]+).*/\1/' <<<"$last")
	printf '%-20s %7ss %10s %9s %12s%s\n' "$target" "$secs" "$execs" "$((execs / (secs > 0 ? secs : 1)))" "$new" "$note"
done <<<"$targets"
