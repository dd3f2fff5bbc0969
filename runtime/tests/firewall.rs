//! The firewall and the instrument ports on a real kernel: network namespaces joined by
//! veth pairs, the generated policy applied with the real iptables (nft backend), and
//! real TCP/UDP traffic.
//!
//! ```text
//!   instA (eth0 10.10.1.2) ──veth── ia0 ┐
//!   instB (eth0 10.10.2.2) ──veth── ib0 ┤ box ├ up0 ──veth── uplink (eth0 192.0.2.1, .40, .41)
//! ```
//!
//! Every test first shows that, without the policy, the path it closes really exists
//! (so a refusal is the firewall's doing, not the topology's), with IPv4 forwarding on
//! in the box. A probe the policy must stop has to time out: the box drops, it never
//! answers (not even with a reset). Namespaces carry a unique name per test and are
//! deleted on drop, also when the test fails. Needs root and `ip netns`; skipped with
//! the reason printed otherwise.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rapbox::config::Config;
use rapbox::control::{self, Request, Status};
use rapbox::firewall::{self, live, Tools};
use rapbox_testkit::netns::{self, check, ip, probe, sa, udp, Got, Ns, Probe, Proto, Service, Want, PROBE_TIMEOUT};

// ---------------------------------------------------------------- namespaces

/// A namespace for one role of one test (`rfw<pid>-<n>-<role>`).
fn ns(role: &str) -> Ns {
    Ns::new("rfw", role)
}

macro_rules! require_netns {
    () => {
        if let Some(why) = netns::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// The box, two instruments and the uplink network.
struct Lab {
    boxns: Ns,
    a: Ns,
    b: Ns,
    up: Ns,
}

const A: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
const A_BOX: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const A_SPOOF: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 99);
const B: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 2);
const B_BOX: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 1);
const UP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UP_BOX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const LIS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 40);
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 41);
const AGENT: u16 = 7300;
const LIS_SIDE: u16 = 5000;
const LIS_PORT: u16 = 5001;

impl Lab {
    /// The topology; with `address_box` the box side is up and addressed by the test
    /// (otherwise it is left down and bare, for rapd to set up).
    fn new(address_box: bool) -> Lab {
        let lab = Lab { boxns: ns("box"), a: ns("a"), b: ns("b"), up: ns("up") };
        let bx = &lab.boxns.name;
        for (inner, peer) in [("ia0", &lab.a), ("ib0", &lab.b), ("up0", &lab.up)] {
            ip(&format!("link add {inner} netns {bx} type veth peer name eth0 netns {}", peer.name));
            peer.ip("link set eth0 up");
        }
        lab.a.ip("addr add 10.10.1.2/24 dev eth0");
        lab.a.ip("addr add 10.10.1.99/24 dev eth0");
        lab.a.ip("route add default via 10.10.1.1 src 10.10.1.2");
        lab.b.ip("addr add 10.10.2.2/24 dev eth0");
        lab.b.ip("route add default via 10.10.2.1");
        for a in [UP, LIS, OTHER_HOST] {
            lab.up.ip(&format!("addr add {a}/24 dev eth0"));
        }
        lab.up.ip("route add 10.10.0.0/16 via 192.0.2.10");
        if address_box {
            for (dev, a) in [("ia0", "10.10.1.1/24"), ("ib0", "10.10.2.1/24"), ("up0", "192.0.2.10/24")] {
                lab.boxns.ip(&format!("addr add {a} dev {dev}"));
                lab.boxns.ip(&format!("link set {dev} up"));
            }
        }
        // Nothing but the firewall may stand in the way: forwarding on, no reverse-path filter.
        lab.boxns
            .sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
             && for i in ia0 ib0 up0; do sysctl -qw net.ipv4.conf.$i.rp_filter=0; done");
        lab
    }
}

// ---------------------------------------------------------------- configuration

