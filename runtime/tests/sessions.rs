//! Remote sessions end to end on a real kernel: network namespaces, real rapd (FIPS mode,
//! firewall on), the data center (rapdc behind real nginx) queueing `session` commands, the
//! person at each instrument simulated by rapsim's consent agent, a real OpenVPN 2.6 server
//! on the uplink side, and the technician behind that server.
//!
//! ```text
//!   X (eth0 10.10.1.2: remote desktop :5900, other :5901) ──veth── ix0 ┐
//!   Y (eth0 10.10.2.2: remote desktop :5900)              ──veth── iy0 ┤ box ├ up0 ──veth── uplink (eth0 192.0.2.1:
//!                                                                      │     │          OpenVPN server :443, tun vpnsrv0
//!   the data center: rapdc + nginx on the host's loopback,             └─────┘          10.99.0.1 = the technician;
//!   reached through a forwarder on the box's (and the uplink's) loopback                tinyproxy :3128, danted :1080)
//! ```
//!
//! One test, phases in order (the time of each is printed): nothing without approval,
//! refused answers, an approved session (X reachable, Y and the rest not), expiry, a second
//! request that needs its own approval and is revoked, declined, expired, closed by the data
//! center, a dropped tunnel, and the same session through a CONNECT and a SOCKS5 proxy.
//! Needs root, `ip netns`, openvpn, tinyproxy and danted (scripts/install-deps.sh).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::rapd::fips_conf;
use common::{World, BOX_ID};
use rapbox::control::{self, Request};
use rapbox_testkit::netns::{self, ip, sa, tcp, Got, Ns, Service};
use rapbox_testkit::peers::{Dante, DanteConfig, Tinyproxy, TinyproxyConfig};
use rapdc::commands::{CommandRecord, CommandState, QueueCommand};
use rapsim::{ConsentAgent, Decision, RunningConsent};
use rapwire::agent::ErrorCode;
use serde_json::Value;

const X: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
const Y: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 2);
const UP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const TECH: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const RDP: u16 = 5900;
const TUN: &str = "raptun0";
/// What "gone within 5 s" is measured against.
const FIVE_S: Duration = Duration::from_secs(5);

