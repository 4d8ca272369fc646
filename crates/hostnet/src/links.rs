//! The links an endpoint stands for, made through netlink in process: a veth pair with its host
//! side in the agent's namespace (named from the attachment, [`host_interface_name`]) and its other
//! side, the pod's interface, made directly inside the pod's namespace; the pod's addresses (host
//! routes, /32 and /128), a route to the gateway on the link and the default route through it; on
//! the host side the gateway address, the route to each pod address and the sysctls the switch
//! needs (it masquerades before routing, so the host accepts packets from its own addresses; lo
//! accepts loopback addresses arriving on it, for the replies of host ports on 127.0.0.1).
//!
//! A netlink socket works in the namespace it was opened in, so the pod's side is configured through
//! a socket opened by a short-lived thread that entered the pod's namespace (`setns(2)`); no
//! thread of the agent ever changes namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd as _;
use std::path::Path;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::objects::EndpointIp;

/// What failed while making, checking or removing links.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct LinkError {
    /// What was being done.
    pub op: String,
    /// Why it failed.
    pub message: String,
}

fn fail(op: impl Into<String>) -> impl FnOnce(&dyn std::fmt::Display) -> LinkError {
    let op = op.into();
    move |e| LinkError { op, message: e.to_string() }
}

/// The prefix of every host-side interface the agent makes; with [`host_interface_name`]'s 12 hex
/// digits it fills the 15 bytes an interface name may have.
pub const HOST_PREFIX: &str = "fgv";

/// The host side of an attachment's veth: `fgv` and 12 hex digits of a hash (FNV-1a) of the
/// attachment's id, so the same attachment always gets the same name and a stale one is found again.
pub fn host_interface_name(endpoint_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in endpoint_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_PREFIX}{:012x}", h & 0xffff_ffff_ffff)
}

/// The MAC of an attachment's pod-side interface: locally administered, unicast, from a hash of
/// the attachment's id, so it is known before the interface exists (the switch binds it first).
pub fn pod_mac(endpoint_id: &str) -> [u8; 6] {
    let mut h: u64 = 0x84222325_cbf29ce4;
    for b in endpoint_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02 | (b[0] & 0xfc), b[1], b[2], b[3], b[4], b[5]]
}

/// Whether `name` is one the agent makes (only those are ever removed as leftovers).
pub fn is_host_interface_name(name: &str) -> bool {
    name.len() == HOST_PREFIX.len() + 12
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// What an endpoint's links should be.
#[derive(Clone, Debug)]
pub struct LinkSpec<'a> {
    /// The host side's name.
    pub host: &'a str,
    /// The pod side's name.
    pub ifname: &'a str,
    /// The pod's namespace.
    pub netns: &'a Path,
    /// The pod's addresses and gateways.
    pub ips: &'a [EndpointIp],
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// The pod side's MAC.
    pub mac: [u8; 6],
}

/// What was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Made {
    /// The host side's index.
    pub host_ifindex: u32,
    /// The pod side's MAC.
    pub mac: [u8; 6],
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A netlink connection in the agent's own namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

/// Opens a netlink connection in the namespace of `netns` (the calling thread's when `None`),
/// driven by the current tokio runtime.
fn connect(netns: Option<&Path>) -> Result<Handle, LinkError> {
    let rt = tokio::runtime::Handle::try_current().map_err(|e| fail("netlink")(&e))?;
    let (conn, handle) = match netns {
        None => {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| fail("open a netlink socket")(&e))?;
            (conn, handle)
        }
        Some(path) => {
            let ns = File::open(path).map_err(|e| fail(format!("open the pod's namespace {}", path.display()))(&e))?;
            let op = format!("open a netlink socket in {}", path.display());
            // A thread of its own enters the namespace and opens the socket there; it ends in
            // that namespace, so no thread of the agent is ever moved.
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _rt = rt.enter();
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| fail(format!("{op}: setns"))(&e))?;
                    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| fail(op.clone())(&e))?;
                    Ok((conn, handle))
                })
                .join()
                .map_err(|_| LinkError { op: op.clone(), message: "thread panicked".into() })?
            })?
        }
    };
    rt.spawn(conn);
    Ok(handle)
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, LinkError> {
    match h.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(m) => Ok(m),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(None),
        Err(e) => Err(fail(format!("find interface {name}"))(&e)),
    }
}

