//! Failures of the Go side, provoked with ts-transport's test hooks, on the
//! real tailnet.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tests::conformance::{self, DIAL_TIMEOUT};
use tests::tailnet::{LocalTailnet, UP_TIMEOUT};
use tokio::io::AsyncReadExt;
use ts_transport::Transport;
use ts_transport::tsnet::test_hooks::{Site, panic_next};
use ts_transport::tsnet::{NodeOptions, TsnetTransport};

use crate::{v4, within};

/// Where the child process finds the tailnet.
const CHILD_CONTROL_URL: &str = "TSNET_FFI_CHILD_CONTROL_URL";
const CHILD_STATE_DIR: &str = "TSNET_FFI_CHILD_STATE_DIR";

/// Runs the ignored test `name` of this binary in a child process, against
/// `tailnet`, and fails if the child does not exit successfully: a Go panic
/// that escapes aborts the whole process, so it cannot be tested in this one.
async fn run_child(tailnet: &LocalTailnet, name: &str) {
    let exe = std::env::current_exe().expect("path of this test binary");
    let child = tokio::process::Command::new(exe)
        .args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_CONTROL_URL, &tailnet.control_url)
        .env(CHILD_STATE_DIR, tailnet.dir().join(name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = within(name, child).await.expect("run the child process");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "child {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr (last 40 lines)\n{}",
            output.status,
            tail.join("\n")
        );
    }
}

/// A node of the parent's tailnet, in a child process.
async fn child_node(hostname: &str) -> TsnetTransport {
    let url = std::env::var(CHILD_CONTROL_URL)
        .unwrap_or_else(|_| panic!("run as a child process: {CHILD_CONTROL_URL} is not set"));
    let dir = PathBuf::from(std::env::var_os(CHILD_STATE_DIR).expect("state dir is set"));
    let mut options = NodeOptions::new(dir.join(hostname), hostname);
    options.control_url = Some(url);
    let node = TsnetTransport::new(options).unwrap();
    node.up(UP_TIMEOUT).await.unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_a_panic_in_the_accept_loop_neither_aborts_nor_ends_the_listener() {
    let tailnet = LocalTailnet::start().await.unwrap();
    run_child(&tailnet, "ffi::accept_panic_child").await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of tsnet_a_panic_in_the_accept_loop_neither_aborts_nor_ends_the_listener"]
async fn accept_panic_child() {
    let a = child_node("panic-dialer").await;
    let b = child_node("panic-listener").await;
    let listener = b.listen(7900).await.unwrap();
    panic_next(&b, Site::Accept).unwrap();

    // The Go side panics while it hands the first connection over: that
    // connection ends, and nothing else does.
    let pending = tokio::spawn({
        let b_ip = v4(&b);
        let a = a.clone();
        async move {
            let mut stream = a.dial(b_ip, 7900, DIAL_TIMEOUT).await?;
            let mut buf = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                .await
                .map_err(|_| ts_transport::TransportError::Closed)?
                .map_err(|err| ts_transport::TransportError::Tailscale(err.to_string()))
        }
    });
    match within("the connection that hit the panic", pending).await.unwrap() {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes on a connection the listener never handed over"),
    }

    // The listener still accepts, with the right peer address.
    let ((_, peer), _) =
        within("accept after the panic", conformance::connect(&*listener, &a, v4(&b), 7900))
            .await
            .expect("connect after a panic in the accept loop");
    assert_eq!(peer.ip(), v4(&a));
    listener.close();
    a.close().await;
    b.close().await;
}

/// Go requires `SA_ONSTACK` on every signal handler that is not its own.
/// The harness spawns child processes with tokio, which installs a `SIGCHLD`
/// handler when one is dropped before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_harness_signal_handlers_are_safe_for_go() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let child = tokio::process::Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sleep");
    drop(child);
    fn action(signo: libc::c_int) -> libc::sigaction {
        // SAFETY: an all-zero sigaction is a valid value to be overwritten.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current action into `action`.
        unsafe { libc::sigaction(signo, std::ptr::null(), &mut action) };
        action
    }
    let is_handler =
        |a: &libc::sigaction| a.sa_sigaction != libc::SIG_DFL && a.sa_sigaction != libc::SIG_IGN;
    // tokio installs it when it next tries to reap the orphan.
    within("tokio's SIGCHLD handler", async {
        while !is_handler(&action(libc::SIGCHLD)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let unsafe_handlers: Vec<libc::c_int> = (1..=libc::SIGRTMAX())
        .filter(|&signo| {
            let a = action(signo);
            is_handler(&a) && a.sa_flags & libc::SA_ONSTACK == 0
        })
        .collect();
    assert!(
        unsafe_handlers.is_empty(),
        "handlers without SA_ONSTACK for signals {unsafe_handlers:?}"
    );
    tailnet.stop().await;
}
