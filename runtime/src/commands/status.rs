//! The `status` command kind: the box answers with the status `rapctl status` shows (the
//! control interface's [`Status`](crate::control::Status)) as the result's detail. No
//! arguments, no targets.

use std::sync::{Arc, Weak};

use rapwire::command::Command;

use super::{Completion, Handler, Verdict};
use crate::control::{self, Source};

/// The kind's name.
pub const KIND: &str = "status";

/// Answers `status` commands from the daemon's status source.
pub struct StatusKind {
    // Weak: the daemon owns the dispatcher, which owns this handler.
    src: Weak<dyn Source>,
}

impl StatusKind {
    pub fn new(src: &Arc<dyn Source>) -> StatusKind {
        StatusKind { src: Arc::downgrade(src) }
    }
}

impl Handler for StatusKind {
    fn run(&self, cmd: &Command, _done: Completion) -> Verdict {
        if !cmd.args.is_null() && cmd.args != serde_json::json!({}) {
            return Verdict::malformed(format!("`status` takes no arguments, got {}", cmd.args));
        }
        if !cmd.target.is_empty() {
            return Verdict::refused(rapwire::command::code::BAD_TARGET, "`status` is about the box: give no target");
        }
        match self.src.upgrade() {
            Some(src) => match serde_json::to_value(control::status(&*src)) {
                Ok(detail) => Verdict::Succeeded { detail },
                Err(e) => Verdict::failed("internal", format!("encoding the status: {e}")),
            },
            None => Verdict::failed("shutting_down", "rapd is stopping"),
        }
    }
}
