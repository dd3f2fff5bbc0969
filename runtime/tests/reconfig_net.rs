//! Run-time reconfiguration of links and firewall on a real kernel: rapd in a box
//! namespace that manages its links and the netfilter policy (real iptables, nft
//! backend), a data center (real nginx + rapdc) in the uplink namespace, simulated
//! instruments in their own namespaces.
//!
//! ```text
//!   instA (eth0 10.10.1.2) ──veth── ia0 ┐
//!   instB (eth0 10.10.2.2) ──veth── ib0 ┤ box (rapd) ├ up0 ──veth── uplink (eth0 192.0.2.1: nginx → rapdc)
//! ```
//!
//! One test, in order: a configuration naming a missing interface is refused with the key
//! named and neither rules nor addresses change; a second instrument port is added live
//! (address, rules, listener) while instrument A streams without losing its connection,
//! and the data center confirms it; an uplink address on a subnet without the data center
//! is rolled back within `reconfig.rollback_after_s` (address, route and rules back, the
//! uplink delivering again), and so is DHCP where no DHCP server answers (rapd's static
//! address and route taken off, then put back); a `kill -9` while the links move leaves
//! exactly the configuration in force's address and rules after the restart, and its trial
//! goes on; every outcome is audited; no acknowledged report is lost.
//! Needs root and `ip netns`; skipped with the reason printed otherwise.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rapbox::config::Config;
use rapbox::control::{self, Request, Status};
use rapbox::firewall::{self, live, Tools};
use rapbox::reconfig::{ApplyArgs, ApplyOutcome, ApplyReport, ShowReport};
use serde_json::{json, Value};

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`ip netns` unavailable: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("`ip` unavailable: {e}")),
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn new(role: &str) -> Ns {
        let name = format!("rrc{}-{}-{role}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Ns { name };
        ns.ip("link set lo up");
        ns
    }

    fn ip(&self, args: &str) {
        run(Command::new("ip").args(["netns", "exec", &self.name, "ip"]).args(args.split_whitespace()));
    }

    fn sh(&self, cmd: &str) -> String {
        run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", cmd]))
    }

    /// Runs `f` on a thread inside the namespace (sockets and processes it makes live there).
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
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

const UP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const A_BOX: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const B_BOX: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 1);
const AGENT: u16 = 7300;

fn fips_conf() -> PathBuf {
    let dir = std::env::var_os("RAPBOX_FIPS_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/cache/rapbox/fips".into());
    let conf = dir.join("openssl-fips.cnf");
    assert!(conf.is_file(), "{} is missing: run scripts/build-fips.sh first (scripts/test.sh does)", conf.display());
    conf
}

struct Rapd {
    child: Option<Child>,
    log: PathBuf,
    socket: PathBuf,
}

impl Rapd {
    fn status(&self) -> Option<Status> {
        control::request(&self.socket, &Request::Status).ok().and_then(|r| r.status)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    fn apply(&self, args: ApplyArgs) -> ApplyReport {
        let r = control::request_with_timeout(&self.socket, &Request::ConfigApply(args), Duration::from_secs(120))
            .expect("control socket");
        r.config_apply.unwrap_or_else(|| panic!("{:?}", r.error))
    }

    fn show(&self) -> ShowReport {
        control::request(&self.socket, &Request::ConfigShow).expect("control socket").config_show.expect("show")
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

fn keys(v: Value) -> ApplyArgs {
    ApplyArgs { keys: Some(v.as_object().unwrap().clone()), rollback: true, ..ApplyArgs::default() }
}

fn link<'a>(s: &'a Status, interface: &str) -> &'a str {
    s.links
        .as_array()
        .and_then(|v| v.iter().find(|l| l["interface"] == interface))
        .and_then(|l| l["link"].as_str())
        .unwrap_or("?")
}

/// What differs between the live rules in the box and the policy of `cfg`.
fn live_diff(boxns: &Ns, cfg: &Config) -> Vec<String> {
    let rs = firewall::policy(cfg);
    let tools = Tools::system();
    let (v4, v6) = boxns.enter(|| (live::save(&tools.save4).unwrap(), live::save(&tools.save6).unwrap()));
    let (e4, e6) = (live::normalise(&rs.ipv4), live::normalise(&rs.ipv6));
    let mut d = live::diff("ipv4", &e4, &live::normalise(&v4).restricted_to(&e4));
    d.extend(live::diff("ipv6", &e6, &live::normalise(&v6).restricted_to(&e6)));
    d
}

fn addresses(boxns: &Ns) -> String {
    boxns.sh("ip -4 -br addr show | sort")
}

#[test]
fn links_firewall_and_ports_change_live_and_a_broken_uplink_is_rolled_back() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (bx, a, b, up) = (Ns::new("box"), Ns::new("a"), Ns::new("b"), Ns::new("up"));
    for (inner, peer) in [("ia0", &a), ("ib0", &b), ("up0", &up)] {
        run(Command::new("ip").args([
            "link", "add", inner, "netns", &bx.name, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ]));
        peer.ip("link set eth0 up");
    }
    a.ip("addr add 10.10.1.2/24 dev eth0");
    a.ip("route add default via 10.10.1.1");
    b.ip("addr add 10.10.2.2/24 dev eth0");
    b.ip("route add default via 10.10.2.1");
    up.ip("addr add 192.0.2.1/24 dev eth0");
    up.ip("route add 10.10.0.0/16 via 192.0.2.10");

