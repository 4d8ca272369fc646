#!/usr/bin/env python3
"""Writes the rules upstream kube-proxy (iptables mode) would program for the synthetic cluster of
flowgate_cluster::synthetic, as one `iptables-restore` file: SERVICES ClusterIP Services (VIP
172.30.0.1+i, port 80/TCP) with ENDPOINTS endpoints each (10.64.0.0 + i*ENDPOINTS + e, port 8080),
every fourth a NodePort (30000 + i/4), clusterCIDR 10.0.0.0/8, masqueradeAll off.

The shape is kube-proxy's: in `nat`, KUBE-SERVICES with one rule per Service port
(`-d VIP -p tcp --dport 80 -j KUBE-SVC-<hash>`) in Service order, ending with the jump to
KUBE-NODEPORTS; each KUBE-SVC-* chain marks off-cluster sources for masquerade (KUBE-MARK-MASQ)
and picks an endpoint with `statistic --mode random` rules (probability 1/n, 1/(n-1), ..., last
unconditional) jumping to KUBE-SEP-* chains, which mark hairpin traffic and DNAT; NodePorts go
through KUBE-EXT-* chains; KUBE-POSTROUTING masquerades marked packets (`--random-fully`). In
`filter`, the KUBE-FORWARD / KUBE-SERVICES / KUBE-EXTERNAL-SERVICES / KUBE-NODEPORTS /
KUBE-PROXY-FIREWALL / KUBE-FIREWALL chains and their jumps from INPUT, FORWARD and OUTPUT (with every
Service having endpoints, the filter-table Service chains are empty, as in kube-proxy). Chain names
are kube-proxy's hashes (base32 of SHA-256, 16 characters).

Options:
  --udp-service T   Service T gets a second port, `udp` 80/UDP -> 8080 (the benchmark's packet-rate
                    flow), written as kube-proxy writes a second Service port.
  --endpoints-of T=N  Service T has only its first N endpoints (the benchmark's real pods).

Usage: gen_iptables.py SERVICES ENDPOINTS [--udp-service T] [--endpoints-of T=N] > rules.iptables"""
import base64
import hashlib
import ipaddress
import sys


def port_proto_hash(name, proto):
    return base64.b32encode(hashlib.sha256((name + proto).encode()).digest()).decode()[:16]


def sep_hash(name, proto, endpoint):
    return base64.b32encode(hashlib.sha256((name + proto + endpoint).encode()).digest()).decode()[:16]


def main():
    args = sys.argv[1:]
    udp_service = None
    only = {}
    positional = []
    while args:
        a = args.pop(0)
        if a == "--udp-service":
            udp_service = int(args.pop(0))
        elif a == "--endpoints-of":
            t, n = args.pop(0).split("=")
            only[int(t)] = int(n)
        else:
            positional.append(a)
    services, per = int(positional[0]), int(positional[1])
    vip0 = int(ipaddress.IPv4Address("172.30.0.0"))
    ep0 = int(ipaddress.IPv4Address("10.64.0.0"))
    cluster_cidr = "10.0.0.0/8"

    nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    nat_rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    services_rules = []  # KUBE-SERVICES, in order
    nodeport_rules = []
    svc_rules = []

    def service_port(i, port_name, proto, node_port):
        vip = str(ipaddress.IPv4Address(vip0 + i + 1))
        name = f"bench/svc-{i}:{port_name}"
        svc = "KUBE-SVC-" + port_proto_hash(name, proto)
        nat_chains.append(svc)
        services_rules.append(
            f'-A KUBE-SERVICES -d {vip}/32 -p {proto} -m comment --comment "{name} cluster IP" '
            f"-m {proto} --dport 80 -j {svc}"
        )
        svc_rules.append(
            f'-A {svc} ! -s {cluster_cidr} -d {vip}/32 -p {proto} -m comment --comment "{name} cluster IP" '
            f"-m {proto} --dport 80 -j KUBE-MARK-MASQ"
        )
        n = only.get(i, per)
        eps = [str(ipaddress.IPv4Address(ep0 + i * per + e)) for e in range(n)]
        for k, ip in enumerate(eps):
            endpoint = f"{ip}:8080"
            sep = "KUBE-SEP-" + sep_hash(name, proto, endpoint)
            nat_chains.append(sep)
            left = n - k
            stat = f" -m statistic --mode random --probability {1.0 / left:.10f}" if left > 1 else ""
            svc_rules.append(f'-A {svc} -m comment --comment "{name} -> {endpoint}"{stat} -j {sep}')
            svc_rules.append(f'-A {sep} -s {ip}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
            svc_rules.append(
                f'-A {sep} -p {proto} -m comment --comment "{name}" -m {proto} -j DNAT --to-destination {endpoint}'
            )
        if node_port is not None:
            ext = "KUBE-EXT-" + port_proto_hash(name, proto)
            nat_chains.append(ext)
            nodeport_rules.append(
                f'-A KUBE-NODEPORTS -p {proto} -m comment --comment "{name}" -m {proto} --dport {node_port} -j {ext}'
            )
            svc_rules.append(
                f'-A {ext} -m comment --comment "masquerade traffic for {name} external destinations" '
                "-j KUBE-MARK-MASQ"
            )
            svc_rules.append(f"-A {ext} -j {svc}")

    for i in range(services):
        node_port = 30000 + i // 4 if i % 4 == 0 and i // 4 < 2768 else None
        service_port(i, "http", "tcp", node_port)
        if i == udp_service:
            service_port(i, "udp", "udp", None)
    services_rules.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule '
        'in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )

    out = ["*filter"]
    for c in [
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-KUBELET-CANARY",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-CANARY",
        "KUBE-PROXY-FIREWALL",
        "KUBE-SERVICES",
    ]:
        out.append(f":{c} - [0:0]")
    out += [
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        "-A INPUT -j KUBE-FIREWALL",
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -j KUBE-FIREWALL",
        '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" '
        "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
        "*nat",
    ]
    out += [f":{c} - [0:0]" for c in nat_chains]
    out += nat_rules + services_rules + nodeport_rules + svc_rules
    out.append("COMMIT")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
