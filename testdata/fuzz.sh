#!/usr/bin/env bash
# Runs the fuzz targets and reports what they did.
#
#   testdata/fuzz.sh            every target for FUZZTIME (default 1m), in turn
#   testdata/fuzz.sh FuzzScan   the targets whose names match, for FUZZTIME
#   testdata/fuzz.sh -cover     the committed corpora run as tests: statement
#                               coverage of each target's parser files
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
FuzzOpen            ./qcow2            header.go extensions.go image.go
FuzzReadAt          ./qcow2            read.go translate.go decompress.go crypt.go
FuzzCheck           ./qcow2            check.go
FuzzChain           ./qcow2            chain.go
FuzzSnapshotTable   ./qcow2            snapshot.go
FuzzDeflateDecoder  ./qcow2            inflate.go
FuzzScan            ./qcow2/guest      partition.go lvm.go view.go
FuzzIdentify        ./qcow2/guest      fs.go
FuzzLVMMetadata     ./qcow2/guest      config.go
FuzzLUKS            ./qcow2/encryption luks.go
FuzzRemote          ./qcow2/remote     remote.go
"

cover=false
match=.
case "${1:-}" in
-cover) cover=true ;;
"") ;;
*) match=$1 ;;
esac

time=${FUZZTIME:-1m}
workers=${FUZZPARALLEL:-$(nproc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if $cover; then
	printf '%-20s %8s  %s\n' target covered "of the parser's statements (files)"
else
	printf '%-20s %8s %10s %9s %12s\n' target time execs execs/s "new inputs"
fi
while read -r target pkg files; do
	[ -n "$target" ] || continue
	[[ $target =~ $match ]] || continue
	if $cover; then
		go test -count=1 -run "^$target\$" -coverprofile "$tmp/$target.out" "$pkg" >"$tmp/log" 2>&1 || { cat "$tmp/log"; exit 1; }
		# Profile lines: file:start.col,end.col statements count
		pattern=$(sed 's/[^ ]*/\/&:/g; s/ /|/g' <<<"$files")
		pct=$(awk -v p="$pattern" 'NR > 1 && $1 ~ p { n += $2; if ($3 > 0) c += $2 } END { printf "%.1f%%", 100 * c / n }' "$tmp/$target.out")
		printf '%-20s %8s  %s\n' "$target" "$pct" "$files"
		continue
	fi
	if ! go test -run '^$' -fuzz "^$target\$" -fuzztime "$time" -fuzzminimizetime 0 -timeout 0 -parallel "$workers" "$pkg" >"$tmp/log" 2>&1; then
		cat "$tmp/log"
		echo "FAIL: $target ($pkg)"
		exit 1
	fi
	# The last progress line: "fuzz: elapsed: 60s, execs: 123 (0/sec), new interesting: 4 (total: 9)"
	last=$(grep 'fuzz: elapsed:' "$tmp/log" | tail -1)
	secs=$(sed -E 's/.*elapsed: ([0-9]+)s.*/\1/' <<<"$last")
	execs=$(sed -E 's/.*execs: ([0-9]+).*/\1/' <<<"$last")
	new=$(sed -E 's/.*new interesting: ([0-9]+).*/\1/' <<<"$last")
	printf '%-20s %7ss %10s %9s %12s\n' "$target" "$secs" "$execs" "$((execs / (secs > 0 ? secs : 1)))" "$new"
done <<<"$targets"
