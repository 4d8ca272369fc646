#!/usr/bin/env python3
"""Writes a synthetic cluster for benchmarks: node-a, N Services (ClusterIP, every 4th a NodePort,
every 8th with an external IP) with E endpoints each, and P probes hitting them.

Usage: gen_cluster.py OUTDIR SERVICES ENDPOINTS PROBES
Writes OUTDIR/cluster.json (one v1 List) and OUTDIR/probes.jsonl."""
import ipaddress
import json
import os
import sys


def main():
    out, services, endpoints, probes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(out, exist_ok=True)
    base_vip = int(ipaddress.IPv4Address("172.30.0.0"))
    base_ep = int(ipaddress.IPv4Address("10.64.0.0"))
    items = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "a"}},
         "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}},
        {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "nftables",
         "clusterCIDR": "10.0.0.0/8"},
        {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
         "spec": {"cidrs": ["172.30.0.0/16"]}},
    ]
    for i in range(services):
        vip = str(ipaddress.IPv4Address(base_vip + 1 + i))
        spec = {"clusterIP": vip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        if i % 4 == 0:
            spec["type"] = "NodePort"
            spec["ports"][0]["nodePort"] = 30000 + (i // 4) % 30000
        if i % 8 == 0:
            spec["externalIPs"] = [str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("192.168.128.0")) + i // 8))]
        items.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}", "namespace": "bench"}, "spec": spec})
        eps = []
        for e in range(endpoints):
            eps.append({"addresses": [str(ipaddress.IPv4Address(base_ep + i * endpoints + e))],
                        "nodeName": "node-a" if e == 0 else "node-b", "conditions": {"ready": True}})
        items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": f"svc-{i}-x", "namespace": "bench", "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
                      "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps})
    with open(os.path.join(out, "cluster.json"), "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)
    with open(os.path.join(out, "probes.jsonl"), "w") as f:
        for p in range(probes):
            i = (p * 7919) % services
            vip = str(ipaddress.IPv4Address(base_vip + 1 + i))
            src = "10.1.0.5" if p % 2 else "203.0.113.7"
            f.write(json.dumps({"id": p, "from": f"{src}:{40000 + p % 20000}", "to": f"{vip}:80"}) + "\n")


if __name__ == "__main__":
    main()
