//! The record format and the hash chain: how a record line is built, hashed and checked,
//! and the walk that finds the first broken link of a file.
//!
//! A record is one line of JSON with its members in a fixed order:
//!
//! ```text
//! {"seq":17,"time":"2025-05-01T10:00:00.123Z","actor":"rapd","action":"firewall.drift_repaired",
//!  "target":"netfilter","outcome":"success","detail":{...},"prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! * `hash` is the SHA-256 of the line's own bytes without the `,"hash":"..."` member, i.e.
//!   of `{"seq":...,"prev":"..."}` exactly as written;
//! * `prev` is the SHA-256 of the previous line's bytes (all of it, `hash` included, without
//!   the newline), or [`GENESIS`] for record 1.
//!
//! Hashes are over bytes, never over a re-serialisation, so any change of any byte shows.
//! Digests go through OpenSSL's EVP interface with the process's default properties: in
//! rapd, after the FIPS gate, that is the FIPS provider and nothing else.

use std::path::{Path, PathBuf};

use openssl::hash::{hash, MessageDigest};
use serde::{Deserialize, Serialize};

/// `prev` of record 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex digits + `"}`: how every record line ends.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// The result of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// Refused on purpose (a failed login, a command not allowed).
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    /// UTC, RFC 3339 with milliseconds.
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: serde_json::Value,
    pub prev: String,
    pub hash: String,
}

/// What is hashed: the record without its hash, members in the stored order.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    outcome: Outcome,
    detail: &'a serde_json::Value,
    prev: &'a str,
}

/// SHA-256 through OpenSSL, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> Result<String, openssl::error::ErrorStack> {
    Ok(hash(MessageDigest::sha256(), data)?.iter().map(|b| format!("{b:02x}")).collect())
}

/// The record line (without newline) for these fields.
#[allow(clippy::too_many_arguments)]
pub fn build_line(
    seq: u64,
    time: &str,
    actor: &str,
    action: &str,
    target: &str,
    outcome: Outcome,
    detail: &serde_json::Value,
    prev: &str,
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let body = Body { seq, time, actor, action, target, outcome, detail, prev };
    // Serialising plain strings, numbers and a JSON value cannot fail.
    let mut line = serde_json::to_vec(&body).unwrap_or_default();
    let h = sha256_hex(&line)?;
    line.pop(); // the closing brace
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(h.as_bytes());
    line.extend_from_slice(b"\"}");
    Ok(line)
}

/// The bytes a line's `hash` covers, if the line ends the way every record ends.
fn hashed_part(line: &[u8]) -> Option<Vec<u8>> {
    let n = line.len();
    if n < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let suffix = &line[n - HASH_SUFFIX_LEN..];
    if !suffix.starts_with(b",\"hash\":\"") || !suffix[9..73].iter().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut body = line[..n - HASH_SUFFIX_LEN].to_vec();
    body.push(b'}');
    Some(body)
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_time(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// The inverse of [`format_time`] (only that exact form).
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

/// What the box keeps beside the log (`<log>.state`): the last record written and its
/// line's hash (to notice a truncated end), and how far the records went to the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The last record written.
    pub seq: u64,
    /// SHA-256 of that record's line (the next record's `prev`).
    pub hash: String,
    /// Every record up to this seq is stored in the queue.
    pub shipped: u64,
}

/// The state file of the log at `path`.
pub fn state_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The log checked.
    pub path: PathBuf,
    /// Whether every link holds (and the end matches the state file, when there is one).
    pub intact: bool,
    /// Complete records read before the end or the first break.
    pub records: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_seq: Option<u64>,
    /// SHA-256 of the last line read (what the next record's `prev` must be).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_hash: Option<String>,
    /// The state file the end was compared with (absent: the end was not checked).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_checked_against: Option<PathBuf>,
    /// The first broken link, e.g. `record 17: hash does not match its content`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The line (1-based) where it was found.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<u64>,
}

/// Why a file could not be checked at all (as opposed to checked and found broken).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("SHA-256 unavailable from OpenSSL: {0}")]
    Digest(#[from] openssl::error::ErrorStack),
}

/// Reads `path` and its state file (if present beside it) and walks the chain.
/// A missing log with no state file is an empty, intact log.
pub fn verify(path: &Path) -> Result<Verification, VerifyError> {
    let sp = state_path(path);
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(VerifyError::Read { path: path.into(), source }),
    };
    let state = match std::fs::read(&sp) {
        Ok(b) => match serde_json::from_slice::<State>(&b) {
            Ok(s) => Some(Ok(s)),
            Err(e) => Some(Err(format!("{}: not a state file: {e}", sp.display()))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(VerifyError::Read { path: sp, source }),
    };
    let mut v = match state {
        Some(Err(msg)) => {
            let mut v = walk(&bytes, None)?;
            if v.intact {
                v.intact = false;
                v.error = Some(msg);
            }
            v
        }
        Some(Ok(st)) => {
            let mut v = walk(&bytes, Some((&st, &sp)))?;
            v.end_checked_against = Some(sp);
            v
        }
        None => walk(&bytes, None)?,
    };
    v.path = path.into();
    Ok(v)
}

/// A complete line of the file and its 1-based line number.
fn lines(bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let tail = out.pop().unwrap_or_default();
    (out, tail)
}

/// The seq of a line, if it is a record at all (used to name what follows a gap).
fn seq_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Record>(line).ok().map(|r| r.seq)
}

