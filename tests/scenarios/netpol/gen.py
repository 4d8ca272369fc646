#!/usr/bin/env python3
"""Generate the NetworkPolicy scenario files (tests/scenarios/NN-netpol-*.yaml).

Run from anywhere: `python3 tests/scenarios/netpol/gen.py`. It (re)writes every file listed below into
tests/scenarios/ and removes nothing else.

Where the expectations come from
--------------------------------
The expectations are written by hand from the Kubernetes documentation
(concepts/services-networking/network-policies, the networking.k8s.io/v1 API reference of
NetworkPolicySpec, NetworkPolicyPeer, NetworkPolicyPort and IPBlock, and the label-selector rules of
concepts/overview/working-with-objects/labels) and from the way the upstream e2e suite
(kubernetes/kubernetes test/e2e/network/netpol: network_policy.go, model.go, reachability.go) states
them: start from "everything reachable", then apply a few reachability operations per policy
(`expect_all_ingress`, `expect_all_egress`, `expect_peer`, `expect`). There is deliberately no
NetworkPolicy engine here; an expectation is only as good as the operations written for its case, so
each case says in its description which documented rule it pins down.

The x/y/z model (files named *netpol-xyz-*)
------------------------------------------
As upstream e2e: namespaces x, y, z (labels `ns: <name>`, `kubernetes.io/metadata.name: <name>`),
pods a, b, c in each (label `pod: <name>`), all on node-a, each with one container `cont-80-81`
serving 80 and 81 over TCP, UDP and SCTP, ports named `serve-<port>-<proto>`. Every probe of an x/y/z
file goes from one of the nine pod IPs to another (or the same) one, on port 80 or 81, tcp/udp/sctp,
so a kernel test can replay each probe as a real connection. Each file has a full 9x9 table for TCP
port 80 and further full tables where the policy tells ports or protocols apart.

Conventions of every table (the trace contract, docs/trace.md, and README.md here):
- allowed: verdict allow, deliver pod, dnat [], masquerade false;
- denied: verdict drop, no deliver;
- a pod to its own address never leaves the pod and is always allowed (documented as "a pod cannot
  block access to itself"); upstream e2e ignores loopback cells, we pin them to allowed, which the
  emitter applies after each case's operations (`allow_loopback`).

Other files (*netpol-<topic>*, no "xyz") cover what the model cannot show: the node's own traffic,
hostNetwork pods, clients outside the cluster, pods on other nodes, egress to external addresses,
dual-stack, and invalid policies (`error: true`).
"""

import os
import sys

import yaml

OUT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NAMESPACES = ["x", "y", "z"]
POD_NAMES = ["a", "b", "c"]
ALL_PODS = [f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES]
POD_IP = {
    "x/a": "10.0.1.11", "x/b": "10.0.1.12", "x/c": "10.0.1.13",
    "y/a": "10.0.1.21", "y/b": "10.0.1.22", "y/c": "10.0.1.23",
    "z/a": "10.0.1.31", "z/b": "10.0.1.32", "z/c": "10.0.1.33",
}
IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.53"
NODE_IP = "192.168.0.2"


# ---------------------------------------------------------------------------------------------------
# YAML output: small mappings and scalar lists in flow style, descriptions folded.


class Folded(str):
    pass


class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def _is_scalar(v):
    return v is None or isinstance(v, (str, int, float, bool))


def _repr_dict(dumper, data):
    flow = (
        0 < len(data) <= 4
        and all(_is_scalar(v) and not isinstance(v, Folded) for v in data.values())
        and sum(len(str(k)) + len(str(v)) for k, v in data.items()) < 70
    )
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _repr_list(dumper, data):
    flow = all(_is_scalar(v) for v in data) and sum(len(str(v)) for v in data) < 70
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _repr_folded(dumper, data):
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style=">")


def _repr_str(dumper, data):
    # YAML 1.1 readers (go-yaml v2, for one) take y/n/yes/no/on/off as booleans: quote them.
    style = "'" if data.lower() in ("y", "n", "yes", "no", "on", "off", "true", "false") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


Dumper.add_representer(str, _repr_str)
Dumper.add_representer(dict, _repr_dict)
Dumper.add_representer(list, _repr_list)
Dumper.add_representer(Folded, _repr_folded)


def write(filename, doc):
    text = yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
    with open(os.path.join(OUT_DIR, filename), "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------------
# Manifests.


def node(name="node-a", addresses=(NODE_IP,)):
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]},
    }


def kube_proxy(cluster_cidr="10.0.0.0/8"):
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clusterCIDR": cluster_cidr,
        "detectLocalMode": "ClusterCIDR",
    }


def namespace(name, labels=None):
    lab = {"kubernetes.io/metadata.name": name}
    lab.update(labels or {})
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": lab}}


def pod(ns, name, labels, ips, node_name="node-a", ports=None, host_network=False, container="main"):
    cont = {"name": container, "image": IMAGE}
    if ports:
        cont["ports"] = ports
    spec = {"nodeName": node_name}
    if host_network:
        spec["hostNetwork"] = True
    spec["containers"] = [cont]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": spec,
        "status": {"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
    }


def xyz_pod(pod_string):
    ns, name = pod_string.split("/")
    ports = [
        {"containerPort": port, "protocol": proto, "name": f"serve-{port}-{proto.lower()}"}
        for port in (80, 81)
        for proto in ("TCP", "UDP", "SCTP")
    ]
    return pod(ns, name, {"pod": name}, [POD_IP[pod_string]], ports=ports, container="cont-80-81")


def xyz_base():
    docs = [node(), kube_proxy()]
    docs += [namespace(ns, {"ns": ns}) for ns in NAMESPACES]
    docs += [xyz_pod(p) for p in ALL_PODS]
    return docs


def netpol(ns, name, pod_selector, ingress=None, egress=None, types=None):
    """A NetworkPolicy; `None` leaves a field out, `[]` writes an explicit empty list."""
    spec = {"podSelector": pod_selector}
    if types is not None:
        spec["policyTypes"] = types
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


# Selector shorthands (the objects written are ordinary LabelSelectors).
ALL = {}  # the empty selector: everything


def labels(**kv):
    return {"matchLabels": {k.replace("__", "."): v for k, v in kv.items()}}


def ns_name(name):
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


def expr(*reqs):
    out = []
    for key, op, *values in reqs:
        r = {"key": key, "operator": op}
        if values:
            r["values"] = list(values[0])
        out.append(r)
    return {"matchExpressions": out}


def port(p=None, proto=None, end=None):
    out = {}
    if proto is not None:
        out["protocol"] = proto
    if p is not None:
        out["port"] = p
    if end is not None:
        out["endPort"] = end
    return out


# ---------------------------------------------------------------------------------------------------
# Reachability, the way upstream e2e writes it.


def _matches(pattern, pod_string):
    """'*' any pod, 'x/*' any pod of x, '*/a' pod a of any namespace, 'x/a' that pod."""
    if pattern == "*":
        return True
    pns, pname = pattern.split("/")
    ns, name = pod_string.split("/")
    return pns in ("*", ns) and pname in ("*", name)


class Reachability:
    def __init__(self, default=True):
        self.table = {(s, d): default for s in ALL_PODS for d in ALL_PODS}

    def expect(self, src, dst, allowed):
        self.table[(src, dst)] = allowed
        return self

    def expect_all_ingress(self, dst, allowed):
        for s in ALL_PODS:
            self.table[(s, dst)] = allowed
        return self

    def expect_all_egress(self, src, allowed):
        for d in ALL_PODS:
            self.table[(src, d)] = allowed
        return self

    def expect_peer(self, src, dst, allowed):
        for s in ALL_PODS:
            for d in ALL_PODS:
                if _matches(src, s) and _matches(dst, d):
                    self.table[(s, d)] = allowed
        return self

    def allow_loopback(self):
        for p in ALL_PODS:
            self.table[(p, p)] = True
        return self


