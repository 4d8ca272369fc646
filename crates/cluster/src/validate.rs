//! Validation of objects as the Kubernetes API server would do it, for the fields flowgate reads.
//! Each function returns the first problem found, with the field path.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, ServiceCIDR};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{FlowgateConfiguration, KubeProxyConfiguration};
use crate::error::FieldError;
use crate::ip::{parse_cidr_sloppy, parse_ip_sloppy};

type Result = std::result::Result<(), FieldError>;

fn err(field: impl Into<String>, message: impl Into<String>) -> Result {
    Err(FieldError::new(field, message))
}

/// RFC 1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// RFC 1035 label (Service names): a DNS-1123 label starting with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// IANA service name (named ports): ≤ 15 chars, lower-case alphanumerics and '-', at least one
/// letter, no leading/trailing/double '-'.
pub fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

fn validate_meta(meta: &ObjectMeta, namespaced: bool, name_ok: fn(&str) -> bool, what: &str) -> Result {
    match meta.name.as_deref() {
        None | Some("") => return err("metadata.name", "required"),
        Some(n) if !name_ok(n) => return err("metadata.name", format!("{n:?} is not a valid {what} name")),
        _ => {}
    }
    if let Some(ns) = meta.namespace.as_deref() {
        if !namespaced {
            return err("metadata.namespace", "not allowed on a cluster-scoped object");
        }
        if !is_dns1123_label(ns) {
            return err("metadata.namespace", format!("{ns:?} is not a valid namespace name"));
        }
    }
    for (k, v) in meta.labels.iter().flatten() {
        if !is_label_key(k) {
            return err(format!("metadata.labels[{k}]"), "not a valid label key");
        }
        if !is_label_value(v) {
            return err(format!("metadata.labels[{k}]"), format!("{v:?} is not a valid label value"));
        }
    }
    Ok(())
}

fn ip(field: &str, s: &str) -> std::result::Result<IpAddr, FieldError> {
    parse_ip_sloppy(s).ok_or_else(|| FieldError::new(field, format!("{s:?} is not a valid IP address")))
}

fn cidr(field: &str, s: &str) -> Result {
    match parse_cidr_sloppy(s) {
        Some(_) => Ok(()),
        None => err(field, format!("{s:?} is not a valid CIDR (address/prefix-length)")),
    }
}

fn protocol(field: &str, p: Option<&str>) -> Result {
    match p {
        None | Some("TCP") | Some("UDP") | Some("SCTP") => Ok(()),
        Some(other) => {
            err(field, format!("unsupported value {other:?}: supported values are \"TCP\", \"UDP\", \"SCTP\""))
        }
    }
}

fn port_number(field: &str, p: i32) -> Result {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        err(field, format!("must be between 1 and 65535, inclusive (got {p})"))
    }
}

/// Validates a Namespace.
pub fn namespace(ns: &Namespace) -> Result {
    validate_meta(&ns.metadata, false, is_dns1123_label, "namespace")
}

/// Validates a Node.
pub fn node(node: &Node) -> Result {
    validate_meta(&node.metadata, false, is_dns1123_subdomain, "node")?;
    if let Some(spec) = &node.spec {
        for (i, c) in spec.pod_cidrs.iter().flatten().enumerate() {
            cidr(&format!("spec.podCIDRs[{i}]"), c)?;
        }
    }
    if let Some(status) = &node.status {
        for (i, a) in status.addresses.iter().flatten().enumerate() {
            if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                ip(&format!("status.addresses[{i}].address"), &a.address)?;
            }
        }
    }
    Ok(())
}

