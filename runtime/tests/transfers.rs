//! Remote download and remote upload end to end on loopback: rapdc (content, signed
//! manifests, upload store) behind real nginx, real rapd in FIPS mode, simulated instruments'
//! file agents (protocol version 2) on the instrument ports.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::rapd::{Rapd, Spec};
use common::{instrument_addr, wait_for, World, BOX_ID};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use rapbox::control::{self, Request};
use rapdc::commands::{CommandRecord, CommandState, QueueCommand};
use rapsim::{FileAgent, RunningFileAgent};
use rapwire::agent::{self, ErrorCode, Frame};
use rapwire::requests::{cap, Message};
use rapwire::transfer::{Category, Manifest};
use serde_json::Value;

fn vendor_key() -> PKey<Private> {
    PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap()
}

/// Deterministic, incompressible-enough content.
fn content(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

struct Setup {
    w: World,
    key: PKey<Private>,
    spec: Spec,
    serials: Vec<String>,
}

fn setup(name: &str, extra: &str) -> Setup {
    let mut w = World::new(name);
    w.start_nginx();
    let key = vendor_key();
    let pubpem = w.dir().join("vendor.pub.pem");
    std::fs::write(&pubpem, key.public_key_to_pem().unwrap()).unwrap();
    let serials = vec!["XFER-0001".to_string(), "XFER-0002".to_string()];
    let mut spec = w.rapd_spec();
    spec.instruments = serials.iter().map(|s| (s.clone(), instrument_addr())).collect();
    spec.extra = format!(
        "[commands]\npoll_interval_s = 1\n\n[transfers]\nvendor_keys = [{pubpem:?}]\nretry_initial_ms = 200\nretry_max_ms = 1000\n{extra}\n"
    );
    Setup { w, key, spec, serials }
}

impl Setup {
    fn addr(&self, i: usize) -> SocketAddr {
        self.spec.instruments[i].1
    }

    fn agent(&self, i: usize) -> RunningFileAgent {
        let dir = self.w.dir().join(format!("instrument-{i}"));
        FileAgent::new(self.addr(i), self.serials[i].clone(), dir).spawn().expect("file agent")
    }

    /// Stores `data` at the data center and queues a download of it for `targets`.
    fn download(&self, id: &str, data: &[u8], name: &str, category: Category, targets: &[&str]) -> Manifest {
        let info = self.w.client.put_download(data, None).expect("content");
        let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
        let m = rapdc::signing::manifest_for(data, name, category, &targets, "");
        assert_eq!(m.sha256, info.sha256);
        self.queue_signed(id, &m, &self.key);
        m
    }

    fn queue_signed(&self, id: &str, m: &Manifest, key: &PKey<Private>) {
        let args = rapdc::signing::download_args(key, m).unwrap();
        self.queue_args(id, serde_json::to_value(args).unwrap());
    }

    fn queue_args(&self, id: &str, args: Value) {
        self.w
            .client
            .queue_command(&QueueCommand { id: Some(id.into()), args, ..QueueCommand::new(BOX_ID, "download") })
            .expect("queue download");
    }

    fn wait_final(&self, id: &str, secs: u64) -> CommandRecord {
        self.w.client.wait_command(id, Duration::from_secs(secs), |c| c.state.is_final()).expect("final result")
    }
}

fn audit_actions(rapd: &Rapd, target: &str) -> Vec<(String, String)> {
    let r = control::request(&rapd.spec.socket(), &Request::AuditTail { n: 10_000 }).expect("audit");
    r.audit_records
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["target"] == target)
        .map(|a| (a["action"].as_str().unwrap_or("").to_owned(), a["outcome"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn stored(agent: &RunningFileAgent, name: &str) -> Option<rapsim::StoredFile> {
    agent.files().into_iter().find(|f| f.name == name)
}

/// A reagent file for two instruments and a software package for one reach them intact;
/// tampered, truncated, badly signed and oversized downloads are refused and reported, and
/// never offered.
#[test]
fn downloads_reach_the_instruments_intact_and_bad_ones_are_refused() {
    let s = setup("xfer_downloads", "quota_bytes = 8000000\n");
    let rapd = Rapd::start(&s.spec);
    let (a0, a1) = (s.agent(0), s.agent(1));
    let reagent = content(150_000, 1);
    let software = content(3_000_000, 2);
    s.download("dl-reagent", &reagent, "reagent-lot-4711.dat", Category::Reagent, &["XFER-0001", "XFER-0002"]);
    s.download("dl-software", &software, "analyzer-sw-2.4.1.pkg", Category::Software, &["XFER-0001"]);

    for id in ["dl-reagent", "dl-software"] {
        let c = s.wait_final(id, 60);
        assert_eq!(c.state, CommandState::Succeeded, "{id}: {c:?}");
        // `accepted` first, unless the download finished before it was sent: the box keeps
        // only the latest result of a command (docs/commands.md).
        let first = c.results.first().map(|r| r.outcome);
        assert!(
            matches!(first, Some(rapwire::command::Outcome::Accepted | rapwire::command::Outcome::Succeeded)),
            "{id}: {:?}",
            c.results
        );
    }
    for (agent, name, data) in [
        (&a0, "reagent-lot-4711.dat", &reagent),
        (&a1, "reagent-lot-4711.dat", &reagent),
        (&a0, "analyzer-sw-2.4.1.pkg", &software),
    ] {
        let f = stored(agent, name).unwrap_or_else(|| panic!("{}: {name} not stored", agent.serial()));
        assert_eq!(std::fs::read(&f.path).unwrap(), *data, "{}: {name} intact", agent.serial());
    }
    assert!(stored(&a1, "analyzer-sw-2.4.1.pkg").is_none(), "only its targets get a file");
    assert!(audit_actions(&rapd, "dl-software")
        .iter()
        .any(|(a, o)| a == "transfer.download_verified" && o == "success"));
    assert_eq!(
        audit_actions(&rapd, "dl-software").iter().filter(|(a, _)| a == "transfer.download_delivered").count(),
        1
    );

    // Tampered: the data center serves other bytes under the manifest's hash.
    let good = content(200_000, 3);
    let m = rapdc::signing::manifest_for(&good, "settings-v7.cfg", Category::Settings, &["XFER-0001".into()], "");
    let mut bad = good.clone();
    bad[100_000] ^= 0x55;
    s.w.client.put_download(&bad, Some(&m.sha256)).unwrap();
    s.queue_signed("dl-tampered", &m, &s.key);
    let c = s.wait_final("dl-tampered", 60);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Failed, "hash_mismatch"), "{c:?}");
    assert!(c.reason.contains("settings-v7.cfg is not offered"), "{}", c.reason);

    // Truncated: fewer bytes than the manifest says.
    let full = content(120_000, 4);
    let m = rapdc::signing::manifest_for(&full, "help-en.pdf", Category::Help, &["XFER-0001".into()], "");
    s.w.client.put_download(&full[..60_000], Some(&m.sha256)).unwrap();
    s.queue_signed("dl-truncated", &m, &s.key);
    let c = s.wait_final("dl-truncated", 60);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Failed, "size_mismatch"), "{c:?}");
    assert!(c.reason.contains("60000 bytes at the data center, the signed manifest says 120000"), "{}", c.reason);

    // Signed by a key the box does not trust; and a manifest changed after signing.
    let other = content(50_000, 5);
    let info = s.w.client.put_download(&other, None).unwrap();
    let m = rapdc::signing::manifest_for(&other, "database-2026.db", Category::Database, &["XFER-0001".into()], "");
    s.queue_signed("dl-badsig", &m, &vendor_key());
    let mut args = rapdc::signing::download_args(&s.key, &m).unwrap();
    args.manifest = args.manifest.replace("\"size\": 50000", "\"size\": 50001");
    s.queue_args("dl-altered", serde_json::to_value(&args).unwrap());
    for id in ["dl-badsig", "dl-altered"] {
        let c = s.wait_final(id, 60);
        assert_eq!((c.state, c.code.as_str()), (CommandState::Refused, "bad_signature"), "{id}: {c:?}");
        assert!(c.reason.contains("does not verify with any trusted vendor key (ECDSA P-256"), "{}", c.reason);
        let audit = audit_actions(&rapd, id);
        assert!(audit.contains(&("transfer.signature_refused".into(), "denied".into())), "{id}: {audit:?}");
        assert!(audit.contains(&("command.refused".into(), "denied".into())), "{id}: {audit:?}");
    }
    let served = s.w.client.downloads().unwrap().served;
    assert!(served.iter().all(|x| x.sha256 != info.sha256), "a badly signed download is never fetched: {served:?}");

    // More than the quota.
    let big = content(9_000_000, 6);
    s.download("dl-big", &big, "huge.bin", Category::Document, &["XFER-0001"]);
    let c = s.wait_final("dl-big", 60);
    assert_eq!((c.state, c.code.as_str()), (CommandState::Refused, "quota"), "{c:?}");
    assert!(c.reason.contains("9000000 bytes do not fit the transfer quota"), "{}", c.reason);

    // None of the bad ones was ever offered to an instrument.
    let offered: Vec<String> = a0.offers().into_iter().chain(a1.offers()).map(|o| o.name).collect();
    for name in ["settings-v7.cfg", "help-en.pdf", "database-2026.db", "huge.bin"] {
        assert!(!offered.contains(&name.to_string()), "{name} was offered: {offered:?}");
    }
    let st = rapd.status();
    assert_eq!(st.transfers["used_bytes"], 0, "nothing left in transit: {}", st.transfers);
    let left = std::fs::read_dir(s.spec.dir.join("data/transfers/downloads"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x != "json"))
        .count();
    assert_eq!(left, 0, "no content left on the partition");
}

