//! Configuration: TOML read once, validated into typed values before anything uses it.
//!
//! Every error names the file and the key that is wrong. Unknown keys are refused, so
//! a typo never silently falls back to a default.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The fixed configuration path (overridable with `--config`).
pub const DEFAULT_PATH: &str = "/etc/rapbox/rapd.toml";

/// A configuration problem, naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read configuration: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

/// Validated configuration of rapd.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    pub queue: QueueConfig,
    pub uplink: UplinkConfig,
    pub fips: FipsConfig,
    pub control: ControlConfig,
    pub ingest: IngestConfig,
    pub log: LogConfig,
    pub instruments: Vec<InstrumentConfig>,
    /// The uplink interface (absent: the OS manages all networking and rapd touches no link).
    pub network: NetworkConfig,
    /// Netfilter management (off unless `[firewall] enabled = true`).
    pub firewall: FirewallConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Run-time reconfiguration (see `docs/configuration.md`).
    pub reconfig: ReconfigConfig,
    /// The command channel's dispatcher.
    pub commands: CommandsConfig,
    /// Downloads and uploads on the data partition.
    pub transfers: TransfersConfig,
    /// The local configuration pages (`rapweb`, docs/pages.md).
    pub pages: PagesConfig,
    /// Remote management sessions (`docs/sessions.md`).
    pub sessions: crate::sessions::config::SessionsConfig,
}

/// Downloads (data center → instrument) and uploads (instrument → data center) kept on
/// the data partition (`docs/transfers.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct TransfersConfig {
    /// Where files in transit live (default `transfers/` beside the queue).
    pub dir: PathBuf,
    /// Bytes all files in transit may take together.
    pub quota_bytes: u64,
    /// Bytes left free on the data partition whatever the quota says (for the queue).
    pub reserve_bytes: u64,
    /// Largest single upload an instrument may offer.
    pub max_upload_bytes: u64,
    /// Public keys (PEM) whose signature makes a download manifest trusted: ECDSA P-256 or
    /// RSA-3072. Without one, every download is refused.
    pub vendor_keys: Vec<PathBuf>,
    /// Bytes per upload request to the data center.
    pub upload_chunk_bytes: usize,
    /// First wait after a failed fetch or upload request; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// The dispatcher of data-center commands (`docs/commands.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandsConfig {
    /// The dispatcher's database (default `commands.db` beside the queue).
    pub path: PathBuf,
    /// When the uplink is idle, it asks the data center for commands this often.
    pub poll_interval: Duration,
    /// Commands whose handler runs at the same time; more wait their turn.
    pub max_running: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconfigConfig {
    /// After a new configuration is applied, the data center must acknowledge a batch
    /// within this time, else rapd rolls back to the previous one. The configuration in
    /// force before an apply decides (a new one cannot lengthen its own trial).
    pub rollback_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// SQLite database on the data partition.
    pub path: PathBuf,
    /// Byte quota of queued messages (payload plus a fixed per-row overhead).
    pub quota_bytes: u64,
    /// How long ids of delivered messages are remembered to recognise resends.
    pub dedup_retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// The hash-chained audit log (its state file is `<path>.state`). Default: `audit.log`
    /// beside the queue database, on the data partition.
    pub path: PathBuf,
}

/// The local configuration pages: HTTPS on the box addresses of the listed interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagesConfig {
    pub enabled: bool,
    pub port: u16,
    /// Where the pages are reachable: (interface, box address) of each listed interface,
    /// instrument ports (the lab side) by default; the uplink only when named explicitly
    /// and statically addressed.
    pub listen: Vec<(String, Ipv4Addr)>,
    /// `rapweb`'s access and error logs (directory).
    pub log_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    /// The data center's batch endpoint (https only).
    pub url: url::Url,
    /// CA certificate(s) that sign the data center's server certificate: the only trust anchor.
    pub ca: PathBuf,
    /// The box certificate (PEM; may include the chain).
    pub cert: PathBuf,
    /// The box private key, unencrypted PKCS#8 PEM.
    pub key: PathBuf,
    /// Optional proxy: `http://[user:pass@]host:port` (CONNECT) or `socks5://[user:pass@]host:port`.
    pub proxy: Option<Proxy>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// A validated proxy setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Connect,
    Socks5,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FipsConfig {
    /// OpenSSL configuration that loads the FIPS provider (and only it and base).
    pub openssl_conf: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// The group that owns the socket (mode 0660), e.g. `rapctl` for technicians and the
    /// configuration pages; None: rapd's own group.
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    pub max_connections_per_port: usize,
    /// Once a frame has started, all of it must arrive within this time.
    pub frame_timeout: Duration,
    /// A connection with no frame at all for this long is closed.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Syslog,
    Stderr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub target: LogTarget,
    pub level: log::LevelFilter,
}

/// One instrument cabled to one port of the box.
#[derive(Debug, Clone, PartialEq)]
pub struct InstrumentConfig {
    pub serial: String,
    pub model: String,
    /// Where its agent connects: the box address on the instrument's port and the agent port.
    pub listen: SocketAddr,
    /// The physical port (absent when the instrument is reached through an address the OS
    /// manages, e.g. loopback in tests: then rapd touches no link and no rule for it).
    pub port: Option<PortConfig>,
}

/// An IPv4 address with its prefix length, e.g. `10.10.1.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    /// Whether `ip` is inside this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("`{s}` is not address/prefix (e.g. 10.10.1.1/24)"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix: u8 =
            p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("`/{p}` is not a prefix length 0..=32"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// The physical port an instrument is cabled to, and what may cross it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// The Linux interface name, e.g. `eth1`.
    pub interface: String,
    /// The box's address and prefix on this port (the agent connects to this address).
    pub box_address: Ipv4Cidr,
    /// The instrument's own address: the only source accepted on this port.
    pub address: Ipv4Addr,
    /// The agent port on `box_address`.
    pub agent_port: u16,
    /// The instrument's remote-desktop port (opened only by an authorised remote session).
    pub remote_desktop_port: Option<u16>,
    /// The opted-in forward of the instrument's LIS traffic.
    pub lis: Option<LisForward>,
}

/// Forward of an instrument's LIS connection to one LIS host and port: the instrument
/// connects to `box_address:instrument_port`, the box translates it to `host:port`
/// and sends it out of the uplink under the box's own uplink address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LisForward {
    pub instrument_port: u16,
    pub host: Ipv4Addr,
    pub port: u16,
}

/// The uplink interface and the services the box needs on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    pub uplink: Option<UplinkInterface>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkInterface {
    /// The Linux interface name, e.g. `eth0`.
    pub interface: String,
    pub addressing: Addressing,
    /// DNS servers the box may query (empty with DHCP: whatever DHCP gave, on port 53).
    pub dns: Vec<Ipv4Addr>,
    /// NTP servers the box may query (empty with DHCP: any, on port 123).
    pub ntp: Vec<Ipv4Addr>,
    /// The remote syslog collector.
    pub syslog: Option<SyslogTarget>,
}

