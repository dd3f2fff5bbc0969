//! Negative tests of the run-time controls that read the network and the web pages
//! (34, 35, 39, 46): `raphard check-live` runs in a network namespace of its own against
//! real netfilter rules (rapd's generated policies from runtime/tests/fixtures/firewall,
//! applied with iptables-restore, then broken by hand), real per-namespace sysctls and a
//! real HTTPS server (OpenSSL) with its access and error logs. Each test shows the control
//! passing on the good setup and failing, with the message that names what is wrong, on
//! the broken one. Needs root and `ip netns` (SKIP otherwise).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
use rapbox_testkit::netns::{self, Ns};
use serde_json::Value;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn skip(test: &str) -> bool {
    match netns::skip_reason() {
        Some(why) => {
            println!("SKIP {test}: {why}");
            true
        }
        None => false,
    }
}

fn golden(name: &str) -> PathBuf {
    Path::new(WORKSPACE).join("runtime/tests/fixtures/firewall").join(name)
}

/// A namespace whose uplink is `eth0` (one end of a veth pair, holding the IPv4 default
/// route), like the generated policies expect.
fn box_ns(role: &str) -> Ns {
    let ns = Ns::new("raphard", role);
    ns.ip("link add eth0 type veth peer name eth0-peer");
    ns.ip("addr add 192.0.2.10/24 dev eth0");
    ns.ip("link set eth0-peer up");
    ns.ip("link set eth0 up");
    ns.ip("route add default via 192.0.2.1");
    ns
}

fn restore(ns: &Ns, v4: &str, v6: &str) {
    ns.sh(&format!("iptables-restore < {}", golden(v4).display()));
    ns.sh(&format!("ip6tables-restore < {}", golden(v6).display()));
}

