//! Results: one entry per control with what was expected and found, written as JSON and
//! as a self-contained HTML page.

use std::path::Path;

use serde::Serialize;

use crate::catalogue::{Control, Kind, CONTROLS};
use crate::error::{io, Error};
use crate::policy::Waivers;

/// Outcome of one control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    /// Failed, but waived in the reviewed waivers file.
    Waived,
    /// Could not be decided (input missing): never counted as a pass.
    NotEvaluated,
    /// A run-time property: `raphard check-live` in the guest decides it.
    Runtime,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Waived => "waived",
            Status::NotEvaluated => "not-evaluated",
            Status::Runtime => "runtime",
        }
    }
}

/// What one check found: a status and a human-readable account of the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    pub found: String,
}

impl Verdict {
    pub fn pass(found: impl Into<String>) -> Verdict {
        Verdict { status: Status::Pass, found: found.into() }
    }
    pub fn fail(found: impl Into<String>) -> Verdict {
        Verdict { status: Status::Fail, found: found.into() }
    }
    pub fn not_evaluated(why: impl Into<String>) -> Verdict {
        Verdict { status: Status::NotEvaluated, found: why.into() }
    }
    pub fn runtime(what: impl Into<String>) -> Verdict {
        Verdict { status: Status::Runtime, found: what.into() }
    }
    /// Fail with the problems joined, or pass with `ok` when there are none.
    pub fn from_problems(problems: Vec<String>, ok: impl Into<String>) -> Verdict {
        if problems.is_empty() {
            Verdict::pass(ok)
        } else {
            Verdict::fail(problems.join("; "))
        }
    }
    /// Combines the verdicts of a control's parts: any fail fails, then any
    /// not-evaluated part leaves the control not evaluated, else it passes.
    pub fn all(parts: Vec<Verdict>) -> Verdict {
        let found = parts.iter().map(|p| p.found.as_str()).filter(|f| !f.is_empty()).collect::<Vec<_>>().join("; ");
        let status = if parts.iter().any(|p| p.status == Status::Fail) {
            Status::Fail
        } else if parts.iter().any(|p| p.status == Status::NotEvaluated) {
            Status::NotEvaluated
        } else if parts.iter().any(|p| p.status == Status::Runtime) {
            Status::Runtime
        } else {
            Status::Pass
        };
        Verdict { status, found }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ControlResult {
    pub id: u8,
    pub title: &'static str,
    pub ssg: &'static [&'static str],
    pub stig: &'static [&'static str],
    pub kind: Kind,
    pub expected: &'static str,
    /// What `raphard check-live` verifies for this control (empty when offline only).
    pub live_check: &'static str,
    pub found: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiver: Option<String>,
}

/// Counts by status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub pass: usize,
    pub fail: usize,
    pub waived: usize,
    pub not_evaluated: usize,
    pub runtime: usize,
}

/// The whole report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    /// "offline" (`raphard check`) or "live" (`raphard check-live`).
    pub mode: &'static str,
    /// The root file system tree that was checked ("/" when live).
    pub root: String,
    pub summary: Summary,
    pub controls: Vec<ControlResult>,
}

