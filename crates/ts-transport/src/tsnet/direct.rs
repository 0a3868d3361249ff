//! The direct data path (docs/decisions/0004-tsnet-data-path.md): a stream
//! whose bytes move through two rings in memory shared with the Go side,
//! instead of through a socketpair and a goroutine on each side of it.
//!
//! We fill the send ring and take from the receive ring; goroutines of the
//! connection (`go/direct.go`) move bytes between the rings and gVisor's
//! TCP endpoint. Neither side signals the other per message unless the
//! other is asleep: we write the kick eventfd only if the Go side set its
//! idle word, and the Go side writes our ready eventfd (which the tokio
//! reactor polls) or calls [`notify`] (which wakes the writing task) only
//! if we set a waiting word. Each flag is set with a sequentially
//! consistent store before its setter looks at the other side's progress
//! once more, and cleared with a swap by the side that made progress, so
//! no wake-up can be lost between the two.
//!
//! Reads are signalled through the reactor rather than by waking the task
//! from the Go thread: a wake from outside the runtime makes tokio unpark a
//! worker that then wakes a second one to keep searching, which costs a
//! thread wake-up per message (measured; decision 0004).
//!
//! The block (header and rings) is shared by reference counting: the stream
//! holds one reference and the pump another, which it gives back with its
//! last notify call; whichever goes last frees the memory.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::io;
use std::mem::offset_of;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ffi;

/// Bytes in each ring. The old path buffered more (a 256 KiB copy buffer
/// per direction in Go plus the socketpair's kernel buffers).
const RING: usize = 256 << 10;

/// Bits of `notify`'s `events`; `notifyWrite` and `notifyRelease` in
/// `go/direct.go`.
const NOTIFY_WRITE: u32 = 2;
const NOTIFY_RELEASE: u32 = 4;
/// Bits of the requests word; `reqShutdown` and `reqClose`.
const REQ_SHUTDOWN: u32 = 1;
const REQ_CLOSE: u32 = 2;
/// The receive status once the peer ended its direction; `rxEOF`.
const RX_EOF: i32 = 1;

/// The words both sides share; the layout is `off*` in `go/direct.go`. The
/// first cache line is ours to write, the second the pump's.
#[repr(C, align(64))]
struct Header {
    /// Bytes we put into the send ring so far.
    tx_head: AtomicU64,
    /// Bytes we took from the receive ring so far.
    rx_tail: AtomicU64,
    /// `REQ_*` bits.
    requests: AtomicU32,
    /// 1 while we wait for the receive ring; the pump swaps it to 0 and
    /// writes the ready eventfd.
    rx_waiting: AtomicU32,
    /// 1 while we wait for room in the send ring; likewise.
    tx_waiting: AtomicU32,
    _ours: [u8; 36],
    /// Bytes the pump put into the receive ring so far.
    rx_head: AtomicU64,
    /// Bytes the pump took from the send ring so far.
    tx_tail: AtomicU64,
    /// 0, `RX_EOF`, or `-errno` once nothing more will arrive.
    rx_status: AtomicI32,
    /// 0, or `-errno` once nothing more can be sent.
    tx_status: AtomicI32,
    /// 1 while the pump sleeps or is about to; we swap it to 0 and kick.
    idle: AtomicU32,
    /// 1 when the pump stopped on a full receive ring; we swap it to 0 and
    /// kick once we took bytes.
    rx_full: AtomicU32,
    _pumps: [u8; 32],
}

const _: () = {
    assert!(offset_of!(Header, tx_head) == 0);
    assert!(offset_of!(Header, rx_tail) == 8);
    assert!(offset_of!(Header, requests) == 16);
    assert!(offset_of!(Header, rx_waiting) == 20);
    assert!(offset_of!(Header, tx_waiting) == 24);
    assert!(offset_of!(Header, rx_head) == 64);
    assert!(offset_of!(Header, tx_tail) == 72);
    assert!(offset_of!(Header, rx_status) == 80);
    assert!(offset_of!(Header, tx_status) == 84);
    assert!(offset_of!(Header, idle) == 88);
    assert!(offset_of!(Header, rx_full) == 92);
    assert!(size_of::<Header>() == 128);
};

/// One connection's shared block, and the task to wake for room to send.
struct Shared {
    header: Header,
    rx: Box<[UnsafeCell<u8>]>,
    tx: Box<[UnsafeCell<u8>]>,
    write_waker: Mutex<Option<Waker>>,
}

// SAFETY: the rings are the only non-Sync part. Each byte of a ring is
// written by one side only while the head and tail words give that side
// that byte, and read by the other only after the words handed it over
// (release stores, acquire loads).
unsafe impl Sync for Shared {}

