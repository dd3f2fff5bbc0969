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
//! * [`command`]: the command channel (`rapwire::command`) — the data center's answers as
//!   rapd's uplink decodes them, each command as rapd's dispatcher decodes it: a command
//!   that decodes meets the envelope's limits and survives a re-encode; one that does not
//!   is refused with a reason, by id whenever it had a readable one, and that refusal is a
//!   result the data center accepts.
//! * [`manifest`]: downloads and uploads (`rapwire::transfer`) — signed manifests, the
//!   `download` arguments as rapd's download handler takes them apart (base64 signature
//!   checked with `rapbox::transfers::signing` against the test vendor keys in `keys/`),
//!   and the header values of an upload chunk as the data center reads them: what is
//!   accepted names a plain file, carries a well-formed SHA-256 and fits the agent
//!   protocol's OFFER and UPLOAD frames.

use std::collections::HashSet;
use std::path::{Component, Path};
use std::sync::OnceLock;

use rapbox::config::{Config, ConfigError};
use rapbox::transfers::signing::{self, VendorKey};
use rapwire::agent::{self, Frame, ReadError, Reply, MAX_BODY};
use rapwire::batch::{self, Encoder, MAX_RECORDS};
use rapwire::command::{self, BatchAnswer, Command, CommandResult, Exchange, ExchangeAnswer};
use rapwire::requests::{self, Message};
use rapwire::transfer::{self, base64, Category, DownloadArgs, Manifest};
use serde_json::Value;

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
    if let Frame::Request(m) = &frame {
        check_request(m, body);
    }
    // Reports, errors and version-2 requests have one encoding; an ack's duplicate flag
    // decodes any non-zero byte as true.
    let canonical = match frame {
        Frame::Report(_) | Frame::Reply(Reply::Error { .. }) | Frame::Request(_) => true,
        Frame::Reply(Reply::Ack { .. }) => body.last().is_some_and(|b| *b <= 1),
    };
    if canonical {
        assert_eq!(&out[4..], body, "{frame:?} re-encodes to different bytes");
    }
}

/// What rapd's agent sessions rely on about a decoded version-2 frame.
fn check_request(m: &Message, body: &[u8]) {
    // A malformed request can be refused by its id; a decoded one has that same id.
    assert_eq!(requests::peek_req(body), m.req(), "{} request id", m.name());
    match m {
        Message::Hello { software, .. } => {
            assert!(software.len() <= requests::MAX_SOFTWARE, "HELLO software of {} bytes", software.len())
        }
        Message::Refused { reason, .. } | Message::Received { reason, .. } => {
            assert!(reason.len() <= agent::MAX_REASON, "{} reason of {} bytes", m.name(), reason.len())
        }
        Message::Offer { name, .. } | Message::Upload { name, .. } => assert_plain_file_name(name),
        Message::Data { data, .. } | Message::Chunk { data, .. } => {
            assert!(data.len() <= requests::MAX_CHUNK, "{} of {} bytes", m.name(), data.len())
        }
        _ => {}
    }
}

