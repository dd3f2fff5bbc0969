//! Trigger rules: the file format, loading and validation.
//!
//! Rules are data, kept in TOML files (one or more files, or a directory of `*.toml`), one
//! `[[rule]]` table per rule. `docs/datacenter.md` describes the format with examples;
//! in short:
//!
//! ```toml
//! [[rule]]
//! name = "reagent-low"            # unique across all files: letters, digits, - _ .
//! kind = "threshold"              # threshold | count | duration | absence
//! description = "Reagent below 10%"
//! severity = "warning"            # info | warning | critical (default warning)
//! kinds = ["status"]              # report kinds looked at (default: every kind)
//! instruments = ["DXI-*"]         # serial globs (default: every instrument)
//! boxes = ["*"]                   # box identity globs (default: every box)
//! field = "reagent_*"             # payload field, glob: each matching field on its own
//! below = 10                      # the test: below | above | outside | inside | equals | not_equals
//! clear_at = 12                   # threshold only: hysteresis, clears at >= 12 (below) / <= (above)
//! ```
//!
//! * `threshold`: a reading passes the test (`field` + one test). Clears when a newer
//!   reading no longer does (or reaches `clear_at`).
//! * `count`: `count` matching reports within `within` (`"1h"`), by instrument time. With a
//!   `field`, a report matches when it carries the field (and passes the test, if one is
//!   given) and, unless `same_value = false`, the reports must carry the same value (the
//!   same error code). Clears once `within` has passed on the data center's clock without
//!   another matching report.
//! * `duration`: the test held by every reading for at least `for` (`"5m"`), by instrument
//!   time. Clears at the first newer reading that does not pass.
//! * `absence`: no report from an instrument for `for` (`"15m"`), by the data center's clock
//!   (checked on every tick, not only when reports arrive). Clears when one arrives.
//!
//! Every error names the file, the rule (its position and name) and the key.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use rapwire::Kind;
use serde::Serialize;

use crate::fields::{glob_match, Value};

/// Longest rule name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest window or duration a rule may use (30 days).
pub const MAX_PERIOD_MS: i64 = 30 * 24 * 3600 * 1000;
/// Largest `count`.
pub const MAX_COUNT: u32 = 10_000;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Needs attention.
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// The name used in rule files and the API.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// What a value must be to match.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// A number strictly below.
    Below(f64),
    /// A number strictly above.
    Above(f64),
    /// A number below the low or above the high bound.
    Outside(f64, f64),
    /// A number within the bounds (inclusive).
    Inside(f64, f64),
    /// The text equals.
    Equals(String),
    /// The text differs.
    NotEquals(String),
    /// The field is there (count rules without a test).
    Present,
}

impl Test {
    /// Whether `v` passes. Numeric tests fail on values that are not numbers.
    pub fn passes(&self, v: &Value) -> bool {
        match self {
            Test::Below(t) => v.number.is_some_and(|n| n < *t),
            Test::Above(t) => v.number.is_some_and(|n| n > *t),
            Test::Outside(lo, hi) => v.number.is_some_and(|n| n < *lo || n > *hi),
            Test::Inside(lo, hi) => v.number.is_some_and(|n| n >= *lo && n <= *hi),
            Test::Equals(s) => v.text == *s,
            Test::NotEquals(s) => v.text != *s,
            Test::Present => true,
        }
    }

    /// Whether the test can only judge numbers.
    pub fn numeric(&self) -> bool {
        matches!(self, Test::Below(_) | Test::Above(_) | Test::Outside(..) | Test::Inside(..))
    }

    /// The test in words, as shown in alerts (`below 10`, `outside [36, 38]`).
    pub fn describe(&self) -> String {
        match self {
            Test::Below(t) => format!("below {t}"),
            Test::Above(t) => format!("above {t}"),
            Test::Outside(lo, hi) => format!("outside [{lo}, {hi}]"),
            Test::Inside(lo, hi) => format!("inside [{lo}, {hi}]"),
            Test::Equals(s) => format!("equal to {s:?}"),
            Test::NotEquals(s) => format!("not equal to {s:?}"),
            Test::Present => "present".to_owned(),
        }
    }
}

