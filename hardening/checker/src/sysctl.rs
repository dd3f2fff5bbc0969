//! Kernel parameters of controls 35-37: the required values, and the effective values
//! of a tree's sysctl.d files as systemd-sysctl applies them.

use std::collections::BTreeMap;

use crate::root::Root;

/// How a value must compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    AtLeast,
}

/// One required kernel parameter.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    pub control: u8,
    pub key: &'static str,
    pub op: Op,
    pub value: i64,
}

const fn r(control: u8, key: &'static str, op: Op, value: i64) -> Requirement {
    Requirement { control, key, op, value }
}

pub const REQUIRED: &[Requirement] = &[
    r(35, "net.ipv4.ip_forward", Op::Eq, 0),
    r(35, "net.ipv4.conf.all.rp_filter", Op::Eq, 1),
    r(35, "net.ipv4.conf.default.rp_filter", Op::Eq, 1),
    r(35, "net.ipv4.conf.all.accept_redirects", Op::Eq, 0),
    r(35, "net.ipv4.conf.default.accept_redirects", Op::Eq, 0),
    r(35, "net.ipv6.conf.all.accept_redirects", Op::Eq, 0),
    r(35, "net.ipv6.conf.default.accept_redirects", Op::Eq, 0),
    r(35, "net.ipv4.conf.all.send_redirects", Op::Eq, 0),
    r(35, "net.ipv4.conf.default.send_redirects", Op::Eq, 0),
    r(35, "net.ipv4.conf.all.accept_source_route", Op::Eq, 0),
    r(35, "net.ipv4.conf.default.accept_source_route", Op::Eq, 0),
    r(35, "net.ipv6.conf.all.accept_source_route", Op::Eq, 0),
    r(35, "net.ipv6.conf.default.accept_source_route", Op::Eq, 0),
    r(36, "net.ipv4.tcp_syncookies", Op::Eq, 1),
    r(36, "kernel.kptr_restrict", Op::Eq, 2),
    r(36, "kernel.dmesg_restrict", Op::Eq, 1),
    r(37, "kernel.randomize_va_space", Op::Eq, 2),
    r(37, "kernel.unprivileged_bpf_disabled", Op::Eq, 1),
    r(37, "net.core.bpf_jit_harden", Op::Eq, 2),
    r(37, "kernel.yama.ptrace_scope", Op::AtLeast, 1),
    r(37, "fs.protected_hardlinks", Op::Eq, 1),
    r(37, "fs.protected_symlinks", Op::Eq, 1),
    r(37, "kernel.perf_event_paranoid", Op::AtLeast, 2),
];

impl Requirement {
    pub fn holds(&self, value: &str) -> bool {
        match value.trim().parse::<i64>() {
            Ok(v) => match self.op {
                Op::Eq => v == self.value,
                Op::AtLeast => v >= self.value,
            },
            Err(_) => false,
        }
    }
    pub fn wanted(&self) -> String {
        match self.op {
            Op::Eq => format!("{}", self.value),
            Op::AtLeast => format!(">= {}", self.value),
        }
    }
}

/// A key's effective value and the file that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: String,
    pub file: String,
}

const DIRS: &[&str] =
    &["/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d"];

/// Effective settings: files named *.conf from every sysctl.d directory, a name in an
/// earlier directory hiding the same name in later ones, applied in name order, later
/// assignments winning; etc/sysctl.conf last (Debian links it as 99-sysctl.conf). Glob
/// keys (net.ipv4.conf.*.rp_filter) apply to every required key they match.
pub fn effective(root: &Root) -> BTreeMap<String, Value> {
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for dir in DIRS {
        for n in root.list(dir) {
            if n.ends_with(".conf") && !by_name.contains_key(&n) {
                by_name.insert(n.clone(), format!("{dir}/{n}"));
            }
        }
    }
    let mut files: Vec<String> = by_name.into_values().collect();
    if !root.exists("/etc/sysctl.d/99-sysctl.conf") {
        files.push("/etc/sysctl.conf".into());
    }
    let mut out = BTreeMap::new();
    for f in files {
        let Some(text) = root.read(&f) else { continue };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { continue };
            let key = k.trim().trim_start_matches('-').replace('/', ".");
            let value = Value { value: v.trim().to_string(), file: f.clone() };
            if key.contains('*') || key.contains('?') {
                for req in REQUIRED {
                    if crate::policy::glob(&key, req.key) {
                        out.insert(req.key.to_string(), value.clone());
                    }
                }
            } else {
                out.insert(key, value);
            }
        }
    }
    out
}
