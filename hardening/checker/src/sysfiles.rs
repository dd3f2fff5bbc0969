//! Parsers of the plain system databases: etc/passwd, etc/group, etc/shadow and
//! KEY VALUE files such as etc/login.defs.

use std::collections::BTreeMap;

/// One etc/passwd line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub password: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One etc/group line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
}

/// One etc/shadow line (name and password field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowEntry {
    pub name: String,
    pub hash: String,
}

fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).map(|l| l.split(':').collect())
}

pub fn passwd(text: &str) -> Vec<PasswdEntry> {
    records(text)
        .filter(|f| f.len() >= 7)
        .map(|f| PasswdEntry {
            name: f[0].into(),
            password: f[1].into(),
            // An unparsable UID is treated as 0: the account is then reported, not ignored.
            uid: f[2].parse().unwrap_or(0),
            gid: f[3].parse().unwrap_or(0),
            home: f[5].into(),
            shell: f[6].into(),
        })
        .collect()
}

pub fn group(text: &str) -> Vec<GroupEntry> {
    records(text)
        .filter(|f| f.len() >= 3)
        .filter_map(|f| Some(GroupEntry { name: f[0].into(), gid: f[2].parse().ok()? }))
        .collect()
}

pub fn shadow(text: &str) -> Vec<ShadowEntry> {
    records(text).filter(|f| f.len() >= 2).map(|f| ShadowEntry { name: f[0].into(), hash: f[1].into() }).collect()
}

/// KEY VALUE (or KEY = VALUE) lines; comments start with #; the last setting wins.
pub fn key_values(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = match line.split_once('=') {
            Some((k, v)) if !k.trim().contains(char::is_whitespace) => (k.trim(), v.trim()),
            _ => match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (line, ""),
            },
        };
        m.insert(k.to_string(), v.trim_matches('"').to_string());
    }
    m
}

/// Is this a shell that refuses interactive logins?
pub fn is_nologin(shell: &str) -> bool {
    matches!(shell, "/usr/sbin/nologin" | "/sbin/nologin" | "/bin/false" | "/usr/bin/false")
}

/// A password field that no password can match (locked or disabled).
pub fn is_locked(hash: &str) -> bool {
    hash.starts_with('!') || hash.starts_with('*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_both_forms() {
        let m = key_values("UMASK\t\t022\n# x\nlog_group = root # c\nENCRYPT_METHOD SHA512\nUMASK 027\n");
        assert_eq!(m["UMASK"], "027");
        assert_eq!(m["log_group"], "root");
        assert_eq!(m["ENCRYPT_METHOD"], "SHA512");
    }
}
