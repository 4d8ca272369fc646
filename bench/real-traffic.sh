#!/usr/bin/env bash
# Real traffic between network namespaces at SERVICES Services (issue 4): the same node measured
# four ways in one run, on four copies of the same topology that exist side by side
#
#   client ns --veth-- node ns (router) --veth-- backend pod ns (PER pods)
#
#   plain     no Service rules at all: the client talks to the pods' addresses directly;
#   iptables  the Services as kube-proxy-shaped iptables rules (bench/gen_iptables.py), loaded
#             with iptables-restore in the node namespace (iptables-nft by default);
#   nftables  the Services as kube-proxy's nftables ruleset (bench/gen_nft.py), `nft -f`;
#   flowgate  the compiled policy of the same Services programmed by the eBPF backend, with
#             fg_uplink_ingress on the node's uplink and fg_from_endpoint on each pod's host veth
#             (crates/ebpf/examples/realtraffic.rs), as shipped: allowed packets to the pods are
#             handed to them by the programs (direct delivery, bpf/lib/deliver.h);
#   flowgate-routed  the same with direct delivery off (`localDelivery: Routed`): every packet
#             goes through the node's IP stack, as in the other variants — the programs' own cost.
#
# The Services are flowgate_cluster::synthetic's (VIP 172.30.0.1+i:80, endpoints
# 10.64.0.0+i*PER+e:8080, every fourth a NodePort, clusterCIDR 10.0.0.0/8); the probed Service T
# (the middle one, so the iptables rule walk is the average one) has as its PER endpoints the real
# pods, and a second port 80/UDP for the packet-rate flow.
#
# Measured per variant, REPS rounds, the variants interleaved within each round (so that noise
# from whatever else runs on the machine spreads over all of them); medians are reported:
#   1. new TCP connections per second to the Service (connect, send 16 bytes, read 16 bytes,
#      close; CONCURRENCY connections in flight over CLIENT_THREADS threads), DURATION seconds
#      after WARMUP, from two kinds of client:
#      - "cluster": sources in the cluster CIDR (10.128.0.1-254, standing for pods elsewhere),
#        round-robin, so no 4-tuple repeats within a run: DNAT only (no masquerade, as kube-proxy
#        and flowgate both decide for cluster sources); every connection is a first packet;
#      - "outside": one source outside the cluster CIDR (198.18.0.2): DNAT + masquerade. Its
#        ports repeat after ~32k connections (Linux picks even ports for connect); conntrack
#        re-evaluates a SYN on a closed tuple, flowgate's flow table reuses the cached flow.
#   2. established-flow packet rate: one UDP flow of 18-byte datagrams (64-byte frames) from the
#      outside client to the Service (DNAT + masquerade), sent with sendmmsg from one thread pinned
#      to CPU 0, counted by receivers in the pods pinned to CPU 1.
# The traffic generator is crates/ebpf/examples/trafficgen.rs.
#
# Everything it makes is named flowgate-bench-<pid>-*, uses 198.18.0.0/15 (RFC 2544 benchmarking)
# and the synthetic cluster's 10.0.0.0/8 and 172.30.0.0/16 addresses only inside its own
# namespaces (no namespace has a route to anything else; the nodes blackhole the ranges), and is
# removed on exit, also on failure or Ctrl-C. Nothing is attached, loaded or changed in the root
# namespace; the eBPF maps live in a private bpffs.
#
# Usage (as root): bench/real-traffic.sh [SERVICES]       (default 10000)
# Environment: PER (endpoints per Service = backend pods, default 2), DURATION (5), WARMUP (1),
#   REPS (3), CONCURRENCY (16), CLIENT_THREADS (2), SERVER_THREADS (1), CLUSTER_SOURCES (254),
#   IPTABLES_RESTORE (iptables-nft-restore; or iptables-legacy-restore),
#   VARIANTS ("plain iptables nftables flowgate flowgate-routed"), MEASURE ("conn pkts flows": which of the
#   measurements to run; the others are reported as "-").
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

SERVICES=${1:-10000}
PER=${PER:-2}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
REPS=${REPS:-3}
CONCURRENCY=${CONCURRENCY:-16}
CLIENT_THREADS=${CLIENT_THREADS:-2}
SERVER_THREADS=${SERVER_THREADS:-1}
CLUSTER_SOURCES=${CLUSTER_SOURCES:-254}
IPTABLES_RESTORE=${IPTABLES_RESTORE:-iptables-nft-restore}
VARIANTS=${VARIANTS:-plain iptables nftables flowgate flowgate-routed}
MEASURE=${MEASURE:-conn pkts flows}
measuring() { [[ " $MEASURE " == *" $1 "* ]]; }

