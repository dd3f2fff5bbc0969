//! `[sessions]`: remote management sessions over an outbound OpenVPN tunnel
//! (`docs/sessions.md`). Read in the raw form with the rest of the file, validated here
//! against the uplink, the firewall and the instrument ports.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{check_ifname, require_absolute, ConfigError, FirewallConfig, InstrumentConfig, NetworkConfig};

/// Longest session a person at an instrument may approve, whatever the configuration says (8 h).
pub const MAX_MINUTES_LIMIT: u16 = 480;

/// Validated `[sessions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsConfig {
    /// Off unless `enabled = true`: then the `session` command kind is refused as unknown.
    pub enabled: bool,
    /// The VPN endpoint: a host name or an IPv4 address.
    pub endpoint: String,
    /// The endpoint's TCP port (443).
    pub port: u16,
    /// CA certificate(s) that sign the VPN server's certificate.
    pub ca: PathBuf,
    /// The name the server certificate must carry (OpenVPN `verify-x509-name`), if set.
    pub server_name: Option<String>,
    /// The box certificate and key presented to the server (default: the uplink's).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The longest session a person may approve.
    pub max_minutes: u16,
    /// How long the person at the instrument has to answer.
    pub answer_within: Duration,
    /// How long the tunnel may take to come up after the approval.
    pub connect_timeout: Duration,
    /// The tun device's name.
    pub interface: String,
    /// The box's SSH port, opened on the tunnel interface only during a session.
    pub ssh_port: u16,
    /// The OpenVPN program.
    pub openvpn: PathBuf,
    /// Where the management socket and the proxy credentials live during a session.
    pub run_dir: PathBuf,
}

