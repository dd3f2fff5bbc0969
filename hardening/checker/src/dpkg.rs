//! Debian package data: var/lib/dpkg/status, apt's Packages lists (plain, .lz4, .gz)
//! and dpkg's version ordering.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{io, Error};

/// An installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The Source package (for reports), the binary name when absent.
    pub status: String,
}

/// Paragraphs of a deb822 file as field maps (continuation lines dropped).
pub fn paragraphs(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Packages whose files are on the system: every status but not-installed and
/// config-files (half-installed and unpacked packages count as present).
pub fn installed(status_text: &str) -> Vec<Installed> {
    paragraphs(status_text)
        .into_iter()
        .filter_map(|p| {
            let status = p.get("Status")?.clone();
            let state = status.split_whitespace().nth(2).unwrap_or("");
            if matches!(state, "not-installed" | "config-files") {
                return None;
            }
            Some(Installed {
                name: p.get("Package")?.clone(),
                version: p.get("Version").cloned().unwrap_or_default(),
                arch: p.get("Architecture").cloned().unwrap_or_default(),
                status,
            })
        })
        .collect()
}

/// The newest version of every package the apt lists in `dir` offer, the suite whose
/// list offers it, the suites that have a Packages list, and the Date of each
/// Release/InRelease file found (for the report).
#[derive(Debug, Clone, Default)]
pub struct Offered {
    pub newest: BTreeMap<String, String>,
    pub newest_from: BTreeMap<String, String>,
    pub suites: std::collections::BTreeSet<String>,
    pub lists: Vec<String>,
    pub dates: Vec<String>,
}

/// The suite an apt list file belongs to, from apt's file naming
/// (`deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages`).
pub fn list_suite(file_name: &str) -> Option<&str> {
    let rest = &file_name[file_name.find("_dists_")? + "_dists_".len()..];
    rest.split('_').next().filter(|s| !s.is_empty())
}

pub fn offered(dir: &Path) -> Result<Offered, Error> {
    let mut o = Offered::default();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if name.ends_with("InRelease") || name.ends_with("_Release") {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            if let Some(d) = text.lines().find_map(|l| l.strip_prefix("Date:")) {
                o.dates.push(format!("{}: {}", name, d.trim()));
            }
            continue;
        }
        let Some(kind) = ["_Packages", "_Packages.lz4", "_Packages.gz"].iter().find(|s| name.ends_with(*s)) else {
            continue;
        };
        let raw = std::fs::read(&path).map_err(io(&path))?;
        let text = match *kind {
            "_Packages.lz4" => {
                let mut s = String::new();
                lz4_flex::frame::FrameDecoder::new(&raw[..]).read_to_string(&mut s).map_err(io(&path))?;
                s
            }
            "_Packages.gz" => {
                let mut s = String::new();
                flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut s).map_err(io(&path))?;
                s
            }
            _ => String::from_utf8_lossy(&raw).into_owned(),
        };
        let suite = list_suite(&name).unwrap_or("?").to_string();
        for p in paragraphs(&text) {
            if let (Some(n), Some(v)) = (p.get("Package"), p.get("Version")) {
                let newer = o.newest.get(n).is_none_or(|cur| compare(v, cur) == Ordering::Greater);
                if newer {
                    o.newest.insert(n.clone(), v.clone());
                    o.newest_from.insert(n.clone(), suite.clone());
                }
            }
        }
        o.suites.insert(suite);
        o.lists.push(name);
    }
    Ok(o)
}

/// dpkg's version comparison (epoch, upstream version, Debian revision; `~` sorts
/// before everything, letters before non-letters).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| verrevcmp(ua, ub)).then_with(|| verrevcmp(ra, rb))
}

fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
        _ => (0, v),
    };
    match rest.rfind('-') {
        Some(i) => (epoch, &rest[..i], &rest[i + 1..]),
        None => (epoch, rest, ""),
    }
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0;
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == 0 {
                first_diff = a[i] as i32 - b[j] as i32;
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn dpkg_ordering() {
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("2.36-9+deb12u14", "2.36-9+deb12u9", Greater),
            ("1:1.0", "2.0", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0-1", "1.0-1+b1", Less),
            ("3.0.17-1~deb12u2", "3.0.17-1", Less),
            ("6.1.0-56", "6.1.0-9", Greater),
        ] {
            assert_eq!(compare(a, b), o, "{a} vs {b}");
        }
    }

    #[test]
    fn suite_from_list_file_names() {
        assert_eq!(
            list_suite("deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages.lz4"),
            Some("bookworm-security")
        );
        assert_eq!(list_suite("deb.debian.org_debian_dists_bookworm_InRelease"), Some("bookworm"));
        assert_eq!(list_suite("Packages"), None);
    }

    #[test]
    fn config_files_are_not_installed() {
        let s = "Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\n";
        let v = installed(s);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "a");
    }
}