/// Validates a Pod (the networking fields).
pub fn pod(pod: &Pod) -> Result {
    validate_meta(&pod.metadata, true, is_dns1123_subdomain, "pod")?;
    if let Some(spec) = &pod.spec {
        for (i, c) in spec.containers.iter().enumerate() {
            if !is_dns1123_label(&c.name) {
                return err(
                    format!("spec.containers[{i}].name"),
                    format!("{:?} is not a valid container name", c.name),
                );
            }
            for (j, p) in c.ports.iter().flatten().enumerate() {
                port_number(&format!("spec.containers[{i}].ports[{j}].containerPort"), p.container_port)?;
                protocol(&format!("spec.containers[{i}].ports[{j}].protocol"), p.protocol.as_deref())?;
                if let Some(n) = p.name.as_deref() {
                    if !is_iana_svc_name(n) {
                        return err(
                            format!("spec.containers[{i}].ports[{j}].name"),
                            format!("{n:?} is not a valid port name"),
                        );
                    }
                }
            }
        }
    }
    if let Some(status) = &pod.status {
        if let Some(p) = status.pod_ip.as_deref() {
            ip("status.podIP", p)?;
        }
        let ips = status.pod_ips.as_deref().unwrap_or_default();
        let mut families = BTreeSet::new();
        for (i, p) in ips.iter().enumerate() {
            let a = ip(&format!("status.podIPs[{i}].ip"), &p.ip)?;
            if !families.insert(a.is_ipv4()) {
                return err(format!("status.podIPs[{i}].ip"), "at most one address per IP family");
            }
        }
        if let (Some(p), Some(first)) = (status.pod_ip.as_deref(), ips.first()) {
            if parse_ip_sloppy(p) != parse_ip_sloppy(&first.ip) {
                return err("status.podIPs[0].ip", "must equal status.podIP");
            }
        }
    }
    Ok(())
}

