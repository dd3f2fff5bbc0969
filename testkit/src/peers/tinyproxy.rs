//! tinyproxy as an HTTP CONNECT proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{addr_tag, find_program, write_file, Peer, PeerError, PeerSpec, READY_TIMEOUT};

/// How to run tinyproxy.
#[derive(Debug, Clone)]
pub struct TinyproxyConfig {
    /// Listen address (`Listen`); clients from this address and 127.0.0.1 are allowed.
    pub listen: IpAddr,
    /// `Port`; `None` picks a free one.
    pub port: Option<u16>,
    /// `BasicAuth user password`.
    pub basic_auth: Option<(String, String)>,
    /// `ConnectPort` lines: the only ports CONNECT may reach.
    pub connect_ports: Vec<u16>,
    /// More `Allow` lines (addresses or networks, e.g. `192.0.2.0/24`) for clients in a
    /// network namespace.
    pub allow: Vec<String>,
}

impl Default for TinyproxyConfig {
    fn default() -> TinyproxyConfig {
        TinyproxyConfig {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            basic_auth: None,
            connect_ports: vec![443],
            allow: Vec::new(),
        }
    }
}

/// A running tinyproxy (killed on drop).
#[derive(Debug)]
pub struct Tinyproxy {
    peer: Peer,
    auth: Option<(String, String)>,
}

impl Tinyproxy {
    /// Writes `tinyproxy-<addr>.conf` into `dir` and runs `tinyproxy -d -c <conf>`.
    pub fn start(dir: &Path, cfg: &TinyproxyConfig) -> Result<Tinyproxy, PeerError> {
        let program = find_program("tinyproxy", "tinyproxy")?;
        let port = match cfg.port {
            Some(p) => p,
            None => crate::ports::free_port(cfg.listen)?,
        };
        let addr = SocketAddr::new(cfg.listen, port);
        let tag = addr_tag(addr);
        let conf = dir.join(format!("tinyproxy-{tag}.conf"));
        let mut text = format!(
            "# Written by rapbox-testkit.\nPort {port}\nListen {}\nTimeout 60\nLogLevel Info\nMaxClients 200\n\
             DisableViaHeader Yes\nAllow 127.0.0.1\n",
            cfg.listen
        );
        if cfg.listen != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            text.push_str(&format!("Allow {}\n", cfg.listen));
        }
        for a in &cfg.allow {
            text.push_str(&format!("Allow {a}\n"));
        }
        for p in &cfg.connect_ports {
            text.push_str(&format!("ConnectPort {p}\n"));
        }
        if let Some((user, pass)) = &cfg.basic_auth {
            text.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        write_file("tinyproxy", &conf, &text)?;
        let mut command = Command::new(program);
        command.arg("-d").arg("-c").arg(&conf);
        let peer = Peer::spawn(PeerSpec {
            name: "tinyproxy".into(),
            command,
            ready_addr: addr,
            log: dir.join(format!("tinyproxy-{tag}.log")),
            stdout: None,
            ready_timeout: READY_TIMEOUT,
        })?;
        Ok(Tinyproxy { peer, auth: cfg.basic_auth.clone() })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr()
    }
    /// `http://[user:password@]host:port`, as a proxy setting.
    pub fn url(&self) -> String {
        match &self.auth {
            Some((u, p)) => format!("http://{u}:{p}@{}", self.addr()),
            None => format!("http://{}", self.addr()),
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
    /// Whether a client asked for `CONNECT <target>` (e.g. `127.0.0.5:443`), allowed or not.
    pub fn saw_connect(&self, target: &str) -> bool {
        self.log().contains(&format!("CONNECT {target} HTTP/"))
    }
    /// Whether tinyproxy opened a connection to `host` for a client.
    pub fn established_to(&self, host: &str) -> bool {
        self.log().contains(&format!("Established connection to host \"{host}\""))
    }
    /// Waits up to `timeout` for [`Tinyproxy::established_to`].
    pub fn wait_established(&self, host: &str, timeout: Duration) -> bool {
        self.peer.wait_for_log(&format!("Established connection to host \"{host}\""), timeout)
    }
}
