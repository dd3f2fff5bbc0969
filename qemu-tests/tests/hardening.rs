//! Hardening inside the booted image (docs/hardening.md), in one boot: `raphard
//! check-live` passes every run-time control, the configuration pages crawled on an
//! instrument port's box address (its JSON and HTML reports are kept in
//! target/qemu-logs/ as test artifacts), the kernel runs with fips=1, and every TLS user
//! on the box refuses a non-approved algorithm under the system FIPS configuration:
//! rapd's gate, sshd (ChaCha20-Poly1305, curve25519, non-approved MACs refused; port 22
//! silent from an instrument port), OpenVPN (CHACHA20-POLY1305 and MD5 fail at start)
//! and rsyslog's TLS driver (a ChaCha20-only peer is refused; its logs reach the log
//! host over TLS). Each refusal has a positive counterpart with an approved algorithm,
//! so that a refusal for another reason cannot pass. Skips only when the image is missing.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use qemu_tests::datacenter::{DataCenter, GUEST_DC_IP};
use qemu_tests::image::{self, TEST_PASSWORD};
use qemu_tests::timeout;
use qemu_tests::vm::{Boot, Vm, VmConfig, VmExtras};
use rapbox_testkit::peers::{TlsServer, TlsServerConfig};
use rapbox_testkit::pki::Profile;
use serde_json::Value;

const TEST: &str = "hardening";
/// The remote log host as provisioned: the guest reaches it through a guest-forward of
/// 10.0.2.100:6514; its certificate names it (CN, IP SAN).
const LOGHOST: &str = "10.0.2.100";

/// The box configuration of a field installation: the harness's instrument ports, the
/// uplink by DHCP with the remote syslog collector, rapd's firewall and the pages on.
fn template(dc: &DataCenter) -> PathBuf {
    let t = image::template_with_ports(&dc.dir.join("rapd.toml.in"), &image::harness_ports("HARD")).expect("template");
    let mut text = std::fs::read_to_string(&t).expect("template");
    text.push_str(&format!(
        "\n[network.uplink]\ninterface = \"enp0s3\"\naddressing = \"dhcp\"\nsyslog = \"{LOGHOST}:6514\"\n\n[firewall]\nenabled = true\n\n[pages]\nenabled = true\n"
    ));
    std::fs::write(&t, text).expect("template");
    t
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Copies a guest file to the host through the console (base64, one line).
fn fetch(vm: &mut Vm, guest: &str, host: &Path) -> Vec<u8> {
    let out = vm.console.run_ok(&format!("base64 -w0 {guest}"), timeout(60));
    let bytes = decode_base64(out.trim()).unwrap_or_else(|| panic!("{guest}: not base64 on the console"));
    std::fs::write(host, &bytes).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
    bytes
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.chunks(4) {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | u32::from(val(c)?);
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// Writes `text` to `path` in the guest (base64 through the console).
fn put(vm: &mut Vm, path: &str, text: &str) {
    let b64 = encode_base64(text.as_bytes());
    vm.console.run_ok(&format!("echo {b64} | base64 -d > {path}"), timeout(30));
}

fn encode_base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Failures collected over the whole boot, reported together at the end.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let w = what();
            println!("FAILED: {w}");
            self.0.push(w);
        }
    }
}

/// ssh from the guest to its own sshd on loopback with `opts`; (output, exit status).
fn ssh(vm: &mut Vm, opts: &str) -> (String, i32) {
    vm.console.run(
        &format!(
            "timeout 30 ssh -n -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o ConnectTimeout=10 {opts} -p 22 nobody@127.0.0.1 true 2>&1"
        ),
        timeout(60),
    )
}

