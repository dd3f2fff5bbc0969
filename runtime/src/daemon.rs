//! rapd's life: validate configuration, pass the FIPS gate, apply the firewall policy and
//! set up the instrument links (only when configured), open the queue, start the ports,
//! the uplink and the control socket, tell systemd it is ready, and stop cleanly on
//! SIGTERM — every acknowledged message is already on disk by then. The firewall rules
//! stay in place when rapd stops or refuses a new configuration.
//!
//! The links, the firewall, the instrument ports and the uplink are owned by
//! `reconfig::live::Live`, so that `reconfig` can move them to a new configuration while
//! rapd runs; what a crash in the middle of that left is settled before the configuration
//! is read.
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

use crate::agents::{Agents, RequestHandler};
use crate::audit::{self, AuditLog, Event, Outcome, Verification};
use crate::certs::{self, CertInfo};
use crate::commands::{self, CommandLink, Dispatcher};
use crate::config::{Config, UplinkConfig};
use crate::control::{self, Source};
use crate::events::BoxEvents;
use crate::fips::{self, FipsState};
use crate::firewall::FirewallError;
use crate::ingest::PortStatus;
use crate::ports::PortsError;
use crate::queue::{Queue, QueueStats};
use crate::reconfig::live::{Live, LiveError};
use crate::reconfig::{self, files::ConfigFiles, ApplyArgs, ApplyReport, Reconfigurer, ShowReport};
use crate::transfers::{self, Transfers};
use crate::uplink::probe::{self, UplinkTest};
use crate::uplink::{self, SharedStatus, UplinkStatus};
use crate::{exit, logging, logins};

struct Daemon {
    fips: FipsState,
    queue: Queue,
    uplink: SharedStatus,
    /// Links, firewall, instrument ports and uplink: replaceable at run time.
    live: Arc<Live>,
    reconfig: Arc<Reconfigurer>,
    audit: AuditLog,
    commands: Dispatcher,
    transfers: Transfers,
    started: Instant,
    /// For the uplink test and the certificates (the uplink thread has its own copy).
    uplink_cfg: UplinkConfig,
    config_path: std::path::PathBuf,
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
        self.live.port_status()
    }
    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
    fn firewall(&self) -> serde_json::Value {
        self.live.firewall_status()
    }
    fn links(&self) -> serde_json::Value {
        self.live.link_status()
    }
    fn audit(&self) -> serde_json::Value {
        serde_json::to_value(self.audit.status()).unwrap_or(serde_json::Value::Null)
    }
    fn audit_verify(&self) -> Result<Verification, String> {
        self.audit.verify().map_err(|e| e.to_string())
    }
    fn commands(&self) -> serde_json::Value {
        serde_json::to_value(self.commands.status()).unwrap_or(serde_json::Value::Null)
    }
    fn transfers(&self) -> serde_json::Value {
        serde_json::to_value(self.transfers.status()).unwrap_or(serde_json::Value::Null)
    }
    fn audit_tail(&self, n: usize) -> Result<Vec<serde_json::Value>, String> {
        self.audit.tail(n).map_err(|e| e.to_string())
    }
    fn uplink_test(&self) -> Result<UplinkTest, String> {
        Ok(probe::run(&self.uplink_cfg))
    }
    fn certificates(&self) -> Result<Vec<CertInfo>, String> {
        Ok(certs::inspect(&self.uplink_cfg))
    }
    fn config_path(&self) -> Option<std::path::PathBuf> {
        Some(self.config_path.clone())
    }
    fn config_show(&self) -> Result<ShowReport, String> {
        Ok(self.reconfig.show())
    }
    fn config_apply(&self, args: &ApplyArgs, actor: &str) -> Result<ApplyReport, String> {
        Ok(self.reconfig.apply(args, actor))
    }
}

