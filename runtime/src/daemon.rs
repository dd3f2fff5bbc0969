//! rapd's life: validate configuration, pass the FIPS gate, apply the firewall policy and
//! set up the instrument links (only when configured), open the queue, start the ports,
//! the uplink and the control socket, tell systemd it is ready, and stop cleanly on
//! SIGTERM — every acknowledged message is already on disk by then. The firewall rules
//! stay in place when rapd stops or refuses a new configuration.
//!
//! The audit log opens right after the FIPS gate (its hashes come from the FIPS provider)
//! and before anything it records: rapd's start and stop, the gate's result, the
//! configuration loaded and the firewall's events. Its records reach the queue once the
//! queue is open.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};

use crate::audit::{self, AuditLog, Event, Outcome, Verification};
use crate::config::Config;
use crate::control::{self, Source};
use crate::fips::{self, FipsState};
use crate::firewall::{self, Firewall, FirewallError};
use crate::ingest::{self, Port, PortStatus};
use crate::ports::{self, LogEvents, PortsError, SharedLinks};
use crate::queue::{Queue, QueueStats};
use crate::uplink::{self, SharedStatus, UplinkStatus};
use crate::{exit, logging};

struct Daemon {
    fips: FipsState,
    queue: Queue,
    uplink: SharedStatus,
    ports: Mutex<Vec<Port>>,
    firewall: Option<firewall::guard::SharedStatus>,
    links: Option<SharedLinks>,
    audit: AuditLog,
    started: Instant,
}

impl Source for Daemon {
    fn fips(&self) -> FipsState {
        self.fips.clone()
    }
    fn queue(&self) -> QueueStats {
        self.queue.stats()
    }
    fn uplink(&self) -> UplinkStatus {
        self.uplink.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn ports(&self) -> Vec<PortStatus> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner()).iter().map(Port::status).collect()
    }
    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
    fn firewall(&self) -> serde_json::Value {
        match &self.firewall {
            None => serde_json::json!({ "enabled": false }),
            Some(f) => {
                serde_json::to_value(&*f.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(serde_json::Value::Null)
            }
        }
    }
    fn links(&self) -> serde_json::Value {
        match &self.links {
            None => serde_json::Value::Array(Vec::new()),
            Some(l) => {
                serde_json::to_value(&*l.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(serde_json::Value::Null)
            }
        }
    }
    fn audit(&self) -> serde_json::Value {
        serde_json::to_value(self.audit.status()).unwrap_or(serde_json::Value::Null)
    }
    fn audit_verify(&self) -> Result<Verification, String> {
        self.audit.verify().map_err(|e| e.to_string())
    }
    fn audit_tail(&self, n: usize) -> Result<Vec<serde_json::Value>, String> {
        self.audit.tail(n).map_err(|e| e.to_string())
    }
}

/// What an exit code means, for the audit record of a failed start.
fn exit_reason(code: i32) -> &'static str {
    match code {
        exit::CONFIG => "bad configuration",
        exit::QUEUE => "the queue database cannot be opened",
        exit::LISTEN => "a port or the control socket cannot be set up",
        _ => "an unexpected failure",
    }
}

/// Records a refused FIPS gate, if the FIPS provider can still compute the record's hashes
/// (not when it is missing or failed its self-test: then only the system log has it).
fn record_gate_refusal(cfg: &Config, error: &str) {
    if !audit::force_fips_digests() {
        log::error!("the refused FIPS gate is not in the audit log: the FIPS provider cannot hash a record");
        return;
    }
    let ev = Event::new("fips.gate")
        .target(&cfg.fips.openssl_conf.display().to_string())
        .outcome(Outcome::Failure)
        .detail(serde_json::json!({ "error": error }));
    if let Err(e) = AuditLog::open(&cfg.audit.path).and_then(|(l, _)| l.record(ev)) {
        log::error!("{e}");
    }
}

/// The records of a start: rapd, the gate's result, the configuration.
fn record_start(cfg: &Config, fips: &FipsState) {
    audit::record(
        Event::new("rapd.start")
            .target(concat!("rapd ", env!("CARGO_PKG_VERSION")))
            .detail(serde_json::json!({ "pid": std::process::id() })),
    );
    audit::record(
        Event::new("fips.gate")
            .target(&fips.openssl_conf.display().to_string())
            .detail(serde_json::json!({ "providers": fips.providers, "openssl": fips.openssl_version })),
    );
    let sha256 = std::fs::read(&cfg.path)
        .ok()
        .and_then(|b| audit::chain::sha256_hex(&b).ok())
        .map_or(serde_json::Value::Null, serde_json::Value::String);
    audit::record(Event::new("config.loaded").target(&cfg.path.display().to_string()).detail(serde_json::json!({
        "sha256": sha256,
        "instruments": cfg.instruments.iter().map(|i| &i.serial).collect::<Vec<_>>(),
        "firewall": cfg.firewall.enabled,
        "uplink": cfg.uplink.url.as_str(),
    })));
}

