//! A Tailscale node in this process: Go's `tsnet`, linked as a C archive.
//!
//! [`TsnetTransport`] owns one node. Create it with [`NodeOptions`], bring it
//! onto the tailnet with [`TsnetTransport::up`], then use it as any
//! [`Transport`]. Every accepted stream comes with the peer's tailnet address,
//! delivered by the Go side in the same message as the connection itself.
//!
//! Nothing here blocks a tokio worker thread: `up` and `close` run on the
//! blocking pool, accepts and dials wait on file descriptors with
//! [`AsyncFd`]. Stream bytes take the direct data path by default
//! ([`DataPath`]): two rings in memory shared with the Go side, which its
//! goroutines move to and from gVisor's TCP endpoint; either side signals
//! the other (an eventfd) only when the other is asleep.
//!
//! Go reads its environment once, when the process starts, so knobs such as
//! `TS_NO_LOGS_NO_SUPPORT=true` must be set before the process is executed,
//! not with `std::env::set_var`.
//!
//! The Go runtime runs in every process that links this module, whether or
//! not it creates a node, and requires every other signal handler to have
//! `SA_ONSTACK`. Register the signals a program handles with [`signal`],
//! not with `tokio::signal` directly.

mod direct;
mod ffi;
mod record;
mod signal;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

use std::ffi::{CString, c_char, c_int};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use self::record::{Record, RecordReader};
pub use self::signal::signal;
use crate::close::CloseSignal;
use crate::{BoxFuture, BoxStream, Listener, PeerAddr, Transport, TransportError};

/// Longest error message kept from the Go side.
const ERRMSG_CAPACITY: usize = 4096;
/// How long `listen` keeps retrying a port whose previous listener is still
/// being torn down on the Go side.
const RELISTEN_GRACE: Duration = Duration::from_secs(2);

/// Where a node's own log lines go.
#[derive(Debug, Default)]
pub enum NodeLogs {
    /// Dropped (the default).
    #[default]
    Discard,
    /// Written to this process's standard error.
    Stderr,
    /// Appended to this file, which the node closes when it closes.
    File(File),
}

/// How stream bytes cross between Go and Rust (decision 0004).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPath {
    /// Bytes cross through two rings in memory shared with the Go side,
    /// whose goroutines move them to and from gVisor's TCP endpoint; a side
    /// is woken (an eventfd) only when it sleeps. No socketpair, and no
    /// system call per message while both sides are busy.
    #[default]
    Direct,
    /// libtailscale's way: every stream is a Unix socketpair, with two Go
    /// goroutines copying between it and the tsnet connection. Kept for
    /// comparison; the direct path also falls back to it for a connection
    /// it cannot take.
    Socketpair,
}

/// How to create a node.
#[derive(Debug)]
pub struct NodeOptions {
    /// The node's state directory (keys, tailnet state, log buffers). Every
    /// node needs its own. Keeping it keeps the node's identity and address.
    pub state_dir: PathBuf,
    /// The hostname to register with.
    pub hostname: String,
    /// An auth key, needed when the control server requires one.
    pub auth_key: Option<String>,
    /// The control server; `None` is Tailscale's own.
    pub control_url: Option<String>,
    /// Register as ephemeral: control deletes the node once it goes away.
    pub ephemeral: bool,
    /// Where the node's logs go.
    pub logs: NodeLogs,
    /// How stream bytes cross between Go and Rust.
    pub data_path: DataPath,
}

impl NodeOptions {
    /// Options with a state directory and hostname and every other setting
    /// at its default.
    pub fn new(state_dir: impl Into<PathBuf>, hostname: impl Into<String>) -> NodeOptions {
        NodeOptions {
            state_dir: state_dir.into(),
            hostname: hostname.into(),
            auth_key: None,
            control_url: None,
            ephemeral: false,
            logs: NodeLogs::Discard,
            data_path: DataPath::Direct,
        }
    }
}

