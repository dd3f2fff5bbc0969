//! The firewall and the instrument ports inside the booted image, with real traffic from
//! the network namespaces around the VM. One boot; each phase checks many paths at once.
//!
//! ```text
//!   ns A  inst0  10.10.1.2 (.99 spoof) ─ enp0s4 10.10.1.1 ┐
//!   ns B  inst1  10.10.2.2             ─ enp0s5 10.10.2.1 ┤ guest: rapd, firewall ├ enp0s3 10.0.2.15 ─ uplink0  ns U
//!                                                                         10.0.2.2 (gateway, a host), .100 (data center),
//!                                                                         .40 (LIS host), .41 (another host)
//! ```
//!
//! QEMU runs in the harness's namespace with three tap devices; once it holds them, each
//! tap is moved into a namespace of its own (A, B, U), so the two instruments and the
//! uplink network can only reach each other through the guest. The uplink is a tap (not
//! QEMU's user network, which answers for the guest and hides addresses) so that the
//! uplink side can probe the box's uplink address with real TCP and UDP and the LIS
//! server sees the address the box translated to; the data center is reached from U's
//! 10.0.2.100:443 through a Unix-socket bridge to nginx on the host's loopback. The
//! uplink is addressed statically by rapd (its MAC is not the one networkd's DHCP
//! configuration matches). "Closed" means the probe got nothing back at all — no
//! answer, no reset, no ICMP error; the last phase flushes the rules and shows that
//! every one of those paths exists, so the silence was the firewall's doing.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qemu_tests::bridge::UnixToTcp;
use qemu_tests::datacenter::{DataCenter, BOX_ID};
use qemu_tests::image::{self, TEST_PASSWORD};
use qemu_tests::instruments::SimRun;
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig, VmExtras, UPLINK_TAP};
use rapbox_testkit::netns::{check_within, probe, probe_udp, sa, Ns, Probe, Proto, Service, Want};
use rapwire::Kind;
use serde_json::Value;

const A: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
const A_SPOOF: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 99);
const A_BOX: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 2);
const B_BOX: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 1);
const UP_BOX: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DC: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const LIS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 40);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 41);
const AGENT: u16 = 7300;
const LIS_SIDE: u16 = 5000;
const LIS_PORT: u16 = 5001;
const SSH: u16 = 22;
const SERIAL_A: &str = "QFW-0001";
const SERIAL_B: &str = "QFW-0002";
/// The marker on instrument A's LIS `enabled` line, so the console can switch it.
const LIS_A_LINE: &str = "enabled = true # LIS forward of QFW-0001";

/// The image's rapd.toml template with the uplink, the firewall and the two ports.
fn template(out: &std::path::Path) -> PathBuf {
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

[[instrument]]
serial = "{SERIAL_A}"
model = "rapsim"
interface = "enp0s4"
box_address = "{A_BOX}/24"
address = "{A}"
agent_port = {AGENT}

[instrument.lis]
{LIS_A_LINE}
instrument_port = {LIS_SIDE}
host = "{LIS}"
port = {LIS_PORT}

[[instrument]]
serial = "{SERIAL_B}"
model = "rapsim"
interface = "enp0s5"
box_address = "{B_BOX}/24"
address = "{B}"
agent_port = {AGENT}

[instrument.lis]
enabled = false
instrument_port = {LIS_SIDE}
host = "{LIS}"
port = {LIS_PORT}
"#
    ));
    std::fs::write(out, t).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    out.to_path_buf()
}

/// The data center on U's 10.0.2.100:443: each connection piped through a Unix socket to
/// the host-side bridge to nginx (U cannot reach the host's loopback). Records who connected.
struct DcRelay {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<BTreeSet<IpAddr>>>,
    _bridge: UnixToTcp,
}

