//! Controls 26-33: sshd's effective configuration (sshd_config with its Include files,
//! first value wins, Match blocks kept apart) and the DoD banner files.

use std::collections::BTreeMap;

use super::Ctx;
use crate::report::Verdict;

/// OpenSSH 9.2 (Debian bookworm) compiled-in defaults of the algorithm lists.
const DEFAULT_CIPHERS: &str =
    "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com";
const DEFAULT_MACS: &str = "umac-64-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-256-etm@openssh.com,\
hmac-sha2-512-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-64@openssh.com,umac-128@openssh.com,hmac-sha2-256,\
hmac-sha2-512,hmac-sha1";
const DEFAULT_KEX: &str = "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,\
ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,\
diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group14-sha256";

const APPROVED_CIPHERS: &[&str] =
    &["aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr"];
const APPROVED_MACS: &[&str] =
    &["hmac-sha2-512", "hmac-sha2-256", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"];
const APPROVED_KEX: &[&str] = &[
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group14-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
];

/// A keyword's value and the file that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub file: String,
}

/// The parsed configuration.
#[derive(Debug, Clone, Default)]
pub struct SshdConfig {
    /// Keyword (lower case) -> first value outside any Match block.
    pub global: BTreeMap<String, Setting>,
    /// Match criteria and the keywords set inside the block.
    pub matches: Vec<(String, BTreeMap<String, Setting>)>,
    pub files: Vec<String>,
    pub problems: Vec<String>,
}

impl SshdConfig {
    pub fn load(ctx: &Ctx) -> SshdConfig {
        let mut c = SshdConfig::default();
        if ctx.root.read("/etc/ssh/sshd_config").is_none() {
            c.problems.push("etc/ssh/sshd_config is missing".into());
            return c;
        }
        c.parse_file(ctx, "/etc/ssh/sshd_config", None, 0);
        c
    }