/// A name the box may store a file under: one plain path component, no hidden file.
fn assert_plain_file_name(name: &str) {
    assert!(transfer::valid_name(name), "file name {name:?}");
    let parts: Vec<Component<'_>> = Path::new(name).components().collect();
    assert!(
        matches!(parts.as_slice(), [Component::Normal(n)] if *n == std::ffi::OsStr::new(name)),
        "file name {name:?} is not one plain path component"
    );
    assert!(!name.starts_with('.') && !name.bytes().any(|b| b.is_ascii_control()), "file name {name:?}");
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

/// The command channel: the bytes as the body of the answer to a batch upload and of the
/// answer to an exchange (decoded as rapd's uplink does), and as one command value (so
/// that mutations reach the envelope directly); every command goes through what rapd's
/// dispatcher does with it.
pub fn command(data: &[u8]) {
    if let Ok(a) = serde_json::from_slice::<BatchAnswer>(data) {
        a.commands.iter().for_each(check_command);
    }
    if let Ok(a) = serde_json::from_slice::<ExchangeAnswer>(data) {
        a.commands.iter().for_each(check_command);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        check_command(&v);
    }
}

/// [`command`] on one delivered value; true when it decoded as a command (the corpus test
/// uses it to prove that the stored inputs reach past the envelope).
pub fn command_decodes(v: &Value) -> bool {
    let readable_id = v.get("id").and_then(Value::as_str).filter(|i| command::valid_id(i));
    match Command::from_value(v) {
        Ok(c) => {
            assert_eq!(Some(c.id.as_str()), readable_id, "decoded id");
            c.check().unwrap_or_else(|e| panic!("decoded command {} fails its own check: {e}", c.id));
            let size = serde_json::to_vec(v).expect("a Value encodes").len();
            assert!(size <= command::MAX_COMMAND_BYTES, "command of {size} bytes decoded");
            assert!(c.expires_ms >= c.issued_ms && c.target.len() <= command::MAX_TARGETS);
            // What the box stores of it decodes again to the same command.
            let again = serde_json::to_value(&c).expect("a Command encodes");
            assert_eq!(Command::from_value(&again).as_ref(), Ok(&c), "from_value(to_value(command))");
            if c.kind == transfer::DOWNLOAD_KIND {
                download_args(&c.args);
            }
            // Whatever the box then answers about it is a result the data center accepts.
            let reason = format!("this box does not know command kind `{}`", c.kind);
            check_result(&CommandResult::refused(&c.id, command::code::UNKNOWN_KIND, &reason, c.issued_ms));
            true
        }
        Err(m) => {
            assert!(!m.reason.is_empty(), "a refusal without a reason");
            assert_eq!(m.id.as_deref(), readable_id, "a malformed command's id: {}", m.reason);
            if let Some(id) = &m.id {
                check_result(&CommandResult::refused(id, command::code::MALFORMED, &m.reason, 0));
            }
            false
        }
    }
}

fn check_command(v: &Value) {
    command_decodes(v);
}

/// A result as the box reports it in an exchange and the data center reads it.
fn check_result(r: &CommandResult) {
    r.check().unwrap_or_else(|e| panic!("the box would report a result the data center refuses: {e}"));
    let body = serde_json::to_vec(&Exchange { results: vec![r.clone()] }).expect("an exchange encodes");
    let back: Exchange = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("exchange does not decode: {e}"));
    assert_eq!(back.results.as_slice(), std::slice::from_ref(r), "exchange round trip");
}

/// Downloads and uploads. The first byte chooses what the rest is: 0, the bytes of a
/// manifest (as parsed once its signature verified); 1, the JSON arguments of a `download`
/// command; 2, the header values of an upload chunk, one a line (offset, size, SHA-256,
/// name, category, instrument).
pub fn manifest(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            manifest_parses(rest);
        }
        1 => {
            if let Ok(v) = serde_json::from_slice::<Value>(rest) {
                download_args(&v);
            }
        }
        _ => upload_headers(rest),
    }
}

/// [`manifest`]'s check of manifest bytes; true when they parsed as a valid manifest.
pub fn manifest_parses(bytes: &[u8]) -> bool {
    let m = match Manifest::parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.is_empty(), "a refusal without a reason");
            return false;
        }
    };
    assert!(bytes.len() <= transfer::MAX_MANIFEST_BYTES, "manifest of {} bytes parsed", bytes.len());
    m.check().unwrap_or_else(|e| panic!("parsed manifest fails its own check: {e}"));
    assert!(m.size <= transfer::MAX_FILE_BYTES, "size {}", m.size);
    assert!((1..=command::MAX_TARGETS).contains(&m.targets.len()), "{} targets", m.targets.len());
    assert_plain_file_name(&m.name);
    let sha = transfer::sha256_bytes(&m.sha256).unwrap_or_else(|| panic!("sha256 {:?} parsed", m.sha256));
    assert_eq!(transfer::hex(&sha), m.sha256, "sha256 hex round trip");
    // The vendor tool's encoding of it parses to the same manifest (when it fits the limit).
    let written = m.to_bytes();
    match Manifest::parse(&written) {
        Ok(again) => assert_eq!(again, m, "parse(to_bytes(manifest))"),
        Err(e) => assert!(written.len() > transfer::MAX_MANIFEST_BYTES, "to_bytes(manifest) does not parse: {e}"),
    }
    // What the box offers the instrument for it is a valid OFFER frame.
    let offer = Message::Offer { req: 1, transfer: 1, size: m.size, sha256: sha, category: m.category, name: m.name };
    let frame = offer.to_frame();
    assert_eq!(agent::decode(&frame[4..]), Ok(Frame::Request(offer)), "OFFER of a parsed manifest");
    true
}

