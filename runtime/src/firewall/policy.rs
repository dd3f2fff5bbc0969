//! The rule generator: a pure function from the validated configuration to the
//! iptables-restore documents (IPv4 and IPv6). No I/O, no clock, no randomness: the same
//! configuration always gives the same bytes, which the golden-file tests pin.
//!
//! Every rule is written in the exact form `iptables-save` prints it back (match order,
//! `/32` suffixes, quoting, rate units), so that the drift checker can compare the live
//! rules with the policy line by line.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use crate::config::{Addressing, Config, InstrumentConfig, PortConfig, ProxyKind, UplinkInterface};

/// The documents to feed `iptables-restore` and `ip6tables-restore`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The IPv4 document: tables `filter` and `nat`.
    pub ipv4: String,
    /// The IPv6 document: table `filter`, closed except for loopback.
    pub ipv6: String,
    /// Interfaces the policy names, with the configuration key that names each.
    pub interfaces: Vec<(String, String)>,
    /// Whether IPv4 forwarding is needed (some LIS forward is enabled).
    pub forwarding: bool,
}

impl Ruleset {
    /// The number of rules (`-A` lines) in both documents.
    pub fn rule_count(&self) -> usize {
        [&self.ipv4, &self.ipv6].iter().flat_map(|d| d.lines()).filter(|l| l.starts_with("-A ")).count()
    }
}

/// Prefix of every log line the policy writes (kernel log, `LOG` target).
pub const LOG_PREFIX: &str = "rapfw";

const DROP_IN: &str = "rap-drop-in";
const DROP_FWD: &str = "rap-drop-fwd";
const DROP_OUT: &str = "rap-drop-out";
const ESTABLISHED: &str = "-m conntrack --ctstate RELATED,ESTABLISHED";

/// Generates the whole policy from the configuration.
pub fn policy(cfg: &Config) -> Ruleset {
    let ports: Vec<(usize, &InstrumentConfig, &PortConfig)> =
        cfg.instruments.iter().enumerate().filter_map(|(n, i)| i.port.as_ref().map(|p| (n, i, p))).collect();
    let uplink = cfg.network.uplink.as_ref();
    let mut interfaces = Vec::new();
    if let Some(u) = uplink {
        interfaces.push(("network.uplink.interface".to_owned(), u.interface.clone()));
    }
    for (n, _, p) in &ports {
        interfaces.push((format!("instrument[{n}].interface"), p.interface.clone()));
    }
    let forwarding = uplink.is_some() && ports.iter().any(|(_, _, p)| p.lis.is_some());
    Ruleset { ipv4: ipv4(cfg, uplink, &ports), ipv6: ipv6(cfg), interfaces, forwarding }
}

/// One rule, built from typed parts and printed in `iptables-save` order.
/// (Also used for the rules of a remote session, `crate::sessions::rules`.)
#[derive(Default)]
pub(crate) struct Rule<'a> {
    pub(crate) not_src: bool,
    pub(crate) src: Option<Ipv4Addr>,
    pub(crate) dst: Option<Ipv4Addr>,
    pub(crate) iif: Option<&'a str>,
    pub(crate) oif: Option<&'a str>,
    pub(crate) proto: Option<&'static str>,
    pub(crate) sport: Option<u16>,
    pub(crate) dport: Option<u16>,
    pub(crate) matches: Vec<String>,
    pub(crate) comment: String,
    pub(crate) target: String,
}

impl Rule<'_> {
    pub(crate) fn render(&self, chain: &str) -> String {
        let mut s = format!("-A {chain}");
        if let Some(a) = self.src {
            let neg = if self.not_src { " !" } else { "" };
            let _ = write!(s, "{neg} -s {a}/32");
        }
        if let Some(a) = self.dst {
            let _ = write!(s, " -d {a}/32");
        }
        if let Some(i) = self.iif {
            let _ = write!(s, " -i {i}");
        }
        if let Some(o) = self.oif {
            let _ = write!(s, " -o {o}");
        }
        if let Some(p) = self.proto {
            let _ = write!(s, " -p {p}");
            if self.sport.is_some() || self.dport.is_some() {
                let _ = write!(s, " -m {p}");
            }
            if let Some(sp) = self.sport {
                let _ = write!(s, " --sport {sp}");
            }
            if let Some(dp) = self.dport {
                let _ = write!(s, " --dport {dp}");
            }
        }
        for m in &self.matches {
            let _ = write!(s, " {m}");
        }
        let _ = write!(s, " -m comment --comment {}", quote(&self.comment));
        let _ = write!(s, " -j {}", self.target);
        s
    }
}

/// A document under construction: comment lines, chain declarations and rules.
struct Doc {
    out: String,
}

