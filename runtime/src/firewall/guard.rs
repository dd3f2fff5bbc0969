//! The drift guard: the policy applied once, then compared with the live rules every
//! `firewall.drift_check_s` seconds and restored when anything differs. Every repair
//! goes to the [`Audit`] hook with the list of what changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::live::{self, FirewallError, Normal, Tools};
use super::overlay::{self, Overlay};
use super::Ruleset;

/// What the audit trail is told about the firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    /// The policy was applied (at start).
    Applied { rules: usize },
    /// The live rules differed from the policy and were restored.
    DriftRepaired { changes: Vec<String> },
    /// The live rules differ and could not be restored.
    RepairFailed { changes: Vec<String>, error: String },
}

/// The audit hook. rapd passes its audit log (`crate::audit::AuditLog` implements this:
/// each event becomes a hash-chained record and keeps its [`LogAudit`] line); [`LogAudit`]
/// alone writes each event as a warning prefixed `audit:`.
pub trait Audit: Send + Sync {
    fn firewall(&self, event: &AuditEvent);
}

/// Audit events as log lines (`audit: firewall ...`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogAudit;

impl Audit for LogAudit {
    fn firewall(&self, event: &AuditEvent) {
        match event {
            AuditEvent::Applied { rules } => log::warn!("audit: firewall policy applied ({rules} rules)"),
            AuditEvent::DriftRepaired { changes } => {
                log::warn!("audit: firewall drift repaired: {}", changes.join("; "))
            }
            AuditEvent::RepairFailed { changes, error } => {
                log::error!("audit: firewall drift NOT repaired ({error}): {}", changes.join("; "))
            }
        }
    }
}

/// The firewall's part of the status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FirewallStatus {
    pub enabled: bool,
    /// When the policy was applied (ms since the epoch).
    pub applied_at_ms: Option<u64>,
    pub rule_count: usize,
    /// Drift checks done.
    pub checks: u64,
    pub drift_repairs: u64,
    pub last_drift_repair_ms: Option<u64>,
    /// What had changed at the last repair.
    pub last_drift: Vec<String>,
    pub last_error: Option<String>,
    /// Whether iptables-save prints the policy exactly as generated (else the guard
    /// compares with the rules as read back right after applying).
    pub canonical: bool,
}

/// Shared status, read by the control interface.
pub type SharedStatus = Arc<Mutex<FirewallStatus>>;

