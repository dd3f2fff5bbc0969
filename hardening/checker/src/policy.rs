//! The reviewed data the checks compare against: the account allow-list, the SUID/SGID
//! allow-list, the package deny-list and the DoD banner from hardening/ (compiled into
//! the binary, so that `raphard check-live` needs no files in the guest; `--policy DIR`
//! reads them from a directory instead), and the waivers file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::catalogue;
use crate::error::{io, Error};

const ACCOUNTS: &str = include_str!("../../policy/accounts.allow");
const SUID: &str = include_str!("../../policy/suid.allow");
const PACKAGES: &str = include_str!("../../policy/packages.deny");
const BANNER: &str = include_str!("../../dod-banner.txt");
const WEB_MODULES: &str = include_str!("../../policy/web-modules.allow");

/// A file allowed to keep its set-user-ID or set-group-ID bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuidEntry {
    /// Absolute path in the root file system.
    pub path: String,
    /// Exact permission bits, e.g. 0o4755.
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

/// What a deny-list rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// A dpkg package name (wildcards * and ?).
    Package,
    /// A package name the control's package patterns do not cover.
    Except,
    /// An executable or symlink of that name in a bin/sbin/libexec directory.
    Program,
    /// A busybox/toybox binary that includes the applet.
    Applet,
}

/// One line of packages.deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyRule {
    pub control: u8,
    pub kind: DenyKind,
    pub pattern: String,
}

/// The policy data.
#[derive(Debug, Clone)]
pub struct Policy {
    pub accounts: Vec<String>,
    pub suid: Vec<SuidEntry>,
    pub deny: Vec<DenyRule>,
    /// The DoD notice-and-consent text.
    pub banner: String,
    /// Shared objects the web server may have mapped (control 46): file names, an entry
    /// ending in `*` a prefix.
    pub web_modules: Vec<String>,
}

impl Policy {
    /// Whether the allow-list names `account`: exactly, or through an entry ending in `*`
    /// (a prefix: `tech-*` allows the provisioned technicians, which need at least one
    /// character after the prefix).
    pub fn account_allowed(&self, account: &str) -> bool {
        self.accounts.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => account.len() > prefix.len() && account.starts_with(prefix),
            None => a == account,
        })
    }

    /// Whether policy/web-modules.allow names the shared object file `name`.
    pub fn web_module_allowed(&self, name: &str) -> bool {
        self.web_modules.iter().any(|m| match m.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => m == name,
        })
    }
}

/// Lines of a policy file without comments and blank lines, with their line numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.split('#').next().unwrap_or("").trim();
        (!l.is_empty()).then(|| (i + 1, l.split_whitespace().collect()))
    })
}

impl Policy {
    /// The policy compiled into the binary (hardening/ at build time).
    pub fn embedded() -> Policy {
        Policy::parse(ACCOUNTS, SUID, PACKAGES, BANNER, WEB_MODULES, Path::new("hardening (embedded)"))
            .expect("the embedded hardening policy is valid (checked by unit tests)")
    }

    /// Reads the policy from a hardening/ directory (policy/*.allow|deny, dod-banner.txt).
    pub fn load(dir: &Path) -> Result<Policy, Error> {
        let read = |rel: &str| {
            let p = dir.join(rel);
            std::fs::read_to_string(&p).map_err(io(p))
        };
        Policy::parse(
            &read("policy/accounts.allow")?,
            &read("policy/suid.allow")?,
            &read("policy/packages.deny")?,
            &read("dod-banner.txt")?,
            &read("policy/web-modules.allow")?,
            dir,
        )
    }

    pub fn parse(
        accounts: &str,
        suid: &str,
        packages: &str,
        banner: &str,
        web_modules: &str,
        dir: &Path,
    ) -> Result<Policy, Error> {
        let bad = |file: &str, line: usize, problem: String| Error::PolicyLine {
            path: dir.join("policy").join(file),
            line,
            problem,
        };
        let accounts = lines(accounts).map(|(_, f)| f[0].to_string()).collect();
        let mut suid_entries = Vec::new();
        for (n, f) in lines(suid) {
            if f.len() != 4 || !f[0].starts_with('/') {
                return Err(bad("suid.allow", n, "expected: /PATH MODE OWNER GROUP".into()));
            }
            let mode = u32::from_str_radix(f[1], 8)
                .map_err(|_| bad("suid.allow", n, format!("mode `{}` is not octal", f[1])))?;
            suid_entries.push(SuidEntry { path: f[0].into(), mode, owner: f[2].into(), group: f[3].into() });
        }
        let mut deny = Vec::new();
        for (n, f) in lines(packages) {
            let control = f.first().and_then(|c| c.parse::<u8>().ok()).filter(|c| (20..=24).contains(c));
            let kind = match f.get(1).copied() {
                Some("package") => Some(DenyKind::Package),
                Some("except") => Some(DenyKind::Except),
                Some("program") => Some(DenyKind::Program),
                Some("applet") => Some(DenyKind::Applet),
                _ => None,
            };
            match (control, kind, f.len()) {
                (Some(control), Some(kind), 3) => deny.push(DenyRule { control, kind, pattern: f[2].into() }),
                _ => {
                    return Err(bad(
                        "packages.deny",
                        n,
                        "expected: CONTROL(20-24) package|except|program|applet PATTERN".into(),
                    ))
                }
            }
        }
        if banner.trim().is_empty() {
            return Err(Error::Policy { path: dir.join("dod-banner.txt"), problem: "the banner text is empty".into() });
        }
        let mut modules = Vec::new();
        for (n, f) in lines(web_modules) {
            if f.len() != 1 || f[0].contains('/') {
                return Err(bad("web-modules.allow", n, "expected: one shared object file name per line".into()));
            }
            modules.push(f[0].to_string());
        }
        Ok(Policy { accounts, suid: suid_entries, deny, banner: banner.to_string(), web_modules: modules })
    }
}

