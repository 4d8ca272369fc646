//! Cluster state from Kubernetes objects: reading manifests (YAML or JSON, files or directories)
//! into `k8s-openapi` types, validating them as the API server would, and holding them as one
//! [`ClusterState`] that the compiler turns into switch policy.
//!
//! Also home of the configuration documents that are not API objects:
//! [`KubeProxyConfiguration`] and flowgate's [`FlowgateConfiguration`].

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod error;
pub mod ip;
pub mod manifest;
pub mod state;
pub mod synthetic;
pub mod validate;

pub use config::{FlowTimeouts, FlowgateConfiguration, KubeProxyConfiguration, ResolvedFlowTimeouts};
pub use error::{FieldError, ManifestError};
pub use ip::{parse_cidr_sloppy, parse_ip_sloppy};
pub use manifest::{load_paths, load_str, Loaded, Loader};
pub use state::{ClusterState, HostPort, LoadBalancerPort, LocalAcl, LocalEndpoint, LocalLoadBalancer, ObjectKey};

pub use k8s_openapi;