const fn libc_enodev() -> i32 {
    19 // ENODEV
}

fn mac_of(m: &LinkMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(b);
            Some(mac)
        }
        _ => None,
    })
}

fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

async fn add_address(h: &Handle, index: u32, ip: IpAddr, len: u8, what: &str) -> Result<(), LinkError> {
    let mut req = h.address().add(index, ip, len).replace();
    if ip.is_ipv6() {
        // Usable at once: no duplicate address detection on a point-to-point veth.
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await.map_err(|e| fail(format!("add {ip}/{len} to {what}"))(&e))
}

async fn add_route(
    h: &Handle,
    dst: IpAddr,
    len: u8,
    via: Option<IpAddr>,
    index: u32,
    what: &str,
) -> Result<(), LinkError> {
    let msg = match (dst, via) {
        (IpAddr::V4(d), via) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(d, len).output_interface(index);
            match via {
                Some(IpAddr::V4(g)) => b = b.gateway(g),
                _ => b = b.scope(RouteScope::Link),
            }
            b.build()
        }
        (IpAddr::V6(d), via) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(d, len).output_interface(index);
            match via {
                Some(IpAddr::V6(g)) => b = b.gateway(g),
                _ => b = b.scope(RouteScope::Link),
            }
            b.build()
        }
    };
    let mut req = h.route().add(msg);
    req = req.replace();
    req.execute().await.map_err(|e| fail(format!("add route {dst}/{len} ({what})"))(&e))
}

/// Writes `/proc/sys/<key>` for the calling thread's namespace.
fn sysctl(key: &str, value: &str) -> Result<(), LinkError> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|e| fail(format!("write {}", path.display()))(&e))
}

impl Netlink {
    /// A connection in the calling thread's namespace (the agent's: the node's).
    pub fn connect() -> Result<Netlink, LinkError> {
        Ok(Netlink { handle: connect(None)? })
    }