/// Walks the chain of `bytes` and reports the first broken link. With `state`, the end of
/// the file must reach the record the box last wrote, with the same line hash.
pub fn walk(bytes: &[u8], state: Option<(&State, &Path)>) -> Result<Verification, VerifyError> {
    let mut v = Verification {
        path: PathBuf::new(),
        intact: false,
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        end_checked_against: None,
        error: None,
        line: None,
    };
    let (lines, tail) = lines(bytes);
    let mut prev: Option<(u64, String)> = None; // (seq, hash of its line)
    let mut state_line_seen = false;
    let fail = |mut v: Verification, n: usize, msg: String| {
        v.error = Some(msg);
        v.line = Some(n as u64 + 1);
        Ok(v)
    };
    for (n, line) in lines.iter().enumerate() {
        let after = match &prev {
            Some((s, _)) => format!("after record {s}"),
            None => "at the start of the file".into(),
        };
        let rec: Record = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => return fail(v, n, format!("line {}, {after}: not an audit record: {e}", n + 1)),
        };
        let seq = rec.seq;
        let Some(body) = hashed_part(line) else {
            return fail(v, n, format!("record {seq}: malformed: the line must end with its hash"));
        };
        if sha256_hex(&body)? != rec.hash {
            return fail(v, n, format!("record {seq}: hash does not match its content"));
        }
        match &prev {
            None if seq != 1 => {
                return fail(v, n, format!("file does not start at record 1: its first record is record {seq}"));
            }
            None if rec.prev != GENESIS => {
                return fail(v, n, format!("record {seq}: prev hash is not the genesis value"));
            }
            None => {}
            Some((ps, ph)) => {
                let expected = ps + 1;
                if seq > expected {
                    // A record missing, or records swapped: name which.
                    let later = lines[n + 1..].iter().position(|l| seq_of(l) == Some(expected));
                    return fail(
                        v,
                        n,
                        match later {
                            Some(k) => format!(
                                "records out of order: record {seq} follows record {ps}, record {expected} is at line {}",
                                n + k + 2
                            ),
                            None => format!("sequence gap after record {ps}"),
                        },
                    );
                }
                if seq < expected {
                    return fail(v, n, format!("records out of order: record {seq} follows record {ps}"));
                }
                if rec.prev != *ph {
                    return fail(v, n, format!("record {seq}: prev hash does not match record {ps}"));
                }
            }
        }
        let line_hash = sha256_hex(line)?;
        if let Some((st, sp)) = state {
            if st.seq == seq {
                if st.hash != line_hash {
                    return fail(
                        v,
                        n,
                        format!("record {seq}: does not match the hash of record {seq} kept in {}", sp.display()),
                    );
                }
                state_line_seen = true;
            }
        }
        v.records += 1;
        v.first_seq.get_or_insert(seq);
        v.last_seq = Some(seq);
        v.last_hash = Some(line_hash.clone());
        prev = Some((seq, line_hash));
    }
    if !tail.is_empty() {
        v.error = Some("file ends with a partial record".into());
        v.line = Some(lines.len() as u64 + 1);
        return Ok(v);
    }
    if let Some((st, sp)) = state {
        if st.seq > 0 && !state_line_seen {
            let last = v.last_seq.unwrap_or(0);
            v.error = Some(if last == 0 {
                format!("file holds no record, but the box wrote up to record {} ({})", st.seq, sp.display())
            } else {
                format!(
                    "file ends after record {last}, but the box wrote up to record {} ({}): the end was cut off",
                    st.seq,
                    sp.display()
                )
            });
            return Ok(v);
        }
    }
    v.intact = true;
    Ok(v)
}

