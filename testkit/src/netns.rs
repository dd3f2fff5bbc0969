//! Network namespaces and real traffic for firewall tests: a namespace per role (deleted
//! on drop, also when the test fails), small TCP/UDP services, and probes that tell an
//! answer, a refusal (a reset or an ICMP error: something answered) and silence (nothing
//! came back at all) apart. Used by the host firewall tests and by the QEMU tests that
//! probe the booted image from the namespaces around it.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Why namespace tests cannot run here (not root, no `ip netns`), if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`ip netns` unavailable: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("`ip` unavailable: {e}")),
    }
}

/// Runs a command; its stdout. Panics with the command and its stderr when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS` (split on whitespace) in the caller's namespace.
pub fn ip(args: &str) {
    run(Command::new("ip").args(args.split_whitespace()));
}

/// Joins the network namespace `name` (made with `ip netns add`) on the calling thread.
pub fn enter(name: &str) -> std::io::Result<()> {
    let path = format!("/run/netns/{name}");
    let fd = File::open(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| std::io::Error::other(format!("setns {path}: {e}")))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// `<prefix><pid>-<n>-<role>`, loopback up.
    pub fn new(prefix: &str, role: &str) -> Ns {
        let name = format!("{prefix}{}-{}-{role}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        ip(&format!("netns add {name}"));
        let ns = Ns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &str) {
        run(Command::new("ip").args(["netns", "exec", &self.name, "ip"]).args(args.split_whitespace()));
    }

    /// A shell command inside the namespace; its stdout.
    pub fn sh(&self, cmd: &str) -> String {
        run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", cmd]))
    }

    /// Runs `f` on a thread that has joined the namespace: sockets it opens and
    /// processes it starts live there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.name).unwrap_or_else(|e| panic!("{e}"));
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A service on its own thread, stopped on drop.
#[derive(Debug)]
pub struct Service {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// A TCP service in `ns` that answers every connection with the line
    /// `<addr> sees <peer address>` and closes.
    pub fn start(ns: &Ns, addr: SocketAddr) -> Service {
        let l = ns.enter(|| TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name));
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = writeln!(c, "{addr} sees {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Service { stop, thread: Some(thread) }
    }

    /// A UDP echo service in `ns`.
    pub fn udp_echo(ns: &Ns, addr: SocketAddr) -> Service {
        let sock = ns.enter(|| UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind udp {addr} in {}: {e}", ns.name));
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        });
        Service { stop, thread: Some(thread) }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a probe got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// The service answered this line (TCP) or these bytes (UDP).
    Answer(String),
    /// A reset or an ICMP error: something answered.
    Refused(String),
    /// Nothing came back at all.
    Silence,
}

/// How long a UDP probe waits for an answer before it sends its datagram again.
const UDP_RESEND: Duration = Duration::from_millis(600);

/// How long a probe waits for anything to come back (host tests).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A TCP connection from namespace `ns` (from source address `from`, if given) to `to`:
/// the first line the service sends, a refusal, or silence within `timeout`.
pub fn tcp(ns: &Ns, from: Option<Ipv4Addr>, to: SocketAddrV4, timeout: Duration) -> Got {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn};
    ns.enter(|| {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        if let Some(f) = from {
            socket::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(f, 0))).expect("bind the source");
        }
        match socket::connect(fd.as_raw_fd(), &SockaddrIn::from(to)) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(e) => return Got::Refused(e.to_string()),
        }
        let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLOUT)];
        let ms = nix::poll::PollTimeout::try_from(timeout.as_millis().min(60_000) as i32).unwrap();
        if nix::poll::poll(&mut fds, ms).unwrap() == 0 {
            return Got::Silence;
        }
        match socket::getsockopt(&fd, socket::sockopt::SocketError).unwrap() {
            0 => {}
            e => return Got::Refused(nix::errno::Errno::from_raw(e).to_string()),
        }
        let s = TcpStream::from(fd);
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut line = String::new();
        match BufReader::new(s).read_line(&mut line) {
            Ok(_) => Got::Answer(line.trim().to_owned()),
            Err(e) => Got::Refused(format!("connected, then {e}")),
        }
    })
}

