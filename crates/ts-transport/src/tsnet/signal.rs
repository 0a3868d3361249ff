//! Signal handling in a process that links the Go archive.
//!
//! Go's runtime runs goroutines on small stacks and gives each of its
//! threads an alternate signal stack. It therefore requires every signal
//! handler installed by other code to have the `SA_ONSTACK` flag, so that the
//! handler runs on that stack when the signal lands on a Go thread (Go's
//! `os/signal` documentation: "If the non-Go code installs any signal
//! handlers, it must use the SA_ONSTACK flag with sigaction. Failing to do
//! so is likely to cause the program to crash if the signal is received.").
//! Go can add the flag only to handlers that exist when it starts, and for a
//! C archive that is before `main`. tokio installs its handlers later,
//! through `signal-hook-registry`, without the flag.

use std::io;

use tokio::signal::unix::{Signal, SignalKind};

/// Listens for the signal `kind`, like [`tokio::signal::unix::signal`], in a
/// way that is safe in a process that runs tsnet nodes.
///
/// It registers `kind` with tokio, then re-installs the process's handler
/// for it with `SA_ONSTACK` added (see the module documentation for why Go
/// needs this). tokio installs a signal's handler once and never replaces
/// it, so the flag stays.
///
/// Every program that links the `tailscale` feature should register each
/// signal it handles through this function rather than through tokio
/// directly, and before the signal can arrive:
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use tokio::signal::unix::SignalKind;
/// // Instead of tokio::signal::ctrl_c().await:
/// let mut interrupt = ts_transport::tsnet::signal(SignalKind::interrupt())?;
/// interrupt.recv().await;
/// # Ok(())
/// # }
/// ```
///
/// tokio also installs a `SIGCHLD` handler by itself when a child process
/// spawned with `tokio::process` is dropped before it exits. A program that
/// spawns children that way should call `signal(SignalKind::child())` once
/// (the returned [`Signal`] may be dropped; the handler stays installed and
/// flagged).
///
/// The handler is read and written back with two `sigaction` calls: code
/// that installs a different handler for the same signal at the same moment,
/// on another thread, would be overwritten.
pub fn signal(kind: SignalKind) -> io::Result<Signal> {
    let signal = tokio::signal::unix::signal(kind)?;
    add_onstack(kind.as_raw_value())?;
    Ok(signal)
}

/// Adds `SA_ONSTACK` to the handler installed for `signo`, if it is a
/// handler function without it.
fn add_onstack(signo: libc::c_int) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value to be overwritten.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reads the current action into `action`.
    if unsafe { libc::sigaction(signo, std::ptr::null(), &mut action) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let is_function = action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN;
    if !is_function || action.sa_flags & libc::SA_ONSTACK != 0 {
        return Ok(());
    }
    action.sa_flags |= libc::SA_ONSTACK;
    // SAFETY: installs the same handler, mask and flags, plus SA_ONSTACK.
    if unsafe { libc::sigaction(signo, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