/// What an exit code means, for the audit record of a failed start.
fn exit_reason(code: i32) -> &'static str {
    match code {
        exit::CONFIG => "bad configuration",
        exit::QUEUE => "the queue database cannot be opened",
        exit::LISTEN => "a port or the control socket cannot be set up",
        exit::FIPS => "the FIPS gate refused",
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
/// A stop to apply a configuration that needs a restart ends in [`reconfig::restart_process`].
pub fn run(config_path: &Path) -> i32 {
    let code = start_and_serve(config_path);
    if code == exit::RESTART {
        return reconfig::restart_process();
    }
    // A start given up after the audit log opened ends the run's records (the normal
    // stop records its own); the details are in the system log.
    if code != exit::OK && audit::installed().is_some() {
        audit::record(Event::new("rapd.stop").outcome(Outcome::Failure).detail(serde_json::json!({
            "exit_code": code,
            "reason": format!("gave up while starting: {}; see the system log", exit_reason(code)),
        })));
    }
    // A configuration on trial that rapd cannot start with is rolled back at once.
    if code != exit::OK && reconfig::rollback_after_failed_start(config_path, code, exit_reason(code)) {
        return reconfig::restart_process();
    }
    code
}

fn start_and_serve(config_path: &Path) -> i32 {
    logging::init_early();
    // What an apply cut short by a crash left is settled before the configuration is read.
    let recovered = reconfig::files::recover(&ConfigFiles::beside(config_path));
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rapd: {e}");
            return exit::CONFIG;
        }
    };
    let cfg_text = match ConfigFiles::beside(config_path).read_current() {
        Ok(t) => t,
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

    let (queue, writer) = match Queue::open(&cfg.queue.path, cfg.queue.quota_bytes, cfg.queue.dedup_retention) {
        Ok(q) => q,
        Err(e) => {
            log::error!("{e}");
            eprintln!("rapd: {e}");
            return exit::QUEUE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Link states and changes go upstream as box events.
    let (link_events, event_sender) =
        match BoxEvents::start(queue.clone(), &crate::events::seq_path(&cfg.queue.path), stop.clone()) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("rapd: cannot start the box events: {e}");
                return exit::FAILURE;
            }
        };
    // Links and rules before any port listens. Nothing here runs unless configured.
    let network = match Live::start_network(&cfg, Arc::new(audit_log.clone()), Arc::new(link_events)) {
        Ok(n) => n,
        Err(e) => {
            let unchanged =
                if matches!(e, LiveError::Ports(_)) { "; the firewall rules in place were left unchanged" } else { "" };
            log::error!("{e}{unchanged}");
            eprintln!("rapd: {e}{unchanged}");
            return match e {
                LiveError::Ports(PortsError::UnknownInterface { .. })
                | LiveError::Firewall(FirewallError::UnknownInterface { .. }) => exit::CONFIG,
                LiveError::Ports(_) => exit::LISTEN,
                _ => exit::FAILURE,
            };
        }
    };

    let shipper = match audit_log.start_shipping(queue.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rapd: cannot start the audit shipper: {e}");
            return exit::FAILURE;
        }
    };

    let serials: Vec<String> = cfg.instruments.iter().map(|i| i.serial.clone()).collect();
    let dispatcher = match Dispatcher::open(&cfg.commands.path, &serials, cfg.commands.max_running) {
        Ok(d) => d,
        Err(e) => {
            log::error!("{e}");
            eprintln!("rapd: {e}");
            return exit::QUEUE;
        }
    };

    let agents = Agents::new();
    let transfers = match Transfers::open(
        &cfg.transfers,
        &serials,
        uplink::transfer::TransferLink::new(&cfg.uplink),
        agents.clone(),
    ) {
        Ok(t) => t,
        Err(e) => {
            log::error!("{e}");
            eprintln!("rapd: {e}");
            return exit::QUEUE;
        }
    };
    agents.register(Arc::new(transfers.clone()) as Arc<dyn RequestHandler>);
    // Remote sessions (docs/sessions.md): only with [sessions] enabled = true.
    let sessions = cfg.sessions.enabled.then(|| {
        let s = crate::sessions::Sessions::new(&cfg, agents.clone(), crate::firewall::Tools::system());
        agents.register(s.agent_handler());
        dispatcher.register(crate::sessions::KIND, s.kind());
        dispatcher.register(crate::sessions::CLOSE_KIND, s.close_kind());
        s
    });

    let control_listener = match control::bind(&cfg.control.socket).and_then(|l| {
        cfg.control.group.as_deref().map_or(Ok(()), |g| control::set_group(&cfg.control.socket, g)).map(|()| l)
    }) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            eprintln!("rapd: {e}");
            return exit::LISTEN;
        }
    };

    let uplink_status: SharedStatus = Arc::new(Mutex::new(UplinkStatus::default()));
    let extras = reconfig::live::Extras {
        agents: Some(agents.clone()),
        commands: Some((Arc::new(dispatcher.clone()) as Arc<dyn CommandLink>, cfg.commands.poll_interval)),
    };
    let live =
        match Live::start(&cfg, network, queue.clone(), Arc::new(audit_log.clone()), uplink_status.clone(), extras) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                log::error!("{e}");
                eprintln!("rapd: {e}");
                return if matches!(e, LiveError::Listen(_)) { exit::LISTEN } else { exit::FAILURE };
            }
        };
    let reconfigurer = Reconfigurer::new(cfg.clone(), cfg_text, live.clone(), &recovered);
    reconfigurer.record_recovery(&recovered);
    if let Some(s) = &sessions {
        let r = reconfigurer.clone();
        s.set_config_source(Box::new(move || r.current()));
    }
    let daemon = Arc::new(Daemon {
        fips: fips_state,
        queue: queue.clone(),
        uplink: uplink_status,
        live: live.clone(),
        reconfig: reconfigurer.clone(),
        audit: audit_log.clone(),
        commands: dispatcher.clone(),
        transfers: transfers.clone(),
        started: Instant::now(),
        uplink_cfg: cfg.uplink.clone(),
        config_path: cfg.path.clone(),
    });
    dispatcher.register(
        rapwire::transfer::DOWNLOAD_KIND,
        Arc::new(transfers::download::DownloadKind::new(transfers.clone())),
    );
    let transfer_threads = match transfers.start(stop.clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rapd: cannot start the transfer engine: {e}");
            return exit::FAILURE;
        }
    };
    dispatcher.register(
        commands::status::KIND,
        Arc::new(commands::status::StatusKind::new(&(daemon.clone() as Arc<dyn Source>))),
    );
    dispatcher.register(reconfig::command::KIND, Arc::new(reconfig::command::ConfigureKind::new(&reconfigurer)));
    let dispatch_thread = match dispatcher.start(stop.clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rapd: cannot start the command dispatcher: {e}");
            return exit::FAILURE;
        }
    };

    // The uplink starts once the dispatcher takes the commands it brings.
    if let Err(e) = live.start_uplink(&cfg.uplink) {
        eprintln!("rapd: {e}");
        live.stop();
        return exit::FAILURE;
    }
    let ctl = {
        let (src, stop) = (daemon.clone() as Arc<dyn Source>, stop.clone());
        std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || control::serve(control_listener, src, stop))
    };
    let (ctl, watch) = match (ctl, reconfigurer.spawn_watch(stop.clone())) {
        (Ok(c), Ok(w)) => (c, w),
        _ => {
            eprintln!("rapd: cannot start threads");
            live.stop();
            return exit::FAILURE;
        }
    };
    // Console and SSH logins from the kernel audit stream (needs CAP_AUDIT_READ).
    let login_watch = match logins::open() {
        Ok(fd) => match logins::spawn(fd, stop.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("rapd: cannot start the login watcher: {e}");
                return exit::FAILURE;
            }
        },
        Err(e) => {
            log::warn!("{e}: logins are not recorded in the audit trail");
            audit::record(
                Event::new("logins.watch")
                    .target("kernel audit")
                    .outcome(Outcome::Failure)
                    .detail(serde_json::json!({ "error": e.to_string() })),
            );
            None
        }
    };
    let wd = start_watchdog(queue.clone(), stop.clone());
    notify("READY=1\nSTATUS=ingesting and forwarding");
    reconfig::mark_ready();
    // Start-up code (FIPS self-tests, configuration, migrations) is not needed again.
    crate::memory::release_file_pages();
    log::info!("rapd ready: {} instrument ports, queue {}", cfg.instruments.len(), cfg.queue.path.display());

    // Wait for SIGTERM/SIGINT (SIGHUP is logged: configurations are applied through `reconfig`;
    // a SIGTERM that `reconfig` sent itself stops rapd to start again).
    let why = loop {
        match sigs.wait() {
            Ok(Signal::SIGHUP) => {
                log::info!(
                    "SIGHUP ignored: a new configuration is applied with `rapctl config apply` (docs/configuration.md)"
                )
            }
            Ok(s) => {
                if let Some(why) = reconfig::restart_requested() {
                    log::info!("stopping to restart: {why}");
                    break format!("restart: {why}");
                }
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
    // A session in progress is torn down while the firewall guard still runs.
    if let Some(s) = &sessions {
        s.shutdown();
    }
    queue.wake();
    let _ = watch.join();
    live.stop();
    let _ = ctl.join();
    dispatch_thread.join();
    transfer_threads.join();
    if let Some(h) = login_watch {
        let _ = h.join();
    }
    event_sender.join();
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
    if reconfig::restart_requested().is_some() {
        return exit::RESTART;
    }
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