/// Validates a Service.
pub fn service(svc: &Service) -> Result {
    validate_meta(&svc.metadata, true, is_dns1035_label, "service (RFC 1035 label)")?;
    let Some(spec) = &svc.spec else {
        return err("spec", "required");
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        return err("spec.type", format!("unsupported value {ty:?}: supported values are \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if ty == "ExternalName" {
        if spec.external_name.as_deref().unwrap_or("").is_empty() {
            return err("spec.externalName", "required for type ExternalName");
        }
        return Ok(());
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !headless {
        return err("spec.ports", "required");
    }
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = |s: &str| format!("spec.ports[{i}].{s}");
        port_number(&f("port"), p.port)?;
        protocol(&f("protocol"), p.protocol.as_deref())?;
        match p.name.as_deref() {
            Some(n) if !n.is_empty() => {
                if !is_dns1123_label(n) {
                    return err(f("name"), format!("{n:?} is not a valid port name (RFC 1123 label)"));
                }
                if !names.insert(n) {
                    return err(f("name"), format!("duplicate value {n:?}"));
                }
            }
            _ if ports.len() > 1 => return err(f("name"), "required when the service has more than one port"),
            _ => {}
        }
        if !keys.insert((p.port, p.protocol.as_deref().unwrap_or("TCP"))) {
            return err(format!("spec.ports[{i}]"), format!("duplicate port {} and protocol", p.port));
        }
        if let Some(np) = p.node_port {
            if np != 0 {
                if !matches!(ty, "NodePort" | "LoadBalancer") {
                    return err(f("nodePort"), format!("may not be used when `type` is '{ty}'"));
                }
                port_number(&f("nodePort"), np)?;
            }
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => port_number(&f("targetPort"), *t)?,
            Some(IntOrString::String(t)) if !is_iana_svc_name(t) => {
                return err(f("targetPort"), format!("{t:?} is not a valid port number or name"))
            }
            _ => {}
        }
    }
    let mut ip_families = Vec::new();
    if let Some(c) = spec.cluster_ip.as_deref() {
        if !c.is_empty() && c != "None" {
            ip_families.push(ip("spec.clusterIP", c)?.is_ipv4());
        }
    }
    let cluster_ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if cluster_ips.len() > 2 {
        return err("spec.clusterIPs", "may hold at most two addresses, one per family");
    }
    for (i, c) in cluster_ips.iter().enumerate() {
        if c == "None" {
            if i > 0 || !headless {
                return err(format!("spec.clusterIPs[{i}]"), "\"None\" only as the first value of a headless service");
            }
            continue;
        }
        let a = ip(&format!("spec.clusterIPs[{i}]"), c)?;
        if i == 0 {
            if let Some(first) = spec.cluster_ip.as_deref().filter(|s| !s.is_empty()) {
                if parse_ip_sloppy(first) != Some(a) {
                    return err("spec.clusterIPs[0]", "must match spec.clusterIP");
                }
            }
        } else if cluster_ips.first().and_then(|f| parse_ip_sloppy(f)).map(|f| f.is_ipv4()) == Some(a.is_ipv4()) {
            return err("spec.clusterIPs[1]", "must be of the other IP family than spec.clusterIPs[0]");
        }
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    for (i, fam) in families.iter().enumerate() {
        if fam != "IPv4" && fam != "IPv6" {
            return err(
                format!("spec.ipFamilies[{i}]"),
                format!("unsupported value {fam:?}: supported values are \"IPv4\", \"IPv6\""),
            );
        }
        if families[..i].contains(fam) || i > 1 {
            return err(format!("spec.ipFamilies[{i}]"), "duplicate or extra IP family");
        }
        if let Some(c) = cluster_ips.get(i).filter(|c| *c != "None").and_then(|c| parse_ip_sloppy(c)) {
            if c.is_ipv4() != (fam == "IPv4") {
                return err(
                    format!("spec.clusterIPs[{i}]"),
                    format!("must be an {fam} address to match spec.ipFamilies[{i}]"),
                );
            }
        }
    }
    if let Some(p) = spec.ip_family_policy.as_deref() {
        if !matches!(p, "SingleStack" | "PreferDualStack" | "RequireDualStack") {
            return err("spec.ipFamilyPolicy", format!("unsupported value {p:?}"));
        }
    }
    for (i, e) in spec.external_ips.iter().flatten().enumerate() {
        ip(&format!("spec.externalIPs[{i}]"), e)?;
    }
    match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => {
            if spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).is_some() {
                return err("spec.sessionAffinityConfig", "must not be set when sessionAffinity is None");
            }
        }
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            if let Some(t) = t {
                if !(1..=86400).contains(&t) {
                    return err(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("must be between 1 and 86400 (got {t})"),
                    );
                }
            }
        }
        Some(other) => {
            return err(
                "spec.sessionAffinity",
                format!("unsupported value {other:?}: supported values are \"ClientIP\", \"None\""),
            )
        }
    }
    let externally_accessible =
        matches!(ty, "NodePort" | "LoadBalancer") || !spec.external_ips.as_deref().unwrap_or_default().is_empty();
    if let Some(p) = spec.external_traffic_policy.as_deref() {
        if !matches!(p, "Cluster" | "Local") {
            return err(
                "spec.externalTrafficPolicy",
                format!("unsupported value {p:?}: supported values are \"Cluster\", \"Local\""),
            );
        }
        if !externally_accessible {
            return err(
                "spec.externalTrafficPolicy",
                "may only be set for externally-accessible services (NodePort, LoadBalancer, or with externalIPs)",
            );
        }
    }
    if let Some(p) = spec.internal_traffic_policy.as_deref() {
        if !matches!(p, "Cluster" | "Local") {
            return err(
                "spec.internalTrafficPolicy",
                format!("unsupported value {p:?}: supported values are \"Cluster\", \"Local\""),
            );
        }
    }
    if let Some(h) = spec.health_check_node_port {
        if h != 0 {
            if ty != "LoadBalancer" || spec.external_traffic_policy.as_deref() != Some("Local") {
                return err(
                    "spec.healthCheckNodePort",
                    "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
                );
            }
            port_number("spec.healthCheckNodePort", h)?;
        }
    }
    if !spec.load_balancer_source_ranges.as_deref().unwrap_or_default().is_empty() && ty != "LoadBalancer" {
        return err("spec.loadBalancerSourceRanges", "may only be used when `type` is 'LoadBalancer'");
    }
    for (i, r) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
        cidr(&format!("spec.loadBalancerSourceRanges[{i}]"), r.trim())?;
    }
    if spec.allocate_load_balancer_node_ports.is_some() && ty != "LoadBalancer" {
        return err("spec.allocateLoadBalancerNodePorts", "may only be used when `type` is 'LoadBalancer'");
    }
    if let Some(t) = spec.traffic_distribution.as_deref() {
        if !matches!(t, "PreferClose" | "PreferSameZone" | "PreferSameNode") {
            return err("spec.trafficDistribution", format!("unsupported value {t:?}: supported values are \"PreferClose\", \"PreferSameZone\", \"PreferSameNode\""));
        }
    }
    if let Some(status) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        for (i, ing) in status.ingress.iter().flatten().enumerate() {
            if let Some(a) = ing.ip.as_deref() {
                ip(&format!("status.loadBalancer.ingress[{i}].ip"), a)?;
            }
            if let Some(m) = ing.ip_mode.as_deref() {
                if !matches!(m, "VIP" | "Proxy") {
                    return err(
                        format!("status.loadBalancer.ingress[{i}].ipMode"),
                        format!("unsupported value {m:?}: supported values are \"VIP\", \"Proxy\""),
                    );
                }
                if ing.ip.as_deref().unwrap_or("").is_empty() {
                    return err(format!("status.loadBalancer.ingress[{i}].ipMode"), "may only be set when ip is set");
                }
            }
        }
    }
    Ok(())
}