    // The data center in the uplink namespace.
    let dir = rapbox_testkit::TestDir::new(&format!("reconfig-net/{}", std::process::id())).unwrap();
    let pki = rapbox_testkit::pki::Pki::generate(
        &dir.join("pki"),
        &rapbox_testkit::pki::PkiSpec::new(&["dc.rapbox.test"], &[IpAddr::V4(UP)], "box-0001"),
    )
    .unwrap();
    let (db, prefix) = (dir.join("dc.db"), dir.join("nginx"));
    let (backend, nginx) = up.enter(|| {
        let store = rapdc::Store::open(&db).expect("dc store");
        let backend =
            rapdc::Server::start(rapdc::ServerConfig::new("127.0.0.1:0".parse().unwrap()), store).expect("dc");
        std::fs::create_dir_all(&prefix).unwrap();
        let fd = rapdc::FrontDoor::new(
            SocketAddr::from((UP, 443)),
            &pki.server.cert,
            &pki.server.key,
            &pki.ca.cert,
            backend.addr().port(),
            prefix,
        );
        let nginx = rapdc::frontdoor::Nginx::start(&fd).expect("nginx");
        (backend, nginx)
    });
    let client = rapdc::Client::for_addr(backend.addr());

    let socket = dir.join("control.sock");
    let config = format!(
        r#"
[queue]
path = {queue:?}

[uplink]
url = "https://192.0.2.1/api/v1/batches"
ca = {ca:?}
cert = {cert:?}
key = {key:?}
connect_timeout_ms = 2000
io_timeout_ms = 5000
backoff_initial_ms = 100
backoff_max_ms = 1000

[network.uplink]
interface = "up0"
addressing = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53"]

[firewall]
enabled = true

[reconfig]
rollback_after_s = 8

[fips]
openssl_conf = {fips:?}

[control]
socket = {socket:?}

[log]
target = "stderr"
level = "info"

[[instrument]]
serial = "INST-A"
model = "analyser A"
interface = "ia0"
box_address = "10.10.1.1/24"
address = "10.10.1.2"
agent_port = 7300
"#,
        queue = dir.join("data/queue.db"),
        ca = pki.ca.cert,
        cert = pki.client.cert,
        key = pki.client.key,
        fips = fips_conf(),
    );
    let cfg_path = dir.join("rapd.toml");
    std::fs::write(&cfg_path, &config).unwrap();
    let parse = |t: &str| Config::parse(&cfg_path, t).unwrap();
    let spawn = |log: PathBuf| {
        let out = File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &bx.name, env!("CARGO_BIN_EXE_rapd"), "--config"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start rapd");
        Rapd { child: Some(child), log, socket: socket.clone() }
    };
    let mut rapd = spawn(dir.join("rapd.log"));
    rapd.wait_status("the links up and a first upload", Duration::from_secs(30), |s| {
        link(s, "ia0") == "up" && link(s, "up0") == "up" && s.uplink["last_success_ms"].is_u64()
    });
    let cfg0 = parse(&config);
    assert_eq!(live_diff(&bx, &cfg0), Vec::<String>::new());
    let addrs0 = addresses(&bx);

