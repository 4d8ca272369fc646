#!/usr/bin/env bash
# Under pressure (issue 12, section 2): a legitimate client's new connections during and after two
# floods, through flowgate's kernel data plane and through a kube-proxy-shaped nftables ruleset
# (conntrack + NAT), in one run. Topology as bench/real-traffic.sh's (one copy per variant and
# flood, side by side, built the same way):
#
#   client ns (198.18.0.2) --veth-- node ns (198.18.0.1, router) --veth-- backend pod ns (PER pods)
#
# The Services are flowgate_cluster::synthetic's (SERVICES of them, PER endpoints each); the probed
# Service T (VIP:80 -> the real pods' 8080) is reached by the client from outside the cluster CIDR:
# DNAT + masquerade to the node's address, one pool of 64,512 source ports per backend, as for a
# NodePort. Variants: `nftables` (bench/gen_nft.py, `nft -f`; conntrack tracks every packet in the
# node namespace) and `flowgate` (crates/ebpf/examples/realtraffic.rs: the eBPF programs, as
# shipped). Floods, sent by the client from a raw socket (crates/ebpf/examples/trafficgen.rs),
# from forged sources 198.19.128.0/17 (the node blackholes 198.18.0.0/15, so whatever answers them
# dies in the node):
#   syn   half-open connections: SYNs to VIP:80 at SYN_RATE/s (`trafficgen synflood`); the pods
#         answer (syncookies, a Linux default), the answers vanish, no handshake finishes;
#   junk  new 5-tuples: UDP datagrams to the node's own address at JUNK_RATE/s, each with a
#         5-tuple no earlier one had (`trafficgen newflows --rate`).
# For each variant and flood, on a fresh copy: the legitimate client (`trafficgen probe`: PROBE_RATE
# new connections a second on a fixed schedule, each given 4 s to connect, send 16 bytes and read
# the 16-byte reply) for DURATION s before the flood (quiet), DURATION s during it (the flood runs
# DURATION + 1 s, the probe starting 0.5 s in) and DURATION s right after it. The flood is pinned
# to CPU 0, the probe to CPU 1; everything else (forwarding, the pods) runs where the kernel puts it.
# Printed: success rate and connect latency (p50, p99, max of the successful ones) per stage, the
# ratios flowgate / nftables, and what each data plane did (conntrack's statistics and count in the
# node namespace, with its table size and timeouts; flowgate's program and flow-table counters).
#
# Everything it makes is named flowgate-flood-<pid>-*, uses 198.18.0.0/15 and the synthetic
# cluster's addresses only inside its own namespaces, and is removed on exit, also on failure or
# Ctrl-C. Nothing is attached, loaded or changed in the root namespace.
#
# Usage (as root): bench/flood.sh     (about 3 minutes after the build)
# Environment: SERVICES (1000), PER (1), DURATION (5), PROBE_RATE (200), SYN_RATE (50000),
#   JUNK_RATE (100000), VARIANTS ("flowgate nftables"), FLOODS ("syn junk").
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

SERVICES=${SERVICES:-1000}
PER=${PER:-1}
DURATION=${DURATION:-5}
PROBE_RATE=${PROBE_RATE:-200}
SYN_RATE=${SYN_RATE:-50000}
JUNK_RATE=${JUNK_RATE:-100000}
VARIANTS=${VARIANTS:-flowgate nftables}
FLOODS=${FLOODS:-syn junk}

[ "$(id -u)" = 0 ] || { echo "flood.sh: run as root (namespaces, eBPF)" >&2; exit 1; }
if ! command -v nft >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables
fi

echo "== building the traffic generator and the flowgate loader (release)" >&2
cargo build -q --release -j2 -p flowgate-ebpf --example trafficgen --example realtraffic
TG=$PWD/target/release/examples/trafficgen
RT=$PWD/target/release/examples/realtraffic

PREFIX="flowgate-flood-$$-"
WORK=$(mktemp -d /tmp/flowgate-flood-$$.XXXXXX)
PIDS=()
track() { echo "$1" >>"$WORK/pids"; }
cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}" $(cat "$WORK/pids" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX"); do
        ip netns del "$ns" || echo "flood.sh: could not delete namespace $ns" >&2
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

