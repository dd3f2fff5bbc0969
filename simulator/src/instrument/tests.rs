//! The agent against fake boxes: pipelining, resend after reconnect, queue-full
//! retries, permanent errors, stop and stall.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use rapwire::agent::{ErrorCode, Report};
use rapwire::Kind;

use crate::fakebox::{Behaviour, FakeBox};
use crate::{Instrument, SimError};

fn inst(fake: &FakeBox, count: u64) -> Instrument {
    Instrument {
        count: Some(count),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        stall_timeout: Some(Duration::from_secs(20)),
        ..Instrument::new(fake.addr, fake.serial.clone())
    }
}

#[test]
fn pipelines_and_counts_everything() {
    let fake = FakeBox::start("DXI-0001", Behaviour::AckAll { hold: 10_000 });
    let i = Instrument { alarm_every: 10, window: 128, first_id: 1000, ..inst(&fake, 2000) };
    let stats = i.stats();
    let summary = i.run().expect("run");
    assert_eq!(summary.generated, 2000);
    assert_eq!((summary.first_id, summary.last_id), (1000, Some(2999)));
    assert!(summary.unacked.is_empty());
    assert_eq!((stats.sent(), stats.acked(), stats.resent()), (2000, 2000, 0));
    assert_eq!((stats.duplicate_acked(), stats.total_errors(), stats.reconnects()), (0, 0, 0));
    assert_eq!(stats.acked_ids().ranges().collect::<Vec<_>>(), vec![(1000, 2999)]);
    let seen = fake.seen.lock().unwrap();
    // The box held its acks: a stop-and-wait client would never have more than one
    // report unanswered; a pipelining one fills its window, and never exceeds it.
    assert!(seen.max_unanswered >= 64, "only {} reports pipelined", seen.max_unanswered);
    assert!(seen.max_unanswered <= 128, "window exceeded: {}", seen.max_unanswered);
    let reports = &seen.per_conn[0];
    assert_eq!(reports.len(), 2000);
    let alarms: Vec<_> = reports.iter().filter(|r| r.kind == Kind::Alarm).collect();
    assert_eq!(alarms.len(), 200);
    assert!(alarms.iter().all(|r| r.priority == 0 && (r.msg_id - 1000 + 1) % 10 == 0));
    assert!(reports.iter().all(|r| r.payload.len() == 200 && r.serial == "DXI-0001"));
    assert!(reports.windows(2).all(|w| w[0].msg_id + 1 == w[1].msg_id));
}

#[test]
fn resends_unacked_in_id_order_after_reconnect() {
    let fake = FakeBox::start("DXI-0002", Behaviour::DropAfter { k: 150, lost: 20, times: 3 });
    let i = Instrument { window: 64, ..inst(&fake, 1000) };
    let stats = i.stats();
    let summary = i.run().expect("run");
    assert!(summary.unacked.is_empty());
    assert_eq!(stats.acked(), 1000);
    assert_eq!(stats.acked_ids().ranges().collect::<Vec<_>>(), vec![(1, 1000)]);
    assert_eq!(stats.reconnects(), 3);
    assert!(stats.resent() >= 3 * 20, "resent {}", stats.resent());
    // The reports stored but never acked before each "crash" come back as duplicates.
    assert!(stats.duplicate_acked() >= 3, "duplicates {}", stats.duplicate_acked());
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.per_conn.len(), 4);
    assert_eq!(seen.stored.len(), 1000);
    assert!(seen.stored.values().all(|&n| n == 1));
    for (n, conn) in seen.per_conn.iter().enumerate() {
        assert!(conn.windows(2).all(|w| w[0].msg_id < w[1].msg_id), "connection {n} not in id order");
    }
    // Each new connection starts with the oldest unacknowledged message.
    for n in 1..seen.per_conn.len() {
        let before: BTreeSet<u64> = seen.per_conn[..n].iter().flatten().map(|r| r.msg_id).collect();
        let first = seen.per_conn[n][0].msg_id;
        assert!(before.contains(&first), "connection {n} did not start with a resend");
    }
}

#[test]
fn queue_full_is_retried_with_backoff() {
    let fake = FakeBox::start("DXI-0003", Behaviour::QueueFullFirst { n: 40 });
    let i = Instrument { window: 16, ..inst(&fake, 300) };
    let stats = i.stats();
    let summary = i.run().expect("run");
    assert!(summary.unacked.is_empty());
    assert_eq!(stats.acked(), 300);
    assert_eq!(stats.errors(ErrorCode::QueueFull), 40);
    assert_eq!(stats.resent(), 40);
    assert_eq!(stats.rejected(), 0);
    assert_eq!(stats.acked_ids().len(), 300);
    let seen = fake.seen.lock().unwrap();
    assert!(seen.stored.values().all(|&n| n == 1));
    assert_eq!(seen.stored.len(), 300);
}

#[test]
fn permanent_errors_are_recorded_not_retried() {
    let fake = FakeBox::start("DXI-0004", Behaviour::AckAll { hold: 1 });
    let i = Instrument { claimed_serial: Some("DXI-9999".into()), ..inst(&fake, 50) };
    let stats = i.stats();
    let summary = i.run().expect("run");
    assert_eq!(summary.generated, 50);
    assert!(summary.unacked.is_empty());
    assert_eq!((stats.acked(), stats.rejected(), stats.resent()), (0, 50, 0));
    assert_eq!(stats.errors(ErrorCode::WrongInstrument), 50);
    assert_eq!(stats.rejections()[0].code, "wrong_instrument");
    assert_eq!(fake.seen.lock().unwrap().per_conn[0][0].serial, "DXI-9999");
}

