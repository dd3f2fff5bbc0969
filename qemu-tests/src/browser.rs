//! A real browser for the configuration pages: Debian's headless Chromium driven over
//! WebDriver by Debian's chromedriver, both inside the VM's network namespace (so the
//! browser reaches the box over an instrument port's tap device, the lab side). The
//! WebDriver calls are plain HTTP/1.1 to chromedriver on the namespace's loopback; they
//! must be made from a thread that joined the namespace ([`crate::instruments::enter_netns`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::HarnessError;

/// chromedriver in a namespace; killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("port", &self.port).finish()
    }
}

impl Driver {
    /// Starts `chromedriver --port=PORT` in the namespace `ns`; its log goes to `log`.
    pub fn start(ns: &str, port: u16, log: &Path) -> Result<Driver, HarnessError> {
        for (p, pkg) in [("/usr/bin/chromium", "chromium"), ("/usr/bin/chromedriver", "chromium-driver")] {
            if !Path::new(p).exists() {
                return Err(HarnessError::Setup(format!("{p} missing: install {pkg} (scripts/install-deps.sh)")));
            }
        }
        let out = std::fs::File::create(log).map_err(|source| HarnessError::Io { path: log.into(), source })?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "chromedriver", &format!("--port={port}"), "--log-level=WARNING"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|source| HarnessError::Io { path: log.into(), source })?)
            .stderr(out)
            .spawn()
            .map_err(|e| HarnessError::Cmd { cmd: "chromedriver".into(), stderr: e.to_string() })?;
        let profile = log.with_extension("profile");
        let _ = std::fs::remove_dir_all(&profile);
        Ok(Driver { child, port, profile })
    }

    /// A browser session (call from a thread inside the namespace).
    pub fn session(&self) -> Result<Session, String> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match call(self.port, "GET", "/status", None) {
                Ok(v) if v["value"]["ready"] == true => break,
                _ if Instant::now() > end => return Err("chromedriver not ready after 30 s".into()),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        // The flags that work on these machines (headless, no sandbox as root, no
        // background connections to the closed network); the box's certificate is
        // self-signed, so the browser accepts it (the technician compares its fingerprint).
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1100,900",
                         format!("--user-data-dir={}", self.profile.display())]
            }
        }}});
        let v = call(self.port, "POST", "/session", Some(&caps))?;
        let id = v["value"]["sessionId"].as_str().ok_or_else(|| format!("no session: {v}"))?.to_owned();
        Ok(Session { port: self.port, id })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One browser window.
#[derive(Debug)]
pub struct Session {
    port: u16,
    id: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Session {
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let v = call(self.port, method, &format!("/session/{}{path}", self.id), body)?;
        if let Some(e) = v["value"].get("error") {
            return Err(format!("{method} {path}: {e}: {}", v["value"]["message"]));
        }
        Ok(v["value"].clone())
    }
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd("POST", "/url", Some(&json!({ "url": url }))).map(|_| ())
    }
    pub fn url(&self) -> Result<String, String> {
        Ok(self.cmd("GET", "/url", None)?.as_str().unwrap_or_default().to_owned())
    }
    fn element(&self, css: &str) -> Result<String, String> {
        let v = self.cmd("POST", "/element", Some(&json!({ "using": "css selector", "value": css })))?;
        v[ELEMENT].as_str().map(str::to_owned).ok_or_else(|| format!("no element {css}"))
    }
    /// The visible text of the element `css`.
    pub fn text(&self, css: &str) -> Result<String, String> {
        let e = self.element(css)?;
        Ok(self.cmd("GET", &format!("/element/{e}/text"), None)?.as_str().unwrap_or_default().to_owned())
    }
    /// Clears the input `css` and types `text`.
    pub fn fill(&self, css: &str, text: &str) -> Result<(), String> {
        let e = self.element(css)?;
        self.cmd("POST", &format!("/element/{e}/clear"), Some(&json!({})))?;
        self.cmd("POST", &format!("/element/{e}/value"), Some(&json!({ "text": text }))).map(|_| ())
    }
    pub fn click(&self, css: &str) -> Result<(), String> {
        let e = self.element(css)?;
        self.cmd("POST", &format!("/element/{e}/click"), Some(&json!({}))).map(|_| ())
    }
    /// Clicks `css` (a submit button, a link) and waits until a new document has replaced
    /// the page: an element reference is the document's, so the root element's changes. (A
    /// click may return before the navigation it starts: reading the old page then is a race.)
    pub fn click_and_wait(&self, css: &str) -> Result<(), String> {
        let before = self.element("html")?;
        self.click(css)?;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match self.element("html") {
                Ok(now) if now != before => return Ok(()),
                _ if Instant::now() > end => return Err(format!("no new page within 60 s of clicking {css}")),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    /// Saves a PNG screenshot of the window.
    pub fn screenshot(&self, to: &Path) -> Result<(), String> {
        let b64 = self.cmd("GET", "/screenshot", None)?.as_str().unwrap_or_default().to_owned();
        let png = base64_decode(&b64).ok_or("screenshot is not base64")?;
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        std::fs::write(to, png).map_err(|e| format!("{}: {e}", to.display()))
    }
    pub fn close(self) {
        let _ = call(self.port, "DELETE", &format!("/session/{}", self.id), None);
    }
}

/// One WebDriver call: HTTP/1.1 to chromedriver on loopback, JSON both ways.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("chromedriver: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // chromedriver answers `Connection: close` but keeps the connection open: the answer
    // ends after the head and Content-Length bytes, not at end of file.
    let mut resp = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let (head_end, len) = loop {
        let n = s.read(&mut buf).map_err(|e| format!("chromedriver {method} {path}: {e}"))?;
        if n == 0 {
            return Err(format!("chromedriver {method} {path}: connection closed before the answer's head"));
        }
        resp.extend_from_slice(&buf[..n]);
        if let Some(i) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                .ok_or_else(|| format!("chromedriver {method} {path}: no Content-Length in {head}"))?;
            break (i + 4, len);
        }
    };
    while resp.len() < head_end + len {
        let n = s.read(&mut buf).map_err(|e| format!("chromedriver {method} {path}: {e}"))?;
        if n == 0 {
            return Err(format!("chromedriver {method} {path}: connection closed in the answer's body"));
        }
        resp.extend_from_slice(&buf[..n]);
    }
    let body = &resp[head_end..head_end + len];
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "chromedriver {method} {path}: {e}: {}",
            String::from_utf8_lossy(body).chars().take(300).collect::<String>()
        )
    })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trip() {
        assert_eq!(super::base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(super::base64_decode("iVBORw0KGgo=").unwrap(), [0x89, b'P', b'N', b'G', 13, 10, 26, 10]);
    }
}
