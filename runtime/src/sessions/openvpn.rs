//! The OpenVPN client of a session: its command line (a pure function, tested), the
//! process (started by rapd, killed with rapd: parent-death signal), and its management
//! interface on a Unix socket, through which rapd watches the tunnel's state and stops it.
//!
//! OpenVPN is started with `--management-hold`: it waits until rapd is connected to the
//! management socket and has asked for state notifications, so no state change is missed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::config::{Proxy, ProxyKind};

use super::config::SessionsConfig;

/// Data-channel ciphers the client accepts (FIPS-approved AEADs only).
pub const DATA_CIPHERS: &str = "AES-256-GCM:AES-128-GCM";

/// What the management interface tells the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A `>STATE:` line: the state name and the local tunnel address (when it has one).
    State { name: String, local: String, remote: String },
    /// The management connection ended (OpenVPN exited).
    Gone,
}

/// The files of one running client.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
    pub management: PathBuf,
    pub pid: PathBuf,
    pub proxy_auth: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Files {
        Files {
            dir: dir.to_owned(),
            management: dir.join("management.sock"),
            pid: dir.join("openvpn.pid"),
            proxy_auth: dir.join("proxy-auth"),
        }
    }
}

/// A proxy's user name and password.
pub type Credentials = (String, String);

/// Host, port and credentials of a proxy URL (validated by the configuration stage).
pub fn proxy_parts(p: &Proxy) -> Option<(String, u16, Option<Credentials>)> {
    let u = url::Url::parse(&p.url).ok()?;
    let host = u.host_str()?.trim_matches(['[', ']']).to_owned();
    let port = u.port()?;
    let creds = (!u.username().is_empty()).then(|| {
        let dec =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        (dec(u.username()).unwrap_or_default(), dec(u.password().unwrap_or("")).unwrap_or_default())
    });
    Some((host, port, creds))
}

/// OpenVPN's arguments for a session.
pub fn args(cfg: &SessionsConfig, proxy: Option<&Proxy>, files: &Files) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| (*s).to_owned()));
    let port = cfg.port.to_string();
    let timeout = cfg.connect_timeout.as_secs().to_string();
    push(&["--client", "--dev", &cfg.interface, "--dev-type", "tun"]);
    push(&["--proto", "tcp-client", "--remote", &cfg.endpoint, &port, "--nobind"]);
    push(&["--connect-retry-max", "1", "--connect-timeout", &timeout, "--resolv-retry", "0"]);
    push(&["--ca", &cfg.ca.to_string_lossy(), "--cert", &cfg.cert.to_string_lossy()]);
    push(&["--key", &cfg.key.to_string_lossy(), "--remote-cert-tls", "server"]);
    if let Some(n) = &cfg.server_name {
        push(&["--verify-x509-name", n, "name"]);
    }
    push(&["--tls-version-min", "1.2", "--data-ciphers", DATA_CIPHERS, "--auth", "SHA256"]);
    // Only the tunnel's own address: no routes, no DNS, no IPv6 pushed by the server.
    push(&["--route-nopull", "--pull-filter", "ignore", "ifconfig-ipv6"]);
    push(&["--script-security", "1", "--auth-nocache", "--ping", "5", "--ping-exit", "30"]);
    push(&["--management", &files.management.to_string_lossy(), "unix", "--management-hold"]);
    push(&["--writepid", &files.pid.to_string_lossy(), "--suppress-timestamps", "--verb", "3"]);
    if let Some((p, (host, pport, creds))) = proxy.and_then(|p| proxy_parts(p).map(|x| (p, x))) {
        let pport = pport.to_string();
        let opt = match p.kind {
            ProxyKind::Connect => "--http-proxy",
            ProxyKind::Socks5 => "--socks-proxy",
        };
        push(&[opt, &host, &pport]);
        if creds.is_some() {
            push(&[&files.proxy_auth.to_string_lossy()]);
            if p.kind == ProxyKind::Connect {
                push(&["basic"]);
            }
        }
    }
    a
}

