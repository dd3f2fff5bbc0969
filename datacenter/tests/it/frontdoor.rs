//! Real nginx with the rendered config in front of a real backend, mutual TLS with a
//! throwaway PKI. Skipped, with the reason printed, when no nginx binary is installed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use openssl::ssl::{SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslStream, SslVersion};
use rapdc::api;
use rapdc::frontdoor::{self, FrontDoor, Nginx};
use rapwire::batch::{BatchAck, BATCH_ID_HEADER, CONTENT_TYPE};

use crate::pki::{Ca, Files};
use crate::{encode, records, Backend};

/// Backend, nginx and the PKI of one test.
pub(crate) struct Rig {
    pub(crate) backend: Backend,
    pub(crate) nginx: Nginx,
    pub(crate) ca: Ca,
    pub(crate) box1: Files,
    pub(crate) dir: tempfile::TempDir,
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a backend and nginx with `configure` applied to the default front door, or
/// `None` (after printing why) when nginx is not installed.
fn rig(configure: impl FnOnce(FrontDoor) -> FrontDoor) -> Option<Rig> {
    rig_with(Backend::start, |fd, _| configure(fd))
}

/// [`rig`] with a backend of the caller's and a front door configured knowing the test's
/// directory.
pub(crate) fn rig_with(
    backend: impl FnOnce() -> Backend,
    configure: impl FnOnce(FrontDoor, &std::path::Path) -> FrontDoor,
) -> Option<Rig> {
    if frontdoor::nginx_binary().is_none() {
        crate::missing("nginx (install nginx-light): the front door is not tested");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "box-ca");
    let server = ca.server(dir.path());
    let box1 = ca.client(dir.path(), "box-0001");
    let backend = backend();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let fd = configure(
        FrontDoor::new(
            listen,
            &server.cert,
            &server.key,
            &ca.cert_file,
            backend.server.addr().port(),
            dir.path().join("nginx"),
        ),
        dir.path(),
    );
    let nginx = Nginx::start(&fd).unwrap_or_else(|e| panic!("{e}"));
    Some(Rig { backend, nginx, ca, box1, dir })
}

/// A TLS client: trusts `ca`, presents `cert` when given, `tweak` sets versions/ciphers.
pub(crate) fn connect(
    addr: SocketAddr,
    ca: &Ca,
    cert: Option<&Files>,
    tweak: impl FnOnce(&mut SslConnectorBuilder),
) -> Result<SslStream<TcpStream>, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(&ca.cert_file).unwrap();
    if let Some(c) = cert {
        b.set_certificate_file(&c.cert, SslFiletype::PEM).unwrap();
        b.set_private_key_file(&c.key, SslFiletype::PEM).unwrap();
    }
    tweak(&mut b);
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    b.build().connect("localhost", tcp).map_err(|e| format!("handshake: {e}"))
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// One HTTP/1.1 exchange with `Connection: close`.
pub(crate) fn exchange(
    mut s: SslStream<TcpStream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).and_then(|()| s.write_all(body)).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(format!("read: {e}")),
            // nginx may close without close_notify after a complete answer.
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let status =
        head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok(Answer { status, body: body.to_owned() })
}

pub(crate) fn post_batch(
    rig: &Rig,
    cert: Option<&Files>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    let s = connect(rig.nginx.addr(), &rig.ca, cert, |_| {})?;
    let mut headers = vec![("Content-Type", CONTENT_TYPE)];
    headers.extend_from_slice(extra);
    exchange(s, "POST", api::BATCHES_PATH, &headers, body)
}

