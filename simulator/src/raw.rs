//! Deliberately misbehaving clients, for the box's negative tests.
//!
//! Each helper opens its own plain TCP connection and reports what the box did:
//! which replies came back and whether it closed the connection. None of them
//! retries anything; they exist to prove that one bad client gets its error code
//! and does not stall the others.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rapwire::agent::{self, Frame, Reply, Report};
use rapwire::Kind;

use crate::instrument::{now_ms, STATUS_PRIORITY};
use crate::SimError;

/// A well-formed status report (for building valid or deliberately broken frames).
pub fn status_report(serial: &str, msg_id: u64, payload: &[u8]) -> Report {
    Report {
        msg_id,
        timestamp_ms: now_ms(),
        kind: Kind::Status,
        priority: STATUS_PRIORITY,
        serial: serial.to_string(),
        payload: payload.to_vec(),
    }
}

/// The complete frame (length prefix included) of a report.
pub fn report_frame(report: &Report) -> Vec<u8> {
    let mut out = Vec::new();
    report.encode_into(&mut out);
    out
}

/// What the box sent back on a raw connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// A decoded reply.
    Reply(Reply),
    /// The box closed (or reset) the connection.
    Closed,
    /// Nothing arrived within the wait.
    Quiet,
    /// Bytes that are not a valid reply frame (described).
    Invalid(String),
    /// A version-2 frame (a request of the box, or its answer to one of ours).
    Request(rapwire::requests::Message),
}

/// Everything a raw exchange produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOutcome {
    /// Replies, in arrival order.
    pub replies: Vec<Reply>,
    /// Whether the box closed the connection.
    pub closed: bool,
    /// Descriptions of undecodable bytes the box sent (should stay empty).
    pub invalid: Vec<String>,
    /// Version-2 frames the box sent, in arrival order.
    pub requests: Vec<rapwire::requests::Message>,
    /// From the first byte sent to the end of the exchange.
    pub elapsed: Duration,
}

impl RawOutcome {
    /// The error codes received, in order.
    pub fn error_codes(&self) -> Vec<agent::ErrorCode> {
        self.replies
            .iter()
            .filter_map(|r| match r {
                Reply::Error { code, .. } => Some(*code),
                Reply::Ack { .. } => None,
            })
            .collect()
    }
}

/// A plain TCP connection to a box port that speaks frames only when told to.
#[derive(Debug)]
pub struct RawConn {
    addr: SocketAddr,
    stream: TcpStream,
    inbuf: Vec<u8>,
    closed: bool,
}

impl RawConn {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<RawConn, SimError> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|source| SimError::Io {
            addr,
            op: "connecting",
            source,
        })?;
        let _ = stream.set_nodelay(true);
        Ok(RawConn { addr, stream, inbuf: Vec::new(), closed: false })
    }

    /// The underlying socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), SimError> {
        self.stream.write_all(bytes).map_err(|source| SimError::Io { addr: self.addr, op: "sending", source })
    }

    /// Sends a report as one frame.
    pub fn send_report(&mut self, report: &Report) -> Result<(), SimError> {
        self.send(&report_frame(report))
    }

    /// Waits up to `wait` for the next event.
    pub fn next_event(&mut self, wait: Duration) -> RawEvent {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(ev) = self.take_frame() {
                return ev;
            }
            if self.closed {
                return RawEvent::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return RawEvent::Quiet;
            }
            if !self.fill(Some(left)) && !self.closed {
                return RawEvent::Quiet;
            }
        }
    }

    /// Collects replies until the box closes the connection or stays quiet for `quiet`.
    pub fn collect(&mut self, quiet: Duration) -> RawOutcome {
        let start = Instant::now();
        let mut out = RawOutcome::default();
        loop {
            match self.next_event(quiet) {
                RawEvent::Reply(r) => out.replies.push(r),
                RawEvent::Invalid(s) => out.invalid.push(s),
                RawEvent::Request(m) => out.requests.push(m),
                RawEvent::Closed => {
                    out.closed = true;
                    break;
                }
                RawEvent::Quiet => break,
            }
        }
        out.elapsed = start.elapsed();
        out
    }

    /// Whether the box has closed the connection, reading (and keeping) whatever it
    /// sent first. Does not block.
    pub fn is_closed(&mut self) -> bool {
        if !self.closed && self.stream.set_nonblocking(true).is_ok() {
            while self.fill(None) {}
            let _ = self.stream.set_nonblocking(false);
        }
        self.closed
    }

    /// Reads once into the input buffer. Returns false on timeout / would-block.
    fn fill(&mut self, timeout: Option<Duration>) -> bool {
        if timeout.is_some() {
            let _ = self.stream.set_read_timeout(timeout);
        }
        let mut tmp = [0u8; 4096];
        match self.stream.read(&mut tmp) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.inbuf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    fn take_frame(&mut self) -> Option<RawEvent> {
        if self.inbuf.len() < 4 {
            return None;
        }
        let n = u32::from_be_bytes([self.inbuf[0], self.inbuf[1], self.inbuf[2], self.inbuf[3]]) as usize;
        if n > agent::MAX_BODY {
            let ev = RawEvent::Invalid(format!("reply declares {n} bytes"));
            self.inbuf.clear();
            return Some(ev);
        }
        if self.inbuf.len() < 4 + n {
            return None;
        }
        let ev = match agent::decode(&self.inbuf[4..4 + n]) {
            Ok(Frame::Reply(r)) => RawEvent::Reply(r),
            Ok(Frame::Report(r)) => RawEvent::Invalid(format!("box sent a report (id {})", r.msg_id)),
            Ok(Frame::Request(m)) => RawEvent::Request(m),
            Err(e) => RawEvent::Invalid(e.to_string()),
        };
        self.inbuf.drain(..4 + n);
        Some(ev)
    }
}

