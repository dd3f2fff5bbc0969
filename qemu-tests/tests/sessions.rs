//! Remote sessions in the booted image: rapd in the guest starts the image's OpenVPN 2.6
//! inside its sandbox only after the person at instrument X approved, the technician behind
//! a real OpenVPN server reaches X's remote desktop and the box's SSH through the tunnel and
//! nothing else, and every ending takes the tunnel and the rules away. One boot.
//!
//! ```text
//!   ns A  inst0 10.10.1.2 = X (consent agent, remote desktop :5900, other :5901) ─ enp0s4 ┐
//!   ns B  inst1 10.10.2.2 = Y (consent agent, remote desktop :5900)              ─ enp0s5 ┤ guest
//!   ns U  uplink0 10.0.2.2 (gateway), 10.0.2.100 (data center relay)             ─ enp0s3 ┘ 10.0.2.15
//!         uv0 192.168.77.1 ── veth ── ns V vv0 192.168.77.2: OpenVPN server :443, tun 10.99.0.1 = the technician
//! ```
//!
//! The session also runs through tinyproxy (CONNECT) and danted (SOCKS5) in U, each set as
//! the uplink's proxy at run time with `rapctl config apply`. The 128 kbit/s phase shapes both directions of the U–V link with tc and prints the time
//! from the approval to the tunnel being up (docs/benchmarks.md). Skips only when the image
//! is missing.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qemu_tests::bridge::UnixToTcp;
use qemu_tests::datacenter::{DataCenter, BOX_ID};
use qemu_tests::image::{self, TEST_PASSWORD};
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig, VmExtras, UPLINK_TAP};
use rapbox_testkit::netns::{sa, tcp, Got, Ns, Service};
use rapbox_testkit::peers::{Dante, DanteConfig, Tinyproxy, TinyproxyConfig};
use rapdc::commands::{CommandRecord, CommandState, QueueCommand};
use rapsim::{ConsentAgent, Decision, RunningConsent};
use rapwire::agent::ErrorCode;
use serde_json::Value;

const X: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
const X_BOX: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const Y: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 2);
const Y_BOX: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 1);
const UP_BOX: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DC: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const VPN: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const TECH: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const RDP: u16 = 5900;
const SERIAL_X: &str = "QSS-0001";
const SERIAL_Y: &str = "QSS-0002";
const FIVE_S: u64 = 5;

/// The image's rapd.toml template: uplink, firewall, two ports with remote desktops, sessions.
fn template(out: &Path) -> PathBuf {
    let src = qemu_tests::workspace().join("buildroot-overlay/rootfs/usr/share/rapbox/rapd.toml.in");
    let mut t = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    t.push_str(&format!(
        r#"
[network.uplink]
interface = "enp0s3"
addressing = "static"
address = "{UP_BOX}/24"
gateway = "{GW}"

[firewall]
enabled = true

[commands]
poll_interval_s = 1

[sessions]
enabled = true
endpoint = "{VPN}"
ca = "/data/provision/ca.crt"
max_minutes = 10
answer_within_s = 60

[[instrument]]
serial = "{SERIAL_X}"
model = "rapsim"
interface = "enp0s4"
box_address = "{X_BOX}/24"
address = "{X}"
agent_port = 7300
remote_desktop_port = {RDP}

[[instrument]]
serial = "{SERIAL_Y}"
model = "rapsim"
interface = "enp0s5"
box_address = "{Y_BOX}/24"
address = "{Y}"
agent_port = 7300
remote_desktop_port = {RDP}
"#
    ));
    std::fs::write(out, t).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    out.to_path_buf()
}

/// The data center on U's 10.0.2.100:443, piped through a Unix socket to nginx on the host.
struct DcRelay {
    stop: Arc<AtomicBool>,
    _bridge: UnixToTcp,
}

impl DcRelay {
    fn start(u: &Ns, dc: &DataCenter, test: &str) -> DcRelay {
        let sock = qemu_tests::workspace().join(format!("target/qemu-tests/{test}-dc.sock"));
        let bridge = UnixToTcp::start(&sock, dc.port).expect("bridge to the data center");
        let l = u.enter(|| TcpListener::bind(SocketAddr::from((DC, 443)))).expect("bind 10.0.2.100:443 in U");
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((tcp, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = tcp.set_nonblocking(false);
                let Ok(unix) = UnixStream::connect(&sock) else { continue };
                let (Ok(mut t2), Ok(mut u2)) = (tcp.try_clone(), unix.try_clone()) else { continue };
                let (mut t1, mut u1) = (tcp, unix);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut t1, &mut u1);
                    let _ = u1.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut t2);
                    let _ = t2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        DcRelay { stop, _bridge: bridge }
    }
}