/// How the uplink gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// The OS's DHCP client manages the address; rapd only brings the link up.
    Dhcp,
    /// rapd assigns `address` and, if given, the default route via `gateway`.
    Static { address: Ipv4Cidr, gateway: Option<Ipv4Addr> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyslogTarget {
    pub addr: SocketAddr,
    pub protocol: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// Netfilter management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// rapd generates, applies and guards the policy only when this is true.
    pub enabled: bool,
    /// How often the live rules are compared with the policy.
    pub drift_check: Duration,
    /// New connections accepted per minute on each instrument port (and its LIS forward).
    pub new_connections_per_minute: u32,
    /// Burst allowance of new connections per port.
    pub new_connections_burst: u32,
    /// Logged dropped packets per minute, per log rule.
    pub log_drops_per_minute: u32,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            enabled: false,
            drift_check: Duration::from_secs(d_drift_s()),
            new_connections_per_minute: d_new_conn_rate(),
            new_connections_burst: d_new_conn_burst(),
            log_drops_per_minute: d_log_rate(),
        }
    }
}

// ---- raw form, as written in the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    queue: RawQueue,
    uplink: RawUplink,
    #[serde(default)]
    fips: RawFips,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    ingest: RawIngest,
    #[serde(default)]
    log: RawLog,
    #[serde(default, rename = "instrument")]
    instruments: Vec<RawInstrument>,
    #[serde(default)]
    network: RawNetwork,
    firewall: Option<RawFirewall>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    reconfig: RawReconfig,
    #[serde(default)]
    commands: RawCommands,
    #[serde(default)]
    transfers: RawTransfers,
    #[serde(default)]
    pages: RawPages,
    #[serde(default)]
    sessions: crate::sessions::config::RawSessions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconfig {
    #[serde(default = "d_rollback_after_s")]
    rollback_after_s: u64,
}