    /// Lets the node forward packets (what any pod networking needs).
    pub fn enable_forwarding(&self, v6: bool) -> Result<(), LinkError> {
        sysctl("net/ipv4/ip_forward", "1")?;
        if v6 {
            sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        Ok(())
    }

    /// Makes an endpoint's links: [`Netlink::create_pair`] then [`Netlink::configure`]. On
    /// failure everything made so far is removed again.
    pub async fn create(&self, spec: &LinkSpec<'_>) -> Result<Made, LinkError> {
        let made = self.create_pair(spec).await?;
        match self.configure(spec, made.host_ifindex).await {
            Ok(()) => Ok(made),
            Err(e) => {
                let _ = self.delete(spec.host).await;
                Err(e)
            }
        }
    }

    /// Makes the veth pair: its host side up in the agent's namespace, its other side (with the
    /// spec's MAC, still down, so the pod cannot send yet) made directly inside the pod's
    /// namespace. On failure nothing is left.
    pub async fn create_pair(&self, spec: &LinkSpec<'_>) -> Result<Made, LinkError> {
        let h = &self.handle;
        let ns = File::open(spec.netns)
            .map_err(|e| fail(format!("open the pod's network namespace {}", spec.netns.display()))(&e))?;
        // A leftover of an earlier attempt with the same name goes first.
        self.delete(spec.host).await?;
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.ifname.to_owned())
            .address(spec.mac.to_vec())
            .setns_by_fd(ns.as_raw_fd());
        let mut host =
            LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth).name(spec.host.to_owned()).up();
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
            host = host.mtu(mtu);
        }
        let msg = host.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
        h.link().add(msg).execute().await.map_err(|e| {
            fail(format!("create veth {} <-> {} in {}", spec.host, spec.ifname, spec.netns.display()))(&e)
        })?;
        let host_link = link_by_name(h, spec.host)
            .await?
            .ok_or_else(|| LinkError { op: format!("find {}", spec.host), message: "gone after creation".into() })?;
        Ok(Made { host_ifindex: host_link.header.index, mac: spec.mac })
    }

    /// Addresses, routes and sysctls on both sides of a pair [`Netlink::create_pair`] made, and the
    /// pod's side set up. On failure the pair is removed.
    pub async fn configure(&self, spec: &LinkSpec<'_>, host_ifindex: u32) -> Result<(), LinkError> {
        let r = self.try_configure(spec, host_ifindex).await;
        if r.is_err() {
            let _ = self.delete(spec.host).await;
        }
        r
    }

    async fn try_configure(&self, spec: &LinkSpec<'_>, host_ifindex: u32) -> Result<(), LinkError> {
        let h = &self.handle;
        let v4 = spec.ips.iter().any(|i| i.address.addr().is_ipv4());
        if v4 {
            sysctl(&format!("net/ipv4/conf/{}/rp_filter", spec.host), "0")?;
            sysctl(&format!("net/ipv4/conf/{}/accept_local", spec.host), "1")?;
            // The replies of the node's own connections to a host port on 127.0.0.1 are handed
            // to lo by the endpoint program, 127.0.0.1 to 127.0.0.1 and without the route their
            // first packet had: lo must accept loopback (and local) addresses arriving on it.
            // Only lo: packets arriving anywhere else stay martian (CVE-2020-8558).
            sysctl("net/ipv4/conf/lo/route_localnet", "1")?;
            sysctl("net/ipv4/conf/lo/accept_local", "1")?;
        }
        if spec.ips.iter().any(|i| i.address.addr().is_ipv6()) {
            // Neighbour solicitations for the pod's addresses need a usable link-local source;
            // the kernel's own is tentative for a second or two (duplicate address detection).
            add_address(h, host_ifindex, IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)), 64, spec.host).await?;
        }
        let mut gateways: Vec<IpAddr> = Vec::new();
        for ip in spec.ips {
            if !gateways.contains(&ip.gateway) {
                add_address(h, host_ifindex, ip.gateway, host_len(ip.gateway), spec.host).await?;
                gateways.push(ip.gateway);
            }
            let a = ip.address.addr();
            add_route(h, a, host_len(a), None, host_ifindex, spec.host).await?;
        }

        // The pod's side.
        let p = connect(Some(spec.netns))?;
        let pod_link = link_by_name(&p, spec.ifname).await?.ok_or_else(|| LinkError {
            op: format!("find {} in {}", spec.ifname, spec.netns.display()),
            message: "not there after creation".into(),
        })?;
        let index = pod_link.header.index;
        if let Some(lo) = link_by_name(&p, "lo").await? {
            p.link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await
                .map_err(|e| fail("set lo up in the pod")(&e))?;
        }
        p.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| fail(format!("set {} up", spec.ifname))(&e))?;
        let mut defaults = (false, false);
        for ip in spec.ips {
            let a = ip.address.addr();
            add_address(&p, index, a, host_len(a), spec.ifname).await?;
            add_route(&p, ip.gateway, host_len(ip.gateway), None, index, "the gateway, on the link").await?;
            let done = if a.is_ipv4() { &mut defaults.0 } else { &mut defaults.1 };
            if !*done {
                let any =
                    if a.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
                add_route(&p, any, 0, Some(ip.gateway), index, "default").await?;
                *done = true;
            }
        }
        // The kernel marks the interface running (operstate up) a moment after it is set up;
        // until then IPv6 does not resolve neighbours on it. ADD returns once it is usable.
        let t = std::time::Instant::now();
        loop {
            let running =
                link_by_name(&p, spec.ifname).await?.is_some_and(|l| l.header.flags.contains(LinkFlags::Running));
            if running {
                break;
            }
            if t.elapsed() > std::time::Duration::from_secs(2) {
                return Err(LinkError {
                    op: format!("wait for {} to come up", spec.ifname),
                    message: "not running after 2 s".into(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Removes the veth whose host side is `host` (its pod side goes with it); `false` when there
    /// was none.
    pub async fn delete(&self, host: &str) -> Result<bool, LinkError> {
        let Some(link) = link_by_name(&self.handle, host).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(false),
            Err(e) => Err(fail(format!("delete {host}"))(&e)),
        }
    }

    /// The index of the host-side interface `host`, if it exists.
    pub async fn host_ifindex(&self, host: &str) -> Result<Option<u32>, LinkError> {
        Ok(link_by_name(&self.handle, host).await?.map(|l| l.header.index))
    }

    /// The names of every interface of the agent's namespace.
    pub async fn interface_names(&self) -> Result<std::collections::BTreeSet<String>, LinkError> {
        let links: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(|e| fail("list interfaces")(&e))?;
        Ok(links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            })
            .collect())
    }

    /// Every interface of the agent's namespace named as the agent names host sides, with its
    /// index.
    pub async fn host_interfaces(&self) -> Result<Vec<(String, u32)>, LinkError> {
        let links: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(|e| fail("list interfaces")(&e))?;
        Ok(links
            .iter()
            .filter_map(|l| {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                is_host_interface_name(&name).then_some((name, l.header.index))
            })
            .collect())
    }

    /// Checks an endpoint's links as CHECK does; every problem found, empty when all is well.
    pub async fn check(&self, spec: &LinkSpec<'_>, mac: Option<[u8; 6]>) -> Vec<String> {
        let mut problems = Vec::new();
        match link_by_name(&self.handle, spec.host).await {
            Ok(Some(l)) if !l.header.flags.contains(LinkFlags::Up) => {
                problems.push(format!("host interface {} is down", spec.host))
            }
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!("host interface {} is missing", spec.host)),
            Err(e) => problems.push(e.to_string()),
        }
        let p = match connect(Some(spec.netns)) {
            Ok(p) => p,
            Err(e) => {
                problems.push(e.to_string());
                return problems;
            }
        };
        let link = match link_by_name(&p, spec.ifname).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                problems.push(format!("interface {} is missing in {}", spec.ifname, spec.netns.display()));
                return problems;
            }
            Err(e) => {
                problems.push(e.to_string());
                return problems;
            }
        };
        if !link.header.flags.contains(LinkFlags::Up) {
            problems.push(format!("interface {} is down", spec.ifname));
        }
        if let (Some(want), Some(got)) = (mac, mac_of(&link)) {
            if want != got {
                problems.push(format!(
                    "interface {} has MAC {}, the agent recorded {}",
                    spec.ifname,
                    mac_string(got),
                    mac_string(want)
                ));
            }
        }
        let index = link.header.index;
        let addrs: Vec<IpAddr> =
            match p.address().get().set_link_index_filter(index).execute().try_collect::<Vec<_>>().await {
                Ok(msgs) => msgs
                    .iter()
                    .flat_map(|m| m.attributes.iter())
                    .filter_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                    .collect(),
                Err(e) => {
                    problems.push(format!("list addresses of {}: {e}", spec.ifname));
                    Vec::new()
                }
            };
        for ip in spec.ips {
            if !addrs.contains(&ip.address.addr()) {
                problems.push(format!("interface {} lacks address {}", spec.ifname, ip.address.addr()));
            }
        }
        for v4 in [true, false] {
            let Some(ip) = spec.ips.iter().find(|i| i.address.addr().is_ipv4() == v4) else { continue };
            let msg = if v4 {
                RouteMessageBuilder::<Ipv4Addr>::new().build()
            } else {
                RouteMessageBuilder::<Ipv6Addr>::new().build()
            };
            let routes: Vec<_> = p.route().get(msg).execute().try_collect().await.unwrap_or_default();
            let has_default = routes.iter().any(|r| {
                r.header.destination_prefix_length == 0
                    && r.attributes.iter().any(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => IpAddr::V4(*g) == ip.gateway,
                        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => IpAddr::V6(*g) == ip.gateway,
                        _ => false,
                    })
            });
            if !has_default {
                problems.push(format!("no default route via {} in {}", ip.gateway, spec.netns.display()));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_and_recognised() {
        let a = host_interface_name("net/abc/eth0");
        assert_eq!(a.len(), 15);
        assert_eq!(a, host_interface_name("net/abc/eth0"));
        assert_ne!(a, host_interface_name("net/abd/eth0"));
        assert!(is_host_interface_name(&a));
        assert!(!is_host_interface_name("fgvXYZ"));
        assert!(!is_host_interface_name("eth0"));
        assert_eq!(parse_mac(&mac_string([1, 2, 3, 0xaa, 0xbb, 0xcc])), Some([1, 2, 3, 0xaa, 0xbb, 0xcc]));
        assert_eq!(parse_mac("01:02"), None);
    }
}