/// Runs rapd with the configuration at `config_path`; returns the process exit code.
pub fn run(config_path: &Path) -> i32 {
    let code = start_and_serve(config_path);
    // A start given up after the audit log opened ends the run's records (the normal
    // stop records its own); the details are in the system log.
    if code != exit::OK && audit::installed().is_some() {
        audit::record(Event::new("rapd.stop").outcome(Outcome::Failure).detail(serde_json::json!({
            "exit_code": code,
            "reason": format!("gave up while starting: {}; see the system log", exit_reason(code)),
        })));
    }
    code
}

fn start_and_serve(config_path: &Path) -> i32 {
    logging::init_early();
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rapd: {e}");
            return exit::CONFIG;
        }
    };
    logging::init(&cfg.log);

    // The gate comes before any socket is opened.
    let fips_state = match fips::activate(&cfg.fips.openssl_conf).and_then(|()| fips::check(&cfg.fips.openssl_conf)) {
        Ok(st) => st,
        Err(e) => {
            log::error!("FIPS gate refused, no network I/O: {e}");
            eprintln!("rapd: FIPS gate refused, no network I/O: {e}");
            record_gate_refusal(&cfg, &e.to_string());
            return exit::FIPS;
        }
    };
    log::info!("FIPS gate passed: providers {:?}, {}", fips_state.providers, fips_state.openssl_version);

    // The audit trail, before anything it records.
    let audit_log = match AuditLog::open(&cfg.audit.path) {
        Ok((l, found)) => {
            if let Some(e) = &found.error {
                log::error!("audit log {}: {e} (recorded; rapd goes on appending)", cfg.audit.path.display());
            }
            l
        }
        Err(e) => {
            log::error!("{e}");
            eprintln!("rapd: {e}");
            return exit::FAILURE;
        }
    };
    audit::install(audit_log.clone());
    record_start(&cfg, &fips_state);

    // Signals are handled by one thread with sigwait; block them before any thread starts.
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        sigs.add(s);
    }
    if let Err(e) = sigs.thread_block() {
        eprintln!("rapd: cannot block signals: {e}");
        return exit::FAILURE;
    }

    // Links and rules before any port listens. Nothing here runs unless configured.
    let links = ports::plan(&cfg);
    if !links.is_empty() {
        if let Err(e) = ports::check_interfaces(&links) {
            log::error!("{e}; the firewall rules in place were left unchanged");
            eprintln!("rapd: {e}; the firewall rules in place were left unchanged");
            return if matches!(e, PortsError::UnknownInterface { .. }) { exit::CONFIG } else { exit::LISTEN };
        }
    }
    let fw = if cfg.firewall.enabled {
        match Firewall::apply(firewall::policy(&cfg), firewall::Tools::system(), Arc::new(audit_log.clone())) {
            Ok(f) => {
                log::info!("firewall: policy applied ({} rules)", f.status().lock().map(|s| s.rule_count).unwrap_or(0));
                Some(f)
            }
            Err(e) => {
                log::error!("firewall: {e}");
                eprintln!("rapd: firewall: {e}");
                return if matches!(e, FirewallError::UnknownInterface { .. }) { exit::CONFIG } else { exit::FAILURE };
            }
        }
    } else {
        if !links.is_empty() {
            log::warn!(
                "firewall management is off ([firewall] enabled = false): the instrument ports are not filtered"
            );
        }
        None
    };
    let link_status = if links.is_empty() {
        None
    } else {
        match ports::configure(&links) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("{e}");
                eprintln!("rapd: {e}");
                return if matches!(e, PortsError::UnknownInterface { .. }) { exit::CONFIG } else { exit::LISTEN };
            }
        }
    };

    let (queue, writer) = match Queue::open(&cfg.queue.path, cfg.queue.quota_bytes, cfg.queue.dedup_retention) {
        Ok(q) => q,
        Err(e) => {
            log::error!("{e}");
            eprintln!("rapd: {e}");
            return exit::QUEUE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let shipper = match audit_log.start_shipping(queue.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rapd: cannot start the audit shipper: {e}");
            return exit::FAILURE;
        }
    };

    let control_listener = match control::bind(&cfg.control.socket) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            eprintln!("rapd: {e}");
            return exit::LISTEN;
        }
    };

    let mut ports = Vec::new();
    for inst in &cfg.instruments {
        match ingest::start(inst.clone(), cfg.ingest.clone(), queue.clone(), stop.clone()) {
            Ok(p) => {
                log::info!("instrument {} ({}): listening on {}", inst.serial, inst.model, inst.listen);
                ports.push(p);
            }
            Err(e) => {
                log::error!("{e}");
                eprintln!("rapd: {e}");
                stop.store(true, Ordering::SeqCst);
                for p in ports {
                    p.join();
                }
                return exit::LISTEN;
            }
        }
    }

    let uplink_status: SharedStatus = Arc::new(Mutex::new(UplinkStatus::default()));
    let daemon = Arc::new(Daemon {
        fips: fips_state,
        queue: queue.clone(),
        uplink: uplink_status.clone(),
        ports: Mutex::new(ports),
        firewall: fw.as_ref().map(Firewall::status),
        links: link_status.clone(),
        audit: audit_log.clone(),
        started: Instant::now(),
    });

    let up = {
        let (cfg, q, st, stop) = (cfg.uplink.clone(), queue.clone(), uplink_status, stop.clone());
        std::thread::Builder::new().name("uplink".into()).spawn(move || uplink::run(cfg, q, st, stop))
    };
    let ctl = {
        let (src, stop) = (daemon.clone() as Arc<dyn Source>, stop.clone());
        std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || control::serve(control_listener, src, stop))
    };
    let (up, ctl) = match (up, ctl) {
        (Ok(u), Ok(c)) => (u, c),
        _ => {
            eprintln!("rapd: cannot start threads");
            return exit::FAILURE;
        }
    };
    let guard = match fw {
        None => None,
        Some(f) => match f.spawn_guard(cfg.firewall.drift_check, stop.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("rapd: cannot start the firewall guard: {e}");
                return exit::FAILURE;
            }
        },
    };
    let watcher = match link_status {
        None => None,
        Some(st) => match ports::spawn_watcher(links, st, Arc::new(LogEvents), stop.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("rapd: cannot watch the links: {e}");
                return exit::FAILURE;
            }
        },
    };
    let wd = start_watchdog(queue.clone(), stop.clone());
    notify("READY=1\nSTATUS=ingesting and forwarding");
    // Start-up code (FIPS self-tests, configuration, migrations) is not needed again.
    crate::memory::release_file_pages();
    log::info!("rapd ready: {} instrument ports, queue {}", cfg.instruments.len(), cfg.queue.path.display());

    // Wait for SIGTERM/SIGINT (SIGHUP is logged: configuration reload is a restart).
    let why = loop {
        match sigs.wait() {
            Ok(Signal::SIGHUP) => {
                log::info!("SIGHUP ignored: restart rapd to apply a new configuration")
            }
            Ok(s) => {
                log::info!("{s} received: stopping");
                break s.as_str().to_owned();
            }
            Err(e) => {
                log::error!("sigwait failed: {e}");
                break format!("sigwait failed: {e}");
            }
        }
    };
    notify("STOPPING=1");
    stop.store(true, Ordering::SeqCst);
    queue.wake();
    let ports = std::mem::take(&mut *daemon.ports.lock().unwrap_or_else(|p| p.into_inner()));
    for p in ports {
        p.join();
    }
    let _ = up.join();
    let _ = ctl.join();
    for h in [guard, watcher].into_iter().flatten() {
        let _ = h.join();
    }
    if let Some(w) = wd {
        let _ = w.join();
    }
    // The stop record goes to the queue with the rest, if it can in 2 s; else after the next start.
    audit::record(Event::new("rapd.stop").detail(serde_json::json!({ "reason": why })));
    shipper.finish(Duration::from_secs(2));
    queue.shutdown();
    drop(daemon);
    drop(queue);
    writer.join();
    let _ = std::fs::remove_file(&cfg.control.socket);
    log::info!("rapd stopped");
    exit::OK
}

/// Sends a state line to systemd when run as a notify service.
fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = res {
        log::warn!("sd_notify: {e}");
    }
}

/// Pings systemd's watchdog while the queue writer is alive.
fn start_watchdog(queue: Queue, stop: Arc<AtomicBool>) -> Option<std::thread::JoinHandle<()>> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let interval = Duration::from_micros(usec / 2);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                let age = now.saturating_sub(queue.heartbeat_ms());
                if age < usec / 1000 {
                    notify("WATCHDOG=1");
                } else {
                    log::error!("queue writer has not made progress for {age} ms; withholding watchdog ping");
                }
                uplink::sleep_unless_stopped(&stop, interval);
            }
        })
        .ok()
}
