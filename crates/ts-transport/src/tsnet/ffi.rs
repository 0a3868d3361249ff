//! The C API of the Go archive built from `go/tailscale.go`.
//!
//! Names and meanings follow libtailscale's `tailscale.h`; the functions
//! marked as extensions exist only in our archive.

use std::ffi::{c_char, c_int, c_void};

unsafe extern "C" {
    pub(crate) fn tailscale_new() -> c_int;
    pub(crate) fn tailscale_set_dir(sd: c_int, dir: *const c_char) -> c_int;
    pub(crate) fn tailscale_set_hostname(sd: c_int, hostname: *const c_char) -> c_int;
    pub(crate) fn tailscale_set_authkey(sd: c_int, authkey: *const c_char) -> c_int;
    pub(crate) fn tailscale_set_control_url(sd: c_int, url: *const c_char) -> c_int;
    pub(crate) fn tailscale_set_ephemeral(sd: c_int, ephemeral: c_int) -> c_int;
    pub(crate) fn tailscale_set_logfd(sd: c_int, fd: c_int) -> c_int;
    #[cfg(test)]
    pub(crate) fn tailscale_start(sd: c_int) -> c_int;
    /// Extension: `tailscale_up` with a bound, cancelled by `tailscale_close`;
    /// a failure's message also goes to `errmsg`.
    pub(crate) fn tailscale_up_timeout(
        sd: c_int,
        timeout_ms: c_int,
        errmsg: *mut c_char,
        errmsg_len: usize,
    ) -> c_int;
    pub(crate) fn tailscale_close(sd: c_int) -> c_int;
    pub(crate) fn tailscale_getips(sd: c_int, buf: *mut c_char, buflen: usize) -> c_int;
    pub(crate) fn tailscale_listen(
        sd: c_int,
        network: *const c_char,
        addr: *const c_char,
        listener_out: *mut c_int,
    ) -> c_int;
    /// Extension: a dial that returns at once with a pending fd.
    pub(crate) fn tailscale_dial_async(
        sd: c_int,
        network: *const c_char,
        addr: *const c_char,
        timeout_ms: c_int,
        pending_out: *mut c_int,
    ) -> c_int;
    /// Extension: `tailscale_listen` whose records carry connection handles
    /// for the direct data path (decision 0004) instead of fds.
    pub(crate) fn tailscale_listen_direct(
        sd: c_int,
        network: *const c_char,
        addr: *const c_char,
        listener_out: *mut c_int,
    ) -> c_int;
    /// Extension: `tailscale_dial_async` whose record carries a connection
    /// handle for the direct data path instead of an fd.
    pub(crate) fn tailscale_dial_direct(
        sd: c_int,
        network: *const c_char,
        addr: *const c_char,
        timeout_ms: c_int,
        pending_out: *mut c_int,
    ) -> c_int;
    /// Extension (direct data path): takes over a handle from a record
    /// and starts moving its bytes between gVisor and the rings of the block
    /// at `header`; `ready_fd` reports what arrived, `notify(ctx, events)`
    /// room to send, and last releases `ctx`. Takes both fds over.
    #[allow(clippy::too_many_arguments, reason = "one C call, mirrored")]
    pub(crate) fn tailscale_conn_attach(
        conn: u64,
        notify: unsafe extern "C" fn(ctx: *mut c_void, events: u32),
        ctx: *mut c_void,
        header: *mut c_void,
        rx: *mut c_void,
        rx_len: usize,
        tx: *mut c_void,
        tx_len: usize,
        kick_fd: c_int,
        ready_fd: c_int,
    ) -> c_int;
    pub(crate) fn tailscale_loopback(
        sd: c_int,
        addr_out: *mut c_char,
        addrlen: usize,
        proxy_cred_out: *mut c_char,
        local_api_cred_out: *mut c_char,
    ) -> c_int;
    pub(crate) fn tailscale_errmsg(sd: c_int, buf: *mut c_char, buflen: usize) -> c_int;
}

// Test-only entry points (go/testhooks_on.go), in the archive only when the
// `test-hooks` feature builds it.
#[cfg(feature = "test-hooks")]
unsafe extern "C" {
    pub(crate) fn tailscale_testhook_panic(sd: c_int, site: *const c_char) -> c_int;
    pub(crate) fn tailscale_testhook_blocked_go_thread(
        tid_out: *mut c_int,
        release_out: *mut c_int,
    ) -> c_int;
}
