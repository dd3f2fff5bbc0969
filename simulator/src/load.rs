//! Load: many concurrent agent connections against one box, in mixed misbehaviours,
//! and a [`Probe`] that measures what a well-behaved instrument sees meanwhile.
//!
//! Each connection of a [`LoadSpec`] runs on its own small thread and keeps its
//! behaviour until stopped, reconnecting whenever the box closes it:
//!
//! * [`Behaviour::SlowSender`]: a valid agent on a slow line — each report is written a
//!   few bytes at a time, complete well within the box's frame timeout, then it waits
//!   for the ack before the next one.
//! * [`Behaviour::Slowloris`]: starts a frame and never finishes it in time; the box
//!   must answer `timeout` and close.
//! * [`Behaviour::Oversized`]: declares a frame over the protocol's limit; the box must
//!   answer `too_large` and close.
//! * [`Behaviour::Idle`]: connects and says nothing, holding a connection slot until the
//!   box's idle timeout.
//!
//! Everything a connection saw is counted in [`LoadCounters`] by behaviour, so a test
//! can assert that every misbehaviour got its error code and every slow sender its acks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rapwire::agent::{ErrorCode, Reply};

use crate::raw::{report_frame, status_report, RawConn, RawEvent};
use crate::StatusText;

/// What one load connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    SlowSender,
    Slowloris,
    Oversized,
    Idle,
}

impl Behaviour {
    /// All behaviours, in the order of [`LoadCounters::by`].
    pub const ALL: [Behaviour; 4] =
        [Behaviour::SlowSender, Behaviour::Slowloris, Behaviour::Oversized, Behaviour::Idle];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::SlowSender => "slow sender",
            Behaviour::Slowloris => "slowloris",
            Behaviour::Oversized => "oversized frame",
            Behaviour::Idle => "idle",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of all connections of one behaviour.
#[derive(Debug, Default)]
pub struct BehaviourCounters {
    /// Connections established.
    pub connects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Reports acknowledged (slow senders).
    pub acked: AtomicU64,
    /// `timeout` errors received.
    pub timeouts: AtomicU64,
    /// `too_large` errors received.
    pub too_large: AtomicU64,
    /// `too_many_connections` errors received.
    pub too_many_connections: AtomicU64,
    /// Any other error code received.
    pub other_errors: AtomicU64,
    /// Connections the box closed.
    pub closed_by_box: AtomicU64,
    /// Answers that were not what the protocol says for this behaviour (stray acks,
    /// undecodable bytes, no answer within the wait).
    pub unexpected: AtomicU64,
}

/// A plain copy of [`BehaviourCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BehaviourSnapshot {
    pub connects: u64,
    pub connect_failures: u64,
    pub acked: u64,
    pub timeouts: u64,
    pub too_large: u64,
    pub too_many_connections: u64,
    pub other_errors: u64,
    pub closed_by_box: u64,
    pub unexpected: u64,
}

impl BehaviourCounters {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, code: ErrorCode) {
        match code {
            ErrorCode::Timeout => Self::add(&self.timeouts),
            ErrorCode::TooLarge => Self::add(&self.too_large),
            ErrorCode::TooManyConnections => Self::add(&self.too_many_connections),
            _ => Self::add(&self.other_errors),
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> BehaviourSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BehaviourSnapshot {
            connects: l(&self.connects),
            connect_failures: l(&self.connect_failures),
            acked: l(&self.acked),
            timeouts: l(&self.timeouts),
            too_large: l(&self.too_large),
            too_many_connections: l(&self.too_many_connections),
            other_errors: l(&self.other_errors),
            closed_by_box: l(&self.closed_by_box),
            unexpected: l(&self.unexpected),
        }
    }
}

/// Counters of a whole load run, by behaviour, plus the connections open right now.
#[derive(Debug, Default)]
pub struct LoadCounters {
    by: [BehaviourCounters; 4],
    open: AtomicU64,
}

impl LoadCounters {
    /// The counters of one behaviour.
    pub fn of(&self, b: Behaviour) -> &BehaviourCounters {
        &self.by[b.index()]
    }
    /// Load connections established and not yet closed.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// Many connections against a box's ports.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The ports (instrument serial, address); connection `i` goes to `ports[i % len]`.
    pub ports: Vec<(String, SocketAddr)>,
    /// One behaviour per connection.
    pub connections: Vec<Behaviour>,
    /// Slow senders write this many bytes at a time...
    pub slow_chunk: usize,
    /// ... with this pause in between.
    pub slow_pause: Duration,
    /// Payload bytes of a slow sender's report.
    pub payload_size: usize,
    /// A slowloris waits this long for the box's verdict (longer than its frame timeout).
    pub verdict_wait: Duration,
    /// Pause before a closed connection reconnects (oversized, slowloris, idle).
    pub reconnect_pause: Duration,
    /// Message ids of connection `i` start at `first_id + i * 1_000_000_000`.
    pub first_id: u64,
}