impl Doc {
    fn line(&mut self, l: &str) {
        self.out.push_str(l);
        self.out.push('\n');
    }
    fn note(&mut self, text: &str) {
        if text.is_empty() {
            self.line("#");
        } else {
            self.line(&format!("# {}", text_safe(text)));
        }
    }
    fn rule(&mut self, chain: &str, r: Rule<'_>) {
        self.line(&r.render(chain));
    }
}

fn ipv4(cfg: &Config, uplink: Option<&UplinkInterface>, ports: &[(usize, &InstrumentConfig, &PortConfig)]) -> String {
    let fw = &cfg.firewall;
    let mut d = Doc { out: String::new() };
    header(&mut d, cfg, uplink, ports, "IPv4", "iptables-restore");

    // ---- filter ----
    d.line("*filter");
    d.line(":INPUT DROP [0:0]");
    d.line(":FORWARD DROP [0:0]");
    d.line(":OUTPUT DROP [0:0]");
    for c in [DROP_IN, DROP_FWD, DROP_OUT] {
        d.line(&format!(":{c} - [0:0]"));
    }
    for (n, _, p) in ports {
        d.line(&format!(":rap-port{n}-in - [0:0]"));
        if p.lis.is_some() && uplink.is_some() {
            d.line(&format!(":rap-port{n}-fwd - [0:0]"));
        }
    }

    d.note("");
    d.note("INPUT: what may reach the box itself");
    d.rule(
        "INPUT",
        Rule {
            iif: Some("lo"),
            comment: "loopback: local services".into(),
            target: "ACCEPT".into(),
            ..Rule::default()
        },
    );
    for (n, inst, p) in ports {
        d.rule(
            "INPUT",
            Rule {
                iif: Some(&p.interface),
                comment: format!("port {n} {}: instrument {}", p.interface, inst.serial),
                target: format!("rap-port{n}-in"),
                ..Rule::default()
            },
        );
    }
    if let Some(u) = uplink {
        if let Some(addr) = pages_on(cfg, &u.interface) {
            d.rule(
                "INPUT",
                Rule {
                    dst: Some(addr),
                    iif: Some(&u.interface),
                    proto: Some("tcp"),
                    dport: Some(cfg.pages.port),
                    matches: vec![
                        "-m conntrack --ctstate NEW".into(),
                        limit(fw.new_connections_per_minute, fw.new_connections_burst),
                    ],
                    comment: format!(
                        "uplink {}: configuration pages https://{addr}:{} (opened by [pages] interfaces)",
                        u.interface, cfg.pages.port
                    ),
                    target: "ACCEPT".into(),
                    ..Rule::default()
                },
            );
        }
        d.rule(
            "INPUT",
            Rule {
                iif: Some(&u.interface),
                matches: vec![ESTABLISHED.into()],
                comment: format!("uplink {}: answers to connections the box opened, nothing else", u.interface),
                target: "ACCEPT".into(),
                ..Rule::default()
            },
        );
    }
    d.rule("INPUT", Rule { comment: "anything else: log and drop".into(), target: DROP_IN.into(), ..Rule::default() });

    d.note("");
    d.note("FORWARD: only the opted-in LIS forwards; no instrument-to-instrument path");
    for (n, inst, p) in ports {
        let (target, comment) = match (p.lis, uplink) {
            (Some(_), Some(_)) => {
                (format!("rap-port{n}-fwd"), format!("port {n} {}: instrument {}", p.interface, inst.serial))
            }
            _ => (DROP_FWD.to_owned(), format!("port {n} {}: instrument {}: no forwarding", p.interface, inst.serial)),
        };
        d.rule("FORWARD", Rule { iif: Some(&p.interface), comment, target, ..Rule::default() });
    }
    if let Some(u) = uplink {
        for (n, inst, p) in ports.iter().filter(|(_, _, p)| p.lis.is_some()) {
            d.rule(
                "FORWARD",
                Rule {
                    iif: Some(&u.interface),
                    oif: Some(&p.interface),
                    matches: vec![ESTABLISHED.into()],
                    comment: format!("port {n} {}: answers of the LIS host to instrument {}", p.interface, inst.serial),
                    target: "ACCEPT".into(),
                    ..Rule::default()
                },
            );
        }
    }
    d.rule(
        "FORWARD",
        Rule { comment: "anything else: log and drop".into(), target: DROP_FWD.into(), ..Rule::default() },
    );

    d.note("");
    d.note("OUTPUT: only what the box needs");
    d.rule(
        "OUTPUT",
        Rule {
            oif: Some("lo"),
            comment: "loopback: local services".into(),
            target: "ACCEPT".into(),
            ..Rule::default()
        },
    );
    d.rule(
        "OUTPUT",
        Rule {
            matches: vec![ESTABLISHED.into()],
            comment: "answers on accepted connections".into(),
            target: "ACCEPT".into(),
            ..Rule::default()
        },
    );
    if let Some(u) = uplink {
        output_rules(&mut d, cfg, u);
    }
    d.rule(
        "OUTPUT",
        Rule { comment: "anything else: log and drop".into(), target: DROP_OUT.into(), ..Rule::default() },
    );

    for (n, inst, p) in ports {
        let chain = format!("rap-port{n}-in");
        d.note("");
        d.note(&format!("port {n} {}: instrument {} ({}) at {}", p.interface, inst.serial, inst.model, p.address));
        spoof_rules(&mut d, &chain, *n, inst, p, fw.log_drops_per_minute);
        d.rule(
            &chain,
            Rule {
                matches: vec![ESTABLISHED.into()],
                comment: format!("{}: accepted agent connections", inst.serial),
                target: "ACCEPT".into(),
                ..Rule::default()
            },
        );
        d.rule(
            &chain,
            Rule {
                dst: Some(p.box_address.addr),
                proto: Some("tcp"),
                dport: Some(p.agent_port),
                matches: vec![
                    "-m conntrack --ctstate NEW".into(),
                    limit(fw.new_connections_per_minute, fw.new_connections_burst),
                ],
                comment: format!(
                    "{}: agent to {}:{} (new connections rate-limited)",
                    inst.serial, p.box_address.addr, p.agent_port
                ),
                target: "ACCEPT".into(),
                ..Rule::default()
            },
        );
        if pages_on(cfg, &p.interface).is_some() {
            d.rule(
                &chain,
                Rule {
                    dst: Some(p.box_address.addr),
                    proto: Some("tcp"),
                    dport: Some(cfg.pages.port),
                    matches: vec![
                        "-m conntrack --ctstate NEW".into(),
                        limit(fw.new_connections_per_minute, fw.new_connections_burst),
                    ],
                    comment: format!(
                        "{}: configuration pages https://{}:{} (new connections rate-limited)",
                        inst.serial, p.box_address.addr, cfg.pages.port
                    ),
                    target: "ACCEPT".into(),
                    ..Rule::default()
                },
            );
        }
        d.rule(
            &chain,
            Rule {
                comment: format!("{}: nothing else on the box", inst.serial),
                target: DROP_IN.into(),
                ..Rule::default()
            },
        );
        if let (Some(lis), Some(u)) = (p.lis, uplink) {
            let chain = format!("rap-port{n}-fwd");
            spoof_rules(&mut d, &chain, *n, inst, p, fw.log_drops_per_minute);
            d.rule(
                &chain,
                Rule {
                    oif: Some(&u.interface),
                    matches: vec![ESTABLISHED.into()],
                    comment: format!("{}: accepted LIS connections", inst.serial),
                    target: "ACCEPT".into(),
                    ..Rule::default()
                },
            );
            d.rule(
                &chain,
                Rule {
                    dst: Some(lis.host),
                    oif: Some(&u.interface),
                    proto: Some("tcp"),
                    dport: Some(lis.port),
                    matches: vec![
                        format!(
                            "-m conntrack --ctstate NEW --ctorigdst {} --ctorigdstport {}",
                            p.box_address.addr, lis.instrument_port
                        ),
                        limit(fw.new_connections_per_minute, fw.new_connections_burst),
                    ],
                    comment: format!(
                        "{}: LIS forward {}:{} to {}:{} (new connections rate-limited)",
                        inst.serial, p.box_address.addr, lis.instrument_port, lis.host, lis.port
                    ),
                    target: "ACCEPT".into(),
                    ..Rule::default()
                },
            );
            d.rule(
                &chain,
                Rule {
                    comment: format!("{}: nothing else forwarded", inst.serial),
                    target: DROP_FWD.into(),
                    ..Rule::default()
                },
            );
        }
    }

    d.note("");
    d.note("drops: logged (rate-limited) with a prefix, then dropped");
    for (chain, what) in [(DROP_IN, "in"), (DROP_FWD, "fwd"), (DROP_OUT, "out")] {
        log_drop(&mut d, chain, &format!("{LOG_PREFIX} drop {what}: "), &format!("log dropped {what}"), cfg);
        d.rule(chain, Rule { comment: format!("drop {what}"), target: "DROP".into(), ..Rule::default() });
    }
    d.line("COMMIT");

    // ---- nat: the LIS forwards (present even when empty, so stale translations are flushed) ----
    d.note("");
    d.note("nat: LIS forwards (destination to the LIS host, source to the uplink address of the box)");
    d.line("*nat");
    for c in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        d.line(&format!(":{c} ACCEPT [0:0]"));
    }
    if let Some(u) = uplink {
        for (n, inst, p) in ports {
            let Some(lis) = p.lis else { continue };
            d.rule(
                "PREROUTING",
                Rule {
                    src: Some(p.address),
                    dst: Some(p.box_address.addr),
                    iif: Some(&p.interface),
                    proto: Some("tcp"),
                    dport: Some(lis.instrument_port),
                    comment: format!("port {n} {}: {} LIS to {}:{}", p.interface, inst.serial, lis.host, lis.port),
                    target: format!("DNAT --to-destination {}:{}", lis.host, lis.port),
                    ..Rule::default()
                },
            );
        }
        for (n, inst, p) in ports {
            let Some(lis) = p.lis else { continue };
            let target = match u.addressing {
                Addressing::Static { address, .. } => format!("SNAT --to-source {}", address.addr),
                Addressing::Dhcp => "MASQUERADE".into(),
            };
            d.rule(
                "POSTROUTING",
                Rule {
                    src: Some(p.address),
                    dst: Some(lis.host),
                    oif: Some(&u.interface),
                    proto: Some("tcp"),
                    dport: Some(lis.port),
                    comment: format!(
                        "port {n} {}: {} LIS leaves under the uplink address of the box",
                        p.interface, inst.serial
                    ),
                    target,
                    ..Rule::default()
                },
            );
        }
    }
    d.line("COMMIT");
    d.out
}