fn config_text(lis: bool, extra: &str) -> String {
    format!(
        r#"
[queue]
path = "/data/rapd/queue.db"

[uplink]
url = "https://192.0.2.1/api/v1/batches"
ca = "/data/certs/ca.pem"
cert = "/data/certs/box.pem"
key = "/data/certs/box.key"

[network.uplink]
interface = "up0"
addressing = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53"]
ntp = ["192.0.2.123"]

[firewall]
enabled = true
# drift_check_s: the default (5 s), so that "within 10 s" holds as shipped

{extra}

[[instrument]]
serial = "INST-A"
model = "analyser A"
interface = "ia0"
box_address = "10.10.1.1/24"
address = "10.10.1.2"
agent_port = 7300

[instrument.lis]
enabled = {lis}
instrument_port = {LIS_SIDE}
host = "{LIS}"
port = {LIS_PORT}

[[instrument]]
serial = "INST-B"
model = "analyser B"
interface = "ib0"
box_address = "10.10.2.1/24"
address = "10.10.2.2"
agent_port = 7300
"#
    )
}

fn ruleset(lis: bool) -> firewall::Ruleset {
    firewall::policy(&Config::parse(Path::new("/etc/rapbox/rapd.toml"), &config_text(lis, "")).unwrap())
}

fn apply(lab: &Lab, rs: &firewall::Ruleset) {
    lab.boxns.enter(|| live::apply(rs, &Tools::system())).expect("apply the policy");
}

// ---------------------------------------------------------------- tests

#[test]
fn generated_policies_read_back_exactly_as_generated() {
    require_netns!();
    let ns = ns("canon");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firewall");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    fixtures.sort();
    assert!(!fixtures.is_empty());
    let tools = Tools::system();
    for f in fixtures {
        let cfg = Config::parse(Path::new("/etc/rapbox/rapd.toml"), &std::fs::read_to_string(&f).unwrap()).unwrap();
        let rs = firewall::policy(&cfg);
        // The interfaces of the fixtures do not exist here: restore the documents directly.
        let (v4, v6) = ns.enter(|| {
            for (tool, doc) in [(&tools.restore4, &rs.ipv4), (&tools.restore6, &rs.ipv6)] {
                let mut c = Command::new(tool).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
                c.stdin.take().unwrap().write_all(doc.as_bytes()).unwrap();
                let out = c.wait_with_output().unwrap();
                assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
            }
            (live::save(&tools.save4).unwrap(), live::save(&tools.save6).unwrap())
        });
        let e4 = live::normalise(&rs.ipv4);
        let e6 = live::normalise(&rs.ipv6);
        assert_eq!(
            live::diff("ipv4", &e4, &live::normalise(&v4).restricted_to(&e4)),
            Vec::<String>::new(),
            "{}",
            f.display()
        );
        assert_eq!(
            live::diff("ipv6", &e6, &live::normalise(&v6).restricted_to(&e6)),
            Vec::<String>::new(),
            "{}",
            f.display()
        );
    }
}

#[test]
fn instruments_reach_only_their_own_agent_port() {
    require_netns!();
    let lab = Lab::new(true);
    let (bx, a, b, up) = (&lab.boxns, &lab.a, &lab.b, &lab.up);
    let _svc = [
        Service::start(bx, SocketAddr::from((A_BOX, AGENT))),
        Service::start(bx, SocketAddr::from((B_BOX, AGENT))),
        Service::start(bx, "0.0.0.0:2222".parse().unwrap()),
        Service::start(a, SocketAddr::from((A, 7000))),
        Service::start(b, SocketAddr::from((B, 7000))),
        Service::start(up, SocketAddr::from((UP, 443))),
        Service::start(up, SocketAddr::from((UP, 8080))),
    ];
    let _echo = Service::udp_echo(bx, "0.0.0.0:5353".parse().unwrap());

    let paths = |want_closed: Want| {
        vec![
            probe("A to B", a, sa(B, 7000), want_closed),
            probe("A to B's agent port on the box", a, sa(B_BOX, AGENT), want_closed),
            probe("A to another box service", a, sa(A_BOX, 2222), want_closed),
            probe("A to a closed box port", a, sa(A_BOX, 22), want_closed),
            probe("A to the box's uplink address", a, sa(UP_BOX, 2222), want_closed),
            probe("A to the uplink network", a, sa(UP, 443), want_closed),
            probe("B to A", b, sa(A, 7000), want_closed),
            probe("B to A's agent port on the box", b, sa(A_BOX, AGENT), want_closed),
            probe("B to another box service", b, sa(B_BOX, 2222), want_closed),
            probe("B to the uplink network", b, sa(UP, 8080), want_closed),
        ]
    };
    let mut open = paths(Want::Reached);
    open.push(probe("A to its agent port", a, sa(A_BOX, AGENT), Want::Answer(A)));
    open.push(probe("B to its agent port", b, sa(B_BOX, AGENT), Want::Answer(B)));
    open.push(probe("box to another uplink port", bx, sa(UP, 8080), Want::Answer(UP_BOX)));
    open.push(probe("box to an instrument", bx, sa(A, 7000), Want::Answer(A_BOX)));
    check("without the policy every path exists", &open);
    assert_eq!(udp(a, None, sa(A_BOX, 5353), PROBE_TIMEOUT), Got::Answer("ping".into()), "UDP without the policy");

    apply(&lab, &ruleset(false));
    bx.sh("sysctl -qw net.ipv4.ip_forward=1"); // only the rules may stop forwarding
    let mut closed = paths(Want::Silence);
    closed.push(probe("A to its agent port", a, sa(A_BOX, AGENT), Want::Answer(A)));
    closed.push(probe("B to its agent port", b, sa(B_BOX, AGENT), Want::Answer(B)));
    check("with the policy", &closed);
    assert_eq!(udp(a, None, sa(A_BOX, 5353), PROBE_TIMEOUT), Got::Silence, "UDP from an instrument to the box");

    // The box's own outbound traffic: the data center on 443, nothing else.
    check(
        "the box's own outbound traffic",
        &[
            probe("box to the data center", bx, sa(UP, 443), Want::Answer(UP_BOX)),
            probe("box to another uplink port", bx, sa(UP, 8080), Want::Silence),
            probe("box to an instrument", bx, sa(A, 7000), Want::Silence),
        ],
    );
}

