//! The trigger engine: evaluates the [rules](crate::rules) on stored reports and raises,
//! repeats and clears [alerts](crate::api::Alert).
//!
//! Evaluation follows the store, not the HTTP request: after a batch is stored the backend
//! wakes the engine, which reads the reports after its cursor in arrival order and, in one
//! transaction ([`Store::trigger_tx`]), updates the per-unit state, writes alerts and
//! moves the cursor. A crash between a batch's acknowledgement and its evaluation only
//! delays the evaluation to the next start. A clock tick (every few seconds, and on
//! [`Engine::tick`]) checks what only time can tell: silent instruments (`absence`) and
//! count alerts whose window has passed.
//!
//! A *unit* is `(rule, box, instrument, key)`: the key is the field for threshold and
//! duration rules (a glob such as `reagent_*` gives one unit per matching field), the
//! repeated value for count rules with `same_value`, and "" otherwise. A unit has at most
//! one open alert; while it is open, further matches count as repeats of it.
//!
//! Time: threshold, duration and count rules judge readings by the instrument's timestamp
//! (a backlog delivered after an outage is judged by when it happened); absence and the
//! clearing of count alerts use the data center's [`Clock`]. Within a page of reports each
//! instrument's reports are taken in timestamp order. Threshold and duration rules follow
//! the newest reading: one older than a reading already evaluated for the unit is counted
//! in `late_readings` and otherwise ignored. Count rules count every matching report by its
//! timestamp, late ones included.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::api::{Evidence, EvidenceReport, Report, RuleInfo, TriggerStatus, MAX_EVIDENCE_REPORTS};
use crate::clock::{format_utc, Clock};
use crate::fields::{Fields, Value};
use crate::rules::{format_period, Condition, Rule, RuleSet, Test};
use crate::store::{NewAlert, Store, StoreError, TriggerTx};

/// Reports read per evaluation transaction.
pub const PAGE: u32 = 2000;

/// What one call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Reports evaluated.
    pub reports: u64,
    /// Alerts raised.
    pub raised: u64,
    /// Alerts cleared.
    pub cleared: u64,
}

impl std::ops::AddAssign for Pass {
    fn add_assign(&mut self, o: Pass) {
        self.reports += o.reports;
        self.raised += o.raised;
        self.cleared += o.cleared;
    }
}

/// The evaluation state of one unit, stored as JSON in `trigger_state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct UnitState {
    /// The unit's open alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open: Option<u64>,
    /// Newest instrument time evaluated (threshold, duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    newest_ts: Option<i64>,
    /// Count: the newest matching reports, by timestamp. Duration: the first and the last
    /// reading of the current run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<EvidenceReport>,
    /// Duration: readings in the current run.
    #[serde(default)]
    samples: u64,
    /// Duration: smallest value of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min: Option<f64>,
    /// Duration: largest value of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<f64>,
    /// Count and absence: data center time of the latest matching report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_rx_ms: Option<i64>,
    /// Absence: the latest report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<EvidenceReport>,
}

/// The units of one `(rule, box, instrument)` loaded in a pass, with a dirty flag.
type Units = BTreeMap<String, (UnitState, bool)>;

/// The trigger engine. Shared behind an `Arc`; calls are serialized.
#[derive(Debug)]
pub struct Engine {
    rules: RuleSet,
    clock: Arc<dyn Clock>,
    late: AtomicU64,
    serial: Mutex<()>,
}

fn evidence_of(r: &Report, field: Option<&str>, value: Option<&Value>) -> EvidenceReport {
    EvidenceReport {
        report_id: Some(r.id),
        msg_id: Some(r.msg_id),
        timestamp_ms: r.timestamp_ms,
        received_ms: r.received_ms,
        kind: Some(r.kind),
        field: field.map(str::to_owned),
        value: value.map(|v| v.text.clone()),
    }
}

fn parse_state(json: &str) -> UnitState {
    // A state this build cannot read (written by another version) starts over.
    serde_json::from_str(json).unwrap_or_default()
}

fn state_json(s: &UnitState) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "{}".to_owned())
}