/// Which reports a rule looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Selector {
    /// Box identity globs; empty: every box.
    pub boxes: Vec<String>,
    /// Instrument serial globs; empty: every instrument. The box's own records (serial "")
    /// are only looked at when a pattern is exactly `""`.
    pub instruments: Vec<String>,
    /// Report kinds; empty: every kind.
    pub kinds: Vec<Kind>,
}

impl Selector {
    /// Whether a report of `kind` from `instrument` on `box_id` is looked at.
    pub fn selects(&self, box_id: &str, instrument: &str, kind: Kind) -> bool {
        self.selects_source(box_id, instrument) && (self.kinds.is_empty() || self.kinds.contains(&kind))
    }

    /// Whether `instrument` on `box_id` is looked at (whatever the kind).
    pub fn selects_source(&self, box_id: &str, instrument: &str) -> bool {
        let instrument_ok = if instrument.is_empty() {
            self.instruments.iter().any(String::is_empty)
        } else {
            self.instruments.is_empty() || self.instruments.iter().any(|p| glob_match(p, instrument))
        };
        instrument_ok && (self.boxes.is_empty() || self.boxes.iter().any(|p| glob_match(p, box_id)))
    }
}

/// What makes a rule fire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    /// A reading passes `test`.
    Threshold {
        /// Field name or glob.
        field: String,
        /// The test.
        test: Test,
        /// Hysteresis: the alert clears only once the reading is at or past this value.
        clear_at: Option<f64>,
    },
    /// `count` matching reports within `within_ms` (instrument time).
    Count {
        /// Field that must be present (and pass `test`); `None`: every selected report.
        field: Option<String>,
        /// The test on the field.
        test: Test,
        /// Count separately per value of the field.
        same_value: bool,
        /// How many.
        count: u32,
        /// The window, in milliseconds.
        within_ms: i64,
    },
    /// Every reading passes `test` for at least `for_ms` (instrument time).
    Duration {
        /// Field name or glob.
        field: String,
        /// The test.
        test: Test,
        /// How long, in milliseconds.
        for_ms: i64,
    },
    /// No report for `for_ms` (data center time).
    Absence {
        /// How long, in milliseconds.
        for_ms: i64,
    },
}

/// The kinds of rules, by name.
pub const RULE_KINDS: [&str; 4] = ["threshold", "count", "duration", "absence"];

