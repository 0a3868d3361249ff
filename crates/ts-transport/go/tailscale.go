// Package main is built with -buildmode=c-archive into the tsnet archive that
// ts-transport links. Its C API keeps the names and meanings of libtailscale's
// tailscale.h so that upstream libtailscale can replace it once its defects are
// fixed (see docs/decisions/0001-tsnet-ffi.md). The differences:
//
//   - Every message on a listener fd is a fixed-size record that carries the
//     connection's fd (SCM_RIGHTS) and its remote address together, so the
//     address can never belong to another connection.
//   - tailscale_dial_async returns at once with a "pending" fd that later
//     delivers one record: the connection, or an error. It has a timeout and is
//     abandoned by closing the pending fd; no thread is blocked while it runs.
//   - tailscale_close is safe on a server that was never started, is starting,
//     is up, or is already closed.
//   - Go panics in exported functions become error returns, never aborts;
//     goroutines the shim starts recover too.
//   - tailscale_up_timeout bounds Up; tailscale_close also cancels it.
//   - The error message of the last failed call is kept under a lock.
//   - tailscale_listen_direct and tailscale_dial_direct hand out connection
//     handles instead of fds, for the direct data path of direct.go: bytes
//     move by cgo calls, not through a socketpair and two goroutines.
package main

/*
#include <stddef.h>
*/
import "C"

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"tailscale.com/ipn"
	"tailscale.com/tsnet"
)

// recordSize is the size of every message on a listener or pending-dial fd:
// kind (1 byte), text length (2 bytes, little endian), text, zero padding.
const recordSize = 256

const (
	recordConn   = 'C' // text is the peer's "ip:port"; the message carries the fd
	recordError  = 'E' // text is an error message; no fd
	recordDirect = 'D' // text is the peer's "ip:port"; the last 8 bytes are a connection handle (direct.go)
)

// handleOffset is where a recordDirect keeps its handle (u64, little endian).
const handleOffset = recordSize - 8

// copyBufferSize is the buffer used to move bytes between a tsnet connection
// and the socketpair end handed to the caller.
const copyBufferSize = 256 << 10

type server struct {
	s      *tsnet.Server
	ctx    context.Context // cancelled by close: ends Up and pending dials
	cancel context.CancelFunc

	mu       sync.Mutex
	started  bool
	closed   bool
	lastErr  string
	loopback *loopbackInfo
	logFile  *os.File                 // from tailscale_set_logfd; closed with the server
	conns    map[*directConn]struct{} // direct connections, closed with the server
}

type loopbackInfo struct {
	addr, proxyCred, localAPICred string
}

var registry struct {
	mu      sync.Mutex
	next    C.int
	servers map[C.int]*server
}

func init() {
	registry.next = 42<<16 + 1
	registry.servers = make(map[C.int]*server)
}

func getServer(sd C.int) *server {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	return registry.servers[sd]
}

func (srv *server) setErr(err error) C.int {
	srv.mu.Lock()
	srv.lastErr = err.Error()
	srv.mu.Unlock()
	return -1
}

// guard turns a panic in an exported function into an error return.
func guard(srv *server, ret *C.int) {
	if r := recover(); r != nil {
		if srv != nil {
			*ret = srv.setErr(fmt.Errorf("internal error: %v", r))
		} else {
			*ret = C.int(syscall.EINVAL)
		}
	}
}

