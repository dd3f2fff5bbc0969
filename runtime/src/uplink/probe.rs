//! `rapctl uplink test`: the uplink's way to the data center, one step at a time — DNS,
//! TCP, the proxy (CONNECT or SOCKS5) when one is configured, the TLS handshake with
//! rapd's own connector (FIPS provider, the provisioned CA, TLS 1.2+, AES-GCM, NIST
//! curves) and the data center's acceptance of the box certificate. Each step that
//! fails says what failed and what usually causes it, in plain words, and the steps after
//! it are skipped.
//!
//! It runs inside rapd (asked over the control socket), so it uses exactly the
//! configuration, TLS settings and FIPS state the uplink uses; it sends no batch.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, HandshakeError, SslStream};
use serde::{Deserialize, Serialize};

use crate::config::{ProxyKind, UplinkConfig};
use crate::tls;

/// The state of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Ok,
    Failed,
    Skipped,
}

/// One step of the test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// `dns`, `tcp`, `proxy`, `tls`, `mtls`.
    pub step: String,
    pub state: StepState,
    /// What was found (addresses, protocol, certificate, HTTP status) or what went wrong.
    pub detail: String,
    /// For a failed step: what usually causes it and what to check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
    pub ms: u64,
}

/// The whole test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UplinkTest {
    pub url: String,
    /// The proxy, credentials hidden; None when direct.
    pub proxy: Option<String>,
    pub passed: bool,
    pub steps: Vec<Step>,
}

struct Failed {
    detail: String,
    diagnosis: String,
}

fn failed(detail: impl Into<String>, diagnosis: impl Into<String>) -> Failed {
    Failed { detail: detail.into(), diagnosis: diagnosis.into() }
}

/// Runs the test against the data center of `cfg`.
pub fn run(cfg: &UplinkConfig) -> UplinkTest {
    let mut t = Runner { steps: Vec::new(), stopped: false };
    let dc_host = cfg.url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let dc_port = cfg.url.port_or_known_default().unwrap_or(443);
    let proxy = cfg.proxy.as_ref().and_then(|p| url::Url::parse(&p.url).ok().map(|u| (p.kind, u)));
    let (host, port, what) = match &proxy {
        Some((kind, u)) => (
            u.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned(),
            u.port().unwrap_or(0),
            if *kind == ProxyKind::Socks5 { "the SOCKS5 proxy" } else { "the HTTP proxy" },
        ),
        None => (dc_host.clone(), dc_port, "the data center"),
    };

    let addrs = t.step("dns", || resolve(&host, port, what)).unwrap_or_default();
    let tcp = t.step("tcp", || connect(&addrs, port, what, cfg.connect_timeout, cfg.io_timeout));
    let tunnel = match (&proxy, tcp) {
        (None, tcp) => tcp,
        (Some((kind, u)), Some(s)) => t.step("proxy", || match kind {
            ProxyKind::Connect => http_connect(s, u, &dc_host, dc_port),
            ProxyKind::Socks5 => socks5(s, u, &dc_host, dc_port),
        }),
        (Some(_), None) => {
            t.skip("proxy");
            None
        }
    };
    let tls = match tunnel {
        Some(s) => t.step("tls", || handshake(cfg, s, &dc_host)),
        None => {
            t.skip("tls");
            None
        }
    };
    match tls {
        Some(s) => {
            t.step("mtls", || acceptance(s, cfg, &dc_host));
        }
        None => t.skip("mtls"),
    }
    let passed = t.steps.iter().all(|s| s.state == StepState::Ok);
    UplinkTest {
        url: cfg.url.to_string(),
        proxy: cfg.proxy.as_ref().map(|p| super::redact(&p.url)),
        passed,
        steps: t.steps,
    }
}

struct Runner {
    steps: Vec<Step>,
    stopped: bool,
}

impl Runner {
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<(T, String), Failed>) -> Option<T> {
        if self.stopped {
            self.skip(name);
            return None;
        }
        let started = Instant::now();
        let r = f();
        let ms = started.elapsed().as_millis() as u64;
        match r {
            Ok((v, detail)) => {
                self.steps.push(Step { step: name.into(), state: StepState::Ok, detail, diagnosis: None, ms });
                Some(v)
            }
            Err(e) => {
                self.stopped = true;
                self.steps.push(Step {
                    step: name.into(),
                    state: StepState::Failed,
                    detail: e.detail,
                    diagnosis: Some(e.diagnosis),
                    ms,
                });
                None
            }
        }
    }

    fn skip(&mut self, name: &str) {
        self.steps.push(Step {
            step: name.into(),
            state: StepState::Skipped,
            detail: "not tried: an earlier step failed".into(),
            diagnosis: None,
            ms: 0,
        });
    }
}

