// The direct data path (docs/decisions/0004-tsnet-data-path.md). A
// connection handed out by tailscale_listen_direct or tailscale_dial_direct
// is not a socketpair but a handle, which the caller attaches to a block of
// its own memory holding two byte rings: one it fills and Go sends, one Go
// fills from the connection and it reads. One goroutine per connection (the
// pump) moves bytes between the rings and gVisor's TCP endpoint.
//
// No call from the caller into Go happens per message: Go's scheduler
// treats a foreign thread that has called into Go as a thread in a system
// call holding a P, so frequent such calls cost extra thread wake-ups and
// handoffs (measured; see the decision record). Instead:
//
//   - caller to Go: the caller writes into the send ring and, only if the
//     pump said it is about to sleep (the idle word), writes the kick
//     eventfd, whose reader goroutine then serves the connection itself;
//   - Go to caller: the pump writes into the receive ring and, only if the
//     caller said it is waiting (the waiting words), writes the caller's
//     eventfd (reads; the caller's event loop polls it) or calls the
//     caller's notify function (writes; a plain cgo call from a Go thread).
//
// Every such flag is set with a sequentially consistent store before the
// setter checks the other side's progress once more, and cleared with a
// swap by the other side after it made progress (a Dekker-style handshake):
// at least one side always sees the other, so no wake-up is lost, and
// neither side is woken while the other is busy.
//
// The rings bound memory: a full receive ring stops the pump reading from
// gVisor (whose receive window then closes, so the peer waits), and a full
// send ring makes the caller wait.

package main

/*
#include <stddef.h>
#include <stdint.h>
*/
import "C"

