//! The console's commands against a real rapd (FIPS mode) and real peers: `rapctl uplink
//! test` through the real nginx mTLS front door and tinyproxy, with each failing step
//! named and diagnosed; `rapctl certs`; `rapctl network check|set` refusing bad settings with
//! rapd's own messages and applying good ones; the audit records those commands leave, with the caller as actor;
//! and the configuration's `[pages]` rules.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::rapd::{Rapd, Spec};
use common::World;
use rapbox::config::Config;
use rapbox::control::{self, Request};
use rapbox_testkit::peers::{Tinyproxy, TinyproxyConfig};

fn rapctl(spec: &Spec, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .arg("--socket")
        .arg(spec.socket())
        .args(args)
        .output()
        .expect("run rapctl")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn step<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(&format!("  {name:<6}"))).unwrap_or_else(|| panic!("no step {name}:\n{text}"))
}

fn me() -> String {
    rapbox::peer::Peer::local().user
}

#[test]
fn uplink_test_passes_and_names_each_failing_step() {
    let mut w = World::new("console_uplink_test");
    w.start_nginx();
    let spec = w.rapd_spec();
    let rapd = Rapd::start(&spec);

    let o = rapctl(&spec, &["uplink", "test"]);
    let t = out(&o);
    assert_eq!(o.status.code(), Some(0), "{t}\n{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(t.lines().next().unwrap(), format!("Uplink test: {} (direct)", w.url()));
    assert!(step(&t, "dns").ends_with("is an address: no lookup needed"), "{t}");
    assert!(step(&t, "tcp").starts_with(&format!("  tcp   ok      connected to {}", w.dc_addr)), "{t}");
    assert!(step(&t, "tls").contains("server certificate O=rapbox test, CN=dc.rapbox.test"), "{t}");
    assert!(
        step(&t, "mtls").starts_with("  mtls  ok      box certificate accepted (GET /api/v1/batches: HTTP/1.1 "),
        "{t}"
    );
    assert!(t.ends_with("PASSED: the box reaches the data center and its certificate is accepted\n"), "{t}");
    let j: serde_json::Value = serde_json::from_slice(&rapctl(&spec, &["uplink", "test", "--json"]).stdout).unwrap();
    assert_eq!(j["passed"], true);
    assert_eq!(j["steps"].as_array().unwrap().len(), 4);

    // A server certificate from another CA: the TLS step fails and says why.
    w.stop_nginx();
    let fd = w.front_door(&w.pki.other_ca_server.clone());
    w.start_nginx_with(fd);
    let o = rapctl(&spec, &["uplink", "test"]);
    let t = out(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        step(&t, "tls")
            .starts_with("  tls   FAILED  server certificate refused: unable to get local issuer certificate"),
        "{t}"
    );
    assert!(t.contains("why: the server's certificate is not signed by the provisioned CA"), "{t}");
    assert_eq!(step(&t, "mtls"), "  mtls  skipped");
    assert!(t.lines().last().unwrap().starts_with("FAILED at tls: the server's certificate is not signed"), "{t}");

    // Nothing listening: the TCP step.
    w.stop_nginx();
    let t = out(&rapctl(&spec, &["uplink", "test"]));
    assert!(
        step(&t, "tcp").starts_with(&format!("  tcp   FAILED  connection to {} failed: Connection refused", w.dc_addr)),
        "{t}"
    );
    assert!(t.contains("answered but nothing listens on port 443"), "{t}");
    assert_eq!(step(&t, "tls"), "  tls   skipped");

    // Each test is in the audit trail, with the caller as actor and the failed step.
    let log = out(&rapctl(&spec, &["audit", "log", "-n", "50"]));
    let tests: Vec<&str> = log.lines().filter(|l| l.contains("  uplink.test  ")).collect();
    assert_eq!(tests.len(), 4, "{log}");
    assert!(tests[0].contains(&format!("  console:{}  uplink.test  success  {}  ", me(), w.url())), "{log}");
    assert!(tests[2].contains("  uplink.test  failure  ") && tests[2].contains("\"failed_step\":\"tls\""), "{log}");
    assert!(tests[3].contains("\"failed_step\":\"tcp\""), "{log}");
    drop(rapd);

    // A box certificate the data center does not know: the mTLS step.
    w.start_nginx();
    let mut spec2 = w.rapd_spec();
    spec2.dir = w.dir().join("box-unknown");
    spec2.cert = w.pki.unknown_ca_client.cert.clone();
    spec2.key = w.pki.unknown_ca_client.key.clone();
    let _rapd = Rapd::start(&spec2);
    let o = rapctl(&spec2, &["uplink", "test"]);
    let t = out(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(step(&t, "tls").starts_with("  tls   ok      "), "{t}");
    assert!(
        step(&t, "mtls").starts_with("  mtls  FAILED  the data center refused the box certificate (HTTP/1.1 400 "),
        "{t}"
    );
    assert!(t.contains("why: the data center does not accept the box certificate"), "{t}");
}

#[test]
fn uplink_test_through_a_proxy_names_the_proxy_step() {
    let mut w = World::new("console_uplink_proxy");
    w.start_nginx();
    let proxy = Tinyproxy::start(
        &w.dir.subdir("tinyproxy").unwrap(),
        &TinyproxyConfig { basic_auth: Some(("tech".into(), "s3cret".into())), ..TinyproxyConfig::default() },
    )
    .expect("tinyproxy");
    let addr = proxy.addr();

    let mut spec = w.rapd_spec();
    spec.proxy = Some(format!("http://tech:s3cret@{addr}"));
    let rapd = Rapd::start(&spec);
    let o = rapctl(&spec, &["uplink", "test"]);
    let t = out(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert_eq!(t.lines().next().unwrap(), format!("Uplink test: {} (through http://***@{addr}/)", w.url()));
    assert!(step(&t, "proxy").starts_with(&format!("  proxy ok      CONNECT {}: HTTP/1.", w.dc_addr)), "{t}");
    drop(rapd);

    let mut spec = w.rapd_spec();
    spec.dir = w.dir().join("box-noauth");
    spec.proxy = Some(format!("http://{addr}"));
    let _rapd = Rapd::start(&spec);
    let o = rapctl(&spec, &["uplink", "test"]);
    let t = out(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(step(&t, "proxy").contains(" 407 "), "{t}");
    assert!(t.contains("why: the proxy wants a user name and password: put them in the proxy URL"), "{t}");
    assert_eq!(step(&t, "tls"), "  tls   skipped");
}

#[test]
fn certificates_settings_checks_and_web_events() {
    let w = World::new("console_certs");
    let spec = w.rapd_spec();
    let _rapd = Rapd::start(&spec);

    let o = rapctl(&spec, &["certs"]);
    let t = out(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let l: Vec<&str> = t.lines().collect();
    assert_eq!(l[0], format!("CA  {}  valid", w.pki.ca.cert.display()));
    assert_eq!(l[1], "    subject    O=rapbox test, CN=rapbox test CA");
    assert!(l.contains(&"    key        matches the certificate"), "{t}");
    assert!(l.contains(&format!("    subject    O=rapbox test, CN={}", common::BOX_ID).as_str()), "{t}");

    // `rapctl network check|set` are rapd's one apply (`config_apply`): the validation of a
    // start, the message naming the key; a check writes nothing, a set applies.
    let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let cfg = spec.dir.join("rapd.toml");
    let o = rapctl(&spec, &["network", "check", "--proxy", "socks4://10.0.0.1:1080"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        format!(
            "rapctl: refused, nothing was changed:\n  {}: key `uplink.proxy`: scheme `socks4` is not supported; use http:// (CONNECT) or socks5://\n",
            cfg.display()
        )
    );
    let o = rapctl(&spec, &["network", "set", "--addressing", "static"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("rapd does not manage the uplink's addressing on this box"), "{}", err(&o));
    let o = rapctl(&spec, &["network", "check", "--proxy", "socks5://u:p@10.0.0.1:1080"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "valid; applying it changes uplink.proxy (live: uplink)\n  changes  uplink.proxy\n");
    let o = rapctl(&spec, &["network", "check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("socks5"), "a check writes nothing");
    let o = rapctl(&spec, &["network", "set", "--proxy", "socks4://10.0.0.1:1080"]);
    assert_eq!(o.status.code(), Some(1));
    let o = rapctl(&spec, &["network", "set", "--proxy", "socks5://u:p@10.0.0.1:1080"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with("applied live (uplink); rolled back unless the data center acknowledges"),
        "{}",
        out(&o)
    );
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("proxy = \"socks5://u:p@10.0.0.1:1080\""));
    let o = rapctl(&spec, &["network", "set", "--proxy", "socks5://u:p@10.0.0.1:1080"]);
    assert_eq!((out(&o).as_str(), o.status.code()), ("unchanged: this is the configuration in force\n", Some(0)));
    let o = rapctl(&spec, &["network", "set", "--proxy", "none"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("proxy"), "--proxy none removes it");

    // Only the pages' server may record web events.
    let r = control::request(
        &spec.socket(),
        &Request::WebEvent {
            action: "web.login".into(),
            user: "tech-alice".into(),
            outcome: rapbox::audit::Outcome::Success,
            detail: serde_json::Value::Null,
        },
    )
    .unwrap();
    assert!(!r.ok);
    assert!(r
        .error
        .unwrap()
        .starts_with("web_event is accepted only from the configuration pages' server (account rapweb)"));

    let log = out(&rapctl(&spec, &["audit", "log", "-n", "50"]));
    // The sets rapd was asked for are recorded (the one that changed nothing too) (a check changes nothing and is not), with
    // the caller as actor.
    assert_eq!(
        log.lines().filter(|l| l.contains(&format!("  console:{}  config.refused  denied  ", me()))).count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains(&format!("  console:{}  config.applied  success  ", me()))).count(),
        3,
        "{log}"
    );
    assert!(!log.contains("u:p@"), "proxy credentials must not reach the audit trail:\n{log}");
    assert!(!log.contains("web.login"), "{log}");

    // rapd unreachable: exit 3 with what to do.
    let o = Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(["--socket", "/nonexistent/control.sock", "uplink", "test"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is rapd running? (systemctl status rapd)"));
}

#[test]
fn pages_are_allowed_only_where_configured() {
    let base =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firewall/pages.toml"))
            .unwrap();
    let p = Path::new("/etc/rapbox/rapd.toml");
    let c = Config::parse(p, &base).unwrap();
    assert_eq!(
        c.pages.listen,
        vec![("eth1".into(), "10.10.1.1".parse().unwrap()), ("eth0".into(), "192.0.2.10".parse().unwrap())]
    );
    // Default: every instrument port, never the uplink.
    let c = Config::parse(p, &base.replace("interfaces = [\"eth1\", \"eth0\"]\n", "")).unwrap();
    assert_eq!(c.pages.listen.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(), ["eth1", "eth2"]);
    for (from, to, want) in [
        (
            "[\"eth1\", \"eth0\"]",
            "[\"eth9\"]",
            "key `pages.interfaces[0]`: `eth9` is neither an instrument port (eth1, eth2) nor the uplink",
        ),
        ("[\"eth1\", \"eth0\"]", "[\"eth1\", \"eth1\"]", "key `pages.interfaces[1]`: `eth1` is listed twice"),
        ("[\"eth1\", \"eth0\"]", "[]", "key `pages.interfaces`: the pages are enabled but reachable nowhere"),
        (
            "enabled = true\ninterfaces",
            "enabled = true\nport = 7300\ninterfaces",
            "key `pages.port`: 7300 is the agent port of `eth1`",
        ),
    ] {
        let e = Config::parse(p, &base.replace(from, to)).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let dhcp = base.replace(
        "addressing = \"static\"\naddress = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\n",
        "addressing = \"dhcp\"\n",
    );
    let e = Config::parse(p, &dhcp).unwrap_err().to_string();
    assert!(e.contains("the uplink `eth0` has its address from DHCP: the pages need a static address there"), "{e}");
}
