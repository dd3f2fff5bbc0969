//! `raphard check-live`: the run-time side of the controls, evaluated inside the running
//! box (the QEMU tests run it in the guest): kernel parameters from /proc/sys, loaded
//! modules, netfilter policies, the audit subsystem, the remote log connection, FIPS
//! mode, and the web pages when there are any.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use crate::checks::audit::{dir_problems, file_problems, rsyslog_text, tls_forwarders};
use crate::policy::Policy;
use crate::report::Verdict;
use crate::root::Root;
use crate::sysctl::REQUIRED;

/// Options of a live run.
#[derive(Debug, Clone, Default)]
pub struct LiveOptions {
    /// An authorised remote-service session is up: net.ipv4.ip_forward may be 1.
    pub session_active: bool,
    /// Pages of the web configuration interface to crawl (controls 34 and 46).
    pub web_urls: Vec<String>,
}

/// The live verdicts: (control id, verdict) for the controls with a live side.
pub fn run(policy: &Policy, opts: &LiveOptions) -> Vec<(u8, Verdict)> {
    let root = Root::new("/");
    let mut out = Vec::new();
    for id in [35, 36, 37] {
        out.push((id, sysctls(id, opts.session_active)));
    }
    out.push((38, modules()));
    out.push((39, firewall()));
    let status = command("auditctl", &["-s"]);
    out.push((41, audit_enabled(&status)));
    out.push((42, audit_immutable(&status)));
    out.push((43, audit_logs(&root)));
    out.push((44, remote_log(&root)));
    out.push((45, fips()));
    let (v34, v46) = web(policy, &opts.web_urls);
    out.push((34, v34));
    out.push((46, v46));
    out
}

fn command(program: &str, args: &[&str]) -> Result<(bool, String), String> {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(o) => Ok((
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        )),
        Err(e) => Err(format!("`{program}` could not run: {e}")),
    }
}

fn sysctls(id: u8, session_active: bool) -> Verdict {
    let mut bad = Vec::new();
    let mut found = Vec::new();
    for req in REQUIRED.iter().filter(|r| r.control == id) {
        let path = format!("/proc/sys/{}", req.key.replace('.', "/"));
        match std::fs::read_to_string(&path) {
            Ok(v) if req.holds(&v) => found.push(format!("{}={}", req.key, v.trim())),
            Ok(v) if req.key == "net.ipv4.ip_forward" && session_active && v.trim() == "1" => {
                found.push(format!("{}=1 (authorised session active)", req.key))
            }
            Ok(v) => bad.push(format!("{} = {} in /proc/sys, must be {}", req.key, v.trim(), req.wanted())),
            Err(e) => bad.push(format!("{path}: {e}")),
        }
    }
    Verdict::from_problems(bad, found.join(", "))
}

fn modules() -> Verdict {
    let loaded = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let bad: Vec<String> = ["usb_storage", "sctp"]
        .iter()
        .filter(|m| loaded.lines().any(|l| l.split_whitespace().next() == Some(m)))
        .map(|m| format!("module {m} is loaded"))
        .collect();
    Verdict::from_problems(bad, "usb_storage and sctp not loaded")
}

fn firewall() -> Verdict {
    let mut bad = Vec::new();
    let mut found = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        match command(tool, &["-S"]) {
            Err(e) => bad.push(e),
            Ok((false, out)) => bad.push(format!("`{tool} -S` failed: {}", out.trim())),
            Ok((true, out)) => {
                for chain in ["INPUT", "FORWARD"] {
                    let policy = out
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("-P {chain} ")))
                        .unwrap_or("?")
                        .trim()
                        .to_string();
                    if policy == "DROP" {
                        found.push(format!("{tool} {chain} DROP"));
                    } else {
                        bad.push(format!("{tool}: policy of {chain} is {policy}, not DROP"));
                    }
                }
            }
        }
    }
    Verdict::from_problems(bad, found.join(", "))
}

fn audit_field(out: &str, key: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix(&format!("{key} ")).map(|v| v.trim().to_string()))
}

fn audit_enabled(status: &Result<(bool, String), String>) -> Verdict {
    match status {
        Err(e) => Verdict::fail(e.clone()),
        Ok((false, out)) => Verdict::fail(format!("`auditctl -s` failed: {}", out.trim())),
        Ok((true, out)) => {
            let enabled = audit_field(out, "enabled").unwrap_or_default();
            let pid = audit_field(out, "pid").unwrap_or_default();
            let mut bad = Vec::new();
            if enabled != "1" && enabled != "2" {
                bad.push(format!("kernel audit enabled {enabled}"));
            }
            if pid.is_empty() || pid == "0" {
                bad.push("no audit daemon registered (pid 0)".into());
            }
            Verdict::from_problems(bad, format!("enabled {enabled}, auditd pid {pid}"))
        }
    }
}