impl Default for RawReconfig {
    fn default() -> Self {
        RawReconfig { rollback_after_s: d_rollback_after_s() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransfers {
    dir: Option<PathBuf>,
    #[serde(default = "d_transfer_quota")]
    quota_bytes: u64,
    #[serde(default = "d_transfer_reserve")]
    reserve_bytes: u64,
    max_upload_bytes: Option<u64>,
    #[serde(default)]
    vendor_keys: Vec<PathBuf>,
    #[serde(default = "d_chunk")]
    upload_chunk_bytes: usize,
    #[serde(default = "d_retry_initial")]
    retry_initial_ms: u64,
    #[serde(default = "d_retry_max")]
    retry_max_ms: u64,
}

impl Default for RawTransfers {
    fn default() -> Self {
        RawTransfers {
            dir: None,
            quota_bytes: d_transfer_quota(),
            reserve_bytes: d_transfer_reserve(),
            max_upload_bytes: None,
            vendor_keys: Vec::new(),
            upload_chunk_bytes: d_chunk(),
            retry_initial_ms: d_retry_initial(),
            retry_max_ms: d_retry_max(),
        }
    }
}

fn d_transfer_quota() -> u64 {
    96 * 1024 * 1024
}
fn d_transfer_reserve() -> u64 {
    16 * 1024 * 1024
}
fn d_chunk() -> usize {
    1024 * 1024
}
fn d_retry_initial() -> u64 {
    1000
}
fn d_retry_max() -> u64 {
    60_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommands {
    path: Option<PathBuf>,
    #[serde(default = "d_poll_s")]
    poll_interval_s: u64,
    #[serde(default = "d_max_running")]
    max_running: usize,
}

impl Default for RawCommands {
    fn default() -> Self {
        RawCommands { path: None, poll_interval_s: d_poll_s(), max_running: d_max_running() }
    }
}

fn d_poll_s() -> u64 {
    30
}
fn d_max_running() -> usize {
    4
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPages {
    #[serde(default)]
    enabled: bool,
    port: Option<u16>,
    interfaces: Option<Vec<String>>,
    log_dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    uplink: Option<RawUplinkInterface>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplinkInterface {
    interface: String,
    addressing: String,
    address: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    ntp: Vec<String>,
    syslog: Option<String>,
    syslog_protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirewall {
    #[serde(default)]
    enabled: bool,
    #[serde(default = "d_drift_s")]
    drift_check_s: u64,
    #[serde(default = "d_new_conn_rate")]
    new_connections_per_minute: u32,
    #[serde(default = "d_new_conn_burst")]
    new_connections_burst: u32,
    #[serde(default = "d_log_rate")]
    log_drops_per_minute: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    path: PathBuf,
    #[serde(default = "d_quota")]
    quota_bytes: u64,
    #[serde(default = "d_dedup")]
    dedup_retention_s: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    url: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    proxy: Option<String>,
    #[serde(default = "d_ports")]
    allowed_ports: Vec<u16>,
    #[serde(default = "d_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "d_io_ms")]
    io_timeout_ms: u64,
    #[serde(default = "d_batch_records")]
    batch_max_records: usize,
    #[serde(default = "d_batch_bytes")]
    batch_max_bytes: usize,
    #[serde(default = "d_backoff_initial")]
    backoff_initial_ms: u64,
    #[serde(default = "d_backoff_max")]
    backoff_max_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFips {
    #[serde(default = "d_openssl_conf")]
    openssl_conf: PathBuf,
}

impl Default for RawFips {
    fn default() -> Self {
        RawFips { openssl_conf: d_openssl_conf() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    #[serde(default = "d_socket")]
    socket: PathBuf,
    group: Option<String>,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl { socket: d_socket(), group: None }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngest {
    #[serde(default = "d_max_conn")]
    max_connections_per_port: usize,
    #[serde(default = "d_frame_ms")]
    frame_timeout_ms: u64,
    #[serde(default = "d_idle_ms")]
    idle_timeout_ms: u64,
}

impl Default for RawIngest {
    fn default() -> Self {
        RawIngest {
            max_connections_per_port: d_max_conn(),
            frame_timeout_ms: d_frame_ms(),
            idle_timeout_ms: d_idle_ms(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "d_log_target")]
    target: String,
    #[serde(default = "d_log_level")]
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { target: d_log_target(), level: d_log_level() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstrument {
    serial: String,
    #[serde(default)]
    model: String,
    listen: Option<String>,
    interface: Option<String>,
    box_address: Option<String>,
    address: Option<String>,
    agent_port: Option<u16>,
    remote_desktop_port: Option<u16>,
    lis: Option<RawLis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLis {
    #[serde(default)]
    enabled: bool,
    instrument_port: u16,
    host: String,
    port: u16,
}

fn d_quota() -> u64 {
    256 * 1024 * 1024
}
fn d_dedup() -> u64 {
    7 * 24 * 3600
}
fn d_ports() -> Vec<u16> {
    vec![443]
}
fn d_connect_ms() -> u64 {
    10_000
}
fn d_io_ms() -> u64 {
    30_000
}
fn d_batch_records() -> usize {
    20_000
}
fn d_batch_bytes() -> usize {
    1024 * 1024
}
fn d_backoff_initial() -> u64 {
    500
}
fn d_backoff_max() -> u64 {
    300_000
}
fn d_openssl_conf() -> PathBuf {
    PathBuf::from("/etc/rapbox/fips/openssl-fips.cnf")
}
fn d_socket() -> PathBuf {
    PathBuf::from("/run/rapd/control.sock")
}
fn d_max_conn() -> usize {
    4
}
fn d_frame_ms() -> u64 {
    10_000
}
fn d_idle_ms() -> u64 {
    600_000
}
fn d_log_target() -> String {
    "syslog".into()
}
fn d_log_level() -> String {
    "info".into()
}
fn d_drift_s() -> u64 {
    5
}
fn d_new_conn_rate() -> u32 {
    60
}
fn d_new_conn_burst() -> u32 {
    20
}
fn d_log_rate() -> u32 {
    10
}
fn d_rollback_after_s() -> u64 {
    300
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: one_line(&e.to_string()) })?;
        let bad = |key: &str, message: String| ConfigError::Invalid { path: path.into(), key: key.into(), message };

        // queue
        if raw.queue.quota_bytes < 1024 * 1024 {
            return Err(bad("queue.quota_bytes", format!("{} is below the minimum of 1 MiB", raw.queue.quota_bytes)));
        }
        require_absolute(&raw.queue.path, "queue.path", &bad)?;

        // audit
        let audit_path = match &raw.audit.path {
            Some(p) => {
                require_absolute(p, "audit.path", &bad)?;
                if *p == raw.queue.path {
                    return Err(bad("audit.path", "must not be the queue database".into()));
                }
                p.clone()
            }
            None => raw.queue.path.with_file_name("audit.log"),
        };
        if audit_path == raw.queue.path {
            return Err(bad(
                "queue.path",
                "`audit.log` beside it is the audit log's default place: name the queue otherwise or set audit.path"
                    .into(),
            ));
        }

        // commands
        let commands_path = match &raw.commands.path {
            Some(p) => {
                require_absolute(p, "commands.path", &bad)?;
                if *p == raw.queue.path || *p == audit_path {
                    return Err(bad("commands.path", "must not be the queue database or the audit log".into()));
                }
                p.clone()
            }
            None => raw.queue.path.with_file_name("commands.db"),
        };
        if raw.commands.path.is_none() && (commands_path == raw.queue.path || commands_path == audit_path) {
            return Err(bad(
                "queue.path",
                "`commands.db` beside it is the command store's default place: name the files otherwise or set commands.path"
                    .into(),
            ));
        }
        if !(1..=3600).contains(&raw.commands.poll_interval_s) {
            return Err(bad(
                "commands.poll_interval_s",
                format!("{} is outside 1..=3600", raw.commands.poll_interval_s),
            ));
        }
        if !(1..=64).contains(&raw.commands.max_running) {
            return Err(bad("commands.max_running", format!("{} is outside 1..=64", raw.commands.max_running)));
        }

        // transfers
        let t = &raw.transfers;
        let transfers_dir = match &t.dir {
            Some(d) => {
                require_absolute(d, "transfers.dir", &bad)?;
                d.clone()
            }
            None => raw.queue.path.with_file_name("transfers"),
        };
        if t.quota_bytes < 1024 * 1024 {
            return Err(bad("transfers.quota_bytes", format!("{} is below the minimum of 1 MiB", t.quota_bytes)));
        }
        let max_upload = t.max_upload_bytes.unwrap_or(t.quota_bytes);
        if max_upload == 0 || max_upload > t.quota_bytes {
            return Err(bad(
                "transfers.max_upload_bytes",
                format!("{max_upload} must be between 1 and transfers.quota_bytes ({})", t.quota_bytes),
            ));
        }
        for (n, k) in t.vendor_keys.iter().enumerate() {
            require_absolute(k, &format!("transfers.vendor_keys[{n}]"), &bad)?;
        }
        for (key, v, min, max) in [
            (
                "transfers.upload_chunk_bytes",
                t.upload_chunk_bytes as u64,
                4096,
                rapwire::transfer::MAX_CHUNK_BYTES as u64,
            ),
            ("transfers.retry_initial_ms", t.retry_initial_ms, 10, 3_600_000),
            ("transfers.retry_max_ms", t.retry_max_ms, 10, 86_400_000),
        ] {
            if v < min || v > max {
                return Err(bad(key, format!("{v} is outside {min}..={max}")));
            }
        }
        if t.retry_max_ms < t.retry_initial_ms {
            return Err(bad("transfers.retry_max_ms", "must not be below transfers.retry_initial_ms".into()));
        }

        // uplink
        let u = &raw.uplink;
        let url = url::Url::parse(&u.url).map_err(|e| bad("uplink.url", format!("`{}` is not a URL: {e}", u.url)))?;
        if url.scheme() != "https" {
            return Err(bad("uplink.url", format!("scheme must be https, not `{}`", url.scheme())));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("uplink.url", "has no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "uplink.url",
                "must not carry credentials; the box authenticates with its certificate".into(),
            ));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        if u.allowed_ports.is_empty() {
            return Err(bad("uplink.allowed_ports", "must list at least one port".into()));
        }
        if !u.allowed_ports.contains(&port) {
            return Err(bad(
                "uplink.url",
                format!("port {port} is not in uplink.allowed_ports {:?} (the box speaks outward on 443 only unless allowed)", u.allowed_ports),
            ));
        }
        for (key, p) in [("uplink.ca", &u.ca), ("uplink.cert", &u.cert), ("uplink.key", &u.key)] {
            require_absolute(p, key, &bad)?;
        }
        let proxy = match &u.proxy {
            None => None,
            Some(p) if p.is_empty() => None,
            Some(p) => Some(parse_proxy(p).map_err(|m| bad("uplink.proxy", m))?),
        };
        for (key, v, min, max) in [
            ("uplink.connect_timeout_ms", u.connect_timeout_ms, 100, 600_000),
            ("uplink.io_timeout_ms", u.io_timeout_ms, 100, 3_600_000),
            ("uplink.backoff_initial_ms", u.backoff_initial_ms, 10, 3_600_000),
            ("uplink.backoff_max_ms", u.backoff_max_ms, 10, 86_400_000),
            ("uplink.batch_max_records", u.batch_max_records as u64, 1, 100_000),
            ("uplink.batch_max_bytes", u.batch_max_bytes as u64, 64 * 1024, 32 * 1024 * 1024),
        ] {
            if v < min || v > max {
                return Err(bad(key, format!("{v} is outside {min}..={max}")));
            }
        }
        if u.backoff_max_ms < u.backoff_initial_ms {
            return Err(bad("uplink.backoff_max_ms", "must not be below uplink.backoff_initial_ms".into()));
        }

        // ingest
        let i = &raw.ingest;
        if i.max_connections_per_port == 0 || i.max_connections_per_port > 64 {
            return Err(bad(
                "ingest.max_connections_per_port",
                format!("{} is outside 1..=64", i.max_connections_per_port),
            ));
        }
        if i.frame_timeout_ms < 100 {
            return Err(bad("ingest.frame_timeout_ms", "must be at least 100".into()));
        }
        if i.idle_timeout_ms < i.frame_timeout_ms {
            return Err(bad("ingest.idle_timeout_ms", "must not be below ingest.frame_timeout_ms".into()));
        }

        // log
        let target = match raw.log.target.as_str() {
            "syslog" => LogTarget::Syslog,
            "stderr" => LogTarget::Stderr,
            other => return Err(bad("log.target", format!("`{other}` is not one of syslog, stderr"))),
        };
        let level: log::LevelFilter = raw.log.level.parse().map_err(|_| {
            bad("log.level", format!("`{}` is not one of error, warn, info, debug, trace", raw.log.level))
        })?;

        // reconfig
        let rollback_after_s = raw.reconfig.rollback_after_s;
        if !(5..=86_400).contains(&rollback_after_s) {
            return Err(bad("reconfig.rollback_after_s", format!("{rollback_after_s} is outside 5..=86400")));
        }

        // network: the uplink interface
        let network = NetworkConfig {
            uplink: match &raw.network.uplink {
                None => None,
                Some(ru) => Some(validate_uplink_interface(ru, &bad)?),
            },
        };

        // firewall
        let firewall = match &raw.firewall {
            None => FirewallConfig::default(),
            Some(f) => {
                for (key, v, min, max) in [
                    ("firewall.drift_check_s", f.drift_check_s, 1, 3600),
                    ("firewall.new_connections_per_minute", f.new_connections_per_minute.into(), 1, 10_000),
                    ("firewall.new_connections_burst", f.new_connections_burst.into(), 1, 10_000),
                    ("firewall.log_drops_per_minute", f.log_drops_per_minute.into(), 1, 10_000),
                ] {
                    if v < min || v > max {
                        return Err(bad(key, format!("{v} is outside {min}..={max}")));
                    }
                }
                FirewallConfig {
                    enabled: f.enabled,
                    drift_check: Duration::from_secs(f.drift_check_s),
                    new_connections_per_minute: f.new_connections_per_minute,
                    new_connections_burst: f.new_connections_burst,
                    log_drops_per_minute: f.log_drops_per_minute,
                }
            }
        };

        // instruments
        let mut serials = HashSet::new();
        let mut listens = HashSet::new();
        let mut instruments: Vec<InstrumentConfig> = Vec::new();
        for (n, ri) in raw.instruments.iter().enumerate() {
            let key = |k: &str| format!("instrument[{n}].{k}");
            let s = &ri.serial;
            if s.is_empty() || s.len() > rapwire::agent::MAX_SERIAL || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    &key("serial"),
                    format!("`{s}` must be 1 to 64 printable ASCII characters without spaces"),
                ));
            }
            if !serials.insert(s.clone()) {
                return Err(bad(&key("serial"), format!("`{s}` is configured twice")));
            }
            let port = validate_port(n, ri, &network, &instruments, &bad)?;
            let listen: SocketAddr = match (&ri.listen, &port) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        &key("listen"),
                        format!("must not be given with {0}: the agent listens on {0}:agent_port", key("box_address")),
                    ))
                }
                (None, Some(p)) => SocketAddr::new(IpAddr::V4(p.box_address.addr), p.agent_port),
                (Some(l), None) => {
                    l.parse().map_err(|e| bad(&key("listen"), format!("`{l}` is not an address:port: {e}")))?
                }
                (None, None) => {
                    return Err(bad(
                        &key("listen"),
                        "missing: give listen, or interface with box_address, address and agent_port".into(),
                    ))
                }
            };
            if !listens.insert(listen) {
                return Err(bad(&key("listen"), format!("{listen} is already used by another instrument")));
            }
            instruments.push(InstrumentConfig { serial: s.clone(), model: ri.model.clone(), listen, port });
        }

        // LIS hosts are on the uplink side: never on an instrument port, never the box itself
        for (n, inst) in instruments.iter().enumerate() {
            let Some(lis) = inst.port.as_ref().and_then(|p| p.lis) else { continue };
            if let Some(m) =
                instruments.iter().position(|i| i.port.as_ref().is_some_and(|p| p.box_address.contains(lis.host)))
            {
                return Err(bad(
                    &format!("instrument[{n}].lis.host"),
                    format!("{} is on instrument[{m}]'s port; the LIS host must be on the uplink side", lis.host),
                ));
            }
            if let Some(UplinkInterface { addressing: Addressing::Static { address, .. }, .. }) = &network.uplink {
                if address.addr == lis.host {
                    return Err(bad(
                        &format!("instrument[{n}].lis.host"),
                        format!("{} is the box's uplink address", lis.host),
                    ));
                }
            }
        }

        // what the firewall needs to be complete
        if firewall.enabled {
            if network.uplink.is_none() {
                return Err(bad(
                    "network.uplink",
                    "is required with firewall.enabled = true (the policy needs the uplink interface)".into(),
                ));
            }
            if let Some(n) = instruments.iter().position(|i| i.port.is_none()) {
                return Err(bad(
                    &format!("instrument[{n}].interface"),
                    "is required with firewall.enabled = true (each instrument needs its own port)".into(),
                ));
            }
        }
        for (n, inst) in instruments.iter().enumerate() {
            if inst.port.as_ref().is_some_and(|p| p.lis.is_some()) && !firewall.enabled {
                return Err(bad(
                    &format!("instrument[{n}].lis.enabled"),
                    "the LIS forward is made by the firewall: it needs firewall.enabled = true".into(),
                ));
            }
        }
        if let (true, Some(up)) = (firewall.enabled, &network.uplink) {
            if up.dns.is_empty() && matches!(up.addressing, Addressing::Static { .. }) {
                let mut hosts = vec![url.host_str().unwrap_or_default().to_owned()];
                if let Some(p) = &proxy {
                    hosts.push(
                        url::Url::parse(&p.url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default(),
                    );
                }
                if let Some(h) = hosts.iter().find(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().is_err()) {
                    return Err(bad(
                        "network.uplink.dns",
                        format!("is empty, but `{h}` must be resolved and the firewall opens DNS only to the listed servers"),
                    ));
                }
            }
        }

        let pages = validate_pages(&raw.pages, &instruments, &network, &bad)?;
        let sessions = crate::sessions::config::validate(
            &raw.sessions,
            &crate::sessions::config::Context {
                uplink_cert: &u.cert,
                uplink_key: &u.key,
                network: &network,
                firewall: &firewall,
                instruments: &instruments,
                bad: &bad,
            },
        )?;

        Ok(Config {
            path: path.into(),
            queue: QueueConfig {
                path: raw.queue.path,
                quota_bytes: raw.queue.quota_bytes,
                dedup_retention: Duration::from_secs(raw.queue.dedup_retention_s),
            },
            uplink: UplinkConfig {
                url,
                ca: u.ca.clone(),
                cert: u.cert.clone(),
                key: u.key.clone(),
                proxy,
                connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                io_timeout: Duration::from_millis(u.io_timeout_ms),
                batch_max_records: u.batch_max_records,
                batch_max_bytes: u.batch_max_bytes,
                backoff_initial: Duration::from_millis(u.backoff_initial_ms),
                backoff_max: Duration::from_millis(u.backoff_max_ms),
            },
            fips: FipsConfig { openssl_conf: raw.fips.openssl_conf },
            control: ControlConfig { socket: raw.control.socket, group: raw.control.group },
            ingest: IngestConfig {
                max_connections_per_port: i.max_connections_per_port,
                frame_timeout: Duration::from_millis(i.frame_timeout_ms),
                idle_timeout: Duration::from_millis(i.idle_timeout_ms),
            },
            log: LogConfig { target, level },
            instruments,
            network,
            firewall,
            audit: AuditConfig { path: audit_path },
            reconfig: ReconfigConfig { rollback_after: Duration::from_secs(rollback_after_s) },
            commands: CommandsConfig {
                path: commands_path,
                poll_interval: Duration::from_secs(raw.commands.poll_interval_s),
                max_running: raw.commands.max_running,
            },
            transfers: TransfersConfig {
                dir: transfers_dir,
                quota_bytes: t.quota_bytes,
                reserve_bytes: t.reserve_bytes,
                max_upload_bytes: max_upload,
                vendor_keys: t.vendor_keys.clone(),
                upload_chunk_bytes: t.upload_chunk_bytes,
                retry_initial: Duration::from_millis(t.retry_initial_ms),
                retry_max: Duration::from_millis(t.retry_max_ms),
            },
            pages,
            sessions,
        })
    }
}

/// Validates `[pages]` against the ports and the uplink.
fn validate_pages(
    rp: &RawPages,
    instruments: &[InstrumentConfig],
    network: &NetworkConfig,
    bad: &dyn Fn(&str, String) -> ConfigError,
) -> Result<PagesConfig, ConfigError> {
    let port = rp.port.unwrap_or(443);
    if port == 0 {
        return Err(bad("pages.port", "port 0 is not a port".into()));
    }
    let log_dir = rp.log_dir.clone().unwrap_or_else(|| PathBuf::from("/var/log/rapweb"));
    require_absolute(&log_dir, "pages.log_dir", bad)?;
    let ports: Vec<(&str, &PortConfig)> =
        instruments.iter().filter_map(|i| i.port.as_ref().map(|p| (p.interface.as_str(), p))).collect();
    let names: Vec<String> = match &rp.interfaces {
        Some(v) => v.clone(),
        None => ports.iter().map(|(i, _)| (*i).to_owned()).collect(),
    };
    let mut listen = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let key = format!("pages.interfaces[{n}]");
        if listen.iter().any(|(i, _)| i == name) {
            return Err(bad(&key, format!("`{name}` is listed twice")));
        }
        if let Some((_, p)) = ports.iter().find(|(i, _)| *i == name) {
            if p.agent_port == port {
                return Err(bad("pages.port", format!("{port} is the agent port of `{name}`")));
            }
            listen.push((name.clone(), p.box_address.addr));
            continue;
        }
        match &network.uplink {
            Some(u) if u.interface == *name => match u.addressing {
                Addressing::Static { address, .. } => listen.push((name.clone(), address.addr)),
                Addressing::Dhcp => {
                    return Err(bad(
                        &key,
                        format!("the uplink `{name}` has its address from DHCP: the pages need a static address there"),
                    ))
                }
            },
            _ => {
                let known: Vec<&str> = ports.iter().map(|(i, _)| *i).collect();
                return Err(bad(
                    &key,
                    format!(
                        "`{name}` is neither an instrument port ({}) nor the uplink",
                        if known.is_empty() { "none configured".to_owned() } else { known.join(", ") }
                    ),
                ));
            }
        }
    }
    if rp.enabled && listen.is_empty() {
        return Err(bad("pages.interfaces", "the pages are enabled but reachable nowhere: no instrument port".into()));
    }
    Ok(PagesConfig { enabled: rp.enabled, port, listen, log_dir })
}

pub(crate) fn require_absolute(
    p: &Path,
    key: &str,
    bad: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(bad(key, format!("`{}` must be an absolute path", p.display())))
    }
}

type Bad<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// A Linux interface name: 1 to 15 bytes, no `/`, no whitespace, not `.`/`..`/`lo`.
pub(crate) fn check_ifname(name: &str, key: &str, bad: Bad<'_>) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':' && b != b'"' && b != b'\\');
    if !ok {
        return Err(bad(key, format!("`{name}` is not an interface name (1 to 15 characters, no `/`, `:` or spaces)")));
    }
    if name == "lo" {
        return Err(bad(key, "must not be the loopback interface".into()));
    }
    Ok(())
}

fn parse_v4(text: &str, key: &str, bad: Bad<'_>) -> Result<Ipv4Addr, ConfigError> {
    let ip: Ipv4Addr = text.parse().map_err(|_| bad(key, format!("`{text}` is not an IPv4 address")))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(bad(key, format!("{ip} is not a unicast host address")));
    }
    Ok(ip)
}

/// A host subnet that leaves room for the box and the instrument.
fn parse_cidr(text: &str, key: &str, bad: Bad<'_>) -> Result<Ipv4Cidr, ConfigError> {
    let c: Ipv4Cidr = text.parse().map_err(|m| bad(key, m))?;
    parse_v4(&c.addr.to_string(), key, bad)?;
    if !(8..=30).contains(&c.prefix) {
        return Err(bad(key, format!("prefix /{} is outside /8../30", c.prefix)));
    }
    if c.addr == c.network() || c.addr == c.broadcast() {
        return Err(bad(
            key,
            format!("{} is the network or broadcast address of {}/{}", c.addr, c.network(), c.prefix),
        ));
    }
    Ok(c)
}

fn validate_uplink_interface(ru: &RawUplinkInterface, bad: Bad<'_>) -> Result<UplinkInterface, ConfigError> {
    check_ifname(&ru.interface, "network.uplink.interface", bad)?;
    let addressing = match ru.addressing.as_str() {
        "dhcp" => {
            for (k, v) in [("network.uplink.address", &ru.address), ("network.uplink.gateway", &ru.gateway)] {
                if v.is_some() {
                    return Err(bad(
                        k,
                        "must not be given with addressing = \"dhcp\" (the OS's DHCP client sets it)".into(),
                    ));
                }
            }
            Addressing::Dhcp
        }
        "static" => {
            let a = ru
                .address
                .as_deref()
                .ok_or_else(|| bad("network.uplink.address", "is required with addressing = \"static\"".into()))?;
            let address = parse_cidr(a, "network.uplink.address", bad)?;
            let gateway = match &ru.gateway {
                None => None,
                Some(g) => {
                    let g = parse_v4(g, "network.uplink.gateway", bad)?;
                    if !address.contains(g) || g == address.addr {
                        return Err(bad(
                            "network.uplink.gateway",
                            format!(
                                "{g} is not another host of the uplink subnet {}/{}",
                                address.network(),
                                address.prefix
                            ),
                        ));
                    }
                    Some(g)
                }
            };
            Addressing::Static { address, gateway }
        }
        other => return Err(bad("network.uplink.addressing", format!("`{other}` is not one of static, dhcp"))),
    };
    let list = |name: &str, v: &[String]| -> Result<Vec<Ipv4Addr>, ConfigError> {
        let mut out = Vec::new();
        for (i, t) in v.iter().enumerate() {
            let key = format!("network.uplink.{name}[{i}]");
            let ip = parse_v4(t, &key, bad)?;
            if out.contains(&ip) {
                return Err(bad(&key, format!("{ip} is listed twice")));
            }
            out.push(ip);
        }
        Ok(out)
    };
    let dns = list("dns", &ru.dns)?;
    let ntp = list("ntp", &ru.ntp)?;
    let protocol = match ru.syslog_protocol.as_deref() {
        None | Some("tcp") => Transport::Tcp,
        Some("udp") => Transport::Udp,
        Some(other) => return Err(bad("network.uplink.syslog_protocol", format!("`{other}` is not one of tcp, udp"))),
    };
    let syslog = match &ru.syslog {
        None => None,
        Some(t) => {
            let addr: SocketAddr =
                t.parse().map_err(|_| bad("network.uplink.syslog", format!("`{t}` is not an IPv4 address:port")))?;
            let IpAddr::V4(ip) = addr.ip() else {
                return Err(bad("network.uplink.syslog", format!("`{t}` is not an IPv4 address:port")));
            };
            parse_v4(&ip.to_string(), "network.uplink.syslog", bad)?;
            if addr.port() == 0 {
                return Err(bad("network.uplink.syslog", "port 0 is not a port".into()));
            }
            Some(SyslogTarget { addr, protocol })
        }
    };
    Ok(UplinkInterface { interface: ru.interface.clone(), addressing, dns, ntp, syslog })
}

/// Validates an instrument's port keys against the uplink and the instruments before it.
fn validate_port(
    n: usize,
    ri: &RawInstrument,
    network: &NetworkConfig,
    before: &[InstrumentConfig],
    bad: Bad<'_>,
) -> Result<Option<PortConfig>, ConfigError> {
    let key = |k: &str| format!("instrument[{n}].{k}");
    let Some(interface) = &ri.interface else {
        for (k, given) in [
            ("box_address", ri.box_address.is_some()),
            ("address", ri.address.is_some()),
            ("agent_port", ri.agent_port.is_some()),
            ("remote_desktop_port", ri.remote_desktop_port.is_some()),
            ("lis", ri.lis.is_some()),
        ] {
            if given {
                return Err(bad(
                    &key(k),
                    format!("needs {} (the port this instrument is cabled to)", key("interface")),
                ));
            }
        }
        return Ok(None);
    };
    check_ifname(interface, &key("interface"), bad)?;
    if let Some(up) = network.uplink.as_ref().filter(|u| &u.interface == interface) {
        return Err(bad(&key("interface"), format!("`{}` is the uplink (network.uplink.interface)", up.interface)));
    }
    if let Some(m) = before.iter().position(|i| i.port.as_ref().is_some_and(|p| &p.interface == interface)) {
        return Err(bad(&key("interface"), format!("`{interface}` is already used by instrument[{m}]")));
    }
    let required = |k: &str| bad(&key(k), format!("is required with {}", key("interface")));
    let box_address =
        parse_cidr(ri.box_address.as_deref().ok_or_else(|| required("box_address"))?, &key("box_address"), bad)?;
    let address = parse_v4(ri.address.as_deref().ok_or_else(|| required("address"))?, &key("address"), bad)?;
    if address == box_address.addr {
        return Err(bad(&key("address"), format!("{address} is the box's own address ({})", key("box_address"))));
    }
    if !box_address.contains(address) || address == box_address.network() || address == box_address.broadcast() {
        return Err(bad(
            &key("address"),
            format!(
                "{address} is not a host of the port's subnet {}/{} ({})",
                box_address.network(),
                box_address.prefix,
                key("box_address")
            ),
        ));
    }
    for (m, other) in before.iter().enumerate() {
        if let Some(p) = other.port.as_ref().filter(|p| p.box_address.overlaps(&box_address)) {
            return Err(bad(
                &key("box_address"),
                format!(
                    "subnet {}/{} overlaps instrument[{m}]'s subnet {}/{}",
                    box_address.network(),
                    box_address.prefix,
                    p.box_address.network(),
                    p.box_address.prefix
                ),
            ));
        }
    }
    if let Some(UplinkInterface { addressing: Addressing::Static { address: up, .. }, .. }) = &network.uplink {
        if up.overlaps(&box_address) {
            return Err(bad(
                &key("box_address"),
                format!(
                    "subnet {}/{} overlaps the uplink subnet {}/{} (network.uplink.address)",
                    box_address.network(),
                    box_address.prefix,
                    up.network(),
                    up.prefix
                ),
            ));
        }
    }
    let agent_port = ri.agent_port.ok_or_else(|| required("agent_port"))?;
    if agent_port == 0 {
        return Err(bad(&key("agent_port"), "port 0 is not a port".into()));
    }
    if ri.remote_desktop_port == Some(0) {
        return Err(bad(&key("remote_desktop_port"), "port 0 is not a port".into()));
    }
    let lis = match &ri.lis {
        None => None,
        Some(l) => {
            let host = parse_v4(&l.host, &key("lis.host"), bad)?;
            if l.instrument_port == 0 || l.instrument_port == agent_port {
                return Err(bad(
                    &key("lis.instrument_port"),
                    format!("{} must be a port other than 0 and the agent port {agent_port}", l.instrument_port),
                ));
            }
            if l.port == 0 {
                return Err(bad(&key("lis.port"), "port 0 is not a port".into()));
            }
            if box_address.contains(host) {
                return Err(bad(
                    &key("lis.host"),
                    format!("{host} is on this instrument's port; the LIS host must be on the uplink side"),
                ));
            }
            if network.uplink.is_none() {
                return Err(bad(
                    &key("lis.enabled"),
                    "the LIS forward goes out of the uplink: network.uplink is required".into(),
                ));
            }
            l.enabled.then_some(LisForward { instrument_port: l.instrument_port, host, port: l.port })
        }
    };
    Ok(Some(PortConfig {
        interface: interface.clone(),
        box_address,
        address,
        agent_port,
        remote_desktop_port: ri.remote_desktop_port,
        lis,
    }))
}

fn parse_proxy(p: &str) -> Result<Proxy, String> {
    let u = url::Url::parse(p).map_err(|e| format!("`{p}` is not a URL: {e}"))?;
    let kind = match u.scheme() {
        "http" => ProxyKind::Connect,
        "socks5" => ProxyKind::Socks5,
        other => return Err(format!("scheme `{other}` is not supported; use http:// (CONNECT) or socks5://")),
    };
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{p}` has no host"));
    }
    if u.port().is_none() {
        return Err(format!("`{p}` must name the proxy port"));
    }
    if u.path() != "/" && !u.path().is_empty() {
        return Err(format!("`{p}` must not have a path"));
    }
    Ok(Proxy { kind, url: p.to_owned() })
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[queue]
path = "/data/rapd/queue.db"

[uplink]
url = "https://dc.example.net/api/v1/batches"
ca = "/data/certs/ca.pem"
cert = "/data/certs/box.pem"
key = "/data/certs/box.key"

[[instrument]]
serial = "DXI-0001"
model = "DxI 800"
listen = "10.10.1.1:7300"

[[instrument]]
serial = "AU-0002"
listen = "10.10.2.1:7300"
"#;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/rapbox/rapd.toml"), t)
    }

    fn err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
    }

    #[test]
    fn good_config_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.instruments.len(), 2);
        assert_eq!(c.queue.quota_bytes, 256 * 1024 * 1024);
        assert_eq!(c.uplink.url.port_or_known_default(), Some(443));
        assert_eq!(c.fips.openssl_conf, Path::new("/etc/rapbox/fips/openssl-fips.cnf"));
        assert_eq!(c.log.target, LogTarget::Syslog);
        assert!(c.uplink.proxy.is_none());
        assert_eq!(c.audit.path, Path::new("/data/rapd/audit.log"));
        assert_eq!(c.reconfig.rollback_after, Duration::from_secs(300));
    }

    #[test]
    fn reconfig_section() {
        let c = parse(&format!("{GOOD}\n[reconfig]\nrollback_after_s = 30\n")).unwrap();
        assert_eq!(c.reconfig.rollback_after, Duration::from_secs(30));
        let e = err(&format!("{GOOD}\n[reconfig]\nrollback_after_s = 1\n"));
        assert_eq!(e, "/etc/rapbox/rapd.toml: key `reconfig.rollback_after_s`: 1 is outside 5..=86400");
    }

    #[test]
    fn audit_section() {
        let c = parse(&format!("{GOOD}\n[audit]\npath = \"/data/log/rapd-audit.log\"\n")).unwrap();
        assert_eq!(c.audit.path, Path::new("/data/log/rapd-audit.log"));
        let e = err(&format!("{GOOD}\n[audit]\npath = \"audit.log\"\n"));
        assert_eq!(e, "/etc/rapbox/rapd.toml: key `audit.path`: `audit.log` must be an absolute path");
        let e = err(&format!("{GOOD}\n[audit]\npath = \"/data/rapd/queue.db\"\n"));
        assert_eq!(e, "/etc/rapbox/rapd.toml: key `audit.path`: must not be the queue database");
        // Found by the config fuzz target: a queue named like a default file beside it.
        let e = err(&GOOD.replace("/data/rapd/queue.db", "/data/rapd/audit.log"));
        assert!(e.contains("key `queue.path`") && e.contains("audit.path"), "{e}");
        let e = err(&GOOD.replace("/data/rapd/queue.db", "/data/rapd/commands.db"));
        assert!(e.contains("key `queue.path`") && e.contains("commands.path"), "{e}");
        let e = err(&format!("{GOOD}\n[audit]\nship = false\n"));
        assert!(e.contains("unknown field `ship`"), "{e}");
    }

    #[test]
    fn commands_section() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.commands.path, Path::new("/data/rapd/commands.db"));
        assert_eq!(c.commands.poll_interval, Duration::from_secs(30));
        let c = parse(&format!("{GOOD}\n[commands]\npath = \"/data/x/c.db\"\npoll_interval_s = 2\nmax_running = 1\n"))
            .unwrap();
        assert_eq!(
            (c.commands.path.as_path(), c.commands.poll_interval, c.commands.max_running),
            (Path::new("/data/x/c.db"), Duration::from_secs(2), 1)
        );
        let e = err(&format!("{GOOD}\n[commands]\npoll_interval_s = 0\n"));
        assert_eq!(e, "/etc/rapbox/rapd.toml: key `commands.poll_interval_s`: 0 is outside 1..=3600");
        let e = err(&format!("{GOOD}\n[commands]\npath = \"/data/rapd/queue.db\"\n"));
        assert!(e.contains("key `commands.path`: must not be the queue database"), "{e}");
    }

    #[test]
    fn transfers_section() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.transfers.dir, Path::new("/data/rapd/transfers"));
        assert_eq!((c.transfers.quota_bytes, c.transfers.max_upload_bytes), (96 << 20, 96 << 20));
        assert!(c.transfers.vendor_keys.is_empty());
        let c = parse(&format!(
            "{GOOD}\n[transfers]\nquota_bytes = 200000000\nmax_upload_bytes = 60000000\nvendor_keys = [\"/data/provision/vendor.pem\"]\n"
        ))
        .unwrap();
        assert_eq!(c.transfers.vendor_keys, vec![PathBuf::from("/data/provision/vendor.pem")]);
        assert_eq!(c.transfers.max_upload_bytes, 60_000_000);
        let e = err(&format!("{GOOD}\n[transfers]\nvendor_keys = [\"vendor.pem\"]\n"));
        assert_eq!(e, "/etc/rapbox/rapd.toml: key `transfers.vendor_keys[0]`: `vendor.pem` must be an absolute path");
        let e = err(&format!("{GOOD}\n[transfers]\nquota_bytes = 2000000\nmax_upload_bytes = 3000000\n"));
        assert!(
            e.contains("key `transfers.max_upload_bytes`: 3000000 must be between 1 and transfers.quota_bytes"),
            "{e}"
        );
        let e = err(&format!("{GOOD}\n[transfers]\nupload_chunk_bytes = 100\n"));
        assert!(e.contains("key `transfers.upload_chunk_bytes`: 100 is outside"), "{e}");
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = err(&GOOD.replace("https://dc.example.net", "http://dc.example.net"));
        assert_eq!(e, "/etc/rapbox/rapd.toml: key `uplink.url`: scheme must be https, not `http`");
        let e = err(&GOOD.replace("dc.example.net/api", "dc.example.net:8443/api"));
        assert!(e.contains("key `uplink.url`: port 8443 is not in uplink.allowed_ports [443]"), "{e}");
        let e = err(&GOOD.replace("\"AU-0002\"", "\"DXI-0001\""));
        assert!(e.contains("key `instrument[1].serial`: `DXI-0001` is configured twice"), "{e}");
        let e = err(&GOOD.replace("10.10.2.1:7300", "10.10.2.1"));
        assert!(e.contains("key `instrument[1].listen`"), "{e}");
        let e = err(&GOOD.replace("/data/rapd/queue.db", "queue.db"));
        assert!(e.contains("key `queue.path`: `queue.db` must be an absolute path"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = err(&GOOD.replace("[queue]", "[queue]\nqouta_bytes = 5"));
        assert!(e.starts_with("/etc/rapbox/rapd.toml: "), "{e}");
        assert!(e.contains("qouta_bytes"), "{e}");
    }

    #[test]
    fn proxies() {
        let c = parse(&GOOD.replace(
            "key = \"/data/certs/box.key\"",
            "key = \"/data/certs/box.key\"\nproxy = \"socks5://u:p@10.0.0.9:1080\"",
        ))
        .unwrap();
        assert_eq!(c.uplink.proxy.unwrap().kind, ProxyKind::Socks5);
        let c = parse(&GOOD.replace(
            "key = \"/data/certs/box.key\"",
            "key = \"/data/certs/box.key\"\nproxy = \"http://10.0.0.9:3128\"",
        ))
        .unwrap();
        assert_eq!(c.uplink.proxy.unwrap().kind, ProxyKind::Connect);
        let e = err(&GOOD
            .replace("key = \"/data/certs/box.key\"", "key = \"/data/certs/box.key\"\nproxy = \"ftp://10.0.0.9:21\""));
        assert!(e.contains("key `uplink.proxy`: scheme `ftp` is not supported"), "{e}");
        let e = err(&GOOD
            .replace("key = \"/data/certs/box.key\"", "key = \"/data/certs/box.key\"\nproxy = \"http://10.0.0.9\""));
        assert!(e.contains("must name the proxy port"), "{e}");
    }

    #[test]
    fn ranges_are_checked() {
        let e = err(&GOOD.replace("[queue]", "[queue]\nquota_bytes = 10"));
        assert!(e.contains("key `queue.quota_bytes`"), "{e}");
        let e = err(&format!("{GOOD}\n[ingest]\nmax_connections_per_port = 0\n"));
        assert!(e.contains("key `ingest.max_connections_per_port`"), "{e}");
        let e = err(&format!("{GOOD}\n[log]\ntarget = \"kafka\"\n"));
        assert!(e.contains("key `log.target`: `kafka` is not one of syslog, stderr"), "{e}");
    }

    const PORTS: &str = r#"
[queue]
path = "/data/rapd/queue.db"

[uplink]
url = "https://dc.example.net/api/v1/batches"
ca = "/data/certs/ca.pem"
cert = "/data/certs/box.pem"
key = "/data/certs/box.key"

[network.uplink]
interface = "eth0"
addressing = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53"]
ntp = ["192.0.2.123"]
syslog = "192.0.2.50:6514"

[firewall]
enabled = true

[[instrument]]
serial = "DXI-0001"
model = "DxI 800"
interface = "eth1"
box_address = "10.10.1.1/24"
address = "10.10.1.2"
agent_port = 7300
remote_desktop_port = 5900

[instrument.lis]
enabled = true
instrument_port = 5000
host = "192.0.2.40"
port = 5001

[[instrument]]
serial = "AU-0002"
interface = "eth2"
box_address = "10.10.2.1/24"
address = "10.10.2.2"
agent_port = 7300
"#;

    #[test]
    fn ports_and_firewall() {
        let c = parse(PORTS).unwrap();
        assert!(c.firewall.enabled);
        assert_eq!(c.firewall.drift_check, Duration::from_secs(5));
        let up = c.network.uplink.as_ref().unwrap();
        assert_eq!(up.interface, "eth0");
        assert_eq!(
            up.addressing,
            Addressing::Static {
                address: "192.0.2.10/24".parse().unwrap(),
                gateway: Some(Ipv4Addr::new(192, 0, 2, 1))
            }
        );
        assert_eq!(up.syslog.unwrap().protocol, Transport::Tcp);
        let p = c.instruments[0].port.as_ref().unwrap();
        assert_eq!(c.instruments[0].listen, "10.10.1.1:7300".parse().unwrap());
        assert_eq!(p.lis, Some(LisForward { instrument_port: 5000, host: Ipv4Addr::new(192, 0, 2, 40), port: 5001 }));
        assert_eq!(p.remote_desktop_port, Some(5900));
        assert_eq!(c.instruments[1].port.as_ref().unwrap().lis, None);
        // Without the new sections nothing is managed.
        let c = parse(GOOD).unwrap();
        assert!(!c.firewall.enabled && c.network.uplink.is_none() && c.instruments.iter().all(|i| i.port.is_none()));
    }

    #[test]
    fn port_errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "10.10.2.1/24\"\naddress = \"10.10.2.2",
                "10.10.1.129/25\"\naddress = \"10.10.1.130",
                "key `instrument[1].box_address`: subnet 10.10.1.128/25 overlaps instrument[0]'s subnet 10.10.1.0/24",
            ),
            (
                "address = \"10.10.2.2\"",
                "address = \"10.10.3.2\"",
                "key `instrument[1].address`: 10.10.3.2 is not a host of the port's subnet 10.10.2.0/24",
            ),
            (
                "address = \"10.10.2.2\"",
                "address = \"10.10.2.1\"",
                "key `instrument[1].address`: 10.10.2.1 is the box's own address",
            ),
            (
                "address = \"10.10.2.2\"",
                "address = \"10.10.2.255\"",
                "key `instrument[1].address`: 10.10.2.255 is not a host",
            ),
            ("\"AU-0002\"", "\"DXI-0001\"", "key `instrument[1].serial`: `DXI-0001` is configured twice"),
            (
                "interface = \"eth2\"",
                "interface = \"eth1\"",
                "key `instrument[1].interface`: `eth1` is already used by instrument[0]",
            ),
            ("interface = \"eth2\"", "interface = \"eth0\"", "key `instrument[1].interface`: `eth0` is the uplink"),
            (
                "interface = \"eth2\"",
                "interface = \"eth2/x\"",
                "key `instrument[1].interface`: `eth2/x` is not an interface name",
            ),
            (
                "10.10.2.1/24\"\naddress = \"10.10.2.2",
                "192.0.2.129/25\"\naddress = \"192.0.2.130",
                "key `instrument[1].box_address`: subnet 192.0.2.128/25 overlaps the uplink subnet 192.0.2.0/24",
            ),
            ("10.10.2.1/24", "10.10.2.1/31", "key `instrument[1].box_address`: prefix /31 is outside /8../30"),
            (
                "address = \"10.10.2.2\"",
                "address = \"10.10.2.2\"\nlisten = \"10.10.2.1:7300\"",
                "key `instrument[1].listen`: must not be given",
            ),
            (
                "host = \"192.0.2.40\"",
                "host = \"10.10.2.9\"",
                "key `instrument[0].lis.host`: 10.10.2.9 is on instrument[1]'s port",
            ),
            ("instrument_port = 5000", "instrument_port = 7300", "key `instrument[0].lis.instrument_port`"),
            (
                "gateway = \"192.0.2.1\"",
                "gateway = \"192.0.3.1\"",
                "key `network.uplink.gateway`: 192.0.3.1 is not another host",
            ),
            (
                "dns = [\"192.0.2.53\"]",
                "dns = [\"192.0.2.53\", \"x\"]",
                "key `network.uplink.dns[1]`: `x` is not an IPv4 address",
            ),
            (
                "dns = [\"192.0.2.53\"]",
                "dns = []",
                "key `network.uplink.dns`: is empty, but `dc.example.net` must be resolved",
            ),
            (
                "addressing = \"static\"",
                "addressing = \"dhcp\"",
                "key `network.uplink.address`: must not be given with addressing = \"dhcp\"",
            ),
            (
                "addressing = \"static\"",
                "addressing = \"ppp\"",
                "key `network.uplink.addressing`: `ppp` is not one of static, dhcp",
            ),
            ("syslog = \"192.0.2.50:6514\"", "syslog = \"logs.example.net:6514\"", "key `network.uplink.syslog`"),
            (
                "[firewall]\nenabled = true",
                "[firewall]\nenabled = true\ndrift_check_s = 0",
                "key `firewall.drift_check_s`: 0 is outside 1..=3600",
            ),
            (
                "[firewall]\nenabled = true",
                "[firewall]\nenabled = false",
                "key `instrument[0].lis.enabled`: the LIS forward is made by the firewall",
            ),
        ];
        for (from, to, want) in cases {
            assert!(PORTS.contains(from), "{from}");
            let e = err(&PORTS.replacen(from, to, 1));
            assert!(e.starts_with("/etc/rapbox/rapd.toml: "), "{e}");
            assert!(e.contains(want), "replacing {from:?} by {to:?}: {e}\nwanted: {want}");
        }
    }

    #[test]
    fn firewall_needs_uplink_and_ports() {
        let e = err(&format!("{GOOD}\n[firewall]\nenabled = true\n"));
        assert!(e.contains("key `network.uplink`: is required with firewall.enabled = true"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[firewall]\nenabled = true\n[network.uplink]\ninterface = \"eth0\"\naddressing = \"dhcp\"\n"
        ));
        assert!(e.contains("key `instrument[0].interface`: is required with firewall.enabled = true"), "{e}");
        let e = err(&GOOD.replace("listen = \"10.10.2.1:7300\"", "agent_port = 7300"));
        assert!(e.contains("key `instrument[1].agent_port`: needs instrument[1].interface"), "{e}");
        let e = err(&GOOD.replace("listen = \"10.10.2.1:7300\"", ""));
        assert!(e.contains("key `instrument[1].listen`: missing"), "{e}");
    }

    #[test]
    fn cidr_arithmetic() {
        let a: Ipv4Cidr = "10.10.1.1/24".parse().unwrap();
        assert_eq!(a.network(), Ipv4Addr::new(10, 10, 1, 0));
        assert_eq!(a.broadcast(), Ipv4Addr::new(10, 10, 1, 255));
        assert!(a.contains(Ipv4Addr::new(10, 10, 1, 200)) && !a.contains(Ipv4Addr::new(10, 10, 2, 1)));
        assert!(a.overlaps(&"10.10.0.1/16".parse().unwrap()));
        assert!(!a.overlaps(&"10.10.2.1/24".parse().unwrap()));
        assert!("10.10.1.1".parse::<Ipv4Cidr>().is_err() && "10.10.1.1/33".parse::<Ipv4Cidr>().is_err());
    }
}