/// Validates an EndpointSlice.
pub fn endpoint_slice(slice: &EndpointSlice) -> Result {
    validate_meta(&slice.metadata, true, is_dns1123_subdomain, "endpointslice")?;
    let ty = slice.address_type.as_str();
    if !matches!(ty, "IPv4" | "IPv6" | "FQDN") {
        return err(
            "addressType",
            format!("unsupported value {ty:?}: supported values are \"IPv4\", \"IPv6\", \"FQDN\""),
        );
    }
    for (i, e) in slice.endpoints.iter().enumerate() {
        if e.addresses.is_empty() || e.addresses.len() > 100 {
            return err(format!("endpoints[{i}].addresses"), "must hold between 1 and 100 addresses");
        }
        if ty != "FQDN" {
            for (j, a) in e.addresses.iter().enumerate() {
                let f = format!("endpoints[{i}].addresses[{j}]");
                let addr = ip(&f, a)?;
                if addr.is_ipv4() != (ty == "IPv4") {
                    return err(f, format!("must be an {ty} address (addressType)"));
                }
            }
        }
        for (j, z) in e.hints.iter().flat_map(|h| h.for_zones.iter().flatten()).enumerate() {
            if z.name.is_empty() {
                return err(format!("endpoints[{i}].hints.forZones[{j}].name"), "required");
            }
        }
    }
    let mut names = BTreeSet::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        if let Some(n) = p.port {
            if !(0..=65535).contains(&n) {
                return err(format!("ports[{i}].port"), format!("must be between 0 and 65535 (got {n})"));
            }
        }
        protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?;
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() && !is_dns1123_label(name) {
            return err(format!("ports[{i}].name"), format!("{name:?} is not a valid port name"));
        }
        if !names.insert(name) {
            return err(format!("ports[{i}].name"), format!("duplicate value {name:?}"));
        }
    }
    Ok(())
}

