//! The persistent record of networks, endpoints and reserved addresses: one redb file (ACID
//! transactions; redb's file lock keeps a second agent out). Reserving an endpoint's addresses and
//! recording it is one transaction, as is removing it and releasing them, so a crash never leaves an
//! address reserved for no endpoint or an endpoint without its addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::ipam;
use crate::objects::{Endpoint, EndpointIp, IpRange, Network};

/// Networks by name, as JSON.
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
/// Endpoints by id, as JSON.
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
/// Load balancers by name, as JSON.
const LOAD_BALANCERS: TableDefinition<&str, &[u8]> = TableDefinition::new("load-balancers");
/// `<address>` -> the endpoint holding it. Node-wide: two networks (overlapping ranges, two
/// `usePodCIDR` networks, a runtime's `ipRanges`) never hand out one address twice.
const ADDRESSES: TableDefinition<&str, &str> = TableDefinition::new("addresses");
/// `<network>|<range set index>` -> the address handed out last.
const LAST: TableDefinition<&str, &str> = TableDefinition::new("last-reserved");
/// `format` -> the version of the records' format.
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");

/// The version of the records' format this build reads and writes. A store without one is of
/// version 0 (before versions were written), whose records read as version 1's. Bump it when a
/// record changes in a way an older agent would misread, and convert older records on open.
pub const FORMAT_VERSION: u32 = 1;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption, already open by another agent).
    #[error("store {path}: {message}")]
    Db {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The store was written by a newer flowgate: nothing is read or changed.
    #[error(
        "store {path} holds records of format {found}, newer than this agent's {supported}: run the \
         newer flowgated (nothing was changed)"
    )]
    Newer {
        /// The file.
        path: String,
        /// The format found.
        found: u32,
        /// The format this agent reads.
        supported: u32,
    },
    /// A range set has no free address.
    #[error("no free address in network {network:?}: range set {set} ({ranges}) has all {capacity} addresses in use")]
    Exhausted {
        /// The network.
        network: String,
        /// The index of the range set.
        set: usize,
        /// Its ranges, for the message.
        ranges: String,
        /// How many addresses it has.
        capacity: u128,
    },
}

/// The store.
#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    path: String,
}

fn addr_key(ip: IpAddr) -> String {
    ip.to_string()
}