impl LoadSpec {
    /// `n` connections over `ports`, the behaviours repeating in the proportions
    /// `mix` gives (e.g. `[(SlowSender, 6), (Idle, 4), (Slowloris, 1), ...]`): connections
    /// are dealt to the ports round by round, each round one behaviour for every port, so
    /// that every port gets the same mix. Defaults suit the box's default 10 s frame timeout.
    pub fn mixed(ports: Vec<(String, SocketAddr)>, n: usize, mix: &[(Behaviour, usize)]) -> LoadSpec {
        let pattern: Vec<Behaviour> = mix.iter().flat_map(|(b, k)| std::iter::repeat_n(*b, *k)).collect();
        let per_round = ports.len().max(1);
        let connections = (0..n).map(|i| pattern[(i / per_round) % pattern.len().max(1)]).collect();
        LoadSpec {
            ports,
            connections,
            slow_chunk: 16,
            slow_pause: Duration::from_millis(100),
            payload_size: 200,
            verdict_wait: Duration::from_secs(30),
            reconnect_pause: Duration::from_secs(1),
            first_id: 1,
        }
    }

    /// Starts every connection; they run until [`Load::stop`].
    pub fn start(&self) -> std::io::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(LoadCounters::default());
        let mut handles = Vec::with_capacity(self.connections.len());
        for (i, b) in self.connections.iter().enumerate() {
            let (serial, addr) = self.ports[i % self.ports.len()].clone();
            let conn = Conn {
                spec: self.clone(),
                behaviour: *b,
                serial,
                addr,
                next_id: self.first_id + i as u64 * 1_000_000_000,
                stop: stop.clone(),
                counters: counters.clone(),
            };
            handles.push(
                thread::Builder::new().name(format!("load-{i}")).stack_size(96 * 1024).spawn(move || conn.run())?,
            );
        }
        Ok(Load { stop, counters, handles })
    }
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Live counters.
    pub counters: Arc<LoadCounters>,
    handles: Vec<JoinHandle<()>>,
}

impl Load {
    /// Stops every connection and waits for their threads.
    pub fn stop(self) -> Arc<LoadCounters> {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
        self.counters
    }
}

struct Conn {
    spec: LoadSpec,
    behaviour: Behaviour,
    serial: String,
    addr: SocketAddr,
    next_id: u64,
    stop: Arc<AtomicBool>,
    counters: Arc<LoadCounters>,
}

/// How often a waiting connection checks the stop flag.
const TICK: Duration = Duration::from_millis(100);

