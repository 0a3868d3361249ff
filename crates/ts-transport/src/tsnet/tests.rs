//! Tests of the FFI layer that need no tailnet: locking, descriptor
//! ownership and failure handling, some with the Go side made to panic
//! (feature `test-hooks`). Nodes here point at a control server that never
//! answers or refuses, so nothing leaves 127.0.0.1.

use std::ffi::{CString, c_int};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// How long a call that should return at once may take before the test
/// calls it stuck.
const PROMPT: Duration = Duration::from_secs(20);

/// Runs `f` on a thread of its own and returns its result, or fails the test
/// if it has not returned within `PROMPT` (a deadlocked call stays stuck on
/// its thread; the test fails instead of hanging).
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PROMPT).unwrap_or_else(|_| {
        panic!("{what} did not return within {PROMPT:?}: deadlocked or blocked behind a call")
    })
}

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: fds has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (owned_fd(fds[0]), owned_fd(fds[1]))
}

/// Whether every copy of the pipe's write end is closed within `PROMPT`:
/// the read end then reads end of stream.
fn writer_closed(read_end: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd { fd: read_end.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = c_int::try_from(PROMPT.as_millis()).unwrap();
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, ms) } != 1 {
        return false;
    }
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into `byte`.
    unsafe { libc::read(read_end.as_raw_fd(), (&raw mut byte).cast(), 1) == 0 }
}

/// A control URL where a server accepts connections and never answers:
/// `up` waits on it until its timeout.
fn hanging_control() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// A control URL where nothing listens.
fn dead_control() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn offline_options(dir: &tempfile::TempDir, hostname: &str, control_url: String) -> NodeOptions {
    let mut options = NodeOptions::new(dir.path().join(hostname), hostname);
    options.control_url = Some(control_url);
    options
}

/// A raw handle with a state dir and a control URL where nothing listens.
fn raw_server(dir: &tempfile::TempDir) -> c_int {
    // SAFETY: no preconditions.
    let sd = unsafe { ffi::tailscale_new() };
    let state = CString::new(dir.path().join("raw").to_str().unwrap()).unwrap();
    let url = CString::new(dead_control()).unwrap();
    // SAFETY: live handle, NUL-terminated strings that outlive the calls.
    unsafe {
        assert_eq!(ffi::tailscale_set_dir(sd, state.as_ptr()), 0);
        assert_eq!(ffi::tailscale_set_control_url(sd, url.as_ptr()), 0);
    }
    sd
}

fn raw_errmsg(sd: c_int) -> String {
    let mut buf = vec![0 as c_char; ERRMSG_CAPACITY];
    // SAFETY: buf has the length passed.
    unsafe { ffi::tailscale_errmsg(sd, buf.as_mut_ptr(), buf.len()) };
    c_buf_to_string(&buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_up_does_not_block_other_calls_on_the_node_or_other_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (control, url) = hanging_control();
    let node = TsnetTransport::new(offline_options(&dir, "hang-up", url)).unwrap();
    let other = TsnetTransport::new(offline_options(&dir, "bystander", dead_control())).unwrap();

    let up = tokio::spawn({
        let node = node.clone();
        async move { node.up(Duration::from_secs(120)).await }
    });
    // The node contacting control shows that up is under way on the Go side.
    let contacted = tokio::task::spawn_blocking(move || {
        let conn = control.accept().map(|(conn, _)| conn);
        (control, conn)
    });
    let (_control, conn) = tokio::time::timeout(PROMPT, contacted)
        .await
        .expect("the node did not contact control")
        .unwrap();
    let _conn = conn.expect("accept the node's connection to control");
    assert!(!up.is_finished(), "up returned against a control server that never answers");

    // Calls on the same node, and on another node, answer while up waits.
    let api = promptly("local_api during a hanging up", {
        let node = node.clone();
        move || node.local_api()
    });
    let api = api.expect("local_api");
    assert!(api.addr.ip().is_loopback());
    let listener = tokio::time::timeout(PROMPT, node.listen(7001))
        .await
        .expect("listen during a hanging up did not return: blocked behind up");
    listener.expect("listen before the node is up");
    promptly("local_api of another node", {
        let other = other.clone();
        move || other.local_api()
    })
    .expect("local_api of another node");

    // Closing during the hanging up works and ends up.
    tokio::time::timeout(PROMPT, node.close()).await.expect("close during a hanging up");
    let result = tokio::time::timeout(PROMPT, up)
        .await
        .expect("up did not end after close")
        .expect("up task");
    assert!(result.is_err(), "up succeeded against a control server that never answers");
    other.close().await;
}

#[test]
fn set_logfd_closes_the_descriptor_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();

    // On a closed handle (EBADF).
    // SAFETY: no preconditions.
    let sd = unsafe { ffi::tailscale_new() };
    // SAFETY: a handle from tailscale_new.
    assert_eq!(unsafe { ffi::tailscale_close(sd) }, 0);
    let (read_end, write_end) = pipe();
    // SAFETY: the descriptor is handed over; the call owns it.
    let rc = unsafe { ffi::tailscale_set_logfd(sd, write_end.into_raw_fd()) };
    assert_eq!(rc, libc::EBADF);
    assert!(writer_closed(&read_end), "set_logfd on a closed handle kept the descriptor");

    // On a started server (options are refused then).
    let sd = raw_server(&dir);
    // SAFETY: a live handle.
    assert_eq!(unsafe { ffi::tailscale_start(sd) }, 0, "start: {}", raw_errmsg(sd));
    let (read_end, write_end) = pipe();
    // SAFETY: as above.
    let rc = unsafe { ffi::tailscale_set_logfd(sd, write_end.into_raw_fd()) };
    assert_eq!(rc, -1);
    assert!(writer_closed(&read_end), "set_logfd on a started server kept the descriptor");
    // SAFETY: a live handle, closed once.
    unsafe { ffi::tailscale_close(sd) };
}

