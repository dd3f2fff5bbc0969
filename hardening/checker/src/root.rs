//! A root file system tree seen from outside: absolute paths of the tree mapped into the
//! directory that holds it, symbolic links resolved inside the tree (an absolute link
//! target means the tree's root, never the host's), and one walk of every file on the
//! tree's file system (like `find -xdev`) shared by the file checks.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// File type of a walked entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
    /// Device, fifo or socket.
    Other,
}

/// One walked entry: its absolute path inside the tree and its lstat data.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: FileKind,
    /// Permission bits including set-user-ID, set-group-ID and sticky (mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The tree.
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
}

const MAX_LINKS: usize = 40;

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Root {
        Root { dir: dir.into() }
    }

    /// The host path of `abs` without resolving links (lstat of the last component).
    pub fn raw(&self, abs: &str) -> PathBuf {
        self.dir.join(abs.trim_start_matches('/'))
    }

    /// The host path of `abs` with every symbolic link resolved inside the tree. The
    /// result may not exist.
    pub fn resolve(&self, abs: &str) -> PathBuf {
        let mut todo: Vec<String> = Vec::new();
        push_components(&mut todo, abs);
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            done.push(c);
            let host = self.host(&done);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() && links < MAX_LINKS => {
                    links += 1;
                    let target = std::fs::read_link(&host).unwrap_or_default();
                    done.pop();
                    let t = target.to_string_lossy().into_owned();
                    if t.starts_with('/') {
                        done.clear();
                    }
                    push_components(&mut todo, &t);
                }
                _ => {}
            }
        }
        self.host(&done)
    }

    fn host(&self, comps: &[String]) -> PathBuf {
        let mut p = self.dir.clone();
        for c in comps {
            p.push(c);
        }
        p
    }

    /// Contents of a text file (links resolved), None when absent or unreadable.
    pub fn read(&self, abs: &str) -> Option<String> {
        std::fs::read(self.resolve(abs)).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn exists(&self, abs: &str) -> bool {
        self.resolve(abs).exists()
    }

    /// stat of `abs` with links resolved.
    pub fn stat(&self, abs: &str) -> Option<std::fs::Metadata> {
        std::fs::metadata(self.resolve(abs)).ok()
    }

    /// Names in a directory (links resolved), sorted; empty when absent.
    pub fn list(&self, abs_dir: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.resolve(abs_dir))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every entry on the tree's file system, depth first, sorted by name; does not
    /// descend into other file systems (mount points) nor follow links.
    pub fn walk(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let Ok(top) = std::fs::symlink_metadata(&self.dir) else {
            return out;
        };
        let dev = top.dev();
        out.push(entry("/".into(), &top));
        self.walk_dir(&self.dir, "", dev, &mut out);
        out
    }

    fn walk_dir(&self, host: &Path, abs: &str, dev: u64, out: &mut Vec<Entry>) {
        let Ok(rd) = std::fs::read_dir(host) else {
            return;
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let hp = host.join(&name);
            let Ok(m) = std::fs::symlink_metadata(&hp) else {
                continue;
            };
            let ap = format!("{abs}/{}", name.to_string_lossy());
            let e = entry(ap.clone(), &m);
            let descend = e.kind == FileKind::Dir && m.dev() == dev;
            out.push(e);
            if descend {
                self.walk_dir(&hp, &ap, dev, out);
            }
        }
    }
}

fn entry(path: String, m: &std::fs::Metadata) -> Entry {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    Entry { path, kind, mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid() }
}

/// Pushes the components of `path` so that the first one is popped first.
fn push_components(stack: &mut Vec<String>, path: &str) {
    let comps: Vec<String> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    stack.extend(comps.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path());
        std::fs::create_dir_all(t.path().join("usr/bin")).unwrap();
        std::fs::write(t.path().join("usr/bin/x"), "x").unwrap();
        std::os::unix::fs::symlink("usr/bin", t.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("/etc/../usr/bin/x", t.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/passwd", t.path().join("escape")).unwrap();
        assert_eq!(r.resolve("/bin/x"), t.path().join("usr/bin/x"));
        assert_eq!(r.read("/abs").as_deref(), Some("x"));
        assert_eq!(r.resolve("/escape"), t.path().join("etc/passwd"));
    }
}