impl DcRelay {
    fn start(u: &Ns, dc: &DataCenter, test: &str) -> DcRelay {
        let sock = qemu_tests::workspace().join(format!("target/qemu-tests/{test}-dc.sock"));
        let bridge = UnixToTcp::start(&sock, dc.port).expect("bridge to the data center");
        let l = u.enter(|| TcpListener::bind(SocketAddr::from((DC, 443)))).expect("bind 10.0.2.100:443 in U");
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, p) = (stop.clone(), peers.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((tcp, peer)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                p.lock().unwrap().insert(peer.ip());
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
        DcRelay { stop, peers, _bridge: bridge }
    }
}

impl Drop for DcRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The three namespaces around the VM, each holding one of its taps.
struct Around {
    a: Ns,
    b: Ns,
    u: Ns,
}

impl Around {
    fn new(vm: &Vm) -> Around {
        let around = Around { a: Ns::new("rqf", "a"), b: Ns::new("rqf", "b"), u: Ns::new("rqf", "u") };
        let q = vm.netns();
        // Only once QEMU holds a tap (its carrier is on) may it move: before that, QEMU
        // would make itself a new one of that name.
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
        around.a.ip("addr add 10.10.1.99/24 dev inst0");
        around.a.ip("route add default via 10.10.1.1 src 10.10.1.2");
        around.b.ip("addr add 10.10.2.2/24 dev inst1");
        around.b.ip("route add default via 10.10.2.1");
        for addr in [GW, DC, LIS, OTHER] {
            around.u.ip(&format!("addr add {addr}/24 dev {UPLINK_TAP}"));
        }
        around.u.ip("route add 10.10.0.0/16 via 10.0.2.15");
        around
    }
}

fn status(vm: &mut Vm) -> Value {
    let out = vm.console.run_ok("rapctl status --json", timeout(30));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("rapctl status --json: {e}: {out}"))
}

fn journal(vm: &mut Vm) -> String {
    vm.console.run("journalctl -u rapd.service --no-pager -n 40 | cat", timeout(30)).0
}

/// Waits (one console round trip, at most `secs` of the guest's clock) until `rapctl
/// status --json` matches the extended regular expression `re`; returns the status.
/// With `first_start`, gives up as soon as systemd had to restart rapd.
fn wait_status(vm: &mut Vm, what: &str, re: &str, secs: u64, first_start: bool) -> Value {
    let restarted = if first_start { "[ \"$(systemctl show -P NRestarts rapd.service)\" = 0 ] || break; " } else { "" };
    let guest_secs = timeout(secs).as_secs();
    let (out, rc) = vm.console.run(
        &format!(
            "rm -f /tmp/st; end=$(( $(date +%s) + {guest_secs} )); while [ $(date +%s) -lt $end ]; do {restarted}\
             rapctl status --json >/tmp/st 2>/dev/null && grep -Eq '{re}' /tmp/st && break; sleep 0.25; done; \
             grep -Eq '{re}' /tmp/st && cat /tmp/st"
        ),
        timeout(secs + 30),
    );
    if rc != 0 {
        let j = journal(vm);
        panic!("{what}: not within {secs} s (status: {out})\njournal:\n{j}");
    }
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("rapctl status --json: {e}: {out}"))
}

fn link<'a>(st: &'a Value, interface: &str) -> &'a Value {
    st["links"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["interface"] == interface)
        .unwrap_or_else(|| panic!("{interface} not in the links of {st:#}"))
}

/// The live IPv4 and IPv6 rules without comments and counters, as a hash.
fn rules_hash(vm: &mut Vm) -> String {
    vm.console
        .run_ok(
            "(iptables-save; ip6tables-save) | grep -v '^#' | sed -E 's/\\[[0-9]+:[0-9]+\\]//' | sha256sum",
            timeout(30),
        )
        .trim()
        .to_owned()
}

