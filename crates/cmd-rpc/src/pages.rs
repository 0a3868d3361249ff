//! A small read-only HTTP server for pages another crate renders (the
//! facade's monitor): GET only, connections from unauthorized addresses
//! closed at accept (and requests authorized again), a few connections per
//! peer, headers within a deadline. Kept here so hyper stays in
//! this crate.
//!
//! On 127.0.0.1 ([`PageServer::start_local`]) it also checks `Host`, as the
//! admin endpoint does: only `127.0.0.1:<port>` or `localhost:<port>`, so
//! that a web page whose own name was rebound to 127.0.0.1 (DNS rebinding)
//! reads nothing.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ts_transport::{Admission, Listener, Server};

/// Most connections one peer address may hold on the monitor port.
const MAX_CONNECTIONS_PER_PEER: usize = 8;

use crate::admin::host_allowed;
use crate::server::Authorize;

/// A rendered page.
#[derive(Clone, Debug)]
pub struct Page {
    /// Its HTTP status (200 for a page; health checks answer 503 too).
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its body.
    pub body: String,
}

/// Renders the page at a path, or `None` for 404.
pub type Render = Arc<dyn Fn(&str) -> Option<Page> + Send + Sync>;

/// A running page server; stops on [`PageServer::shutdown`] or drop.
pub struct PageServer(Server);

impl PageServer {
    /// Serves `render` on `listener` to callers `authorize` accepts.
    pub fn start(
        listener: Arc<dyn Listener>,
        authorize: Authorize,
        render: Render,
        header_timeout: Duration,
    ) -> PageServer {
        PageServer::serve(listener, authorize, render, header_timeout, false)
    }

    /// Serves `render` on `listener`, bound to 127.0.0.1, to loopback
    /// callers whose `Host` names this server (`127.0.0.1:<port>` or
    /// `localhost:<port>`; 421 otherwise).
    pub fn start_local(
        listener: Arc<dyn Listener>,
        render: Render,
        header_timeout: Duration,
    ) -> PageServer {
        let loopback: Authorize = Arc::new(|peer: ts_transport::PeerAddr| peer.ip().is_loopback());
        PageServer::serve(listener, loopback, render, header_timeout, true)
    }

    fn serve(
        listener: Arc<dyn Listener>,
        authorize: Authorize,
        render: Render,
        header_timeout: Duration,
        check_host: bool,
    ) -> PageServer {
        let port = listener.local_port();
        let admission =
            Admission { allow: authorize.clone(), max_per_peer: MAX_CONNECTIONS_PER_PEER };
        PageServer(Server::start_admitting(listener, "monitor", admission, move |stream, peer| {
            let authorize = authorize.clone();
            let render = render.clone();
            async move {
                let handler = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let response = if !authorize(peer) {
                        respond(
                            StatusCode::FORBIDDEN,
                            "text/plain; charset=utf-8",
                            format!("peer {} is not allowed\n", peer.ip()),
                        )
                    } else if check_host && !host_names(&request, port) {
                        respond(
                            StatusCode::MISDIRECTED_REQUEST,
                            "text/plain; charset=utf-8",
                            format!(
                                "the Host header must be 127.0.0.1:{port} or localhost:{port}\n"
                            ),
                        )
                    } else if request.method() != Method::GET {
                        let mut r = respond(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "text/plain; charset=utf-8",
                            "only GET\n".to_owned(),
                        );
                        r.headers_mut().insert(
                            hyper::header::ALLOW,
                            hyper::header::HeaderValue::from_static("GET"),
                        );
                        r
                    } else {
                        match render(request.uri().path()) {
                            Some(page) => respond(
                                StatusCode::from_u16(page.status)
                                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                                page.content_type,
                                page.body,
                            ),
                            None => respond(
                                StatusCode::NOT_FOUND,
                                "text/plain; charset=utf-8",
                                "not found\n".to_owned(),
                            ),
                        }
                    };
                    async move { Ok::<_, Infallible>(response) }
                });
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                let _ = builder.serve_connection(TokioIo::new(stream), handler).await;
            }
        }))
    }

    /// The port served.
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Stops serving and waits for every connection to end.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

/// Whether the request has one `Host` header and it names this server.
fn host_names<B>(request: &hyper::Request<B>, port: u16) -> bool {
    let mut hosts = request.headers().get_all(hyper::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().is_ok_and(|host| host_allowed(host, port)),
        _ => false,
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    response
}
