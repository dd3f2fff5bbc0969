//! Configuration: TOML read once, validated into typed values before anything uses it.
//!
//! Every error names the file and the key that is wrong. Unknown keys are refused, so
//! a typo never silently falls back to a default.

use std::collections::HashSet;
use std::net::SocketAddr;
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
#[derive(Debug, Clone)]
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
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// SQLite database on the data partition.
    pub path: PathBuf,
    /// Byte quota of queued messages (payload plus a fixed per-row overhead).
    pub quota_bytes: u64,
    /// How long ids of delivered messages are remembered to recognise resends.
    pub dedup_retention: Duration,
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct FipsConfig {
    /// OpenSSL configuration that loads the FIPS provider (and only it and base).
    pub openssl_conf: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub socket: PathBuf,
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub target: LogTarget,
    pub level: log::LevelFilter,
}

/// One instrument cabled to one port of the box.
#[derive(Debug, Clone)]
pub struct InstrumentConfig {
    pub serial: String,
    pub model: String,
    /// Where its agent connects: the box address on the instrument's port and the agent port.
    pub listen: SocketAddr,
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
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl { socket: d_socket() }
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
    listen: String,
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
    5_000
}
fn d_batch_bytes() -> usize {
    2 * 1024 * 1024
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

        // instruments
        let mut serials = HashSet::new();
        let mut listens = HashSet::new();
        let mut instruments = Vec::new();
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
            let listen: SocketAddr = ri
                .listen
                .parse()
                .map_err(|e| bad(&key("listen"), format!("`{}` is not an address:port: {e}", ri.listen)))?;
            if !listens.insert(listen) {
                return Err(bad(&key("listen"), format!("{listen} is already used by another instrument")));
            }
            instruments.push(InstrumentConfig { serial: s.clone(), model: ri.model.clone(), listen });
        }

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
            control: ControlConfig { socket: raw.control.socket },
            ingest: IngestConfig {
                max_connections_per_port: i.max_connections_per_port,
                frame_timeout: Duration::from_millis(i.frame_timeout_ms),
                idle_timeout: Duration::from_millis(i.idle_timeout_ms),
            },
            log: LogConfig { target, level },
            instruments,
        })
    }
}

fn require_absolute(p: &Path, key: &str, bad: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(bad(key, format!("`{}` must be an absolute path", p.display())))
    }
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
}