fn fmt_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One evaluation transaction.
struct Ctx<'t, 'c> {
    tx: &'t TriggerTx<'c>,
    now: i64,
    pass: Pass,
    late: u64,
}

impl Ctx<'_, '_> {
    fn raise(
        &mut self,
        rule: &Rule,
        box_id: &str,
        instrument: &str,
        key: &str,
        summary: String,
        evidence: Evidence,
    ) -> Result<u64, StoreError> {
        let id = self.tx.raise(&NewAlert {
            rule: &rule.name,
            rule_kind: rule.condition.kind_name(),
            severity: rule.severity,
            box_id,
            instrument,
            key,
            summary,
            evidence,
            now_ms: self.now,
        })?;
        self.pass.raised += 1;
        log::info!("alert {id} raised: rule {} on {box_id}/{instrument} {key}", rule.name);
        Ok(id)
    }

    fn clear(&mut self, rule: &Rule, id: u64, reason: &str, by: Option<&EvidenceReport>) -> Result<(), StoreError> {
        self.tx.clear(id, self.now, reason, by)?;
        self.pass.cleared += 1;
        log::info!("alert {id} cleared: rule {}: {reason}", rule.name);
        Ok(())
    }
}

impl Engine {
    /// An engine for `rules`, telling time by `clock` (use the store's, [`Store::clock`]).
    pub fn new(rules: RuleSet, clock: Arc<dyn Clock>) -> Engine {
        Engine { rules, clock, late: AtomicU64::new(0), serial: Mutex::new(()) }
    }

    /// The rules in force.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    fn serial(&self) -> std::sync::MutexGuard<'_, ()> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reconciles the stored state with the rules: a rule that is gone or whose
    /// fingerprint changed loses its state, and its open alerts are cleared (with the
    /// reason); the fingerprints of the rules in force are recorded. When rules are loaded
    /// into a data center that ran without any, evaluation starts after the newest stored
    /// report. Call once at start.
    pub fn prepare(&self, store: &Store) -> Result<(), StoreError> {
        let _serial = self.serial();
        let now = self.clock.now_ms();
        store.trigger_tx(|tx| {
            let known = tx.rule_fingerprints()?;
            if known.is_empty() && !self.rules.is_empty() {
                let newest = tx.max_report_id()?;
                tx.set_evaluated(newest)?;
            }
            for (name, fp) in known {
                let reason = match self.rules.get(&name) {
                    None => "rule no longer loaded",
                    Some(r) if r.fingerprint() != fp => "rule changed",
                    Some(_) => continue,
                };
                for (id, ..) in tx.open_alerts_of_rule(&name)? {
                    tx.clear(id, now, reason, None)?;
                }
                tx.forget_rule(&name)?;
                log::info!("trigger rule {name}: {reason}; its state was discarded");
            }
            for r in self.rules.rules() {
                tx.set_rule_fingerprint(&r.name, &r.fingerprint())?;
            }
            Ok(())
        })
    }

    /// Evaluates every report stored after the cursor, page by page. Without rules it does
    /// nothing (and writes nothing).
    pub fn evaluate(&self, store: &Store) -> Result<Pass, StoreError> {
        let _serial = self.serial();
        self.evaluate_locked(store)
    }

    fn evaluate_locked(&self, store: &Store) -> Result<Pass, StoreError> {
        let mut total = Pass::default();
        if self.rules.is_empty() {
            return Ok(total);
        }
        loop {
            let (pass, late, more) = store.trigger_tx(|tx| {
                let (cursor, _) = tx.progress()?;
                let reports = tx.reports_after(cursor, PAGE)?;
                let Some(last) = reports.last().map(|r| r.id) else {
                    return Ok((Pass::default(), 0, false));
                };
                let mut ctx = Ctx { tx, now: self.clock.now_ms(), pass: Pass::default(), late: 0 };
                self.apply_reports(&mut ctx, reports)?;
                tx.set_evaluated(last)?;
                Ok((ctx.pass, ctx.late, true))
            })?;
            self.late.fetch_add(late, Ordering::Relaxed);
            total += pass;
            if !more {
                return Ok(total);
            }
        }
    }

