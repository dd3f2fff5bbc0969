//! Key paths: how a change to a few settings is written, and how it is made to a
//! configuration document without touching the rest of it (comments and layout stay).
//!
//! A key path is the name the validation errors use: sections and keys joined by dots,
//! an element of an array by its index in brackets — `uplink.proxy`,
//! `network.uplink.addressing`, `network.uplink.dns[1]`, `instrument[0].lis.port`,
//! `instrument[2]` (the third `[[instrument]]` table). A change either sets a path to a
//! value or removes it:
//!
//! * On the control socket (and from the data center) a change set is a JSON object from
//!   key path to value; `null` removes the key (JSON null has no TOML counterpart, so it is
//!   free to mean "remove"). Strings, integers, floats, booleans and arrays are TOML's;
//!   an object is a table.
//! * On the command line (`rapctl config apply KEY=VALUE ...`) VALUE is a TOML value
//!   (`"text"`, `7300`, `true`, `["192.0.2.53"]`); a VALUE that does not start like a TOML
//!   string, array or table and is not a TOML number or boolean is taken as a string, so
//!   `uplink.proxy=http://10.0.0.9:3128` needs no quotes. `--unset KEY` removes.
//!
//! Every path names the document as it was before the change. Sets are made first, in
//! path order (so `instrument[2].serial` and `instrument[2].interface` can add a third
//! instrument: index = length appends), then removals from the last path to the first
//! (so removing `instrument[1]` and `instrument[3]` removes the two meant). Two paths of
//! which one contains the other are refused, as is removing what is not there. Whether
//! the result is a valid configuration is not decided here: the document goes through
//! `Config::parse` like a file read at start.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

/// A change set that cannot be made to the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

fn kerr(key: &str, message: impl Into<String>) -> KeyError {
    KeyError { key: key.into(), message: message.into() }
}

/// One step of a path: a key, or an index into the array under the previous key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A parsed key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath {
    pub text: String,
    pub segments: Vec<Segment>,
}