def R():
    return Reachability(True)


def table_probes(port_no, proto, reach):
    reach.allow_loopback()
    probes = []
    for s in ALL_PODS:
        for d in ALL_PODS:
            allowed = reach.table[(s, d)]
            name = f"{s} -> {d} {proto}/{port_no}" + ("" if allowed else " denied")
            if s == d:
                name += " (to itself)"
            probes.append(probe(name, POD_IP[s], f"{POD_IP[d]}:{port_no}/{proto}", "pod" if allowed else None))
    return probes


def probe(name, src, dst, deliver):
    """deliver None means the packet is dropped."""
    if deliver is None:
        return {"name": name, "from": src, "to": dst, "verdict": "drop", "dnat": [], "masquerade": False}
    return {
        "name": name, "from": src, "to": dst, "verdict": "allow", "dnat": [], "masquerade": False,
        "deliver": deliver,
    }


# ---------------------------------------------------------------------------------------------------
# The x/y/z cases. Each: (number, slug, description, policies, [(port, proto, reachability), ...]).

XYZ = []


def case(num, slug, description, policies, tables):
    assert tables and tables[0][:2] == (80, "tcp"), f"{slug}: the first table must be TCP port 80"
    XYZ.append((num, slug, description, policies, tables))


# -- isolation and default policies -----------------------------------------------------------------

case(80, "default-deny-ingress",
     "Default deny all ingress (network-policies: 'Default deny all ingress traffic'): podSelector {} with "
     "policyTypes [Ingress] and no rules isolates every pod of x for ingress, whatever the protocol; "
     "egress from x and traffic between y and z are untouched. Upstream e2e 'should support a "
     "default-deny-ingress policy' (TCP, UDP and SCTP variants).",
     [netpol("x", "deny-ingress", ALL, types=["Ingress"])],
     [(80, "tcp", R().expect_peer("*", "x/*", False)),
      (80, "sctp", R().expect_peer("*", "x/*", False))])

case(81, "default-deny-egress",
     "Default deny all egress (network-policies: 'Default deny all egress traffic'): podSelector {} with "
     "policyTypes [Egress] and no rules isolates every pod of x for egress; ingress into x is not "
     "changed. Upstream e2e 'should deny egress from all pods in a namespace'.",
     [netpol("x", "deny-egress", ALL, types=["Egress"])],
     [(80, "tcp", R().expect_peer("x/*", "*", False)),
      (81, "udp", R().expect_peer("x/*", "*", False))])

case(82, "default-deny-all",
     "Default deny all ingress and all egress (network-policies: 'Default deny all ingress and all "
     "egress traffic'): x can neither send to nor receive from any other pod. Upstream e2e 'should "
     "support a default-deny-all policy'.",
     [netpol("x", "deny-all", ALL, types=["Ingress", "Egress"])],
     [(80, "tcp", R().expect_peer("x/*", "*", False).expect_peer("*", "x/*", False))])

case(83, "allow-all-ingress",
     "Allow all ingress (network-policies: 'Allow all ingress traffic', `ingress: [{}]`): an empty rule "
     "matches every source and port, and policies are additive, so next to a default-deny-ingress "
     "policy in x every connection is still allowed, on every port and protocol. Upstream e2e 'should "
     "support allow-all policy'.",
     [netpol("x", "deny-ingress", ALL, types=["Ingress"]),
      netpol("x", "allow-all-ingress", ALL, ingress=[{}], types=["Ingress"])],
     [(80, "tcp", R()), (81, "udp", R())])

# -- podSelector / namespaceSelector peers ----------------------------------------------------------

case(84, "ingress-podselector",
     "A podSelector peer selects pods in the policy's own namespace only (network-policies, 'Behavior of "
     "to and from selectors'): x/a accepts only x/b; y/b and z/b carry the same label but are in other "
     "namespaces. Upstream e2e 'should enforce policy to allow traffic from pods within server "
     "namespace based on PodSelector'.",
     [netpol("x", "x-a-allows-x-b", labels(pod="a"), ingress=[{"from": [{"podSelector": labels(pod="b")}]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))])

case(85, "ingress-namespaceselector",
     "A namespaceSelector-only peer allows every pod of the selected namespaces (network-policies, "
     "'Behavior of to and from selectors'): x/a accepts all pods of namespaces labelled ns=y and nothing "
     "else, not even its own namespace. Upstream e2e 'should enforce policy to allow traffic only from a "
     "different namespace, based on NamespaceSelector'.",
     [netpol("x", "allow-from-ns-y", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}])],
     [(80, "tcp", R().expect_peer("x/*", "x/a", False).expect_peer("z/*", "x/a", False))])

