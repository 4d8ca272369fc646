//! Loading cluster state from manifest files: YAML (several documents per file) or JSON, `kind:
//! List` expanded, directories read in name order. Every object is parsed into its `k8s-openapi`
//! type and validated; the first problem stops the load with an error naming the file, the
//! document index and the field. Kinds flowgate does not read are skipped with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::{FlowgateConfiguration, KubeProxyConfiguration};
use crate::error::{FieldError, ManifestError};
use crate::state::{ClusterState, ObjectKey};
use crate::validate;

/// The result of a successful load.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The objects.
    pub state: ClusterState,
    /// One line per skipped document (unknown kinds).
    pub warnings: Vec<String>,
}

/// Loads every manifest under `paths` (files, or directories whose `*.yaml`, `*.yml` and `*.json`
/// files are read in name order, not recursively).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Loaded, ManifestError> {
    let mut loader = Loader::default();
    for p in paths {
        let p = p.as_ref();
        let meta = std::fs::metadata(p).map_err(|source| ManifestError::Read { path: p.to_path_buf(), source })?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|source| ManifestError::Read { path: p.to_path_buf(), source })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && matches!(f.extension().and_then(|e| e.to_str()), Some("yaml") | Some("yml") | Some("json"))
                })
                .collect();
            files.sort();
            for f in files {
                loader.load_file(&f)?;
            }
        } else {
            loader.load_file(p)?;
        }
    }
    Ok(loader.finish())
}

/// Loads manifests from text, naming them `path` in errors. JSON text is YAML too.
pub fn load_str(path: &Path, text: &str) -> Result<Loaded, ManifestError> {
    let mut loader = Loader::default();
    loader.load_text(path, text)?;
    Ok(loader.finish())
}

/// Accumulates objects from several files; knows where each object was first seen.
#[derive(Debug, Default)]
pub struct Loader {
    state: ClusterState,
    warnings: Vec<String>,
    seen: BTreeMap<String, String>,
}

/// The head of a JSON document: enough to tell a `List` and reach its items without parsing them.
#[derive(Deserialize)]
struct ListHead {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    items: Option<Vec<Box<RawValue>>>,
}

struct Doc<'a> {
    path: &'a Path,
    index: usize,
    /// Prefix of field paths inside a `List` (`items[3].`).
    prefix: String,
}

impl Doc<'_> {
    fn invalid(&self, object: &str, e: FieldError) -> ManifestError {
        ManifestError::Invalid {
            path: self.path.to_path_buf(),
            document: self.index,
            object: object.to_string(),
            field: format!("{}{}", self.prefix, e.field),
            message: e.message,
        }
    }
}