impl KeyPath {
    /// Whether `self` is `other` or contains it (`instrument[1]` contains `instrument[1].serial`).
    pub fn contains(&self, other: &KeyPath) -> bool {
        other.segments.len() >= self.segments.len() && other.segments[..self.segments.len()] == self.segments[..]
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialOrd for KeyPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyPath {
    /// Segment by segment; indexes numerically, keys before indexes.
    fn cmp(&self, other: &Self) -> Ordering {
        for (a, b) in self.segments.iter().zip(&other.segments) {
            let o = match (a, b) {
                (Segment::Key(x), Segment::Key(y)) => x.cmp(y),
                (Segment::Index(x), Segment::Index(y)) => x.cmp(y),
                (Segment::Key(_), Segment::Index(_)) => Ordering::Less,
                (Segment::Index(_), Segment::Key(_)) => Ordering::Greater,
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        self.segments.len().cmp(&other.segments.len())
    }
}

impl FromStr for KeyPath {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<KeyPath, KeyError> {
        let bad = |m: &str| kerr(s, format!("not a key path ({m}; e.g. `uplink.proxy`, `instrument[0].lis.port`)"));
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let mut segments = Vec::new();
        for part in s.split('.') {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(bad(&format!("`{part}` is not a key name")));
            }
            segments.push(Segment::Key(name.to_owned()));
            while !rest.is_empty() {
                let Some(end) = rest.find(']').filter(|_| rest.starts_with('[')) else {
                    return Err(bad(&format!("`{part}` has an unclosed or stray bracket")));
                };
                let n = &rest[1..end];
                let i: usize = n
                    .parse()
                    .ok()
                    .filter(|_| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad(&format!("`[{n}]` is not an index")))?;
                segments.push(Segment::Index(i));
                rest = &rest[end + 1..];
            }
        }
        Ok(KeyPath { text: s.to_owned(), segments })
    }
}

/// One change: set a path to a value, or remove it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Set(KeyPath, serde_json::Value),
    Unset(KeyPath),
}

impl Change {
    pub fn path(&self) -> &KeyPath {
        match self {
            Change::Set(p, _) | Change::Unset(p) => p,
        }
    }
}

/// Parses the JSON form: `{"uplink.proxy": "http://10.0.0.9:3128", "network.uplink.gateway": null}`.
pub fn from_json(map: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<Change>, KeyError> {
    let mut out = Vec::new();
    for (k, v) in map {
        let p: KeyPath = k.parse()?;
        out.push(if v.is_null() { Change::Unset(p) } else { Change::Set(p, v.clone()) });
    }
    Ok(out)
}

/// The JSON form of `changes` (the inverse of [`from_json`]).
pub fn to_json(changes: &[Change]) -> serde_json::Map<String, serde_json::Value> {
    changes
        .iter()
        .map(|c| match c {
            Change::Set(p, v) => (p.text.clone(), v.clone()),
            Change::Unset(p) => (p.text.clone(), serde_json::Value::Null),
        })
        .collect()
}

/// Parses the command-line form `KEY=VALUE` (see the module documentation).
pub fn parse_assignment(arg: &str) -> Result<Change, KeyError> {
    let Some((k, v)) = arg.split_once('=') else {
        return Err(kerr(arg.trim(), "expected KEY=VALUE (e.g. uplink.proxy=http://10.0.0.9:3128)"));
    };
    let key = k.trim();
    let path: KeyPath = key.parse()?;
    let text = v.trim();
    let value = match Value::from_str(text) {
        Ok(v) => toml_to_json(&v).map_err(|m| kerr(key, m))?,
        Err(e) if text.starts_with(['"', '\'', '[', '{']) => {
            return Err(kerr(key, format!("`{text}` is not a TOML value: {}", one_line(&e.to_string()))))
        }
        Err(_) => serde_json::Value::String(text.to_owned()),
    };
    Ok(Change::Set(path, value))
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

fn toml_to_json(v: &Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        Value::String(s) => J::String(s.value().clone()),
        Value::Integer(i) => J::from(*i.value()),
        Value::Float(f) => serde_json::Number::from_f64(*f.value()).map(J::Number).ok_or("a float must be finite")?,
        Value::Boolean(b) => J::Bool(*b.value()),
        Value::Datetime(_) => return Err("dates and times are not used in the configuration".into()),
        Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        Value::InlineTable(t) => {
            J::Object(t.iter().map(|(k, v)| Ok((k.to_owned(), toml_to_json(v)?))).collect::<Result<_, String>>()?)
        }
    })
}

fn json_to_value(key: &str, v: &serde_json::Value) -> Result<Value, KeyError> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => return Err(kerr(key, "null is only allowed as the whole value (it removes the key)")),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if n.is_u64() {
                return Err(kerr(key, format!("{n} is too large for a TOML integer")));
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => {
            let mut arr = toml_edit::Array::new();
            for x in a {
                arr.push(json_to_value(key, x)?);
            }
            Value::Array(arr)
        }
        J::Object(o) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, x) in o {
                t.insert(k, json_to_value(key, x)?);
            }
            Value::InlineTable(t)
        }
    })
}

/// A JSON value as a document item: an object becomes a table (`[section]` form).
fn json_to_item(key: &str, v: &serde_json::Value) -> Result<Item, KeyError> {
    match v {
        serde_json::Value::Object(o) => Ok(Item::Table(json_to_table(key, o)?)),
        other => Ok(Item::Value(json_to_value(key, other)?)),
    }
}

fn json_to_table(key: &str, o: &serde_json::Map<String, serde_json::Value>) -> Result<Table, KeyError> {
    let mut t = Table::new();
    for (k, x) in o {
        if x.is_null() {
            return Err(kerr(key, format!("`{k}` is null: leave it out instead")));
        }
        t.insert(k, json_to_item(key, x)?);
    }
    Ok(t)
}

/// Makes `changes` to the document `text`; returns the new document.
pub fn apply(text: &str, changes: &[Change]) -> Result<String, KeyError> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        kerr("(document)", format!("the configuration in force is not TOML: {}", one_line(&e.to_string())))
    })?;
    if changes.is_empty() {
        return Err(kerr("(none)", "no key to change"));
    }
    let mut sorted: Vec<&Change> = changes.iter().collect();
    sorted.sort_by(|a, b| a.path().cmp(b.path()));
    for w in sorted.windows(2) {
        if w[0].path().contains(w[1].path()) {
            let what = if w[0].path() == w[1].path() {
                "is given twice".to_string()
            } else {
                format!("contains `{}`", w[1].path())
            };
            return Err(kerr(&w[0].path().text, format!("{what}: change one or the other")));
        }
    }
    for c in sorted.iter().filter(|c| matches!(c, Change::Set(..))) {
        if let Change::Set(p, v) = c {
            set(doc.as_table_mut(), p, v)?;
        }
    }
    for c in sorted.iter().rev() {
        if let Change::Unset(p) = c {
            unset(doc.as_table_mut(), p)?;
        }
    }
    Ok(doc.to_string())
}