    fn parse_file(&mut self, ctx: &Ctx, file: &str, mut in_match: Option<usize>, depth: usize) {
        let Some(text) = ctx.root.read(file) else { return };
        self.files.push(file.to_string());
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.find(|c: char| c.is_whitespace() || c == '=') {
                Some(i) => (&line[..i], line[i..].trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim()),
                None => (line, ""),
            };
            let key = key.to_ascii_lowercase();
            let value = value.trim_matches('"').to_string();
            match key.as_str() {
                "match" => {
                    if value.eq_ignore_ascii_case("all") {
                        in_match = None;
                    } else {
                        self.matches.push((value.clone(), BTreeMap::new()));
                        in_match = Some(self.matches.len() - 1);
                    }
                }
                "include" => {
                    if depth > 16 {
                        self.problems.push(format!("{file}: Include nested too deeply"));
                        continue;
                    }
                    for pattern in value.split_whitespace() {
                        let abs =
                            if pattern.starts_with('/') { pattern.to_string() } else { format!("/etc/ssh/{pattern}") };
                        for f in expand(ctx, &abs) {
                            self.parse_file(ctx, &f, in_match, depth + 1);
                        }
                    }
                }
                _ => {
                    let s = Setting { value, file: file.to_string() };
                    match in_match {
                        None => {
                            self.global.entry(key).or_insert(s);
                        }
                        Some(i) => {
                            self.matches[i].1.entry(key).or_insert(s);
                        }
                    }
                }
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.global.get(key)
    }
}

/// Files matching a pattern whose last component may hold * or ? (sorted).
fn expand(ctx: &Ctx, abs: &str) -> Vec<String> {
    let (dir, pat) = abs.rsplit_once('/').unwrap_or(("", abs));
    if !pat.contains(['*', '?', '[']) {
        return if ctx.root.exists(abs) { vec![abs.to_string()] } else { vec![] };
    }
    let dir = if dir.is_empty() { "/" } else { dir };
    ctx.root
        .list(dir)
        .into_iter()
        .filter(|n| crate::policy::glob(pat, n))
        .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
        .collect()
}

pub fn check(ctx: &Ctx, id: u8) -> Verdict {
    let cfg = SshdConfig::load(ctx);
    if !cfg.problems.is_empty() && id != 33 {
        return Verdict::fail(cfg.problems.join("; "));
    }
    match id {
        26 => algorithms(&cfg, "ciphers", "Ciphers", DEFAULT_CIPHERS, APPROVED_CIPHERS),
        27 => algorithms(&cfg, "macs", "MACs", DEFAULT_MACS, APPROVED_MACS),
        28 => algorithms(&cfg, "kexalgorithms", "KexAlgorithms", DEFAULT_KEX, APPROVED_KEX),
        29 => must_be(&cfg, "permitrootlogin", "PermitRootLogin", "no", "prohibit-password"),
        30 => must_be(&cfg, "permitemptypasswords", "PermitEmptyPasswords", "no", "no"),
        31 => must_be(&cfg, "x11forwarding", "X11Forwarding", "no", "no"),
        32 => idle(&cfg),
        33 => banner(ctx, &cfg),
        _ => unreachable!("sshd::check called for control {id}"),
    }
}

fn shown(s: Option<&Setting>, default: &str) -> String {
    match s {
        Some(s) => format!("{} (from {})", s.value, s.file),
        None => format!("{default} (OpenSSH default)"),
    }
}

/// The effective list of a +/-/^ modified or replaced algorithm list.
fn effective(value: Option<&str>, default: &str) -> Vec<String> {
    let split = |s: &str| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect::<Vec<_>>();
    let def = split(default);
    match value {
        None => def,
        Some(v) if v.starts_with('+') => [def, split(&v[1..])].concat(),
        Some(v) if v.starts_with('^') => [split(&v[1..]), def].concat(),
        Some(v) if v.starts_with('-') => {
            let drop = split(&v[1..]);
            def.into_iter().filter(|a| !drop.iter().any(|d| crate::policy::glob(d, a))).collect()
        }
        Some(v) => split(v),
    }
}

fn algorithms(cfg: &SshdConfig, key: &str, name: &str, default: &str, approved: &[&str]) -> Verdict {
    let mut bad = Vec::new();
    let mut check = |where_: &str, s: Option<&Setting>| {
        let list = effective(s.map(|s| s.value.as_str()), default);
        let wrong: Vec<&String> = list.iter().filter(|a| !approved.contains(&a.as_str())).collect();
        if !wrong.is_empty() {
            bad.push(format!(
                "{where_}{name} allows {} ({})",
                wrong.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
                shown(s, "compiled-in list")
            ));
        }
    };
    check("", cfg.get(key));
    for (crit, m) in &cfg.matches {
        if m.contains_key(key) {
            check(&format!("Match {crit}: "), m.get(key));
        }
    }
    Verdict::from_problems(
        bad,
        format!("{name} {}", effective(cfg.get(key).map(|s| s.value.as_str()), default).join(",")),
    )
}

fn must_be(cfg: &SshdConfig, key: &str, name: &str, want: &str, default: &str) -> Verdict {
    let mut bad = Vec::new();
    let value = cfg.get(key).map(|s| s.value.to_ascii_lowercase()).unwrap_or_else(|| default.to_string());
    if value != want {
        bad.push(format!("{name} is {}", shown(cfg.get(key), default)));
    }
    for (crit, m) in &cfg.matches {
        if let Some(s) = m.get(key) {
            if !s.value.eq_ignore_ascii_case(want) {
                bad.push(format!("Match {crit}: {name} {} (from {})", s.value, s.file));
            }
        }
    }
    Verdict::from_problems(bad, format!("{name} {}", shown(cfg.get(key), default)))
}

fn idle(cfg: &SshdConfig) -> Verdict {
    let mut bad = Vec::new();
    let num = |k: &str, d: i64| cfg.get(k).map(|s| s.value.parse::<i64>().unwrap_or(-1)).unwrap_or(d);
    let interval = num("clientaliveinterval", 0);
    let count = num("clientalivecountmax", 3);
    if !(1..=600).contains(&interval) {
        bad.push(format!("ClientAliveInterval is {} (must be 1 to 600)", shown(cfg.get("clientaliveinterval"), "0")));
    }
    if count < 1 {
        bad.push(format!(
            "ClientAliveCountMax is {} (0 disables the timeout since OpenSSH 8.2; must be >= 1)",
            shown(cfg.get("clientalivecountmax"), "3")
        ));
    }
    for (crit, m) in &cfg.matches {
        if let Some(s) = m.get("clientaliveinterval") {
            if !(1..=600).contains(&s.value.parse::<i64>().unwrap_or(0)) {
                bad.push(format!("Match {crit}: ClientAliveInterval {}", s.value));
            }
        }
    }
    Verdict::from_problems(bad, format!("ClientAliveInterval {interval}, ClientAliveCountMax {count}"))
}

/// Whitespace-normalised text for banner comparison.
fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn banner(ctx: &Ctx, cfg: &SshdConfig) -> Verdict {
    let want = normalise(&ctx.policy.banner);
    let mut bad = Vec::new();
    let mut found = Vec::new();
    let mut file_has = |path: &str, what: &str| match ctx.root.read(path) {
        None => bad.push(format!("{what} {path} is missing")),
        Some(t) if normalise(&t).contains(&want) => found.push(format!("{what} {path}")),
        Some(_) => bad.push(format!("{what} {path} does not contain the DoD notice-and-consent text")),
    };
    file_has("/etc/issue", "console banner");
    file_has("/etc/issue.net", "network banner");
    match cfg.get("banner") {
        None => bad.push("sshd Banner is not set (none)".into()),
        Some(s) if s.value.eq_ignore_ascii_case("none") => bad.push(format!("sshd Banner is none (from {})", s.file)),
        Some(s) => file_has(&s.value.clone(), "sshd Banner"),
    }
    // agetty prints /etc/issue unless told not to.
    for dir in ["/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"] {
        for n in ctx.root.list(dir) {
            if !(n.starts_with("serial-getty@") || n.starts_with("getty@") || n.starts_with("console-getty")) {
                continue;
            }
            let mut files = vec![format!("{dir}/{n}")];
            if n.ends_with(".d") {
                files = ctx.root.list(&format!("{dir}/{n}")).into_iter().map(|f| format!("{dir}/{n}/{f}")).collect();
            }
            for f in files {
                let text = ctx.root.read(&f).unwrap_or_default();
                if text
                    .lines()
                    .any(|l| l.trim_start().starts_with("ExecStart") && (l.contains("--noissue") || l.contains(" -i ")))
                {
                    bad.push(format!("{f}: the getty runs with --noissue (no banner on the console)"));
                }
            }
        }
    }
    Verdict::from_problems(bad, format!("DoD text in {}", found.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_lists() {
        assert_eq!(effective(Some("aes128-ctr"), DEFAULT_CIPHERS), vec!["aes128-ctr"]);
        assert!(effective(Some("+aes128-ctr"), DEFAULT_CIPHERS).contains(&"chacha20-poly1305@openssh.com".into()));
        assert!(!effective(Some("-chacha20*"), DEFAULT_CIPHERS).iter().any(|c| c.starts_with("chacha")));
    }
}