/// A node's addresses on the tailnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailnetAddrs {
    /// The IPv4 address, unless the tailnet has none.
    pub v4: Option<Ipv4Addr>,
    /// The IPv6 address, unless the tailnet has none.
    pub v6: Option<Ipv6Addr>,
}

impl TailnetAddrs {
    /// Both addresses, IPv4 first.
    pub fn all(&self) -> Vec<IpAddr> {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6)).collect()
    }
}

/// How to reach a node's LocalAPI: an HTTP server on 127.0.0.1 that takes
/// the header `Sec-Tailscale: localapi` and HTTP basic auth with
/// [`LocalApiAccess::credential`] as the password.
#[derive(Clone)]
pub struct LocalApiAccess {
    /// The loopback address of the server.
    pub addr: SocketAddr,
    /// The password for basic auth (any user name).
    pub credential: String,
}

impl std::fmt::Debug for LocalApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApiAccess").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// A Tailscale node, and the [`Transport`] over its tailnet.
///
/// Cloning gives another handle to the same node. The node closes when
/// [`TsnetTransport::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct TsnetTransport {
    node: Arc<Node>,
}

struct Node {
    sd: c_int,
    hostname: String,
    /// Held around each call that may fail and the read of its message, so
    /// messages of concurrent failures cannot be swapped. Never held across
    /// a call that waits (`up` hands back its own message instead), so that
    /// one slow call does not hold up the node's others.
    call_lock: Mutex<()>,
    closed: AtomicBool,
    addrs: OnceLock<TailnetAddrs>,
    data_path: DataPath,
}

impl std::fmt::Debug for TsnetTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsnetTransport")
            .field("hostname", &self.node.hostname)
            .field("addrs", &self.node.addrs.get())
            .finish()
    }
}

fn cstring(what: &str, value: &str) -> Result<CString, TransportError> {
    CString::new(value)
        .map_err(|_| TransportError::Tailscale(format!("{what} must not contain a NUL byte")))
}

impl TsnetTransport {
    /// Creates a node with `options`. It does not contact anything until
    /// [`TsnetTransport::up`].
    pub fn new(options: NodeOptions) -> Result<TsnetTransport, TransportError> {
        let dir = options.state_dir.to_str().ok_or_else(|| {
            TransportError::Tailscale(format!(
                "state dir {} is not valid UTF-8",
                options.state_dir.display()
            ))
        })?;
        let dir = cstring("state dir", dir)?;
        let hostname = cstring("hostname", &options.hostname)?;
        let auth_key = options.auth_key.as_deref().map(|k| cstring("auth key", k)).transpose()?;
        let control_url =
            options.control_url.as_deref().map(|u| cstring("control URL", u)).transpose()?;
        std::fs::create_dir_all(&options.state_dir).map_err(|err| {
            TransportError::io(format!("create state dir {}", options.state_dir.display()), err)
        })?;
        // SAFETY: tailscale_new has no preconditions.
        let sd = unsafe { ffi::tailscale_new() };
        let transport = TsnetTransport {
            node: Arc::new(Node {
                sd,
                hostname: options.hostname,
                call_lock: Mutex::new(()),
                closed: AtomicBool::new(false),
                addrs: OnceLock::new(),
                data_path: options.data_path,
            }),
        };
        let node = &transport.node;
        node.set_string(ffi::tailscale_set_dir, &dir)?;
        node.set_string(ffi::tailscale_set_hostname, &hostname)?;
        if let Some(key) = &auth_key {
            node.set_string(ffi::tailscale_set_authkey, key)?;
        }
        if let Some(url) = &control_url {
            node.set_string(ffi::tailscale_set_control_url, url)?;
        }
        // SAFETY: sd is a live handle; the call takes an int.
        node.check(|sd| unsafe {
            ffi::tailscale_set_ephemeral(sd, c_int::from(options.ephemeral))
        })?;
        // Made only now, so that no early return above can leak it.
        let log_fd: Option<OwnedFd> = match options.logs {
            NodeLogs::Discard => None,
            // The node owns the descriptor it is given, so give it a copy.
            NodeLogs::Stderr => Some(
                io::stderr()
                    .as_raw_fd()
                    .try_clone_fd()
                    .map_err(|err| TransportError::io("duplicate stderr", err))?,
            ),
            NodeLogs::File(file) => Some(OwnedFd::from(file)),
        };
        let log_fd = log_fd.map_or(-1, IntoRawFd::into_raw_fd);
        // SAFETY: as above. The call takes the descriptor over whatever its
        // result: the node closes it on failure, or when it closes.
        node.check(|sd| unsafe { ffi::tailscale_set_logfd(sd, log_fd) })?;
        Ok(transport)
    }