#[test]
fn the_uplink_side_gets_no_answer() {
    require_netns!();
    let lab = Lab::new(true);
    let (bx, up) = (&lab.boxns, &lab.up);
    let _svc = [
        Service::start(bx, SocketAddr::from((A_BOX, AGENT))),
        Service::start(bx, SocketAddr::from((UP_BOX, AGENT))),
        Service::start(bx, "0.0.0.0:2222".parse().unwrap()),
        Service::start(&lab.a, SocketAddr::from((A, 7000))),
    ];
    let _echo = Service::udp_echo(bx, "0.0.0.0:5353".parse().unwrap());
    let probes = |w: Want| {
        vec![
            probe("uplink to the agent port on the uplink address", up, sa(UP_BOX, AGENT), w),
            probe("uplink to another box service", up, sa(UP_BOX, 2222), w),
            probe("uplink to a closed box port", up, sa(UP_BOX, 22), w),
            probe("uplink to an instrument port's box address", up, sa(A_BOX, AGENT), w),
            probe("uplink to an instrument", up, sa(A, 7000), w),
        ]
    };
    check("without the policy", &probes(Want::Reached));
    assert_eq!(udp(up, None, sa(UP_BOX, 5353), PROBE_TIMEOUT), Got::Answer("ping".into()));

    apply(&lab, &ruleset(true));
    check("with the policy (LIS forward on)", &probes(Want::Silence));
    assert_eq!(udp(up, None, sa(UP_BOX, 5353), PROBE_TIMEOUT), Got::Silence, "UDP from the uplink");
    assert_eq!(
        udp(up, None, sa(A_BOX, 5353), PROBE_TIMEOUT),
        Got::Silence,
        "UDP from the uplink to an instrument port address"
    );
}