fn zeroed_ring() -> Box<[UnsafeCell<u8>]> {
    let bytes = vec![0u8; RING].into_boxed_slice();
    // SAFETY: UnsafeCell<u8> has the same layout as u8.
    unsafe { Box::from_raw(Box::into_raw(bytes) as *mut [UnsafeCell<u8>]) }
}

impl Shared {
    fn new() -> Shared {
        Shared {
            header: Header {
                tx_head: AtomicU64::new(0),
                rx_tail: AtomicU64::new(0),
                requests: AtomicU32::new(0),
                rx_waiting: AtomicU32::new(0),
                tx_waiting: AtomicU32::new(0),
                _ours: [0; 36],
                rx_head: AtomicU64::new(0),
                tx_tail: AtomicU64::new(0),
                rx_status: AtomicI32::new(0),
                tx_status: AtomicI32::new(0),
                idle: AtomicU32::new(0),
                rx_full: AtomicU32::new(0),
                _pumps: [0; 32],
            },
            rx: zeroed_ring(),
            tx: zeroed_ring(),
            write_waker: Mutex::new(None),
        }
    }
}

fn register(slot: &Mutex<Option<Waker>>, waker: &Waker) {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

fn wake(slot: &Mutex<Option<Waker>>) {
    let waker = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Called by the pump, on a Go thread: the send side changed while we
/// waited, or (`NOTIFY_RELEASE`, last) the pump is done with the block.
///
/// # Safety
///
/// `ctx` must be the reference to a [`Shared`] given to
/// `tailscale_conn_attach`, not yet released.
unsafe extern "C" fn notify(ctx: *mut c_void, events: u32) {
    let shared = ctx.cast_const().cast::<Shared>();
    // Unwinding into Go would abort the process; wakers are foreign code.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if events & NOTIFY_RELEASE != 0 {
            // SAFETY: the pump's reference, from Arc::into_raw in attach;
            // this is its last use.
            drop(unsafe { Arc::from_raw(shared) });
            return;
        }
        // SAFETY: per the contract, the pump's reference keeps it alive.
        let shared = unsafe { &*shared };
        if events & NOTIFY_WRITE != 0 {
            wake(&shared.write_waker);
        }
    }));
}

