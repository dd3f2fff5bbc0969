//! The field technician's serial console and the audit trail, through the booted image,
//! in one boot: the DoD banner before the login prompt; provisioned technician accounts
//! (SHA-512 hashes, lockout after three failures, separate from root); rapctl's commands
//! with their exact text; logins and failures, uplink settings set and refused
//! (`rapctl network set`), tests in the audit trail; a system audit event (hardening's
//! time-change rule firing on `date -s`) in the trail; `rapctl audit verify` detecting a
//! deleted and an edited record; the audit trail, the kernel audit log and the journal
//! reaching a syslog-over-TLS collector on the host (RFC 5425: `openssl s_server` with
//! client verification behind a second guest-forward, 10.0.2.100:6514); and the uplink
//! delivering audit records made during an outage of the data center, the system audit
//! record with them. Skips only when
//! the image is missing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qemu_tests::datacenter::{DataCenter, BOX_ID};
use qemu_tests::image::{self, TEST_PASSWORD};
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig, VmExtras};
use rapbox_testkit::peers::{TlsServer, TlsServerConfig};
use rapbox_testkit::pki::Profile;

const NAME: &str = "console";
const ALICE: &str = "tech-alice";
const ALICE_PW: &str = "Alice-serial-7731";
const BOB: &str = "tech-bob";
const BOB_PW: &str = "Bob-serial-5520";
const LOGHOST: &str = "loghost.rapbox.test";

fn crypt(password: &str, salt: &str) -> String {
    qemu_tests::run("openssl", &["passwd", "-6", "-salt", salt, password]).expect("openssl passwd").trim().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// The rapd.toml template: the harness's two instrument ports, the uplink interface with
/// the remote syslog collector behind the guest-forward.
fn template(dir: &Path) -> PathBuf {
    let t = image::template_with_ports(&dir.join("rapd.toml.in"), &image::harness_ports("CINST")).expect("template");
    let mut text = std::fs::read_to_string(&t).unwrap();
    text.push_str("\n[network.uplink]\ninterface = \"enp0s3\"\naddressing = \"dhcp\"\nsyslog = \"10.0.2.100:6514\"\n");
    std::fs::write(&t, text).unwrap();
    t
}

/// The lines of the DoD banner as the console shows them.
fn banner() -> Vec<String> {
    let b = std::fs::read_to_string(qemu_tests::workspace().join("hardening/dod-banner.txt")).unwrap();
    b.lines().map(|l| l.trim_end().to_owned()).filter(|l| !l.is_empty()).collect()
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().map(str::trim_end).collect()
}

/// Waits (in the guest) until rapd answers.
fn wait_rapd(vm: &mut Vm) {
    let (out, rc) = vm.console.run(
        "for i in $(seq 240); do rapctl status >/dev/null 2>&1 && break; sleep 0.5; done; rapctl status",
        timeout(180),
    );
    if rc != 0 {
        let j = vm.console.run("journalctl -u rapd.service --no-pager -n 40 | cat", timeout(30)).0;
        panic!("rapd does not answer:\n{out}\njournal:\n{j}");
    }
}

/// Audit records whose line contains all of `needles`.
fn records_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines().filter(|l| needles.iter().all(|n| l.contains(n))).collect()
}

/// The payloads the collector received under `tag` (RFC 5424 messages in RFC 5425
/// octet-counted frames: `LEN SP <PRI>1 TIME HOST APP PROCID MSGID SD MSG`).
fn received(file: &Path) -> Vec<(String, String)> {
    let bytes = std::fs::read(file).unwrap_or_default();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let Some(sp) = bytes[i..].iter().position(|&b| b == b' ') else { break };
        let Some(len) = std::str::from_utf8(&bytes[i..i + sp]).ok().and_then(|s| s.trim().parse::<usize>().ok()) else {
            break;
        };
        let start = i + sp + 1;
        if start + len > bytes.len() {
            break;
        }
        let msg = String::from_utf8_lossy(&bytes[start..start + len]).into_owned();
        // <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
        let parts: Vec<&str> = msg.splitn(8, ' ').collect();
        if parts.len() == 8 {
            out.push((parts[3].to_owned(), parts[7].trim().to_owned()));
        }
        i = start + len;
    }
    out
}