fn header(
    d: &mut Doc,
    cfg: &Config,
    uplink: Option<&UplinkInterface>,
    ports: &[(usize, &InstrumentConfig, &PortConfig)],
    family: &str,
    tool: &str,
) {
    d.note(&format!("rapbox firewall policy ({family}), generated by rapd from {}", cfg.path.display()));
    d.note(&format!("Applied as one {tool} transaction and restored by rapd when changed: do not edit by hand."));
    if family != "IPv4" {
        return;
    }
    d.note("");
    match uplink {
        None => d.note("uplink: not configured (no outbound traffic except loopback)"),
        Some(u) => {
            let addressing = match u.addressing {
                Addressing::Dhcp => "address from DHCP (client of the OS)".to_owned(),
                Addressing::Static { address, gateway: Some(g) } => format!("static {address}, gateway {g}"),
                Addressing::Static { address, gateway: None } => format!("static {address}"),
            };
            d.note(&format!("uplink {}: {addressing}", u.interface));
            d.note(&format!("  out: {}", outbound_summary(cfg, u)));
            match pages_on(cfg, &u.interface) {
                Some(a) => d.note(&format!(
                    "  in: answers to connections the box opened; configuration pages https://{a}:{}",
                    cfg.pages.port
                )),
                None => d.note("  in: answers to connections the box opened; nothing else"),
            }
        }
    }
    for (n, inst, p) in ports {
        d.note(&format!(
            "port {n} {}: instrument {} ({}) at {}, box {}",
            p.interface, inst.serial, inst.model, p.address, p.box_address
        ));
        d.note(&format!(
            "  in: agent {}:{} only, from {} only; {} new connections/min (burst {})",
            p.box_address.addr,
            p.agent_port,
            p.address,
            cfg.firewall.new_connections_per_minute,
            cfg.firewall.new_connections_burst
        ));
        match (p.lis, uplink) {
            (Some(l), Some(u)) => d.note(&format!(
                "  LIS forward: {}:{} to {}:{} out of {}",
                p.box_address.addr, l.instrument_port, l.host, l.port, u.interface
            )),
            _ => d.note("  LIS forward: off (nothing is forwarded from this port)"),
        }
        if let Some(rd) = p.remote_desktop_port {
            d.note(&format!("  remote desktop {}:{rd}: closed until a remote session opens it", p.address));
        }
        if let Some(a) = pages_on(cfg, &p.interface) {
            d.note(&format!("  in: configuration pages https://{a}:{} from {} only", cfg.pages.port, p.address));
        }
    }
    for inst in cfg.instruments.iter().filter(|i| i.port.is_none()) {
        d.note(&format!(
            "instrument {}: no port configured, reached on {} through loopback only",
            inst.serial, inst.listen
        ));
    }
    d.note("");
}

