//! The backend over real HTTP: batches in, acks and queries out, refusals, faults.

use std::collections::HashSet;

use rapdc::api::{self, FaultSpec};
use rapwire::batch::{BatchAck, BATCH_ID_HEADER, CONTENT_TYPE};
use rapwire::Kind;

use crate::{encode, records, Backend, BOX1, BOX2};

fn front_door_headers(subject: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", CONTENT_TYPE.to_owned()),
        (api::CLIENT_VERIFY_HEADER, "SUCCESS".to_owned()),
        (api::CLIENT_SUBJECT_HEADER, subject.to_owned()),
    ]
}

fn as_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn batch_is_stored_acked_and_queryable() {
    let b = Backend::start();
    let recs = records(1, 50);
    let ack = b.client.post_batch(BOX1, &encode(0x1234, 7, &recs)).unwrap();
    assert_eq!(ack, BatchAck { batch_id: 0x1234, accepted: 50, duplicates: 0 });

    let all = b.client.all_reports(Some("box-0001"), None).unwrap();
    assert_eq!(all.len(), 50);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "arrival order");
    for (got, sent) in all.iter().zip(&recs) {
        assert_eq!(
            (got.instrument.as_str(), got.msg_id, got.timestamp_ms, got.kind, got.priority, got.payload.as_bytes()),
            (sent.instrument.as_str(), sent.msg_id, sent.timestamp_ms, sent.kind, sent.priority, &sent.payload[..])
        );
        assert_eq!((got.box_id.as_str(), got.batch_id, got.deliveries), ("box-0001", 0x1234, 1));
    }

    let a1 = b.client.reports(Some("box-0001"), Some("A-1"), 0).unwrap();
    assert_eq!(a1.reports.len(), 25);
    assert!(a1.reports.iter().all(|r| r.instrument == "A-1"));
    let rest = b.client.reports(None, None, all[39].id).unwrap();
    assert_eq!(rest.reports.len(), 10);
    assert_eq!(rest.last_id, all[49].id);

    let stats = b.client.stats().unwrap();
    let bx = stats.for_box("box-0001").unwrap();
    assert_eq!((bx.batches, bx.records, bx.duplicates, bx.dropped_total), (1, 50, 0, 7));
    let a = stats.for_instrument("box-0001", "A-1").unwrap();
    assert_eq!(a.count, 25);
    assert_eq!(a.kinds.get("alarm"), Some(&5));
    assert_eq!(a.kinds.get("status"), Some(&20));
    assert_eq!(a.last_timestamp_ms, recs[49].timestamp_ms);
}

#[test]
fn resent_batch_gets_first_ack_and_redelivery_is_counted() {
    let b = Backend::start();
    let body = encode(42, 0, &records(1, 10));
    let first = b.client.post_batch(BOX1, &body).unwrap();
    let again = b.client.post_batch(BOX1, &body).unwrap();
    assert_eq!(first, again);
    assert_eq!(first.accepted, 10);

    // The box lost the ack, requeued, and rebuilt a batch with new messages behind the old.
    let ack = b.client.post_batch(BOX1, &encode(43, 0, &records(6, 10))).unwrap();
    assert_eq!(ack, BatchAck { batch_id: 43, accepted: 5, duplicates: 5 });

    let all = b.client.all_reports(None, None).unwrap();
    assert_eq!(all.len(), 15, "nothing stored twice");
    let ids: HashSet<_> = all.iter().map(|r| (r.instrument.clone(), r.msg_id)).collect();
    assert_eq!(ids.len(), 15);
    let redelivered: Vec<u64> = all.iter().filter(|r| r.deliveries == 2).map(|r| r.msg_id).collect();
    assert_eq!(redelivered, vec![6, 7, 8, 9, 10]);

    let bx = b.client.stats().unwrap().for_box("box-0001").cloned().unwrap();
    assert_eq!((bx.batches, bx.repeated_batches, bx.records, bx.duplicates), (2, 1, 15, 5));

    // Another box may use the same batch id and message ids.
    let other = b.client.post_batch(BOX2, &body).unwrap();
    assert_eq!(other.accepted, 10);
}

#[test]
fn concurrent_overlapping_batches_store_each_record_once() {
    let b = Backend::start();
    let url = b.server.url();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let client = rapdc::Client::new(url.clone());
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for i in 0..10u64 {
                    // Each thread's batches overlap the next thread's by half.
                    let recs = records(t * 500 + i * 100, 200);
                    acks.push(client.post_batch(BOX1, &encode(t * 1000 + i, 0, &recs)).unwrap());
                }
                acks
            })
        })
        .collect();
    let acks: Vec<BatchAck> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let accepted: u64 = acks.iter().map(|a| a.accepted).sum();
    let all = b.client.all_reports(None, None).unwrap();
    let distinct: HashSet<u64> = all.iter().map(|r| r.msg_id).collect();
    assert_eq!(distinct.len(), all.len());
    assert_eq!(accepted as usize, all.len());
    assert_eq!(all.len(), 2600, "ids 0..2600");
    let deliveries: u64 = all.iter().map(|r| r.deliveries).sum();
    let sent: u64 = acks.iter().map(|a| a.accepted + a.duplicates).sum();
    assert_eq!(deliveries, sent);
}

