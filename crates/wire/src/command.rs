//! The command channel: commands the data center queues for a box, and the results the
//! box reports back (JSON; documented in `docs/commands.md`).
//!
//! The box only ever connects outward, so commands travel in answers:
//!
//! * in the answer to a batch upload ([`BatchAnswer`]: the batch acknowledgement with a
//!   `commands` member, absent when there are none), and
//! * in the answer to an exchange (`POST` [`EXCHANGE_PATH`], body [`Exchange`], answer
//!   [`ExchangeAnswer`]), which the box sends when it has results to report and, when idle,
//!   every poll interval.
//!
//! Commands are carried as raw JSON values and decoded one by one with
//! [`Command::from_value`], so that one malformed command is refused by itself (with its id,
//! when it has a readable one) instead of spoiling the whole answer. A command's `kind` is a
//! plain string: a kind the box does not know still decodes, and is refused by name.

use serde::{Deserialize, Serialize};

use crate::batch::BatchAck;

/// The exchange endpoint, relative to the directory of the batch URL
/// (`https://dc/api/v1/batches` → `https://dc/api/v1/commands`).
pub const EXCHANGE_PATH: &str = "commands";
/// Content type of an exchange and of its answer.
pub const CONTENT_TYPE: &str = "application/json";
/// Longest command id, in bytes.
pub const MAX_ID: usize = 64;
/// Longest kind name, in bytes.
pub const MAX_KIND: usize = 32;
/// Most target instruments of one command.
pub const MAX_TARGETS: usize = 64;
/// Largest encoded command (envelope and arguments), in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most commands the data center puts in one answer.
pub const MAX_COMMANDS_PER_ANSWER: usize = 16;
/// Most results the box puts in one exchange.
pub const MAX_RESULTS_PER_EXCHANGE: usize = 64;
/// Longest reason text, in bytes (longer ones are cut on a character boundary).
pub const MAX_REASON: usize = 1024;
/// Largest body of an exchange or of its answer.
pub const MAX_EXCHANGE_BYTES: usize = 4 * 1024 * 1024;
/// Longest lifetime the data center gives a command (30 days).
pub const MAX_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;

/// Refusal codes the box uses (the `code` of a refused [`CommandResult`]).
pub mod code {
    /// The command is not valid JSON of the envelope, or its arguments are not what its kind needs.
    pub const MALFORMED: &str = "malformed";
    /// The box has no handler for this kind.
    pub const UNKNOWN_KIND: &str = "unknown_kind";
    /// The command's lifetime ended before the box received it.
    pub const EXPIRED: &str = "expired";
    /// A target instrument is not cabled to this box, or the kind needs targets it did not get.
    pub const BAD_TARGET: &str = "bad_target";
    /// A download manifest's signature does not verify with a trusted vendor key.
    pub const BAD_SIGNATURE: &str = "bad_signature";
    /// The transfer storage quota on the data partition cannot hold it.
    pub const QUOTA: &str = "quota";
    /// Too many commands are running at once; the data center may send it again later.
    pub const BUSY: &str = "busy";
}

/// A command for one box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Chosen by the data center, unique; the box executes an id at most once.
    pub id: String,
    /// What to do (`download`, `status`, `configure`, ...).
    pub kind: String,
    /// When the data center queued it, milliseconds since the Unix epoch.
    pub issued_ms: i64,
    /// After this instant (box clock) the box refuses it with [`code::EXPIRED`].
    pub expires_ms: i64,
    /// Instrument serials the command is about; empty: the box itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<String>,
    /// Kind-specific arguments.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub args: serde_json::Value,
}

/// A command that could not be decoded: its id if one was readable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Malformed {
    /// The command's id, when the value had a valid one.
    pub id: Option<String>,
    /// What was wrong.
    pub reason: String,
}