fn audit_immutable(status: &Result<(bool, String), String>) -> Verdict {
    match status {
        Err(e) => Verdict::fail(e.clone()),
        Ok((false, out)) => Verdict::fail(format!("`auditctl -s` failed: {}", out.trim())),
        Ok((true, out)) => match audit_field(out, "enabled").as_deref() {
            Some("2") => Verdict::pass("enabled 2 (rules locked)"),
            other => Verdict::fail(format!("auditctl -s: enabled {} (rules not immutable)", other.unwrap_or("?"))),
        },
    }
}

fn audit_logs(root: &Root) -> Verdict {
    let dir = "/var/log/audit";
    let Some(m) = root.stat(dir) else {
        return Verdict::fail(format!("{dir} is missing"));
    };
    let mut bad = dir_problems(dir, m.mode() & 0o7777, m.uid(), m.gid());
    let files = root.list(dir);
    for n in &files {
        if let Some(fm) = root.stat(&format!("{dir}/{n}")) {
            bad.extend(file_problems(&format!("{dir}/{n}"), fm.mode() & 0o7777, fm.uid()));
        }
    }
    Verdict::from_problems(bad, format!("{dir} {:04o}, {} log file(s) at most 0600", m.mode() & 0o7777, files.len()))
}

fn process_running(name: &str) -> bool {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        })
        .unwrap_or(false)
}

/// Remote ports of established TCP connections (/proc/net/tcp, tcp6).
fn established_ports() -> Vec<u16> {
    let mut ports = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() > 3 && w[3] == "01" {
                if let Some(p) = w[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) {
                    ports.push(p);
                }
            }
        }
    }
    ports
}

fn remote_log(root: &Root) -> Verdict {
    let Some(text) = rsyslog_text(root) else {
        return Verdict::fail("no /etc/rsyslog.conf");
    };
    let (ok, _) = tls_forwarders(&text);
    if ok.is_empty() {
        return Verdict::fail("no rsyslog TLS forwarding action configured");
    }
    if !process_running("rsyslogd") {
        return Verdict::fail("rsyslogd is not running");
    }
    // Backtick constants (`echo $NAME`) take their values from the environment rsyslog
    // starts with (rsyslog.service's EnvironmentFile, written by `rapctl syslog-conf`).
    let env = std::fs::read_to_string(root.dir.join(RSYSLOG_ENV.trim_start_matches('/'))).unwrap_or_default();
    let ok: Vec<(String, String)> =
        ok.iter().map(|(t, p)| (resolve_backtick(t, &env), resolve_backtick(p, &env))).collect();
    let ports = established_ports();
    let connected: Vec<String> = ok
        .iter()
        .filter(|(_, p)| p.parse::<u16>().is_ok_and(|p| ports.contains(&p)))
        .map(|(t, p)| format!("{t}:{p}"))
        .collect();
    if connected.is_empty() {
        let want: Vec<String> = ok.iter().map(|(t, p)| format!("{t}:{p}")).collect();
        Verdict::fail(format!("rsyslogd runs but holds no established connection to {}", want.join(", ")))
    } else {
        Verdict::pass(format!("rsyslogd connected to {}", connected.join(", ")))
    }
}

/// The environment file of rsyslog.service (written before it starts by `rapctl syslog-conf`).
const RSYSLOG_ENV: &str = "/run/rapbox/rsyslog-remote.env";

/// The value of an rsyslog backtick constant of the form `` `echo $NAME` `` from `env`
/// (KEY=VALUE lines); anything else is returned as it is.
fn resolve_backtick(v: &str, env: &str) -> String {
    let Some(name) = v.trim().strip_prefix("echo $") else { return v.to_string() };
    env.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, val)| val.trim().trim_matches('"').to_string())
        .next_back()
        .unwrap_or_else(|| format!("${name} (not set in {RSYSLOG_ENV})"))
}

