//! Tests of the queue: storage, dedup, quota, migrations, segments.

use super::*;

fn sql(v: usize) -> &'static str {
    match MIGRATIONS[v] {
        Migration::Sql(s) => s,
        Migration::Code(_) => panic!("migration {v} is code"),
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rapbox-queue-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("queue.db")
}

fn msg(serial: &str, id: u64, kind: Kind, len: usize) -> Incoming {
    Incoming {
        instrument: Arc::from(serial),
        msg_id: id,
        timestamp_ms: 1000 + id as i64,
        kind,
        priority: 2,
        payload: vec![b'x'; len],
    }
}

fn put(q: &Queue, m: Incoming) -> Reply {
    let (tx, rx) = mpsc::channel();
    q.submit(m, tx).unwrap();
    rx.recv().unwrap()
}

#[test]
fn store_ack_dedup_and_drain_order() {
    let p = tmp("order");
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    assert_eq!(put(&q, msg("A", 1, Kind::Status, 10)), Reply::Ack { msg_id: 1, duplicate: false });
    assert_eq!(put(&q, msg("A", 2, Kind::Status, 10)), Reply::Ack { msg_id: 2, duplicate: false });
    assert_eq!(put(&q, msg("B", 1, Kind::Alarm, 10)), Reply::Ack { msg_id: 1, duplicate: false });
    assert_eq!(put(&q, msg("A", 1, Kind::Status, 10)), Reply::Ack { msg_id: 1, duplicate: true });
    let batch = q.next_batch(&Cursor::default(), 100, 1 << 20).unwrap();
    let keys: Vec<(String, u64)> = batch.iter().map(|r| (r.instrument.to_string(), r.msg_id)).collect();
    assert_eq!(keys, vec![("B".into(), 1), ("A".into(), 1), ("A".into(), 2)]);
    q.complete(ranges_of(&batch)).unwrap();
    assert_eq!(q.stats().depth, 0);
    // A resend after delivery is acked as a duplicate and not stored again.
    assert_eq!(put(&q, msg("A", 2, Kind::Status, 10)), Reply::Ack { msg_id: 2, duplicate: true });
    assert_eq!(q.stats().depth, 0);
    q.shutdown();
    drop(q);
    w.join();
}

#[test]
fn survives_reopen() {
    let p = tmp("reopen");
    {
        let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
        for i in 0..50 {
            put(&q, msg("A", i, Kind::Status, 100));
        }
        q.shutdown();
        drop(q);
        w.join();
    }
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    let s = q.stats();
    assert_eq!(s.depth, 50);
    assert_eq!(s.bytes, 50 * (100 + ROW_OVERHEAD));
    assert_eq!(put(&q, msg("A", 7, Kind::Status, 100)), Reply::Ack { msg_id: 7, duplicate: true });
    q.shutdown();
    drop(q);
    w.join();
}

#[test]
fn quota_drops_routine_and_refuses_alarms_when_only_alarms_remain() {
    let p = tmp("quota");
    let quota = 1 << 20;
    let (q, w) = Queue::open(&p, quota, Duration::from_secs(3600)).unwrap();
    let big = 10_000;
    // Fill with routine status.
    for i in 0..200 {
        assert!(matches!(put(&q, msg("A", i, Kind::Status, big)), Reply::Ack { .. }));
    }
    let s = q.stats();
    assert!(s.bytes <= quota);
    assert!(s.dropped_total > 0, "routine messages were dropped to stay within quota");
    // Alarms displace routine messages.
    for i in 0..200 {
        let r = put(&q, msg("B", i, Kind::Alarm, big));
        if let Reply::Error { code, reason, .. } = &r {
            assert_eq!(*code, ErrorCode::QueueFull);
            assert!(reason.starts_with("queue full:"), "{reason}");
            assert!(reason.contains("alarms and audit records"), "{reason}");
            // From now on the queue is all alarms: every further alarm is refused too.
            assert_eq!(q.stats().depth_by_priority[2], 0);
            assert!(matches!(put(&q, msg("B", 10_000, Kind::Alarm, big)), Reply::Error { .. }));
            // ...and so is routine traffic, which may not displace alarms.
            assert!(matches!(put(&q, msg("A", 10_000, Kind::Status, big)), Reply::Error { .. }));
            let s = q.stats();
            assert!(s.refused_full_total >= 3);
            q.shutdown();
            drop(q);
            w.join();
            return;
        }
    }
    panic!("alarms were never refused although they fill the quota");
}

