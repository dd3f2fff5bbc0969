//! Controls 41-44: auditd enabled, immutable rules, audit log modes, remote logging
//! over TLS (rsyslog).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use super::Ctx;
use crate::report::Verdict;
use crate::sysfiles;

pub fn check(ctx: &Ctx, id: u8) -> Verdict {
    match id {
        41 => enabled(ctx),
        42 => immutable(ctx),
        43 => log_modes(ctx),
        44 => remote(ctx),
        _ => unreachable!("audit::check called for control {id}"),
    }
}

fn enabled(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    if !ctx.root.exists("/usr/sbin/auditd") && !ctx.root.exists("/sbin/auditd") {
        bad.push("auditd is not installed (no /usr/sbin/auditd)".to_string());
    }
    let mask = ctx.root.raw("/etc/systemd/system/auditd.service");
    if std::fs::read_link(&mask).is_ok_and(|t| t.as_os_str() == "/dev/null") {
        bad.push("auditd.service is masked".into());
    }
    let wants: Vec<String> = ctx
        .root
        .list("/etc/systemd/system")
        .into_iter()
        .filter(|d| d.ends_with(".wants"))
        .filter(|d| std::fs::symlink_metadata(ctx.root.raw(&format!("/etc/systemd/system/{d}/auditd.service"))).is_ok())
        .collect();
    if wants.is_empty() {
        bad.push("auditd.service is not enabled (no etc/systemd/system/*.wants/auditd.service)".into());
    }
    for (src, line) in super::crypto::cmdlines(ctx) {
        if line.split_whitespace().any(|w| w == "audit=0") {
            bad.push(format!("{src}: audit=0 on the kernel command line"));
        }
    }
    Verdict::from_problems(bad, format!("auditd.service enabled ({})", wants.join(", ")))
}