    fn apply_reports(&self, ctx: &mut Ctx<'_, '_>, mut reports: Vec<Report>) -> Result<(), StoreError> {
        reports.sort_by(|a, b| {
            (&a.box_id, &a.instrument, a.timestamp_ms, a.id).cmp(&(&b.box_id, &b.instrument, b.timestamp_ms, b.id))
        });
        ctx.pass.reports = reports.len() as u64;
        let mut cache: HashMap<(usize, String, String), Units> = HashMap::new();
        for r in &reports {
            let mut fields: Option<Fields> = None;
            for (ri, rule) in self.rules.rules().iter().enumerate() {
                if !rule.select.selects(&r.box_id, &r.instrument, r.kind) {
                    continue;
                }
                let cache_key = (ri, r.box_id.clone(), r.instrument.clone());
                if !cache.contains_key(&cache_key) {
                    let loaded: Units = ctx
                        .tx
                        .states(&rule.name, &r.box_id, &r.instrument)?
                        .into_iter()
                        .map(|(k, json)| (k, (parse_state(&json), false)))
                        .collect();
                    cache.insert(cache_key.clone(), loaded);
                }
                let units =
                    cache.get_mut(&cache_key).ok_or(StoreError::BadAlert { id: 0, why: "state cache".into() })?;
                let fields = fields.get_or_insert_with(|| Fields::parse(&r.payload));
                self.apply(ctx, rule, units, r, fields)?;
            }
        }
        for ((ri, box_id, instrument), units) in cache {
            let rule = &self.rules.rules()[ri];
            for (key, (st, dirty)) in units {
                if dirty {
                    ctx.tx.put_state(&rule.name, &box_id, &instrument, &key, &state_json(&st))?;
                }
            }
        }
        Ok(())
    }

    fn apply(
        &self,
        ctx: &mut Ctx<'_, '_>,
        rule: &Rule,
        units: &mut Units,
        r: &Report,
        fields: &Fields,
    ) -> Result<(), StoreError> {
        match &rule.condition {
            Condition::Threshold { field, test, clear_at } => {
                for (name, v) in fields.matching(field) {
                    let (st, dirty) = units.entry(name.to_owned()).or_default();
                    if threshold(ctx, rule, st, r, name, v, test, *clear_at)? {
                        *dirty = true;
                    }
                }
            }
            Condition::Duration { field, test, for_ms } => {
                for (name, v) in fields.matching(field) {
                    let (st, dirty) = units.entry(name.to_owned()).or_default();
                    if duration(ctx, rule, st, r, name, v, test, *for_ms)? {
                        *dirty = true;
                    }
                }
            }
            Condition::Count { field, test, same_value, count, within_ms } => {
                let (key, ev) = match field {
                    None => (String::new(), evidence_of(r, None, None)),
                    Some(f) => {
                        let Some(v) = fields.get(f) else { return Ok(()) };
                        if !test.passes(v) {
                            return Ok(());
                        }
                        let key = if *same_value { v.text.clone() } else { String::new() };
                        (key, evidence_of(r, Some(f), Some(v)))
                    }
                };
                let (st, dirty) = units.entry(key.clone()).or_default();
                *dirty = true;
                count_rule(ctx, rule, st, r, &key, ev, *count, *within_ms)?;
            }
            Condition::Absence { .. } => {
                let (st, dirty) = units.entry(String::new()).or_default();
                *dirty = true;
                let ev = evidence_of(r, None, None);
                if st.last_rx_ms.is_none_or(|t| r.received_ms >= t) {
                    st.last_rx_ms = Some(r.received_ms);
                    st.last = Some(ev.clone());
                }
                if let Some(id) = st.open.take() {
                    let reason = format!("report {} arrived", r.id);
                    ctx.clear(rule, id, &reason, Some(&ev))?;
                }
            }
        }
        Ok(())
    }