fn fips() -> Verdict {
    let mut bad = Vec::new();
    match std::fs::read_to_string("/proc/sys/crypto/fips_enabled") {
        Ok(v) if v.trim() == "1" => {}
        Ok(v) => bad.push(format!("kernel fips_enabled = {} (boot with fips=1)", v.trim())),
        Err(e) => bad.push(format!("/proc/sys/crypto/fips_enabled: {e}")),
    }
    match command("openssl", &["list", "-providers"]) {
        Err(e) => bad.push(e),
        Ok((ok, out)) => {
            if !ok || !out.contains("OpenSSL FIPS Provider") {
                bad.push(format!(
                    "`openssl list -providers` shows no FIPS provider: {}",
                    out.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
            }
            if out.contains("OpenSSL Default Provider") || out.contains("OpenSSL Legacy Provider") {
                bad.push("the default or legacy provider is loaded by the system configuration".into());
            }
        }
    }
    match command("openssl", &["dgst", "-md5", "/proc/version"]) {
        Err(e) => bad.push(e),
        Ok((true, _)) => bad.push("`openssl dgst -md5` succeeded: a non-approved algorithm is available".into()),
        Ok((false, _)) => {}
    }
    Verdict::from_problems(bad, "fips_enabled 1, FIPS provider only, MD5 refused")
}

/// (scheme, host, port, path) of a URL.
fn parse_url(url: &str) -> Option<(String, String, u16, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let default = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()?),
        None => (hostport.to_string(), default),
    };
    Some((scheme.to_string(), host, port, path))
}

/// GET over TLS through `openssl s_client` (the box's own, FIPS-configured, OpenSSL).
fn https_get(host: &str, port: u16, path: &str) -> Result<(u16, String), String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &format!("{host}:{port}"), "-servername", host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("openssl s_client: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(req.as_bytes());
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let _ = child.wait();
    let code = out.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok());
    match code {
        Some(c) => Ok((c, out)),
        None => Err(format!("https://{host}:{port}{path}: no HTTP response")),
    }
}

fn links(body: &str) -> Vec<String> {
    body.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|l| l.starts_with('/') && !l.starts_with("//"))
        .map(|l| l.split('#').next().unwrap_or(l).to_string())
        .collect()
}

fn web(policy: &Policy, urls: &[String]) -> (Verdict, Verdict) {
    if urls.is_empty() {
        let why = "no --web-url given: the image serves no web configuration pages yet";
        return (Verdict::not_evaluated(why), Verdict::not_evaluated(why));
    }
    let want = policy.banner.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut bad34 = Vec::new();
    let mut bad46 = Vec::new();
    let mut pages = 0;
    for url in urls {
        let Some((scheme, host, port, path)) = parse_url(url) else {
            bad34.push(format!("{url}: not a URL"));
            continue;
        };
        if scheme != "https" {
            bad46.push(format!("{url}: not https"));
            continue;
        }
        let mut todo = vec![path];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(p) = todo.pop() {
            if !seen.insert(p.clone()) || seen.len() > 50 {
                continue;
            }
            match https_get(&host, port, &p) {
                Err(e) => bad34.push(e),
                Ok((code, body)) => {
                    pages += 1;
                    let text = body.split_whitespace().collect::<Vec<_>>().join(" ");
                    if code == 200 && !text.contains(&want) {
                        bad34.push(format!("https://{host}:{port}{p} lacks the DoD banner"));
                    }
                    todo.extend(links(&body));
                }
            }
        }
        match std::net::TcpStream::connect((host.as_str(), 80)) {
            Err(_) => {}
            Ok(mut s) => {
                let _ = s.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes());
                let mut head = String::new();
                let _ = s.take(4096).read_to_string(&mut head);
                let redirect = head.lines().next().is_some_and(|l| l.contains(" 301 ") || l.contains(" 308 "))
                    && head.lines().any(|l| l.to_ascii_lowercase().starts_with("location: https://"));
                if !redirect {
                    bad46.push(format!("http://{host}/ answers without redirecting to https"));
                }
            }
        }
        match https_get(&host, port, "/cgi-bin/") {
            Ok((code, _)) if code == 404 || code == 403 => {}
            Ok((code, _)) => bad46.push(format!("https://{host}:{port}/cgi-bin/ answers {code}")),
            Err(e) => bad46.push(e),
        }
    }
    let v34 = Verdict::from_problems(bad34, format!("DoD banner on {pages} page(s)"));
    let v46 = Verdict::all(vec![
        Verdict::from_problems(bad46, "TLS only, no /cgi-bin/"),
        Verdict::not_evaluated("web server modules and log configuration: review the server's configuration"),
    ]);
    (v34, v46)
}

#[cfg(test)]
mod tests {
    use super::resolve_backtick;

    #[test]
    fn backtick_constants_come_from_rsyslogs_environment() {
        let env = "# generated\nRAPBOX_SYSLOG_ADDR=10.0.2.100\nRAPBOX_SYSLOG_PORT=6514\n";
        assert_eq!(resolve_backtick("echo $RAPBOX_SYSLOG_ADDR", env), "10.0.2.100");
        assert_eq!(resolve_backtick("echo $RAPBOX_SYSLOG_PORT", env), "6514");
        assert_eq!(resolve_backtick("loghost.example", env), "loghost.example");
        assert!(resolve_backtick("echo $RAPBOX_SYSLOG_NAME", env).contains("not set"));
    }
}
