//! What a new configuration changes, and how: live (the affected part is replaced while
//! the rest runs on) or only by a restart of rapd.
//!
//! | part | keys | how |
//! |------|------|-----|
//! | uplink | `uplink.*` | live: the uplink finishes the batch in flight, stops, and starts again with the new settings |
//! | links | `network.uplink.*`, `instrument[N].interface`/`box_address` | live: addresses set on the new links, the old ones taken off; the uplink starts again |
//! | firewall | `firewall.*` and whatever the policy is made from | live: one `iptables-restore` transaction per family; the uplink starts again |
//! | instrument ports | `instrument[N].*` | live: only the instruments added, removed or changed; the other ports keep their connections |
//! | ingest limits | `ingest.*` | live: every instrument port's listener starts again (agents reconnect and resend) |
//! | log level | `log.level` | live |
//! | reconfiguration | `reconfig.*` | live (read at the next apply) |
//! | queue, FIPS, control socket, audit log, log target, command dispatcher, transfers, remote sessions | `queue.*`, `fips.*`, `control.*`, `audit.*`, `log.target`, `commands.*`, `transfers.*`, `sessions.*` | restart of rapd |

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::config::{Config, InstrumentConfig};
use crate::firewall;
use crate::ports;

/// The parts a new configuration changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plan {
    /// Sections that only a restart of rapd can change (empty: everything is live).
    pub restart: Vec<String>,
    /// The uplink starts again (its settings changed, or the network under it).
    pub uplink: bool,
    /// The managed links change.
    pub links: bool,
    /// The firewall policy (or whether rapd manages it) changes.
    pub firewall: bool,
    /// Instruments whose ports stop (removed, or changed and started again).
    pub ports_stopped: Vec<String>,
    /// Instruments whose ports start (added, or changed).
    pub ports_started: Vec<String>,
    /// Every port starts again (`ingest.*` changed).
    pub all_ports: bool,
    /// The log level changes.
    pub log_level: bool,
}

impl Plan {
    /// Nothing running changes (the documents may still differ in comments or defaults).
    pub fn is_empty(&self) -> bool {
        self.restart.is_empty()
            && !self.uplink
            && !self.links
            && !self.firewall
            && self.ports_stopped.is_empty()
            && self.ports_started.is_empty()
            && !self.log_level
    }

    /// The parts, for people: `uplink, firewall, instrument ports AU-0002`.
    pub fn summary(&self) -> String {
        let mut v: Vec<String> = Vec::new();
        if !self.restart.is_empty() {
            v.push(format!("restart of rapd ({})", self.restart.join(", ")));
        }
        if self.links {
            v.push("links".into());
        }
        if self.firewall {
            v.push("firewall".into());
        }
        if self.uplink {
            v.push("uplink".into());
        }
        if self.all_ports {
            v.push("every instrument port".into());
        } else {
            let changed: BTreeSet<&String> = self.ports_stopped.iter().chain(&self.ports_started).collect();
            if !changed.is_empty() {
                v.push(format!("instrument ports {}", changed.into_iter().cloned().collect::<Vec<_>>().join(" ")));
            }
        }
        if self.log_level {
            v.push("log level".into());
        }
        if v.is_empty() {
            "nothing running".into()
        } else {
            v.join(", ")
        }
    }
}

