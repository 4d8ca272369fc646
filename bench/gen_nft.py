#!/usr/bin/env python3
"""Writes the nftables ruleset upstream kube-proxy (nftables mode) would program for the synthetic
cluster of flowgate_cluster::synthetic (SERVICES ClusterIP Services with ENDPOINTS endpoints each,
every fourth a NodePort; clusterCIDR 10.0.0.0/8): the same table layout, maps, per-service and
per-endpoint chains and rules, so that loading it with `nft -f` costs what kube-proxy's first sync
costs.

Usage: gen_nft.py SERVICES ENDPOINTS > rules.nft"""
import hashlib
import ipaddress
import sys


def h(name):
    return hashlib.sha256(name.encode()).hexdigest()[:8].upper()


def main():
    services, per = int(sys.argv[1]), int(sys.argv[2])
    t = "ip kube-proxy"
    out = [
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f"add chain {t} mark-for-masquerade",
        f"add rule {t} mark-for-masquerade mark set mark or 0x4000",
        f"add chain {t} masquerading",
        f"add rule {t} masquerading mark and 0x4000 == 0 return",
        f"add rule {t} masquerading mark set mark xor 0x4000",
        f"add rule {t} masquerading masquerade fully-random",
        f"add chain {t} services",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add rule {t} nat-prerouting jump services",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add rule {t} nat-output jump services",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}",
        f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; }}",
        f"add set {t} cluster-ips {{ type ipv4_addr ; }}",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
    ]
    vip0 = int(ipaddress.IPv4Address("172.30.0.0"))
    ep0 = int(ipaddress.IPv4Address("10.64.0.0"))
    for i in range(services):
        vip = str(ipaddress.IPv4Address(vip0 + i + 1))
        base = f"bench/svc-{i}/tcp/http"
        svc_chain = f"service-{h(base)}-{base}"
        out.append(f"add chain {t} {svc_chain}")
        out.append(f"add rule {t} {svc_chain} ip daddr {vip} ip saddr != 10.0.0.0/8 jump mark-for-masquerade")
        ep_chains = []
        for e in range(per):
            ip = str(ipaddress.IPv4Address(ep0 + i * per + e))
            name = f"{base}__{ip}/8080"
            ch = f"endpoint-{h(name)}-{name}"
            ep_chains.append(ch)
            out.append(f"add chain {t} {ch}")
            out.append(f"add rule {t} {ch} ip saddr {ip} jump mark-for-masquerade")
            out.append(f"add rule {t} {ch} meta l4proto tcp dnat to {ip}:8080")
        vmap = ", ".join(f"{n} : goto {c}" for n, c in enumerate(ep_chains))
        out.append(f"add rule {t} {svc_chain} numgen random mod {per} vmap {{ {vmap} }}")
        out.append(f"add element {t} cluster-ips {{ {vip} }}")
        out.append(f"add element {t} service-ips {{ {vip} . tcp . 80 : goto {svc_chain} }}")
        if i % 4 == 0:
            ext = f"external-{h(base)}-{base}"
            out.append(f"add chain {t} {ext}")
            out.append(f"add rule {t} {ext} jump mark-for-masquerade")
            out.append(f"add rule {t} {ext} goto {svc_chain}")
            out.append(f"add element {t} service-nodeports {{ tcp . {30000 + (i // 4) % 2768} : goto {ext} }}")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
