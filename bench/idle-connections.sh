#!/usr/bin/env bash
# The agent under 2,000 idle healthz connections against the agent with none, in one run (issue 12,
# 3): release flowgated in a private network namespace (its host networking service owns the fgv*
# interfaces of its namespace: never the machine's), healthz on 127.0.0.1:31256.
# Usage (as root): bench/idle-connections.sh [CONNECTIONS] [WINDOW_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -j2 -p flowgate-cli --bin flowgated
ulimit -n "$(ulimit -Hn)"  # the client side holds the connections too
exec unshare --net sh -c "ip link set lo up && python3 bench/idle-connections.py target/release/flowgated ${1:-2000} ${2:-30}"