import (
	"bytes"
	"net"
	"os"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Layout of the block shared with the caller (byte offsets); it must match
// `Header` in src/tsnet/direct.rs. The caller writes the first cache line,
// Go the second.
const (
	offTxHead    = 0  // u64, caller: bytes put into the send ring so far
	offRxTail    = 8  // u64, caller: bytes taken from the receive ring so far
	offRequests  = 16 // u32, caller: reqShutdown | reqClose
	offRxWaiting = 20 // u32, caller sets 1 before it waits to read; Go swaps 0, then notifies
	offTxWaiting = 24 // u32, caller sets 1 before it waits to write; Go swaps 0, then notifies
	offRxHead    = 64 // u64, Go: bytes put into the receive ring so far
	offTxTail    = 72 // u64, Go: bytes taken from the send ring so far
	offRxStatus  = 80 // i32, Go: 0, rxEOF, or -errno once nothing more will arrive
	offTxStatus  = 84 // i32, Go: 0, or -errno once nothing more can be sent
	offIdle      = 88 // u32, Go sets 1 before it sleeps; the caller swaps 0, then kicks
	offRxFull    = 92 // u32, Go sets 1 when it stopped on a full receive ring; the caller swaps 0, then kicks
	headerSize   = 128
)

// Requests from the caller.
const (
	reqShutdown = 1 // send end of stream after the queued bytes
	reqClose    = 2 // the caller is gone: send what is queued, then close
)

// rxEOF in the receive status: the peer ended its direction.
const rxEOF = 1

// Bits of the events argument of the notify function. (Reads are
// signalled on the caller's eventfd instead.)
const (
	notifyWrite   = 2 // the send ring has room, or the send status changed
	notifyRelease = 4 // the last call: Go no longer uses the block or ctx
)

// closeLinger bounds how long bytes queued by a caller that closed its
// stream keep being sent before the connection is closed anyway.
const closeLinger = 30 * time.Second

// The endpoint and wait queue of a *gonet.TCPConn, which gonet keeps in
// unexported fields. Their offsets are looked up once, by name and type, in
// the pinned gVisor version; if either is missing or has another type,
// endpointOf reports false and connections go over socketpairs as before.
var gonetFields struct {
	ok     bool
	ep, wq uintptr
}

func init() {
	t := reflect.TypeOf(gonet.TCPConn{})
	ep, okEp := t.FieldByName("ep")
	wq, okWq := t.FieldByName("wq")
	if okEp && ep.Type == reflect.TypeOf((*tcpip.Endpoint)(nil)).Elem() &&
		okWq && wq.Type == reflect.TypeOf((*waiter.Queue)(nil)) {
		gonetFields.ok, gonetFields.ep, gonetFields.wq = true, ep.Offset, wq.Offset
	}
}

// endpointOf returns the gVisor endpoint and wait queue under c, if c is a
// netstack TCP connection whose layout was recognised.
func endpointOf(c net.Conn) (tcpip.Endpoint, *waiter.Queue, bool) {
	tc, ok := c.(*gonet.TCPConn)
	if !ok || tc == nil || !gonetFields.ok {
		return nil, nil, false
	}
	base := unsafe.Pointer(tc)
	ep := *(*tcpip.Endpoint)(unsafe.Add(base, gonetFields.ep))
	wq := *(**waiter.Queue)(unsafe.Add(base, gonetFields.wq))
	return ep, wq, ep != nil && wq != nil
}

// Connection states.
const (
	connPending  = iota // handed over in a record, not yet attached
	connAttached        // a pump runs it
	connClosed          // closed before it was attached
)

// directConn is one connection on the direct path.
type directConn struct {
	id   uint64
	srv  *server
	conn net.Conn
	ep   tcpip.Endpoint
	wq   *waiter.Queue

	mu       sync.Mutex // guards state
	state    int
	attached chan struct{} // closed on attach, or when closed unattached

	// Set by attach, then read-only.
	entry       waiter.Entry
	notify, ctx unsafe.Pointer
	block       unsafe.Pointer
	rx, tx      []byte   // the caller's rings
	kickFile    *os.File // the caller writes it to wake us
	readyFd     int      // we write it when the caller waits to read

	// serveMu is held by whichever goroutine serves the connection (the
	// kick reader, woken by the caller, or the pump, woken by gVisor) and
	// guards what follows.
	serveMu        sync.Mutex
	done           bool
	toldAt         time.Time     // when the caller was last told bytes arrived, until it answers
	answerAvg      time.Duration // how long the caller takes to answer, on average
	closeDeadline  time.Time
	seenRequests   uint32 // requests as of the last serve
	finSent        bool
	rxStalled      bool   // serving stopped on a full receive ring
	blockedAtEvent uint64 // writableEvents when a write last answered ErrWouldBlock
	writeBlocked   bool

	kick           chan struct{} // wakes the pump; buffered, one token
	writableEvents atomic.Uint64 // bumped by every writable or error event
	aborted        atomic.Bool   // the node closed under the caller
	abortOnce      sync.Once
	abortCh        chan struct{}
}

// directConns maps handles of connections not yet attached to them.
var directConns sync.Map // uint64 -> *directConn

// nextConnID is never reused, so a stale handle can never name a newer
// connection. It starts far from any file descriptor number.
var nextConnID atomic.Uint64

func init() { nextConnID.Store(1 << 40) }

// newDirect makes conn a pending direct connection of srv, or reports false
// if conn is not a netstack TCP connection this file understands or srv is
// closing.
func newDirect(srv *server, conn net.Conn) (*directConn, bool) {
	ep, wq, ok := endpointOf(conn)
	if !ok {
		return nil, false
	}
	dc := &directConn{
		id:       nextConnID.Add(1),
		srv:      srv,
		conn:     conn,
		ep:       ep,
		wq:       wq,
		attached: make(chan struct{}),
		kick:     make(chan struct{}, 1),
		abortCh:  make(chan struct{}),
	}
	if !srv.track(dc) {
		return nil, false
	}
	directConns.Store(dc.id, dc)
	return dc, true
}

// track adds dc to the server's connections, unless the server is closed.
func (srv *server) track(dc *directConn) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return false
	}
	if srv.conns == nil {
		srv.conns = make(map[*directConn]struct{})
	}
	srv.conns[dc] = struct{}{}
	return true
}

