//! A small HTTP/1.1 client for the admin endpoint on 127.0.0.1: one
//! request per connection, `Content-Length` bodies, every read and write
//! bounded in time and size.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 << 10;

/// Where the admin endpoint is and how to prove the right to use it.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) port: u16,
    pub(crate) token: String,
    /// Where the port came from, for error messages.
    pub(crate) origin: String,
    /// Time allowed for the whole answer.
    pub(crate) timeout: Duration,
}

/// An answer: status, content type and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: Vec<u8>,
}

impl Endpoint {
    /// Sends `method path` with `body`, reads the answer (at most
    /// `max_body` bytes of body).
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
        max_body: usize,
    ) -> Result<Answer, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
                format!(
                    "cannot reach the admin endpoint at {addr} ({}): {e}; is the node running with \
                 an admin port?",
                    self.origin
                )
            })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(self.timeout)).map_err(|e| e.to_string())?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            self.token,
            body.len()
        );
        let sent = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
        // A refusal may come before the whole body was taken; read it.
        if let Err(err) = sent
            && err.kind() != io::ErrorKind::BrokenPipe
            && err.kind() != io::ErrorKind::ConnectionReset
        {
            return Err(format!("sending the request to {addr}: {err}"));
        }
        read_answer(&mut stream, max_body).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                "no answer from {addr} within {:?} (--timeout sets how long to wait)",
                self.timeout
            ),
            _ => format!("reading the answer from {addr}: {e}"),
        })
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn read_answer(stream: &mut impl Read, max_body: usize) -> io::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid(format!("response head longer than {MAX_HEAD} bytes")));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(invalid("the connection closed before a complete answer".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| invalid("response head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(format!("not an HTTP/1.1 status line: {status_line:?}")))?;
    let mut length = None;
    let mut content_type = String::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = value.to_owned();
        }
    }
    let mut body = buf.split_off(head_end + 4);
    match length {
        Some(length) if length > max_body => {
            return Err(invalid(format!("answer of {length} bytes (at most {max_body} expected)")));
        }
        Some(length) => {
            if body.len() < length {
                let start = body.len();
                body.resize(length, 0);
                stream.read_exact(&mut body[start..])?;
            }
            body.truncate(length);
        }
        None => {
            stream.take((max_body + 1 - body.len().min(max_body)) as u64).read_to_end(&mut body)?;
            if body.len() > max_body {
                return Err(invalid(format!("answer longer than {max_body} bytes")));
            }
        }
    }
    Ok(Answer { status, content_type, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_to_their_length_and_bounded() {
        let answer = read_answer(
            &mut &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}extra"[..],
            10,
        )
        .unwrap();
        assert_eq!(
            (answer.status, answer.content_type.as_str(), &answer.body[..]),
            (200, "application/json", &b"{}"[..])
        );
        let err = read_answer(&mut &b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n"[..], 10)
            .unwrap_err();
        assert!(err.to_string().contains("at most 10"), "{err}");
        let err = read_answer(&mut &b"HTTP/1.1 200 OK\r\n\r\n0123456789ab"[..], 10).unwrap_err();
        assert!(err.to_string().contains("longer than 10"), "{err}");
        let err = read_answer(&mut &b"SSH-2.0\r\n\r\n"[..], 10).unwrap_err();
        assert!(err.to_string().contains("status line"), "{err}");
        let err = read_answer(&mut &b"HTTP/1.1 200 OK\r\n"[..], 10).unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
        let err = read_answer(&mut &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"[..], 10)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
