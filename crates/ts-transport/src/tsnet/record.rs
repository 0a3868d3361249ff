//! Reading the fixed-size records the Go side sends on listener and
//! pending-dial fds: one record per connection (its fd attached, or for the
//! direct data path its handle inside; text = the peer's `ip:port`) or per
//! failed dial (text = the error).
//!
//! Layout of a record: kind (1 byte), text length (u16, little endian),
//! text, zero padding up to [`RECORD_SIZE`]; a direct connection's record
//! ends with its handle (u64, little endian) at [`HANDLE_OFFSET`].

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Size of every record; must match `recordSize` in `go/tailscale.go`.
pub(crate) const RECORD_SIZE: usize = 256;
/// Where a direct connection's record keeps its handle; `handleOffset` in
/// `go/tailscale.go`.
const HANDLE_OFFSET: usize = RECORD_SIZE - 8;
/// How many fds one message may carry before we call it malformed; extra ones
/// are received (so they can be closed) rather than silently leaked.
const MAX_FDS: usize = 4;

/// One decoded record.
#[derive(Debug)]
pub(crate) enum Record {
    /// A connection and the peer address text.
    Conn(OwnedFd, String),
    /// A direct connection's handle, still to be attached, and the peer
    /// address text.
    Direct(u64, String),
    /// An error message.
    Error(String),
}

/// A record being assembled from a stream socket.
#[derive(Debug, Default)]
pub(crate) struct RecordReader {
    buf: Vec<u8>,
    fd: Option<OwnedFd>,
}

impl RecordReader {
    /// Reads the next record. `Ok(None)` is end of stream.
    pub(crate) async fn next(&mut self, sock: &AsyncFd<OwnedFd>) -> io::Result<Option<Record>> {
        loop {
            let mut guard = sock.ready(Interest::READABLE).await?;
            match guard.try_io(|inner| self.recv_once(inner.get_ref().as_raw_fd())) {
                Ok(Ok(true)) => return self.take().map(Some),
                Ok(Ok(false)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(false)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tsnet record cut short by end of stream",
                    ));
                }
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }

    /// One `recvmsg`. Returns `Ok(true)` when a whole record is buffered,
    /// `Ok(false)` on end of stream, `WouldBlock` when nothing is there.
    fn recv_once(&mut self, fd: RawFd) -> io::Result<bool> {
        loop {
            let want = RECORD_SIZE - self.buf.len();
            let mut data = [0u8; RECORD_SIZE];
            // Room for MAX_FDS descriptors; u64 elements keep it aligned for cmsghdr.
            let mut control = [0u64; 16];
            // SAFETY: CMSG_SPACE is a pure computation.
            let control_len =
                unsafe { libc::CMSG_SPACE((MAX_FDS * mem::size_of::<RawFd>()) as u32) } as usize;
            debug_assert!(control_len <= mem::size_of_val(&control));
            let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: want };
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            let mut msg: libc::msghdr = unsafe { mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control_len as _;
            // SAFETY: msg points at buffers that live for the call and whose
            // lengths are given in it.
            let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            // SAFETY: the kernel filled msg's control buffer; the CMSG macros
            // walk it within msg_controllen.
            let fds = unsafe { received_fds(&msg) };
            let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
            for fd in fds {
                if self.fd.is_none() && !truncated {
                    self.fd = Some(fd);
                } else {
                    drop(fd);
                }
            }
            if truncated {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "tsnet record carried more descriptors than allowed",
                ));
            }
            let n = n as usize;
            if n == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&data[..n]);
            if self.buf.len() == RECORD_SIZE {
                return Ok(true);
            }
        }
    }

    fn take(&mut self) -> io::Result<Record> {
        let buf = mem::take(&mut self.buf);
        let fd = self.fd.take();
        decode(&buf, fd)
    }
}

/// Decodes one full record. Never panics on malformed input.
pub(crate) fn decode(buf: &[u8], fd: Option<OwnedFd>) -> io::Result<Record> {
    let invalid = |what: &str| {
        io::Error::new(io::ErrorKind::InvalidData, format!("malformed tsnet record: {what}"))
    };
    if buf.len() != RECORD_SIZE {
        return Err(invalid("wrong size"));
    }
    let len = u16::from_le_bytes([buf[1], buf[2]]) as usize;
    let text_end = if buf[0] == b'D' { HANDLE_OFFSET } else { RECORD_SIZE };
    let text =
        buf[..text_end].get(3..3 + len).ok_or_else(|| invalid("text longer than the record"))?;
    let text = String::from_utf8_lossy(text).into_owned();
    match (buf[0], fd) {
        (b'C', Some(fd)) => Ok(Record::Conn(fd, text)),
        (b'D', None) => {
            let mut handle = [0u8; 8];
            handle.copy_from_slice(&buf[HANDLE_OFFSET..]);
            Ok(Record::Direct(u64::from_le_bytes(handle), text))
        }
        (b'D', Some(_)) => Err(invalid("direct connection record with a descriptor")),
        (b'C', None) => Err(invalid("connection record without a descriptor")),
        (b'E', None) => Ok(Record::Error(text)),
        (b'E', Some(_)) => Err(invalid("error record with a descriptor")),
        (kind, _) => Err(invalid(&format!("unknown kind {kind:#04x}"))),
    }
}

/// Takes ownership of every fd in the control messages of `msg`.
///
/// # Safety
///
/// `msg` must have been filled by a successful `recvmsg`.
unsafe fn received_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: per the contract, msg describes a valid control buffer.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/NXTHDR only return headers inside the buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let payload = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            // SAFETY: the payload of an SCM_RIGHTS message is an array of fds.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..payload / mem::size_of::<RawFd>() {
                // SAFETY: i is within the payload; the fd was just received
                // and is owned by nobody else. read_unaligned: CMSG_DATA
                // need not be aligned for RawFd.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: as above.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: msg and cmsg are valid, see above.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, text: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_SIZE];
        buf[0] = kind;
        buf[1..3].copy_from_slice(&(text.len() as u16).to_le_bytes());
        buf[3..3 + text.len()].copy_from_slice(text);
        buf
    }

    #[test]
    fn decodes_error_record() {
        match decode(&record(b'E', b"no route"), None).unwrap() {
            Record::Error(text) => assert_eq!(text, "no route"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_direct_record() {
        let mut buf = record(b'D', b"100.64.0.7:41000");
        buf[HANDLE_OFFSET..].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        match decode(&buf, None).unwrap() {
            Record::Direct(handle, text) => {
                assert_eq!(handle, 0x0102_0304_0506_0708);
                assert_eq!(text, "100.64.0.7:41000");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_malformed_records() {
        let mut long = record(b'E', b"x");
        long[1..3].copy_from_slice(&u16::MAX.to_le_bytes());
        // A direct record's text may not run into its handle.
        let mut into_handle = record(b'D', b"x");
        into_handle[1..3].copy_from_slice(&((HANDLE_OFFSET - 2) as u16).to_le_bytes());
        for (buf, what) in [
            (long, "text longer"),
            (into_handle, "text longer"),
            (record(b'C', b"100.64.0.1:1"), "without a descriptor"),
            (record(b'Z', b""), "unknown kind"),
            (vec![b'E'; 10], "wrong size"),
        ] {
            let err = decode(&buf, None).unwrap_err();
            assert!(err.to_string().contains(what), "{err} should mention {what}");
        }
    }
}
