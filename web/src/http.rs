//! A deliberately small HTTP/1.1 server side: one request per connection
//! (`Connection: close`), request head at most 16 KiB, form bodies at most 16 KiB with a
//! `Content-Length`, no chunked uploads, GET and POST only. Everything else is refused
//! with its status code, and the error log says why.

use std::io::{Read, Write};

/// Largest request head.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body (a form).
pub const MAX_BODY: usize = 16 * 1024;

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The form fields of an `application/x-www-form-urlencoded` body.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

/// Why a request was not served (the status to answer with).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{1}")]
    Status(u16, String),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

fn bad(code: u16, m: impl Into<String>) -> HttpError {
    HttpError::Status(code, m.into())
}

/// Reads one request.
pub fn read_request(s: &mut impl Read) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            if p > MAX_HEAD {
                return Err(bad(431, format!("request head longer than {MAX_HEAD} bytes")));
            }
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad(431, format!("request head longer than {MAX_HEAD} bytes")));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(400, format!("malformed request line `{}`", first.chars().take(100).collect::<String>())));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(505, format!("{version} is not supported")));
    }
    if !target.starts_with('/') {
        return Err(bad(400, "the request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(bad(400, "malformed header line"));
        };
        if headers.len() >= 64 {
            return Err(bad(431, "more than 64 headers"));
        }
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut req = Request {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        version: version.into(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(bad(501, "Transfer-Encoding is not supported (send Content-Length)"));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| bad(400, format!("Content-Length `{v}` is not a number")))?,
    };
    if len > MAX_BODY {
        return Err(bad(413, format!("body of {len} bytes is larger than {MAX_BODY}")));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad(400, "body shorter than its Content-Length"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn html(status: u16, body: String) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
            body: body.into_bytes(),
        }
    }
    pub fn redirect(to: &str) -> Response {
        Response { status: 303, headers: vec![("Location".into(), to.into())], body: Vec::new() }
    }
    pub fn with_header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Writes `r` with the headers every answer carries; returns the body's length.
pub fn write_response(s: &mut impl Write, r: &Response) -> std::io::Result<usize> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (k, v) in &r.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\
         Strict-Transport-Security: max-age=31536000\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
         Referrer-Policy: no-referrer\r\n\
         Content-Security-Policy: default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'\r\n\r\n",
        r.body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&r.body)?;
    s.flush()?;
    Ok(r.body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_and_limits_refused() {
        let r = read_request(
            &mut &b"POST /login?x=1 HTTP/1.1\r\nHost: a\r\nCookie: a=1; rapweb=tok\r\nContent-Length: 13\r\n\r\nuser=a&pass=b"[..],
        )
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.query.as_str()), ("POST", "/login", "x=1"));
        assert_eq!(r.cookie("rapweb").as_deref(), Some("tok"));
        assert_eq!(r.form(), vec![("user".into(), "a".into()), ("pass".into(), "b".into())]);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD + 10));
        assert!(matches!(read_request(&mut big.as_bytes()), Err(HttpError::Status(431, _))));
        let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(read_request(&mut &te[..]), Err(HttpError::Status(501, _))));
        assert!(matches!(read_request(&mut &b"GET / HTTP/2\r\n\r\n"[..]), Err(HttpError::Status(505, _))));
        assert!(matches!(read_request(&mut &b"GET http://x/ HTTP/1.1\r\n\r\n"[..]), Err(HttpError::Status(400, _))));
    }
}
