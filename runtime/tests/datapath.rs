//! The data path end to end on loopback: simulated instruments → real rapd (FIPS mode) →
//! real nginx mTLS front door → rapdc. Every test starts its own peers.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::rapd::{audit_queued, depth, Rapd, Spec};
use common::{instrument_addr, wait_for, World, BOX_ID};
use rapsim::raw;
use rapsim::Instrument;
use rapwire::agent::{ErrorCode, Reply};

/// Starts one simulated instrument per serial and waits until all its messages are acked.
fn send_all(instruments: &[(String, SocketAddr)], per: u64, alarm_every: u64, first_id: u64) -> Vec<BTreeSet<u64>> {
    let runs: Vec<_> = instruments
        .iter()
        .map(|(s, a)| {
            Instrument { count: Some(per), alarm_every, first_id, ..Instrument::new(*a, s.clone()) }
                .spawn()
                .expect("simulator")
        })
        .collect();
    runs.into_iter()
        .map(|r| {
            let stats = r.stats().clone();
            let sum = r.join().expect("instrument run");
            assert_eq!(sum.stats.acked, per, "{}: {:?}", sum.serial, sum.stats);
            assert_eq!(sum.stats.rejected, 0, "{}: {:?}", sum.serial, sum.stats);
            stats.acked_ids().iter().collect()
        })
        .collect()
}

fn three_instruments() -> Vec<(String, SocketAddr)> {
    (0..3).map(|i| (format!("INST-{i:04}"), instrument_addr())).collect()
}

/// Ingest while the data center is down, then let it come up: every acknowledged
/// message arrives exactly once, with the right instrument, alarms ahead of routine.
fn delivery_exactly_once_alarms_first(w: &mut World, proxy: Option<String>) -> Rapd {
    let instruments = three_instruments();
    let mut spec = w.rapd_spec();
    spec.instruments = instruments.clone();
    spec.proxy = proxy;
    let rapd = Rapd::start(&spec);
    assert_eq!(rapd.status().fips["passed"], true);
    let per = 2000;
    let acked = send_all(&instruments, per, 10, 1);
    let st = rapd.status();
    let own = audit_queued(&st);
    assert_eq!(depth(&st), 3 * per + own, "everything acknowledged is queued while the data center is down");
    assert_eq!(
        st.queue["depth_by_priority"][0],
        3 * per / 10 + own,
        "alarms (and audit records) are queued at priority 0"
    );

    w.start_nginx();
    rapd.wait_status("queue drained to the data center", Duration::from_secs(90), |s| depth(s) == 0);

    let reports: Vec<_> = w
        .client
        .all_reports(Some(BOX_ID), None)
        .expect("reports")
        .into_iter()
        .filter(|r| !r.instrument.is_empty())
        .collect();
    assert_eq!(reports.len() as u64, 3 * per);
    let mut keys = HashSet::new();
    for r in &reports {
        assert!(keys.insert((r.instrument.clone(), r.msg_id)), "stored twice: {} {}", r.instrument, r.msg_id);
        assert_eq!(r.deliveries, 1, "{} {} delivered {} times", r.instrument, r.msg_id, r.deliveries);
    }
    for ((serial, _), ids) in instruments.iter().zip(&acked) {
        let at_dc: BTreeSet<u64> = reports.iter().filter(|r| &r.instrument == serial).map(|r| r.msg_id).collect();
        assert_eq!(&at_dc, ids, "{serial}: data center holds exactly the acknowledged messages");
    }
    let last_alarm = reports.iter().filter(|r| r.kind == rapwire::Kind::Alarm).map(|r| r.id).max().unwrap();
    let first_status = reports.iter().filter(|r| r.kind == rapwire::Kind::Status).map(|r| r.id).min().unwrap();
    assert!(last_alarm < first_status, "alarms arrive ahead of routine status ({last_alarm} >= {first_status})");
    rapd
}

#[test]
fn direct_delivery_exactly_once_alarms_first() {
    let mut w = World::new("direct");
    let rapd = delivery_exactly_once_alarms_first(&mut w, None);
    let st = rapd.status();
    assert_eq!(st.uplink["records_sent"], 6000 + audit_queued(&st));
    assert!(st.uplink["proxy"].is_null());
}

