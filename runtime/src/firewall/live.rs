//! The live rules: applying a [`Ruleset`] with `iptables-restore` (one transaction per
//! address family, tested with `--test` first), reading the rules back with
//! `iptables-save`, normalising them and naming what differs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Ruleset;

/// Why the policy could not be applied or read back.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{key}: interface `{name}` does not exist; the rules in place were left unchanged")]
    UnknownInterface { key: String, name: String },
    #[error("{tool}: cannot run: {source}")]
    Spawn { tool: PathBuf, source: std::io::Error },
    #[error("{tool} --test refused the policy; the rules in place were left unchanged: {stderr}")]
    Refused { tool: PathBuf, stderr: String },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: PathBuf, stderr: String },
    #[error("{path}: {source}")]
    Sysctl { path: PathBuf, source: std::io::Error },
}

/// Where the netfilter tools are (Debian's iptables package, nft backend).
#[derive(Debug, Clone)]
pub struct Tools {
    pub restore4: PathBuf,
    pub save4: PathBuf,
    pub restore6: PathBuf,
    pub save6: PathBuf,
    /// `/proc/sys/net/ipv4/ip_forward` (tests may point it elsewhere).
    pub ip_forward: PathBuf,
}

impl Tools {
    /// The system's tools: `/usr/sbin/...` or `/sbin/...`, else found on `PATH`.
    pub fn system() -> Tools {
        let find = |name: &str| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Tools {
            restore4: find("iptables-restore"),
            save4: find("iptables-save"),
            restore6: find("ip6tables-restore"),
            save6: find("ip6tables-save"),
            ip_forward: PathBuf::from("/proc/sys/net/ipv4/ip_forward"),
        }
    }
}

/// Checks that every interface the policy names exists (in the caller's network namespace).
pub fn check_interfaces(rs: &Ruleset) -> Result<(), FirewallError> {
    for (key, name) in &rs.interfaces {
        if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
            return Err(FirewallError::UnknownInterface { key: key.clone(), name: name.clone() });
        }
    }
    Ok(())
}

/// Applies the policy: interfaces checked, both documents tested, then each restored in
/// one transaction (IPv6 first: it only ever closes), then IPv4 forwarding set to what
/// the policy needs. Nothing is changed when a check or a test fails.
pub fn apply(rs: &Ruleset, tools: &Tools) -> Result<(), FirewallError> {
    check_interfaces(rs)?;
    restore_all(rs, tools)
}

/// Checks the policy without changing anything: the interfaces exist and
/// `iptables-restore --test` accepts both documents (what a new configuration must pass
/// before it is applied at run time).
pub fn test(rs: &Ruleset, tools: &Tools) -> Result<(), FirewallError> {
    check_interfaces(rs)?;
    restore(&tools.restore6, &rs.ipv6, true)?;
    restore(&tools.restore4, &rs.ipv4, true)
}

/// [`apply`] without the interface check: both documents tested, then restored, then
/// forwarding set.
pub fn restore_all(rs: &Ruleset, tools: &Tools) -> Result<(), FirewallError> {
    restore(&tools.restore6, &rs.ipv6, true)?;
    restore(&tools.restore4, &rs.ipv4, true)?;
    restore(&tools.restore6, &rs.ipv6, false)?;
    restore(&tools.restore4, &rs.ipv4, false)?;
    set_forwarding(tools, rs.forwarding)
}

/// What a drift repair does: restores, each in one transaction, the families that
/// drifted (`v4`, `v6`) without `--test` — these documents were tested and applied when
/// rapd started, and a restore is atomic either way — then sets IPv4 forwarding. No
/// interface check: a rule naming an interface that is gone (an unplugged USB adapter)
/// is valid and harmless.
pub fn repair(rs: &Ruleset, tools: &Tools, v4: bool, v6: bool) -> Result<(), FirewallError> {
    if v6 {
        restore(&tools.restore6, &rs.ipv6, false)?;
    }
    if v4 {
        restore(&tools.restore4, &rs.ipv4, false)?;
    }
    set_forwarding(tools, rs.forwarding)
}

/// Sets IPv4 forwarding (hardening control 35: on only when a LIS forward needs it).
/// Nothing is written when it already has that value (so a box whose sysctl settings
/// already say 0 needs no write access to /proc/sys for a policy without LIS forwards).
pub fn set_forwarding(tools: &Tools, on: bool) -> Result<(), FirewallError> {
    if forwarding(tools).ok() == Some(on) {
        return Ok(());
    }
    std::fs::write(&tools.ip_forward, if on { "1\n" } else { "0\n" })
        .map_err(|source| FirewallError::Sysctl { path: tools.ip_forward.clone(), source })
}

/// Reads IPv4 forwarding.
pub fn forwarding(tools: &Tools) -> Result<bool, FirewallError> {
    std::fs::read_to_string(&tools.ip_forward)
        .map(|s| s.trim() == "1")
        .map_err(|source| FirewallError::Sysctl { path: tools.ip_forward.clone(), source })
}

fn restore(tool: &Path, doc: &str, test: bool) -> Result<(), FirewallError> {
    let mut cmd = Command::new(tool);
    if test {
        cmd.arg("--test");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn { tool: tool.into(), source })?;
    let written = child.stdin.take().map(|mut i| i.write_all(doc.as_bytes()));
    let out = child.wait_with_output().map_err(|source| FirewallError::Spawn { tool: tool.into(), source })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().replace('\n', " | ");
    if out.status.success() && matches!(written, Some(Ok(()))) {
        return Ok(());
    }
    let stderr = if stderr.is_empty() { format!("exit status {}", out.status) } else { stderr };
    if test {
        Err(FirewallError::Refused { tool: tool.into(), stderr })
    } else {
        Err(FirewallError::Failed { tool: tool.into(), stderr })
    }
}