case(86, "ingress-ns-and-pod-one-peer",
     "namespaceSelector AND podSelector in ONE from entry select particular pods within particular "
     "namespaces (network-policies: 'A single to/from entry that specifies both'): only y/b may reach "
     "x/a; y/a (namespace matches, pod does not) and x/b (pod matches, namespace does not) are denied.",
     [netpol("x", "allow-y-b", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": labels(ns="y"), "podSelector": labels(pod="b")}]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect("y/b", "x/a", True))])

case(87, "ingress-ns-or-pod-two-peers",
     "Two entries in a from list are ORed (network-policies, 'Behavior of to and from selectors': two "
     "elements in the from array admit pods matching either one): x/a accepts every pod of y and pod b of "
     "its own namespace x.",
     [netpol("x", "allow-ns-y-or-pod-b", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": labels(ns="y")}, {"podSelector": labels(pod="b")}]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect_peer("y/*", "x/a", True)
       .expect("x/b", "x/a", True))])

case(88, "ingress-all-namespaces-pod-c",
     "namespaceSelector {} selects all namespaces (NetworkPolicyPeer: an empty namespaceSelector selects "
     "all namespaces), combined in one peer with podSelector pod=c: every pod of x accepts only the c "
     "pods of any namespace.",
     [netpol("x", "allow-c-from-anywhere", ALL,
             ingress=[{"from": [{"namespaceSelector": ALL, "podSelector": labels(pod="c")}]}])],
     [(80, "tcp", R().expect_peer("*", "x/*", False).expect_peer("*/c", "x/*", True))])

case(89, "ingress-same-namespace-only",
     "An ingress rule whose only peer is podSelector {} allows every pod of the policy's namespace and "
     "nothing from other namespaces. Upstream e2e 'should deny ingress from pods on other namespaces'.",
     [netpol("x", "deny-other-namespaces", ALL, ingress=[{"from": [{"podSelector": ALL}]}])],
     [(80, "tcp", R().expect_peer("y/*", "x/*", False).expect_peer("z/*", "x/*", False))])

case(90, "ingress-namespaceselector-empty",
     "A namespaceSelector {} peer allows all pods in all namespaces; with a default-deny-ingress policy "
     "in x as well, only x/a (selected by the allowing policy) is reachable from everyone, x/b and x/c "
     "stay isolated. Upstream e2e 'should enforce policy to allow ingress traffic for a target' and "
     "'... from pods in all namespaces'.",
     [netpol("x", "deny-ingress", ALL, types=["Ingress"]),
      netpol("x", "allow-all-namespaces-to-a", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": ALL}]}])],
     [(80, "tcp", R().expect_peer("*", "x/*", False).expect_all_ingress("x/a", True))])

# -- label selector operators -----------------------------------------------------------------------

case(91, "pod-matchexpressions-in",
     "A podSelector with matchExpressions operator In (label selectors: set-based requirement 'in') "
     "selects pods whose label value is in the set: x/a accepts x/b and x/c. Upstream e2e 'should "
     "enforce policy based on PodSelector with MatchExpressions' and 'based on any PodSelectors'.",
     [netpol("x", "allow-pod-in-b-c", labels(pod="a"),
             ingress=[{"from": [{"podSelector": expr(("pod", "In", ["b", "c"]))}]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True).expect("x/c", "x/a", True))])

case(92, "notin-matches-missing-key",
     "Label selector NotIn also matches objects that do not have the key at all (labels docs, set-based "
     "requirements: notin also selects resources without the key). No namespace has a `team` label, so "
     "namespaceSelector team NotIn [red] selects every namespace; with podSelector pod NotIn [b] in the "
     "same peer, x/a accepts the a and c pods of every namespace.",
     [netpol("x", "allow-not-b", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": expr(("team", "NotIn", ["red"])),
                                 "podSelector": expr(("pod", "NotIn", ["b"]))}]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect_peer("*/a", "x/a", True)
       .expect_peer("*/c", "x/a", True))])

case(93, "exists-doesnotexist",
     "Label selector Exists / DoesNotExist (label selectors, set-based requirements; matchExpressions are "
     "ANDed): podSelector team Exists selects no pod (no pod has the key), so the first peer allows "
     "nothing; the second selects, in namespaces having the key ns (all three), the pods with pod In [a] "
     "and no team label. z/b accepts the a pods of every namespace and nothing else.",
     [netpol("z", "allow-a-pods", labels(pod="b"),
             ingress=[{"from": [
                 {"podSelector": expr(("team", "Exists"))},
                 {"namespaceSelector": expr(("ns", "Exists")),
                  "podSelector": expr(("pod", "In", ["a"]), ("team", "DoesNotExist"))},
             ]}])],
     [(80, "tcp", R().expect_all_ingress("z/b", False).expect_peer("*/a", "z/b", True))])

case(94, "ns-notin-and-pod-in",
     "namespaceSelector kubernetes.io/metadata.name NotIn [x] AND podSelector pod In [b, c] in one peer: "
     "x/a accepts y/b, y/c, z/b, z/c only. Upstream e2e 'should enforce policy based on Multiple "
     "PodSelectors and NamespaceSelectors'.",
     [netpol("x", "allow-ns-not-x-pod-b-c", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": expr(("kubernetes.io/metadata.name", "NotIn", ["x"])),
                                 "podSelector": expr(("pod", "In", ["b", "c"]))}]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect_peer("y/b", "x/a", True)
       .expect_peer("y/c", "x/a", True).expect_peer("z/b", "x/a", True).expect_peer("z/c", "x/a", True))])

case(128, "ns-matchexpressions-in",
     "A namespaceSelector with matchExpressions In and DoesNotExist, ANDed (label selectors, set-based "
     "requirements): namespaces with ns In [x, z] and no team label, i.e. x and z; y/c accepts every pod "
     "of x and z and none of y. Upstream e2e 'should enforce policy based on NamespaceSelector with "
     "MatchExpressions'.",
     [netpol("y", "c-from-x-and-z", labels(pod="c"),
             ingress=[{"from": [{"namespaceSelector": expr(("ns", "In", ["x", "z"]), ("team", "DoesNotExist"))}]}])],
     [(80, "tcp", R().expect_all_ingress("y/c", False).expect_peer("x/*", "y/c", True)
       .expect_peer("z/*", "y/c", True))])

case(95, "ingress-metadata-name",
     "Selecting a namespace by the immutable label kubernetes.io/metadata.name the control plane sets on "
     "every namespace (network-policies: 'Targeting a Namespace by its name'): x/a accepts the pods of z "
     "only. Upstream e2e '... NamespaceSelector with MatchLabels using default ns label'.",
     [netpol("x", "allow-ns-z-by-name", labels(pod="a"), ingress=[{"from": [{"namespaceSelector": ns_name("z")}]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect_peer("z/*", "x/a", True))])

case(96, "egress-namespace-notin",
     "Egress to namespaceSelector kubernetes.io/metadata.name NotIn [y] with policyTypes [Egress]: x/a "
     "may connect to x and z, not to y; ingress into x/a is unchanged. Upstream e2e 'should enforce "
     "policy based on NamespaceSelector with MatchExpressions using default ns label'.",
     [netpol("x", "deny-egress-to-y", labels(pod="a"), types=["Egress"],
             egress=[{"to": [{"namespaceSelector": expr(("kubernetes.io/metadata.name", "NotIn", ["y"]))}]}])],
     [(80, "tcp", R().expect_peer("x/a", "y/*", False))])

case(97, "egress-to-namespace",
     "Egress to one namespace only: every pod of x may open connections only to pods of namespaces "
     "labelled ns=y, on any port and protocol (a rule without ports matches all ports).",
     [netpol("x", "egress-to-y", ALL, types=["Egress"], egress=[{"to": [{"namespaceSelector": labels(ns="y")}]}])],
     [(80, "tcp", R().expect_peer("x/*", "*", False).expect_peer("x/*", "y/*", True)),
      (81, "udp", R().expect_peer("x/*", "*", False).expect_peer("x/*", "y/*", True))])

case(98, "egress-ns-and-pod",
     "Egress to one peer with namespaceSelector AND podSelector: x/a may reach y/a only. Upstream e2e "
     "'should enforce egress policy allowing traffic to a server in a different namespace based on "
     "PodSelector and NamespaceSelector'.",
     [netpol("x", "allow-to-y-a", labels(pod="a"),
             egress=[{"to": [{"namespaceSelector": ns_name("y"), "podSelector": labels(pod="a")}]}],
             types=["Egress"])],
     [(80, "tcp", R().expect_all_egress("x/a", False).expect("x/a", "y/a", True))])

case(99, "egress-client-side-deny",
     "A connection needs both the source's egress and the destination's ingress to allow it "
     "(network-policies, 'The two sorts of pod isolation': if either side does not allow the connection, "
     "it does not happen): y/a and y/b both accept x/a, but x/a's egress allows only y/a. Upstream e2e "
     "'should support denying of egress traffic on the client side (even if the server explicitly "
     "allows this traffic)'.",
     [netpol("x", "allow-to-y-a", labels(pod="a"), types=["Egress"],
             egress=[{"to": [{"namespaceSelector": ns_name("y"), "podSelector": labels(pod="a")}]}]),
      netpol("y", "allow-from-x-a-on-a", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": ns_name("x"), "podSelector": labels(pod="a")}]}]),
      netpol("y", "allow-from-x-a-on-b", labels(pod="b"),
             ingress=[{"from": [{"namespaceSelector": ns_name("x"), "podSelector": labels(pod="a")}]}])],
     [(80, "tcp", R().expect_peer("x/a", "*", False).expect_peer("*", "y/a", False)
       .expect_peer("x/a", "y/a", True).expect_peer("*", "y/b", False))])

case(100, "ingress-and-egress-one-policy",
     "One policy with both directions (policyTypes [Egress, Ingress]): x/a accepts only x/b, and may "
     "connect anywhere on port 80 only (the egress port has no protocol, so TCP). Upstream e2e 'should "
     "work with Ingress, Egress specified together'.",
     [netpol("x", "a-in-from-b-out-80", labels(pod="a"), types=["Egress", "Ingress"],
             ingress=[{"from": [{"podSelector": labels(pod="b")}]}],
             egress=[{"ports": [port(80)]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
      (81, "tcp", R().expect_all_ingress("x/a", False).expect_all_egress("x/a", False)
       .expect("x/b", "x/a", True))])

case(101, "ingress-egress-different-pods",
     "An egress policy on one pod and an ingress policy on another (network-policies, 'The two sorts of "
     "pod isolation': both isolations are relevant to a pod-to-pod connection): x/a may connect "
     "only to x/b; y/b accepts only pods of x, so x/a -> y/b is refused by x/a's egress even though y/b's "
     "ingress would allow it.",
     [netpol("x", "a-egress-to-b", labels(pod="a"), types=["Egress"],
             egress=[{"to": [{"podSelector": labels(pod="b")}]}]),
      netpol("y", "b-ingress-from-x", labels(pod="b"), types=["Ingress"],
             ingress=[{"from": [{"namespaceSelector": labels(ns="x")}]}])],
     [(80, "tcp", R().expect_all_ingress("y/b", False).expect_peer("x/*", "y/b", True)
       .expect_all_egress("x/a", False).expect("x/a", "x/b", True))])

# -- ports and protocols ----------------------------------------------------------------------------

case(102, "ingress-port-81",
     "A numeric port in an ingress rule (NetworkPolicyPort.port: only traffic of that protocol and port "
     "matches): x/a accepts namespace y on TCP 81 only; port 80 is closed to everyone. "
     "Upstream e2e 'should enforce policy based on Ports'.",
     [netpol("x", "allow-y-on-81", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": ns_name("y")}], "ports": [port(81, "TCP")]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False)),
      (81, "tcp", R().expect_all_ingress("x/a", False).expect_peer("y/*", "x/a", True))])

case(103, "stacked-ports-union",
     "Several policies selecting the same pod are additive (network-policies: the allowed connections are "
     "the union of the applicable policies): one allows namespace y on TCP 81, another namespace y on TCP 80, so y "
     "reaches x/a on both; UDP is allowed by neither. Upstream e2e 'should enforce multiple, stacked "
     "policies with overlapping podSelectors'.",
     [netpol("x", "allow-y-on-81", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": ns_name("y")}], "ports": [port(81, "TCP")]}]),
      netpol("x", "allow-y-on-80", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": ns_name("y")}], "ports": [port(80, "TCP")]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect_peer("y/*", "x/a", True)),
      (81, "tcp", R().expect_all_ingress("x/a", False).expect_peer("y/*", "x/a", True)),
      (80, "udp", R().expect_all_ingress("x/a", False))])

case(104, "ingress-named-port",
     "A named port in an ingress rule is resolved against the destination pod's container ports "
     "(NetworkPolicyPort.port: numerical, or a named port on a pod; protocol defaults to TCP): "
     "serve-81-tcp is TCP 81 on every pod, so x accepts TCP 81 from everyone and nothing else. Upstream "
     "e2e 'should allow ingress access on one named port'.",
     [netpol("x", "allow-serve-81-tcp", ALL, ingress=[{"ports": [port("serve-81-tcp")]}])],
     [(80, "tcp", R().expect_peer("*", "x/*", False)),
      (81, "tcp", R()),
      (81, "udp", R().expect_peer("*", "x/*", False))])

case(105, "ingress-named-port-from-namespace",
     "A named port (serve-80-tcp, protocol TCP) and a namespace peer in one rule: x/a accepts namespace y "
     "on TCP 80 only. Upstream e2e 'should allow ingress access from namespace on one named port'.",
     [netpol("x", "allow-y-on-serve-80-tcp", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": ns_name("y")}], "ports": [port("serve-80-tcp", "TCP")]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect_peer("y/*", "x/a", True)),
      (81, "tcp", R().expect_all_ingress("x/a", False))])

case(106, "egress-named-port",
     "A named port in an egress rule is resolved against the destination pod (each destination's "
     "container port named serve-80-tcp, TCP 80): the pods of x may connect anywhere on TCP 80 only. "
     "Upstream e2e 'should allow egress access on one named port'.",
     [netpol("x", "allow-egress-serve-80-tcp", ALL, types=["Egress"], egress=[{"ports": [port("serve-80-tcp")]}])],
     [(80, "tcp", R()),
      (81, "tcp", R().expect_peer("x/*", "*", False)),
      (80, "sctp", R().expect_peer("x/*", "*", False))])

case(107, "named-port-wrong-protocol",
     "A named port matches only traffic of the policy port's protocol AND the named container port "
     "(NetworkPolicyPort.port: protocol and port must both match): "
     "{protocol: UDP, port: serve-81-tcp} names a TCP port, so it matches nothing; {protocol: UDP, port: "
     "serve-80-udp} matches UDP 80. x/a accepts UDP 80 only.",
     [netpol("x", "named-ports-udp", labels(pod="a"),
             ingress=[{"ports": [port("serve-81-tcp", "UDP"), port("serve-80-udp", "UDP")]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False)),
      (80, "udp", R()),
      (81, "udp", R().expect_all_ingress("x/a", False)),
      (81, "tcp", R().expect_all_ingress("x/a", False))])

case(108, "ingress-udp-only",
     "A protocol without a port (NetworkPolicyPort.port: when absent, all port names and numbers match): "
     "x/a accepts UDP on every port from everyone, and no TCP or SCTP. "
     "Upstream e2e 'should enforce ingress policy allowing any port traffic to a server on a specific "
     "protocol' and 'should not allow access by TCP when a policy specifies only UDP'.",
     [netpol("x", "allow-udp", labels(pod="a"), ingress=[{"ports": [port(proto="UDP")]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False)),
      (80, "udp", R()),
      (81, "udp", R()),
      (81, "sctp", R().expect_all_ingress("x/a", False))])

case(109, "egress-sctp-only",
     "An egress rule with protocol SCTP and no port: x/b may open SCTP associations to anyone on any "
     "port, and nothing over TCP or UDP.",
     [netpol("x", "egress-sctp", labels(pod="b"), types=["Egress"], egress=[{"ports": [port(proto="SCTP")]}])],
     [(80, "tcp", R().expect_all_egress("x/b", False)),
      (80, "sctp", R()),
      (81, "sctp", R()),
      (81, "udp", R().expect_all_egress("x/b", False))])

case(110, "sctp-port-81",
     "SCTP is not TCP: default-deny-ingress in x plus a policy allowing SCTP port 81 to x/a. TCP 81 stays "
     "blocked for all of x, SCTP 81 reaches x/a only, SCTP 80 is blocked. Upstream e2e 'should not "
     "mistakenly treat protocol: SCTP as protocol: TCP'.",
     [netpol("x", "deny-ingress", ALL, types=["Ingress"]),
      netpol("x", "allow-sctp-81", labels(pod="a"), ingress=[{"ports": [port(81, "SCTP")]}])],
     [(80, "tcp", R().expect_peer("*", "x/*", False)),
      (81, "tcp", R().expect_peer("*", "x/*", False)),
      (81, "sctp", R().expect_peer("*", "x/*", False).expect_all_ingress("x/a", True)),
      (80, "sctp", R().expect_peer("*", "x/*", False))])

case(111, "udp-port-81-from-namespace",
     "UDP port 81 from namespace y (upstream e2e UDP 'should enforce policy based on Ports'): x/a accepts "
     "UDP 81 from y only; TCP 81 and UDP 80 match no rule.",
     [netpol("x", "allow-y-udp-81", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": ns_name("y")}], "ports": [port(81, "UDP")]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False)),
      (81, "udp", R().expect_all_ingress("x/a", False).expect_peer("y/*", "x/a", True)),
      (81, "tcp", R().expect_all_ingress("x/a", False)),
      (80, "udp", R().expect_all_ingress("x/a", False))])

case(112, "endport-80-81",
     "A port range (network-policies, 'Targeting a range of ports'; NetworkPolicyPort.endPort: port to "
     "endPort inclusive): x/a accepts namespace z on TCP 80-81; UDP matches no rule.",
     [netpol("x", "allow-z-80-81", labels(pod="a"),
             ingress=[{"from": [{"namespaceSelector": labels(ns="z")}], "ports": [port(80, "TCP", 81)]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect_peer("z/*", "x/a", True)),
      (81, "tcp", R().expect_all_ingress("x/a", False).expect_peer("z/*", "x/a", True)),
      (80, "udp", R().expect_all_ingress("x/a", False))])

case(113, "endport-81-90-egress",
     "An egress port range 81-90 (protocol defaulted to TCP): the pods of x may connect anywhere on TCP "
     "81 (inside the range), not on TCP 80 (below it), and not over UDP.",
     [netpol("x", "egress-81-90", ALL, types=["Egress"], egress=[{"ports": [port(81, end=90)]}])],
     [(80, "tcp", R().expect_peer("x/*", "*", False)),
      (81, "tcp", R()),
      (81, "udp", R().expect_peer("x/*", "*", False))])

case(125, "two-rules",
     "Each rule must match both its from and its ports; the rules of a policy are ORed (network-policies, "
     "'The NetworkPolicy resource', ingress/egress): x/a accepts x/b on "
     "TCP 80 and namespace z on TCP 81, not x/b on 81 nor z on 80.",
     [netpol("x", "two-rules", labels(pod="a"), ingress=[
         {"from": [{"podSelector": labels(pod="b")}], "ports": [port(80)]},
         {"from": [{"namespaceSelector": labels(ns="z")}], "ports": [port(81)]},
     ])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
      (81, "tcp", R().expect_all_ingress("x/a", False).expect_peer("z/*", "x/a", True))])

# -- ipBlock ----------------------------------------------------------------------------------------

IPBLOCK_NOTE = (" The docs say ipBlock 'should be cluster-external IPs'; whether it also matches pod IPs "
                "is left to the implementation. Upstream e2e treats ipBlock as matching pod IPs, and so "
                "does this file.")

case(114, "ipblock-cidr",
     "ipBlock peers with CIDRs covering some pods: 10.0.1.20/30 (10.0.1.20-23: y/a, y/b, y/c) and "
     "10.0.1.32/31 (z/b, z/c); x/a accepts those five pods only." + IPBLOCK_NOTE,
     [netpol("x", "allow-cidrs", labels(pod="a"),
             ingress=[{"from": [{"ipBlock": {"cidr": "10.0.1.20/30"}}, {"ipBlock": {"cidr": "10.0.1.32/31"}}]}])],
     [(80, "tcp", R().expect_all_ingress("x/a", False).expect_peer("y/*", "x/a", True)
       .expect("z/b", "x/a", True).expect("z/c", "x/a", True))])

case(115, "ipblock-except",
     "ipBlock with except (IPBlock.except: CIDRs taken out of the block): x/a may "
     "connect to 10.0.1.0/24 except 10.0.1.12/32 (x/b) and 10.0.1.20/30 (y/a, y/b, y/c)." + IPBLOCK_NOTE,
     [netpol("x", "egress-cidr-except", labels(pod="a"), types=["Egress"],
             egress=[{"to": [{"ipBlock": {"cidr": "10.0.1.0/24", "except": ["10.0.1.12/32", "10.0.1.20/30"]}}]}])],
     [(80, "tcp", R().expect("x/a", "x/b", False).expect_peer("x/a", "y/*", False))])

case(116, "ipblock-single-pod",
     "ipBlock /32 of one pod: x/a may connect to y/b (10.0.1.22/32) only. Upstream e2e 'should allow "
     "egress access to server in CIDR block'." + IPBLOCK_NOTE,
     [netpol("x", "egress-to-y-b-ip", labels(pod="a"), types=["Egress"],
             egress=[{"to": [{"ipBlock": {"cidr": "10.0.1.22/32"}}]}])],
     [(80, "tcp", R().expect_all_egress("x/a", False).expect("x/a", "y/b", True))])

case(117, "ipblock-large-cidr-except",
     "A large ipBlock (0.0.0.0/4, the /4 around the pods) except x/b's /32: x/a may connect to every pod "
     "but x/b. Upstream e2e 'should enforce except clause while egress access to server in CIDR block'."
     + IPBLOCK_NOTE,
     [netpol("x", "egress-except-x-b", labels(pod="a"), types=["Egress"],
             egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/4", "except": ["10.0.1.12/32"]}}]}])],
     [(80, "tcp", R().expect("x/a", "x/b", False))])

case(118, "ipblock-except-union",
     "An address in one policy's except and in another policy's cidr is allowed: policies are a union "
     "(network-policies: 'they are additive'), an except only narrows its own ipBlock. x/a may connect to "
     "every pod. (Upstream e2e 'should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is "
     "allowed' reaches the same point by replacing the policy; here both policies stay.)" + IPBLOCK_NOTE,
     [netpol("x", "egress-except-x-b", labels(pod="a"), types=["Egress"],
             egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/4", "except": ["10.0.1.12/32"]}}]}]),
      netpol("x", "egress-to-x-b", labels(pod="a"), types=["Egress"],
             egress=[{"to": [{"ipBlock": {"cidr": "10.0.1.12/32"}}]}])],
     [(80, "tcp", R())])

# -- policyTypes ------------------------------------------------------------------------------------

case(119, "empty-ingress-list",
     "An explicitly empty ingress list with policyTypes [Ingress] (NetworkPolicySpec.ingress: an empty "
     "list allows no traffic and only isolates the selected pods): z/c accepts nobody.",
     [netpol("z", "deny-c", labels(pod="c"), types=["Ingress"], ingress=[])],
     [(80, "tcp", R().expect_all_ingress("z/c", False))])

case(120, "egress-type-ignores-ingress",
     "policyTypes [Egress] only: the policy does not apply to the pod for ingress, so its ingress section "
     "is ignored (network-policies, 'The two sorts of pod isolation': a pod is isolated for ingress only "
     "by policies that select it and list Ingress in policyTypes). x/a may connect to z only and accepts "
     "everyone.",
     [netpol("x", "egress-only", labels(pod="a"), types=["Egress"],
             ingress=[{"from": [{"podSelector": labels(pod="b")}]}],
             egress=[{"to": [{"namespaceSelector": labels(ns="z")}]}])],
     [(80, "tcp", R().expect_all_egress("x/a", False).expect_peer("x/a", "z/*", True))])

case(121, "inferred-types-with-egress",
     "policyTypes inferred (network-policies, policyTypes: when absent, Ingress is always set and Egress "
     "only if the policy has egress rules): a policy on y/b with only an "
     "egress rule to namespace x also isolates y/b for ingress, with no ingress rule, so y/b accepts "
     "nobody and may connect to x only.",
     [netpol("y", "b-egress-to-x", labels(pod="b"), egress=[{"to": [{"namespaceSelector": labels(ns="x")}]}])],
     [(80, "tcp", R().expect_all_ingress("y/b", False).expect_all_egress("y/b", False)
       .expect_peer("y/b", "x/*", True))])

case(122, "inferred-types-ingress-only",
     "policyTypes inferred with an empty egress list: `egress: []` has no rules, so the policy is "
     "[Ingress] only (NetworkPolicySpec.policyTypes); x/c accepts namespace z only and its egress is not "
     "restricted.",
     [netpol("x", "c-from-z", labels(pod="c"), ingress=[{"from": [{"namespaceSelector": labels(ns="z")}]}], egress=[])],
     [(80, "tcp", R().expect_all_ingress("x/c", False).expect_peer("z/*", "x/c", True))])

case(123, "selects-nothing",
     "A policy whose podSelector selects no pod has no effect (only selected pods are isolated: "
     "network-policies 'The two sorts of pod isolation'): pod=d matches no pod, and team Exists matches "
     "no pod; everything stays reachable.",
     [netpol("x", "deny-all-d", labels(pod="d"), types=["Ingress", "Egress"]),
      netpol("y", "deny-all-team", expr(("team", "Exists")), types=["Ingress", "Egress"])],
     [(80, "tcp", R()), (80, "udp", R())])

case(124, "allow-all-egress-union",
     "Allow all egress (network-policies, 'Allow all egress traffic', `egress: [{}]`): next to a policy "
     "allowing x's egress on TCP 80 only, the allow-all policy means every connection from x is allowed "
     "on every port. Upstream e2e 'should enforce multiple egress policies with egress allow-all policy "
     "taking precedence'.",
     [netpol("x", "egress-80", ALL, types=["Egress"], egress=[{"ports": [port(80)]}]),
      netpol("x", "allow-all-egress", ALL, types=["Egress"], egress=[{}])],
     [(80, "tcp", R()), (81, "tcp", R())])

case(126, "policy-namespace-scope",
     "A NetworkPolicy selects pods of its own namespace only, and its podSelector peers too: a policy in y "
     "allowing ingress from podSelector pod=a isolates only the pods of y, which accept y/a only (x/a and "
     "z/a have the label but live elsewhere).",
     [netpol("y", "from-a", ALL, ingress=[{"from": [{"podSelector": labels(pod="a")}]}])],
     [(80, "tcp", R().expect_peer("*", "y/*", False).expect_peer("y/a", "y/*", True)),
      (81, "udp", R().expect_peer("*", "y/*", False).expect_peer("y/a", "y/*", True))])

case(127, "deny-ingress-x-deny-egress-z",
     "Ingress isolation and egress isolation combine per connection: x denies all ingress, z denies all "
     "egress; y -> y and x -> y stay open, everything into x or out of z is refused.",
     [netpol("x", "deny-ingress", ALL, types=["Ingress"]),
      netpol("z", "deny-egress", ALL, types=["Egress"])],
     [(80, "tcp", R().expect_peer("*", "x/*", False).expect_peer("z/*", "*", False))])


# ---------------------------------------------------------------------------------------------------
# Non x/y/z files.

OTHER = []

SERVE = [{"containerPort": 8080, "protocol": "TCP", "name": "http"}]


def other(num, slug, description, manifests, probes, error=False):
    OTHER.append((num, slug, description, manifests, probes, error))


# Traffic from the pod's own node.
other(130, "node-traffic",
      "Traffic from the pod's own node is always allowed (network-policies: the IP-block identifier's "
      "exception for the node where a pod runs; 'The two sorts of pod isolation': an ingress-isolated pod "
      "still accepts connections from its node). Under default-deny-ingress and an "
      "ipBlock-only allow rule, node-a's address still reaches its pods on any port and protocol; another "
      "node's address (192.168.0.3, node-b) is not the pod's node and is dropped.",
      [node(), node("node-b", ("192.168.0.3",)), kube_proxy(), namespace("web"),
       pod("web", "server", {"app": "server"}, ["10.0.1.10"], ports=SERVE),
       pod("web", "client", {"app": "client"}, ["10.0.1.5"]),
       netpol("web", "deny-ingress", ALL, types=["Ingress"]),
       netpol("web", "server-from-outside", labels(app="server"),
              ingress=[{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}])],
      [probe("node to a pod under default deny", NODE_IP, "10.0.1.10:8080/tcp", "pod"),
       probe("node to a pod under default deny, another port", f"{NODE_IP}:5000", "10.0.1.10:9999/tcp", "pod"),
       probe("node to a pod under default deny, UDP", NODE_IP, "10.0.1.10:53/udp", "pod"),
       probe("node to a pod under default deny, SCTP", NODE_IP, "10.0.1.5:80/sctp", "pod"),
       probe("another pod is denied", "10.0.1.5", "10.0.1.10:8080/tcp", None),
       probe("another node's address is not the pod's node", "192.168.0.3", "10.0.1.10:8080/tcp", None),
       probe("client outside the cluster allowed by ipBlock", "203.0.113.7", "10.0.1.10:8080/tcp", "pod"),
       probe("client outside the cluster to a pod without ipBlock rule", "203.0.113.7", "10.0.1.5:80/tcp", None)])

# Traffic to the pod's own node.
other(141, "node-traffic-egress",
      "Traffic to the pod's own node is always allowed too (network-policies: 'traffic to and from the node "
      "where a Pod is running is always allowed, regardless of the IP address of the Pod or the node'). Under "
      "default-deny-egress a pod still reaches its node's address (the kubelet, a node-local DNS cache), but "
      "not another node's address, another pod or the outside.",
      [node(), node("node-b", ("192.168.0.3",)), kube_proxy(), namespace("web"),
       pod("web", "server", {"app": "server"}, ["10.0.1.10"], ports=SERVE),
       pod("web", "client", {"app": "client"}, ["10.0.1.5"]),
       netpol("web", "deny-egress", ALL, types=["Egress"])],
      [probe("pod to its node under default deny egress", "10.0.1.5", f"{NODE_IP}:10250/tcp", "host"),
       probe("pod to its node under default deny egress, UDP", "10.0.1.5", f"{NODE_IP}:53/udp", "host"),
       probe("pod to another node's address", "10.0.1.5", "192.168.0.3:10250/tcp", None),
       probe("pod to another pod", "10.0.1.5", "10.0.1.10:8080/tcp", None),
       probe("pod to the outside", "10.0.1.5", "203.0.113.7:443/tcp", None)])

# hostNetwork pods.
other(131, "host-network-pods",
      "hostNetwork pods are left alone (network-policies, 'NetworkPolicy and hostNetwork pods': the most "
      "common implementation ignores hostNetwork pods when matching podSelector and namespaceSelector, "
      "and their traffic is treated as traffic to/from the node IP). A deny-all policy whose podSelector "
      "{} covers the namespace of a hostNetwork pod, and one selecting it by label, do not isolate it: "
      "traffic to 192.168.0.2 is host traffic (deliver host). Its own connections are node connections, "
      "which reach pods even under default deny.",
      [node(), kube_proxy(), namespace("monitoring"), namespace("apps"),
       pod("monitoring", "node-exporter", {"app": "node-exporter"}, [NODE_IP], host_network=True,
           ports=[{"containerPort": 9100, "protocol": "TCP", "name": "metrics"}]),
       pod("monitoring", "prometheus", {"app": "prometheus"}, ["10.0.1.20"]),
       pod("apps", "client", {"app": "client"}, ["10.0.1.5"]),
       netpol("monitoring", "deny-all", ALL, types=["Ingress", "Egress"]),
       netpol("monitoring", "deny-exporter", labels(app="node-exporter"), types=["Ingress", "Egress"])],
      [probe("pod to the hostNetwork pod's port", "10.0.1.5", f"{NODE_IP}:9100/tcp", "host"),
       probe("pod on another node to the hostNetwork pod", "10.0.2.5", f"{NODE_IP}:9100/tcp", "host"),
       probe("outside client to the hostNetwork pod", "203.0.113.7", f"{NODE_IP}:9100/tcp", "host"),
       probe("hostNetwork pod (node address) to a pod under deny-all", f"{NODE_IP}:40000", "10.0.1.20:9090/tcp", "pod"),
       probe("hostNetwork pod (node address) to the outside", NODE_IP, "203.0.113.7:443/tcp", "external"),
       probe("ordinary pod to the pod under deny-all is denied", "10.0.1.5", "10.0.1.20:9090/tcp", None)])

# Clients outside the cluster.
other(132, "external-clients-ipblock",
      "Clients outside the cluster (arriving on the uplink) reach a pod only through ipBlock rules of its "
      "ingress policies (network-policies, 'Behavior of to and from selectors': ipBlock admits CIDR ranges "
      "as ingress sources; the page's example allows 172.17.0.0/16 except 172.17.1.0/24). podSelector and namespaceSelector peers "
      "select pods, never outside hosts, so namespaceSelector {} admits every pod but no outside client. "
      "ipBlock 0.0.0.0/0 also matches pod IPs, as upstream e2e treats ipBlock (implementation-defined "
      "in the docs).",
      [node(), kube_proxy(), namespace("web"),
       pod("web", "front", {"app": "front"}, ["10.0.1.10"]),
       pod("web", "api", {"app": "api"}, ["10.0.1.11"]),
       pod("web", "db", {"app": "db"}, ["10.0.1.12"]),
       netpol("web", "front-from-internet", labels(app="front"),
              ingress=[{"from": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}],
                        "ports": [port(443, "TCP")]}]),
       netpol("web", "api-from-all-pods", labels(app="api"), ingress=[{"from": [{"namespaceSelector": ALL}]}]),
       netpol("web", "db-from-anywhere-5432", labels(app="db"),
              ingress=[{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [port(5432, "TCP")]}])],
      [probe("outside client in the cidr to the allowed port", "203.0.113.7", "10.0.1.10:443/tcp", "pod"),
       probe("outside client in the cidr to another port", "203.0.113.7", "10.0.1.10:80/tcp", None),
       probe("outside client in the except range", "203.0.113.200", "10.0.1.10:443/tcp", None),
       probe("outside client outside the cidr", "198.51.100.7", "10.0.1.10:443/tcp", None),
       probe("outside client over UDP to a TCP rule", "203.0.113.7:5353", "10.0.1.10:443/udp", None),
       probe("outside client to a pod admitting all pods", "203.0.113.7", "10.0.1.11:8080/tcp", None),
       probe("a pod to a pod admitting all pods", "10.0.1.10", "10.0.1.11:8080/tcp", "pod"),
       probe("a cluster address with no Pod object to a pod admitting all pods", "10.0.2.5",
             "10.0.1.11:8080/tcp", None),
       probe("outside client to 0.0.0.0/0 rule", "203.0.113.7", "10.0.1.12:5432/tcp", "pod"),
       probe("outside client to 0.0.0.0/0 rule, wrong port", "203.0.113.7", "10.0.1.12:5433/tcp", None),
       probe("a pod matched by ipBlock 0.0.0.0/0", "10.0.1.11", "10.0.1.12:5432/tcp", "pod"),
       probe("the node is always allowed", NODE_IP, "10.0.1.10:80/tcp", "pod"),
       probe("egress of a pod with ingress-only policies is open", "10.0.1.10", "203.0.113.7:443/tcp", "external")])

# Pods on another node.
other(133, "remote-node-pods",
      "Pods on another node (Pod objects with nodeName node-b; their packets arrive on the uplink). On this "
      "node only this node's pods' policies are enforced: a remote pod's traffic into a local pod is judged "
      "by the local pod's ingress rules, with the remote pod's labels and namespace matched by selectors; "
      "traffic from a local pod to a remote pod is judged by the local pod's egress rules only (the remote "
      "pod's ingress, like the remote pod's egress, is enforced on its own node). A connection needs both "
      "sides (network-policies), each side enforced where its pod runs.",
      [node(), node("node-b", ("192.168.0.3",)), kube_proxy(),
       namespace("frontend", {"role": "frontend"}), namespace("backend", {"role": "backend"}),
       pod("backend", "api", {"app": "api"}, ["10.0.1.10"]),
       pod("frontend", "web-local", {"app": "web"}, ["10.0.1.5"]),
       pod("frontend", "web-remote", {"app": "web"}, ["10.0.2.5"], node_name="node-b"),
       pod("frontend", "batch-remote", {"app": "batch"}, ["10.0.2.6"], node_name="node-b"),
       pod("backend", "db-remote", {"app": "db"}, ["10.0.2.7"], node_name="node-b"),
       netpol("backend", "api-from-web", labels(app="api"),
              ingress=[{"from": [{"namespaceSelector": labels(role="frontend"), "podSelector": labels(app="web")}],
                        "ports": [port(8080, "TCP")]}]),
       netpol("backend", "api-egress-to-db", labels(app="api"), types=["Egress"],
              egress=[{"to": [{"podSelector": labels(app="db")}], "ports": [port(5432, "TCP")]}]),
       netpol("backend", "db-deny-ingress", labels(app="db"), types=["Ingress"]),
       netpol("frontend", "web-egress-to-api", labels(app="web"), types=["Egress"],
              egress=[{"to": [{"namespaceSelector": labels(role="backend"), "podSelector": labels(app="api")}],
                       "ports": [port(8080, "TCP")]}]),
       netpol("frontend", "batch-deny-egress", labels(app="batch"), types=["Egress"])],
      [probe("remote web pod to api, allowed by api's ingress", "10.0.2.5", "10.0.1.10:8080/tcp", "pod"),
       probe("remote web pod to api, wrong port", "10.0.2.5", "10.0.1.10:9090/tcp", None),
       probe("remote batch pod to api, labels do not match", "10.0.2.6", "10.0.1.10:8080/tcp", None),
       probe("unknown cluster address to api", "10.0.2.9", "10.0.1.10:8080/tcp", None),
       probe("local web pod to api", "10.0.1.5", "10.0.1.10:8080/tcp", "pod"),
       probe("remote batch pod to local web: its egress deny is node-b's business", "10.0.2.6", "10.0.1.5:80/tcp", "pod"),
       probe("api to remote db, allowed by api's egress (db's ingress is node-b's business)", "10.0.1.10", "10.0.2.7:5432/tcp", "external"),
       probe("api to remote db, port outside api's egress", "10.0.1.10", "10.0.2.7:5433/tcp", None),
       probe("api to a remote web pod, not in api's egress", "10.0.1.10", "10.0.2.5:80/tcp", None),
       probe("local web to remote db, not in web's egress", "10.0.1.5", "10.0.2.7:5432/tcp", None),
       probe("local web to remote web, not in web's egress", "10.0.1.5", "10.0.2.5:8080/tcp", None)])

# Egress to external addresses.
other(134, "egress-external-ipblock",
      "Egress to addresses outside the cluster is allowed only by ipBlock rules (network-policies: ipBlock "
      "admits CIDR ranges as egress destinations; the page's example: egress to 10.0.0.0/24 on TCP 5978); "
      "namespaceSelector {} selects all pods, not outside hosts. Allowed external traffic leaves the node "
      "(deliver external) unchanged (no outbound NAT configured).",
      [node(), node("node-b", ("192.168.0.3",)), kube_proxy(), namespace("app"),
       pod("app", "worker", {"app": "worker"}, ["10.0.1.10"]),
       pod("app", "other", {"app": "other"}, ["10.0.1.11"]),
       pod("app", "remote", {"app": "remote"}, ["10.0.2.5"], node_name="node-b"),
       netpol("app", "worker-egress", labels(app="worker"), types=["Egress"], egress=[
           {"to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}}],
            "ports": [port(443, "TCP")]},
           {"to": [{"namespaceSelector": ALL}], "ports": [port(53, "UDP")]},
       ]),
       netpol("app", "other-egress-pods-only", labels(app="other"), types=["Egress"],
              egress=[{"to": [{"namespaceSelector": ALL}]}])],
      [probe("worker to an allowed external address", "10.0.1.10", "198.51.100.10:443/tcp", "external"),
       probe("worker to an allowed external address, wrong port", "10.0.1.10", "198.51.100.10:80/tcp", None),
       probe("worker to an excepted external address", "10.0.1.10", "198.51.100.200:443/tcp", None),
       probe("worker to an external address outside the cidr", "10.0.1.10", "203.0.113.9:443/tcp", None),
       probe("worker to a local pod over UDP 53 (pod rule)", "10.0.1.10:5353", "10.0.1.11:53/udp", "pod"),
       probe("worker to a remote pod over UDP 53 (pod rule)", "10.0.1.10:5353", "10.0.2.5:53/udp", "external"),
       probe("worker to an external address over UDP 53 (pod rule does not cover it)", "10.0.1.10:5353",
             "198.51.100.10:53/udp", None),
       probe("worker to a local pod on TCP 443 (the ipBlock does not cover it)", "10.0.1.10", "10.0.1.11:443/tcp", None),
       probe("other to an external address: namespaceSelector {} is pods only", "10.0.1.11", "198.51.100.10:443/tcp", None),
       probe("other to a local pod", "10.0.1.11", "10.0.1.10:443/tcp", "pod"),
       probe("other to a remote pod", "10.0.1.11", "10.0.2.5:80/tcp", "external"),
       probe("other to the outside over UDP", "10.0.1.11:5353", "8.8.8.8:53/udp", None)])

# Namespace scoping.
other(135, "namespace-scope",
      "A NetworkPolicy applies to pods of its own namespace (NetworkPolicySpec.podSelector: an empty "
      "selector matches all pods of the policy's namespace), and a podSelector peer without namespaceSelector "
      "selects pods in the policy's namespace only (network-policies, 'Behavior of to and from "
      "selectors'). Pods with identical labels in team-b are neither isolated nor admitted.",
      [node(), kube_proxy(), namespace("team-a", {"team": "a"}), namespace("team-b", {"team": "b"}),
       pod("team-a", "web", {"app": "web"}, ["10.0.1.10"]),
       pod("team-a", "client", {"app": "client"}, ["10.0.1.11"]),
       pod("team-b", "web", {"app": "web"}, ["10.0.1.20"]),
       pod("team-b", "client", {"app": "client"}, ["10.0.1.21"]),
       netpol("team-a", "web-from-clients", labels(app="web"), ingress=[{"from": [{"podSelector": labels(app="client")}]}])],
      [probe("team-a client to team-a web", "10.0.1.11", "10.0.1.10:80/tcp", "pod"),
       probe("team-b client to team-a web: the peer selects team-a pods only", "10.0.1.21", "10.0.1.10:80/tcp", None),
       probe("team-b web to team-a web", "10.0.1.20", "10.0.1.10:80/tcp", None),
       probe("team-a client to team-b web: team-b web is not selected", "10.0.1.11", "10.0.1.20:80/tcp", "pod"),
       probe("team-b client to team-b web", "10.0.1.21", "10.0.1.20:80/tcp", "pod"),
       probe("team-a web to team-b client", "10.0.1.10", "10.0.1.21:80/tcp", "pod")])

# Dual-stack.
V6 = "fd00:0:0:1::"
other(136, "dualstack",
      "Dual-stack pods (one IPv4 and one IPv6 podIP): selector peers match a pod by all its addresses, so "
      "the selected client reaches the server over both families; an ipBlock matches addresses, so an IPv4 "
      "/32 of a pod admits that pod over IPv4 only, and an IPv6 ipBlock with except admits outside IPv6 "
      "clients in the cidr but not in the except. Traffic from the node's own IPv6 address is allowed.",
      [node(addresses=(NODE_IP, "2001:db8::2")), kube_proxy("10.0.0.0/8,fd00::/48"), namespace("web"),
       pod("web", "server", {"app": "server"}, ["10.0.1.10", V6 + "a"]),
       pod("web", "client", {"app": "client"}, ["10.0.1.5", V6 + "5"]),
       pod("web", "other", {"app": "other"}, ["10.0.1.6", V6 + "6"]),
       netpol("web", "server-ingress", labels(app="server"), ingress=[{"from": [
           {"podSelector": labels(app="client")},
           {"ipBlock": {"cidr": "10.0.1.6/32"}},
           {"ipBlock": {"cidr": "2001:db8:1::/64", "except": ["2001:db8:1:0:8000::/65"]}},
       ]}])],
      [probe("client to server over IPv4", "10.0.1.5", "10.0.1.10:80/tcp", "pod"),
       probe("client to server over IPv6", f"[{V6}5]:40000", f"[{V6}a]:80/tcp", "pod"),
       probe("other to server over IPv4 (its /32)", "10.0.1.6", "10.0.1.10:80/tcp", "pod"),
       probe("other to server over IPv6 (the IPv4 /32 does not cover it)", f"[{V6}6]:40000", f"[{V6}a]:80/tcp", None),
       probe("outside IPv6 client in the cidr", "[2001:db8:1::7]:40000", f"[{V6}a]:80/tcp", "pod"),
       probe("outside IPv6 client in the except", "[2001:db8:1:0:8000::7]:40000", f"[{V6}a]:80/tcp", None),
       probe("outside IPv6 client outside the cidr", "[2001:db8:2::7]:40000", f"[{V6}a]:80/tcp", None),
       probe("outside IPv4 client", "203.0.113.7", "10.0.1.10:80/tcp", None),
       probe("node over IPv6", "[2001:db8::2]:40000", f"[{V6}a]:80/tcp", "pod"),
       probe("server to client over IPv6 (client not isolated)", f"[{V6}a]:40000", f"[{V6}5]:80/udp", "pod")])


# Invalid policies: trace must exit 2 naming the document.
def error_case(num, slug, description, bad_policy):
    other(num, slug, description,
          [node(), kube_proxy(), namespace("web"),
           pod("web", "server", {"app": "server"}, ["10.0.1.10"], ports=SERVE),
           bad_policy],
          [], error=True)


error_case(137, "error-endport-below-port",
           "Invalid NetworkPolicy: endPort 81 is below port 90 (NetworkPolicyPort.endPort, and "
           "network-policies 'Targeting a range of ports': endPort must be at least port). The API server "
           "rejects it, so trace must exit 2 naming the document.",
           netpol("web", "bad-range", ALL, ingress=[{"ports": [port(90, "TCP", 81)]}]))

error_case(138, "error-except-outside-cidr",
           "Invalid NetworkPolicy: an ipBlock except entry 10.0.2.0/24 outside its cidr 10.0.1.0/24 (IPBlock."
           "except: entries outside the cidr are rejected). Trace must exit 2 naming the document.",
           netpol("web", "bad-except", ALL,
                  ingress=[{"from": [{"ipBlock": {"cidr": "10.0.1.0/24", "except": ["10.0.2.0/24"]}}]}]))

error_case(139, "error-bad-protocol",
           "Invalid NetworkPolicy: port protocol ICMP is not one of TCP, UDP, SCTP (NetworkPolicyPort."
           "protocol). Trace must exit 2 naming the document.",
           netpol("web", "bad-protocol", ALL, ingress=[{"ports": [port(80, "ICMP")]}]))

error_case(140, "error-endport-named-port",
           "Invalid NetworkPolicy: endPort with a named port (NetworkPolicyPort.endPort needs a numeric "
           "port; network-policies 'Targeting a range of ports': both ports must be numeric). Trace must "
           "exit 2 naming the document.",
           netpol("web", "bad-named-range", ALL, ingress=[{"ports": [port("http", "TCP", 8090)]}]))


# ---------------------------------------------------------------------------------------------------


def main():
    written = []
    total = 0
    nums = set()
    for num, slug, description, policies, tables in XYZ:
        assert num not in nums, num
        nums.add(num)
        probes = []
        for port_no, proto, reach in tables:
            probes += table_probes(port_no, proto, reach)
        fname = f"{num}-netpol-xyz-{slug}.yaml"
        write(fname, {
            "description": Folded(description),
            "node": "node-a",
            "manifests": xyz_base() + policies,
            "probes": probes,
        })
        written.append(fname)
        total += len(probes)
    for num, slug, description, manifests, probes, error in OTHER:
        assert num not in nums, num
        nums.add(num)
        fname = f"{num}-netpol-{slug}.yaml"
        doc = {"description": Folded(description), "node": "node-a"}
        if error:
            doc["error"] = True
        doc["manifests"] = manifests
        doc["probes"] = probes
        write(fname, doc)
        written.append(fname)
        total += len(probes)
    print(f"wrote {len(written)} files, {total} probes", file=sys.stderr)


if __name__ == "__main__":
    main()
