//! `raphard check-live`: the run-time side of the controls, evaluated inside the running
//! box (the QEMU tests run it in the guest): kernel parameters from /proc/sys, loaded
//! modules, netfilter policies, the audit subsystem, the remote log connection, FIPS
//! mode, and the web pages when there are any.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::checks::audit::{dir_problems, file_problems, rsyslog_text, tls_forwarders};
use crate::netfilter::{self, Table};
use crate::policy::Policy;
use crate::report::Verdict;
use crate::root::Root;
use crate::sysctl::REQUIRED;

/// Options of a live run.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// An authorised remote-service session is up: net.ipv4.ip_forward may be 1.
    pub session_active: bool,
    /// Pages of the web configuration interface to crawl (controls 34 and 46).
    pub web_urls: Vec<String>,
    /// The web server's log directory (access.log, error.log): every request of the
    /// crawl must be in them (control 46).
    pub web_logs: PathBuf,
    /// The uplink interface (control 39); by default `[network.uplink] interface` of
    /// `rapd_config`, else the interface of the IPv4 default route.
    pub uplink: Option<String>,
    /// rapd's configuration (for the uplink interface).
    pub rapd_config: PathBuf,
}

impl Default for LiveOptions {
    fn default() -> LiveOptions {
        LiveOptions {
            session_active: false,
            web_urls: Vec::new(),
            web_logs: PathBuf::from("/var/log/rapweb"),
            uplink: None,
            rapd_config: PathBuf::from("/etc/rapbox/rapd.toml"),
        }
    }
}