impl Conn {
    fn c(&self) -> &BehaviourCounters {
        self.counters.of(self.behaviour)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn pause(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopped() && Instant::now() < end {
            thread::sleep(TICK.min(end.saturating_duration_since(Instant::now())));
        }
    }

    fn run(mut self) {
        let mut text = StatusText::new(&self.serial);
        while !self.stopped() {
            let mut conn = match RawConn::connect(self.addr, Duration::from_secs(5)) {
                Ok(c) => c,
                Err(_) => {
                    BehaviourCounters::add(&self.c().connect_failures);
                    self.pause(self.spec.reconnect_pause);
                    continue;
                }
            };
            BehaviourCounters::add(&self.c().connects);
            self.counters.open.fetch_add(1, Ordering::Relaxed);
            match self.behaviour {
                Behaviour::SlowSender => self.slow_sender(&mut conn, &mut text),
                Behaviour::Slowloris => self.slowloris(&mut conn),
                Behaviour::Oversized => self.oversized(&mut conn),
                Behaviour::Idle => self.idle(&mut conn),
            }
            self.counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(conn);
            if !self.stopped() {
                self.pause(self.spec.reconnect_pause);
            }
        }
    }

    /// Records what the box said; true when the connection is over.
    fn verdict(&self, ev: RawEvent, expect: ErrorCode) -> bool {
        match ev {
            RawEvent::Reply(Reply::Error { code, .. }) => {
                self.c().error(code);
                if code != expect && code != ErrorCode::TooManyConnections {
                    BehaviourCounters::add(&self.c().unexpected);
                }
                code.closes_connection()
            }
            RawEvent::Closed => {
                BehaviourCounters::add(&self.c().closed_by_box);
                true
            }
            RawEvent::Reply(Reply::Ack { .. }) | RawEvent::Invalid(_) | RawEvent::Quiet | RawEvent::Request(_) => {
                BehaviourCounters::add(&self.c().unexpected);
                true
            }
        }
    }

    /// Waits for the box's error and close after a misbehaviour.
    fn await_close(&self, conn: &mut RawConn, expect: ErrorCode) {
        let end = Instant::now() + self.spec.verdict_wait;
        loop {
            if self.stopped() {
                return;
            }
            match conn.next_event(TICK) {
                RawEvent::Quiet if Instant::now() < end => continue,
                RawEvent::Closed => {
                    BehaviourCounters::add(&self.c().closed_by_box);
                    return;
                }
                ev => {
                    if self.verdict(ev, expect) {
                        // The error came first; the close follows.
                        if conn.next_event(Duration::from_secs(5)) == RawEvent::Closed {
                            BehaviourCounters::add(&self.c().closed_by_box);
                        }
                        return;
                    }
                }
            }
        }
    }

    fn slow_sender(&mut self, conn: &mut RawConn, text: &mut StatusText) {
        while !self.stopped() {
            let id = self.next_id;
            let frame = report_frame(&status_report(&self.serial, id, &text.next(false, self.spec.payload_size)));
            for (k, chunk) in frame.chunks(self.spec.slow_chunk.max(1)).enumerate() {
                if k > 0 {
                    // Stopping mid-frame leaves an incomplete frame, which the box never stores.
                    self.pause(self.spec.slow_pause);
                    if self.stopped() {
                        return;
                    }
                }
                if conn.send(chunk).is_err() {
                    BehaviourCounters::add(&self.c().closed_by_box);
                    return;
                }
            }
            // A complete frame: its ack is awaited even when stopping, so that every
            // report the box stored is counted.
            let end = Instant::now() + self.spec.verdict_wait;
            loop {
                match conn.next_event(TICK) {
                    RawEvent::Quiet if Instant::now() < end => continue,
                    RawEvent::Reply(Reply::Ack { msg_id, .. }) if msg_id == id => {
                        BehaviourCounters::add(&self.c().acked);
                        self.next_id += 1;
                        break;
                    }
                    ev => {
                        // Any error (a slow sender is valid: none is expected) or no ack.
                        if let RawEvent::Reply(Reply::Error { code, .. }) = &ev {
                            if *code == ErrorCode::TooManyConnections {
                                self.c().error(*code);
                                return;
                            }
                        }
                        self.verdict(ev, ErrorCode::Malformed);
                        BehaviourCounters::add(&self.c().unexpected);
                        return;
                    }
                }
            }
        }
    }

    fn slowloris(&self, conn: &mut RawConn) {
        let frame = report_frame(&status_report(&self.serial, self.next_id, &[b's'; 100]));
        // Half a frame, then silence: the frame timeout must cut it off.
        if conn.send(&frame[..frame.len() / 2]).is_err() {
            BehaviourCounters::add(&self.c().closed_by_box);
            return;
        }
        self.await_close(conn, ErrorCode::Timeout);
    }

    fn oversized(&self, conn: &mut RawConn) {
        let mut bytes = (10u32 << 20).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[rapwire::agent::VERSION, 0x01]);
        bytes.extend(std::iter::repeat_n(0xa5, 4096));
        // The box may close while the junk is still being written: that is its verdict too.
        let _ = conn.send(&bytes);
        self.await_close(conn, ErrorCode::TooLarge);
    }

    fn idle(&self, conn: &mut RawConn) {
        while !self.stopped() {
            match conn.next_event(TICK) {
                RawEvent::Quiet => continue,
                // The idle timeout: rapd closes without a word.
                RawEvent::Closed => {
                    BehaviourCounters::add(&self.c().closed_by_box);
                    return;
                }
                ev => {
                    self.verdict(ev, ErrorCode::Timeout);
                    if conn.next_event(Duration::from_secs(5)) == RawEvent::Closed {
                        BehaviourCounters::add(&self.c().closed_by_box);
                    }
                    return;
                }
            }
        }
    }
}

/// A well-behaved instrument that sends one report at a time at a fixed interval and
/// records how long each ack took.
#[derive(Debug, Clone)]
pub struct Probe {
    pub addr: SocketAddr,
    pub serial: String,
    /// Time between the start of two reports.
    pub interval: Duration,
    /// How long to wait for an ack before counting the report as unanswered.
    pub reply_timeout: Duration,
    pub first_id: u64,
    pub payload_size: usize,
}

/// What a probe saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    /// Reports sent.
    pub sent: u64,
    /// Acks received (each for the report just sent).
    pub acked: u64,
    /// Ack latencies in microseconds, in order.
    pub latencies_us: Vec<u64>,
    /// Anything but a prompt ack: error replies, no answer, closed connections.
    pub problems: Vec<String>,
    /// Connections made (1 when nothing went wrong).
    pub connects: u64,
}

