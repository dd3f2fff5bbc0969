//! Per-test directories under `target/test-runs/<test name>/`.
//!
//! Each test gets a fresh directory for its configs, databases and peer logs. It is
//! removed when the test passes and kept when it fails (the drop happens while the
//! test thread panics), so CI can publish it as an artifact. Set
//! `RAPBOX_KEEP_TEST_DIRS=1` to keep every directory.

use std::fs;
use std::path::{Path, PathBuf};

/// Why a test directory could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("preparing test directory {path}: {source}")]
pub struct TestDirError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The `target/test-runs` directory of this workspace: `$CARGO_TARGET_DIR/test-runs`
/// when that is set (at run time or build time), else `<workspace>/target/test-runs`.
pub fn test_runs_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| {
            let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
            testkit.parent().unwrap_or(testkit).join("target")
        });
    target.join("test-runs")
}

/// A test's own directory, removed on success and kept on failure.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    keep: std::cell::Cell<bool>,
}

fn sanitize(segment: &str) -> String {
    segment.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

impl TestDir {
    /// `target/test-runs/<name>/`, emptied first. `name` may contain `/` or `::` to
    /// nest (e.g. `rapd/kill9/every_acked_message_arrives`).
    pub fn new(name: &str) -> Result<TestDir, TestDirError> {
        let mut path = test_runs_root();
        for seg in name.split(['/', ':']).filter(|s| !s.is_empty() && *s != "." && *s != "..") {
            path.push(sanitize(seg));
        }
        let err = |source| TestDirError { path: path.clone(), source };
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        fs::create_dir_all(&path).map_err(err)?;
        Ok(TestDir { path, keep: std::cell::Cell::new(false) })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates (if needed) and returns a subdirectory.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> Result<PathBuf, TestDirError> {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).map_err(|source| TestDirError { path: p.clone(), source })?;
        Ok(p)
    }

    /// Keeps the directory even if the test passes.
    pub fn keep(&self) {
        self.keep.set(true);
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep_all = std::env::var_os("RAPBOX_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty() && v != "0");
        if std::thread::panicking() || self.keep.get() || keep_all {
            eprintln!("test directory kept: {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A [`TestDir`] named after the enclosing test function (its module path without
/// the crate name, e.g. `target/test-runs/<crate>/kill9/every_acked_message_arrives`).
#[macro_export]
macro_rules! test_dir {
    () => {{
        fn here() {}
        fn name_of<T>(_: T) -> &'static str {
            ::std::any::type_name::<T>()
        }
        let name = name_of(here);
        let name = name.strip_suffix("::here").unwrap_or(name);
        $crate::TestDir::new(name).expect("creating the test directory")
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_on_success_kept_on_panic() {
        let d = crate::test_dir!();
        assert!(d.path().ends_with("test-runs/rapbox_testkit/dir/tests/removed_on_success_kept_on_panic"), "{d:?}");
        fs::write(d.join("x"), b"x").unwrap();
        let p = d.path().to_path_buf();
        drop(d);
        assert!(!p.exists());
        let kept = std::thread::spawn(|| {
            let d = TestDir::new("testkit/dir/panicking").unwrap();
            let p = d.path().to_path_buf();
            let _guard = d;
            std::panic::panic_any(p);
        })
        .join()
        .unwrap_err();
        let p = kept.downcast_ref::<PathBuf>().unwrap();
        assert!(p.is_dir(), "kept on failure");
        let again = TestDir::new("testkit/dir/panicking").unwrap();
        assert!(fs::read_dir(again.path()).unwrap().next().is_none(), "emptied on reuse");
    }

    #[test]
    fn names_cannot_escape() {
        let d = TestDir::new("testkit/../../etc/x y").unwrap();
        assert!(d.path().starts_with(test_runs_root()));
        assert!(d.path().ends_with("testkit/etc/x_y"));
    }
}
