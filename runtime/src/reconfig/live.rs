//! The parts of rapd a configuration sets up and that can be replaced while the rest
//! runs on: the managed links and their watcher, the firewall policy and its guard, one
//! listener per instrument port, and the uplink. Each has its own stop flag, so that one
//! can be stopped and started again without touching the others; the daemon's stop
//! stops them all.
//!
//! [`Live::transition`] moves them from one validated configuration to another in a fixed
//! order — uplink stopped (the batch in flight finishes first), links, firewall, instrument
//! ports, uplink started — and when a step fails, the steps already done are moved back to
//! the old configuration before the error is returned.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::agents::Agents;
use crate::commands::CommandLink;
use crate::config::{Config, IngestConfig, InstrumentConfig, UplinkConfig};
use crate::firewall::{self, Firewall, FirewallError, Tools};
use crate::ingest::{self, ListenError, Port, PortStatus};
use crate::ports::netlink::Rtnl;
use crate::ports::{self, LinkEvents, ManagedLink, PortsError, SharedLinks};
use crate::queue::Queue;
use crate::uplink::{self, SharedStatus};

use super::plan::Plan;

/// Why a part could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{0}")]
    Ports(#[from] PortsError),
    #[error("firewall: {0}")]
    Firewall(#[from] FirewallError),
    #[error("{0}")]
    Listen(#[from] ListenError),
    #[error("cannot start the {what} thread: {source}")]
    Thread { what: &'static str, source: std::io::Error },
}

impl LiveError {
    /// The configuration key the error is about, when there is one.
    pub fn key(&self) -> Option<String> {
        match self {
            LiveError::Ports(PortsError::UnknownInterface { key, .. } | PortsError::Netlink { key, .. }) => {
                Some(key.clone())
            }
            LiveError::Firewall(FirewallError::UnknownInterface { key, .. }) => Some(key.clone()),
            LiveError::Firewall(_) => Some("firewall".into()),
            _ => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct RunningPort {
    port: Port,
    ingest: IngestConfig,
    stop: Arc<AtomicBool>,
}

struct Thread {
    handle: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Thread {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
    }
}

struct RunningFirewall {
    status: firewall::guard::SharedStatus,
    guard: Thread,
}

struct RunningLinks {
    status: SharedLinks,
    watcher: Thread,
}

/// What the ports and the uplink are started with besides their configuration.
#[derive(Default, Clone)]
pub struct Extras {
    /// Version-2 agent requests (downloads, uploads) on the instrument ports.
    pub agents: Option<Arc<Agents>>,
    /// The command channel: where the uplink hands commands, and its idle poll interval.
    pub commands: Option<(Arc<dyn CommandLink>, std::time::Duration)>,
}

/// The replaceable parts of a running rapd.
pub struct Live {
    queue: Queue,
    extras: Extras,
    audit: Arc<dyn firewall::Audit>,
    tools: Tools,
    link_events: Arc<dyn LinkEvents>,
    uplink_status: SharedStatus,
    ports: Mutex<Vec<RunningPort>>,
    uplink: Mutex<Option<Thread>>,
    firewall: Mutex<Option<RunningFirewall>>,
    links: Mutex<Option<RunningLinks>>,
}

/// The links and the firewall, set up before anything listens (see [`Live::start_network`]).
pub struct Network {
    firewall: Option<RunningFirewall>,
    links: Option<RunningLinks>,
    link_events: Arc<dyn LinkEvents>,
}

impl Network {
    /// The number of rules applied (None: rapd does not manage the firewall).
    pub fn firewall_rules(&self) -> Option<usize> {
        self.firewall.as_ref().map(|f| lock(&f.status).rule_count)
    }
}

fn spawn_guard(fw: Firewall, interval: std::time::Duration) -> Result<RunningFirewall, LiveError> {
    let stop = Arc::new(AtomicBool::new(false));
    let status = fw.status();
    let handle = fw
        .spawn_guard(interval, stop.clone())
        .map_err(|source| LiveError::Thread { what: "firewall guard", source })?;
    Ok(RunningFirewall { status, guard: Thread { handle, stop } })
}

fn start_firewall(
    cfg: &Config,
    tools: &Tools,
    audit: &Arc<dyn firewall::Audit>,
) -> Result<Option<RunningFirewall>, LiveError> {
    if !cfg.firewall.enabled {
        return Ok(None);
    }
    let fw = Firewall::apply(firewall::policy(cfg), tools.clone(), audit.clone())?;
    log::info!("firewall: policy applied ({} rules)", lock(&fw.status()).rule_count);
    spawn_guard(fw, cfg.firewall.drift_check).map(Some)
}

/// Sets up `links`, reports each one's state to `events`, and watches them.
fn start_links(links: Vec<ManagedLink>, events: &Arc<dyn LinkEvents>) -> Result<Option<RunningLinks>, LiveError> {
    if links.is_empty() {
        return Ok(None);
    }
    let status = ports::configure(&links)?;
    for l in lock(&status).iter() {
        events.link_at_start(l);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handle = ports::spawn_watcher(links, status.clone(), events.clone(), stop.clone())
        .map_err(|source| LiveError::Thread { what: "link watcher", source })?;
    Ok(Some(RunningLinks { status, watcher: Thread { handle, stop } }))
}

/// Takes off the addresses (and the default route) that `old` gave and `new` does not.
fn release(old: &[ManagedLink], new: &[ManagedLink]) -> Result<(), PortsError> {
    let mut rt = None;
    for m in old {
        let kept_addr = |a| new.iter().any(|n| n.interface == m.interface && n.address == Some(a));
        let drop_addr = m.address.filter(|a| !kept_addr(*a));
        let drop_gw = m.gateway.filter(|g| !new.iter().any(|n| n.interface == m.interface && n.gateway == Some(*g)));
        if drop_addr.is_none() && drop_gw.is_none() {
            continue;
        }
        if rt.is_none() {
            rt = Some(Rtnl::open().map_err(PortsError::Socket)?);
        }
        let Some(r) = rt.as_mut() else { continue };
        let err =
            |op: String, source| PortsError::Netlink { key: m.key.clone(), name: m.interface.clone(), op, source };
        let Some(link) = r.link(&m.interface).map_err(|e| err("look it up".into(), e))? else { continue };
        if let Some(g) = drop_gw {
            if !new.iter().any(|n| n.gateway.is_some()) {
                match r.del_default_route(link.index, g) {
                    Ok(()) => log::info!("{}: default route via {g} removed from {}", m.key, m.interface),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(err(format!("remove the default route via {g}"), e)),
                }
            }
        }
        if let Some(a) = drop_addr {
            let have = r.addresses(link.index).map_err(|e| err("list its addresses".into(), e))?;
            if have.contains(&a) {
                r.del_address(link.index, a).map_err(|e| err(format!("remove address {a}"), e))?;
                log::info!("{}: address {a} removed from {} (no longer configured)", m.key, m.interface);
            }
        }
    }
    Ok(())
}

impl Live {
    /// Checks the interfaces, applies the firewall policy and sets up the links: what
    /// must be in place before any port listens. Nothing is changed when an interface is
    /// missing. Link states and changes go to `link_events`.
    pub fn start_network(
        cfg: &Config,
        audit: Arc<dyn firewall::Audit>,
        link_events: Arc<dyn LinkEvents>,
    ) -> Result<Network, LiveError> {
        let links = ports::plan(cfg);
        if !links.is_empty() {
            ports::check_interfaces(&links)?;
        }
        let tools = Tools::system();
        let fw = start_firewall(cfg, &tools, &audit)?;
        if fw.is_none() && !links.is_empty() {
            log::warn!(
                "firewall management is off ([firewall] enabled = false): the instrument ports are not filtered"
            );
        }
        let links = start_links(links, &link_events)?;
        Ok(Network { firewall: fw, links, link_events })
    }

    /// Takes over the network parts and starts the instrument ports (the uplink is started
    /// with [`Live::start_uplink`] once whoever takes its commands is ready).
    pub fn start(
        cfg: &Config,
        network: Network,
        queue: Queue,
        audit: Arc<dyn firewall::Audit>,
        uplink_status: SharedStatus,
        extras: Extras,
    ) -> Result<Live, LiveError> {
        let live = Live {
            queue,
            extras,
            audit,
            tools: Tools::system(),
            link_events: network.link_events,
            uplink_status,
            ports: Mutex::new(Vec::new()),
            uplink: Mutex::new(None),
            firewall: Mutex::new(network.firewall),
            links: Mutex::new(network.links),
        };
        if let Err(e) = live.reconcile_ports(cfg) {
            live.stop();
            return Err(e);
        }
        Ok(live)
    }

    /// Takes off the addresses (and default route) that `other` gave the links and `current`
    /// does not: after a crash in the middle of an apply, what the other configuration left.
    pub fn release_stale(&self, other: &Config, current: &Config) -> Result<(), LiveError> {
        release(&ports::plan(other), &ports::plan(current)).map_err(LiveError::from)
    }

    /// Stops every part (the firewall rules and the addresses stay in place).
    pub fn stop(&self) {
        let ports = std::mem::take(&mut *lock(&self.ports));
        for p in &ports {
            p.stop.store(true, Ordering::SeqCst);
        }
        if let Some(u) = lock(&self.uplink).as_ref() {
            u.stop.store(true, Ordering::SeqCst);
        }
        self.queue.wake();
        for p in ports {
            p.port.join();
        }
        if let Some(u) = lock(&self.uplink).take() {
            u.stop();
        }
        if let Some(f) = lock(&self.firewall).take() {
            f.guard.stop();
        }
        if let Some(l) = lock(&self.links).take() {
            l.watcher.stop();
        }
    }

    /// The instrument ports' status.
    pub fn port_status(&self) -> Vec<PortStatus> {
        lock(&self.ports).iter().map(|p| p.port.status()).collect()
    }

    /// The firewall's status (`{"enabled": false}` when rapd does not manage it).
    pub fn firewall_status(&self) -> serde_json::Value {
        match lock(&self.firewall).as_ref() {
            None => serde_json::json!({ "enabled": false }),
            Some(f) => serde_json::to_value(&*lock(&f.status)).unwrap_or(serde_json::Value::Null),
        }
    }

    /// The managed links' status.
    pub fn link_status(&self) -> serde_json::Value {
        match lock(&self.links).as_ref() {
            None => serde_json::Value::Array(Vec::new()),
            Some(l) => serde_json::to_value(&*lock(&l.status)).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Batches and command exchanges the data center answered since rapd started.
    pub fn batches_acknowledged(&self) -> u64 {
        let s = lock(&self.uplink_status);
        s.batches_sent + s.exchanges
    }

    /// Starts the uplink with `cfg`.
    pub fn start_uplink(&self, cfg: &UplinkConfig) -> Result<(), LiveError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (cfg, q, st, s) = (cfg.clone(), self.queue.clone(), self.uplink_status.clone(), stop.clone());
        let commands = self.extras.commands.clone();
        let handle = std::thread::Builder::new()
            .name("uplink".into())
            .spawn(move || uplink::run_with_commands(cfg, q, st, s, commands))
            .map_err(|source| LiveError::Thread { what: "uplink", source })?;
        *lock(&self.uplink) = Some(Thread { handle, stop });
        Ok(())
    }

    /// Stops the uplink; returns once the batch in flight (if any) is answered or has failed,
    /// and the acknowledged rows are deleted: a new uplink sends nothing twice.
    fn stop_uplink(&self) {
        let u = lock(&self.uplink).take();
        if let Some(u) = u {
            u.stop.store(true, Ordering::SeqCst);
            self.queue.wake();
            u.stop();
        }
    }

    /// Stops the ports that `to` does not have or has differently, starts those it has
    /// and are not running. The others keep running, connections and all.
    fn reconcile_ports(&self, to: &Config) -> Result<(), LiveError> {
        let wanted = |p: &RunningPort| to.instruments.contains(&p.port.instrument) && p.ingest == to.ingest;
        let stopping: Vec<RunningPort> = {
            let mut ports = lock(&self.ports);
            let (keep, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut *ports).into_iter().partition(wanted);
            *ports = keep;
            stop
        };
        for p in &stopping {
            p.stop.store(true, Ordering::SeqCst);
        }
        for p in stopping {
            log::info!("instrument {}: port stopped ({})", p.port.instrument.serial, p.port.instrument.listen);
            p.port.join();
        }
        let running: BTreeSet<String> = lock(&self.ports).iter().map(|p| p.port.instrument.serial.clone()).collect();
        for inst in to.instruments.iter().filter(|i| !running.contains(&i.serial)) {
            self.start_port(inst, &to.ingest)?;
        }
        // Keep the configuration's order in the status.
        let mut ports = lock(&self.ports);
        ports.sort_by_key(|p| to.instruments.iter().position(|i| i.serial == p.port.instrument.serial));
        Ok(())
    }

    fn start_port(&self, inst: &InstrumentConfig, ingest_cfg: &IngestConfig) -> Result<(), LiveError> {
        let stop = Arc::new(AtomicBool::new(false));
        let port = ingest::start_with_agents(
            inst.clone(),
            ingest_cfg.clone(),
            self.queue.clone(),
            stop.clone(),
            self.extras.agents.clone(),
        )?;
        log::info!("instrument {} ({}): listening on {}", inst.serial, inst.model, inst.listen);
        lock(&self.ports).push(RunningPort { port, ingest: ingest_cfg.clone(), stop });
        Ok(())
    }

    /// Moves the managed links from `from` to `to`.
    fn links_to(&self, from: &Config, to: &Config) -> Result<(), LiveError> {
        let want = ports::plan(to);
        if !want.is_empty() {
            ports::check_interfaces(&want)?;
        }
        let old = lock(&self.links).take();
        if let Some(o) = &old {
            o.watcher.stop.store(true, Ordering::SeqCst);
        }
        if let Some(o) = old {
            o.watcher.stop();
        }
        let started = start_links(want.clone(), &self.link_events)?;
        *lock(&self.links) = started;
        release(&ports::plan(from), &want)?;
        Ok(())
    }

    /// Replaces the firewall policy with `to`'s (guard stopped first, so that it does not
    /// put the old rules back). With management turned off the rules in place stay.
    fn firewall_to(&self, to: &Config) -> Result<(), LiveError> {
        let old = lock(&self.firewall).take();
        if let Some(f) = old {
            f.guard.stop();
        }
        let new = start_firewall(to, &self.tools, &self.audit)?;
        if new.is_none() {
            log::warn!("firewall: management turned off; the rules in place stay as they are");
        }
        *lock(&self.firewall) = new;
        Ok(())
    }

    /// Moves every part that `plan` names from `from` to `to`. On error the parts already
    /// moved are moved back to `from` (best effort: what could not be moved back is
    /// [`Failed::undo`]) and the error is returned.
    /// `tag` names the apply in the log (one line per step: `reconfig: apply <tag>: <step>`).
    pub fn transition(&self, from: &Config, to: &Config, plan: &Plan, tag: &str) -> Result<(), Box<Failed>> {
        let step = |s: &str| log::info!("reconfig: apply {tag}: {s}");
        if plan.uplink {
            self.stop_uplink();
            step("uplink stopped");
        }
        let mut done = Done::default();
        let res = (|| {
            if plan.links {
                done.links = true;
                self.links_to(from, to)?;
                step("links moved");
            }
            if plan.firewall {
                done.firewall = true;
                self.firewall_to(to)?;
                step("firewall moved");
            }
            done.ports = true;
            self.reconcile_ports(to)?;
            step("ports moved");
            Ok::<(), LiveError>(())
        })();
        match res {
            Ok(()) => {
                if plan.uplink {
                    step("uplink starting");
                    if let Err(e) = self.start_uplink(&to.uplink) {
                        let back = self.undo(&done, from, to).err();
                        let _ = self.start_uplink(&from.uplink);
                        return Err(Box::new(Failed { error: e, undo: back }));
                    }
                }
                if plan.log_level {
                    log::set_max_level(to.log.level);
                    log::info!("log level is now {}", to.log.level);
                }
                Ok(())
            }
            Err(e) => {
                log::error!("reconfig: {e}; moving back to the configuration in force");
                let back = self.undo(&done, from, to).err();
                if plan.uplink {
                    if let Err(u) = self.start_uplink(&from.uplink) {
                        log::error!("reconfig: {u}");
                    }
                }
                Err(Box::new(Failed { error: e, undo: back }))
            }
        }
    }

    fn undo(&self, done: &Done, from: &Config, to: &Config) -> Result<(), LiveError> {
        let mut first = None;
        let mut note = |r: Result<(), LiveError>| {
            if let Err(e) = r {
                log::error!("reconfig: moving back: {e}");
                first.get_or_insert(e);
            }
        };
        if done.ports {
            note(self.reconcile_ports(from));
        }
        if done.firewall {
            note(self.firewall_to(from));
        }
        if done.links {
            note(self.links_to(to, from));
        }
        first.map_or(Ok(()), Err)
    }
}

/// A transition that failed: why, and (when moving back failed too) why not.
#[derive(Debug)]
pub struct Failed {
    pub error: LiveError,
    pub undo: Option<LiveError>,
}

#[derive(Default)]
struct Done {
    links: bool,
    firewall: bool,
    ports: bool,
}
