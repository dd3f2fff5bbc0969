//! The staff dashboard: one server-rendered HTML page (`GET /dashboard`) with the boxes,
//! their instruments and last reports, open and recently cleared alerts, the rules in
//! force, queued commands and remote sessions.
//!
//! No scripts: the page refreshes itself (`<meta http-equiv="refresh">`, every
//! [`REFRESH_S`] seconds) and the backend serves it with a `Content-Security-Policy` that
//! allows inline styles only. Every value that comes from a box, an instrument, a rule file
//! or the command queue goes through [`escape`].
//!
//! Staff reach it through the front door's staff listener (HTTPS, HTTP Basic
//! authentication against a password file, [`crate::frontdoor::StaffListener`]); the
//! backend refuses it without the user name that listener passes.

use std::fmt::Write as _;

use crate::api::{Alert, AlertQuery, EvidenceReport, Report, Severity, Stats};
use crate::clock::format_utc;
use crate::rules::format_period;
use crate::store::{CommandRow, Store, StoreError};
use crate::triggers::Engine;

/// Seconds between refreshes of the page.
pub const REFRESH_S: u32 = 15;
/// Characters of a payload shown before it is cut.
pub const PAYLOAD_CHARS: usize = 160;
/// Recently cleared alerts shown.
const CLEARED_SHOWN: u32 = 10;
/// Recent reports shown.
const RECENT_SHOWN: u32 = 15;
/// Finished commands shown besides those in progress.
const FINISHED_COMMANDS_SHOWN: u32 = 10;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// How long ago, in words: `42s ago`, `3m10s ago`.
fn age(now: i64, then: i64) -> String {
    if then <= 0 {
        return "never".to_owned();
    }
    let d = now - then;
    if d < 0 {
        return format!("in {}", format_period((-d / 1000 * 1000).max(1000)));
    }
    if d < 1000 {
        return "just now".to_owned();
    }
    format!("{} ago", format_period(d - d % 1000))
}

fn when(now: i64, then: i64) -> String {
    if then <= 0 {
        return "<span class=\"dim\">never</span>".to_owned();
    }
    format!("<span title=\"{}\">{}</span>", escape(&format_utc(then)), escape(&age(now, then)))
}

fn severity_badge(s: Severity) -> String {
    format!("<span class=\"sev sev-{0}\">{0}</span>", s.name())
}

fn evidence_list(reports: &[EvidenceReport]) -> String {
    let mut s = String::new();
    for e in reports {
        let id = e.report_id.map_or_else(|| "—".to_owned(), |i| format!("#{i}"));
        let what = match (&e.field, &e.value) {
            (Some(f), Some(v)) => format!(" {}={}", escape(f), escape(v)),
            _ => String::new(),
        };
        let _ = write!(
            s,
            "<li><span class=\"mono\">{}</span>{what} <span class=\"dim\">at {}</span></li>",
            escape(&id),
            escape(&format_utc(e.timestamp_ms))
        );
    }
    if s.is_empty() {
        s
    } else {
        format!("<ul class=\"ev\">{s}</ul>")
    }
}

