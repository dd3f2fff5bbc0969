//! `openssl s_server` as a deliberately unacceptable TLS peer.
//!
//! Run with `-quiet`, s_server writes to stdout exactly the application bytes it
//! receives and nothing else; stdout goes to its own file, so a test can assert that
//! the box sent nothing (no request, no data) to a server it must refuse.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{addr_tag, find_program, Peer, PeerError, PeerSpec, READY_TIMEOUT};

/// How to run `openssl s_server`.
#[derive(Debug, Clone)]
pub struct TlsServerConfig {
    /// `-accept` address (e.g. a unique `127.x.y.z:443`).
    pub addr: SocketAddr,
    /// `-cert`.
    pub cert: PathBuf,
    /// `-key`.
    pub key: PathBuf,
    /// Further arguments (protocol and cipher restrictions, client verification).
    pub args: Vec<String>,
}

impl TlsServerConfig {
    /// A server with its certificate and the default protocols and suites.
    pub fn new(addr: SocketAddr, cert: &Path, key: &Path) -> TlsServerConfig {
        TlsServerConfig { addr, cert: cert.to_path_buf(), key: key.to_path_buf(), args: Vec::new() }
    }
    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> TlsServerConfig {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Only TLS 1.1 (with the legacy suites allowed): `-tls1_1 -cipher DEFAULT@SECLEVEL=0`.
    pub fn tls11_only(self) -> TlsServerConfig {
        self.args(["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
    }
    /// Only ChaCha20-Poly1305, in TLS 1.3 and 1.2 (ECDSA certificate):
    /// `-ciphersuites TLS_CHACHA20_POLY1305_SHA256 -cipher ECDHE-ECDSA-CHACHA20-POLY1305`.
    pub fn chacha20_only(self) -> TlsServerConfig {
        self.args(["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"])
    }
    /// Demands a client certificate signed by `ca`: `-Verify 1 -verify_return_error -CAfile <ca>`.
    pub fn require_client_cert(self, ca: &Path) -> TlsServerConfig {
        let ca = ca.display().to_string();
        self.args(["-Verify".to_string(), "1".into(), "-verify_return_error".into(), "-CAfile".into(), ca])
    }
}

/// A running `openssl s_server` (killed on drop).
#[derive(Debug)]
pub struct TlsServer {
    peer: Peer,
    received: PathBuf,
}

impl TlsServer {
    /// Runs `openssl s_server -accept <addr> -cert <cert> -key <key> -quiet <args...>`,
    /// logging to `s_server-<addr>.log` and the received bytes to `s_server-<addr>.received`.
    pub fn start(dir: &Path, cfg: &TlsServerConfig) -> Result<TlsServer, PeerError> {
        let program = find_program("openssl", "openssl")?;
        let tag = addr_tag(cfg.addr);
        let received = dir.join(format!("s_server-{tag}.received"));
        let mut command = Command::new(program);
        command
            .arg("s_server")
            .arg("-accept")
            .arg(cfg.addr.to_string())
            .arg("-cert")
            .arg(&cfg.cert)
            .arg("-key")
            .arg(&cfg.key)
            .arg("-quiet")
            .args(&cfg.args);
        let peer = Peer::spawn(PeerSpec {
            name: "openssl s_server".into(),
            command,
            ready_addr: cfg.addr,
            log: dir.join(format!("s_server-{tag}.log")),
            stdout: Some(received.clone()),
            ready_timeout: READY_TIMEOUT,
        })?;
        Ok(TlsServer { peer, received })
    }

    /// The address it accepts on.
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr()
    }
    /// The underlying process.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
    /// Its log (handshake errors appear here).
    pub fn log(&self) -> String {
        self.peer.log()
    }
    /// Every application byte received so far, over all connections.
    pub fn received(&self) -> Vec<u8> {
        std::fs::read(&self.received).unwrap_or_default()
    }
    /// Whether any application byte arrived.
    pub fn received_any(&self) -> bool {
        std::fs::metadata(&self.received).is_ok_and(|m| m.len() > 0)
    }
    /// Waits up to `timeout` for `needle` among the received bytes.
    pub fn wait_received(&self, needle: &[u8], timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        loop {
            if self.received().windows(needle.len().max(1)).any(|w| w == needle) {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