fn resolve(host: &str, port: u16, what: &str) -> Result<(Vec<SocketAddr>, String), Failed> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![SocketAddr::new(ip, port)], format!("{host} is an address: no lookup needed")));
    }
    match (host, port).to_socket_addrs() {
        Ok(a) => {
            let addrs: Vec<SocketAddr> = a.collect();
            if addrs.is_empty() {
                return Err(failed(
                    format!("{host} has no address"),
                    format!("the name of {what} resolves to nothing: check the name and the DNS servers of the uplink"),
                ));
            }
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            Ok((addrs, format!("{host} is {}", list.join(", "))))
        }
        Err(e) => Err(failed(
            format!("cannot resolve {host}: {e}"),
            format!(
                "the name of {what} does not resolve: check the DNS servers of the uplink (DHCP or [network.uplink] \
                 dns), that the hospital's DNS knows the name, and the spelling in the configuration"
            ),
        )),
    }
}

fn connect(
    addrs: &[SocketAddr],
    port: u16,
    what: &str,
    timeout: Duration,
    io: Duration,
) -> Result<(TcpStream, String), Failed> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(io));
                let _ = s.set_write_timeout(Some(io));
                let _ = s.set_nodelay(true);
                let local = s.local_addr().map(|l| format!(" from {}", l.ip())).unwrap_or_default();
                return Ok((s, format!("connected to {a}{local}")));
            }
            Err(e) => last = Some((a, e)),
        }
    }
    let Some((a, e)) = last else {
        return Err(failed("no address to connect to", format!("the name of {what} gave no address")));
    };
    use std::io::ErrorKind as K;
    let why = match e.kind() {
        K::ConnectionRefused => format!(
            "{a} answered but nothing listens on port {port}: {what} is down or the port in the configuration is wrong"
        ),
        K::TimedOut | K::WouldBlock => format!(
            "no answer from {a} within {} s: a firewall on the way drops the traffic (the hospital must allow \
             outbound TCP {port} to it), or the address is wrong",
            timeout.as_secs_f32()
        ),
        _ if matches!(e.raw_os_error(), Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)) => format!(
            "no route to {a}: the uplink has no address or gateway for it (cable, DHCP, static address and gateway)"
        ),
        _ => format!("cannot reach {a}: check the uplink cable, address and gateway"),
    };
    Err(failed(format!("connection to {a} failed: {e}"), why))
}

/// Reads the proxy URL's credentials (percent-decoded).
fn credentials(u: &url::Url) -> Option<(String, String)> {
    if u.username().is_empty() {
        return None;
    }
    let dec = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((dec(u.username()).unwrap_or_default(), dec(u.password().unwrap_or("")).unwrap_or_default()))
}