const STYLE: &str = "
body{font-family:'DejaVu Sans',Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330;font-size:14px}
header{background:#1d3557;color:#fff;padding:12px 24px;display:flex;justify-content:space-between;align-items:baseline}
header h1{font-size:20px;margin:0}header .meta{font-size:12px;opacity:.85}
main{padding:16px 24px}
section{background:#fff;border:1px solid #d8dce3;border-radius:6px;margin:0 0 16px;padding:12px 16px}
h2{font-size:16px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{font-size:12px;color:#5a6272;text-transform:uppercase;letter-spacing:.03em}
.cards{display:flex;gap:12px;margin-bottom:16px}
.card{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:10px 16px;min-width:120px}
.card .n{font-size:24px;font-weight:bold}.card .l{font-size:12px;color:#5a6272}
.sev{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:bold;color:#fff}
.sev-critical{background:#c1121f}.sev-warning{background:#e09f3e}.sev-info{background:#457b9d}
.mono{font-family:'DejaVu Sans Mono',monospace;font-size:12px}
.dim{color:#7a8294}.empty{color:#7a8294;font-style:italic}
.ev{margin:2px 0 0;padding-left:16px;font-size:12px}
.payload{font-family:'DejaVu Sans Mono',monospace;font-size:12px;word-break:break-all;max-width:560px}
";

/// Renders the page for `user` from the store's current contents.
pub fn render(store: &Store, engine: &Engine, user: &str) -> Result<String, StoreError> {
    let now = store.clock().now_ms();
    let stats = store.stats()?;
    let open = store.alerts(&AlertQuery { limit: Some(crate::api::MAX_ALERT_LIMIT), ..AlertQuery::open() })?.alerts;
    let cleared = store.recently_cleared_alerts(CLEARED_SHOWN)?;
    let latest = store.latest_reports()?;
    let recent = store.recent_reports(RECENT_SHOWN)?;
    let commands = store.dashboard_commands(FINISHED_COMMANDS_SHOWN)?;
    let status = engine.status(store)?;

    let mut p = String::with_capacity(32 * 1024);
    let _ = write!(
        p,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>rapdc service dashboard</title><style>{STYLE}</style></head><body>\
         <header><h1>rapdc service dashboard</h1><div class=\"meta\">signed in as <b id=\"staff-user\">{}</b> · \
         generated {} · refreshes every {REFRESH_S} s</div></header><main>",
        escape(user),
        escape(&format_utc(now)),
    );

    let critical = open.iter().filter(|a| a.severity == Severity::Critical).count();
    let instruments = stats.instruments.iter().filter(|i| !i.instrument.is_empty()).count();
    let reports: u64 = stats.boxes.iter().map(|b| b.records).sum();
    let _ = write!(
        p,
        "<div class=\"cards\">\
         <div class=\"card\"><div class=\"n\" id=\"count-boxes\">{}</div><div class=\"l\">boxes</div></div>\
         <div class=\"card\"><div class=\"n\" id=\"count-instruments\">{instruments}</div><div class=\"l\">instruments</div></div>\
         <div class=\"card\"><div class=\"n\" id=\"count-open-alerts\">{}</div><div class=\"l\">open alerts ({critical} critical)</div></div>\
         <div class=\"card\"><div class=\"n\">{reports}</div><div class=\"l\">reports stored</div></div>\
         <div class=\"card\"><div class=\"n\">{}</div><div class=\"l\">rules · evaluated to report {} of {}</div></div>\
         </div>",
        stats.boxes.len(),
        open.len(),
        status.rules.len(),
        status.evaluated_report_id,
        status.stored_report_id,
    );

    open_alerts(&mut p, now, &open);
    boxes(&mut p, now, &stats);
    instruments_table(&mut p, now, &stats, &latest);
    commands_sections(&mut p, now, commands.as_deref());
    cleared_alerts(&mut p, now, &cleared);
    recent_reports(&mut p, now, &recent);
    rules(&mut p, &status);
    p.push_str("</main></body></html>\n");
    Ok(p)
}

fn open_alerts(p: &mut String, now: i64, open: &[Alert]) {
    p.push_str("<section id=\"open-alerts\"><h2>Open alerts</h2>");
    if open.is_empty() {
        p.push_str("<p class=\"empty\">No open alerts.</p></section>");
        return;
    }
    p.push_str(
        "<table><tr><th>severity</th><th>rule</th><th>box</th><th>instrument</th><th>alert</th><th>evidence</th>\
         <th>raised</th><th>repeats</th></tr>",
    );
    // Most severe first, then newest.
    let mut sorted: Vec<&Alert> = open.iter().collect();
    sorted.sort_by(|a, b| b.severity.cmp(&a.severity).then(b.id.cmp(&a.id)));
    for a in sorted {
        let _ = write!(
            p,
            "<tr class=\"alert\" data-rule=\"{rule}\"><td>{}</td><td class=\"mono\">{rule}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            severity_badge(a.severity),
            escape(&a.box_id),
            escape(&a.instrument),
            escape(&a.summary),
            escape(&a.evidence.detail),
            evidence_list(&a.evidence.reports),
            when(now, a.raised_ms),
            a.repeats,
            rule = escape(&a.rule),
        );
    }
    p.push_str("</table></section>");
}

fn boxes(p: &mut String, now: i64, stats: &Stats) {
    p.push_str("<section id=\"boxes\"><h2>Boxes</h2>");
    if stats.boxes.is_empty() {
        p.push_str("<p class=\"empty\">No box has reported yet.</p></section>");
        return;
    }
    p.push_str(
        "<table><tr><th>box</th><th>instruments</th><th>batches</th><th>reports</th><th>redelivered</th>\
         <th>dropped on the box</th><th>last batch</th></tr>",
    );
    for b in &stats.boxes {
        let n = stats.instruments.iter().filter(|i| i.box_id == b.box_id && !i.instrument.is_empty()).count();
        let _ = write!(
            p,
            "<tr class=\"box\"><td class=\"mono\">{}</td><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&b.box_id),
            b.batches,
            b.records,
            b.duplicates,
            b.dropped_total,
            when(now, b.last_batch_ms),
        );
    }
    p.push_str("</table></section>");
}

fn instruments_table(p: &mut String, now: i64, stats: &Stats, latest: &[Report]) {
    p.push_str("<section id=\"instruments\"><h2>Instruments and last reports</h2>");
    if stats.instruments.is_empty() {
        p.push_str("<p class=\"empty\">No instrument has reported yet.</p></section>");
        return;
    }
    p.push_str(
        "<table><tr><th>box</th><th>instrument</th><th>reports</th><th>by kind</th><th>last received</th>\
         <th>last report</th></tr>",
    );
    for i in &stats.instruments {
        let kinds: Vec<String> = i.kinds.iter().map(|(k, n)| format!("{}&nbsp;{n}", escape(k))).collect();
        let name = if i.instrument.is_empty() {
            "<span class=\"dim\">(the box itself)</span>".to_owned()
        } else {
            escape(&i.instrument)
        };
        let last = latest.iter().find(|r| r.box_id == i.box_id && r.instrument == i.instrument);
        let last = last.map_or_else(String::new, |r| {
            format!(
                "<span class=\"dim\">{} #{} at {}:</span> <span class=\"payload\">{}</span>",
                r.kind.name(),
                r.msg_id,
                escape(&format_utc(r.timestamp_ms)),
                escape(&cut(&r.payload, PAYLOAD_CHARS))
            )
        });
        let _ = write!(
            p,
            "<tr class=\"instrument\"><td class=\"mono\">{}</td><td class=\"mono\">{name}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{last}</td></tr>",
            escape(&i.box_id),
            i.count,
            kinds.join(", "),
            when(now, i.last_received_ms),
        );
    }
    p.push_str("</table></section>");
}

fn command_rows(p: &mut String, now: i64, rows: &[&CommandRow]) {
    p.push_str(
        "<table><tr><th>command</th><th>box</th><th>kind</th><th>state</th><th>queued</th><th>expires</th>\
         <th>deliveries</th><th>reason</th></tr>",
    );
    for c in rows {
        let _ = write!(
            p,
            "<tr class=\"command\"><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.id),
            escape(&c.box_id),
            escape(&c.kind),
            escape(&c.state),
            when(now, c.issued_ms),
            when(now, c.expires_ms),
            c.deliveries,
            escape(&c.reason),
        );
    }
    p.push_str("</table>");
}

fn commands_sections(p: &mut String, now: i64, commands: Option<&[CommandRow]>) {
    let Some(all) = commands else {
        p.push_str(
            "<section id=\"commands\"><h2>Queued commands</h2><p class=\"empty\">This database has no command queue.</p>\
             </section><section id=\"sessions\"><h2>Remote sessions</h2><p class=\"empty\">This database has no command \
             queue, so no remote sessions either.</p></section>",
        );
        return;
    };
    let (sessions, commands): (Vec<&CommandRow>, Vec<&CommandRow>) =
        all.iter().partition(|c| c.kind.starts_with("session"));
    p.push_str("<section id=\"commands\"><h2>Queued commands</h2>");
    if commands.is_empty() {
        p.push_str("<p class=\"empty\">No commands.</p>");
    } else {
        command_rows(p, now, &commands);
    }
    p.push_str("</section><section id=\"sessions\"><h2>Remote sessions</h2>");
    if sessions.is_empty() {
        p.push_str("<p class=\"empty\">No remote sessions requested.</p>");
    } else {
        command_rows(p, now, &sessions);
    }
    p.push_str("</section>");
}

fn cleared_alerts(p: &mut String, now: i64, cleared: &[Alert]) {
    p.push_str("<section id=\"cleared-alerts\"><h2>Recently cleared alerts</h2>");
    if cleared.is_empty() {
        p.push_str("<p class=\"empty\">None.</p></section>");
        return;
    }
    p.push_str("<table><tr><th>severity</th><th>rule</th><th>box</th><th>instrument</th><th>alert</th><th>raised</th><th>cleared</th><th>why</th></tr>");
    for a in cleared {
        let _ = write!(
            p,
            "<tr><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            severity_badge(a.severity),
            escape(&a.rule),
            escape(&a.box_id),
            escape(&a.instrument),
            escape(&a.summary),
            when(now, a.raised_ms),
            when(now, a.cleared_ms.unwrap_or(0)),
            escape(a.clear_reason.as_deref().unwrap_or("")),
        );
    }
    p.push_str("</table></section>");
}

fn recent_reports(p: &mut String, now: i64, recent: &[Report]) {
    p.push_str("<section id=\"recent-reports\"><h2>Latest reports received</h2>");
    if recent.is_empty() {
        p.push_str("<p class=\"empty\">None.</p></section>");
        return;
    }
    p.push_str(
        "<table><tr><th>id</th><th>box</th><th>instrument</th><th>kind</th><th>received</th><th>payload</th></tr>",
    );
    for r in recent {
        let _ = write!(
            p,
            "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"payload\">{}</td></tr>",
            r.id,
            escape(&r.box_id),
            escape(&r.instrument),
            r.kind.name(),
            when(now, r.received_ms),
            escape(&cut(&r.payload, PAYLOAD_CHARS)),
        );
    }
    p.push_str("</table></section>");
}

fn rules(p: &mut String, status: &crate::api::TriggerStatus) {
    p.push_str("<section id=\"rules\"><h2>Trigger rules</h2>");
    if status.rules.is_empty() {
        p.push_str("<p class=\"empty\">No rules loaded (rapdc serve --rules FILE).</p></section>");
        return;
    }
    p.push_str("<table><tr><th>rule</th><th>kind</th><th>severity</th><th>condition</th><th>description</th><th>open</th></tr>");
    for r in &status.rules {
        let _ = write!(
            p,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&r.kind),
            severity_badge(r.severity),
            escape(&r.condition),
            escape(&r.description),
            r.open_alerts
        );
    }
    p.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("a\u{0}b\u{1b}c"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
    }

    #[test]
    fn an_empty_data_center_says_so() {
        let store = Store::open_in_memory().unwrap();
        let engine = Engine::new(crate::rules::RuleSet::default(), store.clock());
        let page = render(&store, &engine, "bob<script>").unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(&format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">")));
        assert!(page.contains("<b id=\"staff-user\">bob&lt;script&gt;</b>"));
        for text in [
            "No open alerts.",
            "No box has reported yet.",
            "No instrument has reported yet.",
            "This database has no command queue.",
            "No rules loaded",
        ] {
            assert!(page.contains(text), "{text}");
        }
        assert!(!page.contains("<script"), "no scripts at all");
    }

    #[test]
    fn ages() {
        assert_eq!(age(10_000, 0), "never");
        assert_eq!(age(10_000, 9_500), "just now");
        assert_eq!(age(200_000, 10_000), "3m10s ago");
        assert_eq!(age(10_000, 12_000), "in 2s");
    }
}
