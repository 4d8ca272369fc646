#!/usr/bin/env bash
# Benchmark of the agent at 10,000 Services x 10 endpoints (issue 3), all in one run:
#  1. in process (cargo bench): first sync from scratch, 1,000 EndpointSlice changes (p50/p99),
#     resident memory;
#  2. the real flowgated on a manifest directory of that size: time to its first sync, its RSS;
#  3. the baseline: the same Services as a kube-proxy-shaped nftables ruleset, loaded with
#     `nft -f` in a network namespace made for the purpose (and removed after).
# Usage (as root): bench/agent-sync.sh [SERVICES]     (STAGES="1 2 3" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
services="${1:-10000}"
command -v nft >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables; }
command -v bc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q bc

stages="${STAGES:-1 2 3}"
want() { [[ " $stages " == *" $1 "* ]]; }

if want 1; then
echo "== 1. in process"
FLOWGATE_BENCH_SERVICES=$services cargo bench -q -j2 -p flowgate-agent --bench sync 2>/dev/null | grep -v '^$'
fi

dir=$(mktemp -d); ns="flowgate-bench-$$"; pid=""
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; ip netns del "$ns" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

if want 2; then
echo "== 2. flowgated on a manifest directory"
cargo build -q --release -j2 -p flowgate-cli
mkdir -p "$dir/m"
python3 bench/gen_cluster.py "$dir/m" "$services" 10 1 && rm "$dir/m/probes.jsonl"
start=$(date +%s.%N)
target/release/flowgated --manifests "$dir/m" --node node-a --socket "$dir/api.sock" --state-dir "$dir/state" \
    --healthz-bind-address "" --metrics-bind-address "" 2>/dev/null &
pid=$!
until target/release/flowgate status --socket "$dir/api.sock" 2>/dev/null | grep -q '"syncs": [1-9]'; do sleep 0.05; done
ready=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
printf 'flowgated: first sync %.2f s after start (reading %s bytes of JSON, validating, compiling, applying); RSS %d MiB\n' \
    "$(echo "$ready - $start" | bc -l)" "$(stat -c %s "$dir/m/cluster.json")" "$((rss / 1024))"
kill "$pid"; pid=""
fi

if want 3; then
echo "== 3. baseline: kube-proxy-shaped nftables ruleset, nft -f"
python3 bench/gen_nft.py "$services" 10 > "$dir/rules.nft"
ip netns add "$ns"
s=$(date +%s.%N)
ip netns exec "$ns" nft -f "$dir/rules.nft"
e=$(date +%s.%N)
printf 'nft -f: %d rules in %.2f s\n' "$(grep -c '^add rule' "$dir/rules.nft")" "$(echo "$e - $s" | bc -l)"
fi