#[test]
fn migrations_run_forward_and_future_versions_are_refused() {
    let p = tmp("migrate");
    {
        // A version-1 database with data, as an earlier rapd left it.
        let c = Connection::open(&p).unwrap();
        c.execute_batch(sql(0)).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute("INSERT INTO instruments(id, serial) VALUES (1, 'A')", []).unwrap();
        c.execute(
            "INSERT INTO messages(instrument,msg_id,ts,received,kind,priority,size,payload) VALUES (1,5,0,0,1,2,74,x'00')",
            [],
        )
        .unwrap();
    }
    let c = open_write(&p).unwrap();
    let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let n: i64 = c.query_row("SELECT SUM(live_count) FROM segment_live", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
    let d: i64 = c.query_row("SELECT COUNT(*) FROM delivered_ranges", [], |r| r.get(0)).unwrap();
    assert_eq!(d, 0);
    c.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    drop(c);
    let e = open_write(&p).unwrap_err().to_string();
    assert!(e.contains("schema version 5 is newer than this rapd understands (4)"), "{e}");
}

#[test]
fn version_2_delivered_ids_survive_the_migration() {
    let p = tmp("migrate2");
    {
        let c = Connection::open(&p).unwrap();
        c.execute_batch(sql(0)).unwrap();
        c.execute_batch(sql(1)).unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        c.execute("INSERT INTO instruments(id, serial) VALUES (1, 'A')", []).unwrap();
        c.execute("INSERT INTO delivered(instrument, msg_id, at) VALUES (1, 9, 0)", []).unwrap();
    }
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    assert_eq!(put(&q, msg("A", 9, Kind::Status, 10)), Reply::Ack { msg_id: 9, duplicate: true });
    assert_eq!(put(&q, msg("A", 8, Kind::Status, 10)), Reply::Ack { msg_id: 8, duplicate: false });
    q.shutdown();
    drop(q);
    w.join();
}

#[test]
fn cursor_skips_rows_in_flight_but_not_new_alarms() {
    let p = tmp("cursor");
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    for i in 1..=10 {
        put(&q, msg("A", i, Kind::Status, 10));
    }
    let mut cursor = Cursor::default();
    let first = q.next_batch(&cursor, 4, 1 << 20).unwrap();
    assert_eq!(first.iter().map(|r| r.msg_id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    cursor.advance(&ranges_of(&first));
    put(&q, msg("B", 1, Kind::Alarm, 10));
    // The first batch is acknowledged but its deletion not yet committed: not read again.
    let second = q.next_batch(&cursor, 4, 1 << 20).unwrap();
    let keys: Vec<(String, u64)> = second.iter().map(|r| (r.instrument.to_string(), r.msg_id)).collect();
    assert_eq!(keys, vec![("B".into(), 1), ("A".into(), 5), ("A".into(), 6), ("A".into(), 7)]);
    q.complete(ranges_of(&first)).unwrap();
    q.complete(ranges_of(&second)).unwrap();
    assert_eq!(q.stats().depth, 3);
    // Ids 1-7 of A are remembered as one range: resends are duplicates.
    for i in [1, 4, 7] {
        assert_eq!(put(&q, msg("A", i, Kind::Status, 10)), Reply::Ack { msg_id: i, duplicate: true });
    }
    q.shutdown();
    drop(q);
    w.join();
}

/// A version-3 database (one row per message) as the previous rapd left it, with messages
/// of two priorities and delivered ranges.
#[test]
fn version_3_messages_move_into_segments_in_order() {
    let p = tmp("migrate3");
    {
        let c = Connection::open(&p).unwrap();
        for v in 0..3 {
            c.execute_batch(sql(v)).unwrap();
        }
        c.pragma_update(None, "user_version", 3).unwrap();
        c.execute("INSERT INTO instruments(id, serial) VALUES (1, 'A'), (2, 'B')", []).unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for seq in 1..=5000i64 {
            // Every 100th is an alarm of B; the rest routine of A.
            let (inst, prio, kind, id) = if seq % 100 == 0 { (2, 0, 2, seq / 100) } else { (1, 2, 1, seq) };
            c.execute(
                "INSERT INTO messages(seq,instrument,msg_id,ts,received,kind,priority,size,payload)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                params![seq, inst, id, 1000 + seq, 2000 + seq, kind, prio, 3 + ROW_OVERHEAD as i64, b"abc".to_vec()],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        c.execute("INSERT INTO delivered_ranges(instrument, first, last, at) VALUES (1, 9000, 9100, ?1)", [now_ms()])
            .unwrap();
    }
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    let s = q.stats();
    assert_eq!(s.depth, 5000);
    assert_eq!(s.depth_by_priority, [50, 0, 4950, 0]);
    assert_eq!(s.bytes, 5000 * (3 + ROW_OVERHEAD));
    let batch = q.next_batch(&Cursor::default(), 100_000, 64 << 20).unwrap();
    assert_eq!(batch.len(), 5000);
    // Alarms first, then routine, each in their old order, payloads and times intact.
    let alarms: Vec<u64> = batch[..50].iter().map(|r| r.msg_id).collect();
    assert_eq!(alarms, (1..=50).collect::<Vec<_>>());
    assert!(batch[..50].iter().all(|r| &*r.instrument == "B" && r.kind == Kind::Alarm));
    let routine: Vec<u64> = batch[50..].iter().map(|r| r.msg_id).collect();
    assert_eq!(routine, (1..=5000).filter(|s| s % 100 != 0).collect::<Vec<_>>());
    assert!(batch.iter().all(|r| r.payload == b"abc" && r.timestamp_ms > 1000));
    // The dedup index covers migrated messages and old delivered ranges.
    assert_eq!(put(&q, msg("A", 1, Kind::Status, 3)), Reply::Ack { msg_id: 1, duplicate: true });
    assert_eq!(put(&q, msg("A", 9050, Kind::Status, 3)), Reply::Ack { msg_id: 9050, duplicate: true });
    assert_eq!(put(&q, msg("B", 50, Kind::Alarm, 3)), Reply::Ack { msg_id: 50, duplicate: true });
    assert_eq!(put(&q, msg("B", 51, Kind::Alarm, 3)), Reply::Ack { msg_id: 51, duplicate: false });
    q.complete(ranges_of(&batch)).unwrap();
    assert_eq!(q.stats().depth, 1);
    q.shutdown();
    drop(q);
    w.join();
}

fn put_many(q: &Queue, serial: &str, ids: std::ops::Range<u64>, kind: Kind, len: usize) {
    // Submit all first so that they share group commits, then collect the replies.
    let (tx, rx) = mpsc::channel();
    let n = ids.end - ids.start;
    for i in ids {
        q.submit(msg(serial, i, kind, len), tx.clone()).unwrap();
    }
    for _ in 0..n {
        assert!(matches!(rx.recv().unwrap(), Reply::Ack { duplicate: false, .. }));
    }
}

#[test]
fn partial_deliveries_trim_segments_and_survive_reopen() {
    let p = tmp("partial");
    {
        let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
        put_many(&q, "A", 0..6000, Kind::Status, 50);
        let mut cursor = Cursor::default();
        let mut delivered = 0;
        // Batches of 777 cut segments anywhere; each is completed in order.
        while delivered < 4000 {
            let b = q.next_batch(&cursor, 777, 1 << 20).unwrap();
            assert_eq!(b.first().unwrap().msg_id, delivered);
            cursor.advance(&ranges_of(&b));
            q.complete(ranges_of(&b)).unwrap();
            delivered += b.len() as u64;
        }
        assert_eq!(q.stats().depth, 6000 - delivered);
        assert_eq!(q.stats().bytes, (6000 - delivered) * (50 + ROW_OVERHEAD));
        q.shutdown();
        drop(q);
        w.join();
    }
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    let s = q.stats();
    let left = s.depth;
    let rest = q.next_batch(&Cursor::default(), 100_000, 64 << 20).unwrap();
    assert_eq!(rest.len() as u64, left);
    let ids: Vec<u64> = rest.iter().map(|r| r.msg_id).collect();
    assert_eq!(ids, ((6000 - left)..6000).collect::<Vec<_>>());
    // Delivered and still-queued ids are both recognised after the reopen.
    assert_eq!(put(&q, msg("A", 10, Kind::Status, 50)), Reply::Ack { msg_id: 10, duplicate: true });
    assert_eq!(put(&q, msg("A", 5999, Kind::Status, 50)), Reply::Ack { msg_id: 5999, duplicate: true });
    assert_eq!(put(&q, msg("A", 6000, Kind::Status, 50)), Reply::Ack { msg_id: 6000, duplicate: false });
    q.shutdown();
    drop(q);
    w.join();
}

#[test]
fn a_delivery_out_of_order_splits_a_segment() {
    let p = tmp("split");
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    put_many(&q, "A", 0..1000, Kind::Status, 20);
    let all = q.next_batch(&Cursor::default(), 100_000, 64 << 20).unwrap();
    assert_eq!(all.len(), 1000);
    // Deliver the middle (ids 300..600), then the tail, then the head.
    let middle = ranges_of(&all[300..600]);
    q.complete(middle).unwrap();
    assert_eq!(q.stats().depth, 700);
    let ids: Vec<u64> = q.next_batch(&Cursor::default(), 100_000, 64 << 20).unwrap().iter().map(|r| r.msg_id).collect();
    assert_eq!(ids, (0..300).chain(600..1000).collect::<Vec<_>>());
    // Reading after a cursor inside the hole starts at the tail.
    let mut c = Cursor::default();
    c.advance(&ranges_of(&all[..450]));
    let after: Vec<u64> = q.next_batch(&c, 5, 64 << 20).unwrap().iter().map(|r| r.msg_id).collect();
    assert_eq!(after, vec![600, 601, 602, 603, 604]);
    q.complete(ranges_of(&all[900..])).unwrap();
    q.complete(ranges_of(&all[..300])).unwrap();
    let ids: Vec<u64> = q.next_batch(&Cursor::default(), 100_000, 64 << 20).unwrap().iter().map(|r| r.msg_id).collect();
    assert_eq!(ids, (600..900).collect::<Vec<_>>());
    let s = q.stats();
    assert_eq!((s.depth, s.bytes), (300, 300 * (20 + ROW_OVERHEAD)));
    // Everything delivered is remembered; the rest is still queued.
    for (id, dup) in [(0, true), (450, true), (950, true), (700, true), (1000, false)] {
        assert_eq!(put(&q, msg("A", id, Kind::Status, 20)), Reply::Ack { msg_id: id, duplicate: dup }, "{id}");
    }
    // Completing the same ranges again (a resend acknowledged twice) changes nothing.
    q.complete(ranges_of(&all[..300])).unwrap();
    assert_eq!(q.stats().depth, 301);
    q.shutdown();
    drop(q);
    w.join();
    let c = Connection::open(&p).unwrap();
    integrity_check(&c, &p).unwrap();
}

#[test]
fn eviction_takes_the_oldest_routine_messages_across_segments() {
    let p = tmp("evict");
    let quota = 200 * (100 + ROW_OVERHEAD);
    let (q, w) = Queue::open(&p, quota, Duration::from_secs(3600)).unwrap();
    // Several group commits of routine messages, more than the quota holds.
    for chunk in 0..10u64 {
        put_many(&q, "A", chunk * 50..chunk * 50 + 50, Kind::Status, 100);
    }
    let s = q.stats();
    assert!(s.bytes <= quota, "{} > {quota}", s.bytes);
    assert_eq!(s.dropped_total + s.depth, 500);
    let ids: Vec<u64> = q.next_batch(&Cursor::default(), 100_000, 64 << 20).unwrap().iter().map(|r| r.msg_id).collect();
    // What is left is the newest, contiguous to the end.
    assert_eq!(ids, ((500 - s.depth)..500).collect::<Vec<_>>());
    // An evicted message is not in the queue any more: a resend is stored again.
    assert_eq!(put(&q, msg("A", 0, Kind::Status, 100)), Reply::Ack { msg_id: 0, duplicate: false });
    // Alarms displace routine messages, never the other way round.
    put_many(&q, "B", 0..150, Kind::Alarm, 100);
    let s = q.stats();
    assert_eq!(s.depth_by_priority[0], 150);
    assert!(s.bytes <= quota);
    q.shutdown();
    drop(q);
    w.join();
    let (q, w) = Queue::open(&p, quota, Duration::from_secs(3600)).unwrap();
    let s2 = q.stats();
    assert_eq!((s2.depth, s2.bytes, s2.dropped_total), (s.depth, s.bytes, s.dropped_total));
    q.shutdown();
    drop(q);
    w.join();
}

#[test]
fn a_damaged_segment_is_an_error_not_a_panic() {
    let p = tmp("damaged");
    {
        let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
        put_many(&q, "A", 0..10, Kind::Status, 20);
        q.shutdown();
        drop(q);
        w.join();
    }
    {
        // Payloads cut short: reading the batch fails, naming the segment.
        let c = Connection::open(&p).unwrap();
        c.execute("UPDATE segments SET payloads = substr(payloads, 1, 30)", []).unwrap();
    }
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    let e = q.next_batch(&Cursor::default(), 100, 1 << 20).unwrap_err().to_string();
    assert!(e.contains("integrity check failed: segment at seq 1"), "{e}");
    q.shutdown();
    drop(q);
    w.join();
    {
        // Heads that do not decode: the queue refuses to open.
        let c = Connection::open(&p).unwrap();
        c.execute("UPDATE segments SET heads = x'01'", []).unwrap();
    }
    let e = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).err().expect("refused").to_string();
    assert!(e.contains("the heads of the segment at seq 1 do not decode"), "{e}");
}

#[test]
fn batched_submissions_get_one_outcome_each_in_order() {
    let p = tmp("many");
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut msgs: Vec<Incoming> = (0..MAX_SUBMIT as u64).map(|i| msg("A", i, Kind::Status, 10)).collect();
    msgs[5].msg_id = 3; // a resend inside the same batch
    q.submit_many(msgs, tx.clone()).unwrap();
    q.submit_many(Vec::new(), tx).unwrap();
    let replies: Vec<Reply> = rx.iter().collect();
    assert_eq!(replies.len(), MAX_SUBMIT);
    for (i, r) in replies.iter().enumerate() {
        let id = if i == 5 { 3 } else { i as u64 };
        assert_eq!(*r, Reply::Ack { msg_id: id, duplicate: i == 5 }, "{i}");
    }
    assert_eq!(q.stats().depth, MAX_SUBMIT as u64 - 1);
    q.shutdown();
    drop(q);
    w.join();
}

#[test]
fn a_batch_reply_channel_gets_each_submissions_outcomes_in_one_message() {
    let p = tmp("batch-replies");
    let (q, w) = Queue::open(&p, 64 << 20, Duration::from_secs(3600)).unwrap();
    let (tx, rx) = mpsc::channel::<Vec<Reply>>();
    let first: Vec<Incoming> = (0..10).map(|i| msg("A", i, Kind::Status, 10)).collect();
    let second: Vec<Incoming> = (5..15).map(|i| msg("A", i, Kind::Status, 10)).collect();
    q.submit_many(first, tx.clone()).unwrap();
    q.submit_many(second, tx).unwrap();
    let messages: Vec<Vec<Reply>> = rx.iter().collect();
    assert_eq!(messages.len(), 2, "one channel message per submission: {messages:?}");
    let want = |ids: std::ops::Range<u64>, dup_below: u64| -> Vec<Reply> {
        ids.map(|i| Reply::Ack { msg_id: i, duplicate: i < dup_below }).collect()
    };
    assert_eq!(messages[0], want(0..10, 0));
    assert_eq!(messages[1], want(5..15, 10), "ids 5-9 were stored by the first submission");
    assert_eq!(q.stats().depth, 15);
    q.shutdown();
    drop(q);
    w.join();
}