/// openvpn as a client under the system OpenSSL configuration (no OPENSSL_CONF), with
/// the box identity, `extra` options, to a loopback address nothing listens on.
fn openvpn(vm: &mut Vm, extra: &str) -> (String, i32) {
    vm.console.run(
        &format!(
            "env -u OPENSSL_CONF timeout 8 openvpn --client --dev null --proto tcp-client --remote 127.0.0.1 1194 \
             --connect-retry-max 1 --ca /data/provision/ca.crt --cert /data/provision/box.crt \
             --key /data/provision/box.key --verb 3 {extra} > /tmp/ovpn.out 2>&1; rc=$?; tail -n 25 /tmp/ovpn.out; (exit $rc)"
        ),
        timeout(40),
    )
}

/// A second rsyslogd in the guest with the ossl TLS driver under the system OpenSSL
/// configuration and `cipher_cmds` as its SSL_CONF commands (`gnutlsPriorityString`),
/// forwarding what arrives on a private socket to an `openssl s_server` on loopback
/// port `port` that is NOT in FIPS mode (OPENSSL_CONF=/dev/null: OpenSSL's default
/// provider) and offers `server_args`. One message is logged; returns what the server
/// received, the server's errors and rsyslogd's own messages.
fn rsyslog_to(vm: &mut Vm, port: u16, server_args: &str, cipher_cmds: &str) -> (String, String, String) {
    let conf = format!(
        r#"global(workDirectory="/tmp/rsq{port}" DefaultNetstreamDriver="ossl"
       DefaultNetstreamDriverCAFile="/data/provision/ca.crt"
       DefaultNetstreamDriverCertFile="/data/provision/box.crt"
       DefaultNetstreamDriverKeyFile="/data/provision/box.key")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="/tmp/rsq{port}.sock")
*.* action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
           StreamDriver="ossl" StreamDriverMode="1" StreamDriverAuthMode="anon"
           gnutlsPriorityString="{cipher_cmds}")
"#
    );
    put(vm, &format!("/tmp/rsq{port}.conf"), &conf);
    // s_server's stdin is a pipe that stays silent (at EOF or on the console it would
    // not read the connection); rsyslogd starts once it listens and gets 8 s, the server 14 s.
    vm.console.run_ok(
        &format!(
            "mkdir -p /tmp/rsq{port}; \
             (sleep 14 | OPENSSL_CONF=/dev/null timeout 15 openssl s_server -quiet -accept 127.0.0.1:{port} \
               -cert /data/provision/box.crt -key /data/provision/box.key {server_args} \
               > /tmp/rsq{port}.got 2> /tmp/rsq{port}.srv &); \
             for i in $(seq 40); do ss -Htln '( sport = :{port} )' | grep -q . && break; sleep 0.25; done; \
             (timeout 8 rsyslogd -n -f /tmp/rsq{port}.conf -i /tmp/rsq{port}.pid > /tmp/rsq{port}.out 2>&1 &); \
             for i in $(seq 20); do [ -S /tmp/rsq{port}.sock ] && break; sleep 0.25; done; \
             logger -u /tmp/rsq{port}.sock rapq-tls-probe-{port}; sleep 5"
        ),
        timeout(60),
    );
    let mut read = |f: &str| vm.console.run(&format!("cat /tmp/rsq{port}.{f}"), timeout(20)).0;
    (read("got"), read("srv"), read("out"))
}