macro_rules! require_netns {
    () => {
        if let Some(why) = netns::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn openvpn() -> PathBuf {
    let p = PathBuf::from("/usr/sbin/openvpn");
    assert!(p.is_file(), "openvpn is missing: apt-get install openvpn (scripts/install-deps.sh)");
    p
}

/// Copies TCP connections accepted on `listener` (a socket of some namespace) to `to` (in
/// the test's own namespace), both ways.
fn forward(listener: TcpListener, to: SocketAddr) {
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let Ok(up) = TcpStream::connect(to) else { continue };
            for (mut a, mut b) in [(c.try_clone().unwrap(), up.try_clone().unwrap()), (up, c)] {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = a.read(&mut buf) {
                        if n == 0 || b.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}

/// The box, the instruments, the uplink side.
struct Lab {
    boxns: Ns,
    x: Ns,
    y: Ns,
    up: Ns,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            boxns: Ns::new("rvs", "box"),
            x: Ns::new("rvs", "x"),
            y: Ns::new("rvs", "y"),
            up: Ns::new("rvs", "up"),
        };
        let bx = &lab.boxns.name;
        for (inner, peer) in [("ix0", &lab.x), ("iy0", &lab.y), ("up0", &lab.up)] {
            ip(&format!("link add {inner} netns {bx} type veth peer name eth0 netns {}", peer.name));
            peer.ip("link set eth0 up");
        }
        lab.x.ip("addr add 10.10.1.2/24 dev eth0");
        lab.y.ip("addr add 10.10.2.2/24 dev eth0");
        // No routes back to the box: X answers the tunnel only because the box translates.
        lab.up.ip("addr add 192.0.2.1/24 dev eth0");
        lab.up.ip("route add 10.10.0.0/16 via 192.0.2.10");
        lab
    }
}

/// The OpenVPN server on the uplink side (killed on drop).
struct VpnServer {
    child: Child,
    log: PathBuf,
}

impl VpnServer {
    fn start(lab: &Lab, dir: &Path, w: &World) -> VpnServer {
        let log = dir.join(format!("openvpn-server-{}.log", Instant::now().elapsed().as_nanos()));
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.up.name])
            .arg(openvpn())
            .args([
                "--mode",
                "server",
                "--tls-server",
                "--proto",
                "tcp-server",
                "--local",
                "192.0.2.1",
                "--port",
                "443",
            ])
            .args(["--dev", "vpnsrv0", "--dev-type", "tun", "--topology", "subnet"])
            .args(["--ifconfig", "10.99.0.1", "255.255.255.0", "--ifconfig-pool", "10.99.0.2", "10.99.0.20"])
            .args(["--push", "topology subnet"])
            // What a hostile or misconfigured server could push: the box must ignore it.
            .args(["--push", "route 10.10.0.0 255.255.0.0", "--push", "redirect-gateway def1"])
            .arg("--ca")
            .arg(&w.pki.ca.cert)
            .arg("--cert")
            .arg(&w.pki.server.cert)
            .arg("--key")
            .arg(&w.pki.server.key)
            .args(["--dh", "none", "--data-ciphers", "AES-256-GCM:AES-128-GCM", "--tls-version-min", "1.2"])
            .args(["--keepalive", "5", "30", "--verb", "3", "--suppress-timestamps"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("openvpn server");
        let s = VpnServer { child, log };
        let end = Instant::now() + Duration::from_secs(10);
        while !s.log_text().contains("Initialization Sequence Completed") {
            assert!(Instant::now() < end, "the OpenVPN server did not start:\n{}", s.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// TCP connections the server accepted.
    fn connections(&self) -> usize {
        self.log_text().lines().filter(|l| l.contains("TCP connection established with")).count()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for VpnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rapd in the box namespace (killed on drop).
struct Rapd {
    child: Option<Child>,
    log: PathBuf,
    socket: PathBuf,
}

impl Rapd {
    fn spawn(lab: &Lab, dir: &Path, config: &str, name: &str) -> Rapd {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.boxns.name, env!("CARGO_BIN_EXE_rapd"), "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start rapd");
        let r = Rapd { child: Some(child), log, socket: dir.join("control.sock") };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let st = control::request(&r.socket, &Request::Status).ok().and_then(|r| r.status);
            if st.is_some_and(|s| s.firewall["enabled"] == true && s.ports.as_array().is_some_and(|p| p.len() == 2)) {
                break;
            }
            assert!(Instant::now() < end, "rapd not ready:\n{}", r.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// rapd's audit records about `target`, as (action, outcome, detail).
    fn audited(&self, target: &str) -> Vec<(String, String, Value)> {
        let r = control::request(&self.socket, &Request::AuditTail { n: 10_000 }).expect("audit tail");
        r.audit_records
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v["target"] == target)
            .map(|v| {
                (
                    v["action"].as_str().unwrap_or("").to_owned(),
                    v["outcome"].as_str().unwrap_or("").to_owned(),
                    v["detail"].clone(),
                )
            })
            .collect()
    }

    fn actions(&self, target: &str) -> Vec<String> {
        self.audited(target).into_iter().map(|(a, _, _)| a).collect()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
            let end = Instant::now() + Duration::from_secs(20);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < end, "rapd did not stop:\n{}", self.log_text());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Rapd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct T {
    lab: Lab,
    w: World,
    dir: PathBuf,
    started: Instant,
}

impl T {
    fn phase(&self, name: &str) {
        eprintln!("[{:6.1} s] {name}", self.started.elapsed().as_secs_f64());
    }

    fn config(&self, proxy: Option<&str>) -> String {
        let pki = &self.w.pki;
        let proxy = proxy.map(|p| format!("proxy = {p:?}\n")).unwrap_or_default();
        format!(
            r#"
[queue]
path = {queue:?}

[uplink]
url = "{url}"
ca = {ca:?}
cert = {cert:?}
key = {key:?}
{proxy}
[network.uplink]
interface = "up0"
addressing = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53"]

[firewall]
enabled = true
drift_check_s = 2

[commands]
poll_interval_s = 1

[sessions]
enabled = true
endpoint = "192.0.2.1"
ca = {ca:?}
max_minutes = 10
answer_within_s = 10
connect_timeout_s = 20
openvpn = {openvpn:?}
run_dir = {run:?}

[fips]
openssl_conf = {fips:?}

[control]
socket = {socket:?}

[log]
target = "stderr"
level = "info"

[[instrument]]
serial = "INST-X"
model = "analyser X"
interface = "ix0"
box_address = "10.10.1.1/24"
address = "10.10.1.2"
agent_port = 7300
remote_desktop_port = 5900

[[instrument]]
serial = "INST-Y"
model = "analyser Y"
interface = "iy0"
box_address = "10.10.2.1/24"
address = "10.10.2.2"
agent_port = 7300
remote_desktop_port = 5900
"#,
            queue = self.dir.join("data/queue.db"),
            url = self.w.url(),
            ca = pki.ca.cert,
            cert = pki.client.cert,
            key = pki.client.key,
            openvpn = openvpn(),
            run = self.dir.join("run/session"),
            fips = fips_conf(),
            socket = self.dir.join("control.sock"),
        )
    }

    fn consent(&self, ns: &Ns, addr: Ipv4Addr, serial: &str) -> RunningConsent {
        let a = ConsentAgent::new(SocketAddr::new(IpAddr::V4(addr), 7300), serial, Decision::Ignore);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match ns.enter(|| a.clone().spawn()) {
                Ok(r) => return r,
                Err(e) => {
                    assert!(Instant::now() < end, "consent agent of {serial}: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn queue(&self, id: &str, kind: &str, target: &[&str], args: Value) {
        let mut q = QueueCommand::new(BOX_ID, kind);
        q.id = Some(id.into());
        q.target = target.iter().map(|s| s.to_string()).collect();
        q.args = args;
        self.w.client.queue_command(&q).expect("queue");
    }

    fn wait_command(&self, id: &str, what: &str, pred: impl Fn(&CommandRecord) -> bool) -> CommandRecord {
        self.w.client.wait_command(id, Duration::from_secs(30), pred).unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    fn final_state(&self, id: &str) -> CommandRecord {
        self.wait_command(id, "a final result", |c| {
            matches!(c.state, CommandState::Succeeded | CommandState::Failed | CommandState::Refused)
        })
    }

    fn tun_exists(&self) -> bool {
        self.lab.boxns.sh("ip -br link show").lines().any(|l| l.starts_with(TUN))
    }

    /// The box's address on the tunnel (waits until it has one).
    fn tun_address(&self) -> Ipv4Addr {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.lab.boxns.sh(&format!("ip -4 -br addr show {TUN} 2>/dev/null || true"));
            if let Some(a) =
                out.split_whitespace().nth(2).and_then(|c| c.split('/').next()).and_then(|a| a.parse().ok())
            {
                return a;
            }
            assert!(Instant::now() < end, "no tunnel address");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn session_rules(&self) -> Vec<String> {
        self.lab.boxns.sh("iptables-save").lines().filter(|l| l.contains("session ")).map(str::to_owned).collect()
    }

    fn forwarding(&self) -> String {
        self.lab.boxns.sh("cat /proc/sys/net/ipv4/ip_forward").trim().to_owned()
    }

    /// Waits until the tun device and the session's rules are gone; how long it took.
    fn wait_torn_down(&self, within: Duration) -> Duration {
        let t0 = Instant::now();
        while self.tun_exists() || !self.session_rules().is_empty() {
            assert!(
                t0.elapsed() < within,
                "not torn down within {within:?}: tun {} rules {:?}",
                self.tun_exists(),
                self.session_rules()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t0.elapsed()
    }

    /// Nothing of a session is there: no tun, no rule, no route, forwarding off.
    fn assert_closed(&self, when: &str) {
        assert!(!self.tun_exists(), "{when}: tun device present");
        assert!(self.session_rules().is_empty(), "{when}: session rules {:?}", self.session_rules());
        let routes = self.lab.boxns.sh("ip -4 route show");
        assert!(!routes.contains("10.99.") && !routes.contains(TUN), "{when}: routes {routes}");
        assert_eq!(self.forwarding(), "0", "{when}: forwarding");
    }

    /// The technician (on the server's side of the tunnel) to `to`.
    fn tech(&self, to: Ipv4Addr, port: u16) -> Got {
        tcp(&self.lab.up, Some(TECH), sa(to, port), Duration::from_millis(1000))
    }

    /// Asks for a session with X and waits for the ask at X's agent; its session number.
    fn ask(&self, agent: &RunningConsent, id: &str, nth: usize) -> u64 {
        self.queue(id, "session", &["INST-X"], serde_json::json!({ "requester": "service desk", "reason": id }));
        let a = agent.wait_ask(nth, Duration::from_secs(20)).unwrap_or_else(|| panic!("{id}: no SESSION_ASK at X"));
        assert_eq!(a.requester, "service desk");
        assert_eq!(a.max_s, 600);
        assert_eq!(a.answer_within_s, 10);
        a.session
    }

    /// X's remote desktop reachable from the technician, nothing else.
    fn assert_only_x(&self, tun: Ipv4Addr, when: &str) {
        match self.tech(tun, RDP) {
            Got::Answer(l) => assert_eq!(l, "10.10.1.2:5900 sees 10.10.1.1", "{when}"),
            other => panic!("{when}: the technician does not reach X's remote desktop: {other:?}"),
        }
        for (to, port, what) in [
            (tun, 5901, "another port of X via the box"),
            (tun, 7300, "the box's agent port"),
            (X, RDP, "X directly"),
            (Y, RDP, "Y directly"),
            (X, 5901, "X's other port directly"),
        ] {
            let got = self.tech(to, port);
            assert!(!matches!(got, Got::Answer(_)), "{when}: {what} ({to}:{port}) answered: {got:?}");
        }
    }
}

fn assert_refused(r: rapsim::Reply, code: ErrorCode, what: &str) {
    match r {
        Err((c, reason)) => assert_eq!(c, code, "{what}: {reason}"),
        Ok(()) => panic!("{what}: accepted"),
    }
}

#[test]
fn sessions_need_consent_reach_only_their_instrument_and_end_cleanly() {
    require_netns!();
    openvpn();
    let started = Instant::now();
    let mut w = World::new(&format!("sessions-{}", std::process::id()));
    w.start_nginx();
    let dir = w.dir().join("box");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let lab = Lab::new();
    // The data center on the box's loopback (and the uplink side's, for the proxies).
    for ns in [&lab.boxns, &lab.up] {
        let l = ns.enter(|| TcpListener::bind(w.dc_addr)).expect("forwarder");
        forward(l, w.dc_addr);
    }
    let t = T { lab, w, dir: dir.clone(), started };
    let _x_rdp = Service::start(&t.lab.x, SocketAddr::new(IpAddr::V4(X), RDP));
    let _x_other = Service::start(&t.lab.x, SocketAddr::new(IpAddr::V4(X), 5901));
    let _y_rdp = Service::start(&t.lab.y, SocketAddr::new(IpAddr::V4(Y), RDP));
    let server = VpnServer::start(&t.lab, &dir, &t.w);
    let rapd = Rapd::spawn(&t.lab, &dir, &t.config(None), "rapd");
    let ax = t.consent(&t.lab.x, Ipv4Addr::new(10, 10, 1, 1), "INST-X");
    let ay = t.consent(&t.lab.y, Ipv4Addr::new(10, 10, 2, 1), "INST-Y");

    // ---- without approval: nothing ----
    t.phase("asked, not approved");
    t.assert_closed("before any request");
    let s1 = t.ask(&ax, "s-1", 1);
    std::thread::sleep(Duration::from_millis(1500));
    t.assert_closed("asked, not yet approved");
    assert_eq!(server.connections(), 0, "the box connected to the VPN server without approval");
    assert!(matches!(t.tech(Ipv4Addr::new(10, 99, 0, 2), RDP), Got::Silence | Got::Refused(_)));
    // Answers that are refused, each audited: another instrument's agent, bad fields.
    assert_refused(ay.approve(s1, "Mallory", 60), ErrorCode::UnknownSession, "Y approving X's session");
    assert_refused(ax.approve(s1, "Dr. Lab", 601), ErrorCode::Malformed, "more than the maximum");
    assert_refused(ax.approve(s1, "", 60), ErrorCode::Malformed, "nobody approving");
    assert_refused(ax.approve(s1, "Dr.\u{7}Lab", 60), ErrorCode::Malformed, "who with a control character");
    assert_refused(ax.approve(s1 + 1000, "Dr. Lab", 60), ErrorCode::UnknownSession, "an unknown session");
    assert_refused(ax.revoke(s1, "not yet"), ErrorCode::UnknownSession, "revoking before the approval");
    t.assert_closed("after refused answers");
    assert_eq!(server.connections(), 0);

    // ---- approved: the tunnel, X and only X ----
    t.phase("approved for 8 s");
    let approved = Instant::now();
    ax.approve(s1, "Dr. Lab", 8).expect("approval");
    t.wait_command("s-1", "tunnel up", |c| c.detail["phase"] == "up");
    let up_after = approved.elapsed();
    let tun = t.tun_address();
    assert_eq!(server.connections(), 1);
    assert_eq!(t.forwarding(), "1");
    assert_eq!(t.session_rules().len(), 7, "{:?}", t.session_rules());
    let routes = t.lab.boxns.sh("ip -4 route show");
    assert!(!routes.contains("10.10.0.0/16 via") && !routes.contains("0.0.0.0/1"), "pushed routes taken: {routes}");
    t.assert_only_x(tun, "direct session");
    // The client rapd started: the FIPS configuration in its environment, the settings on its
    // command line, and under that configuration OpenVPN offers no non-approved cipher.
    let pid = std::fs::read_to_string(dir.join("run/session/openvpn.pid")).expect("openvpn pid file");
    let pid = pid.trim();
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let want_env = format!("OPENSSL_CONF={}", fips_conf().display());
    assert!(env.split(|b| *b == 0).any(|e| e == want_env.as_bytes()), "{want_env} not in OpenVPN's environment");
    let cmdline = String::from_utf8(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).unwrap().replace('\0', " ");
    for want in [
        "--proto tcp-client --remote 192.0.2.1 443",
        "--data-ciphers AES-256-GCM:AES-128-GCM",
        "--tls-version-min 1.2",
        "--route-nopull",
    ] {
        assert!(cmdline.contains(want), "{want} not in {cmdline}");
    }
    let ciphers = |conf: Option<&Path>| {
        let mut c = Command::new(openvpn());
        c.arg("--show-ciphers");
        if let Some(conf) = conf {
            c.env("OPENSSL_CONF", conf);
        }
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };
    assert!(ciphers(None).contains("CHACHA20-POLY1305"), "the check below must be able to fail");
    let fips = ciphers(Some(&fips_conf()));
    assert!(fips.contains("AES-256-GCM") && !fips.contains("CHACHA20-POLY1305"), "{fips}");
    t.phase(&format!("up {} ms after the approval; waiting for the expiry", up_after.as_millis()));
    // ---- expiry ----
    let ends_at = approved + Duration::from_secs(8);
    while Instant::now() < ends_at {
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = t.wait_torn_down(FIVE_S);
    t.phase(&format!("expired: tun and rules gone {} ms after the end of the approved time", gone.as_millis()));
    t.assert_closed("after the expiry");
    let r = t.final_state("s-1");
    assert_eq!(r.state, CommandState::Succeeded, "{r:?}");
    assert_eq!(r.detail["code"], "expired");
    assert_eq!(r.detail["approved_by"], "Dr. Lab");
    assert_eq!(ax.wait_end(s1, FIVE_S).as_deref(), Some("the approved 8 s are over"));
    assert!(matches!(t.tech(tun, RDP), Got::Silence | Got::Refused(_)));
    let acts = rapd.actions("s-1");
    for a in [
        "session.requested",
        "session.asked",
        "session.approved",
        "session.rules_added",
        "session.connecting",
        "session.tunnel_up",
        "session.ended",
    ] {
        assert!(acts.iter().any(|x| x == a), "{a} not audited: {acts:?}");
    }
    let refused: Vec<(String, String, Value)> = rapd.audited(&s1.to_string());
    assert_eq!(refused.len(), 5, "each refused answer audited: {refused:?}");
    assert!(refused.iter().all(|(a, o, _)| a == "session.answer_refused" && o == "denied"));
    assert!(
        refused
            .iter()
            .any(|(_, _, d)| d["code"] == "malformed"
                && d["reason"].as_str().unwrap().contains("601 s is not 1 to 600 s"))
    );

    // ---- a second request needs its own approval; revoked ----
    t.phase("second request, revoked");
    let s2 = t.ask(&ax, "s-2", 2);
    assert_ne!(s2, s1);
    assert_refused(ax.approve(s1, "Dr. Lab", 60), ErrorCode::UnknownSession, "the old approval again");
    std::thread::sleep(Duration::from_millis(1000));
    t.assert_closed("second request before its approval");
    assert_eq!(server.connections(), 1);
    ax.approve(s2, "Dr. Lab", 300).expect("approval");
    t.wait_command("s-2", "tunnel up", |c| c.detail["phase"] == "up");
    let tun = t.tun_address();
    t.assert_only_x(tun, "second session");
    // A deleted session rule is drift: the guard puts it back while the session lives.
    t.lab.boxns.sh("iptables -t nat -D PREROUTING 1");
    let end = Instant::now() + Duration::from_secs(6);
    while t.session_rules().len() != 7 {
        assert!(Instant::now() < end, "the deleted session rule was not restored: {:?}", t.session_rules());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(matches!(t.tech(tun, RDP), Got::Answer(_)), "X after the drift repair");
    let revoked = Instant::now();
    ax.revoke(s2, "done at the instrument").expect("revoke");
    let gone = t.wait_torn_down(FIVE_S);
    t.phase(&format!("revoked: gone {} ms after the revoke", gone.as_millis()));
    let _ = revoked;
    t.assert_closed("after the revoke");
    let r = t.final_state("s-2");
    assert_eq!((r.state, r.detail["code"].as_str()), (CommandState::Succeeded, Some("revoked")), "{r:?}");
    assert!(rapd.actions("s-2").contains(&"session.revoked".to_string()));

    // ---- declined ----
    t.phase("declined");
    ax.set_decision(Decision::Decline("run in progress".into()));
    let _s3 = t.ask(&ax, "s-3", 3);
    let r = t.final_state("s-3");
    assert_eq!((r.state, r.code.as_str()), (CommandState::Refused, "declined"), "{r:?}");
    assert!(r.reason.contains("run in progress"), "{r:?}");
    assert!(rapd.actions("s-3").contains(&"session.declined".to_string()));
    assert!(rapd.actions("s-3").contains(&"session.not_approved".to_string()));
    t.assert_closed("declined");

    // ---- requests refused before anything is asked ----
    t.phase("bad requests");
    let long = "x".repeat(65);
    for (id, target, args, code) in [
        ("s-bad-1", vec!["INST-X"], serde_json::json!({ "requester": long }), "malformed"),
        ("s-bad-2", vec!["INST-X"], serde_json::json!({ "bogus": 1 }), "malformed"),
        ("s-bad-3", vec!["INST-X"], serde_json::json!({ "max_minutes": 11 }), "malformed"),
        ("s-bad-4", vec!["INST-X", "INST-Y"], Value::Null, "bad_target"),
        ("s-bad-5", vec![], Value::Null, "bad_target"),
    ] {
        t.queue(id, "session", &target, args);
        let r = t.final_state(id);
        assert_eq!((r.state, r.code.as_str()), (CommandState::Refused, code), "{id}: {r:?}");
    }
    assert_eq!(ax.asks().len(), 3, "no refused request reached the instrument");
    t.assert_closed("bad requests");

    // ---- no answer in time, then a late approval ----
    t.phase("expired request (10 s)");
    ax.set_decision(Decision::Ignore);
    let s4 = t.ask(&ax, "s-4", 4);
    let r =
        t.w.client.wait_command("s-4", Duration::from_secs(20), |c| c.state == CommandState::Refused).expect("refused");
    assert_eq!(r.code, "not_approved", "{r:?}");
    assert_refused(ax.approve(s4, "Dr. Late", 60), ErrorCode::Expired, "a late approval");
    assert!(rapd
        .audited(&s4.to_string())
        .iter()
        .any(|(a, _, d)| a == "session.answer_refused" && d["code"] == "expired"));
    assert!(ax.wait_end(s4, FIVE_S).is_some());
    t.assert_closed("expired request");
    assert_eq!(server.connections(), 2);

    // ---- closed by the data center ----
    t.phase("closed by the data center");
    let s5 = t.ask(&ax, "s-5", 5);
    ax.approve(s5, "Dr. Lab", 300).expect("approval");
    t.wait_command("s-5", "tunnel up", |c| c.detail["phase"] == "up");
    t.queue("c-5", "session_close", &[], serde_json::json!({ "session": "s-5" }));
    t.wait_torn_down(Duration::from_secs(10));
    let r = t.final_state("s-5");
    assert_eq!(r.detail["code"], "closed", "{r:?}");
    assert_eq!(t.final_state("c-5").state, CommandState::Succeeded);
    t.queue("c-5b", "session_close", &[], serde_json::json!({ "session": "s-5" }));
    assert_eq!(t.final_state("c-5b").code, "unknown_session");
    t.assert_closed("closed");

    // ---- the tunnel drops ----
    t.phase("tunnel dropped");
    let s6 = t.ask(&ax, "s-6", 6);
    ax.approve(s6, "Dr. Lab", 300).expect("approval");
    t.wait_command("s-6", "tunnel up", |c| c.detail["phase"] == "up");
    server.stop();
    let gone = t.wait_torn_down(Duration::from_secs(10));
    t.phase(&format!("dropped: gone {} ms after the server was killed", gone.as_millis()));
    let r = t.final_state("s-6");
    assert_eq!((r.state, r.code.as_str()), (CommandState::Failed, "tunnel_dropped"), "{r:?}");
    t.assert_closed("dropped");

    // ---- through a CONNECT proxy (set at run time), then a SOCKS5 proxy (at start) ----
    drop(ay);
    let tp = t
        .lab
        .up
        .enter(|| {
            Tinyproxy::start(
                &dir,
                &TinyproxyConfig {
                    listen: IpAddr::V4(UP),
                    port: Some(3128),
                    allow: vec!["192.0.2.0/24".into()],
                    ..Default::default()
                },
            )
        })
        .expect("tinyproxy");
    let ds = t
        .lab
        .up
        .enter(|| {
            Dante::start(
                &dir,
                &DanteConfig {
                    listen: IpAddr::V4(UP),
                    port: Some(1080),
                    clients: vec!["192.0.2.0/24".into()],
                    external: Some("eth0".into()),
                    ..Default::default()
                },
            )
        })
        .expect("danted");
    let mut first = Some((rapd, ax));
    for (n, proxy) in [("connect", "http://192.0.2.1:3128"), ("socks5", "socks5://192.0.2.1:1080")] {
        t.phase(&format!("through the {n} proxy"));
        let server = VpnServer::start(&t.lab, &dir, &t.w);
        let (mut rapd, ax, nth) = match first.take() {
            // The running rapd gets the proxy through a run-time reconfiguration: the next
            // session uses it without a restart.
            Some((rapd, ax)) => {
                let mut keys = serde_json::Map::new();
                keys.insert("uplink.proxy".into(), proxy.into());
                let args = rapbox::reconfig::ApplyArgs {
                    document: None,
                    keys: Some(keys),
                    dry_run: false,
                    rollback: false,
                    on_behalf_of: None,
                };
                let r = control::request(&rapd.socket, &Request::ConfigApply(args)).expect("config apply");
                let rep = r.config_apply.expect("apply report");
                assert!(rep.changed_keys.contains(&"uplink.proxy".to_string()), "{rep:?}");
                (rapd, ax, 7)
            }
            None => {
                let rapd = Rapd::spawn(&t.lab, &dir, &t.config(Some(proxy)), &format!("rapd-{n}"));
                (rapd, t.consent(&t.lab.x, Ipv4Addr::new(10, 10, 1, 1), "INST-X"), 1)
            }
        };
        let id = format!("s-{n}");
        let s = t.ask(&ax, &id, nth);
        t.assert_closed(&format!("{n}: before the approval"));
        let approved = Instant::now();
        ax.approve(s, "Dr. Lab", 300).expect("approval");
        t.wait_command(&id, "tunnel up", |c| c.detail["phase"] == "up");
        t.phase(&format!("{n}: up {} ms after the approval", approved.elapsed().as_millis()));
        assert_eq!(server.connections(), 1);
        let tun = t.tun_address();
        t.assert_only_x(tun, n);
        // The tunnel went through the proxy: the proxy saw it, and the server saw the proxy.
        match n {
            "connect" => assert!(tp.wait_established("192.0.2.1", FIVE_S), "{}", tp.log()),
            _ => assert!(ds.wait_connect(SocketAddr::new(IpAddr::V4(UP), 443), FIVE_S), "{}", ds.log()),
        }
        assert!(!server.log_text().contains("192.0.2.10:"), "the server saw the box directly:\n{}", server.log_text());
        if n == "connect" {
            // rapd stopping ends the session first: tunnel and rules gone when it has exited.
            rapd.stop();
            t.assert_closed("rapd stopped during a session");
        } else {
            // rapd killed: OpenVPN dies with it (parent-death signal), the tun goes with it; the
            // rules, on an interface that no longer exists, go when rapd starts again.
            rapd.kill9();
            let t0 = Instant::now();
            while t.tun_exists() {
                assert!(t0.elapsed() < FIVE_S, "the tun device outlived rapd by 5 s");
                std::thread::sleep(Duration::from_millis(50));
            }
            t.phase(&format!("rapd killed: tun gone {} ms later", t0.elapsed().as_millis()));
            let again = Rapd::spawn(&t.lab, &dir, &t.config(Some(proxy)), "rapd-restarted");
            t.assert_closed("rapd started again after the kill");
            let r = t.final_state(&id);
            assert_eq!((r.state, r.code.as_str()), (CommandState::Failed, "interrupted"), "{r:?}");
            assert!(again.actions(&id).contains(&"session.ended".to_string()));
            drop(again);
            let r = t.final_state("s-connect");
            assert_eq!(r.detail["code"], "stopping", "{r:?}");
        }
        drop(rapd);
        server.stop();
    }

    // Every session step reached the data center as an audit record.
    let reports = t.w.client.all_reports(Some(BOX_ID), Some("")).expect("reports");
    let audit: Vec<&rapdc::api::Report> = reports.iter().filter(|r| r.kind == rapwire::Kind::Audit).collect();
    assert!(audit.iter().all(|r| r.priority == 0), "audit records go upstream as urgent");
    let actions: Vec<String> = audit
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.payload).ok())
        .filter(|v| v["target"] == "s-1")
        .map(|v| v["action"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        actions.contains(&"session.tunnel_up".to_string()) && actions.contains(&"session.ended".to_string()),
        "{actions:?}"
    );
    t.phase("done");
}
