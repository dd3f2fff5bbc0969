//! Who is on the other end of a control connection: the kernel's `SO_PEERCRED` (uid and
//! pid, not forgeable by the client) and the account name behind the uid. Audit records
//! of requests made through the control socket name this account as their actor:
//! `console:<user>` for rapctl and other local clients, `web:<user>` for a person logged
//! into the configuration pages (whose server, running as [`WEB_ACCOUNT`], says who).

use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use serde::Serialize;

/// The account the configuration pages' server runs as: only it may speak for a web user.
pub const WEB_ACCOUNT: &str = "rapweb";

/// A control-socket client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
    /// The account name of `uid` (`uid <n>` when it has none).
    pub user: String,
}

impl Peer {
    /// The peer of a connected Unix socket.
    pub fn of(s: &UnixStream) -> std::io::Result<Peer> {
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                &mut cred as *mut libc::ucred as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Peer { uid: cred.uid, pid: cred.pid, user: user_name(cred.uid) })
    }

    /// This process, for requests rapd makes of itself (and tests).
    pub fn local() -> Peer {
        // SAFETY: getuid/getpid cannot fail.
        let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
        Peer { uid, pid, user: user_name(uid) }
    }

    /// Whether this is the configuration pages' server.
    pub fn is_web(&self) -> bool {
        self.user == WEB_ACCOUNT
    }

    /// The audit actor for a request, `web_user` being who the pages' server says is
    /// logged in (believed only from the pages' server).
    pub fn actor(&self, web_user: Option<&str>) -> String {
        match web_user {
            Some(u) if self.is_web() && valid_user(u) => format!("web:{u}"),
            _ => format!("console:{}", self.user),
        }
    }
}

/// A user name as login(1) accepts it (and nothing an audit reader could misread).
pub fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        && !u.starts_with('-')
}

/// The account name of `uid`, from the system's user database.
pub fn user_name(uid: u32) -> String {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r fills `pw` with pointers into `buf`, both outliving the call's use.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: pw_name points to a NUL-terminated string inside `buf`.
    unsafe { CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = Peer::of(&a).unwrap();
        assert_eq!(p, Peer::local());
        assert_eq!(p.actor(Some("alice")), format!("console:{}", p.user), "only rapweb speaks for a web user");
    }

    #[test]
    fn web_users_are_believed_only_from_the_pages_server() {
        let web = Peer { uid: 989, pid: 1, user: WEB_ACCOUNT.into() };
        assert_eq!(web.actor(Some("tech-alice")), "web:tech-alice");
        assert_eq!(web.actor(Some("bad name\n")), "console:rapweb");
        assert_eq!(web.actor(None), "console:rapweb");
    }
}
