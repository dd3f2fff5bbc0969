//! Rules added at run time on top of the policy: a remote session's (`docs/sessions.md`).
//!
//! An [`Overlay`] is a list of IPv4 rules, each at the head of a chain of the policy, in
//! the exact form `iptables-save` prints them. [`install`] inserts all of them in one
//! `iptables-restore --noflush` transaction per table set (tested first); [`remove`]
//! deletes them in one transaction and checks that none is left. While an overlay is
//! installed the drift guard counts its rules as wanted (and puts them back with the
//! policy if they were deleted); once it is removed, a leftover rule is drift and is
//! repaired away. One process-wide overlay at a time; the guard and these functions take
//! the same lock, so a check never runs between the halves of an install or a removal.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::live::{self, FirewallError, Normal, Tools};

/// One rule: its table, its chain and the rule as `-A chain ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayRule {
    pub table: &'static str,
    pub chain: String,
    pub rule: String,
}

/// Rules one owner (a session) adds to the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Who added them (the session's id), for logs.
    pub owner: String,
    pub rules: Vec<OverlayRule>,
    /// Whether IPv4 forwarding must be on while they are in place.
    pub forwarding: bool,
}

static CURRENT: Mutex<Option<Overlay>> = Mutex::new(None);
/// IPv4 forwarding as the policy alone wants it (set when a policy is applied).
static BASE_FORWARDING: AtomicBool = AtomicBool::new(false);

/// The installed overlay, locked (the guard holds it through a check and a repair).
pub fn lock() -> MutexGuard<'static, Option<Overlay>> {
    CURRENT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Called when a policy is applied: what IPv4 forwarding is without an overlay.
pub fn note_policy_forwarding(on: bool) {
    BASE_FORWARDING.store(on, Ordering::SeqCst);
}

