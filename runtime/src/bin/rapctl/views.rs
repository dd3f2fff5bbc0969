//! rapctl's human output for ports, the uplink test and certificates, and `rapctl logs`.

use rapbox::certs::CertInfo;
use rapbox::control::Status;
use rapbox::uplink::probe::{StepState, UplinkTest};
use serde_json::Value;

use crate::{ago, s, u};

/// `rapctl ports`: the uplink link and one block per instrument.
pub fn ports(st: &Status) -> String {
    let links: Vec<&Value> = st.links.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let mut o = String::new();
    match links.iter().find(|l| l.get("serial").is_none_or(Value::is_null)) {
        Some(l) => {
            o += &format!(
                "Uplink       {}  link {}{}\n",
                s(l, "interface"),
                s(l, "link"),
                l.get("address").and_then(Value::as_str).map(|a| format!(", address {a}")).unwrap_or_default()
            )
        }
        None => o += "Uplink       not managed by rapd (address from the system: DHCP)\n",
    }
    let ports = st.ports.as_array().cloned().unwrap_or_default();
    if ports.is_empty() {
        o += "Instruments  none configured\n";
        return o;
    }
    o += "Instruments\n";
    for p in &ports {
        let serial = s(p, "serial");
        let link = links.iter().find(|l| l.get("serial").and_then(Value::as_str) == Some(serial));
        let wire = match link {
            Some(l) => format!(
                "{} link {}, box address {}",
                s(l, "interface"),
                s(l, "link"),
                l.get("address").and_then(Value::as_str).unwrap_or("none")
            ),
            None => "no port of its own (loopback)".into(),
        };
        o += &format!("  {serial} ({})  {wire}\n", s(p, "model"));
        o += &format!(
            "    agent {}: {} received, last report {}, {} connected, {} errors, {} refused connections\n",
            s(p, "listen"),
            u(p, "received"),
            ago(p.get("last_report_ms").and_then(Value::as_u64)),
            u(p, "connections"),
            u(p, "errors"),
            u(p, "refused_connections")
        );
        if let Some(e) = p.get("last_error").and_then(Value::as_str) {
            o += &format!("    last error: {e}\n");
        }
    }
    o
}

/// `rapctl uplink test`: one line per step, the diagnosis under a failed one, a verdict.
pub fn uplink_test(t: &UplinkTest) -> String {
    let mut o = format!(
        "Uplink test: {} ({})\n",
        t.url,
        t.proxy.as_deref().map(|p| format!("through {p}")).unwrap_or_else(|| "direct".into())
    );
    for st in &t.steps {
        let state = match st.state {
            StepState::Ok => "ok",
            StepState::Failed => "FAILED",
            StepState::Skipped => "skipped",
        };
        if st.state == StepState::Skipped {
            o += &format!("  {:<6}{state}\n", st.step);
            continue;
        }
        o += &format!("  {:<6}{state:<8}{}\n", st.step, st.detail);
        if let Some(d) = &st.diagnosis {
            o += &format!("  {:<6}{:<8}why: {d}\n", "", "");
        }
    }
    match t.steps.iter().find(|s| s.state == StepState::Failed) {
        None => o += "PASSED: the box reaches the data center and its certificate is accepted\n",
        Some(f) => o += &format!("FAILED at {}: {}\n", f.step, f.diagnosis.as_deref().unwrap_or(&f.detail)),
    }
    o
}

/// `rapctl certs`.
pub fn certs(c: &[CertInfo]) -> String {
    let mut o = String::new();
    for ci in c {
        let role = if ci.role == "ca" { "CA" } else { "Box" };
        let state = match ci.state.as_str() {
            "valid" => "valid".to_owned(),
            "expiring" => format!("EXPIRING SOON (fewer than {} days)", rapbox::certs::EXPIRING_DAYS),
            "expired" => "EXPIRED".to_owned(),
            "not_yet_valid" => "NOT YET VALID (check the clock)".to_owned(),
            "missing" => "MISSING".to_owned(),
            other => other.to_uppercase(),
        };
        o += &format!("{role:<4}{}  {state}\n", ci.path);
        if let Some(sub) = &ci.subject {
            o += &format!("    subject    {sub}\n");
        }
        if let Some(iss) = &ci.issuer {
            o += &format!("    issuer     {iss}\n");
        }
        if let (Some(nb), Some(na)) = (&ci.not_before, &ci.not_after) {
            o += &format!("    valid      {nb} to {na}\n");
        }
        if let Some(d) = ci.days_left {
            o += &format!("    days left  {d}\n");
        }
        if ci.count > 1 {
            o += &format!("    file holds {} certificates (first shown)\n", ci.count);
        }
        match ci.key_matches {
            Some(true) => o += "    key        matches the certificate\n",
            Some(false) => o += "    key        DOES NOT MATCH the certificate\n",
            None => {}
        }
        if let Some(e) = &ci.error {
            o += &format!("    problem    {e}\n");
        }
    }
    o
}

/// `rapctl logs`: journalctl with the right filters; returns its exit code.
pub fn logs(n: u64, all: bool, unit: Option<&str>, since: Option<&str>, follow: bool, json: bool) -> i32 {
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["--no-pager", "-n", &n.to_string(), "-o", if json { "json" } else { "short-iso" }]);
    if !all {
        let unit = unit.unwrap_or("rapd");
        let unit = if unit.contains('.') { unit.to_owned() } else { format!("{unit}.service") };
        cmd.args(["-u", &unit]);
    }
    if let Some(s) = since {
        cmd.args(["--since", s]);
    }
    if follow {
        cmd.arg("-f");
    }
    match cmd.status() {
        Ok(st) => match st.code() {
            Some(0) => 0,
            Some(c) => {
                eprintln!(
                    "rapctl: journalctl exited {c}; technicians read the journal as members of the group \
                     systemd-journal"
                );
                1
            }
            None => 1,
        },
        Err(e) => {
            eprintln!("rapctl: cannot run journalctl: {e}");
            1
        }
    }
}

/// `rapctl syslog-conf`: rsyslog's environment for the remote collector, written
/// atomically to `out`. Exits 0 when there is no collector too (the file says why);
/// 1 when the configuration cannot be read or the file not written.
pub fn syslog_conf(config: &std::path::Path, loghost: &std::path::Path, out: &std::path::Path) -> i32 {
    use rapbox::syslog_conf::{name_from_env, render, render_none};
    let cfg = match rapbox::config::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rapctl: {e}: no remote syslog forwarding");
            let _ = write_atomic(out, &format!("# no remote syslog forwarding: {e}\n"));
            return 1;
        }
    };
    let name = std::fs::read_to_string(loghost).ok().and_then(|t| name_from_env(&t));
    let text = match render(&cfg, name.as_deref()) {
        Ok(t) => {
            eprintln!(
                "rapctl: remote syslog to {} (certificate name {})",
                t.lines().nth(1).unwrap_or(""),
                name.unwrap_or_default()
            );
            t
        }
        Err(e) => {
            eprintln!("rapctl: no remote syslog forwarding: {e}");
            render_none(&e)
        }
    };
    match write_atomic(out, &text) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rapctl: {}: {e}", out.display());
            1
        }
    }
}

fn write_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