/// Walks `segs` from `root`, creating tables (and appending array elements) on the way.
fn walk_create<'a>(root: &'a mut Table, p: &KeyPath, segs: &[Segment]) -> Result<&'a mut Table, KeyError> {
    let mut t = root;
    let mut i = 0;
    while i < segs.len() {
        let Segment::Key(name) = &segs[i] else {
            return Err(kerr(&p.text, "an index must follow a key name"));
        };
        match segs.get(i + 1) {
            Some(Segment::Index(n)) => {
                let n = *n;
                if !t.contains_key(name) {
                    t.insert(name, Item::ArrayOfTables(ArrayOfTables::new()));
                }
                let item = t.get_mut(name).ok_or_else(|| kerr(&p.text, "vanished"))?;
                t = element_table(item, n, &p.text, name)?;
                i += 2;
            }
            _ => {
                if !t.contains_key(name) {
                    let mut nt = Table::new();
                    nt.set_implicit(true);
                    t.insert(name, Item::Table(nt));
                }
                let item = t.get_mut(name).ok_or_else(|| kerr(&p.text, "vanished"))?;
                // `a = { ... }` becomes an `[a]` table so that it can take a new key.
                if matches!(item, Item::Value(Value::InlineTable(_))) {
                    if let Item::Value(Value::InlineTable(it)) = std::mem::take(item) {
                        *item = Item::Table(it.into_table());
                    }
                }
                t = item.as_table_mut().ok_or_else(|| kerr(&p.text, format!("`{name}` is a value, not a section")))?;
                i += 1;
            }
        }
    }
    Ok(t)
}

/// The `n`th table of the array at `item`; `n` = length appends a new one.
fn element_table<'a>(item: &'a mut Item, n: usize, key: &str, name: &str) -> Result<&'a mut Table, KeyError> {
    match item {
        Item::ArrayOfTables(a) => {
            let len = a.len();
            if n > len {
                return Err(kerr(
                    key,
                    format!("index {n} is beyond the end: `{name}` has {len} (use [{len}] to add one)"),
                ));
            }
            if n == len {
                a.push(Table::new());
            }
            a.get_mut(n).ok_or_else(|| kerr(key, "vanished"))
        }
        _ => Err(kerr(key, format!("`{name}` is not an array of tables"))),
    }
}

fn set(root: &mut Table, p: &KeyPath, v: &serde_json::Value) -> Result<(), KeyError> {
    let segs = &p.segments;
    match segs.last() {
        Some(Segment::Key(name)) => {
            let t = walk_create(root, p, &segs[..segs.len() - 1])?;
            let new = json_to_item(&p.text, v)?;
            match t.get_mut(name) {
                // Keep the key's place and its comments: replace the value only.
                Some(Item::Value(old)) if matches!(new, Item::Value(_)) => {
                    let decor = old.decor().clone();
                    if let Item::Value(mut nv) = new {
                        *nv.decor_mut() = decor;
                        *old = nv;
                    }
                }
                _ => {
                    t.insert(name, new);
                }
            }
            Ok(())
        }
        Some(Segment::Index(n)) => {
            let n = *n;
            let Some(Segment::Key(name)) = segs.get(segs.len().wrapping_sub(2)) else {
                return Err(kerr(&p.text, "an index must follow a key name"));
            };
            let t = walk_create(root, p, &segs[..segs.len() - 2])?;
            match (t.get_mut(name), v) {
                (None, serde_json::Value::Object(o)) if n == 0 => {
                    let mut a = ArrayOfTables::new();
                    a.push(json_to_table(&p.text, o)?);
                    t.insert(name, Item::ArrayOfTables(a));
                    Ok(())
                }
                (None, _) if n == 0 => {
                    let mut a = toml_edit::Array::new();
                    a.push(json_to_value(&p.text, v)?);
                    t.insert(name, Item::Value(Value::Array(a)));
                    Ok(())
                }
                (None, _) => Err(kerr(&p.text, format!("`{name}` is not set: only [0] can start it"))),
                (Some(item @ Item::ArrayOfTables(_)), serde_json::Value::Object(o)) => {
                    let table = json_to_table(&p.text, o)?;
                    let slot = element_table(item, n, &p.text, name)?;
                    *slot = table;
                    Ok(())
                }
                (Some(Item::ArrayOfTables(_)), _) => {
                    Err(kerr(&p.text, format!("an element of `{name}` is a table: give an object")))
                }
                (Some(Item::Value(Value::Array(a))), _) => {
                    let nv = json_to_value(&p.text, v)?;
                    let len = a.len();
                    match n.cmp(&len) {
                        Ordering::Less => {
                            a.replace(n, nv);
                        }
                        Ordering::Equal => a.push(nv),
                        Ordering::Greater => {
                            return Err(kerr(
                                &p.text,
                                format!("index {n} is beyond the end: `{name}` has {len} (use [{len}] to add one)"),
                            ))
                        }
                    }
                    Ok(())
                }
                (Some(_), _) => Err(kerr(&p.text, format!("`{name}` is not an array"))),
            }
        }
        None => Err(kerr(&p.text, "empty path")),
    }
}