#[test]
fn mtls_batch_reaches_the_backend_as_the_certificate_cn() {
    let Some(rig) = rig(|fd| fd) else { return };
    let recs = records(1, 100);
    // A box cannot claim another identity by sending the headers itself.
    let spoof = [
        (api::CLIENT_SUBJECT_HEADER, "CN=box-9999,O=rapbox"),
        (api::CLIENT_VERIFY_HEADER, "SUCCESS"),
        (BATCH_ID_HEADER, "00000000000000aa"),
    ];
    let a = post_batch(&rig, Some(&rig.box1), &spoof, &encode(0xaa, 3, &recs)).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let ack: BatchAck = serde_json::from_str(&a.body).unwrap();
    assert_eq!(ack, BatchAck { batch_id: 0xaa, accepted: 100, duplicates: 0 });

    let stats = rig.backend.client.stats().unwrap();
    assert_eq!(stats.boxes.len(), 1, "{stats:?}");
    let bx = stats.for_box("box-0001").unwrap();
    assert_eq!((bx.records, bx.dropped_total), (100, 3));

    // Resent through nginx: same ack, nothing stored twice.
    let a = post_batch(&rig, Some(&rig.box1), &[], &encode(0xaa, 3, &recs)).unwrap();
    assert_eq!(serde_json::from_str::<BatchAck>(&a.body).unwrap(), ack);
    assert_eq!(rig.backend.client.all_reports(None, None).unwrap().len(), 100);

    // Malformed bodies get the backend's JSON error through nginx.
    let a = post_batch(&rig, Some(&rig.box1), &[], b"garbage").unwrap();
    assert_eq!(a.status, 400);
    assert!(a.body.contains("malformed batch"), "{}", a.body);

    // Nothing but the box API is exposed: none of these reach the backend.
    let before = rig.backend.client.requests().unwrap();
    assert_eq!(before.get(api::BATCHES_PATH), 3);
    for (method, path) in [
        ("GET", api::REQUESTS_PATH),
        ("POST", api::RESET_PATH),
        ("POST", api::FAULT_PATH),
        ("GET", api::HEALTH_PATH),
        ("GET", api::STATS_PATH),
        ("GET", api::REPORTS_PATH),
        ("GET", "/"),
    ] {
        let s = connect(rig.nginx.addr(), &rig.ca, Some(&rig.box1), |_| {}).unwrap();
        let a = exchange(s, method, path, &[], b"").unwrap();
        assert_eq!(a.status, 404, "{method} {path}: {}", a.body);
    }
    let after = rig.backend.client.requests().unwrap();
    assert_eq!(after.outside_admin, before.outside_admin, "{before:?} -> {after:?}");
    assert_eq!(after.get(api::REQUESTS_PATH), before.get(api::REQUESTS_PATH) + 1, "only our own query");

    let log = std::fs::read_to_string(rig.dir.path().join("nginx/access.log")).unwrap();
    assert!(log.contains("tls=TLSv1.3/TLS_AES_"), "{log}");
    assert!(log.contains("subject=\"CN=box-0001,O=rapbox\""), "{log}");
}

#[test]
fn unverified_clients_reach_nothing() {
    let Some(rig) = rig(|fd| fd) else { return };
    let body = encode(1, 0, &records(1, 5));
    let rogue_ca = Ca::new(rig.dir.path(), "rogue-ca");
    let rogue = rogue_ca.client(rig.dir.path(), "box-0001");

    let no_cert = post_batch(&rig, None, &[], &body);
    assert!(!matches!(no_cert, Ok(Answer { status: 200, .. })), "no client certificate was accepted");
    let wrong_ca = post_batch(&rig, Some(&rogue), &[], &body);
    assert!(!matches!(wrong_ca, Ok(Answer { status: 200, .. })), "a certificate of another CA was accepted");

    let counts = rig.backend.client.requests().unwrap();
    assert_eq!(counts.outside_admin, 0, "{counts:?}");
    assert!(rig.backend.client.all_reports(None, None).unwrap().is_empty());
}

fn version_and_cipher(s: &SslStream<TcpStream>) -> (String, String) {
    let ssl = s.ssl();
    (ssl.version_str().to_owned(), ssl.current_cipher().map(|c| c.name().to_owned()).unwrap_or_default())
}