#[test]
fn connect_proxy_delivery_exactly_once_alarms_first() {
    use rapbox_testkit::peers::{Tinyproxy, TinyproxyConfig};
    let mut w = World::new("connect_proxy");
    let proxy = Tinyproxy::start(
        &w.dir.subdir("tinyproxy").unwrap(),
        &TinyproxyConfig { basic_auth: Some(("rapbox".into(), "pr0xy-pass".into())), ..Default::default() },
    )
    .expect("tinyproxy");
    let rapd = delivery_exactly_once_alarms_first(&mut w, Some(proxy.url()));
    assert!(
        proxy.saw_connect(&format!("{}:443", w.dc_addr.ip())),
        "the uplink went through the proxy:\n{}",
        proxy.log()
    );
    let st = rapd.status();
    let shown = st.uplink["proxy"].as_str().unwrap().to_string();
    assert!(shown.contains("***@") && !shown.contains("pr0xy-pass"), "proxy credentials are never shown: {shown}");
}

#[test]
fn socks5_proxy_delivery_exactly_once_alarms_first() {
    use rapbox_testkit::peers::{Dante, DanteConfig};
    let mut w = World::new("socks5_proxy");
    let proxy = Dante::start(&w.dir.subdir("dante").unwrap(), &DanteConfig::default()).expect("dante");
    delivery_exactly_once_alarms_first(&mut w, Some(proxy.url()));
    assert!(proxy.saw_connect(w.dc_addr), "the uplink went through the SOCKS5 proxy:\n{}", proxy.log());
}

