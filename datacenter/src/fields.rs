//! Values inside a report's payload, as triggers read them.
//!
//! Instruments send text. Two shapes are understood:
//!
//! * **key=value pairs**, separated by `;`, whitespace or line breaks, as the simulated
//!   instruments and most analyser status lines send them:
//!   `alarm=TEMP_HIGH;code=E201;temp=38.9;reagent_A=8%;pressure=101.3kPa`. A token without
//!   `=` is ignored; the first occurrence of a key wins.
//! * **a JSON object** (the payload, trimmed, starts with `{`): nested objects and arrays
//!   are flattened to dotted keys (`{"reagent":{"A":8}}` gives `reagent.A`, arrays give
//!   `list.0`, `list.1`); strings, numbers and booleans are values, `null` is absent.
//!
//! Every value keeps its text; it is also a number when it starts with a decimal number
//! followed by nothing or by a unit made of letters, `%`, `°` or `/` (`8%` is 8, `101.3kPa`
//! is 101.3, `2400rpm` is 2400, `-4.5°C` is -4.5; `E201`, `4.2.1` and `0x1f` are not numbers).

use std::collections::BTreeMap;

/// One value of a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The text as sent (JSON strings unquoted, JSON numbers and booleans as written).
    pub text: String,
    /// The number it starts with, when it is a number with an optional unit.
    pub number: Option<f64>,
}

impl Value {
    /// A value from its text, with the number recognised.
    pub fn from_text(text: impl Into<String>) -> Value {
        let text = text.into();
        let number = parse_number(&text);
        Value { text, number }
    }
}

/// The values of one payload, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields {
    values: BTreeMap<String, Value>,
}

impl Fields {
    /// Reads the values of `payload` (see the module documentation for the formats).
    pub fn parse(payload: &str) -> Fields {
        let trimmed = payload.trim_start();
        if trimmed.starts_with('{') {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(trimmed) {
                let mut values = BTreeMap::new();
                for (k, v) in map {
                    flatten(&k, v, &mut values);
                }
                return Fields { values };
            }
        }
        let mut values = BTreeMap::new();
        for token in payload.split(|c: char| c == ';' || c.is_whitespace()) {
            if let Some((k, v)) = token.split_once('=') {
                let k = k.trim();
                if !k.is_empty() && !values.contains_key(k) {
                    values.insert(k.to_owned(), Value::from_text(v.trim()));
                }
            }
        }
        Fields { values }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Every `(key, value)` whose key matches the glob `pattern` (see [`glob_match`]), in
    /// key order.
    pub fn matching<'a>(&'a self, pattern: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        let literal = !pattern.contains(['*', '?']);
        self.values
            .iter()
            .filter(move |(k, _)| if literal { k.as_str() == pattern } else { glob_match(pattern, k) })
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the payload carried no value at all.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

fn flatten(prefix: &str, v: serde_json::Value, out: &mut BTreeMap<String, Value>) {
    match v {
        serde_json::Value::Null => {}
        serde_json::Value::Bool(b) => {
            out.insert(prefix.to_owned(), Value { text: b.to_string(), number: None });
        }
        serde_json::Value::Number(n) => {
            out.insert(prefix.to_owned(), Value { text: n.to_string(), number: n.as_f64() });
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_owned(), Value::from_text(s));
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), item, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                flatten(&format!("{prefix}.{k}"), item, out);
            }
        }
    }
}

/// The decimal number at the start of `s`, if the rest is empty or a unit.
pub fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return None;
    }
    // An exponent only when digits follow it (so that `5e` stays 5 with unit "e").
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    let unit = &s[i..];
    if !unit.chars().all(|c| c.is_alphabetic() || matches!(c, '%' | '°' | '/')) {
        return None;
    }
    s[..i].parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Glob matching: `*` is any run of characters (also none), `?` exactly one; everything
