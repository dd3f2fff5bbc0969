//! 1000 concurrent agent connections against one real rapd (FIPS mode, real nginx mTLS
//! front door and rapdc): 600 slow senders and 400 idle connections held open, plus 100
//! slowloris and 100 oversized-frame connections that rapd keeps cutting off (they
//! reconnect), spread evenly over 20 instrument ports, while a well-behaved probe instrument
//! and a pipelining instrument report on their own ports. Functional only: every
//! misbehaviour gets its error code, the good instruments get every ack, every loaded
//! port keeps receiving its slow senders' reports, memory stays bounded, and all that
//! was acknowledged reaches the data center. The figures (ack latency, RSS) come from
//! `rapbench load` (docs/reliability.md), not from here.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::rapd::{audit_queued, depth, Rapd};
use common::{instrument_addr, World, BOX_ID};
use rapsim::load::{Behaviour, LoadSpec, Probe};
use rapsim::Instrument;

/// A generous ceiling for rapd's peak resident set under this load: 2000 connection
/// threads with 128 KiB stacks touch a few pages each; anything near this bound would
/// mean per-connection buffers grow with what a peer declares.
const RSS_BOUND_KIB: u64 = 256 * 1024;

fn vm_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn thousand_connections_of_misbehaviour_starve_no_instrument() {
    let mut w = World::new("load");
    w.start_nginx();
    let probe_port = ("LOAD-PROBE".to_string(), instrument_addr());
    let pipe_port = ("LOAD-PIPE".to_string(), instrument_addr());
    let loaded: Vec<(String, SocketAddr)> = (1..=20).map(|i| (format!("LOAD-{i:02}"), instrument_addr())).collect();
    let mut spec = w.rapd_spec();
    spec.instruments = [probe_port.clone(), pipe_port.clone()].into_iter().chain(loaded.iter().cloned()).collect();
    spec.extra = "[ingest]\nmax_connections_per_port = 64\nframe_timeout_ms = 3000\nidle_timeout_ms = 6000\n".into();
    let rapd = Rapd::start(&spec);
    let pid = rapd.pid();

    // 1200 connections, 60 per loaded port (under the limit of 64): per port 30 slow
    // senders, 20 idle, 5 slowloris, 5 oversized.
    let mut load = LoadSpec::mixed(
        loaded.clone(),
        1200,
        &[(Behaviour::SlowSender, 6), (Behaviour::Idle, 4), (Behaviour::Slowloris, 1), (Behaviour::Oversized, 1)],
    );
    load.slow_chunk = 16;
    load.slow_pause = Duration::from_millis(20);
    load.verdict_wait = Duration::from_secs(20);
    let running = load.start().expect("load threads");
    // The 600 slow senders and 400 idle connections stay open; the others come and go.
    common::wait_for("1000 load connections open", Duration::from_secs(120), || {
        (running.counters.open() >= 1000).then_some(())
    });

    let probe = Probe::new(probe_port.1, probe_port.0.clone(), Duration::from_millis(50)).spawn().expect("probe");
    let pipe = Instrument { count: Some(20_000), rate: 2000, ..Instrument::new(pipe_port.1, pipe_port.0.clone()) }
        .spawn()
        .expect("pipelining instrument");
    let pipe_sum = pipe.join().expect("pipelining instrument run");
    // Let the misbehaviours cycle a few more times (slowloris verdicts come after 3 s).
    std::thread::sleep(Duration::from_secs(8));
    let st_under_load = rapd.status();
    let probe = probe.stop();
    let counters = running.stop();
    let peak_kib = vm_kib(pid, "VmHWM:");

    // The good instruments: every report acknowledged, nothing else.
    assert_eq!(pipe_sum.stats.acked, 20_000, "pipelining instrument: {:?}", pipe_sum.stats);
    assert!(pipe_sum.stats.errors.is_empty(), "pipelining instrument: {:?}", pipe_sum.stats.errors);
    assert!(probe.acked >= 20, "probe: {} acks", probe.acked);
    assert_eq!(probe.acked, probe.sent, "probe: every report acknowledged: {:?}", probe.problems);
    assert!(probe.problems.is_empty(), "probe: {:?}", probe.problems);
    assert_eq!(probe.connects, 1, "probe: never disconnected");

    // Every misbehaviour got its verdict; the slow senders got their acks.
    let slow = counters.of(Behaviour::SlowSender).snapshot();
    let loris = counters.of(Behaviour::Slowloris).snapshot();
    let big = counters.of(Behaviour::Oversized).snapshot();
    let idle = counters.of(Behaviour::Idle).snapshot();
    eprintln!("slow senders {slow:?}\nslowloris {loris:?}\noversized {big:?}\nidle {idle:?}");
    for (name, s) in [("slow sender", &slow), ("slowloris", &loris), ("oversized", &big), ("idle", &idle)] {
        assert_eq!(s.unexpected, 0, "{name}: answers that break the protocol: {s:?}");
        assert_eq!(s.other_errors, 0, "{name}: {s:?}");
    }
    assert!(slow.acked >= 600, "each of the 600 slow senders was acknowledged: {slow:?}");
    assert!(loris.timeouts >= 100, "each slowloris was cut off with `timeout`: {loris:?}");
    assert!(big.too_large >= 100, "each oversized frame was refused with `too_large`: {big:?}");
    assert!(big.closed_by_box >= 100, "and its connection closed: {big:?}");
    assert!(idle.connects >= 400, "{idle:?}");

    // Every loaded port kept receiving its slow senders' reports and counted the misbehaviour.
    for (serial, _) in &loaded {
        let p = st_under_load.ports.as_array().unwrap().iter().find(|p| p["serial"] == serial.as_str()).unwrap();
        assert!(p["received"].as_u64().unwrap() >= 30, "{serial}: its 30 slow senders' reports arrive: {p}");
        assert!(p["errors"].as_u64().unwrap() >= 10, "{serial}: its 10 misbehaving connections are counted: {p}");
    }
    assert!(peak_kib > 0 && peak_kib < RSS_BOUND_KIB, "rapd peak RSS {peak_kib} KiB");
    eprintln!("rapd peak RSS under load: {peak_kib} KiB");

    // All that was acknowledged reaches the data center.
    let acked_total = pipe_sum.stats.acked + probe.acked + slow.acked;
    let st = rapd.wait_status("queue drained", Duration::from_secs(120), |s| depth(s) == 0);
    assert_eq!(st.uplink["records_sent"].as_u64().unwrap(), acked_total + audit_queued(&st), "{:?}", st.uplink);
    let dc = w.client.stats().expect("dc stats");
    assert_eq!(dc.for_box(BOX_ID).unwrap().records, acked_total + audit_queued(&st));
}
