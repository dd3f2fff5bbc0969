//! The data center's `configure` command: one apply through [`Reconfigurer::apply`], with the
//! same validation, checks, trial and rollback as `rapctl config apply`.
//!
//! Arguments: `document` (a whole `rapd.toml`) or `keys` (key path → value, `null` removes;
//! see [`super::keys`]), and optionally `dry_run`. No targets. The result:
//!
//! * invalid, or a check before applying failed → `refused`, code `invalid_configuration`,
//!   the reason naming the key (nothing changed);
//! * a part could not be moved → `failed`, code `apply_failed` (everything put back);
//! * `dry_run`, or the configuration in force → `succeeded` with the report;
//! * applied → `accepted` with the report (the trial runs), then `succeeded` once the data
//!   center has acknowledged a batch or an exchange, or `failed` with code `rolled_back`
//!   (`superseded` when another configuration replaced it during its trial). A
//!   configuration that takes a restart of rapd is followed across the restart
//!   ([`Handler::resume`]).
//!
//! The actor of the apply's audit records is `datacenter:<command id>`; the dispatcher
//! records the command itself (`command.accepted`, `command.executed`, `command.refused`).

use std::sync::{Arc, Weak};

use rapwire::command::Command;
use serde::Deserialize;

use super::{ApplyArgs, ApplyOutcome, Reconfigurer, TrialEnd};
use crate::commands::{Completion, Handler, Verdict};

/// The kind's name.
pub const KIND: &str = "configure";
/// Result code of a configuration that is not valid or does not pass the checks.
pub const INVALID: &str = "invalid_configuration";
/// Result code of an apply whose parts could not all be moved (all were put back).
pub const APPLY_FAILED: &str = "apply_failed";
/// Result code of a configuration rolled back after its trial.
pub const ROLLED_BACK: &str = "rolled_back";
/// Result code of a configuration replaced by another during its trial.
pub const SUPERSEDED: &str = "superseded";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(default)]
    document: Option<String>,
    #[serde(default)]
    keys: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    dry_run: bool,
}

/// Executes `configure` commands.
pub struct ConfigureKind {
    // Weak: the daemon owns both; the dispatcher must not keep the reconfigurer alive.
    r: Weak<Reconfigurer>,
}

impl ConfigureKind {
    pub fn new(r: &Arc<Reconfigurer>) -> ConfigureKind {
        ConfigureKind { r: Arc::downgrade(r) }
    }
}

fn actor(cmd: &Command) -> String {
    format!("datacenter:{}", cmd.id)
}

/// The final result for how the trial ended.
fn verdict(id: &str, end: &TrialEnd) -> Verdict {
    match end {
        TrialEnd::Confirmed { after_ms } => Verdict::Succeeded {
            detail: serde_json::json!({ "id": id, "confirmed": true, "confirmed_after_ms": after_ms }),
        },
        TrialEnd::RolledBack { reason } => Verdict::failed(ROLLED_BACK, format!("configuration {id} {reason}")),
        TrialEnd::Superseded { by } => Verdict::failed(
            SUPERSEDED,
            format!("configuration {id} was replaced by configuration {by} before the data center confirmed it"),
        ),
        TrialEnd::Ended { reason } => Verdict::failed("interrupted", format!("configuration {id}: {reason}")),
    }
}

/// Finishes `done` when the trial of `id` ends.
fn follow(r: &Reconfigurer, id: &str, done: Completion) {
    let id2 = id.to_owned();
    r.when_trial_ends(id, Box::new(move |end| done.finish(verdict(&id2, end))));
}

impl Handler for ConfigureKind {
    fn run(&self, cmd: &Command, done: Completion) -> Verdict {
        let args: Args =
            match serde_json::from_value(if cmd.args.is_null() { serde_json::json!({}) } else { cmd.args.clone() }) {
                Ok(a) => a,
                Err(e) => return Verdict::malformed(format!("`configure` arguments: {e}")),
            };
        if !cmd.target.is_empty() {
            return Verdict::refused(
                rapwire::command::code::BAD_TARGET,
                "`configure` is about the box: give no target",
            );
        }
        let Some(r) = self.r.upgrade() else { return Verdict::failed("shutting_down", "rapd is stopping") };
        let apply = ApplyArgs {
            document: args.document,
            keys: args.keys,
            dry_run: args.dry_run,
            rollback: true,
            on_behalf_of: None,
        };
        if let Err(p) = apply.proposal() {
            return Verdict::malformed(format!("`configure`: {}", p.message));
        }
        let rep = r.apply(&apply, &actor(cmd));
        let detail = serde_json::to_value(&rep).unwrap_or(serde_json::Value::Null);
        match rep.outcome {
            ApplyOutcome::Valid | ApplyOutcome::Unchanged => Verdict::Succeeded { detail },
            ApplyOutcome::Refused => Verdict::refused(INVALID, &rep.message),
            ApplyOutcome::Failed => Verdict::Failed { code: APPLY_FAILED.into(), reason: rep.message.clone(), detail },
            ApplyOutcome::Applied => {
                // Through a restart, the next run of rapd follows it (`resume`).
                if let (Some(id), false) = (&rep.id, rep.restart) {
                    follow(&r, id, done);
                }
                Verdict::Running { detail }
            }
        }
    }

    /// rapd restarted while the command's configuration was on trial (it may have restarted
    /// to apply it): follow the trial that goes on, or report how it ended.
    fn resume(&self, cmd: &Command, done: Completion) -> Verdict {
        let Some(r) = self.r.upgrade() else { return Verdict::failed("shutting_down", "rapd is stopping") };
        match r.apply_of(&actor(cmd)) {
            Some((id, None)) => {
                follow(&r, &id, done);
                Verdict::Running { detail: serde_json::json!({ "id": id, "on_trial": true }) }
            }
            Some((id, Some(end))) => verdict(&id, &end),
            None => Verdict::failed(
                "interrupted",
                "rapd restarted while the command ran, and no configuration it applied is on trial",
            ),
        }
    }
}