impl Overlay {
    /// Tables in the order their rules first appear.
    fn tables(&self) -> Vec<&'static str> {
        let mut t: Vec<&'static str> = Vec::new();
        for r in &self.rules {
            if !t.contains(&r.table) {
                t.push(r.table);
            }
        }
        t
    }

    /// `-I chain N ...` lines of `table`, numbered so that the rules keep their order at
    /// the head of each chain.
    fn insert_lines(&self, table: &str) -> Vec<String> {
        let mut pos: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut out = Vec::new();
        for r in self.rules.iter().filter(|r| r.table == table) {
            let n = pos.entry(r.chain.as_str()).or_insert(0);
            *n += 1;
            out.push(format!("-I {} {} {}", r.chain, n, body(r)));
        }
        out
    }

    /// The document that inserts every rule (for `iptables-restore --noflush`).
    pub fn insert_doc(&self) -> String {
        let mut d = format!("# rapd overlay of {}\n", self.owner);
        for t in self.tables() {
            d.push_str(&format!("*{t}\n"));
            for l in self.insert_lines(t) {
                d.push_str(&l);
                d.push('\n');
            }
            d.push_str("COMMIT\n");
        }
        d
    }

    /// The document that deletes the given rules (for `iptables-restore --noflush`).
    pub fn delete_doc(rules: &[&OverlayRule]) -> String {
        let mut d = String::new();
        let mut tables: Vec<&str> = rules.iter().map(|r| r.table).collect();
        tables.dedup();
        for t in tables {
            d.push_str(&format!("*{t}\n"));
            for r in rules.iter().filter(|r| r.table == t) {
                d.push_str(&format!("-D {} {}\n", r.chain, body(r)));
            }
            d.push_str("COMMIT\n");
        }
        d
    }

    /// A whole policy document with these rules at the heads of their chains (what the
    /// guard restores when anything drifted while the overlay is installed).
    pub fn merged(&self, doc: &str) -> String {
        let mut out = String::with_capacity(doc.len() + 1024);
        let mut table: Option<String> = None;
        for line in doc.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = Some(t.trim().to_owned());
            }
            if line.trim() == "COMMIT" {
                if let Some(t) = &table {
                    for l in self.insert_lines(t) {
                        out.push_str(&l);
                        out.push('\n');
                    }
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// `expected` with these rules at the heads of their chains.
    pub fn expect(&self, expected: &Normal) -> Normal {
        let mut n = expected.clone();
        let mut pos: std::collections::HashMap<(&str, &str), usize> = std::collections::HashMap::new();
        for r in &self.rules {
            let Some(t) = n.tables.get_mut(r.table) else { continue };
            let p = pos.entry((r.table, r.chain.as_str())).or_insert(0);
            t.rules.entry(r.chain.clone()).or_default().insert(*p, norm(&r.rule));
            *p += 1;
        }
        n
    }
}

fn norm(rule: &str) -> String {
    rule.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The rule without its `-A chain` head.
fn body(r: &OverlayRule) -> &str {
    r.rule.strip_prefix("-A ").and_then(|s| s.strip_prefix(r.chain.as_str())).map(str::trim_start).unwrap_or(&r.rule)
}

fn restore_noflush(tools: &Tools, doc: &str, test: bool) -> Result<(), FirewallError> {
    let tool = &tools.restore4;
    let mut cmd = Command::new(tool);
    cmd.arg("--noflush");
    if test {
        cmd.arg("--test");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn { tool: tool.clone(), source })?;
    let written = child.stdin.take().map(|mut i| i.write_all(doc.as_bytes()));
    let out = child.wait_with_output().map_err(|source| FirewallError::Spawn { tool: tool.clone(), source })?;
    if out.status.success() && matches!(written, Some(Ok(()))) {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().replace('\n', " | ");
    let stderr = if stderr.is_empty() { format!("exit status {}", out.status) } else { stderr };
    if test {
        Err(FirewallError::Refused { tool: tool.clone(), stderr })
    } else {
        Err(FirewallError::Failed { tool: tool.clone(), stderr })
    }
}

/// The overlay's rules that are in the live rules now.
fn present<'a>(ov: &'a Overlay, tools: &Tools) -> Result<Vec<&'a OverlayRule>, FirewallError> {
    let live = live::normalise(&live::save(&tools.save4)?);
    Ok(ov
        .rules
        .iter()
        .filter(|r| {
            live.tables.get(r.table).and_then(|t| t.rules.get(&r.chain)).is_some_and(|rs| rs.contains(&norm(&r.rule)))
        })
        .collect())
}

/// Inserts `ov` (one transaction, tested first) and switches IPv4 forwarding on if it
/// needs it. Refused while another overlay is installed. On error nothing was changed.
pub fn install(ov: Overlay, tools: &Tools) -> Result<(), FirewallError> {
    let mut cur = lock();
    if let Some(c) = cur.as_ref() {
        return Err(FirewallError::Failed {
            tool: tools.restore4.clone(),
            stderr: format!("the rules of {} are still in place", c.owner),
        });
    }
    let doc = ov.insert_doc();
    restore_noflush(tools, &doc, true)?;
    restore_noflush(tools, &doc, false)?;
    if ov.forwarding {
        if let Err(e) = live::set_forwarding(tools, true) {
            let _ = restore_noflush(tools, &Overlay::delete_doc(&ov.rules.iter().collect::<Vec<_>>()), false);
            return Err(e);
        }
    }
    *cur = Some(ov);
    Ok(())
}

/// Deletes the installed overlay's rules (those still there, in one transaction), puts
/// IPv4 forwarding back to what the policy wants, and checks that none of them is left.
/// Returns how many rules were deleted. Without an overlay nothing happens.
pub fn remove(tools: &Tools) -> Result<usize, FirewallError> {
    let mut cur = lock();
    let Some(ov) = cur.take() else { return Ok(0) };
    let res = (|| {
        // Usually every rule is there: one transaction deletes them all. If one is missing (a
        // deletion by hand the guard has not repaired yet), that transaction fails as a whole
        // and the rules still there are deleted instead.
        let all: Vec<&OverlayRule> = ov.rules.iter().collect();
        let n = match restore_noflush(tools, &Overlay::delete_doc(&all), false) {
            Ok(()) => all.len(),
            Err(_) => {
                let there = present(&ov, tools)?;
                if !there.is_empty() {
                    restore_noflush(tools, &Overlay::delete_doc(&there), false)?;
                }
                there.len()
            }
        };
        live::set_forwarding(tools, BASE_FORWARDING.load(Ordering::SeqCst))?;
        let left = present(&ov, tools)?;
        if !left.is_empty() {
            return Err(FirewallError::Failed {
                tool: tools.restore4.clone(),
                stderr: format!("{} rules of {} are still in place", left.len(), ov.owner),
            });
        }
        Ok(n)
    })();
    // Left uninstalled either way: a rule still in place is drift now, which the guard repairs.
    drop(cur);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ov() -> Overlay {
        let r = |table, chain: &str, rule: &str| OverlayRule { table, chain: chain.into(), rule: rule.into() };
        Overlay {
            owner: "session s-1".into(),
            rules: vec![
                r("filter", "INPUT", "-A INPUT -i tun9 -p tcp -m tcp --dport 22 -j ACCEPT"),
                r("filter", "INPUT", "-A INPUT -i tun9 -j DROP"),
                r("filter", "FORWARD", "-A FORWARD -i tun9 -j ACCEPT"),
                r("nat", "PREROUTING", "-A PREROUTING -i tun9 -j DNAT --to-destination 10.0.0.2:5900"),
            ],
            forwarding: true,
        }
    }

    const DOC: &str = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn documents() {
        let o = ov();
        assert_eq!(
            o.insert_doc(),
            "# rapd overlay of session s-1\n*filter\n-I INPUT 1 -i tun9 -p tcp -m tcp --dport 22 -j ACCEPT\n\
             -I INPUT 2 -i tun9 -j DROP\n-I FORWARD 1 -i tun9 -j ACCEPT\nCOMMIT\n\
             *nat\n-I PREROUTING 1 -i tun9 -j DNAT --to-destination 10.0.0.2:5900\nCOMMIT\n"
        );
        let all: Vec<&OverlayRule> = o.rules.iter().collect();
        assert_eq!(
            Overlay::delete_doc(&all[2..]),
            "*filter\n-D FORWARD -i tun9 -j ACCEPT\nCOMMIT\n*nat\n-D PREROUTING -i tun9 -j DNAT --to-destination 10.0.0.2:5900\nCOMMIT\n"
        );
        let merged = o.merged(DOC);
        assert!(merged.contains("-A INPUT -i lo -j ACCEPT\n-I INPUT 1 -i tun9"), "{merged}");
        assert!(merged.ends_with("-I PREROUTING 1 -i tun9 -j DNAT --to-destination 10.0.0.2:5900\nCOMMIT\n"));
    }

    #[test]
    fn expected_rules_are_at_the_heads_of_their_chains() {
        let base = live::normalise(DOC);
        let want = ov().expect(&base);
        let applied = live::normalise(
            "*filter\n:INPUT DROP\n:FORWARD DROP\n-A INPUT -i tun9 -p tcp -m tcp --dport 22 -j ACCEPT\n\
             -A INPUT -i tun9 -j DROP\n-A INPUT -i lo -j ACCEPT\n-A FORWARD -i tun9 -j ACCEPT\nCOMMIT\n\
             *nat\n:PREROUTING ACCEPT\n-A PREROUTING -i tun9 -j DNAT --to-destination 10.0.0.2:5900\nCOMMIT\n",
        );
        assert!(live::diff("ipv4", &want, &applied).is_empty(), "{:?}", live::diff("ipv4", &want, &applied));
        assert_eq!(live::diff("ipv4", &base, &applied).len(), 4);
    }
}