int2ip() { local n=$1; echo "$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# The probed Service: the middle one, a ClusterIP Service (not a NodePort: i % 4 != 0).
T=$((SERVICES / 2 + 1))
while ((T % 4 == 0)); do T=$((T + 1)); done
VIP=$(int2ip $((0xAC1E0000 + T + 1)))
POD_IPS=()
for ((e = 0; e < PER; e++)); do POD_IPS+=("$(int2ip $((0x0A400000 + T * PER + e)))"); done
NODE_IP=198.18.0.1
CLIENT_IP=198.18.0.2
GATEWAY=198.18.1.1
FORGED=198.19.128.1 # forged sources: 198.19.128.1 upward (254 of them), blackholed in the node

echo "== generating the ruleset: $SERVICES Services x $PER endpoints; probed: svc-$T, $VIP:80 -> ${POD_IPS[*]}" >&2
python3 bench/gen_nft.py "$SERVICES" "$PER" >"$WORK/rules.nft"

node_ns() { echo "${PREFIX}$1-node"; }
client_ns() { echo "${PREFIX}$1-client"; }
pod_ns() { echo "${PREFIX}$1-pod$2"; }

make_topology() { # NAME
    local v=$1 e N C P ip
    N=$(node_ns "$v") C=$(client_ns "$v")
    ip netns add "$N"
    ip netns add "$C"
    ip netns exec "$N" sysctl -qw net.ipv4.ip_forward=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
        net.ipv4.conf.all.accept_local=1 net.ipv4.conf.default.accept_local=1 \
        net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0
    ip -n "$N" link set lo up
    ip -n "$N" link add uplink0 type veth peer name eth0 netns "$C"
    ip -n "$N" addr add "$NODE_IP/24" dev uplink0
    ip -n "$N" link set uplink0 up
    ip -n "$C" link set lo up
    ip -n "$C" addr add "$CLIENT_IP/24" dev eth0
    ip -n "$C" link set eth0 up
    ip -n "$C" route add 172.30.0.0/16 via "$NODE_IP"
    ip netns exec "$C" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
    for ((e = 0; e < PER; e++)); do
        P=$(pod_ns "$v" "$e") ip=${POD_IPS[e]}
        ip netns add "$P"
        ip -n "$N" link add "veth$e" type veth peer name eth0 netns "$P"
        ip -n "$N" addr add "$GATEWAY/32" dev "veth$e"
        ip -n "$N" link set "veth$e" up
        ip -n "$N" route add "$ip/32" dev "veth$e" scope link
        ip -n "$P" link set lo up
        ip -n "$P" addr add "$ip/32" dev eth0
        ip -n "$P" link set eth0 up
        ip -n "$P" route add "$GATEWAY/32" dev eth0 scope link
        ip -n "$P" route add 198.18.0.0/15 via "$GATEWAY" dev eth0
    done
    ip -n "$N" route add blackhole 10.0.0.0/8
    ip -n "$N" route add blackhole 172.30.0.0/16
    ip -n "$N" route add blackhole 198.18.0.0/15
}

wait_file() { # FILE SECONDS PID
    local deadline=$((SECONDS + $2))
    until [ -s "$1" ]; do
        ((SECONDS < deadline)) || { echo "flood.sh: timed out waiting for $1" >&2; return 1; }
        kill -0 "$3" 2>/dev/null || { echo "flood.sh: process $3 died before $1" >&2; return 1; }
        sleep 0.05
    done
}

# conntrack's statistics in a node namespace, summed over CPUs: "name=value ..." (nonzero).
ct_stats() {
    ip netns exec "$(node_ns "$1")" cat /proc/net/stat/nf_conntrack 2>/dev/null | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
if rows:
    names, sums = rows[0], [0] * len(rows[0])
    for r in rows[1:]:
        for i, x in enumerate(r):
            sums[i] += int(x, 16)
    print(" ".join(f"{n}={v}" for n, v in zip(names, sums) if v and n not in ("entries", "searched", "found")))' || true
}
ct_count() { ip netns exec "$(node_ns "$1")" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo -; }

probe() { # NAME STAGE -> the probe's key=value line, also kept in $WORK
    ip netns exec "$(client_ns "$1")" "$TG" probe --duration "$DURATION" --rate "$PROBE_RATE" --timeout-ms 4000 \
        --cpu 1 "$VIP:80" 2>>"$WORK/$1.log" | tee "$WORK/$1-$2.probe"
}

flood() { # NAME FLOOD -> the generator's rate
    local d
    d=$(awk -v d="$DURATION" 'BEGIN { print d + 1 }')
    case $2 in
    syn) ip netns exec "$(client_ns "$1")" "$TG" synflood --duration "$d" --rate "$SYN_RATE" --cpu 0 \
        --source-base "$FORGED" --sources 254 "$VIP:80" 2>>"$WORK/$1.log" ;;
    junk) ip netns exec "$(client_ns "$1")" "$TG" newflows --duration "$d" --rate "$JUNK_RATE" --batch 64 --cpu 0 \
        --source-base "$FORGED" --sources 254 "$NODE_IP:9" 2>>"$WORK/$1.log" ;;
    esac
}