    /// Connects the node to its tailnet and waits, at most `timeout`, until
    /// it is running with an address. Returns the node's addresses.
    pub async fn up(&self, timeout: Duration) -> Result<TailnetAddrs, TransportError> {
        let node = self.node.clone();
        let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX).max(1);
        tokio::task::spawn_blocking(move || {
            // Up waits for as long as `timeout`: not under call_lock, so the
            // node's other calls (listen, local_api, ...) go on meanwhile.
            let mut msg = vec![0 as c_char; ERRMSG_CAPACITY];
            // SAFETY: sd is a live handle (or closed, which the call
            // reports); msg has the length passed.
            let rc = unsafe {
                ffi::tailscale_up_timeout(node.sd, timeout_ms, msg.as_mut_ptr(), msg.len())
            };
            node.result(rc, || c_buf_to_string(&msg))?;
            let addrs = node.read_addrs()?;
            Ok(*node.addrs.get_or_init(|| addrs))
        })
        .await
        .map_err(|err| TransportError::Tailscale(format!("up task failed: {err}")))?
    }

    /// The node's addresses, once [`TsnetTransport::up`] has succeeded.
    pub fn addrs(&self) -> Option<TailnetAddrs> {
        self.node.addrs.get().copied()
    }

    /// The hostname this node registered with.
    pub fn hostname(&self) -> &str {
        &self.node.hostname
    }

    /// Starts (once) the node's loopback server and tells how to reach its
    /// LocalAPI.
    pub fn local_api(&self) -> Result<LocalApiAccess, TransportError> {
        let mut addr = [0 as c_char; 128];
        let mut proxy_cred = [0 as c_char; 33];
        let mut api_cred = [0 as c_char; 33];
        // SAFETY: the buffers have the sizes passed (33 for the credentials,
        // as the API requires).
        self.node.check(|sd| unsafe {
            ffi::tailscale_loopback(
                sd,
                addr.as_mut_ptr(),
                addr.len(),
                proxy_cred.as_mut_ptr(),
                api_cred.as_mut_ptr(),
            )
        })?;
        let addr = c_buf_to_string(&addr);
        let addr = addr.parse().map_err(|_| {
            TransportError::Tailscale(format!("loopback address {addr:?} is not ip:port"))
        })?;
        Ok(LocalApiAccess { addr, credential: c_buf_to_string(&api_cred) })
    }

    /// Closes the node: its listeners end, its connections break, and it
    /// leaves the tailnet (at once, if ephemeral). Safe to call in any
    /// state and more than once.
    pub async fn close(&self) {
        let node = self.node.clone();
        // Closing waits for the node's log flush and LocalAPI shutdown.
        let _ = tokio::task::spawn_blocking(move || node.close()).await;
    }
}

impl Node {
    /// Runs one FFI call and turns a failure into an error with the node's
    /// message.
    fn check(&self, call: impl FnOnce(c_int) -> c_int) -> Result<(), TransportError> {
        let _guard = self.call_lock.lock().unwrap_or_else(|p| p.into_inner());
        let rc = call(self.sd);
        self.result(rc, || self.errmsg())
    }