/// Follows `segs` without creating anything.
fn walk<'a>(root: &'a mut Table, p: &KeyPath, segs: &[Segment]) -> Result<&'a mut Table, KeyError> {
    let absent = || kerr(&p.text, "is not in the configuration: nothing to remove");
    let mut t = root;
    let mut i = 0;
    while i < segs.len() {
        let Segment::Key(name) = &segs[i] else { return Err(absent()) };
        let item = t.get_mut(name).ok_or_else(absent)?;
        match segs.get(i + 1) {
            Some(Segment::Index(n)) => {
                let Item::ArrayOfTables(a) = item else { return Err(absent()) };
                t = a.get_mut(*n).ok_or_else(absent)?;
                i += 2;
            }
            _ => {
                t = match item {
                    Item::Table(x) => x,
                    _ => return Err(absent()),
                };
                i += 1;
            }
        }
    }
    Ok(t)
}

fn unset(root: &mut Table, p: &KeyPath) -> Result<(), KeyError> {
    let absent = || kerr(&p.text, "is not in the configuration: nothing to remove");
    let segs = &p.segments;
    match segs.last() {
        Some(Segment::Key(name)) => {
            let t = walk(root, p, &segs[..segs.len() - 1])?;
            t.remove(name).map(drop).ok_or_else(absent)
        }
        Some(Segment::Index(n)) => {
            let Some(Segment::Key(name)) = segs.get(segs.len().wrapping_sub(2)) else { return Err(absent()) };
            let t = walk(root, p, &segs[..segs.len() - 2])?;
            match t.get_mut(name) {
                Some(Item::ArrayOfTables(a)) if *n < a.len() => {
                    a.remove(*n);
                    if a.is_empty() {
                        t.remove(name);
                    }
                    Ok(())
                }
                Some(Item::Value(Value::Array(a))) if *n < a.len() => {
                    a.remove(*n);
                    Ok(())
                }
                _ => Err(absent()),
            }
        }
        None => Err(absent()),
    }
}

/// The document with the credentials of `uplink.proxy` hidden (layout and comments kept).
pub fn redact_proxy(text: &str) -> String {
    let Ok(mut doc) = text.parse::<DocumentMut>() else { return text.to_owned() };
    let Some(Item::Value(Value::String(p))) = doc.get_mut("uplink").and_then(|u| u.get_mut("proxy")) else {
        return text.to_owned();
    };
    let shown = crate::uplink::redact(p.value());
    if shown == *p.value() {
        return text.to_owned();
    }
    let decor = p.decor().clone();
    let mut v = toml_edit::Formatted::new(shown);
    *v.decor_mut() = decor;
    *p = v;
    doc.to_string()
}

/// Flattens a document into `key path → value` (leaves only; scalar arrays whole), for
/// naming what a change set or a new document changes.
pub fn flatten(text: &str) -> Result<Vec<(String, toml::Value)>, String> {
    let v: toml::Table = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
    let mut out = Vec::new();
    flatten_table(&mut out, "", &v);
    Ok(out)
}

fn flatten_table(out: &mut Vec<(String, toml::Value)>, prefix: &str, t: &toml::Table) {
    for (k, v) in t {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(sub) => flatten_table(out, &path, sub),
            toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table) => {
                for (i, x) in a.iter().enumerate() {
                    if let toml::Value::Table(sub) = x {
                        flatten_table(out, &format!("{path}[{i}]"), sub);
                    }
                }
            }
            other => out.push((path, other.clone())),
        }
    }
}