/// A running OpenVPN client.
pub struct Client {
    child: Child,
    management: Option<UnixStream>,
    pub files: Files,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("pid", &self.child.id()).finish()
    }
}

/// Why the client could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{path}: {source}")]
    Files { path: PathBuf, source: std::io::Error },
    #[error("{program}: cannot start: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("{program} exited before its management interface answered ({status})")]
    Exited { program: PathBuf, status: String },
    #[error("management interface {path}: {reason}")]
    Management { path: PathBuf, reason: String },
}

/// Kills what a previous run of rapd may have left (an OpenVPN whose pid file is still
/// there) and empties the session directory.
pub fn clean_up(dir: &Path) {
    let files = Files::new(dir);
    if let Some(pid) = std::fs::read_to_string(&files.pid).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "openvpn" {
            log::warn!("session: an OpenVPN (pid {pid}) left by a previous run is stopped");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    for p in [&files.pid, &files.management, &files.proxy_auth] {
        let _ = std::fs::remove_file(p);
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

impl Client {
    /// Starts OpenVPN (FIPS configuration `openssl_conf` in its environment), connects to
    /// its management interface, turns state notifications on and releases the hold.
    /// Notifications go to `notices`.
    pub fn start(
        cfg: &SessionsConfig,
        proxy: Option<&Proxy>,
        openssl_conf: &Path,
        notices: Sender<Notice>,
    ) -> Result<Client, StartError> {
        let files = Files::new(&cfg.run_dir);
        let fe = |path: &Path| {
            let path = path.to_owned();
            move |source| StartError::Files { path, source }
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&files.dir).map_err(fe(&files.dir))?;
        }
        clean_up(&files.dir);
        if let Some((_, _, Some((user, pass)))) = proxy.and_then(proxy_parts) {
            write_private(&files.proxy_auth, &format!("{user}\n{pass}\n")).map_err(fe(&files.proxy_auth))?;
        }
        let mut cmd = Command::new(&cfg.openvpn);
        cmd.args(args(cfg, proxy, &files))
            .env("OPENSSL_CONF", openssl_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: sigemptyset, sigprocmask and prctl are async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // rapd blocks SIGTERM, SIGINT and SIGHUP in every thread (it waits for them with
                // sigwait); a child would inherit that mask and never see the parent-death signal.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| StartError::Spawn { program: cfg.openvpn.clone(), source })?;
        for (name, out) in [
            ("stdout", child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>)),
            ("stderr", child.stderr.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>)),
        ] {
            let Some(out) = out else { continue };
            let _ = std::thread::Builder::new().name(format!("openvpn-{name}")).spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log::info!("openvpn: {line}");
                }
            });
        }
        let mut c = Client { child, management: None, files };
        // The socket appears once OpenVPN has read its configuration.
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(StartError::Exited { program: cfg.openvpn.clone(), status: status.to_string() });
            }
            match UnixStream::connect(&c.files.management) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    c.kill();
                    return Err(StartError::Management { path: c.files.management.clone(), reason: e.to_string() });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let me = |reason: String| StartError::Management { path: c.files.management.clone(), reason };
        let reader = stream.try_clone().map_err(|e| me(e.to_string()))?;
        let _ = std::thread::Builder::new().name("openvpn-mgmt".into()).spawn(move || read_management(reader, notices));
        let mut w = stream.try_clone().map_err(|e| me(e.to_string()))?;
        if let Err(e) = w.write_all(b"state on\nhold release\n") {
            let e = me(e.to_string());
            c.kill();
            return Err(e);
        }
        c.management = Some(stream);
        Ok(c)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// Asks OpenVPN to stop through the management interface (SIGTERM: it closes the
    /// tunnel and removes the tun device), waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) -> String {
        if self.exited().is_none() {
            if let Some(m) = self.management.as_mut() {
                let _ = m.write_all(b"signal SIGTERM\n");
            }
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let how = match self.exited() {
            Some(s) => format!("stopped ({s})"),
            None => {
                self.kill();
                "killed after the grace period".to_owned()
            }
        };
        clean_up(&self.files.dir);
        how
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// Parses one management line into a notice (`>STATE:time,NAME,desc,local,remote,...`).
pub fn parse_state(line: &str) -> Option<Notice> {
    let rest = line.strip_prefix(">STATE:")?;
    let f: Vec<&str> = rest.split(',').collect();
    Some(Notice::State {
        name: f.get(1)?.to_string(),
        local: f.get(3).unwrap_or(&"").to_string(),
        remote: f.get(4).unwrap_or(&"").to_string(),
    })
}

fn read_management(stream: UnixStream, notices: Sender<Notice>) {
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let line = line.trim_end();
        if let Some(n) = parse_state(line) {
            if notices.send(n).is_err() {
                return;
            }
        } else if line.starts_with(">FATAL:") || line.starts_with("ERROR:") {
            log::warn!("openvpn management: {line}");
        }
    }
    let _ = notices.send(Notice::Gone);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> SessionsConfig {
        let base = include_str!("../../tests/fixtures/firewall/two-ports-lis.toml");
        let t = format!(
            "{base}\n[sessions]\nenabled = true\nendpoint = \"vpn.example.net\"\nca = \"/data/certs/vpn-ca.pem\"\nserver_name = \"vpn.example.net\"\nrun_dir = \"/run/rapd/session\"\n"
        );
        Config::parse(Path::new("/x.toml"), &t).unwrap().sessions
    }

    #[test]
    fn the_command_line_holds_the_security_settings() {
        let c = cfg();
        let files = Files::new(&c.run_dir);
        let a = args(&c, None, &files).join(" ");
        for want in [
            "--client --dev raptun0 --dev-type tun",
            "--proto tcp-client --remote vpn.example.net 443",
            "--ca /data/certs/vpn-ca.pem --cert /data/certs/box.pem --key /data/certs/box.key --remote-cert-tls server",
            "--verify-x509-name vpn.example.net name",
            "--tls-version-min 1.2 --data-ciphers AES-256-GCM:AES-128-GCM",
            "--route-nopull",
            "--script-security 1",
            "--management /run/rapd/session/management.sock unix --management-hold",
        ] {
            assert!(a.contains(want), "{want} missing in {a}");
        }
        assert!(!a.contains("proxy"));
        let p = Proxy { kind: ProxyKind::Connect, url: "http://u%40x:p%3Aw@proxy.lan:3128".into() };
        let a = args(&c, Some(&p), &files).join(" ");
        assert!(a.ends_with("--http-proxy proxy.lan 3128 /run/rapd/session/proxy-auth basic"), "{a}");
        assert_eq!(proxy_parts(&p).unwrap().2, Some(("u@x".into(), "p:w".into())));
        let p = Proxy { kind: ProxyKind::Socks5, url: "socks5://10.0.0.5:1080".into() };
        let a = args(&c, Some(&p), &files).join(" ");
        assert!(a.ends_with("--socks-proxy 10.0.0.5 1080"), "{a}");
    }

    #[test]
    fn state_lines() {
        assert_eq!(
            parse_state(">STATE:1733100000,CONNECTED,SUCCESS,10.99.0.2,192.0.2.1,443,,"),
            Some(Notice::State { name: "CONNECTED".into(), local: "10.99.0.2".into(), remote: "192.0.2.1".into() })
        );
        assert_eq!(
            parse_state(">STATE:1733100000,RECONNECTING,connection-reset,,,,,"),
            Some(Notice::State { name: "RECONNECTING".into(), local: "".into(), remote: "".into() })
        );
        assert_eq!(parse_state(">INFO:OpenVPN Management Interface Version 5"), None);
    }
}