/// The live verdicts: (control id, verdict) for the controls with a live side.
pub fn run(policy: &Policy, opts: &LiveOptions) -> Vec<(u8, Verdict)> {
    let root = Root::new("/");
    let mut out = Vec::new();
    let tables = [("iptables", filter_table("iptables")), ("ip6tables", filter_table("ip6tables"))];
    let forwards = match &tables[0].1 {
        Ok(t) => t.forwards(),
        Err(_) => Vec::new(),
    };
    for id in [35, 36, 37] {
        out.push((id, sysctls(id, opts.session_active, &forwards)));
    }
    out.push((38, modules()));
    let uplink =
        opts.uplink.clone().map(|u| (u, "--uplink".to_string())).or_else(|| configured_uplink(&opts.rapd_config));
    out.push((39, firewall(&tables, uplink)));
    let status = command("auditctl", &["-s"]);
    out.push((41, audit_enabled(&status)));
    out.push((42, audit_immutable(&status)));
    out.push((43, audit_logs(&root)));
    out.push((44, remote_log(&root)));
    out.push((45, fips()));
    let (v34, v46) = web(policy, &opts.web_urls, &opts.web_logs);
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

/// `forwards`: the firewall's rules that forward new connections (ip_forward=1 is
/// needed, and allowed, only when there is one, or while an authorised session is up).
fn sysctls(id: u8, session_active: bool, forwards: &[String]) -> Verdict {
    let mut bad = Vec::new();
    let mut found = Vec::new();
    for req in REQUIRED.iter().filter(|r| r.control == id) {
        let path = format!("/proc/sys/{}", req.key.replace('.', "/"));
        match std::fs::read_to_string(&path) {
            Ok(v) if req.holds(&v) => found.push(format!("{}={}", req.key, v.trim())),
            Ok(v) if req.key == "net.ipv4.ip_forward" && v.trim() == "1" && session_active => {
                found.push(format!("{}=1 (authorised session active)", req.key))
            }
            Ok(v) if req.key == "net.ipv4.ip_forward" && v.trim() == "1" && !forwards.is_empty() => {
                found.push(format!("{}=1 (the firewall forwards: {})", req.key, forwards.join("; ")))
            }
            Ok(v) if req.key == "net.ipv4.ip_forward" && v.trim() == "1" => bad.push(format!(
                "{} = 1 in /proc/sys, must be 0: the firewall forwards nothing and no authorised session is up",
                req.key
            )),
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

fn filter_table(tool: &str) -> Result<Table, String> {
    match command(tool, &["-S"]) {
        Err(e) => Err(e),
        Ok((false, out)) => Err(format!("`{tool} -S` failed: {}", out.trim())),
        Ok((true, out)) => Ok(Table::parse(&out)),
    }
}

/// `[network.uplink] interface` of rapd's configuration, with where it came from.
fn configured_uplink(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    let iface = v.get("network")?.get("uplink")?.get("interface")?.as_str()?;
    Some((iface.to_string(), format!("{} [network.uplink]", path.display())))
}

/// Control 39: INPUT and FORWARD drop by default (IPv4 and IPv6), and nothing accepts a
/// new connection arriving on the uplink (`uplink`: the interface and where it came
/// from; without it, the interface of the IPv4 default route).
fn firewall(tables: &[(&str, Result<Table, String>)], uplink: Option<(String, String)>) -> Verdict {
    let mut bad = Vec::new();
    let mut found = Vec::new();
    let uplink = uplink.map(|(u, _)| u).or_else(|| {
        netfilter::default_route_interface(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
    });
    for (tool, table) in tables {
        let t = match table {
            Ok(t) => t,
            Err(e) => {
                bad.push(e.clone());
                continue;
            }
        };
        for chain in ["INPUT", "FORWARD"] {
            match t.policy(chain) {
                "DROP" => found.push(format!("{tool} {chain} DROP")),
                p => bad.push(format!("{tool}: policy of {chain} is {p}, not DROP")),
            }
        }
        if let Some(up) = &uplink {
            let open = t.uplink_accepts(up);
            if open.is_empty() {
                found.push(format!("{tool}: nothing new accepted on the uplink {up}"));
            } else {
                bad.push(format!("{tool}: new connections on the uplink {up} are accepted by: {}", open.join("; ")));
            }
        }
    }
    if uplink.is_none() {
        bad.push("no --uplink, no [network.uplink] interface in rapd's configuration and no IPv4 default route: the uplink side cannot be checked".into());
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

/// One TCP socket of /proc/net/tcp{,6}.
struct TcpSocket {
    local_port: u16,
    remote_port: u16,
    /// The kernel's state code: "01" established, "0A" listening.
    state: String,
    inode: String,
}

fn tcp_sockets() -> Vec<TcpSocket> {
    let port = |a: &str| a.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let (true, Some(local_port), Some(remote_port)) = (w.len() > 9, port(w[1]), port(w[2])) {
                out.push(TcpSocket { local_port, remote_port, state: w[3].to_string(), inode: w[9].to_string() });
            }
        }
    }
    out
}

/// Remote ports of established TCP connections.
fn established_ports() -> Vec<u16> {
    tcp_sockets().into_iter().filter(|s| s.state == "01").map(|s| s.remote_port).collect()
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

/// Sizes of the web server's logs before the crawl: only what is appended after them is
/// read.
fn log_sizes(dir: &Path) -> [u64; 2] {
    ["access.log", "error.log"].map(|n| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0))
}

fn appended(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// Control 46, the logs: every request of the crawl in the access log (`"GET PATH ..."
/// STATUS`, the common log format), and every error answer (4xx other than 401, 5xx)
/// also in the error log. The server writes a line after it has answered, so this waits
/// up to 5 s for the last ones.
fn log_problems(dir: &Path, before: [u64; 2], asked: &[(String, u16)]) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let access = appended(&dir.join("access.log"), before[0]);
        let error = appended(&dir.join("error.log"), before[1]);
        let mut bad = Vec::new();
        for (path, code) in asked {
            let req = format!("\"GET {path} ");
            if !access.lines().any(|l| l.contains(&req) && l.contains(&format!("\" {code} "))) {
                bad.push(format!("GET {path} (answered {code}) is not in {}", dir.join("access.log").display()));
            }
            if (*code >= 400 && *code != 401) && !error.lines().any(|l| l.contains(&format!(" {path} "))) {
                bad.push(format!("GET {path} (answered {code}) is not in {}", dir.join("error.log").display()));
            }
        }
        if bad.is_empty() || std::time::Instant::now() > deadline {
            return bad;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The process listening on TCP `port` (from /proc/net/tcp{,6} and the processes' fds).
fn listener(port: u16) -> Option<u32> {
    let inodes: Vec<String> = tcp_sockets()
        .into_iter()
        .filter(|s| s.state == "0A" && s.local_port == port)
        .map(|s| format!("socket:[{}]", s.inode))
        .collect();
    let procs = std::fs::read_dir("/proc").ok()?;
    for e in procs.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else { continue };
        for fd in fds.filter_map(|f| f.ok()) {
            if std::fs::read_link(fd.path()).is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str())) {
                return Some(pid);
            }
        }
    }
    None
}

/// Control 46, the modules: every shared object the web server has mapped (its own
/// program aside) is on the reviewed list policy/web-modules.allow.
fn module_problems(policy: &Policy, port: u16) -> (Vec<String>, String) {
    let Some(pid) = listener(port) else {
        return (vec![format!("no process found listening on port {port}")], String::new());
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut objects = std::collections::BTreeSet::new();
    for l in maps.lines() {
        if let Some(path) = l.split_whitespace().nth(5).filter(|p| p.starts_with('/')) {
            if Path::new(path) != exe {
                objects.insert(path.to_string());
            }
        }
    }
    let mut bad = Vec::new();
    let mut names = Vec::new();
    for o in &objects {
        let name = o.rsplit('/').next().unwrap_or(o);
        if policy.web_module_allowed(name) {
            names.push(name.to_string());
        } else {
            bad.push(format!("the web server {comm} (pid {pid}) maps {o}, not in policy/web-modules.allow"));
        }
    }
    (bad, format!("{comm} (pid {pid}) maps only {}", names.join(" ")))
}

fn web(policy: &Policy, urls: &[String], logs: &Path) -> (Verdict, Verdict) {
    if urls.is_empty() {
        let why = "no --web-url given: no web configuration pages to crawl";
        return (Verdict::not_evaluated(why), Verdict::not_evaluated(why));
    }
    let want = policy.banner.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut bad34 = Vec::new();
    let mut bad46 = Vec::new();
    let mut ok46 = vec!["TLS only, no /cgi-bin/".to_string()];
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
        let before = log_sizes(logs);
        let mut asked = Vec::new();
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
                    asked.push((p.clone(), code));
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
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
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
            Ok((code, _)) if code == 404 || code == 403 => asked.push(("/cgi-bin/".into(), code)),
            Ok((code, _)) => bad46.push(format!("https://{host}:{port}/cgi-bin/ answers {code}")),
            Err(e) => bad46.push(e),
        }
        let logged = log_problems(logs, before, &asked);
        if logged.is_empty() {
            ok46.push(format!(
                "{} request(s) in {}/access.log, the refusals in error.log",
                asked.len(),
                logs.display()
            ));
        }
        bad46.extend(logged);
        let (modules, found) = module_problems(policy, port);
        if modules.is_empty() {
            ok46.push(found);
        }
        bad46.extend(modules);
    }
    let v34 = Verdict::from_problems(bad34, format!("DoD banner on {pages} page(s)"));
    let v46 = Verdict::from_problems(bad46, ok46.join("; "));
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