/// A download cut off by an outage and a crash of rapd resumes with a Range request where
/// the partial file ended, and completes intact.
#[test]
fn an_interrupted_download_resumes_after_an_outage_and_a_restart() {
    let mut s = setup("xfer_resume", "");
    s.w.client.set_transfer_rate(1_000_000).unwrap();
    let mut rapd = Rapd::start(&s.spec);
    let a0 = s.agent(0);
    let data = content(5_000_000, 7);
    s.download("dl-resume", &data, "analyzer-sw-3.0.pkg", Category::Software, &["XFER-0001"]);
    wait_for("part of the file fetched", Duration::from_secs(60), || {
        rapd.status().transfers["downloads"][0]["fetched"].as_u64().filter(|n| *n >= 1_500_000)
    });
    s.w.stop_nginx();
    rapd.kill9();
    s.w.start_nginx();
    s.w.client.set_transfer_rate(0).unwrap();
    let rapd = Rapd::start(&s.spec);
    let c = s.wait_final("dl-resume", 90);
    assert_eq!(c.state, CommandState::Succeeded, "{c:?}\n{}", rapd.log_text());
    let f = stored(&a0, "analyzer-sw-3.0.pkg").expect("stored");
    assert_eq!(std::fs::read(&f.path).unwrap(), data);
    let served = s.w.client.downloads().unwrap().served;
    let resumed = served.iter().filter(|x| x.from > 0 && x.status == 206).count();
    assert!(resumed >= 1, "a Range request continued the file: {served:?}");
    let froms = c.detail["resumed_from"].as_array().cloned().unwrap_or_default();
    assert!(!froms.is_empty() && froms.iter().all(|v| v.as_u64().unwrap() > 0), "{}", c.detail);
    assert!(served.iter().map(|x| x.bytes).sum::<u64>() < 2 * data.len() as u64, "not fetched twice: {served:?}");
}

