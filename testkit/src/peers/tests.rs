//! Each peer starts, accepts connections and really proxies (or refuses) traffic.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};

use super::*;
use crate::echo::EchoServer;
use crate::pki::{Pki, PkiSpec};
use crate::ports;

const WAIT: Duration = Duration::from_secs(5);

fn echo() -> EchoServer {
    EchoServer::start(ports::unique_443().unwrap()).unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn assert_echoes(s: &mut TcpStream) {
    s.write_all(b"ping through the proxy").unwrap();
    let mut buf = [0u8; 22];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping through the proxy");
}

/// Sends `CONNECT target` (with Basic credentials if given); returns the status code
/// and the stream, positioned after the response head.
fn http_connect(proxy: SocketAddr, target: SocketAddr, auth: Option<(&str, &str)>) -> (u16, TcpStream) {
    let mut s = connect(proxy);
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((u, p)) = auth {
        req.push_str(&format!("Proxy-Authorization: Basic {}\r\n", base64(format!("{u}:{p}").as_bytes())));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, s)
}

fn base64(data: &[u8]) -> String {
    openssl::base64::encode_block(data)
}

/// The three SOCKS5 messages: greeting, optional RFC 1929 username/password,
/// CONNECT to an IPv4 address. Returns the reply code (0 = succeeded).
fn socks5_connect(proxy: SocketAddr, target: SocketAddr, auth: Option<(&str, &str)>) -> Result<TcpStream, String> {
    let mut s = connect(proxy);
    let method = if auth.is_some() { 0x02 } else { 0x00 };
    s.write_all(&[0x05, 0x01, method]).unwrap();
    let mut r = [0u8; 2];
    s.read_exact(&mut r).unwrap();
    if r != [0x05, method] {
        return Err(format!("method refused: {r:?}"));
    }
    if let Some((u, p)) = auth {
        let mut m = vec![0x01, u.len() as u8];
        m.extend_from_slice(u.as_bytes());
        m.push(p.len() as u8);
        m.extend_from_slice(p.as_bytes());
        s.write_all(&m).unwrap();
        s.read_exact(&mut r).map_err(|e| format!("auth reply: {e}"))?;
        if r != [0x01, 0x00] {
            return Err(format!("authentication failed: {r:?}"));
        }
    }
    let IpAddr::V4(ip) = target.ip() else { panic!("IPv4 only") };
    let mut m = vec![0x05, 0x01, 0x00, 0x01];
    m.extend_from_slice(&ip.octets());
    m.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&m).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).map_err(|e| format!("connect reply: {e}"))?;
    if reply[1] != 0 {
        return Err(format!("connect refused, code {}", reply[1]));
    }
    Ok(s)
}

#[test]
fn tinyproxy_connects_to_443() {
    let dir = crate::test_dir!();
    let echo = echo();
    let proxy = Tinyproxy::start(dir.path(), &TinyproxyConfig::default()).unwrap();
    assert!(proxy.url().starts_with("http://127.0.0.1:"));
    let (code, mut s) = http_connect(proxy.addr(), echo.addr(), None);
    assert_eq!(code, 200, "log:\n{}", proxy.log());
    assert_echoes(&mut s);
    assert!(proxy.saw_connect(&echo.addr().to_string()), "log:\n{}", proxy.log());
    assert!(proxy.wait_established(&echo.addr().ip().to_string(), WAIT));
    // Only port 443 may be reached.
    let other = EchoServer::start(ports::unique_addr().unwrap()).unwrap();
    let (code, _) = http_connect(proxy.addr(), other.addr(), None);
    assert_eq!(code, 403);
    assert_eq!(other.accepted(), 0);
}

#[test]
fn tinyproxy_basic_auth() {
    let dir = crate::test_dir!();
    let echo = echo();
    let cfg = TinyproxyConfig { basic_auth: Some(("rapbox".into(), "pr0xy-pass".into())), ..Default::default() };
    let proxy = Tinyproxy::start(dir.path(), &cfg).unwrap();
    assert!(proxy.url().starts_with("http://rapbox:pr0xy-pass@127.0.0.1:"));
    assert_eq!(http_connect(proxy.addr(), echo.addr(), None).0, 407);
    // tinyproxy 1.11 answers wrong credentials with 401, missing ones with 407.
    let wrong = http_connect(proxy.addr(), echo.addr(), Some(("rapbox", "wrong"))).0;
    assert!(wrong == 401 || wrong == 407, "wrong credentials answered {wrong}");
    assert_eq!(echo.accepted(), 0);
    let (code, mut s) = http_connect(proxy.addr(), echo.addr(), Some(("rapbox", "pr0xy-pass")));
    assert_eq!(code, 200);
    assert_echoes(&mut s);
}