#[test]
fn default_front_door_offers_fips_suites_only() {
    let Some(rig) = rig(|fd| fd) else { return };
    let (addr, ca, cert) = (rig.nginx.addr(), &rig.ca, Some(&rig.box1));

    let s = connect(addr, ca, cert, |_| {}).unwrap();
    let (v, c) = version_and_cipher(&s);
    assert_eq!(v, "TLSv1.3");
    assert!(c == "TLS_AES_256_GCM_SHA384" || c == "TLS_AES_128_GCM_SHA256", "{c}");

    let s = connect(addr, ca, cert, |b| b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap()).unwrap();
    let (v, c) = version_and_cipher(&s);
    assert_eq!(v, "TLSv1.2");
    assert!(c.starts_with("ECDHE-ECDSA-AES") && c.contains("GCM"), "{c}");

    let chacha13 = connect(addr, ca, cert, |b| b.set_ciphersuites("TLS_CHACHA20_POLY1305_SHA256").unwrap());
    assert!(chacha13.is_err(), "TLS 1.3 ChaCha20 accepted");
    let chacha12 = connect(addr, ca, cert, |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_cipher_list("ECDHE-ECDSA-CHACHA20-POLY1305").unwrap();
    });
    assert!(chacha12.is_err(), "TLS 1.2 ChaCha20 accepted");
    let cbc12 = connect(addr, ca, cert, |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_cipher_list("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA").unwrap();
    });
    assert!(cbc12.is_err(), "TLS 1.2 CBC suite accepted");
    let tls11 = connect(addr, ca, cert, |b| {
        b.set_min_proto_version(Some(SslVersion::TLS1_1)).unwrap();
        b.set_max_proto_version(Some(SslVersion::TLS1_1)).unwrap();
        b.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
    });
    assert!(tls11.is_err(), "TLS 1.1 accepted");
}

#[test]
fn tls11_only_front_door_speaks_only_tls11() {
    let Some(rig) = rig(FrontDoor::tls11_only) else { return };
    let (addr, ca, cert) = (rig.nginx.addr(), &rig.ca, Some(&rig.box1));
    let s = connect(addr, ca, cert, |b| {
        b.set_min_proto_version(Some(SslVersion::TLS1_1)).unwrap();
        b.set_max_proto_version(Some(SslVersion::TLS1_1)).unwrap();
        b.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
    })
    .unwrap();
    assert_eq!(version_and_cipher(&s).0, "TLSv1.1");
    // The batch endpoint works over it: the refusal must come from the box's side.
    let a = exchange(s, "POST", api::BATCHES_PATH, &[("Content-Type", CONTENT_TYPE)], &encode(1, 0, &records(1, 2)));
    assert_eq!(a.unwrap().status, 200);
    assert!(connect(addr, ca, cert, |_| {}).is_err(), "a TLS 1.2+ client got through");
}

#[test]
fn chacha20_only_front_door_speaks_only_chacha20() {
    let Some(rig) = rig(FrontDoor::chacha20_only) else { return };
    let (addr, ca, cert) = (rig.nginx.addr(), &rig.ca, Some(&rig.box1));
    let s = connect(addr, ca, cert, |_| {}).unwrap();
    assert_eq!(version_and_cipher(&s), ("TLSv1.3".to_owned(), "TLS_CHACHA20_POLY1305_SHA256".to_owned()));
    let s = connect(addr, ca, cert, |b| b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap()).unwrap();
    assert_eq!(version_and_cipher(&s).1, "ECDHE-ECDSA-CHACHA20-POLY1305");
    let aes_only = connect(addr, ca, cert, |b| {
        b.set_ciphersuites("TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256").unwrap();
        b.set_cipher_list("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256").unwrap();
    });
    assert!(aes_only.is_err(), "an AES-GCM-only client got through");
}
