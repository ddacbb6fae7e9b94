//! HTTP/1.1 over one stream, with hard limits: requests parsed with `httparse`, bodies by
//! `Content-Length` or chunked (`ch-remote` sends the former, libcurl may send the latter),
//! `Expect: 100-continue` answered, keep-alive and pipelining kept, and every wait bounded:
//! an idle connection, a request that trickles in, and a client that does not read its
//! response all time out.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How many header lines a request may have.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// Limits on each API connection; a client that breaks one gets an error answer (where it
/// can still read one) and is disconnected, so no client holds the server or the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of request line and headers (larger: 400).
    pub max_header_bytes: usize,
    /// The most bytes of request body (larger: 413, before the body is read).
    pub max_body_bytes: usize,
    /// From a request's first byte to its last (slower: 408).
    pub request_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request (then it is closed).
    pub idle_timeout: Duration,
    /// How long writing a response may block on a client that does not read.
    pub write_timeout: Duration,
    /// The most connections served at once (more: 503 and closed).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 8 << 10,
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }
}

/// Why no request could be read from a connection.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The client closed the connection between requests.
    #[error("the client closed the connection")]
    Closed,
    /// No request came within the idle timeout.
    #[error("no request within {0:?}")]
    Idle(Duration),
    /// A request did not arrive in full within the request timeout.
    #[error("the request did not arrive in full within {0:?}")]
    Timeout(Duration),
    /// Not HTTP/1.x, or a bad header, length or chunk.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Request line and headers over the limit.
    #[error("the request header is larger than the limit of {0} bytes")]
    HeaderTooLarge(usize),
    /// A body over the limit.
    #[error("the request body of {len} bytes is larger than the limit of {max} bytes")]
    BodyTooLarge {
        /// Its size (at least; for a chunked body, as far as it was read).
        len: u64,
        /// The limit.
        max: usize,
    },
    /// An HTTP feature this server does not implement (a transfer coding other than chunked).
    #[error("not implemented: {0}")]
    Unsupported(String),
    /// Reading or writing the socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl HttpError {
    /// The status to answer with, or `None` when the connection is just closed.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            HttpError::Closed | HttpError::Idle(_) | HttpError::Io(_) => None,
            HttpError::Timeout(_) => Some(408),
            HttpError::Malformed(_) | HttpError::HeaderTooLarge(_) => Some(400),
            HttpError::BodyTooLarge { .. } => Some(413),
            HttpError::Unsupported(_) => Some(501),
        }
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// `GET`, `PUT`, ...
    pub(crate) method: String,
    /// The path, without a query string.
    pub(crate) path: String,
    /// The body; `None` when empty.
    pub(crate) body: Option<Vec<u8>>,
    /// Whether the connection stays open after the response.
    pub(crate) keep_alive: bool,
}

/// One response: a status and an optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Option<Vec<u8>>,
}

impl Response {
    /// A status with no body.
    pub(crate) fn empty(status: u16) -> Self {
        Response { status, body: None }
    }

    /// A status with a JSON body.
    pub(crate) fn json(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            body: Some(body),
        }
    }

    /// An error: Cloud Hypervisor's body, a JSON array of messages from the outermost
    /// error to its root cause.
    pub(crate) fn error(status: u16, messages: &[String]) -> Self {
        let body = serde_json::to_vec(messages).unwrap_or_else(|_| b"[]".to_vec());
        Response::json(status, body)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The reason phrase of `status`, which also opens the error bodies of HTTP-level errors.
pub(crate) fn title(status: u16) -> &'static str {
    reason(status)
}