/// else matches itself, case-sensitively.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulator_status_line() {
        let f = Fields::parse(
            "alarm=REAGENT_LOW;code=E305;severity=high;temp=37.1;reagent_A=8%;reagent_B=55%;door=closed;\
             pressure=101.3kPa;fan=2400rpm;fw=4.2.1;err=E305",
        );
        assert_eq!(f.get("temp").unwrap().number, Some(37.1));
        assert_eq!(f.get("reagent_A").unwrap().number, Some(8.0));
        assert_eq!(f.get("reagent_A").unwrap().text, "8%");
        assert_eq!(f.get("pressure").unwrap().number, Some(101.3));
        assert_eq!(f.get("fan").unwrap().number, Some(2400.0));
        assert_eq!(f.get("door").unwrap().text, "closed");
        assert_eq!(f.get("door").unwrap().number, None);
        assert_eq!(f.get("fw").unwrap().number, None, "a version is not a number");
        assert_eq!(f.get("code").unwrap().number, None);
        assert_eq!(f.get("alarm").unwrap().text, "REAGENT_LOW");
        let reagents: Vec<_> = f.matching("reagent_*").map(|(k, v)| (k, v.number)).collect();
        assert_eq!(reagents, vec![("reagent_A", Some(8.0)), ("reagent_B", Some(55.0))]);
        assert_eq!(f.matching("temp").count(), 1);
        assert_eq!(f.matching("tem").count(), 0);
    }

    #[test]
    fn whitespace_separated_and_first_key_wins() {
        let f = Fields::parse("temp=37.1 reagent=90%\ndoor=closed seq=1 temp=99 noise ==x");
        assert_eq!(f.get("temp").unwrap().number, Some(37.1));
        assert_eq!(f.get("seq").unwrap().number, Some(1.0));
        assert_eq!(f.len(), 4, "{f:?}");
        assert!(Fields::parse("no pairs here").is_empty());
        assert!(Fields::parse("").is_empty());
    }

    #[test]
    fn json_objects_are_flattened() {
        let f = Fields::parse(
            r#" {"temp": 38.2, "reagent": {"A": "8%", "B": 40}, "codes": ["E1", 2], "ok": true, "n": null}"#,
        );
        assert_eq!(f.get("temp").unwrap().number, Some(38.2));
        assert_eq!(f.get("reagent.A").unwrap().number, Some(8.0));
        assert_eq!(f.get("reagent.B").unwrap().text, "40");
        assert_eq!(f.get("codes.0").unwrap().text, "E1");
        assert_eq!(f.get("codes.1").unwrap().number, Some(2.0));
        assert_eq!(f.get("ok").unwrap().text, "true");
        assert!(f.get("n").is_none());
        // Not valid JSON: read as pairs.
        let f = Fields::parse("{broken temp=3");
        assert_eq!(f.get("temp").unwrap().number, Some(3.0));
    }

    #[test]
    fn numbers_and_units() {
        for (s, n) in [
            ("8%", Some(8.0)),
            ("-4.5°C", Some(-4.5)),
            ("+3", Some(3.0)),
            (".5", Some(0.5)),
            ("5.", Some(5.0)),
            ("1e3", Some(1000.0)),
            ("2.5E-1mm", Some(0.25)),
            ("5e", Some(5.0)),
            ("12 mg/dL", None),
            ("12mg/dL", Some(12.0)),
            ("E201", None),
            ("4.2.1", None),
            ("0x1f", None),
            ("", None),
            ("-", None),
            (".", None),
            ("nan", None),
            ("1e999", None),
        ] {
            assert_eq!(parse_number(s), n, "{s:?}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("DXI-*", "DXI-0001"));
        assert!(!glob_match("DXI-*", "AU-0001"));
        assert!(glob_match("reagent_?", "reagent_A"));
        assert!(!glob_match("reagent_?", "reagent_AB"));
        assert!(glob_match("*-00*1", "box-0001"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("", "x"));
        assert!(glob_match("", ""));
    }
}
