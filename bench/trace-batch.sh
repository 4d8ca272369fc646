#!/usr/bin/env bash
# Benchmark: `flowgate trace --batch` with PROBES probes against a state of SERVICES Services x 10
# endpoints. Prints the load+compile time (a run with one probe) and the time for all probes, each
# the median of 5 runs, and the per-probe cost after loading.
# Usage: bench/trace-batch.sh [SERVICES] [PROBES]
set -euo pipefail
cd "$(dirname "$0")/.."
services="${1:-10000}"; probes="${2:-10000}"
cargo build -q --release -j2 -p flowgate-cli
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
python3 bench/gen_cluster.py "$dir" "$services" 10 "$probes"
head -n 1 "$dir/probes.jsonl" > "$dir/one.jsonl"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # probes file -> seconds
    local s e
    s=$(date +%s.%N); target/release/flowgate trace -f "$dir/cluster.json" --batch "$1" > "$dir/out.jsonl"; e=$(date +%s.%N)
    echo "$e - $s" | bc -l
}
load=$(for _ in 1 2 3 4 5; do run "$dir/one.jsonl"; done | median)
all=$(for _ in 1 2 3 4 5; do run "$dir/probes.jsonl"; done | median)
lines=$(wc -l < "$dir/out.jsonl")
printf 'state: %d services x 10 endpoints (%s bytes of JSON); probes: %d (%d results)\n' "$services" "$(stat -c %s "$dir/cluster.json")" "$probes" "$lines"
printf 'load + compile (1 probe):      %.3f s\n' "$load"
printf 'load + compile + %d probes: %.3f s\n' "$probes" "$all"
printf 'probes alone:                  %.3f s (%.1f us/probe)\n' "$(echo "$all - $load" | bc -l)" "$(echo "($all - $load) * 1000000 / $probes" | bc -l)"
