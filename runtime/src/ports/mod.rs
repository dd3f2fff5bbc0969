//! Instrument ports and the uplink link: rapd brings the configured links up, gives
//! each instrument port exactly its box address (and a static uplink its address and
//! default route), then watches carrier and reports each port's link up or down — in
//! the log, in the status, and to the [`LinkEvents`] hook (rapd's is
//! `events::BoxEvents`: each change goes upstream as a box event).
//!
//! All of it goes through rtnetlink ([`netlink`]); rapd never runs `ip`. When no
//! interface is configured, nothing here runs.

pub mod netlink;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{Addressing, Config, Ipv4Cidr};
use netlink::{Link, LinkChange, LinkMonitor, Rtnl};

/// Why a port could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error("{key}: interface `{name}` does not exist")]
    UnknownInterface { key: String, name: String },
    #[error("{key}: interface `{name}`: cannot {op}: {source}")]
    Netlink { key: String, name: String, op: String, source: io::Error },
    #[error("netlink: {0}")]
    Socket(io::Error),
}

/// One link rapd manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedLink {
    /// The configuration key naming the interface.
    pub key: String,
    pub interface: String,
    /// The instrument on this port (None for the uplink).
    pub serial: Option<String>,
    /// The address rapd gives the link (None: the OS's DHCP client manages it).
    pub address: Option<Ipv4Cidr>,
    /// The default route through this link (static uplink only).
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// The links the configuration asks rapd to manage (empty: rapd touches no link).
pub fn plan(cfg: &Config) -> Vec<ManagedLink> {
    let mut v = Vec::new();
    if let Some(u) = &cfg.network.uplink {
        let (address, gateway) = match u.addressing {
            Addressing::Dhcp => (None, None),
            Addressing::Static { address, gateway } => (Some(address), gateway),
        };
        v.push(ManagedLink {
            key: "network.uplink.interface".into(),
            interface: u.interface.clone(),
            serial: None,
            address,
            gateway,
        });
    }
    for (n, i) in cfg.instruments.iter().enumerate() {
        if let Some(p) = &i.port {
            v.push(ManagedLink {
                key: format!("instrument[{n}].interface"),
                interface: p.interface.clone(),
                serial: Some(i.serial.clone()),
                address: Some(p.box_address),
                gateway: None,
            });
        }
    }
    v
}

/// A link's part of the status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LinkStatus {
    pub interface: String,
    /// The instrument on this port; None for the uplink.
    pub serial: Option<String>,
    /// `up` (carrier present and administratively up), `down` or `missing`.
    pub link: &'static str,
    pub address: Option<String>,
    /// Link state changes seen since rapd started.
    pub changes: u64,
    /// When the state last changed (ms since the epoch).
    pub since_ms: u64,
}

/// Shared link status, read by the control interface.
pub type SharedLinks = Arc<Mutex<Vec<LinkStatus>>>;

/// The upstream-event hook for link changes: `events::BoxEvents` sends each change to
/// the data center (and logs it with [`LogEvents`]); [`LogEvents`] alone only logs.
pub trait LinkEvents: Send + Sync {
    fn link_changed(&self, link: &LinkStatus);
    /// The state of a link when rapd (or a new configuration) took it over.
    fn link_at_start(&self, _link: &LinkStatus) {}
}

/// Link changes as log lines (`event: ...`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogEvents;