impl Condition {
    /// `threshold`, `count`, `duration` or `absence`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Condition::Threshold { .. } => "threshold",
            Condition::Count { .. } => "count",
            Condition::Duration { .. } => "duration",
            Condition::Absence { .. } => "absence",
        }
    }

    /// The condition in words (`reagent_* below 10`, `3 × alarm (same value) within 1h`).
    pub fn describe(&self) -> String {
        match self {
            Condition::Threshold { field, test, clear_at } => {
                let mut s = format!("{field} {}", test.describe());
                if let Some(c) = clear_at {
                    let _ = write!(s, " (clears at {c})");
                }
                s
            }
            Condition::Count { field, test, same_value, count, within_ms } => {
                let what = match (field, test) {
                    (None, _) => "report".to_owned(),
                    (Some(f), Test::Present) => f.clone(),
                    (Some(f), t) => format!("{f} {}", t.describe()),
                };
                let same = if *same_value { " (same value)" } else { "" };
                format!("{count} × {what}{same} within {}", format_period(*within_ms))
            }
            Condition::Duration { field, test, for_ms } => {
                format!("{field} {} for {}", test.describe(), format_period(*for_ms))
            }
            Condition::Absence { for_ms } => format!("no report for {}", format_period(*for_ms)),
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// Unique name (the alert's `rule`).
    pub name: String,
    /// What the rule watches for, in words.
    pub description: String,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Which reports it looks at.
    pub select: Selector,
    /// What makes it fire.
    pub condition: Condition,
    /// The file it came from.
    #[serde(skip)]
    pub source: PathBuf,
}

impl Rule {
    /// A stable fingerprint of everything that decides the rule's behaviour (not its file):
    /// FNV-1a over its JSON form. Evaluation state of a rule whose fingerprint changed is
    /// discarded.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in json.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Why rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A file or directory could not be read.
    #[error("cannot read rules {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key is missing, unknown or has a bad value.
    #[error("{path}: {rule}: {key}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `rule 2 ("reagent-low")`, or `top level`.
        rule: String,
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// Two rules have the same name.
    #[error("rule name {name:?} is used twice: in {first} and in {second}")]
    Duplicate {
        /// The name.
        name: String,
        /// Where it was first defined.
        first: PathBuf,
        /// Where again.
        second: PathBuf,
    },
}

/// The rules in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// Loads every path: a file, or a directory whose `*.toml` files are read in name order.
    pub fn load(paths: &[PathBuf]) -> Result<RuleSet, RulesError> {
        let mut files = Vec::new();
        for p in paths {
            let meta = fs::metadata(p).map_err(|source| RulesError::Read { path: p.clone(), source })?;
            if meta.is_dir() {
                let mut in_dir = Vec::new();
                for entry in fs::read_dir(p).map_err(|source| RulesError::Read { path: p.clone(), source })? {
                    let entry = entry.map_err(|source| RulesError::Read { path: p.clone(), source })?;
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                        in_dir.push(path);
                    }
                }
                in_dir.sort();
                files.extend(in_dir);
            } else {
                files.push(p.clone());
            }
        }
        let mut set = RuleSet::default();
        for f in files {
            let text = fs::read_to_string(&f).map_err(|source| RulesError::Read { path: f.clone(), source })?;
            set.extend(RuleSet::parse(&f, &text)?)?;
        }
        Ok(set)
    }

    /// Parses one file's text; `path` is only used in messages and as the rules' source.
    pub fn parse(path: &Path, text: &str) -> Result<RuleSet, RulesError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| RulesError::Syntax { path: path.to_owned(), message: e.to_string() })?;
        let top = |key: &str, why: String| RulesError::Invalid {
            path: path.to_owned(),
            rule: "top level".to_owned(),
            key: key.to_owned(),
            why,
        };
        let mut set = RuleSet::default();
        for (key, value) in table {
            if key != "rule" {
                return Err(top(&key, "unknown key (a rules file holds only [[rule]] tables)".to_owned()));
            }
            let toml::Value::Array(items) = value else {
                return Err(top("rule", "must be an array of tables: write each rule as [[rule]]".to_owned()));
            };
            for (i, item) in items.into_iter().enumerate() {
                let toml::Value::Table(t) = item else {
                    return Err(top("rule", format!("entry {} is not a table", i + 1)));
                };
                let rule = parse_rule(path, i + 1, t)?;
                set.extend(RuleSet { rules: vec![rule] })?;
            }
        }
        Ok(set)
    }

    fn extend(&mut self, other: RuleSet) -> Result<(), RulesError> {
        for r in other.rules {
            if let Some(first) = self.rules.iter().find(|x| x.name == r.name) {
                return Err(RulesError::Duplicate {
                    name: r.name.clone(),
                    first: first.source.clone(),
                    second: r.source.clone(),
                });
            }
            self.rules.push(r);
        }
        Ok(())
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule called `name`.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

const COMMON_KEYS: [&str; 7] = ["name", "kind", "description", "severity", "boxes", "instruments", "kinds"];
const TEST_KEYS: [&str; 6] = ["below", "above", "outside", "inside", "equals", "not_equals"];

fn keys_for(kind: &str) -> &'static [&'static str] {
    match kind {
        "threshold" => &["field", "below", "above", "outside", "inside", "equals", "not_equals", "clear_at"],
        "count" => {
            &["field", "below", "above", "outside", "inside", "equals", "not_equals", "same_value", "count", "within"]
        }
        "duration" => &["field", "below", "above", "outside", "inside", "equals", "not_equals", "for"],
        _ => &["for"],
    }
}

/// Reads one `[[rule]]` table, naming the key of every error.
struct RuleReader<'a> {
    path: &'a Path,
    label: String,
    table: toml::Table,
}

