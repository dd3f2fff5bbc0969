//! `rapctl`: the field technician's console tool. Talks to rapd over its control socket.
//!
//! Exit codes: 0 success, 1 rapd unreachable or answered an error, 2 usage error.
//! `rapctl audit verify`: 0 the audit trail is intact, 1 it is broken (the first broken
//! link is printed), 2 usage error, 3 it could not be checked (rapd unreachable, file
//! unreadable). See `docs/audit.md`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rapbox::audit::{self, Verification};
use rapbox::control::{self, Request, Response, Status};
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