#[test]
fn without_verified_subject_is_403_and_stores_nothing() {
    let b = Backend::start();
    let body = encode(1, 0, &records(1, 3));
    let ct = [("Content-Type", CONTENT_TYPE)];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (ct.to_vec(), "X-Client-Verify"),
        (vec![ct[0], (api::CLIENT_VERIFY_HEADER, "NONE"), (api::CLIENT_SUBJECT_HEADER, BOX1)], "not verified"),
        (
            vec![
                ct[0],
                (api::CLIENT_VERIFY_HEADER, "FAILED:certificate has expired"),
                (api::CLIENT_SUBJECT_HEADER, BOX1),
            ],
            "expired",
        ),
        (vec![ct[0], (api::CLIENT_VERIFY_HEADER, "SUCCESS")], "X-Client-Subject"),
        (vec![ct[0], (api::CLIENT_VERIFY_HEADER, "SUCCESS"), (api::CLIENT_SUBJECT_HEADER, "O=rapbox")], "no CN"),
    ];
    for (headers, expect) in cases {
        let r = b.client.post_raw(api::BATCHES_PATH, &headers, &body).unwrap();
        assert_eq!(r.status, 403, "{headers:?}");
        let err = r.error().unwrap_or_default();
        assert!(err.contains(expect), "{headers:?}: {err}");
    }
    assert!(b.client.all_reports(None, None).unwrap().is_empty());
    assert!(b.client.stats().unwrap().boxes.is_empty());
    assert_eq!(b.client.requests().unwrap().get(api::BATCHES_PATH), 5);
}

#[test]
fn malformed_bodies_are_400_naming_the_error() {
    let b = Backend::start();
    let h = front_door_headers(BOX1);
    let h = as_refs(&h);
    let good = encode(1, 0, &records(1, 3));
    let raw = zstd_decompress(&good);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"definitely not zstd".to_vec(), "not zstd"),
        (Vec::new(), "bad magic"),
        (zstd_compress(b"XXXX\0\0\0\0\0\0\0\x01\0\0"), "bad magic"),
        (zstd_compress(&raw[..raw.len() - 3]), "truncated"),
        (zstd_compress(&[&raw[..], b"junk"].concat()), "trailing"),
    ];
    for (body, expect) in cases {
        let r = b.client.post_raw(api::BATCHES_PATH, &h, &body).unwrap();
        assert_eq!(r.status, 400);
        let err = r.error().expect("JSON error body");
        assert!(err.starts_with("malformed batch: ") && err.contains(expect), "{err}");
    }

    // Wrong content type.
    let r = b.client.post_raw(api::BATCHES_PATH, &[h[1], h[2], ("Content-Type", "application/json")], &good).unwrap();
    assert_eq!(r.status, 415, "{:?}", r.error());
    // Batch id header that contradicts the body.
    let mut with_id = h.clone();
    with_id.push((BATCH_ID_HEADER, "ff"));
    let r = b.client.post_raw(api::BATCHES_PATH, &with_id, &good).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.error().unwrap().contains(BATCH_ID_HEADER));
    // A matching one is fine.
    with_id.pop();
    with_id.push((BATCH_ID_HEADER, "0000000000000001"));
    assert_eq!(b.client.post_raw(api::BATCHES_PATH, &with_id, &good).unwrap().status, 200);
    assert_eq!(b.client.all_reports(None, None).unwrap().len(), 3);
}

#[test]
fn oversized_body_is_413() {
    let b = Backend::start_with(|c| c.max_body_bytes = 4096);
    let h = front_door_headers(BOX1);
    let big: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let r = b.client.post_raw(api::BATCHES_PATH, &as_refs(&h), &big).unwrap();
    assert_eq!(r.status, 413);
    assert!(r.error().unwrap().contains("4096"));
    // The connection stays usable and small batches still pass.
    assert_eq!(b.client.post_batch(BOX1, &encode(1, 0, &records(1, 3))).unwrap().accepted, 3);
}

#[test]
fn injected_faults_answer_without_storing() {
    let b = Backend::start();
    b.client.fault(FaultSpec { status: 503, retry_after_s: Some(2), count: 2 }).unwrap();
    let h = front_door_headers(BOX1);
    let body = encode(5, 0, &records(1, 4));
    for _ in 0..2 {
        let r = b.client.post_raw(api::BATCHES_PATH, &as_refs(&h), &body).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after.as_deref(), Some("2"));
        assert!(r.error().unwrap().contains("injected"));
    }
    assert!(b.client.all_reports(None, None).unwrap().is_empty());
    assert_eq!(b.client.post_batch(BOX1, &body).unwrap().accepted, 4, "fault used up");

    b.client.fault(FaultSpec { status: 500, retry_after_s: None, count: 1 }).unwrap();
    let err = b.client.post_batch(BOX1, &body).unwrap_err();
    assert_eq!(err.status(), Some(500));
    // Disarm with count 0.
    b.client.fault(FaultSpec { status: 500, retry_after_s: None, count: 5 }).unwrap();
    b.client.fault(FaultSpec { status: 500, retry_after_s: None, count: 0 }).unwrap();
    assert!(b.client.post_batch(BOX1, &body).is_ok());

    let bad = b.client.fault(FaultSpec { status: 200, retry_after_s: None, count: 1 }).unwrap_err();
    assert_eq!(bad.status(), Some(400));
    let r = b.client.post_raw(api::FAULT_PATH, &[("Content-Type", "application/json")], b"{").unwrap();
    assert_eq!(r.status, 400);
}