fn http_connect(mut s: TcpStream, proxy: &url::Url, host: &str, port: u16) -> Result<(TcpStream, String), Failed> {
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((u, p)) = credentials(proxy) {
        req +=
            &format!("Proxy-Authorization: Basic {}\r\n", openssl::base64::encode_block(format!("{u}:{p}").as_bytes()));
    }
    req += "\r\n";
    let io = |e: std::io::Error| {
        failed(
            format!("CONNECT {authority}: {e}"),
            "the proxy closed the connection or did not answer: is it an HTTP proxy that allows CONNECT?",
        )
    };
    s.write_all(req.as_bytes()).map_err(io)?;
    // Read the answer head byte by byte: what follows belongs to the tunnel.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(failed("the proxy's answer head is longer than 16 KiB", "this is not an HTTP proxy"));
        }
        match s.read(&mut b) {
            Ok(0) => return Err(io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => head.push(b[0]),
            Err(e) => return Err(io(e)),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("").trim().to_owned();
    let code: u16 = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let detail = format!("CONNECT {authority}: {status_line}");
    match code {
        200..=299 => Ok((s, detail)),
        407 => Err(failed(
            detail,
            if credentials(proxy).is_some() {
                "the proxy refused the user name and password in the proxy URL"
            } else {
                "the proxy wants a user name and password: put them in the proxy URL (http://user:pass@host:port)"
            },
        )),
        403 | 405 => Err(failed(
            detail,
            format!("the proxy does not allow tunnels to {authority}: its administrator must allow CONNECT to it"),
        )),
        502..=504 => Err(failed(
            detail,
            format!("the proxy could not reach {authority}: the hospital's outbound path or DNS from the proxy"),
        )),
        0 => Err(failed(detail, "the answer is not HTTP: is this an HTTP proxy (not SOCKS5)?")),
        _ => Err(failed(detail, "the proxy refused the tunnel")),
    }
}

fn socks5(mut s: TcpStream, proxy: &url::Url, host: &str, port: u16) -> Result<(TcpStream, String), Failed> {
    let creds = credentials(proxy);
    let io = |e: std::io::Error| {
        failed(format!("SOCKS5: {e}"), "the proxy closed the connection or did not answer: is it a SOCKS5 proxy?")
    };
    let methods: &[u8] = if creds.is_some() { &[5, 2, 0, 2] } else { &[5, 1, 0] };
    s.write_all(methods).map_err(io)?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r).map_err(io)?;
    if r[0] != 5 {
        return Err(failed(format!("SOCKS5: answer version {}", r[0]), "this is not a SOCKS5 proxy"));
    }
    match (r[1], &creds) {
        (0, _) => {}
        (2, Some((u, p))) => {
            let mut m = vec![1, u.len().min(255) as u8];
            m.extend_from_slice(&u.as_bytes()[..u.len().min(255)]);
            m.push(p.len().min(255) as u8);
            m.extend_from_slice(&p.as_bytes()[..p.len().min(255)]);
            s.write_all(&m).map_err(io)?;
            s.read_exact(&mut r).map_err(io)?;
            if r[1] != 0 {
                return Err(failed(
                    "SOCKS5: user name and password refused",
                    "the proxy refused the user name and password in the proxy URL",
                ));
            }
        }
        (2, None) => {
            return Err(failed(
                "SOCKS5: the proxy requires a user name and password",
                "put them in the proxy URL (socks5://user:pass@host:port)",
            ))
        }
        (m, _) => {
            return Err(failed(
                format!("SOCKS5: the proxy accepts none of our authentication methods (answered {m:#04x})"),
                "the proxy requires an authentication method rapd does not offer (only none and user/password)",
            ))
        }
    }
    let mut req = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.octets());
        }
        Ok(IpAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.octets());
        }
        Err(_) => {
            req.push(3);
            req.push(host.len().min(255) as u8);
            req.extend_from_slice(&host.as_bytes()[..host.len().min(255)]);
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).map_err(io)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).map_err(io)?;
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).map_err(io)?;
            l[0] as usize + 2
        }
        _ => 0,
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).map_err(io)?;
    let target = format!("{host}:{port}");
    let reason = match head[1] {
        0 => return Ok((s, format!("SOCKS5 tunnel to {target} open"))),
        1 => "general failure",
        2 => "not allowed by the proxy's rules",
        3 => "network unreachable from the proxy",
        4 => "host unreachable from the proxy",
        5 => "connection refused by the data center",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown error",
    };
    let diagnosis = match head[1] {
        2 => format!("the proxy's administrator must allow connections to {target}"),
        3 | 4 | 6 => format!("the proxy cannot reach {target}: the hospital's outbound path from the proxy"),
        5 => format!("nothing listens at {target}: the data center is down or the URL's port is wrong"),
        _ => "the proxy refused the tunnel".to_owned(),
    };
    Err(failed(format!("SOCKS5 CONNECT {target}: {reason} (code {})", head[1]), diagnosis))
}

fn handshake(cfg: &UplinkConfig, s: TcpStream, host: &str) -> Result<(SslStream<TcpStream>, String), Failed> {
    let conn = tls::connector(&cfg.ca, &cfg.cert, &cfg.key).map_err(|e| {
        failed(
            e.to_string(),
            "the box's TLS identity cannot be loaded: provision the CA, the box certificate and its key again",
        )
    })?;
    let c = conn.configure().map_err(|e| failed(format!("TLS setup: {e}"), "OpenSSL refused the TLS settings"))?;
    match c.connect(host, s) {
        Ok(tls) => {
            let ssl = tls.ssl();
            let peer = ssl
                .peer_certificate()
                .map(|c| format!(", server certificate {} (expires {})", name(c.subject_name()), c.not_after()))
                .unwrap_or_default();
            let detail =
                format!("{} {}{peer}", ssl.version_str(), ssl.current_cipher().map(|c| c.name()).unwrap_or("?"));
            Ok((tls, detail))
        }
        Err(HandshakeError::Failure(mid)) => {
            let verify = mid.ssl().verify_result();
            let peer = mid.ssl().peer_certificate();
            if verify.as_raw() != 0 {
                let who = peer
                    .as_ref()
                    .map(|c| format!(" ({} issued by {})", name(c.subject_name()), name(c.issuer_name())))
                    .unwrap_or_default();
                let diagnosis = match verify.as_raw() {
                    // X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED
                    9 | 10 => "the server certificate is outside its validity: check the box clock (NTP) first".into(),
                    // X509_V_ERR_HOSTNAME_MISMATCH
                    62 => format!("the server certificate is not for {host}: wrong URL, or a different server answers"),
                    _ => "the server's certificate is not signed by the provisioned CA: a TLS-inspecting proxy or \
                          firewall in the hospital, a wrong URL, or the wrong CA provisioned"
                        .into(),
                };
                Err(failed(format!("server certificate refused: {}{who}", verify.error_string()), diagnosis))
            } else {
                Err(failed(
                    format!("TLS handshake with {host} failed: {}", mid.error()),
                    "the server offers no TLS 1.2+ with AES-GCM and NIST curves (what FIPS mode allows), or the \
                     connection is not TLS (a proxy's error page, a different service on the port)",
                ))
            }
        }
        Err(HandshakeError::SetupFailure(e)) => {
            Err(failed(format!("TLS setup for {host}: {e}"), "OpenSSL refused the TLS settings"))
        }
        Err(HandshakeError::WouldBlock(_)) => Err(failed(
            format!("TLS handshake with {host} timed out"),
            "the server accepted TCP but does not speak TLS in time",
        )),
    }
}

