//! The local configuration pages in the booted image, in a real browser, in one boot:
//! Debian's headless Chromium (driven over WebDriver by chromedriver) in the harness's
//! namespace, where the first instrument port's tap is the lab side (10.10.1.2), against
//! rapweb in the guest on that port's box address (https://10.10.1.1/).
//!
//! ```text
//!   harness ns  inst0 10.10.1.2 (browser, curl) ─ enp0s4 10.10.1.1 ┐ guest: rapd, rapweb, ├ enp0s3 10.0.2.15 ─ uplink0  ns U
//!               inst1                           ─ enp0s5 10.10.2.1 ┘ firewall             │        10.0.2.2 (gateway), 10.0.2.100
//! ```
//!
//! Proven: TLS 1.3 with an AES-GCM suite, ChaCha20 (not FIPS-approved) refused in TLS 1.3
//! and 1.2, the FIPS gate passed before listening; every page (login, failed login, status, ports, uplink, refusals) starts with
//! the DoD banner; without a session every page leads to the login page and a form post
//! is refused (401); no plain HTTP; a failed login is refused; a bad proxy and a bad
//! gateway are refused with rapd's message naming the key and change nothing; a good DNS
//! setting is applied through rapd's `config_apply` (the configuration in force changes,
//! on trial, the actor is the technician of the pages); logging out ends the session; the
//! pages are silent from the uplink side (the box's uplink address and, routed through
//! it, the lab-side address); the access and error logs hold the requests and refusals,
//! the audit trail the logins, the refusals and the apply; a `[pages]` port applied on the
//! console makes rapweb start again on it, reachable from the lab side. Screenshots of
//! every page are kept under target/qemu-tests/screenshots/pages/ (paths printed). Skips
//! only when the image is missing.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_tests::browser::{Driver, Session};
use qemu_tests::image::{self, TEST_PASSWORD};
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig, VmExtras, UPLINK_TAP};
use rapbox_testkit::netns::{check_within, probe, sa, Ns, Want};
use rapbox_testkit::pki::{Pki, PkiSpec};

const NAME: &str = "pages";
const ALICE: &str = "tech-alice";
const ALICE_PW: &str = "Alice-pages-4417";
const BOX_A: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const LAB_A: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
const UP_BOX: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DC: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const CONFIG: &str = "/etc/rapbox/rapd.toml";

/// The image's template with a static uplink, the firewall managed by rapd, the pages on
/// (on every instrument port: the default) and the harness's two instrument ports.
fn template(dir: &Path) -> PathBuf {
    let t = image::template_with_ports(&dir.join("rapd.toml.in"), &image::harness_ports("PAGE")).expect("template");
    let mut text = std::fs::read_to_string(&t).unwrap();
    text.push_str(&format!(
        "\n[network.uplink]\ninterface = \"enp0s3\"\naddressing = \"static\"\naddress = \"{UP_BOX}/24\"\ngateway = \"{GW}\"\n\
         \n[firewall]\nenabled = true\n\n[pages]\nenabled = true\n"
    ));
    std::fs::write(&t, text).unwrap();
    t
}

fn crypt(password: &str, salt: &str) -> String {
    qemu_tests::run("openssl", &["passwd", "-6", "-salt", salt, password]).expect("openssl passwd").trim().to_owned()
}