/// Reviewed waivers: control id -> reason.
#[derive(Debug, Clone, Default)]
pub struct Waivers {
    pub by_id: BTreeMap<u8, String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WaiverFile {
    #[serde(default)]
    waivers: BTreeMap<String, String>,
}

impl Waivers {
    pub fn none() -> Waivers {
        Waivers::default()
    }

    /// Reads and validates a waivers file: every key a control id of the catalogue, every
    /// reason non-empty.
    pub fn load(path: &Path) -> Result<Waivers, Error> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        Waivers::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Waivers, Error> {
        let file: WaiverFile =
            toml::from_str(text).map_err(|e| Error::Policy { path: PathBuf::from(path), problem: e.to_string() })?;
        let mut by_id = BTreeMap::new();
        for (key, reason) in file.waivers {
            let waiver = |problem: &str| Error::Waiver { path: path.into(), id: key.clone(), problem: problem.into() };
            let id = key
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|id| catalogue::control(*id).is_some())
                .ok_or_else(|| waiver("not a control id of hardening-controls.md (1-46)"))?;
            if reason.trim().is_empty() {
                return Err(waiver("the reason is empty: a waiver needs a reviewed reason"));
            }
            by_id.insert(id, reason.trim().to_string());
        }
        Ok(Waivers { by_id })
    }

    pub fn reason(&self, id: u8) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }
}

/// Shell-style wildcard match (* and ?), whole string.
pub fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('['), Some(c)) => match p.iter().position(|x| *x == ']') {
                Some(end) => {
                    let set = &p[1..end];
                    let hit = set.windows(3).any(|w| w[1] == '-' && w[0] <= *c && *c <= w[2]) || set.contains(c);
                    hit && go(&p[end + 1..], &n[1..])
                }
                None => *c == '[' && go(&p[1..], &n[1..]),
            },
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_policy_parses() {
        let p = Policy::embedded();
        assert!(p.accounts.contains(&"root".to_string()));
        assert!(p.account_allowed("tech-alice") && p.account_allowed("rapweb"));
        assert!(!p.account_allowed("tech-") && !p.account_allowed("techalice") && !p.account_allowed("games"));
        assert!(p.suid.iter().any(|s| s.path == "/usr/sbin/unix_chkpwd" && s.mode == 0o2755));
        assert!(p.deny.iter().any(|d| d.control == 20 && d.kind == DenyKind::Applet && d.pattern == "telnetd"));
        assert!(p.banner.contains("U.S. Government (USG) Information System"));
    }

    #[test]
    fn globs() {
        assert!(glob("gcc-[0-9]*", "gcc-12"));
        assert!(glob("gcc-[0-9]*-base", "gcc-12-base"));
        assert!(!glob("gcc-[0-9]*", "gcc"));
        assert!(glob("inetutils-rsh?", "inetutils-rshd"));
        assert!(glob("proftpd*", "proftpd-basic"));
        assert!(!glob("cpp", "cpp-12"));
    }

    #[test]
    fn waiver_with_empty_reason_is_refused() {
        let e = Waivers::parse("[waivers]\n\"40\" = \"  \"\n", Path::new("w.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "w.toml: waiver for control `40`: the reason is empty: a waiver needs a reviewed reason"
        );
    }

    #[test]
    fn waiver_for_unknown_control_is_refused() {
        let e = Waivers::parse("[waivers]\n\"47\" = \"why\"\n", Path::new("w.toml")).unwrap_err();
        assert!(e.to_string().contains("not a control id"), "{e}");
    }

    #[test]
    fn shipped_waivers_file_is_valid_and_empty() {
        let text = include_str!("../../waivers.toml");
        assert!(Waivers::parse(text, Path::new("waivers.toml")).unwrap().by_id.is_empty());
    }
}