/// Connects, sends `bytes` and collects replies until the box closes the connection
/// or stays quiet for `quiet`.
pub fn send_bytes(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Result<RawOutcome, SimError> {
    let mut c = RawConn::connect(addr, Duration::from_secs(2))?;
    let start = Instant::now();
    c.send(bytes)?;
    let mut out = c.collect(quiet);
    out.elapsed = start.elapsed();
    Ok(out)
}

/// Sends a frame header declaring `declared_len` body bytes (more than the box
/// accepts), followed by a few bytes of body, and collects the answer.
pub fn send_oversized(addr: SocketAddr, declared_len: u32, quiet: Duration) -> Result<RawOutcome, SimError> {
    let mut bytes = declared_len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[agent::VERSION, 0x01, 0, 0, 0, 0, 0, 0, 0, 1]);
    send_bytes(addr, &bytes, quiet)
}

/// What a slowloris connection achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrickleOutcome {
    /// Bytes written before the box closed the connection (or all of them).
    pub written: usize,
    /// Whether the box closed the connection before every byte was written.
    pub closed_early: bool,
    /// Replies and closing seen during and after the trickle.
    pub outcome: RawOutcome,
}

/// Writes `bytes` one at a time, `interval` apart (slowloris), then collects replies
/// until the box closes or stays quiet for `quiet`. Stops early when the box closes.
pub fn trickle(
    addr: SocketAddr,
    bytes: &[u8],
    interval: Duration,
    quiet: Duration,
) -> Result<TrickleOutcome, SimError> {
    let mut c = RawConn::connect(addr, Duration::from_secs(2))?;
    let start = Instant::now();
    let mut res = TrickleOutcome::default();
    for b in bytes {
        if c.is_closed() || c.send(std::slice::from_ref(b)).is_err() {
            res.closed_early = true;
            break;
        }
        res.written += 1;
        thread::sleep(interval);
    }
    let mut outcome = c.collect(quiet);
    outcome.elapsed = start.elapsed();
    res.closed_early |= res.written < bytes.len();
    res.outcome = outcome;
    Ok(res)
}

/// A set of connections that never send anything.
#[derive(Debug)]
pub struct IdleConnections {
    conns: Vec<RawConn>,
    /// Connection attempts that failed (refused or timed out).
    pub failed: usize,
}

impl IdleConnections {
    /// How many were established.
    pub fn len(&self) -> usize {
        self.conns.len()
    }
    /// Whether none was established.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
    /// How many the box has not closed yet (does not block).
    pub fn still_open(&mut self) -> usize {
        self.conns.iter_mut().map(|c| !c.is_closed()).filter(|&open| open).count()
    }
    /// Error codes the box sent on these connections so far (e.g. TooManyConnections).
    pub fn error_codes(&mut self) -> Vec<agent::ErrorCode> {
        let mut codes = Vec::new();
        for c in &mut self.conns {
            c.is_closed();
            while let Some(ev) = c.take_frame() {
                if let RawEvent::Reply(Reply::Error { code, .. }) = ev {
                    codes.push(code);
                }
            }
        }
        codes
    }
}