/// The lines of the DoD banner (hardening/dod-banner.txt, the console's /etc/issue).
fn banner() -> Vec<String> {
    let b = std::fs::read_to_string(qemu_tests::workspace().join("hardening/dod-banner.txt")).unwrap();
    b.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

/// The page in the window shows the whole banner, first thing.
fn assert_banner(s: &Session, page: &str) {
    let shown = s.text("#banner").unwrap_or_else(|e| panic!("{page}: no banner: {e}"));
    let shown: Vec<&str> = shown.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(shown, banner(), "{page}: the DoD banner");
    let first = s.text("body").unwrap_or_default();
    assert!(first.trim_start().starts_with(&banner()[0]), "{page}: the banner is not the first thing:\n{first}");
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

fn shot(s: &Session, dir: &Path, name: &str, shots: &mut Vec<PathBuf>) {
    let p = dir.join(format!("{name}.png"));
    s.screenshot(&p).unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    shots.push(p);
}

/// `curl` from the harness's namespace (the lab side): the HTTP status it got, or its error.
fn curl(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sk", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        code
    } else {
        format!("curl exit {}", out.status.code().unwrap_or(-1))
    }
}

/// `openssl s_client` from the harness's namespace to the pages: whether the handshake
/// passed, and what it printed.
fn s_client(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "openssl", "s_client", "-brief", "-connect", &format!("{BOX_A}:443")])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("CONNECTION ESTABLISHED"), text)
}

/// Waits (in the guest) until rapd answers and rapweb listens on 10.10.1.1:443; on failure
/// the units' state and journal are in the panic.
fn wait_pages(vm: &mut Vm) {
    let diagnose = |vm: &mut Vm| {
        vm.console
            .run(
                "systemctl status rapd.service rapweb.service --no-pager -l | cat; \
                 journalctl -b -u rapweb.service -u rapd.service --no-pager -n 80 | cat; ip -br addr",
                timeout(60),
            )
            .0
    };
    let (out, rc) = vm.console.run(
        "for i in $(seq 120); do timeout 10 rapctl status >/dev/null 2>&1 && break; sleep 0.5; done; timeout 10 rapctl status",
        timeout(200),
    );
    if rc != 0 {
        let d = diagnose(vm);
        panic!("rapd does not answer:\n{out}\n{d}");
    }
    let (out, _) = vm.console.run(
        "for i in $(seq 60); do ss -Htln | grep -q '10.10.1.1:443 ' && break; sleep 0.5; done; ss -Htln",
        timeout(60),
    );
    if !out.contains("10.10.1.1:443 ") {
        let d = diagnose(vm);
        panic!("rapweb is not listening on 10.10.1.1:443:\n{out}\n{d}");
    }
}