/// The box events of `instrument` in the data center, as (link, at_start) in arrival order.
fn link_events(dc: &DataCenter, instrument: &str) -> Vec<(String, bool, String)> {
    dc.client
        .all_reports(Some(BOX_ID), Some(instrument))
        .expect("dc reports")
        .into_iter()
        .filter(|r| r.kind == Kind::BoxEvent)
        .map(|r| {
            assert!(r.msg_id >= rapwire::BOX_ID_BASE, "box event id {} below the box's range", r.msg_id);
            let p: Value = serde_json::from_str(&r.payload).unwrap_or_else(|e| panic!("{e}: {}", r.payload));
            assert_eq!(p["event"], "link", "{p}");
            (
                p["link"].as_str().unwrap_or("").to_owned(),
                p["at_start"].as_bool().unwrap_or(false),
                p["interface"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn wait_dc<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not in the data center within {secs} s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every path the policy must close, each wanting `w`.
fn closed<'a>(around: &'a Around, w: Want) -> Vec<Probe<'a>> {
    let (a, b, u) = (&around.a, &around.b, &around.u);
    vec![
        // Instrument A: only its agent port (and its LIS forward, checked on its own).
        probe("A to instrument B", a, sa(B, 7000), w),
        probe("A to B's agent port on the box", a, sa(B_BOX, AGENT), w),
        probe("A to the box's ssh", a, sa(A_BOX, SSH), w),
        probe("A to a closed box port", a, sa(A_BOX, 2222), w),
        probe("A to the box's uplink address", a, sa(UP_BOX, SSH), w),
        probe("A to the uplink network", a, sa(GW, 8080), w),
        probe("A to the data center", a, sa(DC, 443), w),
        probe("A straight to the LIS host", a, sa(LIS, LIS_PORT), w),
        probe("A to another uplink host on the LIS port", a, sa(OTHER, LIS_PORT), w),
        probe_udp("A to a box UDP port", a, sa(A_BOX, 5353), w),
        probe_udp("A to the uplink network (UDP)", a, sa(GW, 5353), w),
        Probe {
            what: "A as 10.10.1.99 (spoofed) to its agent port",
            ns: a,
            proto: Proto::Tcp,
            from: Some(A_SPOOF),
            to: sa(A_BOX, AGENT),
            want: w,
        },
        // Instrument B: LIS configured but not enabled.
        probe("B to instrument A", b, sa(A, 7000), w),
        probe("B to A's agent port on the box", b, sa(A_BOX, AGENT), w),
        probe("B to the box's ssh", b, sa(B_BOX, SSH), w),
        probe("B to its LIS port (not enabled)", b, sa(B_BOX, LIS_SIDE), w),
        probe("B through A's LIS port", b, sa(A_BOX, LIS_SIDE), w),
        probe("B to the uplink network", b, sa(GW, 8080), w),
        // The uplink side: the box answers nothing, forwards nothing.
        probe("uplink to the box's ssh", u, sa(UP_BOX, SSH), w),
        probe("uplink to a closed port of the box", u, sa(UP_BOX, AGENT), w),
        probe("uplink to the box's LIS port", u, sa(UP_BOX, LIS_SIDE), w),
        probe("uplink to A's agent port on the box", u, sa(A_BOX, AGENT), w),
        probe("uplink to instrument A", u, sa(A, 7000), w),
        probe_udp("uplink to a box UDP port", u, sa(UP_BOX, 5353), w),
        probe_udp("uplink to the box's NTP port", u, sa(UP_BOX, 123), w),
    ]
}

#[test]
fn firewall_and_ports_in_the_booted_image() {
    let test = "fw_guest";
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
    let t_boot = Instant::now();
    let mut vm = Vm::start_with(test, &built, &cfg, &VmExtras { uplink_tap: true, qmp: true, ..VmExtras::default() })
        .expect("qemu");
    let around = Around::new(&vm);
    let (a, u) = (&around.a, &around.u);
    let relay = DcRelay::start(u, &dc, test);
    let _svc = [
        Service::start(a, SocketAddr::from((A, 7000))),
        Service::start(&around.b, SocketAddr::from((B, 7000))),
        Service::start(u, SocketAddr::from((GW, 8080))),
        Service::start(u, SocketAddr::from((GW, 443))),
        Service::start(u, SocketAddr::from((LIS, LIS_PORT))),
        Service::start(u, SocketAddr::from((OTHER, LIS_PORT))),
        Service::udp_echo(u, SocketAddr::from((GW, 5353))),
    ];
    let t = timeout(3);

    vm.console.login("root", TEST_PASSWORD, timeout(120));
    // rapd up: policy applied, every link up, the uplink addressed by rapd, a batch acknowledged.
    let st = wait_status(
        &mut vm,
        "rapd ready with the firewall and an acknowledged upload",
        "\"last_success_ms\": [0-9]",
        120,
        true,
    );
    println!(
        "rapd ready, firewall applied, first upload acknowledged {:.1} s after QEMU start",
        t_boot.elapsed().as_secs_f64()
    );
    // ... by rapd as user rapd, inside the unit's sandbox.
    let sandbox = vm.console.run_ok(
        "ps -o user= -C rapd; systemctl show -p NoNewPrivileges -p ProtectKernelModules -p ProtectKernelTunables \
         -p ProtectSystem -p CapabilityBoundingSet -p ReadWritePaths rapd.service",
        timeout(20),
    );
    for want in [
        "rapd\n",
        "NoNewPrivileges=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelTunables=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=cap_net_bind_service cap_net_admin",
        "ReadWritePaths=/data/rapd /data/config /proc/sys/net/ipv4/ip_forward",
    ] {
        assert!(sandbox.contains(want), "{want}: {sandbox}");
    }
    assert_eq!(st["firewall"]["enabled"], true, "{st:#}");
    assert!(st["firewall"]["rule_count"].as_u64().unwrap_or(0) > 20, "{st:#}");
    assert_eq!(st["firewall"]["last_error"], Value::Null, "{st:#}");
    assert_eq!(st["firewall"]["canonical"], true, "iptables-save in the guest prints the policy as generated: {st:#}");
    let mods = vm.console.run_ok("lsmod | grep -E '^(nf|nft|xt)_' | cut -d' ' -f1 | sort | tr '\\n' ' '", timeout(20));
    println!(
        "firewall: {} rules; netfilter modules the kernel loaded on demand: {}",
        st["firewall"]["rule_count"],
        mods.trim()
    );
    for (dev, serial) in [("enp0s3", Value::Null), ("enp0s4", SERIAL_A.into()), ("enp0s5", SERIAL_B.into())] {
        let l = link(&st, dev);
        assert_eq!(l["link"], "up", "{l}");
        assert_eq!(l["serial"], serial, "{l}");
    }
    assert_eq!(link(&st, "enp0s3")["address"], "10.0.2.15/24");
    let routes = vm.console.run_ok("ip -4 route show default; ip -4 -br addr show", timeout(20));
    assert!(routes.contains("default via 10.0.2.2 dev enp0s3"), "{routes}");
    assert_eq!(
        *relay.peers.lock().unwrap(),
        BTreeSet::from([IpAddr::V4(UP_BOX)]),
        "the data center is reached from the box's uplink address"
    );
    assert_eq!(vm.console.run_ok("cat /proc/sys/net/ipv4/ip_forward", timeout(10)).trim(), "1", "LIS forward on");
    // Hardening controls 35 and 39 of the live box with the LIS forward on: forwarding is
    // allowed because the firewall forwards (and names the rule), the uplink answers nothing.
    let (text, _) = vm.console.run("raphard check-live | grep -E '^(35|39) '", timeout(120));
    let line = |id: &str| text.lines().find(|l| l.starts_with(id)).unwrap_or("").to_string();
    assert!(
        line("35 pass").contains("net.ipv4.ip_forward=1 (the firewall forwards: QFW-0001: LIS forward"),
        "control 35 with the LIS forward on: {text}"
    );
    assert!(line("39 pass").contains("nothing new accepted on the uplink enp0s3"), "control 39: {text}");

    // Real reports from both instruments reach rapd and the data center.
    let sims: Vec<SimRun> = [(a, SERIAL_A, A_BOX), (&around.b, SERIAL_B, B_BOX)]
        .into_iter()
        .map(|(ns, serial, box_ip)| {
            let mut i = rapsim::Instrument::new(SocketAddr::from((box_ip, AGENT)), serial);
            i.count = Some(20);
            i.connect_timeout = Duration::from_secs(2);
            i.drain_timeout = Duration::from_secs(5);
            SimRun::spawn(&ns.name, i)
        })
        .collect();
    for s in sims {
        let serial = s.serial.clone();
        let sum = s.join().unwrap_or_else(|e| panic!("{serial}: {e}"));
        assert_eq!(sum.stats.acked, 20, "{serial}: {:?}", sum.stats);
    }

    // Phase 1, the policy: every other path is silent; the LIS forward reaches exactly its
    // host and port, under the box's uplink address.
    let t1 = Instant::now();
    let mut probes = closed(&around, Want::Silence);
    probes.push(probe("A through its LIS forward", a, sa(A_BOX, LIS_SIDE), Want::Answer(UP_BOX)));
    check_within("with the policy", &probes, t);
    println!("{} paths probed with the policy in {:.1} s", probes.len(), t1.elapsed().as_secs_f64());
    // The box itself: the data center only (OUTPUT drops the SYN: the connect hangs
    // until `timeout` ends it, exit 124).
    let out = vm.console.run(
        "for p in 443 8080; do timeout 5 bash -c \"exec 3<>/dev/tcp/10.0.2.2/$p\" 2>&1; echo \"rc=$?\"; done",
        timeout(30),
    );
    assert_eq!(out.0.matches("rc=124").count(), 2, "the box to other uplink ports: {}", out.0);
    // The spoofed packets were counted by the anti-spoofing rule.
    let rules = vm.console.run_ok("iptables -L rap-port0-in -v -n -x", timeout(20));
    let spoof_drops: u64 = rules
        .lines()
        .find(|l| l.contains("DROP") && l.contains("!10.10.1.2"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(spoof_drops > 0, "the anti-spoofing rule counted nothing:\n{rules}");

    // Phase 2, drift: a rule deleted by hand is restored within 10 s, and audited.
    let out = vm.console.run_ok(
        "t0=$(date +%s%3N); iptables -D rap-port0-in 2; echo \"t0=$t0\"; end=$(( $(date +%s) + 30 )); \
         while [ $(date +%s) -lt $end ]; do rapctl status --json >/tmp/st; grep -Eq '\"drift_repairs\": [1-9]' /tmp/st && break; sleep 0.25; done",
        timeout(60),
    );
    let t0: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("t0="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no t0: {out}"));
    let st = status(&mut vm);
    let fw = &st["firewall"];
    assert!(fw["drift_repairs"].as_u64() >= Some(1), "{fw:#}");
    let repaired = fw["last_drift_repair_ms"].as_u64().expect("last_drift_repair_ms");
    let deleted = "ipv4 filter/rap-port0-in: rule missing: -A rap-port0-in ! -s 10.10.1.2/32";
    assert!(fw["last_drift"].to_string().contains(deleted), "{fw:#}");
    println!("drift: a deleted rule restored {} ms after the deletion", repaired.saturating_sub(t0));
    assert!(repaired.saturating_sub(t0) < 10_000, "repaired {} ms after the deletion", repaired - t0);
    let rules = vm.console.run_ok("iptables -S rap-port0-in", timeout(20));
    assert!(rules.contains("-A rap-port0-in ! -s 10.10.1.2/32 -m comment"), "the rule is back:\n{rules}");
    let audit = vm.console.run_ok("rapctl audit log -n 50 --json", timeout(20));
    let records: Vec<Value> = serde_json::from_str(audit.trim()).unwrap_or_else(|e| panic!("{e}: {audit}"));
    let rec = records
        .iter()
        .rev()
        .find(|r| r["action"] == "firewall.drift_repaired")
        .unwrap_or_else(|| panic!("no firewall.drift_repaired record: {audit}"));
    assert!(rec["detail"]["changes"].to_string().contains(deleted), "{rec}");
    assert_eq!(rec["outcome"], "success", "{rec}");
    let rec_ms = rapbox::audit::chain::parse_time(rec["time"].as_str().unwrap_or("")).expect("record time") as u64;
    assert!(rec_ms.saturating_sub(t0) < 10_000, "audit record {} ms after the deletion: {rec}", rec_ms - t0);
    let seq = rec["seq"].as_u64().expect("seq");
    wait_dc("the drift repair's audit record", 60, || {
        let all = dc.client.all_reports(Some(BOX_ID), Some("")).ok()?;
        all.iter()
            .find(|r| r.kind == Kind::Audit && r.msg_id == seq && r.payload.contains("firewall.drift_repaired"))?;
        Some(())
    });
    check_within(
        "after the repair",
        &[Probe {
            what: "A as 10.10.1.99 (spoofed) to its agent port",
            ns: a,
            proto: Proto::Tcp,
            from: Some(A_SPOOF),
            to: sa(A_BOX, AGENT),
            want: Want::Silence,
        }],
        t,
    );

    // Phase 3, link events: A's cable pulled and plugged back (QEMU's NIC link).
    let at_start = wait_dc("the link states at start", 60, || {
        let (ea, eb, eu) = (link_events(&dc, SERIAL_A), link_events(&dc, SERIAL_B), link_events(&dc, ""));
        (ea.iter().any(|e| e.1) && eb.iter().any(|e| e.1) && eu.iter().any(|e| e.1)).then_some((ea, eb, eu))
    });
    println!("link events before the cable pull: A {:?}, B {:?}, uplink {:?}", at_start.0, at_start.1, at_start.2);
    for (events, dev) in [(&at_start.0, "enp0s4"), (&at_start.1, "enp0s5"), (&at_start.2, "enp0s3")] {
        assert!(events.iter().any(|e| e.1 && e.2 == dev), "{dev}: no state at start: {events:?}");
        assert_eq!(events.last().map(|e| e.0.as_str()), Some("up"), "{dev}: {events:?}");
    }
    let b_events = link_events(&dc, SERIAL_B).len();
    let t3 = Instant::now();
    vm.qmp("set_link", serde_json::json!({ "name": "i0", "up": false })).expect("set_link off");
    let down = wait_dc("A's link down", 60, || {
        link_events(&dc, SERIAL_A).contains(&("down".into(), false, "enp0s4".into())).then_some(t3.elapsed())
    });
    let st = status(&mut vm);
    assert_eq!(link(&st, "enp0s4")["link"], "down", "{st:#}");
    vm.qmp("set_link", serde_json::json!({ "name": "i0", "up": true })).expect("set_link on");
    wait_dc("A's link up again", 60, || {
        let e = link_events(&dc, SERIAL_A);
        let d = e.iter().position(|x| *x == ("down".to_owned(), false, "enp0s4".to_owned()))?;
        e[d..].contains(&("up".into(), false, "enp0s4".into())).then_some(())
    });
    println!(
        "link events: down in the data center {:.1} s after the cable was pulled, up {:.1} s after",
        down.as_secs_f64(),
        t3.elapsed().as_secs_f64()
    );
    assert_eq!(link_events(&dc, SERIAL_B).len(), b_events, "B's link did not change");

    // Phase 4, refused configurations leave the rules in place.
    let before = rules_hash(&mut vm);
    let (out, rc) = vm.console.run(
        &format!("sed 's/serial = \"{SERIAL_B}\"/serial = \"{SERIAL_A}\"/' /etc/rapbox/rapd.toml > /tmp/dup.toml && rapd --config /tmp/dup.toml"),
        timeout(30),
    );
    assert_eq!(rc, rapbox::exit::CONFIG, "{out}");
    assert!(out.contains("key `instrument[1].serial`: `QFW-0001` is configured twice"), "{out}");
    // (The exit status is read before rapd is stopped: systemd restarts it every 2 s, and
    // stopping an instance in the middle of its start would overwrite the status.)
    let out = vm.console.run_ok(
        "cp /data/config/rapd.toml /tmp/good.toml && sed -i 's/interface = \"enp0s5\"/interface = \"enp0s9\"/' /data/config/rapd.toml \
         && systemctl restart rapd.service; for i in $(seq 80); do s=$(systemctl show -P ExecMainStatus rapd.service); \
         [ \"$s\" = 2 ] && break; sleep 0.25; done; echo \"exit status $s\"; systemctl stop rapd.service",
        timeout(90),
    );
    assert!(out.contains("exit status 2"), "rapd with an unknown interface: {out}");
    let stop = vm.console.run_ok("rapctl audit log -n 10 --json --file /data/rapd/audit.log", timeout(20));
    assert!(stop.contains("\"exit_code\": 2"), "the refused start is audited: {stop}");
    assert_eq!(rules_hash(&mut vm), before, "a refused configuration changed the rules");
    check_within(
        "rapd refused its configuration: the rules still hold",
        &[
            probe("uplink to the box's ssh", u, sa(UP_BOX, SSH), Want::Silence),
            probe("A to the box's ssh", a, sa(A_BOX, SSH), Want::Silence),
            probe("B to instrument A", &around.b, sa(A, 7000), Want::Silence),
        ],
        t,
    );

    // Phase 5, the LIS forward switched off: nothing passes and forwarding is off.
    vm.console.run_ok(
        &format!("sed 's/^{LIS_A_LINE}$/enabled = false/' /tmp/good.toml > /tmp/lis-off.toml && install -m 0600 -o rapd -g rapd /tmp/lis-off.toml /data/config/rapd.toml && systemctl reset-failed rapd.service; systemctl start rapd.service"),
        timeout(60),
    );
    wait_status(&mut vm, "rapd again, LIS forward off", "\"applied_at_ms\": [0-9]", 60, false);
    assert_eq!(vm.console.run_ok("cat /proc/sys/net/ipv4/ip_forward", timeout(10)).trim(), "0", "LIS forward off");
    check_within(
        "LIS forward off",
        &[
            probe("A through its LIS port (off)", a, sa(A_BOX, LIS_SIDE), Want::Silence),
            probe("A straight to the LIS host", a, sa(LIS, LIS_PORT), Want::Silence),
        ],
        t,
    );

    // Phase 6, no rules at all: every path closed above exists.
    vm.console.run_ok(
        "systemctl stop rapd.service && for c in iptables ip6tables; do $c -P INPUT ACCEPT; $c -P FORWARD ACCEPT; $c -P OUTPUT ACCEPT; $c -F; $c -X; done \
         && iptables -t nat -F && sysctl -qw net.ipv4.ip_forward=1",
        timeout(60),
    );
    let mut open = closed(&around, Want::Reached);
    open.push(probe("A through its LIS port (no rules: the box's closed port)", a, sa(A_BOX, LIS_SIDE), Want::Reached));
    check_within("without any rules every path exists", &open, t);
    let out = vm.console.run(
        "for p in 443 8080; do timeout 5 bash -c \"exec 3<>/dev/tcp/10.0.2.2/$p; head -n1 <&3\"; done",
        timeout(30),
    );
    assert_eq!(out.0.matches("sees 10.0.2.15").count(), 2, "the box to other uplink ports without rules: {}", out.0);
    println!("whole test {:.1} s", t_boot.elapsed().as_secs_f64());
}