impl Loader {
    /// Loads one file.
    pub fn load_file(&mut self, path: &Path) -> Result<(), ManifestError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
        self.load_text(path, &text)
    }

    /// Loads the documents of one file's text: JSON (one or more concatenated values) when the
    /// file is named `*.json`, else YAML (documents separated by `---`).
    pub fn load_text(&mut self, path: &Path, text: &str) -> Result<(), ManifestError> {
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let syntax = |index: usize, e: serde_json::Error| ManifestError::Syntax {
                path: path.to_path_buf(),
                document: index,
                message: e.to_string(),
            };
            for (index, raw) in serde_json::Deserializer::from_str(text).into_iter::<Box<RawValue>>().enumerate() {
                let raw = raw.map_err(|e| syntax(index, e))?;
                // A List is taken item by item, so that a large file never becomes one large tree.
                let head: ListHead = serde_json::from_str(raw.get()).map_err(|e| syntax(index, e))?;
                let doc = Doc { path, index, prefix: String::new() };
                match (head.api_version.as_deref(), head.kind.as_deref(), head.items) {
                    (Some("v1"), Some("List"), Some(items)) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let inner = Doc { path, index, prefix: format!("items[{i}].") };
                            let value: Value = serde_json::from_str(item.get()).map_err(|e| syntax(index, e))?;
                            self.load_value(&inner, value)?;
                        }
                    }
                    _ => {
                        let value: Value = serde_json::from_str(raw.get()).map_err(|e| syntax(index, e))?;
                        self.load_value(&doc, value)?;
                    }
                }
            }
            return Ok(());
        }
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc).map_err(|e| ManifestError::Syntax {
                path: path.to_path_buf(),
                document: index,
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            let doc = Doc { path, index, prefix: String::new() };
            self.load_value(&doc, value)?;
        }
        Ok(())
    }

    /// The loaded state.
    pub fn finish(self) -> Loaded {
        Loaded { state: self.state, warnings: self.warnings }
    }

    fn load_value(&mut self, doc: &Doc<'_>, value: Value) -> Result<(), ManifestError> {
        let Value::Object(map) = &value else {
            return Err(
                doc.invalid("document", FieldError::new("(root)", "must be an object with apiVersion and kind"))
            );
        };
        let api_version = match map.get("apiVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(doc.invalid("object", FieldError::new("apiVersion", "required (a non-empty string)"))),
        };
        let kind = match map.get("kind") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(doc.invalid("object", FieldError::new("kind", "required (a non-empty string)"))),
        };
        let label = object_label(&kind, map);
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "List") => {
                let items = match value {
                    Value::Object(mut m) => m.remove("items"),
                    _ => None,
                };
                let items = match items {
                    Some(Value::Array(items)) => items,
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => return Err(doc.invalid(&label, FieldError::new("items", "must be a list"))),
                };
                for (i, item) in items.into_iter().enumerate() {
                    let inner = Doc { path: doc.path, index: doc.index, prefix: format!("{}items[{i}].", doc.prefix) };
                    self.load_value(&inner, item)?;
                }
                Ok(())
            }
            ("v1", "Node") => {
                let o: k8s_openapi::api::core::v1::Node = parse(doc, &label, value)?;
                validate::node(&o).map_err(|e| doc.invalid(&label, e))?;
                let name = o.metadata.name.clone().unwrap_or_default();
                self.note(doc, &format!("Node {name}"))?;
                self.state.nodes.insert(name, o);
                Ok(())
            }
            ("v1", "Namespace") => {
                let o: k8s_openapi::api::core::v1::Namespace = parse(doc, &label, value)?;
                validate::namespace(&o).map_err(|e| doc.invalid(&label, e))?;
                let name = o.metadata.name.clone().unwrap_or_default();
                self.note(doc, &format!("Namespace {name}"))?;
                self.state.namespaces.insert(name, o);
                Ok(())
            }
            ("v1", "Pod") => {
                let o: k8s_openapi::api::core::v1::Pod = parse(doc, &label, value)?;
                validate::pod(&o).map_err(|e| doc.invalid(&label, e))?;
                let key = key_of(&o.metadata);
                self.note(doc, &format!("Pod {key}"))?;
                self.state.pods.insert(key, o);
                Ok(())
            }
            ("v1", "Service") => {
                let o: k8s_openapi::api::core::v1::Service = parse(doc, &label, value)?;
                validate::service(&o).map_err(|e| doc.invalid(&label, e))?;
                let key = key_of(&o.metadata);
                self.note(doc, &format!("Service {key}"))?;
                self.state.services.insert(key, o);
                Ok(())
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let o: k8s_openapi::api::discovery::v1::EndpointSlice = parse(doc, &label, value)?;
                validate::endpoint_slice(&o).map_err(|e| doc.invalid(&label, e))?;
                let key = key_of(&o.metadata);
                self.note(doc, &format!("EndpointSlice {key}"))?;
                self.state.endpoint_slices.insert(key, o);
                Ok(())
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let o: k8s_openapi::api::networking::v1::NetworkPolicy = parse(doc, &label, value)?;
                validate::network_policy(&o).map_err(|e| doc.invalid(&label, e))?;
                let key = key_of(&o.metadata);
                self.note(doc, &format!("NetworkPolicy {key}"))?;
                self.state.network_policies.insert(key, o);
                Ok(())
            }
            ("networking.k8s.io/v1" | "networking.k8s.io/v1beta1", "ServiceCIDR") => {
                let mut value = value;
                if let Value::Object(m) = &mut value {
                    m.insert("apiVersion".into(), Value::String("networking.k8s.io/v1".into()));
                }
                let o: k8s_openapi::api::networking::v1::ServiceCIDR = parse(doc, &label, value)?;
                validate::service_cidr(&o).map_err(|e| doc.invalid(&label, e))?;
                let name = o.metadata.name.clone().unwrap_or_default();
                self.note(doc, &format!("ServiceCIDR {name}"))?;
                self.state.service_cidrs.insert(name, o);
                Ok(())
            }
            ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration") => {
                let o: KubeProxyConfiguration = parse(doc, &label, value)?;
                validate::kube_proxy_configuration(&o).map_err(|e| doc.invalid(&label, e))?;
                self.note(doc, "KubeProxyConfiguration")?;
                self.state.kube_proxy = Some(o);
                Ok(())
            }
            ("flowgate.io/v1alpha1", "FlowgateConfiguration") => {
                let o: FlowgateConfiguration = parse(doc, &label, value)?;
                validate::flowgate_configuration(&o).map_err(|e| doc.invalid(&label, e))?;
                self.note(doc, "FlowgateConfiguration")?;
                self.state.flowgate = Some(o);
                Ok(())
            }
            _ => {
                self.warnings.push(format!(
                    "{}: document {}: skipping {api_version} {kind} (not a kind flowgate reads)",
                    doc.path.display(),
                    doc.index
                ));
                Ok(())
            }
        }
    }

    /// Records where an object was defined; a second definition is an error.
    fn note(&mut self, doc: &Doc<'_>, object: &str) -> Result<(), ManifestError> {
        let here = format!("{}: document {}", doc.path.display(), doc.index);
        if let Some(first) = self.seen.get(object) {
            return Err(ManifestError::Duplicate {
                path: doc.path.to_path_buf(),
                document: doc.index,
                object: object.to_string(),
                first: first.clone(),
            });
        }
        self.seen.insert(object.to_string(), here);
        Ok(())
    }
}

