//! The firewall: the only module that writes netfilter rules.
//!
//! [`policy`] turns the validated configuration into iptables-restore documents — a
//! pure function, pinned by golden files. [`live`] applies them in one transaction per
//! address family and reads them back. [`guard`] keeps them in place: it compares the
//! live rules with the policy every few seconds, restores them when they drifted and
//! tells the audit hook what changed. [`overlay`] holds the rules a remote session adds
//! at run time (the guard counts them as wanted while they live). See `docs/firewall.md`.

pub mod guard;
pub mod live;
pub mod overlay;
pub mod policy;

pub use guard::{Audit, AuditEvent, Firewall, FirewallStatus, LogAudit};
pub use live::{FirewallError, Tools};
pub use policy::{policy, Ruleset};