/// The last `n` complete records of the log at `path` as JSON values (a line that is not
/// JSON is shown as `{"unreadable": "<text>"}`), oldest first.
pub fn tail(path: &Path, n: usize) -> Result<Vec<serde_json::Value>, VerifyError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(VerifyError::Read { path: path.into(), source }),
    };
    let (lines, _) = lines(&bytes);
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..]
        .iter()
        .map(|l| {
            serde_json::from_slice(l)
                .unwrap_or_else(|_| serde_json::json!({ "unreadable": String::from_utf8_lossy(l).into_owned() }))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_string();
        let mut out = Vec::new();
        for seq in 1..=n {
            let detail = serde_json::json!({ "n": seq });
            let line = build_line(
                seq,
                &format_time(1_700_000_000_000),
                "rapd",
                "test.event",
                "x",
                Outcome::Success,
                &detail,
                &prev,
            )
            .unwrap();
            prev = sha256_hex(&line).unwrap();
            out.push(line);
        }
        out
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect()
    }

    fn check(bytes: &[u8]) -> Option<String> {
        walk(bytes, None).unwrap().error
    }

    #[test]
    fn times_round_trip() {
        for ms in [0, 1_700_000_000_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_time(ms)), Some(ms), "{}", format_time(ms));
        }
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(parse_time("2023-11-14 22:13:20.123Z"), None);
    }

    #[test]
    fn a_line_is_json_whose_hash_covers_the_rest() {
        let l = chain(1).remove(0);
        let r: Record = serde_json::from_slice(&l).unwrap();
        assert_eq!((r.seq, r.prev.as_str(), r.outcome), (1, GENESIS, Outcome::Success));
        let text = String::from_utf8(l.clone()).unwrap();
        assert!(text.starts_with("{\"seq\":1,\"time\":\"2023-11-14T22:13:20.000Z\",\"actor\":\"rapd\","), "{text}");
        let body = text.replace(&format!(",\"hash\":\"{}\"", r.hash), "");
        assert_eq!(sha256_hex(body.as_bytes()).unwrap(), r.hash);
    }

    #[test]
    fn intact_chain_and_each_kind_of_break() {
        let c = chain(20);
        let v = walk(&join(&c), None).unwrap();
        assert!(v.intact, "{v:?}");
        assert_eq!((v.records, v.first_seq, v.last_seq), (20, Some(1), Some(20)));
        assert_eq!(check(b""), None);

        // An edit.
        let mut e = c.clone();
        e[16] = String::from_utf8(e[16].clone()).unwrap().replace("\"n\":17", "\"n\":99").into_bytes();
        assert_eq!(check(&join(&e)).unwrap(), "record 17: hash does not match its content");
        // An edit with the record's own hash recomputed.
        let r: Record = serde_json::from_slice(&c[16]).unwrap();
        e[16] = build_line(
            17,
            &r.time,
            "rapd",
            "test.event",
            "x",
            Outcome::Success,
            &serde_json::json!({"n": 99}),
            &r.prev,
        )
        .unwrap();
        assert_eq!(check(&join(&e)).unwrap(), "record 18: prev hash does not match record 17");
        // A deletion.
        let mut d = c.clone();
        d.remove(16);
        assert_eq!(check(&join(&d)).unwrap(), "sequence gap after record 16");
        // The last record deleted: only the state file shows it.
        let st = State { seq: 20, hash: sha256_hex(&c[19]).unwrap(), shipped: 0 };
        let sp = Path::new("/data/rapd/audit.log.state");
        assert!(walk(&join(&c), Some((&st, sp))).unwrap().intact);
        assert_eq!(
            walk(&join(&c[..19]), Some((&st, sp))).unwrap().error.unwrap(),
            "file ends after record 19, but the box wrote up to record 20 (/data/rapd/audit.log.state): the end was cut off"
        );
        assert_eq!(
            walk(b"", Some((&st, sp))).unwrap().error.unwrap(),
            "file holds no record, but the box wrote up to record 20 (/data/rapd/audit.log.state)"
        );
        // The last record replaced by a valid one.
        let mut l = c.clone();
        let r: Record = serde_json::from_slice(&c[19]).unwrap();
        l[19] =
            build_line(20, &r.time, "rapd", "other", "x", Outcome::Success, &serde_json::Value::Null, &r.prev).unwrap();
        assert_eq!(
            walk(&join(&l), Some((&st, sp))).unwrap().error.unwrap(),
            "record 20: does not match the hash of record 20 kept in /data/rapd/audit.log.state"
        );
        // Reordered.
        let mut o = c.clone();
        o.swap(16, 17);
        assert_eq!(
            check(&join(&o)).unwrap(),
            "records out of order: record 18 follows record 16, record 17 is at line 18"
        );
        let mut o = c.clone();
        o.insert(18, c[3].clone());
        assert_eq!(check(&join(&o)).unwrap(), "records out of order: record 4 follows record 18");
        // Garbage appended, with and without a newline.
        let mut g = join(&c);
        g.extend_from_slice(b"{\"seq\":21,");
        assert_eq!(check(&g).unwrap(), "file ends with a partial record");
        g.push(b'\n');
        assert!(check(&g).unwrap().starts_with("line 21, after record 20: not an audit record: "), "{g:?}");
        // The first records removed.
        assert_eq!(check(&join(&c[2..])).unwrap(), "file does not start at record 1: its first record is record 3");
    }
}
