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
    // The corpus reaches every version-2 frame type's decoder (as a body), not only version 1.
    let mut seen = std::collections::BTreeSet::new();
    for f in corpus("agent_frame") {
        if let Ok(rapwire::agent::Frame::Request(m)) = rapwire::agent::decode(&std::fs::read(&f).unwrap()) {
            seen.insert(m.name());
        }
    }
    eprintln!("agent_frame: version-2 frames decoded: {seen:?}");
    assert_eq!(seen.len(), 12, "version-2 frame types in the corpus: {seen:?}");
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

#[test]
fn command_corpus() {
    let n = replay("command", rapfuzz::command);
    let values: Vec<serde_json::Value> =
        corpus("command").iter().filter_map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).ok()).collect();
    let decoding = values.iter().filter(|v| rapfuzz::command_decodes(v)).count();
    let answers = values.iter().filter(|v| v.get("commands").is_some()).count();
    eprintln!("command: {n} inputs, {decoding} of them commands that decode, {answers} answers with commands");
    assert!(decoding >= 3 && answers >= 2, "the corpus keeps commands that decode and answers that carry them");
}

#[test]
fn manifest_corpus() {
    let n = replay("manifest", rapfuzz::manifest);
    let files = corpus("manifest");
    let inputs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let parsing = inputs.iter().filter(|d| d.first() == Some(&0) && rapfuzz::manifest_parses(&d[1..])).count();
    let verified = inputs
        .iter()
        .filter(|d| d.first() == Some(&1))
        .filter_map(|d| serde_json::from_slice::<serde_json::Value>(&d[1..]).ok())
        .filter(rapfuzz::download_args)
        .count();
    eprintln!(
        "manifest: {n} inputs, {parsing} valid manifests, {verified} download arguments whose signature verifies"
    );
    // Signed by the private halves of keys/ (not kept): ECDSA, RSA PKCS#1 v1.5, RSA-PSS.
    assert!(parsing >= 2 && verified >= 3, "the corpus keeps valid manifests and signed download arguments");
}