/// Opens `n` connections to `addr` and keeps them idle until dropped.
pub fn idle_connections(addr: SocketAddr, n: usize, connect_timeout: Duration) -> IdleConnections {
    let mut idle = IdleConnections { conns: Vec::with_capacity(n), failed: 0 };
    for _ in 0..n {
        match RawConn::connect(addr, connect_timeout) {
            Ok(c) => idle.conns.push(c),
            Err(_) => idle.failed += 1,
        }
    }
    idle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakebox::{Behaviour, FakeBox};
    use rapwire::agent::ErrorCode;

    const QUIET: Duration = Duration::from_millis(300);

    #[test]
    fn garbage_gets_its_error_code() {
        let fake = FakeBox::start("DXI-0001", Behaviour::AckAll { hold: 1 });
        // A frame whose body is not a report: version 1, unknown kind 99.
        let mut frame = report_frame(&status_report("DXI-0001", 7, b"x"));
        frame[4 + 18] = 99;
        let out = send_bytes(fake.addr, &frame, QUIET).unwrap();
        assert_eq!(out.error_codes(), vec![ErrorCode::Malformed]);
        assert_eq!(out.replies[0].msg_id(), 7);
        assert!(!out.closed && out.invalid.is_empty());
        let ok = send_bytes(fake.addr, &report_frame(&status_report("DXI-0001", 8, b"ok")), QUIET).unwrap();
        assert_eq!(ok.replies, vec![Reply::Ack { msg_id: 8, duplicate: false }]);
    }

    #[test]
    fn oversized_frame_is_refused_and_closed() {
        let fake = FakeBox::start("DXI-0001", Behaviour::AckAll { hold: 1 });
        let out = send_oversized(fake.addr, 10 * 1024 * 1024, QUIET).unwrap();
        assert_eq!(out.error_codes(), vec![ErrorCode::TooLarge]);
        assert!(out.closed);
    }

    #[test]
    fn slowloris_is_cut_off() {
        let fake = FakeBox::start("DXI-0001", Behaviour::ReadTimeout(Duration::from_millis(100)));
        let frame = report_frame(&status_report("DXI-0001", 1, &[b'a'; 100]));
        let res = trickle(fake.addr, &frame, Duration::from_millis(250), QUIET).unwrap();
        assert!(res.closed_early, "{res:?}");
        assert!(res.written < frame.len());
        assert_eq!(res.outcome.error_codes(), vec![ErrorCode::Timeout]);
        assert!(res.outcome.closed);
    }

    #[test]
    fn idle_connections_stay_open_until_dropped() {
        let fake = FakeBox::start("DXI-0001", Behaviour::ReadTimeout(Duration::from_millis(300)));
        let mut idle = idle_connections(fake.addr, 20, Duration::from_secs(1));
        assert_eq!((idle.len(), idle.failed), (20, 0));
        assert_eq!(idle.still_open(), 20);
        thread::sleep(Duration::from_millis(700));
        assert_eq!(idle.still_open(), 0);
        assert_eq!(idle.error_codes(), vec![ErrorCode::Timeout; 20]);
    }

    #[test]
    fn raw_conn_reads_replies_one_by_one() {
        let fake = FakeBox::start("DXI-0001", Behaviour::AckAll { hold: 1 });
        let mut c = RawConn::connect(fake.addr, Duration::from_secs(1)).unwrap();
        c.send_report(&status_report("DXI-0001", 1, b"a")).unwrap();
        assert_eq!(c.next_event(QUIET), RawEvent::Reply(Reply::Ack { msg_id: 1, duplicate: false }));
        c.send_report(&status_report("DXI-0001", 1, b"a")).unwrap();
        assert_eq!(c.next_event(QUIET), RawEvent::Reply(Reply::Ack { msg_id: 1, duplicate: true }));
        assert_eq!(c.next_event(Duration::from_millis(50)), RawEvent::Quiet);
        assert!(!c.is_closed());
    }
}
