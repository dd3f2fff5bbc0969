//! What the fuzz targets check, one function per target, shared by the cargo-fuzz
//! targets in `fuzz/fuzz_targets/` and the corpus replay test (`tests/corpus.rs`), which
//! runs every stored input through the same function on the stable toolchain in CI.
//!
//! Each function takes arbitrary bytes and panics only when a property that the code
//! promises is broken (a panic inside the decoder counts the same way):
//!
//! * [`agent_frame`]: the agent protocol (`rapwire::agent`) — the body decoder never
//!   panics, whatever decodes re-encodes to the same frame (byte for byte where the
//!   encoding is canonical), and the stream reader never hands out or allocates a body
//!   over `MAX_BODY`.
//! * [`batch`]: the uplink batch decoder the data center runs on untrusted bodies
//!   (`rapwire::batch`) — on the compressed body as received and, so that mutations
//!   reach the record decoder behind zstd, on the fuzzer's bytes compressed first;
//!   whatever decodes stays within the limits and survives a re-encode unchanged.
//! * [`config`]: rapd's configuration loading (`rapbox::config`) — no panic on any text,
//!   every error names the file (and, for a bad value, the key), and a configuration that
//!   loads satisfies what the rest of rapd relies on.

use std::collections::HashSet;
use std::path::Path;

use rapbox::config::{Config, ConfigError};
use rapwire::agent::{self, Frame, ReadError, Reply, MAX_BODY};
use rapwire::batch::{self, Encoder, MAX_RECORDS};

/// The agent protocol: one body as the decoder sees it, and the same bytes as a stream
/// of length-prefixed frames as the ingest reader sees them.
pub fn agent_frame(data: &[u8]) {
    let _ = agent::peek_msg_id(data);
    check_body(data);

    let mut stream = data;
    let mut buf = Vec::new();
    loop {
        match agent::read_body(&mut stream, &mut buf) {
            Ok(()) => {
                assert!(buf.len() <= MAX_BODY, "read_body returned {} bytes", buf.len());
                check_body(&buf);
            }
            Err(ReadError::TooLarge(n)) => {
                assert!(n as usize > MAX_BODY, "refused a declared length of {n} within the limit");
                assert!(buf.capacity() <= MAX_BODY, "allocated {} bytes for a refused frame", buf.capacity());
                break;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => break,
        }
    }
}

fn check_body(body: &[u8]) {
    let frame = match agent::decode(body) {
        Ok(f) => f,
        Err(e) => {
            // Every refusal maps to a protocol error code and a message.
            let _ = e.code();
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let mut out = Vec::new();
    match &frame {
        Frame::Report(r) => r.encode_into(&mut out),
        Frame::Reply(r) => r.encode_into(&mut out),
        Frame::Request(m) => m.encode_into(&mut out),
    }
    let len = u32::from_be_bytes(out[..4].try_into().expect("4-byte prefix")) as usize;
    assert_eq!(len, out.len() - 4, "length prefix");
    let again = agent::decode(&out[4..]).unwrap_or_else(|e| panic!("re-encoded {frame:?} does not decode: {e}"));
    assert_eq!(again, frame, "decode(encode(frame)) != frame");
    // Reports and errors have one encoding; an ack's duplicate flag decodes any non-zero byte
    // as true; version-2 requests are checked by the round trip above only.
    let canonical = match frame {
        Frame::Report(_) | Frame::Reply(Reply::Error { .. }) => true,
        Frame::Reply(Reply::Ack { .. }) => body.last().is_some_and(|b| *b <= 1),
        Frame::Request(_) => false,
    };
    if canonical {
        assert_eq!(&out[4..], body, "{frame:?} re-encodes to different bytes");
    }
}

/// The uplink batch decoder. The first byte chooses how the rest is used: even, as the
/// compressed body itself; odd, as the decompressed layout (compressed here first).
pub fn batch(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        check_batch(rest);
    } else {
        let body = zstd::bulk::compress(rest, 1).expect("zstd compresses an in-memory buffer");
        check_batch(&body);
    }
}

fn check_batch(body: &[u8]) {
    let Ok(b) = batch::decode(body) else { return };
    assert!(b.records.len() <= MAX_RECORDS, "{} records", b.records.len());
    let mut e = Encoder::new(b.batch_id, b.dropped_total);
    for r in &b.records {
        assert!(r.priority <= rapwire::PRIORITY_LOWEST, "priority {}", r.priority);
        e.push(&r.instrument, r.msg_id, r.timestamp_ms, r.kind, r.priority, &r.payload);
    }
    let again = batch::decode(&e.finish()).unwrap_or_else(|err| panic!("re-encoded batch does not decode: {err}"));
    assert_eq!(again, b, "decode(encode(batch)) != batch");
}

/// The path the configuration is "read from" in the config target.
pub const CONFIG_PATH: &str = "/etc/rapbox/rapd.toml";

/// Configuration loading, on any UTF-8 text.
pub fn config(data: &[u8]) {
    config_loads(data);
}

/// [`config`], telling whether the text loaded as a valid configuration (the corpus test
/// uses it to prove that the stored inputs reach the validated path, not only the parser).
pub fn config_loads(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let path = Path::new(CONFIG_PATH);
    match Config::parse(path, text) {
        Err(e) => {
            let s = e.to_string();
            assert!(s.starts_with(&format!("{CONFIG_PATH}: ")), "error does not name the file: {s}");
            if let ConfigError::Invalid { key, .. } = &e {
                assert!(!key.is_empty(), "error does not name the key: {s}");
            }
            false
        }
        Ok(c) => {
            check_config(&c);
            true
        }
    }
}

/// What the rest of rapd takes for granted about a loaded configuration.
fn check_config(c: &Config) {
    assert_eq!(c.path, Path::new(CONFIG_PATH));
    assert!(c.queue.path.is_absolute(), "queue.path {:?}", c.queue.path);
    assert!(c.queue.quota_bytes >= 1 << 20, "queue.quota_bytes {}", c.queue.quota_bytes);
    assert_ne!(c.audit.path, c.queue.path, "audit log on the queue database");
    assert_eq!(c.uplink.url.scheme(), "https", "uplink.url {}", c.uplink.url);
    for p in [&c.uplink.ca, &c.uplink.cert, &c.uplink.key] {
        assert!(p.is_absolute(), "uplink file {p:?}");
    }
    assert!(c.uplink.backoff_max >= c.uplink.backoff_initial, "backoff");
    assert!((1..=64).contains(&c.ingest.max_connections_per_port), "{}", c.ingest.max_connections_per_port);
    assert!(c.ingest.idle_timeout >= c.ingest.frame_timeout, "ingest timeouts");
    let mut serials = HashSet::new();
    let mut listens = HashSet::new();
    for i in &c.instruments {
        // Every configured serial can be carried by the agent protocol.
        let s = i.serial.as_bytes();
        assert!(
            !s.is_empty() && s.len() <= agent::MAX_SERIAL && s.iter().all(u8::is_ascii_graphic),
            "serial {:?}",
            i.serial
        );
        assert!(serials.insert(&i.serial), "serial {} twice", i.serial);
        assert!(listens.insert(i.listen), "listen {} twice", i.listen);
    }
    if c.firewall.enabled {
        assert!(c.network.uplink.is_some(), "firewall without uplink interface");
        assert!(c.instruments.iter().all(|i| i.port.is_some()), "firewall with an instrument without a port");
    }
}