#[test]
fn technician_console_audit_trail_and_syslog_over_tls() {
    let Some(built) = image::built_or_skip(NAME) else { return };
    let started = Instant::now();
    let mut dc = DataCenter::start(NAME).expect("data center");

    // The collector: its certificate from the service CA, client certificates required.
    let loghost =
        dc.pki.issue("loghost", &Profile::server(LOGHOST, &[LOGHOST.to_owned()], &[])).expect("collector certificate");
    let syslog_port = free_port();
    let collector = TlsServer::start(
        &dc.dir,
        &TlsServerConfig::new(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), syslog_port),
            &loghost.cert,
            &loghost.key,
        )
        .require_client_cert(&dc.pki.ca.cert),
    )
    .expect("openssl s_server collector");
    let collector_file = dc.dir.join(format!("s_server-127.0.0.1-{syslog_port}.received"));

    let raw = image::private_copy(&built, NAME).expect("copy");
    let extras = rapimage::provision::Extras {
        technicians: vec![
            format!("{ALICE}:{}", crypt(ALICE_PW, "alicesalt")).parse().unwrap(),
            format!("{BOB}:{}", crypt(BOB_PW, "bobsalt")).parse().unwrap(),
        ],
        syslog_name: Some(LOGHOST.into()),
    };
    rapimage::provision::provision_with(
        &raw,
        &built.dir.join("manifest.json"),
        &template(&dc.dir),
        &rapimage::provision::Identity {
            ca: dc.pki.ca.cert.clone(),
            cert: dc.pki.client.cert.clone(),
            key: dc.pki.client.key.clone(),
            url: dc.url(),
        },
        &extras,
    )
    .expect("rapimage provision");
    let cfg = VmConfig { boot: Boot::Direct, disk: raw.clone(), uplink_port: Some(dc.port), memory_mib: 1024 };
    let disk = image::overlay_of(&raw, NAME).expect("overlay");
    let mut vm = Vm::start_with(
        NAME,
        &built,
        &VmConfig { disk, ..cfg },
        &VmExtras { forwards: vec![(6514, syslog_port)], ..VmExtras::default() },
    )
    .expect("qemu");

    // ---- the banner, then a technician's failed and good logins ----
    let before = vm.console.expect("rapbox login: ", timeout(240));
    let shown: Vec<&str> = before.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let want = banner();
    // Every line of the banner, in order (kernel messages may come between them on ttyS0).
    let mut at = 0;
    for w in &want {
        match shown[at..].iter().position(|l| l == w) {
            Some(i) => at += i + 1,
            None => panic!("banner line missing before the login prompt: {w}\n--- console ---\n{before}"),
        }
    }
    // rapd must be up before the first login it is to record: root waits for it.
    vm.console.cursor_back("rapbox login: ");
    vm.console.login_as("root", TEST_PASSWORD, timeout(60));
    wait_rapd(&mut vm);
    vm.console.logout();
    let out = vm.console.failed_login(ALICE, "not-her-password", timeout(60));
    assert!(out.contains("Login incorrect"), "{out}");
    vm.console.login_as(ALICE, ALICE_PW, timeout(60));
    let id = vm.console.run_ok("id", timeout(30));
    let jgid = vm.console.run_ok("getent group systemd-journal | cut -d: -f3", timeout(30)).trim().to_owned();
    assert_eq!(
        id.trim(),
        format!("uid=2000({ALICE}) gid=989(rapctl) groups=989(rapctl),{jgid}(systemd-journal)"),
        "technician account"
    );
    // Not root, and cannot read what is root's or rapd's.
    let (out, rc) = vm.console.run("cat /etc/shadow /data/provision/box.key /data/rapd/audit.log", timeout(30));
    assert_ne!(rc, 0, "{out}");
    assert!(out.contains("cat: /etc/shadow: Permission denied"), "{out}");
    let shadow_alice = vm.console.run_ok("getent passwd tech-bob", timeout(30));
    assert_eq!(shadow_alice.trim(), format!("{BOB}:x:2001:989:rapbox technician:/data/home/{BOB}:/bin/bash"));

    wait_rapd(&mut vm);

    // ---- rapctl, exact text ----
    let st = vm.console.run_ok("rapctl status", timeout(30));
    assert!(lines(&st).iter().any(|l| l.starts_with("FIPS         passed (providers: ")), "{st}");

    let ports = vm.console.run_ok("rapctl ports", timeout(30));
    let pl = lines(&ports);
    assert_eq!(pl[0], "Uplink       enp0s3  link up", "{ports}");
    assert_eq!(pl[1], "Instruments");
    assert_eq!(pl[2], "  CINST-0001 (rapsim)  enp0s4 link up, box address 10.10.1.1/24", "{ports}");
    assert_eq!(
        pl[3],
        "    agent 10.10.1.1:7300: 0 received, last report never, 0 connected, 0 errors, 0 refused connections"
    );
    assert_eq!(pl[4], "  CINST-0002 (rapsim)  enp0s5 link up, box address 10.10.2.1/24", "{ports}");

    let certs = vm.console.run_ok("rapctl certs", timeout(30));
    let cl = lines(&certs);
    assert_eq!(cl[0], "CA  /data/provision/ca.crt  valid", "{certs}");
    assert_eq!(cl[1], "    subject    O=rapbox test, CN=rapbox test CA");
    assert_eq!(cl[2], "    issuer     O=rapbox test, CN=rapbox test CA");
    assert!(cl[4].starts_with("    days left  36"), "{certs}");
    assert_eq!(cl[5], "Box /data/provision/box.crt  valid");
    assert_eq!(cl[6], format!("    subject    O=rapbox test, CN={BOX_ID}"));
    assert_eq!(cl[7], "    issuer     O=rapbox test, CN=rapbox test CA");
    assert_eq!(cl[10], "    key        matches the certificate", "{certs}");

    let test = vm.console.run_ok("rapctl uplink test", timeout(120));
    let tl = lines(&test);
    assert_eq!(tl[0], "Uplink test: https://10.0.2.100/api/v1/batches (direct)", "{test}");
    assert_eq!(tl[1], "  dns   ok      10.0.2.100 is an address: no lookup needed");
    assert!(tl[2].starts_with("  tcp   ok      connected to 10.0.2.100:443 from 10.0.2.15"), "{test}");
    assert!(
        tl[3].starts_with(
            "  tls   ok      TLSv1.3 TLS_AES_256_GCM_SHA384, server certificate O=rapbox test, CN=dc.rapbox.test"
        ),
        "{test}"
    );
    assert!(tl[4].starts_with("  mtls  ok      box certificate accepted (GET /api/v1/batches: HTTP/1.1 "), "{test}");
    assert_eq!(tl[5], "PASSED: the box reaches the data center and its certificate is accepted");

    // `rapctl network check|set`: rapd's configuration apply (a dry run for check), with
    // the validation of a start and the key named.
    let (out, rc) = vm.console.run("rapctl network check --proxy ftp://10.0.2.2:21", timeout(30));
    assert_eq!(
        (lines(&out), rc),
        (
            [
                "rapctl: refused, nothing was changed:",
                "  /etc/rapbox/rapd.toml: key `uplink.proxy`: scheme `ftp` is not supported; use http:// (CONNECT) or socks5://"
            ]
            .to_vec(),
            1
        )
    );
    let (out, rc) = vm
        .console
        .run("rapctl network check --addressing static --address 10.0.2.15/24 --gateway 10.0.3.2", timeout(30));
    assert_eq!(
        (lines(&out), rc),
        (
            [
                "rapctl: refused, nothing was changed:",
                "  /etc/rapbox/rapd.toml: key `network.uplink.gateway`: 10.0.3.2 is not another host of the uplink subnet 10.0.2.0/24"
            ]
            .to_vec(),
            1
        )
    );
    let (out, rc) = vm.console.run(
        "rapctl network check --addressing static --address 10.0.2.15/24 --gateway 10.0.2.2 --proxy http://10.0.2.2:3128",
        timeout(60),
    );
    assert_eq!(rc, 0, "{out}");
    assert!(lines(&out)[0].starts_with("valid; applying it changes "), "{out}");
    for k in ["network.uplink.addressing", "network.uplink.address", "network.uplink.gateway", "uplink.proxy"] {
        assert!(lines(&out)[0].contains(k), "{k}: {out}");
    }
    let (out, rc) = vm.console.run("rapctl network set --proxy ftp://10.0.2.2:21", timeout(60));
    assert_eq!(rc, 1, "{out}");
    let (out, rc) = vm.console.run("rapctl network set --dns 10.0.2.3", timeout(120));
    assert_eq!(rc, 0, "{out}");
    assert!(lines(&out)[0].starts_with("applied live ("), "{out}");
    assert_eq!(lines(&out)[2], "  changes  network.uplink.dns", "{out}");
    // rapctl logs: rapd's journal (the technician is in systemd-journal), and a unit's.
    let logs = vm.console.run_ok("rapctl logs -n 200", timeout(60));
    assert!(logs.contains(&format!(" by console:{ALICE}: applied live (")), "rapd's journal:\n{logs}");
    let web = vm.console.run_ok("rapctl logs -u rapweb -n 20", timeout(60));
    assert!(
        web.contains("rapweb: the configuration pages are disabled ([pages] enabled = false in /etc/rapbox/rapd.toml)"),
        "rapweb's journal (pages off by default):\n{web}"
    );
    let (out, rc) = vm.console.run("rapctl uplink tset", timeout(30));
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("error: unrecognized subcommand 'tset'"), "{out}");

    let log = vm.console.run_ok("rapctl audit log -n 200", timeout(30));
    let denied = records_with(&log, &[&format!("  console:{ALICE}  console.login  denied  /dev/ttyS0  {{")]);
    assert_eq!(denied.len(), 1, "one failed login of {ALICE}:\n{log}");
    assert_eq!(
        records_with(&log, &[&format!("  console:{ALICE}  console.login  success  /dev/ttyS0  {{")]).len(),
        1,
        "{log}"
    );
    assert_eq!(
        records_with(
            &log,
            &[&format!("  console:{ALICE}  uplink.test  success  https://10.0.2.100/api/v1/batches  {{")]
        )
        .len(),
        1,
        "{log}"
    );
    // The sets are recorded (the checks changed nothing and are not).
    assert_eq!(records_with(&log, &[&format!("  console:{ALICE}  config.refused  denied  ")]).len(), 1, "{log}");
    assert_eq!(records_with(&log, &[&format!("  console:{ALICE}  config.applied  success  ")]).len(), 1, "{log}");
    assert!(!log.contains("config.check"), "{log}");
    let verify = vm.console.run_ok("rapctl audit verify", timeout(30));
    assert!(verify.trim().starts_with("audit log /data/rapd/audit.log: intact, "), "{verify}");
    assert!(verify.trim().ends_with(", end checked against /data/rapd/audit.log.state"), "{verify}");
    vm.console.logout();

    // ---- lockout: three failures lock tech-bob, the right password no longer works ----
    for _ in 0..3 {
        let out = vm.console.failed_login(BOB, "guess", timeout(60));
        assert!(out.contains("Login incorrect"), "{out}");
    }
    let out = vm.console.failed_login(BOB, BOB_PW, timeout(60));
    assert!(out.contains("Login incorrect"), "locked account must not log in:\n{out}");

    // ---- root: the lockout record, tampering detected ----
    vm.console.login_as("root", TEST_PASSWORD, timeout(60));
    let fl = vm.console.run_ok(&format!("faillock --user {BOB} | tail -n +3 | wc -l"), timeout(30));
    // Three failures; the attempt with the right password while locked adds none.
    assert_eq!(fl.trim(), "3", "faillock tally of {BOB}");
    let log = vm.console.run_ok("rapctl audit log -n 200", timeout(30));
    assert_eq!(
        records_with(&log, &[&format!("  console:{BOB}  console.login  denied  /dev/ttyS0  {{")]).len(),
        4,
        "{log}"
    );
    assert!(records_with(&log, &[&format!("  console:{BOB}  console.login  success")]).is_empty(), "{log}");

    // ---- a system audit event (hardening's time-change rule) becomes a record too ----
    vm.console.run_ok("date -s @$(date +%s) > /dev/null", timeout(30));
    let end = Instant::now() + timeout(30);
    let sys_seq: u64 = loop {
        let log = vm.console.run_ok("rapctl audit log -n 50", timeout(30));
        let found =
            records_with(&log, &["  login:root  system.audit  success  time-change  {", "\"exe\":\"/usr/bin/date\""]);
        if let Some(seq) = found.first().and_then(|l| l.split_whitespace().next()).and_then(|s| s.parse().ok()) {
            break seq;
        }
        assert!(Instant::now() < end, "no system.audit record of `date -s` (key time-change):\n{log}");
        std::thread::sleep(Duration::from_millis(500));
    };
    // root's first login may come before rapd listens (that is why it waited for rapd); this one is recorded.
    let last_login = log.lines().rfind(|l| l.contains("  console.login  ")).unwrap_or("");
    assert!(last_login.contains("  console:root  console.login  success  /dev/ttyS0  {"), "{log}");
    assert_eq!(records_with(&log, &[&format!("  console:{BOB}  console.account_locked  denied  ")]).len(), 1, "{log}");
    assert_eq!(records_with(&log, &["  console:root  console.logout  success  /dev/ttyS0  {"]).len(), 1, "{log}");
    assert_eq!(records_with(&log, &[&format!("  console:{ALICE}  console.logout  success  /dev/ttyS0  {{")]).len(), 1);

    // A deleted record, in a copy (the box's own file keeps growing meanwhile).
    vm.console.run_ok(
        "cp /data/rapd/audit.log /tmp/copy.log && cp /data/rapd/audit.log.state /tmp/copy.log.state",
        timeout(30),
    );
    let (out, rc) = vm.console.run("sed -i 5d /tmp/copy.log && rapctl audit verify --file /tmp/copy.log", timeout(30));
    assert_eq!((out.trim(), rc), ("audit log /tmp/copy.log: BROKEN: sequence gap after record 4", 1));
    // The last record deleted from a copy: only the state file can tell.
    let (out, rc) = vm.console.run(
        "cp /data/rapd/audit.log /tmp/cut.log && cp /data/rapd/audit.log.state /tmp/cut.log.state && \
         n=$(wc -l < /tmp/cut.log) && sed -i '$d' /tmp/cut.log && rapctl audit verify --file /tmp/cut.log | sed \"s/$n/N/; s/$((n-1))/N-1/\"",
        timeout(30),
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(
        out.trim(),
        "audit log /tmp/cut.log: BROKEN: file ends after record N-1, but the box wrote up to record N (/tmp/cut.log.state): the end was cut off"
    );
    // An edited record in the box's own log, in place (same inode, same length).
    let edit = "f=/data/rapd/audit.log; l1=$(head -n 1 $f | wc -c); l2=$(sed -n 2p $f); pre=${l2%%\\\"outcome\\\":\\\"success\\\"*}; \
                printf failure | dd of=$f bs=1 seek=$((l1 + ${#pre} + 11)) conv=notrunc status=none && sed -n 2p $f | grep -o '\"outcome\":\"[a-z]*\"'";
    assert_eq!(vm.console.run_ok(edit, timeout(30)).trim(), "\"outcome\":\"failure\"");
    let (out, rc) = vm.console.run("rapctl audit verify", timeout(30));
    assert_eq!(
        (out.trim(), rc),
        ("audit log /data/rapd/audit.log: BROKEN: record 2: hash does not match its content", 1)
    );
    let (out, rc) = vm.console.run("rapctl audit verify --json | grep -E '\"(intact|error)\"'", timeout(30));
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lines(&out)[0], "  \"intact\": false,", "{out}");
    assert!(lines(&out)[1].starts_with("  \"error\": \"record 2: hash does not match its content\""), "{out}");

    // ---- the collector: rapd's records byte for byte, kernel audit, the journal ----
    let guest_log = vm.console.run_ok("cat /data/rapd/audit.log", timeout(60));
    let guest_records: Vec<&str> = guest_log.lines().filter(|l| l.starts_with("{\"seq\":")).collect();
    let end = Instant::now() + timeout(120);
    let got = loop {
        let got = received(&collector_file);
        let audit: Vec<&str> = got.iter().filter(|(app, _)| app == "rapd-audit").map(|(_, m)| m.as_str()).collect();
        let kernel = got.iter().any(|(app, m)| app == "auditd" && m.contains("type=USER_AUTH") && m.contains(BOB));
        let journal = got.iter().any(|(app, m)| app == "rapd" && m.contains("console.login"));
        if audit.iter().any(|m| m.contains(&format!("\"actor\":\"console:{BOB}\""))) && kernel && journal {
            break got;
        }
        if Instant::now() > end {
            let j = vm
                .console
                .run("journalctl -u rsyslog --no-pager | tail -n 30; cat /run/rapbox/rsyslog-remote.env", timeout(30))
                .0;
            panic!(
                "the collector did not get the audit trail, the kernel audit log and the journal within 120 s: {} messages \
                 ({} rapd-audit, kernel USER_AUTH {kernel}, journal {journal})\nrsyslog in the guest:\n{j}",
                got.len(),
                audit.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Every rapd-audit message is a record exactly as the box wrote it (before the edit: the
    // collector's copy of record 2 is the original, which is what shipping it off is for).
    let audit_msgs: Vec<&str> = got.iter().filter(|(app, _)| app == "rapd-audit").map(|(_, m)| m.as_str()).collect();
    for m in &audit_msgs {
        let seq: u64 =
            m.strip_prefix("{\"seq\":").and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()).unwrap();
        let mine = guest_records.iter().find(|l| l.starts_with(&format!("{{\"seq\":{seq},"))).unwrap();
        if seq == 2 {
            assert_eq!(m.replace("\"outcome\":\"success\"", "\"outcome\":\"failure\""), *mine);
        } else {
            assert_eq!(m, mine, "record {seq} at the collector differs from the box's");
        }
    }
    let seqs: Vec<u64> = audit_msgs
        .iter()
        .filter_map(|m| m.strip_prefix("{\"seq\":").and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(seqs[..], (1..=seqs.len() as u64).collect::<Vec<_>>()[..], "the collector has records 1.. in order");
    drop(collector);

    // ---- the uplink after an outage of the data center ----
    if let Some(n) = dc.nginx.take() {
        n.stop();
    }
    let (out, rc) = vm.console.run("rapctl uplink test", timeout(120));
    assert_eq!(rc, 1, "{out}");
    assert!(lines(&out).iter().any(|l| l.starts_with("FAILED at ")), "{out}");
    let outage = vm.console.run_ok("rapctl audit log -n 1", timeout(30));
    let seq: u64 = outage.split_whitespace().next().and_then(|s| s.parse().ok()).expect("seq of the outage record");
    assert!(outage.contains("  console:root  uplink.test  failure  https://10.0.2.100/api/v1/batches  "), "{outage}");
    dc.start_front_door().expect("nginx again");
    let end = Instant::now() + timeout(120);
    loop {
        let at_dc: Vec<rapdc::api::Report> = dc
            .client
            .all_reports(Some(BOX_ID), None)
            .expect("dc reports")
            .into_iter()
            .filter(|r| r.instrument.is_empty())
            .collect();
        let both = [seq, sys_seq].map(|s| at_dc.iter().find(|r| r.msg_id == s));
        if let [Some(r), Some(sys)] = both {
            for (r, seq) in [(r, seq), (sys, sys_seq)] {
                let line = vm.console.run_ok(&format!("grep '^{{\"seq\":{seq},' /data/rapd/audit.log"), timeout(30));
                assert_eq!(r.payload, line.trim(), "record {seq} at the data center");
            }
            break;
        }
        assert!(
            Instant::now() < end,
            "record {seq} (made during the outage) or the system audit record {sys_seq} did not reach the data center"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("console test: {:.1} s", started.elapsed().as_secs_f64());
}