//export tailscale_new
func tailscale_new() C.int {
	ctx, cancel := context.WithCancel(context.Background())
	srv := &server{
		s:      &tsnet.Server{Logf: func(string, ...any) {}, UserLogf: func(string, ...any) {}},
		ctx:    ctx,
		cancel: cancel,
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	sd := registry.next
	registry.next++
	registry.servers[sd] = srv
	return sd
}

// setField runs set under the server lock if the server has not started.
func setField(sd C.int, set func(s *tsnet.Server)) (ret C.int) {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	if err := srv.setLocked(set); err != nil {
		return srv.setErr(err)
	}
	return 0
}

// setLocked runs set under the server lock if the server has not started.
// The lock is released even if set panics: guard takes it again to record
// the error.
func (srv *server) setLocked(set func(s *tsnet.Server)) error {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.started || srv.closed {
		return errors.New("options can only be set before the server starts")
	}
	testHook(srv, "set")
	set(srv.s)
	return nil
}

//export tailscale_set_dir
func tailscale_set_dir(sd C.int, dir *C.char) C.int {
	v := C.GoString(dir)
	return setField(sd, func(s *tsnet.Server) { s.Dir = v })
}

//export tailscale_set_hostname
func tailscale_set_hostname(sd C.int, hostname *C.char) C.int {
	v := C.GoString(hostname)
	return setField(sd, func(s *tsnet.Server) { s.Hostname = v })
}

//export tailscale_set_authkey
func tailscale_set_authkey(sd C.int, authkey *C.char) C.int {
	v := C.GoString(authkey)
	return setField(sd, func(s *tsnet.Server) { s.AuthKey = v })
}

//export tailscale_set_control_url
func tailscale_set_control_url(sd C.int, url *C.char) C.int {
	v := C.GoString(url)
	return setField(sd, func(s *tsnet.Server) { s.ControlURL = v })
}

//export tailscale_set_ephemeral
func tailscale_set_ephemeral(sd C.int, ephemeral C.int) C.int {
	return setField(sd, func(s *tsnet.Server) { s.Ephemeral = ephemeral != 0 })
}

// tailscale_set_logfd sends the node's logs, backend and user-facing alike, to
// fd; -1 discards them (the default). The call takes fd over whatever its
// result: it is closed at once if the call fails, when another fd replaces
// it, or when the server closes.
//
//export tailscale_set_logfd
func tailscale_set_logfd(sd C.int, fd C.int) (ret C.int) {
	var file *os.File // nil for -1
	if fd >= 0 {
		file = os.NewFile(uintptr(fd), "tsnet-log")
	}
	// Closes fd if the server did not take it, or the file it replaced.
	defer func() {
		if file != nil {
			file.Close()
		}
	}()
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	err := srv.setLocked(func(s *tsnet.Server) {
		if file == nil {
			s.Logf = func(string, ...any) {}
		} else {
			s.Logf = log.New(file, "", log.LstdFlags|log.Lmicroseconds).Printf
		}
		s.UserLogf = s.Logf
		srv.logFile, file = file, srv.logFile
	})
	if err != nil {
		return srv.setErr(err)
	}
	return 0
}

func (srv *server) start() error {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return net.ErrClosed
	}
	srv.started = true
	return srv.s.Start()
}

//export tailscale_start
func tailscale_start(sd C.int) (ret C.int) {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	if err := srv.start(); err != nil {
		return srv.setErr(err)
	}
	return 0
}

//export tailscale_up
func tailscale_up(sd C.int) C.int {
	return tailscale_up_timeout(sd, 0, nil, 0)
}

// tailscale_up_timeout starts the server and waits until it is running with a
// tailnet address, for at most timeout_ms milliseconds (0: no limit), plus up
// to a second on a timeout to read where the node stands for the message. A
// concurrent tailscale_close ends the wait. On failure the message goes to
// errmsg (errmsg_len bytes, truncated, NUL-terminated; may be NULL) as well
// as to tailscale_errmsg, so that a caller need not hold other calls back
// for as long as this one waits in order to read its own message.
//
//export tailscale_up_timeout
func tailscale_up_timeout(sd C.int, timeoutMs C.int, errmsg *C.char, errmsgLen C.size_t) (ret C.int) {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	if err := srv.up(timeoutMs); err != nil {
		if errmsg != nil && errmsgLen > 0 {
			out := unsafe.Slice((*byte)(unsafe.Pointer(errmsg)), int(errmsgLen))
			out[copy(out[:len(out)-1], err.Error())] = 0
		}
		return srv.setErr(err)
	}
	return 0
}