/// The box address the configuration pages listen on at `interface`, if enabled there.
fn pages_on(cfg: &Config, interface: &str) -> Option<Ipv4Addr> {
    if !cfg.pages.enabled {
        return None;
    }
    cfg.pages.listen.iter().find(|(i, _)| i == interface).map(|(_, a)| *a)
}

/// One destination the box itself may connect to on the uplink:
/// (destination, protocol, source port, destination port, what).
type Outbound = (Option<Ipv4Addr>, &'static str, Option<u16>, u16, String);

fn outbound(cfg: &Config, u: &UplinkInterface) -> Vec<Outbound> {
    let mut v = Vec::new();
    let literal = |host: &str| match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    match &cfg.uplink.proxy {
        Some(p) => {
            let url = url::Url::parse(&p.url).ok();
            let host = url.as_ref().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
            let port = url.as_ref().and_then(url::Url::port).unwrap_or(0);
            let kind = if p.kind == ProxyKind::Socks5 { "SOCKS5 proxy" } else { "HTTP proxy" };
            v.push((literal(&host), "tcp", None, port, format!("{kind} {host}:{port} to the data center")));
        }
        None => {
            let host = cfg.uplink.url.host_str().unwrap_or_default().to_owned();
            let port = cfg.uplink.url.port_or_known_default().unwrap_or(443);
            v.push((literal(&host), "tcp", None, port, format!("data center {host}:{port}")));
        }
    }
    let dhcp = u.addressing == Addressing::Dhcp;
    if u.dns.is_empty() {
        if dhcp {
            v.push((None, "udp", None, 53, "DNS (servers from DHCP)".into()));
            v.push((None, "tcp", None, 53, "DNS over TCP (servers from DHCP)".into()));
        }
    } else {
        for s in &u.dns {
            v.push((Some(*s), "udp", None, 53, format!("DNS {s}")));
            v.push((Some(*s), "tcp", None, 53, format!("DNS over TCP {s}")));
        }
    }
    if u.ntp.is_empty() {
        if dhcp {
            v.push((None, "udp", None, 123, "NTP (servers from DHCP)".into()));
        }
    } else {
        for s in &u.ntp {
            v.push((Some(*s), "udp", None, 123, format!("NTP {s}")));
        }
    }
    if let Some(s) = u.syslog {
        let ip = match s.addr.ip() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        };
        v.push((
            ip,
            s.protocol.as_str(),
            None,
            s.addr.port(),
            format!("remote syslog {} {}", s.protocol.as_str(), s.addr),
        ));
    }
    if dhcp {
        v.push((None, "udp", Some(68), 67, "DHCP client renewals".into()));
    }
    v
}

