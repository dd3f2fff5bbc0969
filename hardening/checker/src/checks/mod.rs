//! The offline checks of a root file system tree, grouped by area of the catalogue.
//! Every check takes the shared context and returns a [`Verdict`] for one control.

pub mod accounts;
pub mod audit;
pub mod crypto;
pub mod files;
pub mod kernel;
pub mod software;
pub mod sshd;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::policy::Policy;
use crate::report::Verdict;
use crate::root::{Entry, Root};
use crate::sysfiles::{self, GroupEntry, PasswdEntry, ShadowEntry};

/// Inputs besides the tree.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// apt lists directory of the build (control 25).
    pub apt_lists: Option<PathBuf>,
    /// The EFI system partition tree (controls 40, 45).
    pub esp: Option<PathBuf>,
    /// Kernel command line files (control 45), e.g. build/image/boot/cmdline-a.
    pub cmdlines: Vec<PathBuf>,
    /// The image's manifest.json (control 25: packages shipped outside the root's dpkg
    /// database, i.e. the boot loader on the ESP).
    pub manifest: Option<PathBuf>,
}

/// Everything a check may look at, read once.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub root: Root,
    pub policy: &'a Policy,
    pub inputs: &'a Inputs,
    pub entries: Vec<Entry>,
    pub passwd: Vec<PasswdEntry>,
    pub group: Vec<GroupEntry>,
    pub shadow: Vec<ShadowEntry>,
    pub login_defs: Option<BTreeMap<String, String>>,
}

impl<'a> Ctx<'a> {
    pub fn new(root: Root, policy: &'a Policy, inputs: &'a Inputs) -> Ctx<'a> {
        let entries = root.walk();
        let passwd = sysfiles::passwd(&root.read("/etc/passwd").unwrap_or_default());
        let group = sysfiles::group(&root.read("/etc/group").unwrap_or_default());
        let shadow = sysfiles::shadow(&root.read("/etc/shadow").unwrap_or_default());
        let login_defs = root.read("/etc/login.defs").map(|t| sysfiles::key_values(&t));
        Ctx { root, policy, inputs, entries, passwd, group, shadow, login_defs }
    }

    pub fn user_name(&self, uid: u32) -> Option<&str> {
        self.passwd.iter().find(|p| p.uid == uid).map(|p| p.name.as_str())
    }

    pub fn group_name(&self, gid: u32) -> Option<&str> {
        self.group.iter().find(|g| g.gid == gid).map(|g| g.name.as_str())
    }

    pub fn gid_of(&self, name: &str) -> Option<u32> {
        self.group.iter().find(|g| g.name == name).map(|g| g.gid)
    }

    pub fn uid_of(&self, name: &str) -> Option<u32> {
        self.passwd.iter().find(|p| p.name == name).map(|p| p.uid)
    }
}

/// Runs every offline check: (control id, verdict) in catalogue order.
pub fn run(ctx: &Ctx) -> Vec<(u8, Verdict)> {
    use crate::catalogue::{Kind, CONTROLS};
    let mut out = Vec::new();
    for c in CONTROLS {
        let v = match c.id {
            1..=11 => accounts::check(ctx, c.id),
            12..=19 => files::check(ctx, c.id),
            20..=25 => software::check(ctx, c.id),
            26..=33 => sshd::check(ctx, c.id),
            35..=38 | 40 => kernel::check(ctx, c.id),
            41..=44 => audit::check(ctx, c.id),
            45 => crypto::check(ctx),
            _ if c.kind == Kind::Runtime => Verdict::runtime(format!("checked in the running guest: {}", c.live)),
            _ => Verdict::not_evaluated("no offline check"),
        };
        out.push((c.id, v));
    }
    out
}

/// At most `n` items joined, with a count of the rest.
pub fn sample(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        s.push_str(&format!(" (and {} more)", items.len() - n));
    }
    s
}
