//! The pages as HTML: every page, the login page included, starts with the DoD
//! notice-and-consent banner (the same text as the console's /etc/issue). No scripts, no
//! external resources; one style sheet served by rapweb itself.

use rapbox::control::Status;
use serde_json::Value;

/// The DoD banner as shipped in the image (`/etc/issue`, from hardening/dod-banner.txt).
pub fn banner_text() -> String {
    std::fs::read_to_string("/etc/issue")
        .ok()
        .filter(|t| t.contains("U.S. Government"))
        .unwrap_or_else(|| include_str!("../../hardening/dod-banner.txt").to_owned())
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

pub const CSS: &str = "body{font-family:sans-serif;margin:0;background:#f4f4f4;color:#111}\
#banner{background:#fff3cd;border-bottom:2px solid #8a6d3b;padding:8px 16px;font-size:12px;white-space:pre-wrap}\
nav{background:#1f3a5f;padding:8px 16px}nav a,nav button{color:#fff;margin-right:16px;text-decoration:none;\
background:none;border:none;font-size:15px;cursor:pointer}main{padding:16px}table{border-collapse:collapse;background:#fff}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.err{background:#f8d7da;border:1px solid #a94442;padding:8px;\
margin:8px 0}.ok{background:#d4edda;border:1px solid #3c763d;padding:8px;margin:8px 0}label{display:block;margin-top:8px}\
input[type=text],input[type=password]{width:320px}form.inline{display:inline}";

/// A whole page: banner, navigation (when logged in), content.
pub fn page(title: &str, user: Option<(&str, &str)>, content: &str) -> String {
    let nav = match user {
        Some((u, csrf)) => format!(
            "<nav><a href=\"/status\">Status</a><a href=\"/ports\">Instrument ports</a><a href=\"/uplink\">Uplink and proxy</a>\
             <form class=\"inline\" method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" id=\"logout\">Log out {}</button></form></nav>",
            esc(csrf),
            esc(u)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>rapbox: {t}</title>\
         <link rel=\"stylesheet\" href=\"/style.css\"></head><body>\
         <div id=\"banner\" role=\"alert\">{b}</div>{nav}<main><h1>{t}</h1>\n{content}\n</main></body></html>\n",
        t = esc(title),
        b = esc(banner_text().trim_end()),
    )
}

pub fn login_form(message: Option<&str>) -> String {
    let msg = message.map(|m| format!("<div class=\"err\" id=\"message\">{}</div>", esc(m))).unwrap_or_default();
    format!(
        "{msg}<p>Log in with your technician account. Logging in means you have read the notice above and consent to it.</p>\
         <form method=\"post\" action=\"/login\"><label>User <input type=\"text\" name=\"user\" id=\"user\" autocomplete=\"username\">\
         </label><label>Password <input type=\"password\" name=\"password\" id=\"password\" autocomplete=\"current-password\"></label>\
         <p><button type=\"submit\" id=\"login\">Log in</button></p></form>"
    )
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn ago(ms: Option<u64>) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    match ms {
        None => "never".into(),
        Some(t) => format!("{} s ago", now.saturating_sub(t) / 1000),
    }
}

pub fn status(st: &Status) -> String {
    let f = &st.fips;
    let fips = if f.get("passed").and_then(Value::as_bool).unwrap_or(false) { "passed" } else { "FAILED" };
    let up = &st.uplink;
    let q = &st.queue;
    let audit = &st.audit;
    let mut rows = vec![
        ("rapd", format!("{}, up {} s", st.version, st.uptime_s)),
        ("FIPS gate", fips.to_owned()),
        ("Uplink", format!("{} via {}", s(up, "state"), up.get("proxy").and_then(Value::as_str).unwrap_or("direct"))),
        ("Data center", s(up, "url").to_owned()),
        ("Last upload", ago(up.get("last_success_ms").and_then(Value::as_u64))),
        ("Queue", format!("{} messages, {} bytes", u(q, "depth"), u(q, "bytes"))),
        ("Dropped (routine)", u(q, "dropped_total").to_string()),
        ("Audit trail", format!("{} records, {} shipped", u(audit, "last_seq"), u(audit, "shipped_seq"))),
    ];
    if let Some(e) = up.get("last_error").and_then(Value::as_str) {
        rows.push(("Last uplink error", e.to_owned()));
    }
    table(&["", ""], rows.into_iter().map(|(a, b)| vec![a.to_owned(), b]).collect(), "status")
}

pub fn ports(st: &Status) -> String {
    let links = st.links.as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for p in st.ports.as_array().into_iter().flatten() {
        let serial = s(p, "serial");
        let link = links.iter().find(|l| l.get("serial").and_then(Value::as_str) == Some(serial));
        rows.push(vec![
            serial.to_owned(),
            s(p, "model").to_owned(),
            link.map(|l| s(l, "interface").to_owned()).unwrap_or_else(|| "loopback".into()),
            link.map(|l| s(l, "link").to_owned()).unwrap_or_else(|| "-".into()),
            link.and_then(|l| l.get("address").and_then(Value::as_str)).unwrap_or("-").to_owned(),
            s(p, "listen").to_owned(),
            u(p, "received").to_string(),
            ago(p.get("last_report_ms").and_then(Value::as_u64)),
            u(p, "errors").to_string(),
        ]);
    }
    if rows.is_empty() {
        return "<p>No instrument is configured.</p>".into();
    }
    table(
        &["Instrument", "Model", "Interface", "Link", "Box address", "Agent", "Received", "Last report", "Errors"],
        rows,
        "ports",
    )
}

fn table(head: &[&str], rows: Vec<Vec<String>>, id: &str) -> String {
    let mut o = format!("<table id=\"{id}\">");
    if head.iter().any(|h| !h.is_empty()) {
        o += "<tr>";
        for h in head {
            o += &format!("<th>{}</th>", esc(h));
        }
        o += "</tr>";
    }
    for r in rows {
        o += "<tr>";
        for c in r {
            o += &format!("<td>{}</td>", esc(&c));
        }
        o += "</tr>";
    }
    o + "</table>"
}

/// The current uplink settings.
#[derive(Debug, Clone, Default)]
pub struct UplinkForm {
    pub addressing: String,
    pub address: String,
    pub gateway: String,
    pub dns: String,
    pub proxy: String,
}

pub fn uplink(current: &UplinkForm, csrf: &str, message: Option<(bool, &str)>) -> String {
    let msg = match message {
        Some((true, m)) => format!("<div class=\"ok\" id=\"message\">{}</div>", esc(m)),
        Some((false, m)) => format!("<div class=\"err\" id=\"message\">{}</div>", esc(m)),
        None => String::new(),
    };
    let field = |name: &str, label: &str, v: &str| {
        format!("<label>{label} <input type=\"text\" name=\"{name}\" id=\"{name}\" value=\"{}\"></label>", esc(v))
    };
    format!(
        "{msg}<p>rapd checks each change with the same validation as the console (<code>rapctl network</code>) \
         and applies it only when valid; an applied change is rolled back unless the data center acknowledges the box \
         in time.</p><form method=\"post\" action=\"/uplink\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         {}{}{}{}{}<p><button type=\"submit\" name=\"action\" value=\"check\" id=\"check\">Check</button> \
         <button type=\"submit\" name=\"action\" value=\"apply\" id=\"apply\">Apply</button></p></form>",
        esc(csrf),
        field("addressing", "Addressing (dhcp or static)", &current.addressing),
        field("address", "Address (static: a.b.c.d/prefix)", &current.address),
        field("gateway", "Gateway (static)", &current.gateway),
        field("dns", "DNS servers (comma-separated; empty: from DHCP)", &current.dns),
        field("proxy", "Proxy (http://host:port, socks5://host:port; empty: direct)", &current.proxy),
    )
}

pub fn error_page(code: u16, text: &str) -> String {
    page(&format!("{code} {}", crate::http::reason(code)), None, &format!("<p class=\"err\">{}</p>", esc(text)))
}
