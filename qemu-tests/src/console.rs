//! The serial console: everything the guest prints is collected (and logged to a
//! file); tests wait for exact text and run commands behind a unique prompt.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The shell prompt set after login; the command that sets it is written so that its
/// echo does not contain it.
pub const PROMPT: &str = "RAPQ-PROMPT# ";
const SET_PROMPT: &str =
    "bind 'set enable-bracketed-paste off' 2>/dev/null; stty -echo cols 250; export PS1='RAPQ''-PROMPT# '";

#[derive(Default)]
struct Shared {
    text: String,
    closed: bool,
}

/// The console of one VM.
pub struct Console {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    cursor: usize,
    input: Box<dyn Write + Send>,
    pub log: PathBuf,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("log", &self.log).field("cursor", &self.cursor).finish()
    }
}

impl Console {
    /// Starts collecting `output` (QEMU's serial stdout) into memory and `log`.
    pub fn new(output: impl Read + Send + 'static, input: impl Write + Send + 'static, log: &Path) -> Console {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let s2 = shared.clone();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).ok();
        std::thread::spawn(move || {
            let mut output = output;
            let mut buf = [0u8; 4096];
            loop {
                let n = output.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*s2;
                let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 {
                    g.closed = true;
                    cv.notify_all();
                    return;
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                g.text.push_str(&strip_ansi(&String::from_utf8_lossy(&buf[..n])));
                cv.notify_all();
            }
        });
        Console { shared, cursor: 0, input: Box::new(input), log: log.to_path_buf() }
    }

    fn tail(&self) -> String {
        let g = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        let start = g.text.len().saturating_sub(1500);
        let start = (start..g.text.len()).find(|i| g.text.is_char_boundary(*i)).unwrap_or(g.text.len());
        g.text[start..].to_string()
    }

    /// Waits until `needle` appears after the cursor; returns the text before it and
    /// moves the cursor past it. Panics with the console tail on timeout.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        match self.try_expect(needle, timeout) {
            Some(t) => t,
            None => panic!(
                "console: `{needle}` did not appear within {timeout:?} (log {})\n--- last console output ---\n{}",
                self.log.display(),
                self.tail()
            ),
        }
    }

    /// Like `expect`, returning None on timeout or when QEMU exited.
    pub fn try_expect(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(pos) = g.text[self.cursor..].find(needle) {
                let before = g.text[self.cursor..self.cursor + pos].to_string();
                self.cursor += pos + needle.len();
                return Some(before);
            }
            let now = Instant::now();
            if g.closed || now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Everything received so far.
    pub fn text(&self) -> String {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).text.clone()
    }

    /// Types `line` and Enter.
    pub fn send(&mut self, line: &str) {
        let _ = self.input.write_all(line.as_bytes());
        let _ = self.input.write_all(b"\n");
        let _ = self.input.flush();
    }

    /// Logs in on the serial console and sets the unique prompt.
    pub fn login(&mut self, user: &str, password: &str, timeout: Duration) {
        if let Err(step) = self.try_login(user, password, timeout) {
            panic!(
                "console: login failed waiting for `{step}` (log {})\n--- last console output ---\n{}",
                self.log.display(),
                self.tail()
            );
        }
    }

    /// Like `login`, returning the text it waited for in vain (timeout or QEMU exited).
    pub fn try_login(&mut self, user: &str, password: &str, timeout: Duration) -> Result<(), &'static str> {
        self.try_expect("rapbox login: ", timeout).ok_or("rapbox login: ")?;
        self.send(user);
        self.try_expect("Password: ", Duration::from_secs(30)).ok_or("Password: ")?;
        self.send(password);
        self.try_expect("# ", Duration::from_secs(60)).ok_or("# ")?;
        self.send(SET_PROMPT);
        self.try_expect(PROMPT, Duration::from_secs(30)).ok_or(PROMPT)?;
        Ok(())
    }

    /// Logs in as any account (a technician's shell prompt ends in `$ `, root's in `# `)
    /// and sets the unique prompt; returns the text printed between the password and
    /// the shell prompt (last-login line, messages). Panics with the console tail.
    pub fn login_as(&mut self, user: &str, password: &str, timeout: Duration) -> String {
        self.expect("rapbox login: ", timeout);
        self.send(user);
        self.expect("Password: ", Duration::from_secs(30));
        self.send(password);
        let shell = if user == "root" { "# " } else { "$ " };
        let motd = self.expect(shell, Duration::from_secs(60));
        self.send(SET_PROMPT);
        self.expect(PROMPT, Duration::from_secs(30));
        motd
    }

    /// Tries a login that must fail; returns what the console printed after the
    /// password up to the next `rapbox login: ` prompt (e.g. "Login incorrect").
    pub fn failed_login(&mut self, user: &str, password: &str, timeout: Duration) -> String {
        self.expect("rapbox login: ", timeout);
        self.send(user);
        self.expect("Password: ", Duration::from_secs(30));
        self.send(password);
        let out = self.expect("rapbox login: ", Duration::from_secs(60));
        // Put the prompt back for the next expect("rapbox login: ").
        self.cursor -= "rapbox login: ".len();
        out
    }

    /// Moves the cursor back before the last `needle` it passed, so that the next
    /// expect finds it again (e.g. a login prompt already waited for).
    pub fn cursor_back(&mut self, needle: &str) {
        let g = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = g.text[..self.cursor].rfind(needle) {
            self.cursor = pos;
        }
    }

    /// Leaves the shell (the getty shows the banner and a new login prompt).
    pub fn logout(&mut self) {
        self.send("exit");
    }

    /// Runs `cmd` in the logged-in shell; returns (output, exit status).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> (String, i32) {
        self.send(&format!("{cmd}; echo \"RAPQ-RC=$?\""));
        let out = self.expect(PROMPT, timeout);
        split_rc(out)
    }

    /// Like `run`, returning None on timeout or when QEMU exited.
    pub fn try_run(&mut self, cmd: &str, timeout: Duration) -> Option<(String, i32)> {
        self.send(&format!("{cmd}; echo \"RAPQ-RC=$?\""));
        self.try_expect(PROMPT, timeout).map(split_rc)
    }

    /// `run`, asserting exit status 0.
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> String {
        let (out, rc) = self.run(cmd, timeout);
        assert_eq!(rc, 0, "`{cmd}` exited {rc}:\n{out}");
        out
    }
}

fn split_rc(out: String) -> (String, i32) {
    let (body, rc) = match out.rfind("RAPQ-RC=") {
        Some(i) => (out[..i].to_string(), out[i + 8..].trim().parse().unwrap_or(-1)),
        None => (out, -1),
    };
    (body.trim_start_matches('\n').to_string(), rc)
}

/// The text without carriage returns and ANSI escape sequences (colours, bracketed
/// paste), so tests compare plain console text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() || d == '~' {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strips_colours_and_bracketed_paste() {
        assert_eq!(super::strip_ansi("\u{1b}[?2004hA\u{1b}[0;1;31mB\u{1b}[0m\r\n"), "AB\n");
    }
}