/// `ls -v` order: digit runs compare as numbers.
fn natural(a: &str, b: &str) -> Ordering {
    let chunks = |s: &str| {
        let mut v: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match v.last_mut() {
                Some((ld, cur)) if *ld == d => cur.push(c),
                _ => v.push((d, c.to_string())),
            }
        }
        v
    };
    for (x, y) in chunks(a).iter().zip(chunks(b).iter()) {
        let o = match (x.0, y.0) {
            (true, true) => x.1.parse::<u128>().unwrap_or(0).cmp(&y.1.parse::<u128>().unwrap_or(0)),
            _ => x.1.cmp(&y.1),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

fn last_e(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-e"))
        .filter_map(|l| l[2..].split_whitespace().next().map(str::to_string))
        .next_back()
}

fn immutable(ctx: &Ctx) -> Verdict {
    let mut bad = Vec::new();
    let mut names: Vec<String> =
        ctx.root.list("/etc/audit/rules.d").into_iter().filter(|n| n.ends_with(".rules")).collect();
    names.sort_by(|a, b| natural(a, b));
    let mut concat = String::new();
    for n in &names {
        concat.push_str(&ctx.root.read(&format!("/etc/audit/rules.d/{n}")).unwrap_or_default());
        concat.push('\n');
    }
    match last_e(&concat) {
        Some(v) if v == "2" => {}
        Some(v) => bad.push(format!("etc/audit/rules.d: the last -e is -e {v}, not -e 2")),
        None => bad.push("etc/audit/rules.d: no -e 2 (rules stay changeable)".into()),
    }
    match ctx.root.read("/etc/audit/audit.rules") {
        None => bad.push("etc/audit/audit.rules is missing (run augenrules at build time)".into()),
        Some(t) => match last_e(&t) {
            Some(v) if v == "2" => {}
            Some(v) => bad.push(format!("etc/audit/audit.rules (loaded at boot) ends with -e {v}, not -e 2")),
            None => {
                bad.push("etc/audit/audit.rules (loaded at boot) has no -e 2: regenerate it with augenrules".into())
            }
        },
    }
    Verdict::from_problems(bad, "-e 2 last in rules.d and in the generated audit.rules")
}

fn log_modes(ctx: &Ctx) -> Verdict {
    let Some(conf) = ctx.root.read("/etc/audit/auditd.conf") else {
        return Verdict::fail("etc/audit/auditd.conf is missing");
    };
    let conf = sysfiles::key_values(&conf);
    let mut bad = Vec::new();
    let group = conf.get("log_group").cloned().unwrap_or_else(|| "root".into());
    if group != "root" {
        bad.push(format!("auditd.conf log_group = {group} (must be root)"));
    }
    let file = conf.get("log_file").cloned().unwrap_or_else(|| "/var/log/audit/audit.log".into());
    let dir = file.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_else(|| "/".into());
    let mut shown = format!("log_group {group}, {dir}");
    match ctx.root.stat(&dir) {
        None => bad.push(format!("audit log directory {dir} is missing")),
        Some(m) => {
            let mode = m.mode() & 0o7777;
            shown.push_str(&format!(" {mode:04o} {}:{}", m.uid(), m.gid()));
            bad.extend(dir_problems(&dir, mode, m.uid(), m.gid()));
            for n in ctx.root.list(&dir) {
                if let Some(fm) = ctx.root.stat(&format!("{dir}/{n}")) {
                    bad.extend(file_problems(&format!("{dir}/{n}"), fm.mode() & 0o7777, fm.uid()));
                }
            }
        }
    }
    Verdict::from_problems(bad, shown)
}

/// Problems of the audit log directory's mode and ownership (shared with check-live).
pub fn dir_problems(dir: &str, mode: u32, uid: u32, gid: u32) -> Vec<String> {
    let mut bad = Vec::new();
    if uid != 0 {
        bad.push(format!("{dir} is owned by UID {uid}, not root"));
    }
    if mode & 0o007 != 0 {
        bad.push(format!("{dir} has mode {mode:04o}: others can access the audit logs"));
    }
    if mode & 0o070 != 0 && gid != 0 {
        bad.push(format!("{dir} has mode {mode:04o} with group GID {gid}: the group can read the audit logs"));
    }
    bad
}

/// Problems of one audit log file (shared with check-live).
pub fn file_problems(path: &str, mode: u32, uid: u32) -> Vec<String> {
    let mut bad = Vec::new();
    if uid != 0 {
        bad.push(format!("{path} is owned by UID {uid}"));
    }
    if mode & 0o177 != 0 {
        bad.push(format!("{path} has mode {mode:04o} (at most 0600)"));
    }
    bad
}

/// The rsyslog configuration text: rsyslog.conf and what it includes, in order.
pub fn rsyslog_text(root: &crate::root::Root) -> Option<String> {
    let main = root.read("/etc/rsyslog.conf")?;
    let mut out = String::new();
    for line in main.lines() {
        out.push_str(line);
        out.push('\n');
        let t = line.trim();
        let pattern = if let Some(p) = t.strip_prefix("$IncludeConfig") {
            Some(p.trim().to_string())
        } else if t.starts_with("include(") {
            params(t).get("file").cloned()
        } else {
            None
        };
        if let Some(p) = pattern {
            let (dir, pat) = p.rsplit_once('/').unwrap_or(("/etc", p.as_str()));
            for n in root.list(dir) {
                if crate::policy::glob(pat, &n) {
                    out.push_str(&root.read(&format!("{dir}/{n}")).unwrap_or_default());
                    out.push('\n');
                }
            }
        }
    }
    Some(out)
}

/// The name=value parameters of an rsyslog object `type(...)` (keys lower case).
pub fn params(obj: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let body = obj.split_once('(').map(|x| x.1).unwrap_or(obj);
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ')') {
            i += 1;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect::<String>().to_ascii_lowercase();
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == '=') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let q = chars[i];
        if q == '"' || q == '`' || q == '\'' {
            let s = i + 1;
            i = s;
            while i < chars.len() && chars[i] != q {
                i += 1;
            }
            m.insert(key, chars[s..i.min(chars.len())].iter().collect());
            i += 1;
        } else {
            let s = i;
            while i < chars.len() && !chars[i].is_whitespace() && chars[i] != ')' {
                i += 1;
            }
            m.insert(key, chars[s..i].iter().collect());
        }
    }
    m
}

/// Every `name(...)` object of the configuration (comments removed), e.g. all actions.
pub fn objects(text: &str, name: &str) -> Vec<String> {
    let clean: String =
        text.lines().map(|l| if l.trim_start().starts_with('#') { "" } else { l }).collect::<Vec<_>>().join("\n");
    let lower = clean.to_ascii_lowercase();
    let needle = format!("{name}(");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&needle) {
        let start = from + pos;
        let before = lower[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            from = start + needle.len();
            continue;
        }
        let mut depth = 0;
        let mut quote: Option<char> = None;
        let mut end = clean.len();
        for (i, c) in clean[start..].char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '`' | '\'') => quote = Some(c),
                (None, '(') => depth += 1,
                (None, ')') => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(clean[start..end].to_string());
        from = end;
    }
    out
}