func (srv *server) up(timeoutMs C.int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	if err := srv.start(); err != nil {
		return err
	}
	ctx := srv.ctx
	if timeoutMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(timeoutMs)*time.Millisecond)
		defer cancel()
	}
	// While Up waits, have the backend refresh the engine's status every
	// 2 s (see pollEngineStatus).
	stopPolling := srv.pollEngineStatus(ctx)
	defer stopPolling()
	if _, err := srv.s.Up(ctx); err != nil {
		if srv.ctx.Err() != nil {
			return errors.New("server closed while coming up")
		}
		if ctx.Err() != nil {
			return fmt.Errorf("not running after %d ms (%s): %w", timeoutMs, srv.upState(), err)
		}
		return err
	}
	return nil
}

// pollEngineStatus makes the backend ask the engine for its status every
// 2 s until the returned function is called or ctx ends, by watching the IPN
// bus with NotifyWatchEngineUpdates (the notifications are drained unread).
//
// Why: a node goes from Starting to Running on an engine status that counts
// a DERP connection, and the engine sends its status only on some events
// (new endpoints, a DERP connection added). In tailscale.com v1.94.1 the
// engine reads the DERP count before it stamps the status's time
// (wgengine's getStatus), and the backend drops a status older than the
// last one it took: two statuses computed at once around the node's first
// DERP connection can land the older count (none) last with the newer time.
// Nothing then asks again, and the node stays in Starting for good, logged
// in, with its netmap and its DERP connection (seen 2 times in about 65
// runs of the tailnet tests; the node's log shows "derp-1 connected" and no
// "Starting -> Running"; docs/reliability.md finding 61). A fresh status
// within 2 s mends it.
func (srv *server) pollEngineStatus(ctx context.Context) (stop func()) {
	ctx, stop = context.WithCancel(ctx)
	// Set up inside the goroutine, so that a slow LocalAPI cannot hold Up
	// back; the watch, and the backend's polling with it, end with ctx.
	go func() {
		defer func() { _ = recover() }() // best effort: never take the process down
		lc, err := srv.s.LocalClient()
		if err != nil {
			return
		}
		watcher, err := lc.WatchIPNBus(ctx, ipn.NotifyWatchEngineUpdates|ipn.NotifyNoPrivateKeys)
		if err != nil {
			if ctx.Err() == nil {
				srv.s.Logf("up: no engine-status watch: %v", err)
			}
			return
		}
		defer watcher.Close()
		for {
			if _, err := watcher.Next(); err != nil {
				return
			}
		}
	}()
	return stop
}

// upState says where a server that is not up stands: its backend state, its
// home DERP region and its health warnings, so that a timed-out Up says why.
// Bounded: it waits at most a second.
func (srv *server) upState() string {
	lc, err := srv.s.LocalClient()
	if err != nil {
		return "state unknown: " + err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		return "state unknown: " + err.Error()
	}
	relay := "none"
	if st.Self != nil && st.Self.Relay != "" {
		relay = st.Self.Relay
	}
	out := "backend state " + st.BackendState + ", home DERP " + relay
	if len(st.Health) > 0 {
		out += ", health: " + strings.Join(st.Health, "; ")
	}
	return out
}

// tailscale_close stops the server and frees its handle. It is safe whatever
// state the server is in. Listener fds then see end of stream, and connections
// are torn down. Returns EBADF for an unknown or already closed handle.
//
//export tailscale_close
func tailscale_close(sd C.int) (ret C.int) {
	registry.mu.Lock()
	srv := registry.servers[sd]
	delete(registry.servers, sd)
	registry.mu.Unlock()
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	srv.cancel()
	srv.mu.Lock()
	srv.closed = true
	srv.mu.Unlock()
	// Wakes their callers; no new ones are made once closed is set.
	srv.closeDirectConns()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.logFile != nil {
		// Last, after tsnet's own shutdown has logged; later lines are
		// dropped.
		defer srv.logFile.Close()
	}
	if !srv.started {
		return 0
	}
	// tsnet.Server.Close dereferences state that a failed Start never set;
	// guard turns that into an error instead of an abort.
	if err := srv.s.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		srv.lastErr = err.Error()
		return -1
	}
	return 0
}

