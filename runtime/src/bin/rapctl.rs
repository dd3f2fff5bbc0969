//! `rapctl`: the field technician's console tool. Talks to rapd over its control socket.
//!
//! Exit codes: 0 success, 1 rapd unreachable or answered an error, 2 usage error.
//! `rapctl audit verify`: 0 the audit trail is intact, 1 it is broken (the first broken
//! link is printed), 2 usage error, 3 it could not be checked (rapd unreachable, file
//! unreadable). See `docs/audit.md`.
//! `rapctl config check|apply`: 0 valid / applied (with `--wait`: confirmed by the data
//! center), 1 refused or failed (nothing was changed; the key is named), 2 usage error,
//! 3 rapd could not be asked, 4 (`--wait`) rolled back. See `docs/configuration.md`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rapbox::audit::{self, Verification};
use rapbox::control::{self, Request, Response, Status};
use rapbox::reconfig::{keys, ApplyArgs, ApplyOutcome, ApplyReport, ShowReport};
use serde_json::Value;

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
    /// The configuration: show it, check or apply a new one (docs/configuration.md).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
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
                eprintln!("rapctl: cannot reach rapd: {e}\n  is rapd running? (systemctl status rapd)");
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
    let rep = match control::request_timeout(socket, &Request::ConfigApply(args.clone()), APPLY_TIMEOUT) {
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
        Err(e) => Err(format!(
            "cannot reach rapd: {e}\n  is rapd running? (systemctl status rapd; or check a file with --file PATH)"
        )),
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn ago(ms: Option<u64>) -> String {
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

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
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