/// Runs `raphard check-live` in `ns`; the JSON entry of control `id` (status, found).
/// rapd's configuration is `dir`/rapd.toml unless `args` name one (absent: this host's
/// /etc/rapbox is never read).
fn live(ns: &Ns, dir: &Path, args: &[&str], id: u64) -> (String, String) {
    let json = dir.join(format!("live-{id}.json"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_raphard"), "check-live", "--quiet"])
        .arg("--report-json")
        .arg(&json);
    if !args.contains(&"--rapd-config") {
        cmd.arg("--rapd-config").arg(dir.join("rapd.toml"));
    }
    let out = cmd.args(args).output().expect("raphard");
    assert!(out.status.code().is_some_and(|c| c <= 1), "raphard check-live: {out:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    let c = report["controls"].as_array().unwrap().iter().find(|c| c["id"] == id).expect("control").clone();
    (c["status"].as_str().unwrap().to_string(), c["found"].as_str().unwrap().to_string())
}

/// Runs check-live in `ns` and asserts control `id`'s status and that its finding names
/// every one of `wants`.
fn expect(ns: &Ns, dir: &Path, args: &[&str], id: u64, status: &str, wants: &[&str]) {
    verdict_is(&format!("control {id} with {args:?}"), &live(ns, dir, args, id), status, wants);
}

/// Asserts a (status, found) entry: the status, and every one of `wants` in the finding.
fn verdict_is(what: &str, (got, found): &(String, String), status: &str, wants: &[&str]) {
    assert_eq!(got, status, "{what}: {found}");
    for want in wants {
        assert!(found.contains(want), "{what}: missing `{want}` in: {found}");
    }
}

#[test]
fn c39_accept_policies_fail() {
    if skip("c39_accept_policies_fail") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = box_ns("c39a");
    let wants = [
        "iptables: policy of INPUT is ACCEPT, not DROP",
        "iptables: policy of FORWARD is ACCEPT, not DROP",
        "ip6tables: policy of INPUT is ACCEPT, not DROP",
        "ip6tables: policy of FORWARD is ACCEPT, not DROP",
    ];
    expect(&ns, dir.path(), &[], 39, "fail", &wants);
}

#[test]
fn c39_generated_policy_passes_and_an_uplink_accept_fails() {
    if skip("c39_generated_policy_passes_and_an_uplink_accept_fails") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ns = box_ns("c39b");
    restore(&ns, "two-ports-lis.ipv4.rules", "two-ports-lis.ipv6.rules");
    expect(&ns, d, &[], 39, "pass", &["iptables: nothing new accepted on the uplink eth0"]);

    // Someone opens ssh on the uplink by hand: the policy is still DROP, the box answers.
    ns.sh("iptables -I INPUT 2 -i eth0 -p tcp --dport 22 -j ACCEPT");
    let want = "iptables: new connections on the uplink eth0 are accepted by: -A INPUT -i eth0 -p tcp -m tcp --dport 22 -j ACCEPT";
    expect(&ns, d, &[], 39, "fail", &[want]);

    // The policy generated with the pages opened on the uplink ([pages] interfaces).
    let ns = box_ns("c39c");
    restore(&ns, "pages.ipv4.rules", "pages.ipv6.rules");
    expect(&ns, d, &[], 39, "fail", &["configuration pages https://192.0.2.10:443 (opened by [pages] interfaces)"]);

    // Without a default route the uplink is unknown: not a pass.
    let ns = Ns::new("raphard", "c39d");
    restore(&ns, "uplink-only.ipv4.rules", "uplink-only.ipv6.rules");
    let want = "no --uplink, no [network.uplink] interface in rapd's configuration and no IPv4 default route";
    expect(&ns, d, &[], 39, "fail", &[want]);
    expect(&ns, d, &["--uplink", "eth0"], 39, "pass", &[]);
    // rapd's configuration names the uplink (the box's DHCP uplink may have no default route).
    std::fs::write(d.join("rapd.toml"), "[network.uplink]\ninterface = \"eth0\"\naddressing = \"dhcp\"\n").unwrap();
    expect(&ns, d, &[], 39, "pass", &["nothing new accepted on the uplink eth0"]);
    ns.sh("iptables -I INPUT 1 -i eth0 -p udp --dport 161 -j ACCEPT");
    expect(&ns, d, &[], 39, "fail", &["-A INPUT -i eth0 -p udp -m udp --dport 161 -j ACCEPT"]);
}

/// The control 35 sysctls of the namespace set as the hardening wants them.
fn harden_sysctls(ns: &Ns) {
    for key in raphard::sysctl::REQUIRED.iter().filter(|r| r.control == 35) {
        ns.sh(&format!("sysctl -qw {}={}", key.key, key.value));
    }
}

#[test]
fn c35_forwarding_only_where_the_firewall_forwards() {
    if skip("c35_forwarding_only_where_the_firewall_forwards") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ns = box_ns("c35");
    harden_sysctls(&ns);
    restore(&ns, "uplink-only.ipv4.rules", "uplink-only.ipv6.rules");
    expect(&ns, d, &[], 35, "pass", &["net.ipv4.ip_forward=0"]);

    // Forwarding on while the firewall forwards nothing ...
    ns.sh("sysctl -qw net.ipv4.ip_forward=1");
    let want =
        "net.ipv4.ip_forward = 1 in /proc/sys, must be 0: the firewall forwards nothing and no authorised session is up";
    expect(&ns, d, &[], 35, "fail", &[want]);
    // ... allowed while an authorised session is up.
    expect(&ns, d, &["--session-active"], 35, "pass", &[]);

    // The policy with an opted-in LIS forward needs forwarding, and says which rule.
    restore(&ns, "two-ports-lis.ipv4.rules", "two-ports-lis.ipv6.rules");
    let want = "net.ipv4.ip_forward=1 (the firewall forwards: DXI-0001: LIS forward 10.10.1.1:5000 to 192.0.2.40:5001";
    expect(&ns, d, &[], 35, "pass", &[want]);

    // A redirect accepted while forwarding: still a failure of its own.
    ns.sh("sysctl -qw net.ipv4.conf.all.accept_redirects=1");
    expect(&ns, d, &[], 35, "fail", &["net.ipv4.conf.all.accept_redirects = 1 in /proc/sys, must be 0"]);
}

/// How the fixture web server misbehaves.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// /status is served without the banner.
    no_banner: bool,
    /// /cgi-bin/ answers 200.
    cgi: bool,
    /// Plain HTTP on port 80 answers 200.
    plain_http: bool,
    /// GET /status is not written to the access log.
    unlogged: bool,
    /// Error answers are not written to the error log.
    no_error_log: bool,
}

/// An HTTPS server on 127.0.0.1:443 of `ns` (a thread of this process), logging like
/// rapweb: common log format access lines, an error line for every error answer.
struct Site {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    logs: PathBuf,
}

fn answer(path: &str, faults: Faults, banner: &str) -> (u16, String) {
    let page = |body: &str, with_banner: bool| {
        let b = if with_banner { banner } else { "" };
        format!("<html><body><div class=\"banner\">{b}</div>{body}</body></html>")
    };
    match path {
        "/" => (200, page("<a href=\"/status\">status</a> <a href=\"/login\">log in</a>", true)),
        "/status" => (200, page("all ports up", !faults.no_banner)),
        "/login" => (401, page("<form method=\"post\"></form>", true)),
        "/cgi-bin/" if faults.cgi => (200, page("cgi", true)),
        _ => (404, page("not found", true)),
    }
}

impl Site {
    fn start(ns: &Ns, dir: &Path, faults: Faults) -> Site {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let (cert, key) = (dir.join("site.crt"), dir.join("site.key"));
        netns::run(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        b.set_certificate_chain_file(&cert).unwrap();
        b.set_private_key_file(&key, SslFiletype::PEM).unwrap();
        let acceptor = Arc::new(b.build());
        let banner = std::fs::read_to_string(Path::new(WORKSPACE).join("hardening/dod-banner.txt")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for port in [443u16, 80] {
            if port == 80 && !faults.plain_http {
                continue;
            }
            let (name, stop, ready, acceptor, banner, logs) =
                (ns.name.clone(), stop.clone(), ready_tx.clone(), acceptor.clone(), banner.clone(), logs.clone());
            threads.push(std::thread::spawn(move || {
                netns::enter(&name).unwrap();
                let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let Ok((s, peer)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    if port == 80 {
                        let mut s = s;
                        let _ = s.read(&mut [0u8; 1024]);
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi");
                        continue;
                    }
                    let Ok(mut tls) = acceptor.accept(s) else { continue };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
                    let w: Vec<&str> = line.split_whitespace().collect();
                    let path = w.get(1).copied().unwrap_or("/");
                    let (code, body) = answer(path, faults, &banner);
                    let _ = tls.write_all(
                        format!("HTTP/1.0 {code} X\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                    );
                    let _ = tls.shutdown();
                    let append = |file: &str, text: String| {
                        let mut f =
                            std::fs::OpenOptions::new().create(true).append(true).open(logs.join(file)).unwrap();
                        f.write_all(text.as_bytes()).unwrap();
                    };
                    if !(faults.unlogged && path == "/status") {
                        append("access.log", format!("{} - - [now] \"{line}\" {code} {}\n", peer.ip(), body.len()));
                    }
                    if code >= 400 && code != 401 && !faults.no_error_log {
                        append("error.log", format!("now [error] client {peer}: GET {path} answered {code}\n"));
                    }
                }
            }));
        }
        drop(ready_tx);
        for _ in &threads {
            ready_rx.recv_timeout(Duration::from_secs(10)).expect("site listening");
        }
        Site { stop, threads, logs }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Controls 34 and 46 of a crawl of the fixture site with `faults`.
fn crawl(test: &str, faults: Faults, policy: Option<&Path>, url: &str) -> [(String, String); 2] {
    let dir = tempfile::tempdir().unwrap();
    let ns = Ns::new("raphard", test);
    let site = Site::start(&ns, dir.path(), faults);
    let logs = site.logs.display().to_string();
    let mut args = vec!["--web-url", url, "--web-logs", &logs, "--uplink", "eth9"];
    let p;
    if let Some(policy) = policy {
        p = policy.display().to_string();
        args.extend(["--policy", &p]);
    }
    [live(&ns, dir.path(), &args, 34), live(&ns, dir.path(), &args, 46)]
}

const URL: &str = "https://127.0.0.1/";

#[test]
fn c34_c46_a_good_site_passes() {
    if skip("c34_c46_a_good_site_passes") {
        return;
    }
    let [c34, c46] = crawl("good", Faults::default(), None, URL);
    println!("control 46: {}", c46.1);
    verdict_is("34", &c34, "pass", &["DoD banner on 3 page(s)"]);
    verdict_is("46", &c46, "pass", &["TLS only, no /cgi-bin/", "request(s) in", "maps only", "libssl.so.3"]);
}

#[test]
fn c34_a_page_without_the_banner_fails() {
    if skip("c34_a_page_without_the_banner_fails") {
        return;
    }
    let faults = Faults { no_banner: true, ..Faults::default() };
    let [c34, _] = crawl("c34", faults, None, URL);
    verdict_is("34", &c34, "fail", &["https://127.0.0.1:443/status lacks the DoD banner"]);
}

#[test]
fn c46_each_broken_property_fails_with_its_message() {
    if skip("c46_each_broken_property_fails_with_its_message") {
        return;
    }
    let cases: [(&str, Faults, &str); 4] = [
        ("c46cgi", Faults { cgi: true, ..Faults::default() }, "https://127.0.0.1:443/cgi-bin/ answers 200"),
        (
            "c46http",
            Faults { plain_http: true, ..Faults::default() },
            "http://127.0.0.1/ answers without redirecting to https",
        ),
        ("c46acc", Faults { unlogged: true, ..Faults::default() }, "GET /status (answered 200) is not in "),
        ("c46err", Faults { no_error_log: true, ..Faults::default() }, "GET /cgi-bin/ (answered 404) is not in "),
    ];
    for (name, faults, want) in cases {
        let [_, c46] = crawl(name, faults, None, URL);
        verdict_is(name, &c46, "fail", &[want]);
    }
    let [_, c46] = crawl("c46plain", Faults::default(), None, "http://127.0.0.1/");
    verdict_is("c46plain", &c46, "fail", &["http://127.0.0.1/: not https"]);
}

#[test]
fn c46_a_module_not_on_the_reviewed_list_fails() {
    if skip("c46_a_module_not_on_the_reviewed_list_fails") {
        return;
    }
    // The reviewed policy without libssl: the server (this test process) maps it.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("hardening");
    std::fs::create_dir_all(policy.join("policy")).unwrap();
    let src = Path::new(WORKSPACE).join("hardening");
    std::fs::copy(src.join("dod-banner.txt"), policy.join("dod-banner.txt")).unwrap();
    for f in ["accounts.allow", "suid.allow", "packages.deny"] {
        std::fs::copy(src.join("policy").join(f), policy.join("policy").join(f)).unwrap();
    }
    let allow = std::fs::read_to_string(src.join("policy/web-modules.allow")).unwrap();
    let without: String = allow.lines().filter(|l| l.trim() != "libssl.so.3").map(|l| format!("{l}\n")).collect();
    assert_ne!(without, allow);
    std::fs::write(policy.join("policy/web-modules.allow"), without).unwrap();
    let [_, c46] = crawl("c46mod", Faults::default(), Some(&policy), URL);
    verdict_is("c46mod", &c46, "fail", &["libssl.so.3, not in policy/web-modules.allow"]);
}
