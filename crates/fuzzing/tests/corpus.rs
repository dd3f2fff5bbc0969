//! Replays every stored fuzz input (fuzz/corpus/<target>/) through the property
//! function its target checks, on the stable toolchain: the corpora the 10-million-run
//! campaigns grew (docs/reliability.md) stay a regression suite in CI without libFuzzer.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the corpus is part of the repository)", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(target);
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // Name the input that broke a property.
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{target}: {} breaks a property (see the panic above)", f.display());
    }
    files.len()
}

#[test]
fn agent_frame_corpus() {
    let n = replay("agent_frame", rapfuzz::agent_frame);
    eprintln!("agent_frame: {n} inputs");
}

#[test]
fn batch_corpus() {
    let n = replay("batch", rapfuzz::batch);
    eprintln!("batch: {n} inputs");
}

#[test]
fn config_corpus() {
    let n = replay("config", rapfuzz::config);
    let loading = corpus("config").iter().filter(|f| rapfuzz::config_loads(&std::fs::read(f).unwrap())).count();
    eprintln!("config: {n} inputs, {loading} of them valid configurations");
    assert!(loading >= 3, "the corpus keeps inputs that pass validation (only {loading} do)");
}
