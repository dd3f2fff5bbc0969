//! Login to the pages: technician accounts only (`tech-*`, the same accounts and
//! SHA-512 hashes as the console), checked against `/etc/shadow` with crypt(3) (rapweb
//! runs with the supplementary group `shadow` for that and nothing else). Three failures
//! within 15 minutes lock the account for the pages for 15 minutes (the console's
//! pam_faillock tally is root's and stays separate). Sessions are random 256-bit tokens
//! in a `Secure; HttpOnly; SameSite=Strict` cookie, with a CSRF token for every form,
//! ended after 15 minutes without a request.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures that lock an account for the pages.
pub const DENY: usize = 3;
/// The window in which failures count, and how long a lock lasts.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(15 * 60);

#[link(name = "crypt")]
extern "C" {
    fn crypt_rn(
        phrase: *const libc::c_char,
        setting: *const libc::c_char,
        data: *mut libc::c_void,
        size: libc::c_int,
    ) -> *mut libc::c_char;
}

/// crypt(3) of `password` with the setting (salt, rounds) of `hash`, compared in
/// constant time; only SHA-512 crypt hashes are accepted.
pub fn verify_hash(password: &str, hash: &str) -> bool {
    if !hash.starts_with("$6$") {
        return false;
    }
    let (Ok(p), Ok(h)) = (CString::new(password), CString::new(hash)) else {
        return false;
    };
    let mut data = vec![0u8; 32768];
    // SAFETY: crypt_rn writes at most `size` bytes into `data`, which outlives the result.
    let out = unsafe { crypt_rn(p.as_ptr(), h.as_ptr(), data.as_mut_ptr() as *mut libc::c_void, data.len() as i32) };
    if out.is_null() {
        return false;
    }
    // SAFETY: on success crypt_rn returns a NUL-terminated string inside `data`.
    let got = unsafe { CStr::from_ptr(out) }.to_bytes();
    got.len() == hash.len() && openssl::memcmp::eq(got, hash.as_bytes())
}

/// The shadow hash of `user`, read from `shadow` (the text of /etc/shadow).
pub fn shadow_hash(shadow: &str, user: &str) -> Option<String> {
    shadow.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(user)).then(|| f.next().unwrap_or("").to_owned())
    })
}

/// Whether `user` may use the pages at all.
pub fn is_technician(user: &str) -> bool {
    user.strip_prefix("tech-").is_some_and(|r| {
        !r.is_empty()
            && user.len() <= 32
            && r.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    })
}

/// The result of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Ok,
    /// Wrong name or password (the user is told no more).
    Refused,
    /// Too many failures: locked for the pages until then.
    Locked {
        remaining: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    last: Instant,
}

/// Sessions and failure tallies, in memory (a restart of rapweb logs everyone out).
#[derive(Default)]
pub struct Auth {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

pub fn token() -> String {
    let mut b = [0u8; 32];
    // The DRBG of the FIPS provider; a failure here is fatal to the request.
    openssl::rand::rand_bytes(&mut b).expect("DRBG");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Auth {
    /// Checks a login with the shadow file text `shadow` (read per attempt).
    pub fn login(&self, user: &str, password: &str, shadow: &str) -> Login {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let tally = f.entry(user.to_owned()).or_default();
        tally.retain(|t| now.duration_since(*t) < WINDOW);
        if tally.len() >= DENY {
            let remaining = WINDOW.saturating_sub(now.duration_since(tally[tally.len() - DENY]));
            return Login::Locked { remaining };
        }
        let ok = is_technician(user) && shadow_hash(shadow, user).is_some_and(|h| verify_hash(password, &h));
        if ok {
            tally.clear();
            Login::Ok
        } else {
            tally.push(now);
            if tally.len() >= DENY {
                Login::Locked { remaining: WINDOW }
            } else {
                Login::Refused
            }
        }
    }

    /// A new session for `user`; its cookie value.
    pub fn open(&self, user: &str) -> String {
        let t = token();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(t.clone(), Session { user: user.into(), csrf: token(), last: Instant::now() });
        t
    }

    /// The live session of a cookie value (touched), expired ones removed.
    pub fn session(&self, cookie: Option<&str>) -> Option<Session> {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        s.retain(|_, v| now.duration_since(v.last) < IDLE);
        let v = s.get_mut(cookie?)?;
        v.last = now;
        Some(v.clone())
    }

    pub fn close(&self, cookie: &str) -> Option<Session> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // openssl passwd -6 -salt rapboxtest rapbox-test
    const HASH: &str =
        "$6$rapboxtest$WXjCm5CO8I3x4e3/5tklZngsM1h1B9NPxlYLYiJHeOnRGMSsnOpje5q/yR0UZUjXeo3Gp0PW6GaNd3VxB2UIa0";

    #[test]
    fn sha512_crypt_is_checked() {
        assert!(verify_hash("rapbox-test", HASH));
        assert!(!verify_hash("rapbox-tesT", HASH));
        assert!(!verify_hash("rapbox-test", "!"));
        assert!(!verify_hash("x", "$1$abc$def"));
    }

    #[test]
    fn three_failures_lock_and_only_technicians_log_in() {
        let shadow = format!("root:{HASH}:1:0:99999:7:::\ntech-a:{HASH}:1:0:99999:7:::\n");
        let a = Auth::default();
        assert_eq!(a.login("root", "rapbox-test", &shadow), Login::Refused, "root is not a technician");
        assert_eq!(a.login("tech-a", "rapbox-test", &shadow), Login::Ok);
        assert_eq!(a.login("tech-a", "no", &shadow), Login::Refused);
        assert_eq!(a.login("tech-a", "no", &shadow), Login::Refused);
        assert!(matches!(a.login("tech-a", "no", &shadow), Login::Locked { .. }));
        assert!(matches!(a.login("tech-a", "rapbox-test", &shadow), Login::Locked { .. }), "locked means locked");
        let c = a.open("tech-a");
        assert_eq!(a.session(Some(&c)).unwrap().user, "tech-a");
        assert!(a.session(Some("forged")).is_none());
        a.close(&c);
        assert!(a.session(Some(&c)).is_none());
    }
}
