//! Golden files of the rule generator: every `tests/fixtures/firewall/NAME.toml` renders
//! to exactly `NAME.ipv4.rules` and `NAME.ipv6.rules`. After an intended change of the
//! policy, regenerate them with `RAPBOX_BLESS=1 cargo test -p rapbox --test firewall_golden`
//! and review the diff like code.

use std::path::{Path, PathBuf};

use rapbox::config::Config;
use rapbox::firewall;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firewall")
}

fn check(got: &str, golden: &Path, failures: &mut Vec<String>) {
    if std::env::var_os("RAPBOX_BLESS").is_some() {
        std::fs::write(golden, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(golden).unwrap_or_default();
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        failures.push(format!(
            "{} differs at line {} (RAPBOX_BLESS=1 regenerates it):\n  want: {}\n  got:  {}",
            golden.display(),
            first + 1,
            want.lines().nth(first).unwrap_or("<end>"),
            got.lines().nth(first).unwrap_or("<end>")
        ));
    }
}

#[test]
fn policies_match_their_golden_files() {
    let mut failures = Vec::new();
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for toml in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let text = std::fs::read_to_string(toml).unwrap();
        // The path in the documents' header is the box's, not this checkout's.
        let cfg = Config::parse(Path::new("/etc/rapbox/rapd.toml"), &text)
            .unwrap_or_else(|e| panic!("{}: {e}", toml.display()));
        let rs = firewall::policy(&cfg);
        assert_eq!(rs, firewall::policy(&cfg), "the generator must be deterministic");
        check(&rs.ipv4, &toml.with_extension("ipv4.rules"), &mut failures);
        check(&rs.ipv6, &toml.with_extension("ipv6.rules"), &mut failures);
        n += 1;
    }
    assert!(n >= 3, "fixtures missing in {}", fixtures().display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