func (srv *server) untrack(dc *directConn) {
	srv.mu.Lock()
	delete(srv.conns, dc)
	srv.mu.Unlock()
}

// closeDirectConns ends every direct connection of a closing server: those
// not attached are closed, the pumps of the others tell their callers
// ECONNABORTED and stop.
func (srv *server) closeDirectConns() {
	srv.mu.Lock()
	conns := make([]*directConn, 0, len(srv.conns))
	for dc := range srv.conns {
		conns = append(conns, dc)
	}
	srv.mu.Unlock()
	for _, dc := range conns {
		dc.closePending()
		dc.abort()
	}
}

// closePending closes dc if nobody attached it; a later attach answers
// EBADF.
func (dc *directConn) closePending() {
	dc.mu.Lock()
	pending := dc.state == connPending
	if pending {
		dc.state = connClosed
		close(dc.attached)
	}
	dc.mu.Unlock()
	if pending {
		directConns.Delete(dc.id)
		dc.conn.Close()
		dc.srv.untrack(dc)
	}
}

func (dc *directConn) abort() {
	dc.abortOnce.Do(func() {
		dc.aborted.Store(true)
		close(dc.abortCh)
	})
}

func (dc *directConn) wake() {
	select {
	case dc.kick <- struct{}{}:
	default:
	}
}

// onEvent runs in gVisor, on whichever goroutine changed the endpoint's
// readiness, with the endpoint's locks held: it only wakes the pump.
func (dc *directConn) onEvent(mask waiter.EventMask) {
	if mask&(waiter.WritableEvents|waiter.EventHUp|waiter.EventErr) != 0 {
		dc.writableEvents.Add(1)
	}
	dc.wake()
}

// Accessors of the shared block.
func (dc *directConn) u64(off uintptr) *uint64 { return (*uint64)(unsafe.Add(dc.block, off)) }
func (dc *directConn) u32(off uintptr) *uint32 { return (*uint32)(unsafe.Add(dc.block, off)) }
func (dc *directConn) i32(off uintptr) *int32  { return (*int32)(unsafe.Add(dc.block, off)) }

func (dc *directConn) callNotify(events uint32) {
	callNotify(dc.notify, dc.ctx, events)
}

// tell wakes the caller for the directions it waits on.
func (dc *directConn) tell(read, write bool) {
	if read && atomic.SwapUint32(dc.u32(offRxWaiting), 0) != 0 {
		dc.toldAt = time.Now()
		one := [8]byte{1}
		for {
			_, err := syscall.Write(dc.readyFd, one[:])
			if err != syscall.EINTR {
				break
			}
		}
	}
	if write && atomic.SwapUint32(dc.u32(offTxWaiting), 0) != 0 {
		dc.callNotify(notifyWrite)
	}
}

// service serves the connection until nothing is left to do now, then
// marks it idle. It returns true once the connection is done with.
func (dc *directConn) service() (done bool) {
	dc.serveMu.Lock()
	defer dc.serveMu.Unlock()
	defer func() {
		if recover() != nil {
			dc.fail(syscall.EIO)
			dc.done = true
			done = true
		}
	}()
	for !dc.done {
		atomic.StoreUint32(dc.u32(offIdle), 0)
		if dc.aborted.Load() {
			dc.fail(syscall.ECONNABORTED)
			dc.done = true
			break
		}
		if dc.serve() {
			dc.done = true
			break
		}
		if dc.spin() {
			continue
		}
		atomic.StoreUint32(dc.u32(offIdle), 1)
		if !dc.hasWork() {
			break
		}
	}
	return dc.done
}

// spinBudget bounds how long a connection's goroutine watches for the
// caller's answer, instead of sleeping, after it handed the caller bytes it
// was waiting for.
const spinBudget = 50 * time.Microsecond

// spinners counts the goroutines spinning now; at most GOMAXPROCS/2 (at
// least one) do, as with the Go scheduler's own spinning threads.
var spinners atomic.Int32