/// The test vendor keys (`keys/`, public halves only: ECDSA P-256 and RSA-3072).
fn vendor_keys() -> &'static [VendorKey] {
    static KEYS: OnceLock<Vec<VendorKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys");
        ["vendor-ec.pem", "vendor-rsa.pem"]
            .iter()
            .map(|f| signing::load_key(&dir.join(f)).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    })
}

/// The `download` arguments as rapd's download handler takes them apart (limits, base64,
/// signature over the manifest's exact bytes, then the manifest); true when the signature
/// verified with a test vendor key (only the stored seeds signed with it can).
pub fn download_args(args: &Value) -> bool {
    let Ok(a) = serde_json::from_value::<DownloadArgs>(args.clone()) else { return false };
    if a.manifest.len() > transfer::MAX_MANIFEST_BYTES || a.signature.len() > transfer::MAX_SIGNATURE_BYTES {
        return false;
    }
    let sig = match base64::decode(&a.signature) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.is_empty(), "a refusal without a reason");
            return false;
        }
    };
    let text_len = a.signature.bytes().filter(|b| !b.is_ascii_whitespace()).count();
    let encoded = base64::encode(&sig);
    assert_eq!(encoded.len(), text_len, "base64 of {} bytes", sig.len());
    assert_eq!(base64::decode(&encoded).as_ref(), Ok(&sig), "base64 round trip");
    let verified = signing::verify(vendor_keys(), a.manifest.as_bytes(), &sig).is_ok();
    manifest_parses(a.manifest.as_bytes());
    verified
}

/// Header values of an upload chunk as the data center reads them (numbers trimmed and
/// parsed as u64; name, SHA-256 and category through rapwire's validators); accepted
/// values describe a plain file that the instrument's UPLOAD frame carries unchanged.
fn upload_headers(rest: &[u8]) {
    // Header values are ASCII (tiny_http hands them over as such).
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if !text.is_ascii() {
        return;
    }
    let mut h = text.split('\n');
    let mut next = || h.next().unwrap_or("");
    let (offset, size, sha256, name, category) = (next(), next(), next(), next(), next());
    let num = |v: &str| v.trim().parse::<u64>().ok();
    let (Some(_offset), Some(size)) = (num(offset), num(size)) else { return };
    let cat = Category::parse(category);
    if let Some(c) = cat {
        assert_eq!(c.name(), category, "category round trip");
    }
    let valid = transfer::valid_name(name)
        && transfer::valid_sha256(sha256)
        && cat.is_some()
        && (1..=transfer::MAX_FILE_BYTES).contains(&size);
    if !valid {
        return;
    }
    assert_plain_file_name(name);
    let sha = transfer::sha256_bytes(sha256).unwrap_or_else(|| panic!("sha256 {sha256:?} accepted"));
    assert_eq!(transfer::hex(&sha), sha256, "sha256 hex round trip");
    let upload = Message::Upload { req: 7, size, sha256: sha, category: cat.expect("checked"), name: name.into() };
    let frame = upload.to_frame();
    assert_eq!(agent::decode(&frame[4..]), Ok(Frame::Request(upload)), "UPLOAD of accepted headers");
}