fn parse<T: DeserializeOwned>(doc: &Doc<'_>, label: &str, value: Value) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "(root)".to_string(),
            p => p,
        };
        doc.invalid(label, FieldError::new(field, e.inner().to_string()))
    })
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn object_label(kind: &str, map: &serde_json::Map<String, Value>) -> String {
    let meta = map.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let ns = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str);
    match (ns, name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, ManifestError> {
        load_str(Path::new("test.yaml"), text)
    }

    #[test]
    fn loads_several_documents_and_lists() {
        let l = load(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: web, namespace: ns1}\n  spec:\n    clusterIP: 172.30.0.1\n    ports: [{port: 80}]\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n",
        )
        .unwrap();
        assert_eq!(l.state.namespaces.len(), 1);
        assert!(l.state.services.contains_key(&ObjectKey::new("ns1", "web")));
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("apps/v1 Deployment"), "{:?}", l.warnings);
    }

    #[test]
    fn type_errors_name_document_and_field() {
        let e = load("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: eighty}]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.yaml: document 1: Service web: spec.ports[0].port:"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let e = load(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80, protocol: ICMP}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("document 0: Service web: spec.ports[0].protocol: unsupported value \"ICMP\""), "{e}");
        let e = load("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: web}\n  spec:\n    ports: [{port: 70000}]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("items[0].spec.ports[0].port: must be between 1 and 65535"), "{e}");
    }

    #[test]
    fn syntax_errors_and_missing_kind() {
        let e = load("a: [1, 2\n").unwrap_err();
        assert!(matches!(e, ManifestError::Syntax { document: 0, .. }), "{e}");
        let e = load("apiVersion: v1\nmetadata: {name: x}\n").unwrap_err().to_string();
        assert!(e.contains("kind: required"), "{e}");
        let e = load("- 1\n- 2\n").unwrap_err().to_string();
        assert!(e.contains("must be an object"), "{e}");
    }

    #[test]
    fn json_files_may_hold_several_values() {
        let l = load_str(
            Path::new("x.json"),
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}} {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"b"}}"#,
        )
        .unwrap();
        assert_eq!(l.state.namespaces.len(), 2);
        let e = load_str(Path::new("x.json"), r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}} {"#)
            .unwrap_err();
        assert!(matches!(e, ManifestError::Syntax { document: 1, .. }), "{e}");
    }

    #[test]
    fn duplicates_are_errors() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n";
        let e = load(&format!("{svc}---\n{svc}")).unwrap_err().to_string();
        assert!(e.contains("defined twice (first in test.yaml: document 0)"), "{e}");
    }

    #[test]
    fn kube_proxy_configuration() {
        let l = load("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\nclusterCIDR: 10.0.0.0/8,fd00::/48\nnftables: {masqueradeAll: true}\nnodePortAddresses: [primary]\nunknownField: 3\n").unwrap();
        let c = l.state.kube_proxy.unwrap();
        assert!(c.masquerade_all());
        assert_eq!(c.node_port_addresses, vec!["primary"]);
        let e =
            load("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0/8\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("clusterCIDR: \"10.0.0/8\" is not a valid CIDR"), "{e}");
    }

    #[test]
    fn flowgate_configuration() {
        let doc = |rest: &str| format!("apiVersion: flowgate.io/v1alpha1\nkind: FlowgateConfiguration\n{rest}");
        let c = load(&doc("outboundNAT: {enabled: true}\n")).unwrap().state.flowgate.unwrap();
        assert!(!c.routed_delivery(), "direct delivery is the default");
        let c = load(&doc("localDelivery: Routed\n")).unwrap().state.flowgate.unwrap();
        assert!(c.routed_delivery());
        let e = load(&doc("localDelivery: routed\n")).unwrap_err().to_string();
        assert!(
            e.contains("document 0: FlowgateConfiguration")
                && e.contains("localDelivery: unsupported value \"routed\" (Direct or Routed)"),
            "{e}"
        );
        let e = load(&doc("outboundNAT: {exceptions: [10.0.0.0/33]}\n")).unwrap_err().to_string();
        assert!(e.contains("outboundNAT.exceptions[0]"), "{e}");
        let c =
            load(&doc("flowTimeouts: {tcpEstablished: 1h30m, udpEmbryonic: 10s}\n")).unwrap().state.flowgate.unwrap();
        let t = c.flow_timeouts.resolved();
        assert_eq!(t.tcp_established, std::time::Duration::from_secs(5400));
        assert_eq!(t.udp_embryonic, std::time::Duration::from_secs(10));
        assert_eq!(t.tcp_embryonic, std::time::Duration::from_secs(30), "the default");
        let e = load(&doc("flowTimeouts: {udp: 2 minutes}\n")).unwrap_err().to_string();
        assert!(e.contains("flowTimeouts.udp: \"2 minutes\" is not a duration"), "{e}");
        let e = load(&doc("flowTimeouts: {tcpClosing: 10ms}\n")).unwrap_err().to_string();
        assert!(e.contains("flowTimeouts.tcpClosing: \"10ms\" is out of range"), "{e}");
    }
}