# --- set up every copy -------------------------------------------------------------------------
declare -A LOAD
rt_pids=()
for f in $FLOODS; do
    for v in $VARIANTS; do
        name="$v-$f"
        echo "== setting up $name" >&2
        make_topology "$name"
        N=$(node_ns "$name")
        s=$(now)
        case $v in
        nftables)
            ip netns exec "$N" nft -f "$WORK/rules.nft"
            LOAD[$name]="$(since "$s") s"
            ;;
        flowgate)
            pod_args=()
            for ((e = 0; e < PER; e++)); do pod_args+=(--pod "veth$e=$(pod_ns "$name" "$e")"); done
            "$RT" --netns "$N" --uplink uplink0 --node-ip "$NODE_IP" --services "$SERVICES" --per "$PER" \
                --target "$T" "${pod_args[@]}" --stop-file "$WORK/stop-$name" >"$WORK/$name-rt.out" 2>"$WORK/$name-rt.err" &
            rt_pids+=($!)
            PIDS+=($!)
            track $!
            wait_file "$WORK/$name-rt.out" 120 $!
            LOAD[$name]="$(since "$s") s"
            ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
        esac
        for ((e = 0; e < PER; e++)); do
            ip netns exec "$(pod_ns "$name" "$e")" "$TG" serve --port 8080 --ready "$WORK/$name-serve$e.ready" &
            PIDS+=($!)
            track $!
            wait_file "$WORK/$name-serve$e.ready" 10 $!
        done
    done
done

# conntrack's settings, as a node namespace sees them.
N0=$(node_ns "$(echo "$VARIANTS" | awk '{print $1}')-$(echo "$FLOODS" | awk '{print $1}')")
CT_SETTINGS=$(ip netns exec "$N0" sh -c 'cd /proc/sys/net/netfilter 2>/dev/null && for k in nf_conntrack_max nf_conntrack_buckets nf_conntrack_tcp_timeout_syn_sent nf_conntrack_tcp_timeout_syn_recv nf_conntrack_tcp_timeout_established nf_conntrack_udp_timeout nf_conntrack_tcp_loose; do printf "%s=%s " "$k" "$(cat $k)"; done; w=no; [ -w nf_conntrack_max ] && w=yes; printf "(nf_conntrack_max writable here: %s)" "$w"' || echo "-")

# --- measure -------------------------------------------------------------------------------------
declare -A RES FLOODRATE CT
run_started=$(now)
for f in $FLOODS; do
    for v in $VARIANTS; do
        name="$v-$f"
        echo "== $name: quiet" >&2
        RES[$name-quiet]=$(probe "$name" quiet)
        echo "== $name: during the $f flood" >&2
        flood "$name" "$f" >"$WORK/$name.flood" &
        fpid=$!
        track $fpid
        sleep 0.5
        RES[$name-during]=$(probe "$name" during)
        wait "$fpid"
        FLOODRATE[$name]=$(cat "$WORK/$name.flood")
        [ "$v" = nftables ] && CT[$name-during]="count $(ct_count "$name"); $(ct_stats "$name")"
        echo "== $name: after" >&2
        RES[$name-after]=$(probe "$name" after)
        [ "$v" = nftables ] && CT[$name-after]="count $(ct_count "$name"); $(ct_stats "$name")"
    done