#[test]
fn wrong_proxy_credentials_send_nothing() {
    use rapbox_testkit::peers::{Tinyproxy, TinyproxyConfig};
    let mut w = World::new("proxy_bad_auth");
    w.start_nginx();
    let proxy = Tinyproxy::start(
        &w.dir.subdir("tinyproxy").unwrap(),
        &TinyproxyConfig { basic_auth: Some(("rapbox".into(), "right".into())), ..Default::default() },
    )
    .expect("tinyproxy");
    let inst = vec![("INST-0001".to_string(), instrument_addr())];
    let mut spec = w.rapd_spec();
    spec.instruments = inst.clone();
    spec.proxy = Some(format!("http://rapbox:wrong@{}", proxy.addr()));
    let rapd = Rapd::start(&spec);
    send_all(&inst, 10, 0, 1);
    let st = rapd.wait_status("a proxy refusal", Duration::from_secs(30), |s| {
        s.uplink["consecutive_failures"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(depth(&st), 10 + audit_queued(&st));
    assert_eq!(w.batch_posts(), 0);
}

/// Drives a data center that refuses at the TLS level and proves nothing was sent.
fn refused(name: &str, configure: impl FnOnce(&World) -> rapdc::FrontDoor, expect: &[&str]) {
    let mut w = World::new(name);
    let fd = configure(&w);
    w.start_nginx_with(fd);
    let inst = vec![("INST-0001".to_string(), instrument_addr())];
    let mut spec = w.rapd_spec();
    spec.instruments = inst.clone();
    let rapd = Rapd::start(&spec);
    send_all(&inst, 50, 0, 1);
    let st = rapd.wait_status("an uplink failure", Duration::from_secs(30), |s| {
        s.uplink["consecutive_failures"].as_u64().unwrap_or(0) >= 2
    });
    let err = st.uplink["last_error"].as_str().unwrap_or("").to_string();
    assert!(expect.iter().any(|e| err.contains(e)), "{name}: last error {err:?} does not mention any of {expect:?}");
    assert_eq!(depth(&st), 50 + audit_queued(&st), "{name}: nothing leaves the queue");
    assert_eq!(st.uplink["records_sent"], 0);
    assert_eq!(w.batch_posts(), 0, "{name}: no request reached the data center");
    assert_logged_refusal(name, &rapd.log_text(), expect);
}

/// rapd's log has a line saying the batch was not delivered, naming the reason.
fn assert_logged_refusal(name: &str, log: &str, expect: &[&str]) {
    let line = log.lines().find(|l| l.contains("not delivered") && expect.iter().any(|e| l.contains(e)));
    assert!(line.is_some(), "{name}: no log line says \"not delivered\" with any of {expect:?}:\n{log}");
    eprintln!("{name}: {}", line.unwrap_or_default().trim());
}

/// Drives rapd against a deliberately misconfigured `openssl s_server` at the data
/// center's address and proves that no application byte reached it.
fn refused_by_s_server(
    name: &str,
    configure: impl FnOnce(&World) -> rapbox_testkit::peers::TlsServerConfig,
    expect: &[&str],
) {
    use rapbox_testkit::peers::TlsServer;
    let w = World::new(name);
    let server = TlsServer::start(&w.dir.subdir("s_server").unwrap(), &configure(&w)).expect("openssl s_server");
    let inst = vec![("INST-0001".to_string(), instrument_addr())];
    let mut spec = w.rapd_spec();
    spec.instruments = inst.clone();
    let rapd = Rapd::start(&spec);
    send_all(&inst, 50, 0, 1);
    let st = rapd.wait_status("an uplink failure", Duration::from_secs(30), |s| {
        s.uplink["consecutive_failures"].as_u64().unwrap_or(0) >= 2
    });
    let err = st.uplink["last_error"].as_str().unwrap_or("").to_string();
    assert!(
        expect.iter().any(|e| err.contains(e)),
        "{name}: last error {err:?} does not mention any of {expect:?}\ns_server log:\n{}",
        server.log()
    );
    assert_eq!(depth(&st), 50 + audit_queued(&st), "{name}: nothing leaves the queue");
    assert_eq!(st.uplink["records_sent"], 0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!server.received_any(), "{name}: application data reached the server: {:?}", server.received());
    assert_logged_refusal(name, &rapd.log_text(), expect);
}

#[test]
fn refuses_server_certificate_from_another_ca() {
    refused(
        "wrong_ca",
        |w| w.front_door(&w.pki.other_ca_server.clone()),
        &["server certificate refused: unable to get local issuer certificate", "unable to get issuer certificate"],
    );
}

#[test]
fn refuses_expired_server_certificate() {
    refused(
        "expired",
        |w| w.front_door(&w.pki.expired_server.clone()),
        &["server certificate refused: certificate has expired"],
    );
}

#[test]
fn refuses_not_yet_valid_server_certificate() {
    refused(
        "not_yet_valid",
        |w| w.front_door(&w.pki.not_yet_valid_server.clone()),
        &["server certificate refused: certificate is not yet valid"],
    );
}

#[test]
fn refuses_wrong_host_name() {
    refused(
        "wrong_host",
        |w| w.front_door(&w.pki.wrong_host_server.clone()),
        &["server certificate refused: IP address mismatch", "Hostname mismatch"],
    );
}

#[test]
fn refuses_server_offering_only_tls_1_1() {
    refused(
        "tls11",
        |w| w.front_door(&w.pki.server.clone()).tls11_only(),
        &["unsupported protocol", "no protocols available", "wrong version number", "protocol version"],
    );
}

#[test]
fn refuses_server_offering_only_tls_1_0() {
    refused(
        "tls10",
        |w| {
            let mut fd = w.front_door(&w.pki.server.clone()).tls11_only();
            fd.tls_protocols = "TLSv1".into();
            fd
        },
        &["unsupported protocol", "no protocols available", "wrong version number", "protocol version"],
    );
}

#[test]
fn refuses_server_offering_only_non_fips_suites_aria_camellia() {
    // openssl s_server, TLS 1.2 only, with ARIA-GCM and Camellia suites: real, strong
    // ciphers, but not FIPS 140-3 approved. (ChaCha20-Poly1305 is covered through nginx.)
    refused_by_s_server(
        "aria_camellia",
        |w| {
            rapbox_testkit::peers::TlsServerConfig::new(w.dc_addr, &w.pki.server.cert, &w.pki.server.key).args([
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-ARIA128-GCM-SHA256:ECDHE-ECDSA-ARIA256-GCM-SHA384:ECDHE-ECDSA-CAMELLIA128-SHA256:ECDHE-ECDSA-CAMELLIA256-SHA384",
            ])
        },
        &["handshake failure", "no shared cipher", "no cipher"],
    );
}

#[test]
fn refuses_client_certificate_request_for_an_unknown_ca() {
    // The server asks for a client certificate issued by a CA the box has no
    // certificate from: the box's own certificate is refused, nothing is accepted.
    refused_by_s_server(
        "client_cert_unknown_ca",
        |w| {
            rapbox_testkit::peers::TlsServerConfig::new(w.dc_addr, &w.pki.server.cert, &w.pki.server.key)
                .require_client_cert(&w.pki.other_ca.cert)
        },
        &["alert unknown ca", "unknown ca"],
    );
}

#[test]
fn refuses_server_offering_only_chacha20() {
    refused(
        "chacha20",
        |w| w.front_door(&w.pki.server.clone()).chacha20_only(),
        &["handshake failure", "no shared cipher", "no cipher"],
    );
}

#[test]
fn refused_by_data_center_without_client_certificate_from_its_ca() {
    // The box presents a certificate from an unknown CA: nginx refuses it, nothing is stored.
    let mut w = World::new("unknown_client_ca");
    w.start_nginx();
    let inst = vec![("INST-0001".to_string(), instrument_addr())];
    let mut spec = w.rapd_spec();
    spec.cert = w.pki.unknown_ca_client.cert.clone();
    spec.key = w.pki.unknown_ca_client.key.clone();
    spec.instruments = inst.clone();
    let rapd = Rapd::start(&spec);
    send_all(&inst, 20, 0, 1);
    let st = rapd.wait_status("an uplink failure", Duration::from_secs(30), |s| {
        s.uplink["consecutive_failures"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(depth(&st), 20 + audit_queued(&st));
    assert_eq!(w.batch_posts(), 0);
    // nginx (`ssl_verify_client on`) answers a certificate it cannot verify with HTTP 400.
    let expect = ["HTTP 400"];
    let err = st.uplink["last_error"].as_str().unwrap_or("");
    assert!(err.contains(expect[0]) && err.contains("certificate"), "last error {err:?}");
    assert_logged_refusal("unknown_client_ca", &rapd.log_text(), &expect);
}

fn fips_refusal(name: &str, break_it: impl FnOnce(&std::path::Path), expect: &str) {
    let mut w = World::new(name);
    w.start_nginx();
    // A private copy of the provider directory, with the config pointing into it.
    let src = common::rapd::fips_conf();
    let src_dir = src.parent().unwrap();
    let dir = w.dir().join("fips");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["fips.so", "fipsmodule.cnf", "openssl-fips.cnf"] {
        let text = std::fs::read(src_dir.join(f)).unwrap();
        let text = if f.ends_with(".cnf") {
            String::from_utf8(text)
                .unwrap()
                .replace(&src_dir.display().to_string(), &dir.display().to_string())
                .into_bytes()
        } else {
            text
        };
        std::fs::write(dir.join(f), text).unwrap();
    }
    break_it(&dir);
    let addr = instrument_addr();
    let mut spec: Spec = w.rapd_spec();
    spec.fips_conf = dir.join("openssl-fips.cnf");
    spec.instruments = vec![("INST-0001".into(), addr)];
    let mut rapd = Rapd::spawn(&spec);
    let status = rapd.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(rapbox::exit::FIPS), "{name}: exit code\n{}", rapd.log_text());
    let log = rapd.log_text();
    assert!(log.contains("FIPS gate refused, no network I/O"), "{name}:\n{log}");
    assert!(log.contains(expect), "{name}: expected {expect:?} in\n{log}");
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(), "no port was opened");
    assert_eq!(w.batch_posts(), 0);
    assert_eq!(std::fs::read_to_string(w.dir().join("nginx/access.log")).unwrap_or_default(), "", "nginx saw nothing");
}

#[test]
fn fips_provider_missing_exits_before_any_connection() {
    fips_refusal(
        "fips_missing",
        |d| std::fs::remove_file(d.join("fips.so")).unwrap(),
        "the OpenSSL FIPS provider is not loaded",
    );
}

#[test]
fn fips_provider_tampered_exits_before_any_connection() {
    fips_refusal(
        "fips_tampered",
        |d| {
            let p = d.join("fips.so");
            let mut b = std::fs::read(&p).unwrap();
            let i = b.len() / 2;
            b[i] ^= 0x01;
            std::fs::write(&p, b).unwrap();
        },
        "the OpenSSL FIPS provider is not loaded",
    );
}

#[test]
fn fips_configuration_missing_exits_before_any_connection() {
    fips_refusal(
        "fips_conf_missing",
        |d| std::fs::remove_file(d.join("openssl-fips.cnf")).unwrap(),
        "is missing or unreadable",
    );
}

#[test]
fn fips_config_activating_the_default_provider_is_refused() {
    fips_refusal(
        "fips_default_provider",
        |d| {
            let p = d.join("openssl-fips.cnf");
            let t = std::fs::read_to_string(&p).unwrap();
            let t = t.replace("base = base_sect", "base = base_sect\ndefault = default_sect");
            std::fs::write(&p, format!("{t}\n[default_sect]\nactivate = 1\n")).unwrap();
        },
        "providers other than fips and base are active: default",
    );
}

#[test]
fn kill9_during_heavy_ingest_loses_nothing_and_duplicates_nothing() {
    let mut w = World::new("kill9");
    w.start_nginx();
    let instruments = three_instruments();
    let mut spec = w.rapd_spec();
    spec.instruments = instruments.clone();
    // The instruments keep running across crashes: they reconnect and resend what was not acked.
    let runs: Vec<_> = instruments
        .iter()
        .map(|(s, a)| {
            let mut i = Instrument { alarm_every: 7, ..Instrument::new(*a, s.clone()) };
            i.backoff_max = Duration::from_millis(200);
            i.stall_timeout = None;
            i.drain_timeout = Duration::from_secs(60);
            i.spawn().expect("simulator")
        })
        .collect();
    let mut rapd = Rapd::start(&spec);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for cycle in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let before: u64 = runs.iter().map(|r| r.stats().acked()).sum();
        // Let it run a random 100–900 ms, with at least some progress, then crash it.
        std::thread::sleep(Duration::from_millis(100 + seed % 800));
        wait_for("progress before the crash", Duration::from_secs(30), || {
            (runs.iter().map(|r| r.stats().acked()).sum::<u64>() > before).then_some(())
        });
        rapd.kill9();
        if cycle % 5 == 4 {
            // Now and then the data center flaps too.
            w.stop_nginx();
            w.start_nginx();
        }
        rapd = Rapd::start(&spec);
    }
    for r in &runs {
        r.stop();
    }
    let mut acked: Vec<(String, BTreeSet<u64>)> = Vec::new();
    for r in runs {
        let stats = r.stats().clone();
        let serial = r.serial().to_string();
        let sum = r.join().expect("instrument run");
        assert!(sum.unacked.is_empty(), "{serial}: {} messages never acked after the crashes", sum.unacked.len());
        acked.push((serial, stats.acked_ids().iter().collect()));
    }
    rapd.wait_status("queue drained", Duration::from_secs(120), |s| depth(s) == 0);
    let total: usize = acked.iter().map(|(_, s)| s.len()).sum();
    assert!(total > 3000, "heavy ingest: only {total} messages acked");
    let reports = w.client.all_reports(Some(BOX_ID), None).expect("reports");
    for (serial, ids) in &acked {
        let at_dc: Vec<u64> = reports.iter().filter(|r| &r.instrument == serial).map(|r| r.msg_id).collect();
        let set: BTreeSet<u64> = at_dc.iter().copied().collect();
        assert_eq!(set.len(), at_dc.len(), "{serial}: a message appears twice in the data center");
        let missing: Vec<&u64> = ids.difference(&set).take(10).collect();
        assert!(missing.is_empty(), "{serial}: acknowledged but never delivered: {missing:?}");
    }
    let queue = rusqlite::Connection::open(spec.queue_path()).unwrap();
    let ok: String = queue.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    eprintln!("kill9: {total} acknowledged messages over 20 crashes, all delivered once");
}

#[test]
fn quota_full_drops_routine_counts_it_and_refuses_alarms() {
    let mut w = World::new("quota");
    let inst = vec![("INST-0001".to_string(), instrument_addr())];
    let mut spec = w.rapd_spec();
    spec.instruments = inst.clone();
    spec.quota_bytes = 1 << 20;
    let rapd = Rapd::start(&spec);
    let addr = inst[0].1;
    // 1 MiB of quota, 2 KiB routine messages: 3000 of them overflow it several times.
    let routine = Instrument { count: Some(3000), payload_size: 2000, ..Instrument::new(addr, "INST-0001") };
    let sum = routine.run().expect("routine run");
    assert_eq!(sum.stats.acked, 3000, "routine messages are acked and later dropped, not refused");
    let st = rapd.status();
    let dropped = st.queue["dropped_total"].as_u64().unwrap();
    assert!(dropped > 2000, "routine drops are counted: {dropped}");
    assert!(st.queue["bytes"].as_u64().unwrap() <= 1 << 20);

    // Alarms displace routine messages, then fill the queue, then are refused: the
    // instrument keeps them.
    let mut conn = raw::RawConn::connect(addr, Duration::from_secs(2)).unwrap();
    let mut refused_alarm = None;
    let mut acked_alarms = BTreeSet::new();
    for id in 1_000_000..1_001_000u64 {
        let mut r = raw::status_report("INST-0001", id, &vec![b'a'; 2000]);
        r.kind = rapwire::Kind::Alarm;
        r.priority = 0;
        conn.send_report(&r).unwrap();
        match conn.next_event(Duration::from_secs(5)) {
            raw::RawEvent::Reply(Reply::Ack { msg_id, .. }) => {
                acked_alarms.insert(msg_id);
            }
            raw::RawEvent::Reply(Reply::Error { code, reason, msg_id }) => {
                refused_alarm = Some((code, reason, msg_id));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (code, reason, id) = refused_alarm.expect("an alarm is refused once alarms fill the quota");
    assert_eq!(code, ErrorCode::QueueFull);
    assert!(reason.starts_with("queue full:") && reason.contains("alarms and audit records"), "{reason}");
    let st = rapd.status();
    assert_eq!(st.queue["depth_by_priority"][2], 0, "every routine message made room for alarms");
    assert!(st.queue["refused_full_total"].as_u64().unwrap() >= 1);
    drop(conn);

    // The data center comes up: every acked alarm arrives, the drop count is reported.
    w.start_nginx();
    rapd.wait_status("queue drained", Duration::from_secs(60), |s| depth(s) == 0);
    let reports = w.client.all_reports(Some(BOX_ID), Some("INST-0001")).unwrap();
    let alarms: BTreeSet<u64> = reports.iter().filter(|r| r.kind == rapwire::Kind::Alarm).map(|r| r.msg_id).collect();
    assert_eq!(alarms, acked_alarms, "every acknowledged alarm is delivered");
    assert!(!alarms.contains(&id), "the refused alarm was not stored");
    let dc = w.client.stats().unwrap();
    let final_dropped = rapd.status().queue["dropped_total"].as_u64().unwrap();
    assert_eq!(dc.for_box(BOX_ID).unwrap().dropped_total, final_dropped, "the drop count reaches the data center");
}

#[test]
fn bad_inputs_get_their_error_code_and_never_affect_another_instrument() {
    let mut w = World::new("bad_inputs");
    w.start_nginx();
    let a = ("INST-A".to_string(), instrument_addr());
    let b = ("INST-B".to_string(), instrument_addr());
    let mut spec = w.rapd_spec();
    spec.instruments = vec![a.clone(), b.clone()];
    spec.extra = "[ingest]\nframe_timeout_ms = 1000\nidle_timeout_ms = 5000\nmax_connections_per_port = 4\n".into();
    let rapd = Rapd::start(&spec);

    // Instrument B works normally the whole time.
    let good = Instrument { count: Some(20_000), rate: 4000, ..Instrument::new(b.1, b.0.clone()) }.spawn().unwrap();

    // On A's port: garbage, an oversized frame, a wrong serial, a slowloris, a flood of connections.
    let garbage = raw::send_bytes(a.1, &[0, 0, 0, 5, 9, 9, 9, 9, 9], Duration::from_secs(2)).unwrap();
    assert_eq!(garbage.error_codes(), vec![ErrorCode::UnsupportedVersion], "{garbage:?}");
    let truncated_body = {
        let mut f = vec![0, 0, 0, 3, rapwire::agent::VERSION, 0x01, 0];
        f.truncate(7);
        raw::send_bytes(a.1, &f, Duration::from_secs(2)).unwrap()
    };
    assert_eq!(truncated_body.error_codes(), vec![ErrorCode::Malformed], "{truncated_body:?}");
    // An id from the box's half of the id space (its own events about the instrument).
    let reserved = raw::report_frame(&raw::status_report("INST-A", rapwire::BOX_ID_BASE + 1, b"x"));
    let reserved = raw::send_bytes(a.1, &reserved, Duration::from_secs(2)).unwrap();
    assert_eq!(reserved.error_codes(), vec![ErrorCode::Malformed], "{reserved:?}");
    let big = raw::send_oversized(a.1, 10 << 20, Duration::from_secs(2)).unwrap();
    assert_eq!(big.error_codes(), vec![ErrorCode::TooLarge]);
    assert!(big.closed, "an oversized frame closes the connection");
    let wrong =
        Instrument { count: Some(5), claimed_serial: Some("INST-B".into()), ..Instrument::new(a.1, a.0.clone()) }
            .run()
            .unwrap();
    assert_eq!(wrong.stats.errors.get("wrong_instrument"), Some(&5), "{:?}", wrong.stats);
    assert_eq!(wrong.stats.acked, 0);
    let frame = raw::report_frame(&raw::status_report("INST-A", 1, b"slow"));
    let slow = raw::trickle(a.1, &frame, Duration::from_millis(300), Duration::from_secs(2)).unwrap();
    assert!(slow.closed_early, "a slowloris is cut off: {slow:?}");
    assert_eq!(slow.outcome.error_codes(), vec![ErrorCode::Timeout]);
    let mut flood = raw::idle_connections(a.1, 1000, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(500));
    let codes = flood.error_codes();
    assert!(
        codes.iter().filter(|c| **c == ErrorCode::TooManyConnections).count() >= 990,
        "connections over the per-port limit are refused: {} refusals",
        codes.len()
    );
    assert!(flood.still_open() <= 4);
    drop(flood);

    let sum = good.join().unwrap();
    assert_eq!(sum.stats.acked, 20_000, "instrument B is unaffected: {:?}", sum.stats);
    assert_eq!(sum.stats.rejected, 0);
    assert!(sum.stats.errors.is_empty(), "{:?}", sum.stats.errors);

    // A's port still serves a well-behaved agent afterwards.
    let ok = Instrument { count: Some(100), ..Instrument::new(a.1, a.0.clone()) }.run().unwrap();
    assert_eq!(ok.stats.acked, 100);
    let st = rapd.status();
    let pa = st.ports.as_array().unwrap().iter().find(|p| p["serial"] == "INST-A").unwrap();
    assert!(pa["errors"].as_u64().unwrap() >= 5);
    rapd.wait_status("queue drained", Duration::from_secs(60), |s| depth(s) == 0);
}

#[test]
fn duplicate_ids_are_acked_again_and_stored_once() {
    let mut w = World::new("duplicates");
    w.start_nginx();
    let a = ("INST-0001".to_string(), instrument_addr());
    let mut spec = w.rapd_spec();
    spec.instruments = vec![a.clone()];
    let rapd = Rapd::start(&spec);
    let mut c = raw::RawConn::connect(a.1, Duration::from_secs(2)).unwrap();
    let r = raw::status_report("INST-0001", 42, b"temp=37.0");
    c.send_report(&r).unwrap();
    assert_eq!(c.next_event(Duration::from_secs(5)), raw::RawEvent::Reply(Reply::Ack { msg_id: 42, duplicate: false }));
    c.send_report(&r).unwrap();
    assert_eq!(c.next_event(Duration::from_secs(5)), raw::RawEvent::Reply(Reply::Ack { msg_id: 42, duplicate: true }));
    rapd.wait_status("delivered", Duration::from_secs(30), |s| s.uplink["records_sent"] == 1 + audit_queued(s));
    // Resent after delivery: still acked as a duplicate, not stored or sent again.
    c.send_report(&r).unwrap();
    assert_eq!(c.next_event(Duration::from_secs(5)), raw::RawEvent::Reply(Reply::Ack { msg_id: 42, duplicate: true }));
    let st = rapd.status();
    assert_eq!(depth(&st), 0);
    let instrument_reports = |w: &World| {
        w.client.all_reports(Some(BOX_ID), None).unwrap().into_iter().filter(|r| !r.instrument.is_empty()).count()
    };
    assert_eq!(instrument_reports(&w), 1);
}

#[test]
fn retry_after_is_honoured_and_nothing_is_lost() {
    let mut w = World::new("retry_after");
    w.start_nginx();
    w.client.fault(rapdc::api::FaultSpec { status: 503, retry_after_s: Some(3), count: 1 }).unwrap();
    let a = ("INST-0001".to_string(), instrument_addr());
    let mut spec = w.rapd_spec();
    spec.instruments = vec![a.clone()];
    let rapd = Rapd::start(&spec);
    send_all(&[a], 10, 0, 1);
    let st = rapd.wait_status("the 503", Duration::from_secs(30), |s| s.uplink["consecutive_failures"] == 1);
    assert!(st.uplink["last_error"].as_str().unwrap().contains("HTTP 503"));
    // Retry-After: 3 with a 100 ms backoff: no second attempt within the next 2 s.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.batch_posts(), 1, "rapd waited for Retry-After");
    rapd.wait_status("delivered after the wait", Duration::from_secs(30), |s| depth(s) == 0);
    let reports = w.client.all_reports(Some(BOX_ID), None).unwrap();
    assert_eq!(reports.iter().filter(|r| !r.instrument.is_empty()).count(), 10);
}

#[test]
fn box_not_provisioned_keeps_ingesting_and_names_the_missing_file() {
    let w = World::new("unprovisioned");
    let a = ("INST-0001".to_string(), instrument_addr());
    let mut spec = w.rapd_spec();
    spec.cert = w.dir().join("missing/box.pem");
    spec.instruments = vec![a.clone()];
    let rapd = Rapd::start(&spec);
    send_all(&[a], 10, 0, 1);
    let st = rapd.wait_status("unprovisioned", Duration::from_secs(10), |s| s.uplink["state"] == "unprovisioned");
    let err = st.uplink["last_error"].as_str().unwrap();
    assert!(
        err.contains("box certificate") && err.contains("missing/box.pem") && err.contains("not provisioned"),
        "{err}"
    );
    assert_eq!(depth(&st), 10 + audit_queued(&st));
}

#[test]
fn rapctl_status_human_and_json() {
    let mut w = World::new("rapctl");
    w.start_nginx();
    let a = ("INST-0001".to_string(), instrument_addr());
    let mut spec = w.rapd_spec();
    spec.instruments = vec![a.clone()];
    let rapd = Rapd::start(&spec);
    send_all(&[a], 25, 5, 1);
    let st = rapd.wait_status("delivered", Duration::from_secs(30), |s| depth(s) == 0);
    let sent = 25 + audit_queued(&st);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(["--socket", spec.socket().to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("FIPS         passed (providers: "), "{text}");
    assert!(text.contains(&format!(" batches, {sent} messages, ")), "{text}");
    assert!(text.contains("Queue        0 messages (alarms 0, high 0, normal 0, low 0)"), "{text}");
    assert!(text.contains("INST-0001"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(["--socket", spec.socket().to_str().unwrap(), "status", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["uplink"]["records_sent"], sent);
    assert_eq!(v["fips"]["passed"], true);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(["--socket", "/nonexistent/rapd.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach rapd"));
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = rapbox_testkit::TestDir::new("datapath/bad_config").unwrap();
    let cfg = dir.join("rapd.toml");
    std::fs::write(
        &cfg,
        "[queue]\npath = \"/tmp/q.db\"\n[uplink]\nurl = \"http://x\"\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapd")).arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(rapbox::exit::CONFIG));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}: key `uplink.url`: scheme must be https, not `http`", cfg.display())), "{err}");
}
