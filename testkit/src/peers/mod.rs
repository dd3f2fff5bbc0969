//! Real peers (proxies, TLS servers) run as child processes for the box's tests.
//!
//! Every peer gets its config written into the test's directory, logs into a file
//! there, runs in its own process group (killed as a whole on drop) and is only
//! handed to the test once its port accepts TCP connections. If it exits or does not
//! listen in time, the error carries its log.
//!
//! * [`Tinyproxy`]: HTTP CONNECT proxy, optional Basic auth.
//! * [`Dante`]: SOCKS5 proxy (`danted`), optional username/password auth.
//! * [`TlsServer`]: `openssl s_server` for TLS negative tests; records whether any
//!   application bytes arrived.
//! * [`Peer`]: the generic launcher they share (also for other peers, e.g. nginx).

mod dante;
mod tinyproxy;
mod tls_server;

use std::fs::{self, File, OpenOptions};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub use dante::{ensure_system_user, Dante, DanteConfig};
pub use tinyproxy::{Tinyproxy, TinyproxyConfig};
pub use tls_server::{TlsServer, TlsServerConfig};

/// How long a peer may take to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a peer could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The program is not installed.
    #[error("{program} not found in PATH, /usr/sbin or /sbin (install the Debian package {package})")]
    Missing { program: String, package: &'static str },
    /// A config or log file could not be written.
    #[error("{peer}: writing {path}: {source}")]
    Write {
        peer: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("{peer}: starting {command}: {source}")]
    Spawn {
        peer: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// It exited before listening.
    #[error("{} exited ({status}) before accepting connections on {}{}", .failure.peer, .failure.addr, .failure)]
    Exited { status: ExitStatus, failure: Box<Failure> },
    /// It did not listen in time.
    #[error("{} did not accept connections on {} within {secs:.1} s{}", .failure.peer, .failure.addr, .failure)]
    NotReady { secs: f64, failure: Box<Failure> },
    /// No address or port was available.
    #[error(transparent)]
    Port(#[from] crate::ports::PortError),
    /// A system account needed by the peer could not be prepared.
    #[error("preparing system user {user}: {detail}")]
    User { user: String, detail: String },
}

/// What a peer that failed to start left behind.
#[derive(Debug)]
pub struct Failure {
    pub peer: String,
    pub command: String,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    /// The end of its log.
    pub log: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\ncommand: {}\nlog {}:\n{}", self.command, self.log_path.display(), self.log)
    }
}

/// How to start a peer.
#[derive(Debug)]
pub struct PeerSpec {
    /// A short name for messages and file names (`tinyproxy`, `danted`, ...).
    pub name: String,
    /// The command, arguments set; stdio is set up by [`Peer::spawn`].
    pub command: Command,
    /// The address that accepts connections once the peer is ready.
    pub ready_addr: SocketAddr,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Send stdout elsewhere (e.g. the data `openssl s_server` receives).
    pub stdout: Option<PathBuf>,
    /// Bound on the wait for `ready_addr`.
    pub ready_timeout: Duration,
}

/// A running peer process; killed (with its whole process group) on drop.
#[derive(Debug)]
pub struct Peer {
    name: String,
    command: String,
    child: Child,
    _stdin: Option<ChildStdin>,
    addr: SocketAddr,
    log: PathBuf,
    killed: bool,
}

/// Finds `program` in PATH, then in /usr/sbin and /sbin (root's tools).
pub fn find_program(program: &str, package: &'static str) -> Result<PathBuf, PeerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| PeerError::Missing { program: program.to_string(), package })
}

/// Writes a peer's config file.
pub(crate) fn write_file(peer: &str, path: &Path, text: &str) -> Result<(), PeerError> {
    fs::write(path, text).map_err(|source| PeerError::Write {
        peer: peer.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

fn read_log(path: &Path) -> String {
    match fs::read(path) {
        Ok(b) => {
            let s = String::from_utf8_lossy(&b);
            // Keep error messages readable: the last 8 KiB say why it failed.
            let start = s.len().saturating_sub(8192);
            let start = (start..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
            s[start..].to_string()
        }
        Err(e) => format!("(log unreadable: {e})"),
    }
}

impl Peer {
    /// Starts the peer and waits until `ready_addr` accepts a TCP connection.
    pub fn spawn(spec: PeerSpec) -> Result<Peer, PeerError> {
        let PeerSpec { name, mut command, ready_addr, log, stdout, ready_timeout } = spec;
        let write_err = |path: &Path| {
            let (peer, path) = (name.clone(), path.to_path_buf());
            move |source| PeerError::Write { peer, path, source }
        };
        let log_file =
            OpenOptions::new().create(true).write(true).truncate(true).open(&log).map_err(write_err(&log))?;
        let err_file = log_file.try_clone().map_err(write_err(&log))?;
        let out_file = match &stdout {
            Some(p) => File::create(p).map_err(write_err(p))?,
            None => log_file,
        };
        command.stdin(Stdio::piped()).stdout(out_file).stderr(err_file).process_group(0);
        let command_text = format!("{command:?}");
        let mut child = command.spawn().map_err(|source| PeerError::Spawn {
            peer: name.clone(),
            command: command_text.clone(),
            source,
        })?;
        // Kept open: some peers (openssl s_server) stop when their stdin reaches EOF.
        let stdin = child.stdin.take();
        let mut peer = Peer { name, command: command_text, child, _stdin: stdin, addr: ready_addr, log, killed: false };
        peer.wait_ready(ready_timeout)?;
        Ok(peer)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), PeerError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.killed = true;
                return Err(PeerError::Exited { status, failure: self.failure() });
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                self.kill();
                return Err(PeerError::NotReady { secs: timeout.as_secs_f64(), failure: self.failure() });
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn failure(&self) -> Box<Failure> {
        Box::new(Failure {
            peer: self.name.clone(),
            command: self.command.clone(),
            addr: self.addr,
            log_path: self.log.clone(),
            log: read_log(&self.log),
        })
    }

    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Its process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }
    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
    /// Waits until a log line contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
    /// Whether the main process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// Kills the peer and every process of its group (SIGKILL), and reaps it.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group we created
            // for this child (process_group(0) made its pid the group id).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A file name fragment for an address: `127.1.0.5-443`.
pub(crate) fn addr_tag(addr: SocketAddr) -> String {
    format!("{}-{}", addr.ip(), addr.port())
}

#[cfg(test)]
mod tests;