impl LinkEvents for LogEvents {
    fn link_changed(&self, l: &LinkStatus) {
        match &l.serial {
            Some(s) => log::warn!("event: instrument {s}: link {} is {}", l.interface, l.link),
            None => log::warn!("event: uplink: link {} is {}", l.interface, l.link),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn state(link: Option<&Link>) -> &'static str {
    match link {
        None => "missing",
        Some(l) if l.up && l.carrier => "up",
        Some(_) => "down",
    }
}

/// Checks that every managed interface exists.
pub fn check_interfaces(links: &[ManagedLink]) -> Result<(), PortsError> {
    let mut rt = Rtnl::open().map_err(PortsError::Socket)?;
    for m in links {
        if rt.link(&m.interface).map_err(PortsError::Socket)?.is_none() {
            return Err(PortsError::UnknownInterface { key: m.key.clone(), name: m.interface.clone() });
        }
    }
    Ok(())
}

/// Brings one link up and gives it exactly its address (and route).
fn configure_one(rt: &mut Rtnl, m: &ManagedLink) -> Result<Option<Link>, PortsError> {
    let err = |op: &str, source: io::Error| PortsError::Netlink {
        key: m.key.clone(),
        name: m.interface.clone(),
        op: op.to_owned(),
        source,
    };
    let Some(link) = rt.link(&m.interface).map_err(|e| err("look it up", e))? else {
        return Err(PortsError::UnknownInterface { key: m.key.clone(), name: m.interface.clone() });
    };
    if !link.up {
        rt.set_up(link.index).map_err(|e| err("bring it up", e))?;
        log::info!("{}: link {} brought up", m.key, m.interface);
    }
    if let Some(want) = m.address {
        let have = rt.addresses(link.index).map_err(|e| err("list its addresses", e))?;
        // An instrument port carries exactly its box address: anything else is removed.
        for a in have.iter().filter(|a| **a != want) {
            if m.serial.is_some() {
                rt.del_address(link.index, *a).map_err(|e| err(&format!("remove stale address {a}"), e))?;
                log::warn!("{}: removed address {a} from {} (configured: {want})", m.key, m.interface);
            }
        }
        if !have.contains(&want) {
            match rt.add_address(link.index, want) {
                Ok(()) => log::info!("{}: address {want} assigned to {}", m.key, m.interface),
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EEXIST as i32) => {}
                Err(e) => return Err(err(&format!("assign address {want}"), e)),
            }
        }
    }
    if let Some(g) = m.gateway {
        rt.set_default_route(link.index, g).map_err(|e| err(&format!("set the default route via {g}"), e))?;
    }
    rt.link(&m.interface).map_err(|e| err("look it up", e))
}

/// Brings every managed link up with its address; returns the initial status.
pub fn configure(links: &[ManagedLink]) -> Result<SharedLinks, PortsError> {
    let mut rt = Rtnl::open().map_err(PortsError::Socket)?;
    let mut st = Vec::new();
    for m in links {
        let link = configure_one(&mut rt, m)?;
        let s = LinkStatus {
            interface: m.interface.clone(),
            serial: m.serial.clone(),
            link: state(link.as_ref()),
            address: m.address.map(|a| a.to_string()),
            changes: 0,
            since_ms: now_ms(),
        };
        match &m.serial {
            Some(serial) => log::info!("instrument {serial}: port {} link {}", m.interface, s.link),
            None => log::info!("uplink {}: link {}", m.interface, s.link),
        }
        st.push(s);
    }
    Ok(Arc::new(Mutex::new(st)))
}

/// Watches link notifications until `stop`: records carrier changes, reports them to
/// `events`, and sets a link up again (with its address) when it was set down, deleted
/// and re-created, or renamed back.
pub fn spawn_watcher(
    links: Vec<ManagedLink>,
    status: SharedLinks,
    events: Arc<dyn LinkEvents>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let mut monitor = LinkMonitor::open()?;
    std::thread::Builder::new().name("ports-links".into()).stack_size(256 * 1024).spawn(move || {
        let mut rt = None;
        let mut resync = true;
        while !stop.load(Ordering::SeqCst) {
            let changes = match monitor.next(Duration::from_millis(500)) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("ports: link notifications: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    resync = true;
                    Vec::new()
                }
            };
            // Which managed links to look at again.
            let mut touched: Vec<&ManagedLink> = links
                .iter()
                .filter(|m| {
                    resync
                        || changes.iter().any(|c| match c {
                            LinkChange::New(l) | LinkChange::Deleted(l) => l.name == m.interface,
                        })
                })
                .collect();
            if changes.iter().any(|c| matches!(c, LinkChange::New(l) if l.name.is_empty())) {
                touched = links.iter().collect();
            }
            resync = false;
            if touched.is_empty() {
                continue;
            }
            if rt.is_none() {
                rt = Rtnl::open().map_err(|e| log::error!("ports: netlink: {e}")).ok();
            }
            let Some(r) = rt.as_mut() else { continue };
            for m in touched {
                let now = match r.link(&m.interface) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("{}: {}: {e}", m.key, m.interface);
                        continue;
                    }
                };
                let now = match now {
                    Some(l) if !l.up => match configure_one(r, m) {
                        Ok(l) => {
                            log::warn!("{}: link {} was down administratively: set up again", m.key, m.interface);
                            l
                        }
                        Err(e) => {
                            log::error!("{e}");
                            Some(l)
                        }
                    },
                    other => other,
                };
                let new_state = state(now.as_ref());
                let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
                let Some(s) = st.iter_mut().find(|s| s.interface == m.interface) else { continue };
                if s.link != new_state {
                    let was_missing = s.link == "missing";
                    s.link = new_state;
                    s.changes += 1;
                    s.since_ms = now_ms();
                    let snapshot = s.clone();
                    drop(st);
                    events.link_changed(&snapshot);
                    if was_missing && now.is_some() {
                        // Re-created (e.g. a USB adapter plugged back): address it again.
                        if let Err(e) = configure_one(r, m) {
                            log::error!("{e}");
                        }
                    }
                }
            }
        }
    })
}