impl SessionsConfig {
    /// The endpoint as an IPv4 address, when it is one (the firewall then opens only it).
    pub fn endpoint_ip(&self) -> Option<Ipv4Addr> {
        self.endpoint.parse().ok()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSessions {
    #[serde(default)]
    enabled: bool,
    endpoint: Option<String>,
    port: Option<u16>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    max_minutes: Option<u16>,
    answer_within_s: Option<u64>,
    connect_timeout_s: Option<u64>,
    interface: Option<String>,
    ssh_port: Option<u16>,
    openvpn: Option<PathBuf>,
    run_dir: Option<PathBuf>,
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Everything `[sessions]` is checked against.
pub(crate) struct Context<'a> {
    pub uplink_cert: &'a std::path::Path,
    pub uplink_key: &'a std::path::Path,
    pub network: &'a NetworkConfig,
    pub firewall: &'a FirewallConfig,
    pub instruments: &'a [InstrumentConfig],
    pub bad: &'a dyn Fn(&str, String) -> ConfigError,
}

/// Validates `[sessions]`.
pub(crate) fn validate(r: &RawSessions, cx: &Context<'_>) -> Result<SessionsConfig, ConfigError> {
    let bad = cx.bad;
    let endpoint = r.endpoint.clone().unwrap_or_default();
    let ca = r.ca.clone().unwrap_or_default();
    let run_dir = r.run_dir.clone().unwrap_or_else(|| PathBuf::from("/run/rapd/session"));
    let openvpn = r.openvpn.clone().unwrap_or_else(|| PathBuf::from("/usr/sbin/openvpn"));
    let interface = r.interface.clone().unwrap_or_else(|| "raptun0".to_owned());
    let cfg = SessionsConfig {
        enabled: r.enabled,
        endpoint,
        port: r.port.unwrap_or(443),
        ca,
        server_name: r.server_name.clone(),
        cert: r.cert.clone().unwrap_or_else(|| cx.uplink_cert.to_owned()),
        key: r.key.clone().unwrap_or_else(|| cx.uplink_key.to_owned()),
        max_minutes: r.max_minutes.unwrap_or(60),
        answer_within: Duration::from_secs(r.answer_within_s.unwrap_or(300)),
        connect_timeout: Duration::from_secs(r.connect_timeout_s.unwrap_or(30)),
        interface,
        ssh_port: r.ssh_port.unwrap_or(22),
        openvpn,
        run_dir,
    };
    if !cfg.enabled {
        return Ok(cfg);
    }
    if cfg.endpoint.is_empty() {
        return Err(bad(
            "sessions.endpoint",
            "missing: the VPN endpoint (host name or IPv4 address) is required with sessions.enabled = true".into(),
        ));
    }
    if cfg.endpoint.parse::<std::net::IpAddr>().is_err() && !valid_host(&cfg.endpoint) {
        return Err(bad(
            "sessions.endpoint",
            format!("`{}` is not a host name or an IPv4 address (give the port in sessions.port)", cfg.endpoint),
        ));
    }
    if cfg.endpoint.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(bad("sessions.endpoint", format!("{} is IPv6: the box speaks IPv4 only", cfg.endpoint)));
    }
    if cfg.port == 0 {
        return Err(bad("sessions.port", "port 0 is not a port".into()));
    }
    if cfg.ca.as_os_str().is_empty() {
        return Err(bad("sessions.ca", "missing: the CA that signs the VPN server's certificate".into()));
    }
    for (key, p) in [("sessions.ca", &cfg.ca), ("sessions.cert", &cfg.cert), ("sessions.key", &cfg.key)] {
        require_absolute(p, key, bad)?;
    }
    require_absolute(&cfg.openvpn, "sessions.openvpn", bad)?;
    require_absolute(&cfg.run_dir, "sessions.run_dir", bad)?;
    if let Some(n) = &cfg.server_name {
        if !valid_host(n) {
            return Err(bad("sessions.server_name", format!("`{n}` is not a host name")));
        }
    }
    if !(1..=MAX_MINUTES_LIMIT).contains(&cfg.max_minutes) {
        return Err(bad("sessions.max_minutes", format!("{} is not 1 to {MAX_MINUTES_LIMIT}", cfg.max_minutes)));
    }
    let s = cfg.answer_within.as_secs();
    if !(10..=3600).contains(&s) {
        return Err(bad("sessions.answer_within_s", format!("{s} is not 10 to 3600")));
    }
    let s = cfg.connect_timeout.as_secs();
    if !(5..=300).contains(&s) {
        return Err(bad("sessions.connect_timeout_s", format!("{s} is not 5 to 300")));
    }
    check_ifname(&cfg.interface, "sessions.interface", bad)?;
    if cfg.ssh_port == 0 {
        return Err(bad("sessions.ssh_port", "port 0 is not a port".into()));
    }
    if !cx.firewall.enabled || cx.network.uplink.is_none() {
        return Err(bad(
            "sessions.enabled",
            "a session is opened by the firewall: it needs firewall.enabled = true and [network.uplink]".into(),
        ));
    }
    if cx.network.uplink.as_ref().is_some_and(|u| u.interface == cfg.interface) {
        return Err(bad(
            "sessions.interface",
            format!("`{}` is the uplink interface (network.uplink.interface)", cfg.interface),
        ));
    }
    for (n, i) in cx.instruments.iter().enumerate() {
        let Some(p) = &i.port else { continue };
        if p.interface == cfg.interface {
            return Err(bad(
                "sessions.interface",
                format!("`{}` is the port of instrument[{n}] (instrument[{n}].interface)", cfg.interface),
            ));
        }
        if p.remote_desktop_port == Some(cfg.ssh_port) {
            return Err(bad(
                &format!("instrument[{n}].remote_desktop_port"),
                format!("{} is sessions.ssh_port: the tunnel cannot carry both on one port", cfg.ssh_port),
            ));
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const BASE: &str = include_str!("../../tests/fixtures/firewall/two-ports-lis.toml");

    fn parse(sessions: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/rapbox/rapd.toml"), &format!("{BASE}\n[sessions]\n{sessions}"))
            .map_err(|e| e.to_string())
    }

    const GOOD: &str = "enabled = true\nendpoint = \"vpn.example.net\"\nca = \"/data/certs/vpn-ca.pem\"\n";

    #[test]
    fn defaults() {
        let c = parse(GOOD).unwrap().sessions;
        assert!(c.enabled);
        assert_eq!((c.endpoint.as_str(), c.port, c.max_minutes, c.ssh_port), ("vpn.example.net", 443, 60, 22));
        assert_eq!(c.cert, Path::new("/data/certs/box.pem"));
        assert_eq!(c.key, Path::new("/data/certs/box.key"));
        assert_eq!(c.interface, "raptun0");
        assert_eq!(c.answer_within.as_secs(), 300);
        assert_eq!(c.endpoint_ip(), None);
        let c = parse(&GOOD.replace("vpn.example.net", "192.0.2.99")).unwrap().sessions;
        assert_eq!(c.endpoint_ip(), Some("192.0.2.99".parse().unwrap()));
        // Off by default, nothing else required.
        let c = Config::parse(Path::new("/x.toml"), BASE).unwrap().sessions;
        assert!(!c.enabled);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("enabled = true\nca = \"/c.pem\"\n", "key `sessions.endpoint`: missing"),
            (
                "enabled = true\nendpoint = \"vpn.example.net:443\"\nca = \"/c.pem\"\n",
                "key `sessions.endpoint`: `vpn.example.net:443` is not a host name",
            ),
            ("enabled = true\nendpoint = \"::1\"\nca = \"/c.pem\"\n", "key `sessions.endpoint`: ::1 is IPv6"),
            ("enabled = true\nendpoint = \"v\"\n", "key `sessions.ca`: missing"),
            (
                "enabled = true\nendpoint = \"v\"\nca = \"c.pem\"\n",
                "key `sessions.ca`: `c.pem` must be an absolute path",
            ),
            (&format!("{GOOD}max_minutes = 0\n"), "key `sessions.max_minutes`: 0 is not 1 to 480"),
            (&format!("{GOOD}max_minutes = 481\n"), "key `sessions.max_minutes`: 481 is not 1 to 480"),
            (&format!("{GOOD}answer_within_s = 5\n"), "key `sessions.answer_within_s`: 5 is not 10 to 3600"),
            (&format!("{GOOD}connect_timeout_s = 900\n"), "key `sessions.connect_timeout_s`: 900 is not 5 to 300"),
            (&format!("{GOOD}interface = \"eth1\"\n"), "key `sessions.interface`: `eth1` is the port of instrument[0]"),
            (&format!("{GOOD}interface = \"eth0\"\n"), "key `sessions.interface`: `eth0` is the uplink interface"),
            (&format!("{GOOD}interface = \"tun/0\"\n"), "key `sessions.interface`: `tun/0` is not an interface name"),
            (&format!("{GOOD}ssh_port = 5900\n"), "key `instrument[0].remote_desktop_port`: 5900 is sessions.ssh_port"),
            (&format!("{GOOD}server_name = \"a b\"\n"), "key `sessions.server_name`: `a b` is not a host name"),
            (&format!("{GOOD}port = 0\n"), "key `sessions.port`: port 0"),
            (&format!("{GOOD}bogus = 1\n"), "unknown field `bogus`"),
        ];
        for (t, want) in cases {
            let e = parse(t).unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
            assert!(e.starts_with("/etc/rapbox/rapd.toml"), "{e}");
        }
        let no_fw = BASE.replace("[firewall]\nenabled = true\n", "");
        let no_fw = no_fw.replace("[instrument.lis]\nenabled = true", "[instrument.lis]\nenabled = false");
        let e = Config::parse(Path::new("/x.toml"), &format!("{no_fw}\n[sessions]\n{GOOD}")).unwrap_err().to_string();
        assert!(e.contains("key `sessions.enabled`: a session is opened by the firewall"), "{e}");
    }
}