/// Whether `id` is a valid command id: 1 to [`MAX_ID`] bytes of `A-Z a-z 0-9 . _ : -`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `kind` is a valid kind name: 1 to [`MAX_KIND`] bytes of `a-z 0-9 _`, starting with a letter.
pub fn valid_kind(kind: &str) -> bool {
    kind.len() <= MAX_KIND
        && kind.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Command {
    /// Decodes and checks one command of an answer.
    pub fn from_value(v: &serde_json::Value) -> Result<Command, Malformed> {
        let id = v.get("id").and_then(|i| i.as_str()).filter(|i| valid_id(i)).map(str::to_owned);
        let fail = |reason: String| Malformed { id: id.clone(), reason };
        let size = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
        if size > MAX_COMMAND_BYTES {
            return Err(fail(format!("command is {size} bytes, more than the limit of {MAX_COMMAND_BYTES}")));
        }
        if id.is_none() {
            return Err(fail(match v.get("id") {
                None => "command has no id".into(),
                Some(i) => format!("command id {i} is not 1 to {MAX_ID} characters of A-Z a-z 0-9 . _ : -"),
            }));
        }
        let c: Command = serde_json::from_value(v.clone()).map_err(|e| fail(format!("not a command: {e}")))?;
        c.check().map_err(fail)?;
        Ok(c)
    }

    /// Checks the envelope's fields (not the arguments: they are the kind's business).
    pub fn check(&self) -> Result<(), String> {
        if !valid_id(&self.id) {
            return Err(format!("command id {:?} is not 1 to {MAX_ID} characters of A-Z a-z 0-9 . _ : -", self.id));
        }
        if !valid_kind(&self.kind) {
            return Err(format!(
                "kind {:?} is not 1 to {MAX_KIND} characters of a-z 0-9 _ starting with a letter",
                self.kind
            ));
        }
        if self.expires_ms < self.issued_ms {
            return Err(format!("expires_ms {} is before issued_ms {}", self.expires_ms, self.issued_ms));
        }
        if self.target.len() > MAX_TARGETS {
            return Err(format!("{} targets, more than the limit of {MAX_TARGETS}", self.target.len()));
        }
        for t in &self.target {
            if t.is_empty() || t.len() > crate::agent::MAX_SERIAL || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("target {t:?} is not an instrument serial"));
            }
        }
        Ok(())
    }

    /// Whether the command's lifetime is over at `now_ms`.
    pub fn expired_at(&self, now_ms: i64) -> bool {
        now_ms > self.expires_ms
    }
}

/// How a command ended, or that it is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Received, stored and started; the final result follows (long-running kinds).
    Accepted,
    /// Done.
    Succeeded,
    /// Run, but it did not work (`reason` says why).
    Failed,
    /// Not run: expired, unknown kind, malformed, bad target, bad signature, quota, ...
    Refused,
}

impl Outcome {
    /// Whether nothing follows this outcome.
    pub fn is_final(self) -> bool {
        !matches!(self, Outcome::Accepted)
    }

    /// The name used in JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

/// What the box reports about one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// The command's id.
    pub id: String,
    pub outcome: Outcome,
    /// Machine-readable reason of a refusal ([`code`]) or failure; empty when it worked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// Why, in words (empty when it worked).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When the box decided this outcome, milliseconds since the Unix epoch (box clock).
    pub at_ms: i64,
    /// Kind-specific result data (progress of an accepted download, the status asked for, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl CommandResult {
    /// A result with no code, reason or detail.
    pub fn new(id: &str, outcome: Outcome, at_ms: i64) -> CommandResult {
        CommandResult {
            id: id.into(),
            outcome,
            code: String::new(),
            reason: String::new(),
            at_ms,
            detail: serde_json::Value::Null,
        }
    }

    /// A refusal with its code and reason.
    pub fn refused(id: &str, code: &str, reason: &str, at_ms: i64) -> CommandResult {
        CommandResult {
            code: code.into(),
            reason: cut(reason, MAX_REASON).into(),
            ..Self::new(id, Outcome::Refused, at_ms)
        }
    }

    /// Checks what a data center receives.
    pub fn check(&self) -> Result<(), String> {
        if !valid_id(&self.id) {
            return Err(format!("result id {:?} is not a command id", self.id));
        }
        if self.reason.len() > MAX_REASON {
            return Err(format!("reason of {} is longer than {MAX_REASON} bytes", self.id));
        }
        Ok(())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The box's side of an exchange: results not yet recorded by the data center.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    #[serde(default)]
    pub results: Vec<CommandResult>,
}

/// Which result the data center has durably recorded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Recorded {
    pub id: String,
    pub outcome: Outcome,
}