#[tokio::test]
async fn an_up_that_times_out_says_where_the_node_stands() {
    let dir = tempfile::tempdir().unwrap();
    let node = TsnetTransport::new(offline_options(&dir, "late", dead_control())).unwrap();
    let err = node.up(Duration::from_millis(1500)).await.expect_err("up without a control server");
    let msg = err.to_string();
    assert!(msg.contains("not running after 1500 ms"), "message {msg:?}");
    // Which state it is in by then (NoState, or NeedsLogin once its first
    // try at control failed) depends on the machine's speed; that the state
    // is named, and that it has no home DERP, does not.
    assert!(msg.contains("(backend state "), "message {msg:?}");
    assert!(msg.contains("home DERP none"), "message {msg:?}");
    node.close().await;
}

#[tokio::test]
async fn closing_a_node_closes_its_log_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let (read_end, write_end) = pipe();
    let mut options = offline_options(&dir, "logs", dead_control());
    options.logs = NodeLogs::File(File::from(write_end));
    let node = TsnetTransport::new(options).unwrap();
    node.close().await;
    assert!(writer_closed(&read_end), "the node kept its log descriptor open after close");
}

#[cfg(feature = "test-hooks")]
mod hooks {
    use super::*;
    use crate::tsnet::test_hooks::{GoThread, Site, panic_next, panic_next_raw};

    #[test]
    fn a_panic_in_a_setter_leaves_the_server_usable() {
        let dir = tempfile::tempdir().unwrap();
        let sd = raw_server(&dir);
        panic_next_raw(sd, Site::Set).unwrap();
        let (rc, msg) = promptly("a setter that panics", move || {
            let name = CString::new("first").unwrap();
            // SAFETY: a live handle and a string that outlives the call.
            let rc = unsafe { ffi::tailscale_set_hostname(sd, name.as_ptr()) };
            (rc, raw_errmsg(sd))
        });
        assert_eq!(rc, -1);
        assert!(msg.contains("internal error"), "message {msg:?}");
        let rc = promptly("the setter after a panic", move || {
            let name = CString::new("second").unwrap();
            // SAFETY: as above.
            unsafe { ffi::tailscale_set_hostname(sd, name.as_ptr()) }
        });
        assert_eq!(rc, 0, "setter after a panic: {}", raw_errmsg(sd));
        // SAFETY: a live handle, closed once.
        let rc = promptly("close after a panic", move || unsafe { ffi::tailscale_close(sd) });
        assert_eq!(rc, 0);
    }

