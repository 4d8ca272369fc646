//! The host networking service (HNS): the node's networking objects — [`objects::Network`],
//! [`objects::Endpoint`] and their policies — with their store ([`store`]), address management
//! ([`ipam`]) and the links each endpoint stands for ([`links`]); [`service::HostNetworking`] ties
//! them together for the agent, and [`client`] is how the CLI and the CNI plugin reach the agent.

#![forbid(unsafe_code)]

pub mod client;
pub mod ipam;
pub mod links;
pub mod objects;
pub mod service;
pub mod store;

pub use objects::{
    Dns, Endpoint, EndpointIp, EndpointRequest, EndpointState, FieldError, IpRange, LoadBalancer,
    LoadBalancerPortMapping, Network, PodRef, Policy, Protocol,
};
pub use service::{HnsError, HostNetworking, Reconciled, Switch, SwitchError};