/// What changes from `old` to `new` (both validated).
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    if old.queue != new.queue {
        p.restart.push("queue".into());
    }
    if old.fips != new.fips {
        p.restart.push("fips".into());
    }
    if old.control != new.control {
        p.restart.push("control".into());
    }
    if old.audit != new.audit {
        p.restart.push("audit".into());
    }
    if old.log.target != new.log.target {
        p.restart.push("log.target".into());
    }
    if old.commands != new.commands {
        p.restart.push("commands".into());
    }
    if old.transfers != new.transfers {
        p.restart.push("transfers".into());
    }
    if old.sessions != new.sessions {
        p.restart.push("sessions".into());
    }
    p.log_level = old.log.level != new.log.level;
    p.links = ports::plan(old) != ports::plan(new);
    p.firewall =
        old.firewall != new.firewall || (new.firewall.enabled && firewall::policy(old) != firewall::policy(new));
    p.uplink = old.uplink != new.uplink || p.links || p.firewall;
    p.all_ports = old.ingest != new.ingest;
    let find = |cfg: &Config, serial: &str| cfg.instruments.iter().find(|i| i.serial == serial).cloned();
    let same = |a: &InstrumentConfig, b: &InstrumentConfig| a == b;
    for i in &old.instruments {
        match find(new, &i.serial) {
            Some(n) if same(i, &n) && !p.all_ports => {}
            _ => p.ports_stopped.push(i.serial.clone()),
        }
    }
    for i in &new.instruments {
        match find(old, &i.serial) {
            Some(o) if same(i, &o) && !p.all_ports => {}
            _ => p.ports_started.push(i.serial.clone()),
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"
[queue]
path = "/data/rapd/queue.db"

[uplink]
url = "https://dc.example.net/api/v1/batches"
ca = "/data/certs/ca.pem"
cert = "/data/certs/box.pem"
key = "/data/certs/box.key"

[[instrument]]
serial = "A-1"
listen = "10.10.1.1:7300"

[[instrument]]
serial = "B-2"
listen = "10.10.2.1:7300"
"#;

    fn cfg(t: &str) -> Config {
        Config::parse(Path::new("/etc/rapbox/rapd.toml"), t).unwrap()
    }

    fn plan_of(from: &str, to: &str) -> Plan {
        assert!(BASE.contains(from), "{from}");
        plan(&cfg(BASE), &cfg(&BASE.replacen(from, to, 1)))
    }

    #[test]
    fn comments_and_defaults_change_nothing() {
        let p = plan_of("[queue]", "# queue\n[queue]\nquota_bytes = 268435456");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.summary(), "nothing running");
    }

    #[test]
    fn uplink_keys_are_live() {
        let p =
            plan_of("key = \"/data/certs/box.key\"", "key = \"/data/certs/box.key\"\nproxy = \"http://10.0.0.9:3128\"");
        assert_eq!(p, Plan { uplink: true, ..Plan::default() });
        assert_eq!(p.summary(), "uplink");
    }

    #[test]
    fn only_changed_instruments_restart() {
        let p = plan_of("listen = \"10.10.2.1:7300\"", "listen = \"10.10.2.1:7301\"");
        assert_eq!(p.ports_stopped, ["B-2"]);
        assert_eq!(p.ports_started, ["B-2"]);
        assert!(!p.uplink && p.restart.is_empty());
        let p = plan_of("[[instrument]]\nserial = \"A-1\"\nlisten = \"10.10.1.1:7300\"\n", "");
        assert_eq!((p.ports_stopped.as_slice(), p.ports_started.as_slice()), (&["A-1".to_string()][..], &[][..]));
        let p = plan_of(
            "[[instrument]]\nserial = \"A-1\"",
            "[[instrument]]\nserial = \"C-3\"\nlisten = \"10.10.3.1:7300\"\n\n[[instrument]]\nserial = \"A-1\"",
        );
        assert_eq!((p.ports_stopped.len(), p.ports_started.as_slice()), (0, &["C-3".to_string()][..]));
        let p = plan_of("[queue]", "[ingest]\nidle_timeout_ms = 60000\n\n[queue]");
        assert!(p.all_ports);
        assert_eq!(p.ports_started, ["A-1", "B-2"]);
        assert_eq!(p.summary(), "every instrument port");
    }

    #[test]
    fn restart_sections() {
        let p = plan_of("path = \"/data/rapd/queue.db\"", "path = \"/data/rapd/q2.db\"");
        assert_eq!(p.restart, ["queue"]);
        let p = plan_of("path = \"/data/rapd/queue.db\"", "path = \"/data/q/queue.db\"");
        assert_eq!(
            p.restart,
            ["queue", "audit", "commands", "transfers"],
            "the audit log's, the dispatcher's and the transfers' default paths follow the queue"
        );
        let p = plan_of("[queue]", "[commands]\npoll_interval_s = 5\n\n[queue]");
        assert_eq!(p.restart, ["commands"]);
        let p = plan_of("[queue]", "[log]\ntarget = \"stderr\"\nlevel = \"debug\"\n\n[queue]");
        assert_eq!(p.restart, ["log.target"]);
        assert!(p.log_level);
        let p = plan_of("[queue]", "[reconfig]\nrollback_after_s = 60\n\n[queue]");
        assert!(p.is_empty(), "{p:?}");
    }
}