// tailscale_getips writes the node's tailnet addresses, comma separated.
//
//export tailscale_getips
func tailscale_getips(sd C.int, buf *C.char, buflen C.size_t) (ret C.int) {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	srv.mu.Lock()
	started := srv.started && !srv.closed
	srv.mu.Unlock()
	if !started {
		return srv.setErr(errors.New("getips: server is not started"))
	}
	ip4, ip6 := srv.s.TailscaleIPs()
	var ips []string
	if ip4.IsValid() {
		ips = append(ips, ip4.String())
	}
	if ip6.IsValid() {
		ips = append(ips, ip6.String())
	}
	if len(ips) == 0 {
		return srv.setErr(errors.New("getips: node has no tailnet address yet"))
	}
	return copyOut(srv, strings.Join(ips, ","), buf, buflen)
}

func copyOut(srv *server, s string, buf *C.char, buflen C.size_t) C.int {
	if buflen == 0 || int(buflen) < len(s)+1 {
		return srv.setErr(fmt.Errorf("buffer of %d bytes too small for %d", buflen, len(s)+1))
	}
	out := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(buflen))
	copy(out, s)
	out[len(s)] = 0
	return 0
}

// tailscale_errmsg copies the message of the server's last failed call.
// Returns ERANGE (and a truncated message) if buflen is too small.
//
//export tailscale_errmsg
func tailscale_errmsg(sd C.int, buf *C.char, buflen C.size_t) C.int {
	if buflen == 0 {
		return C.int(syscall.EINVAL)
	}
	out := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(buflen))
	srv := getServer(sd)
	if srv == nil {
		out[0] = 0
		return C.int(syscall.EBADF)
	}
	srv.mu.Lock()
	msg := srv.lastErr
	srv.mu.Unlock()
	n := copy(out[:len(out)-1], msg)
	out[n] = 0
	if n < len(msg) {
		return C.int(syscall.ERANGE)
	}
	return 0
}

// tailscale_loopback starts (once) and describes the node's loopback server:
// its 127.0.0.1 address, the SOCKS5 proxy password and the LocalAPI password.
// The credential buffers must hold 33 bytes.
//
//export tailscale_loopback
func tailscale_loopback(sd C.int, addrOut *C.char, addrLen C.size_t, proxyCredOut *C.char, localAPICredOut *C.char) (ret C.int) {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	lb, err := srv.startLoopback()
	if err != nil {
		return srv.setErr(err)
	}
	if ret := copyOut(srv, lb.addr, addrOut, addrLen); ret != 0 {
		return ret
	}
	if ret := copyOut(srv, lb.proxyCred, proxyCredOut, 33); ret != 0 {
		return ret
	}
	return copyOut(srv, lb.localAPICred, localAPICredOut, 33)
}

// startLoopback starts the loopback server once and describes it. The lock
// is released even if tsnet panics.
func (srv *server) startLoopback() (loopbackInfo, error) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return loopbackInfo{}, net.ErrClosed
	}
	if srv.loopback == nil {
		srv.started = true
		testHook(srv, "loopback")
		addr, proxyCred, apiCred, err := srv.s.Loopback()
		if err != nil {
			return loopbackInfo{}, fmt.Errorf("loopback: %w", err)
		}
		srv.loopback = &loopbackInfo{addr, proxyCred, apiCred}
	}
	return *srv.loopback, nil
}

// record builds one fixed-size message.
func record(kind byte, text string) []byte {
	rec := make([]byte, recordSize)
	if len(text) > recordSize-3 {
		text = text[:recordSize-3]
	}
	rec[0] = kind
	binary.LittleEndian.PutUint16(rec[1:3], uint16(len(text)))
	copy(rec[3:], text)
	return rec
}

