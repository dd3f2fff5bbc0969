//! `rapctl`: the field technician's console tool. Talks to rapd over its control socket.
//!
//! Exit codes (docs/console.md): 0 success, 1 rapd unreachable or answered an error, 2
//! usage error. Commands that check something use 1 for "checked and bad" and 3 for
//! "could not check": `audit verify` (0 intact, 1 broken, 3 not checked), `uplink test`
//! (0 every step passed, 1 a step failed, 3 not run), `certs` (0 both usable, 1 one
//! missing, expired, not yet valid or not matching its key, 3 not read).
//! `rapctl config check|apply`: 0 valid / applied (with `--wait`: confirmed by the data
//! center), 1 refused or failed (nothing was changed; the key is named), 2 usage error,
//! 3 rapd could not be asked, 4 (`--wait`) rolled back. See `docs/configuration.md`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rapbox::audit::{self, Verification};
use rapbox::certs::CertInfo;
use rapbox::control::{self, Request, Response, Status};
use rapbox::reconfig::{keys, ApplyArgs, ApplyOutcome, ApplyReport, ShowReport};
use rapbox::uplink::probe::UplinkTest;
use serde_json::Value;

#[path = "rapctl/views.rs"]
mod views;

/// rapbox console tool.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// rapd's control socket.
    #[arg(long, global = true, default_value = "/run/rapd/control.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Uplink, FIPS, queue and instrument status.
    Status {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// The hash-chained audit trail.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Instrument ports: link, addresses, last report per instrument.
    Ports {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// The uplink to the data center.
    Uplink {
        #[command(subcommand)]
        cmd: UplinkCmd,
    },
    /// The provisioned CA and box certificates: subject, issuer, expiry, days left.
    #[command(alias = "certificates")]
    Certs {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// The system log of rapd (or of the whole box).
    Logs {
        /// How many lines.
        #[arg(short = 'n', long = "lines", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        n: u64,
        /// Every unit, not only rapd.
        #[arg(long, conflicts_with = "unit")]
        all: bool,
        /// This systemd unit instead of rapd.service (e.g. rsyslog, rapweb, auditd).
        #[arg(short = 'u', long)]
        unit: Option<String>,
        /// Only lines since then (journalctl --since syntax: "10 min ago", "2025-01-01 12:00").
        #[arg(long)]
        since: Option<String>,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// The uplink's network settings.
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// Write rsyslog's environment for the remote collector (run by rsyslog.service before it starts).
    #[command(hide = true)]
    SyslogConf {
        #[arg(long, default_value = rapbox::config::DEFAULT_PATH)]
        config: PathBuf,
        #[arg(long, default_value = rapbox::syslog_conf::LOGHOST_ENV)]
        loghost: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// The configuration: show it, check or apply a new one (docs/configuration.md).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Check a change of the uplink settings with rapd's validation (`config_apply` as a
    /// dry run), without applying it (exit 0 valid, 1 refused with the reason, 3 not asked).
    Check {
        #[command(flatten)]
        settings: NetworkSettings,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply a change of the uplink settings: validated by rapd first, applied live only
    /// when valid, on trial like `rapctl config apply`; audited (exit 0 applied or
    /// unchanged, 1 refused or failed, 3 not asked).
    Set {
        #[command(flatten)]
        settings: NetworkSettings,
        /// Arm no rollback (a box whose data center cannot be reached yet).
        #[arg(long)]
        no_rollback: bool,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct NetworkSettings {
    /// `dhcp` or `static` (dhcp removes the static address and gateway).
    #[arg(long)]
    addressing: Option<String>,
    /// With static addressing: a.b.c.d/prefix.
    #[arg(long)]
    address: Option<String>,
    /// With static addressing: the gateway ("" removes it).
    #[arg(long)]
    gateway: Option<String>,
    /// DNS servers, comma-separated ("" uses DHCP's).
    #[arg(long)]
    dns: Option<String>,
    /// http://[user:pass@]host:port (CONNECT), socks5://…, or "none" for direct.
    #[arg(long)]
    proxy: Option<String>,
}

impl NetworkSettings {
    fn settings(self) -> rapbox::uplink_settings::UplinkSettings {
        rapbox::uplink_settings::UplinkSettings {
            addressing: self.addressing,
            address: self.address,
            gateway: self.gateway,
            dns: self.dns.map(|d| d.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect()),
            proxy: self.proxy.map(|p| if p == "none" { String::new() } else { p }),
        }
    }
}

#[derive(Subcommand)]
enum UplinkCmd {
    /// DNS, TCP, proxy, TLS handshake, mTLS acceptance, each step diagnosed (exit 0 passed, 1 failed, 3 not run).
    Test {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// The configuration in force, the trial of an applied one, recent events.
    Show {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a document or changes as an apply would, change nothing (exit 0 valid, 1 refused).
    Check(Proposed),
    /// Validate and apply a document or changes (exit 0 applied, 1 refused or failed, 4 rolled back with --wait).
    Apply {
        #[command(flatten)]
        proposed: Proposed,
        /// Do not roll back when the data center acknowledges nothing in time (only for a box
        /// being set up while the data center cannot be reached yet).
        #[arg(long)]
        no_rollback: bool,
        /// Wait until the data center confirms it (exit 0) or it is rolled back (exit 4).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(clap::Args)]
struct Proposed {
    /// Changes: KEY=VALUE, VALUE a TOML value or a bare string (e.g. uplink.proxy=http://10.0.0.9:3128).
    #[arg(value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Remove a key (may be repeated).
    #[arg(long, value_name = "KEY")]
    unset: Vec<String>,
    /// A whole configuration document instead of changes.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["set", "unset"])]
    file: Option<PathBuf>,
    /// Machine-readable JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the hash chain and name the first broken link (exit 0 intact, 1 broken, 3 not checked).
    Verify {
        /// Check this file (and `<file>.state` beside it, if present) instead of asking rapd.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// The last records, oldest first.
    Log {
        /// How many records.
        #[arg(short = 'n', long = "lines", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        n: u64,
        /// Read this file instead of asking rapd.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code of `audit verify` when the trail could not be checked at all.
const NOT_CHECKED: i32 = 3;
/// Exit codes of `config check|apply`.
const REFUSED: i32 = 1;
const USAGE: i32 = 2;
const NOT_ASKED: i32 = 3;
const ROLLED_BACK: i32 = 4;

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match args.cmd {
        Cmd::Config { cmd } => std::process::exit(config(&args.socket, cmd)),
        Cmd::Status { json } => match control::request(&args.socket, &Request::Status) {
            Ok(r) if r.ok => {
                let Some(st) = r.status else {
                    eprintln!("rapctl: rapd answered without a status");
                    std::process::exit(1);
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
                } else {
                    print!("{}", human(&st));
                }
            }
            Ok(r) => {
                eprintln!("rapctl: rapd refused: {}", r.error.unwrap_or_default());
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("rapctl: {}", unreachable(&e));
                std::process::exit(1);
            }
        },
        Cmd::Audit { cmd: AuditCmd::Verify { file, json } } => {
            let v = match &file {
                // A missing file is an empty log to rapd, but here it is a wrong path.
                Some(f) => std::fs::metadata(f)
                    .map_err(|e| format!("cannot check {}: {e}", f.display()))
                    .and_then(|_| audit::verify(f).map_err(|e| format!("cannot check {}: {e}", f.display()))),
                None => ask(&args.socket, &Request::AuditVerify)
                    .and_then(|r| r.audit_verify.ok_or_else(|| "rapd answered without a verification".into())),
            };
            match v {
                Ok(v) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    } else {
                        println!("{}", verdict(&v));
                    }
                    std::process::exit(if v.intact { 0 } else { 1 });
                }
                Err(e) => {
                    eprintln!("rapctl: {e}");
                    std::process::exit(NOT_CHECKED);
                }
            }
        }
        Cmd::Ports { json } => {
            let st = status_or_exit(&args.socket);
            if json {
                let v = serde_json::json!({ "ports": st.ports, "links": st.links });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", views::ports(&st));
            }
        }
        Cmd::Uplink { cmd: UplinkCmd::Test { json } } => {
            let t = control::request_with_timeout(
                &args.socket,
                &Request::UplinkTest { web_user: None },
                std::time::Duration::from_secs(120),
            );
            let t: Result<UplinkTest, String> = match t {
                Ok(r) if r.ok => r.uplink_test.ok_or_else(|| "rapd answered without a test result".into()),
                Ok(r) => Err(format!("rapd refused: {}", r.error.unwrap_or_default())),
                Err(e) => Err(unreachable(&e)),
            };
            match t {
                Ok(t) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&t).unwrap_or_default());
                    } else {
                        print!("{}", views::uplink_test(&t));
                    }
                    std::process::exit(if t.passed { 0 } else { 1 });
                }
                Err(e) => {
                    eprintln!("rapctl: uplink test not run: {e}");
                    std::process::exit(NOT_CHECKED);
                }
            }
        }
        Cmd::Certs { json } => {
            let c: Result<Vec<CertInfo>, String> = match control::request(&args.socket, &Request::Certificates) {
                Ok(r) if r.ok => r.certificates.ok_or_else(|| "rapd answered without certificates".into()),
                Ok(r) => Err(format!("rapd refused: {}", r.error.unwrap_or_default())),
                Err(e) => Err(unreachable(&e)),
            };
            match c {
                Ok(c) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
                    } else {
                        print!("{}", views::certs(&c));
                    }
                    std::process::exit(if c.iter().all(CertInfo::usable) { 0 } else { 1 });
                }
                Err(e) => {
                    eprintln!("rapctl: certificates not read: {e}");
                    std::process::exit(NOT_CHECKED);
                }
            }
        }
        Cmd::Network { cmd } => {
            let (settings, dry_run, rollback, json) = match cmd {
                NetworkCmd::Check { settings, json } => (settings.settings(), true, true, json),
                NetworkCmd::Set { settings, no_rollback, json } => (settings.settings(), false, !no_rollback, json),
            };
            std::process::exit(network(&args.socket, &settings, dry_run, rollback, json));
        }
        Cmd::SyslogConf { config, loghost, out } => {
            std::process::exit(views::syslog_conf(&config, &loghost, &out));
        }
        Cmd::Logs { n, all, unit, since, follow, json } => {
            std::process::exit(views::logs(n, all, unit.as_deref(), since.as_deref(), follow, json));
        }
        Cmd::Audit { cmd: AuditCmd::Log { n, file, json } } => {
            let recs = match &file {
                Some(f) => std::fs::metadata(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))
                    .and_then(|_| audit::tail(f, n as usize).map_err(|e| format!("cannot read {}: {e}", f.display()))),
                None => ask(&args.socket, &Request::AuditTail { n: n as usize })
                    .and_then(|r| r.audit_records.ok_or_else(|| "rapd answered without records".into())),
            };
            match recs {
                Ok(recs) if json => println!("{}", serde_json::to_string_pretty(&recs).unwrap_or_default()),
                Ok(recs) => {
                    for r in &recs {
                        println!("{}", record_line(r));
                    }
                }
                Err(e) => {
                    eprintln!("rapctl: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// `rapctl config ...`; returns the exit code.
fn config(socket: &Path, cmd: ConfigCmd) -> i32 {
    match cmd {
        ConfigCmd::Show { json } => match ask(socket, &Request::ConfigShow)
            .and_then(|r| r.config_show.ok_or_else(|| "rapd answered without the configuration".to_string()))
        {
            Ok(sh) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&sh).unwrap_or_default());
                } else {
                    print!("{}", show_text(&sh));
                }
                0
            }
            Err(e) => {
                eprintln!("rapctl: {e}");
                NOT_ASKED
            }
        },
        ConfigCmd::Check(p) => {
            let json = p.json;
            match proposal(p, true, true) {
                Ok(args) => apply_and_report(socket, &args, json, false),
                Err(e) => {
                    eprintln!("rapctl: {e}");
                    USAGE
                }
            }
        }
        ConfigCmd::Apply { proposed, no_rollback, wait } => {
            let json = proposed.json;
            match proposal(proposed, false, !no_rollback) {
                Ok(args) => apply_and_report(socket, &args, json, wait && !no_rollback),
                Err(e) => {
                    eprintln!("rapctl: {e}");
                    USAGE
                }
            }
        }
    }
}

/// `rapctl network check|set`: the settings become `config_apply` keys against the
/// document in force, and rapd validates (and, unless a dry run, applies) them.
fn network(
    socket: &Path,
    settings: &rapbox::uplink_settings::UplinkSettings,
    dry_run: bool,
    rollback: bool,
    json: bool,
) -> i32 {
    let what = if dry_run { "check" } else { "set" };
    if *settings == rapbox::uplink_settings::UplinkSettings::default() {
        eprintln!(
            "rapctl: network {what}: nothing given: give at least one of --addressing, --address, --gateway, --dns, --proxy"
        );
        return 2;
    }
    let doc = match control::request(socket, &Request::ConfigShow) {
        Ok(Response { ok: true, config_show: Some(sh), .. }) => sh.document,
        Ok(r) => {
            eprintln!("rapctl: rapd refused: {}", r.error.unwrap_or_default());
            return NOT_ASKED;
        }
        Err(e) => {
            eprintln!("rapctl: not asked: {}", unreachable(&e));
            return NOT_ASKED;
        }
    };
    let keys = match settings.keys(&doc) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("rapctl: refused, nothing was changed:\n  {e}");
            return REFUSED;
        }
    };
    if keys.is_empty() {
        println!("unchanged: this is the configuration in force");
        return 0;
    }
    let args = ApplyArgs { keys: Some(keys), dry_run, rollback, ..ApplyArgs::default() };
    apply_and_report(socket, &args, json, false)
}

/// The request's arguments from the command line.
fn proposal(p: Proposed, dry_run: bool, rollback: bool) -> Result<ApplyArgs, String> {
    let mut args = ApplyArgs { dry_run, rollback, ..ApplyArgs::default() };
    if let Some(f) = &p.file {
        args.document = Some(std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?);
        return Ok(args);
    }
    if p.set.is_empty() && p.unset.is_empty() {
        return Err("nothing to do: give KEY=VALUE changes, --unset KEY or --file PATH".into());
    }
    let mut changes = Vec::new();
    for a in &p.set {
        changes.push(keys::parse_assignment(a).map_err(|e| e.to_string())?);
    }
    for k in &p.unset {
        changes.push(keys::Change::Unset(k.parse().map_err(|e: keys::KeyError| e.to_string())?));
    }
    args.keys = Some(keys::to_json(&changes));
    Ok(args)
}

fn apply_and_report(socket: &Path, args: &ApplyArgs, json: bool, wait: bool) -> i32 {
    let rep = match control::request_with_timeout(socket, &Request::ConfigApply(args.clone()), APPLY_TIMEOUT) {
        Ok(r) if r.ok => match r.config_apply {
            Some(rep) => rep,
            None => {
                eprintln!("rapctl: rapd answered without a result");
                return NOT_ASKED;
            }
        },
        Ok(r) => {
            eprintln!("rapctl: rapd refused: {}", r.error.unwrap_or_default());
            return NOT_ASKED;
        }
        Err(e) => {
            eprintln!("rapctl: cannot reach rapd: {e}\n  is rapd running? (systemctl status rapd)");
            return NOT_ASKED;
        }
    };
    if json && !wait {
        println!("{}", serde_json::to_string_pretty(&rep).unwrap_or_default());
    } else if !json {
        print_report(&rep);
    }
    let code = match rep.outcome {
        ApplyOutcome::Valid | ApplyOutcome::Applied | ApplyOutcome::Unchanged => 0,
        ApplyOutcome::Refused | ApplyOutcome::Failed => REFUSED,
    };
    if !wait || rep.outcome != ApplyOutcome::Applied {
        if json && wait {
            println!("{}", serde_json::to_string_pretty(&rep).unwrap_or_default());
        }
        return code;
    }
    let (Some(id), Some(trial)) = (rep.id.clone(), rep.trial.clone()) else { return code };
    if !json {
        println!("waiting for the data center (up to {} s) ...", trial.rollback_after_s);
    }
    let end = std::time::Instant::now() + Duration::from_secs(trial.rollback_after_s + 60);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(Response { config_show: Some(sh), .. }) = control::request(socket, &Request::ConfigShow) {
            let done = sh.history.iter().rev().find(|h| {
                h.id.as_deref() == Some(id.as_str())
                    && matches!(h.event.as_str(), "confirmed" | "rolled_back" | "rollback_failed")
            });
            if let Some(h) = done {
                if json {
                    println!("{}", serde_json::json!({ "apply": rep, "end": h }));
                } else {
                    println!("{}", h.message);
                }
                return if h.event == "confirmed" { 0 } else { ROLLED_BACK };
            }
        }
        if std::time::Instant::now() > end {
            eprintln!("rapctl: configuration {id}: no confirmation or rollback seen; see rapctl config show");
            return NOT_ASKED;
        }
    }
}

/// An apply can wait for the uplink's batch in flight (up to its timeouts).
const APPLY_TIMEOUT: Duration = Duration::from_secs(180);

fn print_report(r: &ApplyReport) {
    match r.outcome {
        ApplyOutcome::Refused | ApplyOutcome::Failed => {
            let head = if r.outcome == ApplyOutcome::Refused {
                "refused, nothing was changed"
            } else {
                "failed, the configuration in force was put back"
            };
            eprintln!("rapctl: {head}:");
            for e in &r.errors {
                eprintln!("  {}", e.message);
            }
        }
        _ => {
            println!("{}", r.message);
            if let Some(id) = &r.id {
                println!("  id       {id}");
            }
            if !r.changed_keys.is_empty() {
                println!("  changes  {}", r.changed_keys.join(", "));
            }
        }
    }
}

fn show_text(sh: &ShowReport) -> String {
    let mut o = format!("configuration {}", sh.path.display());
    if sh.file != sh.path {
        o += &format!(" ({})", sh.file.display());
    }
    o += &format!("\n  sha256   {}\n", sh.sha256);
    match &sh.trial {
        Some(t) => {
            o += &format!(
                "  trial    {} applied by {} {}: rolled back in {} s unless the data center acknowledges a batch{}\n",
                t.id,
                t.actor,
                ago(Some(t.applied_ms)),
                t.remaining_s,
                if t.restart { " (applied through a restart)" } else { "" }
            )
        }
        None => o += "  trial    none (the configuration in force is confirmed)\n",
    }
    if let Some(p) = &sh.previous {
        o += &format!("  previous {}\n", p.display());
    }
    o += &format!("  restart  needed to change: {}\n", sh.restart_sections.join(", "));
    if !sh.history.is_empty() {
        o += "recent\n";
        for h in &sh.history {
            o += &format!(
                "  {:>9}  {:<15} {}  {}  {}\n",
                ago(Some(h.time_ms)),
                h.event,
                h.id.as_deref().unwrap_or("-"),
                h.actor,
                h.message
            );
        }
    }
    o += "---\n";
    o += &sh.document;
    if !sh.document.ends_with('\n') {
        o.push('\n');
    }
    o
}

/// One request; a refusal or an unreachable rapd as a message.
fn ask(socket: &std::path::Path, req: &Request) -> Result<Response, String> {
    match control::request(socket, req) {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => Err(format!("rapd refused: {}", r.error.unwrap_or_default())),
        Err(e) => Err(format!("{}\n  (or check a file with --file PATH)", unreachable(&e))),
    }
}

/// Why rapd could not be asked, with what to do about it.
fn unreachable(e: &control::ControlError) -> String {
    match e {
        control::ControlError::Io { path, source } if source.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "not allowed to use rapd's control socket {}: technicians are members of the group rapctl \
             (log in again after provisioning added you)",
            path.display()
        ),
        control::ControlError::Io { path, source }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            format!("cannot reach rapd at {}: {source}\n  is rapd running? (systemctl status rapd)", path.display())
        }
        e => format!("cannot reach rapd: {e}\n  is rapd running? (systemctl status rapd)"),
    }
}

/// The status, or exit 1 with the reason.
fn status_or_exit(socket: &std::path::Path) -> Status {
    match control::request(socket, &Request::Status) {
        Ok(r) if r.ok => match r.status {
            Some(s) => s,
            None => {
                eprintln!("rapctl: rapd answered without a status");
                std::process::exit(1);
            }
        },
        Ok(r) => {
            eprintln!("rapctl: rapd refused: {}", r.error.unwrap_or_default());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("rapctl: {}", unreachable(&e));
            std::process::exit(1);
        }
    }
}

/// The result of a verification in one line.
fn verdict(v: &Verification) -> String {
    let p = v.path.display();
    if let Some(e) = &v.error {
        return format!("audit log {p}: BROKEN: {e}");
    }
    let records = match (v.first_seq, v.last_seq) {
        (Some(a), Some(b)) => format!("{} records ({a} to {b})", v.records),
        _ => "no records".into(),
    };
    let end = match &v.end_checked_against {
        Some(s) => format!("end checked against {}", s.display()),
        None => format!("end not checked (no {})", audit::state_path(&v.path).display()),
    };
    format!("audit log {p}: intact, {records}, {end}")
}

/// One record for people: seq, time, actor, action, outcome, target, detail.
fn record_line(r: &Value) -> String {
    if let Some(t) = r.get("unreadable").and_then(Value::as_str) {
        return format!("{:>6}  unreadable: {t}", "?");
    }
    let mut o =
        format!("{:>6}  {}  {}  {}  {}", u(r, "seq"), s(r, "time"), s(r, "actor"), s(r, "action"), s(r, "outcome"));
    if !s(r, "target").is_empty() {
        o += &format!("  {}", s(r, "target"));
    }
    match r.get("detail") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) => o += &format!("  {d}"),
        Some(d) => o += &format!("  {d}"),
    }
    o
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => format!("{} ago", dur(now_ms().saturating_sub(t) / 1000)),
    }
}