fn outbound_summary(cfg: &Config, u: &UplinkInterface) -> String {
    outbound(cfg, u).into_iter().map(|(.., what)| what).collect::<Vec<_>>().join("; ")
}

fn output_rules(d: &mut Doc, cfg: &Config, u: &UplinkInterface) {
    for (dst, proto, sport, dport, what) in outbound(cfg, u) {
        d.rule(
            "OUTPUT",
            Rule {
                dst,
                oif: Some(&u.interface),
                proto: Some(proto),
                sport,
                dport: Some(dport),
                comment: format!("uplink {}: {what}", u.interface),
                target: "ACCEPT".into(),
                ..Rule::default()
            },
        );
    }
}

/// Anti-spoofing: on an instrument's port only the instrument's own address may send.
fn spoof_rules(d: &mut Doc, chain: &str, n: usize, inst: &InstrumentConfig, p: &PortConfig, log_rate: u32) {
    let comment = format!("{}: spoofed source (only {} may send on {})", inst.serial, p.address, p.interface);
    d.rule(
        chain,
        Rule {
            not_src: true,
            src: Some(p.address),
            matches: vec![limit(log_rate, log_rate.min(100))],
            comment: format!("log {comment}"),
            target: format!("LOG --log-prefix \"{LOG_PREFIX} spoof port{n}: \""),
            ..Rule::default()
        },
    );
    d.rule(chain, Rule { not_src: true, src: Some(p.address), comment, target: "DROP".into(), ..Rule::default() });
}

fn log_drop(d: &mut Doc, chain: &str, prefix: &str, comment: &str, cfg: &Config) {
    let rate = cfg.firewall.log_drops_per_minute;
    d.rule(
        chain,
        Rule {
            matches: vec![limit(rate, rate.min(100))],
            comment: format!("{comment} (at most {rate}/min)"),
            target: format!("LOG --log-prefix \"{prefix}\""),
            ..Rule::default()
        },
    );
}

fn ipv6(cfg: &Config) -> String {
    let mut d = Doc { out: String::new() };
    d.note(&format!("rapbox firewall policy (IPv6), generated by rapd from {}", cfg.path.display()));
    d.note("Applied as one ip6tables-restore transaction and restored by rapd when changed: do not edit by hand.");
    d.note("The box speaks IPv4 only: IPv6 is closed on every interface except loopback.");
    d.line("*filter");
    d.line(":INPUT DROP [0:0]");
    d.line(":FORWARD DROP [0:0]");
    d.line(":OUTPUT DROP [0:0]");
    d.line("-A INPUT -i lo -m comment --comment \"loopback: local services\" -j ACCEPT");
    d.line("-A OUTPUT -o lo -m comment --comment \"loopback: local services\" -j ACCEPT");
    d.line("COMMIT");
    d.out
}