// directRecord builds the record that hands over a direct connection.
func directRecord(dc *directConn) []byte {
	text := dc.conn.RemoteAddr().String()
	if len(text) > handleOffset-3 {
		text = text[:handleOffset-3]
	}
	rec := record(recordDirect, text)
	binary.LittleEndian.PutUint64(rec[handleOffset:], dc.id)
	return rec
}

// sendRecord writes one record, with fd attached when fd >= 0, to the
// non-blocking socket f, waiting in the Go poller while its buffer is full.
func sendRecord(f *os.File, rec []byte, fd int) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var oob []byte
	if fd >= 0 {
		oob = syscall.UnixRights(fd)
	}
	var sendErr error
	sent := 0
	err = raw.Write(func(s uintptr) bool {
		for sent < len(rec) {
			var n int
			// The descriptor rides with the first byte; a record cut short
			// by a full buffer continues without it.
			n, sendErr = syscall.SendmsgN(int(s), rec[sent:], oob, nil, syscall.MSG_NOSIGNAL)
			if sendErr == syscall.EINTR {
				continue
			}
			if sendErr == syscall.EAGAIN {
				return false // wait in the poller until writable
			}
			if sendErr != nil {
				return true
			}
			if n > 0 {
				oob = nil
			}
			sent += n
		}
		return true
	})
	if err != nil {
		return err
	}
	return sendErr
}

// socketpair returns a non-blocking Go end wrapped as *os.File and the raw
// fd of the other end.
func socketpair() (*os.File, int, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, err
	}
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		return nil, -1, err
	}
	return os.NewFile(uintptr(fds[0]), "tsnet-sock"), fds[1], nil
}

