//! Test-only controls over the Go side, for tests of failures that cannot
//! be provoked from outside: a Go panic at a chosen place, a thread of Go's
//! own in a known state.
//!
//! Present only with the `test-hooks` feature, which also builds the archive
//! with `go/testhooks_on.go`; without it neither these functions nor the
//! hooks they arm exist. Never enable it outside tests.

use std::ffi::{CString, c_int};
use std::io;
use std::os::fd::OwnedFd;

use super::{TsnetTransport, ffi, owned_fd};
use crate::TransportError;

/// A place in the Go shim where [`panic_next`] can make it panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// Inside an option setter, with the server's lock held.
    Set,
    /// Inside [`TsnetTransport::local_api`]'s first call, with the server's
    /// lock held.
    Loopback,
    /// In a listener's accept loop, once a connection has been accepted.
    Accept,
}

impl Site {
    fn name(self) -> &'static str {
        match self {
            Site::Set => "set",
            Site::Loopback => "loopback",
            Site::Accept => "accept",
        }
    }
}

/// Makes the next pass of `node`'s Go side through `site` panic (once per
/// call).
pub fn panic_next(node: &TsnetTransport, site: Site) -> Result<(), TransportError> {
    panic_next_raw(node.node.sd, site)
}

pub(crate) fn panic_next_raw(sd: c_int, site: Site) -> Result<(), TransportError> {
    let name = CString::new(site.name()).expect("site names have no NUL");
    // SAFETY: name is NUL-terminated and outlives the call.
    match unsafe { ffi::tailscale_testhook_panic(sd, name.as_ptr()) } {
        0 => Ok(()),
        errno => Err(TransportError::io("arm test hook", io::Error::from_raw_os_error(errno))),
    }
}

/// A thread the Go runtime created, blocked in `read(2)` on a goroutine's
/// stack until [`GoThread::release`] or drop.
#[derive(Debug)]
pub struct GoThread {
    /// Its kernel thread id, for `tgkill(2)`.
    pub tid: libc::pid_t,
    release: Option<OwnedFd>,
}

impl GoThread {
    /// Starts one.
    pub fn start() -> io::Result<GoThread> {
        let (mut tid, mut release): (c_int, c_int) = (-1, -1);
        // SAFETY: both pointers are valid for writes.
        match unsafe { ffi::tailscale_testhook_blocked_go_thread(&mut tid, &mut release) } {
            0 => Ok(GoThread { tid, release: Some(owned_fd(release)) }),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    /// Lets the goroutine return; its thread then exits.
    pub fn release(&mut self) {
        self.release.take();
    }
}

impl Drop for GoThread {
    fn drop(&mut self) {
        self.release();
    }
}