/// Pids of the processes of group `pgid` that are not zombies (killed processes stay
/// zombies until their new parent reaps them).
fn live_group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may contain spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[2].parse() == Ok(pgid) && f[0] != "Z" {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn dante_socks5_connects_and_dies_with_its_children() {
    let dir = crate::test_dir!();
    let echo = echo();
    let mut proxy = Dante::start(dir.path(), &DanteConfig::default()).unwrap();
    let mut s = socks5_connect(proxy.addr(), echo.addr(), None).unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_echoes(&mut s);
    assert!(proxy.wait_connect(echo.addr(), WAIT), "log:\n{}", proxy.log());
    let pgid = proxy.peer().pid() as i32;
    proxy.peer_mut().kill();
    std::thread::sleep(Duration::from_millis(200));
    let alive = live_group_members(pgid);
    assert!(alive.is_empty(), "danted processes outlived it: {alive:?}");
}

#[test]
fn dante_username_auth() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: dante's username method needs a system account (root)");
        return;
    }
    let dir = crate::test_dir!();
    let echo = echo();
    let cfg = DanteConfig { auth: Some(("rapbox-socks".into(), "s0cks-pass".into())), ..Default::default() };
    let proxy = Dante::start(dir.path(), &cfg).unwrap();
    assert!(proxy.url().starts_with("socks5://rapbox-socks:s0cks-pass@127.0.0.1:"));
    let refused = socks5_connect(proxy.addr(), echo.addr(), Some(("rapbox-socks", "wrong")));
    assert!(refused.is_err());
    assert!(socks5_connect(proxy.addr(), echo.addr(), None).is_err(), "no-auth method accepted");
    assert_eq!(echo.accepted(), 0);
    let mut s = socks5_connect(proxy.addr(), echo.addr(), Some(("rapbox-socks", "s0cks-pass"))).unwrap();
    assert_echoes(&mut s);
    assert!(proxy.saw_auth_failure());
}

fn tls_client(
    ca: &Path,
    addr: SocketAddr,
    host: &str,
    restrict: impl FnOnce(&mut openssl::ssl::SslConnectorBuilder),
) -> Result<(), String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.set_min_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    restrict(&mut b);
    let tcp = connect(addr);
    let mut tls = b.build().connect(host, tcp).map_err(|e| e.to_string())?;
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())
}

fn pki(dir: &crate::TestDir, ip: IpAddr) -> Pki {
    Pki::generate(&dir.join("pki"), &PkiSpec::new(&["dc.rapbox.test"], &[ip], "BOX-0001")).unwrap()
}

#[test]
fn s_server_records_application_data() {
    let dir = crate::test_dir!();
    let addr = ports::unique_443().unwrap();
    let pki = pki(&dir, addr.ip());
    let cfg = TlsServerConfig::new(addr, &pki.server.cert, &pki.server.key).require_client_cert(&pki.ca.cert);
    let server = TlsServer::start(dir.path(), &cfg).unwrap();
    // Without a client certificate the handshake is refused: nothing arrives.
    let _ = tls_client(&pki.ca.cert, addr, "dc.rapbox.test", |_| {});
    std::thread::sleep(Duration::from_millis(200));
    assert!(!server.received_any());
    tls_client(&pki.ca.cert, addr, "dc.rapbox.test", |b| {
        b.set_certificate_chain_file(&pki.client.cert).unwrap();
        b.set_private_key_file(&pki.client.key, openssl::ssl::SslFiletype::PEM).unwrap();
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert!(server.wait_received(b"GET / HTTP/1.1", WAIT), "log:\n{}", server.log());
}

#[test]
fn s_server_negative_configurations_receive_nothing() {
    let dir = crate::test_dir!();
    let ip = ports::unique_ip().unwrap();
    let pki = pki(&dir, IpAddr::V4(ip));
    let cases: [(&str, &str, TlsServerConfig); 3] = [
        (
            "tls1.1 only",
            "alert protocol version",
            TlsServerConfig::new(ports::unique_443().unwrap(), &pki.server.cert, &pki.server.key).tls11_only(),
        ),
        (
            "chacha20 only",
            "alert handshake failure",
            TlsServerConfig::new(ports::unique_443().unwrap(), &pki.server.cert, &pki.server.key).chacha20_only(),
        ),
        (
            "expired certificate",
            "certificate has expired",
            TlsServerConfig::new(ports::unique_443().unwrap(), &pki.expired_server.cert, &pki.expired_server.key),
        ),
    ];
    for (what, reason, cfg) in cases {
        let server = TlsServer::start(dir.path(), &cfg).unwrap();
        let res = tls_client(&pki.ca.cert, server.addr(), "dc.rapbox.test", |b| {
            // FIPS-approved suites only, as rapd offers.
            b.set_cipher_list("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384").unwrap();
            b.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384").unwrap();
        });
        let err = res.expect_err(what);
        assert!(err.contains(reason), "{what}: {err}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!server.received_any(), "{what}: application data arrived");
        // The same server does accept a client that allows what it offers (the
        // configuration is what makes it fail, not a broken server).
        if what == "chacha20 only" {
            tls_client(&pki.ca.cert, server.addr(), "dc.rapbox.test", |_| {}).unwrap();
            assert!(server.wait_received(b"GET /", WAIT));
        }
    }
}

#[test]
fn a_peer_that_fails_reports_its_log() {
    let dir = crate::test_dir!();
    let addr = ports::unique_addr().unwrap();
    let mut command = Command::new("sh");
    command.args(["-c", "echo 'line 3: unknown directive Lisen' >&2; exit 3"]);
    let spec = |command| PeerSpec {
        name: "broken".into(),
        command,
        ready_addr: addr,
        log: dir.join("broken.log"),
        stdout: None,
        ready_timeout: Duration::from_secs(5),
    };
    let err = Peer::spawn(spec(command)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PeerError::Exited { .. }), "{text}");
    assert!(text.contains("line 3: unknown directive Lisen") && text.contains("broken.log"), "{text}");
    let mut command = Command::new("sleep");
    command.arg("30");
    let err = Peer::spawn(PeerSpec { ready_timeout: Duration::from_millis(300), ..spec(command) }).unwrap_err();
    assert!(matches!(err, PeerError::NotReady { .. }), "{err}");
    assert!(err.to_string().contains("did not accept connections"), "{err}");
}