// spin waits for the caller's answer to the bytes just handed to it, for at
// most spinBudget, with the idle word clear so that the caller does not
// need to write the kick eventfd: no thread on either side sleeps and wakes
// for the answer. It only does so while this connection's recent answers
// came within the budget. It returns whether there is work now.
func (dc *directConn) spin() bool {
	if dc.toldAt.IsZero() || dc.answerAvg >= spinBudget {
		return false
	}
	if spinners.Add(1) > max(1, int32(runtime.GOMAXPROCS(0)/2)) {
		spinners.Add(-1)
		return false
	}
	defer spinners.Add(-1)
	deadline := dc.toldAt.Add(spinBudget)
	for time.Now().Before(deadline) {
		if dc.hasWork() || len(dc.kick) > 0 || dc.aborted.Load() {
			return true
		}
		runtime.Gosched()
	}
	// No answer in time: count it as twice the budget, so that a
	// connection whose answers are slow soon stops spinning.
	dc.noteAnswer(2 * spinBudget)
	return dc.hasWork()
}

// noteAnswer records how long the caller took to answer, as a moving
// average.
func (dc *directConn) noteAnswer(took time.Duration) {
	dc.answerAvg += (took - dc.answerAvg) / 8
	dc.toldAt = time.Time{}
}

// lingerTimer returns a channel that fires when a closing connection must
// stop sending, or nil.
func (dc *directConn) lingerTimer() (<-chan time.Time, func() bool) {
	dc.serveMu.Lock()
	deadline := dc.closeDeadline
	dc.serveMu.Unlock()
	if deadline.IsZero() {
		return nil, func() bool { return false }
	}
	t := time.NewTimer(time.Until(deadline))
	return t.C, t.Stop
}

// run is the pump: it serves the connection when gVisor reports an event,
// until the caller closes it or the node closes, then releases the block.
func (dc *directConn) run(kickReader *sync.WaitGroup) {
	// A panic here must not abort the process; it costs this connection
	// (and, if finish itself panicked, the block's memory).
	defer func() { recover() }()
	defer dc.finish(kickReader)
	for !dc.service() {
		linger, stop := dc.lingerTimer()
		select {
		case <-dc.kick:
		case <-linger:
		case <-dc.abortCh:
		}
		stop()
	}
}

// fail ends both directions with errno (unless already ended) and tells
// the caller.
func (dc *directConn) fail(errno syscall.Errno) {
	atomic.CompareAndSwapInt32(dc.i32(offRxStatus), 0, -int32(errno))
	atomic.CompareAndSwapInt32(dc.i32(offTxStatus), 0, -int32(errno))
	dc.tell(true, true)
}

// finish closes the connection and hands the block back for good.
func (dc *directConn) finish(kickReader *sync.WaitGroup) {
	dc.wq.EventUnregister(&dc.entry) // no onEvent runs after this
	dc.conn.Close()
	dc.kickFile.Close()
	kickReader.Wait() // no goroutine serves after this
	syscall.Close(dc.readyFd)
	dc.srv.untrack(dc)
	dc.callNotify(notifyRelease)
}

// serve moves what can be moved now. It returns true once the connection
// is done with.
func (dc *directConn) serve() bool {
	requests := atomic.LoadUint32(dc.u32(offRequests))
	dc.seenRequests = requests
	dc.send()
	txEmpty := atomic.LoadUint64(dc.u64(offTxHead)) == atomic.LoadUint64(dc.u64(offTxTail))
	txFailed := atomic.LoadInt32(dc.i32(offTxStatus)) != 0
	if requests&reqClose != 0 {
		if dc.closeDeadline.IsZero() {
			dc.closeDeadline = time.Now().Add(closeLinger)
		}
		return txEmpty || txFailed || time.Now().After(dc.closeDeadline)
	}
	if requests&reqShutdown != 0 && !dc.finSent && txEmpty && !txFailed {
		dc.finSent = true
		dc.ep.Shutdown(tcpip.ShutdownWrite)
	}
	dc.receive()
	return false
}