/// Remote TLS forwarding actions: (target, port) of each that qualifies, and the
/// problems of those that do not.
pub fn tls_forwarders(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let globals: BTreeMap<String, String> = objects(text, "global").iter().flat_map(|g| params(g)).collect();
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for a in objects(text, "action") {
        let p = params(&a);
        if p.get("type").map(String::as_str) != Some("omfwd") {
            continue;
        }
        let target = p.get("target").cloned().unwrap_or_default();
        let port = p.get("port").cloned().unwrap_or_else(|| "514".into());
        let get = |k: &str| p.get(k).cloned().unwrap_or_default().to_ascii_lowercase();
        let driver = p
            .get("streamdriver")
            .or_else(|| globals.get("defaultnetstreamdriver"))
            .cloned()
            .unwrap_or_else(|| "ptcp".into());
        let mut why = Vec::new();
        if get("protocol") != "tcp" {
            why.push(format!("protocol {}", p.get("protocol").map(String::as_str).unwrap_or("udp (default)")));
        }
        if !matches!(driver.as_str(), "ossl" | "gtls") {
            why.push(format!("stream driver {driver} (no TLS)"));
        }
        if get("streamdrivermode") != "1" {
            why.push("StreamDriverMode is not 1 (TLS off)".into());
        }
        if get("streamdriverauthmode") != "x509/name" {
            why.push(format!(
                "StreamDriverAuthMode {} (must be x509/name)",
                p.get("streamdriverauthmode").map(String::as_str).unwrap_or("anon")
            ));
        }
        if why.is_empty() {
            ok.push((target, port));
        } else {
            bad.push(format!("omfwd action to {target}:{port}: {}", why.join(", ")));
        }
    }
    (ok, bad)
}

fn remote(ctx: &Ctx) -> Verdict {
    let Some(text) = rsyslog_text(&ctx.root) else {
        return Verdict::fail("rsyslog is not configured (no etc/rsyslog.conf)");
    };
    let (ok, mut bad) = tls_forwarders(&text);
    if ok.is_empty() {
        bad.insert(
            0,
            "no rsyslog omfwd action forwards over TLS (tcp, ossl/gtls, StreamDriverMode 1, x509/name)".into(),
        );
    } else {
        bad.clear(); // one qualifying remote destination is what the control asks for
    }
    let log_file = ctx
        .root
        .read("/etc/audit/auditd.conf")
        .map(|t| sysfiles::key_values(&t))
        .and_then(|m| m.get("log_file").cloned())
        .unwrap_or_else(|| "/var/log/audit/audit.log".into());
    let imfile = objects(&text, "input")
        .iter()
        .map(|i| params(i))
        .any(|p| p.get("type").map(String::as_str) == Some("imfile") && p.get("file") == Some(&log_file));
    let plugin = ctx
        .root
        .read("/etc/audit/plugins.d/syslog.conf")
        .map(|t| sysfiles::key_values(&t).get("active").map(String::as_str) == Some("yes"))
        .unwrap_or(false);
    if !imfile && !plugin {
        bad.push(format!("the audit log is not sent: no rsyslog imfile input for {log_file} and auditd's syslog plugin is not active"));
    }
    let dest: Vec<String> = ok.iter().map(|(t, p)| format!("{t}:{p}")).collect();
    Verdict::from_problems(
        bad,
        format!(
            "TLS forwarding to {}; audit log via {}",
            dest.join(", "),
            if imfile { "imfile" } else { "audisp syslog plugin" }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsyslog_objects_and_params() {
        let t = "# action(type=\"omfile\")\nglobal(DefaultNetstreamDriver=\"ossl\")\naction(\n type=\"omfwd\" target=`echo $X` port=\"6514\"\n protocol=\"tcp\" StreamDriverMode=\"1\" StreamDriverAuthMode=\"x509/name\")\n";
        let (ok, bad) = tls_forwarders(t);
        assert_eq!(ok, vec![("echo $X".to_string(), "6514".to_string())], "{bad:?}");
    }

    #[test]
    fn natural_order() {
        assert_eq!(natural("9-a.rules", "10-b.rules"), Ordering::Less);
        assert_eq!(natural("99-x.rules", "audit.rules"), Ordering::Less);
    }
}