    /// Turns a call's return code into a result; `message` gives the text of
    /// a failure (-1).
    fn result(&self, rc: c_int, message: impl FnOnce() -> String) -> Result<(), TransportError> {
        match rc {
            0 => Ok(()),
            -1 => {
                let msg = message();
                Err(TransportError::Tailscale(if msg.is_empty() {
                    "unknown error".to_owned()
                } else {
                    msg
                }))
            }
            libc::EBADF if self.closed.load(Ordering::Acquire) => {
                Err(TransportError::NotRunning("node is closed".to_owned()))
            }
            errno => Err(TransportError::io("tailscale", io::Error::from_raw_os_error(errno))),
        }
    }

    /// Calls one of the string setters.
    fn set_string(
        &self,
        setter: unsafe extern "C" fn(c_int, *const c_char) -> c_int,
        value: &CString,
    ) -> Result<(), TransportError> {
        // SAFETY: sd is a live handle and value a NUL-terminated string that
        // outlives the call; the setters copy it.
        self.check(|sd| unsafe { setter(sd, value.as_ptr()) })
    }

    fn errmsg(&self) -> String {
        let mut buf = vec![0 as c_char; ERRMSG_CAPACITY];
        // SAFETY: buf has the length passed.
        unsafe { ffi::tailscale_errmsg(self.sd, buf.as_mut_ptr(), buf.len()) };
        c_buf_to_string(&buf)
    }

    fn read_addrs(&self) -> Result<TailnetAddrs, TransportError> {
        let mut buf = [0 as c_char; 256];
        // SAFETY: buf has the length passed.
        self.check(|sd| unsafe { ffi::tailscale_getips(sd, buf.as_mut_ptr(), buf.len()) })?;
        let text = c_buf_to_string(&buf);
        let mut addrs = TailnetAddrs { v4: None, v6: None };
        for part in text.split(',').filter(|p| !p.is_empty()) {
            match part.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => addrs.v4 = Some(v4),
                Ok(IpAddr::V6(v6)) => addrs.v6 = Some(v6),
                Err(_) => {
                    return Err(TransportError::Tailscale(format!(
                        "node reported an invalid address {part:?}"
                    )));
                }
            }
        }
        if addrs.v4.is_none() && addrs.v6.is_none() {
            return Err(TransportError::Tailscale("node reported no tailnet address".to_owned()));
        }
        Ok(addrs)
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            // SAFETY: sd is a handle from tailscale_new; closing is safe in
            // every state, and this runs once.
            let rc = unsafe { ffi::tailscale_close(self.sd) };
            if rc != 0 {
                tracing::debug!(hostname = %self.hostname, rc, "tailscale_close reported an error");
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            // Closing can take seconds; never do that on an async worker.
            let sd = self.sd;
            let hostname = std::mem::take(&mut self.hostname);
            self.closed.store(true, Ordering::Release);
            let spawned =
                std::thread::Builder::new().name("tsnet-close".to_owned()).spawn(move || {
                    // SAFETY: as in Node::close; the handle is not used again.
                    let _ = unsafe { ffi::tailscale_close(sd) };
                    tracing::debug!(%hostname, "node closed on drop");
                });
            if spawned.is_err() {
                // SAFETY: as above.
                let _ = unsafe { ffi::tailscale_close(sd) };
            }
        }
    }
}

fn c_buf_to_string(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Takes over a direct connection from a record.
fn stream_from_handle(handle: u64) -> Result<BoxStream, TransportError> {
    let stream = direct::DirectStream::attach(handle)
        .map_err(|err| TransportError::io("attach direct connection", err))?;
    Ok(Box::new(stream) as BoxStream)
}

/// Wraps a received descriptor (our end of a socketpair) as a tokio stream.
fn stream_from_fd(fd: OwnedFd) -> Result<BoxStream, TransportError> {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true).map_err(|err| TransportError::io("set non-blocking", err))?;
    let stream = tokio::net::UnixStream::from_std(std_stream)
        .map_err(|err| TransportError::io("register stream", err))?;
    Ok(Box::new(stream) as BoxStream)
}