#[test]
fn spoofed_sources_are_dropped() {
    require_netns!();
    let lab = Lab::new(true);
    let _svc = [
        Service::start(&lab.boxns, SocketAddr::from((A_BOX, AGENT))),
        Service::start(&lab.up, SocketAddr::from((LIS, LIS_PORT))),
    ];
    let spoofed = |w_agent: Want, w_lis: Want| {
        vec![
            Probe {
                what: "A as 10.10.1.99 to its agent port",
                ns: &lab.a,
                proto: Proto::Tcp,
                from: Some(A_SPOOF),
                to: sa(A_BOX, AGENT),
                want: w_agent,
            },
            Probe {
                what: "A as 10.10.1.99 through its LIS forward",
                ns: &lab.a,
                proto: Proto::Tcp,
                from: Some(A_SPOOF),
                to: sa(A_BOX, LIS_SIDE),
                want: w_lis,
            },
        ]
    };
    check("without the policy the spoofed source is answered", &spoofed(Want::Answer(A_SPOOF), Want::Reached));
    apply(&lab, &ruleset(true));
    check("with the policy", &spoofed(Want::Silence, Want::Silence));
    check("the real address still works", &[probe("A to its agent port", &lab.a, sa(A_BOX, AGENT), Want::Answer(A))]);
    let log = lab.boxns.sh("iptables -L rap-port0-in -v -n -x");
    let spoof_drops: u64 = log
        .lines()
        .find(|l| l.contains("DROP") && l.contains("!10.10.1.2"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(spoof_drops > 0, "the anti-spoofing rule counted no packet:\n{log}");
}

#[test]
fn lis_forward_only_when_enabled_and_only_to_its_host_and_port() {
    require_netns!();
    let lab = Lab::new(true);
    let (bx, a, b, up) = (&lab.boxns, &lab.a, &lab.b, &lab.up);
    let _svc = [
        Service::start(up, SocketAddr::from((LIS, LIS_PORT))),
        Service::start(up, SocketAddr::from((LIS, LIS_PORT + 1))),
        Service::start(up, SocketAddr::from((OTHER_HOST, LIS_PORT))),
    ];
    let others = |w: Want| {
        vec![
            probe("A straight to the LIS host", a, sa(LIS, LIS_PORT), w),
            probe("A to another port of the LIS host", a, sa(LIS, LIS_PORT + 1), w),
            probe("A to another uplink host on the LIS port", a, sa(OTHER_HOST, LIS_PORT), w),
            probe("B to the LIS host", b, sa(LIS, LIS_PORT), w),
        ]
    };
    check(
        "without the policy the uplink network is reachable",
        &others(Want::Answer(A)).into_iter().take(3).collect::<Vec<_>>(),
    );

    // Off: the instrument-side port is just another closed port of the box.
    apply(&lab, &ruleset(false));
    assert_eq!(bx.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "0", "forwarding off without a LIS forward");
    bx.sh("sysctl -qw net.ipv4.ip_forward=1");
    let mut off = others(Want::Silence);
    off.push(probe("A through its LIS port (off)", a, sa(A_BOX, LIS_SIDE), Want::Silence));
    check("LIS forward off", &off);

    // On: exactly the configured host and port, under the box's uplink address.
    apply(&lab, &ruleset(true));
    assert_eq!(bx.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1", "forwarding on for the LIS forward");
    let mut on = others(Want::Silence);
    on.push(probe("A through its LIS port", a, sa(A_BOX, LIS_SIDE), Want::Answer(UP_BOX)));
    on.push(probe("B through A's LIS port", b, sa(A_BOX, LIS_SIDE), Want::Silence));
    on.push(probe("B through the LIS port on its own box address", b, sa(B_BOX, LIS_SIDE), Want::Silence));
    check("LIS forward on", &on);
}

/// New connections per port are limited: with 2/min and a burst of 20 (slow enough that no
/// token comes back during the test), the 21st new connection in a row is dropped, and the
/// other port, with its own limit, is not affected.
#[test]
fn new_connections_over_the_rate_limit_are_dropped() {
    require_netns!();
    let lab = Lab::new(true);
    let (a, b) = (&lab.a, &lab.b);
    let _svc = [
        Service::start(&lab.boxns, SocketAddr::from((A_BOX, AGENT))),
        Service::start(&lab.boxns, SocketAddr::from((B_BOX, AGENT))),
    ];
    let text = config_text(false, "new_connections_per_minute = 2\nnew_connections_burst = 20");
    let rs = firewall::policy(&Config::parse(Path::new("/etc/rapbox/rapd.toml"), &text).unwrap());
    assert!(rs.ipv4.contains("--limit 2/min --limit-burst 20"), "{}", rs.ipv4);
    apply(&lab, &rs);
    let burst: Vec<Got> = (0..20).map(|_| netns::tcp(a, None, sa(A_BOX, AGENT), PROBE_TIMEOUT)).collect();
    assert!(burst.iter().all(|g| *g == Got::Answer(format!("{A_BOX}:{AGENT} sees {A}"))), "{burst:?}");
    check(
        "over the burst",
        &[
            probe("A's 21st new connection", a, sa(A_BOX, AGENT), Want::Silence),
            probe("A's 22nd new connection", a, sa(A_BOX, AGENT), Want::Silence),
            probe("B's first, on its own port", b, sa(B_BOX, AGENT), Want::Answer(B)),
        ],
    );
}

/// A DHCP uplink behind an HTTP CONNECT proxy, DNS and NTP servers from DHCP: the box
/// reaches the proxy and DNS, not the data center directly nor anything else; the LIS
/// forward leaves under whatever address the uplink has (MASQUERADE).
#[test]
fn a_dhcp_uplink_behind_a_proxy_reaches_only_the_proxy() {
    require_netns!();
    // The box side addressed by the test, as the OS's DHCP client would.
    let lab = Lab::new(true);
    let (bx, a, up) = (&lab.boxns, &lab.a, &lab.up);
    let text = config_text(true, "")
        .replace(
            "addressing = \"static\"\naddress = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\"]\nntp = [\"192.0.2.123\"]\n",
            "addressing = \"dhcp\"\n",
        )
        .replace("key = \"/data/certs/box.key\"\n", "key = \"/data/certs/box.key\"\nproxy = \"http://192.0.2.1:3128\"\n");
    assert!(text.contains("addressing = \"dhcp\"") && text.contains("proxy = "), "{text}");
    let rs = firewall::policy(&Config::parse(Path::new("/etc/rapbox/rapd.toml"), &text).unwrap());
    assert!(rs.ipv4.contains(" -j MASQUERADE"), "{}", rs.ipv4);
    let _svc = [
        Service::start(up, SocketAddr::from((UP, 3128))),
        Service::start(up, SocketAddr::from((UP, 443))),
        Service::start(up, SocketAddr::from((UP, 8080))),
        Service::start(up, SocketAddr::from((LIS, LIS_PORT))),
        Service::udp_echo(up, SocketAddr::from((UP, 53))),
        Service::udp_echo(up, SocketAddr::from((UP, 5353))),
    ];
    let t = PROBE_TIMEOUT;
    assert_eq!(udp(bx, None, sa(UP, 5353), t), Got::Answer("ping".into()), "UDP without the policy");
    check("without the policy", &[probe("box to the data center directly", bx, sa(UP, 443), Want::Answer(UP_BOX))]);
    apply(&lab, &rs);
    check(
        "with the policy",
        &[
            probe("box to its proxy", bx, sa(UP, 3128), Want::Answer(UP_BOX)),
            probe("box to the data center directly", bx, sa(UP, 443), Want::Silence),
            probe("box to another uplink port", bx, sa(UP, 8080), Want::Silence),
            probe("A through its LIS port", a, sa(A_BOX, LIS_SIDE), Want::Answer(UP_BOX)),
        ],
    );
    assert_eq!(udp(bx, None, sa(UP, 53), t), Got::Answer("ping".into()), "DNS to a server from DHCP");
    // OUTPUT drops the box's own datagram: the send itself fails, nothing leaves the box.
    let got = udp(bx, None, sa(UP, 5353), t);
    assert!(
        matches!(&got, Got::Refused(e) if e.contains("Operation not permitted")),
        "other UDP from the box: {got:?}"
    );
}

// ---------------------------------------------------------------- rapd in the box

fn fips_conf() -> PathBuf {
    let dir = std::env::var_os("RAPBOX_FIPS_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/cache/rapbox/fips".into());
    let conf = dir.join("openssl-fips.cnf");
    assert!(conf.is_file(), "{} is missing: run scripts/build-fips.sh first (scripts/test.sh does)", conf.display());
    conf
}

/// rapd running inside the box namespace; killed on drop.
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
        Rapd { child: Some(child), log, socket: dir.join("control.sock") }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> Option<Status> {
        control::request(&self.socket, &Request::Status).ok().and_then(|r| r.status)
    }

    fn wait_status(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Status {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status().filter(|s| pred(s)) {
                return s;
            }
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("rapd exited with {st} while waiting for {what}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < end,
                "timed out after {timeout:?} waiting for {what}; status: {:?}\nlog:\n{}",
                self.status().map(|s| serde_json::to_string_pretty(&s).unwrap()),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < end, "rapd still running after {timeout:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.as_ref().expect("running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        self.wait_exit(Duration::from_secs(20))
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

fn link<'a>(s: &'a Status, interface: &str) -> &'a str {
    s.links
        .as_array()
        .and_then(|v| v.iter().find(|l| l["interface"] == interface))
        .and_then(|l| l["link"].as_str())
        .unwrap_or("?")
}

fn live_diff(lab: &Lab, rs: &firewall::Ruleset) -> Vec<String> {
    let tools = Tools::system();
    let (v4, v6) = lab.boxns.enter(|| (live::save(&tools.save4).unwrap(), live::save(&tools.save6).unwrap()));
    let (e4, e6) = (live::normalise(&rs.ipv4), live::normalise(&rs.ipv6));
    let mut d = live::diff("ipv4", &e4, &live::normalise(&v4).restricted_to(&e4));
    d.extend(live::diff("ipv6", &e6, &live::normalise(&v6).restricted_to(&e6)));
    d
}

#[test]
fn rapd_sets_up_the_ports_applies_the_policy_and_restores_drift() {
    require_netns!();
    let lab = Lab::new(false);
    let dir = rapbox_testkit::TestDir::new(&format!("firewall/rapd-{}", std::process::id())).unwrap();
    let pki = rapbox_testkit::pki::Pki::generate(
        &dir.join("pki"),
        &rapbox_testkit::pki::PkiSpec::new(&["dc.rapbox.test"], &[IpAddr::V4(UP)], "box-0001"),
    )
    .unwrap();
    let config = |lis: bool, instruments_b_interface: &str| {
        config_text(lis, "")
            .replace("/data/rapd/queue.db", &dir.join("data/queue.db").display().to_string())
            .replace("/data/certs/ca.pem", &pki.ca.cert.display().to_string())
            .replace("/data/certs/box.pem", &pki.client.cert.display().to_string())
            .replace("/data/certs/box.key", &pki.client.key.display().to_string())
            .replace("interface = \"ib0\"", &format!("interface = \"{instruments_b_interface}\""))
            + &format!(
                "\n[fips]\nopenssl_conf = {:?}\n\n[control]\nsocket = {:?}\n\n[log]\ntarget = \"stderr\"\nlevel = \"info\"\n",
                fips_conf(),
                dir.join("control.sock")
            )
    };

    let mut rapd = Rapd::spawn(&lab, dir.path(), &config(false, "ib0"), "rapd");
    let st = rapd.wait_status("the ports up", Duration::from_secs(20), |s| {
        link(s, "ia0") == "up" && link(s, "ib0") == "up" && link(s, "up0") == "up"
    });
    assert_eq!(st.firewall["enabled"], true, "{:?}", st.firewall);
    assert_eq!(st.firewall["canonical"], true, "{:?}", st.firewall);
    assert!(st.firewall["applied_at_ms"].as_u64().is_some());
    let rs = ruleset(false);
    assert_eq!(st.firewall["rule_count"].as_u64(), Some(rs.rule_count() as u64));
    // rapd gave each port its address and set the default route, through netlink.
    let addrs = lab.boxns.sh("ip -4 -br addr show");
    for (dev, a) in [("ia0", "10.10.1.1/24"), ("ib0", "10.10.2.1/24"), ("up0", "192.0.2.10/24")] {
        assert!(addrs.lines().any(|l| l.starts_with(dev) && l.contains(a)), "{dev} {a}:\n{addrs}");
    }
    assert!(lab.boxns.sh("ip -4 route show default").contains("via 192.0.2.1 dev up0"));
    assert!(live_diff(&lab, &ruleset(false)).is_empty());

    // Real reports from instrument A reach rapd; nothing else on the box answers A.
    let mut sim = rapsim::Instrument::new(SocketAddr::from((A_BOX, AGENT)), "INST-A");
    sim.count = Some(5);
    let sum = lab.a.enter(|| sim.run()).expect("instrument A's reports");
    assert!(sum.unacked.is_empty(), "{sum:?}");
    let st =
        rapd.wait_status("5 reports from A", Duration::from_secs(10), |s| s.ports[0]["received"].as_u64() == Some(5));
    assert_eq!(st.ports[0]["serial"], "INST-A");
    check("rapd's ports", &[probe("A to another box port", &lab.a, sa(A_BOX, 22), Want::Silence)]);

    // Carrier: A's cable pulled and plugged back.
    lab.a.ip("link set eth0 down");
    rapd.wait_status("A's port down", Duration::from_secs(10), |s| link(s, "ia0") == "down");
    lab.a.ip("link set eth0 up");
    rapd.wait_status("A's port up again", Duration::from_secs(10), |s| link(s, "ia0") == "up");
    let log = rapd.log_text();
    assert!(log.contains("event: instrument INST-A: link ia0 is down"), "{log}");
    assert!(log.contains("event: instrument INST-A: link ia0 is up"), "{log}");

    // Drift: a rule deleted and an ACCEPT inserted by hand, IPv6 opened; restored within 10 s.
    let t0 = Instant::now();
    lab.boxns.sh("iptables -D rap-port0-in 2 && iptables -I INPUT 1 -j ACCEPT && ip6tables -P INPUT ACCEPT");
    assert!(!live_diff(&lab, &rs).is_empty());
    let st = rapd.wait_status("the drift repaired", Duration::from_secs(10), |s| {
        s.firewall["drift_repairs"].as_u64() >= Some(1)
    });
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(live_diff(&lab, &rs), Vec::<String>::new(), "the live rules are the policy again");
    let changes = st.firewall["last_drift"].to_string();
    assert!(changes.contains("ipv4 filter/rap-port0-in: rule missing: -A rap-port0-in ! -s 10.10.1.2/32"), "{changes}");
    assert!(changes.contains("ipv4 filter/INPUT: rule added: -A INPUT -j ACCEPT"), "{changes}");
    assert!(changes.contains("ipv6 filter/INPUT: policy ACCEPT, expected DROP"), "{changes}");
    assert!(st.firewall["last_drift_repair_ms"].as_u64().is_some());
    let log = rapd.log_text();
    assert!(log.contains("audit: firewall drift repaired: ipv4 filter/INPUT: rule added: -A INPUT -j ACCEPT"), "{log}");
    check(
        "after the repair",
        &[
            probe("A to another box port", &lab.a, sa(A_BOX, 22), Want::Silence),
            probe("A to its agent port", &lab.a, sa(A_BOX, AGENT), Want::Reached),
        ],
    );

    // Stopping rapd leaves the rules in place.
    assert!(rapd.terminate().success(), "{}", rapd.log_text());
    assert!(live_diff(&lab, &rs).is_empty());

    // The link events wait in the queue for the data center (unreachable here): the state
    // of each link at start, then A's down and up, as box events under A's serial.
    let (queue, writer) =
        rapbox::queue::Queue::open(&dir.join("data/queue.db"), 1 << 30, Duration::from_secs(3600)).unwrap();
    let rows = queue.next_batch(&Default::default(), 10_000, 64 << 20).unwrap();
    let events: Vec<(String, serde_json::Value)> = rows
        .iter()
        .filter(|r| r.kind == rapwire::Kind::BoxEvent)
        .map(|r| {
            assert!(r.msg_id >= rapwire::BOX_ID_BASE, "{}", r.msg_id);
            (r.instrument.to_string(), serde_json::from_slice(&r.payload).unwrap())
        })
        .collect();
    let a_links: Vec<(&str, bool)> = events
        .iter()
        .filter(|(i, p)| i == "INST-A" && p["interface"] == "ia0")
        .map(|(_, p)| (p["link"].as_str().unwrap(), p["at_start"].as_bool().unwrap()))
        .collect();
    let down = a_links.iter().position(|e| *e == ("down", false)).unwrap_or_else(|| panic!("{a_links:?}"));
    assert!(a_links[down..].contains(&("up", false)), "{a_links:?}");
    assert!(a_links.iter().any(|e| e.1), "A's link at start: {a_links:?}");
    for (serial, dev) in [("INST-B", "ib0"), ("", "up0")] {
        assert!(
            events.iter().any(|(i, p)| i == serial && p["interface"] == dev && p["at_start"] == true),
            "{dev} at start: {events:?}"
        );
    }
    queue.shutdown();
    drop(queue);
    writer.join();

    // A configuration naming an interface that does not exist is refused with the key named;
    // the rules in place stay, and so do the addresses.
    let mut bad = Rapd::spawn(&lab, dir.path(), &config(true, "ic7"), "rapd-bad");
    let code = bad.wait_exit(Duration::from_secs(20));
    assert_eq!(code.code(), Some(rapbox::exit::CONFIG), "{}", bad.log_text());
    assert!(
        bad.log_text().contains(
            "instrument[1].interface: interface `ic7` does not exist; the firewall rules in place were left unchanged"
        ),
        "{}",
        bad.log_text()
    );
    assert!(live_diff(&lab, &rs).is_empty(), "the previous rules stay");
}