// send moves bytes from the send ring into gVisor.
func (dc *directConn) send() {
	if dc.writeBlocked && dc.writableEvents.Load() == dc.blockedAtEvent {
		return
	}
	dc.writeBlocked = false
	moved := false
	r := payloadPool.Get().(*bytes.Reader)
	defer payloadPool.Put(r)
	for atomic.LoadInt32(dc.i32(offTxStatus)) == 0 {
		tail := atomic.LoadUint64(dc.u64(offTxTail))
		head := atomic.LoadUint64(dc.u64(offTxHead))
		if head == tail {
			break
		}
		size := uint64(len(dc.tx))
		start := tail % size
		end := min(start+(head-tail), size)
		events := dc.writableEvents.Load()
		r.Reset(dc.tx[start:end])
		n, err := dc.ep.Write(r, tcpip.WriteOptions{})
		r.Reset(nil)
		if n > 0 {
			atomic.StoreUint64(dc.u64(offTxTail), tail+uint64(n))
			moved = true
			if !dc.toldAt.IsZero() {
				dc.noteAnswer(time.Since(dc.toldAt))
			}
		}
		if err != nil {
			if _, ok := err.(*tcpip.ErrWouldBlock); ok {
				// gVisor's send buffer is full; a writable event
				// after this one wakes the pump.
				dc.writeBlocked, dc.blockedAtEvent = true, events
				break
			}
			atomic.StoreInt32(dc.i32(offTxStatus), -int32(errno(err)))
			moved = true
			break
		}
	}
	if moved {
		dc.tell(false, true)
	}
}

// receive moves bytes that arrived into the receive ring.
func (dc *directConn) receive() {
	dc.rxStalled = false
	moved := false
	for atomic.LoadInt32(dc.i32(offRxStatus)) == 0 {
		head := atomic.LoadUint64(dc.u64(offRxHead))
		tail := atomic.LoadUint64(dc.u64(offRxTail))
		size := uint64(len(dc.rx))
		if head-tail == size {
			// Full: ask the caller to kick once it made room, then
			// look again in case it just did.
			atomic.StoreUint32(dc.u32(offRxFull), 1)
			if atomic.LoadUint64(dc.u64(offRxTail)) != tail {
				atomic.StoreUint32(dc.u32(offRxFull), 0)
				continue
			}
			dc.rxStalled = true
			break
		}
		start := head % size
		end := min(start+(size-(head-tail)), size)
		w := tcpip.SliceWriter(dc.rx[start:end])
		res, err := dc.ep.Read(&w, tcpip.ReadOptions{})
		if err == nil {
			atomic.StoreUint64(dc.u64(offRxHead), head+uint64(res.Count))
			moved = true
			continue
		}
		switch err.(type) {
		case *tcpip.ErrWouldBlock:
			// A readable event wakes the pump.
		case *tcpip.ErrClosedForReceive:
			atomic.StoreInt32(dc.i32(offRxStatus), rxEOF)
			moved = true
		default:
			atomic.StoreInt32(dc.i32(offRxStatus), -int32(errno(err)))
			moved = true
		}
		break
	}
	if moved {
		dc.tell(true, false)
	}
}

// hasWork reports whether the caller asked for something not done yet.
// Events from gVisor arrive on dc.kick instead.
func (dc *directConn) hasWork() bool {
	if atomic.LoadUint32(dc.u32(offRequests)) != dc.seenRequests {
		return true
	}
	txPending := atomic.LoadUint64(dc.u64(offTxHead)) != atomic.LoadUint64(dc.u64(offTxTail))
	if txPending && atomic.LoadInt32(dc.i32(offTxStatus)) == 0 &&
		(!dc.writeBlocked || dc.writableEvents.Load() != dc.blockedAtEvent) {
		return true
	}
	return dc.rxStalled && atomic.LoadUint32(dc.u32(offRxFull)) == 0
}