[ "$(id -u)" = 0 ] || { echo "real-traffic.sh: run as root (namespaces, eBPF)" >&2; exit 1; }
missing=()
command -v nft >/dev/null || missing+=(nftables)
command -v "$IPTABLES_RESTORE" >/dev/null || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

echo "== building the traffic generator and the flowgate loader (release)" >&2
cargo build -q --release -j2 -p flowgate-ebpf --example trafficgen --example realtraffic
TG=$PWD/target/release/examples/trafficgen
RT=$PWD/target/release/examples/realtraffic

PREFIX="flowgate-bench-$$-"
WORK=$(mktemp -d /tmp/flowgate-bench-$$.XXXXXX)
PIDS=()
# Every process started in the background is also listed in $WORK/pids (some start in subshells).
track() { echo "$1" >>"$WORK/pids"; }
cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}" $(cat "$WORK/pids" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX"); do
        ip netns del "$ns" || echo "real-traffic.sh: could not delete namespace $ns" >&2
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export XTABLES_LOCKFILE=$WORK/xtables.lock # never wait on (or hold) the root namespace's lock

int2ip() { local n=$1; echo "$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
median() { printf '%s\n' "$@" | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }' || true; }

# The probed Service: the middle one, a ClusterIP Service (not a NodePort: i % 4 != 0).
T=$((SERVICES / 2 + 1))
while ((T % 4 == 0)); do T=$((T + 1)); done
VIP=$(int2ip $((0xAC1E0000 + T + 1)))
POD_IPS=()
for ((e = 0; e < PER; e++)); do POD_IPS+=("$(int2ip $((0x0A400000 + T * PER + e)))"); done
NODE_IP=198.18.0.1
CLIENT_IP=198.18.0.2
GATEWAY=198.18.1.1 # the node's address on every pod veth (the pods' default gateway)
CLUSTER_NET=10.128.0.0/24 # the client's sources inside the cluster CIDR (AnyIP: the whole /24 is local)

echo "== generating the rulesets: $SERVICES Services x $PER endpoints; probed: svc-$T, $VIP:80 tcp+udp -> ${POD_IPS[*]}" >&2
python3 bench/gen_iptables.py "$SERVICES" "$PER" --udp-service "$T" >"$WORK/rules.iptables"
python3 bench/gen_nft.py "$SERVICES" "$PER" >"$WORK/rules.nft"
# The probed Service's second port, 80/UDP, written as kube-proxy's nftables mode writes a port.
python3 - "$T" "$PER" "$VIP" >>"$WORK/rules.nft" <<'EOF'
import ipaddress, sys
sys.path.insert(0, "bench")
from gen_nft import h
i, per, vip = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = "ip kube-proxy"
base = f"bench/svc-{i}/udp/udp"
svc_chain = f"service-{h(base)}-{base}"
print(f"add chain {t} {svc_chain}")
print(f"add rule {t} {svc_chain} ip daddr {vip} ip saddr != 10.0.0.0/8 jump mark-for-masquerade")
eps = []
for e in range(per):
    ip = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.64.0.0")) + i * per + e))
    name = f"{base}__{ip}/8080"
    ch = f"endpoint-{h(name)}-{name}"
    eps.append(ch)
    print(f"add chain {t} {ch}")
    print(f"add rule {t} {ch} ip saddr {ip} jump mark-for-masquerade")
    print(f"add rule {t} {ch} meta l4proto udp dnat to {ip}:8080")
vmap = ", ".join(f"{n} : goto {c}" for n, c in enumerate(eps))
print(f"add rule {t} {svc_chain} numgen random mod {per} vmap {{ {vmap} }}")
print(f"add element {t} service-ips {{ {vip} . udp . 80 : goto {svc_chain} }}")
EOF
echo "   iptables: $(grep -c '^-A' "$WORK/rules.iptables") rules ($IPTABLES_RESTORE); nftables: $(grep -c '^add rule' "$WORK/rules.nft") rules, $(grep -c '^add element' "$WORK/rules.nft") map/set elements" >&2

# --- topology ---------------------------------------------------------------------------------
# Namespaces of variant v: ${PREFIX}v-node, -client, -pod0...
node_ns() { echo "${PREFIX}$1-node"; }
client_ns() { echo "${PREFIX}$1-client"; }
pod_ns() { echo "${PREFIX}$1-pod$2"; }

make_topology() {
    local v=$1 e N C P ip
    N=$(node_ns "$v") C=$(client_ns "$v")
    ip netns add "$N"
    ip netns add "$C"
    # The node routes, and accepts packets whose source is its own address (flowgate masquerades
    # on ingress, before routing).
    ip netns exec "$N" sysctl -qw net.ipv4.ip_forward=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
        net.ipv4.conf.all.accept_local=1 net.ipv4.conf.default.accept_local=1 \
        net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0
    ip -n "$N" link set lo up
    ip -n "$N" link add uplink0 type veth peer name eth0 netns "$C"
    ip -n "$N" addr add "$NODE_IP/24" dev uplink0
    ip -n "$N" link set uplink0 up
    ip -n "$N" route add "$CLUSTER_NET" via "$CLIENT_IP"
    ip -n "$C" link set lo up
    ip -n "$C" addr add "$CLIENT_IP/24" dev eth0
    ip -n "$C" link set eth0 up
    ip -n "$C" route add 172.30.0.0/16 via "$NODE_IP"
    ip -n "$C" route add 10.64.0.0/10 via "$NODE_IP"
    ip -n "$C" route add local "$CLUSTER_NET" dev lo
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
        ip -n "$P" route add "$CLUSTER_NET" via "$GATEWAY" dev eth0
    done
    # Nothing in the test ranges leaves the node except over the routes above.
    ip -n "$N" route add blackhole 10.0.0.0/8
    ip -n "$N" route add blackhole 172.30.0.0/16
    ip -n "$N" route add blackhole 198.18.0.0/15
}

wait_file() { # FILE SECONDS PID
    local deadline=$((SECONDS + $2))
    until [ -s "$1" ]; do
        ((SECONDS < deadline)) || { echo "real-traffic.sh: timed out waiting for $1" >&2; return 1; }
        kill -0 "$3" 2>/dev/null || { echo "real-traffic.sh: process $3 died before $1" >&2; return 1; }
        sleep 0.05
    done
}

start_servers() { # VARIANT
    local e
    for ((e = 0; e < PER; e++)); do
        ip netns exec "$(pod_ns "$1" "$e")" "$TG" serve --port 8080 --threads "$SERVER_THREADS" \
            --ready "$WORK/$1-serve$e.ready" &
        PIDS+=($!)
        track $!
        wait_file "$WORK/$1-serve$e.ready" 10 $!
    done
}

conn_once() { # VARIANT KIND(cluster|outside) TARGET... -> one number on stdout
    local v=$1 kind=$2 sources=()
    shift 2
    [ "$kind" = cluster ] && sources=(--source-base "$(int2ip $((0x0A800001)))" --sources "$CLUSTER_SOURCES")
    echo "[$v, $kind]" >&2
    ip netns exec "$(client_ns "$v")" "$TG" connrate --duration "$DURATION" --warmup "$WARMUP" \
        --concurrency "$CONCURRENCY" --threads "$CLIENT_THREADS" "${sources[@]}" "$@"
}

udp_once() { # VARIANT TARGET [GENERATOR...] -> one number on stdout (sum over the pods' receivers)
    local v=$1 target=$2 e pids=() total=0
    shift 2
    local gen=("$@")
    [ ${#gen[@]} -eq 0 ] && gen=(udpflood)
    echo "[$v, ${gen[0]}]" >&2
    for ((e = 0; e < PER; e++)); do
        rm -f "$WORK/sink$e.ready" "$WORK/sink$e.out"
        ip netns exec "$(pod_ns "$v" "$e")" "$TG" sink --port 8080 --warmup "$WARMUP" --duration "$DURATION" \
            --timeout "$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { print w + d + 5 }')" --cpu 1 \
            --ready "$WORK/sink$e.ready" >"$WORK/sink$e.out" &
        pids+=($!)
        track $!
        wait_file "$WORK/sink$e.ready" 10 $!
    done
    ip netns exec "$(client_ns "$v")" "$TG" "${gen[@]}" \
        --duration "$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { print w + d + 1 }')" --cpu 0 "$target" >/dev/null
    for pid in "${pids[@]}"; do wait "$pid"; done
    for ((e = 0; e < PER; e++)); do total=$((total + $(cat "$WORK/sink$e.out"))); done
    echo "$total"
}

# --- set every variant up, one after the other ------------------------------------------------
declare -A LOAD TCP_TARGETS UDP_TARGET
run_started=$(now)
rt_pids=()
for v in $VARIANTS; do
    echo "== setting up $v" >&2
    make_topology "$v"
    N=$(node_ns "$v")
    TCP_TARGETS[$v]="$VIP:80" UDP_TARGET[$v]="$VIP:80"
    case $v in
    plain)
        LOAD[$v]="-"
        TCP_TARGETS[$v]=""
        for ip in "${POD_IPS[@]}"; do TCP_TARGETS[$v]+="$ip:8080 "; done
        UDP_TARGET[$v]="${POD_IPS[0]}:8080"
        ;;
    iptables)
        s=$(now)
        ip netns exec "$N" "$IPTABLES_RESTORE" <"$WORK/rules.iptables"
        LOAD[$v]="$(since "$s") s"
        echo "   $IPTABLES_RESTORE: ${LOAD[$v]}" >&2
        ;;
    nftables)
        s=$(now)
        ip netns exec "$N" nft -f "$WORK/rules.nft"
        LOAD[$v]="$(since "$s") s"
        echo "   nft -f: ${LOAD[$v]}" >&2
        ;;
    flowgate | flowgate-routed)
        s=$(now)
        pod_args=()
        for ((e = 0; e < PER; e++)); do pod_args+=(--pod "veth$e=$(pod_ns "$v" "$e")"); done
        delivery=Direct
        [ "$v" = flowgate-routed ] && delivery=Routed
        "$RT" --netns "$N" --uplink uplink0 --node-ip "$NODE_IP" --services "$SERVICES" --per "$PER" \
            --target "$T" "${pod_args[@]}" --stop-file "$WORK/stop" --local-delivery "$delivery" >"$WORK/$v-rt.out" &
        rt_pids+=($!)
        PIDS+=($!)
        track $!
        wait_file "$WORK/$v-rt.out" 300 $!
        LOAD[$v]="$(since "$s") s ($(sed 's/^ready //; s/_s=/ /g; s/ \([a-z]\)/ s, \1/g' "$WORK/$v-rt.out") s)"
        echo "   $v: ${LOAD[$v]}" >&2
        ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
    start_servers "$v"