#[test]
fn hardened_image_refuses_non_approved_algorithms_and_passes_live_controls() {
    let Some(built) = image::built_or_skip(TEST) else { return };
    let dc = DataCenter::start(TEST).expect("data center");
    // The log host: a real TLS peer (openssl s_server on the host loopback) demanding
    // the box's certificate; everything it receives is kept.
    let lh = dc
        .pki
        .issue("loghost", &Profile::server(LOGHOST, &[], &[IpAddr::V4(GUEST_DC_IP)]))
        .expect("log host certificate");
    let lh_port = free_port();
    let collector = TlsServer::start(
        &dc.dir,
        &TlsServerConfig::new(SocketAddr::from(([127, 0, 0, 1], lh_port)), &lh.cert, &lh.key)
            .require_client_cert(&dc.pki.ca.cert),
    )
    .expect("log host");
    let raw = image::private_copy(&built, TEST).expect("copy");
    rapimage::provision::provision_with(
        &raw,
        &built.dir.join("manifest.json"),
        &template(&dc),
        &rapimage::provision::Identity {
            ca: dc.pki.ca.cert.clone(),
            cert: dc.pki.client.cert.clone(),
            key: dc.pki.client.key.clone(),
            url: dc.url(),
        },
        &rapimage::provision::Extras { syslog_name: Some(LOGHOST.into()), ..Default::default() },
    )
    .expect("rapimage provision");
    let disk = image::overlay_of(&raw, TEST).expect("overlay");
    let cfg = VmConfig { boot: Boot::Direct, disk, uplink_port: Some(dc.port), memory_mib: 1024 };
    let mut vm =
        Vm::start_with(TEST, &built, &cfg, &VmExtras { forwards: vec![(6514, lh_port)], ..VmExtras::default() })
            .expect("qemu");
    let inst = image::harness_ports("HARD");
    for (tap, p) in vm.netns().taps.clone().iter().zip(&inst) {
        vm.netns().exec(&["ip", "addr", "add", &format!("{}/24", p.address), "dev", tap]).expect("address");
    }
    vm.console.login("root", TEST_PASSWORD, timeout(120));
    let mut f = Findings::default();

    // rapd: its FIPS gate (MD5 and ChaCha20-Poly1305 refused inside rapd) and the firewall on.
    let (_, rc) = vm.console.run(
        "for i in $(seq 180); do rapctl status --json >/tmp/st 2>/dev/null && break; sleep 0.5; done",
        timeout(120),
    );
    assert_eq!(rc, 0, "rapd does not answer");
    let st: Value =
        serde_json::from_str(vm.console.run_ok("rapctl status --json", timeout(30)).trim()).expect("status");
    f.check(st["fips"]["passed"] == Value::Bool(true), || format!("rapd FIPS gate: {:#}", st["fips"]));
    let detail = st["fips"]["detail"].as_str().unwrap_or("");
    f.check(detail.contains("MD5 and ChaCha20-Poly1305 refused"), || format!("rapd FIPS detail: {detail}"));
    f.check(st["firewall"]["enabled"] == Value::Bool(true) && st["firewall"]["applied_at_ms"].is_u64(), || {
        format!("rapd firewall: {:#}", st["firewall"])
    });

    // The kernel runs in FIPS mode.
    let fips = vm.console.run_ok("cat /proc/sys/crypto/fips_enabled; cat /proc/cmdline", timeout(10));
    f.check(fips.lines().next() == Some("1"), || format!("/proc/sys/crypto/fips_enabled: {fips}"));

    // rsyslog holds its TLS connection to the log host (control 44), and what it sends
    // arrives there: logs of this boot, over mutually authenticated TLS.
    let (est, _) = vm.console.run(
        "for i in $(seq 120); do ss -Htn state established '( dport = :6514 )' | grep -q . && break; sleep 0.5; done; \
         ss -Htnp state established '( dport = :6514 )'",
        timeout(90),
    );
    f.check(est.contains("rsyslogd"), || format!("no rsyslogd connection to the log host: {est}"));
    vm.console.run_ok("logger -t rapq-hardening 'rapq log host probe 7e1f'", timeout(10));
    f.check(collector.wait_received(b"rapq log host probe 7e1f", timeout(30)), || {
        format!("the log host did not receive the probe message; s_server log: {}", collector.log())
    });
    // RFC 5424: the imfile tag `auditd:` is the APP-NAME field.
    f.check(collector.wait_received(b" auditd ", timeout(30)), || {
        "the log host received no audit log line (imfile on /var/log/audit/audit.log)".to_string()
    });
    let maps = vm.console.run("grep -c fips.so /proc/$(pidof rsyslogd)/maps", timeout(10)).0;
    f.check(maps.trim().parse::<u32>().unwrap_or(0) > 0, || {
        format!("rsyslogd has not loaded the FIPS provider: {maps}")
    });

    // raphard check-live: every run-time control passes (or is waived with a reason).
    let waivers = std::fs::read_to_string(qemu_tests::workspace().join("hardening/waivers.toml")).expect("waivers");
    put(&mut vm, "/run/rapq-waivers.toml", &waivers);
    // The pages are crawled on the first instrument port's box address (controls 34, 46).
    let (web, _) = vm.console.run(
        "for i in $(seq 120); do ss -Htln '( sport = :443 )' | grep -q . && break; sleep 0.5; done; ss -Htlnp '( sport = :443 )'",
        timeout(90),
    );
    f.check(web.contains("rapweb"), || format!("rapweb is not listening on 443: {web}"));
    let (text, rc) = vm.console.run(
        "raphard check-live --waivers /run/rapq-waivers.toml --report-json /run/raphard-live.json \
         --report-html /run/raphard-live.html --web-url https://10.10.1.1/",
        timeout(180),
    );
    println!("raphard check-live (exit {rc}):\n{text}");
    let logs = qemu_tests::log_dir();
    let json = fetch(&mut vm, "/run/raphard-live.json", &logs.join("hardening-live.json"));
    fetch(&mut vm, "/run/raphard-live.html", &logs.join("hardening-live.html"));
    std::fs::write(logs.join("hardening-live.txt"), &text).expect("report text");
    f.check(rc == 0, || format!("raphard check-live exited {rc}"));
    let report: Value = serde_json::from_slice(&json).expect("live report JSON");
    for c in report["controls"].as_array().expect("controls") {
        let (id, status, kind) =
            (c["id"].as_u64().unwrap_or(0), c["status"].as_str().unwrap_or(""), c["kind"].as_str());
        let want: &[&str] = match (id, kind) {
            (_, Some("offline")) => &["not-evaluated"],
            _ => &["pass", "waived"],
        };
        f.check(want.contains(&status), || format!("live control {id} ({}): {status}: {}", c["title"], c["found"]));
    }

    // sshd: listening where the firewall allows it (loopback only: an instrument port
    // gets no answer on 22 while its agent port answers), refusing non-approved algorithms.
    let ns = vm.netns().name.clone();
    let probe = |port: u16| {
        qemu_tests::run(
            "ip",
            &["netns", "exec", &ns, "timeout", "4", "bash", "-c", &format!("exec 3<>/dev/tcp/10.10.1.1/{port}")],
        )
        .is_ok()
    };
    f.check(probe(7300), || "instrument port: the agent port 10.10.1.1:7300 does not answer".into());
    f.check(!probe(22), || "instrument port: sshd answers on 10.10.1.1:22".into());
    let listen = vm.console.run_ok("ss -Htlnp '( sport = :22 )'", timeout(10));
    f.check(listen.contains("sshd"), || format!("sshd not listening: {listen}"));
    let (ok, rc) = ssh(&mut vm, "-o Ciphers=aes256-gcm@openssh.com -o KexAlgorithms=ecdh-sha2-nistp256");
    f.check(rc == 255 && ok.contains("Permission denied"), || {
        format!("approved algorithms should reach authentication (exit {rc}): {ok}")
    });
    for (opts, refusal) in [
        ("-o Ciphers=chacha20-poly1305@openssh.com", "no matching cipher found"),
        ("-o HostKeyAlgorithms=ssh-ed25519", "no matching host key type found"),
        ("-o KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org", "no matching key exchange method found"),
        (
            "-o Ciphers=aes128-ctr -o MACs=hmac-sha1,umac-128@openssh.com,hmac-sha1-etm@openssh.com",
            "no matching MAC found",
        ),
    ] {
        let (out, rc) = ssh(&mut vm, opts);
        f.check(rc == 255 && out.contains(refusal), || format!("ssh {opts}: expected `{refusal}`, exit {rc}: {out}"));
    }

    // OpenVPN under the system FIPS configuration: approved options get as far as
    // connecting; CHACHA20-POLY1305 (alone or in a list) and MD5 fail at start with a
    // clear error, before any connection.
    let connecting = |out: &str| out.contains("Attempting to establish TCP connection");
    let (ok, _) = openvpn(&mut vm, "--data-ciphers AES-256-GCM:AES-128-GCM --auth SHA256");
    f.check(connecting(&ok), || format!("openvpn with approved options did not get to connecting: {ok}"));
    for (opt, errors) in [
        (
            "--data-ciphers CHACHA20-POLY1305",
            ["Unsupported cipher in --data-ciphers: CHACHA20-POLY1305", "Options error"],
        ),
        (
            "--data-ciphers AES-256-GCM:CHACHA20-POLY1305",
            ["Unsupported cipher in --data-ciphers: CHACHA20-POLY1305", "Options error"],
        ),
        (
            "--data-ciphers AES-256-GCM --auth MD5",
            ["Message hash algorithm 'MD5' not found", "Exiting due to fatal error"],
        ),
    ] {
        let (out, rc) = openvpn(&mut vm, opt);
        f.check(rc != 0 && !connecting(&out) && errors.iter().all(|e| out.contains(e)), || {
            format!("openvpn {opt}: expected {errors:?} at start, exit {rc}: {out}")
        });
    }

    // rsyslog's TLS driver under the system configuration. Against a peer offering
    // everything (not in FIPS mode), the default setup delivers; a driver configured for
    // ChaCha20-Poly1305 only cannot even set that cipher, has no ciphers and delivers
    // nothing; against a peer offering only ChaCha20-Poly1305 there is no shared cipher.
    let probe = |port: u16| format!("rapq-tls-probe-{port}");
    let (got, srv, out) = rsyslog_to(&mut vm, 16514, "", "MinProtocol=TLSv1.2");
    f.check(got.contains(&probe(16514)), || format!("rsyslog ossl, approved: nothing received: {got} / {srv} / {out}"));
    let (got, srv, out) = rsyslog_to(
        &mut vm,
        16515,
        "",
        "MinProtocol=TLSv1.2\\nCiphersuites=TLS_CHACHA20_POLY1305_SHA256\\nCipherString=ECDHE-ECDSA-CHACHA20-POLY1305",
    );
    f.check(
        !got.contains(&probe(16515))
            && out.contains("CipherString:'ECDHE-ECDSA-CHACHA20-POLY1305'")
            && out.contains("no ciphers available"),
        || format!("rsyslog ossl configured for ChaCha20 only: {got} / {srv} / {out}"),
    );
    let (got, srv, out) = rsyslog_to(
        &mut vm,
        16516,
        "-ciphersuites TLS_CHACHA20_POLY1305_SHA256 -cipher ECDHE-ECDSA-CHACHA20-POLY1305",
        "MinProtocol=TLSv1.2",
    );
    f.check(
        !got.contains(&probe(16516)) && srv.contains("no shared cipher") && out.contains("handshake failure"),
        || format!("rsyslog ossl to a ChaCha20-only peer: {got} / {srv} / {out}"),
    );
    drop(vm);
    assert!(f.0.is_empty(), "{} hardening finding(s):\n{}", f.0.len(), f.0.join("\n"));
}

#[test]
fn base64_round_trip() {
    for s in ["", "a", "ab", "abc", "abcd", "{\"controls\": []}\n"] {
        assert_eq!(decode_base64(&encode_base64(s.as_bytes())).as_deref(), Some(s.as_bytes()), "{s:?}");
    }
    assert_eq!(encode_base64(b"ab"), "YWI=");
}