/// The network of an endpoint id (`<network>/<container>/<ifname>`).
fn network_of(id: &str) -> &str {
    id.split('/').next().unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the store at `path`, creating its directory (0700).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.display().to_string();
        let fail = |message: String| StoreError::Db { path: p.clone(), message };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("create directory: {e}")))?;
        }
        let db = redb::Database::create(path).map_err(|e| fail(e.to_string()))?;
        let store = Store { db, path: p };
        // The format first: a newer agent's records are neither read nor touched.
        let found = store.format()?;
        if found > FORMAT_VERSION {
            return Err(StoreError::Newer { path: store.path.clone(), found, supported: FORMAT_VERSION });
        }
        // Create the tables, so readers never meet a missing one.
        store.write(|tx| {
            tx.open_table(META)?.insert("format", FORMAT_VERSION)?;
            tx.open_table(NETWORKS)?;
            tx.open_table(ENDPOINTS)?;
            tx.open_table(ADDRESSES)?;
            tx.open_table(LAST)?;
            tx.open_table(LOAD_BALANCERS)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// The format of the records (0: a store from before formats were written, or a new one).
    pub fn format(&self) -> Result<u32, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(self.err(e)),
        };
        Ok(t.get("format").map_err(|e| self.err(e))?.map(|v| v.value()).unwrap_or(0))
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.clone(), message: e.to_string() }
    }

    fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>) -> Result<T, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let out = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn read_all<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| self.err(format!("record {:?} is unreadable: {e}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// Every network.
    pub fn networks(&self) -> Result<Vec<Network>, StoreError> {
        self.read_all(NETWORKS)
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.read_all(ENDPOINTS)
    }

    /// Records a network (replacing one of the same name).
    pub fn put_network(&self, n: &Network) -> Result<(), StoreError> {
        let json = serde_json::to_vec(n).map_err(|e| self.err(e))?;
        self.write(|tx| {
            tx.open_table(NETWORKS)?.insert(n.name.as_str(), json.as_slice())?;
            Ok(())
        })
    }

    /// Forgets a network (its endpoints must be gone) and its allocation cursors.
    pub fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(NETWORKS)?.remove(name)?;
            let mut last = tx.open_table(LAST)?;
            let prefix = format!("{name}|");
            let keys: Vec<String> = last
                .iter()?
                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_owned()))
                .filter(|k| k.starts_with(&prefix))
                .collect();
            for k in keys {
                last.remove(k.as_str())?;
            }
            Ok(())
        })
    }

    /// Every load balancer.
    pub fn load_balancers(&self) -> Result<Vec<crate::objects::LoadBalancer>, StoreError> {
        self.read_all(LOAD_BALANCERS)
    }

    /// Records a load balancer (replacing one of the same name).
    pub fn put_load_balancer(&self, lb: &crate::objects::LoadBalancer) -> Result<(), StoreError> {
        let json = serde_json::to_vec(lb).map_err(|e| self.err(e))?;
        self.write(|tx| {
            tx.open_table(LOAD_BALANCERS)?.insert(lb.name.as_str(), json.as_slice())?;
            Ok(())
        })
    }

    /// Forgets a load balancer; whether there was one.
    pub fn delete_load_balancer(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.open_table(LOAD_BALANCERS)?.remove(name)?.is_some()))
    }

    /// Records an endpoint as it is now (its addresses must already be reserved for it).
    pub fn put_endpoint(&self, ep: &Endpoint) -> Result<(), StoreError> {
        let json = serde_json::to_vec(ep).map_err(|e| self.err(e))?;
        self.write(|tx| {
            tx.open_table(ENDPOINTS)?.insert(ep.id.as_str(), json.as_slice())?;
            Ok(())
        })
    }

    /// Reserves one address from each range set for `ep` (whose `ips` are filled in) and records
    /// it, in one transaction.
    pub fn reserve(&self, mut ep: Endpoint, sets: &[Vec<IpRange>]) -> Result<Endpoint, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut addrs = tx.open_table(ADDRESSES).map_err(|e| self.err(e))?;
            let mut last = tx.open_table(LAST).map_err(|e| self.err(e))?;
            let taken: BTreeSet<String> = addrs
                .iter()
                .map_err(|e| self.err(e))?
                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_owned()))
                .collect();
            ep.ips.clear();
            for (i, set) in sets.iter().enumerate() {
                let cursor_key = format!("{}|{i}", ep.network);
                let cursor = last
                    .get(cursor_key.as_str())
                    .map_err(|e| self.err(e))?
                    .and_then(|v| v.value().parse::<IpAddr>().ok());
                let mine: Vec<IpAddr> = ep.ips.iter().map(|x| x.address.addr()).collect();
                let Some((ip, ri)) = ipam::allocate(set, cursor, |a| mine.contains(&a) || taken.contains(&addr_key(a)))
                else {
                    // Dropping the transaction aborts it: nothing was reserved.
                    return Err(StoreError::Exhausted {
                        network: ep.network.clone(),
                        set: i,
                        ranges: set.iter().map(|r| r.subnet.to_string()).collect::<Vec<_>>().join(", "),
                        capacity: ipam::capacity(set),
                    });
                };
                let prefix_len = set[ri].subnet.prefix_len();
                let address = ipnet::IpNet::new(ip, prefix_len).map_err(|e| self.err(e))?;
                ep.ips.push(EndpointIp { address, gateway: ipam::gateway(&set[ri]) });
                addrs.insert(addr_key(ip).as_str(), ep.id.as_str()).map_err(|e| self.err(e))?;
                last.insert(cursor_key.as_str(), ip.to_string().as_str()).map_err(|e| self.err(e))?;
            }
            let json = serde_json::to_vec(&ep).map_err(|e| self.err(e))?;
            tx.open_table(ENDPOINTS)
                .map_err(|e| self.err(e))?
                .insert(ep.id.as_str(), json.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(ep)
    }

    /// Removes an endpoint and releases its addresses, in one transaction; the endpoint as it
    /// was, or `None` when there was none.
    pub fn remove_endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        self.write(|tx| {
            let mut eps = tx.open_table(ENDPOINTS)?;
            let Some(raw) = eps.remove(id)?.map(|v| v.value().to_vec()) else {
                return Ok(None);
            };
            let ep: Option<Endpoint> = serde_json::from_slice(&raw).ok();
            let mut addrs = tx.open_table(ADDRESSES)?;
            // Release by owner, not only by the record's list: an unreadable record frees too.
            let mine: Vec<String> = addrs
                .iter()?
                .filter_map(|r| r.ok().map(|(k, v)| (k.value().to_owned(), v.value().to_owned())))
                .filter(|(_, owner)| owner == id)
                .map(|(k, _)| k)
                .collect();
            for k in mine {
                addrs.remove(k.as_str())?;
            }
            Ok(ep)
        })
    }

    /// The reserved addresses of a network with their endpoints.
    pub fn addresses(&self, network: &str) -> Result<Vec<(IpAddr, String)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(ADDRESSES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            if network_of(v.value()) != network {
                continue;
            }
            if let Ok(ip) = k.value().parse() {
                out.push((ip, v.value().to_owned()));
            }
        }
        Ok(out)
    }

    /// Releases reserved addresses whose endpoint record is gone (left by a crash between
    /// transactions of an older layout, or by hand); how many.
    pub fn release_orphans(&self) -> Result<usize, StoreError> {
        self.write(|tx| {
            let eps = tx.open_table(ENDPOINTS)?;
            let mut addrs = tx.open_table(ADDRESSES)?;
            let mut orphans = Vec::new();
            for row in addrs.iter()? {
                let (k, v) = row?;
                if eps.get(v.value())?.is_none() {
                    orphans.push(k.value().to_owned());
                }
            }
            for k in &orphans {
                addrs.remove(k.as_str())?;
            }
            Ok(orphans.len())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::objects::{Dns, EndpointState};

    fn ep(id: &str) -> Endpoint {
        Endpoint {
            id: format!("net/{id}/eth0"),
            network: "net".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod: None,
            ips: vec![],
            mac: None,
            host_interface: "fgx".into(),
            mtu: None,
            dns: Dns::default(),
            policies: vec![],
            state: EndpointState::Creating,
        }
    }

    #[test]
    fn reserve_release_and_exhaustion_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/flowgate.redb");
        let sets: Vec<Vec<IpRange>> = vec![vec![serde_json::from_str(r#"{"subnet":"10.9.0.0/30"}"#).unwrap()]];
        {
            let s = Store::open(&path).unwrap();
            let a = s.reserve(ep("a"), &sets).unwrap();
            assert_eq!(a.ips[0].address.to_string(), "10.9.0.2/30");
            assert_eq!(a.ips[0].gateway.to_string(), "10.9.0.1");
            let err = s.reserve(ep("b"), &sets).unwrap_err();
            assert!(matches!(err, StoreError::Exhausted { capacity: 1, .. }), "{err}");
            assert!(s.endpoints().unwrap().iter().all(|e| e.container_id == "a"), "nothing half-recorded");
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.addresses("net").unwrap().len(), 1);
        let gone = s.remove_endpoint("net/a/eth0").unwrap().unwrap();
        assert_eq!(gone.container_id, "a");
        assert!(s.remove_endpoint("net/a/eth0").unwrap().is_none(), "idempotent");
        assert!(s.addresses("net").unwrap().is_empty());
        assert_eq!(s.reserve(ep("b"), &sets).unwrap().ips[0].address.addr().to_string(), "10.9.0.2");
    }

    #[test]
    fn two_networks_over_one_range_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let sets: Vec<Vec<IpRange>> = vec![vec![serde_json::from_str(r#"{"subnet":"10.9.0.0/29"}"#).unwrap()]];
        let mut other = ep("b");
        other.network = "other".into();
        other.id = "other/b/eth0".into();
        let a = s.reserve(ep("a"), &sets).unwrap();
        let b = s.reserve(other, &sets).unwrap();
        assert_ne!(a.ips[0].address.addr(), b.ips[0].address.addr());
        assert_eq!(s.addresses("net").unwrap().len(), 1);
        assert_eq!(s.addresses("other").unwrap().len(), 1);
    }

    #[test]
    fn a_second_agent_cannot_open_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _s = Store::open(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(err.to_string().contains("s.redb"), "{err}");
    }

    #[test]
    fn records_carry_their_format_and_an_older_agent_refuses_a_newer_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let sets: Vec<Vec<IpRange>> = vec![vec![serde_json::from_str(r#"{"subnet":"10.9.0.0/29"}"#).unwrap()]];
        // A store from before formats were written (no meta table): read, and marked as ours.
        {
            let s = Store::open(&path).unwrap();
            s.reserve(ep("a"), &sets).unwrap();
            s.write(|tx| {
                tx.delete_table(META)?;
                Ok(())
            })
            .unwrap();
            assert_eq!(s.format().unwrap(), 0);
        }
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.format().unwrap(), FORMAT_VERSION);
            assert_eq!(s.endpoints().unwrap().len(), 1, "an older store's records are read");
            // A newer agent writes its format.
            s.write(|tx| {
                tx.open_table(META)?.insert("format", FORMAT_VERSION + 1)?;
                Ok(())
            })
            .unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::Newer { found, supported, .. } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this agent"), "{err}");
        // Nothing was deleted or rewritten: the newer agent finds everything as it left it.
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_read().unwrap();
        assert_eq!(tx.open_table(ENDPOINTS).unwrap().iter().unwrap().count(), 1);
        assert_eq!(tx.open_table(META).unwrap().get("format").unwrap().unwrap().value(), FORMAT_VERSION + 1);
    }
}
