//! Dante (`danted`) as a SOCKS5 proxy.
//!
//! Dante's `username` method checks the system password database, so a proxy with
//! credentials needs a real (login-less) system account: [`ensure_system_user`]
//! creates it. Dante must run as root here (`user.privileged: root`).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{addr_tag, find_program, write_file, Peer, PeerError, PeerSpec, READY_TIMEOUT};

/// How to run danted.
#[derive(Debug, Clone)]
pub struct DanteConfig {
    /// `internal:` address.
    pub listen: IpAddr,
    /// `internal: ... port =`; `None` picks a free one.
    pub port: Option<u16>,
    /// `socksmethod: username` with this system account (created if missing);
    /// `None`: `socksmethod: none`.
    pub auth: Option<(String, String)>,
    /// More client networks (e.g. `192.0.2.0/24`) besides 127.0.0.0/8.
    pub clients: Vec<String>,
    /// The `external:` interface (default `lo`).
    pub external: Option<String>,
}

impl Default for DanteConfig {
    fn default() -> DanteConfig {
        DanteConfig {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            auth: None,
            clients: Vec::new(),
            external: None,
        }
    }
}

/// A running danted (its whole process group is killed on drop).
#[derive(Debug)]
pub struct Dante {
    peer: Peer,
    auth: Option<(String, String)>,
}

/// Creates the system account `user` (no home, no login shell) if missing and sets
/// its password. Needs root.
pub fn ensure_system_user(user: &str, password: &str) -> Result<(), PeerError> {
    let fail = |detail: String| PeerError::User { user: user.to_string(), detail };
    if !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || password.contains(['\n', ':']) {
        return Err(fail("user must be [A-Za-z0-9_-], password without ':' or newline".into()));
    }
    let exists = Command::new("id").arg("-u").arg(user).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !exists.is_ok_and(|s| s.success()) {
        let useradd = find_program("useradd", "passwd")?;
        let out = Command::new(useradd)
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
            .output()
            .map_err(|e| fail(format!("useradd: {e}")))?;
        // Another test may have created it meanwhile (exit 9: already exists).
        if !out.status.success() && out.status.code() != Some(9) {
            return Err(fail(format!("useradd: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
    }
    let chpasswd = find_program("chpasswd", "passwd")?;
    let mut child = Command::new(chpasswd)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("chpasswd: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{user}:{password}\n").as_bytes()).map_err(|e| fail(format!("chpasswd: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(format!("chpasswd: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("chpasswd: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

impl Dante {
    /// Writes `danted-<addr>.conf` into `dir` and runs `danted -f <conf> -N 1 -p <pidfile>`
    /// in the foreground, logging to stderr (captured in `danted-<addr>.log`).
    pub fn start(dir: &Path, cfg: &DanteConfig) -> Result<Dante, PeerError> {
        let program = find_program("danted", "dante-server")?;
        if let Some((user, pass)) = &cfg.auth {
            ensure_system_user(user, pass)?;
        }
        let port = match cfg.port {
            Some(p) => p,
            None => crate::ports::free_port(cfg.listen)?,
        };
        let addr = SocketAddr::new(cfg.listen, port);
        let tag = addr_tag(addr);
        let conf = dir.join(format!("danted-{tag}.conf"));
        let method = if cfg.auth.is_some() { "username" } else { "none" };
        let mut text = format!(
            "# Written by rapbox-testkit.\n\
             logoutput: stderr\n\
             internal: {ip} port = {port}\n\
             external: {external}\n\
             socksmethod: {method}\n\
             clientmethod: none\n\
             user.privileged: root\n\
             user.unprivileged: nobody\n\
             client pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: connect disconnect error\n}}\n\
             socks pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  command: connect\n  log: connect disconnect error\n}}\n",
            ip = cfg.listen,
            external = cfg.external.as_deref().unwrap_or("lo"),
        );
        for c in &cfg.clients {
            text.push_str(&format!(
                "client pass {{\n  from: {c} to: 0.0.0.0/0\n  log: connect disconnect error\n}}\n\
                 socks pass {{\n  from: {c} to: 0.0.0.0/0\n  command: connect\n  log: connect disconnect error\n}}\n"
            ));
        }
        write_file("danted", &conf, &text)?;
        let mut command = Command::new(program);
        command.arg("-f").arg(&conf).arg("-N").arg("1").arg("-p").arg(dir.join(format!("danted-{tag}.pid")));
        let peer = Peer::spawn(PeerSpec {
            name: "danted".into(),
            command,
            ready_addr: addr,
            log: dir.join(format!("danted-{tag}.log")),
            stdout: None,
            ready_timeout: READY_TIMEOUT,
        })?;
        Ok(Dante { peer, auth: cfg.auth.clone() })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr()
    }
    /// `socks5://[user:password@]host:port`, as a proxy setting.
    pub fn url(&self) -> String {
        match &self.auth {
            Some((u, p)) => format!("socks5://{u}:{p}@{}", self.addr()),
            None => format!("socks5://{}", self.addr()),
        }
    }
    /// The underlying process.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
    /// Mutable access (to kill it mid-test).
    pub fn peer_mut(&mut self) -> &mut Peer {
        &mut self.peer
    }
    /// The log so far.
    pub fn log(&self) -> String {
        self.peer.log()
    }
    /// Whether danted passed a SOCKS connect to `target` (logged as `a.b.c.d.port`).
    pub fn saw_connect(&self, target: SocketAddr) -> bool {
        let needle = format!(" {}.{}", target.ip(), target.port());
        self.log().lines().any(|l| l.contains("pass(") && l.contains("tcp/connect [") && l.ends_with(&needle))
    }
    /// Waits up to `timeout` for [`Dante::saw_connect`].
    pub fn wait_connect(&self, target: SocketAddr, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if self.saw_connect(target) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.saw_connect(target)
    }
    /// Whether danted refused a client's credentials.
    pub fn saw_auth_failure(&self) -> bool {
        self.log().contains("password authentication failed")
    }
}