impl Drop for DcRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The namespaces around the VM.
struct Around {
    a: Ns,
    b: Ns,
    u: Ns,
    v: Ns,
}

impl Around {
    fn new(vm: &Vm) -> Around {
        let around =
            Around { a: Ns::new("rqs", "a"), b: Ns::new("rqs", "b"), u: Ns::new("rqs", "u"), v: Ns::new("rqs", "v") };
        let q = vm.netns();
        let end = Instant::now() + timeout(30);
        for tap in ["inst0", "inst1", UPLINK_TAP] {
            while q.exec(&["ip", "-o", "link", "show", tap]).expect("ip link").contains("NO-CARRIER") {
                assert!(Instant::now() < end, "QEMU did not open {tap}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for (tap, ns) in [("inst0", &around.a), ("inst1", &around.b), (UPLINK_TAP, &around.u)] {
            q.exec(&["ip", "link", "set", tap, "netns", &ns.name]).expect("move the tap");
            ns.ip(&format!("link set {tap} up"));
        }
        around.a.ip("addr add 10.10.1.2/24 dev inst0");
        around.b.ip("addr add 10.10.2.2/24 dev inst1");
        for addr in [GW, DC] {
            around.u.ip(&format!("addr add {addr}/24 dev {UPLINK_TAP}"));
        }
        around.u.ip("route add 10.10.0.0/16 via 10.0.2.15");
        rapbox_testkit::netns::ip(&format!(
            "link add uv0 netns {} type veth peer name vv0 netns {}",
            around.u.name, around.v.name
        ));
        around.u.ip("addr add 192.168.77.1/24 dev uv0");
        around.u.ip("link set uv0 up");
        around.u.sh("sysctl -qw net.ipv4.ip_forward=1");
        around.v.ip("addr add 192.168.77.2/24 dev vv0");
        around.v.ip("link set vv0 up");
        around.v.ip("route add default via 192.168.77.1");
        around
    }
}

/// The OpenVPN server in V (killed on drop).
struct VpnServer {
    child: Child,
    log: PathBuf,
}

impl VpnServer {
    fn start(v: &Ns, dc: &DataCenter) -> VpnServer {
        let log = dc.dir.join("openvpn-server.log");
        let out = File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &v.name, "openvpn"])
            .args([
                "--mode",
                "server",
                "--tls-server",
                "--proto",
                "tcp-server",
                "--local",
                "192.168.77.2",
                "--port",
                "443",
            ])
            .args(["--dev", "vpnsrv0", "--dev-type", "tun", "--topology", "subnet"])
            .args(["--ifconfig", "10.99.0.1", "255.255.255.0", "--ifconfig-pool", "10.99.0.2", "10.99.0.20"])
            .args(["--push", "topology subnet", "--push", "redirect-gateway def1"])
            .arg("--ca")
            .arg(&dc.pki.ca.cert)
            .arg("--cert")
            .arg(&dc.pki.server.cert)
            .arg("--key")
            .arg(&dc.pki.server.key)
            .args(["--dh", "none", "--data-ciphers", "AES-256-GCM:AES-128-GCM", "--tls-version-min", "1.2"])
            .args(["--keepalive", "5", "30", "--verb", "3", "--suppress-timestamps"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("openvpn server (apt-get install openvpn)");
        let s = VpnServer { child, log };
        let end = Instant::now() + Duration::from_secs(20);
        while !s.log_text().contains("Initialization Sequence Completed") {
            assert!(Instant::now() < end, "the OpenVPN server did not start:\n{}", s.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn connections(&self) -> usize {
        self.log_text().lines().filter(|l| l.contains("TCP connection established with")).count()
    }
}

impl Drop for VpnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn journal(vm: &mut Vm) -> String {
    vm.console.run("journalctl -u rapd.service --no-pager -n 60 | cat", timeout(30)).0
}

/// In the guest: "tun=<0|1> rules=<n> fwd=<0|1> ovpn=<n>".
fn guest_state(vm: &mut Vm) -> String {
    vm.console
        .run_ok(
            "printf 'tun=%s rules=%s fwd=%s ovpn=%s\\n' \"$(ip link show raptun0 >/dev/null 2>&1 && echo 1 || echo 0)\" \
             \"$(iptables-save | grep -c 'session ')\" \"$(cat /proc/sys/net/ipv4/ip_forward)\" \"$(pgrep -c -x openvpn)\"",
            timeout(30),
        )
        .trim()
        .to_owned()
}

const CLOSED: &str = "tun=0 rules=0 fwd=0 ovpn=0";

/// Waits in the guest until the tun device, the rules and OpenVPN are gone (at most `secs`
/// of the guest's clock after the command reached it).
fn wait_gone(vm: &mut Vm, secs: u64) -> bool {
    let (_, rc) = vm.console.run(
        &format!(
            "timeout {secs} sh -c 'while ip link show raptun0 >/dev/null 2>&1 || iptables-save | grep -q \"session \" \
             || pgrep -x openvpn >/dev/null; do sleep 0.1; done'"
        ),
        timeout(secs + 30),
    );
    rc == 0
}

fn consent(ns: &Ns, box_ip: Ipv4Addr, serial: &str) -> RunningConsent {
    let a = ConsentAgent::new(SocketAddr::new(IpAddr::V4(box_ip), 7300), serial, Decision::Ignore);
    let end = Instant::now() + timeout(60);
    loop {
        match ns.enter(|| a.clone().spawn()) {
            Ok(r) => return r,
            Err(e) => {
                assert!(Instant::now() < end, "consent agent of {serial}: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

struct Dc<'a> {
    dc: &'a DataCenter,
}

impl Dc<'_> {
    fn queue(&self, id: &str, kind: &str, target: &[&str], args: Value) {
        self.dc
            .client
            .queue_command(&QueueCommand {
                id: Some(id.into()),
                target: target.iter().map(|s| s.to_string()).collect(),
                args,
                ..QueueCommand::new(BOX_ID, kind)
            })
            .expect("queue");
    }

    fn wait(&self, id: &str, secs: u64, pred: impl Fn(&CommandRecord) -> bool) -> CommandRecord {
        self.dc.client.wait_command(id, timeout(secs), pred).unwrap_or_else(|e| panic!("{id}: {e}"))
    }

    fn up(&self, id: &str) -> Ipv4Addr {
        let r = self.wait(id, 60, |c| c.detail["phase"] == "up" || c.state.is_final());
        assert_eq!(r.detail["phase"], "up", "{r:?}");
        r.detail["tunnel_address"].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{r:?}"))
    }

    fn ask(&self, agent: &RunningConsent, id: &str, nth: usize) -> u64 {
        self.queue(id, "session", &[SERIAL_X], serde_json::json!({ "requester": "service desk", "reason": id }));
        agent.wait_ask(nth, timeout(60)).unwrap_or_else(|| panic!("{id}: no SESSION_ASK at X")).session
    }
}

/// ssh from V (the technician's side) to `to` with `opts`: (output, exit status).
fn ssh(v: &Ns, to: Ipv4Addr, opts: &str) -> (String, i32) {
    let out = Command::new("ip")
        .args(["netns", "exec", &v.name, "timeout", "60", "ssh", "-n", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20"])
        .args(["-b", &TECH.to_string()])
        .args(opts.split_whitespace())
        .arg(format!("nobody@{to}"))
        .arg("true")
        .output()
        .expect("ssh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (text, out.status.code().unwrap_or(-1))
}

#[test]
fn remote_sessions_in_the_booted_image() {
    let test = "sess_guest";
    let Some(built) = image::built_or_skip(test) else { return };
    let dc = DataCenter::start(test).expect("data center");
    let raw = image::private_copy(&built, test).expect("copy");
    rapimage::provision::provision(
        &raw,
        &built.dir.join("manifest.json"),
        &template(&dc.dir.join("rapd.toml.in")),
        &rapimage::provision::Identity {
            ca: dc.pki.ca.cert.clone(),
            cert: dc.pki.client.cert.clone(),
            key: dc.pki.client.key.clone(),
            url: dc.url(),
        },
    )
    .expect("rapimage provision");
    let disk = image::overlay_of(&raw, test).expect("overlay");
    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: None, memory_mib: 1024 };
    let t0 = Instant::now();
    let mut vm =
        Vm::start_with(test, &built, &cfg, &VmExtras { uplink_tap: true, ..VmExtras::default() }).expect("qemu");
    let around = Around::new(&vm);
    let _relay = DcRelay::start(&around.u, &dc, test);
    let server = VpnServer::start(&around.v, &dc);
    let _svc = [
        Service::start(&around.a, SocketAddr::from((X, RDP))),
        Service::start(&around.a, SocketAddr::from((X, 5901))),
        Service::start(&around.b, SocketAddr::from((Y, RDP))),
    ];
    let d = Dc { dc: &dc };
    let tech = |to: Ipv4Addr, port: u16| tcp(&around.v, Some(TECH), sa(to, port), timeout(2));
    let phase = |s: &str| println!("[{:6.1} s] {s}", t0.elapsed().as_secs_f64());

    vm.console.login("root", TEST_PASSWORD, timeout(120));
    let (out, rc) = vm.console.run(
        "for i in $(seq 240); do rapctl status --json 2>/dev/null | grep -q '\"last_success_ms\": [0-9]' && break; sleep 0.5; done; \
         rapctl status --json | grep -c '\"last_success_ms\": [0-9]'",
        timeout(150),
    );
    if rc != 0 {
        panic!("rapd not ready: {out}\n{}", journal(&mut vm));
    }
    phase("rapd ready, uplink up");
    let ax = consent(&around.a, X_BOX, SERIAL_X);
    let ay = consent(&around.b, Y_BOX, SERIAL_Y);
    phase("consent agents connected");

    // ---- without approval: nothing ----
    assert_eq!(guest_state(&mut vm), CLOSED, "before any request");
    let s1 = d.ask(&ax, "g-1", 1);
    assert_refused(ay.approve(s1, "Mallory", 60), ErrorCode::UnknownSession, "Y approving X's session");
    assert_refused(ax.approve(s1, "Dr. Lab", 601), ErrorCode::Malformed, "longer than the maximum");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(guest_state(&mut vm), CLOSED, "asked, not approved");
    let routes = vm.console.run_ok("ip -4 route show", timeout(20));
    assert!(!routes.contains("10.99.") && !routes.contains("raptun0"), "{routes}");
    assert_eq!(server.connections(), 0, "the box connected to the VPN server without approval");
    phase("asked: no tun, no rule, no route, no OpenVPN, no connection at the server");

    // ---- approved: X's remote desktop and SSH over the tunnel, nothing else ----
    ax.approve(s1, "Dr. Lab", 240).expect("approval");
    let tun = d.up("g-1");
    phase(&format!("approved: tunnel up, box at {tun}"));
    assert_eq!(server.connections(), 1);
    let st = guest_state(&mut vm);
    assert_eq!(st, "tun=1 rules=7 fwd=1 ovpn=1", "session up");
    // OpenVPN runs as rapd inside rapd's sandbox, with the FIPS configuration and the settings.
    let p = vm.console.run_ok(
        "pid=$(pgrep -x openvpn); ps -o user= -p $pid; tr '\\0' '\\n' </proc/$pid/environ | grep OPENSSL_CONF; \
         tr '\\0' ' ' </proc/$pid/cmdline; echo; \
         OPENSSL_CONF=/etc/rapbox/fips/openssl-fips.cnf openvpn --show-ciphers | grep -c -i -E 'chacha|bf-cbc' || true; \
         ip -4 route show",
        timeout(30),
    );
    for want in [
        "rapd\n",
        "OPENSSL_CONF=/etc/rapbox/fips/openssl-fips.cnf",
        "--proto tcp-client --remote 192.168.77.2 443",
        "--tls-version-min 1.2 --data-ciphers AES-256-GCM:AES-128-GCM",
        "--route-nopull",
        "\n0\n",
    ] {
        assert!(p.contains(want), "{want:?} not in {p}");
    }
    assert!(!p.contains("0.0.0.0/1") && !p.contains("default via 10.99"), "pushed redirect-gateway taken: {p}");
    match tech(tun, RDP) {
        Got::Answer(l) => assert_eq!(l, "10.10.1.2:5900 sees 10.10.1.1"),
        other => panic!("the technician does not reach X's remote desktop: {other:?}"),
    }
    for (to, port, what) in [
        (tun, 5901, "another port of X through the box"),
        (tun, 7300, "the box's agent port"),
        (X, RDP, "X directly"),
        (Y, RDP, "Y directly"),
    ] {
        let got = tech(to, port);
        assert!(!matches!(got, Got::Answer(_)), "{what} ({to}:{port}) answered: {got:?}");
    }
    let (out, rc) = ssh(&around.v, tun, "-c aes256-gcm@openssh.com -o KexAlgorithms=ecdh-sha2-nistp256");
    assert!(rc == 255 && out.contains("Permission denied"), "SSH over the tunnel (FIPS cipher): exit {rc}: {out}");
    for (opts, refusal) in [
        ("-c chacha20-poly1305@openssh.com", "no matching cipher found"),
        ("-o KexAlgorithms=curve25519-sha256", "no matching key exchange method found"),
    ] {
        let (out, rc) = ssh(&around.v, tun, opts);
        assert!(rc == 255 && out.contains(refusal), "ssh {opts}: expected `{refusal}`, exit {rc}: {out}");
    }
    // SSH stays closed everywhere else, also during the session.
    for (ns, to, what) in [(&around.u, UP_BOX, "the uplink side"), (&around.a, X_BOX, "instrument X")] {
        let got = tcp(ns, None, sa(to, 22), timeout(2));
        assert_eq!(got, Got::Silence, "SSH from {what} to {to}:22");
    }
    phase("X's remote desktop and SSH (FIPS ciphers only) over the tunnel; nothing else");

    // ---- the data center closes it ----
    d.queue("g-1-close", "session_close", &[], serde_json::json!({ "session": "g-1" }));
    let r = d.wait("g-1", 60, |c| c.state.is_final());
    assert_eq!((r.state, r.detail["code"].as_str()), (CommandState::Succeeded, Some("closed")), "{r:?}");
    assert!(wait_gone(&mut vm, FIVE_S), "not torn down: {}", guest_state(&mut vm));
    assert_eq!(guest_state(&mut vm), CLOSED, "after the close");
    assert!(r.detail["teardown_ms"].as_u64().unwrap_or(u64::MAX) < 5000, "{r:?}");
    assert_eq!(ax.wait_end(s1, timeout(10)).as_deref(), Some("closed by the data center (command g-1-close)"));
    phase(&format!("closed by the data center: torn down in {} ms", r.detail["teardown_ms"]));

    // ---- a second request needs its own approval; revoked at the instrument ----
    let s2 = d.ask(&ax, "g-2", 2);
    assert_refused(ax.approve(s1, "Dr. Lab", 60), ErrorCode::UnknownSession, "the first approval again");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(guest_state(&mut vm), CLOSED, "second request, not approved");
    assert_eq!(server.connections(), 1);
    ax.approve(s2, "Dr. Lab", 240).expect("approval");
    let tun = d.up("g-2");
    assert!(matches!(tech(tun, RDP), Got::Answer(_)));
    ax.revoke(s2, "done at the instrument").expect("revoke");
    assert!(wait_gone(&mut vm, FIVE_S), "not torn down after the revoke: {}", guest_state(&mut vm));
    let r = d.wait("g-2", 60, |c| c.state.is_final());
    assert_eq!(r.detail["code"], "revoked", "{r:?}");
    assert!(!matches!(tech(tun, RDP), Got::Answer(_)), "X after the revoke");
    phase(&format!("second request approved anew, revoked: torn down in {} ms", r.detail["teardown_ms"]));

    // ---- expiry ----
    let s3 = d.ask(&ax, "g-3", 3);
    ax.approve(s3, "Dr. Lab", 20).expect("approval");
    let approved = Instant::now();
    d.up("g-3");
    while approved.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(wait_gone(&mut vm, FIVE_S), "not torn down at the expiry: {}", guest_state(&mut vm));
    let r = d.wait("g-3", 60, |c| c.state.is_final());
    assert_eq!(r.detail["code"], "expired", "{r:?}");
    phase(&format!("expired after the approved 20 s: torn down in {} ms", r.detail["teardown_ms"]));

    // ---- declined ----
    ax.set_decision(Decision::Decline("run in progress".into()));
    d.ask(&ax, "g-4", 4);
    let r = d.wait("g-4", 60, |c| c.state.is_final());
    assert_eq!((r.state, r.code.as_str()), (CommandState::Refused, "declined"), "{r:?}");
    assert_eq!(guest_state(&mut vm), CLOSED, "declined");
    ax.set_decision(Decision::Ignore);

    // ---- 128 kbit/s both ways between the uplink and the VPN server ----
    for (ns, dev) in [(&around.u, "uv0"), (&around.v, "vv0")] {
        ns.sh(&format!("tc qdisc add dev {dev} root tbf rate 128kbit burst 4kb latency 1s"));
    }
    let s5 = d.ask(&ax, "g-5", 5);
    ax.approve(s5, "Dr. Lab", 240).expect("approval");
    d.up("g-5");
    let r = d.wait("g-5", 60, |c| c.detail["phase"] == "up");
    println!(
        "128 kbit/s: tunnel up {} ms after the approval (rapd's measure, approval received → OpenVPN CONNECTED)",
        r.detail["ms_after_approval"]
    );
    for (ns, dev) in [(&around.u, "uv0"), (&around.v, "vv0")] {
        ns.sh(&format!("tc qdisc del dev {dev} root"));
    }
    ax.revoke(s5, "measured").expect("revoke");
    assert!(wait_gone(&mut vm, FIVE_S), "not torn down: {}", guest_state(&mut vm));
    assert_eq!(guest_state(&mut vm), CLOSED, "at the end");

    // ---- through a CONNECT proxy, then a SOCKS5 proxy, each set at run time ----
    let tp = around
        .u
        .enter(|| {
            Tinyproxy::start(
                &dc.dir,
                &TinyproxyConfig {
                    listen: IpAddr::V4(GW),
                    port: Some(3128),
                    allow: vec!["10.0.2.0/24".into()],
                    ..Default::default()
                },
            )
        })
        .expect("tinyproxy");
    let ds = around
        .u
        .enter(|| {
            Dante::start(
                &dc.dir,
                &DanteConfig {
                    listen: IpAddr::V4(GW),
                    port: Some(1080),
                    clients: vec!["10.0.2.0/24".into()],
                    external: Some(UPLINK_TAP.into()),
                    ..Default::default()
                },
            )
        })
        .expect("danted");
    for (n, url, nth) in [("connect", "http://10.0.2.2:3128", 6), ("socks5", "socks5://10.0.2.2:1080", 7)] {
        // --wait: the data center confirms the new configuration through the proxy.
        let (out, rc) = vm.console.run(&format!("rapctl config apply --wait uplink.proxy={url}"), timeout(180));
        assert_eq!(rc, 0, "rapctl config apply uplink.proxy={url}: {out}\n{}", journal(&mut vm));
        let id = format!("g-{n}");
        let s = d.ask(&ax, &id, nth);
        let before = server.connections();
        ax.approve(s, "Dr. Lab", 240).expect("approval");
        let tun = d.up(&id);
        assert!(matches!(tech(tun, RDP), Got::Answer(_)), "{n}: X's remote desktop");
        match n {
            "connect" => assert!(tp.wait_established(&VPN.to_string(), timeout(10)), "{}", tp.log()),
            _ => assert!(ds.wait_connect(SocketAddr::from((VPN, 443)), timeout(10)), "{}", ds.log()),
        }
        let log = server.log_text();
        let conns: Vec<&str> = log.lines().filter(|l| l.contains("TCP connection established with")).collect();
        assert_eq!(conns.len(), before + 1, "{log}");
        assert!(!conns[before].contains("10.0.2.15:"), "{n}: the server saw the box, not the proxy: {}", conns[before]);
        ax.revoke(s, "done").expect("revoke");
        assert!(wait_gone(&mut vm, FIVE_S), "{n}: not torn down: {}", guest_state(&mut vm));
        phase(&format!("{n} proxy (set at run time): the tunnel through it, torn down after the revoke"));
    }
    assert_eq!(guest_state(&mut vm), CLOSED, "after the proxies");

    // Every step is an audit record at the data center.
    let end = Instant::now() + timeout(60);
    loop {
        let actions: Vec<String> = dc
            .client
            .all_reports(Some(BOX_ID), Some(""))
            .expect("reports")
            .into_iter()
            .filter(|r| r.kind == rapwire::Kind::Audit)
            .filter_map(|r| serde_json::from_str::<Value>(&r.payload).ok())
            .filter(|v| v["target"] == "g-1")
            .map(|v| v["action"].as_str().unwrap_or("").to_owned())
            .collect();
        let want = ["session.requested", "session.approved", "session.tunnel_up", "session.ended"];
        if want.iter().all(|w| actions.iter().any(|a| a == w)) {
            break;
        }
        assert!(Instant::now() < end, "session records at the data center: {actions:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    phase("done");
}

fn assert_refused(r: rapsim::Reply, code: ErrorCode, what: &str) {
    match r {
        Err((c, reason)) => assert_eq!(c, code, "{what}: {reason}"),
        Ok(()) => panic!("{what}: accepted"),
    }
}