/// Runs an `iptables-save` and returns its output.
pub fn save(tool: &Path) -> Result<String, FirewallError> {
    let out = Command::new(tool)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FirewallError::Spawn { tool: tool.into(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().replace('\n', " | ");
        return Err(FirewallError::Failed { tool: tool.into(), stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A restore/save document reduced to what matters: per table, the policy of each chain
/// and the rules of each chain in order. Comments, counters and the order in which
/// chains are listed do not matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Normal {
    pub tables: BTreeMap<String, Table>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Chain → policy (`-` for user chains).
    pub chains: BTreeMap<String, String>,
    /// Chain → its rules (`-A` lines), in order.
    pub rules: BTreeMap<String, Vec<String>>,
}

impl Normal {
    /// Only the tables that `other` has (the ones the policy manages).
    pub fn restricted_to(&self, other: &Normal) -> Normal {
        Normal {
            tables: self
                .tables
                .iter()
                .filter(|(t, _)| other.tables.contains_key(*t))
                .map(|(t, v)| (t.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Normalises a restore or save document.
pub fn normalise(doc: &str) -> Normal {
    let mut n = Normal::default();
    let mut table: Option<String> = None;
    for line in doc.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.to_owned());
            n.tables.entry(t.to_owned()).or_default();
            continue;
        }
        let Some(t) = table.as_ref().and_then(|t| n.tables.get_mut(t)) else { continue };
        if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let chain = parts.next().unwrap_or_default().to_owned();
            let policy = parts.next().unwrap_or("-").to_owned();
            t.rules.entry(chain.clone()).or_default();
            t.chains.insert(chain, policy);
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default().to_owned();
            t.rules.entry(chain).or_default().push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    n
}

/// What differs between the expected and the live rules, one line per difference
/// (`family table/chain: ...`), in a stable order.
pub fn diff(family: &str, expected: &Normal, live: &Normal) -> Vec<String> {
    let mut out = Vec::new();
    for (tname, et) in &expected.tables {
        let Some(lt) = live.tables.get(tname) else {
            out.push(format!("{family} table {tname}: missing"));
            continue;
        };
        for (chain, policy) in &et.chains {
            match lt.chains.get(chain) {
                None => out.push(format!("{family} {tname}/{chain}: chain missing")),
                Some(p) if p != policy => out.push(format!("{family} {tname}/{chain}: policy {p}, expected {policy}")),
                Some(_) => {}
            }
        }
        for chain in lt.chains.keys().filter(|c| !et.chains.contains_key(*c)) {
            out.push(format!("{family} {tname}/{chain}: unexpected chain"));
        }
        let empty = Vec::new();
        let chains: std::collections::BTreeSet<&String> = et.rules.keys().chain(lt.rules.keys()).collect();
        for chain in chains {
            let e = et.rules.get(chain).unwrap_or(&empty);
            let l = lt.rules.get(chain).unwrap_or(&empty);
            if e == l {
                continue;
            }
            let mut missing = e.clone();
            let mut extra = Vec::new();
            for r in l {
                match missing.iter().position(|m| m == r) {
                    Some(i) => {
                        missing.remove(i);
                    }
                    None => extra.push(r.clone()),
                }
            }
            for r in &missing {
                out.push(format!("{family} {tname}/{chain}: rule missing: {r}"));
            }
            for r in &extra {
                out.push(format!("{family} {tname}/{chain}: rule added: {r}"));
            }
            if missing.is_empty() && extra.is_empty() {
                out.push(format!("{family} {tname}/{chain}: rules reordered"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: &str = "# header\n*filter\n:INPUT DROP [0:0]\n:rap-x - [0:0]\n-A INPUT -i lo -j ACCEPT\n-A rap-x -j DROP\n-A INPUT -j rap-x\nCOMMIT\n";
    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Fri\n*filter\n:rap-x - [0:0]\n:INPUT DROP [12:345]\n-A INPUT -i lo -j ACCEPT\n-A INPUT -j rap-x\n-A rap-x -j DROP\nCOMMIT\n# Completed on Fri\n*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn comments_counters_and_chain_order_do_not_matter() {
        let e = normalise(GEN);
        let l = normalise(SAVED).restricted_to(&e);
        assert_eq!(e, l);
        assert!(diff("ipv4", &e, &l).is_empty());
    }

    #[test]
    fn differences_are_named() {
        let e = normalise(GEN);
        let l = normalise(&SAVED.replace("-A INPUT -i lo -j ACCEPT\n", "").replace(":INPUT DROP", ":INPUT ACCEPT"));
        assert_eq!(
            diff("ipv4", &e, &l),
            vec![
                "ipv4 filter/INPUT: policy ACCEPT, expected DROP",
                "ipv4 filter/INPUT: rule missing: -A INPUT -i lo -j ACCEPT"
            ]
        );
        let l = normalise(&SAVED.replace("-A rap-x -j DROP", "-A rap-x -j DROP\n-A rap-x -s 10.0.0.1/32 -j ACCEPT"));
        assert_eq!(diff("ipv4", &e, &l), vec!["ipv4 filter/rap-x: rule added: -A rap-x -s 10.0.0.1/32 -j ACCEPT"]);
        let l = normalise(
            &SAVED
                .replace("-A INPUT -i lo -j ACCEPT\n-A INPUT -j rap-x", "-A INPUT -j rap-x\n-A INPUT -i lo -j ACCEPT"),
        );
        assert_eq!(diff("ipv4", &e, &l), vec!["ipv4 filter/INPUT: rules reordered"]);
        assert_eq!(diff("ipv4", &e, &Normal::default()), vec!["ipv4 table filter: missing"]);
    }
}
