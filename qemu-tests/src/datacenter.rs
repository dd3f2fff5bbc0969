//! A local data center for end-to-end tests: the testkit PKI (server certificate for
//! the guest-forward address 10.0.2.100), the rapdc backend and a real nginx mTLS
//! front door on a host loopback port, which `VmConfig::uplink_port` makes reachable
//! from the guest as https://10.0.2.100/.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

use rapbox_testkit::pki::{Pki, PkiSpec};
use rapdc::frontdoor::Nginx;
use rapdc::{Client, FrontDoor, Server, ServerConfig, Store};

use crate::HarnessError;

/// The address the guest reaches the data center at (QEMU user-network guest-forward).
pub const GUEST_DC_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The box identity (CN of the box certificate).
pub const BOX_ID: &str = "rapbox-qemu-0001";

/// Backend + nginx; stopped on drop.
pub struct DataCenter {
    pub dir: PathBuf,
    pub pki: Pki,
    pub backend: Server,
    pub client: Client,
    pub nginx: Option<Nginx>,
    /// The host loopback port nginx listens on (pass as `VmConfig::uplink_port`).
    pub port: u16,
    /// The front door's configuration (to start it again after [`DataCenter::stop_front_door`]).
    pub front_door: FrontDoor,
}

impl std::fmt::Debug for DataCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataCenter").field("dir", &self.dir).field("port", &self.port).finish()
    }
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> HarnessError + '_ {
    move |e| HarnessError::Setup(format!("{what}: {e}"))
}

impl DataCenter {
    /// PKI, backend and nginx under target/qemu-tests/<test>-dc/.
    pub fn start(test: &str) -> Result<DataCenter, HarnessError> {
        DataCenter::start_with(test, |_| {})
    }

    /// [`DataCenter::start`] with the backend's configuration adjusted (trigger rules).
    pub fn start_with(test: &str, tweak: impl FnOnce(&mut ServerConfig)) -> Result<DataCenter, HarnessError> {
        let dir = crate::workspace().join(format!("target/qemu-tests/{test}-dc"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| HarnessError::Io { path: dir.clone(), source })?;
        let pki =
            Pki::generate(&dir.join("pki"), &PkiSpec::new(&["dc.rapbox.test"], &[IpAddr::V4(GUEST_DC_IP)], BOX_ID))
                .map_err(setup("test PKI"))?;
        let store = Store::open(&dir.join("dc.db")).map_err(setup("dc store"))?;
        let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        tweak(&mut config);
        let backend = Server::start(config, store).map_err(setup("backend"))?;
        let client = Client::for_addr(backend.addr());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|source| HarnessError::Io { path: "127.0.0.1:0".into(), source })?
            .port();
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(&prefix).map_err(|source| HarnessError::Io { path: prefix.clone(), source })?;
        let fd = FrontDoor::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &pki.server.cert,
            &pki.server.key,
            &pki.ca.cert,
            backend.addr().port(),
            prefix,
        );
        let nginx = Nginx::start(&fd).map_err(setup("nginx"))?;
        Ok(DataCenter { dir, pki, backend, client, nginx: Some(nginx), port, front_door: fd })
    }

    /// Stops nginx: the data center is down for the box (connections to the uplink
    /// forward are refused) until `start_front_door`.
    pub fn stop_front_door(&mut self) {
        if let Some(n) = self.nginx.take() {
            n.stop();
        }
    }

    /// Starts nginx again on the same port with the same configuration.
    pub fn start_front_door(&mut self) -> Result<(), HarnessError> {
        if self.nginx.is_none() {
            self.nginx = Some(Nginx::start(&self.front_door).map_err(setup("nginx"))?);
        }
        Ok(())
    }

    /// The URL the box is provisioned with.
    pub fn url(&self) -> String {
        format!("https://{GUEST_DC_IP}/api/v1/batches")
    }

    /// Every instrument report (not the box's own records: audit records, and box events
    /// such as link changes, which carry the instrument's serial) stored for the box.
    pub fn instrument_reports(&self) -> Result<Vec<rapdc::api::Report>, HarnessError> {
        Ok(self
            .client
            .all_reports(Some(BOX_ID), None)
            .map_err(setup("dc reports"))?
            .into_iter()
            .filter(|r| !r.instrument.is_empty() && r.kind.from_instrument())
            .collect())
    }
}

impl Drop for DataCenter {
    fn drop(&mut self) {
        if let Some(n) = self.nginx.take() {
            n.stop();
        }
    }
}

/// How many of an instrument's records in the data center are its own reports (not the
/// box's events about it).
pub fn reports_of(i: &rapdc::api::InstrumentStats) -> u64 {
    i.count.saturating_sub(i.kinds.get("box_event").copied().unwrap_or(0))
}