/// The data center's answer to an exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeAnswer {
    /// Commands for the box (decode each with [`Command::from_value`]).
    #[serde(default)]
    pub commands: Vec<serde_json::Value>,
    /// The results of the exchange that are stored; the box stops reporting them.
    #[serde(default)]
    pub recorded: Vec<Recorded>,
}

/// The answer to a batch upload: the acknowledgement, plus commands when there are any.
/// Without commands it is exactly the [`BatchAck`] JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAnswer {
    #[serde(flatten)]
    pub ack: BatchAck,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn good() -> serde_json::Value {
        json!({"id": "c-17", "kind": "status", "issued_ms": 1000, "expires_ms": 2000})
    }

    #[test]
    fn a_command_decodes_and_expires() {
        let c = Command::from_value(&good()).unwrap();
        assert_eq!(c.kind, "status");
        assert!(c.target.is_empty() && c.args.is_null());
        assert!(!c.expired_at(2000) && c.expired_at(2001));
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back, good(), "absent target and args stay absent");
    }

    #[test]
    fn malformed_commands_keep_their_id_when_readable() {
        let mut v = good();
        v.as_object_mut().unwrap().remove("expires_ms");
        let e = Command::from_value(&v).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("c-17"));
        assert!(e.reason.contains("expires_ms"), "{e}");

        let e = Command::from_value(&json!({"kind": "status"})).unwrap_err();
        assert_eq!(e, Malformed { id: None, reason: "command has no id".into() });
        let e = Command::from_value(&json!({"id": "a b", "kind": "status"})).unwrap_err();
        assert!(e.id.is_none() && e.reason.contains("is not 1 to 64"), "{e}");
        let e = Command::from_value(&json!(["not", "an", "object"])).unwrap_err();
        assert_eq!(e.id, None);

        let mut v = good();
        v["kind"] = json!("Download!");
        assert!(Command::from_value(&v).unwrap_err().reason.contains("kind \"Download!\""));
        let mut v = good();
        v["expires_ms"] = json!(10);
        assert!(Command::from_value(&v).unwrap_err().reason.contains("before issued_ms"));
        let mut v = good();
        v["target"] = json!(["has space"]);
        assert!(Command::from_value(&v).unwrap_err().reason.contains("not an instrument serial"));
        let mut v = good();
        v["surprise"] = json!(1);
        assert!(Command::from_value(&v).unwrap_err().reason.contains("surprise"));
        let mut v = good();
        v["args"] = json!("x".repeat(MAX_COMMAND_BYTES));
        assert!(Command::from_value(&v).unwrap_err().reason.contains("more than the limit"));
    }

    #[test]
    fn unknown_kinds_decode() {
        let mut v = good();
        v["kind"] = json!("make_coffee");
        assert_eq!(Command::from_value(&v).unwrap().kind, "make_coffee");
    }

    #[test]
    fn batch_answer_without_commands_is_the_plain_ack() {
        let a = BatchAnswer { ack: BatchAck { batch_id: 5, accepted: 3, duplicates: 1 }, commands: vec![] };
        let s = serde_json::to_string(&a).unwrap();
        assert_eq!(s, r#"{"batch_id":5,"accepted":3,"duplicates":1}"#);
        let plain: BatchAnswer = serde_json::from_str(&s).unwrap();
        assert_eq!(plain, a);
        let with = BatchAnswer { commands: vec![good()], ..a };
        let back: BatchAnswer = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back, with);
        let ack: BatchAck = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(ack.batch_id, 5, "an older box reads the ack and ignores the commands");
    }

    #[test]
    fn results_roundtrip_and_refusals_are_cut() {
        let r = CommandResult::refused("c-1", code::EXPIRED, &"é".repeat(2000), 5);
        assert!(r.reason.len() <= MAX_REASON);
        r.check().unwrap();
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""outcome":"refused""#) && s.contains(r#""code":"expired""#), "{s}");
        assert_eq!(serde_json::from_str::<CommandResult>(&s).unwrap(), r);
        let ok = CommandResult::new("c-2", Outcome::Succeeded, 9);
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"id":"c-2","outcome":"succeeded","at_ms":9}"#);
        assert!(!Outcome::Accepted.is_final() && Outcome::Refused.is_final());
    }
}
