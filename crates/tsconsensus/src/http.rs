//! A small HTTP/1.1 client for the admin endpoint on 127.0.0.1:
//! `Content-Length` bodies, every read and write bounded in time and size.
//!
//! Each connection first has the endpoint prove that it knows the token
//! (`GET /v1/proof` with a fresh nonce, answered with an HMAC keyed by the
//! token; [`consensus::admin::admin_proof`]); only then does the request
//! carrying the token go out, on the same connection. Whatever else holds
//! the port (a program squatting it while the node is down) never sees
//! the token.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use consensus::admin::{NONCE_HEADER, PROOF_PATH, admin_proof};

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
        let mut stream = self.verified(addr)?;
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

impl Endpoint {
    /// A connection to the endpoint on `addr` that proved it knows the
    /// token (before the token was sent).
    fn verified(&self, addr: SocketAddr) -> Result<TcpStream, String> {
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
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a nonce: {e}"))?;
        let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let head = format!(
            "GET {PROOF_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{NONCE_HEADER}: {nonce}\r\n\
             Content-Length: 0\r\n\r\n",
            self.port
        );
        let not_the_node = |why: String| {
            format!(
                "refusing to send the admin token to 127.0.0.1:{} ({}): {why}. Whatever listens \
                 there does not prove it knows this node's current token: the node is not \
                 running (admin.port is left from an earlier run, and another program may hold \
                 the port), or the token is not this node's (a new one is made at every start)",
                self.port, self.origin
            )
        };
        stream.write_all(head.as_bytes()).map_err(|e| not_the_node(e.to_string()))?;
        let answer = read_answer(&mut stream, 4096).map_err(|e| not_the_node(e.to_string()))?;
        let proof = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["proof"].as_str().map(str::to_owned));
        let expected = admin_proof(&self.token, self.port, &nonce);
        match proof {
            Some(proof) if answer.status == 200 && same(proof.as_bytes(), expected.as_bytes()) => {
                Ok(stream)
            }
            Some(_) => Err(not_the_node("its proof does not match".to_owned())),
            None => Err(not_the_node(format!("it answered {} without a proof", answer.status))),
        }
    }
}

/// Equal, in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