impl ProbeReport {
    /// The `p`-th percentile (0..=100) of the latencies, in microseconds.
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    }
    /// The largest latency, in microseconds.
    pub fn max_us(&self) -> u64 {
        self.latencies_us.iter().copied().max().unwrap_or(0)
    }
}

/// A running probe.
#[derive(Debug)]
pub struct RunningProbe {
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<ProbeReport>>,
    handle: JoinHandle<()>,
}

impl RunningProbe {
    /// A copy of what it saw so far.
    pub fn report(&self) -> ProbeReport {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Stops it and returns what it saw.
    pub fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
        let r = self.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        r
    }
}

impl Probe {
    /// A probe at `interval` with 200-byte payloads and a 30 s reply timeout.
    pub fn new(addr: SocketAddr, serial: impl Into<String>, interval: Duration) -> Probe {
        Probe {
            addr,
            serial: serial.into(),
            interval,
            reply_timeout: Duration::from_secs(30),
            first_id: 1,
            payload_size: 200,
        }
    }

    /// Runs on its own thread until stopped.
    pub fn spawn(self) -> std::io::Result<RunningProbe> {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(ProbeReport::default()));
        let (s, l) = (stop.clone(), live.clone());
        let handle = thread::Builder::new().name(format!("probe-{}", self.serial)).spawn(move || self.run(&s, &l))?;
        Ok(RunningProbe { stop, live, handle })
    }

    fn run(&self, stop: &AtomicBool, live: &Mutex<ProbeReport>) {
        let note = |f: &dyn Fn(&mut ProbeReport)| f(&mut live.lock().unwrap_or_else(|e| e.into_inner()));
        let mut text = StatusText::new(&self.serial);
        let mut id = self.first_id;
        let mut conn: Option<RawConn> = None;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                thread::sleep((next - now).min(TICK));
                continue;
            }
            next += self.interval;
            if conn.is_none() {
                match RawConn::connect(self.addr, Duration::from_secs(5)) {
                    Ok(c) => {
                        conn = Some(c);
                        note(&|r| r.connects += 1);
                    }
                    Err(e) => {
                        note(&|r| r.problems.push(format!("connect: {e}")));
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let frame = report_frame(&status_report(&self.serial, id, &text.next(false, self.payload_size)));
            let t = Instant::now();
            if let Err(e) = c.send(&frame) {
                note(&|r| r.problems.push(format!("id {id}: send: {e}")));
                conn = None;
                continue;
            }
            note(&|r| r.sent += 1);
            match c.next_event(self.reply_timeout) {
                RawEvent::Reply(Reply::Ack { msg_id, .. }) if msg_id == id => {
                    let us = t.elapsed().as_micros() as u64;
                    note(&|r| {
                        r.acked += 1;
                        r.latencies_us.push(us);
                    });
                    id += 1;
                }
                ev => {
                    note(&|r| r.problems.push(format!("id {id}: {ev:?}")));
                    conn = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakebox::{Behaviour as Fake, FakeBox};

    #[test]
    fn probe_measures_acks() {
        let fake = FakeBox::start("DXI-0001", Fake::AckAll { hold: 1 });
        let p = Probe::new(fake.addr, "DXI-0001", Duration::from_millis(10)).spawn().unwrap();
        thread::sleep(Duration::from_millis(300));
        let r = p.stop();
        assert!(r.acked >= 5, "{r:?}");
        assert!(r.problems.is_empty(), "{r:?}");
        assert_eq!(r.connects, 1);
        assert!(r.percentile_us(50.0) <= r.max_us());
    }

    #[test]
    fn slow_senders_are_acked_and_oversized_frames_refused() {
        let fake = FakeBox::start("DXI-0001", Fake::AckAll { hold: 1 });
        let mut spec = LoadSpec::mixed(
            vec![("DXI-0001".into(), fake.addr)],
            4,
            &[(Behaviour::SlowSender, 1), (Behaviour::Oversized, 1)],
        );
        spec.slow_chunk = 64;
        spec.slow_pause = Duration::from_millis(5);
        let load = spec.start().unwrap();
        thread::sleep(Duration::from_millis(800));
        let c = load.stop();
        let slow = c.of(Behaviour::SlowSender).snapshot();
        assert!(slow.acked >= 2 && slow.unexpected == 0, "{slow:?}");
        let big = c.of(Behaviour::Oversized).snapshot();
        assert!(big.too_large >= 2 && big.unexpected == 0, "{big:?}");
    }
}