    #[test]
    fn a_panic_in_set_logfd_closes_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let sd = raw_server(&dir);
        panic_next_raw(sd, Site::Set).unwrap();
        let (read_end, write_end) = pipe();
        let fd = write_end.into_raw_fd();
        // SAFETY: the descriptor is handed over; the call owns it.
        let rc =
            promptly("set_logfd that panics", move || unsafe { ffi::tailscale_set_logfd(sd, fd) });
        assert_eq!(rc, -1);
        assert!(writer_closed(&read_end), "set_logfd that failed kept the descriptor");
        // SAFETY: a live handle, closed once.
        promptly("close", move || unsafe { ffi::tailscale_close(sd) });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_local_api_leaves_the_node_usable() {
        let dir = tempfile::tempdir().unwrap();
        let node = TsnetTransport::new(offline_options(&dir, "lb", dead_control())).unwrap();
        panic_next(&node, Site::Loopback).unwrap();
        let first = promptly("local_api that panics", {
            let node = node.clone();
            move || node.local_api()
        });
        match first {
            Err(TransportError::Tailscale(msg)) if msg.contains("internal error") => {}
            other => panic!("local_api with a panic gave {other:?}"),
        }
        let second = promptly("local_api after a panic", {
            let node = node.clone();
            move || node.local_api()
        });
        assert!(second.expect("local_api after a panic").addr.ip().is_loopback());
        tokio::time::timeout(PROMPT, node.close()).await.expect("close after a panic");
    }

    /// Go requires every signal handler that is not Go's to run on the
    /// thread's alternate signal stack (`SA_ONSTACK`): Go threads run on
    /// small goroutine stacks. A signal registered through
    /// [`crate::tsnet::signal`] and delivered to a Go thread must run there.
    #[tokio::test]
    async fn signal_handlers_run_on_the_alternate_stack_of_go_threads() {
        use std::sync::atomic::{AtomicI32, Ordering};
        use tokio::signal::unix::SignalKind;

        static RAN_ON_TID: AtomicI32 = AtomicI32::new(0);
        /// 1: on the alternate stack, 2: not.
        static ON_ALT_STACK: AtomicI32 = AtomicI32::new(0);

        let kind = SignalKind::user_defined2();
        let mut signals = super::super::signal(kind).unwrap();
        // A second action in the same process-wide handler that notes where
        // it runs.
        // SAFETY: the action only makes async-signal-safe system calls and
        // stores atomics.
        unsafe {
            signal_hook_registry::register(kind.as_raw_value(), || {
                let mut stack: libc::stack_t = std::mem::zeroed();
                libc::sigaltstack(std::ptr::null(), &mut stack);
                let on = if stack.ss_flags & libc::SS_ONSTACK != 0 { 1 } else { 2 };
                ON_ALT_STACK.store(on, Ordering::SeqCst);
                RAN_ON_TID.store(libc::gettid(), Ordering::SeqCst);
            })
        }
        .unwrap();

        let mut go = GoThread::start().unwrap();
        // SAFETY: a thread of this process.
        let rc =
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), go.tid, kind.as_raw_value()) };
        assert_eq!(rc, 0, "tgkill: {}", io::Error::last_os_error());
        tokio::time::timeout(PROMPT, signals.recv()).await.expect("signal not delivered");
        // Both actions run in one handler call, but tokio may wake the task
        // before the second one has finished.
        let deadline = Instant::now() + PROMPT;
        while RAN_ON_TID.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(RAN_ON_TID.load(Ordering::SeqCst), go.tid, "the signal ran on another thread");
        go.release();

        assert_eq!(
            ON_ALT_STACK.load(Ordering::SeqCst),
            1,
            "the handler ran on a goroutine's stack, not the Go thread's signal stack"
        );
        // SAFETY: an all-zero sigaction is a valid value to be overwritten.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current action into `action`.
        let rc = unsafe { libc::sigaction(kind.as_raw_value(), std::ptr::null(), &mut action) };
        assert_eq!(rc, 0);
        assert!(
            action.sa_flags & libc::SA_ONSTACK != 0,
            "the handler for signal {} lacks SA_ONSTACK (flags {:#x})",
            kind.as_raw_value(),
            action.sa_flags
        );
    }
}