/// The `limit` match as `iptables-save` prints it: the rate in the largest unit that
/// represents it (libxt_limit's `print_rate`), the burst only when it is not the default 5.
pub(crate) fn limit(per_minute: u32, burst: u32) -> String {
    const SCALE: u64 = 10_000;
    let rates: [(&str, u64); 4] =
        [("day", SCALE * 86_400), ("hour", SCALE * 3_600), ("min", SCALE * 60), ("sec", SCALE)];
    let period = SCALE * 60 / u64::from(per_minute.max(1));
    let mut i = 1;
    while i < rates.len() {
        let m = rates[i].1;
        if period > m || m / period < m % period {
            break;
        }
        i += 1;
    }
    let (unit, mult) = rates[i - 1];
    let mut s = format!("-m limit --limit {}/{unit}", mult / period);
    if burst != 5 {
        let _ = write!(s, " --limit-burst {burst}");
    }
    s
}

/// Text that is safe inside a quoted rule comment and a `#` line: printable ASCII
/// without quotes or backslashes (anything else becomes `_`), at most 200 bytes.
fn text_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\'' | '`') || c == ' ' { c } else { '_' })
        .take(200)
        .collect()
}

/// A comment argument quoted the way `iptables-save` prints it.
fn quote(s: &str) -> String {
    let t = text_safe(s);
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        t
    } else {
        format!("\"{t}\"")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CFG: &str = r#"
[queue]
path = "/data/q.db"
[uplink]
url = "https://dc.example.net/api/v1/batches"
ca = "/c/ca.pem"
cert = "/c/box.pem"
key = "/c/box.key"
[network.uplink]
interface = "eth0"
addressing = "static"
address = "192.0.2.10/24"
dns = ["192.0.2.53"]
ntp = ["192.0.2.123"]
syslog = "192.0.2.50:6514"
[firewall]
enabled = true
[[instrument]]
serial = "A-1"
model = "m"
interface = "eth1"
box_address = "10.10.1.1/24"
address = "10.10.1.2"
agent_port = 7300
[instrument.lis]
enabled = LIS
instrument_port = 5000
host = "192.0.2.40"
port = 5001
[[instrument]]
serial = "B-2"
interface = "eth2"
box_address = "10.10.2.1/24"
address = "10.10.2.2"
agent_port = 7301
"#;

    fn rules(lis: bool) -> Ruleset {
        let text = CFG.replace("LIS", if lis { "true" } else { "false" });
        policy(&Config::parse(Path::new("/etc/rapbox/rapd.toml"), &text).unwrap())
    }

    /// (table, chain, rule) of every `-A` line.
    fn parsed(doc: &str) -> Vec<(String, String, String)> {
        let mut table = String::new();
        let mut out = Vec::new();
        for l in doc.lines() {
            if let Some(t) = l.strip_prefix('*') {
                table = t.into();
            } else if let Some(r) = l.strip_prefix("-A ") {
                let chain = r.split(' ').next().unwrap().to_owned();
                out.push((table.clone(), chain, l.to_owned()));
            }
        }
        out
    }

    fn chain<'a>(all: &'a [(String, String, String)], table: &str, chain: &str) -> Vec<&'a str> {
        all.iter().filter(|(t, c, _)| t == table && c == chain).map(|(.., r)| r.as_str()).collect()
    }

    /// The filter chains a packet can traverse from a built-in chain.
    fn reachable(all: &[(String, String, String)], from: &str) -> Vec<String> {
        let mut seen = vec![from.to_owned()];
        let mut i = 0;
        while i < seen.len() {
            for r in chain(all, "filter", &seen[i].clone()) {
                let target = r.split(" -j ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
                if target.starts_with("rap-") && !seen.contains(&target) {
                    seen.push(target);
                }
            }
            i += 1;
        }
        seen
    }

    fn accepts(all: &[(String, String, String)], from: &str) -> Vec<String> {
        reachable(all, from)
            .iter()
            .flat_map(|c| chain(all, "filter", c))
            .filter(|r| r.ends_with("-j ACCEPT"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn default_drop_on_every_filter_chain_in_both_families() {
        for rs in [rules(true), rules(false)] {
            for doc in [&rs.ipv4, &rs.ipv6] {
                for c in ["INPUT", "FORWARD", "OUTPUT"] {
                    assert!(doc.contains(&format!("\n:{c} DROP [0:0]\n")), "{c} policy:\n{doc}");
                }
            }
            // The last rule of each built-in chain logs and drops what nothing accepted.
            let all = parsed(&rs.ipv4);
            for (c, drop) in [("INPUT", DROP_IN), ("FORWARD", DROP_FWD), ("OUTPUT", DROP_OUT)] {
                assert!(chain(&all, "filter", c).last().unwrap().ends_with(&format!("-j {drop}")));
                assert!(chain(&all, "filter", drop).last().unwrap().ends_with("-j DROP"));
            }
            let v6 = parsed(&rs.ipv6);
            assert_eq!(v6.len(), 2, "IPv6: loopback only");
            assert!(v6.iter().all(|(.., r)| r.contains(" -i lo ") || r.contains(" -o lo ")));
        }
    }

    #[test]
    fn instruments_reach_only_their_own_agent_port() {
        let all = parsed(&rules(false).ipv4);
        let mut new_accepts: Vec<String> =
            accepts(&all, "INPUT").into_iter().filter(|r| r.contains("--ctstate NEW")).collect();
        new_accepts.sort();
        assert_eq!(new_accepts.len(), 2, "{new_accepts:#?}");
        assert!(new_accepts[0].starts_with("-A rap-port0-in -d 10.10.1.1/32 -p tcp -m tcp --dport 7300 "));
        assert!(new_accepts[1].starts_with("-A rap-port1-in -d 10.10.2.1/32 -p tcp -m tcp --dport 7301 "));
        // Each port chain is entered from its own interface only.
        assert_eq!(chain(&all, "filter", "INPUT").iter().filter(|r| r.ends_with("-j rap-port0-in")).count(), 1);
        assert!(chain(&all, "filter", "INPUT")
            .iter()
            .any(|r| r.starts_with("-A INPUT -i eth1 ") && r.ends_with("-j rap-port0-in")));
        // Every other accept on the input path is loopback or an answer.
        for r in accepts(&all, "INPUT").iter().filter(|r| !r.contains("--ctstate NEW")) {
            assert!(r.contains(" -i lo ") || r.contains("--ctstate RELATED,ESTABLISHED"), "{r}");
        }
    }

    #[test]
    fn anti_spoofing_comes_first_on_every_port_chain() {
        let all = parsed(&rules(true).ipv4);
        for (c, addr) in [("rap-port0-in", "10.10.1.2"), ("rap-port0-fwd", "10.10.1.2"), ("rap-port1-in", "10.10.2.2")]
        {
            let r = chain(&all, "filter", c);
            assert!(
                r[0].starts_with(&format!("-A {c} ! -s {addr}/32 -m limit ")) && r[0].contains("-j LOG"),
                "{}",
                r[0]
            );
            assert!(r[1].starts_with(&format!("-A {c} ! -s {addr}/32 ")) && r[1].ends_with("-j DROP"), "{}", r[1]);
        }
    }

    #[test]
    fn new_connections_are_rate_limited_and_drops_logged_with_a_prefix() {
        let all = parsed(&rules(true).ipv4);
        let news: Vec<_> = all.iter().filter(|(.., r)| r.contains("--ctstate NEW")).collect();
        assert_eq!(news.len(), 3);
        assert!(news.iter().all(|(.., r)| r.contains(" -m limit --limit 1/sec --limit-burst 20 ")));
        let logs: Vec<_> = all.iter().filter(|(.., r)| r.contains(" -j LOG ")).collect();
        assert_eq!(logs.len(), 3 + 3);
        for (.., r) in logs {
            assert!(r.contains(" -m limit --limit 10/min ") && r.contains("--log-prefix \"rapfw "), "{r}");
        }
    }

    #[test]
    fn nothing_is_forwarded_without_a_lis_forward() {
        let rs = rules(false);
        assert!(!rs.forwarding);
        let all = parsed(&rs.ipv4);
        assert!(accepts(&all, "FORWARD").is_empty(), "{:#?}", accepts(&all, "FORWARD"));
        assert!(all.iter().all(|(t, ..)| t == "filter"), "nat must be empty");
        assert!(rs.ipv4.contains("\n*nat\n"), "nat is present (and empty) so that stale translations are flushed");
    }

    #[test]
    fn the_lis_forward_goes_to_exactly_its_host_and_port() {
        let rs = rules(true);
        assert!(rs.forwarding);
        let all = parsed(&rs.ipv4);
        let fwd = accepts(&all, "FORWARD");
        let new: Vec<_> = fwd.iter().filter(|r| r.contains("--ctstate NEW")).collect();
        assert_eq!(new.len(), 1, "{fwd:#?}");
        assert!(new[0].starts_with("-A rap-port0-fwd -d 192.0.2.40/32 -o eth0 -p tcp -m tcp --dport 5001 "));
        assert!(new[0].contains("--ctorigdst 10.10.1.1 --ctorigdstport 5000"));
        for r in fwd.iter().filter(|r| !r.contains("--ctstate NEW")) {
            assert!(r.contains("--ctstate RELATED,ESTABLISHED"), "{r}");
        }
        assert_eq!(
            chain(&all, "nat", "PREROUTING"),
            vec!["-A PREROUTING -s 10.10.1.2/32 -d 10.10.1.1/32 -i eth1 -p tcp -m tcp --dport 5000 -m comment --comment \"port 0 eth1: A-1 LIS to 192.0.2.40:5001\" -j DNAT --to-destination 192.0.2.40:5001"]
        );
        let post = chain(&all, "nat", "POSTROUTING");
        assert_eq!(post.len(), 1);
        assert!(post[0].ends_with("-j SNAT --to-source 192.0.2.10"));
        // The other instrument is still not forwarded.
        assert!(chain(&all, "filter", "FORWARD")
            .iter()
            .any(|r| r.starts_with("-A FORWARD -i eth2 ") && r.ends_with("-j rap-drop-fwd")));
    }

    #[test]
    fn the_uplink_side_gets_answers_only() {
        let all = parsed(&rules(true).ipv4);
        let up: Vec<_> = reachable(&all, "INPUT")
            .iter()
            .flat_map(|c| chain(&all, "filter", c))
            .filter(|r| r.contains(" -i eth0 "))
            .collect();
        assert_eq!(up.len(), 1);
        assert!(up[0].contains("--ctstate RELATED,ESTABLISHED") && up[0].ends_with("-j ACCEPT"));
    }

    #[test]
    fn output_is_limited_to_what_the_box_needs() {
        let all = parsed(&rules(false).ipv4);
        let out: Vec<_> = chain(&all, "filter", "OUTPUT").into_iter().filter(|r| r.ends_with("-j ACCEPT")).collect();
        let want = [
            "-A OUTPUT -o lo ",
            "-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED ",
            "-A OUTPUT -o eth0 -p tcp -m tcp --dport 443 ",
            "-A OUTPUT -d 192.0.2.53/32 -o eth0 -p udp -m udp --dport 53 ",
            "-A OUTPUT -d 192.0.2.53/32 -o eth0 -p tcp -m tcp --dport 53 ",
            "-A OUTPUT -d 192.0.2.123/32 -o eth0 -p udp -m udp --dport 123 ",
            "-A OUTPUT -d 192.0.2.50/32 -o eth0 -p tcp -m tcp --dport 6514 ",
        ];
        assert_eq!(out.len(), want.len(), "{out:#?}");
        for (r, w) in out.iter().zip(want) {
            assert!(r.starts_with(w), "{r}\nwanted {w}");
        }
    }

    #[test]
    fn configuration_text_cannot_inject_rules() {
        let text = CFG
            .replace("LIS", "false")
            .replace("model = \"m\"", "model = \"x\\\" -j ACCEPT\\n-A INPUT -j ACCEPT\\n#\"");
        let rs = policy(&Config::parse(Path::new("/etc/rapbox/rapd.toml"), &text).unwrap());
        assert_eq!(rs.rule_count(), rules(false).rule_count());
        assert!(!rs.ipv4.lines().any(|l| l == "-A INPUT -j ACCEPT"));
        for l in rs.ipv4.lines() {
            assert!(l.starts_with(['#', '*', ':', '-']) || l == "COMMIT", "{l}");
        }
    }

    #[test]
    fn loopback_instruments_get_no_rules() {
        let text = "[queue]\npath = \"/q\"\n[uplink]\nurl = \"https://dc\"\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n[[instrument]]\nserial = \"L\"\nlisten = \"127.0.0.1:7300\"\n";
        let rs = policy(&Config::parse(Path::new("/x.toml"), text).unwrap());
        assert!(rs.interfaces.is_empty() && !rs.forwarding);
        assert!(!rs.ipv4.contains("rap-port"));
    }

    #[test]
    fn limit_rates_print_like_iptables_save() {
        assert_eq!(limit(60, 20), "-m limit --limit 1/sec --limit-burst 20");
        assert_eq!(limit(10, 5), "-m limit --limit 10/min");
        assert_eq!(limit(120, 5), "-m limit --limit 2/sec");
        assert_eq!(limit(90, 5), "-m limit --limit 90/min");
        assert_eq!(limit(1, 1), "-m limit --limit 1/min --limit-burst 1");
    }
}
