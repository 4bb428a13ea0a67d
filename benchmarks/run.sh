#!/usr/bin/env bash
# run.sh runs carve's benchmarks and the side-by-side ones against go-ipam and
# cilium's ipallocator, writes the raw output under benchmarks/results/<time>/
# (git-ignored) and prints benchstat tables: carve's own, then the libraries
# side by side (benchstat -col /lib, carve first).
#
# Usage: benchmarks/run.sh            (from anywhere; about 10 minutes)
# Environment: COUNT (default 10), BENCHTIME (default 200ms) for the timed
# benchmarks. The heap benchmarks always run one iteration per count: each
# builds 65,536 allocations afresh, and their figure hardly varies.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
count=${COUNT:-10}
benchtime=${BENCHTIME:-200ms}
out="$here/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"

benchstat=$(command -v benchstat || true)
if [ -z "$benchstat" ]; then
	benchstat="$(go env GOPATH)/bin/benchstat"
	if [ ! -x "$benchstat" ]; then
		echo "installing benchstat" >&2
		go install golang.org/x/perf/cmd/benchstat@latest
	fi
fi

{
	echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "commit:  $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo "cpu:     $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
	echo "cores:   $(nproc 2>/dev/null || echo unknown)"
	echo "go:      $(go version)"
	echo "command: COUNT=$count BENCHTIME=$benchtime benchmarks/run.sh"
} | tee "$out/machine.txt"

# bench DIR FILE PATTERN BENCHTIME: one go test invocation, appended to FILE.
bench() {
	echo "== $1: -bench '$3' -benchtime=$4 -count=$count" >&2
	(cd "$1" && go test -run='^$' -bench="$3" -benchtime="$4" -count="$count" -timeout=60m .) |
		tee -a "$2"
}

timed='^Benchmark(AllocRelease|AllocReleaseFresh|AllocReleaseBlockSize|AllocReleaseDual|AllocReleasePods|AllocReleaseRacks|Batch|FirstBatch|Parallel|Claim|StoreOps)$'
bench "$here" "$out/carve.txt" "$timed" "$benchtime"
bench "$here" "$out/carve.txt" '^BenchmarkHeapPerAddr$' 1x
bench "$here/peers" "$out/peers.txt" "$timed" "$benchtime"
bench "$here/peers" "$out/peers.txt" '^BenchmarkHeapPerAddr$' 1x

{
	echo
	echo "### carve"
	"$benchstat" "$out/carve.txt"
	echo
	echo "### side by side (columns by lib; the first column is the base)"
	"$benchstat" -col /lib "$out/peers.txt"
} | tee "$out/tables.txt"

echo
echo "raw output and tables: $out" >&2