fn selector(field: &str, sel: &LabelSelector) -> Result {
    for (k, v) in sel.match_labels.iter().flatten() {
        if !is_label_key(k) {
            return err(format!("{field}.matchLabels"), format!("{k:?} is not a valid label key"));
        }
        if !is_label_value(v) {
            return err(format!("{field}.matchLabels[{k}]"), format!("{v:?} is not a valid label value"));
        }
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if !is_label_key(&e.key) {
            return err(format!("{f}.key"), format!("{:?} is not a valid label key", e.key));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return err(format!("{f}.values"), "must be specified when `operator` is 'In' or 'NotIn'")
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return err(format!("{f}.values"), "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return err(format!("{f}.operator"), format!("{other:?} is not a valid selector operator")),
        }
    }
    Ok(())
}

fn policy_ports(field: &str, ports: &[NetworkPolicyPort]) -> Result {
    for (i, p) in ports.iter().enumerate() {
        let f = format!("{field}[{i}]");
        protocol(&format!("{f}.protocol"), p.protocol.as_deref())?;
        match &p.port {
            Some(IntOrString::Int(n)) => port_number(&format!("{f}.port"), *n)?,
            Some(IntOrString::String(s)) if !is_iana_svc_name(s) => {
                return err(format!("{f}.port"), format!("{s:?} is not a valid port name"))
            }
            _ => {}
        }
        if let Some(end) = p.end_port {
            match &p.port {
                Some(IntOrString::Int(n)) if end >= *n => port_number(&format!("{f}.endPort"), end)?,
                Some(IntOrString::Int(_)) => {
                    return err(format!("{f}.endPort"), "must be greater than or equal to `port`")
                }
                _ => return err(format!("{f}.endPort"), "may not be specified when `port` is not a number"),
            }
        }
    }
    Ok(())
}

fn policy_peers(field: &str, peers: &[NetworkPolicyPeer]) -> Result {
    for (i, p) in peers.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(s) = &p.pod_selector {
            selector(&format!("{f}.podSelector"), s)?;
        }
        if let Some(s) = &p.namespace_selector {
            selector(&format!("{f}.namespaceSelector"), s)?;
        }
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return err(&f, "may not specify ipBlock together with podSelector or namespaceSelector");
            }
            let Some(net) = parse_cidr_sloppy(&b.cidr) else {
                return err(format!("{f}.ipBlock.cidr"), format!("{:?} is not a valid CIDR", b.cidr));
            };
            for (j, e) in b.except.iter().flatten().enumerate() {
                let ef = format!("{f}.ipBlock.except[{j}]");
                let Some(en) = parse_cidr_sloppy(e) else {
                    return err(ef, format!("{e:?} is not a valid CIDR"));
                };
                if !net.trunc().contains(&en.trunc()) || en.prefix_len() <= net.prefix_len() {
                    return err(ef, "must be a strict subset of ipBlock.cidr");
                }
            }
        } else if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            return err(&f, "must specify a peer (podSelector, namespaceSelector or ipBlock)");
        }
    }
    Ok(())
}

/// Validates a NetworkPolicy.
pub fn network_policy(np: &NetworkPolicy) -> Result {
    validate_meta(&np.metadata, true, is_dns1123_subdomain, "networkpolicy")?;
    let Some(spec) = &np.spec else {
        return err("spec", "required");
    };
    selector("spec.podSelector", &spec.pod_selector.clone().unwrap_or_default())?;
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return err(
                format!("spec.policyTypes[{i}]"),
                format!("unsupported value {t:?}: supported values are \"Ingress\", \"Egress\""),
            );
        }
    }
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        policy_ports(&format!("spec.ingress[{i}].ports"), r.ports.as_deref().unwrap_or_default())?;
        policy_peers(&format!("spec.ingress[{i}].from"), r.from.as_deref().unwrap_or_default())?;
    }
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        policy_ports(&format!("spec.egress[{i}].ports"), r.ports.as_deref().unwrap_or_default())?;
        policy_peers(&format!("spec.egress[{i}].to"), r.to.as_deref().unwrap_or_default())?;
    }
    Ok(())
}