/// A connection on the direct data path.
pub(crate) struct DirectStream {
    shared: Arc<Shared>,
    /// Our copy of the eventfd that wakes the Go side.
    kick: OwnedFd,
    /// Our copy of the eventfd the Go side writes when we wait to read.
    ready: AsyncFd<OwnedFd>,
    write_shut: bool,
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: creates a new descriptor, owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl DirectStream {
    /// Takes over the connection handle `conn` from a record and starts its
    /// pump.
    pub(crate) fn attach(conn: u64) -> io::Result<DirectStream> {
        let shared = Arc::new(Shared::new());
        let kick = eventfd()?;
        let pump_kick = kick.try_clone()?;
        let ready = eventfd()?;
        let pump_ready = ready.try_clone()?;
        // SAFETY: an OwnedFd always returns the same open descriptor, which
        // it keeps open until the AsyncFd drops it.
        let ready = unsafe { AsyncFd::register(ready) }.map_err(|err| err.into_parts().1)?;
        let header = (&raw const shared.header).cast_mut().cast::<c_void>();
        let rx = shared.rx.as_ptr().cast_mut().cast::<c_void>();
        let tx = shared.tx.as_ptr().cast_mut().cast::<c_void>();
        let pump_ref = Arc::into_raw(shared.clone()).cast_mut().cast::<c_void>();
        // SAFETY: the pointers are into `shared`, which the pump's reference
        // keeps alive until it calls notify with NOTIFY_RELEASE; notify has
        // the signature the call expects; the call takes both eventfds over.
        let rc = unsafe {
            ffi::tailscale_conn_attach(
                conn,
                notify,
                pump_ref,
                header,
                rx,
                RING,
                tx,
                RING,
                pump_kick.into_raw_fd(),
                pump_ready.into_raw_fd(),
            )
        };
        if rc != 0 {
            // SAFETY: on failure the pump never started and never uses its
            // reference; take it back.
            drop(unsafe { Arc::from_raw(pump_ref.cast_const().cast::<Shared>()) });
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(DirectStream { shared, kick, ready, write_shut: false })
    }

    /// Wakes the pump if it sleeps.
    fn kick(&self) {
        if self.shared.header.idle.swap(0, Ordering::SeqCst) != 0 {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd. It
            // cannot fail short of a counter overflow, which the pump's
            // reads rule out; a failure would only cost this one wake-up,
            // and the next kick or event comes anyway.
            unsafe { libc::write(self.kick.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    fn request(&self, bit: u32) {
        self.shared.header.requests.fetch_or(bit, Ordering::SeqCst);
        self.kick();
    }
}

/// The pump broke the protocol; never expected, but never trusted.
fn corrupt() -> io::Error {
    io::Error::other("tsnet direct path: ring positions out of range")
}

impl AsyncRead for DirectStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let h = &this.shared.header;
        let ring = &this.shared.rx;
        let tail = h.rx_tail.load(Ordering::Relaxed);
        loop {
            // Status first: the pump sets it after its last bytes.
            let status = h.rx_status.load(Ordering::Acquire);
            let head = h.rx_head.load(Ordering::Acquire);
            let available = head.wrapping_sub(tail);
            if available > ring.len() as u64 {
                return Poll::Ready(Err(corrupt()));
            }
            if available > 0 {
                let n = buf.remaining().min(available as usize);
                let start = (tail % ring.len() as u64) as usize;
                let first = n.min(ring.len() - start);
                let src = ring.as_ptr().cast::<u8>();
                // SAFETY: unfilled_mut is only written to, and n bytes of it
                // exist; the pump handed bytes tail..tail+n over and does not
                // touch them until rx_tail moves past them.
                unsafe {
                    let dst = buf.unfilled_mut().as_mut_ptr().cast::<u8>();
                    std::ptr::copy_nonoverlapping(src.add(start), dst, first);
                    std::ptr::copy_nonoverlapping(src, dst.add(first), n - first);
                    buf.assume_init(n);
                }
                buf.advance(n);
                h.rx_tail.store(tail + n as u64, Ordering::SeqCst);
                if h.rx_full.load(Ordering::SeqCst) != 0 && h.rx_full.swap(0, Ordering::SeqCst) != 0
                {
                    this.kick();
                }
                return Poll::Ready(Ok(()));
            }
            match status {
                0 => {}
                RX_EOF => return Poll::Ready(Ok(())),
                errno if errno < 0 => {
                    return Poll::Ready(Err(io::Error::from_raw_os_error(-errno)));
                }
                _ => return Poll::Ready(Err(corrupt())),
            }
            h.rx_waiting.store(1, Ordering::SeqCst);
            if h.rx_head.load(Ordering::SeqCst) != head || h.rx_status.load(Ordering::SeqCst) != 0 {
                continue;
            }
            match this.ready.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(mut guard)) => {
                    // A write of the eventfd after this clears makes it
                    // ready again; drain what is there and look again.
                    guard.clear_ready();
                    let mut count = [0u8; 8];
                    // SAFETY: reads at most 8 bytes into a live buffer; a
                    // non-blocking eventfd with nothing in it answers EAGAIN.
                    unsafe {
                        libc::read(
                            guard.get_inner().as_raw_fd(),
                            count.as_mut_ptr().cast(),
                            count.len(),
                        )
                    };
                }
            }
        }
    }
}

impl AsyncWrite for DirectStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_shut {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
        }
        let h = &this.shared.header;
        let ring = &this.shared.tx;
        let head = h.tx_head.load(Ordering::Relaxed);
        loop {
            let status = h.tx_status.load(Ordering::Acquire);
            if status < 0 {
                return Poll::Ready(Err(io::Error::from_raw_os_error(-status)));
            }
            let tail = h.tx_tail.load(Ordering::Acquire);
            let queued = head.wrapping_sub(tail);
            if queued > ring.len() as u64 {
                return Poll::Ready(Err(corrupt()));
            }
            let free = ring.len() - queued as usize;
            if free > 0 {
                let n = free.min(data.len());
                let start = (head % ring.len() as u64) as usize;
                let first = n.min(ring.len() - start);
                let dst = ring.as_ptr().cast::<u8>().cast_mut();
                // SAFETY: the pump took bytes up to tail and does not read
                // head.. until tx_head moves past them; n bytes are free.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), dst.add(start), first);
                    std::ptr::copy_nonoverlapping(data.as_ptr().add(first), dst, n - first);
                }
                h.tx_head.store(head + n as u64, Ordering::SeqCst);
                this.kick();
                return Poll::Ready(Ok(n));
            }
            register(&this.shared.write_waker, cx.waker());
            h.tx_waiting.store(1, Ordering::SeqCst);
            if h.tx_tail.load(Ordering::SeqCst) == tail && h.tx_status.load(Ordering::SeqCst) == 0 {
                return Poll::Pending;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Like a socket's send buffer: queued bytes go out on their own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_shut {
            this.write_shut = true;
            // End of stream follows the bytes already queued.
            this.request(REQ_SHUTDOWN);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for DirectStream {
    fn drop(&mut self) {
        // The pump sends what is queued, closes the connection and then
        // drops its reference to the block.
        self.request(REQ_CLOSE);
    }
}

impl std::fmt::Debug for DirectStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectStream").finish_non_exhaustive()
    }
}