/// Writes `resp`; with `keep_alive` false it says `Connection: close`.
pub(crate) fn write_response(
    stream: &mut impl Write,
    resp: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: virtkit API\r\n",
        resp.status,
        reason(resp.status)
    );
    let body = resp.body.as_deref().unwrap_or_default();
    if resp.status != 204 {
        if !body.is_empty() {
            out.push_str("Content-Type: application/json\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    stream.flush()
}

/// What the request line and headers say.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    keep_alive: bool,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
}

/// Parses a complete head at the start of `buf`: `Ok(None)` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line".into()));
    };
    let mut head = Head {
        method: method.to_string(),
        path: path_of(target),
        keep_alive: minor >= 1,
        content_length: None,
        chunked: false,
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?
            .trim();
        let lower = value.to_ascii_lowercase();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err(HttpError::Malformed("conflicting Content-Length".into()));
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            match lower.as_str() {
                "chunked" => head.chunked = true,
                "identity" | "" => {}
                other => {
                    return Err(HttpError::Unsupported(format!(
                        "Transfer-Encoding {other:?} (only chunked)"
                    )))
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            head.expect_continue = lower == "100-continue";
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in lower.split(',').map(str::trim) {
                match token {
                    "close" => head.keep_alive = false,
                    "keep-alive" => head.keep_alive = true,
                    _ => {}
                }
            }
        }
    }
    if head.chunked && head.content_length.is_some() {
        return Err(HttpError::Malformed(
            "both Content-Length and Transfer-Encoding".into(),
        ));
    }
    Ok(Some((head, len)))
}

/// The path of a request target: origin form (`/api/v1/vm.info?x`) or absolute form
/// (`http://localhost/api/v1/vm.info`), without the query.
fn path_of(target: &str) -> String {
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path[..end].to_string()
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads one request's bytes against a deadline.
struct Reader<'a> {
    stream: &'a mut UnixStream,
    buf: &'a mut Vec<u8>,
    deadline: Instant,
    timeout: Duration,
}

impl Reader<'_> {
    /// Appends what the stream has (waiting until the deadline); the stream ending here is
    /// a request cut short.
    fn fill(&mut self) -> Result<(), HttpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(self.timeout));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(HttpError::Malformed(
                "the connection closed in the middle of a request".into(),
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if is_timeout(&e) => Err(HttpError::Timeout(self.timeout)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the next `n` bytes.
    fn take(&mut self, n: usize) -> Result<Vec<u8>, HttpError> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Takes the next line (without its CRLF), of at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..i + 2).collect();
                line.truncate(i);
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(HttpError::Malformed("a chunk line is too long".into()));
            }
            self.fill()?;
        }
    }

    /// A chunked body, at most `max` bytes.
    fn chunked(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let mut line = self.line(MAX_CHUNK_LINE)?;
            line.extend_from_slice(b"\r\n");
            let size = match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, size))) => size,
                _ => return Err(HttpError::Malformed("bad chunk size".into())),
            };
            let total = (body.len() as u64).saturating_add(size);
            if total > max as u64 {
                return Err(HttpError::BodyTooLarge { len: total, max });
            }
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line(MAX_CHUNK_LINE)?.is_empty() {}
                return Ok(body);
            }
            body.extend_from_slice(&self.take(size as usize)?);
            if !self.line(0)?.is_empty() {
                return Err(HttpError::Malformed(
                    "a chunk is longer than its size".into(),
                ));
            }
        }
    }
}

fn send_continue(stream: &mut UnixStream) -> Result<(), HttpError> {
    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    Ok(())
}