/// The key paths whose values differ between two documents, in path order.
pub fn changed_keys(old: &str, new: &str) -> Vec<String> {
    let (Ok(a), Ok(b)) = (flatten(old), flatten(new)) else { return vec!["(document)".into()] };
    let a: std::collections::BTreeMap<String, toml::Value> = a.into_iter().collect();
    let b: std::collections::BTreeMap<String, toml::Value> = b.into_iter().collect();
    let mut keys: Vec<KeyPath> =
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).filter_map(|k| k.parse().ok()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().map(|k| k.text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOC: &str = r#"# rapd on box 7
[queue]
path = "/data/rapd/queue.db"

[uplink]
url = "https://dc.example.net/api/v1/batches"   # the data center
ca = "/data/certs/ca.pem"
cert = "/data/certs/box.pem"
key = "/data/certs/box.key"

[network.uplink]
interface = "eth0"
addressing = "dhcp"
dns = ["192.0.2.53"]

[[instrument]]
serial = "A-1"
listen = "10.10.1.1:7300"

[[instrument]]
serial = "B-2"
listen = "10.10.2.1:7300"

[[instrument]]
serial = "C-3"
listen = "10.10.3.1:7300"
"#;

    fn change(m: serde_json::Value) -> Vec<Change> {
        from_json(m.as_object().unwrap()).unwrap()
    }

    fn applied(m: serde_json::Value) -> String {
        apply(DOC, &change(m)).unwrap()
    }

    fn refused(m: serde_json::Value) -> String {
        apply(DOC, &change(m)).unwrap_err().to_string()
    }

    #[test]
    fn paths_parse_and_order() {
        let p: KeyPath = "instrument[10].lis.port".parse().unwrap();
        assert_eq!(
            p.segments,
            vec![
                Segment::Key("instrument".into()),
                Segment::Index(10),
                Segment::Key("lis".into()),
                Segment::Key("port".into())
            ]
        );
        for bad in ["", "a..b", "a[", "a[x]", "a]", "[0]", "a[0]b", "a b", "a[-1]"] {
            let e = bad.parse::<KeyPath>().unwrap_err();
            assert!(e.to_string().contains("not a key path"), "{bad}: {e}");
        }
        let mut v: Vec<KeyPath> =
            ["instrument[10].x", "instrument[2].x", "instrument", "a.b"].iter().map(|s| s.parse().unwrap()).collect();
        v.sort();
        let t: Vec<&str> = v.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(t, ["a.b", "instrument", "instrument[2].x", "instrument[10].x"]);
    }

    #[test]
    fn set_keeps_comments_and_layout() {
        let out = applied(
            json!({"uplink.url": "https://dc2.example.net/api/v1/batches", "uplink.proxy": "http://10.0.0.9:3128"}),
        );
        assert!(out.starts_with("# rapd on box 7\n"), "{out}");
        assert!(out.contains("url = \"https://dc2.example.net/api/v1/batches\"   # the data center\n"), "{out}");
        assert!(out.contains("proxy = \"http://10.0.0.9:3128\""), "{out}");
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(t["uplink"]["proxy"].as_str(), Some("http://10.0.0.9:3128"));
        // Everything else is as it was.
        assert_eq!(changed_keys(DOC, &out), ["uplink.proxy", "uplink.url"]);
    }

    #[test]
    fn sections_arrays_and_new_instruments() {
        let out = applied(json!({
            "network.uplink.addressing": "static",
            "network.uplink.address": "192.0.2.10/24",
            "network.uplink.dns[1]": "192.0.2.54",
            "firewall.enabled": true,
            "instrument[3].serial": "D-4",
            "instrument[3].listen": "10.10.4.1:7300",
            "instrument[1].model": "AU 480",
        }));
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(t["network"]["uplink"]["dns"].as_array().unwrap().len(), 2);
        assert_eq!(t["firewall"]["enabled"].as_bool(), Some(true));
        let inst = t["instrument"].as_array().unwrap();
        assert_eq!(inst.len(), 4);
        assert_eq!(inst[3]["serial"].as_str(), Some("D-4"));
        assert_eq!(inst[1]["model"].as_str(), Some("AU 480"));
        assert_eq!(
            changed_keys(DOC, &out),
            [
                "firewall.enabled",
                "instrument[1].model",
                "instrument[3].listen",
                "instrument[3].serial",
                "network.uplink.address",
                "network.uplink.addressing",
                "network.uplink.dns"
            ]
        );
        // A whole table as an object.
        let out = applied(json!({"instrument[3]": {"serial": "D-4", "listen": "10.10.4.1:7300"}}));
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(t["instrument"][3]["listen"].as_str(), Some("10.10.4.1:7300"));
        assert!(out.ends_with("[[instrument]]\nlisten = \"10.10.4.1:7300\"\nserial = \"D-4\"\n"), "{out}");
    }

    #[test]
    fn removals_name_the_document_before_the_change() {
        let out = applied(json!({"instrument[0]": null, "instrument[2]": null, "network.uplink.dns": null}));
        let t: toml::Table = toml::from_str(&out).unwrap();
        let inst = t["instrument"].as_array().unwrap();
        assert_eq!(inst.len(), 1);
        assert_eq!(inst[0]["serial"].as_str(), Some("B-2"));
        assert!(t["network"]["uplink"].get("dns").is_none());
        // Setting a later index and removing an earlier one: the set uses the old numbering.
        let out = applied(json!({"instrument[2].model": "x", "instrument[0]": null}));
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(t["instrument"][1]["serial"].as_str(), Some("C-3"));
        assert_eq!(t["instrument"][1]["model"].as_str(), Some("x"));
    }

    #[test]
    fn refusals_name_the_key() {
        assert_eq!(
            refused(json!({"uplink.prxoy": null})),
            "key `uplink.prxoy`: is not in the configuration: nothing to remove"
        );
        assert_eq!(
            refused(json!({"instrument[5].serial": "X"})),
            "key `instrument[5].serial`: index 5 is beyond the end: `instrument` has 3 (use [3] to add one)"
        );
        assert_eq!(
            refused(json!({"instrument[1]": null, "instrument[1].serial": "X"})),
            "key `instrument[1]`: contains `instrument[1].serial`: change one or the other"
        );
        assert_eq!(refused(json!({"uplink.url.x": 1})), "key `uplink.url.x`: `url` is a value, not a section");
        assert_eq!(refused(json!({"uplink[0]": 1})), "key `uplink[0]`: `uplink` is not an array");
        assert_eq!(
            refused(json!({"network.uplink.dns": [null]})),
            "key `network.uplink.dns`: null is only allowed as the whole value (it removes the key)"
        );
        let m = json!({"uplink..url": 1});
        assert!(from_json(m.as_object().unwrap()).unwrap_err().to_string().contains("not a key path"));
        assert_eq!(apply(DOC, &[]).unwrap_err().to_string(), "key `(none)`: no key to change");
    }

    #[test]
    fn proxy_credentials_are_hidden() {
        let out = applied(json!({"uplink.proxy": "http://rapbox:s3cret@10.0.0.9:3128"}));
        let shown = redact_proxy(&out);
        assert!(shown.contains("proxy = \"http://***@10.0.0.9:3128/\""), "{shown}");
        assert!(!shown.contains("s3cret"));
        assert_eq!(redact_proxy(DOC), DOC);
    }

    #[test]
    fn command_line_assignments() {
        let c = parse_assignment("uplink.proxy=http://10.0.0.9:3128").unwrap();
        assert_eq!(c, Change::Set("uplink.proxy".parse().unwrap(), json!("http://10.0.0.9:3128")));
        let c = parse_assignment("instrument[0].agent_port = 7301").unwrap();
        assert_eq!(c, Change::Set("instrument[0].agent_port".parse().unwrap(), json!(7301)));
        let c = parse_assignment("firewall.enabled=true").unwrap();
        assert_eq!(c, Change::Set("firewall.enabled".parse().unwrap(), json!(true)));
        let c = parse_assignment(r#"network.uplink.dns=["192.0.2.53", "192.0.2.54"]"#).unwrap();
        assert_eq!(c, Change::Set("network.uplink.dns".parse().unwrap(), json!(["192.0.2.53", "192.0.2.54"])));
        let c = parse_assignment(r#"instrument[0].serial="1234""#).unwrap();
        assert_eq!(c, Change::Set("instrument[0].serial".parse().unwrap(), json!("1234")));
        let c = parse_assignment("network.uplink.addressing=static").unwrap();
        assert_eq!(c, Change::Set("network.uplink.addressing".parse().unwrap(), json!("static")));
        assert!(parse_assignment("uplink.proxy").unwrap_err().to_string().contains("expected KEY=VALUE"));
        let e = parse_assignment(r#"network.uplink.dns=["192.0.2.53""#).unwrap_err().to_string();
        assert!(e.starts_with("key `network.uplink.dns`: `[\"192.0.2.53\"` is not a TOML value"), "{e}");
        // JSON round trip.
        let cs = vec![c, Change::Unset("uplink.proxy".parse().unwrap())];
        assert_eq!(from_json(&to_json(&cs)).unwrap().len(), 2);
    }
}
