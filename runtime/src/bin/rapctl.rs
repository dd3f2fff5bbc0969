//! `rapctl`: the field technician's console tool. Talks to rapd over its control socket.
//!
//! Exit codes: 0 success, 1 rapd unreachable or answered an error, 2 usage error.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rapbox::control::{self, Request, Status};
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
}

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
    }
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