    /// Evaluates pending reports, then checks what depends on time alone: instruments
    /// silent for an absence rule's period, and count alerts whose window has passed
    /// since their last matching report.
    pub fn tick(&self, store: &Store) -> Result<Pass, StoreError> {
        let _serial = self.serial();
        if self.rules.is_empty() {
            return Ok(Pass::default());
        }
        let mut total = self.evaluate_locked(store)?;
        let now = self.clock.now_ms();
        let pass = store.trigger_tx(|tx| {
            let mut ctx = Ctx { tx, now, pass: Pass::default(), late: 0 };
            let sources = tx.sources()?;
            for rule in self.rules.rules() {
                match &rule.condition {
                    Condition::Absence { for_ms } => self.check_absence(&mut ctx, rule, *for_ms, &sources)?,
                    Condition::Count { within_ms, .. } => {
                        for (id, box_id, instrument, key) in tx.open_alerts_of_rule(&rule.name)? {
                            let st = tx
                                .states(&rule.name, &box_id, &instrument)?
                                .into_iter()
                                .find(|(k, _)| *k == key)
                                .map(|(_, json)| parse_state(&json))
                                .unwrap_or_default();
                            let last = st.last_rx_ms.unwrap_or(i64::MIN);
                            if now.saturating_sub(last) >= *within_ms {
                                let reason = format!("no matching report for {}", format_period(*within_ms));
                                ctx.clear(rule, id, &reason, None)?;
                                tx.put_state(
                                    &rule.name,
                                    &box_id,
                                    &instrument,
                                    &key,
                                    &state_json(&UnitState::default()),
                                )?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            tx.set_last_tick(now)?;
            Ok(ctx.pass)
        })?;
        total += pass;
        Ok(total)
    }

    fn check_absence(
        &self,
        ctx: &mut Ctx<'_, '_>,
        rule: &Rule,
        for_ms: i64,
        sources: &[crate::store::Source],
    ) -> Result<(), StoreError> {
        // Latest arrival per instrument over the kinds the rule looks at.
        let mut latest: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
        for s in sources {
            let Some(kind) = rapwire::Kind::from_u8(s.kind) else { continue };
            if !rule.select.selects(&s.box_id, &s.instrument, kind) {
                continue;
            }
            let e = latest.entry((&s.box_id, &s.instrument)).or_insert((i64::MIN, i64::MIN));
            if s.last_received_ms > e.0 {
                *e = (s.last_received_ms, s.last_timestamp_ms);
            }
        }
        let states: HashMap<(String, String), UnitState> = ctx
            .tx
            .rule_states(&rule.name)?
            .into_iter()
            .filter(|(_, _, key, _)| key.is_empty())
            .map(|(b, i, _, json)| ((b, i), parse_state(&json)))
            .collect();
        for ((box_id, instrument), (last_rx, last_ts)) in latest {
            let mut st = states.get(&(box_id.to_owned(), instrument.to_owned())).cloned().unwrap_or_default();
            let last_rx = last_rx.max(st.last_rx_ms.unwrap_or(i64::MIN));
            let silence = ctx.now.saturating_sub(last_rx);
            if st.open.is_some() || silence < for_ms {
                continue;
            }
            let last = st.last.clone().filter(|l| l.received_ms >= last_rx).unwrap_or(EvidenceReport {
                report_id: None,
                msg_id: None,
                timestamp_ms: last_ts,
                received_ms: last_rx,
                kind: None,
                field: None,
                value: None,
            });
            let detail = match last.report_id {
                Some(id) => format!("last report {id} received {}", format_utc(last_rx)),
                None => format!("last report received {}", format_utc(last_rx)),
            };
            let evidence = Evidence {
                detail: format!("{detail}; silent for {} (rule: {})", format_period(silence), format_period(for_ms)),
                reports: vec![last],
                matched: 0,
                first_ms: None,
                last_ms: Some(last_ts),
                span_ms: Some(silence),
            };
            let summary = format!("no report for {}", format_period(silence));
            let id = ctx.raise(rule, box_id, instrument, "", summary, evidence)?;
            st.open = Some(id);
            st.last_rx_ms = Some(last_rx);
            ctx.tx.put_state(&rule.name, box_id, instrument, "", &state_json(&st))?;
        }
        Ok(())
    }

    /// The rules, their open alerts and where evaluation stands (without rules there is
    /// nothing to evaluate: every stored report counts as evaluated).
    pub fn status(&self, store: &Store) -> Result<TriggerStatus, StoreError> {
        let open = store.open_alert_counts()?;
        let mut progress = store.trigger_progress()?;
        if self.rules.is_empty() {
            progress.evaluated_report_id = progress.stored_report_id;
        }
        Ok(TriggerStatus {
            rules: self
                .rules
                .rules()
                .iter()
                .map(|r| RuleInfo {
                    name: r.name.clone(),
                    kind: r.condition.kind_name().to_owned(),
                    severity: r.severity,
                    description: r.description.clone(),
                    condition: r.condition.describe(),
                    open_alerts: open.get(&r.name).copied().unwrap_or(0),
                })
                .collect(),
            evaluated_report_id: progress.evaluated_report_id,
            stored_report_id: progress.stored_report_id,
            last_tick_ms: progress.last_tick_ms,
            late_readings: self.late.load(Ordering::Relaxed),
        })
    }
}

/// A threshold rule on one reading; returns whether the state changed.
#[allow(clippy::too_many_arguments)]
fn threshold(
    ctx: &mut Ctx<'_, '_>,
    rule: &Rule,
    st: &mut UnitState,
    r: &Report,
    field: &str,
    v: &Value,
    test: &Test,
    clear_at: Option<f64>,
) -> Result<bool, StoreError> {
    if test.numeric() && v.number.is_none() {
        return Ok(false);
    }
    if st.newest_ts.is_some_and(|t| r.timestamp_ms < t) {
        ctx.late += 1;
        return Ok(false);
    }
    st.newest_ts = Some(r.timestamp_ms);
    let ev = evidence_of(r, Some(field), Some(v));
    if test.passes(v) {
        match st.open {
            Some(id) => ctx.tx.repeat(id, ctx.now)?,
            None => {
                let summary = format!("{field}={} is {}", v.text, test.describe());
                let evidence = Evidence {
                    detail: format!("{summary} (report {}, instrument time {})", r.id, format_utc(r.timestamp_ms)),
                    reports: vec![ev],
                    matched: 1,
                    first_ms: Some(r.timestamp_ms),
                    last_ms: Some(r.timestamp_ms),
                    span_ms: None,
                };
                st.open = Some(ctx.raise(rule, &r.box_id, &r.instrument, field, summary, evidence)?);
            }
        }
        return Ok(true);
    }
    if let Some(id) = st.open {
        let n = v.number.unwrap_or(f64::NAN);
        let (clears, why) = match (test, clear_at) {
            (Test::Below(_), Some(c)) => (n >= c, format!("reached {}", fmt_num(c))),
            (Test::Above(_), Some(c)) => (n <= c, format!("came down to {}", fmt_num(c))),
            _ => (true, format!("is no longer {}", test.describe())),
        };
        if clears {
            let reason = format!("{field}={} in report {} {why}", v.text, r.id);
            ctx.clear(rule, id, &reason, Some(&ev))?;
            st.open = None;
        }
    }
    Ok(true)
}

/// A duration rule on one reading; returns whether the state changed.
#[allow(clippy::too_many_arguments)]
fn duration(
    ctx: &mut Ctx<'_, '_>,
    rule: &Rule,
    st: &mut UnitState,
    r: &Report,
    field: &str,
    v: &Value,
    test: &Test,
    for_ms: i64,
) -> Result<bool, StoreError> {
    if test.numeric() && v.number.is_none() {
        return Ok(false);
    }
    if st.newest_ts.is_some_and(|t| r.timestamp_ms < t) {
        ctx.late += 1;
        return Ok(false);
    }
    st.newest_ts = Some(r.timestamp_ms);
    let ev = evidence_of(r, Some(field), Some(v));
    if !test.passes(v) {
        st.events.clear();
        st.samples = 0;
        st.min = None;
        st.max = None;
        if let Some(id) = st.open.take() {
            let reason = format!("{field}={} in report {} is no longer {}", v.text, r.id, test.describe());
            ctx.clear(rule, id, &reason, Some(&ev))?;
        }
        return Ok(true);
    }
    if st.events.is_empty() {
        st.events = vec![ev.clone(), ev];
    } else {
        st.events.truncate(1);
        st.events.push(ev);
    }
    st.samples += 1;
    if let Some(n) = v.number {
        st.min = Some(st.min.map_or(n, |m| m.min(n)));
        st.max = Some(st.max.map_or(n, |m| m.max(n)));
    }
    let (first, last) = (st.events[0].timestamp_ms, st.events[1].timestamp_ms);
    let span = last - first;
    if span < for_ms {
        return Ok(true);
    }
    match st.open {
        Some(id) => ctx.tx.repeat(id, ctx.now)?,
        None => {
            let range = match (st.min, st.max) {
                (Some(lo), Some(hi)) if lo == hi => format!(", value {}", fmt_num(lo)),
                (Some(lo), Some(hi)) => format!(", values {} to {}", fmt_num(lo), fmt_num(hi)),
                _ => String::new(),
            };
            let summary = format!("{field} {} for {}", test.describe(), format_period(span));
            let evidence = Evidence {
                detail: format!(
                    "{summary}: {} readings from {} to {}{range} (rule: {})",
                    st.samples,
                    format_utc(first),
                    format_utc(last),
                    format_period(for_ms)
                ),
                reports: st.events.clone(),
                matched: st.samples,
                first_ms: Some(first),
                last_ms: Some(last),
                span_ms: Some(span),
            };
            st.open = Some(ctx.raise(rule, &r.box_id, &r.instrument, field, summary, evidence)?);
        }
    }
    Ok(true)
}

/// A count rule on one matching report.
#[allow(clippy::too_many_arguments)]
fn count_rule(
    ctx: &mut Ctx<'_, '_>,
    rule: &Rule,
    st: &mut UnitState,
    r: &Report,
    key: &str,
    ev: EvidenceReport,
    count: u32,
    within_ms: i64,
) -> Result<(), StoreError> {
    st.last_rx_ms = Some(st.last_rx_ms.map_or(r.received_ms, |t| t.max(r.received_ms)));
    if let Some(id) = st.open {
        return ctx.tx.repeat(id, ctx.now);
    }
    let at = st.events.partition_point(|e| (e.timestamp_ms, e.report_id) <= (ev.timestamp_ms, ev.report_id));
    st.events.insert(at, ev);
    let n = count as usize;
    // The newest window of `count` reports whose span is within the period.
    let hit = (0..st.events.len().saturating_sub(n - 1))
        .rev()
        .find(|&i| st.events[i + n - 1].timestamp_ms - st.events[i].timestamp_ms <= within_ms);
    if let Some(i) = hit {
        let window: Vec<EvidenceReport> = st.events[i..i + n].to_vec();
        let (first, last) = (window[0].timestamp_ms, window[n - 1].timestamp_ms);
        let what = match &window[0].field {
            Some(f) if !key.is_empty() => format!("{f}={key}"),
            Some(f) => f.clone(),
            None => "report".to_owned(),
        };
        let summary = format!("{what} {count} times within {}", format_period(within_ms));
        let ids: Vec<String> = window.iter().filter_map(|e| e.report_id).map(|i| i.to_string()).collect();
        let evidence = Evidence {
            detail: format!(
                "{summary}: reports {} from {} to {} (span {})",
                ids.join(", "),
                format_utc(first),
                format_utc(last),
                format_period((last - first).max(0))
            ),
            reports: window.into_iter().rev().take(MAX_EVIDENCE_REPORTS).rev().collect(),
            matched: n as u64,
            first_ms: Some(first),
            last_ms: Some(last),
            span_ms: Some(last - first),
        };
        st.open = Some(ctx.raise(rule, &r.box_id, &r.instrument, key, summary, evidence)?);
        st.events.clear();
        return Ok(());
    }
    // Keep what can still be part of a window: the newest `count - 1` reports.
    if st.events.len() >= n {
        let drop = st.events.len() + 1 - n;
        st.events.drain(..drop);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