// bridge connects a tsnet connection to a new socketpair and returns the fd of
// the end for the caller. Bytes are copied both ways; end of stream in one
// direction is passed on as a half-close, and an error tears both down.
func bridge(conn net.Conn) (int, error) {
	goEnd, cFd, err := socketpair()
	if err != nil {
		return -1, err
	}
	uc, err := net.FileConn(goEnd)
	goEnd.Close() // FileConn duplicated it
	if err != nil {
		syscall.Close(cFd)
		return -1, err
	}
	local := uc.(*net.UnixConn)
	var once sync.Once
	teardown := func() {
		once.Do(func() {
			local.Close()
			conn.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		defer func() {
			if recover() != nil {
				teardown()
			}
		}()
		buf := make([]byte, copyBufferSize)
		_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
		if err != nil {
			teardown()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
		teardown()
	}
	go pipe(conn, local)
	go pipe(local, conn)
	go func() {
		defer func() { recover() }()
		wg.Wait()
		teardown()
	}()
	return cFd, nil
}

// tailscale_listen listens on addr (":port" or "ip:port") and returns a
// listener fd. Each connection arrives on it as one record of recordSize
// bytes holding the peer's "ip:port", with the connection's fd attached.
// Closing the listener fd closes the listener; when the node closes, the
// listener fd reads end of stream.
//
//export tailscale_listen
func tailscale_listen(sd C.int, network *C.char, addr *C.char, listenerOut *C.int) C.int {
	return listen(sd, network, addr, listenerOut, false)
}

// tailscale_listen_direct is tailscale_listen for the direct data path: each
// connection arrives as a 'D' record whose handle the caller must pass to
// tailscale_conn_attach (direct.go); a connection not attached by the time
// the listener closes is closed. A connection that is not a netstack TCP
// connection arrives as with tailscale_listen, with its fd. tailscale_accept
// answers EPROTO for a 'D' record: it is for tailscale_listen's listeners.
//
//export tailscale_listen_direct
func tailscale_listen_direct(sd C.int, network *C.char, addr *C.char, listenerOut *C.int) C.int {
	return listen(sd, network, addr, listenerOut, true)
}

func listen(sd C.int, network *C.char, addr *C.char, listenerOut *C.int, direct bool) (ret C.int) {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	if err := srv.start(); err != nil {
		return srv.setErr(err)
	}
	ln, err := srv.s.Listen(C.GoString(network), C.GoString(addr))
	if err != nil {
		return srv.setErr(err)
	}
	goEnd, cFd, err := socketpair()
	if err != nil {
		ln.Close()
		return srv.setErr(err)
	}
	var once sync.Once
	done := make(chan struct{}) // closed when the listener stops
	stop := func() {
		once.Do(func() {
			ln.Close()
			goEnd.Close()
			close(done)
		})
	}
	// The caller closing its end is the signal to stop listening.
	go func() {
		defer func() { recover() }()
		defer stop()
		buf := make([]byte, 1)
		for {
			if _, err := goEnd.Read(buf); err != nil {
				return
			}
		}
	}()
	go func() {
		// A panic that escapes handOver (in tsnet's Accept, say) ends this
		// listener, not the process: Go panics in a c-archive abort it.
		defer func() { recover() }()
		defer stop()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if !handOver(srv, goEnd, conn, direct, done) {
				return
			}
		}
	}()
	*listenerOut = C.int(cFd)
	return 0
}

// handOver passes one accepted connection to the caller on the listener fd:
// as a direct connection if direct is set and it can be one, else bridged to
// a socketpair. It returns false once records can no longer be sent there. A
// panic costs only this connection, which is closed and reported with an
// error record, unless it struck while a record was being sent: then the
// listener ends, as the caller could not tell where the next record starts.
// A direct connection still unattached when done closes is closed.
func handOver(srv *server, goEnd *os.File, conn net.Conn, direct bool, done <-chan struct{}) (ok bool) {
	fd := -1
	sending := false
	defer func() {
		if fd >= 0 {
			syscall.Close(fd)
		}
		if r := recover(); r != nil {
			conn.Close()
			if sending {
				ok = false
				return
			}
			msg := fmt.Sprintf("internal error with a connection from %v: %v", conn.RemoteAddr(), r)
			ok = sendRecord(goEnd, record(recordError, msg), -1) == nil
		}
	}()
	testHook(srv, "accept")
	if direct {
		if dc, isDirect := newDirect(srv, conn); isDirect {
			go func() {
				defer func() { recover() }()
				select {
				case <-dc.attached:
				case <-done:
					dc.closePending()
				}
			}()
			sending = true
			return sendRecord(goEnd, directRecord(dc), -1) == nil
		}
	}
	fd, err := bridge(conn)
	if err != nil {
		conn.Close()
		return true
	}
	sending = true
	return sendRecord(goEnd, record(recordConn, conn.RemoteAddr().String()), fd) == nil
}

// tailscale_accept blocks until the next connection on a listener fd, for C
// callers, and returns an errno value, not a crash, once the listener is
// closed (EPIPE). The peer address is in the record; Rust reads it directly.
//
//export tailscale_accept
func tailscale_accept(listener C.int, connOut *C.int) C.int {
	rec := make([]byte, recordSize)
	oob := make([]byte, syscall.CmsgSpace(4))
	n, oobn, _, _, err := syscall.Recvmsg(int(listener), rec, oob, syscall.MSG_CMSG_CLOEXEC)
	if err != nil {
		return C.int(err.(syscall.Errno))
	}
	if n == 0 {
		return C.int(syscall.EPIPE)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return C.int(syscall.EPROTO)
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return C.int(syscall.EPROTO)
	}
	*connOut = C.int(fds[0])
	return 0
}

// checkTailnetTarget refuses any address that is not a node of the tailnet.
// tsnet's Dial sends addresses it has no route for out through the host's
// own network, which a tailnet transport must never do.
func (srv *server) checkTailnetTarget(ctx context.Context, network, addr string) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return fmt.Errorf("unsupported network %q", network)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("dial address %q is not ip:port", addr)
	}
	ip := ap.Addr().Unmap()
	if ip4, ip6 := srv.s.TailscaleIPs(); ip == ip4 || ip == ip6 {
		return nil
	}
	lc, err := srv.s.LocalClient()
	if err != nil {
		return err
	}
	if _, err := lc.WhoIs(ctx, ip.String()); err != nil {
		return fmt.Errorf("no tailnet node has address %s", ip)
	}
	return nil
}