impl RuleReader<'_> {
    fn err(&self, key: &str, why: impl Into<String>) -> RulesError {
        RulesError::Invalid {
            path: self.path.to_owned(),
            rule: self.label.clone(),
            key: key.to_owned(),
            why: why.into(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, RulesError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(key, format!("expected a string, found {}", v.type_str()))),
        }
    }

    fn required_string(&self, key: &str) -> Result<String, RulesError> {
        self.string(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    fn number(&self, key: &str) -> Result<Option<f64>, RulesError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(toml::Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
            Some(toml::Value::Float(f)) => Err(self.err(key, format!("{f} is not a finite number"))),
            Some(v) => Err(self.err(key, format!("expected a number, found {}", v.type_str()))),
        }
    }

    fn range(&self, key: &str) -> Result<Option<(f64, f64)>, RulesError> {
        let Some(v) = self.table.get(key) else { return Ok(None) };
        let bad = || self.err(key, "expected two numbers [low, high] with low < high");
        let toml::Value::Array(items) = v else { return Err(bad()) };
        let nums: Vec<f64> = items
            .iter()
            .map(|i| match i {
                toml::Value::Integer(n) => Some(*n as f64),
                toml::Value::Float(f) if f.is_finite() => Some(*f),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        match nums[..] {
            [lo, hi] if lo < hi => Ok(Some((lo, hi))),
            _ => Err(bad()),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, RulesError> {
        match self.table.get(key) {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(items)) => {
                let out: Option<Vec<String>> = items.iter().map(|i| i.as_str().map(str::to_owned)).collect();
                match out {
                    Some(v) if !v.is_empty() => Ok(v),
                    Some(_) => Err(self.err(key, "empty list (leave the key out to select everything)")),
                    None => Err(self.err(key, "expected a list of strings")),
                }
            }
            Some(v) => Err(self.err(key, format!("expected a list of strings, found {}", v.type_str()))),
        }
    }

    fn period(&self, key: &str) -> Result<Option<i64>, RulesError> {
        let Some(v) = self.table.get(key) else { return Ok(None) };
        let Some(s) = v.as_str() else {
            return Err(self.err(key, format!("expected a duration string such as \"5m\", found {}", v.type_str())));
        };
        let ms = parse_period(s).map_err(|why| self.err(key, format!("{s:?}: {why}")))?;
        if ms > MAX_PERIOD_MS {
            return Err(self.err(key, format!("{s:?} is longer than 30 days")));
        }
        Ok(Some(ms))
    }

    fn required_period(&self, key: &str) -> Result<i64, RulesError> {
        self.period(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    /// The test keys given (at most one allowed).
    fn test(&self) -> Result<Option<Test>, RulesError> {
        let given: Vec<&str> = TEST_KEYS.iter().copied().filter(|k| self.table.contains_key(*k)).collect();
        if given.len() > 1 {
            return Err(self.err(given[1], format!("only one test per rule, and {} is already given", given[0])));
        }
        let Some(&key) = given.first() else { return Ok(None) };
        let num = |k| self.number(k).map(|n| n.unwrap_or_default());
        let range = |k| self.range(k).map(|r| r.unwrap_or_default());
        Ok(Some(match key {
            "below" => Test::Below(num(key)?),
            "above" => Test::Above(num(key)?),
            "outside" => {
                let (lo, hi) = range(key)?;
                Test::Outside(lo, hi)
            }
            "inside" => {
                let (lo, hi) = range(key)?;
                Test::Inside(lo, hi)
            }
            "equals" => Test::Equals(self.required_string(key)?),
            _ => Test::NotEquals(self.required_string(key)?),
        }))
    }

    fn field(&self) -> Result<Option<String>, RulesError> {
        let Some(f) = self.string("field")? else { return Ok(None) };
        if f.is_empty() || f.chars().any(|c| c.is_whitespace() || c == '=' || c == ';') {
            return Err(self.err("field", format!("{f:?} is not a field name (no spaces, '=' or ';')")));
        }
        Ok(Some(f))
    }
}

fn parse_rule(path: &Path, index: usize, table: toml::Table) -> Result<Rule, RulesError> {
    let mut r = RuleReader { path, label: format!("rule {index}"), table };
    let name = r.required_string("name")?;
    r.label = format!("rule {index} ({name:?})");
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(r.err("name", format!("must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'")));
    }
    let kind = r.required_string("kind")?;
    if !RULE_KINDS.contains(&kind.as_str()) {
        return Err(r.err("kind", format!("{kind:?} is not one of {}", RULE_KINDS.join(", "))));
    }
    let allowed = keys_for(&kind);
    for key in r.table.keys() {
        if !COMMON_KEYS.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
            let why = if RULE_KINDS.iter().any(|k| keys_for(k).contains(&key.as_str())) {
                format!("not used by {kind} rules")
            } else {
                "unknown key".to_owned()
            };
            return Err(r.err(key, why));
        }
    }
    let severity = match r.string("severity")? {
        None => Severity::Warning,
        Some(s) => Severity::parse(&s)
            .ok_or_else(|| r.err("severity", format!("{s:?} is not one of info, warning, critical")))?,
    };
    let kinds = r
        .strings("kinds")?
        .into_iter()
        .map(|k| {
            (1..=u8::MAX).filter_map(Kind::from_u8).find(|x| x.name() == k).ok_or_else(|| {
                r.err(
                    "kinds",
                    format!("{k:?} is not a report kind (status, alarm, event, qc_result, log, audit, box_event)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let select = Selector { boxes: r.strings("boxes")?, instruments: r.strings("instruments")?, kinds };
    let description = r.string("description")?.unwrap_or_default();

    let condition = match kind.as_str() {
        "threshold" => {
            let field = r.field()?.ok_or_else(|| r.err("field", "missing"))?;
            let test =
                r.test()?.ok_or_else(|| r.err("below", format!("missing: give one of {}", TEST_KEYS.join(", "))))?;
            let clear_at = r.number("clear_at")?;
            if let Some(c) = clear_at {
                match test {
                    Test::Below(t) if c < t => {
                        return Err(r.err("clear_at", format!("{c} must be at least below = {t}")))
                    }
                    Test::Above(t) if c > t => {
                        return Err(r.err("clear_at", format!("{c} must be at most above = {t}")))
                    }
                    Test::Below(_) | Test::Above(_) => {}
                    _ => return Err(r.err("clear_at", "only with below or above")),
                }
            }
            Condition::Threshold { field, test, clear_at }
        }
        "count" => {
            let field = r.field()?;
            let test = r.test()?;
            let same = r.table.get("same_value");
            let same_value = match same {
                None => field.is_some(),
                Some(toml::Value::Boolean(b)) => *b,
                Some(v) => return Err(r.err("same_value", format!("expected true or false, found {}", v.type_str()))),
            };
            if field.is_none() {
                if let Some(t) = TEST_KEYS.iter().find(|k| r.table.contains_key(**k)) {
                    return Err(r.err(t, "a test needs a field"));
                }
                if same_value {
                    return Err(r.err("same_value", "needs a field"));
                }
            }
            let count = match r.table.get("count") {
                None => return Err(r.err("count", "missing")),
                Some(toml::Value::Integer(n)) if (1..=i64::from(MAX_COUNT)).contains(n) => *n as u32,
                Some(toml::Value::Integer(n)) => {
                    return Err(r.err("count", format!("expected a whole number from 1 to {MAX_COUNT}, found {n}")))
                }
                Some(v) => {
                    return Err(r.err(
                        "count",
                        format!("expected a whole number from 1 to {MAX_COUNT}, found {}", v.type_str()),
                    ))
                }
            };
            let within_ms = r.required_period("within")?;
            Condition::Count { field, test: test.unwrap_or(Test::Present), same_value, count, within_ms }
        }
        "duration" => {
            let field = r.field()?.ok_or_else(|| r.err("field", "missing"))?;
            let test =
                r.test()?.ok_or_else(|| r.err("outside", format!("missing: give one of {}", TEST_KEYS.join(", "))))?;
            Condition::Duration { field, test, for_ms: r.required_period("for")? }
        }
        _ => Condition::Absence { for_ms: r.required_period("for")? },
    };
    Ok(Rule { name, description, severity, select, condition, source: path.to_owned() })
}

/// Parses `"15m"`, `"1h30m"`, `"90s"`, `"250ms"`, `"2d"` into milliseconds (more than 0).
pub fn parse_period(s: &str) -> Result<i64, &'static str> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration");
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err("expected a number before each unit (d, h, m, s, ms)");
        }
        let n: i64 = s[start..i].parse().map_err(|_| "number too large")?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms = match &s[ustart..i] {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => return Err("a unit is missing (d, h, m, s, ms)"),
            _ => return Err("unknown unit (d, h, m, s, ms)"),
        };
        total = n.checked_mul(unit_ms).and_then(|v| total.checked_add(v)).ok_or("duration too long")?;
    }
    if total == 0 {
        return Err("must be longer than zero");
    }
    Ok(total)
}

/// Milliseconds in the rule-file style: `1h`, `5m`, `4m59s`, `250ms`.
pub fn format_period(ms: i64) -> String {
    if ms <= 0 {
        return "0s".to_owned();
    }
    let mut rest = ms;
    let mut s = String::new();
    for (unit, len) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if rest >= len {
            let _ = write!(s, "{}{unit}", rest / len);
            rest %= len;
        }
    }
    s
}

/// A summary of the loaded rules per kind, for logs: `{"absence": 1, "threshold": 2}`.
pub fn count_by_kind(set: &RuleSet) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in set.rules() {
        *m.entry(r.condition.kind_name()).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuleSet, RulesError> {
        RuleSet::parse(Path::new("rules.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const FOUR: &str = r#"
        [[rule]]
        name = "reagent-low"
        kind = "threshold"
        description = "Reagent level below 10%"
        kinds = ["status"]
        field = "reagent_*"
        below = 10
        clear_at = 12

        [[rule]]
        name = "same-error-3-in-1h"
        kind = "count"
        severity = "critical"
        kinds = ["alarm"]
        field = "code"
        count = 3
        within = "1h"

        [[rule]]
        name = "temp-out-of-range"
        kind = "duration"
        field = "temp"
        outside = [36.0, 38]
        for = "5m"

        [[rule]]
        name = "silent"
        kind = "absence"
        instruments = ["DXI-*", "AU-*"]
        boxes = ["box-*"]
        for = "15m"
    "#;

    #[test]
    fn the_four_kinds() {
        let set = parse(FOUR).unwrap();
        assert_eq!(set.len(), 4);
        let r = set.get("reagent-low").unwrap();
        assert_eq!(r.severity, Severity::Warning);
        assert_eq!(r.select.kinds, vec![Kind::Status]);
        assert_eq!(
            r.condition,
            Condition::Threshold { field: "reagent_*".into(), test: Test::Below(10.0), clear_at: Some(12.0) }
        );
        assert_eq!(r.condition.describe(), "reagent_* below 10 (clears at 12)");
        let c = set.get("same-error-3-in-1h").unwrap();
        assert_eq!(c.severity, Severity::Critical);
        assert_eq!(
            c.condition,
            Condition::Count {
                field: Some("code".into()),
                test: Test::Present,
                same_value: true,
                count: 3,
                within_ms: 3_600_000
            }
        );
        assert_eq!(c.condition.describe(), "3 × code (same value) within 1h");
        let d = set.get("temp-out-of-range").unwrap();
        assert_eq!(
            d.condition,
            Condition::Duration { field: "temp".into(), test: Test::Outside(36.0, 38.0), for_ms: 300_000 }
        );
        let a = set.get("silent").unwrap();
        assert_eq!(a.condition, Condition::Absence { for_ms: 900_000 });
        assert!(a.select.selects_source("box-0001", "DXI-7"));
        assert!(!a.select.selects_source("box-0001", "XX-7"));
        assert!(!a.select.selects_source("lab-1", "DXI-7"));
        assert!(!a.select.selects_source("box-0001", ""), "the box's own records need an explicit \"\"");
        assert_eq!(count_by_kind(&set).get("count"), Some(&1));
    }

    #[test]
    fn selectors() {
        let all = Selector::default();
        assert!(all.selects("b", "X", Kind::Alarm));
        assert!(!all.selects("b", "", Kind::BoxEvent));
        let own = Selector { instruments: vec!["".into()], ..Default::default() };
        assert!(own.selects("b", "", Kind::BoxEvent));
        assert!(!own.selects("b", "X", Kind::Status));
        let kinds = Selector { kinds: vec![Kind::Alarm], ..Default::default() };
        assert!(kinds.selects("b", "X", Kind::Alarm) && !kinds.selects("b", "X", Kind::Status));
    }

    #[test]
    fn fingerprint_follows_behaviour_not_file() {
        let a = parse(FOUR).unwrap();
        let b = RuleSet::parse(Path::new("other.toml"), FOUR).unwrap();
        assert_eq!(a.rules()[0].fingerprint(), b.rules()[0].fingerprint());
        let changed = parse(&FOUR.replace("below = 10", "below = 11")).unwrap();
        assert_ne!(a.rules()[0].fingerprint(), changed.rules()[0].fingerprint());
        assert_eq!(a.rules()[1].fingerprint(), changed.rules()[1].fingerprint());
    }

    #[test]
    fn errors_name_file_rule_and_key() {
        let cases: &[(&str, &str)] = &[
            ("[[rule]]\nkind = \"absence\"\nfor = \"1m\"", "rules.toml: rule 1: name: missing"),
            ("[[rule]]\nname = \"a b\"\nkind = \"absence\"\nfor = \"1m\"", "rule 1 (\"a b\"): name: must be"),
            ("[[rule]]\nname = \"x\"\nkind = \"sometimes\"", "rule 1 (\"x\"): kind: \"sometimes\" is not one of threshold, count, duration, absence"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"", "rule 1 (\"x\"): for: missing"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"15\"", "for: \"15\": a unit is missing"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = 15", "for: expected a duration string such as \"5m\", found integer"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"0s\"", "for: \"0s\": must be longer than zero"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"31d\"", "longer than 30 days"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"1m\"\nbelow = 3", "rule 1 (\"x\"): below: not used by absence rules"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"1m\"\nblow = 3", "blow: unknown key"),
            ("[[rule]]\nname = \"x\"\nkind = \"threshold\"\nbelow = 3", "field: missing"),
            ("[[rule]]\nname = \"x\"\nkind = \"threshold\"\nfield = \"t\"", "below: missing: give one of below, above"),
            ("[[rule]]\nname = \"x\"\nkind = \"threshold\"\nfield = \"t\"\nbelow = \"ten\"", "below: expected a number, found string"),
            ("[[rule]]\nname = \"x\"\nkind = \"threshold\"\nfield = \"t\"\nbelow = 3\nabove = 5", "above: only one test per rule, and below is already given"),
            ("[[rule]]\nname = \"x\"\nkind = \"threshold\"\nfield = \"t\"\nbelow = 10\nclear_at = 9", "clear_at: 9 must be at least below = 10"),
            ("[[rule]]\nname = \"x\"\nkind = \"threshold\"\nfield = \"t\"\nequals = \"open\"\nclear_at = 9", "clear_at: only with below or above"),
            ("[[rule]]\nname = \"x\"\nkind = \"threshold\"\nfield = \"a b\"\nbelow = 1", "field: \"a b\" is not a field name"),
            ("[[rule]]\nname = \"x\"\nkind = \"duration\"\nfield = \"t\"\noutside = [38, 36]\nfor = \"5m\"", "outside: expected two numbers [low, high] with low < high"),
            ("[[rule]]\nname = \"x\"\nkind = \"duration\"\nfield = \"t\"\noutside = [1, 2, 3]\nfor = \"5m\"", "outside: expected two numbers"),
            ("[[rule]]\nname = \"x\"\nkind = \"count\"\nwithin = \"1h\"", "count: missing"),
            ("[[rule]]\nname = \"x\"\nkind = \"count\"\ncount = 0\nwithin = \"1h\"", "count: expected a whole number from 1 to 10000, found 0"),
            ("[[rule]]\nname = \"x\"\nkind = \"count\"\ncount = 3", "within: missing"),
            ("[[rule]]\nname = \"x\"\nkind = \"count\"\ncount = 3\nwithin = \"1h\"\nbelow = 2", "below: a test needs a field"),
            ("[[rule]]\nname = \"x\"\nkind = \"count\"\ncount = 3\nwithin = \"1h\"\nsame_value = true", "same_value: needs a field"),
            ("[[rule]]\nname = \"x\"\nkind = \"count\"\ncount = 3\nwithin = \"1h\"\nfield = \"c\"\nsame_value = 1", "same_value: expected true or false"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"1m\"\nseverity = \"high\"", "severity: \"high\" is not one of info, warning, critical"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"1m\"\nkinds = [\"alarms\"]", "kinds: \"alarms\" is not a report kind"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"1m\"\ninstruments = []", "instruments: empty list"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"1m\"\nboxes = \"box-1\"", "boxes: expected a list of strings, found string"),
            ("[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"1m\"\n[[rule]]\nname = \"x\"\nkind = \"absence\"\nfor = \"2m\"", "rule name \"x\" is used twice: in rules.toml and in rules.toml"),
            ("rules = 1", "rules.toml: top level: rules: unknown key"),
            ("[rule]\nname = \"x\"", "top level: rule: must be an array of tables"),
            ("[[rule]\nname = ", "rules.toml: TOML parse error at line 1"),
        ];
        for (text, expect) in cases {
            let e = err(text);
            assert!(e.contains(expect), "{text:?}\n  gave: {e}\n  want: {expect}");
        }
    }

    #[test]
    fn loads_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.toml"), "[[rule]]\nname = \"b\"\nkind = \"absence\"\nfor = \"1m\"\n")
            .unwrap();
        std::fs::write(dir.path().join("a.toml"), "[[rule]]\nname = \"a\"\nkind = \"absence\"\nfor = \"1m\"\n")
            .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not rules").unwrap();
        let set = RuleSet::load(&[dir.path().to_owned()]).unwrap();
        assert_eq!(set.rules().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(set.get("a").unwrap().source, dir.path().join("a.toml"));

        let dup = dir.path().join("dup.toml");
        std::fs::write(&dup, "[[rule]]\nname = \"a\"\nkind = \"absence\"\nfor = \"2m\"\n").unwrap();
        let e = RuleSet::load(&[dir.path().join("a.toml"), dup.clone()]).unwrap_err().to_string();
        assert!(e.contains("\"a\" is used twice") && e.contains("a.toml") && e.contains("dup.toml"), "{e}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[rule]]\nname = \"q\"\nkind = \"threshold\"\nfield = \"t\"\n").unwrap();
        let e = RuleSet::load(&[bad]).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: rule 1 (\"q\"): below: missing", dir.path().join("bad.toml").display())),
            "{e}"
        );

        let e = RuleSet::load(&[dir.path().join("missing.toml")]).unwrap_err().to_string();
        assert!(e.contains("cannot read rules") && e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn periods() {
        assert_eq!(parse_period("15m"), Ok(900_000));
        assert_eq!(parse_period("1h30m"), Ok(5_400_000));
        assert_eq!(parse_period("4m59s"), Ok(299_000));
        assert_eq!(parse_period("250ms"), Ok(250));
        assert_eq!(parse_period("2d"), Ok(172_800_000));
        assert!(parse_period("").is_err());
        assert!(parse_period("m").is_err());
        assert!(parse_period("5 m").is_err());
        assert!(parse_period("5w").is_err());
        assert!(parse_period("99999999999999999999s").is_err());
        assert_eq!(format_period(299_000), "4m59s");
        assert_eq!(format_period(3_600_000), "1h");
        assert_eq!(format_period(90_061_001), "1d1h1m1s1ms");
    }

    #[test]
    fn tests_on_values() {
        let v = |s: &str| Value::from_text(s);
        assert!(Test::Below(10.0).passes(&v("9.9%")));
        assert!(!Test::Below(10.0).passes(&v("10%")), "the threshold itself is not below");
        assert!(!Test::Below(10.0).passes(&v("low")), "text is never below a number");
        assert!(Test::Above(38.0).passes(&v("38.1")));
        assert!(Test::Outside(36.0, 38.0).passes(&v("35.9")) && Test::Outside(36.0, 38.0).passes(&v("38.01")));
        assert!(!Test::Outside(36.0, 38.0).passes(&v("36")) && !Test::Outside(36.0, 38.0).passes(&v("38")));
        assert!(Test::Inside(36.0, 38.0).passes(&v("38")));
        assert!(Test::Equals("open".into()).passes(&v("open")) && !Test::Equals("open".into()).passes(&v("Open")));
        assert!(Test::NotEquals("0".into()).passes(&v("E201")) && !Test::NotEquals("0".into()).passes(&v("0")));
        assert!(Test::Present.passes(&v("")));
    }
}