/// Takes ownership of a descriptor the Go side just handed out.
fn owned_fd(fd: c_int) -> OwnedFd {
    // SAFETY: only called with a descriptor returned by a successful call,
    // which is fresh and owned by nobody else.
    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

fn async_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, TransportError> {
    set_nonblocking(&fd).map_err(|err| TransportError::io("set non-blocking", err))?;
    // SAFETY: an OwnedFd always returns the same open descriptor, which it
    // keeps open until the AsyncFd drops it.
    unsafe { AsyncFd::register(fd) }
        .map_err(|err| TransportError::io("register descriptor", err.into_parts().1))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn parse_peer(text: &str) -> Result<PeerAddr, TransportError> {
    text.parse::<SocketAddr>()
        .map(|addr| PeerAddr::new(SocketAddr::new(addr.ip().to_canonical(), addr.port())))
        .map_err(|_| TransportError::Tailscale(format!("node reported peer address {text:?}")))
}

trait TryCloneFd {
    fn try_clone_fd(self) -> io::Result<OwnedFd>;
}

impl TryCloneFd for std::os::fd::RawFd {
    fn try_clone_fd(self) -> io::Result<OwnedFd> {
        // SAFETY: the descriptor is valid for the duration of this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(self) };
        borrowed.try_clone_to_owned()
    }
}

impl Transport for TsnetTransport {
    fn listen(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Listener>, TransportError>> {
        Box::pin(async move {
            if port == 0 {
                return Err(TransportError::Tailscale(
                    "tsnet listeners need an explicit port; port 0 is not supported".to_owned(),
                ));
            }
            let network = cstring("network", "tcp")?;
            let addr = cstring("address", &format!(":{port}"))?;
            let deadline = Instant::now() + RELISTEN_GRACE;
            let listen = match self.node.data_path {
                DataPath::Direct => ffi::tailscale_listen_direct,
                DataPath::Socketpair => ffi::tailscale_listen,
            };
            let fd = loop {
                let mut fd: c_int = -1;
                // SAFETY: the strings outlive the call; fd is written on success.
                let res = self
                    .node
                    .check(|sd| unsafe { listen(sd, network.as_ptr(), addr.as_ptr(), &mut fd) });
                match res {
                    Ok(()) => break owned_fd(fd),
                    // A listener closed just before may still be shutting
                    // down on the Go side.
                    Err(TransportError::Tailscale(msg)) if msg.contains("already open") => {
                        if Instant::now() >= deadline {
                            return Err(TransportError::AddrInUse(port));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(err) => return Err(err),
                }
            };
            Ok(Box::new(TsnetListener {
                fd: async_fd(fd)?,
                port,
                reader: tokio::sync::Mutex::new(RecordReader::default()),
                closed: CloseSignal::default(),
                _node: self.node.clone(),
            }) as Box<dyn Listener>)
        })
    }

    fn dial(
        &self,
        addr: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<BoxStream, TransportError>> {
        Box::pin(async move {
            let target = SocketAddr::new(addr, port);
            let network = cstring("network", "tcp")?;
            let target_c = cstring("address", &target.to_string())?;
            let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX).max(1);
            let dial = match self.node.data_path {
                DataPath::Direct => ffi::tailscale_dial_direct,
                DataPath::Socketpair => ffi::tailscale_dial_async,
            };
            let mut fd: c_int = -1;
            // SAFETY: the strings outlive the call; fd is written on success.
            self.node.check(|sd| unsafe {
                dial(sd, network.as_ptr(), target_c.as_ptr(), timeout_ms, &mut fd)
            })?;
            let pending = async_fd(owned_fd(fd))?;
            // The Go side answers within the timeout; the extra second only
            // guards against it never answering. Dropping `pending` (on
            // timeout or when this future is dropped) abandons the dial,
            // and closes a direct connection not yet attached: it is
            // dropped only after the attach below.
            let answer = tokio::time::timeout(
                timeout + Duration::from_secs(1),
                RecordReader::default().next(&pending),
            )
            .await;
            match answer {
                Err(_) => Err(TransportError::Timeout { addr: target, after: timeout }),
                Ok(Err(err)) => Err(TransportError::io(format!("dial {target}"), err)),
                Ok(Ok(None)) => Err(TransportError::Unreachable {
                    addr: target,
                    reason: "node closed during the dial".to_owned(),
                }),
                Ok(Ok(Some(Record::Conn(fd, _)))) => stream_from_fd(fd),
                Ok(Ok(Some(Record::Direct(handle, _)))) => stream_from_handle(handle),
                Ok(Ok(Some(Record::Error(msg)))) => Err(dial_error(target, timeout, msg)),
            }
        })
    }

    fn local_addrs(&self) -> Vec<IpAddr> {
        self.node.addrs.get().map(TailnetAddrs::all).unwrap_or_default()
    }
}

fn dial_error(target: SocketAddr, timeout: Duration, msg: String) -> TransportError {
    if msg.contains("timed out") {
        TransportError::Timeout { addr: target, after: timeout }
    } else if msg.contains("connection refused") {
        TransportError::Refused(target)
    } else if msg.contains("closed") {
        TransportError::NotRunning(msg)
    } else {
        TransportError::Unreachable { addr: target, reason: msg }
    }
}

struct TsnetListener {
    fd: AsyncFd<OwnedFd>,
    port: u16,
    reader: tokio::sync::Mutex<RecordReader>,
    closed: CloseSignal,
    /// Keeps the node open while a listener is in use.
    _node: Arc<Node>,
}

impl Listener for TsnetListener {
    fn accept(&self) -> BoxFuture<'_, Result<(BoxStream, PeerAddr), TransportError>> {
        Box::pin(async move {
            loop {
                if self.closed.is_closed() {
                    return Err(TransportError::Closed);
                }
                let next = tokio::select! {
                    _ = self.closed.closed() => return Err(TransportError::Closed),
                    next = async { self.reader.lock().await.next(&self.fd).await } => next,
                };
                match next {
                    Ok(None) => {
                        self.closed.close();
                        return Err(TransportError::Closed);
                    }
                    Ok(Some(Record::Conn(fd, peer))) => {
                        let peer = parse_peer(&peer)?;
                        return Ok((stream_from_fd(fd)?, peer));
                    }
                    Ok(Some(Record::Direct(handle, peer))) => {
                        // Attached first, so that the handle is closed
                        // (on drop) whatever happens next.
                        let stream = match stream_from_handle(handle) {
                            Ok(stream) => stream,
                            Err(err) => {
                                // Closed on the Go side before we took it.
                                tracing::warn!(port = self.port, %err, "listener lost a connection");
                                continue;
                            }
                        };
                        return Ok((stream, parse_peer(&peer)?));
                    }
                    Ok(Some(Record::Error(msg))) => {
                        // One connection was lost on the Go side; the
                        // listener goes on.
                        tracing::warn!(port = self.port, %msg, "listener dropped a connection");
                    }
                    Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                        return Err(TransportError::Tailscale(err.to_string()));
                    }
                    Err(err) => {
                        self.closed.close();
                        return Err(TransportError::io("accept", err));
                    }
                }
            }
        })
    }

    fn local_port(&self) -> u16 {
        self.port
    }

    fn close(&self) {
        if self.closed.close() {
            // The Go side sees end of stream and closes the tsnet listener;
            // the descriptor itself is released on drop.
            // SAFETY: shutdown on a descriptor we own.
            unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

#[cfg(test)]
mod tests;