impl Report {
    /// Builds the report from a verdict per control (catalogue order), applying waivers.
    pub fn new(mode: &'static str, root: &Path, verdicts: Vec<(u8, Verdict)>, waivers: &Waivers) -> Report {
        let mut controls = Vec::new();
        for control in CONTROLS {
            let verdict = verdicts
                .iter()
                .find(|(id, _)| *id == control.id)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| Verdict::not_evaluated("not evaluated in this mode"));
            controls.push(result(control, verdict, waivers.reason(control.id)));
        }
        let mut summary = Summary::default();
        for c in &controls {
            match c.status {
                Status::Pass => summary.pass += 1,
                Status::Fail => summary.fail += 1,
                Status::Waived => summary.waived += 1,
                Status::NotEvaluated => summary.not_evaluated += 1,
                Status::Runtime => summary.runtime += 1,
            }
        }
        Report {
            tool: "raphard",
            version: env!("CARGO_PKG_VERSION"),
            mode,
            root: root.display().to_string(),
            summary,
            controls,
        }
    }

    /// True when no control failed (waived, not-evaluated and runtime do not count).
    pub fn passed(&self) -> bool {
        self.summary.fail == 0
    }

    /// The result of one control.
    pub fn get(&self, id: u8) -> Option<&ControlResult> {
        self.controls.iter().find(|c| c.id == id)
    }

    pub fn to_json(&self) -> Result<String, Error> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, self.to_json()?).map_err(io(path))
    }

    pub fn write_html(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, self.to_html()).map_err(io(path))
    }

    /// One line per control for the terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.controls {
            out.push_str(&format!("{:>2} {:<13} {}: {}\n", c.id, c.status.as_str(), c.title, c.found));
        }
        let s = &self.summary;
        out.push_str(&format!(
            "raphard {}: {} pass, {} fail, {} waived, {} not evaluated, {} runtime\n",
            self.mode, s.pass, s.fail, s.waived, s.not_evaluated, s.runtime
        ));
        out
    }

    /// A self-contained HTML page (no scripts, no external resources).
    pub fn to_html(&self) -> String {
        let s = &self.summary;
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
        h.push_str(&format!("<title>rapbox hardening report ({})</title>\n", esc(self.mode)));
        h.push_str(
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;width:100%}\
             td,th{border:1px solid #bbb;padding:4px 6px;vertical-align:top;font-size:90%}th{background:#eee}\
             .pass{background:#d8f0d8}.fail{background:#f6d0d0}.waived{background:#f6ecc8}\
             .not-evaluated{background:#e4e4e4}.runtime{background:#d8e4f6}code{font-size:95%}</style>\n",
        );
        h.push_str("</head><body>\n");
        h.push_str(&format!(
            "<h1>rapbox hardening report</h1>\n<p>raphard {} &middot; mode <b>{}</b> &middot; root <code>{}</code></p>\n",
            esc(self.version),
            esc(self.mode),
            esc(&self.root)
        ));
        h.push_str(&format!(
            "<p><b>{}</b> pass, <b>{}</b> fail, <b>{}</b> waived, <b>{}</b> not evaluated, <b>{}</b> runtime: {}</p>\n",
            s.pass,
            s.fail,
            s.waived,
            s.not_evaluated,
            s.runtime,
            if self.passed() { "no control fails" } else { "<b>controls fail</b>" }
        ));
        h.push_str("<table>\n<tr><th>#</th><th>Control</th><th>SSG / STIG</th><th>Where</th><th>Expected</th><th>Found</th><th>Status</th></tr>\n");
        for c in &self.controls {
            let ids: Vec<String> = c.ssg.iter().chain(c.stig.iter()).map(|i| esc(i)).collect();
            let mut expected = esc(c.expected);
            if !c.live_check.is_empty() {
                expected.push_str(&format!("<br><i>live:</i> {}", esc(c.live_check)));
            }
            let mut status = c.status.as_str().to_string();
            if let Some(w) = &c.waiver {
                status.push_str(&format!("<br><i>waiver:</i> {}", esc(w)));
            }
            h.push_str(&format!(
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                c.status.as_str(),
                c.id,
                esc(c.title),
                ids.join("<br>"),
                match c.kind {
                    Kind::Offline => "offline",
                    Kind::Both => "offline + live",
                    Kind::Runtime => "live",
                },
                expected,
                esc(&c.found),
                status
            ));
        }
        h.push_str("</table>\n</body></html>\n");
        h
    }
}

fn result(control: &Control, verdict: Verdict, waiver: Option<&str>) -> ControlResult {
    let status = match (verdict.status, waiver) {
        (Status::Fail, Some(_)) => Status::Waived,
        (s, _) => s,
    };
    ControlResult {
        id: control.id,
        title: control.title,
        ssg: control.ssg,
        stig: control.stig,
        kind: control.kind,
        expected: control.expected,
        live_check: control.live,
        found: verdict.found,
        status,
        waiver: waiver.map(str::to_string),
    }
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combining_parts() {
        let v = Verdict::all(vec![Verdict::pass("a"), Verdict::not_evaluated("b")]);
        assert_eq!(v.status, Status::NotEvaluated);
        assert_eq!(v.found, "a; b");
        let v = Verdict::all(vec![Verdict::fail("x"), Verdict::not_evaluated("b")]);
        assert_eq!(v.status, Status::Fail);
    }

    #[test]
    fn html_escapes_found_text() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
