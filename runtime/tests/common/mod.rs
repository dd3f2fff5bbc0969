//! Fixtures of the data-path integration tests: a data center (rapdc backend + real nginx
//! mTLS front door) and a real rapd in FIPS mode.

#![allow(dead_code)]

pub mod rapd;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rapbox_testkit::pki::{CertKey, Pki, PkiSpec};
use rapbox_testkit::ports;
use rapbox_testkit::TestDir;
use rapdc::frontdoor::Nginx;
use rapdc::{Client, FrontDoor, Server, ServerConfig, Store};

pub const BOX_ID: &str = "box-0001";

/// One test's world: directory, PKI, data center.
pub struct World {
    pub dir: TestDir,
    pub pki: Pki,
    pub dc_addr: SocketAddr,
    pub backend: Server,
    pub client: Client,
    pub nginx: Option<Nginx>,
}

impl World {
    /// A PKI for a fresh loopback address, and the data-center backend (nginx not started).
    pub fn new(name: &str) -> World {
        let dir = TestDir::new(&format!("datapath/{name}")).expect("test dir");
        let dc_addr = ports::unique_443().expect("loopback address");
        let pki = Pki::generate(&dir.join("pki"), &PkiSpec::new(&["dc.rapbox.test"], &[dc_addr.ip()], BOX_ID))
            .expect("test PKI");
        let store = Store::open(&dir.join("dc.db")).expect("dc store");
        let backend = Server::start(ServerConfig::new("127.0.0.1:0".parse().unwrap()), store).expect("dc backend");
        let client = Client::for_addr(backend.addr());
        World { dir, pki, dc_addr, backend, client, nginx: None }
    }

    pub fn url(&self) -> String {
        format!("https://{}/api/v1/batches", self.dc_addr.ip())
    }

    pub fn front_door(&self, server: &CertKey) -> FrontDoor {
        let prefix = self.dir.join("nginx");
        std::fs::create_dir_all(&prefix).unwrap();
        FrontDoor::new(self.dc_addr, &server.cert, &server.key, &self.pki.ca.cert, self.backend.addr().port(), prefix)
    }

    /// Starts nginx with the good server certificate and default (FIPS) TLS settings.
    pub fn start_nginx(&mut self) {
        let fd = self.front_door(&self.pki.server.clone());
        self.start_nginx_with(fd);
    }

    pub fn start_nginx_with(&mut self, fd: FrontDoor) {
        self.nginx = Some(Nginx::start(&fd).expect("nginx"));
    }

    pub fn stop_nginx(&mut self) {
        if let Some(n) = self.nginx.take() {
            n.stop();
        }
    }

    /// A rapd spec talking to this data center with the box certificate.
    pub fn rapd_spec(&self) -> rapd::Spec {
        rapd::Spec::new(
            &self.dir.join("box"),
            &self.url(),
            &self.pki.ca.cert,
            &self.pki.client.cert,
            &self.pki.client.key,
        )
    }

    /// Requests that reached the backend's batch endpoint.
    pub fn batch_posts(&self) -> u64 {
        self.client.requests().expect("dc requests").get("/api/v1/batches")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A fresh instrument address on its own loopback IP.
pub fn instrument_addr() -> SocketAddr {
    ports::unique_addr().expect("instrument address")
}

/// Polls `f` until it returns Some, or panics with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn ip_of(a: SocketAddr) -> IpAddr {
    a.ip()
}

pub fn path(p: &str) -> PathBuf {
    PathBuf::from(p)
}
