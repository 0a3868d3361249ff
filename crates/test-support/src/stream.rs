//! Streams that watch, or meddle with, the bytes crossing them: the
//! delegation to the wrapped stream is written once here, and a test says
//! only what it does besides, as a [`Hook`].
//!
//! With the `transport` feature, [`HookedTransport`] wraps a transport so
//! that the streams it dials (and, if asked, accepts) carry a hook.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Hooked`] stream does besides handing reads and writes to the
/// stream it wraps. Every method has a default that does nothing, so a
/// hook writes only what it needs.
///
/// Flushes and shutdowns go to the wrapped stream untouched; vectored
/// writes go through [`AsyncWrite::poll_write`] (tokio's default), so a
/// hook sees every byte written.
pub trait Hook: Send + Unpin + 'static {
    /// Asked before a read reaches the wrapped stream: `Ready(Ok(()))` lets
    /// it through; `Ready(Err(_))` answers the read with that error; and
    /// `Pending` holds it (the hook then arranges for `cx`'s waker to be
    /// woken).
    fn before_read(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The bytes a read brought in (never empty: an end of stream is not
    /// reported).
    fn after_read(&mut self, _bytes: &[u8]) {}

    /// Asked before a write reaches the wrapped stream, as
    /// [`Hook::before_read`] is before a read.
    fn before_write(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The bytes the wrapped stream took in a write (never empty).
    fn after_write(&mut self, _bytes: &[u8]) {}
}

/// A stream that hands everything to `inner`, telling its [`Hook`] on the
/// way.
#[derive(Debug)]
pub struct Hooked<S, H> {
    inner: S,
    hook: H,
}

impl<S, H> Hooked<S, H> {
    /// Wraps `inner`, with `hook` told of what crosses it.
    pub fn new(inner: S, hook: H) -> Hooked<S, H> {
        Hooked { inner, hook }
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The wrapped stream and the hook, taken apart.
    pub fn into_parts(self) -> (S, H) {
        (self.inner, self.hook)
    }
}

impl<S: AsyncRead + Unpin, H: Hook> AsyncRead for Hooked<S, H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.hook.before_read(cx))?;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.hook.after_read(new);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin, H: Hook> AsyncWrite for Hooked<S, H> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.hook.before_write(cx))?;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.hook.after_write(&buf[..n]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts the times a byte string (a request line, say) occurs in the
/// bytes written on a stream, also when one write ends inside it and the
/// next goes on.
#[derive(Debug)]
pub struct Search {
    line: &'static [u8],
    /// The end of the bytes seen so far: a line split across two writes.
    tail: Vec<u8>,
}

impl Search {
    /// Searches for `line` (not empty).
    pub fn new(line: &'static [u8]) -> Search {
        assert!(!line.is_empty(), "searching for nothing");
        Search { line, tail: Vec::new() }
    }

    /// How many times `line` ends in `written`, the next bytes written.
    pub fn found(&mut self, written: &[u8]) -> usize {
        let mut seen = std::mem::take(&mut self.tail);
        seen.extend_from_slice(written);
        let found = seen.windows(self.line.len()).filter(|w| *w == self.line).count();
        let keep = seen.len().saturating_sub(self.line.len() - 1);
        self.tail = seen.split_off(keep);
        found
    }
}

/// A hook that holds back what comes in on a stream for `hold` once
/// `line` went out on it (an answer the other end sends late), and counts
/// the streams it held in `held`.
pub struct HoldAfter {
    search: Search,
    hold: std::time::Duration,
    until: Option<Pin<Box<tokio::time::Sleep>>>,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HoldAfter {
    /// Holds reads for `hold` after `line` is written; adds one to `held`
    /// when it starts to.
    pub fn new(
        line: &'static [u8],
        hold: std::time::Duration,
        held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> HoldAfter {
        HoldAfter { search: Search::new(line), hold, until: None, held }
    }
}

impl Hook for HoldAfter {
    fn after_write(&mut self, written: &[u8]) {
        if self.search.found(written) > 0 && self.until.is_none() {
            self.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.until = Some(Box::pin(tokio::time::sleep(self.hold)));
        }
    }

    fn before_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.until {
            Some(until) => until.as_mut().poll(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(feature = "transport")]
pub use self::transport::HookedTransport;

#[cfg(feature = "transport")]
mod transport {
    use std::net::IpAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use ts_transport::{BoxFuture, BoxStream, Listener, PeerAddr, Transport, TransportError};

    use super::{Hook, Hooked};

    /// Makes the hook of one stream, from the other end's address and the
    /// port (the dialed one, or the listener's).
    type MakeHook<H> = Arc<dyn Fn(IpAddr, u16) -> H + Send + Sync>;

    /// A transport that hands everything to `inner`, and wraps the streams
    /// it dials (and, with [`HookedTransport::accepted`], the ones it
    /// accepts) as [`Hooked`] streams.
    pub struct HookedTransport<H> {
        inner: Arc<dyn Transport>,
        dialed: Option<MakeHook<H>>,
        accepted: Option<MakeHook<H>>,
    }

    impl<H: Hook> HookedTransport<H> {
        /// Wraps `inner`; no stream carries a hook until
        /// [`HookedTransport::dialed`] or [`HookedTransport::accepted`]
        /// says which.
        pub fn new(inner: Arc<dyn Transport>) -> HookedTransport<H> {
            HookedTransport { inner, dialed: None, accepted: None }
        }

        /// Every stream this transport dials carries the hook `make`
        /// gives for the dialed address and port.
        pub fn dialed(
            mut self,
            make: impl Fn(IpAddr, u16) -> H + Send + Sync + 'static,
        ) -> HookedTransport<H> {
            self.dialed = Some(Arc::new(make));
            self
        }

        /// Every stream this transport's listeners accept carries the hook
        /// `make` gives for the peer's address and the listener's port.
        pub fn accepted(
            mut self,
            make: impl Fn(IpAddr, u16) -> H + Send + Sync + 'static,
        ) -> HookedTransport<H> {
            self.accepted = Some(Arc::new(make));
            self
        }
    }

    impl<H: Hook> Transport for HookedTransport<H> {
        fn listen(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Listener>, TransportError>> {
            Box::pin(async move {
                let inner = self.inner.listen(port).await?;
                Ok(match &self.accepted {
                    Some(make) => Box::new(HookedListener { inner, make: make.clone() }),
                    None => inner,
                })
            })
        }

        fn dial(
            &self,
            addr: IpAddr,
            port: u16,
            timeout: Duration,
        ) -> BoxFuture<'_, Result<BoxStream, TransportError>> {
            Box::pin(async move {
                let stream = self.inner.dial(addr, port, timeout).await?;
                Ok(match &self.dialed {
                    Some(make) => Box::new(Hooked::new(stream, make(addr, port))),
                    None => stream,
                })
            })
        }

        fn local_addrs(&self) -> Vec<IpAddr> {
            self.inner.local_addrs()
        }
    }

    struct HookedListener<H> {
        inner: Box<dyn Listener>,
        make: MakeHook<H>,
    }

    impl<H: Hook> Listener for HookedListener<H> {
        fn accept(&self) -> BoxFuture<'_, Result<(BoxStream, PeerAddr), TransportError>> {
            Box::pin(async move {
                let (stream, peer) = self.inner.accept().await?;
                let hook = (self.make)(peer.ip(), self.inner.local_port());
                Ok((Box::new(Hooked::new(stream, hook)) as BoxStream, peer))
            })
        }

        fn local_port(&self) -> u16 {
            self.inner.local_port()
        }

        fn close(&self) {
            self.inner.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What crossed, in order: `'r'` or `'w'` and the bytes.
    type Seen = Arc<Mutex<Vec<(char, Vec<u8>)>>>;

    /// Keeps what crossed, and can fail every write.
    struct Log {
        seen: Seen,
        fail_writes: bool,
    }

    impl Hook for Log {
        fn after_read(&mut self, bytes: &[u8]) {
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).push(('r', bytes.to_vec()));
        }

        fn before_write(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.fail_writes {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "refused")))
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn after_write(&mut self, bytes: &[u8]) {
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).push(('w', bytes.to_vec()));
        }
    }

    #[tokio::test]
    async fn a_hooked_stream_passes_bytes_through_and_reports_them() {
        let (near, mut far) = tokio::io::duplex(64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hooked = Hooked::new(near, Log { seen: seen.clone(), fail_writes: false });
        hooked.write_all(b"ping").await.unwrap();
        hooked.flush().await.unwrap();
        let mut got = [0; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        far.write_all(b"pong").await.unwrap();
        drop(far);
        let mut back = Vec::new();
        hooked.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, vec![('w', b"ping".to_vec()), ('r', b"pong".to_vec())]);
    }

    #[tokio::test]
    async fn a_hook_can_refuse_a_write_before_it_reaches_the_stream() {
        let (near, mut far) = tokio::io::duplex(64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hooked = Hooked::new(near, Log { seen: seen.clone(), fail_writes: true });
        let err = hooked.write_all(b"ping").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        drop(hooked);
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "the refused write reached the stream: {got:?}");
        assert!(seen.lock().unwrap().is_empty());
    }
}