fn acceptance(mut s: SslStream<TcpStream>, cfg: &UplinkConfig, host: &str) -> Result<((), String), Failed> {
    let path = cfg.url.path();
    let authority = cfg.url.host_str().unwrap_or(host);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: rapd/{} (uplink test)\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let refused = |detail: String| {
        failed(
            detail,
            "the data center does not accept the box certificate: it is not issued by the data center's CA, it \
             expired or was revoked, or the box is not registered: provision the box again",
        )
    };
    let tls_err = |e: openssl::ssl::Error| {
        if e.code() == ErrorCode::SSL {
            refused(format!("the data center ended the TLS session: {e}"))
        } else {
            failed(format!("no answer from the data center: {e}"), "the data center closed the connection")
        }
    };
    s.ssl_write(req.as_bytes()).map_err(tls_err)?;
    let mut head = String::new();
    let mut r = BufReader::new(Reader(&mut s));
    r.read_line(&mut head).map_err(|e| match e.into_inner() {
        Some(inner) => match inner.downcast::<openssl::ssl::Error>() {
            Ok(e) => tls_err(*e),
            Err(other) => {
                failed(format!("no answer from the data center: {other}"), "the data center closed the connection")
            }
        },
        None => failed("no answer from the data center", "the data center closed the connection"),
    })?;
    let status = head.trim().to_owned();
    if status.is_empty() {
        return Err(refused("the data center closed the connection without an answer".into()));
    }
    let code: u16 = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut body = String::new();
    let _ = r.take(4096).read_to_string(&mut body);
    // nginx answers a missing or refused client certificate with 400 and says so.
    if code == 400 && (body.contains("SSL certificate") || body.contains("SSL Certificate")) {
        let why = if body.contains("No required SSL certificate") {
            "the data center saw no box certificate"
        } else {
            "the data center refused the box certificate"
        };
        return Err(refused(format!("{why} ({status})")));
    }
    if code == 0 {
        return Err(failed(format!("the answer is not HTTP: {status}"), "a different service answers at the URL"));
    }
    Ok(((), format!("box certificate accepted (GET {path}: {status})")))
}

/// `SslStream::read` with the TLS error kept as the I/O error's inner error.
struct Reader<'a>(&'a mut SslStream<TcpStream>);

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.ssl_read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(0),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// A certificate name as `CN=…, O=…`.
pub fn name(n: &openssl::x509::X509NameRef) -> String {
    n.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let val = String::from_utf8_lossy(e.data().as_slice()).into_owned();
            format!("{key}={val}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_credentials_are_percent_decoded() {
        let u = url::Url::parse("http://al%40ce:p%3Ass@10.0.0.1:3128").unwrap();
        assert_eq!(credentials(&u), Some(("al@ce".into(), "p:ss".into())));
        assert_eq!(credentials(&url::Url::parse("http://10.0.0.1:3128").unwrap()), None);
    }

    #[test]
    fn a_refused_port_is_named_and_the_rest_skipped() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let cfg = crate::config::Config::parse(
            std::path::Path::new("/t.toml"),
            &format!(
                "[queue]\npath = \"/tmp/q.db\"\n[uplink]\nurl = \"https://127.0.0.1:{port}/api/v1/batches\"\nallowed_ports = [{port}]\nca = \"/nonexistent/ca\"\ncert = \"/nonexistent/c\"\nkey = \"/nonexistent/k\"\n"
            ),
        )
        .unwrap();
        let t = run(&cfg.uplink);
        assert!(!t.passed);
        let states: Vec<_> = t.steps.iter().map(|s| (s.step.as_str(), s.state)).collect();
        assert_eq!(
            states,
            [
                ("dns", StepState::Ok),
                ("tcp", StepState::Failed),
                ("tls", StepState::Skipped),
                ("mtls", StepState::Skipped)
            ]
        );
        let d = t.steps[1].diagnosis.as_deref().unwrap();
        assert!(d.contains(&format!("nothing listens on port {port}")), "{d}");
    }
}