#[test]
fn configuration_pages_in_a_real_browser() {
    let Some(built) = image::built_or_skip(NAME) else { return };
    for p in ["/usr/bin/chromium", "/usr/bin/chromedriver", "/usr/bin/curl"] {
        assert!(Path::new(p).exists(), "{p} missing: scripts/install-deps.sh installs it");
    }
    let started = Instant::now();
    let dir = qemu_tests::workspace().join(format!("target/qemu-tests/{NAME}-dc"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::generate(
        &dir.join("pki"),
        &PkiSpec::new(&["dc.rapbox.test"], &[std::net::IpAddr::V4(DC)], qemu_tests::datacenter::BOX_ID),
    )
    .expect("test PKI");
    let raw = image::private_copy(&built, NAME).expect("copy");
    let extras = rapimage::provision::Extras {
        technicians: vec![format!("{ALICE}:{}", crypt(ALICE_PW, "alicepages")).parse().unwrap()],
        syslog_name: None,
    };
    rapimage::provision::provision_with(
        &raw,
        &built.dir.join("manifest.json"),
        &template(&dir),
        &rapimage::provision::Identity {
            ca: pki.ca.cert.clone(),
            cert: pki.client.cert.clone(),
            key: pki.client.key.clone(),
            url: format!("https://{DC}/api/v1/batches"),
        },
        &extras,
    )
    .expect("rapimage provision");
    let disk = image::overlay_of(&raw, NAME).expect("overlay");
    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: None, memory_mib: 1024 };
    let mut vm =
        Vm::start_with(NAME, &built, &cfg, &VmExtras { uplink_tap: true, ..VmExtras::default() }).expect("qemu");

    // The uplink network in a namespace of its own (once QEMU holds the tap); the lab
    // side is the harness's namespace, where inst0 is.
    let harness = vm.netns().name.clone();
    let u = Ns::new("rqp", "u");
    let end = Instant::now() + timeout(30);
    for tap in ["inst0", UPLINK_TAP] {
        while vm.netns().exec(&["ip", "-o", "link", "show", tap]).expect("ip link").contains("NO-CARRIER") {
            assert!(Instant::now() < end, "QEMU did not open {tap}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    vm.netns().exec(&["ip", "link", "set", UPLINK_TAP, "netns", &u.name]).expect("move the uplink tap");
    u.ip(&format!("link set {UPLINK_TAP} up"));
    for a in [GW, DC] {
        u.ip(&format!("addr add {a}/24 dev {UPLINK_TAP}"));
    }
    u.ip(&format!("route add 10.10.0.0/16 via {UP_BOX}"));
    vm.netns().exec(&["ip", "addr", "add", &format!("{LAB_A}/24"), "dev", "inst0"]).expect("lab address");

    vm.console.login_as("root", TEST_PASSWORD, timeout(240));
    wait_pages(&mut vm);
    let booted = started.elapsed();

    // ---- rapweb's sockets: HTTPS on the two box addresses, nothing else (no plain HTTP,
    // no wildcard, not the uplink's address) ----
    let socks = vm.console.run_ok("ss -Htlnp | grep '\"rapweb\"' | awk '{print $4}' | sort", timeout(30));
    assert_eq!(lines(&socks), ["10.10.1.1:443", "10.10.2.1:443"], "rapweb's listening sockets");
    // ---- without a browser: a form post without a session refused, no CGI ----
    assert_eq!(curl(&harness, &["-X", "POST", "-d", "proxy=", &format!("https://{BOX_A}/uplink")]), "401");
    assert_eq!(curl(&harness, &[&format!("https://{BOX_A}/status")]), "303");
    assert_eq!(curl(&harness, &[&format!("https://{BOX_A}/cgi-bin/test.cgi")]), "404");

    // ---- HTTPS through the FIPS provider: TLS 1.2+, the AES-GCM suites only ----
    let ok = s_client(&harness, &["-tls1_3"]);
    assert!(ok.0, "a TLS 1.3 handshake with the pages' defaults:\n{}", ok.1);
    assert!(ok.1.contains("Protocol version: TLSv1.3") && ok.1.contains("Ciphersuite: TLS_AES_"), "{}", ok.1);
    assert!(!ok.1.contains("X25519"), "only the NIST groups (P-256, P-384):\n{}", ok.1);
    for refused in [
        ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        ["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
    ] {
        let (passed, out) = s_client(&harness, &refused);
        assert!(!passed, "{refused:?} must be refused:\n{out}");
    }
    let j = vm
        .console
        .run_ok("journalctl -b -u rapweb.service --no-pager | grep -c 'FIPS gate passed (providers'", timeout(30));
    assert_ne!(j.trim(), "0", "rapweb passed the FIPS gate before listening");

    // ---- not reachable from the uplink side (silent: the firewall drops it) ----
    check_within(
        "pages from the uplink side",
        &[
            probe("uplink address, port 443", &u, sa(UP_BOX, 443), Want::Silence),
            probe("lab-side address through the uplink, port 443", &u, sa(BOX_A, 443), Want::Silence),
        ],
        Duration::from_secs(5),
    );

    // ---- the browser ----
    let shots_dir = qemu_tests::workspace().join("target/qemu-tests/screenshots/pages");
    let _ = std::fs::remove_dir_all(&shots_dir);
    let driver =
        Driver::start(&harness, 9515, &qemu_tests::workspace().join("target/qemu-tests/pages-chromedriver.log"))
            .expect("chromedriver");
    let shots = std::thread::scope(|sc| {
        sc.spawn(|| {
            qemu_tests::instruments::enter_netns(&harness).expect("join the harness's namespace");
            let s = driver.session().expect("browser session");
            let base = format!("https://{BOX_A}");
            let mut shots = Vec::new();
            // Every page leads to the login page without a session.
            for p in ["/", "/status", "/ports", "/uplink"] {
                s.goto(&format!("{base}{p}")).unwrap();
                assert_eq!(s.url().unwrap(), format!("{base}/login"), "{p} without a session");
            }
            assert_banner(&s, "login");
            shot(&s, &shots_dir, "01-login", &mut shots);
            // A failed login.
            s.fill("#user", ALICE).unwrap();
            s.fill("#password", "not-her-password").unwrap();
            s.click_and_wait("#login").unwrap();
            assert_eq!(s.text("#message").unwrap(), "Login failed: wrong user name or password.");
            assert_banner(&s, "failed login");
            shot(&s, &shots_dir, "02-login-failed", &mut shots);
            // The right password.
            s.fill("#user", ALICE).unwrap();
            s.fill("#password", ALICE_PW).unwrap();
            s.click_and_wait("#login").unwrap();
            assert_eq!(s.url().unwrap(), format!("{base}/status"));
            assert_banner(&s, "status");
            let st = s.text("main").unwrap();
            assert!(st.contains("FIPS") && st.contains("passed"), "status page:\n{st}");
            shot(&s, &shots_dir, "03-status", &mut shots);
            s.goto(&format!("{base}/ports")).unwrap();
            assert_banner(&s, "ports");
            let ports = s.text("main").unwrap();
            assert!(ports.contains("PAGE-0001") && ports.contains("PAGE-0002") && ports.contains("10.10.1.1"), "{ports}");
            shot(&s, &shots_dir, "04-ports", &mut shots);
            // The uplink page shows the configuration in force.
            s.goto(&format!("{base}/uplink")).unwrap();
            assert_banner(&s, "uplink");
            shot(&s, &shots_dir, "05-uplink", &mut shots);
            // A bad proxy: refused by rapd's validation, the key named.
            s.fill("#proxy", "ftp://10.0.2.2:21").unwrap();
            s.click_and_wait("#apply").unwrap();
            assert_eq!(
                s.text("#message").unwrap(),
                format!(
                    "Refused, nothing was changed: {CONFIG}: key `uplink.proxy`: scheme `ftp` is not supported; use http:// (CONNECT) or socks5://"
                )
            );
            assert_banner(&s, "refused proxy");
            shot(&s, &shots_dir, "06-uplink-bad-proxy", &mut shots);
            // A bad gateway (not on the uplink's subnet), checked only.
            s.fill("#proxy", "").unwrap();
            s.fill("#gateway", "10.0.3.2").unwrap();
            s.click_and_wait("#check").unwrap();
            assert_eq!(
                s.text("#message").unwrap(),
                format!(
                    "Refused, nothing was changed: {CONFIG}: key `network.uplink.gateway`: 10.0.3.2 is not another host of the uplink subnet 10.0.2.0/24"
                )
            );
            shot(&s, &shots_dir, "07-uplink-bad-gateway", &mut shots);
            // A good change: checked, then applied.
            s.fill("#gateway", &GW.to_string()).unwrap();
            s.fill("#dns", "10.0.2.2").unwrap();
            s.click_and_wait("#check").unwrap();
            assert_eq!(s.text("#message").unwrap(), "Valid (checked by rapd, not applied): network.uplink.dns");
            s.click_and_wait("#apply").unwrap();
            let m = s.text("#message").unwrap();
            assert!(m.starts_with("Applied: network.uplink.dns; on trial: "), "{m}");
            assert_banner(&s, "applied");
            shot(&s, &shots_dir, "08-uplink-applied", &mut shots);
            // Logging out ends the session.
            s.click_and_wait("#logout").unwrap();
            assert_eq!(s.url().unwrap(), format!("{base}/login"));
            s.goto(&format!("{base}/status")).unwrap();
            assert_eq!(s.url().unwrap(), format!("{base}/login"), "/status after logging out");
            s.close();
            shots
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    drop(driver);
    for p in &shots {
        println!("screenshot: {}", p.display());
    }

    // ---- in the guest: the configuration in force, the logs, the audit trail ----
    let show = vm.console.run_ok("rapctl config show | cat", timeout(30));
    assert!(show.contains("dns = [\"10.0.2.2\"]"), "the applied DNS is in force:\n{show}");
    assert!(show.contains(&format!("web:{ALICE}")), "the trial names the technician of the pages:\n{show}");
    let access = vm.console.run_ok("cat /var/log/rapweb/access.log", timeout(30));
    for want in [
        "10.10.1.2 - - [".to_owned(),
        "\"GET /status HTTP/1.1\" 303 ".to_owned(),
        "\"POST /login HTTP/1.1\" 401 ".to_owned(),
        format!("10.10.1.2 - {ALICE} ["),
        "\"POST /uplink HTTP/1.1\" 422 ".to_owned(),
        "\"POST /uplink HTTP/1.1\" 200 ".to_owned(),
        "\"POST /logout HTTP/1.1\" 303 ".to_owned(),
        "\"GET /cgi-bin/test.cgi HTTP/1.1\" 404 ".to_owned(),
    ] {
        assert!(access.contains(&want), "access.log lacks {want}:\n{access}");
    }
    assert!(access.lines().all(|l| l.ends_with("TLSv1.3") || l.ends_with("TLSv1.2")), "{access}");
    let error = vm.console.run_ok("cat /var/log/rapweb/error.log", timeout(30));
    for want in [
        "[error] client 10.10.1.2:".to_owned(),
        format!("login refused for `{ALICE}`"),
        format!("uplink settings of {ALICE} refused: Refused, nothing was changed: {CONFIG}: key `uplink.proxy`: "),
        "GET /cgi-bin/test.cgi answered 404".to_owned(),
        "TLS handshake failed: ".to_owned(),
    ] {
        assert!(error.contains(&want), "error.log lacks {want}:\n{error}");
    }
    let audit = vm.console.run_ok("rapctl audit log -n 100", timeout(30));
    let with = |n: &[&str]| audit.lines().filter(|l| n.iter().all(|x| l.contains(x))).count();
    let actor = format!("  web:{ALICE}  ");
    assert_eq!(with(&[&actor, "web.login  denied  pages"]), 1, "{audit}");
    assert_eq!(with(&[&actor, "web.login  success  pages"]), 1, "{audit}");
    assert_eq!(with(&[&actor, "web.logout  success  pages"]), 1, "{audit}");
    assert_eq!(with(&[&actor, "config.refused  denied  ", "uplink.proxy"]), 1, "{audit}");
    assert_eq!(with(&[&actor, "config.applied  success  "]), 1, "{audit}");
    let verify = vm.console.run_ok("rapctl audit verify", timeout(30));
    assert!(verify.contains(": intact, "), "{verify}");

    // ---- another port for the pages, applied while rapweb runs: rapweb starts again on it ----
    let (out, rc) = vm.console.run("rapctl config apply pages.port=8443", timeout(120));
    assert_eq!(rc, 0, "{out}");
    let socks = vm.console.run_ok(
        "for i in $(seq 60); do ss -Htlnp | grep '\"rapweb\"' | grep -q ':8443 ' && break; sleep 0.5; done; \
         ss -Htlnp | grep '\"rapweb\"' | awk '{print $4}' | sort",
        timeout(60),
    );
    assert_eq!(lines(&socks), ["10.10.1.1:8443", "10.10.2.1:8443"], "rapweb after pages.port=8443");
    assert_eq!(curl(&harness, &[&format!("https://{BOX_A}:8443/login")]), "200", "the pages on the new port");
    let j =
        vm.console.run_ok("journalctl -b -u rapweb.service --no-pager | grep -c '\\[pages\\] changed'", timeout(30));
    assert_eq!(j.trim(), "1", "rapweb said why it started again");

    println!(
        "pages test: {:.1} s ({:.1} s to the pages listening)",
        started.elapsed().as_secs_f64(),
        booted.as_secs_f64()
    );
}