    // Instrument A streams through everything that follows.
    let sim_a = rapsim::Instrument { rate: 200, ..rapsim::Instrument::new(SocketAddr::from((A_BOX, AGENT)), "INST-A") };
    let stats_a = sim_a.stats();
    let stop_a = sim_a.stop_flag();
    let run_a = {
        let path = format!("/run/netns/{}", a.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap();
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            sim_a.run()
        })
    };
    let wait = |what: &str, secs: u64, f: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("A's first acknowledgements", 10, &|| stats_a.acked() > 50);

    // 1. Refused: an interface that does not exist. Nothing changes.
    let port_b = json!({"serial": "INST-B", "model": "analyser B", "interface": "ic7",
        "box_address": "10.10.2.1/24", "address": "10.10.2.2", "agent_port": 7300});
    let r = rapd.apply(keys(json!({ "instrument[1]": port_b })));
    assert_eq!(r.outcome, ApplyOutcome::Refused, "{r:?}");
    assert_eq!(r.errors[0].key.as_deref(), Some("instrument[1].interface"));
    assert_eq!(r.errors[0].message, "instrument[1].interface: interface `ic7` does not exist");
    assert_eq!(std::fs::read_to_string(&cfg_path).unwrap(), config);
    assert_eq!(live_diff(&bx, &cfg0), Vec::<String>::new(), "the rules stay");
    assert_eq!(addresses(&bx), addrs0, "the addresses stay");

    // 2. A second port, live: address, rules, listener; A keeps its connection.
    let mut port_b = port_b;
    port_b["interface"] = json!("ib0");
    let r = rapd.apply(keys(json!({ "instrument[1]": port_b })));
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}\n{}", rapd.log_text());
    assert!(r.plan.links && r.plan.firewall && r.plan.uplink, "{:?}", r.plan);
    assert_eq!((r.plan.ports_stopped.len(), r.plan.ports_started.as_slice()), (0, &["INST-B".to_string()][..]));
    let cfg1 = parse(&std::fs::read_to_string(&cfg_path).unwrap());
    assert_eq!(cfg1.instruments.len(), 2);
    assert_eq!(live_diff(&bx, &cfg1), Vec::<String>::new(), "the live rules are the new policy");
    assert!(addresses(&bx).lines().any(|l| l.starts_with("ib0") && l.contains("10.10.2.1/24")), "{}", addresses(&bx));
    let mut sim_b = rapsim::Instrument::new(SocketAddr::from((B_BOX, AGENT)), "INST-B");
    sim_b.count = Some(20);
    let sum_b = b.enter(|| sim_b.run()).expect("instrument B's reports");
    assert!(sum_b.unacked.is_empty(), "{sum_b:?}");
    let t = Instant::now();
    wait("the confirmation", 30, &|| rapd.show().trial.is_none());
    println!("port added live, confirmed {:.1} s later", t.elapsed().as_secs_f64());
    rapd.wait_status("B's link", Duration::from_secs(10), |s| link(s, "ib0") == "up");

    // 3. An uplink address on a subnet without the data center: rolled back in time.
    let sent = rapd.status().unwrap().uplink["batches_sent"].as_u64().unwrap();
    let t0 = Instant::now();
    let r = rapd.apply(keys(json!({
        "network.uplink.address": "198.51.100.10/24",
        "network.uplink.gateway": "198.51.100.1",
    })));
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}\n{}", rapd.log_text());
    let addrs = addresses(&bx);
    assert!(addrs.contains("198.51.100.10/24") && !addrs.contains("192.0.2.10/24"), "{addrs}");
    assert!(bx.sh("ip -4 route show default").contains("via 198.51.100.1 dev up0"));
    wait("the rollback", 8 + 20, &|| rapd.show().trial.is_none());
    let took = t0.elapsed();
    println!("broken uplink address rolled back {:.1} s after the apply (rollback_after_s = 8)", took.as_secs_f64());
    assert!(took >= Duration::from_secs(8), "{took:?}");
    let addrs = addresses(&bx);
    assert!(addrs.contains("192.0.2.10/24") && !addrs.contains("198.51.100.10"), "the old address is back: {addrs}");
    let route = bx.sh("ip -4 route show default");
    assert!(route.contains("via 192.0.2.1 dev up0") && !route.contains("198.51.100.1"), "{route}");
    assert_eq!(live_diff(&bx, &cfg1), Vec::<String>::new(), "the rules are the previous policy again");
    assert_eq!(parse(&std::fs::read_to_string(&cfg_path).unwrap()).network, cfg1.network);
    rapd.wait_status("the uplink delivering again", Duration::from_secs(30), |s| {
        s.uplink["batches_sent"].as_u64().unwrap() > sent
    });

    // 4. DHCP on an uplink where no DHCP server answers: rapd takes its static address and
    //    default route off; nothing is delivered; rolled back to the static address.
    let sent = rapd.status().unwrap().uplink["batches_sent"].as_u64().unwrap();
    let r = rapd.apply(keys(json!({
        "network.uplink.addressing": "dhcp",
        "network.uplink.address": null,
        "network.uplink.gateway": null,
    })));
    assert_eq!(r.outcome, ApplyOutcome::Applied, "{r:?}\n{}", rapd.log_text());
    assert!(!addresses(&bx).contains("192.0.2.10"), "the static address is off: {}", addresses(&bx));
    assert_eq!(bx.sh("ip -4 route show default").trim(), "", "the static default route is off");
    wait("the rollback", 8 + 20, &|| rapd.show().trial.is_none());
    assert!(addresses(&bx).contains("192.0.2.10/24"), "{}", addresses(&bx));
    assert!(bx.sh("ip -4 route show default").contains("via 192.0.2.1 dev up0"));
    assert_eq!(live_diff(&bx, &cfg1), Vec::<String>::new());
    rapd.wait_status("the uplink delivering again", Duration::from_secs(30), |s| {
        s.uplink["batches_sent"].as_u64().unwrap() > sent
    });

    // A never lost its connection; everything acknowledged is in the data center once.
    stop_a.store(true, Ordering::SeqCst);
    let sum_a = run_a.join().unwrap().expect("instrument A");
    assert!(sum_a.unacked.is_empty(), "{sum_a:?}");
    assert_eq!(sum_a.stats.reconnects, 0, "A's port was never touched: {:?}", sum_a.stats);
    let acked_a: Vec<u64> = stats_a.acked_ids().iter().collect();
    wait("queue drained", 60, &|| rapd.status().is_some_and(|s| s.queue["depth"] == 0));
    let reports = up.enter(|| client.all_reports(Some("box-0001"), None)).expect("reports");
    for (serial, ids) in [("INST-A", acked_a), ("INST-B", (1..=20).collect::<Vec<u64>>())] {
        // The box's own link events name the instrument too (ids from rapwire::BOX_ID_BASE).
        let mut at_dc: Vec<u64> = reports
            .iter()
            .filter(|r| r.instrument == serial && r.kind != rapwire::Kind::BoxEvent)
            .map(|r| r.msg_id)
            .collect();
        at_dc.sort_unstable();
        assert_eq!(at_dc, ids, "{serial}: exactly the acknowledged reports, once each");
    }

    // 5. kill -9 in the middle of moving the links: the start sets everything up from the file
    //    it finds, takes off what the other configuration left, and the trial goes on.
    let broken = json!({"network.uplink.address": "198.51.100.10/24", "network.uplink.gateway": "198.51.100.1"});
    let moves = |r: &Rapd| r.log_text().matches(": links moved").count();
    let before = moves(&rapd);
    let sock = rapd.socket.clone();
    let req = std::thread::spawn(move || {
        control::request_with_timeout(&sock, &Request::ConfigApply(keys(broken)), Duration::from_secs(30))
    });
    let t = Instant::now();
    while moves(&rapd) == before {
        assert!(t.elapsed() < Duration::from_secs(30), "no apply under way:\n{}", rapd.log_text());
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Some(mut c) = rapd.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = req.join();
    let killed_at = rapd.log_text().lines().rev().find(|l| l.contains("reconfig: apply")).unwrap_or("").to_owned();
    let file = std::fs::read_to_string(&cfg_path).unwrap();
    let in_force = parse(&file);
    let mut rapd = spawn(dir.join("rapd-2.log"));
    rapd.wait_status("rapd after the kill", Duration::from_secs(30), |s| link(s, "up0") == "up");
    let want = match &in_force.network.uplink.as_ref().unwrap().addressing {
        rapbox::config::Addressing::Static { address, .. } => address.to_string(),
        other => panic!("{other:?}"),
    };
    let addrs = addresses(&bx);
    let up0: Vec<&str> = addrs.lines().filter(|l| l.starts_with("up0")).collect();
    assert_eq!(up0.len(), 1, "{addrs}");
    let on_up0: Vec<&str> = up0[0].split_whitespace().skip(2).collect();
    assert_eq!(on_up0, [want.as_str()], "exactly the address of the configuration in force ({killed_at})");
    assert_eq!(live_diff(&bx, &in_force), Vec::<String>::new(), "the rules of the configuration in force");
    println!("killed after `{killed_at}`: {want} in force after the restart");
    // The broken one (in force: the file was written before the links moved) is rolled back.
    wait("the end of the trial", 8 + 30, &|| rapd.show().trial.is_none());
    assert!(addresses(&bx).contains("192.0.2.10/24") && !addresses(&bx).contains("198.51.100.10"));
    assert_eq!(live_diff(&bx, &cfg1), Vec::<String>::new());

    // Audited: refused, applied + confirmed, applied + rolled back (twice), resumed + rolled back.
    let recs: Vec<Value> = control::request(&rapd.socket, &Request::AuditTail { n: 10_000 })
        .unwrap()
        .audit_records
        .unwrap()
        .into_iter()
        .filter(|r| r["action"].as_str().is_some_and(|a| a.starts_with("config.") && a != "config.loaded"))
        .collect();
    let acts: Vec<&str> = recs.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        acts,
        [
            "config.refused",
            "config.applied",
            "config.confirmed",
            "config.applied",
            "config.rolled_back",
            "config.applied",
            "config.rolled_back",
            "config.trial_resumed",
            "config.rolled_back"
        ]
    );
    assert_eq!(recs[0]["detail"]["errors"][0]["key"], "instrument[1].interface");
    assert_eq!(recs[4]["detail"]["reason"], "the data center acknowledged no batch within 8 s");
    drop(nginx);
}