done
for v in $VARIANTS; do [ "$v" = flowgate ] && for f in $FLOODS; do touch "$WORK/stop-flowgate-$f"; done; done
for pid in "${rt_pids[@]}"; do wait "$pid"; done

# --- report ----------------------------------------------------------------------------------------
field() { sed -n "s/.*\b$2=\([0-9]*\).*/\1/p" <<<"$1"; }
rate() { awk -v ok="$(field "$1" ok)" -v n="$(field "$1" attempts)" 'BEGIN { if (n > 0) printf "%.1f", 100 * ok / n; else print "-" }'; }
ms() { awk -v u="$(field "$1" "$2")" 'BEGIN { if (u == "") print "-"; else printf "%.2f", u / 1000 }'; }
# a / b; "inf" when only b is 0 (nftables served nothing), "-" when there is nothing to compare.
ratio() { [[ $1 =~ ^[0-9.]+$ && ${2:-} =~ ^[0-9.]+$ ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else if (a > 0) print "inf"; else print "-" }' || echo "-"; }

echo
echo "Floods, client ns -> node ns -> pod ns: $SERVICES Services x $PER endpoints, probed svc-$T ($VIP:80, DNAT + masquerade from"
echo "the outside client); probe: $PROBE_RATE new connections/s for $DURATION s per stage, 4 s each; $(nproc) vCPUs; kernel $(uname -r);"
echo "whole measurement $(since "$run_started") s after setup"
echo "conntrack in the node namespace: $CT_SETTINGS"
echo
echo "| flood | variant | flood sent (pkt/s) | stage | attempts | succeeded | success rate | connect p50 (ms) | connect p99 (ms) | connect max (ms) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for f in $FLOODS; do
    for v in $VARIANTS; do
        name="$v-$f"
        for st in quiet during after; do
            r=${RES[$name-$st]}
            echo "| $f | $v | ${FLOODRATE[$name]} | $st | $(field "$r" attempts) | $(field "$r" ok) | $(rate "$r") % | $(ms "$r" connect_p50_us) | $(ms "$r" connect_p99_us) | $(ms "$r" connect_max_us) |"
        done
    done
done
if [[ " $VARIANTS " == *" flowgate "* && " $VARIANTS " == *" nftables "* ]]; then
    echo
    echo "flowgate / nftables (success rate: above 1 is better; connect p99: below 1 is better):"
    for f in $FLOODS; do
        for st in quiet during after; do
            a=${RES[flowgate-$f-$st]} b=${RES[nftables-$f-$st]}
            p99="-" # only when both connected at all
            [ "$(field "$a" ok)" != 0 ] && [ "$(field "$b" ok)" != 0 ] && p99=$(ratio "$(field "$a" connect_p99_us)" "$(field "$b" connect_p99_us)")
            echo "  $f, $st: success rate $(ratio "$(rate "$a")" "$(rate "$b")"), connect p99 $p99"
        done
    done
fi
echo
echo "what the data planes did:"
for f in $FLOODS; do
    for v in $VARIANTS; do
        name="$v-$f"
        if [ "$v" = nftables ]; then
            echo "  $name: conntrack after the flood: ${CT[$name-during]:-}; after the last stage: ${CT[$name-after]:-}"
        else
            echo "  $name: $(grep -h 'program counters\|flow tables' "$WORK/$name-rt.err" | sed 's/^realtraffic (Direct): //' | tr '\n' ';')"
        fi
        echo "  $name: $(grep -h '^synflood\|^newflows' "$WORK/$name.log" | head -1)"
        for st in quiet during after; do echo "    $st: $(grep -h '^probe' "$WORK/$name.log" | sed -n "$(( $(echo quiet during after | tr ' ' '\n' | grep -n "^$st$" | cut -d: -f1) ))p")"; done
    done
done
