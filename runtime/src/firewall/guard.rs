//! The drift guard: the policy applied once, then compared with the live rules every
//! `firewall.drift_check_s` seconds and restored when anything differs. Every repair
//! goes to the [`Audit`] hook with the list of what changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::live::{self, FirewallError, Normal, Tools};
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

/// The audit hook. The audit module will implement it; until then [`LogAudit`] writes
/// each event as a warning prefixed `audit:`.
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
        let got4 = live::normalise(&live::save(&self.tools.save4)?).restricted_to(&self.expected4);
        let got6 = live::normalise(&live::save(&self.tools.save6)?).restricted_to(&self.expected6);
        let mut d = live::diff("ipv4", &self.expected4, &got4);
        d.extend(live::diff("ipv6", &self.expected6, &got6));
        let fwd = live::forwarding(&self.tools)?;
        if fwd != self.rules.forwarding {
            d.push(format!(
                "net.ipv4.ip_forward is {}, the policy needs {}",
                u8::from(fwd),
                u8::from(self.rules.forwarding)
            ));
        }
        Ok(d)
    }

    /// One check: compares, restores on drift, audits. Returns what had changed.
    pub fn check(&self) -> Vec<String> {
        let result = self.drift();
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.checks += 1;
        let changes = match result {
            Ok(c) => c,
            Err(e) => {
                log::error!("firewall: cannot read the live rules: {e}");
                st.last_error = Some(e.to_string());
                return Vec::new();
            }
        };
        if changes.is_empty() {
            return changes;
        }
        match live::apply(&self.rules, &self.tools) {
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

    /// Runs [`Firewall::check`] every `interval` until `stop` is set.
    pub fn spawn_guard(self, interval: Duration, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("firewall-guard".into()).stack_size(256 * 1024).spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                crate::uplink::sleep_unless_stopped(&stop, interval);
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                self.check();
            }
        })
    }
}