//export tailscale_dial
func tailscale_dial(sd C.int, network *C.char, addr *C.char, connOut *C.int) (ret C.int) {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	if err := srv.start(); err != nil {
		return srv.setErr(err)
	}
	netw, target := C.GoString(network), C.GoString(addr)
	if err := srv.checkTailnetTarget(srv.ctx, netw, target); err != nil {
		return srv.setErr(err)
	}
	conn, err := srv.s.Dial(srv.ctx, netw, target)
	if err != nil {
		return srv.setErr(err)
	}
	fd, err := bridge(conn)
	if err != nil {
		conn.Close()
		return srv.setErr(err)
	}
	*connOut = C.int(fd)
	return 0
}

// tailscale_dial_async starts a dial and returns at once with a pending fd.
// Within timeout_ms (required, > 0) one record arrives on it: the connection
// (its fd attached, text = the peer's "ip:port") or an error message. Closing
// the pending fd abandons the dial; the connection, if it is made, is closed.
//
//export tailscale_dial_async
func tailscale_dial_async(sd C.int, network *C.char, addr *C.char, timeoutMs C.int, pendingOut *C.int) C.int {
	return dialAsync(sd, network, addr, timeoutMs, pendingOut, false)
}

// tailscale_dial_direct is tailscale_dial_async for the direct data path: the
// connection arrives as a 'D' record whose handle the caller must pass to
// tailscale_conn_attach (direct.go) before it closes the pending fd;
// closing the fd first closes the connection.
//
//export tailscale_dial_direct
func tailscale_dial_direct(sd C.int, network *C.char, addr *C.char, timeoutMs C.int, pendingOut *C.int) C.int {
	return dialAsync(sd, network, addr, timeoutMs, pendingOut, true)
}

func dialAsync(sd C.int, network *C.char, addr *C.char, timeoutMs C.int, pendingOut *C.int, direct bool) (ret C.int) {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	defer guard(srv, &ret)
	if timeoutMs <= 0 {
		return srv.setErr(errors.New("dial timeout must be positive"))
	}
	if err := srv.start(); err != nil {
		return srv.setErr(err)
	}
	goEnd, cFd, err := socketpair()
	if err != nil {
		return srv.setErr(err)
	}
	netw, target := C.GoString(network), C.GoString(addr)
	ctx, cancel := context.WithTimeout(srv.ctx, time.Duration(timeoutMs)*time.Millisecond)
	// The caller closing its end abandons the dial.
	abandoned := make(chan struct{})
	go func() {
		defer func() { recover() }()
		defer close(abandoned)
		buf := make([]byte, 1)
		goEnd.Read(buf)
		cancel()
	}()
	go func() {
		defer cancel()
		defer goEnd.Close()
		defer func() { recover() }()
		var conn net.Conn
		err := srv.checkTailnetTarget(ctx, netw, target)
		if err == nil {
			conn, err = srv.s.Dial(ctx, netw, target)
		}
		if err != nil {
			if ctx.Err() == context.DeadlineExceeded {
				err = fmt.Errorf("dial %s: timed out after %d ms", target, timeoutMs)
			}
			sendRecord(goEnd, record(recordError, err.Error()), -1)
			return
		}
		if direct {
			if dc, isDirect := newDirect(srv, conn); isDirect {
				if sendRecord(goEnd, directRecord(dc), -1) != nil {
					dc.closePending()
					return
				}
				// Not the dial's timeout: the caller attaches as soon as
				// it reads the record, then closes its end.
				select {
				case <-dc.attached:
				case <-abandoned:
					dc.closePending()
				}
				return
			}
		}
		fd, err := bridge(conn)
		if err != nil {
			conn.Close()
			sendRecord(goEnd, record(recordError, err.Error()), -1)
			return
		}
		if err := sendRecord(goEnd, record(recordConn, conn.RemoteAddr().String()), fd); err != nil {
			conn.Close()
		}
		syscall.Close(fd)
	}()
	*pendingOut = C.int(cFd)
	return 0
}

func main() {}