/// Validates a ServiceCIDR.
pub fn service_cidr(sc: &ServiceCIDR) -> Result {
    validate_meta(&sc.metadata, false, is_dns1123_subdomain, "servicecidr")?;
    let cidrs = sc.spec.as_ref().and_then(|s| s.cidrs.as_deref()).unwrap_or_default();
    if cidrs.is_empty() || cidrs.len() > 2 {
        return err("spec.cidrs", "must hold one or two CIDRs (one per IP family)");
    }
    let mut families = BTreeSet::new();
    for (i, c) in cidrs.iter().enumerate() {
        let f = format!("spec.cidrs[{i}]");
        let Some(n) = parse_cidr_sloppy(c) else {
            return err(f, format!("{c:?} is not a valid CIDR"));
        };
        if !families.insert(matches!(n, ipnet::IpNet::V4(_))) {
            return err(f, "at most one CIDR per IP family");
        }
    }
    Ok(())
}

/// Validates a KubeProxyConfiguration (the fields flowgate uses).
pub fn kube_proxy_configuration(c: &KubeProxyConfiguration) -> Result {
    if !c.cluster_cidr.trim().is_empty() {
        let parts: Vec<&str> = c.cluster_cidr.split(',').map(str::trim).collect();
        if parts.len() > 2 {
            return err("clusterCIDR", "at most two CIDRs (one per IP family)");
        }
        for p in parts {
            cidr("clusterCIDR", p)?;
        }
    }
    if !matches!(
        c.detect_local_mode.as_str(),
        "" | "ClusterCIDR" | "NodeCIDR" | "BridgeInterface" | "InterfaceNamePrefix"
    ) {
        return err("detectLocalMode", format!("unsupported value {:?}: supported values are \"ClusterCIDR\", \"NodeCIDR\", \"BridgeInterface\", \"InterfaceNamePrefix\"", c.detect_local_mode));
    }
    if c.detect_local_mode == "InterfaceNamePrefix" && c.detect_local.interface_name_prefix.is_empty() {
        return err("detectLocal.interfaceNamePrefix", "required when detectLocalMode is InterfaceNamePrefix");
    }
    if c.detect_local_mode == "BridgeInterface" && c.detect_local.bridge_interface.is_empty() {
        return err("detectLocal.bridgeInterface", "required when detectLocalMode is BridgeInterface");
    }
    for (i, a) in c.node_port_addresses.iter().enumerate() {
        let f = format!("nodePortAddresses[{i}]");
        match a.as_str() {
            "primary" if c.node_port_addresses.len() > 1 => return err(f, "\"primary\" must be the only value"),
            "primary" | "all" | "localhost" => {}
            other => cidr(&f, other)?,
        }
    }
    if !matches!(c.mode.as_str(), "" | "nftables" | "iptables" | "ipvs" | "kernelspace") {
        return err("mode", format!("unsupported value {:?}", c.mode));
    }
    Ok(())
}

/// Validates a FlowgateConfiguration.
pub fn flowgate_configuration(c: &FlowgateConfiguration) -> Result {
    for (i, e) in c.outbound_nat.exceptions.iter().enumerate() {
        cidr(&format!("outboundNAT.exceptions[{i}]"), e)?;
    }
    for (i, e) in c.external_ips.allowed_cidrs.iter().flatten().enumerate() {
        cidr(&format!("externalIPs.allowedCIDRs[{i}]"), e)?;
    }
    if !matches!(c.local_delivery.as_str(), "" | "Direct" | "Routed") {
        return err("localDelivery", format!("unsupported value {:?} (Direct or Routed)", c.local_delivery));
    }
    for (name, value) in c.flow_timeouts.fields() {
        if value.is_empty() {
            continue;
        }
        let field = format!("flowTimeouts.{name}");
        match crate::config::parse_go_duration(value) {
            None => return err(field, format!("{value:?} is not a duration (e.g. 30s, 5m, 24h)")),
            Some(d) if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(30 * 86400) => {
                return err(field, format!("{value:?} is out of range (1s to 720h)"))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1035_label("web"));
        assert!(!is_dns1035_label("1web"));
        assert!(is_iana_svc_name("http"));
        assert!(!is_iana_svc_name("8080"));
        assert!(!is_iana_svc_name("a--b"));
        assert!(is_label_key("topology.kubernetes.io/zone"));
        assert!(!is_label_key("/zone"));
    }
}
