//! A client for a node's LocalAPI: HTTP/1.1 (hyper) to its loopback address
//! with the `Sec-Tailscale: localapi` header and basic auth. Every answer is
//! size-capped and every request has a timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::error::DiscoveryError;
use crate::model::{TailnetNode, TailnetView};
use crate::parse::{Notify, parse_notify, parse_status, parse_whois};

/// IPN bus mask: the first message carries the state (2) and the netmap (8).
const WATCH_MASK: u64 = 2 | 8;

/// Limits for LocalAPI answers.
#[derive(Clone, Debug)]
pub struct LocalApiLimits {
    /// Largest `status` or `whois` body read (a large tailnet's status is a
    /// few MiB).
    pub max_body: usize,
    /// Largest single IPN bus message (a netmap).
    pub max_line: usize,
    /// Time allowed for a `status` or `whois` request, answer included.
    pub timeout: Duration,
}

impl Default for LocalApiLimits {
    fn default() -> LocalApiLimits {
        LocalApiLimits { max_body: 16 << 20, max_line: 32 << 20, timeout: Duration::from_secs(10) }
    }
}

/// How to reach one node's LocalAPI.
#[derive(Clone)]
pub struct LocalApi {
    addr: SocketAddr,
    authorization: String,
    limits: LocalApiLimits,
}

impl std::fmt::Debug for LocalApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApi").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl LocalApi {
    /// A client for the LocalAPI at `addr` (a loopback address) with
    /// `credential` as the basic-auth password.
    pub fn new(addr: SocketAddr, credential: &str, limits: LocalApiLimits) -> LocalApi {
        LocalApi {
            addr,
            authorization: format!("Basic {}", base64(format!(":{credential}").as_bytes())),
            limits,
        }
    }

    /// A client for the LocalAPI of a tsnet node (starting its loopback
    /// server if needed).
    #[cfg(feature = "tailscale")]
    pub fn for_node(
        node: &ts_transport::tsnet::TsnetTransport,
        limits: LocalApiLimits,
    ) -> Result<LocalApi, ts_transport::TransportError> {
        let access = node.local_api()?;
        Ok(LocalApi::new(access.addr, &access.credential, limits))
    }

    /// The node's view of its tailnet. Fails with
    /// [`DiscoveryError::NotRunning`] unless the node is running.
    pub async fn status(&self) -> Result<TailnetView, DiscoveryError> {
        let body = self.get("/localapi/v0/status").await?;
        parse_status(&body)
    }

    /// The tailnet node that has `ip`, or `None` if no node has it.
    pub async fn whois(&self, ip: IpAddr) -> Result<Option<TailnetNode>, DiscoveryError> {
        match self.get(&format!("/localapi/v0/whois?addr={ip}")).await {
            Ok(body) => parse_whois(&body).map(Some),
            Err(DiscoveryError::Http { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Opens the IPN bus watch. The first message has the current state and
    /// netmap; later ones arrive as the node's view changes.
    pub async fn watch_ipn_bus(&self) -> Result<IpnBusWatch, DiscoveryError> {
        let path = format!("/localapi/v0/watch-ipn-bus?mask={WATCH_MASK}");
        let (response, conn) = self.request(&path).await?;
        Ok(IpnBusWatch {
            body: response.into_body(),
            buf: BytesMut::new(),
            max_line: self.limits.max_line,
            _conn: conn,
        })
    }

    /// The raw body of a GET of `path` (such as `/localapi/v0/status`),
    /// size-capped and with the request timeout: for diagnostics and for
    /// recording fixtures.
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, DiscoveryError> {
        self.get(path).await
    }

    async fn get(&self, path: &str) -> Result<Bytes, DiscoveryError> {
        let timeout = self.limits.timeout;
        let exchange = async {
            let (response, _conn) = self.request(path).await?;
            let mut body = response.into_body();
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|err| self.unreachable(err))?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > self.limits.max_body {
                        return Err(DiscoveryError::TooLarge {
                            path: path.to_owned(),
                            limit: self.limits.max_body,
                        });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(buf.freeze())
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| {
            Err(DiscoveryError::Timeout { path: path.to_owned(), after: timeout })
        })
    }

    /// Sends a GET and checks the status; the returned guard keeps the
    /// connection driven until it is dropped.
    async fn request(&self, path: &str) -> Result<(Response<Incoming>, ConnGuard), DiscoveryError> {
        let stream = TcpStream::connect(self.addr).await.map_err(|err| self.unreachable(err))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| self.unreachable(err))?;
        let guard = ConnGuard(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let request = Request::get(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header("Sec-Tailscale", "localapi")
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .body(Empty::<Bytes>::new())
            .map_err(|err| DiscoveryError::Malformed(format!("request {path}: {err}")))?;
        let response = sender.send_request(request).await.map_err(|err| self.unreachable(err))?;
        if response.status() != StatusCode::OK {
            let status = response.status().as_u16();
            // Read a little of the body for the message, never more.
            let mut body = response.into_body();
            let mut text = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data[..data.len().min(512 - text.len().min(512))]);
                }
                if text.len() >= 512 {
                    break;
                }
            }
            return Err(DiscoveryError::Http {
                path: path.to_owned(),
                status,
                body: String::from_utf8_lossy(&text).trim().to_owned(),
            });
        }
        Ok((response, guard))
    }

    fn unreachable(&self, err: impl std::fmt::Display) -> DiscoveryError {
        DiscoveryError::Unreachable { addr: self.addr.to_string(), reason: err.to_string() }
    }
}

/// Aborts the task driving an HTTP connection when dropped.
struct ConnGuard(JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An open IPN bus watch: newline-delimited `ipn.Notify` messages.
pub struct IpnBusWatch {
    body: Incoming,
    buf: BytesMut,
    max_line: usize,
    _conn: ConnGuard,
}

impl IpnBusWatch {
    /// The next message; `Ok(None)` when the node ends the watch.
    pub async fn next(&mut self) -> Result<Option<Notify>, DiscoveryError> {
        match self.next_line().await? {
            Some(line) => parse_notify(&line).map(Some),
            None => Ok(None),
        }
    }

    /// The next message as raw JSON, without its newline; `Ok(None)` when
    /// the node ends the watch.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, DiscoveryError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(pos + 1);
                line.truncate(pos);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line.freeze()));
            }
            if self.buf.len() > self.max_line {
                return Err(DiscoveryError::TooLarge {
                    path: "watch-ipn-bus".to_owned(),
                    limit: self.max_line,
                });
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(err)) => {
                    return Err(DiscoveryError::Unreachable {
                        addr: "watch-ipn-bus".to_owned(),
                        reason: err.to_string(),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }
}
