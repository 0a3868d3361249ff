//! A small read-only HTTP server for pages another crate renders (the
//! facade's monitor): GET only, connections from unauthorized addresses
//! closed at accept (and requests authorized again), a few connections per
//! peer, headers within a deadline. Kept here so hyper stays in
//! this crate.

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
