//! A tiny in-test box: a listener thread that answers agent frames according to a
//! scripted behaviour and records what it saw.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rapwire::agent::{self, ErrorCode, Frame, ReadError, Reply, Report};

/// How the fake box answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Store and ack everything; acks are held back until `hold` reports are
    /// unanswered (or the stream pauses), to expose whether the client pipelines.
    AckAll { hold: usize },
    /// For the first `times` connections: ack `k` reports, store the next `lost`
    /// without acking (committed, then "crashed"), then close. Later ones: ack all.
    DropAfter { k: usize, lost: usize, times: usize },
    /// Answer QueueFull to the first `n` reports received, then ack.
    QueueFullFirst { n: usize },
    /// Never answer.
    Silent,
    /// Close a connection whose frame is incomplete after this long (slowloris guard).
    ReadTimeout(Duration),
}

/// What the fake box observed.
#[derive(Debug, Default)]
pub struct Seen {
    /// Reports received per connection, in order.
    pub per_conn: Vec<Vec<Report>>,
    /// How many times each id was stored (must end at 1 for each).
    pub stored: BTreeMap<u64, u32>,
    /// Most reports received but not yet answered at any moment.
    pub max_unanswered: usize,
    /// Reports answered with QueueFull so far.
    pub queue_full_sent: usize,
}

pub struct FakeBox {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    pub serial: String,
    done: Arc<AtomicBool>,
}

impl Drop for FakeBox {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

impl FakeBox {
    pub fn start(serial: &str, behaviour: Behaviour) -> FakeBox {
        Self::start_on("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()), serial, behaviour)
    }

    pub fn start_on(addr: SocketAddr, serial: &str, behaviour: Behaviour) -> FakeBox {
        let listener = TcpListener::bind(addr).expect("bind fake box");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let done = Arc::new(AtomicBool::new(false));
        let (s2, d2, serial2) = (Arc::clone(&seen), Arc::clone(&done), serial.to_string());
        thread::spawn(move || {
            let mut conn_no = 0;
            for stream in listener.incoming() {
                if d2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let idx = {
                    let mut s = s2.lock().unwrap();
                    s.per_conn.push(Vec::new());
                    s.per_conn.len() - 1
                };
                let (seen, serial) = (Arc::clone(&s2), serial2.clone());
                let n = conn_no;
                conn_no += 1;
                thread::spawn(move || serve(stream, &seen, idx, n, &serial, behaviour));
            }
        });
        FakeBox { addr, seen, serial: serial.to_string(), done }
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Seen>, idx: usize, conn_no: usize, serial: &str, b: Behaviour) {
    let mut w = stream.try_clone().expect("clone");
    if let Behaviour::ReadTimeout(t) = b {
        let _ = stream.set_read_timeout(Some(t));
    }
    let mut rd = BufReader::with_capacity(64 * 1024, stream);
    let mut body = Vec::new();
    let mut unanswered: Vec<Reply> = Vec::new();
    let mut in_conn = 0usize;
    loop {
        // With AckAll, held acks go out once `hold` are pending or the client pauses
        // (nothing more arrives for 20 ms): a pipelining client fills its window first.
        if let Behaviour::AckAll { hold } = b {
            let mut flush = unanswered.len() >= hold;
            if !flush && !unanswered.is_empty() && rd.buffer().is_empty() {
                let _ = rd.get_ref().set_read_timeout(Some(Duration::from_millis(20)));
                let more = rd.fill_buf().map(|b| b.len());
                let _ = rd.get_ref().set_read_timeout(None);
                match more {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        flush = true
                    }
                    Err(_) => return,
                }
            }
            if flush {
                let mut out = Vec::new();
                for r in unanswered.drain(..) {
                    r.encode_into(&mut out);
                }
                if w.write_all(&out).is_err() {
                    return;
                }
            }
        }
        match agent::read_body(&mut rd, &mut body) {
            Ok(()) => {}
            Err(ReadError::TooLarge(_)) => {
                let reply = Reply::Error { msg_id: 0, code: ErrorCode::TooLarge, reason: "too large".into() };
                let _ = agent::write_reply(&mut w, &reply);
                return;
            }
            Err(ReadError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                let reply = Reply::Error { msg_id: 0, code: ErrorCode::Timeout, reason: "too slow".into() };
                let _ = agent::write_reply(&mut w, &reply);
                return;
            }
            Err(_) => return,
        }
        let report = match agent::decode(&body) {
            Ok(Frame::Report(r)) => r,
            Ok(Frame::Reply(_) | Frame::Request(_)) => {
                let msg_id = agent::peek_msg_id(&body);
                let reply = Reply::Error { msg_id, code: ErrorCode::UnknownFrameType, reason: "reply".into() };
                let _ = agent::write_reply(&mut w, &reply);
                continue;
            }
            Err(e) => {
                let msg_id = agent::peek_msg_id(&body);
                let reply = Reply::Error { msg_id, code: e.code(), reason: e.to_string() };
                let _ = agent::write_reply(&mut w, &reply);
                continue;
            }
        };
        let id = report.msg_id;
        let mut s = seen.lock().unwrap();
        s.per_conn[idx].push(report.clone());
        in_conn += 1;
        if report.serial != serial {
            drop(s);
            let reply = Reply::Error { msg_id: id, code: ErrorCode::WrongInstrument, reason: "wrong".into() };
            let _ = agent::write_reply(&mut w, &reply);
            continue;
        }
        let store = |s: &mut Seen| {
            let n = s.stored.entry(id).or_insert(0);
            let duplicate = *n > 0;
            if !duplicate {
                *n = 1;
            }
            Reply::Ack { msg_id: id, duplicate }
        };
        match b {
            Behaviour::AckAll { .. } => {
                let r = store(&mut s);
                unanswered.push(r);
                s.max_unanswered = s.max_unanswered.max(unanswered.len());
            }
            Behaviour::DropAfter { k, lost, times } => {
                let r = store(&mut s);
                if conn_no < times && in_conn > k {
                    if in_conn >= k + lost {
                        return; // "crash": close without acking the last `lost`
                    }
                    continue;
                }
                drop(s);
                if agent::write_reply(&mut w, &r).is_err() {
                    return;
                }
            }
            Behaviour::QueueFullFirst { n } => {
                let reply = if s.queue_full_sent < n {
                    s.queue_full_sent += 1;
                    Reply::Error { msg_id: id, code: ErrorCode::QueueFull, reason: "queue full".into() }
                } else {
                    store(&mut s)
                };
                drop(s);
                if agent::write_reply(&mut w, &reply).is_err() {
                    return;
                }
            }
            Behaviour::ReadTimeout(_) => {
                let r = store(&mut s);
                drop(s);
                let _ = agent::write_reply(&mut w, &r);
            }
            Behaviour::Silent => {}
        }
    }
}