/// Reads the next request from `stream`. `buf` holds bytes read past the previous request
/// (pipelining) and keeps those past this one.
pub(crate) fn read_request(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Request, HttpError> {
    if buf.is_empty() {
        stream.set_read_timeout(Some(limits.idle_timeout))?;
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Err(HttpError::Closed),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    break;
                }
                Err(e) if is_timeout(&e) => return Err(HttpError::Idle(limits.idle_timeout)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(HttpError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut r = Reader {
        stream,
        buf,
        deadline: Instant::now() + limits.request_timeout,
        timeout: limits.request_timeout,
    };
    let head = loop {
        if let Some((head, len)) = parse_head(r.buf)? {
            if len > limits.max_header_bytes {
                return Err(HttpError::HeaderTooLarge(limits.max_header_bytes));
            }
            r.buf.drain(..len);
            break head;
        }
        if r.buf.len() > limits.max_header_bytes {
            return Err(HttpError::HeaderTooLarge(limits.max_header_bytes));
        }
        r.fill()?;
    };
    let body = if head.chunked {
        if head.expect_continue {
            send_continue(r.stream)?;
        }
        r.chunked(limits.max_body_bytes)?
    } else {
        match head.content_length {
            None | Some(0) => Vec::new(),
            Some(len) if len > limits.max_body_bytes as u64 => {
                return Err(HttpError::BodyTooLarge {
                    len,
                    max: limits.max_body_bytes,
                })
            }
            Some(len) => {
                if head.expect_continue {
                    send_continue(r.stream)?;
                }
                r.take(len as usize)?
            }
        }
    };
    Ok(Request {
        method: head.method,
        path: head.path,
        body: (!body.is_empty()).then_some(body),
        keep_alive: head.keep_alive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 256,
            max_body_bytes: 64,
            request_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(200),
            ..Limits::default()
        }
    }

    fn read(input: &[u8]) -> (Result<Request, HttpError>, Vec<u8>, Vec<u8>) {
        let (mut server, mut client) = pair();
        client.write_all(input).unwrap();
        let mut buf = Vec::new();
        let r = read_request(&mut server, &mut buf, &limits());
        drop(server);
        let mut sent = Vec::new();
        client.read_to_end(&mut sent).unwrap();
        (r, buf, sent)
    }

    #[test]
    fn requests_parse_with_bodies_and_pipelining() {
        let (r, rest, sent) = read(
            b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}GET /x",
        );
        let r = r.unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("PUT", "/api/v1/vm.create")
        );
        assert_eq!(r.body.as_deref(), Some(&b"{}"[..]));
        assert!(r.keep_alive);
        assert_eq!(rest, b"GET /x", "the next request stays buffered");
        assert!(sent.is_empty());

        let (r, _, sent) = read(
            b"PUT http://localhost/api/v1/vm.boot?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\
              Expect: 100-continue\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
        );
        let r = r.unwrap();
        assert_eq!(r.path, "/api/v1/vm.boot");
        assert_eq!(r.body.as_deref(), Some(&b"abcde"[..]));
        assert_eq!(sent, b"HTTP/1.1 100 Continue\r\n\r\n");

        let (r, _, _) = read(b"GET /a HTTP/1.0\r\n\r\n");
        assert!(!r.unwrap().keep_alive);
        let (r, _, _) = read(b"GET /a HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        let r = r.unwrap();
        assert!(!r.keep_alive && r.body.is_none());
    }

    #[test]
    fn bad_requests_get_the_right_errors() {
        let status = |input: &[u8]| read(input).0.unwrap_err().status();
        assert_eq!(status(b"\x01\x02 nonsense\r\n\r\n"), Some(400));
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(501)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 65\r\n\r\n"),
            Some(413)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n"),
            Some(413)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Some(400)
        );
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(400, b'a');
        assert_eq!(status(&long), Some(400));
        // Half a request, then nothing: a timeout, not a hang.
        let t = Instant::now();
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n"), Some(408));
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"),
            Some(408)
        );
        // Nothing at all: closed or idle, no answer.
        let (mut server, client) = pair();
        drop(client);
        let r = read_request(&mut server, &mut Vec::new(), &limits());
        assert!(matches!(r, Err(HttpError::Closed)));
        let (mut server, mut client) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let r = read_request(&mut server, &mut Vec::new(), &limits());
        assert_eq!(r.unwrap_err().status(), Some(400), "cut short");
        let (mut server, _client) = pair();
        let r = read_request(&mut server, &mut Vec::new(), &limits());
        assert!(matches!(r, Err(HttpError::Idle(_))));
    }

    #[test]
    fn responses_are_framed_for_ch_remote() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::empty(204), true).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nServer: virtkit API\r\n\r\n"
        );
        let mut out = Vec::new();
        let e = Response::error(404, &["Not Found".into()]);
        write_response(&mut out, &e, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 13\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n[\"Not Found\"]"), "{text}");
        assert_eq!(path_of("/a/b?c#d"), "/a/b");
        assert_eq!(path_of("http://localhost"), "/");
    }
}
