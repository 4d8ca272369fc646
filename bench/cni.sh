#!/usr/bin/env bash
# Benchmark of the CNI plugin (issue 5), all plugins in one run on the same machine: 100 pods
# added then deleted through flowgate-cni (the real flowgated with the eBPF data plane in a node
# namespace: veth, addresses, routes, store record, endpoint bound and its program attached before
# ADD returns), through Debian's reference bridge plugin with host-local IPAM and ipMasq (the
# baseline), and, to show what the program's attachment costs, flowgate-cni with an agent that runs
# the model data plane only (everything but the kernel program). Each ADD and DEL is timed as a runtime sees it: the plugin process started with the
# CNI environment and the configuration on stdin, until it exits. Prints median and p99 per plugin
# and the ratios. Everything is made in namespaces named flowgate-bench-<pid>-* and removed after.
# Usage (as root): bench/cni.sh [PODS]
set -euo pipefail
cd "$(dirname "$0")/.."
pods="${1:-100}"
[ -x /usr/lib/cni/bridge ] || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q containernetworking-plugins; }
command -v iptables >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables

cargo build -q --release -j2 -p flowgate-cli
dir=$(mktemp -d); node="flowgate-bench-$$-node"; node2="flowgate-bench-$$-model"; pid=""; pid2=""
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && sleep 0.3
    [ -n "${pid2:-}" ] && kill "$pid2" 2>/dev/null && sleep 0.3
    for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^flowgate-bench-$$-"); do ip netns del "$n"; done
    umount "$dir/bpffs" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "$node"
ip -n "$node" link set lo up
ip netns add "$node2"
ip -n "$node2" link set lo up
mkdir -p "$dir/m" "$dir/bpffs"
mount -t bpf bpf "$dir/bpffs"
cat > "$dir/m/node.yaml" <<'EOF'
apiVersion: v1
kind: Node
metadata: {name: node}
spec: {podCIDR: 10.244.0.0/16}
status:
  addresses:
  - {type: InternalIP, address: 192.168.77.1}
EOF
ip netns exec "$node" target/release/flowgated --manifests "$dir/m" --node node --socket "$dir/api.sock" \
    --state-dir "$dir/state" --healthz-bind-address "" --metrics-bind-address "" \
    --dataplane ebpf --bpffs "$dir/bpffs/flowgate" 2>"$dir/agent.log" &
pid=$!
ip netns exec "$node2" target/release/flowgated --manifests "$dir/m" --node node --socket "$dir/api2.sock" \
    --state-dir "$dir/state2" --healthz-bind-address "" --metrics-bind-address "" --dataplane model \
    2>"$dir/agent2.log" &
pid2=$!
for s in api api2; do
    until target/release/flowgate status --socket "$dir/$s.sock" 2>/dev/null | grep -q '"syncs": [1-9]'; do sleep 0.05; done
done

cat > "$dir/flowgate.json" <<EOF
{"cniVersion": "1.0.0", "name": "fgbench", "type": "flowgate-cni", "socket": "$dir/api.sock",
 "ipam": {"ranges": [[{"subnet": "10.244.0.0/16"}]]}, "dns": {"nameservers": ["10.96.0.10"]}}
EOF
cat > "$dir/model.json" <<EOF
{"cniVersion": "1.0.0", "name": "fgbench", "type": "flowgate-cni", "socket": "$dir/api2.sock",
 "ipam": {"ranges": [[{"subnet": "10.246.0.0/16"}]]}, "dns": {"nameservers": ["10.96.0.10"]}}
EOF
cat > "$dir/bridge.json" <<EOF
{"cniVersion": "1.0.0", "name": "brbench", "type": "bridge", "bridge": "fgbench0", "isGateway": true,
 "ipMasq": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.245.0.0/16"}]],
 "dataDir": "$dir/host-local"}}
EOF

# The harness enters the node's network namespace (where the bridge plugin makes its bridge;
# flowgate's plugin only talks to the agent's socket) but stays in the machine's mount namespace, so
# the pods' namespaces it names are visible to the agent; it times each plugin process.
python3 - "$pods" "$dir" "$$" "$(pwd)/target/release/flowgate-cni" "$node" <<'PY'
import ctypes, json, os, statistics, subprocess, sys, time
pods, d, pid, fgcni, node = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
libc = ctypes.CDLL(None, use_errno=True)
with open(f"/run/netns/{node}") as f:
    if libc.setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
        sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")

def run(plugin, conf, command, cid, netns):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    t = time.perf_counter()
    p = subprocess.run([plugin], input=conf, env=env, capture_output=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{plugin} {command} {cid}: {p.stdout.decode()} {p.stderr.decode()}")
    return dt * 1000

def bench(name, plugin, conf):
    conf = open(conf, "rb").read()
    nss = [f"flowgate-bench-{pid}-{name}-{i}" for i in range(pods)]
    for n in nss:
        subprocess.run(["ip", "netns", "add", n], check=True)
    add = [run(plugin, conf, "ADD", f"{name}{i}", f"/run/netns/{n}") for i, n in enumerate(nss)]
    dele = [run(plugin, conf, "DEL", f"{name}{i}", f"/run/netns/{n}") for i, n in enumerate(nss)]
    for n in nss:
        subprocess.run(["ip", "netns", "del", n], check=True)
    return add, dele

def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]

res = {}
# Alternate the order so neither plugin always runs on a colder machine.
res["bridge"] = bench("br", "/usr/lib/cni/bridge", f"{d}/bridge.json")
res["flowgate"] = bench("fg", fgcni, f"{d}/flowgate.json")
res["model"] = bench("fm", fgcni, f"{d}/model.json")
print(f"{pods} pods, ADD then DEL each, times in ms (process start to exit, as a runtime sees it)")
print(f"{'plugin':<38} {'ADD median':>10} {'ADD p99':>8} {'DEL median':>10} {'DEL p99':>8}")
rows = {"bridge": "bridge + host-local + ipMasq (Debian)", "flowgate": "flowgate-cni + flowgated (eBPF)",
        "model": "  same, model data plane (no program)"}
for k in ["bridge", "flowgate", "model"]:
    a, dl = res[k]
    print(f"{rows[k]:<38} {statistics.median(a):>10.2f} {p99(a):>8.2f} {statistics.median(dl):>10.2f} {p99(dl):>8.2f}")
fa, fd = res["flowgate"]; ba, bd = res["bridge"]
print(f"ratio flowgate/bridge: ADD median {statistics.median(fa)/statistics.median(ba):.2f}x (target <= 0.33x), "
      f"ADD p99 {p99(fa)/p99(ba):.2f}x, DEL median {statistics.median(fd)/statistics.median(bd):.2f}x, "
      f"DEL p99 {p99(fd)/p99(bd):.2f}x")
ma, md = res["model"]
print(f"ratio model data plane/bridge: ADD median {statistics.median(ma)/statistics.median(ba):.2f}x, "
      f"DEL median {statistics.median(md)/statistics.median(bd):.2f}x")
PY