/// A UDP datagram from `ns` (from `from`, if given) to `to` on a connected socket: the
/// reply, a refusal (ICMP port unreachable), or silence within `timeout`.
pub fn udp(ns: &Ns, from: Option<Ipv4Addr>, to: SocketAddrV4, timeout: Duration) -> Got {
    ns.enter(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(from.unwrap_or(Ipv4Addr::UNSPECIFIED), 0)).expect("bind udp");
        if let Err(e) = s.connect(to) {
            return Got::Refused(e.to_string());
        }
        // A datagram, or the ICMP error it draws, can be lost; and a host sends ICMP errors
        // to one peer at about one per second once a small burst is used up (Linux's
        // icmp_ratelimit), so a probe right after others may draw nothing. Send again
        // every UDP_RESEND until the timeout: silence is then silence to all of them.
        let end = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            if let Err(e) = s.send(b"ping") {
                return Got::Refused(e.to_string());
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Got::Silence;
            }
            s.set_read_timeout(Some(left.min(UDP_RESEND))).unwrap();
            match s.recv(&mut buf) {
                Ok(n) => return Got::Answer(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if std::time::Instant::now() >= end {
                        return Got::Silence;
                    }
                }
                Err(e) => return Got::Refused(e.to_string()),
            }
        }
    })
}

/// `ip:port`.
pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A probe and what it must get.
#[derive(Debug)]
pub struct Probe<'a> {
    pub what: &'static str,
    pub ns: &'a Ns,
    pub proto: Proto,
    pub from: Option<Ipv4Addr>,
    pub to: SocketAddrV4,
    pub want: Want,
}

/// What a probe must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The TCP service answers and sees this source address.
    Answer(Ipv4Addr),
    /// Something answers (service, reset or ICMP error): the path exists.
    Reached,
    /// No answer at all.
    Silence,
}

/// A TCP probe from `ns` with the namespace's own source address.
pub fn probe<'a>(what: &'static str, ns: &'a Ns, to: SocketAddrV4, want: Want) -> Probe<'a> {
    Probe { what, ns, proto: Proto::Tcp, from: None, to, want }
}

/// A UDP probe from `ns` with the namespace's own source address.
pub fn probe_udp<'a>(what: &'static str, ns: &'a Ns, to: SocketAddrV4, want: Want) -> Probe<'a> {
    Probe { what, ns, proto: Proto::Udp, from: None, to, want }
}

/// [`check_within`] with [`PROBE_TIMEOUT`].
pub fn check(phase: &str, probes: &[Probe<'_>]) {
    check_within(phase, probes, PROBE_TIMEOUT);
}

/// Runs the probes in parallel, each waiting at most `timeout`; fails listing every
/// probe that did not get what it must.
pub fn check_within(phase: &str, probes: &[Probe<'_>], timeout: Duration) {
    let results: Vec<Got> = std::thread::scope(|s| {
        let hs: Vec<_> = probes
            .iter()
            .map(|p| {
                s.spawn(move || match p.proto {
                    Proto::Tcp => tcp(p.ns, p.from, p.to, timeout),
                    Proto::Udp => udp(p.ns, p.from, p.to, timeout),
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut bad = Vec::new();
    for (p, got) in probes.iter().zip(&results) {
        let ok = match (p.want, got) {
            (Want::Answer(src), Got::Answer(line)) => line.ends_with(&format!(" sees {src}")),
            (Want::Reached, Got::Answer(_) | Got::Refused(_)) => true,
            (Want::Silence, Got::Silence) => true,
            _ => false,
        };
        if !ok {
            bad.push(format!(
                "  {} ({:?} {} -> {}): wanted {:?}, got {got:?}",
                p.what, p.proto, p.ns.name, p.to, p.want
            ));
        }
    }
    assert!(bad.is_empty(), "{phase}:\n{}", bad.join("\n"));
}