#[test]
fn stop_flag_ends_an_open_ended_run_after_draining() {
    let fake = FakeBox::start("DXI-0005", Behaviour::AckAll { hold: 1 });
    let i = Instrument { count: None, rate: 2000, ..inst(&fake, 0) };
    let t = Instant::now();
    let running = i.spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(300));
    running.stop();
    let stats = std::sync::Arc::clone(running.stats());
    let summary = running.join().expect("run");
    let secs = t.elapsed().as_secs_f64();
    assert!(summary.generated > 100, "generated {}", summary.generated);
    // Rate-limited: never ahead of 2000/s.
    assert!(summary.generated as f64 <= 2000.0 * secs + 2.0, "generated {} in {secs} s", summary.generated);
    assert!(summary.unacked.is_empty());
    assert_eq!(stats.acked(), summary.generated);
}

#[test]
fn waits_for_a_box_that_is_not_up_yet() {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let i = Instrument {
        count: Some(100),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..Instrument::new(addr, "DXI-0006")
    };
    let running = i.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _fake = FakeBox::start_on(addr, "DXI-0006", Behaviour::AckAll { hold: 1 });
    let stats = std::sync::Arc::clone(running.stats());
    running.join().expect("run");
    assert!(stats.connect_failures() > 0);
    assert_eq!(stats.acked(), 100);
}

#[test]
fn gives_up_when_the_box_never_answers() {
    let fake = FakeBox::start("DXI-0007", Behaviour::Silent);
    let i = Instrument { stall_timeout: Some(Duration::from_millis(300)), ..inst(&fake, 10) };
    let t = Instant::now();
    match i.run() {
        Err(SimError::Stalled { outstanding, .. }) => assert_eq!(outstanding, 10),
        other => panic!("expected a stall, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn drain_timeout_bounds_a_stop_against_a_dead_box() {
    let fake = FakeBox::start("DXI-0008", Behaviour::Silent);
    let i = Instrument { count: None, drain_timeout: Duration::from_millis(200), ..inst(&fake, 0) };
    let running = i.spawn().unwrap();
    let t = Instant::now();
    while running.stats().sent() < 256 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    running.stop();
    let summary = running.join().expect("run");
    assert_eq!(summary.unacked.len(), 256);
    assert_eq!(summary.stats.acked, 0);
}

#[test]
fn rejects_impossible_configurations() {
    let addr = "127.0.0.1:9".parse().unwrap();
    let bad = [
        Instrument { window: 0, ..Instrument::new(addr, "A") },
        Instrument { payload_size: 70_000, ..Instrument::new(addr, "A") },
        Instrument::new(addr, "has space"),
        Instrument::new(addr, ""),
        Instrument { holds: vec![("tempp".into(), "1".into())], ..Instrument::new(addr, "A") },
        Instrument { alarm_name: Some("MELTDOWN".into()), ..Instrument::new(addr, "A") },
    ];
    for i in bad {
        assert!(matches!(i.run(), Err(SimError::Config { .. })));
    }
}

/// Rough throughput figure: `cargo test --release -p rapsim -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a test"]
fn throughput_against_a_fake_box() {
    let fake = FakeBox::start("DXI-0009", Behaviour::AckAll { hold: 64 });
    let i = inst(&fake, 500_000);
    let t = Instant::now();
    let s = i.run().expect("run");
    let secs = t.elapsed().as_secs_f64();
    println!("{} msgs in {secs:.2} s: {:.0} msg/s", s.stats.acked, s.stats.acked as f64 / secs);
    let mut g = crate::StatusText::new("X");
    let t = Instant::now();
    for _ in 0..500_000 {
        std::hint::black_box(g.next(false, 200));
    }
    println!("payload generation: {:.2} us/msg", t.elapsed().as_secs_f64() * 2.0);
}

#[test]
fn held_readings_and_a_fixed_alarm_are_sent() {
    let fake = FakeBox::start("DXI-0006", Behaviour::AckAll { hold: 1 });
    let i = Instrument {
        alarm_every: 4,
        holds: vec![("reagent_A".into(), "8%".into()), ("temp".into(), "38.9".into())],
        alarm_name: Some("CLOT_DETECTED".into()),
        ..inst(&fake, 20)
    };
    assert_eq!(i.run().expect("run").stats.acked, 20);
    let seen = fake.seen.lock().unwrap();
    let reports: Vec<&Report> = seen.per_conn.iter().flatten().collect();
    assert_eq!(reports.len(), 20);
    for r in reports {
        let p = String::from_utf8_lossy(&r.payload);
        assert!(p.contains("temp=38.9;") && p.contains(";reagent_A=8%;"), "{p}");
        if r.kind == Kind::Alarm {
            assert!(p.starts_with("alarm=CLOT_DETECTED;code=E412;"), "{p}");
        }
    }
}

#[test]
fn a_payload_pool_is_sent_in_turn_and_alarms_are_still_rendered() {
    let fake = FakeBox::start("DXI-0010", Behaviour::AckAll { hold: 1 });
    let pool: Vec<Vec<u8>> = vec![b"status one".to_vec(), b"status two".to_vec(), b"status three".to_vec()];
    let i = Instrument { alarm_every: 5, payloads: Some(pool.clone().into()), ..inst(&fake, 20) };
    assert_eq!(i.run().expect("run").stats.acked, 20);
    let seen = fake.seen.lock().unwrap();
    let reports: Vec<&Report> = seen.per_conn.iter().flatten().collect();
    assert_eq!(reports.len(), 20);
    for (index, r) in reports.iter().enumerate() {
        if r.kind == Kind::Alarm {
            assert!(String::from_utf8_lossy(&r.payload).starts_with("alarm="), "{:?}", r.payload);
        } else {
            assert_eq!(r.payload, pool[index % pool.len()], "report {index}");
        }
    }
}