fn dur(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(b: u64) -> String {
    match b {
        0..=1023 => format!("{b} B"),
        1024..=1_048_575 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

pub(crate) fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

pub(crate) fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn human(st: &Status) -> String {
    let mut o = String::new();
    o += &format!("rapd {}, up {}\n", st.version, dur(st.uptime_s));
    let f = &st.fips;
    let providers: Vec<&str> = f
        .get("providers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    o += &format!(
        "FIPS         {} (providers: {})\n",
        if f.get("passed").and_then(Value::as_bool).unwrap_or(false) { "passed" } else { "FAILED" },
        providers.join(", ")
    );
    let up = &st.uplink;
    o += &format!(
        "Uplink       {}, last upload {}\n             {} via {}\n",
        s(up, "state"),
        ago(up.get("last_success_ms").and_then(Value::as_u64)),
        s(up, "url"),
        up.get("proxy").and_then(Value::as_str).unwrap_or("direct")
    );
    o += &format!(
        "             sent {} batches, {} messages, {}\n",
        u(up, "batches_sent"),
        u(up, "records_sent"),
        bytes(u(up, "bytes_sent"))
    );
    if let Some(e) = up.get("last_error").and_then(Value::as_str) {
        o += &format!("             last error {}: {e}\n", ago(up.get("last_error_ms").and_then(Value::as_u64)));
    }
    let q = &st.queue;
    let by: Vec<u64> = q
        .get("depth_by_priority")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let by = |i: usize| by.get(i).copied().unwrap_or(0);
    o += &format!(
        "Queue        {} messages (alarms {}, high {}, normal {}, low {}), {} of {}, oldest {}\n",
        u(q, "depth"),
        by(0),
        by(1),
        by(2),
        by(3),
        bytes(u(q, "bytes")),
        bytes(u(q, "quota_bytes")),
        ago(q.get("oldest_received_ms").and_then(Value::as_u64)).replace("never", "-")
    );
    o += &format!(
        "             dropped {} routine, refused {} (queue full), duplicates {}\n",
        u(q, "dropped_total"),
        u(q, "refused_full_total"),
        u(q, "duplicates_total")
    );
    o += "Instruments\n";
    for p in st.ports.as_array().into_iter().flatten() {
        o += &format!(
            "  {:<14} {:<12} {:<21} {} conn, {} received, last report {}, {} errors\n",
            s(p, "serial"),
            s(p, "model"),
            s(p, "listen"),
            u(p, "connections"),
            u(p, "received"),
            ago(p.get("last_report_ms").and_then(Value::as_u64)),
            u(p, "errors")
        );
        if let Some(e) = p.get("last_error").and_then(Value::as_str) {
            o += &format!("  {:<14} last error: {e}\n", "");
        }
    }
    o
}