/// The applied policy and what the live rules must look like.
pub struct Firewall {
    rules: Ruleset,
    tools: Tools,
    expected4: Normal,
    expected6: Normal,
    status: SharedStatus,
    audit: Arc<dyn Audit>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Firewall {
    /// Applies `rules` and records what the live rules must look like from now on.
    /// On error nothing was changed (see [`live::apply`]).
    pub fn apply(rules: Ruleset, tools: Tools, audit: Arc<dyn Audit>) -> Result<Firewall, FirewallError> {
        live::apply(&rules, &tools)?;
        overlay::note_policy_forwarding(rules.forwarding);
        let mut expected4 = live::normalise(&rules.ipv4);
        let mut expected6 = live::normalise(&rules.ipv6);
        let got4 = live::normalise(&live::save(&tools.save4)?).restricted_to(&expected4);
        let got6 = live::normalise(&live::save(&tools.save6)?).restricted_to(&expected6);
        let d: Vec<String> =
            live::diff("ipv4", &expected4, &got4).into_iter().chain(live::diff("ipv6", &expected6, &got6)).collect();
        let canonical = d.is_empty();
        if !canonical {
            log::warn!(
                "firewall: iptables-save prints the policy differently from the generator ({}); \
                 drift is judged against the rules as read back now",
                d.join("; ")
            );
            expected4 = got4;
            expected6 = got6;
        }
        let rule_count = rules.rule_count();
        let status = Arc::new(Mutex::new(FirewallStatus {
            enabled: true,
            applied_at_ms: Some(now_ms()),
            rule_count,
            canonical,
            ..FirewallStatus::default()
        }));
        audit.firewall(&AuditEvent::Applied { rules: rule_count });
        Ok(Firewall { rules, tools, expected4, expected6, status, audit })
    }

    /// The shared status.
    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    /// What differs between the live rules (and IPv4 forwarding) and the policy.
    pub fn drift(&self) -> Result<Vec<String>, FirewallError> {
        self.drift_with(overlay::lock().as_ref())
    }

    /// [`Firewall::drift`] with the rules of `ov` (a session's) counted as wanted.
    fn drift_with(&self, ov: Option<&Overlay>) -> Result<Vec<String>, FirewallError> {
        let expected4 = ov.map_or_else(|| self.expected4.clone(), |o| o.expect(&self.expected4));
        let got4 = live::normalise(&live::save(&self.tools.save4)?).restricted_to(&expected4);
        let got6 = live::normalise(&live::save(&self.tools.save6)?).restricted_to(&self.expected6);
        let mut d = live::diff("ipv4", &expected4, &got4);
        d.extend(live::diff("ipv6", &self.expected6, &got6));
        let fwd = live::forwarding(&self.tools)?;
        let want = self.rules.forwarding || ov.is_some_and(|o| o.forwarding);
        if fwd != want {
            d.push(format!("net.ipv4.ip_forward is {}, the policy needs {}", u8::from(fwd), u8::from(want)));
        }
        Ok(d)
    }

    /// One check: compares, restores on drift, audits. Returns what had changed.
    pub fn check(&self) -> Vec<String> {
        // Held through the repair: a session's rules are not added or removed meanwhile.
        let ov = overlay::lock();
        let result = self.drift_with(ov.as_ref());
        let status = || self.status.lock().unwrap_or_else(|p| p.into_inner());
        status().checks += 1;
        let changes = match result {
            Ok(c) => c,
            Err(e) => {
                log::error!("firewall: cannot read the live rules: {e}");
                status().last_error = Some(e.to_string());
                return Vec::new();
            }
        };
        if changes.is_empty() {
            return changes;
        }
        let family = |f: &str| changes.iter().any(|c| c.starts_with(f));
        let repaired = match ov.as_ref() {
            None => live::repair(&self.rules, &self.tools, family("ipv4 "), family("ipv6 ")),
            Some(o) => {
                let rules = Ruleset {
                    ipv4: o.merged(&self.rules.ipv4),
                    forwarding: self.rules.forwarding || o.forwarding,
                    ..self.rules.clone()
                };
                live::repair(&rules, &self.tools, family("ipv4 "), family("ipv6 "))
            }
        };
        drop(ov);
        let mut st = status();
        match repaired {
            Ok(()) => {
                st.drift_repairs += 1;
                st.last_drift_repair_ms = Some(now_ms());
                st.last_drift = changes.clone();
                st.last_error = None;
                drop(st);
                self.audit.firewall(&AuditEvent::DriftRepaired { changes: changes.clone() });
            }
            Err(e) => {
                st.last_error = Some(e.to_string());
                drop(st);
                self.audit.firewall(&AuditEvent::RepairFailed { changes: changes.clone(), error: e.to_string() });
            }
        }
        changes
    }

    /// Runs [`Firewall::check`] every `interval` (from the start of one check to the
    /// start of the next, so a change is seen at most `interval` plus one reading after it
    /// was made) until `stop` is set.
    pub fn spawn_guard(self, interval: Duration, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("firewall-guard".into()).stack_size(256 * 1024).spawn(move || {
            let mut started = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                crate::uplink::sleep_unless_stopped(&stop, interval.saturating_sub(started.elapsed()));
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                started = Instant::now();
                self.check();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<AuditEvent>>);

    impl Audit for Recorder {
        fn firewall(&self, event: &AuditEvent) {
            self.0.lock().unwrap().push(event.clone());
        }
    }

    /// Stand-ins for the netfilter tools: restore writes a file, save prints it.
    fn fake_tools(dir: &Path) -> Tools {
        let script = |name: &str, body: String| -> PathBuf {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let d = dir.display();
        let restore = |f: &str| format!("if [ \"$1\" = --test ]; then cat >/dev/null; else cat > {d}/{f}; fi");
        let ip_forward = dir.join("ip_forward");
        std::fs::write(&ip_forward, "0\n").unwrap();
        Tools {
            restore4: script("restore4", restore("v4")),
            save4: script("save4", format!("echo '# Generated by a fake'; cat {d}/v4")),
            restore6: script("restore6", restore("v6")),
            save6: script("save6", format!("cat {d}/v6")),
            ip_forward,
        }
    }

    #[test]
    fn drift_is_repaired_and_audited() {
        let dir = std::env::temp_dir().join(format!("rapfw-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tools = fake_tools(&dir);
        let rules = Ruleset {
            ipv4: "# policy\n*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n".into(),
            ipv6: "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n".into(),
            interfaces: Vec::new(),
            forwarding: false,
        };
        let audit = Arc::new(Recorder::default());
        let fw = Firewall::apply(rules, tools.clone(), audit.clone()).unwrap();
        let st = fw.status().lock().unwrap().clone();
        assert!(st.enabled && st.canonical && st.applied_at_ms.is_some());
        assert_eq!(st.rule_count, 3);
        assert!(fw.check().is_empty());

        // A rule deleted by hand, forwarding switched on.
        let v4 = dir.join("v4");
        let text = std::fs::read_to_string(&v4).unwrap();
        std::fs::write(&v4, text.replace("-A INPUT -i lo -j ACCEPT\n", "")).unwrap();
        std::fs::write(&tools.ip_forward, "1\n").unwrap();
        let changes = fw.check();
        assert_eq!(
            changes,
            vec![
                "ipv4 filter/INPUT: rule missing: -A INPUT -i lo -j ACCEPT".to_owned(),
                "net.ipv4.ip_forward is 1, the policy needs 0".to_owned()
            ]
        );
        assert_eq!(std::fs::read_to_string(&v4).unwrap(), text, "restored");
        assert_eq!(std::fs::read_to_string(&tools.ip_forward).unwrap(), "0\n");
        assert!(fw.check().is_empty());
        let st = fw.status().lock().unwrap().clone();
        assert_eq!((st.checks, st.drift_repairs), (3, 1));
        assert_eq!(st.last_drift, changes);
        assert_eq!(
            *audit.0.lock().unwrap(),
            vec![AuditEvent::Applied { rules: 3 }, AuditEvent::DriftRepaired { changes }]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