// readKicks serves the connection each time the caller writes the kick
// eventfd, on the goroutine the kick woke: no second goroutine to wake.
func (dc *directConn) readKicks(done *sync.WaitGroup) {
	defer done.Done()
	defer func() { recover() }()
	buf := make([]byte, 8)
	for {
		if _, err := dc.kickFile.Read(buf); err != nil {
			return
		}
		if dc.service() {
			dc.wake() // the pump finishes
			return
		}
	}
}

func lookupConn(id C.uint64_t) *directConn {
	v, ok := directConns.Load(uint64(id))
	if !ok {
		return nil
	}
	return v.(*directConn)
}

// errno maps a gVisor error to the errno a socket would give.
func errno(err tcpip.Error) syscall.Errno {
	switch err.(type) {
	case *tcpip.ErrWouldBlock:
		return syscall.EAGAIN
	case *tcpip.ErrClosedForSend:
		return syscall.EPIPE
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrNotConnected:
		return syscall.ENOTCONN
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrHostUnreachable, *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		return syscall.EHOSTUNREACH
	default:
		return syscall.EIO
	}
}

// payloadPool recycles the readers the pump hands to gVisor's Write.
var payloadPool = sync.Pool{New: func() any { return new(bytes.Reader) }}

// tailscale_conn_attach takes over a connection handle from a record on a
// direct listener or pending-dial fd and starts moving its bytes.
//
// block points at the caller's shared block (layout above, 128 bytes,
// zeroed, 8-byte aligned); rx and tx at its receive and send rings of
// rx_len and tx_len bytes. kick_fd is a non-blocking eventfd the caller
// writes to wake Go; ready_fd one Go writes when the receive ring or status
// changed while the caller waited to read. The call takes both over,
// whatever its result. notify, a `void (*)(void *ctx, uint32_t events)`, is
// called with ctx from a Go thread: with notifyWrite when the send side
// changed while the caller waited to write, and exactly once with
// notifyRelease, last, after which Go no longer touches block, the rings or
// ctx. It must return promptly and must not call into this library.
//
// Returns 0, EBADF if the handle is unknown, already attached or was closed
// first (its listener or node closed), or EINVAL for bad arguments; on
// failure notify is never called.
//
//export tailscale_conn_attach
func tailscale_conn_attach(conn C.uint64_t, notify, ctx, block, rx unsafe.Pointer, rxLen C.size_t,
	tx unsafe.Pointer, txLen C.size_t, kickFd C.int, readyFd C.int) (ret C.int) {
	kickFile := os.NewFile(uintptr(kickFd), "tsnet-kick")
	defer func() {
		if r := recover(); r != nil {
			ret = C.int(syscall.EIO)
		}
		if ret != 0 {
			if kickFile != nil {
				kickFile.Close()
			}
			if readyFd >= 0 {
				syscall.Close(int(readyFd))
			}
		}
	}()
	if kickFile == nil || readyFd < 0 || notify == nil || ctx == nil || block == nil || rx == nil ||
		tx == nil || rxLen == 0 || txLen == 0 || uintptr(block)%8 != 0 {
		return C.int(syscall.EINVAL)
	}
	dc := lookupConn(conn)
	if dc == nil {
		return C.int(syscall.EBADF)
	}
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if dc.state != connPending {
		return C.int(syscall.EBADF)
	}
	directConns.Delete(dc.id)
	dc.state = connAttached
	dc.notify, dc.ctx, dc.block = notify, ctx, block
	dc.rx = unsafe.Slice((*byte)(rx), int(rxLen))
	dc.tx = unsafe.Slice((*byte)(tx), int(txLen))
	dc.kickFile = kickFile
	dc.readyFd = int(readyFd)
	dc.entry = waiter.NewFunctionEntry(
		waiter.ReadableEvents|waiter.WritableEvents|waiter.EventHUp|waiter.EventErr, dc.onEvent)
	dc.wq.EventRegister(&dc.entry)
	var kickReader sync.WaitGroup
	kickReader.Add(1)
	go dc.readKicks(&kickReader)
	go dc.run(&kickReader)
	close(dc.attached)
	return 0
}