done

# --- measure: REPS rounds, every variant in each ----------------------------------------------
declare -A CONN_C CONN_O PKTS FLOWS
for ((r = 1; r <= REPS; r++)); do
    echo "== round $r of $REPS" >&2
    for v in $VARIANTS; do
        read -r -a targets <<<"${TCP_TARGETS[$v]}"
        if measuring conn; then
            CONN_C[$v]+="$(conn_once "$v" cluster "${targets[@]}") "
            CONN_O[$v]+="$(conn_once "$v" outside "${targets[@]}") "
        fi
        measuring pkts && PKTS[$v]+="$(udp_once "$v" "${UDP_TARGET[$v]}") "
        # New flows without a TCP stack: a new 5-tuple per datagram from the cluster sources.
        measuring flows && FLOWS[$v]+="$(udp_once "$v" "${UDP_TARGET[$v]}" newflows --source-base "$(int2ip $((0x0A800001)))" \
            --sources "$CLUSTER_SOURCES") "
    done
done
if [ ${#rt_pids[@]} -gt 0 ]; then
    touch "$WORK/stop"
    for pid in "${rt_pids[@]}"; do wait "$pid"; done # each prints its programs' counters
fi
# Evidence for what limited each variant, over the whole run: the node's conntrack statistics
# (per namespace) and the pods' and client's TCP counters that tell of 4-tuple reuse trouble.
echo "== kernel counters over the whole run (nonzero)" >&2
for v in $VARIANTS; do
    ct=$(ip netns exec "$(node_ns "$v")" cat /proc/net/stat/nf_conntrack 2>/dev/null | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
if rows:
    names, sums = rows[0], [0] * len(rows[0])
    for r in rows[1:]:
        for i, x in enumerate(r):
            sums[i] += int(x, 16)
    print(" ".join(f"{n}={v}" for n, v in zip(names, sums) if v and n != "entries"))')
    tcp=""
    for ns in "$(client_ns "$v")" $(for ((e = 0; e < PER; e++)); do pod_ns "$v" "$e"; done); do
        tcp+="${ns#"${PREFIX}$v-"}: $(ip netns exec "$ns" nstat -asz 2>/dev/null | awk '$2 != 0 && $1 ~ /^TcpExt(TW|TWRecycled|TWKilled|PAWS.*|TCPTimeWaitOverflow|TCPChallengeACK|TCPSYNChallenge|TCPSynRetrans|ListenDrops|ListenOverflows)$/ { printf "%s=%s ", substr($1, 7), $2 }')"
        tcp+="; "
    done
    echo "   $v: conntrack: ${ct:-none}; tcp: $tcp" >&2
done

# --- the table --------------------------------------------------------------------------------
med() { median $1; }
ratio() { [[ $1 =~ ^[0-9.]+$ && ${2:-} =~ ^[0-9.]+$ ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }' || echo "-"; }
declare -A MC MO MP MF
for v in $VARIANTS; do
    MC[$v]=$(med "${CONN_C[$v]:-}") MO[$v]=$(med "${CONN_O[$v]:-}") MP[$v]=$(med "${PKTS[$v]:-}") MF[$v]=$(med "${FLOWS[$v]:-}")
done
echo
echo "Real traffic, client ns -> node ns -> pod ns: $SERVICES Services x $PER endpoints, probed svc-$T ($VIP);"
echo "medians of $REPS interleaved rounds of ${DURATION} s each; $(nproc) vCPUs; kernel $(uname -r); iptables: $IPTABLES_RESTORE;"
echo "whole run $(since "$run_started") s after the build"
echo
echo "| variant | rules loaded in | new conn/s, cluster client (DNAT) | vs plain | new conn/s, outside client (DNAT+masq) | vs plain | established UDP pkt/s (DNAT+masq) | vs plain |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for v in $VARIANTS; do
    echo "| $v | ${LOAD[$v]} | ${MC[$v]} | $(ratio "${MC[$v]}" "${MC[plain]:-}") | ${MO[$v]} | $(ratio "${MO[$v]}" "${MO[plain]:-}") | ${MP[$v]} | $(ratio "${MP[$v]}" "${MP[plain]:-}") |"
done
echo
echo "| variant | new flows/s delivered (UDP, a new 5-tuple per datagram, cluster sources, DNAT) | vs plain |"
echo "| --- | --- | --- |"
for v in $VARIANTS; do echo "| $v | ${MF[$v]} | $(ratio "${MF[$v]}" "${MF[plain]:-}") |"; done
echo
echo "every round (conn/s cluster | conn/s outside | pkt/s | new flows/s):"
for v in $VARIANTS; do echo "  $v: ${CONN_C[$v]:-}| ${CONN_O[$v]:-}| ${PKTS[$v]:-}| ${FLOWS[$v]:-}"; done
if [ -n "${MC[flowgate]:-}" ]; then
    echo
    for base in iptables nftables; do
        [ -n "${MC[$base]:-}" ] && echo "flowgate vs $base, new conn/s: cluster $(ratio "${MC[flowgate]}" "${MC[$base]}"), outside $(ratio "${MO[flowgate]}" "${MO[$base]}"), new flows $(ratio "${MF[flowgate]}" "${MF[$base]}") (target: >= $([ $base = iptables ] && echo 3 || echo 1)x)"
    done
    [ -n "${MP[plain]:-}" ] && echo "flowgate vs plain routing, established pkt/s: $(ratio "${MP[flowgate]}" "${MP[plain]}") (target: >= 0.90x)"
    [ -n "${MP[plain]:-}" ] && [ -n "${MP[flowgate-routed]:-}" ] &&
        echo "flowgate-routed (every packet through the node's stack) vs plain routing, established pkt/s: $(ratio "${MP[flowgate-routed]}" "${MP[plain]}")"
fi
# The packet rates also as the median of each round's ratio to plain routing measured in the same
# round (seconds apart): less exposed to the machine's drift over the run than a ratio of medians.
if [ -n "${PKTS[plain]:-}" ]; then
    echo
    read -r -a base <<<"${PKTS[plain]}"
    for v in $VARIANTS; do
        [ "$v" = plain ] && continue
        read -r -a mine <<<"${PKTS[$v]:-}"
        per_round=()
        for ((r = 0; r < ${#mine[@]} && r < ${#base[@]}; r++)); do
            per_round+=("$(awk -v a="${mine[r]}" -v b="${base[r]}" 'BEGIN { printf "%.3f", a / b }')")
        done
        echo "established pkt/s, $v / plain per round: ${per_round[*]}; median $(median "${per_round[@]}")"
    done
fi