#[test]
fn requests_are_counted_per_path_and_reset_clears_all() {
    let b = Backend::start();
    assert_eq!(b.client.requests().unwrap().outside_admin, 0);
    b.client.post_batch(BOX1, &encode(1, 3, &records(1, 2))).unwrap();
    b.client.stats().unwrap();
    b.client.reports(None, None, 0).unwrap();
    b.client.reports(None, None, 0).unwrap();
    let counts = b.client.requests().unwrap();
    assert_eq!(counts.get(api::BATCHES_PATH), 1);
    assert_eq!(counts.get(api::REPORTS_PATH), 2, "query strings are not part of the path");
    assert_eq!(counts.get(api::REQUESTS_PATH), 2);
    assert_eq!(counts.outside_admin, 4);

    b.client.fault(FaultSpec { status: 503, retry_after_s: None, count: 9 }).unwrap();
    b.client.reset().unwrap();
    let counts = b.client.requests().unwrap();
    assert_eq!(counts.outside_admin, 0);
    assert_eq!(counts.get(api::REQUESTS_PATH), 1);
    assert!(b.client.stats().unwrap().boxes.is_empty());
    assert!(b.client.all_reports(None, None).unwrap().is_empty());
    // The fault went with the reset, and so did the batch id.
    let ack = b.client.post_batch(BOX1, &encode(1, 3, &records(1, 2))).unwrap();
    assert_eq!(ack.accepted, 2);
}

#[test]
fn unknown_paths_methods_and_parameters() {
    let b = Backend::start();
    let r = b.client.post_raw("/api/v1/nothing", &[], b"").unwrap();
    assert_eq!(r.status, 404);
    assert!(r.error().unwrap().contains("/api/v1/nothing"));
    let r = b.client.post_raw(api::STATS_PATH, &[], b"").unwrap();
    assert_eq!(r.status, 405);
    let err = b.client.query_reports(&api::ReportQuery { since_id: 0, ..Default::default() });
    assert!(err.is_ok());
    let h = b.client.health().unwrap();
    assert_eq!(h.status, "ok");
    let raw = ureq_get(&format!("{}/api/v1/reports?bogus=1", b.server.url()));
    assert_eq!(raw, 400);
}

#[test]
fn kinds_survive_the_trip() {
    let b = Backend::start();
    let mut recs = records(1, 7);
    let kinds = [Kind::Status, Kind::Alarm, Kind::Event, Kind::QcResult, Kind::Log, Kind::Audit, Kind::BoxEvent];
    for (r, k) in recs.iter_mut().zip(kinds) {
        r.kind = k;
    }
    recs[6].instrument = String::new();
    b.client.post_batch(BOX1, &encode(1, 0, &recs)).unwrap();
    let got: Vec<Kind> = b.client.all_reports(None, None).unwrap().iter().map(|r| r.kind).collect();
    assert_eq!(got, kinds);
    let stats = b.client.stats().unwrap();
    assert_eq!(stats.for_instrument("box-0001", "").unwrap().kinds.get("box_event"), Some(&1));
}

fn ureq_get(url: &str) -> u16 {
    match ureq::get(url).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{url}: {e}"),
    }
}

fn zstd_compress(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, 1).unwrap()
}

fn zstd_decompress(body: &[u8]) -> Vec<u8> {
    zstd::bulk::decompress(body, 1 << 20).unwrap()
}

#[test]
fn lines_are_counted_per_verified_box() {
    let b = Backend::start();
    let h = front_door_headers(BOX1);
    let r = b.client.post_raw(api::LINES_PATH, &as_refs(&h), b"one\ntwo\n\nthree").unwrap();
    assert_eq!(r.status, 200);
    let h2 = front_door_headers(BOX2);
    let r = b.client.post_raw(api::LINES_PATH, &as_refs(&h2), b"x\n").unwrap();
    assert_eq!(r.status, 200);
    let r = b.client.post_raw(api::LINES_PATH, &[], b"anonymous\n").unwrap();
    assert_eq!(r.status, 403);
    let counts = b.server.line_counts();
    assert_eq!(counts.get("box-0001"), Some(&3));
    assert_eq!(counts.get("box-0002"), Some(&1));
    assert_eq!(counts.len(), 2);
}