/// A log bundle offered by an instrument reaches the data center with the right hash across
/// an outage and a crash of rapd; the data center says the box resumed; oversized uploads
/// and a wrong hash are refused.
#[test]
fn an_upload_survives_an_outage_and_a_restart_and_arrives_with_the_right_hash() {
    let mut s = setup("xfer_upload", "max_upload_bytes = 20000000\n");
    s.w.client.set_transfer_rate(1_000_000).unwrap();
    let mut rapd = Rapd::start(&s.spec);
    let a0 = s.agent(0);
    let bundle = content(6_000_000, 8);
    let path = s.w.dir().join("logs-2026-11-28.tgz");
    std::fs::write(&path, &bundle).unwrap();
    let i = a0.upload(&path, Category::LogBundle).unwrap();
    wait_for("the box stored the bundle", Duration::from_secs(60), || a0.uploads()[i].done.then_some(()));
    wait_for("part of it at the data center", Duration::from_secs(60), || {
        s.w.client.uploads(Some(BOX_ID)).ok()?.uploads.first().filter(|u| u.received >= 1_500_000).map(|_| ())
    });
    s.w.stop_nginx();
    rapd.kill9();
    s.w.start_nginx();
    s.w.client.set_transfer_rate(0).unwrap();
    let rapd = Rapd::start(&s.spec);
    let u = wait_for("the upload complete at the data center", Duration::from_secs(90), || {
        s.w.client.uploads(Some(BOX_ID)).ok()?.uploads.into_iter().find(|u| u.complete)
    });
    assert_eq!(u.sha256, rapdc::transfers::sha256_hex(&bundle));
    assert_eq!(
        (u.name.as_str(), u.instrument.as_str(), u.category.as_str()),
        ("logs-2026-11-28.tgz", "XFER-0001", "log_bundle")
    );
    assert!(u.status_answers.iter().any(|n| *n > 0), "the box resumed where the data center was: {u:?}");
    assert_eq!(s.w.client.upload_content(BOX_ID, &u.id).unwrap(), bundle);
    wait_for("the box forgot the delivered upload", Duration::from_secs(30), || {
        (rapd.status().transfers["uploads"].as_array().is_some_and(Vec::is_empty)).then_some(())
    });
    let audit = audit_actions(&rapd, &u.id);
    assert!(audit.iter().any(|(a, _)| a == "transfer.upload_delivered"), "{audit:?}");

    // Larger than the box takes.
    let huge = s.w.dir().join("too-big.tgz");
    std::fs::write(&huge, content(21_000_000, 9)).unwrap();
    let j = a0.upload(&huge, Category::LogBundle).unwrap();
    let st = wait_for("the oversized upload refused", Duration::from_secs(30), || {
        let u = a0.uploads()[j].clone();
        u.given_up.then_some(u)
    });
    assert!(st.error.as_deref().unwrap_or("").contains("quota_exceeded: too-big.tgz is 21000000 bytes"), "{st:?}");

    // A wrong hash, a request before HELLO, and a READ of a file never offered.
    let mut raw = Raw::connect(s.addr(1));
    assert_eq!(
        raw.ask(&Message::Read { req: 1, transfer: 1, offset: 0, length: 10 }),
        Message::Refused {
            req: 1,
            code: ErrorCode::NotNegotiated,
            reason: "READ before HELLO: say HELLO (version 2) first".into()
        }
    );
    let w = raw.ask(&Message::Hello { req: 2, max_version: 2, capabilities: cap::KNOWN, software: "raw".into() });
    assert!(matches!(w, Message::Welcome { req: 2, version: 2, capabilities: cap::KNOWN, .. }), "{w:?}");
    assert!(matches!(
        raw.ask(&Message::Read { req: 3, transfer: 77, offset: 0, length: 10 }),
        Message::Refused { code: ErrorCode::UnknownTransfer, .. }
    ));
    let data = b"screen pixels".to_vec();
    let ready = raw.ask(&Message::Upload {
        req: 4,
        size: data.len() as u64,
        sha256: [9; 32],
        category: Category::Screenshot,
        name: "screen.png".into(),
    });
    let Message::UploadReady { upload, offset: 0, .. } = ready else { panic!("{ready:?}") };
    assert_eq!(raw.ask(&Message::Chunk { req: 5, upload, offset: 0, data: data.clone() }), Message::Ok { req: 5 });
    let end = raw.ask(&Message::UploadEnd { req: 6, upload });
    assert!(
        matches!(&end, Message::Refused { code: ErrorCode::HashMismatch, reason, .. } if reason.contains("discarded")),
        "{end:?}"
    );
}

/// A bare version-2 connection.
struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s }
    }

    fn ask(&mut self, m: &Message) -> Message {
        std::io::Write::write_all(&mut self.s, &m.to_frame()).unwrap();
        let mut body = Vec::new();
        agent::read_body(&mut (&self.s).take(u64::MAX), &mut body).unwrap();
        match agent::decode(&body).unwrap() {
            Frame::Request(m) => m,
            other => panic!("{other:?}"),
        }
    }
}
